//! `Storage` kept in memory: for service tests, and the reference the contract suite is checked against.
//!
//! All state sits behind one mutex. Every operation takes the lock, checks everything it needs to, and only then
//! writes (see `state`), so a failing write changes nothing and a multi-row write is all-or-nothing. The lock is
//! never held across an `.await`.

mod actions;
mod declared;
mod identities;
mod mailing;
mod state;

use gradient_domain::model::{
    ApiKey, Build, BuildLog, Cache, CachedPath, Derivation, EntryPoint, Evaluation, JobId, JobRecord, JobState, Member,
    Membership, NarFile, Org, Project, Role, RoleRef, Session, SessionInfo, SubscribedCache, Subscriber, Subscription,
    Timestamp, User, WorkerRegistration,
};
use gradient_domain::ports::storage::{
    BuildSwap, CacheContents, Caches, Evaluations, Integrations, Meta, Orgs, Projects, Queue, Result, Run, Users,
    Workers,
};
use gradient_domain::status::BuildStatus;
use gradient_domain::{
    ApiKeyId, BuildId, CacheId, EvaluationId, Name, OrgId, PeerId, ProjectId, RoleId, SessionId, UserId, WorkerId,
};
use state::State;
use std::sync::{Arc, Mutex, PoisonError};

/// An in-memory `Storage`. Clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
    /// For service tests of faults: how many operations still succeed before every one answers `Unavailable`
    /// (`None`: no limit). See [`MemoryStorage::go_down_after`].
    down_after: Arc<Mutex<Option<u64>>>,
    /// For service tests of races: what runs before an operation to come. See [`MemoryStorage::interleave`].
    interleaved: Arc<Mutex<Option<Interleaved>>>,
}

/// What runs before the operation a number of operations from now (see [`MemoryStorage::interleave`]).
struct Interleaved {
    after: u64,
    run: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for Interleaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interleaved(after {} operations)", self.after)
    }
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// After `ops` more operations, every operation answers `StorageError::Unavailable` (a database that went
    /// away mid-way, for service tests); `None` brings it back.
    pub fn go_down_after(&self, ops: Option<u64>) {
        *self.down_after.lock().unwrap_or_else(PoisonError::into_inner) = ops;
    }

    /// For service tests of races: `run` runs once, just before the operation `ops` operations from now (0: the
    /// next), outside the lock, so it may use this storage: as another request whose writes commit between
    /// two of a use case's operations. Replaces what was set before.
    pub fn interleave(&self, ops: u64, run: impl FnOnce() + Send + 'static) {
        *self.interleaved.lock().unwrap_or_else(PoisonError::into_inner) = Some(Interleaved {
            after: ops,
            run: Box::new(run),
        });
    }

    /// Runs `f` on the state under the lock.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let due = {
            let mut interleaved = self.interleaved.lock().unwrap_or_else(PoisonError::into_inner);
            match interleaved.as_mut() {
                Some(i) if i.after == 0 => interleaved.take().map(|i| i.run),
                Some(i) => {
                    i.after -= 1;
                    None
                }
                None => None,
            }
        };
        if let Some(run) = due {
            run();
        }
        if let Some(left) = self.down_after.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            if *left == 0 {
                return Err(gradient_domain::ports::storage::StorageError::Unavailable(
                    "the in-memory storage was taken down by the test".into(),
                ));
            }
            *left -= 1;
        }
        // Writes validate before they change anything, so a panic elsewhere cannot have left the state
        // half-written: a poisoned lock is safe to keep using.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }
}

impl Users for MemoryStorage {
    async fn create_user(&self, user: &User) -> Result<()> {
        self.with(|s| s.create_user(user))
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        self.with(|s| Ok(s.users.get(&id).cloned()))
    }

    async fn user_by_username(&self, username: &Name) -> Result<Option<User>> {
        self.with(|s| Ok(s.users.values().find(|u| u.username == *username).cloned()))
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.with(|s| Ok(s.users.values().find(|u| u.email.as_str() == email).cloned()))
    }

