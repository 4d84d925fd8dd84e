//! Dashboard sessions: a token, checked once like the API's bearer tokens, is
//! exchanged for a random session id carried in a cookie.
//!
//! Only the SHA-256 of a session id is kept (a memory dump does not yield
//! usable cookies), next to the hash of the token it was made from: every
//! request re-authenticates that token hash against the store, so revoking or
//! expiring the token ends its sessions at once. Sessions live in memory and
//! end after [`SESSION_TTL`] or a server restart; logging in again is cheap.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a session lasts after login, whatever its use.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions held at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// The session cookie (scoped to `/ui`, so no `__Host-` prefix, which needs `Path=/`).
pub const COOKIE: &str = "tend_session";
/// The pre-login CSRF cookie: the login form must echo its value, which a
/// cross-site form cannot (SameSite=Strict keeps the cookie from being sent).
pub const LOGIN_COOKIE: &str = "tend_login";

/// A random 256-bit value in base64url, for session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Compares two strings in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (hash(a), hash(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What a live session holds.
#[derive(Debug, Clone)]
pub struct Session {
    /// Hash of the token the session was made from (re-checked every request).
    pub token_hash: [u8; 32],
    /// The per-session CSRF token every POST must carry.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
}

/// Every live session, by the hash of its id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves the map consistent (every
        // operation is a single insert/remove), so poisoning is ignored.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for a token; returns the id to put in the cookie.
    pub fn create(&self, token_hash: [u8; 32]) -> (String, Session) {
        let id = random_token();
        let session = Session {
            token_hash,
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(hash(&id), session.clone());
        (id, session)
    }

    /// The live session with this id, if any (an expired one is dropped).
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = hash(id);
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(&hash(id));
    }

    /// Sessions held (live or not yet swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the request reached us over HTTPS (directly or through a proxy that
/// says so): cookies then get `Secure`.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value scoped to the dashboard.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(name: &str, secure: bool) -> String {
    set_cookie(name, "", Duration::ZERO, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_id_only_and_expire() {
        let s = Sessions::default();
        let (id, sess) = s.create([7; 32]);
        assert_eq!(s.get(&id).map(|x| x.token_hash), Some([7; 32]));
        assert!(s.get("not-an-id").is_none());
        // Only hashes are keys: the id itself is not stored anywhere.
        assert!(!s.lock().keys().any(|k| k == id.as_bytes()));
        assert_ne!(sess.csrf, id);
        s.lock().get_mut(&hash(&id)).unwrap().expires = Instant::now();
        assert!(s.get(&id).is_none());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn logout_removes_the_session() {
        let s = Sessions::default();
        let (id, _) = s.create([1; 32]);
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn cookies_are_parsed_from_every_header() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; tend_session=abc".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "tend_session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie("x", "v", SESSION_TTL, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(c.contains("Max-Age=43200"));
        assert!(!set_cookie("x", "v", SESSION_TTL, false).contains("Secure"));
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", ""));
    }
}
