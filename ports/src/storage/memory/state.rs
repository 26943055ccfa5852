//! The in-memory state and the rules of the storage port applied to it. Every write checks all it needs to
//! before it changes anything, so a refused write leaves the state as it was.

use gradient_domain::model::{
    ApiKey, Build, BuildLog, Cache, CachedPath, Derivation, EntryPoint, Evaluation, JobId, JobKind, JobRecord,
    JobState, Member, Membership, NarFile, Org, Project, Role, RoleRef, Session, SubscribedCache, Subscriber,
    Subscription, Timestamp, User, WorkerRegistration,
};
use gradient_domain::permissions::BuiltinRole;
use gradient_domain::ports::storage::{BuildSwap, Result, Run, StorageError};
use gradient_domain::status::BuildStatus;
use gradient_domain::{
    ApiKeyId, BuildId, CacheId, EvaluationId, Name, OrgId, PeerId, ProjectId, RoleId, SessionId, UserId, WorkerId,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Clone, Debug, Default)]
pub(super) struct State {
    pub(super) users: HashMap<UserId, User>,
    pub(super) sessions: HashMap<SessionId, Session>,
    /// Sessions' last use and user agent (an entry of a deleted session is never read: lookups go through
    /// `sessions`).
    pub(super) session_activity: HashMap<SessionId, (Option<Timestamp>, Option<String>)>,
    /// Audit entries of every organization, oldest first, and the last `seq` given.
    pub(super) audit_log: Vec<gradient_domain::model::AuditEntry>,
    pub(super) audit_seq: u64,
    pub(super) api_keys: HashMap<ApiKeyId, ApiKey>,
    pub(super) orgs: HashMap<OrgId, Org>,
    pub(super) roles: HashMap<RoleId, Role>,
    pub(super) memberships: HashMap<(OrgId, UserId), RoleRef>,
    pub(super) projects: HashMap<ProjectId, Project>,
    pub(super) caches: HashMap<CacheId, Cache>,
    /// (org, cache) → (granted, push).
    pub(super) subscriptions: BTreeMap<(OrgId, CacheId), (bool, bool)>,
    /// NAR file records by (cache, url).
    pub(super) nar_files: BTreeMap<(CacheId, String), NarFile>,
    /// Cached paths by (cache, hash part).
    pub(super) cached_paths: BTreeMap<(CacheId, String), CachedPath>,
    pub(super) worker_registrations: HashMap<PeerId, WorkerRegistration>,
    pub(super) jobs: HashMap<JobId, JobRecord>,
    pub(super) evaluations: HashMap<EvaluationId, Evaluation>,
    /// Derivations by `.drv` path.
    /// The known `.drv` paths (what builds and entry points refer to).
    pub(super) derivations: HashSet<String>,
    /// What each organization's workers reported about a derivation.
    pub(super) org_derivations: HashMap<(OrgId, String), Derivation>,
    /// Entry points by (evaluation, attribute).
    pub(super) entry_points: BTreeMap<(EvaluationId, String), EntryPoint>,
    /// Builds by (organization, `.drv` path).
    pub(super) builds: BTreeMap<(OrgId, String), Build>,
    pub(super) build_logs: HashMap<BuildId, BuildLog>,
    /// Links from evaluations to builds: (evaluation, `.drv` path) → the build's organization.
    pub(super) evaluation_builds: BTreeMap<(EvaluationId, String), OrgId>,
    pub(super) meta: HashMap<String, String>,
    /// Sealed webhook secrets by organization.
    pub(super) webhook_secrets: HashMap<OrgId, gradient_domain::crypt::Sealed>,
    pub(super) ssh_keys: HashMap<OrgId, gradient_domain::model::OrgSshKey>,
    /// Organizations whose webhook secret the declarative state manages.
    pub(super) managed_webhook_secrets: HashSet<OrgId>,
    pub(super) forge_connections: HashMap<OrgId, gradient_domain::model::ForgeConnection>,
    /// The status outbox, in the order reports were enqueued.
    pub(super) status_reports: Vec<gradient_domain::model::StatusReport>,
    /// The GitHub App's installations by id (at most one per account).
    pub(super) github_installations: HashMap<u64, gradient_domain::model::GithubInstallation>,
    /// Links of installations to organizations, by (organization, installation).
    pub(super) github_installation_links: BTreeMap<(OrgId, u64), gradient_domain::model::GithubInstallationLink>,
    /// Mailed single-use tokens by hash.
    pub(super) email_tokens: HashMap<String, gradient_domain::model::EmailToken>,
    /// Users who turned mail about evaluations off.
    pub(super) no_evaluation_mail: HashSet<UserId>,
    /// OIDC identities by (issuer, subject).
    pub(super) oidc_identities: BTreeMap<(String, String), gradient_domain::model::OidcIdentity>,
    /// OIDC sign-ins in progress by state.
    pub(super) oidc_flows: HashMap<String, gradient_domain::model::OidcFlow>,
    /// Schedule anchors by project.
    pub(super) schedule_anchors: HashMap<ProjectId, Timestamp>,
    /// Projects' actions by id.
    pub(super) actions: HashMap<gradient_domain::ActionId, gradient_domain::model::Action>,
    /// Deliveries of actions, in the order they were added.
    pub(super) deliveries: Vec<gradient_domain::model::Delivery>,
}