    async fn create_session(&self, session: &Session) -> Result<()> {
        self.with(|s| s.create_session(session))
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>> {
        self.with(|s| Ok(s.sessions.get(&id).cloned()))
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        self.with(|s| Ok(s.sessions.remove(&id).is_some()))
    }

    async fn session_info(&self, id: SessionId) -> Result<Option<SessionInfo>> {
        self.with(|s| Ok(s.sessions.get(&id).map(|session| s.session_info(session))))
    }

    async fn sessions_of(&self, user: UserId, now: Timestamp) -> Result<Vec<SessionInfo>> {
        self.with(|s| {
            let mut found: Vec<SessionInfo> = s
                .sessions
                .values()
                .filter(|x| x.user_id == user && x.expires_at > now)
                .map(|x| s.session_info(x))
                .collect();
            found.sort_by_key(|x| std::cmp::Reverse((x.session.created_at, x.session.id.0)));
            Ok(found)
        })
    }

    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<bool> {
        self.with(|s| {
            if !s.sessions.contains_key(&id) {
                return Ok(false);
            }
            s.session_activity.entry(id).or_default().0 = Some(at);
            Ok(true)
        })
    }

    async fn set_session_user_agent(&self, id: SessionId, user_agent: &str) -> Result<bool> {
        self.with(|s| {
            if !s.sessions.contains_key(&id) {
                return Ok(false);
            }
            s.session_activity.entry(id).or_default().1 = Some(user_agent.to_owned());
            Ok(true)
        })
    }

    async fn delete_sessions_of(&self, user: UserId, keep: Option<SessionId>) -> Result<u64> {
        self.with(|s| {
            let before = s.sessions.len();
            s.sessions.retain(|id, x| x.user_id != user || Some(*id) == keep);
            Ok((before - s.sessions.len()) as u64)
        })
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        self.with(|s| s.create_api_key(key))
    }

    async fn api_keys(&self, user: UserId) -> Result<Vec<ApiKey>> {
        self.with(|s| Ok(s.api_keys(user)))
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        self.with(|s| Ok(s.api_keys.values().find(|k| k.hash == hash).cloned()))
    }

    async fn delete_api_key(&self, user: UserId, id: ApiKeyId) -> Result<bool> {
        self.with(|s| Ok(s.delete_api_key(user, id)))
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: Timestamp) -> Result<bool> {
        self.with(|s| Ok(s.api_keys.get_mut(&id).map(|k| k.last_used_at = Some(at)).is_some()))
    }
}

impl Orgs for MemoryStorage {
    async fn create_org(&self, org: &Org) -> Result<()> {
        self.with(|s| s.create_org(org))
    }

    async fn org_by_name(&self, name: &Name) -> Result<Option<Org>> {
        self.with(|s| Ok(s.orgs.values().find(|o| o.name == *name).cloned()))
    }

    async fn org(&self, id: OrgId) -> Result<Option<Org>> {
        self.with(|s| Ok(s.orgs.get(&id).cloned()))
    }

    async fn visible_orgs(&self, user: Option<UserId>) -> Result<Vec<Org>> {
        self.with(|s| Ok(s.visible_orgs(user)))
    }

    async fn update_org(&self, org: &Org) -> Result<()> {
        self.with(|s| s.update_org(org))
    }

    async fn delete_org(&self, id: OrgId) -> Result<bool> {
        self.with(|s| Ok(s.delete_org(id)))
    }

    async fn create_role(&self, role: &Role) -> Result<()> {
        self.with(|s| s.create_role(role))
    }

    async fn roles(&self, org: OrgId) -> Result<Vec<Role>> {
        self.with(|s| Ok(s.roles(org)))
    }

    async fn role_by_name(&self, org: OrgId, name: &str) -> Result<Option<Role>> {
        self.with(|s| Ok(s.role_by_name(org, name)))
    }

    async fn role(&self, id: RoleId) -> Result<Option<Role>> {
        self.with(|s| Ok(s.roles.get(&id).cloned()))
    }

    async fn delete_role(&self, id: RoleId) -> Result<bool> {
        self.with(|s| s.delete_role(id))
    }

    async fn set_membership(&self, membership: &Membership) -> Result<()> {
        self.with(|s| s.set_membership(membership))
    }

    async fn membership(&self, org: OrgId, user: UserId) -> Result<Option<RoleRef>> {
        self.with(|s| Ok(s.memberships.get(&(org, user)).cloned()))
    }

    async fn members(&self, org: OrgId) -> Result<Vec<Member>> {
        self.with(|s| Ok(s.members(org)))
    }

    async fn delete_membership(&self, org: OrgId, user: UserId) -> Result<bool> {
        self.with(|s| Ok(s.memberships.remove(&(org, user)).is_some()))
    }
}

impl Projects for MemoryStorage {
    async fn create_project(&self, project: &Project) -> Result<()> {
        self.with(|s| s.create_project(project))
    }

