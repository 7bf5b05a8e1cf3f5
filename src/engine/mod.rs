//! The engine: every decision civicline makes about a call, as pure code on an injected clock.
//!
//! `handle_input(now, Input)`, `handle_timeout(now)`, `poll_output()` and `poll_timeout()` are the
//! whole interface (the str0m / quinn-proto shape). The engine owns the SIP transaction layer,
//! the calls (one UAS dialog each), the RTP port pool's bookkeeping and the events to record. It
//! never touches a socket, a thread, a clock or the database: `runtime/` does that.

mod callback;
pub mod live;
mod queueing;
pub use callback::{
    CallbackRecord, CallbackSetup, DialPattern, DialPlan, DialPlanError, RestoredCallback,
};
pub use queueing::RoutingSetup;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::events::{CallEvent, EventKind};
use crate::ivr::{CaseInfo, Flow, IvrAction, IvrEvent, IvrSession};
use crate::sip::headers::{uri_scheme, CSeq, NameAddr, SipUri, Via};
use crate::sip::message::{SipMessage, StartLine};
use crate::sip::response::{build_response, response_destination};
use crate::sip::sdp::{self, Codec, LocalMedia, Negotiated};
use crate::sip::transaction::{RequestDisposition, TimerConfig, TransactionLayer, TxId, TxOutput};
use crate::sip::transport::Peer;

/// Methods we implement; also the `Allow` header value.
pub const ALLOWED_METHODS: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO";
/// Methods we recognise but do not support yet (405 rather than 501, RFC 3261 8.2.1).
const KNOWN_UNSUPPORTED: &[&str] = &[
    "REGISTER",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "MESSAGE",
    "REFER",
    "PUBLISH",
];

/// Engine settings; the runtime fills them from the TOML config.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub timers: TimerConfig,
    /// Send UDP responses to the packet's source, whatever the Via says (Asterisk `force_rport`).
    pub symmetric_responses: bool,
    /// Address written into SDP and Contact when the listening socket is a wildcard.
    pub advertised_ip: IpAddr,
    /// How long a call rings (180 sent) before we answer; 0 answers at once.
    pub answer_delay: Duration,
    /// `Server` header and SDP user name.
    pub server_name: String,
    /// Prefix of call references, unique per process start, so references never repeat.
    pub instance: String,
    /// Payload type we offer for telephone-event when the caller made no offer.
    pub telephone_event_pt: u8,
    /// Codec preference when the offer allows both.
    pub codecs: Vec<Codec>,
    /// The IVR flow callers walk after the ACK; `None` leaves answered calls silent.
    pub flow: Option<Arc<Flow>>,
    /// Queues and agents; `None`: a hand-off hears "all agents busy" (`handoff_without_queue`).
    pub routing: Option<Arc<RoutingSetup>>,
    /// Callbacks that keep a waiting caller's place; `None`: never offered.
    pub callbacks: Option<Arc<CallbackSetup>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            timers: TimerConfig::default(),
            symmetric_responses: true,
            advertised_ip: IpAddr::from([127, 0, 0, 1]),
            answer_delay: Duration::ZERO,
            server_name: format!("civicline/{}", env!("CARGO_PKG_VERSION")),
            instance: "c0".into(),
            telephone_event_pt: 101,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            flow: None,
            routing: None,
            callbacks: None,
        }
    }
}

/// What the runtime feeds in.
#[derive(Debug, Clone)]
pub enum Input {
    /// One SIP message (a datagram, or one framed message from a stream).
    Sip { peer: Peer, bytes: Bytes },
    /// Stop taking calls and hang up the ones in progress.
    Shutdown,
    /// Something the media layer observed on a call.
    Media { call_ref: String, event: MediaEvent },
    /// The store's answer to `Output::CreateCase` or `Output::LookupCase`.
    Case { call_ref: String, event: CaseEvent },
    /// New queue rules, already loaded and checked: callers keep their place.
    ReloadRouting(Box<crate::routing::rules::Rules>),
    /// An agent's state set from outside (the HTTP API): ready, not ready with a reason.
    AgentState {
        agent: String,
        ready: bool,
        reason: String,
    },
    /// The transcription stage's verdict on a recording (`Output::Utterance`). `detail` is a
    /// JSON object for the event log (category, confidence, timings; never the words).
    Transcript {
        call_ref: String,
        audio_path: String,
        outcome: crate::ivr::DraftOutcome,
        detail: Option<String>,
    },
    /// Callbacks the store held when the server started: each takes its place in line again.
    RestoreCallbacks(Vec<RestoredCallback>),
    /// An agent's new proficiencies (checked against the rules by the runtime, already saved
    /// in agents.toml): they apply at once, and to the agent's next logins.
    AgentSkills {
        agent: String,
        skills: crate::routing::rules::SkillSet,
    },
    /// A reloaded agents.toml, already loaded and checked against the rules in force: new
    /// agents can sign in, removed ones are signed out (after a call in hand), changed skills
    /// apply at once.
    ReloadAgents(Vec<crate::routing::rules::AgentProfile>),
}

/// Answers from the case store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseEvent {
    Created {
        number: String,
    },
    /// The case could not be stored; `reason` is the store's error. The recording stays on disk.
    CreateFailed {
        reason: String,
    },
    Found(Option<CaseInfo>),
}

/// Reports from the runtime's RTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// Everything queued by the `MediaCommand::Play` with this id has been sent.
    PromptFinished { play_id: u64 },
    /// A DTMF key (RFC 4733, in-band, or SIP INFO), reported once per press.
    Digit(char),
    /// A capture ended; `path` is the WAV kept in the data directory.
    RecordingFinished {
        duration: Duration,
        path: Option<String>,
        reason: String,
    },
    /// No RTP from the caller for the configured time.
    RtpTimeout,
    /// Final RTP/RTCP figures of a closed call.
    Stats(RtpReport),
}

/// Loss and jitter of one call, reported by the media layer when the call closes.
#[derive(Debug, Clone, PartialEq)]
pub struct RtpReport {
    pub sip_call_id: String,
    pub packets_sent: u32,
    pub packets_received: u32,
    pub packets_lost: i64,
    pub jitter_ms: f64,
    pub malformed: u64,
}

impl Eq for RtpReport {}

/// Media instructions for the runtime's RTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    Open {
        call_ref: String,
        sip_call_id: String,
        rtp_port: u16,
        remote: Option<SocketAddr>,
        codec: Codec,
        payload_type: u8,
        telephone_event_pt: Option<u8>,
    },
    Close {
        call_ref: String,
        rtp_port: u16,
    },
    /// Queue prompts for playback, replacing whatever was playing.
    Play {
        call_ref: String,
        prompts: Vec<String>,
        language: String,
        /// Echoed in `MediaEvent::PromptFinished`, so a late report of an interrupted prompt
        /// is never taken for the end of the next one.
        play_id: u64,
    },
    StopPlayback {
        call_ref: String,
    },
    StartCapture {
        call_ref: String,
        max: Duration,
        silence: Duration,
    },
    StopCapture {
        call_ref: String,
    },
    /// Relay audio both ways between two calls' media (caller and agent), transcoding between
    /// PCMU and PCMA where the legs differ; playback on either stops.
    Bridge {
        a: String,
        b: String,
    },
}

/// What the runtime must carry out.
#[derive(Debug, Clone)]
pub enum Output {
    Transmit {
        to: Peer,
        bytes: Bytes,
    },
    Media(MediaCommand),
    Record(CallEvent),
    /// Store a new open case for this call's recording, then answer `Input::Case`.
    CreateCase {
        call_ref: String,
        audio_path: Option<String>,
    },
    /// Find a case by number, then answer `Input::Case`.
    LookupCase {
        call_ref: String,
        number: String,
    },
    /// A caller's recorded utterance, ready for the transcription stage.
    Utterance {
        call_ref: String,
        path: String,
        duration: Duration,
    },
    /// A callback's new state, to keep in the store (so callbacks survive a restart).
    SaveCallback(CallbackRecord),
}

