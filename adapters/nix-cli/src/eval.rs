//! Evaluation in three steps per top-level output the wildcard can reach (`packages`, `checks`, …), the first
//! two in one `nix eval` when no pattern excludes and one process evaluates (see `evaluate`):
//! 1. list: one `nix eval --apply <walker>` lists attribute names level by level, descending only where a
//!    pattern can still match, without forcing the attributes themselves (`builtins.tryEval` around each
//!    level, so a throwing attribute set is reported and its siblings still listed);
//! 2. select: the domain's [`Wildcard::matches`] picks the attributes; in batches, one `nix eval` computes
//!    each one's `drvPath` under `builtins.tryEval` (if Nix aborts anyway, every attribute of the batch is
//!    evaluated alone, so one bad attribute cannot hide the others), and a failed attribute is evaluated once
//!    more alone to get Nix's message;
//! 3. describe: the batch's `.drv` files and those of their closure not reported yet, read directly (ATerm;
//!    `nix show-derivation -r` when one cannot be read), give outputs, system, features and the graph; each
//!    derivation is reported once, after its inputs.
//!
//! `nix eval <ref>#checks` resolves `packages.<system>.checks` first if that exists (Nix's installable rules),
//! so a package named like a top-level output would shadow it.

use crate::fetch::input_args;
use crate::{NixCli, derivation, process};
use gradient_domain::ports::nix::{
    AttributeError, EvalBatch, EvalSummary, EvaluatedAttribute, FetchedFlake, NixError, Result, attribute_string,
};
use gradient_domain::wildcard::Wildcard;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// Attributes per reported batch, and per `nix eval` when one process evaluates.
const BATCH: usize = 64;

/// Attributes per `nix eval` at most when several evaluate at once (each loads the flake again: a few large
/// chunks cost less than many small ones).
const PARALLEL_CHUNK: usize = 4 * BATCH;

/// The chunks `parallel` `nix eval`s evaluate, `parallel` at a time: the leaves shared out evenly, each chunk
/// at most [`PARALLEL_CHUNK`] (one [`BATCH`] when one process evaluates), so every round but the last keeps
/// every process busy and the flake is loaded as few times as that allows.
fn eval_chunks(leaves: &[Vec<String>], parallel: usize) -> Vec<&[Vec<String>]> {
    let parallel = parallel.max(1);
    if parallel == 1 {
        return leaves.chunks(BATCH).collect();
    }
    let rounds = leaves.len().div_ceil(parallel * PARALLEL_CHUNK).max(1);
    let size = leaves.len().div_ceil(parallel * rounds).max(1);
    leaves.chunks(size).collect()
}

/// What a leading `*` stands for: the flake outputs that hold derivations (not `legacyPackages`, which is a
/// whole package set: name it explicitly).
const STANDARD_OUTPUTS: &[&str] = &[
    "checks",
    "defaultPackage",
    "devShell",
    "devShells",
    "formatter",
    "hydraJobs",
    "packages",
];

/// Lists names below the output, following the patterns (lists of names, `null` for `*`). Each node is
/// `leaf x` where every pattern ends, or where one ends at a value that cannot be walked into (a derivation
/// selected by `a.*` while `a.*.*` goes on) (`{}` when only listing, [`TRY_DRV`] when listing and evaluating at once),
/// `{ e = true; }` (could not be evaluated) or `{ c = { <name> = node; … }; }`.
const WALKER: &str = r#"leaf: pats: v: let
  isDrv = x: (x.type or null) == "derivation";
  walk = pats: x:
    let
      deeper = builtins.filter (p: p != [ ]) pats;
      r = builtins.tryEval (builtins.isAttrs x && !(isDrv x));
    in
    if deeper == [ ] then leaf x
    else if !r.success then { e = true; }
    else if !r.value then (if builtins.elem [ ] pats then leaf x else { })
    else {
      c = builtins.listToAttrs (builtins.concatMap (name:
        let sub = map builtins.tail (builtins.filter (p: builtins.head p == null || builtins.head p == name) deeper);
        in if sub == [ ] then [ ] else [ { inherit name; value = walk sub x.${name}; } ]) (builtins.attrNames x));
    };
in walk pats v"#;

