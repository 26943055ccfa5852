//! Our Nix formats against what real Nix (2.8) wrote: `tests/fixtures/make.sh` built a few store paths
//! (a file, an executable, an empty file, a symlink, an empty directory, a tree referring to another path
//! and to itself, content-addressed paths), dumped their NARs, copied them to a `file://` binary cache
//! with signing keys Nix generated, and recorded Nix's renderings of their hashes.

use gradient_domain::nix::hash::{Hash, HashAlgo, sha256_of};
use gradient_domain::nix::nar::NarReader;
use gradient_domain::nix::narinfo::NarInfo;
use gradient_domain::nix::nix32;
use gradient_domain::nix::signing::{PublicKey, SecretKey};
use gradient_domain::nix::store_path::StorePath;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nix")
}

fn read(rel: &str) -> String {
    fs::read_to_string(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `name -> store path`, from paths.txt.
fn paths() -> BTreeMap<String, StorePath> {
    read("paths.txt")
        .lines()
        .map(|l| {
            let (name, path) = l.split_once(' ').expect("paths.txt lines are '<name> <path>'");
            (
                name.to_owned(),
                StorePath::parse(path).expect("Nix's store path parses"),
            )
        })
        .collect()
}

/// Every narinfo Nix wrote: (file name, text).
fn narinfos() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(fixtures().join("cache"))
        .expect("the fixture cache exists")
        .map(|e| {
            e.expect("readable directory")
                .file_name()
                .into_string()
                .expect("UTF-8 file name")
        })
        .filter(|n| n.ends_with(".narinfo"))
        .map(|n| {
            let text = read(&format!("cache/{n}"));
            (n, text)
        })
        .collect();
    out.sort();
    out
}

fn key(name: &str) -> (SecretKey, PublicKey) {
    let sk = SecretKey::parse(&read(&format!("keys/{name}.secret"))).expect("Nix's secret key parses");
    let pk = PublicKey::parse(&read(&format!("keys/{name}.public"))).expect("Nix's public key parses");
    (sk, pk)
}

fn summarize(nar: &[u8], chunk: usize) -> (Hash, u64) {
    let mut reader = NarReader::new();
    for c in nar.chunks(chunk) {
        reader.update(c).expect("Nix's NAR is valid");
    }
    let s = reader.finish().expect("Nix's NAR is complete");
    (s.nar_hash, s.nar_size)
}

#[test]
fn narinfos_round_trip_byte_for_byte() {
    let all = narinfos();
    assert_eq!(all.len(), paths().len(), "one narinfo per path");
    for (file, text) in all {
        let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(info.render(), text, "{file}");
        assert_eq!(NarInfo::parse(&info.render()).unwrap(), info, "{file}");
        assert_eq!(format!("{}.narinfo", info.store_path.hash_part()), file);
        // What Nix 2.8 writes: always a References line, even empty, with its space.
        assert!(text.contains("\nReferences: "), "{file}");
    }
}

#[test]
fn narinfos_describe_what_nix_built() {
    let paths = paths();
    let infos: BTreeMap<String, NarInfo> = narinfos()
        .into_iter()
        .map(|(_, t)| {
            let info = NarInfo::parse(&t).unwrap();
            let name = paths.iter().find(|(_, p)| **p == info.store_path).unwrap().0.clone();
            (name, info)
        })
        .collect();
    assert_eq!(infos.len(), paths.len());

    let tree = &infos["tree"];
    assert_eq!(
        tree.references,
        [paths["dep"].clone(), paths["tree"].clone()],
        "another path and itself"
    );
    assert_eq!(tree.deriver.as_ref().map(StorePath::name), Some("tree-1.0.drv"));
    assert_eq!(infos["link"].references, [paths["dep"].clone()]);
    assert_eq!(infos["dep"].sigs.len(), 2);

    for name in ["added", "flat", "text"] {
        assert_eq!(infos[name].deriver, None, "{name} was not built");
    }
    let ca = |name: &str| infos[name].ca.clone().unwrap();
    assert!(ca("added").starts_with("fixed:r:sha256:"));
    assert!(ca("flat").starts_with("fixed:sha256:"));
    assert!(ca("text").starts_with("text:sha256:"));
    assert_eq!(
        infos["flat"]
            .ca
            .as_deref()
            .map(|c| Hash::parse(&c["fixed:".len()..]).unwrap()),
        Some(sha256_of(b"added flat\n"))
    );
    for info in infos.values() {
        assert_eq!(info.compression, "none");
        assert_eq!(info.system, None, "Nix 2.8 does not write System");
    }
}

#[test]
fn nar_reader_agrees_with_nix_on_every_nar() {
    let paths = paths();
    for (file, text) in narinfos() {
        let info = NarInfo::parse(&text).unwrap();
        let nar = fs::read(fixtures().join("cache").join(&info.url)).unwrap();
        let name = paths.iter().find(|(_, p)| **p == info.store_path).unwrap().0;
        let dump = fs::read(fixtures().join(format!("dumps/{name}.nar"))).unwrap();
        assert_eq!(
            nar, dump,
            "{file}: the uncompressed cache NAR is the `nix-store --dump`"
        );
        for chunk in [1, 5, 8, 64, 1 << 20] {
            let (hash, size) = summarize(&nar, chunk);
            assert_eq!(hash, info.nar_hash, "{file} in chunks of {chunk}");
            assert_eq!(size, info.nar_size, "{file} in chunks of {chunk}");
        }
        // The NarHash text Nix wrote is our rendering of the hash we computed.
        let line = text.lines().find(|l| l.starts_with("NarHash: ")).unwrap();
        assert_eq!(format!("NarHash: {}", summarize(&nar, 4096).0), line, "{file}");
        // Uncompressed, the file is the NAR.
        assert_eq!(info.file_hash, Some(sha256_of(&nar)), "{file}");
        assert_eq!(info.file_size, Some(nar.len() as u64), "{file}");
        assert_eq!(info.url, format!("nar/{}.nar", sha256_of(&nar).to_nix32()), "{file}");

        // Any damage is noticed: a flipped byte either breaks the grammar or changes the hash.
        for at in [0, nar.len() / 2, nar.len() - 1] {
            let mut bad = nar.clone();
            bad[at] ^= 0x01;
            let mut reader = NarReader::new();
            let outcome = reader.update(&bad).and_then(|()| reader.finish());
            assert!(
                outcome.is_err() || outcome.unwrap().nar_hash != info.nar_hash,
                "{file} flipped at {at}"
            );
        }
        let mut reader = NarReader::new();
        reader.update(&nar[..nar.len() - 8]).unwrap();
        assert!(reader.finish().is_err(), "{file} truncated");
    }
}

#[test]
fn hashes_render_like_nix() {
    // `<file> <base16> <nix32> <base64> <sri>` from `nix hash file`.
    for line in read("hashes.txt").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [file, base16, nix32_, base64, sri] = f[..] else {
            panic!("{line}")
        };
        let hash = sha256_of(&fs::read(fixtures().join(file)).unwrap());
        assert_eq!(hash.to_base16(), format!("sha256:{base16}"), "{file}");
        assert_eq!(hash.to_nix32(), nix32_, "{file}");
        assert_eq!(hash.to_string(), format!("sha256:{nix32_}"), "{file}");
        assert_eq!(hash.to_sri(), sri, "{file}");
        for text in [
            format!("sha256:{base16}"),
            format!("sha256:{nix32_}"),
            format!("sha256:{base64}"),
            sri.to_owned(),
        ] {
            assert_eq!(Hash::parse(&text).unwrap(), hash, "{text}");
        }
        assert_eq!(
            Hash::parse(&format!("blake3:{nix32_}")).unwrap(),
            Hash::new(HashAlgo::Blake3, hash.bytes)
        );
    }
    // `<algo> <base16> <nix32>` from `nix hash to-base32`, for digests of several lengths.
    for line in read("nix32.txt").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [algo, base16, expected] = f[..] else {
            panic!("{line}")
        };
        let bytes = hex::decode(base16).unwrap();
        assert_eq!(nix32::encode(&bytes), expected, "{algo} {base16}");
        assert_eq!(nix32::decode(expected).unwrap(), bytes, "{algo} {expected}");
        assert_eq!(nix32::encoded_len(bytes.len()), expected.len());
    }
}

