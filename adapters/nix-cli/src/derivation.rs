//! Reading `nix show-derivation` / `nix derivation show` JSON, in the forms Nix 2.8 through current write:
//! keys and paths absolute (old) or store basenames (new), inputs as `inputDrvs` (a list of outputs, or an
//! object with `outputs`) or `inputs.drvs`, the whole map bare or under `derivations`.

use gradient_domain::ports::nix::DerivationInfo;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// Every derivation in the JSON, by `.drv` path. `store_dir` completes basenames (`/nix/store`).
pub fn parse(json: &[u8], store_dir: &str) -> Result<BTreeMap<String, DerivationInfo>, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("derivation JSON: {e}"))?;
    let map = v
        .get("derivations")
        .and_then(Value::as_object)
        .or_else(|| v.as_object())
        .ok_or("derivation JSON is not an object")?;
    let abs = |p: &str| {
        if p.starts_with('/') {
            p.to_owned()
        } else {
            format!("{store_dir}/{p}")
        }
    };
    let mut out = BTreeMap::new();
    for (key, d) in map {
        let drv_path = abs(key);
        let outputs = d["outputs"]
            .as_object()
            .ok_or_else(|| format!("{drv_path}: no outputs"))?
            .iter()
            .filter_map(|(name, o)| Some((name.clone(), abs(o["path"].as_str()?))))
            .collect();
        let inputs = d
            .get("inputDrvs")
            .and_then(Value::as_object)
            .or_else(|| d["inputs"]["drvs"].as_object());
        let mut input_drvs: Vec<String> = inputs.into_iter().flatten().map(|(k, _)| abs(k)).collect();
        input_drvs.sort();
        let system = d["system"]
            .as_str()
            .ok_or_else(|| format!("{drv_path}: no system"))?
            .to_owned();
        out.insert(
            drv_path.clone(),
            DerivationInfo {
                drv_path,
                outputs,
                system,
                required_system_features: features(d),
                input_drvs,
            },
        );
    }
    Ok(out)
}

/// `requiredSystemFeatures`: a space-separated environment variable, or a list in structured attributes.
fn features(d: &Value) -> Vec<String> {
    let env = &d["env"];
    let list = |v: &Value| -> Option<Vec<String>> {
        Some(
            v.as_array()?
                .iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect(),
        )
    };
    if let Some(s) = env["requiredSystemFeatures"].as_str() {
        return s.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(json) = env["__json"].as_str()
        && let Ok(attrs) = serde_json::from_str::<Value>(json)
        && let Some(l) = list(&attrs["requiredSystemFeatures"])
    {
        return l;
    }
    list(&d["structuredAttrs"]["requiredSystemFeatures"]).unwrap_or_default()
}

/// The derivations of the closure of `drvs` that are not in `seen` (whose closures were read before), read from
/// their `.drv` files without running Nix; `None` if one cannot be read or is not what Nix writes (the caller
/// then asks Nix: `nix show-derivation -r`).
pub fn read_closure(drvs: &[String], seen: &HashSet<String>) -> Option<BTreeMap<String, DerivationInfo>> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<String> = drvs.to_vec();
    while let Some(drv_path) = todo.pop() {
        if seen.contains(&drv_path) || out.contains_key(&drv_path) {
            continue;
        }
        let text = std::fs::read(&drv_path).ok()?;
        let d = gradient_domain::nix::parse_derivation(&text).ok()?;
        let input_drvs: Vec<String> = d.input_drvs.keys().cloned().collect();
        todo.extend(input_drvs.iter().cloned());
        let required_system_features = match d.env.get("requiredSystemFeatures") {
            Some(s) => s.split_whitespace().map(str::to_owned).collect(),
            None => d
                .env
                .get("__json")
                .and_then(|json| serde_json::from_str::<Value>(json).ok())
                .and_then(|attrs| {
                    Some(
                        attrs["requiredSystemFeatures"]
                            .as_array()?
                            .iter()
                            .filter_map(|f| f.as_str().map(str::to_owned))
                            .collect(),
                    )
                })
                .unwrap_or_default(),
        };
        out.insert(
            drv_path.clone(),
            DerivationInfo {
                drv_path,
                // An output whose path is only known after building is absent, as Nix's JSON leaves it out.
                outputs: d.outputs.into_iter().filter(|(_, path)| !path.is_empty()).collect(),
                system: d.system,
                required_system_features,
                input_drvs,
            },
        );
    }
    Some(out)
}

