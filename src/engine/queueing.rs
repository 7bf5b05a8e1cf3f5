//! Agents and queues inside the engine: REGISTER with digest authentication (sip::digest,
//! sip::registrar), callers handed from the IVR to the pure routing core (routing::core), the
//! agent legs the router's offers become (INVITE to the Contact the agent registered, CANCEL,
//! BYE), hold music while queued, a whisper of the case category to the agent, and the bridge of
//! the two legs' media. Every routing decision is the router's; this file only carries them out
//! and records the router's queue events in the call log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    json_string, uri_host, CallState, Engine, MediaCommand, MediaEvent, Output, ALLOWED_METHODS,
};
use crate::events::{CallEvent, EventKind};
use crate::routing::core::{CallId, Router, RouterInput, RouterOutput};
use crate::routing::rules::{AgentId, AgentProfile, CallerAttrs, QueueId, Rules};
use crate::sip::digest::{Algorithm, Authenticator, Decision, DigestConfig};
use crate::sip::headers::{NameAddr, SipUri};
use crate::sip::message::{SipMessage, StartLine};
use crate::sip::registrar::{Presence, RegisterRequest, Registrar, RegistrarConfig};
use crate::sip::sdp;
use crate::sip::transaction::TxId;
use crate::sip::transport::Peer;

/// Queues, agents and credentials, loaded and checked by the runtime.
#[derive(Debug, Clone)]
pub struct RoutingSetup {
    pub rules: Rules,
    pub agents: Vec<AgentProfile>,
    pub digest: DigestConfig,
    /// A phone that registers makes its agent ready (no separate sign-in step yet).
    pub ready_on_register: bool,
    /// Played in a loop to callers while they wait.
    pub hold_prompts: Vec<String>,
    /// Position and wait are announced on joining and then this often; zero turns it off.
    pub announce_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LegState {
    /// INVITE sent, no answer yet.
    Inviting,
    /// 200 received and acknowledged; the whisper plays, then the bridge.
    Whisper,
    Bridged,
    /// CANCEL sent (or about to be): a 200 that crosses it is acknowledged and hung up.
    Cancelling,
    /// BYE sent.
    Ending,
}

/// Whom an outbound leg calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LegKind {
    /// An agent's phone, for one offer; `resident` is the callback leg bridged to it, if any.
    Agent { resident: Option<u64> },
    /// A resident called back through the gateway, for the agent on `agent_leg`.
    Resident { agent_leg: u64 },
}

/// A call from us: to an agent's phone for one offer, or to a resident for a callback.
#[derive(Debug)]
pub(super) struct AgentLeg {
    /// The router's call this leg serves.
    pub(super) call: CallId,
    /// The resident's inbound call, when they are still on the line (None for a callback).
    pub(super) caller: Option<u64>,
    pub(super) agent: AgentId,
    pub(super) kind: LegKind,
    /// A resident leg is cancelled when it has rung this long unanswered.
    pub(super) ring_deadline: Option<Instant>,
    pub(super) media_ref: String,
    sip_call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    invite: SipMessage,
    invite_tx: TxId,
    peer: Peer,
    remote_target: String,
    rtp_port: u16,
    pub(super) state: LegState,
    cseq: u32,
    pub(super) play_id: u64,
    /// Our Via up to its branch ("SIP/2.0/UDP 127.0.0.1:5060"), for requests in the dialog.
    via_sent_by: String,
}

/// What the engine keeps about queues and agents.
pub struct Queueing {
    pub(super) setup: Arc<RoutingSetup>,
    pub(super) router: Router,
    auth: Authenticator,
    registrar: Registrar,
    /// When the engine first saw the clock: router and registrar time is ms since then.
    epoch: Option<Instant>,
    /// sip user -> agent.
    by_user: HashMap<String, usize>,
    /// Where each agent's REGISTER came from: requests to the agent go there (NAT-safe, like
    /// Asterisk's force_rport), to the Request-URI of their Contact exactly as registered.
    agent_peers: HashMap<String, Peer>,
    pub(super) legs: HashMap<u64, AgentLeg>,
    next_leg: u64,
    leg_by_tx: HashMap<TxId, u64>,
    leg_by_dialog: HashMap<String, u64>,
    leg_by_media: HashMap<String, u64>,
    /// Callers in a queue (waiting or ringing an agent), by call number.
    pub(super) queued: HashMap<u64, QueuedCaller>,
    /// Callbacks that keep a place in line for a resident who hung up, by router call id.
    pub(super) callbacks: HashMap<String, super::callback::Callback>,
    /// What the wait estimator learns from the router's events.
    estimator: WaitEstimate,
}

/// The wait announced to callers: civicline's estimator (`ewt::estimators::Civicline`, which
/// runs the current queues forward from what the router shows; see BENCHMARKS.md for how it
/// compares with LES, HOL, Asterisk's average and QL-m), fed the router's queue events. With no
/// basis yet it falls back to the stated default of `FALLBACK_WAIT_S`.
struct WaitEstimate {
    civic: crate::ewt::estimators::Civicline,
    fallback: crate::ewt::estimators::Fallback,
    /// Call reference -> the estimator's numeric key (never reused).
    keys: HashMap<String, u64>,
    next_key: u64,
    /// Agents with a call in hand: since when (s) and from which queue.
    busy: HashMap<AgentId, (f64, u16)>,
}

const FALLBACK_WAIT_S: f64 = 180.0;

/// See `Queueing::ms`: seven days.
const ROUTER_CLOCK_BASE_MS: u64 = 7 * 24 * 3600 * 1000;

impl WaitEstimate {
    fn new() -> WaitEstimate {
        WaitEstimate {
            civic: crate::ewt::estimators::Civicline::new(Default::default()),
            fallback: crate::ewt::estimators::Fallback {
                per_queue: Default::default(),
                default_s: FALLBACK_WAIT_S,
            },
            keys: HashMap::new(),
            next_key: 1,
            busy: HashMap::new(),
        }
    }

    fn key(&mut self, call: &str) -> u64 {
        let next = self.next_key;
        let key = *self.keys.entry(call.to_string()).or_insert(next);
        if key == next {
            self.next_key += 1;
        }
        key
    }

