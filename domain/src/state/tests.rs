//! Tests of the state document reader: every refusal names the entry and the field.

use super::*;
use crate::reach::NetworkPolicy;

fn parse(json: &str) -> Result<Document, StateError> {
    Document::parse(json, &NetworkPolicy::default())
}

fn refused(json: &str) -> String {
    match parse(json) {
        Ok(d) => panic!("accepted: {d:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_empty_document_declares_nothing_and_leaves_delete_state_to_the_server() {
    let d = parse("{}").unwrap();
    assert_eq!(d, Document::default());
    assert_eq!(d.delete_state, None);
    assert_eq!(parse(r#"{"delete_state": true}"#).unwrap().delete_state, Some(true));
}

#[test]
fn defaults_come_from_the_key_and_the_documented_values() {
    let d = parse(
        r#"{"users": {"alice": {"email": "Alice@Example.com"}},
            "organizations": {"acme": {"created_by": "alice"}},
            "projects": {"web": {"organization": "acme", "repository": "https://example.com/web.git",
                                  "created_by": "alice", "flake_input_overrides": {"nixpkgs": {"keep_url": true}}}},
            "caches": {"main": {"created_by": "alice", "description": null}}}"#,
    )
    .unwrap();
    let u = &d.users[0];
    assert_eq!((u.username.as_str(), u.name.as_str()), ("alice", "alice"));
    assert!(u.email_verified && u.password_file.is_none());
    let o = &d.orgs[0];
    assert_eq!((o.display_name.as_str(), o.public), ("acme", false));
    assert_eq!(
        o.effective_members().get(&o.created_by).map(String::as_str),
        Some("Admin")
    );
    let p = &d.projects[0];
    assert_eq!(p.wildcard, crate::model::DEFAULT_WILDCARD);
    assert!(p.active && p.branch.is_none());
    assert!(p.pull_requests && !p.fork_pull_requests, "pull requests on, forks off");
    assert_eq!(p.flake_input_overrides["nixpkgs"], crate::model::InputOverride::KeepUrl);
    let c = &d.caches[0];
    assert_eq!(
        (c.priority, c.compression, c.description.as_str()),
        (30, crate::model::Compression::Zstd, "")
    );
}

#[test]
fn a_projects_pull_request_settings_are_read() {
    let d = parse(
        r#"{"projects": {"web": {"organization": "acme", "repository": "https://example.com/web.git",
                                  "created_by": "alice", "pull_requests": false, "fork_pull_requests": true}}}"#,
    )
    .unwrap();
    assert!(!d.projects[0].pull_requests && d.projects[0].fork_pull_requests);
    let e = parse(
        r#"{"projects": {"web": {"organization": "acme", "repository": "https://example.com/web.git",
                                  "created_by": "alice", "fork_pull_requests": "yes"}}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("projects.web.fork_pull_requests: must be true or false"),
        "{e}"
    );
}