/// `{ d = <drvPath>; }`, `{ n = <type>; }` for a value that is no derivation, `{ e = true; }` when it throws.
const TRY_DRV: &str = r#"x: let r = builtins.tryEval (if builtins.isAttrs x && (x.type or null) == "derivation"
  then (let d = builtins.unsafeDiscardStringContext x.drvPath; in builtins.seq d { inherit d; })
  else { n = builtins.typeOf x; }); in if r.success then r.value else { e = true; }"#;

/// Forces the attribute without protection, so that Nix prints why it fails.
const FORCE_DRV: &str = "x: builtins.unsafeDiscardStringContext x.drvPath";

type Pattern = Vec<Option<String>>;

pub async fn evaluate(
    cli: &NixCli,
    flake: &FetchedFlake,
    wildcard: &str,
    on_batch: &mut (dyn FnMut(EvalBatch) + Send),
) -> Result<EvalSummary> {
    let selection = Wildcard::parse(wildcard).map_err(NixError::InvalidRequest)?;
    let mut ev = Evaluator {
        cli,
        flake,
        args: input_args(flake),
        seen: HashSet::new(),
        summary: EvalSummary::default(),
    };
    let mut unlisted = Vec::new();
    let mut listed_any = false;
    // Listing and evaluating in one `nix eval` (one Nix process fewer, the flake loaded once) when every listed
    // leaf is wanted (no excluding pattern, which may exclude an attribute for its cost) and one process
    // evaluates anyway; if that `nix eval` fails as a whole (an error `tryEval` does not catch, in the listing or
    // in an attribute), the two steps are taken one after the other.
    let at_once = cli.eval_processes <= 1 && !wildcard.split(',').any(|p| p.trim().starts_with('!'));
    for (top, tails) in plan(wildcard) {
        let tree = if at_once {
            match ev.list(&top, &tails, true).await? {
                Listing::Missing => continue,
                Listing::Tree(tree) => Some(tree),
                Listing::Failed(_) => None,
            }
        } else {
            None
        };
        if let Some(tree) = tree {
            listed_any = true;
            let mut leaves = Vec::new();
            let mut broken = Vec::new();
            flatten_nodes(vec![top], &tree, &selection, &mut leaves, &mut broken);
            let mut errors = Vec::new();
            for attr_path in broken {
                let message = ev.message(&attr_path).await?;
                errors.push(AttributeError { attr_path, message });
            }
            if leaves.is_empty() {
                if !errors.is_empty() {
                    ev.emit(
                        on_batch,
                        EvalBatch {
                            errors,
                            ..EvalBatch::default()
                        },
                    );
                }
                continue;
            }
            for chunk in leaves.chunks(BATCH) {
                let (paths, results): (Vec<Vec<String>>, Vec<std::result::Result<Value, String>>) =
                    chunk.iter().cloned().map(|(p, v)| (p, Ok(v))).unzip();
                let mut batch = ev.describe(&paths, results).await?;
                batch.errors.splice(0..0, std::mem::take(&mut errors));
                ev.emit(on_batch, batch);
            }
            continue;
        }
        let tree = match ev.list(&top, &tails, false).await? {
            Listing::Missing => continue,
            Listing::Failed(message) => {
                unlisted.push(AttributeError {
                    attr_path: vec![top],
                    message,
                });
                continue;
            }
            Listing::Tree(tree) => tree,
        };
        listed_any = true;
        let mut leaves = Vec::new();
        let mut broken = Vec::new();
        flatten(vec![top], &tree, &selection, &mut leaves, &mut broken);
        let mut errors = Vec::new();
        for attr_path in broken {
            let message = ev.message(&attr_path).await?;
            errors.push(AttributeError { attr_path, message });
        }
        if leaves.is_empty() && !errors.is_empty() {
            ev.emit(
                on_batch,
                EvalBatch {
                    errors,
                    ..EvalBatch::default()
                },
            );
            continue;
        }
        // Split between the evaluator processes (`NixCli::eval_processes`): up to that many chunks are
        // evaluated at once, each by its own `nix eval`, and described and reported in order, in batches of
        // [`BATCH`].
        let parallel = cli.eval_processes.max(1);
        for group in eval_chunks(&leaves, parallel).chunks(parallel) {
            let results = futures_util::future::join_all(group.iter().map(|chunk| ev.drv_paths(chunk))).await;
            for (chunk, results) in group.iter().zip(results) {
                let mut results = results?.into_iter();
                for part in chunk.chunks(BATCH) {
                    let mut batch = ev.describe(part, results.by_ref().take(part.len()).collect()).await?;
                    batch.errors.splice(0..0, std::mem::take(&mut errors));
                    ev.emit(on_batch, batch);
                }
            }
        }
    }
    if !unlisted.is_empty() {
        if !listed_any {
            // Nothing could be listed at all: the flake itself does not evaluate.
            return Err(NixError::Eval(unlisted.swap_remove(0).message));
        }
        ev.emit(
            on_batch,
            EvalBatch {
                errors: unlisted,
                ..EvalBatch::default()
            },
        );
    }
    Ok(ev.summary)
}