fn conflict(what: &str) -> StorageError {
    StorageError::Conflict(what.to_owned())
}

/// Fails with NotFound unless `present`.
fn require(present: bool) -> Result<()> {
    if present { Ok(()) } else { Err(StorageError::NotFound) }
}

/// Role names are unique and looked up ignoring ASCII case, like built-in role names.
fn same_role_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl State {
    // Users.

    pub(super) fn create_user(&mut self, user: &User) -> Result<()> {
        self.check_new_user(user)?;
        self.users.insert(user.id, user.clone());
        Ok(())
    }

    /// The conflicts creating `user` would meet.
    pub(super) fn check_new_user(&self, user: &User) -> Result<()> {
        if self.users.contains_key(&user.id) {
            return Err(conflict("user id"));
        }
        if self.users.values().any(|u| u.username == user.username) {
            return Err(conflict("username"));
        }
        if self.users.values().any(|u| u.email == user.email) {
            return Err(conflict("email"));
        }
        Ok(())
    }

    pub(super) fn session_info(&self, session: &Session) -> gradient_domain::model::SessionInfo {
        let (last_used_at, user_agent) = self.session_activity.get(&session.id).cloned().unwrap_or_default();
        gradient_domain::model::SessionInfo {
            session: session.clone(),
            last_used_at,
            user_agent,
        }
    }

    pub(super) fn create_session(&mut self, session: &Session) -> Result<()> {
        if self.sessions.contains_key(&session.id) {
            return Err(conflict("session id"));
        }
        require(self.users.contains_key(&session.user_id))?;
        self.sessions.insert(session.id, session.clone());
        Ok(())
    }

    pub(super) fn create_api_key(&mut self, key: &ApiKey) -> Result<()> {
        if self.api_keys.contains_key(&key.id) {
            return Err(conflict("api key id"));
        }
        require(self.users.contains_key(&key.user_id))?;
        if self.api_keys.values().any(|k| k.hash == key.hash) {
            return Err(conflict("api key"));
        }
        self.api_keys.insert(key.id, key.clone());
        Ok(())
    }

    pub(super) fn api_keys(&self, user: UserId) -> Vec<ApiKey> {
        let mut keys: Vec<ApiKey> = self.api_keys.values().filter(|k| k.user_id == user).cloned().collect();
        keys.sort_by_key(|k| (k.created_at, k.id));
        keys
    }

    pub(super) fn delete_api_key(&mut self, user: UserId, id: ApiKeyId) -> bool {
        let owned = self.api_keys.get(&id).is_some_and(|k| k.user_id == user);
        owned && self.api_keys.remove(&id).is_some()
    }

    // Organizations.

    pub(super) fn create_org(&mut self, org: &Org) -> Result<()> {
        if self.orgs.contains_key(&org.id) {
            return Err(conflict("org id"));
        }
        if self.orgs.values().any(|o| o.name == org.name) {
            return Err(conflict("org name"));
        }
        require(self.users.contains_key(&org.created_by))?;
        self.orgs.insert(org.id, org.clone());
        self.memberships
            .insert((org.id, org.created_by), RoleRef::Builtin(BuiltinRole::Admin));
        Ok(())
    }

    pub(super) fn visible_orgs(&self, user: Option<UserId>) -> Vec<Org> {
        let visible = |o: &&Org| o.public || user.is_some_and(|u| self.memberships.contains_key(&(o.id, u)));
        let mut orgs: Vec<Org> = self.orgs.values().filter(visible).cloned().collect();
        orgs.sort_by(|a, b| a.name.cmp(&b.name));
        orgs
    }

    pub(super) fn update_org(&mut self, org: &Org) -> Result<()> {
        let stored = self.orgs.get_mut(&org.id).ok_or(StorageError::NotFound)?;
        stored.display_name.clone_from(&org.display_name);
        stored.description.clone_from(&org.description);
        stored.public = org.public;
        Ok(())
    }

    pub(super) fn delete_org(&mut self, id: OrgId) -> bool {
        if self.orgs.remove(&id).is_none() {
            return false;
        }
        self.memberships.retain(|(org, _), _| *org != id);
        self.roles.retain(|_, r| r.org_id != id);
        let projects: BTreeSet<ProjectId> = self
            .projects
            .values()
            .filter(|p| p.org_id == id)
            .map(|p| p.id)
            .collect();
        for project in projects {
            self.delete_project(project);
        }
        self.builds.retain(|(org, _), _| *org != id);
        self.org_derivations.retain(|(org, _), _| *org != id);
        let builds: HashSet<BuildId> = self.builds.values().map(|b| b.id).collect();
        self.build_logs.retain(|b, _| builds.contains(b));
        self.evaluation_builds.retain(|_, org| *org != id);
        self.subscriptions.retain(|(org, _), _| *org != id);
        self.worker_registrations.retain(|_, r| r.org_id != id);
        self.jobs.retain(|_, j| j.org_id != id);
        self.webhook_secrets.remove(&id);
        self.ssh_keys.remove(&id);
        self.managed_webhook_secrets.remove(&id);
        self.forge_connections.remove(&id);
        self.github_installation_links.retain(|(org, _), _| *org != id);
        self.status_reports.retain(|r| r.org_id != id);
        self.audit_log.retain(|e| e.org_id != id);
        true
    }

    // Roles.

    pub(super) fn create_role(&mut self, role: &Role) -> Result<()> {
        if self.roles.contains_key(&role.id) {
            return Err(conflict("role id"));
        }
        require(self.orgs.contains_key(&role.org_id))?;
        if self.role_by_name(role.org_id, &role.name).is_some() {
            return Err(conflict("role name"));
        }
        self.roles.insert(role.id, role.clone());
        Ok(())
    }

    pub(super) fn roles(&self, org: OrgId) -> Vec<Role> {
        let mut roles: Vec<Role> = self.roles.values().filter(|r| r.org_id == org).cloned().collect();
        roles.sort_by(|a, b| {
            let key = |r: &Role| (r.name.to_ascii_lowercase(), r.name.clone());
            key(a).cmp(&key(b))
        });
        roles
    }

    pub(super) fn role_by_name(&self, org: OrgId, name: &str) -> Option<Role> {
        self.roles
            .values()
            .find(|r| r.org_id == org && same_role_name(&r.name, name))
            .cloned()
    }

    pub(super) fn delete_role(&mut self, id: RoleId) -> Result<bool> {
        if !self.roles.contains_key(&id) {
            return Ok(false);
        }
        if self.memberships.values().any(|r| *r == RoleRef::Custom(id)) {
            return Err(conflict("role in use"));
        }
        Ok(self.roles.remove(&id).is_some())
    }

    // Memberships.

    pub(super) fn set_membership(&mut self, m: &Membership) -> Result<()> {
        require(self.orgs.contains_key(&m.org_id))?;
        require(self.users.contains_key(&m.user_id))?;
        if let RoleRef::Custom(role) = m.role {
            require(self.roles.get(&role).is_some_and(|r| r.org_id == m.org_id))?;
        }
        self.memberships.insert((m.org_id, m.user_id), m.role.clone());
        Ok(())
    }

    pub(super) fn members(&self, org: OrgId) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .memberships
            .iter()
            .filter(|((o, _), _)| *o == org)
            .filter_map(|((_, user), role)| {
                let role_name = match role {
                    RoleRef::Builtin(builtin) => builtin.as_str().to_owned(),
                    RoleRef::Custom(id) => self.roles.get(id)?.name.clone(),
                };
                Some(Member {
                    user_id: *user,
                    username: self.users.get(user)?.username.clone(),
                    role: role.clone(),
                    role_name,
                })
            })
            .collect();
        members.sort_by(|a, b| a.username.cmp(&b.username));
        members
    }

    // Projects.

    pub(super) fn create_project(&mut self, project: &Project) -> Result<()> {
        if self.projects.contains_key(&project.id) {
            return Err(conflict("project id"));
        }
        require(self.orgs.contains_key(&project.org_id))?;
        require(self.users.contains_key(&project.created_by))?;
        if self.project(project.org_id, &project.name).is_some() {
            return Err(conflict("project name"));
        }
        self.projects.insert(project.id, project.clone());
        Ok(())
    }

    pub(super) fn project(&self, org: OrgId, name: &Name) -> Option<Project> {
        self.projects
            .values()
            .find(|p| p.org_id == org && p.name == *name)
            .cloned()
    }

    pub(super) fn projects(&self, org: OrgId) -> Vec<Project> {
        let mut projects: Vec<Project> = self.projects.values().filter(|p| p.org_id == org).cloned().collect();
        projects.sort_by(|a, b| a.name.cmp(&b.name));
        projects
    }

    pub(super) fn update_project(&mut self, project: &Project) -> Result<()> {
        let stored = self.projects.get_mut(&project.id).ok_or(StorageError::NotFound)?;
        *stored = Project {
            id: stored.id,
            org_id: stored.org_id,
            name: stored.name.clone(),
            created_by: stored.created_by,
            created_at: stored.created_at,
            ..project.clone()
        };
        Ok(())
    }

    /// Deletes the project with its evaluations.
    pub(super) fn delete_project(&mut self, id: ProjectId) -> bool {
        if self.projects.remove(&id).is_none() {
            return false;
        }
        let evaluations: Vec<EvaluationId> = self
            .evaluations
            .values()
            .filter(|e| e.project_id == id)
            .map(|e| e.id)
            .collect();
        for evaluation in evaluations {
            self.delete_evaluation(evaluation);
        }
        self.schedule_anchors.remove(&id);
        let actions: HashSet<gradient_domain::ActionId> = self
            .actions
            .values()
            .filter(|a| a.project_id == id)
            .map(|a| a.id)
            .collect();
        self.actions.retain(|a, _| !actions.contains(a));
        self.deliveries.retain(|d| !actions.contains(&d.action_id));
        true
    }

    // Caches.

    pub(super) fn create_cache(&mut self, cache: &Cache) -> Result<()> {
        if self.caches.contains_key(&cache.id) {
            return Err(conflict("cache id"));
        }
        if self.caches.values().any(|c| c.name == cache.name) {
            return Err(conflict("cache name"));
        }
        require(self.users.contains_key(&cache.created_by))?;
        self.caches.insert(cache.id, cache.clone());
        Ok(())
    }

    pub(super) fn visible_caches(&self, user: Option<UserId>) -> Vec<Cache> {
        let subscribed_by_member = |cache: CacheId, user: UserId| {
            self.subscriptions
                .iter()
                .any(|((org, c), (granted, _))| *granted && *c == cache && self.memberships.contains_key(&(*org, user)))
        };
        let visible = |c: &&Cache| c.public || user.is_some_and(|u| c.created_by == u || subscribed_by_member(c.id, u));
        let mut caches: Vec<Cache> = self.caches.values().filter(visible).cloned().collect();
        caches.sort_by(|a, b| a.name.cmp(&b.name));
        caches
    }

    pub(super) fn update_cache(&mut self, cache: &Cache) -> Result<()> {
        let stored = self.caches.get_mut(&cache.id).ok_or(StorageError::NotFound)?;
        stored.display_name.clone_from(&cache.display_name);
        stored.description.clone_from(&cache.description);
        stored.public = cache.public;
        stored.priority = cache.priority;
        stored.local_priority = cache.local_priority;
        stored.compression = cache.compression;
        stored.signing_key.clone_from(&cache.signing_key);
        Ok(())
    }

    pub(super) fn delete_cache(&mut self, id: CacheId) -> bool {
        if self.caches.remove(&id).is_none() {
            return false;
        }
        self.subscriptions.retain(|(_, cache), _| *cache != id);
        self.nar_files.retain(|(cache, _), _| *cache != id);
        self.cached_paths.retain(|(cache, _), _| *cache != id);
        true
    }

    pub(super) fn subscribe(&mut self, sub: &Subscription) -> Result<bool> {
        require(self.orgs.contains_key(&sub.org_id) && self.caches.contains_key(&sub.cache_id))?;
        match self.subscriptions.get_mut(&(sub.org_id, sub.cache_id)) {
            Some((granted, _)) => {
                *granted |= sub.granted;
                Ok(false)
            }
            None => {
                self.subscriptions
                    .insert((sub.org_id, sub.cache_id), (sub.granted, false));
                Ok(true)
            }
        }
    }

    pub(super) fn set_push_cache(&mut self, org: OrgId, cache: Option<CacheId>) -> bool {
        if let Some(cache) = cache
            && !self
                .subscriptions
                .get(&(org, cache))
                .is_some_and(|(granted, _)| *granted)
        {
            return false;
        }
        for ((o, c), (_, push)) in self.subscriptions.iter_mut() {
            if *o == org {
                *push = Some(*c) == cache;
            }
        }
        true
    }

    pub(super) fn subscriptions(&self, org: OrgId) -> Vec<SubscribedCache> {
        let mut caches: Vec<SubscribedCache> = self
            .subscriptions
            .iter()
            .filter(|((o, _), _)| *o == org)
            .filter_map(|((_, cache), (granted, push))| {
                self.caches.get(cache).map(|c| SubscribedCache {
                    cache: c.clone(),
                    granted: *granted,
                    push: *push,
                })
            })
            .collect();
        caches.sort_by(|a, b| a.cache.name.cmp(&b.cache.name));
        caches
    }

    pub(super) fn subscribers(&self, cache: CacheId) -> Vec<Subscriber> {
        let mut orgs: Vec<Subscriber> = self
            .subscriptions
            .iter()
            .filter(|((_, c), _)| *c == cache)
            .filter_map(|((org, _), (granted, push))| {
                self.orgs.get(org).map(|o| Subscriber {
                    org: o.clone(),
                    granted: *granted,
                    push: *push,
                })
            })
            .collect();
        orgs.sort_by(|a, b| a.org.name.cmp(&b.org.name));
        orgs
    }

    // Cache contents.

    pub(super) fn put_nar_file(&mut self, file: &NarFile) -> Result<()> {
        require(self.caches.contains_key(&file.cache_id))?;
        self.nar_files.insert((file.cache_id, file.url.clone()), file.clone());
        Ok(())
    }

    pub(super) fn nar_url_in_use(&self, cache: CacheId, url: &str) -> bool {
        self.cached_paths.values().any(|p| p.cache_id == cache && p.url == url)
    }

    /// Oldest first; ties by cache and url, as the SQL adapter orders them.
    pub(super) fn orphan_nar_files(&self, before: Timestamp, limit: u32) -> Vec<NarFile> {
        let mut files: Vec<&NarFile> = self
            .nar_files
            .values()
            .filter(|f| f.created_at < before && !self.nar_url_in_use(f.cache_id, &f.url))
            .collect();
        files.sort_by(|a, b| (a.created_at, a.cache_id, &a.url).cmp(&(b.created_at, b.cache_id, &b.url)));
        files.into_iter().take(limit_len(limit)).cloned().collect()
    }

    pub(super) fn put_cached_path(&mut self, path: &CachedPath) -> Result<bool> {
        require(self.caches.contains_key(&path.cache_id))?;
        let key = (path.cache_id, path.hash_part.clone());
        if self.cached_paths.contains_key(&key) {
            return Ok(false);
        }
        self.cached_paths.insert(key, path.clone());
        Ok(true)
    }

    /// All or nothing: every cache is checked before anything changes.
    pub(super) fn put_nar_files(&mut self, files: &[NarFile]) -> Result<()> {
        for f in files {
            require(self.caches.contains_key(&f.cache_id))?;
        }
        files.iter().try_for_each(|f| self.put_nar_file(f))
    }

    /// All or nothing: every cache is checked before anything changes.
    pub(super) fn put_cached_paths(&mut self, paths: &[CachedPath]) -> Result<Vec<bool>> {
        for p in paths {
            require(self.caches.contains_key(&p.cache_id))?;
        }
        paths.iter().map(|p| self.put_cached_path(p)).collect()
    }

    pub(super) fn touch_cached_paths(&mut self, cache: CacheId, hash_parts: &[String], at: Timestamp) -> u64 {
        let wanted: BTreeSet<&String> = hash_parts.iter().collect();
        let mut touched = 0;
        for hash_part in wanted {
            if let Some(path) = self.cached_paths.get_mut(&(cache, hash_part.clone())) {
                path.last_fetched_at = at;
                touched += 1;
            }
        }
        touched
    }

    /// Least recently fetched first; ties by cache and hash part, as the SQL adapter orders them.
    pub(super) fn stale_cached_paths(&self, before: Timestamp, limit: u32) -> Vec<CachedPath> {
        let mut paths: Vec<&CachedPath> = self
            .cached_paths
            .values()
            .filter(|p| p.last_fetched_at < before)
            .collect();
        paths.sort_by(|a, b| {
            (a.last_fetched_at, a.cache_id, &a.hash_part).cmp(&(b.last_fetched_at, b.cache_id, &b.hash_part))
        });
        paths.into_iter().take(limit_len(limit)).cloned().collect()
    }

    pub(super) fn cache_usage(&self, cache: CacheId) -> (u64, u64) {
        self.cached_paths
            .values()
            .filter(|p| p.cache_id == cache)
            .fold((0, 0), |(count, bytes), p| {
                (count + 1, bytes.saturating_add(p.file_size))
            })
    }

    // Worker registrations.

    pub(super) fn create_worker_registration(&mut self, registration: &WorkerRegistration) -> Result<()> {
        if self.worker_registrations.contains_key(&registration.peer_id) {
            return Err(conflict("peer id"));
        }
        require(self.orgs.contains_key(&registration.org_id))?;
        if self
            .worker_registrations
            .values()
            .any(|r| r.org_id == registration.org_id && r.worker_id == registration.worker_id)
        {
            return Err(conflict("worker registration"));
        }
        self.worker_registrations
            .insert(registration.peer_id, registration.clone());
        Ok(())
    }

    /// The registrations matching `keep`, oldest first, ties by peer id.
    pub(super) fn worker_registrations(&self, keep: impl Fn(&WorkerRegistration) -> bool) -> Vec<WorkerRegistration> {
        let mut found: Vec<WorkerRegistration> = self
            .worker_registrations
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect();
        found.sort_by_key(|r| (r.created_at, r.peer_id));
        found
    }

    pub(super) fn delete_worker_registration(&mut self, org: OrgId, peer: PeerId) -> bool {
        let owned = self.worker_registrations.get(&peer).is_some_and(|r| r.org_id == org);
        owned && self.worker_registrations.remove(&peer).is_some()
    }

    // Jobs.

    pub(super) fn enqueue_job(&mut self, job: &JobRecord) -> Result<JobRecord> {
        if job.state.is_active()
            && let Some(active) = self
                .jobs
                .values()
                .find(|j| j.org_id == job.org_id && j.state.is_active() && same_subject(&j.kind, &job.kind))
        {
            return Ok(active.clone());
        }
        if self.jobs.contains_key(&job.id) {
            return Err(conflict("job id"));
        }
        require(self.orgs.contains_key(&job.org_id))?;
        self.jobs.insert(job.id, job.clone());
        Ok(job.clone())
    }

    /// Each job as `enqueue_job`, all or none.
    pub(super) fn enqueue_jobs(&mut self, jobs: &[JobRecord]) -> Result<Vec<JobRecord>> {
        let before = self.jobs.clone();
        let mut standing = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.enqueue_job(job) {
                Ok(j) => standing.push(j),
                Err(e) => {
                    self.jobs = before;
                    return Err(e);
                }
            }
        }
        Ok(standing)
    }

    /// The jobs matching `keep`, oldest first, ties by id, at most `limit`.
    pub(super) fn jobs(&self, keep: impl Fn(&JobRecord) -> bool, limit: u32) -> Vec<JobRecord> {
        let mut found: Vec<&JobRecord> = self.jobs.values().filter(|j| keep(j)).collect();
        found.sort_by_key(|j| (j.created_at, j.id));
        found.into_iter().take(limit_len(limit)).cloned().collect()
    }

    pub(super) fn assign_job(&mut self, id: JobId, worker: WorkerId, at: Timestamp) -> bool {
        match self.jobs.get_mut(&id) {
            Some(job) if job.state == JobState::Queued => {
                job.state = JobState::Assigned { worker, since: at };
                true
            }
            _ => false,
        }
    }

    pub(super) fn requeue_jobs(&mut self, worker: WorkerId, jobs: &[JobId]) -> u64 {
        let mut requeued = 0;
        for job in self.jobs.values_mut() {
            if jobs.contains(&job.id) && matches!(job.state, JobState::Assigned { worker: w, .. } if w == worker) {
                job.state = JobState::Queued;
                job.attempts = job.attempts.saturating_add(1);
                requeued += 1;
            }
        }
        requeued
    }

    /// Whether the run's job is still in that assignment (see [`Run`]).
    pub(super) fn in_run(&self, run: Run) -> bool {
        self.jobs.get(&run.job).and_then(Run::of) == Some(run)
    }

    pub(super) fn finish_job(&mut self, run: Run, done: bool) -> bool {
        if !self.in_run(run) {
            return false;
        }
        match self.jobs.get_mut(&run.job) {
            Some(job) => {
                job.state = if done { JobState::Done } else { JobState::Failed };
                true
            }
            None => false,
        }
    }
}

