//! Authentication: bearer tokens, stored as SHA-256 hashes.
//!
//! A token is `tend_` followed by 32 random bytes in unpadded base64url. With
//! 256 bits of entropy a plain SHA-256 is enough to make the stored hash useless
//! to a thief; a slow password hash would only slow every request down.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::Method;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tend_core::model::{NewAuditEntry, Outcome, Principal};
use tend_store::TokenLookup;

use crate::error::ApiError;
use crate::AppState;

/// The prefix of every token, so leaked tokens are easy to scan for.
pub const TOKEN_PREFIX: &str = "tend_";

/// Makes a new random token secret.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The hash under which a token is stored and looked up.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The authenticated caller of a request and where it came from.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The client's socket address.
    pub client: Option<String>,
}

impl Caller {
    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.principal.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "only a platform admin may {what}; token `{}` is not an admin",
                self.principal.name
            )))
        }
    }

    /// Fails with 403 unless the caller acts for `team` (or is an admin).
    pub fn require_team(&self, team: &tend_core::TeamName, what: &str) -> Result<(), ApiError> {
        if self.principal.acts_for(team) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{what} is owned by team `{team}`; token `{}` is not a member of it{}",
                self.principal.name,
                if self.principal.teams.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (member of: {})",
                        self.principal
                            .teams
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )))
        }
    }
}

/// The password of `Authorization: Basic ...`: tools that only speak basic
/// auth (promtool, some Grafana setups) send the token as the password, with
/// any user name.
fn basic_password(header: &str) -> Option<String> {
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

fn client_addr(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = client_addr(parts);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .map(str::to_string)
                .or_else(|| basic_password(h))
        });
        let failure = match token.as_deref().map(str::trim) {
            None => Some(
                "missing token: send `Authorization: Bearer <token>` (tend login, or TEND_TOKEN)"
                    .to_string(),
            ),
            Some(t) => {
                let hash = hash_token(t);
                let store = state.store.clone();
                let lookup =
                    tokio::task::spawn_blocking(move || store.write(|tx| tx.authenticate(&hash)))
                        .await
                        .map_err(|e| ApiError::Internal(e.to_string()))??;
                match lookup {
                    TokenLookup::Valid(principal) => {
                        return Ok(Caller { principal, client });
                    }
                    TokenLookup::Unknown => Some("invalid token".to_string()),
                    TokenLookup::Revoked(at) => Some(format!("token was revoked at {at}")),
                    TokenLookup::Expired(at) => Some(format!("token expired at {at}")),
                }
            }
        };
        let message = failure.unwrap_or_else(|| "unauthorized".into());
        // Failed authentication on a request that would change something is a
        // security event: record it. Reads are not, and would flood the trail.
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let entry = NewAuditEntry {
                actor: None,
                action: format!("{} {}", parts.method, parts.uri.path()),
                target: parts.uri.path().to_string(),
                team: None,
                outcome: Outcome::Denied,
                client,
                detail: Some(message.clone()),
            };
            let store = state.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                store.write(|tx| tx.append_audit(&entry)).map_err(|e| {
                    tracing::error!(error = %e, "cannot record denied request in the audit trail")
                })
            })
            .await;
        }
        Err(ApiError::Unauthorized(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