/// Counters for health and metrics; every one is derived from engine decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub messages: u64,
    pub unparseable: u64,
    pub responses_sent: BTreeMap<u16, u64>,
    pub stray_responses: u64,
    pub calls_active: usize,
    pub calls_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// INVITE received, 180 sent, waiting for the answer timer.
    Ringing,
    /// 200 OK sent, waiting for ACK.
    Answered,
    Confirmed,
    /// We sent BYE and wait for its response.
    Terminating,
}

#[derive(Debug)]
struct Call {
    call_ref: String,
    sip_call_id: String,
    local_tag: String,
    remote_tag: String,
    /// Our identity as the caller addressed us (their To), used as From in our requests.
    local_uri: String,
    /// The caller's From value, used as To in our requests.
    remote_uri: String,
    remote_target: String,
    route_set: Vec<String>,
    peer: Peer,
    invite: SipMessage,
    invite_tx: TxId,
    state: CallState,
    local_cseq: u32,
    rtp_port: u16,
    answer: Option<Negotiated>,
    /// Our SDP (answer or offer), reused for re-INVITEs.
    local_sdp: Vec<u8>,
    received_at: Instant,
    answered_at: Option<Instant>,
    answer_at: Option<Instant>,
    bye_tx: Option<TxId>,
    ivr: Option<IvrSession>,
    /// The IVR's pending deadline, mirrored in `call_timers`.
    ivr_deadline: Option<Instant>,
    /// Set when nobody can take the caller: hang up once the busy prompt has played.
    hangup_after_prompt: Option<&'static str>,
    /// Id of the playback in progress; other PromptFinished reports are stale.
    play_id: u64,
    /// The caller's last recording, for the case it becomes.
    last_recording: Option<String>,
    /// The case stored for this call, attached to its hand-off.
    case_number: Option<String>,
    /// The category of the caller's understood report, for routing and the agent's whisper.
    category: Option<String>,
}

/// RTP ports the runtime bound in advance; reused least-recently-released first so late packets
/// of an ended call do not land in the next one.
#[derive(Debug, Default)]
pub struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        PortPool {
            free: ports.into_iter().collect(),
        }
    }
    fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }
    fn put(&mut self, port: u16) {
        self.free.push_back(port);
    }
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

pub struct Engine {
    config: EngineConfig,
    rng: SmallRng,
    transactions: TransactionLayer,
    calls: HashMap<u64, Call>,
    /// `Call-ID|local tag` -> call number.
    dialogs: HashMap<String, u64>,
    /// Call reference -> call number, for media events.
    call_refs: HashMap<String, u64>,
    invite_tx_calls: HashMap<TxId, u64>,
    bye_tx_calls: HashMap<TxId, u64>,
    /// `From tag|Call-ID|CSeq` of live server transactions, for merged-request detection.
    merge_keys: HashMap<String, TxId>,
    tx_merge_keys: HashMap<TxId, String>,
    /// Engine-level timers (answer after ringing).
    call_timers: BTreeSet<(Instant, u64)>,
    ports: PortPool,
    outputs: VecDeque<Output>,
    next_call: u64,
    shutting_down: bool,
    stats: EngineStats,
    queueing: Option<Box<queueing::Queueing>>,
    /// The `now` of the latest input or timeout (for bookkeeping deep in call teardown).
    last_now: Option<Instant>,
}

/// Why a request is refused before any method handling.
struct Reject {
    code: u16,
    reason: String,
}

impl Engine {
    pub fn new(config: EngineConfig, ports: PortPool, seed: u64) -> Self {
        let mut secret_rng = SmallRng::seed_from_u64(seed ^ 0x005e_c2e7);
        let mut secret = [0u8; 32];
        secret_rng.fill(&mut secret);
        let queueing = config
            .routing
            .clone()
            .map(|setup| Box::new(queueing::Queueing::new(setup, secret)));
        let mut engine = Engine {
            transactions: TransactionLayer::new(config.timers),
            config,
            rng: SmallRng::seed_from_u64(seed),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            call_refs: HashMap::new(),
            invite_tx_calls: HashMap::new(),
            bye_tx_calls: HashMap::new(),
            merge_keys: HashMap::new(),
            tx_merge_keys: HashMap::new(),
            call_timers: BTreeSet::new(),
            ports,
            outputs: VecDeque::new(),
            next_call: 1,
            shutting_down: false,
            stats: EngineStats::default(),
            queueing: None,
            last_now: None,
        };
        engine.queueing = queueing;
        engine
    }