impl State {
    // Evaluations.

    pub(super) fn create_evaluation(&mut self, evaluation: &Evaluation) -> Result<()> {
        if self.evaluations.contains_key(&evaluation.id) {
            return Err(conflict("evaluation id"));
        }
        require(self.projects.contains_key(&evaluation.project_id))?;
        self.evaluations.insert(evaluation.id, evaluation.clone());
        Ok(())
    }

    /// Newest first, ties by id descending, at most `limit`.
    pub(super) fn evaluations(&self, project: ProjectId, limit: u32) -> Vec<Evaluation> {
        let mut found: Vec<&Evaluation> = self.evaluations.values().filter(|e| e.project_id == project).collect();
        found.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
        found.into_iter().take(limit_len(limit)).cloned().collect()
    }

    pub(super) fn update_evaluation(&mut self, evaluation: &Evaluation) -> Result<()> {
        let stored = self.evaluations.get_mut(&evaluation.id).ok_or(StorageError::NotFound)?;
        stored.status = evaluation.status;
        stored.errors.clone_from(&evaluation.errors);
        stored.transitions.clone_from(&evaluation.transitions);
        stored.updated_at = evaluation.updated_at;
        Ok(())
    }

    pub(super) fn delete_evaluation(&mut self, id: EvaluationId) -> bool {
        if self.evaluations.remove(&id).is_none() {
            return false;
        }
        self.entry_points.retain(|(evaluation, _), _| *evaluation != id);
        self.evaluation_builds.retain(|(evaluation, _), _| *evaluation != id);
        true
    }