    async fn project(&self, org: OrgId, name: &Name) -> Result<Option<Project>> {
        self.with(|s| Ok(s.project(org, name)))
    }

    async fn project_by_id(&self, id: ProjectId) -> Result<Option<Project>> {
        self.with(|s| Ok(s.projects.get(&id).cloned()))
    }

    async fn projects(&self, org: OrgId) -> Result<Vec<Project>> {
        self.with(|s| Ok(s.projects(org)))
    }

    async fn polled_projects(&self) -> Result<Vec<Project>> {
        self.with(|s| {
            let mut projects: Vec<Project> = s
                .projects
                .values()
                .filter(|p| p.active && p.poll_interval_secs.is_some())
                .cloned()
                .collect();
            projects.sort_by_key(|p| p.id);
            Ok(projects)
        })
    }

    async fn active_projects(&self) -> Result<Vec<Project>> {
        self.with(|s| {
            let mut projects: Vec<Project> = s.projects.values().filter(|p| p.active).cloned().collect();
            projects.sort_by_key(|p| p.id);
            Ok(projects)
        })
    }

    async fn update_project(&self, project: &Project) -> Result<()> {
        self.with(|s| s.update_project(project))
    }

    async fn delete_project(&self, id: ProjectId) -> Result<bool> {
        self.with(|s| Ok(s.delete_project(id)))
    }

    async fn scheduled_projects(&self) -> Result<Vec<gradient_domain::ports::storage::ScheduledProject>> {
        self.with(|s| {
            let mut projects: Vec<(Project, Option<Timestamp>)> = s
                .projects
                .values()
                .filter(|p| p.active && p.schedule.is_some())
                .map(|p| (p.clone(), s.schedule_anchors.get(&p.id).copied()))
                .collect();
            projects.sort_by_key(|(p, _)| p.id);
            Ok(projects)
        })
    }

    async fn set_schedule_anchor(&self, id: ProjectId, at: Option<Timestamp>) -> Result<bool> {
        self.with(|s| {
            if !s.projects.contains_key(&id) {
                return Ok(false);
            }
            match at {
                Some(at) => s.schedule_anchors.insert(id, at),
                None => s.schedule_anchors.remove(&id),
            };
            Ok(true)
        })
    }
}

impl Caches for MemoryStorage {
    async fn create_cache(&self, cache: &Cache) -> Result<()> {
        self.with(|s| s.create_cache(cache))
    }

    async fn cache_by_name(&self, name: &Name) -> Result<Option<Cache>> {
        self.with(|s| Ok(s.caches.values().find(|c| c.name == *name).cloned()))
    }

    async fn cache(&self, id: CacheId) -> Result<Option<Cache>> {
        self.with(|s| Ok(s.caches.get(&id).cloned()))
    }

    async fn visible_caches(&self, user: Option<UserId>) -> Result<Vec<Cache>> {
        self.with(|s| Ok(s.visible_caches(user)))
    }

    async fn update_cache(&self, cache: &Cache) -> Result<()> {
        self.with(|s| s.update_cache(cache))
    }

    async fn delete_cache(&self, id: CacheId) -> Result<bool> {
        self.with(|s| Ok(s.delete_cache(id)))
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<bool> {
        self.with(|s| s.subscribe(sub))
    }

    async fn unsubscribe(&self, org: OrgId, cache: CacheId) -> Result<bool> {
        self.with(|s| Ok(s.subscriptions.remove(&(org, cache)).is_some()))
    }

    async fn set_push_cache(&self, org: OrgId, cache: Option<CacheId>) -> Result<bool> {
        self.with(|s| Ok(s.set_push_cache(org, cache)))
    }

    async fn subscriptions(&self, org: OrgId) -> Result<Vec<SubscribedCache>> {
        self.with(|s| Ok(s.subscriptions(org)))
    }

    async fn subscribers(&self, cache: CacheId) -> Result<Vec<Subscriber>> {
        self.with(|s| Ok(s.subscribers(cache)))
    }
}

impl CacheContents for MemoryStorage {
    async fn put_nar_file(&self, file: &NarFile) -> Result<()> {
        self.with(|s| s.put_nar_file(file))
    }

    async fn nar_file(&self, cache: CacheId, url: &str) -> Result<Option<NarFile>> {
        self.with(|s| Ok(s.nar_files.get(&(cache, url.to_owned())).cloned()))
    }

    async fn delete_nar_file(&self, cache: CacheId, url: &str) -> Result<bool> {
        self.with(|s| Ok(s.nar_files.remove(&(cache, url.to_owned())).is_some()))
    }

