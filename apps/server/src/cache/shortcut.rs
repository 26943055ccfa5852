//! `GET`/`HEAD /cache/{cache}/{hash}.narinfo` answered in the server loop (`serve.rs`), before the request
//! becomes poem's: a Nix client asks for one narinfo per path it considers, far more often than for anything
//! else, and poem's request, its nested routers (each rewriting the URI and recording the matched pattern) and
//! the metrics layer's template search cost more CPU than the answer itself.
//!
//! A translator like the route's handler, sharing its code: the same credentials, read rules and use case
//! ([`read_narinfo`]), the same answers (statuses, headers, texts) and the same counts in `/metrics` (the
//! request under its route template, as the metrics layer counts it). Any other request, or a path the router
//! would read differently (a percent-escape, an empty segment), goes to the application.

use super::{NARINFO_TYPE, Shared, failure, read_narinfo};
use crate::serve::{ResponseBody, Shortcut};
use crate::state::AppState;
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, Full};
use std::future::Future;

/// The route template the metrics count narinfo reads under (what `metrics::Measured` finds for the path).
pub(crate) const ROUTE: &str = "/cache/{cache}/{file}";

pub struct NarinfoShortcut {
    state: AppState,
}

impl NarinfoShortcut {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// The cache's name and the hash part of `/cache/{cache}/{hash}.narinfo`; `None` for any other path.
fn target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/cache/")?;
    let (cache, file) = rest.split_once('/')?;
    let hash_part = file.strip_suffix(".narinfo")?;
    let plain = !cache.is_empty() && !hash_part.is_empty() && !file.contains('/') && !rest.contains('%');
    plain.then_some((cache, hash_part))
}

impl Shortcut for NarinfoShortcut {
    fn answer<B: Send + 'static>(
        &self,
        req: http::Request<B>,
    ) -> Result<impl Future<Output = http::Response<ResponseBody>> + Send + use<B>, http::Request<B>> {
        let method = match *req.method() {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            _ => return Err(req),
        };
        if target(req.uri().path()).is_none() {
            return Err(req);
        }
        let state = self.state.clone();
        let (parts, _) = req.into_parts();
        Ok(async move {
            let (cache, hash_part) = target(parts.uri.path()).unwrap_or_default();
            state.metrics.cache_request("narinfo");
            let resp = match read_narinfo(&state, &parts.headers, cache, hash_part).await {
                Ok(text) => {
                    let len = text.len();
                    let body = if method == "HEAD" {
                        Bytes::new()
                    } else {
                        Bytes::from_owner(Shared(text))
                    };
                    let mut resp = http::Response::new(Full::new(body).map_err(|e| match e {}).boxed());
                    let headers = resp.headers_mut();
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NARINFO_TYPE));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                    resp
                }
                Err(e) => http::Response::from(failure(e)),
            };
            state.metrics.http_request(ROUTE, method, resp.status().as_u16());
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_narinfo_paths_are_taken() {
        assert_eq!(target("/cache/main/abc.narinfo"), Some(("main", "abc")));
        for other in [
            "/cache/main/abc.ls",
            "/cache/main/nix-cache-info",
            "/cache/main/nar/abc.narinfo",
            "/cache/main/.narinfo",
            "/cache//abc.narinfo",
            "/cache/main/abc.narinfo/",
            "/cache/ma%69n/abc.narinfo",
            "/cache/main/abc%2Enarinfo",
            "/api/v1/abc.narinfo",
            "/cache/abc.narinfo",
        ] {
            assert_eq!(target(other), None, "{other}");
        }
    }
}
