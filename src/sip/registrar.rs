//! The registrar (RFC 3261 section 10.3) for agents' phones: which Contact URIs each agent is
//! reachable at and until when, keyed by the user that digest authentication accepted.
//!
//! Pure: requests come in as raw header values, time as `now_ms`. The engine calls
//! [`Registrar::register`] for an authenticated REGISTER, answers 200 with the returned
//! Contacts (or the error's status), calls [`Registrar::expire`] when
//! [`Registrar::poll_timeout`] comes due, and reads [`Registrar::bindings`] to reach an agent.
//!
//! Contact URIs are stored and returned exactly as registered: phones put state in them
//! (baresip's `;transport=udp`, a `-0x...` suffix on the user part) and expect it back verbatim
//! in requests and in the 200's Contact list. Bindings therefore match by exact URI text, not by
//! RFC 3261 section 19.1.4 URI equivalence; a phone that re-registers a differently spelled URI
//! gets a second binding and the old one lapses.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Expiry limits and memory bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Shorter non-zero requests get 423 with `Min-Expires` (section 10.3 step 7).
    pub min_expires_s: u32,
    /// Longer requests are shortened to this.
    pub max_expires_s: u32,
    /// Used when neither the contact's `expires` nor an `Expires` header says, or when the
    /// value is malformed (RFC 3261 section 20.19 says to read a malformed value as 3600).
    pub default_expires_s: u32,
    /// Most bindings per agent; beyond it the least recently refreshed are dropped.
    pub max_bindings_per_agent: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires_s: 60,
            max_expires_s: 3600,
            default_expires_s: 3600,
            max_bindings_per_agent: 8,
        }
    }
}

/// One registered contact of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI exactly as the phone sent it, without the angle brackets.
    pub uri: String,
    pub expires_at_ms: u64,
    /// Call-ID and CSeq of the REGISTER that last set it (section 10.3 step 7 ordering).
    pub call_id: String,
    pub cseq: u32,
    /// When it was last registered or refreshed.
    pub updated_ms: u64,
}

/// The parts of an authenticated REGISTER the registrar needs, as raw header values.
#[derive(Debug, Clone, Copy)]
pub struct RegisterRequest<'a> {
    /// The user digest authentication accepted (the engine checks it may register the To AOR).
    pub user: &'a str,
    /// Every Contact header value in order; each may list several contacts separated by commas.
    /// Empty for a query.
    pub contacts: &'a [&'a str],
    /// The `Expires` header value, if any.
    pub expires: Option<&'a str>,
    pub call_id: &'a str,
    /// The CSeq number.
    pub cseq: u32,
}

/// How the agent's reachability changed; what the engine tells the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Unchanged,
    CameOnline,
    WentOffline,
}

/// A successful REGISTER: the Contact header values for the 200 OK (every current binding with
/// its remaining `expires`), and the presence change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub contacts: Vec<String>,
    pub presence: Presence,
}

/// Why a REGISTER was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegisterError {
    #[error("bad Contact: {0}")]
    BadContact(&'static str),
    #[error("Contact * needs to be alone and with Expires: 0")]
    BadWildcard,
    #[error("Interval Too Brief")]
    IntervalTooBrief { min_expires_s: u32 },
    #[error("CSeq not above the binding's")]
    OutOfOrder,
}

impl RegisterError {
    /// The status to answer. 423 carries `Min-Expires` ([`RegisterError::min_expires`]).
    /// Section 10.3 only says an out-of-order request "fails"; 400 says it is the request's fault.
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::IntervalTooBrief { .. } => 423,
            _ => 400,
        }
    }

    /// The `Min-Expires` value to send with a 423.
    pub fn min_expires(&self) -> Option<u32> {
        match self {
            RegisterError::IntervalTooBrief { min_expires_s } => Some(*min_expires_s),
            _ => None,
        }
    }
}

/// One parsed element of a Contact header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContactSpec {
    uri: String,
    /// The raw `expires` parameter, if present.
    expires: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Contacts {
    Wildcard,
    List(Vec<ContactSpec>),
}

