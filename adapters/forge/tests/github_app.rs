//! The GitHub App's installation tokens against a fake GitHub on loopback: the JWT it sends (checked with the
//! key's public half), the exchange, the cache until shortly before expiry, and how refusals are classified.
//! The key is made by `openssl genrsa` at test time.

use gradient_domain::ports::forge::{ForgeApi, ForgeError};
use gradient_domain::reach::NetworkPolicy;
use gradient_forge::github_app::AppClaims;
use gradient_forge::{GithubApp, HttpForge};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::DecodePrivateKey;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An RSA private key in PEM, from `openssl genrsa` (PKCS#8 with OpenSSL 3, PKCS#1 before).
fn rsa_key() -> String {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl genrsa failed");
    String::from_utf8(out.stdout).expect("PEM")
}

fn pkcs1(pem: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", "openssl rsa -traditional 2>/dev/null || openssl rsa"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl rsa");
    String::from_utf8(out.stdout).expect("PEM")
}

#[derive(Clone, Debug)]
struct Request {
    path: String,
    authorization: String,
}

/// A token endpoint: answers `status` with a token `ghs_<n>` expiring `expires_in` seconds from now (no
/// `expires_at` when `None`), recording every request.
async fn fake_github(status: u16, expires_in: Option<i64>) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let log: Arc<Mutex<Vec<Request>>> = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&raw).to_string();
            let mut lines = head.lines();
            let path = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or_default()
                .to_owned();
            let authorization = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default();
            let n = {
                let mut log = seen.lock().expect("lock");
                log.push(Request { path, authorization });
                log.len()
            };
            let body = match expires_in {
                Some(secs) => {
                    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(secs);
                    format!(
                        r#"{{"token":"ghs_{n}","expires_at":"{}"}}"#,
                        at.format("%Y-%m-%dT%H:%M:%SZ")
                    )
                }
                None => format!(r#"{{"token":"ghs_{n}"}}"#),
            };
            let answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (url, log)
}

fn forge(app_id: u64, pem: &str, api_url: &str) -> HttpForge {
    let app = GithubApp::new(app_id, pem, api_url).expect("a valid key");
    HttpForge::new(NetworkPolicy::default())
        .expect("client")
        .with_github_app(Arc::new(app))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test]
async fn tokens_are_exchanged_for_the_apps_jwt_and_cached_per_installation() {
    let pem = rsa_key();
    let (url, log) = fake_github(201, Some(3600)).await;
    let forge = forge(4242, &pem, &format!("{url}/"));
    let before = now();
    assert_eq!(forge.installation_token(7).await.expect("token"), "ghs_1");
    assert_eq!(forge.installation_token(7).await.expect("token"), "ghs_1", "cached");
    assert_eq!(
        forge.installation_token(8).await.expect("token"),
        "ghs_2",
        "per installation"
    );
    assert_eq!(forge.installation_token(7).await.expect("token"), "ghs_1");
    let requests = log.lock().expect("lock").clone();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/app/installations/7/access_tokens",
            "/app/installations/8/access_tokens"
        ]
    );

    // The JWT: RS256 with the App's key, issued a minute ago, valid less than 10 minutes, issued by the App.
    let jwt = requests[0].authorization.strip_prefix("Bearer ").expect("a bearer JWT");
    let key = RsaPrivateKey::from_pkcs8_pem(&pem).expect("PKCS#8");
    let public = key.to_public_key().to_pkcs1_der().expect("DER");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.set_issuer(&["4242"]);
    let claims = jsonwebtoken::decode::<AppClaims>(
        jwt,
        &jsonwebtoken::DecodingKey::from_rsa_der(public.as_bytes()),
        &validation,
    )
    .expect("a valid RS256 JWT of the App")
    .claims;
    let after = now();
    assert!(claims.iat + 60 >= before && claims.iat + 60 <= after, "{claims:?}");
    assert!(claims.exp > after && claims.exp <= before + 600, "{claims:?}");
    assert!(claims.exp - claims.iat <= 600, "{claims:?}");

    // Another key does not verify it.
    let other = RsaPrivateKey::from_pkcs8_pem(&rsa_key()).expect("PKCS#8");
    let other = other.to_public_key().to_pkcs1_der().expect("DER");
    assert!(
        jsonwebtoken::decode::<AppClaims>(
            jwt,
            &jsonwebtoken::DecodingKey::from_rsa_der(other.as_bytes()),
            &validation
        )
        .is_err()
    );
}

