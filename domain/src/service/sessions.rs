//! A user's sessions: which are open, and revoking one, the others or all of them.
//!
//! What is recorded (`docs/api.md#sessions`): when a session was opened and expires, when it was last used
//! (written at most once a minute per session, so busy clients do not write on every request), and the
//! `User-Agent` of the login that opened it, cut to [`MAX_USER_AGENT`] characters. Client addresses are not
//! recorded: behind a proxy they are the proxy's, and a list of the places a person logged in from is more
//! than a session list needs.

use super::{Caller, Gradient, Result, ServiceError};
use crate::SessionId;
use crate::model::{SessionInfo, Timestamp};
use crate::ports::{Clock, Storage};

/// The longest `User-Agent` kept for a session, in characters.
pub const MAX_USER_AGENT: usize = 256;

/// How often a session's last use is written at most.
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// One of the caller's sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    pub info: SessionInfo,
    /// The session whose token made this request.
    pub current: bool,
}

/// A `User-Agent` as kept: control characters dropped, at most [`MAX_USER_AGENT`] characters, `None` when
/// nothing is left.
pub fn clean_user_agent(agent: &str) -> Option<String> {
    let cleaned: String = agent.chars().filter(|c| !c.is_control()).take(MAX_USER_AGENT).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The caller's sessions that have not expired, newest first; the one making the request is marked. A
    /// restricted API key may not see them.
    pub async fn sessions(&self, caller: &Caller) -> Result<Vec<SessionView>> {
        let user = caller.require_unrestricted("list sessions")?;
        let current = current_session(caller);
        let now = self.clock.now();
        Ok(self
            .storage
            .sessions_of(user.id, now)
            .await?
            .into_iter()
            .map(|info| SessionView {
                current: Some(info.session.id) == current,
                info,
            })
            .collect())
    }

    /// Revokes one of the caller's sessions: its token stops working at once. Someone else's session, an
    /// expired one and an unknown id are all "no such session".
    pub async fn revoke_session(&self, caller: &Caller, id: SessionId) -> Result<()> {
        let user = caller.require_unrestricted("revoke sessions")?;
        let not_found = || ServiceError::NotFound("no such session".into());
        let info = self.storage.session_info(id).await?.ok_or_else(not_found)?;
        if info.session.user_id != user.id || info.session.expires_at <= self.clock.now() {
            return Err(not_found());
        }
        if self.storage.delete_session(id).await? {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// Revokes the caller's sessions: all of them, or all but the one making the request (`keep_current`;
    /// with an API key, which is no session, that is all of them). Answers how many were revoked.
    pub async fn revoke_sessions(&self, caller: &Caller, keep_current: bool) -> Result<u64> {
        let user = caller.require_unrestricted("revoke sessions")?;
        let keep = if keep_current { current_session(caller) } else { None };
        Ok(self.storage.delete_sessions_of(user.id, keep).await?)
    }

    /// Records the `User-Agent` of the login that just answered `token` (a session JWT). A token that does
    /// not name a live session is ignored; so is an empty agent.
    pub async fn note_session_client(&self, token: &str, user_agent: Option<&str>) -> Result<()> {
        let Some(agent) = user_agent.and_then(clean_user_agent) else {
            return Ok(());
        };
        let Some(claims) = self.tokens.verify(token, self.clock.now()) else {
            return Ok(());
        };
        self.storage.set_session_user_agent(claims.sid, &agent).await?;
        Ok(())
    }

    /// Records that the session was used at `now`, unless that was recorded less than a minute ago.
    pub(super) async fn note_session_use(&self, info: &SessionInfo, now: Timestamp) -> Result<()> {
        if info.last_used_at.is_none_or(|last| now - last >= TOUCH_EVERY) {
            self.storage.touch_session(info.session.id, now).await?;
        }
        Ok(())
    }
}

fn current_session(caller: &Caller) -> Option<SessionId> {
    match caller {
        Caller::Session { session, .. } => Some(*session),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_cleaned_and_bounded() {
        assert_eq!(clean_user_agent("  curl/8.0 \n"), Some("curl/8.0".into()));
        assert_eq!(clean_user_agent("\u{7}\t "), None);
        let long = "x".repeat(1000);
        assert_eq!(clean_user_agent(&long).map(|a| a.chars().count()), Some(MAX_USER_AGENT));
    }
}
