//! The media task: RTP for every call, paced by ONE 20 ms timer for all calls (never a task or a
//! sleep per packet). It plays prompts from G.711 frames encoded once at start-up, latches onto
//! the address the caller's RTP really comes from (symmetric RTP), turns RFC 4733 events and
//! in-band tones into digits, records the caller with voice-activity detection, sends RTCP
//! sender reports, ends silent calls, and reports loss and jitter when a call closes. Decisions
//! stay in the engine: this task only reports `MediaEvent`s back as `Input::Media`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rubato::Resampler;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::prompts::PromptStore;
use crate::engine::{Input, MediaCommand, MediaEvent, RtpReport};
use crate::media::dtmf_inband::InbandDetector;
use crate::media::g711::Law;
use crate::media::rfc4733::{self, DtmfReceiver, ReportAt};
use crate::media::rtp::{self, ReceiverStats, RtpSender};
use crate::sip::sdp::Codec;

/// Samples per 20 ms G.711 frame at 8 kHz.
const FRAME: usize = 160;
/// The one timer: a 1 ms tick walking a 20-slot wheel. Each call lives in one slot and is sent a
/// frame every 20 ticks; spreading calls over the slots keeps each burst of sends short, so a
/// call's packets leave at a steady phase instead of queueing behind every other call's.
const TICK: Duration = Duration::from_millis(1);
const SLOTS: usize = 20;
const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// One prompt in both laws.
struct EncodedPrompt {
    ulaw: Arc<[u8]>,
    alaw: Arc<[u8]>,
}

/// Every prompt encoded once per law, shared by all calls; keyed by (language, id).
pub struct PromptFrames {
    encoded: HashMap<(String, String), EncodedPrompt>,
}

impl PromptFrames {
    pub fn new(store: &PromptStore) -> PromptFrames {
        let mut encoded = HashMap::new();
        for (language, id, samples) in store.iter() {
            let mut ulaw = Vec::with_capacity(samples.len());
            let mut alaw = Vec::with_capacity(samples.len());
            Law::Ulaw.encode(&samples, &mut ulaw);
            Law::Alaw.encode(&samples, &mut alaw);
            encoded.insert(
                (language.to_string(), id.to_string()),
                EncodedPrompt {
                    ulaw: ulaw.into(),
                    alaw: alaw.into(),
                },
            );
        }
        PromptFrames { encoded }
    }

    fn get(&self, language: &str, id: &str, law: Law) -> Option<Arc<[u8]>> {
        let pick = |prompt: &EncodedPrompt| match law {
            Law::Ulaw => prompt.ulaw.clone(),
            Law::Alaw => prompt.alaw.clone(),
        };
        self.encoded
            .get(&(language.to_string(), id.to_string()))
            .or_else(|| self.encoded.get(&("common".to_string(), id.to_string())))
            .map(pick)
    }
}

/// Counters for /healthz.
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub malformed: AtomicU64,
    pub dropped_overload: AtomicU64,
    pub stun_ignored: AtomicU64,
}

pub struct MediaSettings {
    pub rtp_timeout: Duration,
    pub recordings_dir: PathBuf,
    /// A capture that hears no speech at all for this long ends as `no_speech`.
    pub no_speech_timeout: Duration,
}

/// What the engine loop uses to drive the media task.
#[derive(Clone)]
pub struct MediaHandle {
    commands: mpsc::UnboundedSender<MediaMessage>,
    pub stats: Arc<MediaStats>,
}

enum MediaMessage {
    Command(MediaCommand),
    /// Answered once every earlier command is done (and its reports are queued to the engine).
    Sync(tokio::sync::oneshot::Sender<()>),
}

impl MediaHandle {
    pub fn apply(&self, command: MediaCommand) {
        let _ = self.commands.send(MediaMessage::Command(command));
    }

