//! `Allow` on 405 answers (RFC 9110 §15.5.6). poem answers 405 without it. For the API the methods each path
//! has are read from its own OpenAPI document, so the header cannot drift from the routes; the cache's routes
//! (not in the document) list theirs.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use serde_json::Value;

/// The methods of every path of the document, in the order `Allow` lists them.
const ORDER: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Debug, Default)]
pub struct AllowedMethods {
    /// Each path template as segments (`None` for a `{parameter}`), with its `Allow` value and the template.
    paths: Vec<(Vec<Option<String>>, HeaderValue, String)>,
}

impl AllowedMethods {
    /// Reads the `paths` of an OpenAPI document (paths relative to where the API is mounted). `HEAD` is
    /// allowed wherever `GET` is: the router answers it with the `GET` handler's headers.
    pub fn from_openapi(spec: &str) -> Self {
        let doc: Value = serde_json::from_str(spec).unwrap_or_default();
        let mut allowed = Self::default();
        for (template, ops) in doc["paths"].as_object().into_iter().flatten() {
            let methods: Vec<&str> = ORDER
                .into_iter()
                .filter(|m| ops.get(m.to_ascii_lowercase()).is_some())
                .collect();
            allowed.add(template, &methods);
        }
        allowed
    }

    /// Path templates (`{name}` for a parameter) with their methods.
    pub fn from_routes(routes: &[(&str, &[&str])]) -> Self {
        let mut allowed = Self::default();
        for (template, methods) in routes {
            allowed.add(template, methods);
        }
        allowed
    }

    fn add(&mut self, template: &str, methods: &[&str]) {
        let has = |m: &str| methods.contains(&m) || (m == "HEAD" && methods.contains(&"GET"));
        let listed: Vec<&str> = ORDER.into_iter().filter(|m| has(m)).collect();
        let Ok(value) = HeaderValue::from_str(&listed.join(", ")) else {
            return;
        };
        let segments = template
            .trim_start_matches('/')
            .split('/')
            .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
            .collect();
        self.paths.push((segments, value, template.to_owned()));
    }

    /// The same templates under `prefix` (`/api/v1`), for matching whole request paths.
    pub fn under(self, prefix: &str) -> Self {
        let mut out = Self::default();
        for (_, value, template) in self.paths {
            let methods = value.to_str().unwrap_or_default().to_owned();
            let methods: Vec<&str> = methods.split(", ").collect();
            out.add(&format!("{prefix}{template}"), &methods);
        }
        out
    }

    /// Adds `other`'s templates to these.
    pub fn extend(&mut self, other: Self) {
        self.paths.extend(other.paths);
    }

    /// The template (`/orgs/{org}`) a request path matches; a literal segment beats a parameter.
    pub fn template_for(&self, path: &str) -> Option<&str> {
        self.matching(path).map(|(_, _, template)| template.as_str())
    }

    /// The `Allow` value for a request path; a literal segment beats a parameter, as in the router.
    pub fn for_path(&self, path: &str) -> Option<&HeaderValue> {
        self.matching(path).map(|(_, value, _)| value)
    }

    fn matching(&self, path: &str) -> Option<&(Vec<Option<String>>, HeaderValue, String)> {
        // Every request is measured by its template: no allocation here, and most templates are ruled out
        // by their length alone.
        let path = path.trim_start_matches('/');
        let count = path.split('/').count();
        self.paths
            .iter()
            .filter(|(template, _, _)| {
                template.len() == count
                    && template.iter().zip(path.split('/')).all(|(t, s)| match t {
                        Some(literal) => literal == s,
                        None => !s.is_empty(),
                    })
            })
            .max_by_key(|(template, _, _)| template.iter().filter(|t| t.is_some()).count())
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
        // An error (e.g. poem's own 405) becomes its answer here, so that it can carry the header too.
        let mut resp = match self.inner.call(req).await {
            Ok(resp) => resp.into_response(),
            Err(e) => e.into_response(),
        };
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
    fn listed_routes_work_the_same() {
        let a = AllowedMethods::from_routes(&[("/{cache}/missing", &["POST"]), ("/{cache}/{file}", &["GET", "PUT"])]);
        assert_eq!(a.for_path("/main/missing").unwrap(), "POST");
        assert_eq!(a.for_path("/main/abc.narinfo").unwrap(), "GET, HEAD, PUT");
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

    #[test]
    fn a_path_is_named_by_its_template_never_by_its_values() {
        let mut a = allowed().under("/api/v1");
        a.extend(AllowedMethods::from_routes(&[("/cache/{cache}/nar/{file}", &["GET"])]));
        assert_eq!(a.template_for("/api/v1/orgs/secret-org"), Some("/api/v1/orgs/{org}"));
        assert_eq!(a.template_for("/api/v1/x/y"), Some("/api/v1/x/y"));
        assert_eq!(a.for_path("/api/v1/orgs/acme").unwrap(), "GET, HEAD, PATCH, DELETE");
        assert_eq!(
            a.template_for("/cache/private/nar/abc.nar"),
            Some("/cache/{cache}/nar/{file}")
        );
        assert_eq!(a.template_for("/orgs/acme"), None);
    }
}
