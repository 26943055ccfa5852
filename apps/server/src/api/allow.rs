//! `Allow` on 405 answers (RFC 9110 §15.5.6). poem answers 405 without it; the methods each path has are
//! read from the API's own OpenAPI document, so the header cannot drift from the routes.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use serde_json::Value;

/// The methods of every path of the document, in the order `Allow` lists them.
const ORDER: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Debug, Default)]
pub struct AllowedMethods {
    /// Each path template as segments (`None` for a `{parameter}`), with its `Allow` value.
    paths: Vec<(Vec<Option<String>>, HeaderValue)>,
}

impl AllowedMethods {
    /// Reads the `paths` of an OpenAPI document (paths relative to where the API is mounted). `HEAD` is
    /// allowed wherever `GET` is: the router answers it with the `GET` handler's headers.
    pub fn from_openapi(spec: &str) -> Self {
        let doc: Value = serde_json::from_str(spec).unwrap_or_default();
        let mut paths = Vec::new();
        for (template, ops) in doc["paths"].as_object().into_iter().flatten() {
            let has = |m: &str| {
                let m = m.to_ascii_lowercase();
                ops.get(&m).is_some() || (m == "head" && ops.get("get").is_some())
            };
            let methods: Vec<&str> = ORDER.into_iter().filter(|m| has(m)).collect();
            let Ok(value) = HeaderValue::from_str(&methods.join(", ")) else {
                continue;
            };
            let segments = template
                .trim_start_matches('/')
                .split('/')
                .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
                .collect();
            paths.push((segments, value));
        }
        Self { paths }
    }

    /// The `Allow` value for a request path; a literal segment beats a parameter, as in the router.
    pub fn for_path(&self, path: &str) -> Option<&HeaderValue> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.paths
            .iter()
            .filter(|(template, _)| {
                template.len() == segments.len()
                    && template.iter().zip(&segments).all(|(t, s)| match t {
                        Some(literal) => literal == s,
                        None => !s.is_empty(),
                    })
            })
            .max_by_key(|(template, _)| template.iter().filter(|t| t.is_some()).count())
            .map(|(_, value)| value)
    }
}

/// `inner`, with `Allow` added to its 405 answers.
pub struct WithAllow<E> {
    pub inner: E,
    pub allowed: AllowedMethods,
}

impl<E: Endpoint> Endpoint for WithAllow<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let value = self.allowed.for_path(req.uri().path()).cloned();
        let mut resp = self.inner.call(req).await?.into_response();
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED
            && let Some(value) = value
        {
            resp.headers_mut().insert(header::ALLOW, value);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedMethods {
        AllowedMethods::from_openapi(
            r#"{"paths": {
                "/user/keys/{id}": {"delete": {}},
                "/orgs/{org}": {"get": {}, "patch": {}, "delete": {}},
                "/orgs/{org}/subscribe": {"get": {}},
                "/hooks/github": {"post": {}},
                "/hooks/{forge}/{org}": {"post": {}},
                "/x/{a}": {"put": {}},
                "/x/y": {"get": {}}
            }}"#,
        )
    }

    #[test]
    fn a_path_gets_the_methods_of_its_template_in_a_fixed_order() {
        let a = allowed();
        assert_eq!(a.for_path("/user/keys/abc").unwrap(), "DELETE");
        assert_eq!(a.for_path("/orgs/acme").unwrap(), "GET, HEAD, PATCH, DELETE");
        assert_eq!(a.for_path("/orgs/acme/subscribe").unwrap(), "GET, HEAD");
        assert_eq!(a.for_path("/hooks/github").unwrap(), "POST");
    }

    #[test]
    fn literal_segments_win_and_unknown_paths_have_none() {
        let a = allowed();
        assert_eq!(a.for_path("/x/y").unwrap(), "GET, HEAD");
        assert_eq!(a.for_path("/x/z").unwrap(), "PUT");
        assert!(a.for_path("/orgs").is_none());
        assert!(a.for_path("/orgs/").is_none());
        assert!(a.for_path("/nothing/here/at/all").is_none());
    }
}