    pub(super) fn put_derivations(&mut self, org: OrgId, derivations: &[Derivation]) -> Result<()> {
        require(derivations.is_empty() || self.orgs.contains_key(&org))?;
        for derivation in derivations {
            self.derivations.insert(derivation.drv_path.clone());
            self.org_derivations
                .entry((org, derivation.drv_path.clone()))
                .or_insert_with(|| derivation.clone());
        }
        Ok(())
    }

    pub(super) fn add_entry_points(&mut self, evaluation: EvaluationId, entry_points: &[EntryPoint]) -> Result<()> {
        if entry_points.iter().any(|e| e.evaluation_id != evaluation) {
            return Err(conflict("entry point evaluation"));
        }
        require(self.evaluations.contains_key(&evaluation))?;
        require(entry_points.iter().all(|e| self.derivations.contains(&e.drv_path)))?;
        for entry_point in entry_points {
            self.entry_points
                .insert((evaluation, entry_point.attribute.clone()), entry_point.clone());
        }
        Ok(())
    }

    pub(super) fn entry_points(&self, evaluation: EvaluationId) -> Vec<EntryPoint> {
        self.entry_points
            .range((evaluation, String::new())..)
            .take_while(|((e, _), _)| *e == evaluation)
            .map(|(_, entry_point)| entry_point.clone())
            .collect()
    }

