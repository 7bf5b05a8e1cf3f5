//! SDP for civicline calls: parsing session descriptions (RFC 4566) and the
//! audio offer/answer exchange (RFC 3264) that settles each call on G.711
//! (PCMU or PCMA) plus RFC 4733 telephone-event for DTMF menus.
//! Pure code with no I/O, clock or logging. Bodies arrive straight off the
//! network, so every path is fallible and nothing here may panic.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// G.711 is defined at 20 ms by RFC 3551, and it is what every phone we
/// interoperate with assumes when the offer is silent.
pub const DEFAULT_PTIME: u32 = 20;

/// Offered ptimes outside this window are ignored rather than honoured: a
/// 1 ms or multi-second packet interval is either a broken peer or a way to
/// make us buffer absurd amounts of audio per packet.
const PTIME_MIN: u32 = 10;
const PTIME_MAX: u32 = 60;

/// Used by [`build_offer`] when the caller passes a payload type that is not
/// in the RFC 3551 dynamic range; 101 is what most SIP stacks use.
const FALLBACK_TELEPHONE_EVENT_PT: u8 = 101;

/// The only events we decode are DTMF digits, `*`, `#` and A-D.
const TELEPHONE_EVENT_FMTP: &str = "0-16";

const CRLF: &str = "\r\n";

/// Why an SDP body was rejected. Line numbers are 1-based so they can be
/// quoted directly in a SIP 400 reason phrase or a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP body is empty")]
    Empty,
    #[error("line {line}: SDP body is not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line}: SDP must begin with a v= line")]
    MissingVersion { line: usize },
    #[error("line {line}: unsupported SDP version (only v=0 exists)")]
    UnsupportedVersion { line: usize },
    #[error("SDP has no o= line")]
    MissingOrigin,
    #[error("line {line}: m= line has a missing or invalid port")]
    InvalidPort { line: usize },
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
}

impl SdpError {
    /// The offending line, for errors that have one.
    pub fn line(&self) -> Option<usize> {
        match self {
            SdpError::Empty | SdpError::MissingOrigin => None,
            SdpError::NotUtf8 { line }
            | SdpError::MissingVersion { line }
            | SdpError::UnsupportedVersion { line }
            | SdpError::InvalidPort { line }
            | SdpError::Malformed { line, .. } => Some(*line),
        }
    }
}

/// The `o=` line. Fields stay textual: we only echo or compare them, some
/// stacks send session ids wider than `u64`, and RFC 4566 allows an FQDN as
/// the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: String,
    pub net_type: String,
    pub addr_type: String,
    pub address: String,
}

/// Media direction attribute (RFC 3264 section 5.1). The default is
/// `SendRecv` because that is what an absent attribute means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction an answerer must use so both sides agree on who sends
    /// (RFC 3264 section 6.1): a peer that only sends is one we only receive
    /// from, which is how a caller putting us on hold looks.
    pub fn mirror(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Attribute name as written in SDP (`a=<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| name.eq_ignore_ascii_case(d.as_str()))
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `a=rtpmap:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    /// As written by the peer; encoding names are case-insensitive, so
    /// compare with `eq_ignore_ascii_case`.
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// One `m=` section with the attributes that matter for a phone call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, ... kept verbatim so a rejected line can be echoed.
    pub media: String,
    pub port: u16,
    /// `RTP/AVP` for plain phones; kept verbatim for the same reason.
    pub proto: String,
    /// Format tokens in the offerer's preference order. Strings rather than
    /// payload numbers because non-RTP media use other tokens (`*`, `webrtc-datachannel`).
    pub formats: Vec<String>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<(u8, String)>,
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub ptime: Option<u32>,
    pub rtcp_mux: bool,
}

impl MediaDescription {
    /// First rtpmap for `payload_type`; later duplicates are ignored the same
    /// way most stacks ignore them.
    pub fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|r| r.payload_type == payload_type)
    }

    pub fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    /// Whether we can carry this line's media at all. We have no SRTP or
    /// DTLS, so SAVP/SAVPF (and WebRTC's UDP/TLS/RTP/SAVPF) lines cannot be
    /// accepted; AVPF is accepted because an AVP-only endpoint interoperates
    /// with it (RFC 4585 section 5) and some softphones offer it by default.
    pub fn is_plain_rtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// Lookup table from payload type to rtpmap, so negotiation stays linear
    /// even for hostile lines with thousands of formats and rtpmaps.
    fn rtpmap_table(&self) -> [Option<&RtpMap>; 128] {
        let mut table = [None; 128];
        for map in &self.rtpmaps {
            if let Some(slot @ None) = table.get_mut(usize::from(map.payload_type)) {
                *slot = Some(map);
            }
        }
        table
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    /// Session-level `c=`, the fallback for media lines without their own.
    pub connection: Option<IpAddr>,
    pub media: Vec<MediaDescription>,
    /// Session-level direction, the fallback for media lines without their
    /// own; `SendRecv` when absent.
    pub direction: Direction,
}

