use super::*;
use crate::model::{JobId, WorkerRegistration};
use crate::{OrgId, PeerId, WorkerId};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn caps(fetch: bool, eval: bool, build: bool, sign: bool) -> Capabilities {
    Capabilities {
        fetch,
        eval,
        build,
        sign,
    }
}

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        worker_id: WorkerId(id(1)),
        capabilities: caps(true, true, true, false),
        systems: vec!["x86_64-linux".into(), "i686-linux".into()],
        features: vec!["kvm".into()],
        max_concurrent_builds: 8,
        max_concurrent_evaluations: 2,
        queued_builds: 0,
        held_jobs: vec![JobId(id(9))],
        server_nonce: None,
    }
}

fn build_job() -> Job {
    Job::Build {
        job_id: JobId(id(20)),
        drv_path: "/nix/store/aaaa-hello.drv".into(),
        outputs: BTreeMap::from([("out".into(), "/nix/store/bbbb-hello".into())]),
        substituters: vec!["https://ci.example/cache/main".into()],
        trusted_public_keys: vec!["main:AAAA".into()],
        substituter_token: Some("read".into()),
        push: Some(PushTarget {
            cache_url: "https://ci.example/cache/main".into(),
            token: "push".into(),
        }),
        timeout_secs: Some(3600),
        batch_inputs: vec!["/nix/store/cccc-lib.drv".into()],
        round_rest: Some(0),
    }
}

fn eval_job() -> Job {
    Job::Evaluate {
        job_id: JobId(id(21)),
        repository: "https://git.example/app.git".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        git_ref: Some("main".into()),
        wildcard: "packages.*.*".into(),
        flake_input_overrides: BTreeMap::from([
            (
                "nixpkgs".into(),
                InputOverride::Url("github:NixOS/nixpkgs/nixos-unstable".into()),
            ),
            ("utils".into(), InputOverride::KeepUrl),
        ]),
        push: None,
        credential: Some(crate::deploy_key::RepositoryCredential::SshKey {
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\n…".into(),
        }),
    }
}

/// One of every message, so that round-trips cover the whole protocol.
fn worker_samples() -> Vec<WorkerMessage> {
    let job_id = JobId(id(20));
    vec![
        WorkerMessage::Hello(hello()),
        WorkerMessage::ChallengeResponse(ChallengeResponse {
            answers: vec![PeerAnswer {
                peer_id: PeerId(id(3)),
                proof: "ab".repeat(32),
            }],
        }),
        WorkerMessage::Heartbeat,
        WorkerMessage::JobStarted { job_id },
        WorkerMessage::JobProgress {
            job_id,
            stage: Stage::Pushing,
        },
        WorkerMessage::JobLog {
            job_id,
            seq: 7,
            text: "building 'hello'…\n".into(),
        },
        WorkerMessage::EvalResult {
            job_id,
            derivations: vec![EvaluatedDerivation {
                attribute: Some("packages.x86_64-linux.hello".into()),
                drv_path: "/nix/store/aaaa-hello.drv".into(),
                outputs: BTreeMap::from([("out".into(), "/nix/store/bbbb-hello".into())]),
                system: "x86_64-linux".into(),
                required_features: vec!["kvm".into()],
                input_drvs: vec!["/nix/store/cccc-dep.drv".into()],
            }],
            errors: vec![AttributeError {
                attribute: "packages.x86_64-linux.broken".into(),
                message: "error: attribute 'nope' missing".into(),
            }],
        },
        WorkerMessage::JobFinished {
            job_id,
            outcome: JobOutcome::Success,
        },
        WorkerMessage::JobFinished {
            job_id,
            outcome: JobOutcome::Failed {
                kind: FailureKind::BuilderFailed,
                message: "builder exited with 1".into(),
            },
        },
        WorkerMessage::JobFinished {
            job_id,
            outcome: JobOutcome::Aborted,
        },
        WorkerMessage::Report(Report {
            report_id: ReportId(id(30)),
            report: Box::new(WorkerMessage::JobFinished {
                job_id,
                outcome: JobOutcome::Success,
            }),
        }),
        WorkerMessage::Reports {
            reports: vec![
                Report {
                    report_id: ReportId(id(31)),
                    report: Box::new(WorkerMessage::JobProgress {
                        job_id,
                        stage: Stage::Pushing,
                    }),
                },
                Report {
                    report_id: ReportId(id(32)),
                    report: Box::new(WorkerMessage::JobFinished {
                        job_id,
                        outcome: JobOutcome::Success,
                    }),
                },
            ],
        },
    ]
}