#[test]
fn signatures_interoperate_with_nix() {
    let (sk1, pk1) = key("test-cache-1");
    let (sk2, pk2) = key("test-cache-2");
    assert_eq!(sk1.public(), pk1, "nix key generate-secret / convert-secret-to-public");
    assert_eq!(sk2.public(), pk2, "nix-store --generate-binary-cache-key");
    assert_eq!(sk1.to_string(), read("keys/test-cache-1.secret").trim());
    assert_eq!(pk1.to_string(), read("keys/test-cache-1.public").trim());

    for (file, text) in narinfos() {
        let info = NarInfo::parse(&text).unwrap();
        assert!(info.verify(&pk1), "{file}: Nix's signature verifies with our code");
        assert_eq!(info.verify(&pk2), info.sigs.len() == 2, "{file}");

        // Ed25519 is deterministic: signing the same fingerprint gives Nix's signature exactly.
        let ours = sk1.sign(&info.fingerprint());
        assert!(info.sigs.contains(&ours), "{file}: {ours} not in {:?}", info.sigs);
        let mut resigned = info.clone();
        resigned.sign(&sk1);
        resigned.sign(&sk2);
        if info.sigs.len() == 2 {
            assert_eq!(resigned, info, "{file}: re-signing changes nothing");
        }
        assert_eq!(resigned.sigs.len(), 2, "{file}");
        assert!(resigned.verify(&pk1) && resigned.verify(&pk2), "{file}");

        let mut tampered = info.clone();
        tampered.nar_size += 8;
        assert!(!tampered.verify(&pk1), "{file}: a changed NarSize breaks the signature");
        let mut tampered = info.clone();
        tampered.store_path = StorePath::from_basename(&format!("{}-other", info.store_path.hash_part())).unwrap();
        assert!(!tampered.verify(&pk1), "{file}: a changed path breaks the signature");
    }
}