/// Splits at `sep` outside quoted strings and angle brackets.
fn split_outside(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let mut pieces = Vec::new();
    let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            b'"' => in_quotes = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            _ if c == sep && !in_angle => {
                pieces.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&s[start..]);
    pieces
}

/// Index of the first `wanted` outside a quoted string.
fn find_unquoted(s: &str, wanted: u8) -> Option<usize> {
    let (mut in_quotes, mut escaped) = (false, false);
    for (i, &c) in s.as_bytes().iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_quotes = false;
            }
        } else if c == b'"' {
            in_quotes = true;
        } else if c == wanted {
            return Some(i);
        }
    }
    None
}

/// Parses one contact: `["display"] <uri>;params` or `uri;params`.
fn parse_contact(element: &str) -> Result<ContactSpec, RegisterError> {
    let element = element.trim();
    let (uri, params) = match find_unquoted(element, b'<') {
        Some(open) => {
            let after = &element[open + 1..];
            let close = after
                .find('>')
                .ok_or(RegisterError::BadContact("no closing >"))?;
            (&after[..close], &after[close + 1..])
        }
        None => {
            if element.contains('"') {
                return Err(RegisterError::BadContact("display name without <uri>"));
            }
            // addr-spec form: header parameters start at the first `;` (URI parameters need <>).
            match element.find(';') {
                Some(at) => (&element[..at], &element[at..]),
                None => (element, ""),
            }
        }
    };
    if uri.is_empty() || !uri.contains(':') || uri.chars().any(char::is_whitespace) {
        return Err(RegisterError::BadContact("uri"));
    }
    let params = params.trim();
    let mut expires = None;
    if !params.is_empty() {
        let params = params
            .strip_prefix(';')
            .ok_or(RegisterError::BadContact("text after uri"))?;
        for param in split_outside(params, b';') {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (param.trim(), None),
            };
            if name.is_empty() {
                return Err(RegisterError::BadContact("empty parameter"));
            }
            if name.eq_ignore_ascii_case("expires") {
                if expires.is_some() {
                    return Err(RegisterError::BadContact("expires given twice"));
                }
                expires = Some(value.unwrap_or_default().to_string());
            }
        }
    }
    Ok(ContactSpec {
        uri: uri.to_string(),
        expires,
    })
}

fn parse_contacts(values: &[&str]) -> Result<Contacts, RegisterError> {
    let mut list = Vec::new();
    let mut wildcard = false;
    for value in values {
        for element in split_outside(value, b',') {
            if element.trim().is_empty() {
                return Err(RegisterError::BadContact("empty element"));
            }
            if element.trim() == "*" {
                wildcard = true;
            } else {
                list.push(parse_contact(element)?);
            }
        }
    }
    match (wildcard, list.is_empty()) {
        (true, true) => Ok(Contacts::Wildcard),
        (true, false) => Err(RegisterError::BadWildcard),
        (false, _) => Ok(Contacts::List(list)),
    }
}

/// delta-seconds; `None` when malformed. Values beyond 2^32-1 are read as 2^32-1 (section 20.19).
fn parse_delta_seconds(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u32>().unwrap_or(u32::MAX))
}

/// All bindings, and the expiry timers ordered by deadline.
#[derive(Debug, Clone)]
pub struct Registrar {
    config: RegistrarConfig,
    agents: HashMap<String, Vec<Binding>>,
    /// (expires_at_ms, user, uri), one per binding.
    timers: BTreeSet<(u64, String, String)>,
}