    /// The routing core, when queues are configured (read-only: for the API and tests).
    pub fn router(&self) -> Option<&crate::routing::core::Router> {
        self.queueing.as_deref().map(|q| q.router())
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            calls_active: self.calls.len(),
            ..self.stats.clone()
        }
    }

    pub fn free_rtp_ports(&self) -> usize {
        self.ports.available()
    }

    /// True once shutdown was asked for and every call and transaction has finished.
    pub fn is_drained(&self) -> bool {
        self.shutting_down && self.calls.is_empty() && self.transactions.len().1 == 0
    }

    /// At the very end of a shutdown: forgets calls whose BYE is still unanswered (their end
    /// was recorded when the BYE went out) so their media is closed and reported.
    pub fn abandon_remaining_calls(&mut self) {
        let numbers: Vec<u64> = self.calls.keys().copied().collect();
        for number in numbers {
            self.forget_call(number);
        }
    }

    pub fn live_transactions(&self) -> (usize, usize) {
        self.transactions.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self.transactions.next_timeout();
        let call = self.call_timers.first().map(|(at, _)| *at);
        let routing = self.queueing.as_deref().and_then(|q| q.poll_timeout());
        [tx, call, routing].into_iter().flatten().min()
    }

    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.last_now = Some(now);
        match input {
            Input::Sip { peer, bytes } => self.handle_sip(now, peer, &bytes),
            Input::Shutdown => self.shutdown(now),
            Input::Media { call_ref, event } => self.handle_media(now, &call_ref, event),
            Input::Case { call_ref, event } => self.handle_case(now, &call_ref, event),
            Input::ReloadRouting(rules) => self.reload_routing(now, *rules),
            Input::AgentState {
                agent,
                ready,
                reason,
            } => self.set_agent_state(now, agent, ready, reason),
            Input::Transcript {
                call_ref,
                audio_path,
                outcome,
                detail,
            } => self.handle_transcript(now, &call_ref, &audio_path, outcome, detail),
            Input::RestoreCallbacks(callbacks) => self.restore_callbacks(now, callbacks),
            Input::AgentSkills { agent, skills } => self.set_agent_skills(now, agent, skills),
            Input::ReloadAgents(agents) => self.reload_agents(now, agents),
        }
        self.drain_transactions(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.transactions.handle_timeout(now);
        self.drain_transactions(now);
        self.queueing_timeout(now);
        while let Some(&(at, number)) = self.call_timers.first() {
            if at > now {
                break;
            }
            self.call_timers.pop_first();
            let Some(call) = self.calls.get_mut(&number) else {
                continue;
            };
            if call.state == CallState::Ringing && call.answer_at == Some(at) {
                self.answer(now, number);
            } else if call.ivr_deadline == Some(at) {
                call.ivr_deadline = None;
                if let (Some(flow), Some(ivr)) = (self.config.flow.clone(), call.ivr.as_mut()) {
                    let actions = ivr.handle_timeout(&flow, now);
                    self.apply_ivr(now, number, actions);
                }
            }
        }
        self.drain_transactions(now);
    }

    fn random_token(&mut self) -> String {
        format!("{:016x}", self.rng.gen::<u64>())
    }

    fn emit(&mut self, event: CallEvent) {
        self.outputs.push_back(Output::Record(event));
    }

    fn handle_sip(&mut self, now: Instant, peer: Peer, bytes: &[u8]) {
        self.stats.messages += 1;
        let message = match SipMessage::parse(bytes) {
            Ok(m) => m,
            Err(error) => {
                self.stats.unparseable += 1;
                tracing::debug!(%error, from = %peer.remote, "dropping unparseable SIP message");
                return;
            }
        };
        if !message.is_request() {
            if !self.transactions.receive_response(now, &message) {
                self.stats.stray_responses += 1;
            }
            return;
        }
        self.handle_request(now, peer, message);
    }

    fn send_stateless(
        &mut self,
        peer: Peer,
        request: &SipMessage,
        code: u16,
        extra: &[(&str, String)],
    ) {
        if request.method() == Some("ACK") {
            return; // An ACK is never answered.
        }
        let tag = self.random_token();
        let mut response = build_response(
            request,
            peer.remote,
            code,
            Some(&tag),
            &self.config.server_name,
        );
        for (name, value) in extra {
            response.push_header(name, value.clone());
        }
        let top_via = response.header("Via").unwrap_or_default().to_string();
        let to = response_destination(peer, &top_via, self.config.symmetric_responses);
        *self.stats.responses_sent.entry(code).or_default() += 1;
        self.outputs.push_back(Output::Transmit {
            to,
            bytes: Bytes::from(response.to_bytes()),
        });
    }

    /// Sends a response through the request's server transaction.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        tx: TxId,
        peer: Peer,
        request: &SipMessage,
        code: u16,
        to_tag: Option<&str>,
        extra: Vec<(&str, String)>,
        body: Option<Vec<u8>>,
    ) {
        let mut response =
            build_response(request, peer.remote, code, to_tag, &self.config.server_name);
        for (name, value) in extra {
            response.push_header(name, value);
        }
        if let Some(body) = body {
            response.push_header("Content-Type", "application/sdp");
            response.body = body;
        }
        *self.stats.responses_sent.entry(code).or_default() += 1;
        // The transaction transmits to the destination chosen when it was created (18.2.2).
        self.transactions
            .respond(now, tx, code, Bytes::from(response.to_bytes()));
    }

    fn handle_request(&mut self, now: Instant, peer: Peer, request: SipMessage) {
        let method = request.method().unwrap_or_default().to_string();
        // An unknown SIP version is answered before anything else: even its Via may not parse.
        if let StartLine::Request { version, .. } = &request.start {
            let other_sip =
                version != "SIP/2.0" && crate::sip::message::has_sip_version_prefix(version);
            if other_sip {
                self.send_stateless(peer, &request, 505, &[]);
                return;
            }
        }
        // Without a parseable top Via there is no transaction to match; answer statelessly.
        let top_via = request
            .header_values("Via")
            .first()
            .and_then(|v| Via::parse(v).ok());
        let Some(top_via) = top_via else {
            // RFC 4475 3.3.1: answer what we can with 400. With symmetric responses the source
            // address routes it; strictly by Via, an unparseable Via leaves nowhere to send it.
            if self.config.symmetric_responses && request.header("Via").is_some() {
                self.send_stateless(peer, &request, 400, &[]);
            } else {
                tracing::debug!(from = %peer.remote, "dropping request with no routable Via");
            }
            return;
        };
        // Responses go where RFC 3261 18.2.2 says; the transaction keeps that destination.
        let stamped = crate::sip::response::stamp_via(
            request
                .header_values("Via")
                .first()
                .copied()
                .unwrap_or_default(),
            peer.remote,
        );
        let reply_to = response_destination(peer, &stamped, self.config.symmetric_responses);

        if let Err(reject) = validate(&request, &method) {
            tracing::debug!(code = reject.code, reason = %reject.reason, "rejecting request");
            // Invalid requests still go through a transaction so retransmissions get the same answer.
            if method == "ACK" {
                return;
            }
            if let RequestDisposition::New(tx) = self
                .transactions
                .receive_request(now, &request, &top_via, reply_to)
            {
                {
                    let tag = self.random_token();
                    let extra = match reject.code {
                        405 | 501 => vec![("Allow", ALLOWED_METHODS.to_string())],
                        420 => vec![("Unsupported", reject.reason.clone())],
                        _ => Vec::new(),
                    };
                    let mut response = build_response(
                        &request,
                        peer.remote,
                        reject.code,
                        Some(&tag),
                        &self.config.server_name,
                    );
                    if let StartLine::Response { reason, .. } = &mut response.start {
                        if reject.code == 400 {
                            *reason = format!("Bad Request ({})", sanitize_reason(&reject.reason));
                        }
                    }
                    for (name, value) in extra {
                        response.push_header(name, value);
                    }
                    *self.stats.responses_sent.entry(reject.code).or_default() += 1;
                    self.transactions.respond(
                        now,
                        tx,
                        reject.code,
                        Bytes::from(response.to_bytes()),
                    );
                }
            }
            return;
        }

        match self
            .transactions
            .receive_request(now, &request, &top_via, reply_to)
        {
            RequestDisposition::Retransmission(_) | RequestDisposition::AckAbsorbed(_) => {}
            RequestDisposition::AckForDialog => self.handle_ack(now, &request),
            RequestDisposition::New(tx) => {
                if let Some(code) = self.merged_request(tx, &request) {
                    let tag = self.random_token();
                    self.respond(now, tx, peer, &request, code, Some(&tag), Vec::new(), None);
                    return;
                }
                self.dispatch(now, tx, peer, reply_to, &method, request);
            }
        }
    }

    /// RFC 3261 8.2.2.2: the same request arriving by another path (different branch) gets 482.
    fn merged_request(&mut self, tx: TxId, request: &SipMessage) -> Option<u16> {
        let to_tag = request
            .header("To")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|t| t.tag().map(str::to_string));
        if to_tag.is_some() {
            return None;
        }
        let from_tag = request
            .header("From")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|f| f.tag().map(str::to_string))?;
        let key = format!(
            "{}|{}|{}",
            from_tag,
            request.header("Call-ID").unwrap_or_default(),
            request.header("CSeq").unwrap_or_default()
        );
        if let Some(&other) = self.merge_keys.get(&key) {
            if other != tx && self.transactions.server_state(other).is_some() {
                return Some(482);
            }
        }
        self.merge_keys.insert(key.clone(), tx);
        self.tx_merge_keys.insert(tx, key);
        None
    }

    fn dispatch(
        &mut self,
        now: Instant,
        tx: TxId,
        peer: Peer,
        reply_to: Peer,
        method: &str,
        request: SipMessage,
    ) {
        let tag = self.random_token();
        match method {
            "OPTIONS" => {
                let extra = vec![
                    ("Allow", ALLOWED_METHODS.to_string()),
                    ("Accept", "application/sdp".to_string()),
                    ("Supported", String::new()),
                    ("Accept-Language", "en, es".to_string()),
                ];
                self.respond(now, tx, peer, &request, 200, Some(&tag), extra, None);
            }
            "INVITE" => self.handle_invite(now, tx, peer, reply_to, request),
            "BYE" => self.handle_bye(now, tx, peer, &request),
            "CANCEL" => self.handle_cancel(now, tx, peer, &request),
            "INFO" => self.handle_info(now, tx, peer, &request),
            "REGISTER" if self.queueing.is_some() => self.handle_register(now, tx, peer, &request),
            m if KNOWN_UNSUPPORTED.iter().any(|k| k.eq_ignore_ascii_case(m)) => {
                let extra = vec![("Allow", ALLOWED_METHODS.to_string())];
                self.respond(now, tx, peer, &request, 405, Some(&tag), extra, None);
            }
            _ => {
                let extra = vec![("Allow", ALLOWED_METHODS.to_string())];
                self.respond(now, tx, peer, &request, 501, Some(&tag), extra, None);
            }
        }
    }

    fn dialog_key(call_id: &str, local_tag: &str) -> String {
        format!("{call_id}|{local_tag}")
    }

    fn find_dialog(&self, request: &SipMessage) -> Option<u64> {
        let to_tag = request
            .header("To")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|t| t.tag().map(str::to_string))?;
        let key = Self::dialog_key(request.header("Call-ID").unwrap_or_default(), &to_tag);
        let number = *self.dialogs.get(&key)?;
        let from_tag = request
            .header("From")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|f| f.tag().map(str::to_string))
            .unwrap_or_default();
        self.calls
            .get(&number)
            .filter(|c| c.remote_tag == from_tag)
            .map(|_| number)
    }

    fn local_ip(&self, peer: &Peer) -> IpAddr {
        let ip = peer.local.ip();
        if ip.is_unspecified() {
            self.config.advertised_ip
        } else {
            ip
        }
    }

    fn contact_for(&self, peer: &Peer) -> String {
        let host = uri_host(self.local_ip(peer));
        let transport = match peer.transport {
            crate::sip::transport::Transport::Udp => "",
            crate::sip::transport::Transport::Tcp => ";transport=tcp",
        };
        format!("<sip:311@{host}:{}{transport}>", peer.local.port())
    }

    fn handle_invite(
        &mut self,
        now: Instant,
        tx: TxId,
        peer: Peer,
        reply_to: Peer,
        request: SipMessage,
    ) {
        // A re-INVITE inside an existing dialog: answer with the SDP we already agreed.
        let has_to_tag = request
            .header("To")
            .and_then(|v| NameAddr::parse(v).ok())
            .is_some_and(|t| t.tag().is_some());
        if has_to_tag {
            match self.find_dialog(&request) {
                Some(number) => {
                    let (tag, sdp, contact) = {
                        let call = &self.calls[&number];
                        (
                            call.local_tag.clone(),
                            call.local_sdp.clone(),
                            self.contact_for(&call.peer),
                        )
                    };
                    let extra = vec![("Contact", contact), ("Allow", ALLOWED_METHODS.to_string())];
                    self.respond(now, tx, peer, &request, 200, Some(&tag), extra, Some(sdp));
                }
                None => {
                    let tag = self.random_token();
                    self.respond(now, tx, peer, &request, 481, Some(&tag), Vec::new(), None);
                }
            }
            return;
        }
        let local_tag = self.random_token();
        let call_ref = format!("{}-{}", self.config.instance, self.next_call);
        let sip_call_id = request.header("Call-ID").unwrap_or_default().to_string();
        let caller = request
            .header("From")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|f| SipUri::parse(&f.uri).ok().and_then(|u| u.user));
        let mut received = CallEvent {
            at: now,
            call_ref: call_ref.clone(),
            sip_call_id: sip_call_id.clone(),
            kind: EventKind::Received,
            status_code: None,
            reason: None,
            duration: None,
            caller,
            detail: Some(format!(
                "{{\"transport\":\"{}\",\"to\":{}}}",
                peer.transport,
                json_string(request.request_uri().unwrap_or_default())
            )),
        };
        let reject = |engine: &mut Engine,
                      mut received: CallEvent,
                      code: u16,
                      reason: &str,
                      extra: Vec<(&str, String)>| {
            engine.respond(now, tx, peer, &request, code, Some(&local_tag), extra, None);
            engine.emit(received.clone());
            received.kind = EventKind::Rejected;
            received.status_code = Some(code);
            received.reason = Some(reason.to_string());
            received.detail = None;
            engine.emit(received);
        };
        self.next_call += 1;
        self.stats.calls_total += 1;
        if self.shutting_down {
            reject(
                self,
                received,
                503,
                "shutting_down",
                vec![("Retry-After", "30".into())],
            );
            return;
        }
        if !accepts_sdp(&request) {
            // Our 200 must carry SDP; a caller that will not accept it gets 406 (RFC 4475 3.3.15).
            reject(
                self,
                received,
                406,
                "sdp_not_accepted",
                vec![("Accept", "application/sdp".into())],
            );
            return;
        }
        let offer = match sdp_offer(&request) {
            Ok(offer) => offer,
            Err(BodyProblem::UnsupportedType) => {
                reject(
                    self,
                    received,
                    415,
                    "unsupported_body",
                    vec![("Accept", "application/sdp".into())],
                );
                return;
            }
            Err(BodyProblem::Unparseable(why)) => {
                received.detail = None;
                reject(self, received, 400, &format!("bad_sdp: {why}"), Vec::new());
                return;
            }
        };
        let negotiated = match &offer {
            Some(offer) => match sdp::negotiate(offer, &self.config.codecs) {
                Ok(n) => Some(n),
                Err(error) => {
                    reject(
                        self,
                        received,
                        488,
                        &format!("no_common_codec: {error}"),
                        vec![(
                            "Warning",
                            format!(
                                "304 {} \"Media type not available\"",
                                self.config.server_name
                            ),
                        )],
                    );
                    return;
                }
            },
            None => None,
        };
        let Some(rtp_port) = self.ports.take() else {
            reject(
                self,
                received,
                503,
                "no_rtp_port",
                vec![("Retry-After", "5".into())],
            );
            return;
        };
        let local = LocalMedia {
            address: self.local_ip(&peer),
            rtp_port,
            session_id: self.rng.gen::<u32>() as u64,
            session_version: 1,
            username: "civicline".into(),
        };
        let local_sdp = match (&offer, &negotiated) {
            (Some(offer), Some(n)) => sdp::build_answer(offer, n, &local),
            _ => sdp::build_offer(&local, self.config.telephone_event_pt),
        };
        let from = request.header("From").unwrap_or_default().to_string();
        let remote_tag = NameAddr::parse(&from)
            .ok()
            .and_then(|f| f.tag().map(str::to_string))
            .unwrap_or_default();
        let remote_target = request
            .header("Contact")
            .and_then(|v| NameAddr::parse(v).ok())
            .map(|c| c.uri)
            .unwrap_or_else(|| request.request_uri().unwrap_or_default().to_string());
        let route_set = request
            .header_values("Record-Route")
            .into_iter()
            .map(str::to_string)
            .collect();
        let to = request.header("To").unwrap_or_default().to_string();
        let number = self.next_call - 1;
        let answer_at = now + self.config.answer_delay;
        let call = Call {
            call_ref,
            sip_call_id: sip_call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag,
            local_uri: format!("{to};tag={local_tag}"),
            remote_uri: from,
            remote_target,
            route_set,
            peer: reply_to,
            invite: request,
            invite_tx: tx,
            state: CallState::Ringing,
            local_cseq: 0,
            rtp_port,
            answer: negotiated,
            local_sdp: local_sdp.into_bytes(),
            received_at: now,
            answered_at: None,
            answer_at: Some(answer_at),
            bye_tx: None,
            ivr: None,
            ivr_deadline: None,
            hangup_after_prompt: None,
            play_id: 0,
            last_recording: None,
            case_number: None,
            category: None,
        };
        self.emit(received);
        self.dialogs
            .insert(Self::dialog_key(&sip_call_id, &local_tag), number);
        self.call_refs.insert(call.call_ref.clone(), number);
        self.invite_tx_calls.insert(tx, number);
        self.calls.insert(number, call);
        let invite = self.calls[&number].invite.clone();
        self.respond(now, tx, peer, &invite, 100, None, Vec::new(), None);
        if self.config.answer_delay.is_zero() {
            self.answer(now, number);
        } else {
            let contact = self.contact_for(&peer);
            self.respond(
                now,
                tx,
                peer,
                &invite,
                180,
                Some(&local_tag),
                vec![("Contact", contact)],
                None,
            );
            self.call_timers.insert((answer_at, number));
        }
    }

    fn answer(&mut self, now: Instant, number: u64) {
        let Some(call) = self.calls.get_mut(&number) else {
            return;
        };
        call.state = CallState::Answered;
        call.answered_at = Some(now);
        call.answer_at = None;
        let (tx, peer, invite, tag, sdp) = (
            call.invite_tx,
            call.peer,
            call.invite.clone(),
            call.local_tag.clone(),
            call.local_sdp.clone(),
        );
        let open = call.answer.as_ref().map(|n| MediaCommand::Open {
            call_ref: call.call_ref.clone(),
            sip_call_id: call.sip_call_id.clone(),
            rtp_port: call.rtp_port,
            remote: n.remote_rtp,
            codec: n.codec,
            payload_type: n.payload_type,
            telephone_event_pt: n.telephone_event_pt,
        });
        let codec = call.answer.as_ref().map(|n| format!("{:?}", n.codec));
        let contact = self.contact_for(&peer);
        let extra = vec![
            ("Contact", contact),
            ("Allow", ALLOWED_METHODS.to_string()),
            ("Supported", String::new()),
        ];
        self.respond(now, tx, peer, &invite, 200, Some(&tag), extra, Some(sdp));
        let received_at = self.calls[&number].received_at;
        let mut event = self.record_for(number, now, EventKind::Answered);
        event.status_code = Some(200);
        event.duration = Some(now - received_at);
        event.detail = codec.map(|c| format!("{{\"codec\":\"{c}\"}}"));
        self.emit(event);
        if let Some(open) = open {
            self.outputs.push_back(Output::Media(open));
        }
    }

    fn record_for(&mut self, number: u64, at: Instant, kind: EventKind) -> CallEvent {
        let call = &self.calls[&number];
        CallEvent {
            at,
            call_ref: call.call_ref.clone(),
            sip_call_id: call.sip_call_id.clone(),
            kind,
            status_code: None,
            reason: None,
            duration: None,
            caller: None,
            detail: None,
        }
    }

    fn handle_ack(&mut self, now: Instant, request: &SipMessage) {
        let Some(number) = self.find_dialog(request) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&number) else {
            return;
        };
        if call.state != CallState::Answered {
            return;
        }
        call.state = CallState::Confirmed;
        let tx = call.invite_tx;
        // An INVITE without SDP got our offer in the 200; the caller's answer is in this ACK.
        if call.answer.is_none() && !request.body.is_empty() {
            if let Ok(answer) = sdp::parse(&request.body) {
                if let Ok(n) = sdp::negotiate(&answer, &self.config.codecs) {
                    let open = MediaCommand::Open {
                        call_ref: call.call_ref.clone(),
                        sip_call_id: call.sip_call_id.clone(),
                        rtp_port: call.rtp_port,
                        remote: n.remote_rtp,
                        codec: n.codec,
                        payload_type: n.payload_type,
                        telephone_event_pt: n.telephone_event_pt,
                    };
                    call.answer = Some(n);
                    self.outputs.push_back(Output::Media(open));
                }
            }
        }
        self.transactions.ack_received(tx);
        // DESIGN.md: on ACK the IVR starts.
        if let Some(flow) = self.config.flow.clone() {
            let (session, actions) = IvrSession::start(&flow, now);
            if let Some(call) = self.calls.get_mut(&number) {
                call.ivr = Some(session);
            }
            self.apply_ivr(now, number, actions);
        }
    }

    /// Media reports: prompt done, a digit, a finished recording.
    fn handle_media(&mut self, now: Instant, call_ref: &str, event: MediaEvent) {
        if let MediaEvent::Stats(report) = &event {
            // Arrives after the call is gone: everything needed travels in the report.
            self.emit(CallEvent {
                at: now,
                call_ref: call_ref.to_string(),
                sip_call_id: report.sip_call_id.clone(),
                kind: EventKind::RtpStats,
                status_code: None,
                reason: None,
                duration: None,
                caller: None,
                detail: Some(format!(
                    "{{\"packets_sent\":{},\"packets_received\":{},\"packets_lost\":{},\"jitter_ms\":{:.2},\"malformed\":{}}}",
                    report.packets_sent, report.packets_received, report.packets_lost, report.jitter_ms, report.malformed
                )),
            });
            return;
        }
        if self.leg_media(now, call_ref, &event) {
            return;
        }
        let Some(&number) = self.call_refs.get(call_ref) else {
            return;
        };
        let Some(call) = self.calls.get(&number) else {
            return;
        };
        if call.state != CallState::Confirmed {
            return;
        }
        let ivr_event = match event {
            MediaEvent::Stats(_) => return,
            MediaEvent::RtpTimeout => {
                tracing::info!(call = %call.call_ref, "no RTP from the caller; hanging up");
                self.record_end_and_bye(now, number, "rtp_timeout");
                return;
            }
            MediaEvent::PromptFinished { play_id } => {
                if play_id != call.play_id {
                    return;
                }
                if let Some(reason) = call.hangup_after_prompt {
                    self.record_end_and_bye(now, number, reason);
                    return;
                }
                if self.hold_prompt_finished(now, number) {
                    return;
                }
                IvrEvent::PromptFinished
            }
            MediaEvent::Digit(digit) => {
                let mut event = self.record_for(number, now, EventKind::Digit);
                event.detail = Some(format!("{{\"digit\":\"{digit}\"}}"));
                self.emit(event);
                if self.queued_key(now, number, digit) {
                    return;
                }
                IvrEvent::Digit(digit)
            }
            MediaEvent::RecordingFinished {
                duration,
                path,
                reason,
            } => {
                if let Some(call) = self.calls.get_mut(&number) {
                    call.last_recording = path.clone();
                }
                // No speech at all: nothing to transcribe, the flow hears "empty" at once.
                let silent = reason == "no_speech";
                if let (Some(path), false) = (&path, silent) {
                    self.outputs.push_back(Output::Utterance {
                        call_ref: call_ref.to_string(),
                        path: path.clone(),
                        duration,
                    });
                }
                let mut event = self.record_for(number, now, EventKind::Recording);
                event.duration = Some(duration);
                event.reason = Some(reason);
                event.detail = path
                    .as_ref()
                    .map(|p| format!("{{\"path\":{}}}", json_string(p)));
                self.emit(event);
                self.feed_ivr(now, number, IvrEvent::RecordingFinished { duration });
                if let (Some(path), true) = (path, silent) {
                    self.handle_transcript(
                        now,
                        call_ref,
                        &path,
                        crate::ivr::DraftOutcome::Empty,
                        Some("{\"reason\":\"no_speech\"}".into()),
                    );
                }
                return;
            }
        };
        self.feed_ivr(now, number, ivr_event);
    }

    /// A recording's draft came back: record it; the IVR hears of it only when it is for the
    /// caller's latest recording (a late answer for an earlier take is for the case alone).
    fn handle_transcript(
        &mut self,
        now: Instant,
        call_ref: &str,
        audio_path: &str,
        outcome: crate::ivr::DraftOutcome,
        detail: Option<String>,
    ) {
        let Some(&number) = self.call_refs.get(call_ref) else {
            return;
        };
        let mut event = self.record_for(number, now, EventKind::Transcript);
        event.reason = Some(
            match &outcome {
                crate::ivr::DraftOutcome::Understood { .. } => "understood",
                crate::ivr::DraftOutcome::LowConfidence => "low_confidence",
                crate::ivr::DraftOutcome::Empty => "empty",
                crate::ivr::DraftOutcome::Unavailable => "unavailable",
            }
            .into(),
        );
        event.detail = detail;
        self.emit(event);
        if let (crate::ivr::DraftOutcome::Understood { category }, Some(call)) =
            (&outcome, self.calls.get_mut(&number))
        {
            call.category = Some(category.clone());
        }
        if self
            .calls
            .get(&number)
            .and_then(|c| c.last_recording.as_deref())
            == Some(audio_path)
        {
            self.feed_ivr(now, number, IvrEvent::Draft(outcome));
        }
    }

    /// The case store answered: record it and let the IVR tell the caller.
    fn handle_case(&mut self, now: Instant, call_ref: &str, event: CaseEvent) {
        let Some(&number) = self.call_refs.get(call_ref) else {
            return;
        };
        let ivr_event = match event {
            CaseEvent::Created {
                number: case_number,
            } => {
                let mut record = self.record_for(number, now, EventKind::CaseCreated);
                record.detail = Some(format!("{{\"case_number\":{}}}", json_string(&case_number)));
                self.emit(record);
                if let Some(call) = self.calls.get_mut(&number) {
                    call.case_number = Some(case_number.clone());
                }
                IvrEvent::CaseCreated {
                    number: case_number,
                }
            }
            CaseEvent::CreateFailed { reason } => {
                // Loud, never silent: the failure is in the log and the caller goes on to a person.
                let mut record = self.record_for(number, now, EventKind::Failed);
                record.reason = Some(format!("case_store_failed: {reason}"));
                record.detail = self.calls[&number]
                    .last_recording
                    .as_ref()
                    .map(|p| format!("{{\"audio_path\":{}}}", json_string(p)));
                self.emit(record);
                IvrEvent::CaseCreateFailed
            }
            CaseEvent::Found(found) => IvrEvent::CaseFound(found),
        };
        self.feed_ivr(now, number, ivr_event);
    }

    /// Hands an event to the call's IVR session and carries out what it decides.
    fn feed_ivr(&mut self, now: Instant, number: u64, event: IvrEvent) {
        let Some(flow) = self.config.flow.clone() else {
            return;
        };
        let Some(ivr) = self.calls.get_mut(&number).and_then(|c| c.ivr.as_mut()) else {
            return;
        };
        let actions = ivr.handle(&flow, now, event);
        self.apply_ivr(now, number, actions);
    }

    /// Turns IVR actions into media commands, events and call control.
    fn apply_ivr(&mut self, now: Instant, number: u64, actions: Vec<IvrAction>) {
        let Some(call_ref) = self.calls.get(&number).map(|c| c.call_ref.clone()) else {
            return;
        };
        // Prompts of this batch, so a hand-off without a queue can play after them, not over them.
        let mut batch_prompts: Vec<String> = Vec::new();
        let hands_off = actions
            .iter()
            .any(|a| matches!(a, IvrAction::HandOff { .. }));
        for action in actions {
            match action {
                // Prompts before a hand-off are played by the hand-off itself, in one go.
                IvrAction::Play { prompts, .. } if hands_off => batch_prompts = prompts,
                IvrAction::Play { prompts, language } => self.play(now, number, prompts, language),
                IvrAction::StopPlayback => {
                    self.next_play_id(number);
                    self.outputs
                        .push_back(Output::Media(MediaCommand::StopPlayback {
                            call_ref: call_ref.clone(),
                        }))
                }
                IvrAction::StartCapture { max, silence } => {
                    // Drafts still owed for an earlier take must not answer for this one.
                    if let Some(call) = self.calls.get_mut(&number) {
                        call.last_recording = None;
                    }
                    self.outputs
                        .push_back(Output::Media(MediaCommand::StartCapture {
                            call_ref: call_ref.clone(),
                            max,
                            silence,
                        }))
                }
                IvrAction::StopCapture => {
                    self.outputs
                        .push_back(Output::Media(MediaCommand::StopCapture {
                            call_ref: call_ref.clone(),
                        }))
                }
                IvrAction::Entered { step } => {
                    let mut event = self.record_for(number, now, EventKind::IvrStep);
                    event.reason = Some(step);
                    self.emit(event);
                }
                IvrAction::DigitsCollected { step, digits } => {
                    let mut event = self.record_for(number, now, EventKind::IvrStep);
                    event.reason = Some(format!("{step}:collected"));
                    event.detail = Some(format!("{{\"digits\":{}}}", json_string(&digits)));
                    self.emit(event);
                }
                IvrAction::HandOff { queue } => {
                    let prompts = std::mem::take(&mut batch_prompts);
                    if self.queueing.is_none()
                        || !self.enqueue(now, number, &queue, prompts.clone())
                    {
                        self.handoff_without_queue(now, number, &queue, prompts)
                    }
                }
                // The IVR asks to hang up once its prompts have played, so this is the moment.
                IvrAction::Hangup => self.record_end_and_bye(now, number, "ivr_hangup"),
                IvrAction::CreateCase => {
                    let audio_path = self
                        .calls
                        .get(&number)
                        .and_then(|c| c.last_recording.clone());
                    self.outputs.push_back(Output::CreateCase {
                        call_ref: call_ref.clone(),
                        audio_path,
                    });
                }
                IvrAction::LookupCase {
                    number: case_number,
                } => {
                    self.outputs.push_back(Output::LookupCase {
                        call_ref: call_ref.clone(),
                        number: case_number,
                    });
                }
            }
        }
        // Mirror the IVR's deadline into the engine's timer set.
        let deadline = self
            .calls
            .get(&number)
            .and_then(|c| c.ivr.as_ref())
            .and_then(|i| i.poll_timeout());
        if let Some(call) = self.calls.get_mut(&number) {
            if call.ivr_deadline != deadline {
                if let Some(old) = call.ivr_deadline.take() {
                    self.call_timers.remove(&(old, number));
                }
                if let Some(at) = deadline {
                    call.ivr_deadline = Some(at);
                    self.call_timers.insert((at, number));
                }
            }
        }
    }

    /// A hand-off that no queue can take: queues are off (`[routing] queues = ""`), or neither
    /// the named queue nor any queue the rules select for this caller exists. Records where the
    /// caller would have gone (with the case, for whoever follows up), plays "all our agents are
    /// busy" and hangs up.
    fn handoff_without_queue(
        &mut self,
        now: Instant,
        number: u64,
        queue: &str,
        mut prompts: Vec<String>,
    ) {
        let mut event = self.record_for(number, now, EventKind::HandOff);
        event.reason = Some("no_queue".into());
        // The case (if any) goes with the caller, so the agent sees the draft.
        event.detail = Some(match &self.calls[&number].case_number {
            Some(case) => format!(
                "{{\"queue\":{},\"case_number\":{}}}",
                json_string(queue),
                json_string(case)
            ),
            None => format!("{{\"queue\":{}}}", json_string(queue)),
        });
        self.emit(event);
        let language = self.language_of(number);
        let Some(call) = self.calls.get_mut(&number) else {
            return;
        };
        call.hangup_after_prompt = Some("no_queue");
        prompts.push("all_agents_busy".into());
        self.play(now, number, prompts, language);
    }

    /// The language the caller chose in the IVR (English until they choose).
    fn language_of(&self, number: u64) -> String {
        self.calls
            .get(&number)
            .and_then(|c| c.ivr.as_ref())
            .map(|i| i.language.clone())
            .unwrap_or_else(|| "en".into())
    }

    /// Queues prompts for the caller and records what was played.
    fn play(&mut self, now: Instant, number: u64, prompts: Vec<String>, language: String) {
        let Some(call_ref) = self.calls.get(&number).map(|c| c.call_ref.clone()) else {
            return;
        };
        let mut event = self.record_for(number, now, EventKind::Prompt);
        event.detail = Some(format!(
            "{{\"prompts\":{},\"language\":{}}}",
            serde_json::to_string(&prompts).unwrap_or_default(),
            json_string(&language)
        ));
        self.emit(event);
        let play_id = self.next_play_id(number);
        self.outputs.push_back(Output::Media(MediaCommand::Play {
            call_ref,
            prompts,
            language,
            play_id,
        }));
    }

    fn next_play_id(&mut self, number: u64) -> u64 {
        match self.calls.get_mut(&number) {
            Some(call) => {
                call.play_id += 1;
                call.play_id
            }
            None => 0,
        }
    }

    fn handle_bye(&mut self, now: Instant, tx: TxId, peer: Peer, request: &SipMessage) {
        if self.leg_bye(now, tx, peer, request) {
            return;
        }
        let Some(number) = self.find_dialog(request) else {
            let tag = self.random_token();
            self.respond(now, tx, peer, request, 481, Some(&tag), Vec::new(), None);
            return;
        };
        let tag = self.calls[&number].local_tag.clone();
        self.respond(now, tx, peer, request, 200, Some(&tag), Vec::new(), None);
        let state = self.calls[&number].state;
        if state == CallState::Answered {
            // BYE before ACK ends the 2xx retransmissions too.
            let invite_tx = self.calls[&number].invite_tx;
            self.transactions.ack_received(invite_tx);
        }
        self.end_call(now, number, "caller_hangup", None);
    }

    /// SIP INFO inside a call: `application/dtmf-relay` (`Signal=5`) carries a key press.
    fn handle_info(&mut self, now: Instant, tx: TxId, peer: Peer, request: &SipMessage) {
        let Some(number) = self.find_dialog(request) else {
            let tag = self.random_token();
            self.respond(now, tx, peer, request, 481, Some(&tag), Vec::new(), None);
            return;
        };
        let tag = self.calls[&number].local_tag.clone();
        let content_type = request
            .header("Content-Type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let digit = if content_type.starts_with("application/dtmf-relay") {
            dtmf_relay_digit(&request.body)
        } else {
            None
        };
        if request.body.is_empty() || content_type.starts_with("application/dtmf-relay") {
            self.respond(now, tx, peer, request, 200, Some(&tag), Vec::new(), None);
        } else {
            self.respond(
                now,
                tx,
                peer,
                request,
                415,
                Some(&tag),
                vec![("Accept", "application/dtmf-relay".into())],
                None,
            );
        }
        if let Some(digit) = digit {
            let call_ref = self.calls[&number].call_ref.clone();
            self.handle_media(now, &call_ref, MediaEvent::Digit(digit));
        }
    }

    fn handle_cancel(&mut self, now: Instant, tx: TxId, peer: Peer, request: &SipMessage) {
        let top_via = request
            .header_values("Via")
            .first()
            .and_then(|v| Via::parse(v).ok());
        let invite_tx = top_via.and_then(|v| self.transactions.find_invite_for_cancel(request, &v));
        let Some(invite_tx) = invite_tx else {
            let tag = self.random_token();
            self.respond(now, tx, peer, request, 481, Some(&tag), Vec::new(), None);
            return;
        };
        let number = self.invite_tx_calls.get(&invite_tx).copied();
        let tag = number
            .and_then(|n| self.calls.get(&n))
            .map(|c| c.local_tag.clone())
            .unwrap_or_else(|| self.random_token());
        self.respond(now, tx, peer, request, 200, Some(&tag), Vec::new(), None);
        let Some(number) = number else {
            return;
        };
        if self.calls.get(&number).map(|c| c.state) != Some(CallState::Ringing) {
            return; // Already answered: the CANCEL has no effect (RFC 3261 9.2).
        }
        let (invite, invite_peer) = {
            let c = &self.calls[&number];
            (c.invite.clone(), c.peer)
        };
        self.respond(
            now,
            invite_tx,
            invite_peer,
            &invite,
            487,
            Some(&tag),
            Vec::new(),
            None,
        );
        let mut event = self.record_for(number, now, EventKind::Cancelled);
        event.status_code = Some(487);
        event.reason = Some("caller_cancelled".into());
        event.duration = Some(now - self.calls[&number].received_at);
        self.emit(event);
        self.forget_call(number);
    }

    /// Ends an answered call: records `Ended`, frees media, optionally sends BYE first.
    fn end_call(&mut self, now: Instant, number: u64, reason: &str, detail: Option<String>) {
        let Some(call) = self.calls.get(&number) else {
            return;
        };
        let talk = call.answered_at.map(|at| now.saturating_duration_since(at));
        let mut event = self.record_for(number, now, EventKind::Ended);
        event.reason = Some(reason.to_string());
        event.duration = talk.or(Some(Duration::ZERO));
        event.detail = detail;
        self.emit(event);
        self.forget_call(number);
    }

    fn forget_call(&mut self, number: u64) {
        if let (Some(now), true) = (self.last_now, self.queueing.is_some()) {
            // The clock of the last input: queue bookkeeping needs an instant, not a fresh one.
            self.caller_gone(now, number);
        }
        if let Some(call) = self.calls.remove(&number) {
            self.dialogs
                .remove(&Self::dialog_key(&call.sip_call_id, &call.local_tag));
            self.invite_tx_calls.remove(&call.invite_tx);
            if let Some(bye) = call.bye_tx {
                self.bye_tx_calls.remove(&bye);
            }
            if let Some(at) = call.answer_at {
                self.call_timers.remove(&(at, number));
            }
            if let Some(at) = call.ivr_deadline {
                self.call_timers.remove(&(at, number));
            }
            self.call_refs.remove(&call.call_ref);
            self.ports.put(call.rtp_port);
            self.outputs.push_back(Output::Media(MediaCommand::Close {
                call_ref: call.call_ref,
                rtp_port: call.rtp_port,
            }));
        }
    }

    /// Sends BYE within the call's dialog (RFC 3261 15.1.1) and waits for its transaction.
    fn send_bye(&mut self, now: Instant, number: u64) {
        let branch = format!("z9hG4bK{}", self.random_token());
        let Some(peer) = self.calls.get(&number).map(|c| c.peer) else {
            return;
        };
        let host = uri_host(self.local_ip(&peer));
        let Some(call) = self.calls.get_mut(&number) else {
            return;
        };
        call.local_cseq += 1;
        call.state = CallState::Terminating;
        let mut bye = SipMessage {
            start: StartLine::Request {
                method: "BYE".into(),
                uri: call.remote_target.clone(),
                version: "SIP/2.0".into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
            problems: Vec::new(),
        };
        bye.push_header(
            "Via",
            format!(
                "SIP/2.0/{} {host}:{};branch={branch};rport",
                peer.transport,
                peer.local.port()
            ),
        );
        for route in &call.route_set {
            bye.push_header("Route", route.clone());
        }
        bye.push_header("Max-Forwards", "70");
        bye.push_header("From", call.local_uri.clone());
        bye.push_header("To", call.remote_uri.clone());
        bye.push_header("Call-ID", call.sip_call_id.clone());
        // Our CSeq space is independent of the caller's (RFC 3261 12.2.1.1); start above theirs.
        let base = CSeq::parse(call.invite.header("CSeq").unwrap_or_default())
            .map(|c| c.seq)
            .unwrap_or(0);
        bye.push_header(
            "CSeq",
            format!("{} BYE", base.wrapping_add(call.local_cseq)),
        );
        bye.push_header("User-Agent", self.config.server_name.clone());
        let tx = self.transactions.send_request(now, peer, bye);
        if let Some(call) = self.calls.get_mut(&number) {
            call.bye_tx = Some(tx);
        }
        self.bye_tx_calls.insert(tx, number);
    }

    fn shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let numbers: Vec<u64> = self.calls.keys().copied().collect();
        for number in numbers {
            let state = self.calls[&number].state;
            match state {
                CallState::Ringing => {
                    let (tx, peer, invite, tag) = {
                        let c = &self.calls[&number];
                        (c.invite_tx, c.peer, c.invite.clone(), c.local_tag.clone())
                    };
                    self.respond(
                        now,
                        tx,
                        peer,
                        &invite,
                        503,
                        Some(&tag),
                        vec![("Retry-After", "30".into())],
                        None,
                    );
                    let mut event = self.record_for(number, now, EventKind::Rejected);
                    event.status_code = Some(503);
                    event.reason = Some("shutting_down".into());
                    self.emit(event);
                    self.forget_call(number);
                }
                CallState::Answered | CallState::Confirmed => {
                    let invite_tx = self.calls[&number].invite_tx;
                    self.transactions.ack_received(invite_tx);
                    self.record_end_and_bye(now, number, "shutdown");
                }
                CallState::Terminating => {}
            }
        }
    }

    /// Records the end of a call we hang up, then sends BYE; the call is forgotten when the
    /// BYE transaction finishes (or times out).
    fn record_end_and_bye(&mut self, now: Instant, number: u64, reason: &str) {
        if self.queueing.is_some() {
            self.caller_gone(now, number);
        }
        let Some(call) = self.calls.get(&number) else {
            return;
        };
        let talk = call.answered_at.map(|at| now.saturating_duration_since(at));
        let mut event = self.record_for(number, now, EventKind::Ended);
        event.reason = Some(reason.to_string());
        event.duration = talk.or(Some(Duration::ZERO));
        self.emit(event);
        self.send_bye(now, number);
    }

    fn drain_transactions(&mut self, now: Instant) {
        while let Some(output) = self.transactions.poll_output() {
            match output {
                TxOutput::Transmit { to, bytes } => {
                    self.outputs.push_back(Output::Transmit { to, bytes })
                }
                TxOutput::ServerTerminated { id, ack_missing } => {
                    if let Some(key) = self.tx_merge_keys.remove(&id) {
                        if self.merge_keys.get(&key) == Some(&id) {
                            self.merge_keys.remove(&key);
                        }
                    }
                    let number = self.invite_tx_calls.get(&id).copied();
                    if let Some(number) = number {
                        let state = self.calls.get(&number).map(|c| c.state);
                        if ack_missing && state == Some(CallState::Answered) {
                            // 64*T1 without an ACK for our 2xx: RFC 3261 13.3.1.4 says end it with BYE.
                            let mut failed = self.record_for(number, now, EventKind::Failed);
                            failed.reason = Some("ack_timeout".into());
                            self.emit(failed);
                            tracing::warn!(call = %self.calls[&number].call_ref, "no ACK for 200 OK within 64*T1; sending BYE");
                            self.record_end_and_bye(now, number, "ack_timeout");
                        }
                        if let Some(call) = self.calls.get(&number) {
                            if call.invite_tx == id {
                                self.invite_tx_calls.remove(&id);
                            }
                        }
                    }
                }
                TxOutput::ClientResponse {
                    id,
                    status,
                    response,
                } => {
                    if self.leg_response(now, id, status, &response) {
                        continue;
                    }
                    if status >= 200 {
                        if let Some(number) = self.bye_tx_calls.remove(&id) {
                            self.forget_call(number);
                        }
                    }
                }
                TxOutput::ClientTimeout { id } => {
                    if self.leg_timeout(now, id) {
                        continue;
                    }
                    if let Some(number) = self.bye_tx_calls.remove(&id) {
                        let mut failed = self.record_for(number, now, EventKind::Failed);
                        failed.reason = Some("bye_timeout".into());
                        self.emit(failed);
                        self.forget_call(number);
                    }
                }
                TxOutput::ClientTerminated { .. } => {}
            }
        }
    }
}