    async fn orphan_nar_files(&self, before: Timestamp, limit: u32) -> Result<Vec<NarFile>> {
        self.with(|s| Ok(s.orphan_nar_files(before, limit)))
    }

    async fn put_cached_path(&self, path: &CachedPath) -> Result<bool> {
        self.with(|s| s.put_cached_path(path))
    }

    async fn put_nar_files(&self, files: &[NarFile]) -> Result<()> {
        self.with(|s| s.put_nar_files(files))
    }

    async fn put_cached_paths(&self, paths: &[CachedPath]) -> Result<Vec<bool>> {
        self.with(|s| s.put_cached_paths(paths))
    }

    async fn cached_path(&self, cache: CacheId, hash_part: &str) -> Result<Option<CachedPath>> {
        self.with(|s| Ok(s.cached_paths.get(&(cache, hash_part.to_owned())).cloned()))
    }

    async fn held_hash_parts(&self, cache: CacheId, hash_parts: &[String]) -> Result<Vec<String>> {
        self.with(|s| {
            let wanted: std::collections::BTreeSet<&String> = hash_parts.iter().collect();
            Ok(wanted
                .into_iter()
                .filter(|h| s.cached_paths.contains_key(&(cache, (*h).clone())))
                .cloned()
                .collect())
        })
    }

    async fn nar_url_in_use(&self, cache: CacheId, url: &str) -> Result<bool> {
        self.with(|s| Ok(s.nar_url_in_use(cache, url)))
    }

    async fn touch_cached_paths(&self, cache: CacheId, hash_parts: &[String], at: Timestamp) -> Result<u64> {
        self.with(|s| Ok(s.touch_cached_paths(cache, hash_parts, at)))
    }

    async fn stale_cached_paths(&self, before: Timestamp, limit: u32) -> Result<Vec<CachedPath>> {
        self.with(|s| Ok(s.stale_cached_paths(before, limit)))
    }

    async fn delete_cached_path(&self, cache: CacheId, hash_part: &str) -> Result<bool> {
        self.with(|s| Ok(s.cached_paths.remove(&(cache, hash_part.to_owned())).is_some()))
    }

    async fn cache_usage(&self, cache: CacheId) -> Result<(u64, u64)> {
        self.with(|s| Ok(s.cache_usage(cache)))
    }
}

impl Workers for MemoryStorage {
    async fn create_worker_registration(&self, registration: &WorkerRegistration) -> Result<()> {
        self.with(|s| s.create_worker_registration(registration))
    }

    async fn worker_registrations(&self, org: OrgId) -> Result<Vec<WorkerRegistration>> {
        self.with(|s| Ok(s.worker_registrations(|r| r.org_id == org)))
    }

    async fn worker_registrations_for(&self, worker: WorkerId) -> Result<Vec<WorkerRegistration>> {
        self.with(|s| Ok(s.worker_registrations(|r| r.worker_id == worker)))
    }

    async fn worker_registration(&self, peer: PeerId) -> Result<Option<WorkerRegistration>> {
        self.with(|s| Ok(s.worker_registrations.get(&peer).cloned()))
    }

    async fn delete_worker_registration(&self, org: OrgId, peer: PeerId) -> Result<bool> {
        self.with(|s| Ok(s.delete_worker_registration(org, peer)))
    }

    async fn all_worker_registrations(&self) -> Result<Vec<WorkerRegistration>> {
        self.with(|s| Ok(s.worker_registrations(|_| true)))
    }

    async fn set_worker_proof_key(
        &self,
        peer: PeerId,
        old: &gradient_domain::crypt::Sealed,
        new: &gradient_domain::crypt::Sealed,
    ) -> Result<bool> {
        self.with(|s| {
            Ok(match s.worker_registrations.get_mut(&peer) {
                Some(r) if r.proof_key == *old => {
                    r.proof_key = new.clone();
                    true
                }
                _ => false,
            })
        })
    }
}

impl Queue for MemoryStorage {
    async fn enqueue_job(&self, job: &JobRecord) -> Result<JobRecord> {
        self.with(|s| s.enqueue_job(job))
    }

    async fn enqueue_jobs(&self, jobs: &[JobRecord]) -> Result<Vec<JobRecord>> {
        self.with(|s| s.enqueue_jobs(jobs))
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.with(|s| Ok(s.jobs.get(&id).cloned()))
    }

    async fn queued_jobs(&self, limit: u32) -> Result<Vec<JobRecord>> {
        self.with(|s| Ok(s.jobs(|j| j.state == JobState::Queued, limit)))
    }