impl Registrar {
    pub fn new(config: RegistrarConfig) -> Registrar {
        Registrar {
            config,
            agents: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// Applies an authenticated REGISTER: all or nothing, in the order of section 10.3.
    pub fn register(
        &mut self,
        req: &RegisterRequest<'_>,
        now_ms: u64,
    ) -> Result<Registered, RegisterError> {
        let contacts = parse_contacts(req.contacts)?;
        let header_expires = req.expires.map(parse_delta_seconds);
        let current = self.agents.get(req.user);
        // Online as far as the engine was told: bindings that lapsed but were not yet reported
        // by `expire` still count, so every offline transition is reported exactly once.
        let was_online = current.is_some();
        let mut next: Vec<Binding> = current
            .map(|b| {
                b.iter()
                    .filter(|b| b.expires_at_ms > now_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();

        match contacts {
            Contacts::Wildcard => {
                // Step 6: `*` only with Expires: 0, and it removes every binding, subject to the
                // same Call-ID/CSeq ordering as a single removal.
                if header_expires != Some(Some(0)) {
                    return Err(RegisterError::BadWildcard);
                }
                if next.iter().any(|b| Self::out_of_order(b, req)) {
                    return Err(RegisterError::OutOfOrder);
                }
                next.clear();
            }
            Contacts::List(specs) => {
                // Decide every expiry first so a 423 leaves the bindings untouched.
                let mut planned = Vec::with_capacity(specs.len());
                for spec in specs {
                    let asked = match (&spec.expires, header_expires) {
                        (Some(param), _) => parse_delta_seconds(param),
                        (None, Some(header)) => header,
                        (None, None) => Some(self.config.default_expires_s),
                    }
                    .unwrap_or(self.config.default_expires_s);
                    if asked != 0 && asked < self.config.min_expires_s {
                        return Err(RegisterError::IntervalTooBrief {
                            min_expires_s: self.config.min_expires_s,
                        });
                    }
                    planned.push((spec.uri, asked.min(self.config.max_expires_s)));
                }
                // Ordering is judged against the bindings as they were before this request, so
                // one URI listed twice is not its own predecessor (the later entry wins).
                let stale = planned.iter().any(|(uri, _)| {
                    next.iter()
                        .any(|b| &b.uri == uri && Self::out_of_order(b, req))
                });
                if stale {
                    return Err(RegisterError::OutOfOrder);
                }
                for (uri, expires_s) in planned {
                    next.retain(|b| b.uri != uri);
                    if expires_s > 0 {
                        next.push(Binding {
                            uri,
                            expires_at_ms: now_ms.saturating_add(u64::from(expires_s) * 1000),
                            call_id: req.call_id.to_string(),
                            cseq: req.cseq,
                            updated_ms: now_ms,
                        });
                    }
                }
                // Bound memory per agent: drop the least recently refreshed.
                let cap = self.config.max_bindings_per_agent.max(1);
                while next.len() > cap {
                    let oldest = (0..next.len())
                        .min_by_key(|&i| (next[i].updated_ms, next[i].expires_at_ms))
                        .unwrap_or(0);
                    next.remove(oldest);
                }
            }
        }

        self.replace(req.user, next);
        let is_online = self.agents.contains_key(req.user);
        let presence = match (was_online, is_online) {
            (false, true) => Presence::CameOnline,
            (true, false) => Presence::WentOffline,
            _ => Presence::Unchanged,
        };
        Ok(Registered {
            contacts: self.contacts_for_200(req.user, now_ms),
            presence,
        })
    }

    /// Section 10.3 step 7: the same Call-ID with a CSeq not above the stored one is stale.
    fn out_of_order(binding: &Binding, req: &RegisterRequest<'_>) -> bool {
        binding.call_id == req.call_id && req.cseq <= binding.cseq
    }

    /// Installs an agent's bindings and keeps the timer index in step.
    fn replace(&mut self, user: &str, bindings: Vec<Binding>) {
        if let Some(old) = self.agents.remove(user) {
            for b in old {
                self.timers
                    .remove(&(b.expires_at_ms, user.to_string(), b.uri));
            }
        }
        if bindings.is_empty() {
            return;
        }
        for b in &bindings {
            self.timers
                .insert((b.expires_at_ms, user.to_string(), b.uri.clone()));
        }
        self.agents.insert(user.to_string(), bindings);
    }

    /// Contact values for a 200 OK: `<uri>;expires=N` with the seconds left, rounded up so a
    /// live binding never shows 0 (which would read as removed).
    pub fn contacts_for_200(&self, user: &str, now_ms: u64) -> Vec<String> {
        self.bindings(user)
            .iter()
            .filter(|b| b.expires_at_ms > now_ms)
            .map(|b| {
                let left_s = (b.expires_at_ms - now_ms).div_ceil(1000);
                format!("<{}>;expires={left_s}", b.uri)
            })
            .collect()
    }

    /// Drops bindings whose time has come; returns the agents left with none (went offline),
    /// sorted.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let mut touched = BTreeSet::new();
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, user, uri)) = self.timers.pop_first() else {
                break;
            };
            if let Some(bindings) = self.agents.get_mut(&user) {
                bindings.retain(|b| !(b.uri == uri && b.expires_at_ms <= now_ms));
            }
            touched.insert(user);
        }
        touched
            .into_iter()
            .filter(|user| {
                let gone = self.agents.get(user).is_some_and(Vec::is_empty);
                if gone {
                    self.agents.remove(user);
                }
                gone
            })
            .collect()
    }

    /// When [`Registrar::expire`] next has work: the earliest binding expiry.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// The agent's bindings in registration order (may include ones lapsed since the last
    /// `expire`; check `expires_at_ms` when routing).
    pub fn bindings(&self, user: &str) -> &[Binding] {
        self.agents.get(user).map_or(&[], Vec::as_slice)
    }

    /// Whether the agent has a binding alive at `now_ms`.
    pub fn is_online(&self, user: &str, now_ms: u64) -> bool {
        self.bindings(user).iter().any(|b| b.expires_at_ms > now_ms)
    }

    /// Agents with at least one binding (not yet expired by [`Registrar::expire`]).
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARESIP: &str = "<sip:alice-0x55d1c2a0@10.0.0.5:5060;transport=udp>;expires=600;\
                           +sip.instance=\"<urn:uuid:0f1e2d3c-aaaa-bbbb-cccc-000000000001>\"";
    const BARESIP_URI: &str = "sip:alice-0x55d1c2a0@10.0.0.5:5060;transport=udp";

    fn req<'a>(
        contacts: &'a [&'a str],
        expires: Option<&'a str>,
        cseq: u32,
    ) -> RegisterRequest<'a> {
        RegisterRequest {
            user: "alice",
            contacts,
            expires,
            call_id: "call-1@10.0.0.5",
            cseq,
        }
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig::default())
    }

    fn uris<'a>(r: &'a Registrar, user: &str) -> Vec<&'a str> {
        r.bindings(user).iter().map(|b| b.uri.as_str()).collect()
    }

    #[test]
    fn new_binding_keeps_the_uri_verbatim_and_reports_online() {
        let mut r = registrar();
        let ok = r.register(&req(&[BARESIP], None, 1), 1_000).unwrap();
        assert_eq!(ok.presence, Presence::CameOnline);
        assert_eq!(ok.contacts, [format!("<{BARESIP_URI}>;expires=600")]);
        assert_eq!(uris(&r, "alice"), [BARESIP_URI]);
        assert_eq!(r.bindings("alice")[0].expires_at_ms, 601_000);
        assert_eq!(r.poll_timeout(), Some(601_000));
        assert!(r.is_online("alice", 600_999));
        assert!(!r.is_online("alice", 601_000));
        assert!(!r.is_online("bob", 0));
        assert_eq!(r.bindings("bob"), []);

        // Differently spelt URIs are different bindings: nothing is normalised.
        let upper = "<SIP:alice-0x55d1c2a0@10.0.0.5:5060;transport=UDP>";
        let ok = r.register(&req(&[upper], Some("600"), 2), 2_000).unwrap();
        assert_eq!(ok.presence, Presence::Unchanged);
        assert_eq!(
            uris(&r, "alice"),
            [
                BARESIP_URI,
                "SIP:alice-0x55d1c2a0@10.0.0.5:5060;transport=UDP"
            ]
        );
    }

    #[test]
    fn expiry_comes_from_param_then_header_then_default() {
        let mut r = registrar();
        let contacts = [
            "<sip:a@h1>;expires=120",
            "<sip:a@h2>",
            "sip:a@h3;expires=bogus",
        ];
        let ok = r.register(&req(&contacts, Some("300"), 1), 0).unwrap();
        assert_eq!(
            ok.contacts,
            [
                "<sip:a@h1>;expires=120",
                "<sip:a@h2>;expires=300",
                "<sip:a@h3>;expires=3600"
            ]
        );
        let mut r = registrar();
        let ok = r.register(&req(&["<sip:a@h2>"], None, 1), 0).unwrap();
        assert_eq!(ok.contacts, ["<sip:a@h2>;expires=3600"]);
        // A malformed header reads as the default too.
        let mut r = registrar();
        let ok = r
            .register(&req(&["<sip:a@h2>"], Some("soon"), 1), 0)
            .unwrap();
        assert_eq!(ok.contacts, ["<sip:a@h2>;expires=3600"]);
    }

    #[test]
    fn too_long_is_clamped_to_max() {
        let mut r = registrar();
        let ok = r
            .register(
                &req(
                    &["<sip:a@h>;expires=7200", "<sip:a@g>"],
                    Some("99999999999999"),
                    1,
                ),
                0,
            )
            .unwrap();
        assert_eq!(
            ok.contacts,
            ["<sip:a@h>;expires=3600", "<sip:a@g>;expires=3600"]
        );
        assert_eq!(r.poll_timeout(), Some(3_600_000));
    }

    #[test]
    fn too_short_is_423_and_changes_nothing() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@keep>"], Some("600"), 1), 0)
            .unwrap();
        let before = r.bindings("alice").to_vec();
        // One acceptable contact and one too short: the whole request is refused.
        let err = r
            .register(
                &req(
                    &["<sip:a@new>;expires=600", "<sip:a@keep>;expires=59"],
                    None,
                    2,
                ),
                10,
            )
            .unwrap_err();
        assert_eq!(err, RegisterError::IntervalTooBrief { min_expires_s: 60 });
        assert_eq!(err.status(), 423);
        assert_eq!(err.min_expires(), Some(60));
        assert_eq!(r.bindings("alice"), before.as_slice());
        // Exactly the minimum is fine, and 0 is a removal, not "too brief".
        let ok = r
            .register(&req(&["<sip:a@keep>"], Some("60"), 3), 10)
            .unwrap();
        assert_eq!(ok.contacts, ["<sip:a@keep>;expires=60"]);
        let ok = r
            .register(&req(&["<sip:a@keep>"], Some("0"), 4), 20)
            .unwrap();
        assert_eq!(ok.contacts, Vec::<String>::new());
        assert_eq!(ok.presence, Presence::WentOffline);
    }

    #[test]
    fn refresh_extends_the_same_binding() {
        let mut r = registrar();
        r.register(&req(&[BARESIP], None, 1), 0).unwrap();
        let ok = r.register(&req(&[BARESIP], None, 2), 500_000).unwrap();
        assert_eq!(ok.presence, Presence::Unchanged);
        assert_eq!(r.bindings("alice").len(), 1);
        assert_eq!(r.bindings("alice")[0].expires_at_ms, 1_100_000);
        assert_eq!(r.bindings("alice")[0].cseq, 2);
        // The old deadline is gone from the timers.
        assert_eq!(r.poll_timeout(), Some(1_100_000));
        assert_eq!(r.expire(600_000), Vec::<String>::new());
        assert!(r.is_online("alice", 600_000));
    }

    #[test]
    fn expires_zero_removes_one_binding() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@desk>", "<sip:a@soft>"], None, 1), 0)
            .unwrap();
        let ok = r
            .register(&req(&["<sip:a@desk>;expires=0"], None, 2), 1_000)
            .unwrap();
        assert_eq!(ok.presence, Presence::Unchanged);
        assert_eq!(ok.contacts, ["<sip:a@soft>;expires=3599"]);
        assert_eq!(uris(&r, "alice"), ["sip:a@soft"]);
        // Removing something never registered is fine and changes nothing.
        let ok = r
            .register(&req(&["<sip:a@other>"], Some("0"), 3), 1_000)
            .unwrap();
        assert_eq!(ok.contacts.len(), 1);
        let ok = r
            .register(&req(&["<sip:a@soft>"], Some("0"), 4), 2_000)
            .unwrap();
        assert_eq!(ok.presence, Presence::WentOffline);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.agents().count(), 0);
    }

    #[test]
    fn wildcard_with_expires_zero_removes_all() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@desk>", "<sip:a@soft>"], None, 1), 0)
            .unwrap();
        let mut other = req(&["<sip:b@desk>"], None, 1);
        other.user = "bob";
        r.register(&other, 0).unwrap();

        assert_eq!(
            r.register(&req(&["*"], None, 2), 0),
            Err(RegisterError::BadWildcard)
        );
        assert_eq!(
            r.register(&req(&["*"], Some("60"), 2), 0),
            Err(RegisterError::BadWildcard)
        );
        assert_eq!(
            r.register(&req(&["*", "<sip:a@x>"], Some("0"), 2), 0),
            Err(RegisterError::BadWildcard)
        );
        assert_eq!(
            r.register(&req(&["*, <sip:a@x>"], Some("0"), 2), 0),
            Err(RegisterError::BadWildcard)
        );
        assert_eq!(RegisterError::BadWildcard.status(), 400);
        assert_eq!(r.bindings("alice").len(), 2);

        let ok = r.register(&req(&[" * "], Some("0"), 2), 0).unwrap();
        assert_eq!(ok.presence, Presence::WentOffline);
        assert!(ok.contacts.is_empty());
        assert_eq!(r.bindings("alice"), []);
        assert_eq!(uris(&r, "bob"), ["sip:b@desk"]);
        assert_eq!(r.poll_timeout(), Some(3_600_000));
    }

    #[test]
    fn cseq_ordering_within_one_call_id() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@desk>"], None, 5), 0).unwrap();
        // Same Call-ID, CSeq not higher: refused, nothing changed (also for `*`).
        assert_eq!(
            r.register(&req(&["<sip:a@desk>"], Some("0"), 5), 1),
            Err(RegisterError::OutOfOrder)
        );
        assert_eq!(
            r.register(&req(&["<sip:a@desk>"], Some("0"), 4), 1),
            Err(RegisterError::OutOfOrder)
        );
        assert_eq!(
            r.register(&req(&["*"], Some("0"), 3), 1),
            Err(RegisterError::OutOfOrder)
        );
        assert_eq!(RegisterError::OutOfOrder.status(), 400);
        assert_eq!(uris(&r, "alice"), ["sip:a@desk"]);
        // Another Call-ID (the phone restarted) may use any CSeq.
        let mut restarted = req(&["<sip:a@desk>"], Some("120"), 1);
        restarted.call_id = "call-2@10.0.0.5";
        let ok = r.register(&restarted, 2).unwrap();
        assert_eq!(ok.contacts, ["<sip:a@desk>;expires=120"]);
        // The same URI twice in one request is not out of order with itself; the last wins.
        let ok = r
            .register(
                &req(&["<sip:a@x>;expires=100", "<sip:a@x>;expires=200"], None, 9),
                3,
            )
            .unwrap();
        assert_eq!(
            ok.contacts,
            ["<sip:a@desk>;expires=120", "<sip:a@x>;expires=200"]
        );
    }

    #[test]
    fn expire_drops_lapsed_bindings_and_reports_agents_offline() {
        let mut r = registrar();
        r.register(
            &req(
                &["<sip:a@desk>;expires=60", "<sip:a@soft>;expires=120"],
                None,
                1,
            ),
            0,
        )
        .unwrap();
        let mut bob = req(&["<sip:b@desk>"], Some("90"), 1);
        bob.user = "bob";
        r.register(&bob, 0).unwrap();

        assert_eq!(r.poll_timeout(), Some(60_000));
        assert_eq!(r.expire(59_999), Vec::<String>::new());
        assert_eq!(r.bindings("alice").len(), 2);
        // alice loses one of two bindings: still online, not reported.
        assert_eq!(r.expire(60_000), Vec::<String>::new());
        assert_eq!(uris(&r, "alice"), ["sip:a@soft"]);
        assert_eq!(r.poll_timeout(), Some(90_000));
        assert_eq!(r.expire(90_000), ["bob"]);
        // Late call: everything due is handled at once, and reported once.
        assert_eq!(r.expire(500_000), ["alice"]);
        assert_eq!(r.expire(500_000), Vec::<String>::new());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.agents().count(), 0);
    }

    #[test]
    fn lapsed_but_unexpired_bindings_report_offline_once() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@desk>"], Some("60"), 1), 0)
            .unwrap();
        // The engine has not called expire yet; a query after the lapse reports the change.
        let ok = r.register(&req(&[], None, 2), 70_000).unwrap();
        assert!(ok.contacts.is_empty());
        assert_eq!(ok.presence, Presence::WentOffline);
        assert_eq!(r.expire(70_000), Vec::<String>::new());
        // And a re-registration after a lapse nobody reported is no new "online".
        r.register(&req(&["<sip:a@desk>"], Some("60"), 3), 100_000)
            .unwrap();
        let ok = r
            .register(&req(&["<sip:a@soft>"], Some("60"), 4), 200_000)
            .unwrap();
        assert_eq!(ok.presence, Presence::Unchanged);
        assert_eq!(ok.contacts, ["<sip:a@soft>;expires=60"]);
    }

    #[test]
    fn query_lists_bindings_without_changing_them() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@desk>"], Some("600"), 1), 0)
            .unwrap();
        let ok = r.register(&req(&[], None, 2), 100_500).unwrap();
        // 499.5 s left shows as 500: rounded up, never 0 while alive.
        assert_eq!(ok.contacts, ["<sip:a@desk>;expires=500"]);
        assert_eq!(ok.presence, Presence::Unchanged);
        assert_eq!(r.bindings("alice")[0].expires_at_ms, 600_000);
        assert_eq!(
            r.contacts_for_200("alice", 599_999),
            ["<sip:a@desk>;expires=1"]
        );
    }

    #[test]
    fn contact_lists_split_only_outside_quotes_and_brackets() {
        let mut r = registrar();
        let header = "\"Desk, 3rd floor <x>\" <sip:a@desk;x=1,2>;expires=120, sip:a@soft;q=0.5,\
                      <sip:a@web>;+sip.instance=\"<urn:uuid:1,2>\"";
        let ok = r
            .register(&req(&[header, "<sip:a@fourth>"], Some("300"), 1), 0)
            .unwrap();
        assert_eq!(
            uris(&r, "alice"),
            [
                "sip:a@desk;x=1,2",
                "sip:a@soft",
                "sip:a@web",
                "sip:a@fourth"
            ]
        );
        assert_eq!(ok.contacts[0], "<sip:a@desk;x=1,2>;expires=120");
        assert_eq!(ok.contacts[1], "<sip:a@soft>;expires=300");
    }

    #[test]
    fn bad_contacts_are_400_and_change_nothing() {
        let mut r = registrar();
        r.register(&req(&["<sip:a@keep>"], None, 1), 0).unwrap();
        let cases: &[(&str, &str)] = &[
            ("<sip:a@b", "no closing >"),
            ("\"name\" sip:a@b", "display name without <uri>"),
            ("<nocolon>", "uri"),
            ("<>", "uri"),
            ("<sip:a b@c>", "uri"),
            ("<sip:a@b> junk", "text after uri"),
            ("<sip:a@b>;;expires=60", "empty parameter"),
            ("<sip:a@b>;expires=60;EXPIRES=70", "expires given twice"),
            ("<sip:a@b>,", "empty element"),
        ];
        for (contact, why) in cases {
            let err = r.register(&req(&[contact], None, 2), 0).unwrap_err();
            assert_eq!(err, RegisterError::BadContact(why), "{contact}");
            assert_eq!(err.status(), 400);
        }
        assert_eq!(uris(&r, "alice"), ["sip:a@keep"]);
    }

    #[test]
    fn bindings_per_agent_are_capped_dropping_the_least_recently_refreshed() {
        let config = RegistrarConfig {
            max_bindings_per_agent: 2,
            ..RegistrarConfig::default()
        };
        let mut r = Registrar::new(config);
        r.register(&req(&["<sip:a@1>"], None, 1), 0).unwrap();
        r.register(&req(&["<sip:a@2>"], None, 2), 1_000).unwrap();
        r.register(&req(&["<sip:a@1>"], None, 3), 2_000).unwrap();
        let ok = r.register(&req(&["<sip:a@3>"], None, 4), 3_000).unwrap();
        assert_eq!(uris(&r, "alice"), ["sip:a@1", "sip:a@3"]);
        assert_eq!(ok.contacts.len(), 2);
        // The dropped binding's timer went with it.
        assert_eq!(r.poll_timeout(), Some(3_602_000));
        assert_eq!(r.timers.len(), 2);
    }
}