#[test]
fn store_paths_from_nix_parse() {
    for (name, path) in paths() {
        assert_eq!(path.hash_part().len(), 32);
        assert!(path.name().starts_with(&name), "{path}");
        assert_eq!(StorePath::from_basename(path.basename()).unwrap(), path);
        assert_eq!(nix32::encode(&path.digest()), path.hash_part());
    }
    assert_eq!(read("cache/nix-cache-info"), "StoreDir: /nix/store\n");
}

/// The `.ls` listing of every dump is byte for byte the one Nix wrote into a binary cache
/// (`tests/fixtures/make-listings.sh`), however the NAR is chunked.
#[test]
fn nar_listings_are_the_ones_nix_writes() {
    let dir = fixtures().join("listings");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).expect("the fixture listings exist") {
        let path = entry.expect("readable directory").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let expected = fs::read_to_string(&path).unwrap();
        let nar = fs::read(fixtures().join(format!("dumps/{name}.nar"))).unwrap();
        for chunk in [1, 5, 8, 4096] {
            let mut reader = NarReader::with_listing();
            for c in nar.chunks(chunk) {
                reader.update(c).unwrap();
            }
            let (summary, listing) = reader.finish_with_listing().unwrap();
            assert_eq!(summary.nar_size, nar.len() as u64);
            assert_eq!(
                listing.as_deref(),
                Some(expected.as_str()),
                "{name} in chunks of {chunk}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, paths().len(), "one listing per fixture path");
    // A reader not asked for a listing makes none.
    let mut reader = NarReader::new();
    reader
        .update(&fs::read(fixtures().join("dumps/tree.nar")).unwrap())
        .unwrap();
    assert_eq!(reader.finish_with_listing().unwrap().1, None);
}