    async fn queued_jobs_of(&self, org: OrgId, limit: u32) -> Result<Vec<JobRecord>> {
        self.with(|s| Ok(s.jobs(|j| j.state == JobState::Queued && j.org_id == org, limit)))
    }

    async fn assign_job(&self, id: JobId, worker: WorkerId, at: Timestamp) -> Result<bool> {
        self.with(|s| Ok(s.assign_job(id, worker, at)))
    }

    async fn assign_jobs(&self, assignments: &[(JobId, WorkerId)], at: Timestamp) -> Result<Vec<JobId>> {
        self.with(|s| {
            Ok(assignments
                .iter()
                .filter(|(id, worker)| s.assign_job(*id, *worker, at))
                .map(|(id, _)| *id)
                .collect())
        })
    }

    async fn requeue_jobs(&self, worker: WorkerId, jobs: &[JobId]) -> Result<u64> {
        self.with(|s| Ok(s.requeue_jobs(worker, jobs)))
    }

    async fn finish_job(&self, run: Run, done: bool) -> Result<bool> {
        self.with(|s| Ok(s.finish_job(run, done)))
    }

    async fn finish_jobs(&self, runs: &[(Run, bool)]) -> Result<Vec<bool>> {
        self.with(|s| Ok(runs.iter().map(|(run, done)| s.finish_job(*run, *done)).collect()))
    }

    async fn jobs_assigned_to(&self, worker: WorkerId) -> Result<Vec<JobRecord>> {
        let assigned = |j: &JobRecord| matches!(j.state, JobState::Assigned { worker: w, .. } if w == worker);
        self.with(|s| Ok(s.jobs(assigned, u32::MAX)))
    }

    async fn cancel_queued_job(&self, id: JobId) -> Result<bool> {
        self.with(|s| {
            Ok(match s.jobs.get_mut(&id) {
                Some(job) if job.state == JobState::Queued => {
                    job.state = JobState::Failed;
                    true
                }
                _ => false,
            })
        })
    }
}

impl Evaluations for MemoryStorage {
    async fn create_evaluation(&self, evaluation: &Evaluation) -> Result<()> {
        self.with(|s| s.create_evaluation(evaluation))
    }

    async fn evaluation(&self, id: EvaluationId) -> Result<Option<Evaluation>> {
        self.with(|s| Ok(s.evaluations.get(&id).cloned()))
    }

    async fn evaluations(&self, project: ProjectId, limit: u32) -> Result<Vec<Evaluation>> {
        self.with(|s| Ok(s.evaluations(project, limit)))
    }

    async fn update_evaluation(&self, evaluation: &Evaluation) -> Result<()> {
        self.with(|s| s.update_evaluation(evaluation))
    }

    async fn update_evaluation_if(
        &self,
        from: gradient_domain::status::EvaluationStatus,
        evaluation: &Evaluation,
    ) -> Result<bool> {
        self.with(|s| {
            let stored = s
                .evaluations
                .get(&evaluation.id)
                .ok_or(gradient_domain::ports::StorageError::NotFound)?;
            if stored.status != from {
                return Ok(false);
            }
            s.update_evaluation(evaluation)?;
            Ok(true)
        })
    }

    async fn delete_evaluation(&self, id: EvaluationId) -> Result<bool> {
        self.with(|s| Ok(s.delete_evaluation(id)))
    }

    async fn put_derivations(&self, org: OrgId, derivations: &[Derivation]) -> Result<()> {
        self.with(|s| s.put_derivations(org, derivations))
    }

    async fn derivation(&self, org: OrgId, drv_path: &str) -> Result<Option<Derivation>> {
        self.with(|s| Ok(s.org_derivations.get(&(org, drv_path.to_owned())).cloned()))
    }

    async fn derivations(&self, org: OrgId, drv_paths: &[String]) -> Result<Vec<Derivation>> {
        let wanted: std::collections::BTreeSet<&String> = drv_paths.iter().collect();
        self.with(|s| {
            Ok(wanted
                .into_iter()
                .filter_map(|p| s.org_derivations.get(&(org, p.clone())).cloned())
                .collect())
        })
    }

    async fn dependents(&self, org: OrgId, drv_path: &str) -> Result<Vec<String>> {
        self.with(|s| {
            let mut found: Vec<String> = s
                .org_derivations
                .iter()
                .filter(|((o, _), d)| *o == org && d.inputs.iter().any(|i| i == drv_path))
                .map(|((_, path), _)| path.clone())
                .collect();
            found.sort();
            Ok(found)
        })
    }