/// Request-level checks of RFC 3261 section 8.2 that come before any method handling.
fn validate(request: &SipMessage, method: &str) -> Result<(), Reject> {
    let bad = |reason: String| Reject { code: 400, reason };
    if let Some(problem) = request.problems.first() {
        return Err(bad(problem.clone()));
    }
    if let StartLine::Request { version, .. } = &request.start {
        if version != "SIP/2.0" {
            if crate::sip::message::has_sip_version_prefix(version) {
                return Err(Reject {
                    code: 505,
                    reason: format!("version {version}"),
                });
            }
            return Err(bad(format!("bad version {version:?}")));
        }
    }
    for via in request.header_values("Via") {
        Via::parse(via).map_err(bad)?;
    }
    for name in [
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Max-Forwards",
        "Content-Type",
        "Content-Length",
    ] {
        if request.header_count(name) > 1 {
            return Err(bad(format!("more than one {name}")));
        }
    }
    let from = request
        .header("From")
        .ok_or_else(|| bad("no From".into()))?;
    NameAddr::parse(from).map_err(|e| bad(format!("From: {e}")))?;
    let to = request.header("To").ok_or_else(|| bad("no To".into()))?;
    NameAddr::parse(to).map_err(|e| bad(format!("To: {e}")))?;
    let call_id = request.header("Call-ID").unwrap_or_default();
    if call_id.is_empty() || call_id.chars().any(char::is_whitespace) {
        return Err(bad("bad Call-ID".into()));
    }
    let cseq = request
        .header("CSeq")
        .ok_or_else(|| bad("no CSeq".into()))?;
    let cseq = CSeq::parse(cseq).map_err(bad)?;
    if cseq.method != method {
        return Err(bad(format!(
            "CSeq method {} does not match {method}",
            cseq.method
        )));
    }
    if let Some(mf) = request.header("Max-Forwards") {
        if mf.is_empty() || !mf.bytes().all(|b| b.is_ascii_digit()) || mf.parse::<u8>().is_err() {
            return Err(bad("bad Max-Forwards".into()));
        }
    }
    let uri = request.request_uri().unwrap_or_default();
    if uri.starts_with('<') || uri.ends_with('>') {
        return Err(bad("Request-URI in angle brackets".into()));
    }
    match uri_scheme(uri).as_deref() {
        None => return Err(bad("Request-URI has no scheme".into())),
        Some("sip") | Some("sips") => {
            SipUri::parse(uri).map_err(|e| bad(format!("Request-URI: {e}")))?;
        }
        Some(_) => {
            return Err(Reject {
                code: 416,
                reason: "unsupported URI scheme".into(),
            })
        }
    }
    if method == "ACK" || method == "CANCEL" {
        return Ok(());
    }
    if request.header("Max-Forwards") == Some("0") && method != "OPTIONS" {
        return Err(Reject {
            code: 483,
            reason: "Max-Forwards is 0".into(),
        });
    }
    let required: Vec<&str> = request
        .header_values("Require")
        .into_iter()
        .filter(|tag| !tag.is_empty())
        .collect();
    if !required.is_empty() {
        // The reason carries the tags: they become the Unsupported header (RFC 3261 8.2.2.3).
        return Err(Reject {
            code: 420,
            reason: required.join(", "),
        });
    }
    Ok(())
}