/// Parses an SDP body.
///
/// Deliberately tolerant of what real phones send: LF or CRLF line ends,
/// surrounding whitespace, blank lines, unknown line types, unknown or
/// malformed attributes (a bad rtpmap for a codec we never use must not fail
/// the call), and a missing `s=`. It is strict only where guessing would be
/// worse than a 4xx: bytes that are not UTF-8, lines that are not
/// `<letter>=<value>`, no leading `v=0`, no `o=`, `c=` addresses that are not
/// IP literals (we cannot resolve names here), and `m=` lines without a
/// valid port or protocol.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let valid = body.get(..e.valid_up_to()).unwrap_or_default();
        SdpError::NotUtf8 {
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })?;

    let mut seen_version = false;
    let mut origin = None;
    let mut session_name = None;
    let mut connection = None;
    let mut direction = Direction::SendRecv;
    let mut media: Vec<MediaDescription> = Vec::new();

    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let (kind, value) = split_line(trimmed).ok_or(SdpError::Malformed {
            line,
            reason: "expected <type>=<value>",
        })?;

        if !seen_version {
            if kind != 'v' {
                return Err(SdpError::MissingVersion { line });
            }
            if value.trim() != "0" {
                return Err(SdpError::UnsupportedVersion { line });
            }
            seen_version = true;
            continue;
        }

        match kind {
            // Repeated o=/s= lines fall through to the ignore arm: the first
            // one is what identifies the session.
            'o' if origin.is_none() => origin = Some(parse_origin(value, line)?),
            's' if session_name.is_none() => session_name = Some(value.trim().to_owned()),
            'c' => {
                let addr = parse_connection(value, line)?;
                match media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => connection = Some(addr),
                }
            }
            'm' => media.push(parse_media(value, line)?),
            'a' => {
                let (name, arg) = split_attribute(value);
                match media.last_mut() {
                    Some(m) => apply_media_attribute(m, name, arg),
                    None => {
                        if let Some(d) = Direction::from_attribute(name) {
                            direction = d;
                        }
                    }
                }
            }
            // v= repeats, t=, b=, k=, i=, ... carry nothing we act on.
            _ => {}
        }
    }

    if !seen_version {
        return Err(SdpError::Empty);
    }
    Ok(SessionDescription {
        origin: origin.ok_or(SdpError::MissingOrigin)?,
        session_name: session_name.unwrap_or_default(),
        connection,
        media,
        direction,
    })
}

/// Splits `x=value`; the type must be one lowercase ASCII letter, which is
/// what separates SDP from arbitrary bytes that happen to be UTF-8.
fn split_line(line: &str) -> Option<(char, &str)> {
    let mut chars = line.chars();
    let kind = chars.next().filter(char::is_ascii_lowercase)?;
    let value = chars.as_str().strip_prefix('=')?;
    Some((kind, value))
}

fn split_attribute(value: &str) -> (&str, Option<&str>) {
    match value.split_once(':') {
        Some((name, arg)) => (name.trim(), Some(arg.trim())),
        None => (value.trim(), None),
    }
}

/// Parses a decimal integer without the sign and whitespace that
/// `str::parse` would accept, so `+5` or ` 5` are not valid numbers.
fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RTP payload types are 7 bits (RFC 3550).
fn parse_payload_type(s: &str) -> Option<u8> {
    parse_digits::<u8>(s).filter(|pt| *pt <= 127)
}

fn parse_origin(value: &str, line: usize) -> Result<Origin, SdpError> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    // Usernames with spaces are illegal but seen in the wild; the last five
    // fields are unambiguous, so keep whatever precedes them as the name.
    let Some((user, [id, version, net, addr_type, addr])) = fields.split_last_chunk::<5>() else {
        return Err(SdpError::Malformed {
            line,
            reason: "o= line needs username, session id, version, nettype, addrtype and address",
        });
    };
    if user.is_empty() {
        return Err(SdpError::Malformed {
            line,
            reason: "o= line has no username",
        });
    }
    Ok(Origin {
        username: user.join(" "),
        session_id: (*id).to_owned(),
        session_version: (*version).to_owned(),
        net_type: (*net).to_owned(),
        addr_type: (*addr_type).to_owned(),
        address: (*addr).to_owned(),
    })
}

fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let mut fields = value.split_whitespace();
    let (Some(net), Some(addr_type), Some(addr)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(SdpError::Malformed {
            line,
            reason: "c= line needs nettype, addrtype and address",
        });
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err(SdpError::Malformed {
            line,
            reason: "c= network type is not IN",
        });
    }
    // Multicast addresses carry /ttl and /count suffixes; only the address
    // matters to us.
    let addr = addr.split_once('/').map_or(addr, |(a, _)| a);
    let parsed = if addr_type.eq_ignore_ascii_case("IP4") {
        addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else if addr_type.eq_ignore_ascii_case("IP6") {
        let bare = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
        bare.unwrap_or(addr)
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    } else {
        return Err(SdpError::Malformed {
            line,
            reason: "c= address type is not IP4 or IP6",
        });
    };
    parsed.ok_or(SdpError::Malformed {
        line,
        reason: "c= address is not an IP literal of the stated type",
    })
}

fn parse_media(value: &str, line: usize) -> Result<MediaDescription, SdpError> {
    let mut fields = value.split_whitespace();
    let media = fields.next().ok_or(SdpError::Malformed {
        line,
        reason: "empty m= line",
    })?;
    let port_field = fields.next().ok_or(SdpError::InvalidPort { line })?;
    // `port/count` is legal for layered encodings; the base port is ours.
    let port_text = port_field.split_once('/').map_or(port_field, |(p, _)| p);
    let port = parse_digits::<u16>(port_text).ok_or(SdpError::InvalidPort { line })?;
    let proto = fields.next().ok_or(SdpError::Malformed {
        line,
        reason: "m= line has no transport protocol",
    })?;
    Ok(MediaDescription {
        media: media.to_owned(),
        port,
        proto: proto.to_owned(),
        formats: fields.map(str::to_owned).collect(),
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        connection: None,
        direction: None,
        ptime: None,
        rtcp_mux: false,
    })
}

fn apply_media_attribute(m: &mut MediaDescription, name: &str, arg: Option<&str>) {
    if let Some(d) = Direction::from_attribute(name) {
        m.direction = Some(d);
    } else if name.eq_ignore_ascii_case("rtpmap") {
        if let Some(map) = arg.and_then(parse_rtpmap) {
            m.rtpmaps.push(map);
        }
    } else if name.eq_ignore_ascii_case("fmtp") {
        if let Some(fmtp) = arg.and_then(parse_fmtp) {
            m.fmtps.push(fmtp);
        }
    } else if name.eq_ignore_ascii_case("ptime") {
        if let Some(ptime) = arg.and_then(parse_ptime) {
            m.ptime = Some(ptime);
        }
    } else if name.eq_ignore_ascii_case("rtcp-mux") {
        m.rtcp_mux = true;
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.split_once(char::is_whitespace)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.trim();
    if encoding.is_empty() {
        return None;
    }
    let clock_rate = parse_digits::<u32>(parts.next()?.trim())?;
    let channels = match parts.next() {
        Some(c) => Some(parse_digits::<u8>(c.trim())?),
        None => None,
    };
    Some(RtpMap {
        payload_type: parse_payload_type(pt)?,
        encoding: encoding.to_owned(),
        clock_rate,
        channels,
    })
}

fn parse_fmtp(arg: &str) -> Option<(u8, String)> {
    let (pt, params) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
    Some((parse_payload_type(pt)?, params.trim().to_owned()))
}

/// Some stacks write fractional ptimes (`20.0`); the integer part is enough
/// for G.711 framing.
fn parse_ptime(arg: &str) -> Option<u32> {
    let whole = arg.split_once('.').map_or(arg, |(w, _)| w);
    parse_digits::<u32>(whole).filter(|p| *p > 0)
}

/// The codecs civicline's media engine can encode and decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    /// Both codecs in RFC 3551 order; also what an empty `prefer` means.
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];
    pub const CLOCK_RATE: u32 = 8000;

    /// RFC 3551 static payload type, used when we write our own offer.
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// Identifies the codec from an rtpmap when there is one (a peer may map
    /// PCMU to a dynamic number, or remap 0 to something else), and from the
    /// static RFC 3551 assignment otherwise.
    fn from_payload(payload_type: u8, map: Option<&RtpMap>) -> Option<Codec> {
        match map {
            Some(map) => {
                let mono = matches!(map.channels, None | Some(1));
                if map.clock_rate != Codec::CLOCK_RATE || !mono {
                    return None;
                }
                Codec::ALL
                    .into_iter()
                    .find(|c| map.encoding.eq_ignore_ascii_case(c.encoding_name()))
            }
            None => Codec::ALL
                .into_iter()
                .find(|c| c.static_payload_type() == payload_type),
        }
    }
}