    async fn add_entry_points(&self, evaluation: EvaluationId, entry_points: &[EntryPoint]) -> Result<()> {
        self.with(|s| s.add_entry_points(evaluation, entry_points))
    }

    async fn entry_points(&self, evaluation: EvaluationId) -> Result<Vec<EntryPoint>> {
        self.with(|s| Ok(s.entry_points(evaluation)))
    }

    async fn link_builds(
        &self,
        evaluation: EvaluationId,
        org: OrgId,
        drv_paths: &[String],
        at: Timestamp,
    ) -> Result<Vec<Build>> {
        self.with(|s| s.link_builds(evaluation, org, drv_paths, at))
    }

    async fn build(&self, org: OrgId, drv_path: &str) -> Result<Option<Build>> {
        self.with(|s| Ok(s.builds.get(&(org, drv_path.to_owned())).cloned()))
    }

    async fn builds(&self, org: OrgId, drv_paths: &[String]) -> Result<Vec<Build>> {
        let wanted: std::collections::BTreeSet<&String> = drv_paths.iter().collect();
        self.with(|s| {
            Ok(wanted
                .into_iter()
                .filter_map(|p| s.builds.get(&(org, p.clone())).cloned())
                .collect())
        })
    }

    async fn build_statuses(
        &self,
        org: OrgId,
        drv_paths: &[String],
    ) -> Result<Vec<(String, gradient_domain::status::BuildStatus)>> {
        let wanted: std::collections::BTreeSet<&String> = drv_paths.iter().collect();
        self.with(|s| {
            Ok(wanted
                .into_iter()
                .filter_map(|p| s.builds.get(&(org, p.clone())).map(|b| (p.clone(), b.status)))
                .collect())
        })
    }

    async fn count_builds(
        &self,
        evaluation: EvaluationId,
        statuses: &[gradient_domain::status::BuildStatus],
    ) -> Result<u64> {
        self.with(|s| {
            Ok(s.builds_of_evaluation(evaluation)
                .iter()
                .filter(|b| statuses.contains(&b.status))
                .count() as u64)
        })
    }

    async fn has_builds(
        &self,
        evaluation: EvaluationId,
        statuses: &[gradient_domain::status::BuildStatus],
    ) -> Result<bool> {
        self.with(|s| {
            Ok(s.builds_of_evaluation(evaluation)
                .iter()
                .any(|b| statuses.contains(&b.status)))
        })
    }

    async fn build_by_id(&self, id: BuildId) -> Result<Option<Build>> {
        self.with(|s| Ok(s.builds.values().find(|b| b.id == id).cloned()))
    }

    async fn put_build_log(&self, log: &BuildLog) -> Result<()> {
        self.with(|s| s.put_build_log(log))
    }

    async fn build_log(&self, build: BuildId) -> Result<Option<BuildLog>> {
        self.with(|s| Ok(s.build_logs.get(&build).cloned()))
    }

    async fn builds_of_evaluation(&self, evaluation: EvaluationId) -> Result<Vec<Build>> {
        self.with(|s| Ok(s.builds_of_evaluation(evaluation)))
    }

    async fn update_build(&self, build: &Build) -> Result<()> {
        self.with(|s| s.update_build(build))
    }

    async fn update_build_if(&self, from: BuildStatus, build: &Build) -> Result<bool> {
        self.with(|s| s.update_build_if(from, build))
    }

    async fn end_builds(&self, builds: &[(BuildStatus, Build, Option<Run>)], logs: &[BuildLog]) -> Result<Vec<bool>> {
        self.with(|s| {
            // Checked first: all or nothing.
            for (_, b, _) in builds {
                if !s.builds.contains_key(&(b.org_id, b.drv_path.clone())) {
                    return Err(gradient_domain::ports::StorageError::NotFound);
                }
            }
            for l in logs {
                if !s.builds.values().any(|b| b.id == l.build_id) {
                    return Err(gradient_domain::ports::StorageError::NotFound);
                }
            }
            let mut written = Vec::with_capacity(builds.len());
            for (from, b, run) in builds {
                let in_run = run.is_none_or(|r| s.in_run(r));
                written.push(in_run && s.update_build_if(*from, b)?);
            }
            for l in logs {
                s.put_build_log(l)?;
            }
            Ok(written)
        })
    }

    async fn update_builds_if(&self, builds: &[(BuildStatus, Build)]) -> Result<Vec<BuildSwap>> {
        self.with(|s| s.update_builds_if(builds))
    }

