//! Typed views of the headers the engine decides on: Via, From/To/Contact (name-addr), CSeq and
//! the Request-URI. Each view parses a raw value from [`super::message`] on demand and reports
//! a reason string when the value is malformed, which becomes the reason phrase of a 400.

use std::net::IpAddr;

/// RFC 3261 magic cookie that marks a branch as globally unique (section 8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via element: `SIP/2.0/UDP host:port;branch=...;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    pub fn parse(value: &str) -> Result<Via, String> {
        let bad = |why: &str| format!("bad Via ({why})");
        let (protocol, rest) = split_protocol(value).ok_or_else(|| bad("protocol"))?;
        let mut pieces = protocol.split('/').map(str::trim);
        let name = pieces.next().unwrap_or_default();
        let version = pieces.next().unwrap_or_default();
        let transport = pieces.next().unwrap_or_default();
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
            return Err(bad("protocol must be SIP/2.0/<transport>"));
        }
        if !transport.chars().all(crate::sip::message::is_token_char) {
            return Err(bad("transport is not a token"));
        }
        let mut parts = split_params(rest.trim());
        let sent_by = parts.next().unwrap_or_default().trim();
        let (host, port) = parse_host_port(sent_by).ok_or_else(|| bad("sent-by"))?;
        let params = parse_params(parts).ok_or_else(|| bad("parameters"))?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// `sent-by` as printed, used in transaction keys.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{}", self.host, port),
            None => self.host.clone(),
        }
    }
}

/// Splits `SIP / 2.0 / UDP host...` into the protocol part and the rest; LWS is allowed around `/`.
fn split_protocol(value: &str) -> Option<(String, &str)> {
    let mut protocol = String::new();
    let mut slashes = 0;
    let mut chars = value.char_indices().peekable();
    // Skip leading white space.
    while let Some((_, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else {
            break;
        }
    }
    while let Some((i, c)) = chars.next() {
        if c == '/' {
            slashes += 1;
            protocol.push('/');
            while let Some((_, c)) = chars.peek() {
                if c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            continue;
        }
        if c.is_whitespace() {
            // White space before a slash is allowed; after the transport it ends the protocol.
            let rest = &value[i..];
            let trimmed = rest.trim_start();
            if slashes < 2 && trimmed.starts_with('/') {
                continue;
            }
            if slashes == 2 {
                return Some((protocol, trimmed));
            }
            return None;
        }
        protocol.push(c);
    }
    None
}

/// Parses `host[:port]` where host may be an IPv6 reference in brackets.
pub fn parse_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let inner = &rest[..close];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim()),
            None if after.trim().is_empty() => None,
            None => return None,
        };
        (format!("[{inner}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.trim().to_string(), Some(p.trim())),
            None => (s.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return None;
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// Splits a header value at `;` outside quotes and angle brackets (for rewriting parameters).
pub fn split_params_public(s: &str) -> Vec<&str> {
    split_params(s).collect()
}

/// Host part as an IP address, if it is one.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Splits at `;` outside quotes and angle brackets.
fn split_params(s: &str) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => in_angle = false,
            ';' if !in_quotes && !in_angle => {
                pieces.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&s[start..]);
    pieces.into_iter()
}

fn parse_params<'a>(parts: impl Iterator<Item = &'a str>) -> Option<Vec<(String, Option<String>)>> {
    let mut params = Vec::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            return None;
        }
        match part.split_once('=') {
            Some((name, value)) => {
                let (name, value) = (name.trim(), value.trim());
                if name.is_empty() || value.is_empty() {
                    return None;
                }
                params.push((name.to_string(), Some(value.to_string())));
            }
            None => params.push((part.to_string(), None)),
        }
    }
    Some(params)
}

/// From, To, Contact and Route values: `"Display" <uri>;params` or `uri;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(value: &str) -> Result<NameAddr, String> {
        let value = value.trim();
        let bad = |why: &str| format!("bad name-addr ({why})");
        if value == "*" {
            return Ok(NameAddr {
                display: None,
                uri: "*".into(),
                params: Vec::new(),
            });
        }
        let (display, uri, rest) = if let Some(open) = find_unquoted(value, '<') {
            let display = value[..open].trim();
            if display.starts_with('"') && !(display.len() >= 2 && display.ends_with('"')) {
                return Err(bad("unbalanced quotes"));
            }
            let after = &value[open + 1..];
            let close = after.find('>').ok_or_else(|| bad("no closing >"))?;
            let display = (!display.is_empty()).then(|| display.to_string());
            (display, after[..close].trim(), &after[close + 1..])
        } else {
            if value.contains('"') {
                return Err(bad("quoted display name without <uri>"));
            }
            // addr-spec form: header parameters start at the first `;` (URI parameters need <>).
            match value.find(';') {
                Some(at) => (None, value[..at].trim(), &value[at..]),
                None => (None, value, ""),
            }
        };
        if uri.is_empty() || !uri.contains(':') || uri.chars().any(char::is_whitespace) {
            return Err(bad("uri"));
        }
        let rest = rest.trim();
        let params = if rest.is_empty() {
            Vec::new()
        } else {
            let rest = rest
                .strip_prefix(';')
                .ok_or_else(|| bad("text after uri"))?;
            parse_params(split_params(rest)).ok_or_else(|| bad("parameters"))?
        };
        Ok(NameAddr {
            display,
            uri: uri.to_string(),
            params,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("tag"))
            .and_then(|(_, v)| v.as_deref())
    }
}

