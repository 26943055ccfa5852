//! Driving the real `nix` (Debian's 2.8 or newer) for the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

/// Settings every test invocation uses: flakes on, no sandbox, no public substituter (it is unreachable
/// here and each command would wait for it), and no narinfo caching between commands.
pub const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\n\
     narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\nwarn-dirty = false\n";

pub fn nix(args: &[&str]) -> Output {
    Command::new("nix")
        .args(args)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("nix runs")
}

/// `nix copy --from <from>` of `paths` into the store `store` (a fresh directory, as a new machine has),
/// accepting only paths signed by `public_key`; `netrc` holds the credentials of a private cache.
pub fn substitute(from: &str, store: &str, netrc: Option<&str>, public_key: &str, paths: &[&str]) -> Output {
    let mut args = vec!["copy", "--from", from, "--to", store];
    if let Some(netrc) = netrc {
        args.extend(["--option", "netrc-file", netrc]);
    }
    args.extend([
        "--option",
        "require-sigs",
        "true",
        "--option",
        "trusted-public-keys",
        public_key,
    ]);
    args.extend(paths);
    nix(&args)
}

pub fn nix_ok(args: &[&str]) -> String {
    let out = nix(args);
    assert!(
        out.status.success(),
        "nix {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn nix_store(args: &[&str]) -> Output {
    Command::new("nix-store")
        .args(args)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("nix-store runs")
}

/// Builds a small closure with only `/bin/sh` and coreutils: a directory with a regular file, an
/// executable, a symlink, an empty file and a `big_mb` MiB random file, and a second path referring to it.
/// Answers the closure's store paths (the top one last).
pub fn build_closure(dir: &Path, tag: &str, big_mb: u32) -> Vec<String> {
    let expr = format!(
        r#"
let
  sh = "/bin/sh";
  base = derivation {{
    name = "gradient-e2e-base-{tag}";
    system = builtins.currentSystem;
    builder = sh;
    args = [ "-c" ''
      /usr/bin/mkdir -p $out/bin $out/share
      echo "hello from {tag}" > $out/share/greeting
      printf '#!/bin/sh\necho hi\n' > $out/bin/hello
      /usr/bin/chmod +x $out/bin/hello
      /usr/bin/ln -s ../share/greeting $out/link
      /usr/bin/touch $out/share/empty
      /usr/bin/head -c {big_mb}M /dev/urandom > $out/share/big
    '' ];
  }};
  top = derivation {{
    name = "gradient-e2e-top-{tag}";
    system = builtins.currentSystem;
    builder = sh;
    args = [ "-c" "echo ${{base}} > $out" ];
  }};
in top
"#
    );
    let file = dir.join(format!("closure-{tag}.nix"));
    std::fs::write(&file, expr).expect("write expression");
    let out = Command::new("nix-build")
        .args(["--no-out-link", file.to_str().expect("path")])
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("nix-build runs");
    assert!(
        out.status.success(),
        "nix-build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let closure = nix_ok(&["path-info", "-r", &top]);
    let mut paths: Vec<String> = closure.lines().map(str::to_owned).filter(|p| p != &top).collect();
    paths.push(top);
    paths
}