/// The outcome of offer/answer for the call's single audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// Payload type as written in the remote SDP, which is the number to put
    /// in the RTP packets we send them.
    pub payload_type: u8,
    /// Also as written in the remote SDP; 96 from linphone, 101 from most
    /// others. We answer with the same number so both directions agree.
    pub telephone_event_pt: Option<u8>,
    /// `None` when the peer gave no address or the RFC 2543 hold address
    /// (`0.0.0.0` / `::`): we must not send media then.
    pub remote_rtp: Option<SocketAddr>,
    pub ptime: u32,
    /// Our direction, i.e. the mirror of the peer's.
    pub direction: Direction,
    /// Index into the remote SDP's `media` of the line we accepted.
    pub audio_index: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiationError {
    #[error("no active audio stream in SDP")]
    NoAudio,
    #[error("no audio codec in common (we support PCMU and PCMA over RTP/AVP)")]
    NoCommonCodec,
}

/// Chooses the audio stream and codec for an incoming offer.
///
/// The first audio m-line with a non-zero port and a usable codec wins;
/// later audio lines are rejected in the answer, because the IVR has one
/// audio leg per call.
///
/// Codec choice follows the offerer's order (RFC 3264 section 6.1: the
/// answerer SHOULD honour it), so a caller that lists PCMA first gets PCMA
/// and nobody transcodes. `prefer` is an allow-list, not a reordering: a
/// codec missing from it is never chosen, and its order is ignored. An empty
/// `prefer` allows both codecs, so an empty config cannot make every call
/// fail with 488.
///
/// Errors: `NoAudio` when there is no audio m-line with a non-zero port,
/// `NoCommonCodec` when there is one but none offers an allowed codec over
/// plain RTP.
pub fn negotiate(
    offer: &SessionDescription,
    prefer: &[Codec],
) -> Result<Negotiated, NegotiationError> {
    let allowed: &[Codec] = if prefer.is_empty() {
        &Codec::ALL
    } else {
        prefer
    };
    let mut saw_audio = false;
    for (audio_index, m) in offer.media.iter().enumerate() {
        if !m.is_audio() || m.port == 0 {
            continue;
        }
        saw_audio = true;
        if !m.is_plain_rtp() {
            continue;
        }
        let maps = m.rtpmap_table();
        let lookup = |pt: u8| maps.get(usize::from(pt)).copied().flatten();
        let chosen = m.formats.iter().find_map(|f| {
            let pt = parse_payload_type(f)?;
            let codec = Codec::from_payload(pt, lookup(pt))?;
            allowed.contains(&codec).then_some((codec, pt))
        });
        let Some((codec, payload_type)) = chosen else {
            continue;
        };
        let telephone_event_pt = m.formats.iter().find_map(|f| {
            let pt = parse_payload_type(f)?;
            lookup(pt)
                .is_some_and(|map| {
                    map.encoding.eq_ignore_ascii_case("telephone-event")
                        && map.clock_rate == Codec::CLOCK_RATE
                })
                .then_some(pt)
        });
        let remote_rtp = m
            .connection
            .or(offer.connection)
            .filter(|addr| !addr.is_unspecified())
            .map(|addr| SocketAddr::new(addr, m.port));
        let ptime = m
            .ptime
            .filter(|p| (PTIME_MIN..=PTIME_MAX).contains(p))
            .unwrap_or(DEFAULT_PTIME);
        return Ok(Negotiated {
            codec,
            payload_type,
            telephone_event_pt,
            remote_rtp,
            ptime,
            direction: m.direction.unwrap_or(offer.direction).mirror(),
            audio_index,
        });
    }
    Err(if saw_audio {
        NegotiationError::NoCommonCodec
    } else {
        NegotiationError::NoAudio
    })
}

/// Reads the peer's answer (in 200 OK or ACK) to an offer from
/// [`build_offer`]. The answerer's first supported format is the codec it
/// has committed to, so that is the one we use; the same rules as
/// [`negotiate`] apply, with both codecs allowed since we offered both.
pub fn accept_answer(answer: &SessionDescription) -> Result<Negotiated, NegotiationError> {
    negotiate(answer, &Codec::ALL)
}

/// Where and as whom we receive media; the same for offers and answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    pub address: IpAddr,
    pub rtp_port: u16,
    /// RFC 4566 wants these to be NTP-ish and to increase on every
    /// re-offer; the caller owns the clock, so it supplies them.
    pub session_id: u64,
    pub session_version: u64,
    /// Normally "civicline"; whitespace is replaced so it cannot split the
    /// o= line.
    pub username: String,
}

