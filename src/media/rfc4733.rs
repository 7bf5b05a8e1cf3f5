//! RFC 4733 telephone-events, the way callers' phones send DTMF key presses over RTP: the
//! 4-byte event payload, the digit mapping, a receiver that turns the redundant, lost or
//! reordered packets of each key press into exactly one digit, and a sender producing the
//! packets of one digit. The runtime supplies RTP timestamps and marker bits and sends what
//! comes back; nothing here reads a clock.

/// One telephone-event payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    /// Set on the (three) final packets of an event.
    pub end: bool,
    /// Power level in -dBm0 (0 loudest, 63 quietest); only six bits on the wire.
    pub volume: u8,
    /// Length so far, in RTP timestamp units from the event's timestamp.
    pub duration: u16,
}

pub const PAYLOAD_LEN: usize = 4;
pub const MAX_VOLUME: u8 = 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("telephone-event payload is {0} bytes, needs at least 4")]
    TooShort(usize),
}

/// Reads the first event. Trailing bytes are ignored rather than rejected: we do not
/// negotiate RFC 2198 redundancy, and a sender that pads should not lose its digits.
pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, EventError> {
    match payload {
        [event, flags, d0, d1, ..] => Ok(TelephoneEvent {
            event: *event,
            end: flags & 0x80 != 0,
            // The R bit (0x40) is reserved; receivers ignore it.
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([*d0, *d1]),
        }),
        _ => Err(EventError::TooShort(payload.len())),
    }
}

/// Appends the payload. A volume above 63 is written as 63 rather than spilling into the
/// reserved bit.
pub fn write(event: &TelephoneEvent, out: &mut Vec<u8>) {
    out.push(event.event);
    out.push((u8::from(event.end) << 7) | event.volume.min(MAX_VOLUME));
    out.extend_from_slice(&event.duration.to_be_bytes());
}

