//! SIP message syntax (RFC 3261 section 7 and 25): parsing bytes into a [`SipMessage`] and printing it back.
//!
//! Parsing is two-level, the way Kamailio and pjsip do it: this module splits a message into a start
//! line, a list of raw headers (compact forms expanded, folded lines joined) and a body, and keeps
//! every header value verbatim so responses can echo Via/From/To/Call-ID/CSeq byte for byte. Typed
//! views of the few headers the engine decides on live in [`super::headers`]. Nothing here panics
//! on any input; the fuzz target `sip_message` holds it to that.

use std::fmt::{self, Write as _};

/// Largest message accepted on any transport (a UDP datagram cannot be larger anyway).
pub const MAX_MESSAGE_BYTES: usize = 65_535;

/// Why a byte string is not a SIP message at all (no response can be built for it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes is larger than {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("header section is not UTF-8")]
    NotUtf8,
    #[error("malformed start line: {0}")]
    StartLine(String),
}

/// The first line: a request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: String,
        uri: String,
        version: String,
    },
    Response {
        version: String,
        code: u16,
        reason: String,
    },
}

/// One header line as received: canonical name (compact forms expanded), value verbatim but trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed SIP message. `problems` lists syntax faults found while parsing that do not stop us
/// from routing a 400 back (a header line with no colon, a Content-Length longer than the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    pub problems: Vec<String>,
}

/// Compact header forms (RFC 3261 section 7.3.3 and later RFCs) mapped to their full names.
const COMPACT_FORMS: &[(char, &str)] = &[
    ('a', "Accept-Contact"),
    ('b', "Referred-By"),
    ('c', "Content-Type"),
    ('d', "Request-Disposition"),
    ('e', "Content-Encoding"),
    ('f', "From"),
    ('i', "Call-ID"),
    ('j', "Reject-Contact"),
    ('k', "Supported"),
    ('l', "Content-Length"),
    ('m', "Contact"),
    ('o', "Event"),
    ('r', "Refer-To"),
    ('s', "Subject"),
    ('t', "To"),
    ('u', "Allow-Events"),
    ('v', "Via"),
    ('x', "Session-Expires"),
    ('y', "Identity"),
];

/// Canonical spellings of the headers we read or write, so lookups and printing are uniform.
const CANONICAL_NAMES: &[&str] = &[
    "Accept",
    "Allow",
    "Authorization",
    "Call-ID",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Expires",
    "From",
    "Max-Forwards",
    "Proxy-Require",
    "Record-Route",
    "Require",
    "Route",
    "Server",
    "Supported",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "WWW-Authenticate",
];