    async fn evaluations_needing(&self, org: OrgId, drv_path: &str) -> Result<Vec<EvaluationId>> {
        self.with(|s| Ok(s.evaluations_needing(org, drv_path)))
    }
}

impl Integrations for MemoryStorage {
    async fn set_webhook_secret(
        &self,
        org: OrgId,
        secret: &gradient_domain::crypt::Sealed,
        _at: Timestamp,
    ) -> Result<()> {
        self.with(|s| {
            if !s.orgs.contains_key(&org) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            s.webhook_secrets.insert(org, secret.clone());
            Ok(())
        })
    }

    async fn webhook_secret(&self, org: OrgId) -> Result<Option<gradient_domain::crypt::Sealed>> {
        self.with(|s| Ok(s.webhook_secrets.get(&org).cloned()))
    }

    async fn set_org_ssh_key(&self, key: &gradient_domain::model::OrgSshKey) -> Result<()> {
        self.with(|s| {
            if !s.orgs.contains_key(&key.org_id) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            s.ssh_keys.insert(key.org_id, key.clone());
            Ok(())
        })
    }

    async fn init_org_ssh_key(
        &self,
        key: &gradient_domain::model::OrgSshKey,
    ) -> Result<gradient_domain::model::OrgSshKey> {
        self.with(|s| {
            if !s.orgs.contains_key(&key.org_id) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            Ok(s.ssh_keys.entry(key.org_id).or_insert_with(|| key.clone()).clone())
        })
    }

    async fn org_ssh_key(&self, org: OrgId) -> Result<Option<gradient_domain::model::OrgSshKey>> {
        self.with(|s| Ok(s.ssh_keys.get(&org).cloned()))
    }

    async fn set_forge_connection(
        &self,
        connection: &gradient_domain::model::ForgeConnection,
        _at: Timestamp,
    ) -> Result<()> {
        self.with(|s| {
            if !s.orgs.contains_key(&connection.org_id) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            s.forge_connections.insert(connection.org_id, connection.clone());
            Ok(())
        })
    }

    async fn forge_connection(&self, org: OrgId) -> Result<Option<gradient_domain::model::ForgeConnection>> {
        self.with(|s| Ok(s.forge_connections.get(&org).cloned()))
    }

    async fn enqueue_status(&self, report: &gradient_domain::model::StatusReport) -> Result<()> {
        self.with(|s| {
            if !s.orgs.contains_key(&report.org_id) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            if s.status_reports.iter().any(|r| r.id == report.id) {
                return Err(gradient_domain::ports::StorageError::Conflict(
                    "status report id".into(),
                ));
            }
            s.status_reports.push(report.clone());
            Ok(())
        })
    }

    async fn due_statuses(&self, now: Timestamp, limit: u32) -> Result<Vec<gradient_domain::model::StatusReport>> {
        self.with(|s| {
            Ok(s.status_reports
                .iter()
                .filter(|r| !r.delivered && r.next_attempt_at <= now)
                .take(limit as usize)
                .cloned()
                .collect())
        })
    }

    async fn status_delivered(&self, id: gradient_domain::StatusReportId) -> Result<bool> {
        self.with(|s| {
            Ok(s.status_reports
                .iter_mut()
                .find(|r| r.id == id)
                .map(|r| r.delivered = true)
                .is_some())
        })
    }

    async fn status_failed(
        &self,
        id: gradient_domain::StatusReportId,
        error: &str,
        next_attempt_at: Timestamp,
    ) -> Result<bool> {
        self.with(|s| {
            Ok(s.status_reports
                .iter_mut()
                .find(|r| r.id == id)
                .map(|r| {
                    r.attempts += 1;
                    r.last_error = Some(error.to_owned());
                    r.next_attempt_at = next_attempt_at;
                })
                .is_some())
        })
    }

    async fn statuses_of(&self, evaluation: EvaluationId) -> Result<Vec<gradient_domain::model::StatusReport>> {
        self.with(|s| {
            Ok(s.status_reports
                .iter()
                .filter(|r| r.evaluation_id == evaluation)
                .cloned()
                .collect())
        })
    }

    async fn put_github_installation(&self, installation: &gradient_domain::model::GithubInstallation) -> Result<()> {
        self.with(|s| {
            s.github_installations
                .retain(|id, i| *id == installation.id || i.account != installation.account);
            s.github_installations.insert(installation.id, installation.clone());
            Ok(())
        })
    }