fn find_unquoted(s: &str, wanted: char) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
        } else if c == '"' {
            in_quotes = true;
        } else if c == wanted {
            return Some(i);
        }
    }
    None
}

/// CSeq: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: String,
}

impl CSeq {
    pub fn parse(value: &str) -> Result<CSeq, String> {
        let mut parts = value.split_whitespace();
        let number = parts.next().unwrap_or_default();
        let method = parts.next().unwrap_or_default();
        if parts.next().is_some() || method.is_empty() {
            return Err("bad CSeq".into());
        }
        if !number.bytes().all(|b| b.is_ascii_digit()) || number.is_empty() {
            return Err("CSeq number is not a number".into());
        }
        // RFC 3261 8.1.1.5: the sequence number must be expressible as a 32-bit unsigned integer.
        let seq = number
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 1 << 31)
            .ok_or_else(|| "CSeq number out of range".to_string())?;
        Ok(CSeq {
            seq,
            method: method.to_string(),
        })
    }
}

/// The scheme of a URI (`sip`, `sips`, `tel`, ...), lower-cased.
pub fn uri_scheme(uri: &str) -> Option<String> {
    let (scheme, _) = uri.split_once(':')?;
    let valid = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// Parts of a sip/sips URI that routing needs: user and host[:port].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl SipUri {
    pub fn parse(uri: &str) -> Result<SipUri, String> {
        let scheme = uri_scheme(uri).ok_or("URI without a scheme")?;
        if scheme != "sip" && scheme != "sips" {
            return Err(format!("not a sip URI: {scheme}"));
        }
        let rest = &uri[scheme.len() + 1..];
        // The user part may hold `;`, `?` and `:` (RFC 4475 3.1.1.2), the host part cannot hold
        // `@`: split at the last `@` before any header part, then cut parameters off the host.
        let before_headers = match (rest.rfind('@'), rest.find('?')) {
            (Some(at), Some(q)) if q < at => rest,
            (_, Some(q)) => &rest[..q],
            (_, None) => rest,
        };
        let (userinfo, hostport) = match before_headers.rfind('@') {
            Some(at) => (Some(&before_headers[..at]), &before_headers[at + 1..]),
            None => (None, before_headers),
        };
        let hostport = hostport.split([';', '?']).next().unwrap_or_default();
        let (host, port) = parse_host_port(hostport).ok_or("bad host in URI")?;
        let user = userinfo.map(|u| u.split(':').next().unwrap_or_default().to_string());
        if user.as_deref() == Some("") {
            return Err("empty user in URI".into());
        }
        Ok(SipUri { user, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_and_ipv6() {
        let v = Via::parse("SIP / 2.0 / UDP [2001:db8::9:1]:5061 ;branch=z9hG4bKa;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "[2001:db8::9:1]");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.branch(), Some("z9hG4bKa"));
        assert_eq!(v.param("rport"), Some(None));
        assert!(Via::parse("SIP/2.0/UDP host;;branch=x").is_err());
        assert!(Via::parse("SIP/7.0/UDP host").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse("\"A, B\" <sip:a@b;lr>;tag=x1").unwrap();
        assert_eq!(a.tag(), Some("x1"));
        assert_eq!(a.uri, "sip:a@b;lr");
        let b = NameAddr::parse("sip:a@b;tag=y").unwrap();
        assert_eq!(b.tag(), Some("y"));
        assert!(NameAddr::parse("\"unbalanced <sip:a@b>").is_err());
    }

    #[test]
    fn cseq_and_uri() {
        assert_eq!(CSeq::parse("  8  INVITE").unwrap().seq, 8);
        assert!(CSeq::parse("36893488147419103232 INVITE").is_err());
        assert_eq!(uri_scheme("SIP:x@y").as_deref(), Some("sip"));
        let u = SipUri::parse("sip:311@[::1]:5060;transport=udp").unwrap();
        assert_eq!(u.port, Some(5060));
        assert_eq!(u.user.as_deref(), Some("311"));
    }
}
