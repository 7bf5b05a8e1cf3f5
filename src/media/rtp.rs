//! RTP and RTCP for one G.711 call (RFC 3550): the fixed header's parse and print, the sending
//! side's sequence/timestamp/marker bookkeeping, the receiving side's statistics (appendix A.1
//! validation, A.3 loss, A.8 jitter), SR/RR report packets, and the first-octet demultiplexing
//! that lets one port carry RTP, RTCP (RFC 5761) and STUN. Arrival times come in as RTP
//! timestamp units computed by the caller, so nothing here reads a clock.

pub const RTP_VERSION: u8 = 2;

/// 20 ms of 8 kHz G.711, the packetization every peer we talk to defaults to.
pub const G711_FRAME_SAMPLES: u32 = 160;

/// The CSRC count is a 4-bit field.
pub const MAX_CSRCS: usize = 15;

pub const RTCP_SR: u8 = 200;
pub const RTCP_RR: u8 = 201;
pub const RTCP_SDES: u8 = 202;
pub const RTCP_BYE: u8 = 203;

/// RFC 5389 puts this constant in every STUN message, which is what makes STUN on the media
/// port distinguishable from RTP with certainty.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
const SR_FIXED_LEN: usize = 28;
const RR_FIXED_LEN: usize = 8;
const STUN_HEADER_LEN: usize = 20;

/// Why a datagram was not accepted as RTP or RTCP. Sizes are in bytes so a log line can show
/// how far off a sender is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("packet is {len} bytes, needs at least {needed}")]
    TooShort { len: usize, needed: usize },
    #[error("RTP version {0} (only version 2 exists)")]
    Version(u8),
    #[error("padding count {padding} does not fit the {available} bytes after the header")]
    Padding { padding: usize, available: usize },
    #[error("RTCP length field says {declared} bytes but {available} remain")]
    Length { declared: usize, available: usize },
    #[error("RTCP report count {count} does not fit a {len}-byte packet")]
    ReportCount { count: u8, len: usize },
    #[error("empty RTCP datagram")]
    Empty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub version: u8,
    /// As seen on the wire; [`write()`] never pads.
    pub padding: bool,
    /// As seen on the wire; [`write()`] never adds an extension.
    pub extension: bool,
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Contributing sources; only mixers fill this, and [`write()`] emits at most 15.
    pub csrcs: Vec<u32>,
}

impl RtpHeader {
    pub fn new(payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32) -> RtpHeader {
        RtpHeader {
            version: RTP_VERSION,
            padding: false,
            extension: false,
            marker: false,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrcs: Vec::new(),
        }
    }
}

/// A header extension (RFC 3550 5.3.1) is kept as bytes: we negotiate none, but a peer may
/// still send one (RFC 8285 audio levels, for example) and the payload starts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderExtension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// A parsed packet borrowing the datagram, so receiving audio costs no copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    pub extension: Option<HeaderExtension<'a>>,
    /// The payload with padding removed.
    pub payload: &'a [u8],
    /// Bytes of padding that followed the payload, including the count octet.
    pub padding_len: usize,
}

pub fn parse(data: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    let too_short = |needed| RtpError::TooShort {
        len: data.len(),
        needed,
    };
    let (b0, b1) = match data {
        [b0, b1, ..] if data.len() >= RTP_HEADER_LEN => (*b0, *b1),
        _ => return Err(too_short(RTP_HEADER_LEN)),
    };
    let version = b0 >> 6;
    if version != RTP_VERSION {
        return Err(RtpError::Version(version));
    }
    let padding = b0 & 0x20 != 0;
    let extension = b0 & 0x10 != 0;
    let csrc_count = usize::from(b0 & 0x0F);
    let sequence = be_u16(data, 2).ok_or(too_short(RTP_HEADER_LEN))?;
    let timestamp = be_u32(data, 4).ok_or(too_short(RTP_HEADER_LEN))?;
    let ssrc = be_u32(data, 8).ok_or(too_short(RTP_HEADER_LEN))?;

    let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
    let csrc_bytes = data.get(RTP_HEADER_LEN..offset).ok_or(too_short(offset))?;
    let csrcs = csrc_bytes
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(u32::from_be_bytes))
        .collect();

    let extension_data = if extension {
        let profile = be_u16(data, offset).ok_or(too_short(offset + 4))?;
        let words = usize::from(be_u16(data, offset + 2).ok_or(too_short(offset + 4))?);
        let start = offset + 4;
        let end = start + 4 * words;
        let ext = data.get(start..end).ok_or(too_short(end))?;
        offset = end;
        Some(HeaderExtension { profile, data: ext })
    } else {
        None
    };

    let mut end = data.len();
    let mut padding_len = 0;
    if padding {
        // The last octet counts the padding, itself included, so zero is malformed.
        let count = usize::from(data.last().copied().unwrap_or(0));
        let available = end - offset;
        if count == 0 || count > available {
            return Err(RtpError::Padding {
                padding: count,
                available,
            });
        }
        end -= count;
        padding_len = count;
    }
    let payload = data.get(offset..end).ok_or(too_short(end))?;

    Ok(RtpPacket {
        header: RtpHeader {
            version,
            padding,
            extension,
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7F,
            sequence,
            timestamp,
            ssrc,
            csrcs,
        },
        extension: extension_data,
        payload,
        padding_len,
    })
}