/// Events 0-15 are the DTMF keys (RFC 4733 section 3.2); the rest (flash, fax and modem
/// tones) are not digits.
pub fn digit_for_event(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// Lower-case a-d are accepted because configuration files and agents' UIs use both.
pub fn event_for_digit(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => digit.to_digit(10).map(|d| d as u8),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// When a key press becomes a digit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportAt {
    /// At the first end packet, or when the press is known to be over without one. The
    /// default: an IVR menu acts on a key once it is released, the end packet is sent three
    /// times so it rarely goes missing, and a press whose start packets were all lost is
    /// still reported.
    #[default]
    End,
    /// At the first packet seen, for callers who want the lowest latency (barge-in).
    Start,
}

/// With no end packet and no new event, a press is taken as over once the stream's clock is
/// this far past its last known duration: four missed 50 ms updates.
pub const DEFAULT_LOST_END_TIMEOUT: u32 = 1600;

/// Turns a stream of telephone-event packets into digits, exactly once per key press.
///
/// A press is identified by its RTP timestamp (RFC 4733 section 2.5.1: every packet of one
/// event carries the event's start time), so redundant end packets and retransmissions map
/// onto the press already seen. Packets of presses older than the newest finished one are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DtmfReceiver {
    report_at: ReportAt,
    lost_end_timeout: u32,
    current: Option<Press>,
    /// Timestamp of the newest press that is over (reported or superseded).
    last_done: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Press {
    timestamp: u32,
    event: u8,
    duration: u16,
    ended: bool,
    reported: bool,
}

impl Default for DtmfReceiver {
    fn default() -> DtmfReceiver {
        DtmfReceiver::new(ReportAt::End)
    }
}

/// Serial-number comparison (RFC 1982) of RTP timestamps, which wrap every 2^32.
fn is_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl DtmfReceiver {
    pub fn new(report_at: ReportAt) -> DtmfReceiver {
        DtmfReceiver {
            report_at,
            lost_end_timeout: DEFAULT_LOST_END_TIMEOUT,
            current: None,
            last_done: None,
        }
    }

    pub fn with_lost_end_timeout(mut self, timeout: u32) -> DtmfReceiver {
        self.lost_end_timeout = timeout;
        self
    }

    /// Feeds one telephone-event packet; returns the digits it completes, in order (two when
    /// it starts a new press while the previous one's end packets were all lost).
    pub fn push(&mut self, timestamp: u32, marker: bool, event: TelephoneEvent) -> Vec<char> {
        let mut digits = Vec::new();
        if self
            .last_done
            .is_some_and(|done| !is_newer(timestamp, done))
        {
            return digits;
        }
        let report_at = self.report_at;
        if let Some(press) = self.current.as_mut() {
            if timestamp == press.timestamp {
                press.duration = press.duration.max(event.duration);
                press.ended |= event.end;
                if event.end || report_at == ReportAt::Start {
                    digits.extend(press.report());
                }
                return digits;
            }
            if !is_newer(timestamp, press.timestamp) {
                return digits;
            }
            // An event too long for the 16-bit duration goes on in a new segment whose
            // timestamp is where the previous segment ended, without a marker: same press.
            let continues = !marker
                && !press.ended
                && event.event == press.event
                && timestamp == press.timestamp.wrapping_add(u32::from(press.duration));
            if continues {
                press.timestamp = timestamp;
                press.duration = event.duration;
                press.ended = event.end;
                if event.end {
                    digits.extend(press.report());
                }
                return digits;
            }
            // A new press: the previous one is over whether or not its end arrived.
            digits.extend(press.report());
            self.last_done = Some(press.timestamp);
        }
        let mut press = Press {
            timestamp,
            event: event.event,
            duration: event.duration,
            ended: event.end,
            reported: false,
        };
        if event.end || report_at == ReportAt::Start {
            digits.extend(press.report());
        }
        self.current = Some(press);
        digits
    }

    /// Reports a press whose end packets were all lost once the stream's clock (`now`, in RTP
    /// timestamp units, e.g. the timestamp of the latest audio packet) is past its last known
    /// duration by the lost-end timeout. Call it as audio arrives.
    pub fn expire(&mut self, now: u32) -> Option<char> {
        let timeout = self.lost_end_timeout;
        let press = self.current.as_mut()?;
        let last_known_end = press.timestamp.wrapping_add(u32::from(press.duration));
        let overdue = now.wrapping_sub(last_known_end) as i32;
        if overdue > 0 && overdue.unsigned_abs() > timeout {
            press.report()
        } else {
            None
        }
    }

    /// Reports a press still in progress, for when the stream stops (hang-up, re-INVITE).
    pub fn flush(&mut self) -> Option<char> {
        self.current.as_mut()?.report()
    }
}

impl Press {
    /// The digit, the first time only; events that are not digits report nothing.
    fn report(&mut self) -> Option<char> {
        if self.reported {
            return None;
        }
        self.reported = true;
        digit_for_event(self.event)
    }
}

/// One packet of an outgoing digit. `send_offset` is when to send it, in timestamp units
/// after the tone's start; the RTP header comes from `RtpSender::event_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfPacket {
    pub send_offset: u32,
    pub timestamp: u32,
    pub marker: bool,
    pub event: TelephoneEvent,
}

/// Produces the packets of one key press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfSender {
    /// Tone length in timestamp units. 800 (100 ms) is well above the 40 ms every receiver
    /// must accept and short enough for quick dialling.
    pub duration: u16,
    /// Time between updates; RFC 4733 suggests 50 ms (400 units at 8 kHz).
    pub update_interval: u16,
    /// -dBm0; 10 is the customary level of generated DTMF.
    pub volume: u8,
}

/// Below 10 ms between updates a press would become hundreds of packets.
const MIN_UPDATE_INTERVAL: u16 = 80;
/// RFC 4733 2.5.1.4: the end packet is sent three times in case of loss.
const END_PACKET_COPIES: usize = 3;

impl Default for DtmfSender {
    fn default() -> DtmfSender {
        DtmfSender {
            duration: 800,
            update_interval: 400,
            volume: 10,
        }
    }
}

