//! JSON request bodies are checked against the served OpenAPI document before poem-openapi reads them: a
//! value of the wrong JSON type (a number or a boolean where the document says string, a string where it says
//! integer, ...) is refused with 400 `invalid_json` naming the field. poem-openapi alone would coerce numbers
//! and booleans into `String` fields, so `{"name": 1}` would create an organization named `1`.
//!
//! The check walks the document's request body schemas (`$ref`, `allOf`, `type`, `properties`, `items`,
//! `additionalProperties`); whatever it does not know it leaves to poem-openapi. `null` is left to
//! poem-openapi too (it refuses it for required fields and reads it as absent for optional ones).

use poem::http::Method;
use serde_json::{Map, Value};

/// Deepest nesting of schemas and values walked (request bodies are shallow; this bounds hostile ones).
const MAX_DEPTH: usize = 32;

/// The request body schema of each JSON operation of the document.
pub struct BodySchemas {
    routes: Vec<Route>,
    components: Map<String, Value>,
}

struct Route {
    method: Method,
    /// Path segments; `None` for a `{parameter}`.
    segments: Vec<Option<String>>,
    schema: Value,
    /// Whether the document says the body may be absent (`requestBody.required` is not `true`).
    optional: bool,
}

impl BodySchemas {
    /// Reads the request body schemas from the OpenAPI document (JSON text).
    pub fn from_spec(spec: &str) -> Self {
        let doc: Value = serde_json::from_str(spec).unwrap_or_default();
        let mut routes = Vec::new();
        if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
            for (path, ops) in paths {
                let Some(ops) = ops.as_object() else { continue };
                for (method, op) in ops {
                    let Ok(method) = method.to_uppercase().parse::<Method>() else {
                        continue;
                    };
                    let json_schema = op
                        .pointer("/requestBody/content")
                        .and_then(Value::as_object)
                        .and_then(|c| c.iter().find(|(ct, _)| ct.starts_with("application/json")))
                        .and_then(|(_, media)| media.get("schema"));
                    let optional = op.pointer("/requestBody/required").and_then(Value::as_bool) != Some(true);
                    if let Some(schema) = json_schema {
                        routes.push(Route {
                            optional,
                            method,
                            segments: segments(path)
                                .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
                                .collect(),
                            schema: schema.clone(),
                        });
                    }
                }
            }
        }
        let components = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Self { routes, components }
    }

    /// The JSON operation `method` `path` names (relative to `/api/v1`, with or without that prefix).
    fn route(&self, method: &Method, path: &str) -> Option<&Route> {
        let path = path.strip_prefix("/api/v1").unwrap_or(path);
        let parts: Vec<&str> = segments(path).collect();
        self.routes.iter().find(|r| {
            r.method == method
                && r.segments.len() == parts.len()
                && r.segments
                    .iter()
                    .zip(&parts)
                    .all(|(want, got)| want.as_deref().is_none_or(|w| w == *got))
        })
    }

    /// Whether `method` `path` takes a JSON body the document says may be absent: such a request may come
    /// without a body and without a `Content-Type` (`curl -X POST`), and is then read as JSON with no value.
    pub fn body_may_be_absent(&self, method: &Method, path: &str) -> bool {
        self.route(method, path).is_some_and(|r| r.optional)
    }

    /// Checks a request body for `method` `path` (relative to `/api/v1`, with or without that prefix).
    /// Answers what is wrong, for people; bodies that are not JSON, and operations without a JSON body, are
    /// left to poem-openapi.
    pub fn check(&self, method: &Method, path: &str, body: &[u8]) -> Result<(), String> {
        let Some(route) = self.route(method, path) else {
            return Ok(());
        };
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Ok(());
        };
        self.walk(&route.schema, &value, "", 0)
    }

    /// Checks `value` against `schema`; `at` is where the value is in the body (`""` for the body itself).
    fn walk(&self, schema: &Value, value: &Value, at: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH || value.is_null() {
            return Ok(());
        }
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target.rsplit('/').next().unwrap_or_default();
            return match self.components.get(name) {
                Some(s) => self.walk(s, value, at, depth + 1),
                None => Ok(()),
            };
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.walk(s, value, at, depth + 1)?;
            }
        }
        let expected = schema.get("type").and_then(Value::as_str);
        let fits = match expected {
            Some("string") => value.is_string(),
            Some("boolean") => value.is_boolean(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("array") => value.is_array(),
            Some("object") => value.is_object(),
            _ => true,
        };
        if !fits {
            let what = if at.is_empty() {
                "the body".to_owned()
            } else {
                format!("'{at}'")
            };
            return Err(format!(
                "{what} must be {}, not {}",
                article(expected.unwrap_or_default()),
                kind(value)
            ));
        }
        match value {
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item_schema, item, &format!("{at}[{i}]"), depth + 1)?;
                    }
                }
            }
            Value::Object(fields) => {
                let properties = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                for (name, field) in fields {
                    let field_schema = properties.and_then(|p| p.get(name)).or(additional);
                    if let Some(s) = field_schema {
                        let where_ = if at.is_empty() {
                            name.clone()
                        } else {
                            format!("{at}.{name}")
                        };
                        self.walk(s, field, &where_, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn article(ty: &str) -> &'static str {
    match ty {
        "string" => "a string",
        "boolean" => "a boolean",
        "integer" => "an integer",
        "number" => "a number",
        "array" => "an array",
        _ => "an object",
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> BodySchemas {
        let spec = json!({
            "paths": {
                "/orgs": {"post": {"requestBody": {"content": {"application/json; charset=utf-8": {
                    "schema": {"$ref": "#/components/schemas/NewOrg"}}}}}},
                "/orgs/{org}": {"patch": {"requestBody": {"content": {"application/json; charset=utf-8": {
                    "schema": {"$ref": "#/components/schemas/NewOrg"}}}}}},
                "/hooks/{forge}/{org}": {"post": {"requestBody": {"content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}}}}
            },
            "components": {"schemas": {
                "NewOrg": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "public": {"type": "boolean"},
                    "keep": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "overrides": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Override"}}
                }},
                "Override": {"type": "object", "properties": {"url": {"type": "string"}}}
            }}
        });
        BodySchemas::from_spec(&spec.to_string())
    }

    fn check(method: Method, path: &str, body: Value) -> Result<(), String> {
        schemas().check(&method, path, body.to_string().as_bytes())
    }

    #[test]
    fn values_of_the_documented_type_pass() {
        let ok = json!({"name": "acme", "public": true, "keep": 3, "tags": ["a"], "overrides": {"x": {"url": "u"}},
            "unknown": 1, "optional": null});
        assert_eq!(check(Method::POST, "/orgs", ok.clone()), Ok(()));
        assert_eq!(check(Method::PATCH, "/api/v1/orgs/acme", ok), Ok(()));
        assert_eq!(check(Method::POST, "/orgs", json!({"name": null})), Ok(()));
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            (json!({"name": 1}), "'name' must be a string, not a number"),
            (json!({"name": true}), "'name' must be a string, not a boolean"),
            (json!({"public": "true"}), "'public' must be a boolean, not a string"),
            (json!({"keep": "3"}), "'keep' must be an integer, not a string"),
            (json!({"keep": 1.5}), "'keep' must be an integer, not a number"),
            (json!({"tags": ["a", 2]}), "'tags[1]' must be a string, not a number"),
            (
                json!({"overrides": {"x": {"url": false}}}),
                "'overrides.x.url' must be a string, not a boolean",
            ),
            (json!(["name"]), "the body must be an object, not an array"),
        ];
        for (body, message) in cases {
            assert_eq!(
                check(Method::POST, "/orgs", body.clone()),
                Err(message.to_owned()),
                "{body}"
            );
        }
        assert!(check(Method::PATCH, "/orgs/acme", json!({"name": 5})).is_err());
    }

    #[test]
    fn other_operations_and_non_json_bodies_are_left_alone() {
        assert_eq!(check(Method::GET, "/orgs", json!({"name": 1})), Ok(()));
        assert_eq!(check(Method::POST, "/hooks/gitea/acme", json!({"name": 1})), Ok(()));
        assert_eq!(check(Method::POST, "/orgs/acme/extra", json!({"name": 1})), Ok(()));
        assert_eq!(schemas().check(&Method::POST, "/orgs", b"{not json"), Ok(()));
    }
}
