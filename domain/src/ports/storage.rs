//! Where Gradient keeps its state. One adapter (`storage-sql`) implements it on SQLite and PostgreSQL;
//! `gradient-ports` has the in-memory implementation and the contract suite all three pass.
//!
//! Conventions every implementation MUST follow:
//! * "absent" is `Ok(None)` (or `Ok(false)` for deletes), never an error; an empty list is `Ok(vec![])`.
//! * A write that would break a uniqueness rule fails with `StorageError::Conflict` and changes nothing.
//! * An update of a row that does not exist fails with `StorageError::NotFound`.
//! * Writes that touch several rows are atomic: all or nothing.
//! * Timestamps read back equal to what was written (callers truncate them to microseconds).
//! * Lists are ordered by name (users by username), unless a method says otherwise.
//! * `Unavailable` is for the backend failing (connection lost, disk full); its text is for logs only.

use crate::model::{
    ApiKey, AuditEntry, Build, BuildLog, Cache, CachedPath, Derivation, EntryPoint, Evaluation, JobId, JobRecord,
    Member, Membership, NarFile, OidcFlow, OidcIdentity, Org, Project, Role, RoleRef, Session, SessionInfo,
    SubscribedCache, Subscriber, Subscription, Timestamp, User, WorkerRegistration,
};
use crate::{
    ApiKeyId, BuildId, CacheId, EvaluationId, Name, OrgId, PeerId, ProjectId, RoleId, SessionId, UserId, WorkerId,
};
use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The row to update or the row a new one refers to does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule (or a reference still in use) forbids the write. The text names what collided,
    /// e.g. `username`, `email`, `org name`, `role in use`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend cannot be reached now (connection, pool, I/O); retrying later may work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the operation or a stored value does not decode: retrying will not help.
    #[error("storage failed: {0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The run of a build a worker's report belongs to: its job, assigned to `worker`, taken back from lost workers
/// `attempts` times (see [`JobRecord::attempts`]) when the report was checked. A job requeued and handed out
/// again is another run, though its id is the same: a write guarded by a run lands only while its job is still
/// in that assignment (see [`Evaluations::end_builds`], [`Queue::finish_job`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub job: JobId,
    pub worker: WorkerId,
    pub attempts: u32,
}

impl Run {
    /// The run a job read as assigned is in (None for a job not assigned).
    pub fn of(job: &JobRecord) -> Option<Run> {
        match job.state {
            crate::model::JobState::Assigned { worker, .. } => Some(Run {
                job: job.id,
                worker,
                attempts: job.attempts,
            }),
            _ => None,
        }
    }
}

/// What a compare-and-set of one build's status found (see [`Evaluations::update_builds_if`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildSwap {
    /// Its status was the one expected: the build was written.
    Written,
    /// Its status was this other one (a move committed meanwhile): nothing was written.
    Moved(crate::status::BuildStatus),
    /// It does not exist (its organization was deleted meanwhile): nothing was written.
    Absent,
}

/// Everything Gradient stores. Split by aggregate so an adapter's file can follow the same shape.
pub trait Storage:
    Users
    + Identities
    + Orgs
    + Projects
    + Caches
    + CacheContents
    + Workers
    + Queue
    + Evaluations
    + Integrations
    + Declared
    + Meta
    + Audit
    + Mailing
    + Actions
    + Send
    + Sync
    + 'static
{
}

impl<
    T: Users
        + Identities
        + Orgs
        + Projects
        + Caches
        + CacheContents
        + Workers
        + Queue
        + Evaluations
        + Integrations
        + Declared
        + Meta
        + Audit
        + Mailing
        + Actions
        + Send
        + Sync
        + 'static,
> Storage for T
{
}

/// Users, their sessions and their API keys.
pub trait Users {
    /// Conflict("username") or Conflict("email") when taken.
    fn create_user(&self, user: &User) -> impl Future<Output = Result<()>> + Send;
    fn user(&self, id: UserId) -> impl Future<Output = Result<Option<User>>> + Send;
    fn user_by_username(&self, username: &Name) -> impl Future<Output = Result<Option<User>>> + Send;
    /// `email` is matched exactly (emails are stored lowercase).
    fn user_by_email(&self, email: &str) -> impl Future<Output = Result<Option<User>>> + Send;

    /// NotFound when the user does not exist.
    fn create_session(&self, session: &Session) -> impl Future<Output = Result<()>> + Send;
    fn session(&self, id: SessionId) -> impl Future<Output = Result<Option<Session>>> + Send;
    /// Ok(false) when there was no such session.
    fn delete_session(&self, id: SessionId) -> impl Future<Output = Result<bool>> + Send;
    /// The session with what is known of its use.
    fn session_info(&self, id: SessionId) -> impl Future<Output = Result<Option<SessionInfo>>> + Send;
    /// The user's sessions that have not expired at `now`, newest first (ties by id descending).
    fn sessions_of(&self, user: UserId, now: Timestamp) -> impl Future<Output = Result<Vec<SessionInfo>>> + Send;
    /// Records when the session was last used (only that changes). Ok(false) if the session does not exist.
    fn touch_session(&self, id: SessionId, at: Timestamp) -> impl Future<Output = Result<bool>> + Send;
    /// Records the `User-Agent` of the login that opened the session. Ok(false) if the session does not exist.
    fn set_session_user_agent(&self, id: SessionId, user_agent: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes every session of the user except `keep`; answers how many were deleted.
    fn delete_sessions_of(&self, user: UserId, keep: Option<SessionId>) -> impl Future<Output = Result<u64>> + Send;

    /// NotFound when the owner does not exist; Conflict("api key") when the hash is already stored.
    fn create_api_key(&self, key: &ApiKey) -> impl Future<Output = Result<()>> + Send;
    /// The user's keys, oldest first.
    fn api_keys(&self, user: UserId) -> impl Future<Output = Result<Vec<ApiKey>>> + Send;
    fn api_key_by_hash(&self, hash: &str) -> impl Future<Output = Result<Option<ApiKey>>> + Send;
    /// Deletes the key only if it belongs to `user`; Ok(false) otherwise.
    fn delete_api_key(&self, user: UserId, id: ApiKeyId) -> impl Future<Output = Result<bool>> + Send;
    /// Records when the key was last used (only `last_used_at` changes). Ok(false) if the key does not exist.
    fn touch_api_key(&self, id: ApiKeyId, at: Timestamp) -> impl Future<Output = Result<bool>> + Send;
}

/// Accounts at OpenID Providers (issuer + subject) that sign in as users, and the sign-ins in progress.
pub trait Identities {
    /// Creates the user and links the identity to it, atomically. Conflict("username") or Conflict("email")
    /// when taken, Conflict("oidc identity") when the issuer and subject already sign in as someone.
    fn create_oidc_user(&self, user: &User, identity: &OidcIdentity) -> impl Future<Output = Result<()>> + Send;
    /// Links the identity to its (existing) user. NotFound when the user does not exist; Conflict("oidc
    /// identity") when the issuer and subject are already linked (to anyone).
    fn link_oidc_identity(&self, identity: &OidcIdentity) -> impl Future<Output = Result<()>> + Send;
    /// The user the issuer's subject signs in as.
    fn user_by_oidc_identity(&self, issuer: &str, subject: &str) -> impl Future<Output = Result<Option<User>>> + Send;
    /// The identities linked to the user, oldest first.
    fn oidc_identities(&self, user: UserId) -> impl Future<Output = Result<Vec<OidcIdentity>>> + Send;