    /// Turns one router event into what the estimator learns from.
    fn observe(&mut self, rules: &Rules, event: &crate::routing::core::QueueEvent) {
        use crate::ewt::estimators::Observation;
        use crate::routing::core::QueueEventKind as K;
        let at = event.at_ms as f64 / 1000.0;
        let queue = event
            .queue
            .as_ref()
            .and_then(|q| rules.queue_index(q))
            .map(|i| i as u16);
        let (Some(queue), Some(call)) = (queue, event.call.as_ref()) else {
            return;
        };
        let call = self.key(&call.0);
        let waited = event.hold_ms.unwrap_or(0) as f64 / 1000.0;
        let observation = match event.kind {
            K::Joined => Observation::Joined { at, call, queue },
            K::Answered => {
                if let Some(agent) = &event.agent {
                    self.busy.insert(agent.clone(), (at, queue));
                }
                Observation::Answered {
                    at,
                    call,
                    queue,
                    waited,
                }
            }
            K::Abandoned => Observation::Abandoned {
                at,
                call,
                queue,
                waited,
            },
            K::Overflowed | K::Exited | K::MaxWait | K::NoAgents | K::Removed => {
                Observation::Exited {
                    at,
                    call,
                    queue,
                    waited,
                }
            }
            K::Ended => {
                // Handle time = talk plus the queue's wrap-up, the time the agent is taken.
                let wrapup = rules.queues().get(queue as usize).map_or(0, |q| q.wrapup_s) as f64;
                if let Some(agent) = &event.agent {
                    self.busy.remove(agent);
                }
                Observation::Completed {
                    at,
                    call,
                    queue,
                    handle: event.talk_ms.unwrap_or(0) as f64 / 1000.0 + wrapup,
                }
            }
            _ => return,
        };
        use crate::ewt::estimators::WaitEstimator;
        self.civic.observe(&observation);
        // The key is needed until the call's last event; then it goes, so the map stays small.
        if matches!(
            event.kind,
            K::Ended | K::Abandoned | K::Exited | K::MaxWait | K::NoAgents | K::Removed
        ) {
            if let Some(call) = &event.call {
                self.keys.remove(&call.0);
            }
        }
    }

    /// The caller's remaining wait, from the router's current state.
    fn estimate_s(
        &self,
        router: &Router,
        agents: &[AgentProfile],
        call: &str,
        now_ms: u64,
    ) -> Option<f64> {
        use crate::ewt::estimators::{
            estimate_or_fallback, AgentActivity, AgentView, CallerRef, QueueSet, Snapshot,
            WaitingCaller,
        };
        use crate::routing::core::AgentState;
        let rules = router.rules();
        let now = now_ms as f64 / 1000.0;
        let mut waiting = Vec::new();
        for (index, queue) in rules.queues().iter().enumerate() {
            for w in router.waiting(&queue.id) {
                waiting.push(WaitingCaller {
                    call: *self.keys.get(&w.call.0)?,
                    queue: index as u16,
                    joined_at: w.joined_ms as f64 / 1000.0,
                    priority: queue
                        .priority
                        .saturating_mul(1000)
                        .saturating_add(w.priority),
                });
            }
        }
        let mut views = Vec::new();
        for (id, state) in router.agents() {
            let Some(profile) = agents.iter().find(|a| &a.id == id) else {
                continue;
            };
            let mut skills = QueueSet::default();
            for (index, queue) in rules.queues().iter().enumerate() {
                if queue.levels().iter().any(|l| l.accepts(&profile.skills)) {
                    skills.insert(index as u16);
                }
            }
            let activity = match state {
                AgentState::Offline => continue,
                AgentState::Ready => AgentActivity::Idle { since: now },
                AgentState::NotReady(_) => AgentActivity::NotReady,
                _ => match self.busy.get(id) {
                    Some(&(since, queue)) => AgentActivity::Busy { since, queue },
                    // Reserved or ringing: about to take a call, treat it as just taken.
                    None => AgentActivity::Busy {
                        since: now,
                        queue: skills.iter().next().unwrap_or(0),
                    },
                },
            };
            views.push(AgentView {
                skills,
                activity,
                leaves_at: None,
            });
        }
        let snapshot = Snapshot {
            now,
            waiting: &waiting,
            agents: &views,
            scheduled: &[],
        };
        let caller = CallerRef(*self.keys.get(call)?);
        Some(estimate_or_fallback(&self.civic, &snapshot, caller, &self.fallback).0)
    }
}

/// Prompts for "you are caller number N; your estimated wait is about M minutes", worded by
/// `ewt::announce::words_for_wait` (whole minutes up to ten, then fives, "more than an hour").
pub fn announcement_prompts(position: usize, wait_s: f64, language: &str) -> Vec<String> {
    use crate::ewt::announce::{words_for_wait, Announcement};
    let mut prompts = vec!["your_position_is".to_string()];
    prompts.extend(crate::numbers::say_number(position as u32 + 1, language));
    match words_for_wait(wait_s) {
        Announcement::LessThanAMinute => {
            prompts.push("estimated_wait".into());
            prompts.push("less_than_a_minute".into());
        }
        Announcement::AboutMinutes(minutes) => {
            prompts.push("estimated_wait".into());
            prompts.push("about".into());
            prompts.extend(crate::numbers::say_number(minutes, language));
            prompts.push("minutes".into());
        }
        Announcement::MoreThanAnHour => {
            prompts.push("estimated_wait".into());
            prompts.push("more_than_an_hour".into());
        }
        // No figure worth giving: the position alone.
        Announcement::Unknown => {}
    }
    prompts
}

#[derive(Debug, Default)]
pub(super) struct QueuedCaller {
    /// The leg that is bridged to this caller, if any.
    bridged: Option<u64>,
    pub(super) category: Option<String>,
    /// The next position-and-wait announcement.
    next_announce: Option<Instant>,
    /// The last figure announced and when.
    announced: Option<(f64, Instant)>,
    /// What the router was told at the hand-off, kept for a callback's later re-joins.
    pub(super) attrs: CallerAttrs,
    pub(super) queue: Option<QueueId>,
    /// Router time of the hand-off: a callback keeps this place in line.
    pub(super) joined_ms: u64,
    /// The callback offer's dialogue, while the caller is in it.
    pub(super) callback: Option<super::callback::CallbackAsk>,
    /// The callback has been offered (the announced wait passed the threshold).
    pub(super) callback_offered: bool,
}

/// Hands the router a change to one agent's profile. An agent who is not signed in is not
/// an error: their next sign-in takes the profile as it is now.
fn change_agent(router: &mut Router, ms: u64, input: RouterInput) {
    match router.handle_input(ms, input) {
        Ok(())
        | Err(crate::routing::core::RouterError::AgentOffline(_))
        | Err(crate::routing::core::RouterError::UnknownAgent(_)) => {}
        Err(error) => tracing::warn!(%error, "agent change refused by the router"),
    }
}

/// Each SIP user's agent, as an index into the agents.
fn agents_by_user(agents: &[AgentProfile]) -> HashMap<String, usize> {
    agents
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.sip_user.clone().map(|u| (u, i)))
        .collect()
}

impl Queueing {
    pub fn new(setup: Arc<RoutingSetup>, secret: [u8; 32]) -> Queueing {
        let by_user = agents_by_user(&setup.agents);
        Queueing {
            router: Router::new(setup.rules.clone()),
            auth: Authenticator::new(setup.digest.clone(), secret),
            registrar: Registrar::new(RegistrarConfig::default()),
            epoch: None,
            by_user,
            agent_peers: HashMap::new(),
            legs: HashMap::new(),
            next_leg: 1,
            leg_by_tx: HashMap::new(),
            leg_by_dialog: HashMap::new(),
            leg_by_media: HashMap::new(),
            queued: HashMap::new(),
            callbacks: HashMap::new(),
            estimator: WaitEstimate::new(),
            setup,
        }
    }