/// Appends header and payload. We never pad (no SRTP block ciphers) and never add
/// extensions, so the P and X bits are written clear whatever the header says: setting them
/// without the bytes they promise would make peers drop the packet.
pub fn write(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    let csrcs = header.csrcs.get(..MAX_CSRCS).unwrap_or(&header.csrcs);
    out.reserve(RTP_HEADER_LEN + 4 * csrcs.len() + payload.len());
    out.push((RTP_VERSION << 6) | csrcs.len() as u8);
    out.push((u8::from(header.marker) << 7) | (header.payload_type & 0x7F));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    for csrc in csrcs {
        out.extend_from_slice(&csrc.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// RFC 5761 section 4: with RTP and RTCP on one port, RTCP packet types 192-223 sit where
/// the marker bit plus payload types 64-95 would be, a range RTP avoids for this reason.
pub fn is_rtcp(data: &[u8]) -> bool {
    match data {
        [b0, b1, _, _, ..] => b0 >> 6 == RTP_VERSION && (192..=223).contains(b1),
        _ => false,
    }
}

/// ICE connectivity checks and consent freshness arrive on the media port; RFC 7983 tells
/// them apart by the first two bits being zero, and the magic cookie makes it certain.
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= STUN_HEADER_LEN
        && data.first().is_some_and(|b0| b0 & 0xC0 == 0)
        && be_u32(data, 4) == Some(STUN_MAGIC_COOKIE)
}

/// Numbers the packets we send. Sequence and timestamp start wherever the caller says
/// (RFC 3550 wants them random; randomness is the runtime's business).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    first: bool,
}

impl RtpSender {
    pub fn new(ssrc: u32, initial_sequence: u16, initial_timestamp: u32) -> RtpSender {
        RtpSender {
            ssrc,
            seq: initial_sequence,
            timestamp: initial_timestamp,
            first: true,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will carry.
    pub fn sequence(&self) -> u16 {
        self.seq
    }

    /// The RTP timestamp the next audio frame will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// The header for the next audio frame of `samples` samples (160 for 20 ms of G.711).
    /// The marker goes on the first packet of a talkspurt so the far end can resync its
    /// playout buffer there (RFC 3551 section 4.1).
    pub fn next_header(&mut self, payload_type: u8, samples: u32) -> RtpHeader {
        let mut header = RtpHeader::new(payload_type, self.seq, self.timestamp, self.ssrc);
        header.marker = self.first;
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        header
    }

    /// Call after a silence in which nothing was sent. The timestamp still advances over the
    /// silence, because it is the sampling clock and receivers use it to place audio in time;
    /// the sequence number does not, because no packets were lost.
    pub fn start_talkspurt(&mut self, silent_samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(silent_samples);
        self.first = true;
    }

    /// A header for a non-audio packet in the same stream, such as an RFC 4733 event, whose
    /// timestamp and marker are dictated by the event. It uses up a sequence number but
    /// leaves the audio timestamp alone.
    pub fn event_header(&mut self, payload_type: u8, timestamp: u32, marker: bool) -> RtpHeader {
        let mut header = RtpHeader::new(payload_type, self.seq, timestamp, self.ssrc);
        header.marker = marker;
        self.seq = self.seq.wrapping_add(1);
        header
    }
}

const RTP_SEQ_MOD: u32 = 1 << 16;
/// RFC 3550 A.1's defaults: a jump of up to 3000 packets (a minute at 20 ms) is loss, a step
/// back of up to 100 is reordering, and anything between is a restart to be confirmed.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
/// Packets in sequence needed before a new source counts, so one stray packet cannot
/// hijack the statistics.
const MIN_SEQUENTIAL: u32 = 2;

/// Statistics of one incoming source (one SSRC; when the SSRC changes, start a new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    source: Option<Source>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Source {
    max_seq: u16,
    /// Count of sequence wraps, shifted left 16 as in A.1 so it adds straight to `max_seq`.
    cycles: u32,
    base_seq: u32,
    /// The sequence number that would confirm a suspected restart; never matches when above
    /// 0xFFFF.
    bad_seq: u32,
    probation: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Relative transit time of the previous packet; `None` until one is seen.
    transit: Option<u32>,
    /// Interarrival jitter in timestamp units, scaled by 16 as in A.8 to keep precision in
    /// integer arithmetic. 64 bits so a wild sender cannot overflow it.
    jitter_q4: u64,
}

impl Source {
    fn new(seq: u16) -> Source {
        let mut source = Source {
            max_seq: seq,
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter_q4: 0,
        };
        source.init_seq(seq);
        source.max_seq = seq.wrapping_sub(1);
        source
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// RFC 3550 A.1 `update_seq`: whether the packet counts.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received = self.received.wrapping_add(1);
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two packets in sequence after a big jump: the sender restarted.
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or a reordered packet: counted, as A.1 does.
        self.received = self.received.wrapping_add(1);
        true
    }

    fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    fn expected(&self) -> u32 {
        if self.probation > 0 {
            return 0;
        }
        self.extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    /// RFC 3550 A.8, with the arrival time in the same units as the RTP timestamp.
    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: u32) {
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit {
            let d = u64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            let decay = (self.jitter_q4 + 8) >> 4;
            self.jitter_q4 = (self.jitter_q4 + d).saturating_sub(decay);
        }
        self.transit = Some(transit);
    }
}

impl ReceiverStats {
    pub fn new() -> ReceiverStats {
        ReceiverStats::default()
    }

    /// Feeds one received RTP packet. `arrival_ts_units` is the arrival time converted by the
    /// caller to the stream's clock (8000 per second for G.711) from any fixed origin. Returns
    /// whether the packet was accepted as part of the stream; a false return means the source
    /// is on probation or the sequence number jumped, and the packet should not be played.
    pub fn update(&mut self, seq: u16, rtp_timestamp: u32, arrival_ts_units: u32) -> bool {
        let source = self.source.get_or_insert_with(|| Source::new(seq));
        let valid = source.update_seq(seq);
        if valid {
            source.update_jitter(rtp_timestamp, arrival_ts_units);
        }
        valid
    }

    /// Packets counted since the source was validated. Duplicates count, as RFC 3550 6.4.1
    /// prescribes; the packets that served as probation do not.
    pub fn packets_received(&self) -> u32 {
        self.source.as_ref().map_or(0, |s| s.received)
    }

    /// Highest sequence number seen, extended with the wrap count (the RR's "extended highest
    /// sequence number received").
    pub fn extended_highest_seq(&self) -> u32 {
        self.source.as_ref().map_or(0, Source::extended_max)
    }

    pub fn packets_expected(&self) -> u32 {
        self.source.as_ref().map_or(0, Source::expected)
    }

    /// Expected minus received. Negative when duplicates outnumber losses, as RFC 3550 6.4.1
    /// allows, so that late packets are never counted as lost.
    pub fn cumulative_lost(&self) -> i64 {
        self.source
            .as_ref()
            .map_or(0, |s| i64::from(s.expected()) - i64::from(s.received))
    }

    /// The fraction lost since the previous call, in 1/256 units (RFC 3550 A.3). Calling it
    /// starts a new interval, so call it once per report sent.
    pub fn fraction_lost(&mut self) -> u8 {
        let Some(source) = self.source.as_mut() else {
            return 0;
        };
        let expected = source.expected();
        let expected_interval = expected.wrapping_sub(source.expected_prior);
        source.expected_prior = expected;
        let received_interval = source.received.wrapping_sub(source.received_prior);
        source.received_prior = source.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        }
    }

    /// Interarrival jitter in timestamp units (divide by 8 for milliseconds at 8 kHz).
    pub fn jitter(&self) -> u32 {
        self.source
            .as_ref()
            .map_or(0, |s| u32::try_from(s.jitter_q4 >> 4).unwrap_or(u32::MAX))
    }

    /// A report block about this source for our next SR or RR; starts a new loss interval.
    /// `lsr` and `dlsr` come from the last SR we received from it (zero if none).
    pub fn report_block(&mut self, source_ssrc: u32, lsr: u32, dlsr: u32) -> ReportBlock {
        let fraction_lost = self.fraction_lost();
        ReportBlock {
            ssrc: source_ssrc,
            fraction_lost,
            cumulative_lost: self
                .cumulative_lost()
                .clamp(i64::from(i32::MIN), i64::from(i32::MAX))
                as i32,
            highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            lsr,
            dlsr,
        }
    }
}

/// One reception report (RFC 3550 6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// Sent as a signed 24-bit field; values beyond it are clamped on the wire.
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

const CUMULATIVE_LOST_MAX: i32 = 0x7F_FFFF;
const CUMULATIVE_LOST_MIN: i32 = -0x80_0000;

impl ReportBlock {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        let lost = self
            .cumulative_lost
            .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX) as u32
            & 0x00FF_FFFF;
        out.extend_from_slice(&((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&self.highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.lsr.to_be_bytes());
        out.extend_from_slice(&self.dlsr.to_be_bytes());
    }

    fn parse(data: &[u8]) -> Option<ReportBlock> {
        let word = be_u32(data, 4)?;
        // Sign-extend the 24-bit field.
        let cumulative_lost = ((word << 8) as i32) >> 8;
        Some(ReportBlock {
            ssrc: be_u32(data, 0)?,
            fraction_lost: (word >> 24) as u8,
            cumulative_lost,
            highest_seq: be_u32(data, 8)?,
            jitter: be_u32(data, 12)?,
            lsr: be_u32(data, 16)?,
            dlsr: be_u32(data, 20)?,
        })
    }
}

/// The middle 32 bits of a 64-bit NTP timestamp: what a report block's LSR field echoes.
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    pub ntp_timestamp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    pub reports: Vec<ReportBlock>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverReport {
    pub ssrc: u32,
    pub reports: Vec<ReportBlock>,
}

/// The RTCP packets we act on. SDES, BYE, APP and feedback packets are skipped by
/// [`parse_rtcp`]: the call's lifetime is SIP's business, not RTCP's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport(SenderReport),
    ReceiverReport(ReceiverReport),
}

