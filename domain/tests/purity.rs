//! Architecture invariant: the domain does no I/O. This reads `cargo metadata` and fails if anything the
//! domain depends on (directly or not, normal dependencies only) is a database, HTTP, WebSocket, mail or
//! S3 crate, or tokio (whose net/fs features would let I/O in).

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "sqlx",
    "sqlx-core",
    "sqlx-sqlite",
    "sqlx-postgres",
    "poem",
    "poem-openapi",
    "tokio",
    "tokio-tungstenite",
    "tungstenite",
    "lettre",
    "rust-s3",
    "reqwest",
    "hyper",
    "mio",
    "openidconnect",
];

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON")
}

/// Names of every package the given package reaches through normal (non-dev, non-build) dependencies.
fn normal_closure(meta: &Value, root_name: &str) -> BTreeSet<String> {
    let packages = meta["packages"].as_array().expect("packages");
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or("")))
        .collect();
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve nodes");
    let by_id: HashMap<&str, &Value> = nodes.iter().map(|n| (n["id"].as_str().unwrap_or(""), n)).collect();
    let root = packages.iter().find(|p| p["name"] == root_name).expect("root package")["id"]
        .as_str()
        .expect("id");
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        for dep in by_id[id]["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().expect("pkg");
            if normal && seen.insert(name_of[dep_id].to_owned()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn the_domain_depends_on_no_io_crate() {
    let meta = metadata();
    let deps = normal_closure(&meta, "gradient-domain");
    assert!(
        deps.contains("serde"),
        "the walk found the domain's dependencies: {deps:?}"
    );
    let bad: Vec<_> = deps.iter().filter(|d| FORBIDDEN.contains(&d.as_str())).collect();
    assert!(
        bad.is_empty(),
        "gradient-domain must not depend on I/O crates, found: {bad:?}"
    );
}

#[test]
fn the_check_catches_a_crate_that_does_io() {
    // The same walk from the server reaches I/O crates; if it did not, the check above would prove nothing.
    let deps = normal_closure(&metadata(), "gradient-server");
    assert!(
        deps.contains("poem") && deps.contains("sqlx") && deps.contains("tokio"),
        "{deps:?}"
    );
}