#[test]
fn errors_name_the_entry_and_the_field() {
    let cases = [
        (r#"{"users": {"alice": {}}}"#, "users.alice.email: is required"),
        (
            r#"{"users": {"alice": {"email": "a@b.c", "pasword_file": "/x"}}}"#,
            "users.alice.pasword_file: unknown field",
        ),
        (r#"{"users": {"Alice": {"email": "a@b.c"}}}"#, "users.Alice.username:"),
        (
            r#"{"users": {"alice": {"email": "a@b.c", "password_file": "relative"}}}"#,
            "users.alice.password_file: must be an absolute path",
        ),
        (
            r#"{"organizations": {"acme": {"created_by": "alice", "public": "yes"}}}"#,
            "organizations.acme.public: must be true or false",
        ),
        (
            r#"{"organizations": {"acme": {"created_by": "alice", "members": {"bob": 3}}}}"#,
            "organizations.acme.members.bob:",
        ),
        (
            r#"{"roles": {"admin": {"organization": "acme", "permissions": ["view_org"]}}}"#,
            "roles.admin.name: is a built-in role's name",
        ),
        (
            r#"{"roles": {"r": {"organization": "acme", "permissions": ["fly"]}}}"#,
            "roles.r.permissions: 'fly' is not a permission",
        ),
        (
            r#"{"roles": {"r": {"organization": "acme", "permissions": []}}}"#,
            "roles.r.permissions: must not be empty",
        ),
        (
            r#"{"projects": {"web": {"organization": "acme", "repository": "not a url", "created_by": "a"}}}"#,
            "projects.web.repository:",
        ),
        (
            r#"{"projects": {"web": {"organization": "acme", "repository": "https://e.com/r.git", "created_by": "a", "schedule": "every day"}}}"#,
            "projects.web.schedule: 'every day' has 2 fields",
        ),
        (
            r#"{"projects": {"web": {"organization": "acme", "repository": "https://e.com/r.git", "created_by": "a", "flake_input_overrides": {"nixpkgs": {"url": "github:x/y", "keep_url": true}}}}}"#,
            "projects.web.flake_input_overrides.nixpkgs: set either url or keep_url",
        ),
        (
            r#"{"projects": {"web": {"organization": "acme", "repository": "https://e.com/r.git", "created_by": "a", "keep_evaluations": 0}}}"#,
            "projects.web.keep_evaluations: must be a positive integer",
        ),
        (
            r#"{"caches": {"main": {"created_by": "a", "compression": "gzip"}}}"#,
            "caches.main.compression: must be zstd, xz or none",
        ),
        (
            r#"{"caches": {"main": {"created_by": "a", "priority": 5000}}}"#,
            "caches.main.priority:",
        ),
        (
            r#"{"api_keys": {"ci": {"owned_by": "a"}}}"#,
            "api_keys.ci.key_file: is required",
        ),
        (
            r#"{"workers": {"w": {"worker_id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "organizations": ["acme"], "token_file": "/t"}}}"#,
            "workers.w.worker_id:",
        ),
        (
            r#"{"workers": {"w": {"worker_id": "550e8400-e29b-41d4-a716-446655440001", "organizations": [], "token_file": "/t"}}}"#,
            "workers.w.organizations: must not be empty",
        ),
        (
            r#"{"integrations": {"i": {"organization": "acme", "kind": "outbound", "forge_type": "gitea", "access_token_file": "/t"}}}"#,
            "integrations.i.endpoint_url: is required for outbound",
        ),
        (
            r#"{"integrations": {"i": {"organization": "acme", "kind": "inbound", "secret_file": "/s", "endpoint_url": "https://x"}}}"#,
            "integrations.i.endpoint_url: is for outbound integrations only",
        ),
        (
            r#"{"integrations": {"i": {"organization": "acme", "kind": "sideways"}}}"#,
            "integrations.i.kind: must be inbound or outbound",
        ),
        (r#"{"version": 2}"#, "version: must be 1"),
        (r#"{"projcts": {}}"#, "projcts: unknown field"),
        (r#"{"users": []}"#, "users: must be an object"),
        (r#"[]"#, "document: must be a JSON object"),
        (r#"{"users": "#, "document: not valid JSON"),
    ];
    for (json, expected) in cases {
        let e = refused(json);
        assert!(e.starts_with(expected), "{json}\n  gave: {e}\n  want: {expected}…");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn identities_are_unique_in_the_document() {
    let e = refused(r#"{"users": {"a": {"email": "same@x.org"}, "b": {"email": "same@x.org"}}}"#);
    assert_eq!(e, "users.b.email: the same as users.a's");
    let e = refused(
        r#"{"roles": {"one": {"name": "Deploy", "organization": "acme", "permissions": ["view_org"]},
                      "two": {"name": "deploy", "organization": "acme", "permissions": ["view_org"]}}}"#,
    );
    assert_eq!(e, "roles.two.name: the same as roles.one's");
    let e = refused(
        r#"{"integrations": {"a": {"organization": "acme", "kind": "inbound", "secret_file": "/a"},
                             "b": {"organization": "acme", "kind": "inbound", "secret_file": "/b"}}}"#,
    );
    assert!(e.starts_with("integrations.b.kind:"), "{e}");
}

#[test]
fn a_push_cache_must_be_granted_by_the_document() {
    let e = refused(
        r#"{"organizations": {"acme": {"created_by": "alice", "push_cache": "main"}},
            "caches": {"main": {"created_by": "alice"}}}"#,
    );
    assert!(e.starts_with("organizations.acme.push_cache: no cache 'main'"), "{e}");
}

#[test]
fn secret_files_are_listed_with_their_fields() {
    let d = parse(
        r#"{"users": {"alice": {"email": "a@b.c", "password_file": "/p"}},
            "api_keys": {"ci": {"owned_by": "alice", "key_file": "/k"}}}"#,
    )
    .unwrap();
    let files: Vec<(String, String)> = d.secret_files().into_iter().map(|f| (f.at, f.path)).collect();
    assert_eq!(
        files,
        [
            ("users.alice.password_file".to_owned(), "/p".to_owned()),
            ("api_keys.ci.key_file".to_owned(), "/k".to_owned())
        ]
    );
    assert_eq!(secret_contents("pw\n\r\n"), "pw");
    assert_eq!(secret_contents("  pw "), "  pw ");
}