    /// Conflict("oidc flow") when a flow with this state exists; NotFound when `link_user` names no user.
    fn create_oidc_flow(&self, flow: &OidcFlow) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the flow with this state and answers it: of two concurrent takes, one gets it and the other
    /// `None` (whether or not it has expired; the caller checks).
    fn take_oidc_flow(&self, state: &str) -> impl Future<Output = Result<Option<OidcFlow>>> + Send;
    /// Deletes the flows that expired before `now`; answers how many.
    fn delete_expired_oidc_flows(&self, now: Timestamp) -> impl Future<Output = Result<u64>> + Send;
}

/// Organizations, their custom roles and their members.
pub trait Orgs {
    /// Creates the organization and makes `org.created_by` its Admin, atomically.
    /// Conflict("org name") when the name is taken; NotFound when the creator does not exist.
    fn create_org(&self, org: &Org) -> impl Future<Output = Result<()>> + Send;
    fn org_by_name(&self, name: &Name) -> impl Future<Output = Result<Option<Org>>> + Send;
    fn org(&self, id: OrgId) -> impl Future<Output = Result<Option<Org>>> + Send;
    /// Public organizations and those `user` is a member of.
    fn visible_orgs(&self, user: Option<UserId>) -> impl Future<Output = Result<Vec<Org>>> + Send;
    /// Updates display name, description and public flag (the name and id are fixed). NotFound if absent.
    fn update_org(&self, org: &Org) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the organization with its memberships, roles, projects (and their evaluations), subscriptions,
    /// worker registrations, jobs and builds. Ok(false) if absent.
    fn delete_org(&self, id: OrgId) -> impl Future<Output = Result<bool>> + Send;

    /// Conflict("role name") when the organization already has a role of that name (case-insensitively);
    /// NotFound when the organization does not exist.
    fn create_role(&self, role: &Role) -> impl Future<Output = Result<()>> + Send;
    /// Custom roles of the organization, by name.
    fn roles(&self, org: OrgId) -> impl Future<Output = Result<Vec<Role>>> + Send;
    /// Case-insensitive lookup of a custom role.
    fn role_by_name(&self, org: OrgId, name: &str) -> impl Future<Output = Result<Option<Role>>> + Send;
    fn role(&self, id: RoleId) -> impl Future<Output = Result<Option<Role>>> + Send;
    /// Conflict("role in use") while a member holds it; Ok(false) if absent.
    fn delete_role(&self, id: RoleId) -> impl Future<Output = Result<bool>> + Send;

