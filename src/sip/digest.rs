//! SIP digest authentication of agents' requests (RFC 3261 section 22, with the RFC 7616
//! algorithms as RFC 8760 brings them to SIP): stored HA1 credentials, stateless challenges,
//! parsing and checking `Authorization`, replay of `nc`, and throttling of failed guesses.
//!
//! Pure: no sockets, no clock. Every call takes `now_ms`, any millisecond clock that only moves
//! forward (unix time if the nonce secret is kept across restarts, so old nonces stay checkable).
//!
//! # Policy: what the engine answers
//!
//! The engine calls [`Authenticator::authenticate`] for each request it wants authenticated
//! and sends [`Decision::status`]:
//!
//! | Situation                                                          | Answer                   |
//! |--------------------------------------------------------------------|--------------------------|
//! | source is throttled (checked first; credentials are not looked at) | 503 + `Retry-After`      |
//! | no `Authorization`                                                 | 401, fresh challenge     |
//! | `Authorization` of another scheme (`Basic`)                        | 401, fresh challenge     |
//! | `Digest` `Authorization` that does not parse                       | 400                      |
//! | credentials we cannot check: other realm, nonce not ours (forged, another source, or our secret changed), opaque not ours, algorithm or qop we did not offer | 401, fresh challenge |
//! | response right, nonce ours but expired, or `nc` already used       | 401, `stale=true`        |
//! | response wrong, or user unknown (the same path, see below)         | 403, counts as a failure |
//! | response right, nonce fresh, `nc` new                              | 200 (accept), source reset |
//!
//! Only a checked, wrong response is a guess, so only that counts towards throttling: the other
//! 401s and the 400 tell the sender nothing about any password.
//!
//! An unknown user and a wrong password take one path: the response is computed against a
//! dummy HA1 (derived from the secret, so no password matches it) and compared in constant time,
//! then answered 403 exactly like a wrong password, stale nonce or not.
//!
//! Throttling is per source key (the engine passes the IP address, no port): the first
//! [`ThrottleConfig::free_failures`] failures are free, then each further failure blocks the
//! source for `base_delay_ms * 2^k`, capped at `max_delay_ms`; a success resets the source and
//! a source with no failure for `forget_after_ms` starts again from zero. Blocked sources get
//! 503 with `Retry-After` (RFC 3261 section 21.5.4: come back later; SIP's 429 means "Provide
//! Referrer Identity", RFC 3892), not 403, so a phone that mistyped its password and then got it
//! right recovers by itself. A phone with several registrars may fail over on 503 (RFC 3263);
//! that is harmless here. With the defaults 1,000 guesses from one source take about 82 hours
//! (`a_thousand_guesses_take_more_than_an_hour` shows the arithmetic).
//!
//! # Replay of `nc`
//!
//! Nonces need no table to check, but `nc` does: the authenticator keeps, for each nonce that
//! has been accepted and is not yet expired, the highest `nc` accepted. A request whose `nc` is
//! not higher (or a second use of a nonce without qop, RFC 2069 form) gets 401 `stale=true`, so
//! a captured request cannot be replayed while its nonce is fresh. The table is bounded: when it
//! is full the nonce issued earliest is evicted and every nonce issued up to then counts as used,
//! so eviction never re-opens a replay; it only costs an honest client one extra 401.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Digest algorithms we accept. The `-sess` variants and SHA-512-256 are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl Algorithm {
    /// The token as it appears in `algorithm=`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm=` token (case-insensitive, RFC 7616 section 3.3).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of H(parts joined by ':'), fed piecewise so nothing is copied.
    fn hash_hex(self, parts: &[&[u8]]) -> String {
        #[cfg(test)]
        tests::HASHES.with(|n| n.set(n.get() + 1));
        fn feed<D: Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(part);
            }
            hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => feed(Md5::new(), parts),
            Algorithm::Sha256 => feed(Sha256::new(), parts),
        }
    }
}