fn write_rtcp_header(count: u8, packet_type: u8, total_len: usize, out: &mut Vec<u8>) {
    out.push((RTP_VERSION << 6) | (count & 0x1F));
    out.push(packet_type);
    // Length in 32-bit words minus one; our packets are a few dozen bytes.
    let words = (total_len / 4).saturating_sub(1);
    out.extend_from_slice(&u16::try_from(words).unwrap_or(u16::MAX).to_be_bytes());
}

/// A sender report with at most one report block: a call has one remote source.
pub fn build_sender_report(
    ssrc: u32,
    ntp: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    report: Option<ReportBlock>,
) -> Vec<u8> {
    let count = usize::from(report.is_some());
    let total = SR_FIXED_LEN + REPORT_BLOCK_LEN * count;
    let mut out = Vec::with_capacity(total);
    write_rtcp_header(count as u8, RTCP_SR, total, &mut out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp.to_be_bytes());
    out.extend_from_slice(&rtp_ts.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
    if let Some(report) = report {
        report.write(&mut out);
    }
    out
}

/// A receiver report, for when we have not sent audio since the last report.
pub fn build_receiver_report(ssrc: u32, report: ReportBlock) -> Vec<u8> {
    let total = RR_FIXED_LEN + REPORT_BLOCK_LEN;
    let mut out = Vec::with_capacity(total);
    write_rtcp_header(1, RTCP_RR, total, &mut out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    report.write(&mut out);
    out
}

/// Appends an SDES packet with our CNAME: RFC 3550 6.1 wants one in every compound packet,
/// after the SR or RR. The CNAME is cut to the 255 bytes an item can hold.
pub fn append_sdes_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let mut len = cname.len().min(255);
    while !cname.is_char_boundary(len) {
        len -= 1;
    }
    let text = cname.as_bytes().get(..len).unwrap_or_default();
    // Item type and length, the text, then at least one zero octet ending the item list,
    // padded to a 32-bit boundary.
    let items = 2 + text.len();
    let padded = (items + 1).div_ceil(4) * 4;
    let total = RTCP_HEADER_LEN + 4 + padded;
    write_rtcp_header(1, RTCP_SDES, total, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1); // CNAME
    out.push(text.len() as u8);
    out.extend_from_slice(text);
    out.resize(out.len() + (padded - items), 0);
}

/// Parses a compound RTCP datagram into its SR and RR packets. Every packet's length must
/// fit; packets we do not use are skipped. Unlike RFC 3550 A.2 we do not insist that the
/// first packet be an SR or RR, since reduced-size RTCP (RFC 5506) relaxes that.
pub fn parse_rtcp(data: &[u8]) -> Result<Vec<RtcpPacket>, RtpError> {
    if data.is_empty() {
        return Err(RtpError::Empty);
    }
    let mut packets = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (b0, packet_type, length) = match rest {
            [b0, pt, l0, l1, ..] => (*b0, *pt, u16::from_be_bytes([*l0, *l1])),
            _ => {
                return Err(RtpError::TooShort {
                    len: rest.len(),
                    needed: RTCP_HEADER_LEN,
                })
            }
        };
        let version = b0 >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::Version(version));
        }
        let declared = (usize::from(length) + 1) * 4;
        let packet = rest.get(..declared).ok_or(RtpError::Length {
            declared,
            available: rest.len(),
        })?;
        rest = rest.get(declared..).unwrap_or_default();

        let mut body_end = packet.len();
        if b0 & 0x20 != 0 {
            let count = usize::from(packet.last().copied().unwrap_or(0));
            let available = packet.len() - RTCP_HEADER_LEN;
            if count == 0 || count > available {
                return Err(RtpError::Padding {
                    padding: count,
                    available,
                });
            }
            body_end -= count;
        }
        let body = packet.get(..body_end).unwrap_or_default();
        let count = b0 & 0x1F;
        match packet_type {
            RTCP_SR => {
                let reports = parse_report_blocks(body, SR_FIXED_LEN, count)?;
                packets.push(RtcpPacket::SenderReport(SenderReport {
                    ssrc: be_u32(body, 4).unwrap_or(0),
                    ntp_timestamp: be_u64(body, 8).unwrap_or(0),
                    rtp_timestamp: be_u32(body, 16).unwrap_or(0),
                    packet_count: be_u32(body, 20).unwrap_or(0),
                    octet_count: be_u32(body, 24).unwrap_or(0),
                    reports,
                }));
            }
            RTCP_RR => {
                let reports = parse_report_blocks(body, RR_FIXED_LEN, count)?;
                packets.push(RtcpPacket::ReceiverReport(ReceiverReport {
                    ssrc: be_u32(body, 4).unwrap_or(0),
                    reports,
                }));
            }
            _ => {}
        }
    }
    Ok(packets)
}