    /// Adds the member, or changes the role of an existing member. NotFound when the organization, the
    /// user or the custom role (which must belong to the same organization) does not exist.
    fn set_membership(&self, membership: &Membership) -> impl Future<Output = Result<()>> + Send;
    fn membership(&self, org: OrgId, user: UserId) -> impl Future<Output = Result<Option<RoleRef>>> + Send;
    /// Members with usernames and role names, by username.
    fn members(&self, org: OrgId) -> impl Future<Output = Result<Vec<Member>>> + Send;
    /// Ok(false) when the user was not a member.
    fn delete_membership(&self, org: OrgId, user: UserId) -> impl Future<Output = Result<bool>> + Send;
}

pub trait Projects {
    /// Conflict("project name") when the organization already has a project of that name;
    /// NotFound when the organization does not exist.
    fn create_project(&self, project: &Project) -> impl Future<Output = Result<()>> + Send;
    fn project(&self, org: OrgId, name: &Name) -> impl Future<Output = Result<Option<Project>>> + Send;
    fn project_by_id(&self, id: ProjectId) -> impl Future<Output = Result<Option<Project>>> + Send;
    fn projects(&self, org: OrgId) -> impl Future<Output = Result<Vec<Project>>> + Send;
    /// Every active project with a poll interval, of any organization, by id.
    fn polled_projects(&self) -> impl Future<Output = Result<Vec<Project>>> + Send;
    /// Every active project of every organization, by id (the GitHub App's pushes match against them all).
    fn active_projects(&self) -> impl Future<Output = Result<Vec<Project>>> + Send;
    /// Updates every field but id, org, name, creator and creation time. NotFound if absent.
    fn update_project(&self, project: &Project) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the project with its evaluations (see [`Evaluations::delete_evaluation`]) and its actions (with
    /// their deliveries). Ok(false) if absent.
    fn delete_project(&self, id: ProjectId) -> impl Future<Output = Result<bool>> + Send;
    /// Every active project with a schedule, of any organization, by id, with its schedule's anchor (when it
    /// last ran or was first seen; see [`Projects::set_schedule_anchor`]).
    fn scheduled_projects(&self) -> impl Future<Output = Result<Vec<ScheduledProject>>> + Send;
    /// Records the project's schedule anchor (`None` forgets it: the schedule starts anew). Only that changes;
    /// [`Projects::update_project`] leaves it. Ok(false) if the project does not exist.
    fn set_schedule_anchor(&self, id: ProjectId, at: Option<Timestamp>) -> impl Future<Output = Result<bool>> + Send;
}

/// A project with its schedule's anchor (see [`Projects::scheduled_projects`]).
pub type ScheduledProject = (Project, Option<Timestamp>);

/// Projects' actions (outgoing webhooks and mail on evaluation events) and their deliveries. Deleted with their
/// project (and so with their organization).
pub trait Actions {
    /// NotFound when the project does not exist; Conflict("action name") when the project has an action of that
    /// name.
    fn create_action(&self, action: &crate::model::Action) -> impl Future<Output = Result<()>> + Send;
    fn action(&self, id: crate::ActionId) -> impl Future<Output = Result<Option<crate::model::Action>>> + Send;
    /// The project's actions, by name.
    fn actions_of(&self, project: ProjectId) -> impl Future<Output = Result<Vec<crate::model::Action>>> + Send;
    /// Updates name, kind (URL, secret, recipients), events and enabled. NotFound if absent; Conflict("action
    /// name") when another action of the project has that name.
    fn update_action(&self, action: &crate::model::Action) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the action with its deliveries. Ok(false) if absent.
    fn delete_action(&self, id: crate::ActionId) -> impl Future<Output = Result<bool>> + Send;
    /// Adds a delivery and deletes the action's oldest deliveries beyond the newest `keep` (by creation time,
    /// ties by id), atomically. NotFound when the action does not exist.
    fn add_delivery(&self, delivery: &crate::model::Delivery, keep: u32) -> impl Future<Output = Result<()>> + Send;
    /// Pending deliveries whose `next_attempt_at` is at or before `now`, oldest first, at most `limit`.
    fn due_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<crate::model::Delivery>>> + Send;
    /// Updates state, attempts, status code, last error, next attempt and `updated_at`. NotFound if absent.
    fn update_delivery(&self, delivery: &crate::model::Delivery) -> impl Future<Output = Result<()>> + Send;
    /// The action's deliveries, newest first (ties by id), at most `limit`.
    fn deliveries_of(
        &self,
        action: crate::ActionId,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<crate::model::Delivery>>> + Send;
}

pub trait Caches {
    /// Conflict("cache name") when taken; NotFound when the creator does not exist.
    fn create_cache(&self, cache: &Cache) -> impl Future<Output = Result<()>> + Send;
    fn cache_by_name(&self, name: &Name) -> impl Future<Output = Result<Option<Cache>>> + Send;
    fn cache(&self, id: CacheId) -> impl Future<Output = Result<Option<Cache>>> + Send;
    /// Public caches, caches `user` created, and caches granted to an organization `user` is a member of.
    fn visible_caches(&self, user: Option<UserId>) -> impl Future<Output = Result<Vec<Cache>>> + Send;
    /// Updates display name, description, public, priority, local priority, compression and signing key.
    fn update_cache(&self, cache: &Cache) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the cache with its subscriptions, cached paths and NAR file records. Ok(false) if absent.
    fn delete_cache(&self, id: CacheId) -> impl Future<Output = Result<bool>> + Send;

    /// Records a subscription, replacing the org's one to the same cache (its `granted` is kept when the new
    /// one is not granted, and `push` is set only through [`Caches::set_push_cache`]). Ok(false) when the org
    /// was already subscribed; NotFound when the org or cache does not exist.
    fn subscribe(&self, sub: &Subscription) -> impl Future<Output = Result<bool>> + Send;
    /// Ok(false) when not subscribed.
    fn unsubscribe(&self, org: OrgId, cache: CacheId) -> impl Future<Output = Result<bool>> + Send;
    /// Makes `cache` the org's push cache (its subscription must exist and be granted), or clears it with
    /// `None`. One statement: at no moment has the org two push caches. Ok(false) when `cache` is not a
    /// granted subscription of the org.
    fn set_push_cache(&self, org: OrgId, cache: Option<CacheId>) -> impl Future<Output = Result<bool>> + Send;
    /// The caches an organization subscribes to, by name.
    fn subscriptions(&self, org: OrgId) -> impl Future<Output = Result<Vec<SubscribedCache>>> + Send;
    /// The organizations subscribed to a cache, by name.
    fn subscribers(&self, cache: CacheId) -> impl Future<Output = Result<Vec<Subscriber>>> + Send;
}

/// What caches hold: NAR files as received, and the store paths (narinfos) that refer to them.
pub trait CacheContents {
    /// Records a received NAR file, replacing the record of the same `url` in the same cache.
    /// NotFound when the cache does not exist.
    fn put_nar_file(&self, file: &NarFile) -> impl Future<Output = Result<()>> + Send;
    fn nar_file(&self, cache: CacheId, url: &str) -> impl Future<Output = Result<Option<NarFile>>> + Send;
    /// Ok(false) if absent.
    fn delete_nar_file(&self, cache: CacheId, url: &str) -> impl Future<Output = Result<bool>> + Send;
    /// NAR files created before `before` that no cached path of their cache refers to, oldest first,
    /// at most `limit`.
    fn orphan_nar_files(&self, before: Timestamp, limit: u32) -> impl Future<Output = Result<Vec<NarFile>>> + Send;

