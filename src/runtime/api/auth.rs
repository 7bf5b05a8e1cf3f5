//! Bearer tokens and roles. Tokens are kept only as SHA-256 hashes and compared in constant
//! time; a request is 401 (with `WWW-Authenticate: Bearer`) when its token is missing,
//! malformed or unknown, and 403 when the token's role is too low. GET requests may carry the
//! token as `?token=` instead, because a browser's EventSource cannot send headers.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{Access, ApiError, ApiState};
use crate::config::{ApiConfig, ApiRole, ApiToken};

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Vec<([u8; 32], String, ApiRole)>,
}

/// Who made a request (put in the request's extensions by [`require`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: ApiRole,
}

impl Caller {
    /// How changes by this caller are recorded: `token:<name>`.
    pub fn by(&self) -> String {
        format!("token:{}", self.name)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("[api] token {name:?}: token_sha256 must be 64 hex digits (civicline api-token prints it)")]
pub struct BadTokenHash {
    pub name: String,
}

impl Auth {
    pub fn new(tokens: &[ApiToken]) -> Result<Auth, BadTokenHash> {
        let tokens = tokens
            .iter()
            .map(|t| {
                parse_hash(&t.token_sha256)
                    .map(|h| (h, t.name.clone(), t.role))
                    .ok_or_else(|| BadTokenHash {
                        name: t.name.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Auth { tokens })
    }

    /// The caller a token belongs to. Every configured hash is compared, each in constant time,
    /// so the answer's timing says nothing about which token came close.
    pub fn check(&self, token: &str) -> Option<Caller> {
        let hash = sha256(token.as_bytes());
        let mut found = None;
        for (expected, name, role) in &self.tokens {
            if constant_time_eq(&hash, expected) && found.is_none() {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as 32 bytes.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the compiler from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// A fresh random token: 32 bytes from the OS generator, as 64 hex digits.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("cl_{}", hex(&bytes))
}

/// The role a route needs, None for public routes.
pub fn required_role(access: Access, config: &ApiConfig) -> Option<ApiRole> {
    match access {
        Access::Public | Access::Open311Key => None,
        Access::Role(role) => Some(role),
        Access::Metrics if config.metrics_without_token => None,
        Access::Metrics => Some(ApiRole::ReadOnly),
    }
}

fn unauthorized(message: String) -> Response {
    let mut error = ApiError::new(StatusCode::UNAUTHORIZED, message);
    error.www_authenticate = true;
    error.into_response()
}

/// Middleware: a valid token of at least `role`, or 401 / 403.
pub async fn require(
    State((state, role)): State<(ApiState, ApiRole)>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.auth.is_empty() {
        return unauthorized(
            "no API tokens are configured: run `civicline api-token NAME ROLE` and add the line it \
             prints to [api] tokens in the configuration"
                .into(),
        );
    }
    let header_token = match request.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            match text.split_once(' ') {
                Some((scheme, token))
                    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
                {
                    Some(token.trim().to_string())
                }
                _ => {
                    return unauthorized(
                        "malformed Authorization header: expected `Bearer <token>`".into(),
                    )
                }
            }
        }
    };
    let token = match header_token {
        Some(token) => Some(token),
        // Only reads may put the token in the URL (where it can end up in logs).
        None if super::is_get(request.method()) => {
            Query::<HashMap<String, String>>::try_from_uri(request.uri())
                .ok()
                .and_then(|q| q.0.get("token").cloned())
        }
        None => None,
    };
    let Some(token) = token else {
        return unauthorized(
            "missing token: send `Authorization: Bearer <token>` (GET requests may use ?token=)"
                .into(),
        );
    };
    let Some(caller) = state.auth.check(&token) else {
        return unauthorized("unknown token".into());
    };
    if caller.role < role {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the {} role; token {:?} has {}",
                role.as_str(),
                caller.name,
                caller.role.as_str()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_and_roles_order() {
        let token = new_token();
        let auth = Auth::new(&[ApiToken {
            name: "alice".into(),
            role: ApiRole::Agent,
            token_sha256: hex(&sha256(token.as_bytes())),
        }])
        .unwrap();
        assert_eq!(auth.check(&token).unwrap().name, "alice");
        assert!(auth.check("cl_wrong").is_none());
        assert!(auth.check("").is_none());
        assert!(ApiRole::ReadOnly < ApiRole::Agent && ApiRole::Agent < ApiRole::Manager);
        assert!(Auth::new(&[ApiToken {
            name: "bob".into(),
            role: ApiRole::Manager,
            token_sha256: "abc".into(),
        }])
        .is_err());
    }
}