    pub(super) fn link_builds(
        &mut self,
        evaluation: EvaluationId,
        org: OrgId,
        drv_paths: &[String],
        at: Timestamp,
    ) -> Result<Vec<Build>> {
        require(self.evaluations.contains_key(&evaluation) && self.orgs.contains_key(&org))?;
        let wanted: BTreeSet<&String> = drv_paths.iter().collect();
        require(wanted.iter().all(|path| self.derivations.contains(*path)))?;
        let mut builds = Vec::with_capacity(wanted.len());
        for drv_path in wanted {
            let build = self
                .builds
                .entry((org, drv_path.clone()))
                .or_insert_with(|| Build::queued(org, drv_path, at));
            builds.push(build.clone());
            self.evaluation_builds
                .entry((evaluation, drv_path.clone()))
                .or_insert(org);
        }
        Ok(builds)
    }

    pub(super) fn builds_of_evaluation(&self, evaluation: EvaluationId) -> Vec<Build> {
        self.evaluation_builds
            .range((evaluation, String::new())..)
            .take_while(|((e, _), _)| *e == evaluation)
            .filter_map(|((_, drv_path), org)| self.builds.get(&(*org, drv_path.clone())).cloned())
            .collect()
    }

    pub(super) fn update_build(&mut self, build: &Build) -> Result<()> {
        let stored = self
            .builds
            .get_mut(&(build.org_id, build.drv_path.clone()))
            .ok_or(StorageError::NotFound)?;
        stored.status = build.status;
        stored.transitions.clone_from(&build.transitions);
        stored.updated_at = build.updated_at;
        Ok(())
    }