    /// Stores a path's narinfo unless the cache already holds a path with the same hash part, which is
    /// left as it is: a cache never replaces what it has. Ok(false) when one was there.
    /// NotFound when the cache does not exist.
    fn put_cached_path(&self, path: &CachedPath) -> impl Future<Output = Result<bool>> + Send;
    /// Records several received NAR files in one transaction, each as [`Self::put_nar_file`] does: all of them
    /// or, on error, none. NotFound when a cache does not exist.
    fn put_nar_files(&self, files: &[NarFile]) -> impl Future<Output = Result<()>> + Send;
    /// Stores several paths in one transaction, each as [`Self::put_cached_path`] does (in order, so of two
    /// with one hash part the first is kept); answers, in order, whether each was stored. All or, on error,
    /// none. NotFound when a cache does not exist.
    fn put_cached_paths(&self, paths: &[CachedPath]) -> impl Future<Output = Result<Vec<bool>>> + Send;
    fn cached_path(&self, cache: CacheId, hash_part: &str) -> impl Future<Output = Result<Option<CachedPath>>> + Send;
    /// Which of `hash_parts` the cache holds, in one question whatever their number (a push asks about a whole
    /// closure, an evaluation about every output). Each held one once, in no particular order.
    fn held_hash_parts(
        &self,
        cache: CacheId,
        hash_parts: &[String],
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Whether any cached path of the cache refers to this NAR url.
    fn nar_url_in_use(&self, cache: CacheId, url: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Sets `last_fetched_at = at` for the given paths of the cache (unknown hash parts are ignored);
    /// answers how many were updated. One call per batch, not per request.
    fn touch_cached_paths(
        &self,
        cache: CacheId,
        hash_parts: &[String],
        at: Timestamp,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Paths of any cache last fetched before `before`, least recently fetched first, at most `limit`.
    fn stale_cached_paths(&self, before: Timestamp, limit: u32)
    -> impl Future<Output = Result<Vec<CachedPath>>> + Send;
    /// Ok(false) if absent.
    fn delete_cached_path(&self, cache: CacheId, hash_part: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Number of paths and total compressed bytes the cache holds.
    fn cache_usage(&self, cache: CacheId) -> impl Future<Output = Result<(u64, u64)>> + Send;
}

/// Workers registered under organizations. Whether a worker is connected is not stored: the server keeps
/// that in memory.
pub trait Workers {
    /// Registers a worker under an organization. NotFound when the organization does not exist;
    /// Conflict("peer id") when the peer id is taken (in any organization); Conflict("worker registration")
    /// when the worker is already registered in that organization (one registration per worker per
    /// organization). When both collide, the peer id is reported.
    fn create_worker_registration(&self, registration: &WorkerRegistration) -> impl Future<Output = Result<()>> + Send;
    /// The organization's registrations, oldest first (ties by peer id).
    fn worker_registrations(&self, org: OrgId) -> impl Future<Output = Result<Vec<WorkerRegistration>>> + Send;
    /// Every registration of the worker, in all organizations (the handshake challenges each), oldest first
    /// (ties by peer id).
    fn worker_registrations_for(
        &self,
        worker: WorkerId,
    ) -> impl Future<Output = Result<Vec<WorkerRegistration>>> + Send;
    fn worker_registration(&self, peer: PeerId) -> impl Future<Output = Result<Option<WorkerRegistration>>> + Send;
    /// Deletes the registration only if it belongs to `org`; Ok(false) otherwise. Deleting an organization
    /// deletes its registrations.
    fn delete_worker_registration(&self, org: OrgId, peer: PeerId) -> impl Future<Output = Result<bool>> + Send;
    /// Every registration of every organization, oldest first (ties by peer id): the start-up step that seals
    /// proof keys reads them.
    fn all_worker_registrations(&self) -> impl Future<Output = Result<Vec<WorkerRegistration>>> + Send;
    /// Replaces the registration's stored proof key with `new` only if it still is `old` (compare-and-set);
    /// Ok(false) when the registration is gone or holds something else.
    fn set_worker_proof_key(
        &self,
        peer: PeerId,
        old: &crate::crypt::Sealed,
        new: &crate::crypt::Sealed,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// The persistent job queue (see [`JobRecord`]): what workers are doing or will do, kept so a restart loses
/// nothing. Which job goes to which worker is the scheduler's decision; the queue only keeps the records and
/// makes each state change a compare-and-set, so two callers racing for the same change cannot both win.
/// A job is *active* while `Queued` or `Assigned`. Deleting an organization deletes its jobs.
pub trait Queue {
    /// Adds a job, stored as given (normally `Queued` with no attempts), and answers the job now standing for
    /// that work. At most one active job exists per organization and subject — a build's derivation, an
    /// evaluation's id: while one is active, enqueueing the same subject again stores nothing and answers the
    /// active job (build-once; compare the ids to tell). Otherwise Conflict("job id") when the id is taken,
    /// NotFound when the organization does not exist, and on success the job itself.
    fn enqueue_job(&self, job: &JobRecord) -> impl Future<Output = Result<JobRecord>> + Send;
    /// Enqueues each job as [`Queue::enqueue_job`] does, in the order given, in one transaction, and answers
    /// the job now standing for each, in that order (a job for the subject of an earlier one in the list
    /// answers the earlier). Atomic: on an error (Conflict("job id"), NotFound) nothing is stored. However
    /// many jobs, a few statements (an evaluation queues all its builds at once).
    fn enqueue_jobs(&self, jobs: &[JobRecord]) -> impl Future<Output = Result<Vec<JobRecord>>> + Send;
    fn job(&self, id: JobId) -> impl Future<Output = Result<Option<JobRecord>>> + Send;
    /// Queued jobs of every organization, oldest first (ties by id), at most `limit`.
    fn queued_jobs(&self, limit: u32) -> impl Future<Output = Result<Vec<JobRecord>>> + Send;
    /// Queued jobs of one organization, oldest first (ties by id), at most `limit`: what others queue does not
    /// crowd them out.
    fn queued_jobs_of(&self, org: OrgId, limit: u32) -> impl Future<Output = Result<Vec<JobRecord>>> + Send;
    /// Hands a queued job to `worker`: `Queued → Assigned { worker, since: at }`. Ok(false), changing nothing,
    /// when the job is not queued (already assigned, finished) or does not exist.
    fn assign_job(&self, id: JobId, worker: WorkerId, at: Timestamp) -> impl Future<Output = Result<bool>> + Send;
    /// Hands each listed job to its worker as [`Queue::assign_job`] does (each a compare-and-set), at `at`, in
    /// one transaction; answers the jobs assigned, in the order given (one not queued or absent is left out and
    /// left as it is; a job listed twice is assigned once, to its first worker). A dispatch round's decisions.
    fn assign_jobs(
        &self,
        assignments: &[(JobId, WorkerId)],
        at: Timestamp,
    ) -> impl Future<Output = Result<Vec<JobId>>> + Send;
    /// Takes back the listed jobs that are assigned to `worker` (it was lost, or no longer holds them):
    /// `Assigned → Queued`, one more attempt each (saturating at `u32::MAX`), creation time (so place in the
    /// queue) kept. Listed jobs not assigned to that worker are left as they are. Answers how many were
    /// requeued.
    fn requeue_jobs(&self, worker: WorkerId, jobs: &[JobId]) -> impl Future<Output = Result<u64>> + Send;
    /// Records the outcome of a run (see [`Run`]): its job `Assigned → Done` when `done`, else `Failed`, only
    /// while the job is still in that assignment — assigned to `run.worker`, taken back `run.attempts` times —:
    /// a compare-and-set on the run, so the late word of a run that is over never ends the next one, even on
    /// the same worker. Ok(false), changing nothing, when it is not (queued, finished, requeued and handed
    /// out again, to another worker or to the same one) or the job does not exist.
    fn finish_job(&self, run: Run, done: bool) -> impl Future<Output = Result<bool>> + Send;
    /// [`Queue::finish_job`] for several runs (`(run, done)`), in one transaction: answers, in order, whether
    /// each was still in its assignment (and so ended). A job listed twice ends once (the second answer is
    /// false).
    fn finish_jobs(&self, runs: &[(Run, bool)]) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// The jobs assigned to `worker`, oldest first (ties by id).
    fn jobs_assigned_to(&self, worker: WorkerId) -> impl Future<Output = Result<Vec<JobRecord>>> + Send;
    /// Ends a job no worker holds: `Queued → Failed`. Ok(false), changing nothing, when the job is not queued
    /// (assigned, finished) or does not exist.
    fn cancel_queued_job(&self, id: JobId) -> impl Future<Output = Result<bool>> + Send;
}

/// The CI loop's records: evaluations, the derivations they find, their entry points, and the builds they need.
///
/// * Derivations are global and keyed by `.drv` path (same path, same content); they are never deleted.
/// * A [`Build`] belongs to an organization and is keyed by (organization, `.drv` path): build-once within an
///   organization, however many of its evaluations need the derivation. Another organization has its own.
/// * An evaluation records which builds it needs with [`link_builds`](Evaluations::link_builds) (the closure of
///   its entry points); [`evaluations_needing`](Evaluations::evaluations_needing) goes back from a build to them.
/// * Deleting an evaluation deletes its entry points and links, never derivations or builds. Deleting a project
///   deletes its evaluations; deleting an organization deletes its projects' evaluations and its builds.
pub trait Evaluations {
    /// Stores a new evaluation as given. Conflict("evaluation id") when the id is taken; NotFound when the
    /// project does not exist.
    fn create_evaluation(&self, evaluation: &Evaluation) -> impl Future<Output = Result<()>> + Send;
    fn evaluation(&self, id: EvaluationId) -> impl Future<Output = Result<Option<Evaluation>>> + Send;
    /// The project's evaluations, newest first (by creation time, ties by id descending), at most `limit`.
    fn evaluations(&self, project: ProjectId, limit: u32) -> impl Future<Output = Result<Vec<Evaluation>>> + Send;
    /// Updates status, errors and `updated_at` (everything else is fixed). NotFound if absent.
    fn update_evaluation(&self, evaluation: &Evaluation) -> impl Future<Output = Result<()>> + Send;
    /// [`Evaluations::update_evaluation`] when the stored evaluation's status is still `from` (what the caller
    /// read and moved it from): a compare-and-set, so a move committed meanwhile (an abort while its last build
    /// ended) is not overwritten. Ok(false), changing nothing, when its status is another. NotFound if absent.
    fn update_evaluation_if(
        &self,
        from: crate::status::EvaluationStatus,
        evaluation: &Evaluation,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes the evaluation with its entry points and build links (not the derivations or builds).
    /// Ok(false) if absent.
    fn delete_evaluation(&self, id: EvaluationId) -> impl Future<Output = Result<bool>> + Send;

    /// Stores what `org`'s workers reported about the derivations, skipping any whose `.drv` path `org` already
    /// has (the stored one is kept; within one call the first of a path wins). Kept per organization: what
    /// one organization stores is never what another reads, whatever the path. Atomic; NotFound when the
    /// organization does not exist (and derivations are given).
    fn put_derivations(&self, org: OrgId, derivations: &[Derivation]) -> impl Future<Output = Result<()>> + Send;
    /// The `.drv` paths of `org`'s stored derivations that take `drv_path` as an input, by path (what a failure
    /// of `drv_path` breaks, found without reading the builds of every evaluation).
    fn dependents(&self, org: OrgId, drv_path: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The derivation as `org` stored it; `None` when only other organizations (or nobody) stored it.
    fn derivation(&self, org: OrgId, drv_path: &str) -> impl Future<Output = Result<Option<Derivation>>> + Send;
    /// The derivations of `drv_paths` as `org` stored them, by `.drv` path, each once; paths `org` did not store
    /// are left out. Any number of paths, in a few questions.
    fn derivations(&self, org: OrgId, drv_paths: &[String]) -> impl Future<Output = Result<Vec<Derivation>>> + Send;

    /// Records entry points of `evaluation`, replacing the derivation of an attribute already recorded for it
    /// (a re-evaluation after a lost worker may report it again). Every entry point must name `evaluation`:
    /// Conflict("entry point evaluation") otherwise. NotFound when the evaluation or an entry point's
    /// derivation is not stored. Atomic: on any error nothing is recorded.
    fn add_entry_points(
        &self,
        evaluation: EvaluationId,
        entry_points: &[EntryPoint],
    ) -> impl Future<Output = Result<()>> + Send;
    /// The evaluation's entry points, by attribute.
    fn entry_points(&self, evaluation: EvaluationId) -> impl Future<Output = Result<Vec<EntryPoint>>> + Send;

    /// For each `.drv` path: creates `org`'s build of it ([`Build::queued`]: a fresh id, status `Queued` at `at`)
    /// unless the organization already has one, and links it to `evaluation` (the evaluation's
    /// organization's). Answers the builds, by `.drv` path, each once, existing ones as stored (their status
    /// kept). Linking twice is harmless. NotFound when the evaluation, the organization or a derivation does not
    /// exist. Atomic: on any error nothing is created or linked.
    fn link_builds(
        &self,
        evaluation: EvaluationId,
        org: OrgId,
        drv_paths: &[String],
        at: Timestamp,
    ) -> impl Future<Output = Result<Vec<Build>>> + Send;
    fn build(&self, org: OrgId, drv_path: &str) -> impl Future<Output = Result<Option<Build>>> + Send;
    /// The organization's builds of `drv_paths` that exist, by `.drv` path, each once. Any number of paths, in a
    /// few questions.
    fn builds(&self, org: OrgId, drv_paths: &[String]) -> impl Future<Output = Result<Vec<Build>>> + Send;
    fn build_by_id(&self, id: BuildId) -> impl Future<Output = Result<Option<Build>>> + Send;
    /// The statuses of the organization's builds of `drv_paths` that exist, by `.drv` path, in one
    /// question (the scheduler asks about every input of every queued build at each dispatch). Any number of
    /// paths; duplicates are answered once.
    fn build_statuses(
        &self,
        org: OrgId,
        drv_paths: &[String],
    ) -> impl Future<Output = Result<Vec<(String, crate::status::BuildStatus)>>> + Send;
    /// How many of the builds linked to the evaluation have one of `statuses` (cheaper than reading them all,
    /// which settling an evaluation would otherwise do after every build).
    fn count_builds(
        &self,
        evaluation: EvaluationId,
        statuses: &[crate::status::BuildStatus],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Whether any build linked to the evaluation has one of `statuses`: stops at the first one found, so
    /// settling an evaluation after each of its builds ends costs little however many builds it has (a count
    /// reads them all, which made a 10,000-build evaluation quadratic).
    fn has_builds(
        &self,
        evaluation: EvaluationId,
        statuses: &[crate::status::BuildStatus],
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The builds linked to the evaluation, by `.drv` path.
    fn builds_of_evaluation(&self, evaluation: EvaluationId) -> impl Future<Output = Result<Vec<Build>>> + Send;
    /// Updates status, transitions and `updated_at` of the build of (`build.org_id`, `build.drv_path`).
    /// NotFound if absent. Unconditional: the use cases move builds with [`Evaluations::update_build_if`].
    fn update_build(&self, build: &Build) -> impl Future<Output = Result<()>> + Send;
    /// [`Evaluations::update_build`] when the stored build's status is still `from` (the status the caller
    /// read and moved it from): a compare-and-set, so a move committed meanwhile (an abort, a restart, another
    /// report) is not overwritten. Ok(false), changing nothing, when its status is another. NotFound if absent.
    fn update_build_if(
        &self,
        from: crate::status::BuildStatus,
        build: &Build,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// [`Evaluations::update_build_if`] for each `(from, build)`, in one transaction: each build is written
    /// only if its stored status is still `from`, and answers, in order, what each found ([`BuildSwap`]). A
    /// build that lost the race or is absent changes nothing and does not stop the others. Each build is listed
    /// at most once: Conflict("build listed twice"), nothing written, otherwise. Any number of builds, in a
    /// few statements (a dispatch round moves its builds at once).
    fn update_builds_if(
        &self,
        builds: &[(crate::status::BuildStatus, Build)],
    ) -> impl Future<Output = Result<Vec<BuildSwap>>> + Send;
    /// Stores the build's log, replacing the one it had (a restarted build logs anew). NotFound when the
    /// build does not exist; deleting the build deletes its log.
    fn put_build_log(&self, log: &BuildLog) -> impl Future<Output = Result<()>> + Send;
    /// [`Evaluations::update_build_if`] for each `(from, build, run)` of `builds`, then
    /// [`Evaluations::put_build_log`] for each of `logs`, in one transaction; answers, in order, whether each
    /// build was written (false: its status was no longer `from`, or, with a `run`, that run's job is no longer
    /// in that assignment — requeued, handed to another worker, ended —; its log is written all the same). All
    /// or nothing: NotFound, nothing written, when one build is absent.
    fn end_builds(
        &self,
        builds: &[(crate::status::BuildStatus, Build, Option<Run>)],
        logs: &[BuildLog],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    fn build_log(&self, build: BuildId) -> impl Future<Output = Result<Option<BuildLog>>> + Send;
    /// The evaluations linked to the organization's build of `drv_path`, oldest first (ties by id): the ones
    /// to update when that build changes.
    fn evaluations_needing(&self, org: OrgId, drv_path: &str)
    -> impl Future<Output = Result<Vec<EvaluationId>>> + Send;
}

/// An organization's links to forges: the secret its webhooks are signed with (sealed by the caller), where
/// its commit statuses go and their outbox; deleting an organization deletes them. Also the GitHub App's
/// installations, which belong to the whole instance.
pub trait Integrations {
    /// Stores the organization's webhook secret, replacing the previous one. NotFound when the organization
    /// does not exist.
    fn set_webhook_secret(
        &self,
        org: OrgId,
        secret: &crate::crypt::Sealed,
        at: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
    fn webhook_secret(&self, org: OrgId) -> impl Future<Output = Result<Option<crate::crypt::Sealed>>> + Send;

    /// Stores the organization's SSH deploy key, replacing the previous one. NotFound when the organization
    /// does not exist. Deleted with the organization.
    fn set_org_ssh_key(&self, key: &crate::model::OrgSshKey) -> impl Future<Output = Result<()>> + Send;
    /// Stores the organization's SSH deploy key unless it has one; answers the key it has then (of two
    /// concurrent first readers, both get the same key). NotFound when the organization does not exist.
    fn init_org_ssh_key(
        &self,
        key: &crate::model::OrgSshKey,
    ) -> impl Future<Output = Result<crate::model::OrgSshKey>> + Send;
    fn org_ssh_key(&self, org: OrgId) -> impl Future<Output = Result<Option<crate::model::OrgSshKey>>> + Send;

    /// Stores where the organization's commit statuses go, replacing the previous connection. NotFound when
    /// the organization does not exist. Deleted with the organization.
    fn set_forge_connection(
        &self,
        connection: &crate::model::ForgeConnection,
        at: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
    fn forge_connection(
        &self,
        org: OrgId,
    ) -> impl Future<Output = Result<Option<crate::model::ForgeConnection>>> + Send;

    /// Adds a status report to the outbox. NotFound when its organization does not exist; Conflict("status
    /// report id") when the id is taken. Reports are deleted with their organization but outlive their
    /// evaluation (a pruned evaluation's final status is still delivered).
    fn enqueue_status(&self, report: &crate::model::StatusReport) -> impl Future<Output = Result<()>> + Send;
    /// Undelivered reports whose `next_attempt_at` is at or before `now`, in the order they were enqueued,
    /// at most `limit`.
    fn due_statuses(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<crate::model::StatusReport>>> + Send;
    /// Marks the report delivered. Ok(false) when there is no such report.
    fn status_delivered(&self, id: crate::StatusReportId) -> impl Future<Output = Result<bool>> + Send;
    /// Records a failed attempt: `attempts` + 1, the error, and when to try again. Ok(false) when there is
    /// no such report.
    fn status_failed(
        &self,
        id: crate::StatusReportId,
        error: &str,
        next_attempt_at: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The evaluation's reports, in the order they were enqueued.
    fn statuses_of(
        &self,
        evaluation: EvaluationId,
    ) -> impl Future<Output = Result<Vec<crate::model::StatusReport>>> + Send;

    /// Stores an installation of the GitHub App, replacing the installation with the same id and any other
    /// installation on the same account (an account has one installation of the App), atomically.
    /// Installations belong to no organization.
    fn put_github_installation(
        &self,
        installation: &crate::model::GithubInstallation,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The installation on `account`, matched exactly (callers store and look up lowercase logins).
    fn github_installation(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Option<crate::model::GithubInstallation>>> + Send;
    /// Forgets the installation. Ok(false) when there is no such installation. Its links to organizations
    /// stay (a suspended installation comes back with the same id); an installation deleted on GitHub never
    /// delivers anything again, so its links act for nothing.
    fn delete_github_installation(&self, id: u64) -> impl Future<Output = Result<bool>> + Send;

    /// Links an installation to an organization, replacing the link between the same two (account, linker and
    /// time updated). `NotFound` when the organization does not exist. Links are deleted with their
    /// organization.
    fn link_github_installation(
        &self,
        link: &crate::model::GithubInstallationLink,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The organization's links, by installation id.
    fn github_installation_links(
        &self,
        org: OrgId,
    ) -> impl Future<Output = Result<Vec<crate::model::GithubInstallationLink>>> + Send;
    /// The organizations linked to the installation.
    fn github_installation_orgs(&self, installation: u64) -> impl Future<Output = Result<Vec<OrgId>>> + Send;
    /// Removes the link. Ok(false) when there is no such link.
    fn unlink_github_installation(&self, org: OrgId, installation: u64) -> impl Future<Output = Result<bool>> + Send;
}

/// What email needs: single-use tokens (stored as hashes), a user's verified address and new password, and who
/// does not want mail about evaluations.
pub trait Mailing {
    /// Stores the token. NotFound when the user does not exist; Conflict("email token") when the hash is taken.
    fn put_email_token(&self, token: &crate::model::EmailToken) -> impl Future<Output = Result<()>> + Send;
    /// Removes the token with this hash and purpose and answers it (so it is used once, even by two requests
    /// at the same time: only one gets it). None when there is none, expired or not.
    fn take_email_token(
        &self,
        hash: &str,
        purpose: crate::model::TokenPurpose,
    ) -> impl Future<Output = Result<Option<crate::model::EmailToken>>> + Send;
    /// When the newest of the user's tokens of `purpose` was made, if they have one.
    fn last_email_token_at(
        &self,
        user: UserId,
        purpose: crate::model::TokenPurpose,
    ) -> impl Future<Output = Result<Option<Timestamp>>> + Send;
    /// Deletes the user's tokens of `purpose`; answers how many there were.
    fn delete_email_tokens(
        &self,
        user: UserId,
        purpose: crate::model::TokenPurpose,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Marks the user's address verified. Ok(false) when there is no such user.
    fn set_email_verified(&self, user: UserId) -> impl Future<Output = Result<bool>> + Send;
    /// Sets the user's password hash, marks the address verified and deletes every session of the user, in one
    /// transaction. Ok(false) when there is no such user.
    fn reset_password(&self, user: UserId, password_hash: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Whether the user wants mail about their organizations' evaluations (true unless they said no; true for
    /// an unknown user).
    fn evaluation_mail(&self, user: UserId) -> impl Future<Output = Result<bool>> + Send;
    /// Records whether the user wants that mail. NotFound when there is no such user.
    fn set_evaluation_mail(&self, user: UserId, wanted: bool) -> impl Future<Output = Result<()>> + Send;
}

/// Everything the declarative state (`docs/state.md`) manages, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagedEntities {
    /// By username.
    pub users: Vec<User>,
    /// By name.
    pub orgs: Vec<Org>,
    /// By organization id, then name.
    pub roles: Vec<Role>,
    /// By organization id, then name.
    pub projects: Vec<Project>,
    /// By name.
    pub caches: Vec<Cache>,
    /// Oldest first (ties by id).
    pub api_keys: Vec<ApiKey>,
    /// Oldest first (ties by peer id).
    pub workers: Vec<WorkerRegistration>,
    /// The organizations whose webhook secret is managed, sorted.
    pub webhook_secrets: Vec<OrgId>,
    /// By organization id.
    pub forge_connections: Vec<crate::model::ForgeConnection>,
}

/// One write of a declarative state plan. `Put…` inserts the row, or updates the stored row with the same id
/// (the fields each names; `managed` always). [`Declared::apply_state`] runs a list of them as one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateWrite {
    /// Updates username, name, email, password hash, email verified.
    PutUser(User),
    /// Deletes the user with their sessions, keys and memberships. NotFound (failing the batch) while the
    /// user is recorded as the creator of an organization, project or cache.
    DeleteUser(UserId),
    /// Inserts the organization **without** making its creator a member; updates display name, description,
    /// public.
    PutOrg(Org),
    /// As [`Orgs::delete_org`].
    DeleteOrg(OrgId),
    /// Updates the permissions.
    PutRole(Role),
    /// Conflict("role in use") while a member holds it.
    DeleteRole(RoleId),
    /// As [`Orgs::set_membership`].
    SetMembership(Membership),
    DeleteMembership {
        org: OrgId,
        user: UserId,
    },
    /// Updates every field [`Projects::update_project`] does.
    PutProject(Project),
    DeleteProject(ProjectId),
    /// Updates every field [`Caches::update_cache`] does, and the owner (`created_by`).
    PutCache(Cache),
    DeleteCache(CacheId),
    /// Subscribes the org to the cache as a grant (or makes its subscription one).
    Grant {
        org: OrgId,
        cache: CacheId,
    },
    /// Removes the org's subscription to the cache (and so its push flag).
    Revoke {
        org: OrgId,
        cache: CacheId,
    },
    /// As [`Caches::set_push_cache`]; NotFound (failing the batch) when `cache` is not a granted subscription.
    SetPushCache {
        org: OrgId,
        cache: Option<CacheId>,
    },
    /// Updates name, hash and scope.
    PutApiKey(ApiKey),
    DeleteApiKey(ApiKeyId),
    /// Updates the proof key.
    PutWorkerRegistration(WorkerRegistration),
    DeleteWorkerRegistration(PeerId),
    /// Stores the organization's webhook secret (replacing it) with its managed flag.
    PutWebhookSecret {
        org: OrgId,
        secret: crate::crypt::Sealed,
        managed: bool,
    },
    DeleteWebhookSecret(OrgId),
    /// As [`Integrations::set_forge_connection`], with its managed flag.
    PutForgeConnection(crate::model::ForgeConnection),
    DeleteForgeConnection(OrgId),
}

/// The declarative state's storage: which entities it manages, and its plan written all at once.
pub trait Declared {
    fn managed_entities(&self) -> impl Future<Output = Result<ManagedEntities>> + Send;
    /// Whether the organization's webhook secret is managed (false when it has none).
    fn webhook_secret_managed(&self, org: OrgId) -> impl Future<Output = Result<bool>> + Send;
    /// Runs the writes in order in **one transaction**: all of them or, on the first error (which is
    /// answered), none. A `Delete…` of something absent is no error; the other writes fail as the port's
    /// single operations do (NotFound for a missing referenced row, Conflict for a uniqueness rule).
    /// `at` is the time recorded where a row keeps one (`updated_at`).
    fn apply_state(&self, writes: &[StateWrite], at: Timestamp) -> impl Future<Output = Result<()>> + Send;
}

/// Installation-wide counts (the server's metrics): numbers by kind, never a name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Evaluations by status; statuses without any are left out.
    pub evaluations: Vec<(crate::status::EvaluationStatus, u64)>,
    /// Builds by status; statuses without any are left out.
    pub builds: Vec<(crate::status::BuildStatus, u64)>,
    /// Jobs waiting for a worker, and when the oldest of them was queued.
    pub queued_jobs: u64,
    pub oldest_queued_job: Option<Timestamp>,
    /// Jobs handed to workers and not ended.
    pub assigned_jobs: u64,
    /// NAR files recorded in all caches, and their bytes as stored.
    pub nar_files: u64,
    pub nar_bytes: u64,
}

/// Small installation-wide values (e.g. the check value that detects a changed crypt secret).
pub trait Meta {
    /// Counts over the whole installation (one query per family of numbers).
    fn totals(&self) -> impl Future<Output = Result<Totals>> + Send;
    fn meta(&self, key: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Stores the value unless the key is already set; returns the value now stored.
    fn meta_init(&self, key: &str, value: &str) -> impl Future<Output = Result<String>> + Send;
}

/// Organizations' audit logs (`docs/audit.md`): appended by the use cases, read newest first, bounded per
/// organization, deleted with their organization.
pub trait Audit {
    /// Appends the entry with the next `seq` (increasing across the installation) and deletes the oldest entries
    /// of its organization beyond the newest `keep`, atomically. Answers the `seq` given. NotFound when the
    /// organization does not exist.
    fn record_audit(&self, entry: &AuditEntry, keep: u32) -> impl Future<Output = Result<u64>> + Send;
    /// The organization's entries with `seq` below `before` (all when `None`), newest first, at most `limit`.
    fn audit_log(
        &self,
        org: OrgId,
        before: Option<u64>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditEntry>>> + Send;
}