/// What each of `drvs` builds with (see `Nix::build_inputs`), read from the `.drv` files: its input sources and
/// the outputs of its input derivations that it uses. A derivation is left out when its file or an input's cannot
/// be read, has other than one output (an output may refer to its siblings), or an output it uses has no path
/// before building.
pub fn build_inputs(drvs: &[String]) -> BTreeMap<String, Vec<String>> {
    let read = |drv: &str| {
        std::fs::read(drv)
            .ok()
            .and_then(|text| gradient_domain::nix::parse_derivation(&text).ok())
    };
    let mut inputs_of = BTreeMap::new();
    'drvs: for drv in drvs {
        let Some(d) = read(drv) else { continue };
        if d.outputs.len() != 1 {
            continue;
        }
        let mut inputs = d.input_srcs;
        for (input, wanted) in &d.input_drvs {
            let Some(input) = read(input) else { continue 'drvs };
            for name in wanted {
                match input.outputs.get(name) {
                    Some(path) if !path.is_empty() => inputs.push(path.clone()),
                    _ => continue 'drvs,
                }
            }
        }
        inputs_of.insert(drv.clone(), inputs);
    }
    inputs_of
}

/// The derivations of `found` not in `seen`, each after the ones it depends on; marks them seen.
pub fn new_in_order(found: &mut BTreeMap<String, DerivationInfo>, seen: &mut HashSet<String>) -> Vec<DerivationInfo> {
    let mut order = Vec::new();
    let roots: Vec<String> = found.keys().cloned().collect();
    for root in roots {
        // Iterative depth-first walk: closures can be thousands deep.
        let mut stack = vec![(root, false)];
        while let Some((drv, expanded)) = stack.pop() {
            if seen.contains(&drv) {
                continue;
            }
            if expanded {
                seen.insert(drv.clone());
                if let Some(info) = found.remove(&drv) {
                    order.push(info);
                }
                continue;
            }
            let Some(info) = found.get(&drv) else { continue };
            let inputs = info.input_drvs.clone();
            stack.push((drv, true));
            stack.extend(inputs.into_iter().filter(|i| !seen.contains(i)).map(|i| (i, false)));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nix_2_8_format() {
        let json = br#"{
          "/nix/store/cccc-c.drv": {
            "outputs": {"out": {"path": "/nix/store/oooo-c"}, "dev": {"path": "/nix/store/dddd-c-dev"}},
            "inputSrcs": [], "inputDrvs": {"/nix/store/bbbb-b.drv": ["out"]},
            "system": "x86_64-linux", "builder": "/bin/sh", "args": [],
            "env": {"requiredSystemFeatures": "kvm big-parallel"}
          },
          "/nix/store/bbbb-b.drv": {
            "outputs": {"out": {"path": "/nix/store/pppp-b"}},
            "inputSrcs": [], "inputDrvs": {}, "system": "x86_64-linux", "env": {}
          }
        }"#;
        let got = parse(json, "/nix/store").unwrap();
        let c = &got["/nix/store/cccc-c.drv"];
        assert_eq!(c.outputs["dev"], "/nix/store/dddd-c-dev");
        assert_eq!(c.input_drvs, ["/nix/store/bbbb-b.drv"]);
        assert_eq!(c.required_system_features, ["kvm", "big-parallel"]);
        assert!(got["/nix/store/bbbb-b.drv"].required_system_features.is_empty());
    }

    #[test]
    fn reads_newer_formats() {
        let json = br#"{"version": 4, "derivations": {
          "cccc-c.drv": {
            "name": "c", "outputs": {"out": {"path": "oooo-c"}, "ca": {"hashAlgo": "sha256", "method": "nar"}},
            "inputs": {"drvs": {"bbbb-b.drv": {"outputs": ["out"], "dynamicOutputs": {}}}, "srcs": []},
            "system": "aarch64-linux",
            "env": {"__json": "{\"requiredSystemFeatures\":[\"kvm\"]}"}
          }}}"#;
        let got = parse(json, "/nix/store").unwrap();
        let c = &got["/nix/store/cccc-c.drv"];
        assert_eq!(c.outputs.len(), 1, "floating outputs have no path yet");
        assert_eq!(c.outputs["out"], "/nix/store/oooo-c");
        assert_eq!(c.input_drvs, ["/nix/store/bbbb-b.drv"]);
        assert_eq!(c.required_system_features, ["kvm"]);

        let json = br#"{"/nix/store/x.drv": {"outputs": {}, "inputDrvs": {"/nix/store/y.drv": {"outputs": ["out"]}},
                        "system": "x86_64-linux", "env": {}}}"#;
        assert_eq!(
            parse(json, "/nix/store").unwrap()["/nix/store/x.drv"].input_drvs,
            ["/nix/store/y.drv"]
        );
    }

    #[test]
    fn build_inputs_are_the_sources_and_the_used_outputs_of_input_derivations() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let write = |name: &str, text: String| std::fs::write(path(name), text).unwrap();
        write(
            "dep.drv",
            r#"Derive([("dev","/s/dep-dev","",""),("out","/s/dep","","")],[],[],"x","/bin/sh",[],[])"#.into(),
        );
        write(
            "ca.drv",
            r#"Derive([("out","","r:sha256","")],[],[],"x","/bin/sh",[],[])"#.into(),
        );
        let uses = |input: &str, outputs: &str| {
            format!(
                r#"Derive([("out","/s/top","","")],[("{}",[{outputs}])],["/s/src"],"x","/bin/sh",[],[])"#,
                path(input)
            )
        };
        write("top.drv", uses("dep.drv", r#""out""#));
        write("on-ca.drv", uses("ca.drv", r#""out""#));
        write("on-missing.drv", uses("missing.drv", r#""out""#));
        let drvs = ["top.drv", "on-ca.drv", "on-missing.drv", "dep.drv", "absent.drv"].map(path);
        let got = build_inputs(&drvs);
        assert_eq!(
            got.get(&path("top.drv")),
            Some(&vec!["/s/src".to_owned(), "/s/dep".to_owned()])
        );
        assert_eq!(
            got.len(),
            1,
            "a derivation of two outputs, an output only known after building, or a file missing, is not known: {got:?}"
        );
    }

    #[test]
    fn new_derivations_come_after_their_inputs() {
        let info = |p: &str, inputs: &[&str]| DerivationInfo {
            drv_path: p.into(),
            outputs: BTreeMap::new(),
            system: "s".into(),
            required_system_features: vec![],
            input_drvs: inputs.iter().map(|s| s.to_string()).collect(),
        };
        let mut found: BTreeMap<String, DerivationInfo> = [
            info("d", &[]),
            info("c", &["d", "old"]),
            info("b", &["c", "d"]),
            info("a", &["b"]),
        ]
        .into_iter()
        .map(|i| (i.drv_path.clone(), i))
        .collect();
        let mut seen: HashSet<String> = ["old".to_owned()].into();
        let order: Vec<String> = new_in_order(&mut found, &mut seen)
            .into_iter()
            .map(|i| i.drv_path)
            .collect();
        assert_eq!(order, ["d", "c", "b", "a"]);
        let mut again = BTreeMap::from([("c".to_owned(), info("c", &["b"]))]);
        assert!(new_in_order(&mut again, &mut seen).is_empty());
    }
}
