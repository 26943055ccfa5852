//! Credentials: password hashing (argon2id), API key tokens (`GRAD` + secret, stored as SHA-256) and the
//! session JWTs (HS256 with the JWT secret, naming a session row so logout really revokes).

use crate::model::{Session, Timestamp};
use crate::{SessionId, UserId};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const API_KEY_PREFIX: &str = "GRAD";

/// Checks the password policy; the message is shown to the user.
pub fn check_password_policy(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(format!("password must be at least {MIN_PASSWORD_LEN} characters long"));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(format!("password must be at most {MAX_PASSWORD_LEN} characters long"));
    }
    if password.chars().all(char::is_whitespace) {
        return Err("password must not be only spaces or other whitespace".into());
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        // Hashing only fails for out-of-range parameters, which the defaults are not.
        .unwrap_or_default()
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so that a login for an unknown user costs the
/// same time as one with a wrong password.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("gradient-dummy-password"))
}

/// A freshly generated API key: the token shown once to the user, and the hash that is stored.
pub struct NewApiKeyToken {
    pub token: String,
    pub hash: String,
}

pub fn generate_api_key() -> NewApiKeyToken {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewApiKeyToken {
        hash: sha256_hex(secret.as_bytes()),
        token: format!("{API_KEY_PREFIX}{secret}"),
    }
}

/// The stored hash of an API key token, or `None` if it is not shaped like one.
pub fn api_key_hash(token: &str) -> Option<String> {
    let secret = token.strip_prefix(API_KEY_PREFIX)?;
    (!secret.is_empty()).then(|| sha256_hex(secret.as_bytes()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Constant-time equality for secrets.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// What a session JWT carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: UserId,
    /// The session row; deleting it revokes the token.
    pub sid: SessionId,
    pub iat: i64,
    pub exp: i64,
}

/// Signs and checks session tokens with the JWT secret (HS256).
#[derive(Clone)]
pub struct TokenSigner {
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        let secret = secret.trim_ascii();
        Self {
            encoding: jsonwebtoken::EncodingKey::from_secret(secret),
            decoding: jsonwebtoken::DecodingKey::from_secret(secret),
        }
    }

    pub fn issue(&self, session: &Session) -> String {
        let claims = Claims {
            sub: session.user_id,
            sid: session.id,
            iat: session.created_at.timestamp(),
            exp: session.expires_at.timestamp(),
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.encoding).unwrap_or_default()
    }

    /// Checks the signature and expiry (against `now`, not the system clock); `None` for any bad token.
    pub fn verify(&self, token: &str, now: Timestamp) -> Option<Claims> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        (claims.exp > now.timestamp()).then_some(claims)
    }
}

/// What a job token carries: the worker holding it may read the caches the organization may read, and push
/// to `push` (the org's push cache when the job was assigned), while the job stays assigned to it and at most
/// until `exp`. Signed like session tokens, so it survives a server restart; whether the job is still
/// assigned is checked by the cache (see `Gradient::cache_for_job_token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobClaims {
    /// Always `job`: a session token can never pass as a job token or the reverse.
    pub kind: String,
    pub org: crate::OrgId,
    pub job: crate::model::JobId,
    /// The worker the job was assigned to, and when (microseconds since the epoch): when the job is requeued and
    /// assigned again, even to the same worker, the old token stays dead.
    pub worker: crate::WorkerId,
    pub assigned_at: i64,
    /// The only cache the token may push to.
    #[serde(default)]
    pub push: Option<crate::CacheId>,
    pub exp: i64,
}

/// Job tokens start with this, so they are told apart from API keys and session tokens at a glance.
pub const JOB_TOKEN_PREFIX: &str = "GRADJOB.";