fn server_samples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Challenge(Challenge {
            nonce: nonce_from_bytes(&[7; 32]),
            peers: vec![PeerId(id(3)), PeerId(id(4))],
            server_proofs: vec![],
        }),
        ServerMessage::Welcome(Welcome {
            authorized: vec![PeerId(id(3))],
            capabilities: caps(true, true, false, false),
            heartbeat_interval_secs: 10,
            lost_after_secs: 30,
        }),
        ServerMessage::Rejected(Rejected::new(RejectCode::BadTokens, "no")),
        ServerMessage::Heartbeat,
        ServerMessage::Assign { job: build_job() },
        ServerMessage::Assign { job: eval_job() },
        ServerMessage::Abort { job_id: JobId(id(20)) },
        ServerMessage::Ack {
            report_ids: vec![ReportId(id(30)), ReportId(id(31))],
        },
    ]
}

/// The `type` of a message; exhaustive, so a new variant fails to compile until it is sampled and documented.
fn worker_type(m: &WorkerMessage) -> &'static str {
    match m {
        WorkerMessage::Hello(_) => "hello",
        WorkerMessage::ChallengeResponse(_) => "challenge_response",
        WorkerMessage::Heartbeat => "heartbeat",
        WorkerMessage::JobStarted { .. } => "job_started",
        WorkerMessage::JobProgress { .. } => "job_progress",
        WorkerMessage::JobLog { .. } => "job_log",
        WorkerMessage::EvalResult { .. } => "eval_result",
        WorkerMessage::JobFinished { .. } => "job_finished",
        WorkerMessage::Report(_) => "report",
        WorkerMessage::Reports { .. } => "reports",
    }
}

fn server_type(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Challenge(_) => "challenge",
        ServerMessage::Welcome(_) => "welcome",
        ServerMessage::Rejected(_) => "rejected",
        ServerMessage::Heartbeat => "heartbeat",
        ServerMessage::Assign {
            job: Job::Evaluate { .. },
        } => "assign/evaluate",
        ServerMessage::Assign { job: Job::Build { .. } } => "assign/build",
        ServerMessage::Abort { .. } => "abort",
        ServerMessage::Ack { .. } => "ack",
    }
}