/// Whether an `Accept` header (if any) lets us answer with SDP (RFC 3261 8.2.3).
fn accepts_sdp(request: &SipMessage) -> bool {
    let accepted = request.header_values("Accept");
    if request.header("Accept").is_none() {
        return true;
    }
    accepted.iter().any(|value| {
        let media = value.split(';').next().unwrap_or_default().trim();
        media.eq_ignore_ascii_case("application/sdp")
            || media.eq_ignore_ascii_case("application/*")
            || media == "*/*"
    }) || accepted.is_empty()
}

enum BodyProblem {
    UnsupportedType,
    Unparseable(String),
}

/// The SDP offer of an INVITE, from an `application/sdp` body or an SDP part of a multipart body.
fn sdp_offer(request: &SipMessage) -> Result<Option<sdp::SessionDescription>, BodyProblem> {
    if request.body.is_empty() {
        return Ok(None);
    }
    if let Some(encoding) = request.header("Content-Encoding") {
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(BodyProblem::UnsupportedType);
        }
    }
    let content_type = request.header("Content-Type").unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let sdp_bytes: Vec<u8> = if media_type == "application/sdp" {
        request.body.clone()
    } else if media_type.starts_with("multipart/") {
        multipart_sdp(content_type, &request.body).ok_or(BodyProblem::UnsupportedType)?
    } else {
        return Err(BodyProblem::UnsupportedType);
    };
    sdp::parse(&sdp_bytes)
        .map(Some)
        .map_err(|e| BodyProblem::Unparseable(e.to_string()))
}