    /// `update_build` when the stored status is still `from`; answers whether it was.
    pub(super) fn update_build_if(&mut self, from: BuildStatus, build: &Build) -> Result<bool> {
        let stored = self
            .builds
            .get(&(build.org_id, build.drv_path.clone()))
            .ok_or(StorageError::NotFound)?;
        if stored.status != from {
            return Ok(false);
        }
        self.update_build(build)?;
        Ok(true)
    }

    /// Each build as `update_build_if`, answering what each found; none written when one is listed twice.
    pub(super) fn update_builds_if(&mut self, builds: &[(BuildStatus, Build)]) -> Result<Vec<BuildSwap>> {
        let mut listed = HashSet::new();
        if !builds
            .iter()
            .all(|(_, b)| listed.insert((b.org_id, b.drv_path.as_str())))
        {
            return Err(StorageError::Conflict("build listed twice".into()));
        }
        let mut found = Vec::with_capacity(builds.len());
        for (from, build) in builds {
            found.push(match self.builds.get(&(build.org_id, build.drv_path.clone())) {
                None => BuildSwap::Absent,
                Some(stored) if stored.status != *from => BuildSwap::Moved(stored.status),
                Some(_) => {
                    self.update_build(build)?;
                    BuildSwap::Written
                }
            });
        }
        Ok(found)
    }