/// The top-level outputs to look at, each with the rest of the include patterns that start there.
fn plan(wildcard: &str) -> BTreeMap<String, Vec<Pattern>> {
    let mut plan: BTreeMap<String, Vec<Pattern>> = BTreeMap::new();
    let includes = wildcard
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with('!'));
    for pattern in includes {
        let mut segments = pattern.split('.').map(|s| (s != "*").then(|| s.to_owned()));
        let Some(top) = segments.next() else { continue };
        let tail: Pattern = segments.collect();
        let tops = match top {
            Some(name) => vec![name],
            None => STANDARD_OUTPUTS.iter().map(|s| s.to_string()).collect(),
        };
        for top in tops {
            let tails = plan.entry(top).or_default();
            if !tails.contains(&tail) {
                tails.push(tail.clone());
            }
        }
    }
    plan
}

/// The selected leaves of a listed tree, each with its node (`{}` when only listed, its [`TRY_DRV`] answer when
/// listed and evaluated at once), and the nodes that failed (`{ e = true; }`).
fn flatten_nodes(
    path: Vec<String>,
    node: &Value,
    selection: &Wildcard,
    leaves: &mut Vec<(Vec<String>, Value)>,
    broken: &mut Vec<Vec<String>>,
) {
    if node.get("e").is_some() {
        broken.push(path);
    } else if let Some(children) = node.get("c").and_then(Value::as_object) {
        for (name, child) in children {
            let mut p = path.clone();
            p.push(name.clone());
            flatten_nodes(p, child, selection, leaves, broken);
        }
    } else {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        if selection.matches(&refs) {
            leaves.push((path, node.clone()));
        }
    }
}

/// [`flatten_nodes`] for a tree only listed: the selected leaves' paths.
fn flatten(
    path: Vec<String>,
    node: &Value,
    selection: &Wildcard,
    leaves: &mut Vec<Vec<String>>,
    broken: &mut Vec<Vec<String>>,
) {
    let mut found = Vec::new();
    flatten_nodes(path, node, selection, &mut found, broken);
    leaves.extend(found.into_iter().map(|(p, _)| p));
}

enum Listing {
    /// The flake has no such output.
    Missing,
    Failed(String),
    Tree(Value),
}

enum Evaluated {
    Drv(String),
    NotDerivation(String),
    Failed,
}

struct Evaluator<'a> {
    cli: &'a NixCli,
    flake: &'a FetchedFlake,
    args: Vec<String>,
    seen: HashSet<String>,
    summary: EvalSummary,
}