/// Expands compact forms and normalises the case of known header names.
pub fn canonical_header_name(name: &str) -> String {
    if name.len() == 1 {
        let c = name.as_bytes()[0].to_ascii_lowercase() as char;
        if let Some((_, full)) = COMPACT_FORMS.iter().find(|(short, _)| *short == c) {
            return (*full).to_string();
        }
    }
    CANONICAL_NAMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .map(|known| (*known).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// RFC 3261 `token` characters (used for method names and header names).
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

/// Finds the blank line ending the header section; returns (header_end, body_start).
pub fn find_header_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let crlf = memfind(bytes, b"\r\n\r\n").map(|i| (i, i + 4));
    let lf = memfind(bytes, b"\n\n").map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl SipMessage {
    /// Parses one message from a datagram (or one framed stream message).
    ///
    /// Bytes after the body that Content-Length announces are ignored (RFC 3261 section 18.3);
    /// a Content-Length longer than the bytes present is recorded as a problem (400 for requests).
    pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ParseError::TooLarge(bytes.len()));
        }
        // RFC 3261 section 7.5: implementations should ignore empty lines before the start line.
        let first = bytes
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .ok_or(ParseError::Empty)?;
        let bytes = &bytes[first..];
        let mut problems = Vec::new();
        let (head_end, body_start) = match find_header_end(bytes) {
            Some(found) => found,
            None => {
                problems.push("no blank line after the headers".to_string());
                (bytes.len(), bytes.len())
            }
        };
        let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::NotUtf8)?;
        let lines = unfold_lines(head);
        let mut lines = lines.into_iter();
        let start_line = lines.next().ok_or(ParseError::Empty)?;
        let (start, start_problem) = parse_start_line(&start_line)?;
        problems.extend(start_problem);

        let mut headers = Vec::new();
        for line in lines {
            match line.split_once(':') {
                Some((name, value)) => {
                    let name = name.trim_end_matches([' ', '\t']);
                    if !is_token(name) {
                        problems.push(format!("bad header name {name:?}"));
                        continue;
                    }
                    headers.push(Header {
                        name: canonical_header_name(name),
                        value: value.trim_matches([' ', '\t']).to_string(),
                    });
                }
                None => problems.push(format!("header line without a colon: {line:?}")),
            }
        }

        let available = &bytes[body_start.min(bytes.len())..];
        let mut message = SipMessage {
            start,
            headers,
            body: Vec::new(),
            problems,
        };
        let body_len = match message.content_length() {
            Ok(Some(len)) if len > available.len() => {
                message.problems.push(format!(
                    "Content-Length {len} is longer than the {} body bytes received",
                    available.len()
                ));
                available.len()
            }
            Ok(Some(len)) => len,
            Ok(None) => available.len(),
            Err(reason) => {
                message.problems.push(reason);
                available.len()
            }
        };
        message.body = available[..body_len].to_vec();
        Ok(message)
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The first value of a header (the whole line value, commas and all).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every line of a header, in order.
    pub fn header_lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every comma-separated element of a list header across all its lines (RFC 3261 section 7.3.1).
    pub fn header_values<'a>(&'a self, name: &'a str) -> Vec<&'a str> {
        self.header_lines(name).flat_map(split_list).collect()
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.header_lines(name).count()
    }

    /// Content-Length: `Ok(None)` when absent, `Err` with a reason when present but unusable.
    pub fn content_length(&self) -> Result<Option<usize>, String> {
        let mut values = self.header_lines("Content-Length");
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err("more than one Content-Length".to_string());
        }
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Length {first:?} is not a number"));
        }
        first
            .parse::<u32>()
            .map(|n| Some(n as usize))
            .map_err(|_| format!("Content-Length {first:?} is out of range"))
    }

    pub fn push_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push(Header {
            name: name.to_string(),
            value: value.into(),
        });
    }

    /// Replaces every line of `name` with one line holding `value`.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .headers
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(at) => {
                self.headers[at].value = value;
                let mut index = 0;
                self.headers.retain(|h| {
                    index += 1;
                    index - 1 == at || !h.name.eq_ignore_ascii_case(name)
                });
            }
            None => self.push_header(name, value),
        }
    }

    /// Prints the message in wire form, always with a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        let _ = write!(head, "{}", self.start);
        head.push_str("\r\n");
        for h in &self.headers {
            if h.name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            head.push_str(&h.name);
            head.push_str(": ");
            head.push_str(&h.value);
            head.push_str("\r\n");
        }
        let _ = write!(head, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl fmt::Display for StartLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartLine::Request {
                method,
                uri,
                version,
            } => write!(f, "{method} {uri} {version}"),
            StartLine::Response {
                version,
                code,
                reason,
            } => write!(f, "{version} {code} {reason}"),
        }
    }
}

/// Splits the header section into logical lines, joining continuation lines (RFC 3261 7.3.1):
/// a line that starts with SP or HTAB continues the previous one, the fold becoming one SP.
fn unfold_lines(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.starts_with([' ', '\t']) && lines.len() > 1 {
            if let Some(previous) = lines.last_mut() {
                previous.push(' ');
                previous.push_str(raw.trim_start_matches([' ', '\t']));
                continue;
            }
        }
        if raw.is_empty() {
            continue;
        }
        lines.push(raw.to_string());
    }
    lines
}

