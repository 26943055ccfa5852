//! Property tests of the parsers that read what other parties send: the NAR reader, narinfo, the export
//! stream reader and the worker link's frames. For each: arbitrary bytes never panic (they are refused or
//! read), and valid inputs generated from strategies are read back as what was written, whatever the chunking.
//! Case counts are modest so the whole file runs in a few seconds unoptimized.

use gradient_domain::model::JobId;
use gradient_domain::nix::export::{ExportEvent, ExportReader, ExportedPath};
use gradient_domain::nix::hash::{Hash, HashAlgo, sha256_of};
use gradient_domain::nix::nar::NarReader;
use gradient_domain::nix::narinfo::NarInfo;
use gradient_domain::nix::nix32;
use gradient_domain::nix::store_path::StorePath;
use gradient_domain::proto::{
    self, AttributeError, EvaluatedDerivation, FailureKind, JobOutcome, ServerMessage, Stage, WorkerMessage,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a failure is useful; a long one is not worth the wait in CI.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// NARs

/// A file system object as a NAR holds it.
#[derive(Clone, Debug)]
enum Node {
    File {
        executable: bool,
        contents: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    /// Entries by name: a `BTreeMap` keeps them sorted by bytes, as the format demands.
    Directory(BTreeMap<String, Node>),
}

fn entry_name() -> impl Strategy<Value = String> {
    // Any bytes but '/' and NUL are allowed; keep to printable ones, and never '.' or '..'.
    "[a-zA-Z0-9_+=-][a-zA-Z0-9._+=-]{0,15}"
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(executable, contents)| Node::File { executable, contents }),
        "[a-zA-Z0-9/._-]{1,40}".prop_map(|target| Node::Symlink { target }),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop::collection::btree_map(entry_name(), inner, 0..5).prop_map(Node::Directory)
    })
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

/// A string token: its length, its bytes, zeros up to a multiple of 8.
fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
}

fn write_node(out: &mut Vec<u8>, node: &Node) {
    put_str(out, b"(");
    put_str(out, b"type");
    match node {
        Node::File { executable, contents } => {
            put_str(out, b"regular");
            if *executable {
                put_str(out, b"executable");
                put_str(out, b"");
            }
            put_str(out, b"contents");
            put_str(out, contents);
        }
        Node::Symlink { target } => {
            put_str(out, b"symlink");
            put_str(out, b"target");
            put_str(out, target.as_bytes());
        }
        Node::Directory(entries) => {
            put_str(out, b"directory");
            for (name, child) in entries {
                put_str(out, b"entry");
                put_str(out, b"(");
                put_str(out, b"name");
                put_str(out, name.as_bytes());
                put_str(out, b"node");
                write_node(out, child);
                put_str(out, b")");
            }
        }
    }
    put_str(out, b")");
}

/// The NAR serialisation of `node`, as `nix-store --dump` writes it.
fn nar(node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    put_str(&mut out, b"nix-archive-1");
    write_node(&mut out, node);
    out
}

/// Splits `bytes` at the given cut points (taken modulo the length), in order.
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for p in points {
        out.push(&bytes[from..p]);
        from = p;
    }
    out.push(&bytes[from..]);
    out
}

fn read_nar(pieces: &[&[u8]]) -> Result<gradient_domain::nix::nar::NarSummary, gradient_domain::nix::NarError> {
    let mut reader = NarReader::new();
    for piece in pieces {
        reader.update(piece)?;
    }
    reader.finish()
}

