//! The web UI (`web/dist`, built by `npm run build` in `web/`) served at `/`: files as they are, and
//! `index.html` for every other page path so the single-page app's deep links work. Hashed assets
//! (`/assets/immutable/…`) are cached for a year; everything else, `index.html` above all, is revalidated on
//! every load so a new release shows at once. Paths of the API, the cache, the worker link and the GitHub
//! setup are never answered with the page.
//!
//! Where the files are: `GRADIENT_FRONTEND_DIR`, else the `web/dist` of the repository this binary was built
//! from (how `scripts/quickstart` runs it), else none: the server runs without the UI and says so once.

use poem::http::{Method, StatusCode, header};
use poem::{Body, Endpoint, Request, Response};
use std::path::{Component, Path, PathBuf};

/// The `web/dist` of the source tree this binary was compiled from.
pub fn built_in_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist")
}

/// Where the UI is served from, and the one line that tells the operator.
#[derive(Debug, PartialEq, Eq)]
pub enum Located {
    Serve(PathBuf),
    Off(String),
}

/// Chooses the UI's directory: the configured one (which must hold `index.html`, else start-up fails with
/// the returned problem), else `fallback` when it holds a build, else none.
pub fn locate(configured: Option<&Path>, fallback: &Path) -> Result<Located, String> {
    match configured {
        Some(dir) if dir.join("index.html").is_file() => Ok(Located::Serve(dir.to_owned())),
        Some(dir) => Err(format!(
            "{} has no index.html (build the UI with `npm ci && npm run build` in web/)",
            dir.display()
        )),
        None if fallback.join("index.html").is_file() => Ok(Located::Serve(fallback.to_owned())),
        None => Ok(Located::Off(format!(
            "web UI off: GRADIENT_FRONTEND_DIR is not set and {} has no build (npm ci && npm run build in web/)",
            fallback.display()
        ))),
    }
}

/// Prefixes that belong to the server itself, answered 404 rather than with the page.
const NOT_PAGES: [&str; 5] = ["/api", "/cache", "/proto", "/github", "/metrics"];

/// Hashed, never-changing assets.
const IMMUTABLE: &str = "/assets/immutable/";

pub struct Frontend {
    pub dir: PathBuf,
}

impl Frontend {
    /// The file under the directory a request path names; `None` for anything that could leave it.
    fn file(&self, path: &str) -> Option<PathBuf> {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) || path.contains('\\') {
            return None;
        }
        Some(self.dir.join(rel))
    }

    async fn respond(&self, path: &str) -> Response {
        if NOT_PAGES
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        {
            return not_found(format!("no route for {path}"));
        }
        let is_file = |p: &Path| p.is_file();
        let target = self.file(path).filter(|p| is_file(p));
        let (file, immutable) = match target {
            Some(f) => (f, path.starts_with(IMMUTABLE)),
            // A missing asset is an error, not a page (the browser would otherwise parse HTML as script).
            None if path.starts_with("/assets/") || path.starts_with("/_app/") => {
                return not_found(format!("no file {path}"));
            }
            None => (self.dir.join("index.html"), false),
        };
        match tokio::fs::read(&file).await {
            Ok(bytes) => Response::builder()
                .header(header::CONTENT_TYPE, content_type(&file))
                .header(
                    header::CACHE_CONTROL,
                    if immutable {
                        "public, max-age=31536000, immutable"
                    } else {
                        "no-cache"
                    },
                )
                .header("X-Content-Type-Options", "nosniff")
                .body(Body::from(bytes)),
            Err(e) => {
                tracing::warn!(target: "gradient::web", "cannot read {}: {e}", file.display());
                not_found(format!("no file {path}"))
            }
        }
    }
}

use poem::IntoResponse;

/// The API's 404 body.
fn not_found(message: String) -> Response {
    crate::api::ApiError::from(gradient_domain::service::ServiceError::NotFound(message)).into_response()
}

impl Endpoint for Frontend {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD")
                .finish());
        }
        let path = req.uri().path().to_owned();
        let mut resp = self.respond(&path).await;
        if req.method() == Method::HEAD {
            resp.set_body(Body::empty());
        }
        Ok(resp)
    }
}

/// The media type of a built file, by its extension.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_directory_must_hold_a_build_and_the_fallback_is_used_only_when_it_does() {
        let built = tempfile::tempdir().expect("dir");
        std::fs::write(built.path().join("index.html"), "<html>").expect("write");
        let empty = tempfile::tempdir().expect("dir");
        assert_eq!(
            locate(Some(built.path()), empty.path()),
            Ok(Located::Serve(built.path().to_owned()))
        );
        assert!(
            locate(Some(empty.path()), built.path())
                .expect_err("refused")
                .contains("no index.html")
        );
        assert_eq!(locate(None, built.path()), Ok(Located::Serve(built.path().to_owned())));
        match locate(None, empty.path()) {
            Ok(Located::Off(line)) => assert!(line.contains("web UI off"), "{line}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_cannot_leave_the_directory() {
        let f = Frontend {
            dir: PathBuf::from("/srv/ui"),
        };
        assert_eq!(f.file("/assets/a.js"), Some(PathBuf::from("/srv/ui/assets/a.js")));
        assert_eq!(f.file("/../etc/passwd"), None);
        assert_eq!(f.file("/assets/../../x"), None);
    }
}