impl Evaluator<'_> {
    fn emit(&mut self, on_batch: &mut (dyn FnMut(EvalBatch) + Send), batch: EvalBatch) {
        self.summary.attributes += batch.attributes.len();
        self.summary.derivations += batch.derivations.len();
        self.summary.errors += batch.errors.len();
        on_batch(batch);
    }

    /// `nix eval --json <ref>#<path> --apply <f>`: `Ok(Ok(json))`, or `Ok(Err(Nix's message))`.
    async fn eval(&self, path: &[String], apply: &str) -> Result<std::result::Result<Value, String>> {
        let mut cmd = self.cli.nix();
        cmd.args(["eval", "--json"])
            .arg(format!("{}#{}", self.flake.flake_ref, attribute_string(path)))
            .args(["--apply", apply])
            .args(&self.args);
        let finished = process::output(cmd).await?;
        if !finished.status.success() {
            return Ok(Err(finished.stderr.error_message()));
        }
        serde_json::from_slice(&finished.stdout)
            .map(Ok)
            .map_err(|e| NixError::Unavailable(format!("nix eval answered something else than JSON: {e}")))
    }

    /// The tree of names below `top` (see [`WALKER`]); `evaluated`: with each leaf's [`TRY_DRV`] answer.
    async fn list(&self, top: &str, tails: &[Pattern], evaluated: bool) -> Result<Listing> {
        let patterns: Vec<String> = tails
            .iter()
            .map(|p| {
                let items: Vec<String> = p
                    .iter()
                    .map(|s| s.as_deref().map_or("null".into(), nix_string))
                    .collect();
                format!("[ {} ]", items.join(" "))
            })
            .collect();
        let leaf = if evaluated { TRY_DRV } else { "x: { }" };
        let apply = format!("({WALKER}) ({leaf}) [ {} ]", patterns.join(" "));
        Ok(match self.eval(&[top.to_owned()], &apply).await? {
            Ok(tree) => Listing::Tree(tree),
            Err(message) if message.contains("does not provide attribute") => Listing::Missing,
            Err(message) => Listing::Failed(message),
        })
    }

    /// Why the attribute does not evaluate, in Nix's words.
    async fn message(&self, path: &[String]) -> Result<String> {
        Ok(match self.eval(path, FORCE_DRV).await? {
            Err(message) => message,
            Ok(_) => "error: the attribute failed to evaluate, then evaluated when tried alone".into(),
        })
    }

    /// Each leaf's `{ d = <drvPath>; }` (or what it is instead), from one `nix eval` of the batch (or one per
    /// leaf when that one fails as a whole). Only reads: several run at once.
    async fn drv_paths(&self, leaves: &[Vec<String>]) -> Result<Vec<std::result::Result<Value, String>>> {
        let Some(top) = leaves.first().and_then(|l| l.first()) else {
            return Ok(Vec::new());
        };
        let items: Vec<String> = leaves
            .iter()
            .map(|leaf| {
                let selector: String = leaf[1..].iter().map(|n| format!(".{}", nix_string(n))).collect();
                format!("(tryDrv v{selector})")
            })
            .collect();
        let apply = format!("v: let tryDrv = {TRY_DRV}; in [ {} ]", items.join(" "));
        let results: Vec<std::result::Result<Value, String>> =
            match self.eval(std::slice::from_ref(top), &apply).await? {
                Ok(Value::Array(list)) if list.len() == leaves.len() => list.into_iter().map(Ok).collect(),
                // A chunk larger than a batch is tried again as batches first: one attribute no `tryEval`
                // catches then costs one batch its loads one by one, not the whole chunk.
                _ if leaves.len() > BATCH => {
                    let mut all = Vec::with_capacity(leaves.len());
                    for part in leaves.chunks(BATCH) {
                        all.extend(Box::pin(self.drv_paths(part)).await?);
                    }
                    all
                }
                _ => {
                    // Something no `tryEval` catches: evaluate each attribute on its own.
                    let mut alone = Vec::with_capacity(leaves.len());
                    for leaf in leaves {
                        alone.push(self.eval(leaf, TRY_DRV).await?);
                    }
                    alone
                }
            };
        Ok(results)
    }

    /// The batch as reported: each leaf's derivation or error, and the derivations not reported yet, after
    /// their inputs (`nix show-derivation -r`).
    async fn describe(
        &mut self,
        leaves: &[Vec<String>],
        results: Vec<std::result::Result<Value, String>>,
    ) -> Result<EvalBatch> {
        let mut batch = EvalBatch::default();
        let mut drvs = Vec::new();
        for (leaf, result) in leaves.iter().zip(results) {
            let evaluated = match result {
                Err(message) => {
                    batch.errors.push(AttributeError {
                        attr_path: leaf.clone(),
                        message,
                    });
                    continue;
                }
                Ok(v) => match (v["d"].as_str(), v["n"].as_str()) {
                    (Some(d), _) => Evaluated::Drv(d.to_owned()),
                    (None, Some(kind)) => Evaluated::NotDerivation(kind.to_owned()),
                    (None, None) => Evaluated::Failed,
                },
            };
            match evaluated {
                Evaluated::Drv(drv_path) => {
                    drvs.push(drv_path.clone());
                    batch.attributes.push(EvaluatedAttribute {
                        attr_path: leaf.clone(),
                        drv_path,
                    });
                }
                Evaluated::NotDerivation(kind) => batch.errors.push(AttributeError {
                    attr_path: leaf.clone(),
                    message: format!("error: {} is a {kind}, not a derivation", attribute_string(leaf)),
                }),
                Evaluated::Failed => batch.errors.push(AttributeError {
                    attr_path: leaf.clone(),
                    message: self.message(leaf).await?,
                }),
            }
        }

        drvs.retain(|d| !self.seen.contains(d));
        drvs.sort();
        drvs.dedup();
        if let Some(first) = drvs.first() {
            // Read from the `.drv` files `nix eval` just wrote (no Nix process); Nix is asked when they cannot be.
            let read = {
                let (drvs, seen) = (drvs.clone(), std::mem::take(&mut self.seen));
                let (read, seen) = tokio::task::spawn_blocking(move || (derivation::read_closure(&drvs, &seen), seen))
                    .await
                    .map_err(|e| NixError::Unavailable(format!("reading derivations: {e}")))?;
                self.seen = seen;
                read
            };
            let mut found = match read {
                Some(found) => found,
                None => {
                    let store_dir = first.rsplit_once('/').map_or("/nix/store", |(dir, _)| dir).to_owned();
                    let mut cmd = self.cli.show_derivation().await?;
                    cmd.arg("-r").args(&drvs);
                    let out = process::output(cmd).await?.success_or(NixError::Unavailable)?;
                    derivation::parse(&out, &store_dir).map_err(NixError::Unavailable)?
                }
            };
            batch.derivations = derivation::new_in_order(&mut found, &mut self.seen);
        }
        Ok(batch)
    }
}