#[tokio::test]
async fn pkcs1_keys_as_github_hands_them_out_work_too() {
    let pem = pkcs1(&rsa_key());
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pem}");
    let (url, log) = fake_github(201, Some(3600)).await;
    assert_eq!(
        forge(1, &pem, &url).installation_token(3).await.expect("token"),
        "ghs_1"
    );
    assert_eq!(log.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn tokens_about_to_expire_or_without_expiry_are_fetched_again() {
    let pem = rsa_key();
    // Four minutes left: within the five-minute margin.
    let (url, log) = fake_github(201, Some(4 * 60)).await;
    let forge_a = forge(1, &pem, &url);
    assert_eq!(forge_a.installation_token(7).await.expect("token"), "ghs_1");
    assert_eq!(forge_a.installation_token(7).await.expect("token"), "ghs_2");
    assert_eq!(log.lock().expect("lock").len(), 2);
    // Six minutes left: kept.
    let (url, log) = fake_github(201, Some(6 * 60)).await;
    let forge_b = forge(1, &pem, &url);
    assert_eq!(forge_b.installation_token(7).await.expect("token"), "ghs_1");
    assert_eq!(forge_b.installation_token(7).await.expect("token"), "ghs_1");
    assert_eq!(log.lock().expect("lock").len(), 1);
    // No expiry: used once.
    let (url, log) = fake_github(201, None).await;
    let forge_c = forge(1, &pem, &url);
    assert_eq!(forge_c.installation_token(7).await.expect("token"), "ghs_1");
    assert_eq!(forge_c.installation_token(7).await.expect("token"), "ghs_2");
    assert_eq!(log.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn refusals_are_classified_and_not_cached() {
    let pem = rsa_key();
    let (url, _) = fake_github(500, Some(3600)).await;
    let r = forge(1, &pem, &url).installation_token(7).await;
    assert!(matches!(r, Err(ForgeError::Unavailable(_))), "{r:?}");
    let (url, log) = fake_github(401, Some(3600)).await;
    let f = forge(1, &pem, &url);
    let r = f.installation_token(7).await;
    assert!(matches!(&r, Err(ForgeError::Rejected(m)) if m.contains("401")), "{r:?}");
    assert!(f.installation_token(7).await.is_err());
    assert_eq!(log.lock().expect("lock").len(), 2, "a refusal is not cached");

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let r = forge(1, &pem, &format!("http://{addr}")).installation_token(7).await;
    assert!(matches!(r, Err(ForgeError::Unavailable(_))), "{r:?}");

    let r = HttpForge::new(NetworkPolicy::default())
        .expect("client")
        .installation_token(7)
        .await;
    assert!(matches!(r, Err(ForgeError::Rejected(_))), "without an App: {r:?}");
}

#[tokio::test]
async fn the_apps_own_api_is_trusted_and_nothing_else_on_this_machine_is() {
    use gradient_domain::forge::Forge;
    use gradient_domain::model::CommitState;
    use gradient_domain::ports::forge::ForgeTarget;
    // The App's API is on loopback (as a test's fake GitHub or an operator's proxy would be); the policy is
    // the default, which refuses loopback for anything users configure.
    let (url, log) = fake_github(201, Some(3600)).await;
    let forge = forge(1, &rsa_key(), &url);
    let target = |api_url: &str| ForgeTarget {
        forge: Forge::GitHub,
        api_url: api_url.to_owned(),
        token: "ghs_1".to_owned(),
        repository_url: "https://github.com/acme/web".to_owned(),
    };
    let sha = "0123456789abcdef0123456789abcdef01234567";
    forge
        .set_status(&target(&url), sha, CommitState::Success, "u", "d")
        .await
        .expect("a status through the App's API");
    assert_eq!(log.lock().unwrap().len(), 1);
    // An organization's forge connection naming another loopback address is refused without a request.
    let other = url.replace("127.0.0.1", "localhost");
    let r = forge
        .set_status(&target(&other), sha, CommitState::Success, "u", "d")
        .await;
    assert!(matches!(&r, Err(e) if e.to_string().contains("not allowed")), "{r:?}");
    assert_eq!(log.lock().unwrap().len(), 1);
}