    /// Router and registrar time: ms since the engine first saw the clock, plus
    /// `ROUTER_CLOCK_BASE_MS`, so that a callback restored after a restart can be placed at
    /// the join time it had (up to that long ago) without going below zero.
    pub(super) fn ms(&mut self, now: Instant) -> u64 {
        self.epoch.get_or_insert(now);
        self.router_ms(now).unwrap_or(ROUTER_CLOCK_BASE_MS)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let epoch = self.epoch?;
        let announce = self.queued.values().filter_map(|w| w.next_announce).min();
        let asks = self
            .queued
            .values()
            .filter_map(|w| w.callback.as_ref().map(|c| c.deadline()))
            .min();
        let rings = self.legs.values().filter_map(|l| l.ring_deadline).min();
        let parked = self
            .callbacks
            .values()
            .filter_map(|c| c.parked_until())
            .min();
        [self.router.poll_timeout(), self.registrar.poll_timeout()]
            .into_iter()
            .flatten()
            .map(|ms| epoch + Duration::from_millis(ms.saturating_sub(ROUTER_CLOCK_BASE_MS)))
            .chain(announce)
            .chain(asks)
            .chain(rings)
            .chain(parked)
            .min()
    }

    /// Read access for the HTTP API and tests.
    pub fn router(&self) -> &Router {
        &self.router
    }
}

