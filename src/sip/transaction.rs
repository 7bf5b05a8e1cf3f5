//! SIP transactions (RFC 3261 section 17, with the RFC 6026 "Accepted" states): matching requests
//! and responses to transactions, retransmitting over unreliable transports, and timers A to K.
//!
//! Sans-IO in the quinn-proto style: the layer never reads a clock. Callers pass `now` in, read
//! [`TransactionLayer::next_timeout`] to know when to call [`TransactionLayer::handle_timeout`],
//! and drain [`TxOutput`]s. Timers are a `BTreeSet` ordered by deadline, so each set, fire and
//! lookup is O(log n) in the number of live timers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::headers::{CSeq, NameAddr, Via, MAGIC_COOKIE};
use super::message::SipMessage;
use super::transport::Peer;

/// Timer base values (RFC 3261 Table 4). Tests shrink or stretch them freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The RFC 3261 timers plus RFC 6026's L and M. `Retransmit2xx` is the UAS core's 2xx
/// retransmission (RFC 3261 13.3.1.4), kept on the INVITE server transaction while it is Accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
    Retransmit2xx,
}

const TIMER_SLOTS: usize = 13;

impl Timer {
    fn slot(self) -> usize {
        self as usize
    }
}

/// Deadlines of one transaction, one slot per timer; `None` means stopped.
#[derive(Clone, Debug, Default)]
struct TimerTable {
    deadlines: [Option<Instant>; TIMER_SLOTS],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Confirmed,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    Calling,
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Terminated,
}

#[derive(Debug)]
struct ServerTransaction {
    key: String,
    invite: bool,
    state: ServerState,
    peer: Peer,
    last_response: Option<Bytes>,
    retransmit_interval: Duration,
    ack_seen: bool,
    timers: TimerTable,
}

#[derive(Debug)]
struct ClientTransaction {
    key: String,
    invite: bool,
    state: ClientState,
    peer: Peer,
    request: SipMessage,
    request_bytes: Bytes,
    retransmit_interval: Duration,
    timers: TimerTable,
}

/// What happened to an incoming request at the transaction layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDisposition {
    /// A new server transaction; the core must answer it through [`TransactionLayer::respond`].
    New(TxId),
    /// A retransmission, handled here (the last response, if any, was sent again).
    Retransmission(TxId),
    /// An ACK for a non-2xx final response: absorbed by its INVITE transaction.
    AckAbsorbed(TxId),
    /// An ACK outside any transaction (the ACK for a 2xx): the dialog layer takes it.
    AckForDialog,
}

/// Effects the runtime or the core must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOutput {
    Transmit {
        to: Peer,
        bytes: Bytes,
    },
    /// A server transaction ended. `ack_missing` is true when an INVITE's final response was
    /// never acknowledged (timer H, or timer L for a 2xx whose ACK never came).
    ServerTerminated {
        id: TxId,
        ack_missing: bool,
    },
    /// A response for a client transaction that the core must see (not a retransmission).
    ClientResponse {
        id: TxId,
        status: u16,
        response: Box<SipMessage>,
    },
    /// A client transaction got no final response in time (timer B or F).
    ClientTimeout {
        id: TxId,
    },
    ClientTerminated {
        id: TxId,
    },
}

/// Every live transaction, its timers and the outputs not yet drained.
#[derive(Debug)]
pub struct TransactionLayer {
    config: TimerConfig,
    next_id: u64,
    servers: HashMap<TxId, ServerTransaction>,
    server_keys: HashMap<String, TxId>,
    clients: HashMap<TxId, ClientTransaction>,
    client_keys: HashMap<String, TxId>,
    timers: BTreeSet<(Instant, TxId, Timer)>,
    outputs: VecDeque<TxOutput>,
}