/// Builds our answer to `offer` (RFC 3264 section 6).
///
/// Every offered m-line gets an answer line in the same order, because the
/// offerer matches them by position; lines we do not use are refused with
/// port 0. The chosen audio line lists only the chosen codec and, if it was
/// offered, telephone-event, so the caller knows exactly what we will send.
/// We do not answer `a=rtcp-mux`: our RTP engine keeps RTCP on port + 1, and
/// omitting it is how RFC 5761 says to decline.
pub fn build_answer(offer: &SessionDescription, neg: &Negotiated, local: &LocalMedia) -> String {
    let mut out = String::with_capacity(384);
    write_session_header(&mut out, local);
    for (index, m) in offer.media.iter().enumerate() {
        if index == neg.audio_index {
            write_audio_line(
                &mut out,
                local.rtp_port,
                token_or(&m.proto, "RTP/AVP"),
                &[(neg.payload_type, neg.codec)],
                neg.telephone_event_pt,
                neg.ptime,
                neg.direction,
            );
        } else {
            push_line(
                &mut out,
                format_args!(
                    "m={} 0 {} {}",
                    token_or(&m.media, "audio"),
                    token_or(&m.proto, "RTP/AVP"),
                    m.formats.first().map_or("0", |f| token_or(f, "0"))
                ),
            );
        }
    }
    out
}

/// Builds our offer for an INVITE that arrived without SDP (RFC 3261 section
/// 13.2.1: the offer then goes in our 200 OK and the answer comes in the ACK).
///
/// `telephone_event_pt` must be dynamic (96-127); anything else would clash
/// with a static codec, so 101 is used instead.
pub fn build_offer(local: &LocalMedia, telephone_event_pt: u8) -> String {
    let te = if (96..=127).contains(&telephone_event_pt) {
        telephone_event_pt
    } else {
        FALLBACK_TELEPHONE_EVENT_PT
    };
    let codecs = Codec::ALL.map(|c| (c.static_payload_type(), c));
    let mut out = String::with_capacity(384);
    write_session_header(&mut out, local);
    write_audio_line(
        &mut out,
        local.rtp_port,
        "RTP/AVP",
        &codecs,
        Some(te),
        DEFAULT_PTIME,
        Direction::SendRecv,
    );
    out
}