    async fn github_installation(&self, account: &str) -> Result<Option<gradient_domain::model::GithubInstallation>> {
        self.with(|s| Ok(s.github_installations.values().find(|i| i.account == account).cloned()))
    }

    async fn delete_github_installation(&self, id: u64) -> Result<bool> {
        self.with(|s| Ok(s.github_installations.remove(&id).is_some()))
    }

    async fn link_github_installation(&self, link: &gradient_domain::model::GithubInstallationLink) -> Result<()> {
        self.with(|s| {
            if !s.orgs.contains_key(&link.org_id) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            s.github_installation_links
                .insert((link.org_id, link.installation_id), link.clone());
            Ok(())
        })
    }

    async fn github_installation_links(
        &self,
        org: OrgId,
    ) -> Result<Vec<gradient_domain::model::GithubInstallationLink>> {
        self.with(|s| {
            Ok(s.github_installation_links
                .range((org, 0)..=(org, u64::MAX))
                .map(|(_, l)| l.clone())
                .collect())
        })
    }

    async fn github_installation_orgs(&self, installation: u64) -> Result<Vec<OrgId>> {
        self.with(|s| {
            Ok(s.github_installation_links
                .keys()
                .filter(|(_, i)| *i == installation)
                .map(|(o, _)| *o)
                .collect())
        })
    }

    async fn unlink_github_installation(&self, org: OrgId, installation: u64) -> Result<bool> {
        self.with(|s| Ok(s.github_installation_links.remove(&(org, installation)).is_some()))
    }
}

impl gradient_domain::ports::storage::Audit for MemoryStorage {
    async fn record_audit(&self, entry: &gradient_domain::model::AuditEntry, keep: u32) -> Result<u64> {
        self.with(|s| {
            if !s.orgs.contains_key(&entry.org_id) {
                return Err(gradient_domain::ports::StorageError::NotFound);
            }
            s.audit_seq += 1;
            let seq = s.audit_seq;
            s.audit_log
                .push(gradient_domain::model::AuditEntry { seq, ..entry.clone() });
            let held = s.audit_log.iter().filter(|e| e.org_id == entry.org_id).count();
            let mut excess = held.saturating_sub(keep as usize);
            s.audit_log.retain(|e| {
                if excess > 0 && e.org_id == entry.org_id {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
            Ok(seq)
        })
    }

    async fn audit_log(
        &self,
        org: OrgId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<gradient_domain::model::AuditEntry>> {
        self.with(|s| {
            Ok(s.audit_log
                .iter()
                .rev()
                .filter(|e| e.org_id == org && before.is_none_or(|b| e.seq < b))
                .take(limit as usize)
                .cloned()
                .collect())
        })
    }
}

impl Meta for MemoryStorage {
    async fn totals(&self) -> Result<gradient_domain::ports::storage::Totals> {
        use gradient_domain::model::JobState;
        use std::collections::BTreeMap;
        self.with(|s| {
            let mut evaluations = BTreeMap::new();
            for e in s.evaluations.values() {
                *evaluations.entry(e.status.as_str()).or_insert(0u64) += 1;
            }
            let mut builds = BTreeMap::new();
            for b in s.builds.values() {
                *builds.entry(b.status.as_str()).or_insert(0u64) += 1;
            }
            let queued = s.jobs.values().filter(|j| j.state == JobState::Queued);
            Ok(gradient_domain::ports::storage::Totals {
                evaluations: evaluations
                    .into_iter()
                    .filter_map(|(k, n)| gradient_domain::status::EvaluationStatus::parse(k).map(|st| (st, n)))
                    .collect(),
                builds: builds
                    .into_iter()
                    .filter_map(|(k, n)| gradient_domain::status::BuildStatus::parse(k).map(|st| (st, n)))
                    .collect(),
                queued_jobs: queued.clone().count() as u64,
                oldest_queued_job: queued.map(|j| j.created_at).min(),
                assigned_jobs: s
                    .jobs
                    .values()
                    .filter(|j| matches!(j.state, JobState::Assigned { .. }))
                    .count() as u64,
                nar_files: s.nar_files.len() as u64,
                nar_bytes: s.nar_files.values().map(|f| f.file_size).sum(),
            })
        })
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|s| Ok(s.meta.get(key).cloned()))
    }

    async fn meta_init(&self, key: &str, value: &str) -> Result<String> {
        self.with(|s| Ok(s.meta.entry(key.to_owned()).or_insert_with(|| value.to_owned()).clone()))
    }
}