#[test]
fn every_message_round_trips_with_its_type_tag() {
    for msg in worker_samples() {
        let frame = encode(&msg).unwrap();
        let tag = worker_type(&msg);
        assert!(frame.starts_with(&format!(r#"{{"type":"{tag}""#)), "{frame}");
        assert_eq!(decode_worker(&frame).unwrap(), msg, "{frame}");
    }
    for msg in server_samples() {
        let frame = encode(&msg).unwrap();
        let tag = server_type(&msg).split('/').next().unwrap();
        assert!(frame.starts_with(&format!(r#"{{"type":"{tag}""#)), "{frame}");
        assert_eq!(decode_server(&frame).unwrap(), msg, "{frame}");
    }
}

#[test]
fn wire_shapes_are_pinned() {
    let table: [(&str, String); 4] = [
        (r#"{"type":"heartbeat"}"#, encode(&WorkerMessage::Heartbeat).unwrap()),
        (
            r#"{"type":"job_finished","job_id":"00000000-0000-0000-0000-000000000014","outcome":{"status":"failed","kind":"timeout","message":"1h"}}"#,
            encode(&WorkerMessage::JobFinished {
                job_id: JobId(id(20)),
                outcome: JobOutcome::Failed {
                    kind: FailureKind::Timeout,
                    message: "1h".into(),
                },
            })
            .unwrap(),
        ),
        (
            r#"{"type":"rejected","code":"duplicate_connection","reason":"r"}"#,
            encode(&ServerMessage::Rejected(Rejected::new(
                RejectCode::DuplicateConnection,
                "r",
            )))
            .unwrap(),
        ),
        (
            r#"{"type":"abort","job_id":"00000000-0000-0000-0000-000000000014"}"#,
            encode(&ServerMessage::Abort { job_id: JobId(id(20)) }).unwrap(),
        ),
    ];
    for (want, got) in table {
        assert_eq!(got, want);
    }
    let assign = encode(&ServerMessage::Assign { job: eval_job() }).unwrap();
    assert!(assign.contains(r#""job":{"kind":"evaluate""#), "{assign}");
    assert!(assign.contains(r#""utils":"keep_url""#), "{assign}");
    assert!(
        assign.contains(r#""nixpkgs":{"url":"github:NixOS/nixpkgs/nixos-unstable"}"#),
        "{assign}"
    );
}

#[test]
fn a_report_wraps_a_job_report_under_its_id() {
    let job_id = JobId(id(20));
    let frame = encode(&WorkerMessage::Report(Report {
        report_id: ReportId(id(30)),
        report: Box::new(WorkerMessage::JobProgress {
            job_id,
            stage: Stage::Pushing,
        }),
    }))
    .unwrap();
    assert_eq!(
        frame,
        r#"{"type":"report","report_id":"00000000-0000-0000-0000-00000000001e","report":{"type":"job_progress","job_id":"00000000-0000-0000-0000-000000000014","stage":"pushing"}}"#
    );
    let WorkerMessage::Report(r) = decode_worker(&frame).unwrap() else {
        panic!("a report")
    };
    assert_eq!(r.job_id(), Some(job_id));
    assert!(Report::is_reportable(&r.report));
    for not in [
        WorkerMessage::Heartbeat,
        WorkerMessage::JobLog {
            job_id,
            seq: 0,
            text: "x".into(),
        },
        WorkerMessage::Report(r.clone()),
    ] {
        assert!(!Report::is_reportable(&not), "{not:?}");
    }
    assert_eq!(
        encode(&ServerMessage::Ack {
            report_ids: vec![ReportId(id(30))]
        })
        .unwrap(),
        r#"{"type":"ack","report_ids":["00000000-0000-0000-0000-00000000001e"]}"#
    );
    let batch = encode(&WorkerMessage::Reports { reports: vec![r] }).unwrap();
    assert_eq!(
        batch,
        r#"{"type":"reports","reports":[{"report_id":"00000000-0000-0000-0000-00000000001e","report":{"type":"job_progress","job_id":"00000000-0000-0000-0000-000000000014","stage":"pushing"}}]}"#
    );
    assert!(
        !Report::is_reportable(&decode_worker(&batch).unwrap()),
        "a batch is not nested"
    );
}

#[test]
fn reports_travel_in_as_few_frames_as_fit_in_their_order() {
    assert!(report_frames(vec![]).is_empty());
    let finished = |n: u128| Report {
        report_id: ReportId(id(n)),
        report: Box::new(WorkerMessage::JobFinished {
            job_id: JobId(id(n)),
            outcome: JobOutcome::Success,
        }),
    };
    // 300 small reports: one frame.
    let small: Vec<Report> = (1..=300).map(finished).collect();
    let frames = report_frames(small.clone());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0], WorkerMessage::Reports { reports: small });
    // Reports of ~300 KB each: three fit in a frame, not four; every frame encodes within the limit.
    let big = |n: u128| Report {
        report_id: ReportId(id(n)),
        report: Box::new(WorkerMessage::EvalResult {
            job_id: JobId(id(n)),
            derivations: vec![],
            errors: vec![AttributeError {
                attribute: "a".into(),
                message: "x".repeat(300 * 1024),
            }],
        }),
    };
    let mut reports: Vec<Report> = (1..=7).map(big).collect();
    reports.insert(3, finished(100));
    let frames = report_frames(reports.clone());
    let sizes: Vec<usize> = frames
        .iter()
        .map(|f| match f {
            WorkerMessage::Reports { reports } => reports.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sizes,
        [4, 3, 1],
        "three big ones and the small one, then three, then one"
    );
    let mut again = Vec::new();
    for f in frames {
        let text = encode(&f).expect("within the frame limit");
        let WorkerMessage::Reports { reports } = decode_worker(&text).unwrap() else {
            panic!()
        };
        again.extend(reports);
    }
    assert_eq!(again, reports, "the same reports in the same order");
}

#[test]
fn malformed_frames_are_rejected() {
    let table = [
        ("not json", "expected"),
        (r#"{"type":"launch_missiles"}"#, "unknown variant `launch_missiles`"),
        (r#"{"kind":"heartbeat"}"#, "missing field `type`"),
        (r#"{"type":"job_started"}"#, "missing field `job_id`"),
        (r#"{"type":"job_started","job_id":"not-a-uuid"}"#, "UUID"),
        // Right message, wrong direction.
        (
            r#"{"type":"abort","job_id":"00000000-0000-0000-0000-000000000014"}"#,
            "unknown variant `abort`",
        ),
    ];
    for (frame, hint) in table {
        let err = decode_worker(frame).unwrap_err();
        assert_eq!(err.reject_code(), RejectCode::MalformedFrame, "{frame}");
        assert!(err.to_string().contains(hint), "{frame}: {err}");
    }
    let hello_on_worker = encode(&WorkerMessage::Hello(hello())).unwrap();
    assert!(matches!(decode_server(&hello_on_worker), Err(ProtoError::Malformed(_))));
}

#[test]
fn unknown_fields_are_ignored_so_additions_need_no_new_version() {
    let frame = r#"{"type":"job_started","job_id":"00000000-0000-0000-0000-000000000014","added_later":1}"#;
    assert_eq!(
        decode_worker(frame).unwrap(),
        WorkerMessage::JobStarted { job_id: JobId(id(20)) }
    );
}

#[test]
fn oversized_frames_are_refused_on_both_sides() {
    let padded = |len: usize| {
        let mut s = String::from(r#"{"type":"heartbeat"}"#);
        s.push_str(&" ".repeat(len - s.len()));
        s
    };
    assert_eq!(
        decode_worker(&padded(MAX_FRAME_BYTES)).unwrap(),
        WorkerMessage::Heartbeat
    );
    assert_eq!(
        decode_server(&padded(MAX_FRAME_BYTES)).unwrap(),
        ServerMessage::Heartbeat
    );
    let over = padded(MAX_FRAME_BYTES + 1);
    let want = ProtoError::TooLarge {
        size: MAX_FRAME_BYTES + 1,
        limit: MAX_FRAME_BYTES,
    };
    assert_eq!(decode_worker(&over).unwrap_err(), want);
    assert_eq!(decode_server(&over).unwrap_err(), want);
    assert_eq!(want.reject_code(), RejectCode::FrameTooLarge);
    assert_eq!(
        want.to_string(),
        "frame of 1048577 bytes exceeds the limit of 1048576 bytes"
    );

    let huge = WorkerMessage::EvalResult {
        job_id: JobId(id(20)),
        derivations: vec![],
        errors: vec![AttributeError {
            attribute: "a".into(),
            message: "x".repeat(MAX_FRAME_BYTES),
        }],
    };
    assert!(matches!(encode(&huge), Err(ProtoError::TooLarge { .. })));
}

#[test]
fn log_pieces_are_bounded_and_split_on_characters() {
    let log = "é".repeat(MAX_LOG_CHUNK_BYTES); // two bytes each: needs two pieces at least
    let pieces: Vec<&str> = log_chunks(&log).collect();
    assert!(pieces.len() >= 2);
    assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= MAX_LOG_CHUNK_BYTES));
    assert_eq!(pieces.concat(), log);
    assert_eq!(log_chunks("").count(), 0);
    assert_eq!(log_chunks("short").collect::<Vec<_>>(), ["short"]);

    let log_frame = |text: String| {
        encode(&WorkerMessage::JobLog {
            job_id: JobId(id(20)),
            seq: 0,
            text,
        })
        .unwrap()
    };
    assert!(decode_worker(&log_frame("a".repeat(MAX_LOG_CHUNK_BYTES))).is_ok());
    let err = decode_worker(&log_frame("a".repeat(MAX_LOG_CHUNK_BYTES + 1))).unwrap_err();
    assert_eq!(err.reject_code(), RejectCode::FrameTooLarge);
}

#[test]
fn hello_version_is_read_even_from_a_hello_of_another_shape() {
    let table = [
        (r#"{"type":"hello","version":2,"something":"new"}"#, Some(2)),
        (r#"{"type":"hello","version":1}"#, Some(1)),
        (r#"{"type":"heartbeat","version":1}"#, None),
        (r#"{"type":"hello"}"#, None),
        ("garbage", None),
    ];
    for (frame, want) in table {
        assert_eq!(hello_version(frame), want, "{frame}");
    }
    assert!(decode_worker(r#"{"type":"hello","version":2,"something":"new"}"#).is_err());
}

#[test]
fn reject_codes_have_stable_names() {
    for code in RejectCode::ALL {
        assert_eq!(RejectCode::parse(code.as_str()), Some(code));
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
    }
    assert_eq!(RejectCode::parse("nope"), None);
    assert!(RejectCode::DuplicateConnection.is_retryable());
    assert!(!RejectCode::BadTokens.is_retryable());
}

#[test]
fn proofs_verify_only_with_the_right_token_and_nonce() {
    let token = "c2VjcmV0LXRva2VuLW9mLWZvcnR5LWVpZ2h0LWJ5dGVzLWJhc2U2NC1lbmNvZGVkISE=";
    let stored = hex::encode(proof_key(token));
    let nonce = nonce_from_bytes(&[1; 32]);
    let proof = make_proof(token, &nonce);
    assert_eq!(proof.len(), 64);
    assert!(proof.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert!(!proof.contains(token));

    let key = proof_key(token);
    let other_nonce = nonce_from_bytes(&[2; 32]);
    let table: [(&[u8; 32], &str, &str, bool); 7] = [
        (&key, &nonce, &proof, true),
        (&key, &other_nonce, &proof, false),
        (&proof_key("another token"), &nonce, &proof, false),
        (&key, &nonce, &make_proof("another token", &nonce), false),
        (&key, &nonce, &proof.to_uppercase(), false),
        (&key, &nonce, &proof[..63], false),
        (&key, &nonce, "", false),
    ];
    for (i, (key, n, p, ok)) in table.into_iter().enumerate() {
        assert_eq!(verify_proof(key, n, p), ok, "case {i}");
    }
    // The worked example of docs/protocol.md, computed independently (Python's hmac and hashlib).
    assert_eq!(nonce, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
    assert_eq!(
        stored,
        "06dd158119b33cabff2f809a9b37c4b8054c73fec81715cd65353b1b520bcedc"
    );
    assert_eq!(
        proof,
        "4aa072ae284d4c5939c4dc4ee42d9b7fec0eefec01e0763fa8edab0f23081bd7"
    );
}

fn crypt() -> crate::crypt::Crypt {
    crate::crypt::Crypt::from_secret(b"the server's crypt secret, for tests")
}

fn registration(peer: u128, org: u128, worker: u128, token: &str) -> WorkerRegistration {
    WorkerRegistration {
        managed: false,
        peer_id: PeerId(id(peer)),
        org_id: OrgId(id(org)),
        worker_id: WorkerId(id(worker)),
        proof_key: seal_proof_key(&crypt(), &proof_key(token)),
        created_at: chrono::DateTime::UNIX_EPOCH,
        url: None,
    }
}

#[test]
fn hello_is_checked_in_order_version_registration_duplicate_capability() {
    let regs = [
        registration(3, 100, 1, "t3"),
        registration(4, 200, 1, "t4"),
        registration(5, 100, 2, "t5"),
    ];
    let policy = HandshakePolicy::default();
    let mut old = hello();
    old.version = 0;
    let mut stranger = hello();
    stranger.worker_id = WorkerId(id(77));
    let mut idle = hello();
    idle.capabilities = caps(false, false, false, false);
    let mut builder_only = hello();
    builder_only.capabilities = caps(false, false, true, false);
    let eval_server = HandshakePolicy {
        capabilities: caps(true, true, false, false),
        ..policy
    };

    let table = [
        (&hello(), false, &policy, Ok(vec![PeerId(id(3)), PeerId(id(4))])),
        (&old, false, &policy, Err(RejectCode::VersionMismatch)),
        (&stranger, false, &policy, Err(RejectCode::UnknownWorker)),
        (&hello(), true, &policy, Err(RejectCode::DuplicateConnection)),
        (&idle, false, &policy, Err(RejectCode::NoCapability)),
        (&builder_only, false, &eval_server, Err(RejectCode::NoCapability)),
        (&hello(), false, &eval_server, Ok(vec![PeerId(id(3)), PeerId(id(4))])),
    ];
    for (i, (h, connected, p, want)) in table.into_iter().enumerate() {
        assert_eq!(
            check_hello(h, &regs, connected, p).map_err(|r| r.code),
            want,
            "case {i}"
        );
    }
    let err = check_hello(&old, &regs, false, &policy).unwrap_err();
    assert_eq!(err.reason, "the worker speaks protocol version 0, this server speaks 3");
}

#[test]
fn answers_authorize_the_peers_whose_tokens_they_prove() {
    let regs = [
        registration(3, 100, 1, "t3"),
        registration(4, 200, 1, "t4"),
        registration(5, 300, 2, "t5"),
    ];
    let nonce = nonce_from_bytes(&[9; 32]);
    let challenge = Challenge {
        nonce: nonce.clone(),
        peers: check_hello(&hello(), &regs, false, &HandshakePolicy::default()).unwrap(),
        server_proofs: vec![],
    };
    let p = |n| PeerId(id(n));
    let tokens = |pairs: &[(u128, &str)]| -> BTreeMap<PeerId, String> {
        pairs.iter().map(|&(n, t)| (p(n), t.to_owned())).collect()
    };

    // (peers file lines, `*` token, authorized peers or rejection)
    let table = [
        (tokens(&[(3, "t3"), (4, "t4")]), None, Ok(vec![p(3), p(4)])),
        (tokens(&[(3, "t3")]), None, Ok(vec![p(3)])),
        (tokens(&[(3, "t3"), (4, "wrong")]), None, Ok(vec![p(3)])),
        (tokens(&[(3, "wrong")]), None, Err(RejectCode::BadTokens)),
        (tokens(&[]), None, Err(RejectCode::BadTokens)),
        // `*` answers every challenged peer with one token: it proves the peers registered with that token.
        (tokens(&[]), Some("t4"), Ok(vec![p(4)])),
        // A peer's own line wins over `*`; another worker's registration is never authorized.
        (tokens(&[(3, "t3"), (5, "t5")]), Some("t4"), Ok(vec![p(3), p(4)])),
    ];
    for (i, (file, any, want)) in table.into_iter().enumerate() {
        let response = answer_challenge(&challenge, &file, any);
        let got = check_answers(
            &hello(),
            &regs,
            &nonce,
            &response,
            &HandshakePolicy::default(),
            &crypt(),
        );
        assert_eq!(
            got.as_ref().map(|w| w.authorized.clone()).map_err(|r| r.code),
            want,
            "case {i}"
        );
    }

    // A response to another challenge (replayed) proves nothing.
    let replayed = answer_challenge(&challenge, &tokens(&[(3, "t3")]), None);
    let other_nonce = nonce_from_bytes(&[8; 32]);
    let err = check_answers(
        &hello(),
        &regs,
        &other_nonce,
        &replayed,
        &HandshakePolicy::default(),
        &crypt(),
    )
    .unwrap_err();
    assert_eq!(err.code, RejectCode::BadTokens);

    // Forged answer for a peer of another worker, with that peer's real token: ignored.
    let forged = ChallengeResponse {
        answers: vec![PeerAnswer {
            peer_id: p(5),
            proof: make_proof("t5", &nonce),
        }],
    };
    assert!(check_answers(&hello(), &regs, &nonce, &forged, &HandshakePolicy::default(), &crypt()).is_err());
}

/// What the database holds for a registration cannot answer a challenge: neither the stored text used as a
/// token or as a key, nor an unsealed (pre-0011) row, nor a row sealed under another crypt secret verifies.
#[test]
fn a_database_row_alone_cannot_prove_a_registration() {
    let token = "dG9rZW4tb2YtYS13b3JrZXItdGhhdC1pcy1sb25nLWVub3VnaC10by1jb3VudCEh";
    let row = registration(3, 100, 1, token);
    let regs = [row.clone()];
    let nonce = nonce_from_bytes(&[7; 32]);
    let challenge = Challenge {
        nonce: nonce.clone(),
        peers: vec![row.peer_id],
        server_proofs: vec![],
    };
    let policy = HandshakePolicy::default();
    // The real token works.
    let honest = answer_challenge(&challenge, &BTreeMap::new(), Some(token));
    assert!(check_answers(&hello(), &regs, &nonce, &honest, &policy, &crypt()).is_ok());
    assert!(
        !row.proof_key.0.contains(&hex::encode(proof_key(token))),
        "the key is not stored as is"
    );
    // The stored text, used as a token or as the key itself.
    let as_token = answer_challenge(&challenge, &BTreeMap::new(), Some(&row.proof_key.0));
    let as_key = ChallengeResponse {
        answers: vec![PeerAnswer {
            peer_id: row.peer_id,
            proof: hex::encode({
                use hmac::Mac;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(row.proof_key.0.as_bytes()).unwrap();
                mac.update(nonce.as_bytes());
                mac.finalize().into_bytes()
            }),
        }],
    };
    for (i, forged) in [as_token, as_key].iter().enumerate() {
        assert_eq!(
            check_answers(&hello(), &regs, &nonce, forged, &policy, &crypt())
                .unwrap_err()
                .code,
            RejectCode::BadTokens,
            "case {i}"
        );
    }
    // The same row opened with another crypt secret (a database copied to another server) proves nothing.
    let elsewhere = crate::crypt::Crypt::from_secret(b"another server's secret");
    assert!(check_answers(&hello(), &regs, &nonce, &honest, &policy, &elsewhere).is_err());
    // An unsealed row (as stored before sealing) is not accepted as it is, even with the right token.
    let legacy = WorkerRegistration {
        proof_key: crate::crypt::Sealed(hex::encode(proof_key(token))),
        ..row
    };
    assert_eq!(legacy_proof_key(&legacy.proof_key), Some(proof_key(token)));
    assert!(check_answers(&hello(), &[legacy], &nonce, &honest, &policy, &crypt()).is_err());
}

#[test]
fn welcome_carries_the_anded_capabilities_and_heartbeat_settings() {
    let regs = [registration(3, 100, 1, "t3"), registration(4, 200, 1, "t4")];
    let nonce = nonce_from_bytes(&[5; 32]);
    let policy = HandshakePolicy {
        capabilities: caps(true, false, true, true),
        heartbeat_interval_secs: 5,
        lost_after_secs: 20,
    };
    let response = answer_challenge(
        &Challenge {
            nonce: nonce.clone(),
            peers: vec![PeerId(id(3))],
            server_proofs: vec![],
        },
        &BTreeMap::new(),
        Some("t3"),
    );
    let welcome = check_answers(&hello(), &regs, &nonce, &response, &policy, &crypt()).unwrap();
    assert_eq!(
        welcome,
        Welcome {
            authorized: vec![PeerId(id(3))],
            capabilities: caps(true, false, true, false),
            heartbeat_interval_secs: 5,
            lost_after_secs: 20,
        }
    );
    assert_eq!(
        authorized_orgs(&regs, &welcome.authorized),
        BTreeSet::from([OrgId(id(100))])
    );
}

#[test]
fn wire_types_convert_to_and_from_the_model() {
    let model = crate::model::Capabilities {
        fetch: true,
        eval: false,
        build: true,
        sign: false,
    };
    assert_eq!(crate::model::Capabilities::from(Capabilities::from(model)), model);
    use crate::model::FailureKind as M;
    for k in [M::BuilderFailed, M::DependencyFailed, M::Timeout, M::Infrastructure] {
        assert_eq!(FailureKind::from(k).build_failure(), Some(k));
    }
    assert_eq!(FailureKind::FetchFailed.build_failure(), None);
    assert_eq!(FailureKind::EvaluationFailed.build_failure(), None);
    assert_eq!(
        InputOverride::from(crate::model::InputOverride::KeepUrl),
        InputOverride::KeepUrl
    );
}

/// Every ```json block of `docs/protocol.md` tagged `worker` or `server` decodes, and every message type
/// appears there, so the document cannot fall behind the types.
#[test]
fn the_protocol_document_shows_every_message_and_its_examples_decode() {
    let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"));
    let mut seen = BTreeSet::new();
    let mut blocks = 0;
    let mut rest = doc;
    while let Some(start) = rest.find("```json ") {
        let after = &rest[start + "```json ".len()..];
        let (info, body) = after.split_once('\n').unwrap();
        let end = body.find("```").unwrap();
        let text = &body[..end];
        rest = &body[end + 3..];
        blocks += 1;
        match info.trim() {
            "worker" => {
                let msg = decode_worker(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                seen.insert(format!("worker {}", worker_type(&msg)));
            }
            "server" => {
                let msg = decode_server(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                seen.insert(format!("server {}", server_type(&msg)));
            }
            other => panic!("unknown example direction {other:?}"),
        }
    }
    assert!(blocks > 0);
    for m in worker_samples() {
        assert!(
            seen.contains(&format!("worker {}", worker_type(&m))),
            "{} undocumented",
            worker_type(&m)
        );
    }
    for m in server_samples() {
        assert!(
            seen.contains(&format!("server {}", server_type(&m))),
            "{} undocumented",
            server_type(&m)
        );
    }
    for code in RejectCode::ALL {
        assert!(
            doc.contains(&format!("`{}`", code.as_str())),
            "{} undocumented",
            code.as_str()
        );
    }
    for limit in [MAX_FRAME_BYTES, MAX_LOG_CHUNK_BYTES] {
        assert!(doc.contains(&limit.to_string()), "limit {limit} undocumented");
    }
}

#[test]
fn the_server_proves_itself_to_a_listening_worker_for_the_registrations_of_the_url_it_dialed() {
    let token = "c2VjcmV0LXRva2VuLW9mLWZvcnR5LWVpZ2h0LWJ5dGVzLWJhc2U2NC1lbmNvZGVkISE=";
    let nonce = nonce_from_bytes(&[2; 32]);
    // The worked example of docs/protocol.md (Python's hmac and hashlib, message "server:" + nonce).
    assert_eq!(nonce, "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    assert_eq!(
        make_server_proof(&proof_key(token), &nonce),
        "d153eea6b825f3882827743f69384b4ff1de6556e1792710ae9e481f591babe0"
    );
    // The two directions never answer each other's challenges.
    assert_ne!(make_server_proof(&proof_key(token), &nonce), make_proof(token, &nonce));

    let url = "ws://builder:3100/proto";
    let ours = WorkerRegistration {
        url: Some(url.into()),
        ..registration(3, 100, 1, "t3")
    };
    let elsewhere = WorkerRegistration {
        url: Some("ws://attacker:3100/proto".into()),
        ..registration(4, 200, 1, "t4")
    };
    let dialing = registration(5, 300, 1, "t5");
    let other_worker = WorkerRegistration {
        url: Some(url.into()),
        ..registration(6, 400, 2, "t6")
    };
    let all = [ours.clone(), elsewhere, dialing, other_worker];
    let dialed = dialed_registrations(&all, WorkerId(id(1)), url);
    assert_eq!(
        dialed,
        std::slice::from_ref(&ours),
        "only this worker's registrations naming this URL"
    );

    let mut hello = hello();
    hello.server_nonce = Some(nonce.clone());
    let proofs = server_proofs(&hello, &dialed, &crypt()).unwrap();
    assert_eq!(proofs.len(), 1);
    let challenge = Challenge {
        nonce: nonce_from_bytes(&[7; 32]),
        peers: vec![ours.peer_id],
        server_proofs: proofs,
    };
    let p = |n| PeerId(id(n));
    let tokens = |t: &str| BTreeMap::from([(p(3), t.to_owned())]);
    assert!(check_server_proofs(&challenge, &nonce, &tokens("t3"), None));
    assert!(
        check_server_proofs(&challenge, &nonce, &BTreeMap::new(), Some("t3")),
        "the * line"
    );
    assert!(
        !check_server_proofs(&challenge, &nonce, &tokens("t4"), None),
        "another token"
    );
    assert!(
        !check_server_proofs(&challenge, &nonce_from_bytes(&[8; 32]), &tokens("t3"), None),
        "another nonce"
    );
    // A proof for a peer that was not challenged does not count.
    let unchallenged = Challenge {
        peers: vec![p(9)],
        ..challenge.clone()
    };
    assert!(!check_server_proofs(&unchallenged, &nonce, &tokens("t3"), Some("t3")));
    let none = Challenge {
        server_proofs: vec![],
        ..challenge
    };
    assert!(!check_server_proofs(&none, &nonce, &tokens("t3"), None));
    // A worker the server dialed that sends no nonce is refused.
    hello.server_nonce = None;
    let refused = server_proofs(&hello, &dialed, &crypt()).unwrap_err();
    assert_eq!(refused.code, RejectCode::UnexpectedMessage);
}

/// A dialer that proves one organization's registration of a shared listening worker (that organization knows
/// its own token) gets the worker's answer for that registration only, never a proof of another organization's
/// registration it could relay to the real server; and a nonce not of the server's form is never answered.
#[test]
fn a_listening_worker_answers_only_for_the_registrations_the_dialer_proved() {
    let p = |n| PeerId(id(n));
    let server_nonce = nonce_from_bytes(&[5; 32]);
    let tokens = BTreeMap::from([(p(1), "token-a".to_owned()), (p(2), "token-b".to_owned())]);
    // The rogue dialer knows B's token only: it proves peer 2, and challenges both peers.
    let challenge = Challenge {
        nonce: nonce_from_bytes(&[6; 32]),
        peers: vec![p(1), p(2)],
        server_proofs: vec![
            PeerAnswer {
                peer_id: p(2),
                proof: make_server_proof(&proof_key("token-b"), &server_nonce),
            },
            PeerAnswer {
                peer_id: p(1),
                proof: make_server_proof(&proof_key("a-guess"), &server_nonce),
            },
        ],
    };
    let proved = server_proved_peers(&challenge, &server_nonce, &tokens, None);
    assert_eq!(proved, [p(2)]);
    let answered = answer_challenge(
        &Challenge {
            peers: proved,
            ..challenge.clone()
        },
        &tokens,
        None,
    );
    assert_eq!(
        answered.answers.iter().map(|a| a.peer_id).collect::<Vec<_>>(),
        [p(2)],
        "no proof for A's registration"
    );
    assert!(is_challenge_nonce(&challenge.nonce));
    for bad in ["", "server:AAAA", &nonce_from_bytes(&[1; 32])[..20], "not base64!"] {
        assert!(!is_challenge_nonce(bad), "{bad:?}");
    }
}