/// Checks that the fixed part and `count` blocks fit before reading any of them, so the
/// `unwrap_or` defaults in the callers are never taken.
fn parse_report_blocks(
    body: &[u8],
    fixed_len: usize,
    count: u8,
) -> Result<Vec<ReportBlock>, RtpError> {
    let needed = fixed_len + REPORT_BLOCK_LEN * usize::from(count);
    if body.len() < needed {
        return Err(RtpError::ReportCount {
            count,
            len: body.len(),
        });
    }
    let blocks = body.get(fixed_len..needed).unwrap_or_default();
    Ok(blocks
        .chunks_exact(REPORT_BLOCK_LEN)
        .filter_map(ReportBlock::parse)
        .collect())
}

fn be_u16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    bytes.try_into().ok().map(u16::from_be_bytes)
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    bytes.try_into().ok().map(u32::from_be_bytes)
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    bytes.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCMU: u8 = 0;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn packet_bytes(header: &RtpHeader, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write(header, payload, &mut out);
        out
    }

    #[test]
    fn header_round_trip() {
        let mut header = RtpHeader::new(PCMU, 65535, 0xDEAD_BEEF, 0x1234_5678);
        header.marker = true;
        header.csrcs = vec![1, 2, 3];
        let payload = [0xFFu8; 160];
        let bytes = packet_bytes(&header, &payload);
        assert_eq!(bytes.len(), 12 + 12 + 160);
        let packet = parse(&bytes).unwrap();
        assert_eq!(packet.header, header);
        assert_eq!(packet.payload, &payload[..]);
        assert_eq!(packet.extension, None);
        assert_eq!(packet.padding_len, 0);
    }

    #[test]
    fn write_never_claims_padding_or_extension_and_caps_csrcs() {
        let mut header = RtpHeader::new(8, 1, 2, 3);
        header.padding = true;
        header.extension = true;
        header.csrcs = (0..20).collect();
        let bytes = packet_bytes(&header, b"abc");
        let packet = parse(&bytes).unwrap();
        assert!(!packet.header.padding && !packet.header.extension);
        assert_eq!(packet.header.csrcs, (0..15).collect::<Vec<u32>>());
        assert_eq!(packet.payload, b"abc");
    }

    #[test]
    fn parses_extension_and_padding() {
        let mut bytes = vec![
            0x80 | 0x20 | 0x10 | 0x01, // V=2, P, X, CC=1
            0x80 | 8,                  // marker, PCMA
            0x00,
            0x07,
            0,
            0,
            0x01,
            0x00,
            0xCA,
            0xFE,
            0xBA,
            0xBE,
        ];
        bytes.extend_from_slice(&42u32.to_be_bytes()); // CSRC
        bytes.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01]); // profile, 1 word
        bytes.extend_from_slice(&[0x10, 0xAA, 0x00, 0x00]);
        bytes.extend_from_slice(b"payload");
        bytes.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let packet = parse(&bytes).unwrap();
        assert_eq!(packet.header.sequence, 7);
        assert_eq!(packet.header.timestamp, 256);
        assert_eq!(packet.header.ssrc, 0xCAFE_BABE);
        assert_eq!(packet.header.payload_type, 8);
        assert!(packet.header.marker);
        assert_eq!(packet.header.csrcs, vec![42]);
        assert_eq!(
            packet.extension,
            Some(HeaderExtension {
                profile: 0xBEDE,
                data: &[0x10, 0xAA, 0, 0]
            })
        );
        assert_eq!(packet.payload, b"payload");
        assert_eq!(packet.padding_len, 3);
    }

    #[test]
    fn rejects_malformed_packets() {
        let good = packet_bytes(&RtpHeader::new(PCMU, 1, 2, 3), b"xy");
        assert_eq!(
            parse(&good[..11]),
            Err(RtpError::TooShort {
                len: 11,
                needed: 12
            })
        );
        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(parse(&v1), Err(RtpError::Version(1)));

        let mut csrc_missing = good.clone();
        csrc_missing[0] |= 0x02; // claims two CSRCs, has 2 bytes after the header
        assert!(matches!(
            parse(&csrc_missing),
            Err(RtpError::TooShort { needed: 20, .. })
        ));

        let mut ext_missing = good.clone();
        ext_missing[0] |= 0x10;
        assert!(matches!(
            parse(&ext_missing),
            Err(RtpError::TooShort { .. })
        ));

        let mut zero_padding = good.clone();
        zero_padding[0] |= 0x20;
        *zero_padding.last_mut().unwrap() = 0;
        assert!(matches!(
            parse(&zero_padding),
            Err(RtpError::Padding { .. })
        ));

        let mut huge_padding = good.clone();
        huge_padding[0] |= 0x20;
        *huge_padding.last_mut().unwrap() = 3;
        assert_eq!(
            parse(&huge_padding),
            Err(RtpError::Padding {
                padding: 3,
                available: 2
            })
        );
    }

    #[test]
    fn demultiplexes_rtp_rtcp_and_stun() {
        let rtp = packet_bytes(&RtpHeader::new(PCMU, 1, 2, 3), &[0; 160]);
        let mut event = RtpHeader::new(101, 1, 2, 3);
        event.marker = true; // second byte 0xE5 = 229, just above the RTCP range
        let event = packet_bytes(&event, &[0; 4]);
        let sr = build_sender_report(1, 2, 3, 4, 5, None);
        let rr = build_receiver_report(
            1,
            ReportBlock {
                ssrc: 2,
                fraction_lost: 0,
                cumulative_lost: 0,
                highest_seq: 0,
                jitter: 0,
                lsr: 0,
                dlsr: 0,
            },
        );
        let mut stun = vec![0x00, 0x01, 0x00, 0x00];
        stun.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        stun.extend_from_slice(&[7; 12]);

        assert!(!is_rtcp(&rtp) && !is_stun(&rtp));
        assert!(!is_rtcp(&event) && !is_stun(&event));
        assert!(is_rtcp(&sr) && !is_stun(&sr));
        assert!(is_rtcp(&rr) && !is_stun(&rr));
        assert!(is_stun(&stun) && !is_rtcp(&stun));
        assert!(!is_stun(&stun[..19]));
        let mut not_cookie = stun.clone();
        not_cookie[4] = 0;
        assert!(!is_stun(&not_cookie));
        assert!(!is_rtcp(&[]) && !is_stun(&[]));
    }

    #[test]
    fn sender_numbers_frames_and_talkspurts() {
        let mut sender = RtpSender::new(0xABCD, 65534, u32::MAX - 159);
        let h1 = sender.next_header(PCMU, G711_FRAME_SAMPLES);
        let h2 = sender.next_header(PCMU, G711_FRAME_SAMPLES);
        let h3 = sender.next_header(PCMU, G711_FRAME_SAMPLES);
        assert_eq!([h1.sequence, h2.sequence, h3.sequence], [65534, 65535, 0]);
        assert_eq!(
            [h1.timestamp, h2.timestamp, h3.timestamp],
            [u32::MAX - 159, 0, 160]
        );
        assert_eq!([h1.marker, h2.marker, h3.marker], [true, false, false]);
        assert!([&h1, &h2, &h3]
            .iter()
            .all(|h| h.ssrc == 0xABCD && h.version == 2));

        // One second of silence: nothing sent, the clock moves on.
        sender.start_talkspurt(8000);
        let h4 = sender.next_header(PCMU, G711_FRAME_SAMPLES);
        let h5 = sender.next_header(PCMU, G711_FRAME_SAMPLES);
        assert_eq!(h4.sequence, 1);
        assert_eq!(h4.timestamp, 320 + 8000);
        assert!(h4.marker && !h5.marker);

        let event = sender.event_header(101, 12345, true);
        assert_eq!(
            (event.sequence, event.timestamp, event.marker),
            (3, 12345, true)
        );
        assert_eq!(sender.sequence(), 4);
        assert_eq!(sender.timestamp(), 320 + 8000 + 320);
    }

    /// Feeds `seqs` as packets sent every 160 units and arriving on time.
    fn feed(stats: &mut ReceiverStats, seqs: &[u16]) {
        for &seq in seqs {
            let ts = u32::from(seq).wrapping_mul(160);
            stats.update(seq, ts, ts.wrapping_add(1000));
        }
    }

    #[test]
    fn perfect_stream_has_no_loss_and_no_jitter() {
        let mut stats = ReceiverStats::new();
        let seqs: Vec<u16> = (100..400).collect();
        feed(&mut stats, &seqs);
        // The first packet is the probation packet A.1 does not count.
        assert_eq!(stats.packets_received(), 299);
        assert_eq!(stats.packets_expected(), 299);
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.fraction_lost(), 0);
        assert_eq!(stats.jitter(), 0);
        assert_eq!(stats.extended_highest_seq(), 399);
    }

    #[test]
    fn counts_loss_across_reordering() {
        let mut seqs: Vec<u16> = (1000..=1100).collect();
        seqs.retain(|s| ![1010, 1020, 1030, 1031, 1032].contains(s));
        // 1050 and 1051 swapped; 1080 arrives 20 packets late.
        let i = seqs.iter().position(|&s| s == 1050).unwrap();
        seqs.swap(i, i + 1);
        let late = seqs.iter().position(|&s| s == 1080).unwrap();
        let moved = seqs.remove(late);
        seqs.insert(late + 20, moved);

        let mut stats = ReceiverStats::new();
        feed(&mut stats, &seqs);
        assert_eq!(stats.packets_expected(), 100); // 1001..=1100
        assert_eq!(stats.cumulative_lost(), 5);
        assert_eq!(stats.extended_highest_seq(), 1100);
        assert_eq!(stats.fraction_lost(), (5 * 256 / 100) as u8);
        // A clean interval after that reports no loss.
        feed(&mut stats, &(1101..1201).collect::<Vec<u16>>());
        assert_eq!(stats.fraction_lost(), 0);
        assert_eq!(stats.cumulative_lost(), 5);
    }

    #[test]
    fn duplicates_offset_loss_as_rfc3550_defines_it() {
        let mut seqs: Vec<u16> = (1000..=1100).collect();
        seqs.retain(|s| ![1010, 1020, 1030, 1031, 1032].contains(s));
        let i = seqs.iter().position(|&s| s == 1050).unwrap();
        seqs.swap(i, i + 1);
        let i = seqs.iter().position(|&s| s == 1060).unwrap();
        seqs.insert(i + 1, 1060);
        let i = seqs.iter().position(|&s| s == 1070).unwrap();
        seqs.insert(i + 3, 1070);

        let mut stats = ReceiverStats::new();
        feed(&mut stats, &seqs);
        // 100 expected, 95 distinct plus 2 duplicates received: 6.4.1 says 3 lost.
        assert_eq!(stats.packets_received(), 97);
        assert_eq!(stats.cumulative_lost(), 3);
        assert_eq!(stats.fraction_lost(), (3 * 256 / 100) as u8);

        // Duplicates alone make the count negative, and the fraction zero.
        let mut stats = ReceiverStats::new();
        feed(&mut stats, &[1, 2, 3, 3, 3, 4]);
        assert_eq!(stats.cumulative_lost(), -2);
        assert_eq!(stats.fraction_lost(), 0);
    }

    #[test]
    fn sequence_wraps_at_65535() {
        let mut stats = ReceiverStats::new();
        let seqs: Vec<u16> = (0..200u32).map(|i| (65500 + i) as u16).collect();
        feed(&mut stats, &seqs);
        assert_eq!(stats.extended_highest_seq(), 65536 + 163);
        assert_eq!(stats.packets_expected(), 199);
        assert_eq!(stats.cumulative_lost(), 0);

        // A reordered packet from before the wrap does not count as another cycle.
        let mut stats = ReceiverStats::new();
        feed(&mut stats, &[65533, 65534, 65535, 1, 0, 2]);
        assert_eq!(stats.extended_highest_seq(), 65536 + 2);
        assert_eq!(stats.cumulative_lost(), 0);
    }

    #[test]
    fn big_jump_is_a_restart_only_when_confirmed() {
        let mut stats = ReceiverStats::new();
        feed(&mut stats, &(10..20).collect::<Vec<u16>>());
        assert_eq!(stats.packets_received(), 9);
        // One stray packet far away is ignored.
        assert!(!stats.update(40000, 0, 0));
        assert_eq!(stats.extended_highest_seq(), 19);
        // Two in a row mean the sender restarted its sequence.
        assert!(!stats.update(30000, 0, 0));
        assert!(stats.update(30001, 160, 160));
        assert_eq!(stats.extended_highest_seq(), 30001);
        assert_eq!(stats.packets_received(), 1);
        assert_eq!(stats.cumulative_lost(), 0);
    }

    #[test]
    fn probation_resets_on_a_gap() {
        let mut stats = ReceiverStats::new();
        assert!(!stats.update(5, 0, 0));
        assert!(!stats.update(9, 0, 0)); // not in sequence: probation restarts
        assert_eq!(stats.packets_expected(), 0);
        assert!(stats.update(10, 0, 0));
        assert_eq!(stats.packets_received(), 1);
        assert_eq!(stats.packets_expected(), 1);
    }

    #[test]
    fn probation_starting_at_zero_expects_nothing() {
        let mut stats = ReceiverStats::new();
        stats.update(0, 0, 0);
        assert_eq!(stats.packets_expected(), 0);
        assert_eq!(stats.cumulative_lost(), 0);
    }

    #[test]
    fn jitter_of_alternating_skew_converges_to_the_rfc_value() {
        // Packets every 20 ms (160 units) arriving alternately 10 ms early and late: each
        // transit difference is 160, so J -> 160 by J += (|D| - J) / 16.
        let mut stats = ReceiverStats::new();
        let mut reference = 0.0f64;
        for i in 0..400u32 {
            let ts = 5000 + i * 160;
            let skew: i64 = if i % 2 == 0 { 80 } else { -80 };
            let arrival = (i64::from(ts) + 100_000 + skew) as u32;
            stats.update(i as u16, ts, arrival);
            // The first packet is probation and the second only sets the transit.
            if i >= 2 {
                reference += (160.0 - reference) / 16.0;
            }
            assert!(
                // A.8's integer form rounds down a little at each step.
                (f64::from(stats.jitter()) - reference).abs() <= 2.0,
                "packet {i}: {} vs {reference}",
                stats.jitter()
            );
        }
        assert!((158..=160).contains(&stats.jitter()), "{}", stats.jitter());
    }

    #[test]
    fn jitter_survives_timestamp_wrap_and_wild_transit() {
        let mut stats = ReceiverStats::new();
        for i in 0..100u32 {
            let ts = (u32::MAX - 8000).wrapping_add(i * 160);
            stats.update(i as u16, ts, ts.wrapping_add(7));
        }
        assert_eq!(stats.jitter(), 0);
        for i in 100..200u32 {
            let arrival = if i % 2 == 0 { 0 } else { 0x8000_0000 };
            stats.update(i as u16, 0, arrival);
        }
        assert!(stats.jitter() > 0);
    }

    fn block(cumulative_lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc: 0x0BAD_CAFE,
            fraction_lost: 25,
            cumulative_lost,
            highest_seq: 70_000,
            jitter: 42,
            lsr: 0x1234_5678,
            dlsr: 65536,
        }
    }

    #[test]
    fn sender_report_round_trip() {
        let ntp = 0xE5A1_2345_8000_0000u64;
        let sr = build_sender_report(7, ntp, 1600, 10, 1600, Some(block(-3)));
        assert_eq!(sr.len(), 52);
        assert_eq!(
            parse_rtcp(&sr).unwrap(),
            vec![RtcpPacket::SenderReport(SenderReport {
                ssrc: 7,
                ntp_timestamp: ntp,
                rtp_timestamp: 1600,
                packet_count: 10,
                octet_count: 1600,
                reports: vec![block(-3)],
            })]
        );
        let bare = build_sender_report(7, ntp, 1600, 10, 1600, None);
        assert_eq!(bare.len(), 28);
        let parsed = parse_rtcp(&bare).unwrap();
        assert!(matches!(&parsed[..], [RtcpPacket::SenderReport(sr)] if sr.reports.is_empty()));
        assert_eq!(ntp_middle(ntp), 0x2345_8000);
    }

    #[test]
    fn receiver_report_round_trip_and_clamping() {
        for (lost, wire) in [
            (0, 0),
            (5, 5),
            (-1, -1),
            (CUMULATIVE_LOST_MAX, CUMULATIVE_LOST_MAX),
            (i32::MAX, CUMULATIVE_LOST_MAX),
            (i32::MIN, CUMULATIVE_LOST_MIN),
        ] {
            let rr = build_receiver_report(9, block(lost));
            assert_eq!(rr.len(), 32);
            let parsed = parse_rtcp(&rr).unwrap();
            assert_eq!(
                parsed,
                vec![RtcpPacket::ReceiverReport(ReceiverReport {
                    ssrc: 9,
                    reports: vec![block(wire)],
                })]
            );
        }
    }

    #[test]
    fn compound_packets_skip_sdes_and_bye() {
        let mut compound = build_receiver_report(1, block(2));
        append_sdes_cname(1, "civicline@311.example", &mut compound);
        assert_eq!(compound.len() % 4, 0);
        compound.extend_from_slice(&build_sender_report(2, 3, 4, 5, 6, None));
        // BYE with one SSRC, then an unknown packet type (APP) with padding.
        compound.extend_from_slice(&[0x81, RTCP_BYE, 0, 1, 0, 0, 0, 1]);
        compound.extend_from_slice(&[0xA0, 204, 0, 2, b'n', b'a', b'm', b'e', 0, 0, 0, 4]);
        let packets = parse_rtcp(&compound).unwrap();
        assert_eq!(packets.len(), 2);
        assert!(matches!(packets[0], RtcpPacket::ReceiverReport(ref rr) if rr.ssrc == 1));
        assert!(matches!(packets[1], RtcpPacket::SenderReport(ref sr) if sr.ssrc == 2));
    }

    #[test]
    fn sdes_cname_is_cut_and_aligned() {
        for len in [0, 1, 2, 3, 4, 5, 254, 255, 300] {
            let mut out = Vec::new();
            append_sdes_cname(5, &"x".repeat(len), &mut out);
            assert_eq!(out.len() % 4, 0, "len {len}");
            assert_eq!(out.get(9).copied(), Some(len.min(255) as u8));
            let words = usize::from(u16::from_be_bytes([out[2], out[3]]));
            assert_eq!((words + 1) * 4, out.len());
            assert_eq!(out.last(), Some(&0));
            assert_eq!(parse_rtcp(&out), Ok(vec![]));
        }
        // Cut on a character boundary.
        let mut out = Vec::new();
        append_sdes_cname(5, &"é".repeat(200), &mut out);
        assert_eq!(out.get(9).copied(), Some(254));
    }

    #[test]
    fn rejects_malformed_rtcp() {
        assert_eq!(parse_rtcp(&[]), Err(RtpError::Empty));
        let rr = build_receiver_report(1, block(0));
        assert!(matches!(
            parse_rtcp(&rr[..31]),
            Err(RtpError::Length { .. })
        ));
        assert!(matches!(
            parse_rtcp(&rr[..3]),
            Err(RtpError::TooShort { .. })
        ));
        let mut v1 = rr.clone();
        v1[0] = 0x41;
        assert_eq!(parse_rtcp(&v1), Err(RtpError::Version(1)));
        let mut too_many = rr.clone();
        too_many[0] = 0x82; // two report blocks in a packet sized for one
        assert!(matches!(
            parse_rtcp(&too_many),
            Err(RtpError::ReportCount { count: 2, .. })
        ));
        let mut bad_padding = rr.clone();
        bad_padding[0] |= 0x20;
        *bad_padding.last_mut().unwrap() = 200;
        assert!(matches!(
            parse_rtcp(&bad_padding),
            Err(RtpError::Padding { .. })
        ));
    }

    #[test]
    fn receiver_stats_fill_a_report_block() {
        let mut stats = ReceiverStats::new();
        feed(&mut stats, &[1, 2, 3, 5, 6]);
        let block = stats.report_block(77, 0xAAAA_BBBB, 100);
        assert_eq!(block.ssrc, 77);
        assert_eq!(block.cumulative_lost, 1);
        assert_eq!(block.highest_seq, 6);
        assert_eq!(block.fraction_lost, (256 / 5) as u8);
        assert_eq!((block.lsr, block.dlsr), (0xAAAA_BBBB, 100));
        assert_eq!(stats.report_block(77, 0, 0).fraction_lost, 0);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut samples: Vec<Vec<u8>> = Vec::new();
        let mut header = RtpHeader::new(PCMU, 1, 2, 3);
        header.csrcs = vec![4, 5];
        samples.push(packet_bytes(&header, &[1; 20]));
        let mut compound = build_sender_report(1, 2, 3, 4, 5, Some(block(-7)));
        append_sdes_cname(1, "a@b", &mut compound);
        samples.push(compound);
        for _ in 0..2000 {
            let len = (rng.next() % 96) as usize;
            let mut bytes = rng.bytes(len);
            // Bias towards version 2 so the deeper paths are reached.
            if let Some(b0) = bytes.first_mut() {
                if rng.next() % 2 == 0 {
                    *b0 = (*b0 & 0x3F) | 0x80;
                }
            }
            samples.push(bytes);
        }
        for sample in &samples {
            for end in 0..=sample.len() {
                let prefix = &sample[..end];
                let _ = parse(prefix);
                let _ = parse_rtcp(prefix);
                let _ = is_rtcp(prefix);
                let _ = is_stun(prefix);
            }
            // Single-byte corruptions of the valid packets.
            let mut mutated = sample.clone();
            for _ in 0..8 {
                if mutated.is_empty() {
                    break;
                }
                let i = (rng.next() as usize) % mutated.len();
                mutated[i] = rng.next() as u8;
                let _ = parse(&mutated);
                let _ = parse_rtcp(&mutated);
            }
        }
        let mut stats = ReceiverStats::new();
        for _ in 0..10_000 {
            let r = rng.next();
            stats.update(r as u16, (r >> 16) as u32, (r >> 32) as u32);
            let _ = stats.fraction_lost();
        }
        let _ = stats.report_block(1, 2, 3);
    }
}