fn parse_start_line(line: &str) -> Result<(StartLine, Option<String>), ParseError> {
    let bad = |why: &str| ParseError::StartLine(format!("{why}: {:?}", truncate(line, 80)));
    if has_sip_version_prefix(line) {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts
            .next()
            .ok_or_else(|| bad("status line without a code"))?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("status code is not three digits"));
        }
        let code: u16 = code.parse().map_err(|_| bad("bad status code"))?;
        if !(100..=699).contains(&code) {
            return Err(bad("status code out of range"));
        }
        return Ok((
            StartLine::Response {
                version: version.to_string(),
                code,
                reason: parts.next().unwrap_or_default().to_string(),
            },
            None,
        ));
    }
    // Request-Line = Method SP Request-URI SP SIP-Version with single spaces (RFC 3261 25.1).
    // Extra white space is a problem to answer with 400, not a reason to drop the message.
    let parts: Vec<&str> = line.split_whitespace().collect();
    if parts.len() < 3 {
        return Err(bad("request line is not `METHOD URI VERSION`"));
    }
    if !is_token(parts[0]) {
        return Err(bad("method is not a token"));
    }
    let method = parts[0];
    let version = parts[parts.len() - 1];
    let uri = parts[1..parts.len() - 1].join(" ");
    let exact = format!("{method} {uri} {version}");
    let problem = (exact != line).then(|| "extra white space in the request line".to_string());
    Ok((
        StartLine::Request {
            method: method.to_string(),
            uri,
            version: version.to_string(),
        },
        problem,
    ))
}

/// True for `SIP/...` in any case. `get` keeps a multi-byte character at byte 4 from panicking
/// (found by the `sip_message` fuzz target).
pub fn has_sip_version_prefix(s: &str) -> bool {
    s.len() > 4 && s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// Splits a header value at top-level commas, honouring quoted strings and `<...>` URIs.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth_angle = false;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '<' => depth_angle = true,
            '>' => depth_angle = false,
            ',' if !depth_angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    parts.push(part);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = value[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:311@city.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
v: SIP/2.0/TCP [::1]:5071 ;branch=z9hG4bK-2\r\n\
f: \"Resident, A\" <sip:alice@127.0.0.1>;tag=a1\r\n\
t: <sip:311@city.example>\r\n\
i: call-1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Subject: folded\r\n  across lines\r\n\
l: 4\r\n\r\nbodyEXTRA";

    #[test]
    fn parses_compact_and_folded_headers() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.header("Call-ID"), Some("call-1@127.0.0.1"));
        assert_eq!(m.header_values("Via").len(), 2);
        assert_eq!(m.header("Subject"), Some("folded across lines"));
        assert_eq!(m.body, b"body");
        assert!(m.problems.is_empty(), "{:?}", m.problems);
    }

    #[test]
    fn list_split_keeps_quoted_commas() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.header_values("From").len(), 1);
        assert_eq!(
            split_list("a, <sip:x,y@h>, \"q,\\\"\" <sip:z>"),
            vec!["a", "<sip:x,y@h>", "\"q,\\\"\" <sip:z>"]
        );
    }

    #[test]
    fn short_body_is_a_problem_not_a_crash() {
        let text = INVITE.replace("l: 4", "l: 400");
        let m = SipMessage::parse(text.as_bytes()).unwrap();
        assert_eq!(m.problems.len(), 1);
    }

    #[test]
    fn round_trip_print() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        let again = SipMessage::parse(&m.to_bytes()).unwrap();
        assert_eq!(m.headers.len(), again.headers.len());
        assert_eq!(again.body, b"body");
    }

    #[test]
    fn responses_and_garbage() {
        let r = SipMessage::parse(b"SIP/2.0 180 Ringing\r\nVia: x\r\n\r\n").unwrap();
        assert_eq!(r.status(), Some(180));
        assert!(SipMessage::parse(b"SIP/2.0 4294967301 Huge\r\n\r\n").is_err());
        assert!(SipMessage::parse(b"\r\n\r\n").is_err());
        // Fuzz finds: a multi-byte character across byte 4 of the start line or the version.
        assert!(SipMessage::parse(b"INV\xdd\xb6").is_err());
        assert!(SipMessage::parse("d N p\u{18b}\u{447}\r\n\r\n".as_bytes()).is_ok());
        let spaced = SipMessage::parse(b"INVITE  sip:a@b SIP/2.0 \r\n\r\n").unwrap();
        assert_eq!(spaced.request_uri(), Some("sip:a@b"));
        assert_eq!(spaced.problems.len(), 1);
        assert!(SipMessage::parse(b"INVITE sip:a@b\r\n\r\n").is_err());
        for cut in 0..INVITE.len() {
            let _ = SipMessage::parse(&INVITE.as_bytes()[..cut]);
        }
    }
}