/// `listing` (a node of a `.ls` listing) says what `node` is; a file's `narOffset` points at its contents.
fn describes(listing: &serde_json::Value, node: &Node, nar: &[u8]) -> Result<(), TestCaseError> {
    match node {
        Node::File { executable, contents } => {
            prop_assert_eq!(&listing["type"], "regular");
            prop_assert_eq!(&listing["size"], contents.len());
            prop_assert_eq!(listing.get("executable").is_some(), *executable);
            let at = listing["narOffset"].as_u64().expect("narOffset") as usize;
            prop_assert_eq!(&nar[at..at + contents.len()], contents.as_slice());
        }
        Node::Symlink { target } => {
            prop_assert_eq!(&listing["type"], "symlink");
            prop_assert_eq!(&listing["target"], target.as_str());
        }
        Node::Directory(entries) => {
            prop_assert_eq!(&listing["type"], "directory");
            let listed = listing["entries"].as_object().expect("entries");
            prop_assert_eq!(listed.len(), entries.len());
            for (name, child) in entries {
                describes(&listed[name], child, nar)?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn nar_reader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_nar(&[&bytes]);
    }

    #[test]
    fn nar_reader_never_panics_on_damaged_nars(node in node(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut bytes = nar(&node);
        let i = at % bytes.len();
        bytes[i] = byte;
        let _ = read_nar(&[&bytes]);
        let cut = cut % bytes.len();
        let truncated = &bytes[..cut];
        // A NAR cut short is refused, never taken for a whole one.
        prop_assert!(read_nar(&[truncated]).is_err(), "accepted a NAR cut at {cut}");
    }

    #[test]
    fn valid_nars_are_read_whole_with_their_hash_and_size(node in node(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let bytes = nar(&node);
        let summary = read_nar(&chunks(&bytes, &cuts)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(summary.nar_hash, sha256_of(&bytes));
        prop_assert_eq!(summary.nar_size, bytes.len() as u64);
    }

    #[test]
    fn a_nars_listing_describes_every_entry_whatever_the_chunking(node in node(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let bytes = nar(&node);
        let mut reader = NarReader::with_listing();
        for piece in chunks(&bytes, &cuts) {
            reader.update(piece).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let (_, listing) = reader.finish_with_listing().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let listing: serde_json::Value = serde_json::from_str(&listing.expect("a listing")).expect("JSON");
        prop_assert_eq!(&listing["version"], 1);
        describes(&listing["root"], &node, &bytes)?;
    }

    #[test]
    fn bytes_after_a_nar_are_refused(node in node(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
        let mut bytes = nar(&node);
        bytes.extend_from_slice(&extra);
        prop_assert!(read_nar(&[&bytes]).is_err());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Store paths, hashes, narinfos

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(|bytes| Hash::new(HashAlgo::Sha256, bytes))
}

fn store_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,30}").prop_map(|(digest, name)| {
        StorePath::from_basename(&format!("{}-{name}", nix32::encode(&digest))).expect("a valid store path")
    })
}

fn content_address() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|d| format!("text:sha256:{}", nix32::encode(&d))),
        any::<[u8; 32]>().prop_map(|d| format!("fixed:r:sha256:{}", nix32::encode(&d))),
        any::<[u8; 32]>().prop_map(|d| format!("fixed:sha256:{}", hex_of(&d))),
        any::<[u8; 20]>().prop_map(|d| format!("fixed:sha1:{}", hex_of(&d))),
    ]
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

prop_compose! {
    fn narinfo()(
        store_path in store_path(),
        file in hash(),
        compression in prop::sample::select(vec!["none", "xz", "zstd", "bzip2"]),
        file_hash in prop::option::of(hash()),
        file_size in prop::option::of(1u64..u64::MAX),
        nar_hash in hash(),
        nar_size in 1u64..u64::MAX,
        references in prop::collection::vec(store_path(), 0..5),
        deriver in prop::option::of(store_path()),
        system in prop::option::of(prop::sample::select(vec!["x86_64-linux", "aarch64-darwin", "builtin"])),
        sigs in prop::collection::vec("[a-z][a-z0-9.-]{0,10}-1:[A-Za-z0-9+/]{86}==", 0..3),
        ca in prop::option::of(content_address()),
    ) -> NarInfo {
        NarInfo {
            store_path,
            url: format!("nar/{}.nar{}", file.to_nix32(), if compression == "none" { "" } else { ".zst" }),
            compression: compression.to_owned(),
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver,
            system: system.map(str::to_owned),
            sigs,
            ca,
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn narinfo_parser_never_panics_on_arbitrary_text(text in "(?s).{0,400}") {
        let _ = NarInfo::parse(&text);
    }

    #[test]
    fn narinfo_parser_never_panics_on_damaged_narinfos(info in narinfo(), at in any::<usize>(), c in any::<char>()) {
        let mut text: Vec<char> = info.render().chars().collect();
        let i = at % text.len();
        text[i] = c;
        let text: String = text.into_iter().collect();
        if let Ok(parsed) = NarInfo::parse(&text) {
            // Whatever is accepted renders to something that reads back the same.
            prop_assert_eq!(NarInfo::parse(&parsed.render()), Ok(parsed));
        }
    }

    #[test]
    fn narinfos_round_trip(info in narinfo()) {
        let text = info.render();
        prop_assert_eq!(NarInfo::parse(&text), Ok(info.clone()));
        // Rendering is stable: what Nix (or we) wrote comes back byte for byte.
        prop_assert_eq!(NarInfo::parse(&text).map(|i| i.render()), Ok(text));
    }

    #[test]
    fn narinfos_with_control_characters_in_a_field_are_refused(
        mut info in narinfo(),
        c in prop::sample::select(vec!['\0', '\t', '\r', '\u{7f}', '\u{85}', '\u{1b}']),
    ) {
        info.system = Some(format!("x86_64{c}linux"));
        let refused = matches!(
            NarInfo::parse(&info.render()),
            Err(gradient_domain::nix::NarInfoError::Invalid { field: "System", .. })
        );
        prop_assert!(refused, "accepted a System with {:?}", c);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Export streams (`nix-store --export`)

#[derive(Clone, Debug)]
struct Exported {
    path: StorePath,
    node: Node,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
}

fn exported() -> impl Strategy<Value = Exported> {
    (
        store_path(),
        node(),
        prop::collection::vec(store_path(), 0..4),
        prop::option::of(store_path()),
    )
        .prop_map(|(path, node, references, deriver)| Exported {
            path,
            node,
            references,
            deriver,
        })
}

/// The stream `nix-store --export` writes for `paths`.
fn export(paths: &[Exported]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        put_u64(&mut out, 1);
        out.extend_from_slice(&nar(&p.node));
        put_u64(&mut out, 0x4558_494e);
        put_str(&mut out, p.path.to_string().as_bytes());
        put_u64(&mut out, p.references.len() as u64);
        for r in &p.references {
            put_str(&mut out, r.to_string().as_bytes());
        }
        put_str(
            &mut out,
            p.deriver.as_ref().map(|d| d.to_string()).unwrap_or_default().as_bytes(),
        );
        put_u64(&mut out, 0);
    }
    put_u64(&mut out, 0);
    out
}

/// Reads a stream fed in `pieces`: the paths it carried and the NAR bytes it handed back, or the error.
fn read_export(pieces: &[&[u8]]) -> Result<(Vec<ExportedPath>, Vec<u8>), gradient_domain::nix::ExportError> {
    let mut reader = ExportReader::new();
    let mut paths = Vec::new();
    let mut nar_bytes = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let (used, event) = reader.advance(rest)?;
            assert!(
                used > 0 && used <= rest.len(),
                "advance consumed {used} of {} bytes",
                rest.len()
            );
            match event {
                Some(ExportEvent::Nar(bytes)) => nar_bytes.extend_from_slice(bytes),
                Some(ExportEvent::Path(p)) => paths.push(p),
                _ => {}
            }
            rest = &rest[used..];
        }
    }
    reader.finish()?;
    Ok((paths, nar_bytes))
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn export_reader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_export(&[&bytes]);
    }

    #[test]
    fn export_reader_never_panics_on_damaged_streams(paths in prop::collection::vec(exported(), 1..3), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut bytes = export(&paths);
        let i = at % bytes.len();
        bytes[i] = byte;
        let _ = read_export(&[&bytes]);
        let cut = cut % bytes.len();
        prop_assert!(read_export(&[&bytes[..cut]]).is_err(), "accepted a stream cut at {cut}");
    }

    #[test]
    fn export_streams_round_trip(paths in prop::collection::vec(exported(), 0..4), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let bytes = export(&paths);
        let (read, nar_bytes) = read_export(&chunks(&bytes, &cuts)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read.len(), paths.len());
        let mut all_nars = Vec::new();
        for (got, want) in read.iter().zip(&paths) {
            let nar = nar(&want.node);
            prop_assert_eq!(&got.path, &want.path);
            prop_assert_eq!(&got.references, &want.references);
            prop_assert_eq!(&got.deriver, &want.deriver);
            prop_assert_eq!(got.nar_hash, sha256_of(&nar));
            prop_assert_eq!(got.nar_size, nar.len() as u64);
            all_nars.extend_from_slice(&nar);
        }
        prop_assert_eq!(nar_bytes, all_nars, "the NAR bytes handed back are exactly the NARs");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Worker link frames

fn job_id() -> impl Strategy<Value = JobId> {
    any::<u128>().prop_map(|n| JobId(uuid::Uuid::from_u128(n)))
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, control characters and quotes included: JSON must escape them all.
    "(?s).{0,40}"
}

fn stage() -> impl Strategy<Value = Stage> {
    prop::sample::select(vec![
        Stage::Fetching,
        Stage::Evaluating,
        Stage::Substituting,
        Stage::Building,
        Stage::Pushing,
    ])
}

fn outcome() -> impl Strategy<Value = JobOutcome> {
    let kind = prop::sample::select(vec![
        FailureKind::BuilderFailed,
        FailureKind::DependencyFailed,
        FailureKind::Timeout,
        FailureKind::Infrastructure,
        FailureKind::FetchFailed,
        FailureKind::EvaluationFailed,
    ]);
    prop_oneof![
        Just(JobOutcome::Success),
        Just(JobOutcome::Aborted),
        (kind, text()).prop_map(|(kind, message)| JobOutcome::Failed { kind, message }),
    ]
}

fn derivation() -> impl Strategy<Value = EvaluatedDerivation> {
    (
        prop::option::of(text()),
        text(),
        prop::collection::btree_map(text(), text(), 0..3),
        text(),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(attribute, drv_path, outputs, system, required_features, input_drvs)| EvaluatedDerivation {
                attribute,
                drv_path,
                outputs,
                system,
                required_features,
                input_drvs,
            },
        )
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    prop_oneof![
        Just(WorkerMessage::Heartbeat),
        job_id().prop_map(|job_id| WorkerMessage::JobStarted { job_id }),
        (job_id(), stage()).prop_map(|(job_id, stage)| WorkerMessage::JobProgress { job_id, stage }),
        (job_id(), any::<u64>(), text()).prop_map(|(job_id, seq, text)| WorkerMessage::JobLog { job_id, seq, text }),
        (
            job_id(),
            prop::collection::vec(derivation(), 0..3),
            prop::collection::vec((text(), text()), 0..3),
        )
            .prop_map(|(job_id, derivations, errors)| WorkerMessage::EvalResult {
                job_id,
                derivations,
                errors: errors
                    .into_iter()
                    .map(|(attribute, message)| AttributeError { attribute, message })
                    .collect(),
            }),
        (job_id(), outcome()).prop_map(|(job_id, outcome)| WorkerMessage::JobFinished { job_id, outcome }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        Just(ServerMessage::Heartbeat),
        job_id().prop_map(|job_id| ServerMessage::Abort { job_id }),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn frame_decoding_never_panics_on_arbitrary_text(frame in "(?s).{0,300}") {
        let _ = proto::decode_worker(&frame);
        let _ = proto::decode_server(&frame);
        let _ = proto::hello_version(&frame);
    }

    #[test]
    fn frame_decoding_never_panics_on_json_shaped_text(
        kind in prop::sample::select(vec!["hello", "job_log", "job_finished", "eval_result", "assign", "abort", "x"]),
        body in "[ -~]{0,80}",
    ) {
        let frame = format!("{{\"type\":\"{kind}\",{body}");
        let _ = proto::decode_worker(&frame);
        let _ = proto::decode_server(&frame);
        let _ = proto::hello_version(&frame);
    }

    #[test]
    fn worker_frames_round_trip(msg in worker_message()) {
        let frame = proto::encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(proto::decode_worker(&frame), Ok(msg));
    }

    #[test]
    fn server_frames_round_trip(msg in server_message()) {
        let frame = proto::encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(proto::decode_server(&frame), Ok(msg));
    }
}