impl DtmfSender {
    /// The packets for `digit` starting at RTP `timestamp`, or `None` for a character that
    /// is not a DTMF key. Each packet reports the duration so far at its send time, so the
    /// first (with the marker) goes out one update interval into the tone; the final duration
    /// is repeated on all three end packets.
    pub fn packets(&self, digit: char, timestamp: u32) -> Option<Vec<DtmfPacket>> {
        let event = event_for_digit(digit)?;
        let duration = self.duration.max(1);
        let interval = self.update_interval.max(MIN_UPDATE_INTERVAL);
        let packet = |offset: u16, end: bool, first: bool| DtmfPacket {
            send_offset: u32::from(offset),
            timestamp,
            marker: first,
            event: TelephoneEvent {
                event,
                end,
                volume: self.volume.min(MAX_VOLUME),
                duration: offset,
            },
        };
        let mut packets = Vec::new();
        let mut elapsed = interval;
        while elapsed < duration {
            packets.push(packet(elapsed, false, packets.is_empty()));
            elapsed = elapsed.saturating_add(interval);
        }
        for _ in 0..END_PACKET_COPIES {
            packets.push(packet(duration, true, packets.is_empty()));
        }
        Some(packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> TelephoneEvent {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
    }

    fn feed(receiver: &mut DtmfReceiver, packets: &[DtmfPacket]) -> Vec<char> {
        packets
            .iter()
            .flat_map(|p| receiver.push(p.timestamp, p.marker, p.event))
            .collect()
    }

    fn press(digit: char, timestamp: u32) -> Vec<DtmfPacket> {
        DtmfSender::default().packets(digit, timestamp).unwrap()
    }

    #[test]
    fn payload_round_trip() {
        for event in [ev(0, false, 0), ev(11, true, 800), ev(255, true, u16::MAX)] {
            let mut out = Vec::new();
            write(&event, &mut out);
            assert_eq!(out.len(), PAYLOAD_LEN);
            assert_eq!(parse(&out), Ok(event));
        }
        assert_eq!(parse(&[5, 0x8A, 0x03, 0x20]), Ok(ev(5, true, 800)));
        // Reserved bit ignored, trailing bytes ignored.
        assert_eq!(parse(&[5, 0x4A, 0x03, 0x20, 9, 9]), Ok(ev(5, false, 800)));
        assert_eq!(parse(&[1, 2, 3]), Err(EventError::TooShort(3)));
        let mut out = Vec::new();
        write(
            &TelephoneEvent {
                event: 1,
                end: false,
                volume: 200,
                duration: 1,
            },
            &mut out,
        );
        assert_eq!(out[1], MAX_VOLUME);
    }

    #[test]
    fn digit_mapping_both_ways() {
        let keys = "0123456789*#ABCD";
        for (event, digit) in keys.chars().enumerate() {
            assert_eq!(digit_for_event(event as u8), Some(digit));
            assert_eq!(event_for_digit(digit), Some(event as u8));
        }
        assert_eq!(event_for_digit('b'), Some(13));
        assert_eq!(digit_for_event(16), None);
        assert_eq!(digit_for_event(255), None);
        for bad in ['E', 'e', ' ', 'x', '+', '٣'] {
            assert_eq!(event_for_digit(bad), None);
        }
    }

    #[test]
    fn sender_produces_start_updates_and_three_ends() {
        let packets = press('7', 1000);
        let shape: Vec<(u32, bool, bool, u16)> = packets
            .iter()
            .map(|p| (p.send_offset, p.marker, p.event.end, p.event.duration))
            .collect();
        assert_eq!(
            shape,
            [
                (400, true, false, 400),
                (800, false, true, 800),
                (800, false, true, 800),
                (800, false, true, 800)
            ]
        );
        assert!(packets
            .iter()
            .all(|p| p.timestamp == 1000 && p.event.event == 7 && p.event.volume == 10));

        let long = DtmfSender {
            duration: 2000,
            ..DtmfSender::default()
        };
        let packets = long.packets('#', 0).unwrap();
        assert_eq!(packets.len(), 4 + 3);
        assert_eq!(packets.iter().filter(|p| p.marker).count(), 1);
        // A tone shorter than one update is just the end packets, the first with the marker.
        let short = DtmfSender {
            duration: 100,
            ..DtmfSender::default()
        };
        let packets = short.packets('1', 0).unwrap();
        assert_eq!(packets.len(), 3);
        assert!(packets[0].marker && packets.iter().all(|p| p.event.end));
        assert_eq!(DtmfSender::default().packets('x', 0), None);
        // A zero interval is raised instead of looping forever.
        let zero = DtmfSender {
            duration: u16::MAX,
            update_interval: 0,
            volume: 0,
        };
        assert!(zero.packets('1', 0).unwrap().len() < 1000);
    }

    #[test]
    fn duplicated_end_packets_count_once() {
        let mut receiver = DtmfReceiver::default();
        let mut packets = press('5', 8000);
        packets.extend(press('5', 8000).into_iter().skip(1));
        let digits: Vec<Vec<char>> = packets
            .iter()
            .map(|p| receiver.push(p.timestamp, p.marker, p.event))
            .collect();
        // Nothing at the start packet, the digit at the first end packet, then silence.
        assert_eq!(digits[0], Vec::<char>::new());
        assert_eq!(digits[1], vec!['5']);
        assert!(digits[2..].iter().all(Vec::is_empty));
    }

    #[test]
    fn reordered_and_retransmitted_packets_count_once() {
        let long = DtmfSender {
            duration: 2000,
            ..DtmfSender::default()
        };
        let packets = long.packets('9', 500).unwrap();
        // End packet first, then everything else backwards, then retransmissions.
        let mut shuffled: Vec<DtmfPacket> = packets.iter().rev().copied().collect();
        shuffled.extend(packets.iter().copied());
        let mut receiver = DtmfReceiver::default();
        assert_eq!(feed(&mut receiver, &shuffled), vec!['9']);
    }

    #[test]
    fn lost_start_packet_still_reports() {
        let mut receiver = DtmfReceiver::default();
        let long = DtmfSender {
            duration: 2000,
            ..DtmfSender::default()
        };
        let packets = long.packets('3', 0).unwrap();
        assert_eq!(feed(&mut receiver, &packets[1..]), vec!['3']);
        // Even when only one end packet survives.
        let mut receiver = DtmfReceiver::default();
        assert_eq!(feed(&mut receiver, &packets[6..]), vec!['3']);
    }

    #[test]
    fn lost_end_packets_report_when_the_next_press_starts() {
        let mut receiver = DtmfReceiver::default();
        let first: Vec<DtmfPacket> = press('1', 0).into_iter().filter(|p| !p.event.end).collect();
        assert_eq!(feed(&mut receiver, &first), Vec::<char>::new());
        let second = press('2', 2400);
        let at_start = receiver.push(second[0].timestamp, second[0].marker, second[0].event);
        assert_eq!(at_start, vec!['1']);
        assert_eq!(feed(&mut receiver, &second[1..]), vec!['2']);
    }

    #[test]
    fn lost_ends_and_lost_start_give_both_digits_at_once() {
        let mut receiver = DtmfReceiver::default();
        let first: Vec<DtmfPacket> = press('1', 0).into_iter().filter(|p| !p.event.end).collect();
        feed(&mut receiver, &first);
        let second = press('2', 2400);
        // Only the last end packet of the second press arrives.
        let last = second.last().unwrap();
        assert_eq!(
            receiver.push(last.timestamp, last.marker, last.event),
            vec!['1', '2']
        );
    }

    #[test]
    fn identical_digits_in_a_row_count_twice() {
        let mut receiver = DtmfReceiver::default();
        let mut packets = press('0', 0);
        packets.extend(press('0', 1600));
        assert_eq!(feed(&mut receiver, &packets), vec!['0', '0']);
    }

    #[test]
    fn packets_of_finished_presses_are_ignored() {
        let mut receiver = DtmfReceiver::default();
        let first = press('4', 10_000);
        let second = press('6', 12_000);
        assert_eq!(feed(&mut receiver, &first), vec!['4']);
        assert_eq!(feed(&mut receiver, &second), vec!['6']);
        // Late retransmissions of the first press, and a stray older one.
        assert_eq!(feed(&mut receiver, &first), Vec::<char>::new());
        assert_eq!(feed(&mut receiver, &press('8', 5000)), Vec::<char>::new());
        // Retransmissions of the current press are absorbed too.
        assert_eq!(feed(&mut receiver, &second), Vec::<char>::new());
    }

    #[test]
    fn report_at_start_reports_once_at_the_first_packet() {
        let mut receiver = DtmfReceiver::new(ReportAt::Start);
        let packets = press('#', 0);
        assert_eq!(
            receiver.push(packets[0].timestamp, packets[0].marker, packets[0].event),
            vec!['#']
        );
        assert_eq!(feed(&mut receiver, &packets[1..]), Vec::<char>::new());
        assert_eq!(feed(&mut receiver, &press('#', 1600)), vec!['#']);
    }

    #[test]
    fn expire_reports_a_press_whose_end_never_came() {
        let mut receiver = DtmfReceiver::default();
        let packets = press('7', 1000);
        receiver.push(packets[0].timestamp, packets[0].marker, packets[0].event);
        // Last known end is 1000 + 400; not overdue yet.
        assert_eq!(receiver.expire(1400 + DEFAULT_LOST_END_TIMEOUT), None);
        assert_eq!(receiver.expire(1401 + DEFAULT_LOST_END_TIMEOUT), Some('7'));
        assert_eq!(receiver.expire(100_000), None);
        // The end packets arriving afterwards do not repeat it.
        assert_eq!(feed(&mut receiver, &packets), Vec::<char>::new());
        assert_eq!(receiver.flush(), None);
    }

    #[test]
    fn flush_reports_a_press_in_progress() {
        let mut receiver = DtmfReceiver::default();
        assert_eq!(receiver.flush(), None);
        let packets = press('C', 0);
        receiver.push(packets[0].timestamp, packets[0].marker, packets[0].event);
        assert_eq!(receiver.flush(), Some('C'));
        assert_eq!(receiver.flush(), None);
    }

    #[test]
    fn timestamps_wrap() {
        let mut receiver = DtmfReceiver::default();
        let mut packets = press('1', u32::MAX - 100);
        packets.extend(press('2', 1500));
        assert_eq!(feed(&mut receiver, &packets), vec!['1', '2']);
        assert_eq!(
            feed(&mut receiver, &press('3', u32::MAX - 5000)),
            Vec::<char>::new()
        );
    }

    #[test]
    fn long_press_segments_are_one_digit() {
        let mut receiver = DtmfReceiver::default();
        let first_segment = [
            (0, true, ev(5, false, 400)),
            (0, false, ev(5, false, 30_000)),
            (0, false, ev(5, false, u16::MAX)),
        ];
        let next = u32::from(u16::MAX);
        let second_segment = [
            (next, false, ev(5, false, 400)),
            (next, false, ev(5, true, 4000)),
            (next, false, ev(5, true, 4000)),
        ];
        let digits: Vec<char> = first_segment
            .iter()
            .chain(second_segment.iter())
            .flat_map(|&(ts, marker, event)| receiver.push(ts, marker, event))
            .collect();
        assert_eq!(digits, vec!['5']);
    }

    #[test]
    fn non_digit_events_are_tracked_but_not_reported() {
        let mut receiver = DtmfReceiver::default();
        assert!(receiver.push(0, true, ev(16, true, 800)).is_empty());
        assert_eq!(feed(&mut receiver, &press('9', 2000)), vec!['9']);
    }

    #[test]
    fn random_packets_never_panic_nor_report_more_than_once_per_timestamp() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for mode in [ReportAt::End, ReportAt::Start] {
            let mut receiver = DtmfReceiver::new(mode).with_lost_end_timeout(800);
            let mut timestamps = std::collections::HashSet::new();
            let mut reported = 0;
            let mut current_ts = 0u32;
            for _ in 0..20_000 {
                let r = next();
                // Mostly repeats of a moving timestamp, sometimes wild jumps either way.
                if r % 7 == 0 {
                    current_ts = current_ts.wrapping_add((r >> 8) as u32 % 3000);
                } else if r % 101 == 0 {
                    current_ts = (r >> 16) as u32;
                }
                let bytes = (r >> 24).to_be_bytes();
                let payload = bytes.get(..(r % 6) as usize).unwrap_or_default();
                if let Ok(event) = parse(payload) {
                    timestamps.insert(current_ts);
                    let digits = receiver.push(current_ts, r & 1 == 0, event);
                    assert!(digits.len() <= 2);
                    reported += digits.len();
                }
                if r % 13 == 0 {
                    let now = current_ts.wrapping_add((r >> 40) as u32);
                    reported += usize::from(receiver.expire(now).is_some());
                }
            }
            reported += usize::from(receiver.flush().is_some());
            assert!(reported > 0);
            assert!(
                reported <= timestamps.len(),
                "{reported} > {}",
                timestamps.len()
            );
        }
    }
}