/// Server transaction key (RFC 3261 17.2.3). ACK and CANCEL map onto the INVITE they refer to
/// when `as_method` is given.
pub fn server_key(request: &SipMessage, top_via: &Via, as_method: &str) -> String {
    match top_via.branch() {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => {
            format!(
                "{}|{}|{}",
                branch,
                top_via.sent_by().to_ascii_lowercase(),
                as_method
            )
        }
        _ => {
            // RFC 2543 peers: match on the fields that identified a transaction before branches.
            let from_tag = request
                .header("From")
                .and_then(|v| NameAddr::parse(v).ok())
                .and_then(|f| f.tag().map(str::to_string))
                .unwrap_or_default();
            let cseq = request
                .header("CSeq")
                .and_then(|v| CSeq::parse(v).ok())
                .map(|c| c.seq)
                .unwrap_or_default();
            format!(
                "2543|{}|{}|{}|{}|{}|{}",
                request.request_uri().unwrap_or_default(),
                from_tag,
                request.header("Call-ID").unwrap_or_default(),
                cseq,
                top_via.sent_by().to_ascii_lowercase(),
                as_method
            )
        }
    }
}

fn client_key(branch: &str, method: &str) -> String {
    format!("{branch}|{method}")
}

impl TransactionLayer {
    pub fn new(config: TimerConfig) -> Self {
        TransactionLayer {
            config,
            next_id: 1,
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn config(&self) -> TimerConfig {
        self.config
    }

    /// Live transactions (servers, clients), for tests and health reports.
    pub fn len(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.clients.is_empty()
    }

    pub fn server_state(&self, id: TxId) -> Option<ServerState> {
        self.servers.get(&id).map(|t| t.state)
    }

    pub fn client_state(&self, id: TxId) -> Option<ClientState> {
        self.clients.get(&id).map(|t| t.state)
    }

    pub fn poll_output(&mut self) -> Option<TxOutput> {
        self.outputs.pop_front()
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    fn allocate_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    fn start_timer(&mut self, id: TxId, timer: Timer, at: Instant) {
        let table = match self.servers.get_mut(&id) {
            Some(t) => &mut t.timers,
            None => match self.clients.get_mut(&id) {
                Some(t) => &mut t.timers,
                None => return,
            },
        };
        if let Some(old) = table.deadlines[timer.slot()].replace(at) {
            self.timers.remove(&(old, id, timer));
        }
        self.timers.insert((at, id, timer));
    }

    fn stop_timer(&mut self, id: TxId, timer: Timer) {
        let table = match self.servers.get_mut(&id) {
            Some(t) => &mut t.timers,
            None => match self.clients.get_mut(&id) {
                Some(t) => &mut t.timers,
                None => return,
            },
        };
        if let Some(old) = table.deadlines[timer.slot()].take() {
            self.timers.remove(&(old, id, timer));
        }
    }

    fn remove_timers(&mut self, id: TxId, table: &TimerTable) {
        for (slot, deadline) in table.deadlines.iter().enumerate() {
            if let Some(at) = deadline {
                let timer = ALL_TIMERS[slot];
                self.timers.remove(&(*at, id, timer));
            }
        }
    }

    fn terminate_server(&mut self, id: TxId, ack_missing: bool) {
        if let Some(tx) = self.servers.remove(&id) {
            self.remove_timers(id, &tx.timers);
            self.server_keys.remove(&tx.key);
            self.outputs
                .push_back(TxOutput::ServerTerminated { id, ack_missing });
        }
    }

    fn terminate_client(&mut self, id: TxId) {
        if let Some(tx) = self.clients.remove(&id) {
            self.remove_timers(id, &tx.timers);
            self.client_keys.remove(&tx.key);
            self.outputs.push_back(TxOutput::ClientTerminated { id });
        }
    }

    /// Finds the INVITE server transaction a CANCEL refers to (same branch and sent-by).
    pub fn find_invite_for_cancel(&self, cancel: &SipMessage, top_via: &Via) -> Option<TxId> {
        self.server_keys
            .get(&server_key(cancel, top_via, "INVITE"))
            .copied()
            .filter(|id| self.servers.get(id).is_some_and(|t| t.invite))
    }

    /// Matches an incoming request against the server transactions (RFC 3261 17.2.3).
    pub fn receive_request(
        &mut self,
        now: Instant,
        request: &SipMessage,
        top_via: &Via,
        peer: Peer,
    ) -> RequestDisposition {
        let method = request.method().unwrap_or_default();
        if method == "ACK" {
            let key = server_key(request, top_via, "INVITE");
            let Some(&id) = self.server_keys.get(&key) else {
                return RequestDisposition::AckForDialog;
            };
            let Some(tx) = self.servers.get_mut(&id) else {
                return RequestDisposition::AckForDialog;
            };
            return match tx.state {
                ServerState::Completed => {
                    tx.state = ServerState::Confirmed;
                    let reliable = tx.peer.transport.is_reliable();
                    self.stop_timer(id, Timer::G);
                    self.stop_timer(id, Timer::H);
                    if reliable {
                        self.terminate_server(id, false);
                    } else {
                        let t4 = self.config.t4;
                        self.start_timer(id, Timer::I, now + t4);
                    }
                    RequestDisposition::AckAbsorbed(id)
                }
                ServerState::Confirmed => RequestDisposition::AckAbsorbed(id),
                // An ACK reusing the INVITE's branch (RFC 2543 style) for our 2xx.
                _ => RequestDisposition::AckForDialog,
            };
        }
        let key = server_key(request, top_via, method);
        if let Some(&id) = self.server_keys.get(&key) {
            if let Some(tx) = self.servers.get(&id) {
                let resend = match tx.state {
                    ServerState::Proceeding | ServerState::Completed | ServerState::Trying => {
                        tx.last_response.clone()
                    }
                    // RFC 6026: INVITE retransmissions in Accepted are absorbed; the 2xx timer resends.
                    _ => None,
                };
                if let Some(bytes) = resend {
                    self.outputs
                        .push_back(TxOutput::Transmit { to: tx.peer, bytes });
                }
            }
            return RequestDisposition::Retransmission(id);
        }
        let id = self.allocate_id();
        let invite = method == "INVITE";
        self.servers.insert(
            id,
            ServerTransaction {
                key: key.clone(),
                invite,
                state: if invite {
                    ServerState::Proceeding
                } else {
                    ServerState::Trying
                },
                peer,
                last_response: None,
                retransmit_interval: self.config.t1,
                ack_seen: false,
                timers: TimerTable::default(),
            },
        );
        self.server_keys.insert(key, id);
        RequestDisposition::New(id)
    }

    /// Sends a response within a server transaction and moves it through its states.
    pub fn respond(&mut self, now: Instant, id: TxId, status: u16, bytes: Bytes) {
        let config = self.config;
        let Some(tx) = self.servers.get_mut(&id) else {
            return;
        };
        if matches!(
            tx.state,
            ServerState::Completed
                | ServerState::Confirmed
                | ServerState::Terminated
                | ServerState::Accepted
        ) {
            // A final response was already sent: RFC 3261 forbids a second one.
            return;
        }
        tx.last_response = Some(bytes.clone());
        let peer = tx.peer;
        let reliable = peer.transport.is_reliable();
        let invite = tx.invite;
        self.outputs
            .push_back(TxOutput::Transmit { to: peer, bytes });
        if status < 200 {
            tx.state = ServerState::Proceeding;
            return;
        }
        if invite && status < 300 {
            tx.state = ServerState::Accepted;
            tx.retransmit_interval = config.t1;
            // The 2xx is retransmitted end to end whatever the transport (RFC 3261 13.3.1.4).
            self.start_timer(id, Timer::Retransmit2xx, now + config.t1);
            self.start_timer(id, Timer::L, now + 64 * config.t1);
        } else if invite {
            tx.state = ServerState::Completed;
            tx.retransmit_interval = config.t1;
            if !reliable {
                self.start_timer(id, Timer::G, now + config.t1);
            }
            self.start_timer(id, Timer::H, now + 64 * config.t1);
        } else {
            tx.state = ServerState::Completed;
            if reliable {
                self.terminate_server(id, false);
            } else {
                self.start_timer(id, Timer::J, now + 64 * config.t1);
            }
        }
    }

    /// The dialog saw the ACK for this INVITE's 2xx: stop retransmitting it. The transaction
    /// stays in Accepted until timer L so late INVITE retransmissions are still absorbed.
    pub fn ack_received(&mut self, id: TxId) {
        if let Some(tx) = self.servers.get_mut(&id) {
            tx.ack_seen = true;
            // Nothing will be resent from Accepted any more; keep only the key until timer L.
            tx.last_response = None;
        }
        self.stop_timer(id, Timer::Retransmit2xx);
    }

    /// Starts a client transaction for an outgoing request (`request` must carry its top Via).
    pub fn send_request(&mut self, now: Instant, peer: Peer, request: SipMessage) -> TxId {
        let id = self.allocate_id();
        let method = request.method().unwrap_or_default().to_string();
        let branch = request
            .header("Via")
            .and_then(|v| Via::parse(v).ok())
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let key = client_key(&branch, &method);
        let invite = method == "INVITE";
        let bytes = Bytes::from(request.to_bytes());
        let reliable = peer.transport.is_reliable();
        self.clients.insert(
            id,
            ClientTransaction {
                key: key.clone(),
                invite,
                state: if invite {
                    ClientState::Calling
                } else {
                    ClientState::Trying
                },
                peer,
                request,
                request_bytes: bytes.clone(),
                retransmit_interval: self.config.t1,
                timers: TimerTable::default(),
            },
        );
        self.client_keys.insert(key, id);
        self.outputs
            .push_back(TxOutput::Transmit { to: peer, bytes });
        let t1 = self.config.t1;
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        if !reliable {
            self.start_timer(id, retransmit, now + t1);
        }
        self.start_timer(id, timeout, now + 64 * t1);
        id
    }

    /// Matches a response to a client transaction (RFC 3261 17.1.3). Returns false if none matched.
    pub fn receive_response(&mut self, now: Instant, response: &SipMessage) -> bool {
        let Some(status) = response.status() else {
            return false;
        };
        let branch = response
            .header("Via")
            .and_then(|v| Via::parse(v).ok())
            .and_then(|v| v.branch().map(str::to_string));
        let method = response
            .header("CSeq")
            .and_then(|v| CSeq::parse(v).ok())
            .map(|c| c.method);
        let (Some(branch), Some(method)) = (branch, method) else {
            return false;
        };
        let Some(&id) = self.client_keys.get(&client_key(&branch, &method)) else {
            return false;
        };
        let config = self.config;
        let Some(tx) = self.clients.get_mut(&id) else {
            return false;
        };
        let reliable = tx.peer.transport.is_reliable();
        let report = |outputs: &mut VecDeque<TxOutput>| {
            outputs.push_back(TxOutput::ClientResponse {
                id,
                status,
                response: Box::new(response.clone()),
            })
        };
        if tx.invite {
            match (tx.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    tx.state = ClientState::Proceeding;
                    self.stop_timer(id, Timer::A);
                    report(&mut self.outputs);
                }
                (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                    // RFC 6026 Accepted: the TU sends the ACK; timer M absorbs 2xx retransmissions.
                    tx.state = ClientState::Accepted;
                    self.stop_timer(id, Timer::A);
                    self.stop_timer(id, Timer::B);
                    self.start_timer(id, Timer::M, now + 64 * config.t1);
                    report(&mut self.outputs);
                }
                (ClientState::Accepted, 200..=299) => report(&mut self.outputs),
                (ClientState::Calling | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    let ack = ack_for_failure(&tx.request, response);
                    let peer = tx.peer;
                    self.outputs.push_back(TxOutput::Transmit {
                        to: peer,
                        bytes: Bytes::from(ack.to_bytes()),
                    });
                    self.stop_timer(id, Timer::A);
                    self.stop_timer(id, Timer::B);
                    report(&mut self.outputs);
                    if reliable {
                        self.terminate_client(id);
                    } else {
                        self.start_timer(id, Timer::D, now + Duration::from_secs(32));
                    }
                }
                (ClientState::Completed, 300..=699) => {
                    // Retransmitted failure: send the ACK again, tell nobody.
                    let ack = ack_for_failure(&tx.request, response);
                    self.outputs.push_back(TxOutput::Transmit {
                        to: tx.peer,
                        bytes: Bytes::from(ack.to_bytes()),
                    });
                }
                _ => {}
            }
        } else {
            match (tx.state, status) {
                (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                    tx.state = ClientState::Proceeding;
                    report(&mut self.outputs);
                }
                (ClientState::Trying | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    self.stop_timer(id, Timer::E);
                    self.stop_timer(id, Timer::F);
                    report(&mut self.outputs);
                    if reliable {
                        self.terminate_client(id);
                    } else {
                        self.start_timer(id, Timer::K, now + config.t4);
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            // Clear the slot so restarts below do not try to remove a stale entry.
            if let Some(t) = self.servers.get_mut(&id) {
                t.timers.deadlines[timer.slot()] = None;
            } else if let Some(t) = self.clients.get_mut(&id) {
                t.timers.deadlines[timer.slot()] = None;
            }
            self.fire(at, id, timer);
        }
    }

    fn fire(&mut self, at: Instant, id: TxId, timer: Timer) {
        let config = self.config;
        match timer {
            Timer::G | Timer::Retransmit2xx => {
                let Some(tx) = self.servers.get_mut(&id) else {
                    return;
                };
                let wanted = match timer {
                    Timer::G => ServerState::Completed,
                    _ => ServerState::Accepted,
                };
                if tx.state != wanted || (timer == Timer::Retransmit2xx && tx.ack_seen) {
                    return;
                }
                if let Some(bytes) = tx.last_response.clone() {
                    self.outputs
                        .push_back(TxOutput::Transmit { to: tx.peer, bytes });
                }
                tx.retransmit_interval = (tx.retransmit_interval * 2).min(config.t2);
                let next = at + tx.retransmit_interval;
                self.start_timer(id, timer, next);
            }
            Timer::H => self.terminate_server(id, true),
            Timer::L => {
                let ack_missing = self.servers.get(&id).is_some_and(|t| !t.ack_seen);
                self.terminate_server(id, ack_missing);
            }
            Timer::I | Timer::J => self.terminate_server(id, false),
            Timer::A | Timer::E => {
                let Some(tx) = self.clients.get_mut(&id) else {
                    return;
                };
                self.outputs.push_back(TxOutput::Transmit {
                    to: tx.peer,
                    bytes: tx.request_bytes.clone(),
                });
                tx.retransmit_interval = if timer == Timer::A {
                    tx.retransmit_interval * 2
                } else if tx.state == ClientState::Proceeding {
                    config.t2
                } else {
                    (tx.retransmit_interval * 2).min(config.t2)
                };
                let next = at + tx.retransmit_interval;
                self.start_timer(id, timer, next);
            }
            Timer::B | Timer::F => {
                self.outputs.push_back(TxOutput::ClientTimeout { id });
                self.terminate_client(id);
            }
            Timer::D | Timer::K | Timer::M => self.terminate_client(id),
        }
    }
}

const ALL_TIMERS: [Timer; TIMER_SLOTS] = [
    Timer::A,
    Timer::B,
    Timer::D,
    Timer::E,
    Timer::F,
    Timer::G,
    Timer::H,
    Timer::I,
    Timer::J,
    Timer::K,
    Timer::L,
    Timer::M,
    Timer::Retransmit2xx,
];

/// The ACK a client INVITE transaction sends for a 3xx-6xx (RFC 3261 17.1.1.3).
fn ack_for_failure(invite: &SipMessage, response: &SipMessage) -> SipMessage {
    let mut ack = SipMessage {
        start: super::message::StartLine::Request {
            method: "ACK".into(),
            uri: invite.request_uri().unwrap_or_default().to_string(),
            version: "SIP/2.0".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
        problems: Vec::new(),
    };
    if let Some(via) = invite.header("Via") {
        ack.push_header("Via", via);
    }
    for route in invite.header_lines("Route") {
        ack.push_header("Route", route);
    }
    ack.push_header("Max-Forwards", "70");
    for name in ["From", "Call-ID"] {
        if let Some(v) = invite.header(name) {
            ack.push_header(name, v);
        }
    }
    if let Some(to) = response.header("To") {
        ack.push_header("To", to);
    }
    let seq = invite
        .header("CSeq")
        .and_then(|v| CSeq::parse(v).ok())
        .map(|c| c.seq)
        .unwrap_or(1);
    ack.push_header("CSeq", format!("{seq} ACK"));
    ack
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fake clock needs one real base instant
mod tests {
    use super::*;
    use crate::sip::transport::Peer;

    fn peer() -> Peer {
        Peer::udp(
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1:5070".parse().unwrap(),
        )
    }

    fn request(method: &str, branch: &str) -> SipMessage {
        let text = format!(
            "{method} sip:311@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
From: <sip:a@127.0.0.1>;tag=f\r\nTo: <sip:311@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    fn via(m: &SipMessage) -> Via {
        Via::parse(m.header("Via").unwrap()).unwrap()
    }

    fn transmits(layer: &mut TransactionLayer) -> usize {
        let mut n = 0;
        while let Some(o) = layer.poll_output() {
            if matches!(o, TxOutput::Transmit { .. }) {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn non_invite_server_resends_final_and_frees_after_timer_j() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let options = request("OPTIONS", "z9hG4bK-o1");
        let RequestDisposition::New(id) =
            layer.receive_request(t0, &options, &via(&options), peer())
        else {
            panic!("expected a new transaction");
        };
        layer.respond(t0, id, 200, Bytes::from_static(b"200"));
        assert_eq!(transmits(&mut layer), 1);
        assert_eq!(
            layer.receive_request(t0, &options, &via(&options), peer()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(transmits(&mut layer), 1);
        let j = layer.next_timeout().unwrap();
        assert_eq!(j - t0, Duration::from_secs(32));
        layer.handle_timeout(j);
        assert!(layer.is_empty());
    }

    #[test]
    fn invite_failure_retransmits_until_ack_then_timer_i() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let invite = request("INVITE", "z9hG4bK-i1");
        let RequestDisposition::New(id) = layer.receive_request(t0, &invite, &via(&invite), peer())
        else {
            panic!();
        };
        layer.respond(t0, id, 488, Bytes::from_static(b"488"));
        transmits(&mut layer);
        layer.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(transmits(&mut layer), 1, "timer G at T1");
        layer.handle_timeout(t0 + Duration::from_millis(1500));
        assert_eq!(transmits(&mut layer), 1, "timer G at 2*T1");
        let ack = request("ACK", "z9hG4bK-i1");
        assert_eq!(
            layer.receive_request(t0, &ack, &via(&ack), peer()),
            RequestDisposition::AckAbsorbed(id)
        );
        assert_eq!(layer.server_state(id), Some(ServerState::Confirmed));
        layer.handle_timeout(t0 + Duration::from_millis(1500) + Duration::from_secs(5));
        assert!(layer.is_empty());
    }

    #[test]
    fn client_non_invite_retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let bye = request("BYE", "z9hG4bK-b1");
        let id = layer.send_request(t0, peer(), bye);
        assert_eq!(transmits(&mut layer), 1);
        let mut sent = 0;
        let mut timed_out = false;
        while let Some(at) = layer.next_timeout() {
            layer.handle_timeout(at);
            while let Some(o) = layer.poll_output() {
                match o {
                    TxOutput::Transmit { .. } => sent += 1,
                    TxOutput::ClientTimeout { id: t } => timed_out = t == id,
                    _ => {}
                }
            }
        }
        assert!(timed_out);
        // E fires at 0.5, 1.5, 3.5, 7.5, then every 4 s until F at 32 s: 4 + 6 = 10 retransmissions.
        assert_eq!(sent, 10);
    }

    #[test]
    fn client_invite_acks_failure_and_waits_timer_d() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let invite = request("INVITE", "z9hG4bK-c1");
        let id = layer.send_request(t0, peer(), invite);
        transmits(&mut layer);
        let response = SipMessage::parse(
            b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-c1\r\nTo: <sip:311@127.0.0.1>;tag=t\r\nFrom: <sip:a@127.0.0.1>;tag=f\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .unwrap();
        assert!(layer.receive_response(t0, &response));
        let mut acks = 0;
        let mut reported = false;
        while let Some(o) = layer.poll_output() {
            match o {
                TxOutput::Transmit { bytes, .. } => {
                    assert!(bytes.starts_with(b"ACK "));
                    acks += 1;
                }
                TxOutput::ClientResponse { status, .. } => reported = status == 486,
                _ => {}
            }
        }
        assert_eq!((acks, reported), (1, true));
        assert_eq!(layer.client_state(id), Some(ClientState::Completed));
        layer.handle_timeout(t0 + Duration::from_secs(32));
        assert!(layer.is_empty());
    }
}
