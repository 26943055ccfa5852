//! Start-up steps that change stored data: registrations stored before proof keys were sealed are sealed
//! before `/proto` listens.

use gradient_domain::crypt::Sealed;
use gradient_domain::model::{Org, User, WorkerRegistration, truncate_to_micros};
use gradient_domain::ports::storage::{Orgs, Users, Workers};
use gradient_domain::{Email, Name, OrgId, PeerId, UserId, WorkerId};
use gradient_server::config::Config;
use std::collections::HashMap;

fn config(dir: &std::path::Path) -> Config {
    let env: HashMap<String, String> = [("GRADIENT_BASE_DIR".to_owned(), dir.display().to_string())].into();
    Config::from_vars(&env).expect("config")
}

#[tokio::test]
async fn registrations_stored_with_a_plain_proof_key_are_sealed_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = gradient_server::build_state(&config(dir.path()))
        .await
        .expect("first start");
    // A row as a version before sealing stored it: SHA-256 of the token as hex, the key itself.
    let storage = database(dir.path()).await;
    let now = truncate_to_micros(chrono::Utc::now());
    let user = User {
        managed: false,
        id: UserId::new(),
        username: Name::parse("alice").expect("name"),
        name: "Alice".to_owned(),
        email: Email::parse("alice@example.com").expect("email"),
        password_hash: None,
        email_verified: true,
        created_at: now,
    };
    storage.create_user(&user).await.expect("user");
    let org = Org {
        managed: false,
        id: OrgId::new(),
        name: Name::parse("acme").expect("name"),
        display_name: "Acme".to_owned(),
        description: String::new(),
        public: false,
        created_by: user.id,
        created_at: now,
    };
    storage.create_org(&org).await.expect("org");
    let token = gradient_domain::service::generate_token();
    let key = gradient_domain::proto::proof_key(&token);
    let plain = Sealed(key.iter().map(|b| format!("{b:02x}")).collect());
    let legacy = WorkerRegistration {
        managed: false,
        peer_id: PeerId::new(),
        org_id: org.id,
        worker_id: WorkerId::new(),
        proof_key: plain.clone(),
        created_at: now,
        url: None,
    };
    storage.create_worker_registration(&legacy).await.expect("registration");
    drop((first, storage));

    let second = gradient_server::build_state(&config(dir.path()))
        .await
        .expect("restart");
    let stored = database(dir.path())
        .await
        .worker_registration(legacy.peer_id)
        .await
        .expect("read")
        .expect("kept");
    assert_ne!(stored.proof_key, plain, "no longer the usable key");
    assert!(!stored.proof_key.0.contains(&plain.0));
    assert_eq!(
        gradient_domain::proto::open_proof_key(second.app.crypt(), &stored.proof_key),
        Some(key),
        "sealed with this server's crypt secret"
    );
}

/// API requests (on the web pool) and the server's own work (scheduler, worker link, binary cache,
/// background loops, on the main pool) share what they keep in memory and one fleet.
#[tokio::test]
async fn api_requests_and_the_servers_own_work_share_one_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = gradient_server::build_state(&config(dir.path())).await.expect("state");
    assert!(state.app.shares_memory_with(&state.core));
    let other = tempfile::tempdir().expect("tempdir");
    let another = gradient_server::build_state(&config(other.path()))
        .await
        .expect("state");
    assert!(
        !state.app.shares_memory_with(&another.core),
        "another server's memory is its own"
    );
}

/// The server's database, opened once more (for what no API call sets up).
async fn database(dir: &std::path::Path) -> gradient_storage_sql::SqlStorage {
    let url = config(dir).resolve_database_url().expect("database URL");
    let pools = gradient_storage_sql::PoolSizes {
        max: 2,
        min: 0,
        web_max: 1,
        web_min: 0,
    };
    gradient_storage_sql::connect(&url, pools).await.expect("database")
}
