//! Building responses and in-dialog requests: what RFC 3261 sections 8.2.6 and 12.2.1.1 say to copy,
//! the Via `received`/`rport` stamp (RFC 3581), and where a response must be sent (section 18.2.2).

use std::net::SocketAddr;

use super::headers::{host_ip, split_params_public, Via};
use super::message::{SipMessage, StartLine};
use super::transport::{Peer, Transport};

/// Standard reason phrases for the codes this endpoint sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        _ => "Unknown",
    }
}

/// Adds `received` and fills `rport` on a top Via value (RFC 3261 18.2.1, RFC 3581 section 4).
pub fn stamp_via(raw: &str, source: SocketAddr) -> String {
    let Ok(via) = Via::parse(raw) else {
        return raw.to_string();
    };
    let source_ip = source.ip();
    let wants_rport = via.param("rport").is_some();
    let sent_by_matches = host_ip(&via.host) == Some(source_ip);
    if sent_by_matches && !wants_rport {
        return raw.to_string();
    }
    let mut pieces: Vec<String> = split_params_public(raw)
        .into_iter()
        .map(|p| p.trim().to_string())
        .collect();
    let mut has_received = false;
    for piece in pieces.iter_mut().skip(1) {
        let name = piece
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if name == "rport" {
            *piece = format!("rport={}", source.port());
        } else if name == "received" {
            *piece = format!("received={source_ip}");
            has_received = true;
        }
    }
    // RFC 3581: with rport, received is always added, even when sent-by already matches.
    if !has_received && (!sent_by_matches || wants_rport) {
        pieces.push(format!("received={source_ip}"));
    }
    pieces.join(";")
}

/// Where a response goes (RFC 3261 18.2.2 with RFC 3581). With `symmetric` every UDP response goes
/// to the packet's source address, as Asterisk's `force_rport` does for callers behind NAT.
pub fn response_destination(peer: Peer, stamped_top_via: &str, symmetric: bool) -> Peer {
    if peer.transport == Transport::Tcp || symmetric {
        return peer;
    }
    let Ok(via) = Via::parse(stamped_top_via) else {
        return peer;
    };
    let ip = via
        .param("received")
        .flatten()
        .and_then(host_ip)
        .or_else(|| host_ip(&via.host));
    let port = via
        .param("rport")
        .flatten()
        .and_then(|p| p.parse::<u16>().ok())
        .or(via.port)
        .unwrap_or(5060);
    match ip {
        Some(ip) => Peer {
            remote: SocketAddr::new(ip, port),
            ..peer
        },
        // No DNS here: a sent-by host name with no received stamp falls back to the source.
        None => peer,
    }
}

/// A response to `request` copying Via (top one stamped), From, To, Call-ID and CSeq verbatim.
/// `to_tag` is added to To when the request's To has none (never on 100 Trying, RFC 3261 8.2.6.2).
pub fn build_response(
    request: &SipMessage,
    source: SocketAddr,
    code: u16,
    to_tag: Option<&str>,
    server: &str,
) -> SipMessage {
    let mut response = SipMessage {
        start: StartLine::Response {
            version: "SIP/2.0".into(),
            code,
            reason: reason_phrase(code).into(),
        },
        headers: Vec::with_capacity(8),
        body: Vec::new(),
        problems: Vec::new(),
    };
    let mut first_via = true;
    for line in request.header_lines("Via") {
        for element in super::message::split_list(line) {
            let value = if first_via {
                first_via = false;
                stamp_via(element, source)
            } else {
                element.to_string()
            };
            response.push_header("Via", value);
        }
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(value) = request.header(name) {
            let mut value = value.to_string();
            if name == "To" && code > 100 {
                if let Some(tag) = to_tag {
                    let has_tag = super::headers::NameAddr::parse(&value)
                        .map(|n| n.tag().is_some())
                        .unwrap_or(true);
                    if !has_tag {
                        value = format!("{value};tag={tag}");
                    }
                }
            }
            response.push_header(name, value);
        }
    }
    response.push_header("Server", server);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rport_and_received_are_filled() {
        let source: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        let v = stamp_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport", source);
        assert_eq!(
            v,
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=40000;received=127.0.0.9"
        );
        let same = stamp_via("SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bK1", source);
        assert_eq!(same, "SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bK1");
    }

    #[test]
    fn strict_routing_uses_received_and_sent_by_port() {
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let peer = Peer::udp(local, "127.0.0.9:40000".parse().unwrap());
        let stamped = stamp_via("SIP/2.0/UDP host.invalid:5070;branch=z9hG4bK1", peer.remote);
        let to = response_destination(peer, &stamped, false);
        assert_eq!(to.remote, "127.0.0.9:5070".parse().unwrap());
        let with_rport = stamp_via(
            "SIP/2.0/UDP host.invalid:5070;branch=z9hG4bK1;rport",
            peer.remote,
        );
        assert_eq!(
            response_destination(peer, &with_rport, false).remote,
            peer.remote
        );
        assert_eq!(
            response_destination(peer, &stamped, true).remote,
            peer.remote
        );
    }
}