impl TokenSigner {
    pub fn issue_job(
        &self,
        org: crate::OrgId,
        job: crate::model::JobId,
        (worker, assigned_at): (crate::WorkerId, Timestamp),
        push: Option<crate::CacheId>,
        expires: Timestamp,
    ) -> String {
        let claims = JobClaims {
            kind: "job".into(),
            org,
            job,
            worker,
            assigned_at: assigned_at.timestamp_micros(),
            push,
            exp: expires.timestamp(),
        };
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.encoding).unwrap_or_default();
        format!("{JOB_TOKEN_PREFIX}{jwt}")
    }

    pub fn verify_job(&self, token: &str, now: Timestamp) -> Option<JobClaims> {
        let jwt = token.strip_prefix(JOB_TOKEN_PREFIX)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<JobClaims>(jwt, &self.decoding, &validation)
            .ok()?
            .claims;
        (claims.kind == "job" && claims.exp > now.timestamp()).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, Utc};

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn password_policy() {
        assert!(check_password_policy("short").is_err());
        assert!(check_password_policy("long enough").is_ok());
        assert!(check_password_policy(&"x".repeat(1025)).is_err());
        assert!(check_password_policy("        ").is_err(), "eight spaces");
        assert!(
            check_password_policy("\t\n \u{a0}\u{3000}   ").is_err(),
            "only whitespace"
        );
        assert!(check_password_policy("       x").is_ok());
    }

    #[test]
    fn api_keys_hash_without_prefix() {
        let k = generate_api_key();
        assert!(k.token.starts_with("GRAD"));
        assert_eq!(api_key_hash(&k.token).as_deref(), Some(k.hash.as_str()));
        assert_eq!(k.hash, sha256_hex(&k.token.as_bytes()[4..]));
        assert_eq!(k.hash.len(), 64);
        assert_eq!(api_key_hash("eyJhbGciOi"), None);
        assert_eq!(api_key_hash("GRAD"), None);
    }

    #[test]
    fn job_tokens_are_not_session_tokens() {
        let now = Utc::now();
        let signer = TokenSigner::new(b"a-secret-of-at-least-32-bytes-long!!");
        let org = crate::OrgId::new();
        let cache = crate::CacheId::new();
        let token = signer.issue_job(
            org,
            crate::model::JobId::new(),
            (crate::WorkerId::new(), now),
            Some(cache),
            now + TimeDelta::hours(1),
        );
        assert!(token.starts_with("GRADJOB."));
        assert_eq!(
            signer.verify_job(&token, now).map(|c| (c.org, c.push)),
            Some((org, Some(cache)))
        );
        assert!(
            signer.verify_job(&token, now + TimeDelta::hours(2)).is_none(),
            "expired"
        );
        assert!(signer.verify(&token[8..], now).is_none(), "not a session token");
        let session = Session {
            id: SessionId::new(),
            user_id: UserId::new(),
            created_at: now,
            expires_at: now + TimeDelta::hours(1),
        };
        assert!(
            signer
                .verify_job(&format!("GRADJOB.{}", signer.issue(&session)), now)
                .is_none(),
            "not a job token"
        );
        assert!(
            TokenSigner::new(b"another-secret-of-at-least-32-bytes")
                .verify_job(&token, now)
                .is_none()
        );
    }

    #[test]
    fn jwt_round_trip_expiry_and_wrong_secret() {
        let now = Utc::now();
        let session = Session {
            id: SessionId::new(),
            user_id: UserId::new(),
            created_at: now,
            expires_at: now + TimeDelta::hours(1),
        };
        let signer = TokenSigner::new(b"a-secret-of-at-least-32-bytes-long!!");
        let token = signer.issue(&session);
        let claims = signer.verify(&token, now).unwrap();
        assert_eq!((claims.sub, claims.sid), (session.user_id, session.id));
        assert!(signer.verify(&token, now + TimeDelta::hours(2)).is_none());
        let other = TokenSigner::new(b"another-secret-of-at-least-32-bytes");
        assert!(other.verify(&token, now).is_none());
        assert!(signer.verify("garbage", now).is_none());
    }
}
