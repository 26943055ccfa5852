//! Generates the client from `openapi/gradient.json` with progenitor on every build, so an API change that
//! the document records and the CLI or TUI does not follow fails to compile.

use std::path::Path;

fn main() {
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gradient.json");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = std::fs::read_to_string(&spec_path).expect("openapi/gradient.json is readable");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("openapi/gradient.json is JSON");
    plain_media_types(&mut doc);
    name_unnamed_operations(&mut doc);
    let spec: openapiv3::OpenAPI = serde_json::from_value(doc).expect("openapi/gradient.json is OpenAPI 3.0");

    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Positional);
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator
        .generate_tokens(&spec)
        .expect("progenitor understands openapi/gradient.json");
    let file: syn::File = syn::parse2(tokens).expect("progenitor writes valid Rust");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("generated.rs");
    std::fs::write(out, prettyplease::unparse(&file)).expect("OUT_DIR is writable");
}

/// The server names its media types with their charset (`application/json; charset=utf-8`); progenitor
/// matches the bare type. The charset is UTF-8 everywhere, so dropping it loses nothing.
fn plain_media_types(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(content)) = map.get_mut("content") {
                let renamed: serde_json::Map<String, serde_json::Value> = std::mem::take(content)
                    .into_iter()
                    .map(|(k, v)| (k.split(';').next().unwrap_or(&k).trim().to_owned(), v))
                    .collect();
                *content = renamed;
            }
            map.values_mut().for_each(plain_media_types);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(plain_media_types),
        _ => {}
    }
}

/// Progenitor names each method after its operation's `operationId`. Every route should set one
/// (`operation_id` in `#[oai(...)]`); one that does not gets a name from its method and path
/// (`GET /evals/{id}/events` → `get_evals_id_events`) and a build warning, so a route added without one
/// still builds.
fn name_unnamed_operations(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            if op.contains_key("operationId") || !op.contains_key("responses") {
                continue;
            }
            let words: Vec<String> = path
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect();
            let name = format!("{method}_{}", words.join("_"));
            println!(
                "cargo:warning=openapi/gradient.json: {} {path} has no operationId; the client calls it {name}",
                method.to_uppercase()
            );
            op.insert("operationId".into(), serde_json::Value::String(name));
        }
    }
}