impl Engine {
    pub(super) fn queueing_timeout(&mut self, now: Instant) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        let gone = q.registrar.expire(ms);
        q.router.handle_timeout(ms);
        for user in gone {
            self.agent_offline(now, &user);
        }
        self.drain_router(now);
        self.callback_timeouts(now);
        let due: Vec<u64> = self
            .queueing
            .as_deref()
            .map(|q| {
                q.queued
                    .iter()
                    .filter(|(_, w)| w.next_announce.is_some_and(|at| at <= now))
                    .map(|(&n, _)| n)
                    .collect()
            })
            .unwrap_or_default();
        for number in due {
            if let Some(prompts) = self.announcement(now, number) {
                let hold = self
                    .queueing
                    .as_deref()
                    .map(|q| q.setup.hold_prompts.clone())
                    .unwrap_or_default();
                let language = self.language_of(number);
                self.play(now, number, [prompts, hold].concat(), language);
            }
        }
    }

    /// The caller's position and wait, as prompts, logged with the figures behind them; `None`
    /// when they are no longer waiting (an agent rings or talks). Schedules the next one.
    fn announcement(&mut self, now: Instant, number: u64) -> Option<Vec<String>> {
        let call_ref = self.calls.get(&number)?.call_ref.clone();
        let language = self.language_of(number);
        let q = self.queueing.as_deref_mut()?;
        let every = q.setup.announce_every;
        let waiting = q.queued.get_mut(&number)?;
        waiting.next_announce = (!every.is_zero()).then_some(now + every);
        if waiting.bridged.is_some() {
            return None;
        }
        let position = q.router.position(&CallId(call_ref.clone()))?;
        let on_duty = q
            .router
            .agents()
            .filter(|(_, s)| !matches!(s, crate::routing::core::AgentState::Offline))
            .count();
        let ms = q.ms(now);
        let estimate = q
            .estimator
            .estimate_s(&q.router, &q.setup.agents, &call_ref, ms)
            .unwrap_or(FALLBACK_WAIT_S);
        let waiting = q.queued.get_mut(&number)?;
        // The last figure counted down and blended towards the new estimate, rises capped
        // (ewt::announce::smooth): it never jumps about.
        let (previous, elapsed) = match waiting.announced {
            Some((s, at)) => (Some(s), now.saturating_duration_since(at).as_secs_f64()),
            None => (None, 0.0),
        };
        let announced = crate::ewt::announce::smooth(previous, estimate, elapsed);
        waiting.announced = Some((announced, now));
        let offer_callback = self
            .config
            .callbacks
            .as_deref()
            .is_some_and(|c| announced >= c.offer_after.as_secs_f64());
        if offer_callback {
            waiting.callback_offered = true;
        }
        let mut event = self.record_for(number, now, EventKind::Announced);
        event.detail = Some(format!(
            "{{\"position\":{},\"estimate_s\":{:.0},\"announced_s\":{:.0},\"agents_on_duty\":{on_duty}}}",
            position + 1,
            estimate,
            announced
        ));
        self.emit(event);
        let mut prompts = announcement_prompts(position, announced, &language);
        if offer_callback {
            prompts.push("callback_offer".into());
        }
        Some(prompts)
    }

    fn agent_of_user(&self, user: &str) -> Option<AgentProfile> {
        let q = self.queueing.as_deref()?;
        q.by_user.get(user).map(|&i| q.setup.agents[i].clone())
    }

    fn agent_offline(&mut self, now: Instant, user: &str) {
        let Some(agent) = self.agent_of_user(user) else {
            return;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        q.agent_peers.remove(user);
        let _ = q
            .router
            .handle_input(ms, RouterInput::AgentLogout { agent: agent.id });
    }

    /// New rules from a reload: the router re-places waiting callers (they keep their join
    /// time); calls with agents go on untouched.
    pub(super) fn reload_routing(&mut self, now: Instant, rules: Rules) {
        if let Some(q) = self.queueing.as_deref_mut() {
            let ms = q.ms(now);
            q.router.replace_rules(ms, rules);
        }
        self.drain_router(now);
    }

    /// A reloaded agents file. Agents no longer in it, or whose phone is now another SIP user,
    /// are signed out (the router lets a call in hand finish first; their phone's next REGISTER
    /// is refused); new agents sign in when their phone registers; changed skills apply at once
    /// (`set_agent_skills`); changed credentials apply to the next REGISTER.
    pub(super) fn reload_agents(&mut self, now: Instant, agents: Vec<AgentProfile>) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        let mut inputs = Vec::new();
        let mut kept = 0;
        for before in &q.setup.agents {
            let after = agents.iter().find(|a| a.id == before.id);
            kept += usize::from(after.is_some());
            match after {
                Some(after) if after.sip_user == before.sip_user => {
                    if after.skills != before.skills {
                        inputs.push(RouterInput::AgentSkills {
                            agent: after.id.clone(),
                            skills: after.skills.clone(),
                        });
                    }
                }
                _ => inputs.push(RouterInput::AgentLogout {
                    agent: before.id.clone(),
                }),
            }
        }
        let added = agents.len() - kept;
        let removed = q.setup.agents.len() - kept;
        let by_user = agents_by_user(&agents);
        q.agent_peers.retain(|user, _| by_user.contains_key(user));
        q.by_user = by_user;
        Arc::make_mut(&mut q.setup).agents = agents;
        for input in inputs {
            change_agent(&mut q.router, ms, input);
        }
        tracing::info!(kept, added, removed, "agents reloaded");
        self.drain_router(now);
    }

    /// Ready / not ready from the HTTP API. An agent whose phone is not registered stays
    /// offline (the router refuses, and nothing changes).
    pub(super) fn set_agent_state(
        &mut self,
        now: Instant,
        agent: String,
        ready: bool,
        reason: String,
    ) {
        if let Some(q) = self.queueing.as_deref_mut() {
            let ms = q.ms(now);
            let agent = AgentId(agent);
            let input = if ready {
                RouterInput::AgentReady { agent }
            } else {
                RouterInput::AgentNotReady { agent, reason }
            };
            if let Err(error) = q.router.handle_input(ms, input) {
                tracing::info!(%error, "agent state change refused");
            }
        }
        self.drain_router(now);
    }

    /// New skills for an agent: the profile the next login uses, the live view, and the router
    /// at once when they are logged in.
    pub(super) fn set_agent_skills(
        &mut self,
        now: Instant,
        agent: String,
        skills: crate::routing::rules::SkillSet,
    ) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let setup = Arc::make_mut(&mut q.setup);
        let Some(profile) = setup.agents.iter_mut().find(|a| a.id.0 == agent) else {
            return;
        };
        profile.skills = skills.clone();
        let ms = q.ms(now);
        let input = RouterInput::AgentSkills {
            agent: AgentId(agent),
            skills,
        };
        change_agent(&mut q.router, ms, input);
        self.drain_router(now);
    }

    /// REGISTER from an agent's phone: digest authentication, then the registrar.
    pub(super) fn handle_register(
        &mut self,
        now: Instant,
        tx: TxId,
        peer: Peer,
        request: &SipMessage,
    ) {
        let tag = self.random_token();
        let source = peer.remote.ip().to_string();
        let authorization = request.header("Authorization").map(str::to_string);
        let agents: Vec<AgentProfile> = match self.queueing.as_deref() {
            Some(q) => q.setup.agents.clone(),
            None => return,
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        let realm = q.setup.digest.realm.clone();
        let decision = q.auth.authenticate(
            "REGISTER",
            authorization.as_deref(),
            &source,
            |user, r, algorithm| {
                if r != realm {
                    return None;
                }
                let agent = agents
                    .iter()
                    .find(|a| a.sip_user.as_deref() == Some(user))?;
                match algorithm {
                    Algorithm::Md5 => agent.ha1_md5.clone(),
                    Algorithm::Sha256 => agent.ha1_sha256.clone(),
                }
            },
            ms,
        );
        let user = match decision {
            Decision::Accept { user, .. } => user,
            Decision::Challenge { www_authenticate } => {
                let extra = www_authenticate
                    .into_iter()
                    .map(|v| ("WWW-Authenticate", v))
                    .collect();
                self.respond(now, tx, peer, request, 401, Some(&tag), extra, None);
                return;
            }
            Decision::Throttled { retry_after_s } => {
                let extra = vec![("Retry-After", retry_after_s.to_string())];
                self.respond(now, tx, peer, request, 503, Some(&tag), extra, None);
                return;
            }
            other => {
                let code = other.status();
                self.respond(now, tx, peer, request, code, Some(&tag), Vec::new(), None);
                return;
            }
        };
        // The authenticated user may only register their own address of record.
        let to_user = request
            .header("To")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|n| SipUri::parse(&n.uri).ok())
            .and_then(|u| u.user);
        if to_user.as_deref() != Some(user.as_str()) {
            self.respond(now, tx, peer, request, 403, Some(&tag), Vec::new(), None);
            return;
        }
        let contacts: Vec<&str> = request.header_values("Contact");
        let cseq = request
            .header("CSeq")
            .and_then(|v| crate::sip::headers::CSeq::parse(v).ok())
            .map(|c| c.seq)
            .unwrap_or(0);
        let register = RegisterRequest {
            user: &user,
            contacts: &contacts,
            expires: request.header("Expires"),
            call_id: request.header("Call-ID").unwrap_or_default(),
            cseq,
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let result = q.registrar.register(&register, ms);
        let registered = match result {
            Ok(r) => r,
            Err(error) => {
                let code = error.status();
                let mut extra = Vec::new();
                if let Some(min) = error.min_expires() {
                    extra.push(("Min-Expires", min.to_string()));
                }
                self.respond(now, tx, peer, request, code, Some(&tag), extra, None);
                return;
            }
        };
        q.agent_peers.insert(user.clone(), peer);
        let extra = registered
            .contacts
            .iter()
            .map(|c| ("Contact", c.clone()))
            .chain([("Allow", ALLOWED_METHODS.to_string())])
            .collect();
        self.respond(now, tx, peer, request, 200, Some(&tag), extra, None);
        let agent = self.agent_of_user(&user);
        match (registered.presence, agent) {
            (Presence::CameOnline, Some(agent)) => {
                let ready = self
                    .queueing
                    .as_deref()
                    .is_some_and(|q| q.setup.ready_on_register);
                let Some(q) = self.queueing.as_deref_mut() else {
                    return;
                };
                let _ = q.router.handle_input(
                    ms,
                    RouterInput::AgentLogin {
                        agent: agent.id.clone(),
                        skills: agent.skills.clone(),
                    },
                );
                if ready {
                    let _ = q
                        .router
                        .handle_input(ms, RouterInput::AgentReady { agent: agent.id });
                }
            }
            (Presence::WentOffline, Some(_)) => self.agent_offline(now, &user),
            _ => {}
        }
        self.drain_router(now);
    }

    /// The IVR hands a caller over: pick the queue, join it, play hold music.
    pub(super) fn enqueue(
        &mut self,
        now: Instant,
        number: u64,
        queue: &str,
        mut prompts: Vec<String>,
    ) -> bool {
        let language = self.language_of(number);
        let Some(call) = self.calls.get(&number) else {
            return false;
        };
        let category = call.category.clone();
        let call_ref = call.call_ref.clone();
        let case_number = call.case_number.clone();
        let Some(q) = self.queueing.as_deref_mut() else {
            return false;
        };
        let ms = q.ms(now);
        let attrs = CallerAttrs {
            language: language.clone(),
            category: category.clone().unwrap_or_default(),
            district: String::new(),
            priority: 0,
        };
        let named = QueueId(queue.to_string());
        let queue_id = if q.router.rules().queue(&named).is_some() {
            Some(named)
        } else {
            q.router.rules().select_queue(&attrs)
        };
        let Some(queue_id) = queue_id else {
            return false;
        };
        q.queued.insert(
            number,
            QueuedCaller {
                category,
                attrs: attrs.clone(),
                queue: Some(queue_id.clone()),
                joined_ms: ms,
                ..QueuedCaller::default()
            },
        );
        let hold = q.setup.hold_prompts.clone();
        let joined = q.router.handle_input(
            ms,
            RouterInput::CallerJoin {
                call: CallId(call_ref),
                queue: Some(queue_id.clone()),
                attrs,
                priority: 0,
            },
        );
        if joined.is_err() {
            q.queued.remove(&number);
            return false;
        }
        let mut event = self.record_for(number, now, EventKind::HandOff);
        event.reason = Some("queued".into());
        event.detail = Some(match case_number {
            Some(case) => format!(
                "{{\"queue\":{},\"case_number\":{}}}",
                json_string(&queue_id.0),
                json_string(&case)
            ),
            None => format!("{{\"queue\":{}}}", json_string(&queue_id.0)),
        });
        self.emit(event);
        if let Some(w) = self
            .queueing
            .as_deref_mut()
            .and_then(|q| q.queued.get_mut(&number))
        {
            w.next_announce = Some(now);
        }
        self.drain_router(now);
        // Still waiting after the router's first decision: say where they stand.
        let still_waiting = self
            .queueing
            .as_deref()
            .and_then(|q| q.queued.get(&number))
            .is_some_and(|w| w.bridged.is_none());
        if still_waiting {
            if let Some(announcement) = self.announcement(now, number) {
                prompts.extend(announcement);
            }
        }
        prompts.extend(hold);
        self.play(now, number, prompts, language);
        true
    }

    /// A key from a caller in a queue (true when the queue took it). The queue's exit key takes
    /// the caller out (the router records `exited`) and back to the flow's main menu; other keys
    /// are ignored while they wait, and the IVR never sees them.
    pub(super) fn queued_key(&mut self, now: Instant, number: u64, digit: char) -> bool {
        let Some(call_ref) = self.calls.get(&number).map(|c| c.call_ref.clone()) else {
            return false;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return false;
        };
        let Some(waiting) = q.queued.get(&number) else {
            return false;
        };
        if waiting.bridged.is_some() {
            return true;
        }
        if self.callback_key(now, number, digit) {
            return true;
        }
        let Some(q) = self.queueing.as_deref_mut() else {
            return false;
        };
        let call = CallId(call_ref);
        let exit_key = match q.router.call_status(&call) {
            Some(crate::routing::core::CallStatus::Waiting { queue, .. }) => {
                q.router.rules().queue(&queue).and_then(|q| q.exit_key)
            }
            _ => None,
        };
        if exit_key != Some(digit) {
            return true;
        }
        let ms = q.ms(now);
        if q.router
            .handle_input(ms, RouterInput::CallerExit { call })
            .is_err()
        {
            return true;
        }
        q.queued.remove(&number);
        self.drain_router(now);
        self.next_play_id(number);
        let language = self.language_of(number);
        let flow = self.config.flow.clone();
        let menu = flow.as_ref().and_then(|f| f.step_index("main_menu"));
        match (flow, menu) {
            (Some(flow), Some(step)) => {
                let (session, actions) =
                    crate::ivr::IvrSession::start_at(&flow, step, &language, now);
                if let Some(call) = self.calls.get_mut(&number) {
                    call.ivr = Some(session);
                }
                self.apply_ivr(now, number, actions);
            }
            _ => self.record_end_and_bye(now, number, "queue_exit"),
        }
        true
    }

    /// A caller's prompt ended: while they wait, the hold music starts again.
    pub(super) fn hold_prompt_finished(&mut self, now: Instant, number: u64) -> bool {
        let Some(q) = self.queueing.as_deref() else {
            return false;
        };
        match q.queued.get(&number) {
            // In the callback dialogue the caller is listening for keys, not music.
            Some(waiting) if waiting.callback.is_some() => true,
            Some(waiting) if waiting.bridged.is_none() => {
                let hold = q.setup.hold_prompts.clone();
                let language = self.language_of(number);
                self.play(now, number, hold, language);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The caller's call is ending (their BYE, a timeout, or our hang-up): leave the queue,
    /// hang up the agent leg.
    pub(super) fn caller_gone(&mut self, now: Instant, number: u64) {
        let Some(call_ref) = self.calls.get(&number).map(|c| c.call_ref.clone()) else {
            return;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(waiting) = q.queued.remove(&number) else {
            return;
        };
        let ms = q.ms(now);
        let call = CallId(call_ref);
        let input = if waiting.bridged.is_some() {
            RouterInput::CallEnded { call }
        } else {
            RouterInput::CallerHangup { call }
        };
        let _ = q.router.handle_input(ms, input);
        let legs: Vec<u64> = q
            .legs
            .iter()
            .filter(|(_, l)| l.caller == Some(number))
            .map(|(&n, _)| n)
            .collect();
        for leg in legs {
            self.end_leg(now, leg);
        }
        self.drain_router(now);
    }

    /// Carries out what the router decided.
    pub(super) fn drain_router(&mut self, now: Instant) {
        loop {
            let Some(output) = self
                .queueing
                .as_deref_mut()
                .and_then(|q| q.router.poll_output())
            else {
                return;
            };
            match output {
                RouterOutput::Record(event) => {
                    if let Some(q) = self.queueing.as_deref_mut() {
                        q.estimator.observe(q.router.rules(), &event);
                    }
                    let call_ref = event
                        .call
                        .as_ref()
                        .map(|c| c.0.clone())
                        .or_else(|| event.agent.as_ref().map(|a| format!("agent:{}", a.0)))
                        .unwrap_or_default();
                    let kind = serde_json::to_value(event.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string));
                    self.emit(CallEvent {
                        at: now,
                        sip_call_id: String::new(),
                        call_ref,
                        kind: EventKind::Queue,
                        status_code: None,
                        reason: kind,
                        duration: event.hold_ms.map(Duration::from_millis),
                        caller: None,
                        detail: serde_json::to_string(&event).ok(),
                    });
                }
                RouterOutput::Offer { call, agent, .. } => self.offer(now, &call, &agent),
                RouterOutput::CancelOffer { call, agent } => {
                    let leg = self.queueing.as_deref().and_then(|q| {
                        q.legs
                            .iter()
                            .find(|(_, l)| {
                                l.agent == agent
                                    && l.call == call
                                    && matches!(l.kind, LegKind::Agent { .. })
                            })
                            .map(|(&n, _)| n)
                    });
                    if let Some(leg) = leg {
                        self.end_leg(now, leg);
                    }
                }
                RouterOutput::Connected { call, agent, .. } => {
                    self.connected(now, &call, &agent);
                }
                RouterOutput::MaxWaitExceeded { call, queue } => {
                    if !self.callback_left_queue(now, &call, Some(queue), false) {
                        self.nobody_can_take(now, &call);
                    }
                }
                RouterOutput::NoAgents { call, queue } => {
                    if !self.callback_left_queue(now, &call, Some(queue), true) {
                        self.nobody_can_take(now, &call);
                    }
                }
                RouterOutput::Removed { call, .. } => {
                    if !self.callback_left_queue(now, &call, None, false) {
                        self.nobody_can_take(now, &call);
                    }
                }
                RouterOutput::Overflowed { .. } | RouterOutput::AgentStateChanged { .. } => {}
            }
        }
    }

    /// Nobody can take a caller who is on the line: say so and hang up.
    fn nobody_can_take(&mut self, now: Instant, call: &CallId) {
        let Some(&number) = self.call_refs.get(&call.0) else {
            return;
        };
        if let Some(q) = self.queueing.as_deref_mut() {
            q.queued.remove(&number);
        }
        if let Some(c) = self.calls.get_mut(&number) {
            c.hangup_after_prompt = Some("no_agent");
        }
        let language = self.language_of(number);
        self.play(now, number, vec!["all_agents_busy".into()], language);
    }

    /// Rings the agent: an INVITE to the Contact they registered.
    fn offer(&mut self, now: Instant, call: &CallId, agent: &AgentId) {
        // A caller on the line, or a callback keeping a place for a resident who hung up (who
        // may still be hearing the goodbye: the leg must not end with that call).
        let is_callback = self
            .queueing
            .as_deref()
            .is_some_and(|q| q.callbacks.contains_key(&call.0));
        let caller = match is_callback {
            true => None,
            false => self.call_refs.get(&call.0).copied(),
        };
        let user = self.queueing.as_deref().and_then(|q| {
            q.setup
                .agents
                .iter()
                .find(|a| &a.id == agent)
                .and_then(|a| a.sip_user.clone())
        });
        let target = match (&user, self.queueing.as_deref()) {
            (Some(user), Some(q)) => q
                .registrar
                .bindings(user)
                .last()
                .map(|b| b.uri.clone())
                .zip(q.agent_peers.get(user).copied()),
            _ => None,
        };
        let reachable = match (caller.is_some() || is_callback, target, user) {
            (true, Some((contact, peer)), Some(user)) => {
                let to = format!("<sip:{user}@{}>", uri_host(self.local_ip(&peer)));
                let kind = LegKind::Agent { resident: None };
                self.invite_leg(now, peer, contact, to, call, caller, agent, kind)
            }
            _ => None,
        };
        if reachable.is_none() {
            // Unreachable agent or no RTP port: the router puts the agent aside and the caller
            // keeps their place.
            if let Some(q) = self.queueing.as_deref_mut() {
                let ms = q.ms(now);
                let _ = q.router.handle_input(
                    ms,
                    RouterInput::AgentRejected {
                        agent: agent.clone(),
                        call: call.clone(),
                    },
                );
            }
        }
    }

    /// Sends an INVITE (our SDP offer on a fresh RTP port) to `request_uri` through `peer` and
    /// keeps the leg; None when no RTP port is free.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invite_leg(
        &mut self,
        now: Instant,
        peer: Peer,
        request_uri: String,
        to: String,
        call: &CallId,
        caller: Option<u64>,
        agent: &AgentId,
        kind: LegKind,
    ) -> Option<u64> {
        let port = self.ports.take()?;
        let host = uri_host(self.local_ip(&peer));
        let local_tag = self.random_token();
        let sip_call_id = format!("{}@{host}", self.random_token());
        let branch = format!("z9hG4bK{}", self.random_token());
        let session_id = self.rng_u64();
        let offer = sdp::build_offer(
            &sdp::LocalMedia {
                address: self.local_ip(&peer),
                rtp_port: port,
                session_id,
                session_version: session_id,
                username: "civicline".into(),
            },
            self.config.telephone_event_pt,
        );
        let mut invite = SipMessage {
            start: StartLine::Request {
                method: "INVITE".into(),
                uri: request_uri.clone(),
                version: "SIP/2.0".into(),
            },
            headers: Vec::new(),
            body: offer.into_bytes(),
            problems: Vec::new(),
        };
        invite.push_header(
            "Via",
            format!(
                "SIP/2.0/{} {host}:{};branch={branch};rport",
                peer.transport,
                peer.local.port()
            ),
        );
        invite.push_header("Max-Forwards", "70");
        invite.push_header(
            "From",
            format!("<sip:311@{host}:{}>;tag={local_tag}", peer.local.port()),
        );
        invite.push_header("To", to);
        invite.push_header("Call-ID", sip_call_id.clone());
        invite.push_header("CSeq", "1 INVITE");
        invite.push_header("Contact", self.contact_for(&peer));
        invite.push_header("Allow", ALLOWED_METHODS);
        invite.push_header("User-Agent", self.config.server_name.clone());
        invite.push_header("Content-Type", "application/sdp");
        let tx = self.transactions.send_request(now, peer, invite.clone());
        let Some(q) = self.queueing.as_deref_mut() else {
            self.ports.put(port);
            return None;
        };
        let leg_number = q.next_leg;
        q.next_leg += 1;
        let role = match kind {
            LegKind::Agent { .. } => "agent",
            LegKind::Resident { .. } => "callback",
        };
        let media_ref = format!("{}-{role}-{leg_number}", call.0);
        q.leg_by_tx.insert(tx, leg_number);
        q.leg_by_dialog
            .insert(format!("{sip_call_id}|{local_tag}"), leg_number);
        q.leg_by_media.insert(media_ref.clone(), leg_number);
        q.legs.insert(
            leg_number,
            AgentLeg {
                call: call.clone(),
                caller,
                agent: agent.clone(),
                kind,
                ring_deadline: None,
                media_ref,
                sip_call_id,
                local_tag,
                remote_tag: None,
                invite,
                invite_tx: tx,
                peer,
                remote_target: request_uri,
                rtp_port: port,
                state: LegState::Inviting,
                cseq: 1,
                play_id: 0,
                via_sent_by: format!("SIP/2.0/{} {host}:{}", peer.transport, peer.local.port()),
            },
        );
        Some(leg_number)
    }

    fn rng_u64(&mut self) -> u64 {
        use rand::Rng;
        self.rng.gen::<u64>() >> 1
    }

    fn leg_of_tx(&self, tx: TxId) -> Option<u64> {
        self.queueing
            .as_deref()
            .and_then(|q| q.leg_by_tx.get(&tx).copied())
    }

    /// A response on an agent leg's INVITE (true when it was one).
    pub(super) fn leg_response(
        &mut self,
        now: Instant,
        tx: TxId,
        status: u16,
        response: &SipMessage,
    ) -> bool {
        let Some(leg_number) = self.leg_of_tx(tx) else {
            return false;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return true;
        };
        let ms = q.ms(now);
        let Some(leg) = q.legs.get_mut(&leg_number) else {
            return true;
        };
        let call = Some(leg.call.clone());
        let agent = leg.agent.clone();
        let kind = leg.kind;
        let resident = matches!(kind, LegKind::Resident { .. });
        match status {
            180 | 183 if resident => {}
            180 | 183 => {
                if let Some(call) = call {
                    let _ = q
                        .router
                        .handle_input(ms, RouterInput::AgentRinging { agent, call });
                }
            }
            200..=299 => {
                if leg.remote_tag.is_none() {
                    leg.remote_tag = response
                        .header("To")
                        .and_then(|v| NameAddr::parse(v).ok())
                        .and_then(|t| t.tag().map(str::to_string));
                    if let Some(target) = response
                        .header("Contact")
                        .and_then(|v| NameAddr::parse(v).ok())
                    {
                        leg.remote_target = target.uri;
                    }
                }
                // Every 2xx (retransmissions too) gets its ACK (RFC 3261 13.2.2.4).
                let state = leg.state;
                let ack_branch = format!("ack{leg_number}x{}", leg.sip_call_id.len());
                let ack = leg_request(leg, "ACK", 1, &ack_branch);
                let peer = leg.peer;
                self.outputs.push_back(Output::Transmit {
                    to: peer,
                    bytes: Bytes::from(ack.to_bytes()),
                });
                match state {
                    LegState::Inviting => {}
                    // Answered after we cancelled it: acknowledged above, now hang up.
                    LegState::Cancelling => {
                        self.send_leg_bye(now, leg_number);
                        self.forget_leg(leg_number);
                        return true;
                    }
                    _ => return true,
                }
                let negotiated = sdp::parse(&response.body)
                    .ok()
                    .and_then(|s| sdp::accept_answer(&s).ok());
                let Some(negotiated) = negotiated else {
                    self.send_leg_bye(now, leg_number);
                    if let LegKind::Resident { agent_leg } = kind {
                        self.forget_leg(leg_number);
                        self.resident_failed(now, agent_leg, "no usable audio in the answer");
                        return true;
                    }
                    if let (Some(q), Some(call)) = (self.queueing.as_deref_mut(), call) {
                        let _ = q
                            .router
                            .handle_input(ms, RouterInput::AgentRejected { agent, call });
                    }
                    self.drain_router(now);
                    return true;
                };
                let Some(q) = self.queueing.as_deref_mut() else {
                    return true;
                };
                let Some(leg) = q.legs.get_mut(&leg_number) else {
                    return true;
                };
                leg.state = LegState::Whisper;
                let open = MediaCommand::Open {
                    call_ref: leg.media_ref.clone(),
                    sip_call_id: leg.sip_call_id.clone(),
                    rtp_port: leg.rtp_port,
                    remote: negotiated.remote_rtp,
                    codec: negotiated.codec,
                    payload_type: negotiated.payload_type,
                    telephone_event_pt: negotiated.telephone_event_pt,
                };
                self.outputs.push_back(Output::Media(open));
                if resident {
                    self.resident_answered(now, leg_number);
                    return true;
                }
                if let (Some(q), Some(call)) = (self.queueing.as_deref_mut(), call) {
                    let _ = q
                        .router
                        .handle_input(ms, RouterInput::AgentAnswered { agent, call });
                }
            }
            300..=699 => {
                let cancelled = leg.state == LegState::Cancelling;
                self.forget_leg(leg_number);
                if let LegKind::Resident { agent_leg } = kind {
                    if !cancelled {
                        self.resident_failed(now, agent_leg, &format!("{status}"));
                    }
                    return true;
                }
                if !cancelled {
                    if let (Some(q), Some(call)) = (self.queueing.as_deref_mut(), call) {
                        let _ = q
                            .router
                            .handle_input(ms, RouterInput::AgentRejected { agent, call });
                    }
                }
            }
            _ => {}
        }
        self.drain_router(now);
        true
    }

    /// An agent leg's INVITE got no answer at all (timer B).
    pub(super) fn leg_timeout(&mut self, now: Instant, tx: TxId) -> bool {
        let Some(leg_number) = self.leg_of_tx(tx) else {
            return false;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return true;
        };
        let Some(leg) = q.legs.get(&leg_number) else {
            return true;
        };
        let (call, agent, kind) = (leg.call.clone(), leg.agent.clone(), leg.kind);
        self.forget_leg(leg_number);
        if let LegKind::Resident { agent_leg } = kind {
            self.resident_failed(now, agent_leg, "no answer from the gateway");
            return true;
        }
        if let Some(q) = self.queueing.as_deref_mut() {
            let ms = q.ms(now);
            let _ = q
                .router
                .handle_input(ms, RouterInput::AgentRejected { agent, call });
        }
        self.drain_router(now);
        true
    }

    /// The router connected caller and agent: whisper the category to the agent, then bridge.
    fn connected(&mut self, now: Instant, call: &CallId, agent: &AgentId) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some((&leg_number, leg)) = q.legs.iter().find(|(_, l)| {
            &l.call == call
                && &l.agent == agent
                && l.state == LegState::Whisper
                && matches!(l.kind, LegKind::Agent { .. })
        }) else {
            return;
        };
        let Some(number) = leg.caller else {
            self.callback_connected(now, leg_number);
            return;
        };
        let category = q.queued.get(&number).and_then(|w| w.category.clone());
        let leg = q.legs.get_mut(&leg_number).expect("found above");
        leg.play_id += 1;
        let play_id = leg.play_id;
        let media_ref = leg.media_ref.clone();
        if let Some(w) = q.queued.get_mut(&number) {
            w.bridged = Some(leg_number);
        }
        // The caller's hold music stops now; the agent hears the whisper first.
        self.next_play_id(number);
        let caller_ref = call.0.clone();
        self.outputs
            .push_back(Output::Media(MediaCommand::StopPlayback {
                call_ref: caller_ref,
            }));
        let whisper = match category {
            Some(c) => vec![format!("category_{c}")],
            None => Vec::new(),
        };
        if whisper.is_empty() {
            self.bridge(now, leg_number);
        } else {
            self.outputs.push_back(Output::Media(MediaCommand::Play {
                call_ref: media_ref,
                prompts: whisper,
                language: "en".into(),
                play_id,
            }));
        }
    }

    pub(super) fn bridge(&mut self, _now: Instant, leg_number: u64) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(leg) = q.legs.get_mut(&leg_number) else {
            return;
        };
        leg.state = LegState::Bridged;
        let (agent_ref, caller, kind) = (leg.media_ref.clone(), leg.caller, leg.kind);
        let other_ref = match kind {
            LegKind::Agent {
                resident: Some(resident),
            } => q.legs.get_mut(&resident).map(|r| {
                r.state = LegState::Bridged;
                r.media_ref.clone()
            }),
            _ => caller.and_then(|c| self.calls.get(&c).map(|c| c.call_ref.clone())),
        };
        if let Some(caller_ref) = other_ref {
            self.outputs.push_back(Output::Media(MediaCommand::Bridge {
                a: caller_ref,
                b: agent_ref,
            }));
        }
    }

    /// Media reports for agent legs (true when `media_ref` is one).
    pub(super) fn leg_media(&mut self, now: Instant, media_ref: &str, event: &MediaEvent) -> bool {
        let Some(leg_number) = self
            .queueing
            .as_deref()
            .and_then(|q| q.leg_by_media.get(media_ref).copied())
        else {
            return false;
        };
        let callback_leg = self.queueing.as_deref().is_some_and(|q| {
            q.legs
                .get(&leg_number)
                .is_some_and(|l| l.caller.is_none() || matches!(l.kind, LegKind::Resident { .. }))
        });
        if callback_leg {
            self.callback_leg_media(now, leg_number, event);
            return true;
        }
        match event {
            MediaEvent::PromptFinished { play_id } => {
                let whisper_done = self.queueing.as_deref().is_some_and(|q| {
                    q.legs
                        .get(&leg_number)
                        .is_some_and(|l| l.state == LegState::Whisper && l.play_id == *play_id)
                });
                if whisper_done {
                    self.bridge(now, leg_number);
                }
            }
            MediaEvent::RtpTimeout => self.agent_hung_up(now, leg_number, "agent_rtp_timeout"),
            _ => {}
        }
        true
    }

    /// BYE from an agent's phone (true when it was for an agent leg).
    pub(super) fn leg_bye(
        &mut self,
        now: Instant,
        tx: TxId,
        peer: Peer,
        request: &SipMessage,
    ) -> bool {
        let to_tag = request
            .header("To")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|t| t.tag().map(str::to_string))
            .unwrap_or_default();
        let key = format!("{}|{to_tag}", request.header("Call-ID").unwrap_or_default());
        let Some(leg_number) = self
            .queueing
            .as_deref()
            .and_then(|q| q.leg_by_dialog.get(&key).copied())
        else {
            return false;
        };
        self.respond(now, tx, peer, request, 200, Some(&to_tag), Vec::new(), None);
        if let Some(leg) = self
            .queueing
            .as_deref_mut()
            .and_then(|q| q.legs.get_mut(&leg_number))
        {
            leg.state = LegState::Ending; // no BYE back
            if let LegKind::Resident { agent_leg } = leg.kind {
                self.forget_leg(leg_number);
                self.resident_hung_up(now, agent_leg);
                return true;
            }
        }
        self.agent_hung_up(now, leg_number, "agent_hangup");
        true
    }

    /// The agent side ended: the caller is hung up too and the router hears the call ended.
    pub(super) fn agent_hung_up(&mut self, now: Instant, leg_number: u64, reason: &str) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(leg) = q.legs.get(&leg_number) else {
            return;
        };
        let (caller, call, kind) = (leg.caller, leg.call.clone(), leg.kind);
        let already_ending = leg.state == LegState::Ending;
        if !already_ending {
            self.send_leg_bye(now, leg_number);
        }
        self.forget_leg(leg_number);
        if let LegKind::Agent {
            resident: Some(resident),
        } = kind
        {
            self.end_leg(now, resident);
        }
        if let Some(q) = self.queueing.as_deref_mut() {
            if let Some(caller) = caller {
                q.queued.remove(&caller);
            }
            let ms = q.ms(now);
            let _ = q
                .router
                .handle_input(ms, RouterInput::CallEnded { call: call.clone() });
        }
        match caller {
            Some(caller) => {
                if self
                    .calls
                    .get(&caller)
                    .is_some_and(|c| c.state == CallState::Confirmed)
                {
                    self.record_end_and_bye(now, caller, reason);
                }
            }
            None => self.callback_agent_gone(now, &call, reason),
        }
        self.drain_router(now);
    }

    /// Ends an agent leg whatever its state: CANCEL while it rings, BYE once answered.
    pub(super) fn end_leg(&mut self, now: Instant, leg_number: u64) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(leg) = q.legs.get_mut(&leg_number) else {
            return;
        };
        match leg.state {
            LegState::Inviting => {
                leg.state = LegState::Cancelling;
                let cancel = leg_cancel(leg);
                let peer = leg.peer;
                self.transactions.send_request(now, peer, cancel);
            }
            LegState::Whisper | LegState::Bridged => {
                self.send_leg_bye(now, leg_number);
                self.forget_leg(leg_number);
            }
            LegState::Cancelling | LegState::Ending => {}
        }
    }

    pub(super) fn send_leg_bye(&mut self, now: Instant, leg_number: u64) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(leg) = q.legs.get_mut(&leg_number) else {
            return;
        };
        leg.state = LegState::Ending;
        leg.cseq += 1;
        let branch = format!("bye{leg_number}x{}", leg.cseq);
        let bye = leg_request(leg, "BYE", leg.cseq, &branch);
        let peer = leg.peer;
        self.transactions.send_request(now, peer, bye);
    }

    pub(super) fn forget_leg(&mut self, leg_number: u64) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(leg) = q.legs.remove(&leg_number) else {
            return;
        };
        q.leg_by_tx.remove(&leg.invite_tx);
        q.leg_by_dialog
            .remove(&format!("{}|{}", leg.sip_call_id, leg.local_tag));
        q.leg_by_media.remove(&leg.media_ref);
        self.ports.put(leg.rtp_port);
        self.outputs.push_back(Output::Media(MediaCommand::Close {
            call_ref: leg.media_ref,
            rtp_port: leg.rtp_port,
        }));
    }
}