/// HA1 = H(username ":" realm ":" password) in lower-case hex, what agents.toml stores (one per
/// algorithm: an MD5 HA1 cannot check a SHA-256 response).
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash_hex(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Compares two byte strings in time that depends only on their lengths (which are public:
/// 32 or 64 hex digits).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Why an `Authorization` value could not be parsed. Messages hold no text from the request,
/// so they are safe as a 400 reason phrase.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("credentials are not Digest")]
    NotDigest,
    #[error("bad Authorization syntax at byte {at}: {what}")]
    Syntax { at: usize, what: &'static str },
    #[error("Authorization parameter {0} given twice")]
    Duplicate(&'static str),
    #[error("Authorization lacks {0}")]
    Missing(&'static str),
    #[error("nc is not 8 hex digits")]
    BadNc,
    #[error("cnonce or nc without qop")]
    UnexpectedCnonce,
}

/// The parameters of a `Digest` `Authorization` (or `Proxy-Authorization`) value. Values are
/// unquoted and unescaped; `algorithm` and `qop` are kept as sent and judged by the verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    /// Exactly as sent (it goes into the hash as text), checked to be 8 hex digits.
    pub nc: Option<String>,
    /// RFC 7616 `userhash=true`: we do not support hashed user names.
    pub userhash: bool,
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 section 25.1 `token` characters.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

fn token_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_token(s[i]) {
        i += 1;
    }
    i
}

/// Reads a quoted-string starting at the opening quote; returns the unescaped text and the index
/// after the closing quote.
fn quoted(s: &[u8], start: usize) -> Result<(String, usize), ParseError> {
    let mut out = Vec::new();
    let mut i = start + 1;
    loop {
        match s.get(i) {
            None => {
                return Err(ParseError::Syntax {
                    at: i,
                    what: "unterminated quoted string",
                })
            }
            Some(b'"') => break,
            // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F): never CR or LF, never non-ASCII.
            Some(b'\\') => match s.get(i + 1) {
                Some(&c) if c.is_ascii() && c != b'\r' && c != b'\n' => {
                    out.push(c);
                    i += 2;
                }
                _ => {
                    return Err(ParseError::Syntax {
                        at: i,
                        what: "bad escape in quoted string",
                    })
                }
            },
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were dropped, at character boundaries, so this is still UTF-8; map the
    // impossible error instead of unwrapping anyway.
    let text = String::from_utf8(out).map_err(|_| ParseError::Syntax {
        at: start,
        what: "quoted string is not UTF-8",
    })?;
    Ok((text, i + 1))
}

/// Parses an `Authorization` value: `Digest` then comma-separated `name=value` pairs, values
/// tokens or quoted strings, in any order, names case-insensitive; unknown names are skipped and
/// a known name given twice is an error (two readings of one header would be ambiguous).
pub fn parse_authorization(value: &str) -> Result<Credentials, ParseError> {
    let s = value.as_bytes();
    let start = skip_lws(s, 0);
    let scheme_end = token_end(s, start);
    if !value[start..scheme_end].eq_ignore_ascii_case("Digest") {
        return Err(ParseError::NotDigest);
    }
    if scheme_end < s.len() && !is_lws(s[scheme_end]) {
        return Err(ParseError::NotDigest);
    }

    #[derive(Default)]
    struct Fields {
        username: Option<String>,
        realm: Option<String>,
        nonce: Option<String>,
        uri: Option<String>,
        response: Option<String>,
        algorithm: Option<String>,
        cnonce: Option<String>,
        opaque: Option<String>,
        qop: Option<String>,
        nc: Option<String>,
        userhash: Option<String>,
    }
    let mut f = Fields::default();
    let mut i = scheme_end;
    let mut first = true;
    loop {
        i = skip_lws(s, i);
        // The list rule (RFC 7230 section 7) allows empty elements: skip stray commas.
        let mut saw_comma = false;
        while i < s.len() && s[i] == b',' {
            saw_comma = true;
            i = skip_lws(s, i + 1);
        }
        if i == s.len() {
            break;
        }
        if !first && !saw_comma {
            return Err(ParseError::Syntax {
                at: i,
                what: "expected a comma",
            });
        }
        first = false;
        let name_end = token_end(s, i);
        if name_end == i {
            return Err(ParseError::Syntax {
                at: i,
                what: "expected a parameter name",
            });
        }
        let name = &value[i..name_end];
        i = skip_lws(s, name_end);
        if s.get(i) != Some(&b'=') {
            return Err(ParseError::Syntax {
                at: i,
                what: "expected =",
            });
        }
        i = skip_lws(s, i + 1);
        let param_value = if s.get(i) == Some(&b'"') {
            let (text, next) = quoted(s, i)?;
            i = next;
            text
        } else {
            let end = token_end(s, i);
            if end == i {
                return Err(ParseError::Syntax {
                    at: i,
                    what: "expected a token or quoted string",
                });
            }
            let text = value[i..end].to_string();
            i = end;
            text
        };
        let (slot, label) = match name.to_ascii_lowercase().as_str() {
            "username" => (&mut f.username, "username"),
            "realm" => (&mut f.realm, "realm"),
            "nonce" => (&mut f.nonce, "nonce"),
            "uri" => (&mut f.uri, "uri"),
            "response" => (&mut f.response, "response"),
            "algorithm" => (&mut f.algorithm, "algorithm"),
            "cnonce" => (&mut f.cnonce, "cnonce"),
            "opaque" => (&mut f.opaque, "opaque"),
            "qop" => (&mut f.qop, "qop"),
            "nc" => (&mut f.nc, "nc"),
            "userhash" => (&mut f.userhash, "userhash"),
            _ => continue,
        };
        if slot.is_some() {
            return Err(ParseError::Duplicate(label));
        }
        *slot = Some(param_value);
    }

    let nc = f.nc;
    if nc
        .as_deref()
        .is_some_and(|t| t.len() != 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ParseError::BadNc);
    }
    // RFC 2617 section 3.2.2: cnonce and nc are sent only with qop.
    if f.qop.is_none() && (f.cnonce.is_some() || nc.is_some()) {
        return Err(ParseError::UnexpectedCnonce);
    }
    Ok(Credentials {
        username: f.username.ok_or(ParseError::Missing("username"))?,
        realm: f.realm.ok_or(ParseError::Missing("realm"))?,
        nonce: f.nonce.ok_or(ParseError::Missing("nonce"))?,
        uri: f.uri.ok_or(ParseError::Missing("uri"))?,
        response: f.response.ok_or(ParseError::Missing("response"))?,
        algorithm: f.algorithm,
        cnonce: f.cnonce,
        opaque: f.opaque,
        qop: f.qop,
        nc,
        userhash: f.userhash.is_some_and(|v| v.eq_ignore_ascii_case("true")),
    })
}

/// Why credentials could not be checked at all. Apart from `Malformed` (400), each gets a fresh
/// 401 and is not a guess. Text from the request appears only in `{:?}` form (escaped).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("malformed Authorization: {0}")]
    Malformed(#[from] ParseError),
    #[error("realm {0:?} is not ours")]
    WrongRealm(String),
    #[error("algorithm {0:?} is not offered")]
    UnsupportedAlgorithm(String),
    #[error("qop {0:?} is not offered")]
    UnsupportedQop(String),
    #[error("userhash is not supported")]
    UserHash,
    #[error("nonce was not issued by this server for this source")]
    ForeignNonce,
    #[error("opaque is not ours")]
    WrongOpaque,
}

/// Result of checking credentials that could be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Right response, fresh nonce, new `nc`.
    Ok { user: String, algorithm: Algorithm },
    /// Right response, but the nonce expired or this `nc` was used: re-challenge, `stale=true`.
    Stale,
    /// Wrong response or unknown user; the two are deliberately indistinguishable.
    /// `claimed_user` is the `username=` as sent, for logs.
    Fail { claimed_user: String },
}

/// Per-source throttling of failed guesses; see the module doc for the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures allowed before any delay (typos, a phone with an old password retrying).
    pub free_failures: u32,
    /// Block after the first failure beyond the free ones; doubles with each further one.
    pub base_delay_ms: u64,
    /// Cap on one block.
    pub max_delay_ms: u64,
    /// A source with no failure for this long starts from zero again.
    pub forget_after_ms: u64,
    /// Most sources remembered; the one whose last failure is oldest is evicted first.
    pub max_sources: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            base_delay_ms: 1_000,
            max_delay_ms: 300_000,
            forget_after_ms: 24 * 3_600_000,
            max_sources: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SourceState {
    failures: u32,
    last_failure_ms: u64,
    blocked_until_ms: u64,
}

/// Failure counts per source with exponential back-off on the injected clock, bounded memory.
#[derive(Debug, Clone)]
pub struct Throttle {
    config: ThrottleConfig,
    sources: HashMap<String, SourceState>,
    /// (last failure, source): eviction order, oldest first.
    by_age: BTreeSet<(u64, String)>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            sources: HashMap::new(),
            by_age: BTreeSet::new(),
        }
    }

    /// How long the source is blocked after its `failures`-th failure.
    pub fn delay_after(&self, failures: u32) -> u64 {
        let c = &self.config;
        if failures <= c.free_failures {
            return 0;
        }
        let doublings = (failures - c.free_failures - 1).min(63);
        c.base_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(c.max_delay_ms)
    }

    /// `Err(ms)` while the source is blocked: the time left.
    pub fn check(&self, source: &str, now_ms: u64) -> Result<(), u64> {
        match self.sources.get(source) {
            Some(state) if state.blocked_until_ms > now_ms => Err(state.blocked_until_ms - now_ms),
            _ => Ok(()),
        }
    }

    /// Counts a wrong response from `source` and blocks it per the schedule.
    pub fn record_failure(&mut self, source: &str, now_ms: u64) {
        let forget = self.config.forget_after_ms;
        let previous = self.sources.get(source).copied();
        let failures = match previous {
            Some(s) if now_ms.saturating_sub(s.last_failure_ms) < forget => {
                s.failures.saturating_add(1)
            }
            _ => 1,
        };
        match previous {
            Some(s) => {
                self.by_age.remove(&(s.last_failure_ms, source.to_string()));
            }
            None => self.make_room(now_ms),
        }
        let state = SourceState {
            failures,
            last_failure_ms: now_ms,
            blocked_until_ms: now_ms.saturating_add(self.delay_after(failures)),
        };
        self.sources.insert(source.to_string(), state);
        self.by_age.insert((now_ms, source.to_string()));
    }

    /// A success wipes the source's record.
    pub fn record_success(&mut self, source: &str) {
        if let Some(s) = self.sources.remove(source) {
            self.by_age.remove(&(s.last_failure_ms, source.to_string()));
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Before adding a source: drop forgotten ones, then the oldest while full.
    fn make_room(&mut self, now_ms: u64) {
        while let Some((last, source)) = self.by_age.first() {
            let forgotten = now_ms.saturating_sub(*last) >= self.config.forget_after_ms;
            let full = self.sources.len() >= self.config.max_sources.max(1);
            if !forgotten && !full {
                break;
            }
            let source = source.clone();
            self.by_age.pop_first();
            self.sources.remove(&source);
        }
    }
}

/// Settings of the authenticator (a `[sip.auth]` table in the engine's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DigestConfig {
    pub realm: String,
    /// How long a nonce is fresh.
    pub nonce_ttl_ms: u64,
    /// Offer and accept MD5 next to SHA-256 (most desk phones still know only MD5).
    pub offer_md5: bool,
    /// List the MD5 challenge before the SHA-256 one (RFC 8760 wants SHA-256 first).
    pub md5_first: bool,
    /// Offer SHA-256. Some phones fail on any challenge they cannot do instead of picking the
    /// one they can (Debian's baresip 1.0 answers a SHA-256 challenge with ENOSYS).
    pub offer_sha256: bool,
    /// Bind nonces to the source key, so a nonce answered from elsewhere is refused.
    pub bind_nonce_to_source: bool,
    /// Most accepted nonces tracked for `nc` replay.
    pub replay_capacity: usize,
    pub throttle: ThrottleConfig,
}

impl Default for DigestConfig {
    fn default() -> Self {
        DigestConfig {
            realm: "civicline".into(),
            nonce_ttl_ms: 300_000,
            offer_md5: true,
            md5_first: false,
            offer_sha256: true,
            bind_nonce_to_source: true,
            replay_capacity: 4096,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// What to answer a request; [`Decision::status`] is the status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated: go on with the request (200 for a REGISTER the registrar accepts).
    Accept { user: String, algorithm: Algorithm },
    /// 401 with these `WWW-Authenticate` values, one header each, in order.
    Challenge { www_authenticate: Vec<String> },
    /// 403: the credentials were checked and are wrong (or the user is unknown).
    Forbidden,
    /// 503 with `Retry-After: retry_after_s`: the source is throttled, nothing was checked.
    Throttled { retry_after_s: u64 },
    /// 400 with `reason` as the reason phrase.
    BadRequest { reason: String },
}

impl Decision {
    pub fn status(&self) -> u16 {
        match self {
            Decision::Accept { .. } => 200,
            Decision::Challenge { .. } => 401,
            Decision::Forbidden => 403,
            Decision::Throttled { .. } => 503,
            Decision::BadRequest { .. } => 400,
        }
    }
}

/// Nonce layout, all lower-case hex: issue time (16) | salt (16) | HMAC tag (32).
const NONCE_LEN: usize = 64;
const NONCE_TAG_BYTES: usize = 16;

/// Issues challenges and checks credentials for one realm; owns the replay table and the
/// throttle. One per engine.
#[derive(Debug)]
pub struct Authenticator {
    config: DigestConfig,
    secret: [u8; 32],
    opaque: String,
    dummy_md5: String,
    dummy_sha256: String,
    salt: u64,
    /// (issue time, nonce) -> highest `nc` accepted; see the module doc.
    used: BTreeMap<(u64, String), u32>,
    /// Nonces issued at or before this were evicted from `used` and count as used.
    evicted_through_ms: Option<u64>,
    throttle: Throttle,
}

impl Authenticator {
    /// `secret` keys the nonces; keep it across restarts to keep outstanding nonces valid
    /// (a new one only costs each phone one extra 401).
    pub fn new(config: DigestConfig, secret: [u8; 32]) -> Authenticator {
        let mac = |label: &[u8]| {
            let mut m = hmac_with(&secret);
            m.update(label);
            hex(&m.finalize().into_bytes())
        };
        let opaque = mac(b"civicline digest opaque")[..32].to_string();
        // Dummy HA1s for unknown users: same length as real ones, and no password hashes to them
        // that anyone could know without the secret.
        let dummy_md5 = mac(b"civicline digest dummy md5")[..32].to_string();
        let dummy_sha256 = mac(b"civicline digest dummy sha256");
        let throttle = Throttle::new(config.throttle.clone());
        Authenticator {
            config,
            secret,
            opaque,
            dummy_md5,
            dummy_sha256,
            salt: 0,
            used: BTreeMap::new(),
            evicted_through_ms: None,
            throttle,
        }
    }

    /// A fresh random secret from the operating system.
    pub fn random_secret() -> [u8; 32] {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        secret
    }

    pub fn config(&self) -> &DigestConfig {
        &self.config
    }

    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// The engine's single entry point: throttle gate, then check, then the policy of the module
    /// doc. `authorization` is the request's `Authorization` value (the first one whose realm is
    /// ours when there are several); `source` the sender's IP address without port.
    pub fn authenticate(
        &mut self,
        method: &str,
        authorization: Option<&str>,
        source: &str,
        lookup_ha1: impl Fn(&str, &str, Algorithm) -> Option<String>,
        now_ms: u64,
    ) -> Decision {
        if let Err(wait_ms) = self.throttle.check(source, now_ms) {
            return Decision::Throttled {
                retry_after_s: wait_ms.div_ceil(1000).max(1),
            };
        }
        let Some(authorization) = authorization else {
            return Decision::Challenge {
                www_authenticate: self.challenge(source, false, now_ms),
            };
        };
        match self.verify(method, authorization, source, lookup_ha1, now_ms) {
            Ok(Outcome::Ok { user, algorithm }) => {
                self.throttle.record_success(source);
                Decision::Accept { user, algorithm }
            }
            Ok(Outcome::Stale) => Decision::Challenge {
                www_authenticate: self.challenge(source, true, now_ms),
            },
            Ok(Outcome::Fail { .. }) => {
                self.throttle.record_failure(source, now_ms);
                Decision::Forbidden
            }
            // Another scheme (Basic, say): tell the client which one we take.
            Err(VerifyError::Malformed(ParseError::NotDigest)) => Decision::Challenge {
                www_authenticate: self.challenge(source, false, now_ms),
            },
            Err(VerifyError::Malformed(e)) => Decision::BadRequest {
                reason: e.to_string(),
            },
            Err(_) => Decision::Challenge {
                www_authenticate: self.challenge(source, false, now_ms),
            },
        }
    }

    /// `WWW-Authenticate` values: SHA-256 first, then MD5 (RFC 8760 section 2.4), one nonce.
    pub fn challenge(&mut self, source: &str, stale: bool, now_ms: u64) -> Vec<String> {
        self.salt = self.salt.wrapping_add(1);
        let nonce = self.make_nonce(source, now_ms, self.salt);
        let mut algorithms = Vec::new();
        if self.config.offer_sha256 || !self.config.offer_md5 {
            algorithms.push(Algorithm::Sha256);
        }
        if self.config.offer_md5 {
            if self.config.md5_first {
                algorithms.insert(0, Algorithm::Md5);
            } else {
                algorithms.push(Algorithm::Md5);
            }
        }
        algorithms
            .into_iter()
            .map(|alg| {
                let mut v = format!(
                    "Digest realm={}, nonce=\"{nonce}\", opaque=\"{}\", algorithm={}, qop=\"auth\"",
                    quote(&self.config.realm),
                    self.opaque,
                    alg.name()
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Checks credentials without touching the throttle (see [`Authenticator::authenticate`]).
    pub fn verify(
        &mut self,
        method: &str,
        authorization: &str,
        source: &str,
        lookup_ha1: impl Fn(&str, &str, Algorithm) -> Option<String>,
        now_ms: u64,
    ) -> Result<Outcome, VerifyError> {
        let c = parse_authorization(authorization)?;
        // Everything that does not depend on the user comes first, so these answers say nothing
        // about whether the user exists.
        if c.realm != self.config.realm {
            return Err(VerifyError::WrongRealm(c.realm));
        }
        let algorithm = match c.algorithm.as_deref() {
            // RFC 7616 section 3.4: no algorithm means MD5.
            None => Algorithm::Md5,
            Some(name) => Algorithm::from_name(name)
                .ok_or_else(|| VerifyError::UnsupportedAlgorithm(name.to_string()))?,
        };
        if algorithm == Algorithm::Md5 && !self.config.offer_md5 {
            return Err(VerifyError::UnsupportedAlgorithm("MD5".into()));
        }
        if c.userhash {
            return Err(VerifyError::UserHash);
        }
        // qop=auth needs cnonce and nc; no qop is the RFC 2069 form, which we allow for MD5 only
        // (RFC 7616 made qop mandatory, and SHA-256 clients all send it).
        let auth_qop = match c.qop.as_deref() {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let cnonce = c.cnonce.as_deref().ok_or(ParseError::Missing("cnonce"))?;
                let nc_text = c.nc.as_deref().ok_or(ParseError::Missing("nc"))?;
                let nc = u32::from_str_radix(nc_text, 16).map_err(|_| ParseError::BadNc)?;
                Some((cnonce, nc_text, nc))
            }
            Some(q) => return Err(VerifyError::UnsupportedQop(q.to_string())),
            None if algorithm == Algorithm::Md5 => None,
            None => return Err(VerifyError::UnsupportedQop(String::new())),
        };
        if c.opaque.as_deref().is_some_and(|o| o != self.opaque) {
            return Err(VerifyError::WrongOpaque);
        }
        let issued_ms = self
            .open_nonce(&c.nonce, source)
            .ok_or(VerifyError::ForeignNonce)?;

        // One path for known and unknown users: same hashing, same comparison.
        let ha1 = lookup_ha1(&c.username, &c.realm, algorithm)
            .unwrap_or_else(|| match algorithm {
                Algorithm::Md5 => self.dummy_md5.clone(),
                Algorithm::Sha256 => self.dummy_sha256.clone(),
            })
            .to_ascii_lowercase();
        let expected = response_for(
            algorithm,
            &ha1,
            method,
            &c.uri,
            &c.nonce,
            auth_qop.map(|(cnonce, nc_text, _)| (nc_text, cnonce)),
        );
        let sent = c.response.to_ascii_lowercase();
        if !constant_time_eq(expected.as_bytes(), sent.as_bytes()) {
            return Ok(Outcome::Fail {
                claimed_user: c.username,
            });
        }

        if !self.fresh(issued_ms, now_ms) {
            return Ok(Outcome::Stale);
        }
        // Without qop there is no counter: the nonce may be used once.
        let nc = auth_qop.map_or(1, |(_, _, nc)| nc);
        if !self.use_nonce(issued_ms, &c.nonce, nc, now_ms) {
            return Ok(Outcome::Stale);
        }
        Ok(Outcome::Ok {
            user: c.username,
            algorithm,
        })
    }

    fn fresh(&self, issued_ms: u64, now_ms: u64) -> bool {
        let ttl = self.config.nonce_ttl_ms;
        // A nonce from the future means the clock went back; accept it within one lifetime.
        now_ms.saturating_sub(issued_ms) <= ttl && issued_ms <= now_ms.saturating_add(ttl)
    }

    /// Records `nc` for the nonce; false when it is not above the highest seen (a replay).
    fn use_nonce(&mut self, issued_ms: u64, nonce: &str, nc: u32, now_ms: u64) -> bool {
        // Expired nonces are refused before they get here, so their entries can go.
        let ttl = self.config.nonce_ttl_ms;
        while let Some((&(issued, _), _)) = self.used.first_key_value() {
            if now_ms.saturating_sub(issued) <= ttl {
                break;
            }
            self.used.pop_first();
        }
        let key = (issued_ms, nonce.to_string());
        match self.used.get_mut(&key) {
            Some(last) if nc <= *last => false,
            Some(last) => {
                *last = nc;
                true
            }
            None => {
                if nc == 0 || self.evicted_through_ms.is_some_and(|t| issued_ms <= t) {
                    return false;
                }
                if self.used.len() >= self.config.replay_capacity.max(1) {
                    // Evict the nonce issued earliest, which may be this one.
                    let oldest = self.used.first_key_value().map(|((issued, _), _)| *issued);
                    let evicted = match oldest {
                        Some(oldest) if oldest <= issued_ms => {
                            self.used.pop_first();
                            oldest
                        }
                        _ => issued_ms,
                    };
                    self.evicted_through_ms =
                        Some(self.evicted_through_ms.map_or(evicted, |t| t.max(evicted)));
                    if issued_ms <= evicted {
                        return false;
                    }
                }
                self.used.insert(key, nc);
                true
            }
        }
    }

    fn nonce_tag(&self, source: &str, issued_ms: u64, salt: u64) -> HmacSha256 {
        let mut mac = hmac_with(&self.secret);
        mac.update(b"civicline digest nonce\0");
        mac.update(&issued_ms.to_be_bytes());
        mac.update(&salt.to_be_bytes());
        if self.config.bind_nonce_to_source {
            mac.update(source.as_bytes());
        }
        mac
    }

    fn make_nonce(&self, source: &str, issued_ms: u64, salt: u64) -> String {
        let tag = self
            .nonce_tag(source, issued_ms, salt)
            .finalize()
            .into_bytes();
        format!(
            "{issued_ms:016x}{salt:016x}{}",
            hex(&tag[..NONCE_TAG_BYTES])
        )
    }

    /// The issue time of a nonce we made for this source, or `None`.
    fn open_nonce(&self, nonce: &str, source: &str) -> Option<u64> {
        let b = nonce.as_bytes();
        if b.len() != NONCE_LEN || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let issued_ms = u64::from_str_radix(&nonce[..16], 16).ok()?;
        let salt = u64::from_str_radix(&nonce[16..32], 16).ok()?;
        let mut tag = [0u8; NONCE_TAG_BYTES];
        for (i, byte) in tag.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&nonce[32 + 2 * i..34 + 2 * i], 16).ok()?;
        }
        // verify_truncated_left compares in constant time.
        self.nonce_tag(source, issued_ms, salt)
            .verify_truncated_left(&tag)
            .ok()?;
        Some(issued_ms)
    }
}

/// The response a client should send (RFC 7616 section 3.4.1 with qop=auth; RFC 2069 without):
/// `qop` is `(nc, cnonce)` as sent.
fn response_for(
    alg: Algorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha2 = alg.hash_hex(&[method.as_bytes(), uri.as_bytes()]);
    match qop {
        Some((nc, cnonce)) => alg.hash_hex(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            b"auth",
            ha2.as_bytes(),
        ]),
        None => alg.hash_hex(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
    }
}

fn hmac_with(key: &[u8]) -> HmacSha256 {
    // HMAC pads or hashes keys of any length; new_from_slice cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// A quoted-string with `"` and `\` escaped.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    thread_local! {
        /// Digest computations on this thread, to show two paths do the same work.
        pub(super) static HASHES: Cell<usize> = const { Cell::new(0) };
    }

    const SECRET: [u8; 32] = [7; 32];
    const REALM: &str = "civicline";
    const SRC: &str = "192.0.2.10";
    const URI: &str = "sip:civicline.example";

    fn auth() -> Authenticator {
        Authenticator::new(DigestConfig::default(), SECRET)
    }

    /// One agent, "alice" / "s3cret", with an HA1 per algorithm, as agents.toml holds them.
    fn lookup(user: &str, realm: &str, alg: Algorithm) -> Option<String> {
        (user == "alice").then(|| ha1(alg, user, realm, "s3cret"))
    }

    /// The nonce out of a WWW-Authenticate value.
    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        challenge[start..start + NONCE_LEN].to_string()
    }

    fn opaque_of(challenge: &str) -> String {
        let start = challenge.find("opaque=\"").unwrap() + 8;
        let len = challenge[start..].find('"').unwrap();
        challenge[start..start + len].to_string()
    }

    /// What a client sends for `user`/`password` with qop=auth.
    fn authorization(
        alg: Algorithm,
        user: &str,
        password: &str,
        nonce: &str,
        opaque: &str,
        nc: &str,
    ) -> String {
        let ha1 = ha1(alg, user, REALM, password);
        let response = response_for(alg, &ha1, "REGISTER", URI, nonce, Some((nc, "c0ffee")));
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", \
             response=\"{response}\", algorithm={}, cnonce=\"c0ffee\", qop=auth, nc={nc}, \
             opaque=\"{opaque}\"",
            alg.name()
        )
    }

    /// A challenge at `now_ms` answered by `user`/`password`.
    fn answer(a: &mut Authenticator, alg: Algorithm, user: &str, pw: &str, now_ms: u64) -> String {
        let c = a.challenge(SRC, false, now_ms);
        authorization(
            alg,
            user,
            pw,
            &nonce_of(&c[0]),
            &opaque_of(&c[0]),
            "00000001",
        )
    }

    #[test]
    fn ha1_and_responses_match_the_rfc_examples() {
        // RFC 2617 section 3.5.
        let md5 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(md5, "939e7578ed9e3c518a452acee763bce9");
        let r = response_for(
            Algorithm::Md5,
            &md5,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        // RFC 7616 section 3.9.1, both algorithms.
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let cases = [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ];
        for (alg, want) in cases {
            let h = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life");
            let r = response_for(
                alg,
                &h,
                "GET",
                "/dir/index.html",
                nonce,
                Some(("00000001", cnonce)),
            );
            assert_eq!(r, want, "{alg:?}");
        }
        assert_eq!(ha1(Algorithm::Sha256, "a", "b", "c").len(), 64);
    }

    #[test]
    fn challenge_offers_sha256_then_md5_with_qop_realm_opaque() {
        let mut a = auth();
        let c = a.challenge(SRC, false, 1_000);
        assert_eq!(c.len(), 2);
        assert!(
            c[0].starts_with("Digest realm=\"civicline\", nonce=\""),
            "{}",
            c[0]
        );
        assert!(c[0].contains("algorithm=SHA-256"));
        assert!(c[1].contains("algorithm=MD5"));
        for v in &c {
            assert!(v.contains("qop=\"auth\""));
            assert!(v.contains("opaque=\""));
            assert!(!v.contains("stale"));
        }
        // One nonce for both, and a new one per challenge.
        assert_eq!(nonce_of(&c[0]), nonce_of(&c[1]));
        assert_ne!(
            nonce_of(&c[0]),
            nonce_of(&a.challenge(SRC, false, 1_000)[0])
        );
        assert!(a.challenge(SRC, true, 1_000)[0].ends_with(", stale=true"));

        let config = DigestConfig {
            offer_md5: false,
            realm: "a \"q\" \\realm".into(),
            ..DigestConfig::default()
        };
        let c = Authenticator::new(config, SECRET).challenge(SRC, false, 0);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with(r#"Digest realm="a \"q\" \\realm""#),
            "{}",
            c[0]
        );
    }

    #[test]
    fn parses_any_order_case_quotes_escapes_and_unknown_params() {
        let c = parse_authorization(
            "  digest  NC=0000000a ,URI=\"sip:a@b;x=\\\"y\\\"\", Username=\"al\\\\ice\",\
             realm=civicline,, nonce=\"n, with comma\", response=\"ABCDEF\", \
             foo=\"bar=baz\", algorithm=sha-256, cnonce=\"c\", qop=auth, opaque=\"o\"",
        )
        .unwrap();
        assert_eq!(c.username, "al\\ice");
        assert_eq!(c.realm, "civicline");
        assert_eq!(c.nonce, "n, with comma");
        assert_eq!(c.uri, "sip:a@b;x=\"y\"");
        assert_eq!(c.response, "ABCDEF");
        assert_eq!(c.algorithm.as_deref(), Some("sha-256"));
        assert_eq!(c.nc.as_deref(), Some("0000000a"));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.opaque.as_deref(), Some("o"));
        assert!(!c.userhash);

        // RFC 2069 form: no qop, no cnonce, no nc.
        let c = parse_authorization(
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"x\"",
        )
        .unwrap();
        assert_eq!(
            (c.qop, c.cnonce, c.nc, c.algorithm),
            (None, None, None, None)
        );
    }

    #[test]
    fn malformed_authorization_is_a_typed_error() {
        let ok = "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"x\"";
        let cases: &[(&str, ParseError)] = &[
            ("", ParseError::NotDigest),
            ("Basic dXNlcjpwYXNz", ParseError::NotDigest),
            ("Digestusername=\"u\"", ParseError::NotDigest),
            ("Digest", ParseError::Missing("username")),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\"",
                ParseError::Missing("response"),
            ),
            (
                "Digest username=\"u\", username=\"v\", realm=\"r\"",
                ParseError::Duplicate("username"),
            ),
            (
                "Digest username=\"u",
                ParseError::Syntax {
                    at: 18,
                    what: "unterminated quoted string",
                },
            ),
            (
                "Digest username=\"u\" realm=\"r\"",
                ParseError::Syntax {
                    at: 20,
                    what: "expected a comma",
                },
            ),
            (
                "Digest username",
                ParseError::Syntax {
                    at: 15,
                    what: "expected =",
                },
            ),
            (
                "Digest username=",
                ParseError::Syntax {
                    at: 16,
                    what: "expected a token or quoted string",
                },
            ),
            (
                "Digest =x",
                ParseError::Syntax {
                    at: 7,
                    what: "expected a parameter name",
                },
            ),
            (
                "Digest username=\"a\\\r\"",
                ParseError::Syntax {
                    at: 18,
                    what: "bad escape in quoted string",
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_authorization(input).as_ref(), Err(want), "{input:?}");
        }
        let with = |extra: &str| parse_authorization(&format!("Digest {ok}, {extra}"));
        assert_eq!(with("qop=auth, cnonce=c, nc=1"), Err(ParseError::BadNc));
        assert_eq!(
            with("qop=auth, cnonce=c, nc=0000000g"),
            Err(ParseError::BadNc)
        );
        assert_eq!(with("cnonce=c"), Err(ParseError::UnexpectedCnonce));
        assert!(with("qop=auth, cnonce=c, nc=00000001").is_ok());
        assert!(with("userhash=TRUE").unwrap().userhash);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let valid = authorization(
            Algorithm::Sha256,
            "alice",
            "s3cret",
            &"0".repeat(64),
            "o",
            "00000001",
        );
        let alphabet: Vec<char> = "Digest usernamrlocqp=\",\\ \t\r\n;:aAzZ09-_é<>*"
            .chars()
            .collect();
        let mut a = auth();
        let mut parsed_ok = 0;
        for round in 0..30_000 {
            let input: String = match round % 3 {
                // Raw random bytes, made text the way the message parser would.
                0 => {
                    let len = rng.gen_range(0..120);
                    let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                // Random strings over the characters the grammar cares about.
                1 => {
                    let len = rng.gen_range(0..80);
                    let mut s = String::from("Digest ");
                    s.extend((0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]));
                    s
                }
                // A valid header with random byte edits and a random cut.
                _ => {
                    let mut bytes = valid.clone().into_bytes();
                    for _ in 0..rng.gen_range(1..4) {
                        let at = rng.gen_range(0..bytes.len());
                        bytes[at] = *b"\",\\= x\r".get(rng.gen_range(0..7)).unwrap_or(&b'x');
                    }
                    bytes.truncate(rng.gen_range(0..=bytes.len()));
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            };
            if parse_authorization(&input).is_ok() {
                parsed_ok += 1;
            }
            let _ = a.authenticate("REGISTER", Some(&input), SRC, lookup, 1_000);
        }
        // The mutations must sometimes still parse, or this test exercised only the error paths.
        assert!(parsed_ok > 100, "{parsed_ok}");
    }

    #[test]
    fn right_password_is_accepted_with_either_algorithm() {
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let mut a = auth();
            let h = answer(&mut a, alg, "alice", "s3cret", 1_000);
            let got = a.verify("REGISTER", &h, SRC, lookup, 2_000);
            assert_eq!(
                got,
                Ok(Outcome::Ok {
                    user: "alice".into(),
                    algorithm: alg
                })
            );
            // The method is part of the hash.
            let mut a = auth();
            let h = answer(&mut a, alg, "alice", "s3cret", 1_000);
            assert!(matches!(
                a.verify("INVITE", &h, SRC, lookup, 2_000),
                Ok(Outcome::Fail { .. })
            ));
        }
        // Upper-case hex in the response is the same number.
        let mut a = auth();
        let h = answer(&mut a, Algorithm::Md5, "alice", "s3cret", 0);
        let start = h.find("response=\"").unwrap() + 10;
        let upper = format!(
            "{}{}{}",
            &h[..start],
            h[start..start + 32].to_uppercase(),
            &h[start + 32..]
        );
        assert_ne!(upper, h);
        assert!(matches!(
            a.verify("REGISTER", &upper, SRC, lookup, 0),
            Ok(Outcome::Ok { .. })
        ));
    }

    #[test]
    fn rfc2069_form_only_for_md5() {
        let mut a = auth();
        let c = a.challenge(SRC, false, 0);
        let nonce = nonce_of(&c[0]);
        let no_qop = |alg: Algorithm| {
            let h = ha1(alg, "alice", REALM, "s3cret");
            let r = response_for(alg, &h, "REGISTER", URI, &nonce, None);
            format!(
                "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", \
                 response=\"{r}\", algorithm={}",
                alg.name()
            )
        };
        // The RFC 2069 formula, spelt out independently: MD5(HA1:nonce:MD5(method:uri)).
        let ha2 = hex(&Md5::digest(format!("REGISTER:{URI}").as_bytes()));
        let h1 = ha1(Algorithm::Md5, "alice", REALM, "s3cret");
        let want = hex(&Md5::digest(format!("{h1}:{nonce}:{ha2}").as_bytes()));
        assert!(no_qop(Algorithm::Md5).contains(&want));
        assert!(matches!(
            a.verify("REGISTER", &no_qop(Algorithm::Md5), SRC, lookup, 1),
            Ok(Outcome::Ok { .. })
        ));
        // Without a counter the nonce is good once.
        assert_eq!(
            a.verify("REGISTER", &no_qop(Algorithm::Md5), SRC, lookup, 2),
            Ok(Outcome::Stale)
        );
        assert_eq!(
            a.verify("REGISTER", &no_qop(Algorithm::Sha256), SRC, lookup, 1),
            Err(VerifyError::UnsupportedQop(String::new()))
        );
    }

    #[test]
    fn unknown_user_and_wrong_password_are_indistinguishable() {
        let calls = Cell::new(0);
        // Stored HA1s, as agents.toml holds them: looking one up hashes nothing.
        let stored = [
            lookup("alice", REALM, Algorithm::Md5),
            lookup("alice", REALM, Algorithm::Sha256),
        ];
        let counting = |u: &str, r: &str, alg| {
            calls.set(calls.get() + 1);
            let slot = if alg == Algorithm::Md5 { 0 } else { 1 };
            (u == "alice" && r == REALM)
                .then(|| stored[slot].clone())
                .flatten()
        };
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            for (at, label) in [(1_000, "fresh"), (1_000 + 301_000, "expired")] {
                // Each attempt on its own authenticator, so both start from the same state.
                let attempt = |user: &str| {
                    let mut a = auth();
                    let h = answer(&mut a, alg, user, "guess", 1_000);
                    let before = calls.get();
                    let hashes_before = HASHES.with(Cell::get);
                    let outcome = a.verify("REGISTER", &h, SRC, counting, at);
                    let decision = a.authenticate("REGISTER", Some(&h), SRC, counting, at);
                    let hashes = HASHES.with(Cell::get) - hashes_before;
                    (
                        outcome,
                        decision,
                        calls.get() - before,
                        a.throttle().len(),
                        hashes,
                    )
                };
                let (o1, d1, looked1, t1, h1) = attempt("alice");
                let (o2, d2, looked2, t2, h2) = attempt("mallory");
                // The same digest work (HA2 and response, twice), so the same time, give or
                // take the lookup itself.
                assert_eq!((h1, h2), (4, 4), "{alg:?} {label}");
                assert_eq!(
                    o1,
                    Ok(Outcome::Fail {
                        claimed_user: "alice".into()
                    }),
                    "{alg:?} {label}"
                );
                assert_eq!(
                    o2,
                    Ok(Outcome::Fail {
                        claimed_user: "mallory".into()
                    }),
                    "{alg:?} {label}"
                );
                assert_eq!(d1, Decision::Forbidden, "{alg:?} {label}");
                assert_eq!(d1, d2);
                // Both looked the user up (once per call) and both count as a failure.
                assert_eq!((looked1, looked2), (2, 2));
                assert_eq!((t1, t2), (1, 1));
            }
        }
        // The checks that can refuse before the lookup do not depend on the user: a nonce for
        // another source is refused without looking anyone up.
        let mut a = auth();
        let h = answer(&mut a, Algorithm::Md5, "alice", "s3cret", 0);
        let before = calls.get();
        assert_eq!(
            a.verify("REGISTER", &h, "203.0.113.9", counting, 0),
            Err(VerifyError::ForeignNonce)
        );
        assert_eq!(calls.get(), before);
    }

    #[test]
    fn dummy_ha1_looks_like_a_real_one() {
        let a = auth();
        assert_eq!(a.dummy_md5.len(), 32);
        assert_eq!(a.dummy_sha256.len(), 64);
        assert!(a
            .dummy_sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn expired_nonce_with_right_response_is_stale() {
        let mut a = auth();
        let h = answer(&mut a, Algorithm::Sha256, "alice", "s3cret", 10_000);
        // Exactly the lifetime is still fresh; one millisecond later is not.
        let mut b = auth();
        let h2 = answer(&mut b, Algorithm::Sha256, "alice", "s3cret", 10_000);
        assert!(matches!(
            b.verify("REGISTER", &h2, SRC, lookup, 310_000),
            Ok(Outcome::Ok { .. })
        ));
        assert_eq!(
            a.verify("REGISTER", &h, SRC, lookup, 310_001),
            Ok(Outcome::Stale)
        );
        let d = a.authenticate("REGISTER", Some(&h), SRC, lookup, 310_001);
        match d {
            Decision::Challenge { www_authenticate } => {
                assert!(www_authenticate.iter().all(|v| v.ends_with("stale=true")));
                // The new nonce is fresh and works.
                let n = nonce_of(&www_authenticate[0]);
                let again = authorization(
                    Algorithm::Sha256,
                    "alice",
                    "s3cret",
                    &n,
                    &a.opaque.clone(),
                    "00000001",
                );
                assert!(matches!(
                    a.verify("REGISTER", &again, SRC, lookup, 310_002),
                    Ok(Outcome::Ok { .. })
                ));
            }
            other => panic!("{other:?}"),
        }
        assert!(a.throttle().is_empty(), "stale is not a failure");
    }

    #[test]
    fn nc_must_grow_per_nonce() {
        let mut a = auth();
        let c = a.challenge(SRC, false, 0);
        let (n, o) = (nonce_of(&c[0]), opaque_of(&c[0]));
        let with_nc = |nc: &str| authorization(Algorithm::Sha256, "alice", "s3cret", &n, &o, nc);
        assert!(matches!(
            a.verify("REGISTER", &with_nc("00000001"), SRC, lookup, 1),
            Ok(Outcome::Ok { .. })
        ));
        // A replay of the same request.
        assert_eq!(
            a.verify("REGISTER", &with_nc("00000001"), SRC, lookup, 2),
            Ok(Outcome::Stale)
        );
        assert!(matches!(
            a.verify("REGISTER", &with_nc("00000002"), SRC, lookup, 3),
            Ok(Outcome::Ok { .. })
        ));
        assert!(matches!(
            a.verify("REGISTER", &with_nc("0000000A"), SRC, lookup, 4),
            Ok(Outcome::Ok { .. })
        ));
        assert_eq!(
            a.verify("REGISTER", &with_nc("00000009"), SRC, lookup, 5),
            Ok(Outcome::Stale)
        );
        // nc starts at 1.
        let c = a.challenge(SRC, false, 0);
        let zero = authorization(
            Algorithm::Sha256,
            "alice",
            "s3cret",
            &nonce_of(&c[0]),
            &o,
            "00000000",
        );
        assert_eq!(
            a.verify("REGISTER", &zero, SRC, lookup, 5),
            Ok(Outcome::Stale)
        );
    }

    #[test]
    fn replay_table_is_bounded_without_reopening_replays() {
        let config = DigestConfig {
            replay_capacity: 2,
            ..DigestConfig::default()
        };
        let mut a = Authenticator::new(config, SECRET);
        let fresh =
            |a: &mut Authenticator, at: u64| answer(a, Algorithm::Sha256, "alice", "s3cret", at);
        let old_unused = fresh(&mut a, 5);
        let first = fresh(&mut a, 10);
        let second = fresh(&mut a, 20);
        let third = fresh(&mut a, 30);
        for h in [&first, &second, &third] {
            assert!(matches!(
                a.verify("REGISTER", h, SRC, lookup, 40),
                Ok(Outcome::Ok { .. })
            ));
        }
        assert_eq!(a.used.len(), 2);
        // `first` was evicted, yet its replay is still refused, as is an unused nonce issued
        // before it; a later nonce is unaffected.
        assert_eq!(
            a.verify("REGISTER", &first, SRC, lookup, 41),
            Ok(Outcome::Stale)
        );
        assert_eq!(
            a.verify("REGISTER", &old_unused, SRC, lookup, 41),
            Ok(Outcome::Stale)
        );
        assert_eq!(
            a.verify("REGISTER", &second, SRC, lookup, 41),
            Ok(Outcome::Stale)
        );
        let later = fresh(&mut a, 50);
        assert!(matches!(
            a.verify("REGISTER", &later, SRC, lookup, 51),
            Ok(Outcome::Ok { .. })
        ));
        // Expired entries leave the table.
        let much_later = fresh(&mut a, 1_000_000);
        assert!(matches!(
            a.verify("REGISTER", &much_later, SRC, lookup, 1_000_001),
            Ok(Outcome::Ok { .. })
        ));
        assert_eq!(a.used.len(), 1);
    }

    #[test]
    fn credentials_we_cannot_check_get_a_fresh_challenge_and_do_not_count() {
        let mut a = auth();
        let good = answer(&mut a, Algorithm::Sha256, "alice", "s3cret", 0);
        let nonce = nonce_of(&good[good.find("nonce=").unwrap() - 1..]);
        // Flip one hex digit of the tag, then of the time.
        let mut forged = nonce.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        let forged = good.replace(&nonce, std::str::from_utf8(&forged).unwrap());
        let mut later = nonce.clone().into_bytes();
        later[15] = if later[15] == b'0' { b'1' } else { b'0' };
        let later = good.replace(&nonce, std::str::from_utf8(&later).unwrap());
        let other_secret = {
            let mut b = Authenticator::new(DigestConfig::default(), [8; 32]);
            answer(&mut b, Algorithm::Sha256, "alice", "s3cret", 0)
                .replace(&b.opaque.clone(), &a.opaque.clone())
        };
        let cases = [
            (forged, VerifyError::ForeignNonce),
            (later, VerifyError::ForeignNonce),
            (other_secret, VerifyError::ForeignNonce),
            (
                good.replace("realm=\"civicline\"", "realm=\"elsewhere\""),
                VerifyError::WrongRealm("elsewhere".into()),
            ),
            (
                good.replace("algorithm=SHA-256", "algorithm=SHA-256-sess"),
                VerifyError::UnsupportedAlgorithm("SHA-256-sess".into()),
            ),
            (
                good.replace("qop=auth", "qop=auth-int"),
                VerifyError::UnsupportedQop("auth-int".into()),
            ),
            (
                good.replace(&a.opaque.clone(), "0123"),
                VerifyError::WrongOpaque,
            ),
            (format!("{good}, userhash=true"), VerifyError::UserHash),
        ];
        for (h, want) in cases {
            assert_eq!(a.verify("REGISTER", &h, SRC, lookup, 1), Err(want.clone()));
            let d = a.authenticate("REGISTER", Some(&h), SRC, lookup, 1);
            assert_eq!(d.status(), 401, "{want:?}");
            match d {
                Decision::Challenge { www_authenticate } => {
                    assert!(!www_authenticate[0].contains("stale"), "{want:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(a.throttle().is_empty());
        // A missing opaque is tolerated (some phones drop it); the original still works.
        let no_opaque = good.replace(&format!(", opaque=\"{}\"", a.opaque.clone()), "");
        assert_ne!(no_opaque, good);
        assert!(matches!(
            a.verify("REGISTER", &no_opaque, SRC, lookup, 1),
            Ok(Outcome::Ok { .. })
        ));

        // With MD5 switched off, MD5 credentials are not checked.
        let config = DigestConfig {
            offer_md5: false,
            ..DigestConfig::default()
        };
        let mut b = Authenticator::new(config, SECRET);
        let md5 = answer(&mut b, Algorithm::Md5, "alice", "s3cret", 0);
        assert_eq!(
            b.verify("REGISTER", &md5, SRC, lookup, 1),
            Err(VerifyError::UnsupportedAlgorithm("MD5".into()))
        );
        let no_alg = md5.replace(", algorithm=MD5", "");
        assert_eq!(
            b.verify("REGISTER", &no_alg, SRC, lookup, 1),
            Err(VerifyError::UnsupportedAlgorithm("MD5".into()))
        );
    }

    #[test]
    fn policy_statuses() {
        let mut a = auth();
        let d = a.authenticate("REGISTER", None, SRC, lookup, 0);
        assert_eq!(d.status(), 401);
        let d = a.authenticate("REGISTER", Some("Basic YWxpY2U6czNjcmV0"), SRC, lookup, 0);
        assert!(
            matches!(&d, Decision::Challenge { www_authenticate } if www_authenticate.len() == 2)
        );
        let d = a.authenticate("REGISTER", Some("Digest username="), SRC, lookup, 0);
        assert_eq!(d.status(), 400);
        assert!(matches!(&d, Decision::BadRequest { reason } if !reason.contains('\n')));
        let wrong = answer(&mut a, Algorithm::Sha256, "alice", "nope", 0);
        assert_eq!(
            a.authenticate("REGISTER", Some(&wrong), SRC, lookup, 0),
            Decision::Forbidden
        );
        let right = answer(&mut a, Algorithm::Sha256, "alice", "s3cret", 0);
        let d = a.authenticate("REGISTER", Some(&right), SRC, lookup, 0);
        assert_eq!(
            d,
            Decision::Accept {
                user: "alice".into(),
                algorithm: Algorithm::Sha256
            }
        );
        assert_eq!(d.status(), 200);
        assert_eq!(Decision::Throttled { retry_after_s: 1 }.status(), 503);
    }

    #[test]
    fn throttled_source_gets_503_without_any_check_and_success_resets() {
        let mut a = auth();
        let free = a.config().throttle.free_failures;
        let mut now = 0;
        for _ in 0..free {
            let wrong = answer(&mut a, Algorithm::Md5, "alice", "nope", now);
            assert_eq!(
                a.authenticate("REGISTER", Some(&wrong), SRC, lookup, now),
                Decision::Forbidden
            );
            now += 10;
        }
        let wrong = answer(&mut a, Algorithm::Md5, "alice", "nope", now);
        assert_eq!(
            a.authenticate("REGISTER", Some(&wrong), SRC, lookup, now),
            Decision::Forbidden
        );
        // Now blocked for base_delay (1 s): even the right password is not looked at.
        let right = answer(&mut a, Algorithm::Md5, "alice", "s3cret", now);
        let looked = Cell::new(false);
        let spy = |u: &str, r: &str, alg| {
            looked.set(true);
            lookup(u, r, alg)
        };
        let d = a.authenticate("REGISTER", Some(&right), SRC, spy, now + 1);
        assert_eq!(d, Decision::Throttled { retry_after_s: 1 });
        assert_eq!(
            a.authenticate("REGISTER", None, SRC, spy, now + 1).status(),
            503
        );
        assert!(!looked.get());
        // Another source is not affected.
        let other = a.challenge("198.51.100.7", false, now);
        let h = authorization(
            Algorithm::Md5,
            "alice",
            "s3cret",
            &nonce_of(&other[0]),
            &opaque_of(&other[0]),
            "00000001",
        );
        assert!(matches!(
            a.authenticate("REGISTER", Some(&h), "198.51.100.7", lookup, now + 1),
            Decision::Accept { .. }
        ));
        // After the block the right password gets through and wipes the record.
        let d = a.authenticate("REGISTER", Some(&right), SRC, lookup, now + 1_000);
        assert!(matches!(d, Decision::Accept { .. }), "{d:?}");
        assert!(a.throttle().is_empty());
        assert_eq!(a.throttle().check(SRC, now + 1_000), Ok(()));
    }

    #[test]
    fn a_thousand_guesses_take_more_than_an_hour() {
        let mut a = auth();
        let mut now: u64 = 0;
        let mut guesses = 0;
        let mut refusals = 0;
        while guesses < 1000 {
            // The attacker gets a nonce whenever it likes (generous: a throttled source would
            // get 503 for that too) and answers at once.
            let h = answer(
                &mut a,
                Algorithm::Md5,
                "alice",
                &format!("guess{guesses}"),
                now,
            );
            match a.authenticate("REGISTER", Some(&h), SRC, lookup, now) {
                Decision::Forbidden => guesses += 1,
                Decision::Throttled { retry_after_s } => {
                    refusals += 1;
                    now += retry_after_s * 1000;
                }
                other => panic!("{other:?}"),
            }
        }
        // The 1000th guess lands when the block after the 999th ends: failures 1-5 are free,
        // 6-14 block 1, 2, 4, ..., 256 s (511 s), and 15-999 block 300 s each.
        let expected_s = 511 + (999 - 14) * 300;
        assert_eq!(expected_s, 296_011);
        assert_eq!(now, expected_s * 1000);
        assert!(now >= 3_600_000, "1000 guesses took only {now} ms");
        assert_eq!(refusals, 999 - 5);
    }

    #[test]
    fn throttle_schedule_memory_bound_and_forgetting() {
        let config = ThrottleConfig {
            max_sources: 3,
            ..ThrottleConfig::default()
        };
        let mut t = Throttle::new(config.clone());
        let delays: Vec<u64> = (1..=16).map(|f| t.delay_after(f)).collect();
        assert_eq!(
            delays,
            [
                0, 0, 0, 0, 0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000,
                256_000, 300_000, 300_000
            ]
        );
        assert_eq!(t.delay_after(u32::MAX), 300_000);

        for (i, source) in ["a", "b", "c", "d"].iter().enumerate() {
            for _ in 0..6 {
                t.record_failure(source, i as u64 * 10);
            }
        }
        assert_eq!(t.len(), 3);
        // "a" failed longest ago and was evicted; the others are still blocked.
        assert_eq!(t.check("a", 31), Ok(()));
        assert_eq!(t.check("d", 31), Err(999));
        assert!(t.check("b", 31).is_err());
        assert_eq!(t.sources.len(), t.by_age.len());

        // A source quiet for forget_after_ms starts from zero: its next failure is free.
        let mut t = Throttle::new(config.clone());
        for _ in 0..10 {
            t.record_failure("x", 0);
        }
        t.record_failure("x", config.forget_after_ms);
        assert_eq!(t.check("x", config.forget_after_ms), Ok(()));
        // ... and forgotten sources go first when room is needed, whatever their age order.
        t.record_failure("y", config.forget_after_ms * 3);
        assert_eq!(t.len(), 1);
    }
}
