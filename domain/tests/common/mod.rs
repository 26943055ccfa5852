//! What the domain's integration tests share: an application over the in-memory storage, a clock the test
//! moves, and a signed-up user with an organization and a project.
#![allow(dead_code, clippy::unwrap_used)]

use gradient_domain::auth::TokenSigner;
use gradient_domain::crypt::Crypt;
use gradient_domain::model::{Org, Project, Timestamp, truncate_to_micros};
use gradient_domain::ports::Clock;
use gradient_domain::service::{Caller, Gradient, NewOrg, NewProject, Registration, Settings};
use gradient_ports::fleet::MemoryFleet;
use gradient_ports::storage::MemoryStorage;
use std::sync::{Arc, Mutex};

pub mod export;

/// A clock that stands still until the test moves it.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// Now, to the microsecond (as the storage keeps times).
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(truncate_to_micros(chrono::Utc::now()))))
    }

    pub fn advance(&self, by: chrono::TimeDelta) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

/// The application under test, with handles on what it was built from: its storage and fleet (to arrange
/// and inspect state the use cases do not show), its clock, token signer and crypt. Derefs to the
/// application, so use cases are called on it directly.
pub struct TestApp<C> {
    pub app: Gradient<MemoryStorage, C>,
    pub storage: MemoryStorage,
    pub fleet: Arc<MemoryFleet>,
    pub clock: C,
    pub tokens: TokenSigner,
    pub crypt: Crypt,
}

impl<C> std::ops::Deref for TestApp<C> {
    type Target = Gradient<MemoryStorage, C>;
    fn deref(&self) -> &Self::Target {
        &self.app
    }
}

pub fn app<C: Clock + Clone>(clock: C, settings: Settings) -> TestApp<C> {
    let storage = MemoryStorage::default();
    let fleet = Arc::new(MemoryFleet::default());
    let tokens = TokenSigner::new(b"a-jwt-secret-of-at-least-32-bytes!!");
    let crypt = Crypt::from_secret(b"a-crypt-secret-of-at-least-32-bytes");
    TestApp {
        app: Gradient::new(
            storage.clone(),
            clock.clone(),
            tokens.clone(),
            crypt.clone(),
            settings,
            fleet.clone(),
        ),
        storage,
        fleet,
        clock,
        tokens,
        crypt,
    }
}

/// Registers `username` (password `password123`) and answers a session of theirs.
pub async fn signed_up<C: Clock>(app: &Gradient<MemoryStorage, C>, username: &str) -> Caller {
    let user = app
        .register(Registration {
            username: username.into(),
            name: username.to_uppercase(),
            email: format!("{username}@example.com"),
            password: "password123".into(),
        })
        .await
        .unwrap();
    Caller::Session {
        user,
        session: gradient_domain::SessionId::new(),
    }
}

/// A private organization the caller creates.
pub async fn org<C: Clock>(app: &Gradient<MemoryStorage, C>, caller: &Caller, name: &str) -> Org {
    let new = NewOrg {
        name: name.into(),
        display_name: None,
        description: None,
        public: false,
    };
    app.create_org(caller, new).await.unwrap()
}

/// A project of the organization, with defaults for everything but its repository.
pub async fn project<C: Clock>(
    app: &Gradient<MemoryStorage, C>,
    caller: &Caller,
    org: &str,
    name: &str,
    repository: &str,
) -> Project {
    let new = NewProject {
        name: name.into(),
        repository: repository.into(),
        ..NewProject::default()
    };
    app.create_project(caller, org, new).await.unwrap()
}

/// A connected worker of `org` that fetches, evaluates and builds for x86_64-linux, with `builds` build slots.
pub fn worker(n: u128, org: &Org, builds: u32) -> gradient_domain::scheduler::WorkerInfo {
    worker_of(n, org.id, builds)
}

/// [`worker`] of the organization with id `org`: the one builder of test workers.
pub fn worker_of(n: u128, org: gradient_domain::OrgId, builds: u32) -> gradient_domain::scheduler::WorkerInfo {
    gradient_domain::scheduler::WorkerInfo {
        id: gradient_domain::WorkerId(uuid::Uuid::from_u128(n)),
        capabilities: gradient_domain::model::Capabilities {
            fetch: true,
            eval: true,
            build: true,
            sign: false,
        },
        systems: vec!["x86_64-linux".into()],
        features: vec![],
        max_concurrent_builds: builds,
        max_concurrent_evaluations: 1,
        queued_builds: 0,
        orgs: std::collections::BTreeSet::from([org]),
        pushing: Default::default(),
    }
}

/// Runs a future of the in-memory ports to its end here and now (they never wait): for what a test interleaves
/// between two storage operations of a use case (`MemoryStorage::interleave`).
pub fn at_once<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the in-memory ports never wait"),
    }
}