    pub(super) fn put_build_log(&mut self, log: &BuildLog) -> Result<()> {
        require(self.builds.values().any(|b| b.id == log.build_id))?;
        self.build_logs.insert(log.build_id, log.clone());
        Ok(())
    }

    /// Oldest first, ties by id.
    pub(super) fn evaluations_needing(&self, org: OrgId, drv_path: &str) -> Vec<EvaluationId> {
        let mut found: Vec<&Evaluation> = self
            .evaluation_builds
            .iter()
            .filter(|((_, path), o)| **o == org && path == drv_path)
            .filter_map(|((evaluation, _), _)| self.evaluations.get(evaluation))
            .collect();
        found.sort_by_key(|e| (e.created_at, e.id));
        found.into_iter().map(|e| e.id).collect()
    }
}

/// Whether two jobs are about the same thing: the same derivation, or the same evaluation.
fn same_subject(a: &JobKind, b: &JobKind) -> bool {
    match (a, b) {
        (JobKind::Build { derivation: a, .. }, JobKind::Build { derivation: b, .. }) => a == b,
        (JobKind::Evaluate { evaluation_id: a }, JobKind::Evaluate { evaluation_id: b }) => a == b,
        _ => false,
    }
}

/// A list limit as a length (a `u32` always fits a `usize` on the platforms Gradient runs on).
fn limit_len(limit: u32) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}