fn write_session_header(out: &mut String, local: &LocalMedia) {
    let addr_type = match local.address {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let username: String = local
        .username
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let username = if username.is_empty() { "-" } else { &username };
    push_line(out, format_args!("v=0"));
    push_line(
        out,
        format_args!(
            "o={username} {} {} IN {addr_type} {}",
            local.session_id, local.session_version, local.address
        ),
    );
    push_line(out, format_args!("s=-"));
    push_line(out, format_args!("c=IN {addr_type} {}", local.address));
    push_line(out, format_args!("t=0 0"));
}

fn write_audio_line(
    out: &mut String,
    port: u16,
    proto: &str,
    codecs: &[(u8, Codec)],
    telephone_event_pt: Option<u8>,
    ptime: u32,
    direction: Direction,
) {
    let mut m_line = format!("m=audio {port} {proto}");
    for (pt, _) in codecs {
        let _ = write!(m_line, " {pt}");
    }
    if let Some(te) = telephone_event_pt {
        let _ = write!(m_line, " {te}");
    }
    push_line(out, format_args!("{m_line}"));
    for (pt, codec) in codecs {
        push_line(
            out,
            format_args!(
                "a=rtpmap:{pt} {}/{}",
                codec.encoding_name(),
                Codec::CLOCK_RATE
            ),
        );
    }
    if let Some(te) = telephone_event_pt {
        push_line(
            out,
            format_args!("a=rtpmap:{te} telephone-event/{}", Codec::CLOCK_RATE),
        );
        push_line(out, format_args!("a=fmtp:{te} {TELEPHONE_EVENT_FMTP}"));
    }
    push_line(out, format_args!("a=ptime:{ptime}"));
    push_line(out, format_args!("a={direction}"));
}

/// Writing into a `String` cannot fail, so the `fmt::Result` carries nothing.
fn push_line(out: &mut String, line: fmt::Arguments<'_>) {
    let _ = out.write_fmt(line);
    out.push_str(CRLF);
}

/// Parsed tokens never contain whitespace, but `SessionDescription` has
/// public fields; this keeps a hand-built one from injecting extra SDP lines.
fn token_or<'a>(value: &'a str, fallback: &'a str) -> &'a str {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        fallback
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP_OFFER: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.1.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n";

    // LF-only line ends, as linphone's own SDP generator is often relayed.
    const LINPHONE_OFFER: &str = "v=0\n\
        o=alice 3045 1743 IN IP4 192.168.1.20\n\
        s=Talk\n\
        c=IN IP4 192.168.1.20\n\
        t=0 0\n\
        a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\n\
        m=audio 7078 RTP/AVP 124 8 0 96 97\n\
        a=rtpmap:124 opus/48000/2\n\
        a=fmtp:124 useinbandfec=1\n\
        a=rtpmap:96 telephone-event/8000\n\
        a=rtpmap:97 telephone-event/48000\n\
        a=rtcp-fb:* trr-int 1000\n";

    fn local_v4() -> LocalMedia {
        LocalMedia {
            address: "10.0.0.5".parse().unwrap(),
            rtp_port: 20000,
            session_id: 42,
            session_version: 1,
            username: "civicline".to_owned(),
        }
    }

    fn lines(sdp: &str) -> Vec<&str> {
        sdp.split("\r\n").filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn sipp_offer_negotiates_pcmu_with_dtmf() {
        let offer = parse(SIPP_OFFER.as_bytes()).unwrap();
        assert_eq!(offer.origin.username, "user1");
        assert_eq!(offer.media.len(), 1);
        assert_eq!(offer.media[0].fmtps, vec![(101, "0-15".to_owned())]);

        let neg = negotiate(&offer, &Codec::ALL).unwrap();
        assert_eq!(neg.codec, Codec::Pcmu);
        assert_eq!(neg.payload_type, 0);
        assert_eq!(neg.telephone_event_pt, Some(101));
        assert_eq!(neg.remote_rtp, Some("127.0.1.1:6000".parse().unwrap()));
        assert_eq!(neg.ptime, 20);
        assert_eq!(neg.direction, Direction::SendRecv);
        assert_eq!(neg.audio_index, 0);

        let answer = build_answer(&offer, &neg, &local_v4());
        assert_eq!(
            lines(&answer),
            vec![
                "v=0",
                "o=civicline 42 1 IN IP4 10.0.0.5",
                "s=-",
                "c=IN IP4 10.0.0.5",
                "t=0 0",
                "m=audio 20000 RTP/AVP 0 101",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=sendrecv",
            ]
        );
        assert!(answer.ends_with("\r\n"));
        assert!(!answer.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn linphone_offer_keeps_pcma_first_and_pt_96() {
        let offer = parse(LINPHONE_OFFER.as_bytes()).unwrap();
        let neg = negotiate(&offer, &[Codec::Pcmu, Codec::Pcma]).unwrap();
        // Offerer's order wins over the order of `prefer`.
        assert_eq!(neg.codec, Codec::Pcma);
        assert_eq!(neg.payload_type, 8);
        // The 8 kHz telephone-event, not the 48 kHz one.
        assert_eq!(neg.telephone_event_pt, Some(96));

        let answer = build_answer(&offer, &neg, &local_v4());
        assert!(answer.contains("m=audio 20000 RTP/AVP 8 96\r\n"));
        assert!(answer.contains("a=rtpmap:96 telephone-event/8000\r\n"));
        assert!(answer.contains("a=fmtp:96 0-16\r\n"));
        assert!(!answer.contains("opus"));

        // `prefer` is an allow-list: excluding PCMA falls through to PCMU.
        let neg = negotiate(&offer, &[Codec::Pcmu]).unwrap();
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 0));
        // An empty allow-list means "no restriction".
        assert_eq!(negotiate(&offer, &[]).unwrap().codec, Codec::Pcma);
    }

    #[test]
    fn dynamic_payload_type_for_pcmu_is_recognised() {
        let sdp = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n\
                   m=audio 4000 RTP/AVP 110 0\na=rtpmap:110 pcmu/8000\na=rtpmap:0 G722/8000\n";
        let neg = negotiate(&parse(sdp.as_bytes()).unwrap(), &[]).unwrap();
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 110));
    }

    #[test]
    fn g729_only_has_no_common_codec() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        assert_eq!(
            negotiate(&offer, &Codec::ALL),
            Err(NegotiationError::NoCommonCodec)
        );
    }

    #[test]
    fn no_audio_and_srtp_only_are_rejected() {
        let video_only = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n\
                          m=video 5000 RTP/AVP 96\nm=audio 0 RTP/AVP 0\n";
        let offer = parse(video_only.as_bytes()).unwrap();
        assert_eq!(negotiate(&offer, &[]), Err(NegotiationError::NoAudio));

        let srtp = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n\
                    m=audio 5000 RTP/SAVP 0\n";
        let offer = parse(srtp.as_bytes()).unwrap();
        assert_eq!(negotiate(&offer, &[]), Err(NegotiationError::NoCommonCodec));
    }

    #[test]
    fn video_and_audio_offer_rejects_video_in_place() {
        let sdp =
            "v=0\r\no=bob 7 7 IN IP4 192.0.2.10\r\ns=call\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                   m=video 51372 RTP/AVP 31 96\r\na=rtpmap:96 H264/90000\r\n\
                   m=audio 49170 RTP/AVP 0 8 101\r\nc=IN IP4 192.0.2.11\r\n\
                   a=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n\
                   m=audio 49180 RTP/AVP 8\r\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        let neg = negotiate(&offer, &[]).unwrap();
        assert_eq!(neg.audio_index, 1);
        assert_eq!(neg.codec, Codec::Pcmu);
        assert_eq!(neg.ptime, 30);
        // Media-level c= beats session-level.
        assert_eq!(neg.remote_rtp, Some("192.0.2.11:49170".parse().unwrap()));

        let answer = build_answer(&offer, &neg, &local_v4());
        let parsed = parse(answer.as_bytes()).unwrap();
        assert_eq!(parsed.media.len(), 3);
        assert_eq!(
            (parsed.media[0].media.as_str(), parsed.media[0].port),
            ("video", 0)
        );
        assert_eq!(parsed.media[0].formats, vec!["31"]);
        assert_eq!(parsed.media[1].port, 20000);
        assert_eq!(parsed.media[1].formats, vec!["0", "101"]);
        assert_eq!(parsed.media[1].ptime, Some(30));
        assert_eq!(
            (parsed.media[2].media.as_str(), parsed.media[2].port),
            ("audio", 0)
        );
    }

    #[test]
    fn ipv6_offer_and_answer() {
        let sdp = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 8\r\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        assert_eq!(offer.connection, Some("2001:db8::1".parse().unwrap()));
        let neg = negotiate(&offer, &[]).unwrap();
        assert_eq!(neg.remote_rtp, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(neg.telephone_event_pt, None);

        let local = LocalMedia {
            address: "::1".parse().unwrap(),
            ..local_v4()
        };
        let answer = build_answer(&offer, &neg, &local);
        assert!(answer.contains("o=civicline 42 1 IN IP6 ::1\r\n"));
        assert!(answer.contains("c=IN IP6 ::1\r\n"));
        assert!(answer.contains("m=audio 20000 RTP/AVP 8\r\n"));
        assert!(!answer.contains("telephone-event"));
        let parsed = parse(answer.as_bytes()).unwrap();
        assert_eq!(parsed.connection, Some("::1".parse().unwrap()));
    }

    #[test]
    fn hold_offers() {
        let old_style = "v=0\no=- 1 2 IN IP4 1.2.3.4\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\n\
                         m=audio 4000 RTP/AVP 0\n";
        let neg = negotiate(&parse(old_style.as_bytes()).unwrap(), &[]).unwrap();
        assert_eq!(neg.remote_rtp, None);

        let sendonly = "v=0\no=- 1 2 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n\
                        m=audio 4000 RTP/AVP 0\na=sendonly\n";
        let offer = parse(sendonly.as_bytes()).unwrap();
        let neg = negotiate(&offer, &[]).unwrap();
        assert_eq!(neg.direction, Direction::RecvOnly);
        assert!(build_answer(&offer, &neg, &local_v4()).contains("a=recvonly\r\n"));

        // Session-level direction applies when the media line has none.
        let inactive = "v=0\no=- 1 2 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n\
                        a=inactive\nm=audio 4000 RTP/AVP 0\n";
        let neg = negotiate(&parse(inactive.as_bytes()).unwrap(), &[]).unwrap();
        assert_eq!(neg.direction, Direction::Inactive);
        assert_eq!(Direction::RecvOnly.mirror(), Direction::SendOnly);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(parse(b""), Err(SdpError::Empty));
        assert_eq!(parse(b"\r\n\r\n"), Err(SdpError::Empty));
        assert_eq!(
            parse(b"v=0\r\n\xff\xfe\x00garbage"),
            Err(SdpError::NotUtf8 { line: 2 })
        );
        assert_eq!(
            parse(b"hello world"),
            Err(SdpError::Malformed {
                line: 1,
                reason: "expected <type>=<value>"
            })
        );
        assert_eq!(
            parse(b"o=- 1 1 IN IP4 1.2.3.4\nv=0\n"),
            Err(SdpError::MissingVersion { line: 1 })
        );
        assert_eq!(
            parse(b"v=1\n"),
            Err(SdpError::UnsupportedVersion { line: 1 })
        );
        assert_eq!(parse(b"v=0\ns=-\n"), Err(SdpError::MissingOrigin));
        for bad_port in ["abc", "-1", "+5", "65536", ""] {
            let sdp = format!("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio {bad_port} RTP/AVP 0\n");
            let err = parse(sdp.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SdpError::InvalidPort { line: 3 } | SdpError::Malformed { line: 3, .. }
                ),
                "{bad_port:?}: {err:?}"
            );
            assert_eq!(err.line(), Some(3));
        }
        assert!(matches!(
            parse(b"v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 pbx.example.org\n"),
            Err(SdpError::Malformed { line: 3, .. })
        ));
    }

    #[test]
    fn tolerates_unknown_lines_and_bad_attributes() {
        let sdp = "v=0\n\n  o=- 1 1 IN IP4 1.2.3.4  \nz=0 0\nx=vendor\nb=AS:64\nt=0 0\n\
                   m=audio 4000/2 RTP/AVP 0 8\na=rtpmap:banana\na=ptime:20.0\na=rtcp-mux\n\
                   a=fmtp:8\na=weird\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        assert_eq!(offer.session_name, "");
        let m = &offer.media[0];
        assert_eq!(m.port, 4000);
        assert!(m.rtpmaps.is_empty());
        assert_eq!(m.ptime, Some(20));
        assert!(m.rtcp_mux);
        assert_eq!(m.fmtps, vec![(8, String::new())]);
        // No c= anywhere: negotiable, but we have nowhere to send.
        assert_eq!(negotiate(&offer, &[]).unwrap().remote_rtp, None);
    }

    #[test]
    fn offer_answer_round_trip() {
        // Our answer, read back as the peer would, yields the same codec.
        let offer = parse(LINPHONE_OFFER.as_bytes()).unwrap();
        let neg = negotiate(&offer, &[]).unwrap();
        let answer = parse(build_answer(&offer, &neg, &local_v4()).as_bytes()).unwrap();
        let back = accept_answer(&answer).unwrap();
        assert_eq!(back.codec, neg.codec);
        assert_eq!(back.payload_type, neg.payload_type);
        assert_eq!(back.telephone_event_pt, neg.telephone_event_pt);
        assert_eq!(back.remote_rtp, Some("10.0.0.5:20000".parse().unwrap()));

        // Our offer, answered by us, lands on PCMU with our DTMF type.
        let ours = build_offer(&local_v4(), 101);
        assert!(ours.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        let parsed = parse(ours.as_bytes()).unwrap();
        let neg = negotiate(&parsed, &[]).unwrap();
        assert_eq!(neg.codec, Codec::Pcmu);
        assert_eq!(neg.telephone_event_pt, Some(101));
        assert_eq!(neg.direction, Direction::SendRecv);
        let reply = parse(build_answer(&parsed, &neg, &local_v4()).as_bytes()).unwrap();
        assert_eq!(accept_answer(&reply).unwrap().codec, Codec::Pcmu);

        // A clashing DTMF payload type falls back to 101.
        assert!(build_offer(&local_v4(), 8).contains("RTP/AVP 0 8 101\r\n"));
    }

    #[test]
    fn hostile_local_username_cannot_inject_lines() {
        let local = LocalMedia {
            username: "evil\r\nm=video 1 RTP/AVP 0".to_owned(),
            ..local_v4()
        };
        let parsed = parse(build_offer(&local, 101).as_bytes()).unwrap();
        assert_eq!(parsed.media.len(), 1);
    }

    #[test]
    fn truncated_prefixes_never_panic() {
        for body in [SIPP_OFFER, LINPHONE_OFFER] {
            let bytes = body.as_bytes();
            for end in 0..=bytes.len() {
                exercise(&bytes[..end]);
            }
        }
    }

    #[test]
    fn mutated_offers_never_panic() {
        // xorshift keeps this deterministic without a rand dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"=: /\r\n0189avmoc.IN IP46-";
        for _ in 0..3000 {
            let mut bytes = LINPHONE_OFFER.as_bytes().to_vec();
            for _ in 0..(next() % 8 + 1) {
                let pos = (next() % bytes.len() as u64) as usize;
                let pick = next();
                match pick % 3 {
                    0 => bytes[pos] = alphabet[(pick >> 8) as usize % alphabet.len()],
                    1 => bytes[pos] = (pick >> 8) as u8,
                    _ => {
                        bytes.remove(pos);
                    }
                }
            }
            exercise(&bytes);
        }
    }

    fn exercise(bytes: &[u8]) {
        if let Ok(sdp) = parse(bytes) {
            if let Ok(neg) = negotiate(&sdp, &[]) {
                let answer = build_answer(&sdp, &neg, &local_v4());
                assert!(parse(answer.as_bytes()).is_ok());
            }
        }
    }
}