/// Finds the `application/sdp` part of a multipart body (RFC 2046 boundaries, RFC 5621).
fn multipart_sdp(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let boundary = content_type.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
    })?;
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        parts.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    for part in parts.into_iter().skip(1) {
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let (head_end, body_start) = crate::sip::message::find_header_end(part)
            .or_else(|| part.starts_with(b"\r\n").then_some((0, 2)))?;
        let head = String::from_utf8_lossy(&part[..head_end]).to_ascii_lowercase();
        let is_sdp = head.lines().any(|l| {
            l.starts_with("content-type:")
                && l["content-type:".len()..]
                    .trim()
                    .starts_with("application/sdp")
        });
        if is_sdp {
            let mut content = part[body_start..].to_vec();
            if content.ends_with(b"\r\n") {
                content.truncate(content.len() - 2);
            }
            return Some(content);
        }
    }
    None
}

/// The key in an `application/dtmf-relay` body (`Signal=5\r\nDuration=160`).
fn dtmf_relay_digit(body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("signal") {
            return None;
        }
        let value = value.trim();
        let mut chars = value.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if "0123456789*#ABCDabcd".contains(c) => Some(c.to_ascii_uppercase()),
            _ => match value {
                "10" => Some('*'),
                "11" => Some('#'),
                _ => None,
            },
        }
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An IP address as the host part of a SIP URI or Via (IPv6 in brackets).
/// `host:port` for a SIP URI (IPv6 in brackets).
pub fn host_port(addr: SocketAddr) -> String {
    format!("{}:{}", uri_host(addr.ip()), addr.port())
}

fn uri_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A reason phrase must be printable text on one line.
fn sanitize_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(80)
        .collect()
}