/// A Nix string literal.
fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plans_follow_include_patterns() {
        let got = plan("packages.x86_64-linux.*, checks.*.*, !checks.*.slow, checks.*.*, *.foo");
        let foo = vec![Some("foo".to_owned())];
        assert_eq!(
            got["packages"],
            vec![vec![Some("x86_64-linux".to_owned()), None], foo.clone()]
        );
        assert_eq!(got["checks"], vec![vec![None, None], foo.clone()]);
        assert_eq!(got["hydraJobs"], vec![foo]);
        assert!(!got.contains_key("legacyPackages"));
    }

    #[test]
    fn flattening_keeps_selected_leaves_and_failures() {
        let tree = json!({"c": {
            "x86_64-linux": {"c": {"a": {}, "slow": {}, "bad": {"e": true}}},
            "aarch64-linux": {"e": true}
        }});
        let selection = Wildcard::parse("checks.*.*, !checks.*.slow").unwrap();
        let (mut leaves, mut broken) = (Vec::new(), Vec::new());
        flatten(vec!["checks".into()], &tree, &selection, &mut leaves, &mut broken);
        assert_eq!(leaves, [["checks", "x86_64-linux", "a"]]);
        assert_eq!(
            broken,
            [vec!["checks", "aarch64-linux"], vec!["checks", "x86_64-linux", "bad"]]
        );
    }

    #[test]
    fn parallel_evaluations_share_the_leaves_evenly_in_few_chunks() {
        let leaves = |n: usize| -> Vec<Vec<String>> { (0..n).map(|i| vec![format!("a{i}")]).collect() };
        let sizes = |n: usize, p: usize| -> Vec<usize> {
            let l = leaves(n);
            eval_chunks(&l, p).iter().map(|c| c.len()).collect()
        };
        // One process: batches of BATCH, as reported.
        assert_eq!(sizes(300, 1), vec![64, 64, 64, 64, 44]);
        // Two: one chunk each, the flake loaded twice rather than five times.
        assert_eq!(sizes(300, 2), vec![150, 150]);
        assert_eq!(sizes(3, 2), vec![2, 1]);
        // Larger than a round: even rounds of chunks of at most PARALLEL_CHUNK.
        let big = sizes(2000, 2);
        assert!(big.iter().all(|&s| s <= PARALLEL_CHUNK), "{big:?}");
        assert_eq!(big.len() % 2, 0, "{big:?}");
        assert_eq!(big.iter().sum::<usize>(), 2000);
        assert!(sizes(0, 2).is_empty());
    }

    #[test]
    fn nix_strings_are_escaped() {
        assert_eq!(nix_string("a"), "\"a\"");
        assert_eq!(nix_string("q\"\\${x}$y\n"), "\"q\\\"\\\\\\${x}$y\\n\"");
    }
}