    /// Waits until the media task has handled every command sent so far.
    pub async fn sync(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(MediaMessage::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Datagram {
    port: u16,
    from: SocketAddr,
    data: Bytes,
}

struct Capture {
    samples: Vec<i16>,
    max_samples: usize,
    silence_samples: usize,
    no_speech_samples: usize,
    started: Instant,
    max: Duration,
    vad: Box<earshot::Detector>,
    resampler: rubato::FftFixedIn<f32>,
    pending_16k: Vec<i16>,
    voiced_frames: u32,
    speech_started: bool,
    last_voice_sample: usize,
}

impl Capture {
    fn new(max: Duration, silence: Duration, no_speech: Duration, now: Instant) -> Capture {
        let per_ms = 8usize;
        Capture {
            samples: Vec::with_capacity(8000 * 10),
            max_samples: max.as_millis() as usize * per_ms,
            silence_samples: silence.as_millis() as usize * per_ms,
            no_speech_samples: no_speech.as_millis() as usize * per_ms,
            started: now,
            max,
            vad: earshot::Detector::default_boxed(),
            resampler: rubato::FftFixedIn::<f32>::new(8000, 16000, FRAME, 1, 1)
                .expect("8 to 16 kHz resampler with fixed parameters"),
            pending_16k: Vec::with_capacity(1024),
            voiced_frames: 0,
            speech_started: false,
            last_voice_sample: 0,
        }
    }

    /// Adds one received frame; returns why the capture is over, if it is.
    fn push(&mut self, frame: &[i16]) -> Option<&'static str> {
        self.samples.extend_from_slice(frame);
        // earshot wants 16 kHz in 256-sample (16 ms) frames; rubato doubles the rate.
        if frame.len() == FRAME {
            let input = vec![frame
                .iter()
                .map(|s| *s as f32 / 32768.0)
                .collect::<Vec<f32>>()];
            if let Ok(output) = self.resampler.process(&input, None) {
                if let Some(channel) = output.first() {
                    self.pending_16k.extend(
                        channel
                            .iter()
                            .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16),
                    );
                }
            }
        }
        while self.pending_16k.len() >= 256 {
            let score = self.vad.predict_i16(&self.pending_16k[..256]);
            self.pending_16k.drain(..256);
            if score >= 0.5 {
                self.voiced_frames += 1;
                // Three voiced 16 ms frames in all before we call it speech: clicks are not.
                if self.voiced_frames >= 3 {
                    self.speech_started = true;
                }
                self.last_voice_sample = self.samples.len();
            }
        }
        if self.samples.len() >= self.max_samples {
            return Some("max_length");
        }
        if self.speech_started
            && self.samples.len() - self.last_voice_sample >= self.silence_samples
        {
            return Some("end_of_speech");
        }
        if !self.speech_started && self.samples.len() >= self.no_speech_samples {
            return Some("no_speech");
        }
        None
    }
}

struct Session {
    call_ref: String,
    sip_call_id: String,
    socket: Arc<UdpSocket>,
    rtcp_socket: Option<Arc<UdpSocket>>,
    remote: Option<SocketAddr>,
    law: Law,
    payload_type: u8,
    telephone_event_pt: Option<u8>,
    sender: RtpSender,
    started: Instant,
    last_received: Instant,
    timed_out: bool,
    playlist: VecDeque<Arc<[u8]>>,
    play_offset: usize,
    play_id: Option<u64>,
    receiver: ReceiverStats,
    dtmf: DtmfReceiver,
    inband: Option<InbandDetector>,
    capture: Option<Capture>,
    recordings: u32,
    packets_sent: u32,
    octets_sent: u32,
    malformed: u64,
    next_rtcp: Instant,
    decoded: Vec<i16>,
    /// The session whose audio this one relays (caller and agent bridged), by RTP port.
    bridged_to: Option<u16>,
    /// Decoded frames from the bridged session, sent on this session's own 20 ms beat
    /// (re-encoded in this leg's law, so PCMU and PCMA legs can be bridged).
    relay: VecDeque<Vec<i16>>,
}

/// Frames of relayed audio kept at most (160 ms): beyond that the oldest is dropped.
const RELAY_FRAMES: usize = 8;

impl Session {
    fn arrival_units(&self, now: Instant) -> u32 {
        // RTP timestamp units (8 kHz) since the session began, for the jitter estimate.
        (now.saturating_duration_since(self.started).as_micros() / 125) as u32
    }
}

/// Binds nothing: takes the pool's sockets, starts one receive task per socket and the media loop.
pub fn spawn(
    sockets: Vec<(u16, std::net::UdpSocket, Option<std::net::UdpSocket>)>,
    prompts: Arc<PromptFrames>,
    inbound: mpsc::Sender<Input>,
    settings: MediaSettings,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<MediaHandle> {
    let stats = Arc::new(MediaStats::default());
    let (datagrams_tx, datagrams_rx) = mpsc::channel::<Datagram>(65_536);
    let mut rtp_sockets = HashMap::new();
    for (port, rtp, rtcp) in sockets {
        rtp.set_nonblocking(true)?;
        let rtp = Arc::new(UdpSocket::from_std(rtp)?);
        let rtcp = match rtcp {
            Some(s) => {
                s.set_nonblocking(true)?;
                Some(Arc::new(UdpSocket::from_std(s)?))
            }
            None => None,
        };
        tokio::spawn(receive_loop(
            port,
            rtp.clone(),
            datagrams_tx.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
        rtp_sockets.insert(port, (rtp, rtcp));
    }
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    tokio::spawn(media_loop(
        rtp_sockets,
        prompts,
        commands_rx,
        datagrams_rx,
        inbound,
        settings,
        stats.clone(),
    ));
    Ok(MediaHandle {
        commands: commands_tx,
        stats,
    })
}

async fn receive_loop(
    port: u16,
    socket: Arc<UdpSocket>,
    out: mpsc::Sender<Datagram>,
    stats: Arc<MediaStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 2048];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buffer) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((len, from)) = received else { continue };
        let datagram = Datagram {
            port,
            from,
            data: Bytes::copy_from_slice(&buffer[..len]),
        };
        if out.try_send(datagram).is_err() {
            stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn media_loop(
    sockets: HashMap<u16, (Arc<UdpSocket>, Option<Arc<UdpSocket>>)>,
    prompts: Arc<PromptFrames>,
    mut commands: mpsc::UnboundedReceiver<MediaMessage>,
    mut datagrams: mpsc::Receiver<Datagram>,
    inbound: mpsc::Sender<Input>,
    settings: MediaSettings,
    stats: Arc<MediaStats>,
) {
    let mut sessions: HashMap<u16, Session> = HashMap::new();
    let mut ports_by_ref: HashMap<String, u16> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    // Burst: a late tick is caught up at once so every call keeps 50 packets a second.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut slots: Vec<Vec<u16>> = vec![Vec::new(); SLOTS];
    let mut tick_index: usize = 0;
    let mut packet = Vec::with_capacity(256);
    let report = |event: MediaEvent, call_ref: &str| {
        let input = Input::Media {
            call_ref: call_ref.to_string(),
            event,
        };
        if inbound.try_send(input).is_err() {
            tracing::warn!("engine inbound queue full; media event dropped");
        }
    };
    loop {
        tokio::select! {
            message = commands.recv() => {
                let command = match message {
                    Some(MediaMessage::Command(command)) => command,
                    Some(MediaMessage::Sync(ack)) => {
                        let _ = ack.send(());
                        continue;
                    }
                    None => return,
                };
                match command {
                    MediaCommand::Open { call_ref, sip_call_id, rtp_port, remote, codec, payload_type, telephone_event_pt } => {
                        let Some((socket, rtcp_socket)) = sockets.get(&rtp_port) else { continue };
                        let now = Instant::now();
                        let law = match codec { Codec::Pcmu => Law::Ulaw, Codec::Pcma => Law::Alaw };
                        ports_by_ref.insert(call_ref.clone(), rtp_port);
                        if sessions.is_empty() {
                            // The wheel was idle (not polled): restart it rather than burst-catch-up.
                            tick.reset();
                        }
                        // Join the least-filled slot of the wheel.
                        if let Some(slot) = slots.iter_mut().min_by_key(|s| s.len()) {
                            slot.push(rtp_port);
                        }
                        sessions.insert(rtp_port, Session {
                            call_ref,
                            sip_call_id,
                            socket: socket.clone(),
                            rtcp_socket: rtcp_socket.clone(),
                            remote,
                            law,
                            payload_type,
                            telephone_event_pt,
                            sender: RtpSender::new(rand::random(), rand::random(), rand::random()),
                            started: now,
                            last_received: now,
                            timed_out: false,
                            playlist: VecDeque::new(),
                            play_offset: 0,
                            play_id: None,
                            receiver: ReceiverStats::new(),
                            dtmf: DtmfReceiver::new(ReportAt::End),
                            // Callers without telephone-event send their keys as tones.
                            inband: telephone_event_pt.is_none().then(InbandDetector::new),
                            capture: None,
                            recordings: 0,
                            packets_sent: 0,
                            octets_sent: 0,
                            malformed: 0,
                            next_rtcp: now + RTCP_INTERVAL,
                            decoded: Vec::with_capacity(FRAME),
                            bridged_to: None,
                            relay: VecDeque::new(),
                        });
                    }
                    MediaCommand::Close { call_ref, rtp_port } => {
                        ports_by_ref.remove(&call_ref);
                        for slot in slots.iter_mut() {
                            slot.retain(|p| *p != rtp_port);
                        }
                        if let Some(session) = sessions.remove(&rtp_port) {
                            if let Some(other) = session.bridged_to.and_then(|p| sessions.get_mut(&p)) {
                                other.bridged_to = None;
                                other.relay.clear();
                            }
                            let report_event = MediaEvent::Stats(RtpReport {
                                sip_call_id: session.sip_call_id.clone(),
                                packets_sent: session.packets_sent,
                                packets_received: session.receiver.packets_received(),
                                packets_lost: session.receiver.cumulative_lost(),
                                jitter_ms: session.receiver.jitter() as f64 / 8.0,
                                malformed: session.malformed,
                            });
                            report(report_event, &session.call_ref);
                        }
                    }
                    MediaCommand::Play { call_ref, prompts: ids, language, play_id } => {
                        let Some(session) = ports_by_ref.get(&call_ref).and_then(|p| sessions.get_mut(p)) else { continue };
                        session.playlist.clear();
                        session.play_offset = 0;
                        for id in &ids {
                            match prompts.get(&language, id, session.law) {
                                Some(frames) => session.playlist.push_back(frames),
                                None => tracing::warn!(prompt = %id, %language, "prompt missing; skipped"),
                            }
                        }
                        session.play_id = Some(play_id);
                        if session.playlist.is_empty() {
                            session.play_id = None;
                            report(MediaEvent::PromptFinished { play_id }, &session.call_ref);
                        }
                    }
                    MediaCommand::StopPlayback { call_ref } => {
                        if let Some(session) = ports_by_ref.get(&call_ref).and_then(|p| sessions.get_mut(p)) {
                            session.playlist.clear();
                            session.play_id = None;
                        }
                    }
                    MediaCommand::StartCapture { call_ref, max, silence } => {
                        if let Some(session) = ports_by_ref.get(&call_ref).and_then(|p| sessions.get_mut(p)) {
                            session.capture = Some(Capture::new(max, silence, settings.no_speech_timeout.min(max), Instant::now()));
                        }
                    }
                    MediaCommand::Bridge { a, b } => {
                        let (Some(&port_a), Some(&port_b)) = (ports_by_ref.get(&a), ports_by_ref.get(&b)) else { continue };
                        for (port, other) in [(port_a, port_b), (port_b, port_a)] {
                            if let Some(session) = sessions.get_mut(&port) {
                                session.playlist.clear();
                                session.play_id = None;
                                session.bridged_to = Some(other);
                            }
                        }
                    }
                    MediaCommand::StopCapture { call_ref } => {
                        if let Some(session) = ports_by_ref.get(&call_ref).and_then(|p| sessions.get_mut(p)) {
                            finish_capture(session, "stopped", &settings, &inbound);
                        }
                    }
                }
            }
            datagram = datagrams.recv() => {
                let Some(datagram) = datagram else { return };
                stats.packets_in.fetch_add(1, Ordering::Relaxed);
                let Some(session) = sessions.get_mut(&datagram.port) else { continue };
                let data = &datagram.data[..];
                if rtp::is_stun(data) {
                    stats.stun_ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if rtp::is_rtcp(data) {
                    continue; // RTCP multiplexed on the RTP port: nothing to act on yet.
                }
                let Ok(parsed) = rtp::parse(data) else {
                    session.malformed += 1;
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let now = Instant::now();
                let pt = parsed.header.payload_type;
                let is_event = Some(pt) == session.telephone_event_pt;
                if !is_event && pt != session.payload_type {
                    continue; // Comfort noise or an unknown payload type: tolerated, ignored.
                }
                // Symmetric RTP: answer where the caller's media really comes from.
                session.remote = Some(datagram.from);
                session.last_received = now;
                let arrival = session.arrival_units(now);
                session.receiver.update(parsed.header.sequence, parsed.header.timestamp, arrival);
                if is_event {
                    if let Ok(event) = rfc4733::parse(parsed.payload) {
                        for digit in session.dtmf.push(parsed.header.timestamp, parsed.header.marker, event) {
                            report(MediaEvent::Digit(digit), &session.call_ref);
                        }
                    }
                    continue;
                }
                session.decoded.clear();
                session.law.decode(parsed.payload, &mut session.decoded);
                let frame = std::mem::take(&mut session.decoded);
                if let Some(inband) = session.inband.as_mut() {
                    for digit in inband.push(&frame) {
                        report(MediaEvent::Digit(digit), &session.call_ref);
                    }
                }
                let done = session.capture.as_mut().and_then(|c| c.push(&frame));
                let relay = session.bridged_to.map(|port| (port, frame.clone()));
                session.decoded = frame;
                if let Some(reason) = done {
                    finish_capture(session, reason, &settings, &inbound);
                }
                if let Some((port, frame)) = relay {
                    if let Some(other) = sessions.get_mut(&port) {
                        other.relay.push_back(frame);
                        if other.relay.len() > RELAY_FRAMES {
                            other.relay.pop_front();
                        }
                    }
                }
            }
            // No calls, no wake-ups: an idle server does not tick 1000 times a second.
            _ = tick.tick(), if !sessions.is_empty() => {
                let now = Instant::now();
                let slot = tick_index % SLOTS;
                tick_index = tick_index.wrapping_add(1);
                for port in &slots[slot] {
                    let Some(session) = sessions.get_mut(port) else { continue };
                    send_frame(session, &mut packet, &stats, &report);
                    if let Some(digit) = session.dtmf.expire(session.arrival_units(now)) {
                        report(MediaEvent::Digit(digit), &session.call_ref);
                    }
                    if !session.timed_out && now.saturating_duration_since(session.last_received) >= settings.rtp_timeout {
                        session.timed_out = true;
                        report(MediaEvent::RtpTimeout, &session.call_ref);
                    }
                    let overdue = session.capture.as_ref().is_some_and(|c| now.saturating_duration_since(c.started) > c.max + Duration::from_secs(1));
                    if overdue {
                        // The caller stopped sending audio (silence suppression): end by the clock.
                        finish_capture(session, "max_length", &settings, &inbound);
                    }
                    if now >= session.next_rtcp {
                        session.next_rtcp = now + RTCP_INTERVAL;
                        send_rtcp(session);
                    }
                }
            }
        }
    }
}

/// Sends this tick's frame: the next 20 ms of the prompt, or silence to keep the stream (and
/// NAT bindings) alive.
fn send_frame(
    session: &mut Session,
    packet: &mut Vec<u8>,
    stats: &MediaStats,
    report: &impl Fn(MediaEvent, &str),
) {
    let mut payload = [session.law.silence(); FRAME];
    if session.playlist.is_empty() {
        if let Some(pcm) = session.relay.pop_front() {
            for (out, sample) in payload.iter_mut().zip(&pcm) {
                *out = session.law.encode_sample(*sample);
            }
        }
    }
    if let Some(current) = session.playlist.front().cloned() {
        let end = (session.play_offset + FRAME).min(current.len());
        let chunk = &current[session.play_offset..end];
        payload[..chunk.len()].copy_from_slice(chunk);
        session.play_offset = end;
        if end >= current.len() {
            session.playlist.pop_front();
            session.play_offset = 0;
            if session.playlist.is_empty() {
                if let Some(play_id) = session.play_id.take() {
                    report(MediaEvent::PromptFinished { play_id }, &session.call_ref);
                }
            }
        }
    }
    let Some(remote) = session.remote else { return };
    let header = session
        .sender
        .next_header(session.payload_type, FRAME as u32);
    packet.clear();
    rtp::write(&header, &payload, packet);
    if session.socket.try_send_to(packet, remote).is_ok() {
        session.packets_sent = session.packets_sent.wrapping_add(1);
        session.octets_sent = session.octets_sent.wrapping_add(FRAME as u32);
        stats.packets_out.fetch_add(1, Ordering::Relaxed);
    }
}

fn send_rtcp(session: &mut Session) {
    let (Some(remote), Some(socket)) = (session.remote, session.rtcp_socket.as_ref()) else {
        return;
    };
    let ntp = ntp_now();
    let block =
        (session.receiver.packets_received() > 0).then(|| session.receiver.report_block(0, 0, 0));
    let report = rtp::build_sender_report(
        session.sender.ssrc(),
        ntp,
        session.sender.timestamp(),
        session.packets_sent,
        session.octets_sent,
        block,
    );
    let rtcp_remote = SocketAddr::new(remote.ip(), remote.port().wrapping_add(1));
    let _ = socket.try_send_to(&report, rtcp_remote);
}

/// NTP timestamp (RFC 3550 4) for sender reports: wall-clock, read here in the runtime.
fn ntp_now() -> u64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_unix.as_secs() + 2_208_988_800;
    let fraction = ((since_unix.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// Ends a capture: writes the WAV off the media task and reports it to the engine.
fn finish_capture(
    session: &mut Session,
    reason: &'static str,
    settings: &MediaSettings,
    inbound: &mpsc::Sender<Input>,
) {
    let Some(capture) = session.capture.take() else {
        return;
    };
    session.recordings += 1;
    let path = settings
        .recordings_dir
        .join(format!("{}-{}.wav", session.call_ref, session.recordings));
    let duration = Duration::from_millis(capture.samples.len() as u64 / 8);
    let call_ref = session.call_ref.clone();
    let inbound = inbound.clone();
    let samples = capture.samples;
    tokio::task::spawn_blocking(move || {
        let written = write_wav(&path, &samples);
        let (path, reason) = match written {
            Ok(()) => (Some(path.display().to_string()), reason.to_string()),
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "could not write the recording");
                (None, format!("{reason}; write failed: {error}"))
            }
        };
        let _ = inbound.blocking_send(Input::Media {
            call_ref,
            event: MediaEvent::RecordingFinished {
                duration,
                path,
                reason,
            },
        });
    });
}

fn write_wav(path: &std::path::Path, samples: &[i16]) -> Result<(), hound::Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)?;
    for sample in samples {
        writer.write_sample(*sample)?;
    }
    writer.finalize()
}