/// A request inside an agent leg's dialog (ACK for the 2xx, BYE), on a new branch.
fn leg_request(leg: &AgentLeg, method: &str, cseq: u32, branch: &str) -> SipMessage {
    let mut request = SipMessage {
        start: StartLine::Request {
            method: method.into(),
            uri: leg.remote_target.clone(),
            version: "SIP/2.0".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
        problems: Vec::new(),
    };
    request.push_header(
        "Via",
        format!("{};branch=z9hG4bK{branch};rport", leg.via_sent_by),
    );
    request.push_header("Max-Forwards", "70");
    request.push_header("From", leg.invite.header("From").unwrap_or_default());
    let to = leg.invite.header("To").unwrap_or_default();
    request.push_header(
        "To",
        match &leg.remote_tag {
            Some(tag) => format!("{to};tag={tag}"),
            None => to.to_string(),
        },
    );
    request.push_header("Call-ID", leg.sip_call_id.clone());
    request.push_header("CSeq", format!("{cseq} {method}"));
    request
}

/// CANCEL for a ringing agent leg: same branch, Call-ID, From, To and CSeq number as the INVITE.
fn leg_cancel(leg: &AgentLeg) -> SipMessage {
    let mut cancel = SipMessage {
        start: StartLine::Request {
            method: "CANCEL".into(),
            uri: leg.invite.request_uri().unwrap_or_default().to_string(),
            version: "SIP/2.0".into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
        problems: Vec::new(),
    };
    for name in ["Via", "Max-Forwards", "From", "To", "Call-ID"] {
        if let Some(value) = leg.invite.header(name) {
            cancel.push_header(name, value.to_string());
        }
    }
    cancel.push_header("CSeq", "1 CANCEL");
    cancel
}

/// Read access for the live view (`engine::live`), which must not reach into this file's state.
impl Queueing {
    /// The router's clock at `now` (ms since the engine first saw the clock); None before that.
    /// The router's clock at `now` (see `ms`), without starting it.
    pub(super) fn router_ms(&self, now: Instant) -> Option<u64> {
        self.epoch.map(|epoch| {
            ROUTER_CLOCK_BASE_MS + now.saturating_duration_since(epoch).as_millis() as u64
        })
    }

    pub(super) fn setup(&self) -> &RoutingSetup {
        &self.setup
    }

    /// The estimator's remaining wait for a caller now in a queue (None if it has no view of
    /// them yet).
    pub(super) fn estimate_for(&self, call: &str, now_ms: u64) -> Option<f64> {
        self.estimator
            .estimate_s(&self.router, &self.setup.agents, call, now_ms)
    }
}
