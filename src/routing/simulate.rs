//! Rule simulation: replays the recorded arrivals, handle times and patience of a period
//! through the real routing core (`core::Router`) under proposed rules and agents, and sets
//! the predicted figures beside the actual ones. Pure: no clock, no I/O, deterministic for a
//! given seed. The CLI (`civicline simulate`) and the API read the queue log, load the rules
//! dir and call [`simulate`]; this module owns everything between the log and the
//! [`SimulationReport`].
//!
//! Both sides are computed by `metrics::compute` over `[from_ms, to_ms)` with the same
//! `ReportOptions`, so "service level" etc. mean exactly what the reports mean.
//!
//! What is taken from history (see [`simulate`] for the loop):
//! - Calls: each stay (first `joined` of a call id, up to its final outcome) is one arrival at
//!   its first join time, with the IVR's attributes and priority recorded on `joined`. Under
//!   the proposed rules the call is placed by the queues' conditions, except that a call whose
//!   recorded queue exists in the proposed rules without a condition joins it by name (such a
//!   queue can only have been reached by name); a log line without attributes joins its
//!   recorded queue by name. Anything else that no condition matches is *unplaced*: counted in
//!   the report and not replayed.
//! - Handle time: the call's own talk time (`ended`) and, when the agent ended after-call work
//!   early, its wrap-up (`wrapup_done`); calls that were never talked to in history borrow the
//!   talk and wrap-up of an answered call of the same recorded queue, picked by the seed.
//! - Wrap-up: the router's timer (the proposed queue's `wrapup_s`) runs as in production; a
//!   recorded wrap-up is replayed as the agent's `WrapUpDone` after the recorded length, so
//!   it never outlasts the proposed timer. With `actual_rules` given, wrap-ups that lasted the
//!   whole recorded queue's timer are left to the proposed timer (so a longer `wrapup_s` is
//!   seen); without it every recorded length counts as the agent's own.
//! - Ringing: failed offers belong to the call: when a call's offers rang out or were
//!   rejected n times in history, its first n offers in the replay fail the same way (a
//!   ring-out by the router's own ring timer, a reject after the recorded time), and the agent
//!   who got it presses ready again after as long as the history's agent did (the mean when
//!   they did something else next). An offer the agent withdrew while it rang (a break, a
//!   logout) counts too: the replay's agent answers it no sooner than it had rung. The offer that answered rings as long as it did in
//!   history; a call never answered takes the ring time of an answered call drawn by the
//!   seed, longer than the ring it hung up on if it hung up while ringing. Every ring is
//!   capped just below the proposed ring timeout, so only recorded failures ring out.
//! - Patience: a caller who abandoned (or pressed the exit key) after waiting `p` since first
//!   joining does so again at `p` (`CallerHangup`, or `CallerExit`). A caller who did not
//!   (answered, max wait, no agents, removed, still waiting when the log ends) only says their
//!   patience exceeded their observed wait `w`; it is drawn from the Kaplan-Meier estimate of
//!   patience conditioned on exceeding `w` (per recorded queue when it has at least
//!   [`MIN_STRATUM_ABANDONS`] abandons, else over all calls). Infinite patience would predict no
//!   extra abandonment when waits grow; the unconditioned distribution would make callers who
//!   did wait hang up earlier than they did. Beyond the longest recorded abandon the estimate
//!   knows nothing, so such callers never abandon.
//! - Agents: only what agents did themselves, from `agent_state` lines: login (offline ->
//!   not_ready("login")), logout (-> offline), ready after a not-ready, not-ready with a reason
//!   of their own, at the times the log shows them applied. What the router causes (reserved,
//!   ringing, talking, wrap_up, ready after wrap-up or a withdrawn offer, not_ready
//!   "ring-no-answer"/"rejected" and the ready that ended those: see Ringing) is left to the
//!   replay. Skills come from the proposed agents; history agents not in the proposed set are
//!   left out; proposed agents absent from the history are "extra" and work per
//!   [`ExtraAgentShift`].
//! - The period: the replay starts `warmup_ms` before `from_ms` (a warm-up, as discrete-event
//!   simulations do) so queues and agents are as busy at `from_ms` as the traffic makes them.
//!   Calls that joined before the warm-up are not replayed; agents logged in when it starts
//!   start logged in, ready or in their own not-ready state (an agent busy with such a call
//!   starts ready). Calls joining in the warm-up are replayed but, as in the reports, only
//!   their events inside `[from_ms, to_ms)` count. The replay stops at `to_ms`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::core::{
    AgentState, CallId, QueueEvent, QueueEventKind, Router, RouterError, RouterInput, RouterOutput,
};
use super::metrics::{compute, QueueStats, ReportOptions};
use super::rules::{AgentId, AgentProfile, CallerAttrs, QueueId, Rules, SkillSet};

/// The not-ready reasons `core` gives on its own (see `Router::login`, `ring_timeout` and
/// `AgentRejected`); a test checks them against the core.
const LOGIN_REASON: &str = "login";
const RING_NO_ANSWER_REASON: &str = "ring-no-answer";
const REJECTED_REASON: &str = "rejected";

/// A recorded queue needs this many abandons for its own patience estimate.
pub const MIN_STRATUM_ABANDONS: usize = 20;

/// When the proposed agents that history does not know work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraAgentShift {
    /// The logins, breaks and logouts of the history agent who was logged in longest in the
    /// replayed period (a copy of a real shift, breaks included). With no history agent:
    /// `WholePeriod`.
    #[default]
    LongestShift,
    /// Logged in and ready from the start of the replay to `to_ms`.
    WholePeriod,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulationOptions {
    /// Seeds the draws of censored patience and borrowed handle times.
    pub seed: u64,
    /// How long before `from_ms` the replay starts (see the module doc).
    pub warmup_ms: u64,
    pub extra_agents: ExtraAgentShift,
    /// Talk time for a call answered in the replay when history has no answered call to
    /// borrow one from.
    pub default_talk_ms: u64,
    /// How many progress calls a whole replay makes, at most (plus the final one).
    pub progress_steps: usize,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        SimulationOptions {
            seed: 311,
            warmup_ms: 60 * 60 * 1000,
            extra_agents: ExtraAgentShift::LongestShift,
            default_talk_ms: 240_000,
            progress_steps: 100,
        }
    }
}

/// What to replay and under which rules.
#[derive(Clone, Copy, Debug)]
pub struct SimulationInput<'a> {
    /// The queue log, sorted by `at_ms` (ties keep log order); it should reach back to
    /// `from_ms - warmup_ms` and as far past `to_ms` as is handy (later `ended` and
    /// `wrapup_done` lines give the talk times of calls answered near the end).
    pub events: &'a [QueueEvent],
    pub from_ms: u64,
    pub to_ms: u64,
    /// The proposed rules and agents.
    pub rules: &'a Rules,
    pub agents: &'a [AgentProfile],
    /// The rules the history ran under, when known: used for service-level thresholds of
    /// queues the proposal drops and to tell timer-ended wrap-ups (module doc).
    pub actual_rules: Option<&'a Rules>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    #[error("empty period: from {from_ms} is not before to {to_ms}")]
    EmptyPeriod { from_ms: u64, to_ms: u64 },
}

/// The figures of one queue (or of all) over the period, as `metrics` defines them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Calls entering the queue, overflow arrivals included.
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    /// answered within T / (answered + abandoned after T).
    pub service_level: Option<f64>,
    /// Average speed of answer, seconds.
    pub asa_s: Option<f64>,
    /// abandoned / offered.
    pub abandonment_rate: Option<f64>,
    /// Longest time a call spent in the queue before leaving it by any way, seconds.
    pub longest_wait_s: Option<f64>,
}

impl Figures {
    fn from_stats(s: &QueueStats) -> Figures {
        Figures {
            offered: s.offered,
            answered: s.answered,
            abandoned: s.abandoned,
            service_level: s.service_level(),
            asa_s: s.asa_ms().map(|ms| ms / 1000.0),
            abandonment_rate: s.abandonment_rate(),
            longest_wait_s: (s.holds > 0).then(|| s.longest_wait_ms as f64 / 1000.0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueComparison {
    pub queue: QueueId,
    /// The service-level threshold T both sides use, seconds.
    pub service_level_s: f64,
    pub actual: Figures,
    pub predicted: Figures,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TotalComparison {
    /// Sums over the queues (a call that overflowed is offered to each queue it entered);
    /// each queue's calls against its own threshold.
    pub actual: Figures,
    pub predicted: Figures,
}

/// What the history held and how much of it the replay had to fill in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistorySummary {
    /// Stays (first join to final outcome) joining in `[from_ms, to_ms)`.
    pub calls: u64,
    /// Stays joining in the warm-up before `from_ms`, replayed but counted only by their
    /// events in the period.
    pub warmup_calls: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub exited: u64,
    /// Max wait, no agents, removed.
    pub left_by_router: u64,
    /// Still waiting or ringing when the log ends.
    pub open: u64,
    /// Agents seen in the log, and of those the ones the proposal keeps.
    pub agents: u64,
    pub agents_kept: u64,
    /// Proposed agents the history does not know.
    pub extra_agents: Vec<AgentId>,
    /// Ring-no-answer and reject lines in the period (replayed as failures of the same
    /// calls' offers).
    pub ring_no_answer_or_rejected: u64,
    /// Censored patience drawn from the estimate, and of those how many came out unlimited.
    pub patience_drawn: u64,
    pub patience_unlimited: u64,
    /// Calls whose talk time was borrowed (never talked to in history, or still talking when
    /// the log ends).
    pub talk_borrowed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimulationReport {
    pub from_ms: u64,
    pub to_ms: u64,
    pub seed: u64,
    /// The proposed rules' queues in file order, then queues only history has.
    pub per_queue: Vec<QueueComparison>,
    pub total: TotalComparison,
    /// Calls of the period no proposed queue's condition takes.
    pub unplaced_calls: u64,
    /// Calls of the period that joined a queue in the replay.
    pub replayed_calls: u64,
    /// Inputs the router refused in the replay (an agent step that no longer fits, say);
    /// 0 when history and replay agree on who is logged in.
    pub refused_inputs: u64,
    pub history: HistorySummary,
}

// ---- history -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Open,
    Answered(u64),
    Abandoned(u64),
    Exited(u64),
    /// Max wait, no agents or removed: censored patience.
    Left(u64),
}

/// One stay of a call in the queues, as history tells it.
#[derive(Clone, Debug)]
struct Stay {
    /// Unique in the replay: the call id, suffixed when a call id joins again later.
    replay_id: CallId,
    joined_ms: u64,
    queue: QueueId,
    attrs: Option<CallerAttrs>,
    priority: i32,
    outcome: Outcome,
    /// (agent, last offer time) of the offers made for this stay.
    offers: Vec<(AgentId, u64)>,
    answered_queue: Option<QueueId>,
    ring_ms: Option<u64>,
    /// (when, ring so far) of the last withdrawn offer; when the caller left at that same
    /// instant they left while it rang, and the agent would have taken longer than that.
    last_cancel: Option<(u64, u64)>,
    ring_floor: Option<u64>,
    /// The offers of this stay that failed, in order.
    faults: Vec<Fault>,
    talk_ms: Option<u64>,
    wrapup_ms: Option<u64>,
}

/// An offer that failed in history; the replay fails the call's n-th offer the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fault {
    kind: FaultKind,
    /// How long the agent stayed not ready before pressing ready again; None when they did
    /// something else next (logout, a break of their own).
    recover_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// Rang out: the router's ring timeout.
    RingOut,
    /// Rejected after this long.
    Reject(u64),
    /// Still ringing after this long when the agent went not ready or logged out: the
    /// replay's agent answers no sooner.
    Withdrawn(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Login,
    Logout,
    Ready,
    NotReady(String),
}

/// What an agent last did themselves: the state they are in when the router does not have
/// them busy.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Own {
    Offline,
    Ready,
    NotReady(String),
}

#[derive(Clone, Debug)]
struct AgentLine {
    /// At the start of the replay.
    initial: Own,
    /// (at, index of the log line, step) inside the replay.
    steps: Vec<(u64, usize, Step)>,
}

struct History {
    stays: Vec<Stay>,
    /// Per agent, in id order.
    agents: BTreeMap<AgentId, AgentLine>,
    /// Index of each stay's `joined` line, for ties with agent steps.
    stay_order: Vec<usize>,
    last_at: u64,
    ring_no_answer_or_rejected: u64,
}

fn is_router_reason(reason: &str) -> bool {
    reason == RING_NO_ANSWER_REASON || reason == REJECTED_REASON
}

/// Reads stays and agents' own steps from the sorted log; stays joining in `[start, to)`.
fn extract(sorted: &[&QueueEvent], start: u64, from: u64, to: u64) -> History {
    let mut stays: Vec<Stay> = Vec::new();
    let mut stay_order = Vec::new();
    // The stay a call's `ended`/`wrapup_done` belong to, and whether it still takes joins as
    // overflow arrivals.
    let mut last_stay: HashMap<CallId, (usize, bool)> = HashMap::new();
    let mut stays_of: HashMap<CallId, u32> = HashMap::new();
    // Stays joining outside the replay are tracked (to tell overflow arrivals) but dropped.
    let mut keep: Vec<bool> = Vec::new();
    let mut prev_state: HashMap<AgentId, AgentState> = HashMap::new();
    let mut agents: BTreeMap<AgentId, AgentLine> = BTreeMap::new();
    let mut rna = 0;
    // Agent -> (stay, fault, when) of a failed offer whose not-ready is still on.
    let mut pending: HashMap<AgentId, (usize, usize, u64)> = HashMap::new();
    // Agent -> (stay, ring so far) of an offer just withdrawn; the agent's next state says
    // whether they withdrew it (not ready, logout) or the call did (ready again).
    let mut withdrawn: HashMap<AgentId, (usize, u64)> = HashMap::new();

    for (i, e) in sorted.iter().enumerate() {
        match e.kind {
            QueueEventKind::AgentState => {
                let (Some(agent), Some(state)) = (&e.agent, &e.state) else {
                    continue;
                };
                let prev = prev_state
                    .insert(agent.clone(), state.clone())
                    .unwrap_or(AgentState::Offline);
                if let Some((s, rang)) = withdrawn.remove(agent) {
                    if matches!(state, AgentState::NotReady(_) | AgentState::Offline) {
                        stays[s].faults.push(Fault {
                            kind: FaultKind::Withdrawn(rang),
                            recover_ms: None,
                        });
                    }
                }
                let still_down = matches!(state, AgentState::NotReady(r) if is_router_reason(r));
                if !still_down {
                    if let Some((s, f, t)) = pending.remove(agent) {
                        if *state == AgentState::Ready {
                            stays[s].faults[f].recover_ms = Some(e.at_ms - t);
                        }
                    }
                }
                let step = match (&prev, state) {
                    (AgentState::Offline, AgentState::Offline) => None,
                    (_, AgentState::Offline) => Some(Step::Logout),
                    (AgentState::Offline, _) => Some(Step::Login),
                    (AgentState::NotReady(r), AgentState::Ready) if !is_router_reason(r) => {
                        Some(Step::Ready)
                    }
                    (_, AgentState::NotReady(r)) if !is_router_reason(r) => {
                        Some(Step::NotReady(r.clone()))
                    }
                    _ => None,
                };
                let line = agents.entry(agent.clone()).or_insert_with(|| AgentLine {
                    initial: Own::Offline,
                    steps: Vec::new(),
                });
                let Some(step) = step else { continue };
                if e.at_ms < start {
                    line.initial = match step {
                        Step::Login => Own::NotReady(LOGIN_REASON.into()),
                        Step::Logout => Own::Offline,
                        Step::Ready => Own::Ready,
                        Step::NotReady(r) => Own::NotReady(r),
                    };
                } else if e.at_ms < to {
                    line.steps.push((e.at_ms, i, step));
                }
            }
            QueueEventKind::Joined => {
                let Some(call) = &e.call else { continue };
                if last_stay.get(call).is_some_and(|&(_, open)| open) {
                    continue; // an overflow arrival or a re-placement: the same stay
                }
                let n = stays_of.entry(call.clone()).or_insert(0);
                let replay_id = if *n == 0 {
                    call.clone()
                } else {
                    CallId(format!("{}~{}", call.0, n))
                };
                *n += 1;
                last_stay.insert(call.clone(), (stays.len(), true));
                keep.push(e.at_ms >= start && e.at_ms < to);
                stay_order.push(i);
                stays.push(Stay {
                    replay_id,
                    joined_ms: e.at_ms,
                    queue: e.queue.clone().unwrap_or_else(|| QueueId(String::new())),
                    attrs: e.attrs.clone(),
                    priority: e.priority.unwrap_or(0),
                    outcome: Outcome::Open,
                    offers: Vec::new(),
                    answered_queue: None,
                    ring_ms: None,
                    last_cancel: None,
                    ring_floor: None,
                    faults: Vec::new(),
                    talk_ms: None,
                    wrapup_ms: None,
                });
            }
            kind => {
                let Some(&(s, open)) = e.call.as_ref().and_then(|c| last_stay.get(c)) else {
                    continue;
                };
                if matches!(
                    kind,
                    QueueEventKind::RingNoAnswer | QueueEventKind::Rejected
                ) && e.at_ms >= from
                    && e.at_ms < to
                {
                    rna += 1;
                }
                let stay = &mut stays[s];
                let outcome = match kind {
                    QueueEventKind::Offered => {
                        if let Some(agent) = &e.agent {
                            stay.offers.retain(|(a, _)| a != agent);
                            stay.offers.push((agent.clone(), e.at_ms));
                        }
                        None
                    }
                    QueueEventKind::Answered if open => {
                        stay.answered_queue = e.queue.clone();
                        stay.ring_ms = stay
                            .offers
                            .iter()
                            .find(|(a, _)| Some(a) == e.agent.as_ref())
                            .map(|(_, t)| e.at_ms.saturating_sub(*t));
                        Some(Outcome::Answered(e.at_ms))
                    }
                    QueueEventKind::OfferCancelled
                    | QueueEventKind::RingNoAnswer
                    | QueueEventKind::Rejected => {
                        if let Some(k) = stay
                            .offers
                            .iter()
                            .position(|(a, _)| Some(a) == e.agent.as_ref())
                        {
                            let (agent, offered) = stay.offers.swap_remove(k);
                            let rang = e.at_ms.saturating_sub(offered);
                            if kind != QueueEventKind::OfferCancelled {
                                stay.faults.push(Fault {
                                    kind: if kind == QueueEventKind::Rejected {
                                        FaultKind::Reject(rang)
                                    } else {
                                        FaultKind::RingOut
                                    },
                                    recover_ms: None,
                                });
                                pending.insert(agent, (s, stay.faults.len() - 1, e.at_ms));
                            } else {
                                withdrawn.insert(agent, (s, rang));
                                stay.last_cancel = match stay.last_cancel {
                                    Some((t, r)) if t == e.at_ms => Some((t, r.max(rang))),
                                    _ => Some((e.at_ms, rang)),
                                };
                            }
                        }
                        None
                    }
                    QueueEventKind::Abandoned | QueueEventKind::Exited if open => {
                        stay.ring_floor = stay
                            .last_cancel
                            .filter(|(t, _)| *t == e.at_ms)
                            .map(|(_, r)| r);
                        Some(if kind == QueueEventKind::Abandoned {
                            Outcome::Abandoned(e.at_ms)
                        } else {
                            Outcome::Exited(e.at_ms)
                        })
                    }
                    QueueEventKind::MaxWait
                    | QueueEventKind::NoAgents
                    | QueueEventKind::Removed
                        if open =>
                    {
                        Some(Outcome::Left(e.at_ms))
                    }
                    QueueEventKind::Ended => {
                        stay.talk_ms = stay.talk_ms.or(e.talk_ms);
                        None
                    }
                    QueueEventKind::WrapupDone => {
                        stay.wrapup_ms = stay.wrapup_ms.or(e.wrapup_ms);
                        None
                    }
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    stay.outcome = outcome;
                    if let Some(c) = &e.call {
                        last_stay.insert(c.clone(), (s, false));
                    }
                }
            }
        }
    }

    let last_at = sorted.last().map_or(start, |e| e.at_ms);
    let mut kept = Vec::new();
    let mut kept_order = Vec::new();
    for ((stay, k), order) in stays.into_iter().zip(keep).zip(stay_order) {
        if k {
            kept.push(stay);
            kept_order.push(order);
        }
    }
    History {
        stays: kept,
        agents,
        stay_order: kept_order,
        last_at,
        ring_no_answer_or_rejected: rna,
    }
}

// ---- patience ----------------------------------------------------------------------------

/// A Kaplan-Meier estimate of patience: the survival just after each abandon time.
#[derive(Clone, Debug, Default)]
struct PatienceEstimate {
    times: Vec<u64>,
    survival: Vec<f64>,
    abandons: usize,
}

impl PatienceEstimate {
    /// From (observed wait, abandoned?) pairs; censored waits count at risk at their own time.
    fn new(mut obs: Vec<(u64, bool)>) -> PatienceEstimate {
        obs.sort_unstable();
        let mut est = PatienceEstimate::default();
        let mut at_risk = obs.len();
        let mut s = 1.0;
        let mut i = 0;
        while i < obs.len() {
            let t = obs[i].0;
            let j = i + obs[i..].partition_point(|o| o.0 == t);
            let d = obs[i..j].iter().filter(|o| o.1).count();
            if d > 0 {
                s *= 1.0 - d as f64 / at_risk as f64;
                est.times.push(t);
                est.survival.push(s);
                est.abandons += d;
            }
            at_risk -= j - i;
            i = j;
        }
        est
    }

    fn survival_at(&self, t: u64) -> f64 {
        match self.times.partition_point(|&x| x <= t) {
            0 => 1.0,
            k => self.survival[k - 1],
        }
    }

    /// Patience drawn given it exceeds `waited`, with `u` uniform in (0, 1]; None: unlimited.
    fn draw_beyond(&self, waited: u64, u: f64) -> Option<u64> {
        let s_w = self.survival_at(waited);
        if s_w <= 0.0 {
            return None;
        }
        let first = self.times.partition_point(|&x| x <= waited);
        let target = u * s_w;
        let k = first + self.survival[first..].partition_point(|&s| s > target);
        self.times.get(k).copied()
    }
}

/// SplitMix64: a tiny seeded generator, so the module needs no RNG crate and each call's
/// draws depend only on the seed and the call's place in the log.
struct SplitMix(u64);

impl SplitMix {
    fn for_call(seed: u64, index: usize) -> SplitMix {
        let mut g = SplitMix(seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        g.next_u64();
        g
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

// ---- replay ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    Hangup,
    Exit,
}

/// A call as the replay plays it.
struct ReplayCall {
    id: CallId,
    at: u64,
    /// `Some(q)`: join q by name; None: by the proposed conditions.
    by_name: Option<QueueId>,
    attrs: CallerAttrs,
    priority: i32,
    /// Absolute time the caller gives up, and how.
    gives_up: Option<(u64, Leave)>,
    ring_ms: u64,
    faults: Vec<Fault>,
    next_fault: usize,
    talk_ms: u64,
    /// The agent ends wrap-up after this long (unless the router's timer does first).
    wrapup_ms: Option<u64>,
    in_period: bool,
    placeable: bool,
    phase: CallPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallPhase {
    NotYet,
    Waiting,
    Talking,
    Done,
}

#[derive(Clone, Debug)]
enum Ev {
    Agent(AgentId, Step),
    Arrive(usize),
    GiveUp(usize),
    Answer {
        agent: AgentId,
        call: usize,
        token: u64,
    },
    Reject {
        agent: AgentId,
        call: usize,
        token: u64,
    },
    /// The agent presses ready after a failed offer.
    Recover(AgentId),
    End(usize),
    WrapDone {
        agent: AgentId,
        call: usize,
    },
}

struct Replay<'a> {
    router: Router,
    rules: &'a Rules,
    calls: Vec<ReplayCall>,
    index: HashMap<CallId, usize>,
    skills: HashMap<AgentId, SkillSet>,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    /// The live offer of each agent (a token), so a late answer for a withdrawn offer is
    /// dropped even if the same call is offered to the same agent again.
    offers: HashMap<AgentId, (usize, u64)>,
    next_token: u64,
    /// The call each agent is wrapping up.
    wrapping: HashMap<AgentId, usize>,
    /// How long an agent whose offer was made to fail stays not ready after it.
    recover: HashMap<AgentId, u64>,
    mean_recover_ms: u64,
    log: Vec<QueueEvent>,
    refused: u64,
    unplaced: u64,
    replayed: u64,
}

impl Replay<'_> {
    fn schedule(&mut self, at: u64, ev: Ev) {
        self.queue.insert((at, self.seq), ev);
        self.seq += 1;
    }

    fn input(&mut self, now: u64, input: RouterInput) -> Result<(), RouterError> {
        let result = self.router.handle_input(now, input);
        self.drain(now);
        result
    }

    fn refuse_on_err(&mut self, r: Result<(), RouterError>) {
        if r.is_err() {
            self.refused += 1;
        }
    }

    fn dispatch(&mut self, now: u64, ev: Ev) {
        match ev {
            Ev::Agent(agent, step) => {
                let input = match step {
                    Step::Login => RouterInput::AgentLogin {
                        skills: self.skills.get(&agent).cloned().unwrap_or_default(),
                        agent,
                    },
                    Step::Logout => RouterInput::AgentLogout { agent },
                    Step::Ready => RouterInput::AgentReady { agent },
                    Step::NotReady(reason) => RouterInput::AgentNotReady { agent, reason },
                };
                let r = self.input(now, input);
                self.refuse_on_err(r);
            }
            Ev::Arrive(c) => {
                let call = &self.calls[c];
                if !call.placeable {
                    self.unplaced += u64::from(call.in_period);
                    self.calls[c].phase = CallPhase::Done;
                    return;
                }
                let input = RouterInput::CallerJoin {
                    call: call.id.clone(),
                    queue: call.by_name.clone(),
                    attrs: call.attrs.clone(),
                    priority: call.priority,
                };
                let in_period = call.in_period;
                // Waiting before the join's outputs are handled: an agent may be offered
                // (and answer at once) within them.
                self.calls[c].phase = CallPhase::Waiting;
                match self.input(now, input) {
                    Ok(()) => {
                        self.replayed += u64::from(in_period);
                        if let Some((at, _)) = self.calls[c].gives_up {
                            self.schedule(at.max(now), Ev::GiveUp(c));
                        }
                    }
                    Err(RouterError::NoMatchingQueue(_)) => {
                        self.unplaced += u64::from(in_period);
                        self.calls[c].phase = CallPhase::Done;
                    }
                    Err(_) => {
                        self.refused += 1;
                        self.calls[c].phase = CallPhase::Done;
                    }
                }
            }
            Ev::GiveUp(c) => {
                if self.calls[c].phase != CallPhase::Waiting {
                    return;
                }
                let call = self.calls[c].id.clone();
                let input = match self.calls[c].gives_up {
                    Some((_, Leave::Exit)) => RouterInput::CallerExit { call },
                    _ => RouterInput::CallerHangup { call },
                };
                let r = self.input(now, input);
                self.refuse_on_err(r);
            }
            Ev::Answer { agent, call, token } => {
                if self.offers.get(&agent) != Some(&(call, token)) {
                    return; // withdrawn (caller left, another agent answered, ...)
                }
                let input = RouterInput::AgentAnswered {
                    agent,
                    call: self.calls[call].id.clone(),
                };
                let r = self.input(now, input);
                self.refuse_on_err(r);
            }
            Ev::Reject { agent, call, token } => {
                if self.offers.get(&agent) != Some(&(call, token)) {
                    return;
                }
                let input = RouterInput::AgentRejected {
                    agent,
                    call: self.calls[call].id.clone(),
                };
                let r = self.input(now, input);
                self.refuse_on_err(r);
            }
            Ev::Recover(agent) => {
                let down = matches!(
                    self.router.agent_state(&agent),
                    Some(AgentState::NotReady(r)) if is_router_reason(r)
                );
                if down {
                    let r = self.input(now, RouterInput::AgentReady { agent });
                    self.refuse_on_err(r);
                }
            }
            Ev::End(c) => {
                if self.calls[c].phase != CallPhase::Talking {
                    return;
                }
                let call = self.calls[c].id.clone();
                let r = self.input(now, RouterInput::CallEnded { call });
                self.refuse_on_err(r);
            }
            Ev::WrapDone { agent, call } => {
                if self.wrapping.get(&agent) != Some(&call) {
                    return; // the router's timer, a logout or a ready ended it first
                }
                let r = self.input(now, RouterInput::WrapUpDone { agent });
                self.refuse_on_err(r);
            }
        }
    }

    /// Carries out the router's outputs as the runtime and the people on the phone would.
    fn drain(&mut self, now: u64) {
        while let Some(out) = self.router.poll_output() {
            match out {
                RouterOutput::Offer { call, agent, queue } => {
                    let Some(&c) = self.index.get(&call) else {
                        continue;
                    };
                    let token = self.next_token;
                    self.next_token += 1;
                    self.offers.insert(agent.clone(), (c, token));
                    // Answer before the proposed ring timeout: replay agents always answer.
                    let limit = self
                        .rules
                        .queue(&queue)
                        .map_or(u64::MAX, |q| q.ring_timeout_s.saturating_mul(1000))
                        .saturating_sub(1);
                    let call = &mut self.calls[c];
                    if let Some(&fault) = call.faults.get(call.next_fault) {
                        // This offer fails as the call's offer did in history.
                        call.next_fault += 1;
                        let ring = call.ring_ms;
                        let recover = fault.recover_ms.unwrap_or(self.mean_recover_ms);
                        match fault.kind {
                            // The router's own ring timer.
                            FaultKind::RingOut => {
                                self.recover.insert(agent, recover);
                            }
                            FaultKind::Reject(after) => {
                                self.recover.insert(agent.clone(), recover);
                                let ev = Ev::Reject {
                                    agent,
                                    call: c,
                                    token,
                                };
                                self.schedule(now + after.min(limit), ev);
                            }
                            FaultKind::Withdrawn(rang) => {
                                let ev = Ev::Answer {
                                    agent,
                                    call: c,
                                    token,
                                };
                                self.schedule(now + ring.max(rang + 1).min(limit), ev);
                            }
                        }
                        continue;
                    }
                    let ring = call.ring_ms.min(limit);
                    self.schedule(
                        now + ring,
                        Ev::Answer {
                            agent,
                            call: c,
                            token,
                        },
                    );
                }
                RouterOutput::AgentStateChanged {
                    agent,
                    state: AgentState::NotReady(reason),
                } if is_router_reason(&reason) => {
                    if let Some(d) = self.recover.remove(&agent) {
                        self.schedule(now + d, Ev::Recover(agent));
                    }
                }
                RouterOutput::CancelOffer { agent, .. } => {
                    self.offers.remove(&agent);
                }
                RouterOutput::Connected { call, agent, .. } => {
                    self.offers.remove(&agent);
                    if let Some(&c) = self.index.get(&call) {
                        self.calls[c].phase = CallPhase::Talking;
                        let talk = self.calls[c].talk_ms;
                        self.schedule(now + talk, Ev::End(c));
                    }
                }
                RouterOutput::Record(e) => {
                    self.observe(now, &e);
                    self.log.push(e);
                }
                RouterOutput::Overflowed { .. }
                | RouterOutput::MaxWaitExceeded { .. }
                | RouterOutput::NoAgents { .. }
                | RouterOutput::Removed { .. }
                | RouterOutput::AgentStateChanged { .. } => {}
            }
        }
    }

    fn observe(&mut self, now: u64, e: &QueueEvent) {
        let c = e.call.as_ref().and_then(|id| self.index.get(id).copied());
        match e.kind {
            QueueEventKind::Ended => {
                if let Some(c) = c {
                    self.calls[c].phase = CallPhase::Done;
                    if let Some(agent) = &e.agent {
                        self.wrapping.insert(agent.clone(), c);
                        if let Some(w) = self.calls[c].wrapup_ms {
                            let agent = agent.clone();
                            self.schedule(now + w, Ev::WrapDone { agent, call: c });
                        }
                    }
                }
            }
            QueueEventKind::WrapupDone => {
                if let Some(agent) = &e.agent {
                    self.wrapping.remove(agent);
                }
            }
            QueueEventKind::Abandoned
            | QueueEventKind::Exited
            | QueueEventKind::MaxWait
            | QueueEventKind::NoAgents
            | QueueEventKind::Removed => {
                if let Some(c) = c {
                    self.calls[c].phase = CallPhase::Done;
                }
            }
            _ => {}
        }
    }
}

/// Where a stay joins under the proposed rules (module doc): Some(Some(q)) by name,
/// Some(None) by conditions, None unplaced.
fn placement(stay: &Stay, rules: &Rules) -> Option<Option<QueueId>> {
    match (rules.queue(&stay.queue), &stay.attrs) {
        (Some(q), _) if q.condition.is_none() => Some(Some(stay.queue.clone())),
        (_, Some(_)) => Some(None),
        (Some(_), None) => Some(Some(stay.queue.clone())),
        (None, None) => None,
    }
}

/// Logged-in time of an agent line over `[start, to)`.
fn logged_in_ms(line: &AgentLine, start: u64, to: u64) -> u64 {
    let mut total = 0;
    let mut since = (line.initial != Own::Offline).then_some(start);
    for (at, _, step) in &line.steps {
        match step {
            Step::Login => since = since.or(Some(*at)),
            Step::Logout => {
                if let Some(s) = since.take() {
                    total += at - s;
                }
            }
            _ => {}
        }
    }
    total + since.map_or(0, |s| to - s)
}

/// The replay's own queue log and what it had to do to produce it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayOutcome {
    /// Every `Record` the router emitted, from the start of the warm-up up to `to_ms`.
    pub log: Vec<QueueEvent>,
    pub unplaced_calls: u64,
    pub replayed_calls: u64,
    pub refused_inputs: u64,
    pub history: HistorySummary,
}

/// Replays `input.events` under the proposed rules and agents (see the module doc for every
/// modelling choice) and returns the replay's queue log. `progress` gets (arrivals replayed,
/// arrivals to replay) now and then and once at the end.
pub fn replay(
    input: &SimulationInput<'_>,
    options: &SimulationOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ReplayOutcome, SimulateError> {
    let (from, to) = (input.from_ms, input.to_ms);
    if from >= to {
        return Err(SimulateError::EmptyPeriod {
            from_ms: from,
            to_ms: to,
        });
    }
    let start = from.saturating_sub(options.warmup_ms);
    let mut sorted: Vec<&QueueEvent> = input.events.iter().collect();
    sorted.sort_by_key(|e| e.at_ms);
    let history = extract(&sorted, start, from, to);
    let mut summary = HistorySummary {
        ring_no_answer_or_rejected: history.ring_no_answer_or_rejected,
        agents: history.agents.len() as u64,
        ..HistorySummary::default()
    };

    // Patience estimates and talk-time donors, per recorded queue and overall.
    let mut obs: BTreeMap<&QueueId, Vec<(u64, bool)>> = BTreeMap::new();
    let mut donors: BTreeMap<&QueueId, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    let mut rings: Vec<u64> = Vec::new();
    let wrap_of = |stay: &Stay| -> Option<u64> {
        let w = stay.wrapup_ms?;
        let timer = input
            .actual_rules
            .and_then(|r| r.queue(stay.answered_queue.as_ref()?))
            .map(|q| q.wrapup_s.saturating_mul(1000));
        match timer {
            Some(t) if w >= t => None,
            _ => Some(w),
        }
    };
    for stay in &history.stays {
        let (end, abandoned) = match stay.outcome {
            Outcome::Abandoned(t) | Outcome::Exited(t) => (t, true),
            Outcome::Answered(t) | Outcome::Left(t) => (t, false),
            Outcome::Open => (history.last_at.max(stay.joined_ms), false),
        };
        obs.entry(&stay.queue)
            .or_default()
            .push((end - stay.joined_ms, abandoned));
        if let Some(talk) = stay.talk_ms {
            donors
                .entry(&stay.queue)
                .or_default()
                .push((talk, wrap_of(stay)));
        }
        rings.extend(stay.ring_ms);
    }
    let all_obs: Vec<(u64, bool)> = obs.values().flatten().copied().collect();
    let all_donors: Vec<(u64, Option<u64>)> = donors.values().flatten().copied().collect();
    let overall = PatienceEstimate::new(all_obs);
    let per_queue: BTreeMap<&QueueId, PatienceEstimate> = obs
        .into_iter()
        .map(|(q, o)| (q, PatienceEstimate::new(o)))
        .filter(|(_, e)| e.abandons >= MIN_STRATUM_ABANDONS)
        .collect();
    rings.sort_unstable();
    let recoveries: Vec<u64> = history
        .stays
        .iter()
        .flat_map(|s| s.faults.iter().filter_map(|f| f.recover_ms))
        .collect();
    let mean_recover_ms = match recoveries.len() {
        0 => 0,
        n => recoveries.iter().sum::<u64>() / n as u64,
    };

    let mut calls = Vec::with_capacity(history.stays.len());
    for (i, stay) in history.stays.iter().enumerate() {
        let mut rng = SplitMix::for_call(options.seed, i);
        let in_period = stay.joined_ms >= from;
        if in_period {
            summary.calls += 1;
        } else {
            summary.warmup_calls += 1;
        }
        let count = |n: &mut u64| *n += u64::from(in_period);
        let waited = |t: u64| t - stay.joined_ms;
        let gives_up = match stay.outcome {
            Outcome::Abandoned(t) => {
                count(&mut summary.abandoned);
                Some((t, Leave::Hangup))
            }
            Outcome::Exited(t) => {
                count(&mut summary.exited);
                Some((t, Leave::Exit))
            }
            other => {
                let seen = match other {
                    Outcome::Answered(t) => {
                        count(&mut summary.answered);
                        t
                    }
                    Outcome::Left(t) => {
                        count(&mut summary.left_by_router);
                        t
                    }
                    _ => {
                        count(&mut summary.open);
                        history.last_at.max(stay.joined_ms)
                    }
                };
                let est = per_queue.get(&stay.queue).unwrap_or(&overall);
                let p = est.draw_beyond(waited(seen), rng.unit());
                count(&mut summary.patience_drawn);
                if p.is_none() {
                    count(&mut summary.patience_unlimited);
                }
                p.map(|p| (stay.joined_ms + p, Leave::Hangup))
            }
        };
        let (talk_ms, wrapup_ms) = match stay.talk_ms {
            Some(t) => (t, wrap_of(stay)),
            None => {
                count(&mut summary.talk_borrowed);
                let pool = donors
                    .get(&stay.queue)
                    .filter(|d| !d.is_empty())
                    .unwrap_or(&all_donors);
                if pool.is_empty() {
                    (options.default_talk_ms, None)
                } else {
                    pool[rng.below(pool.len())]
                }
            }
        };
        // Never answered: a ring time of an answered call, longer than the ring the caller
        // hung up on if they did.
        let ring_ms = stay.ring_ms.unwrap_or_else(|| {
            let floor = stay.ring_floor.unwrap_or(0);
            let longer = &rings[rings.partition_point(|&r| r <= floor)..];
            if longer.is_empty() {
                floor + 1
            } else {
                longer[rng.below(longer.len())]
            }
        });
        let place = placement(stay, input.rules);
        calls.push(ReplayCall {
            id: stay.replay_id.clone(),
            at: stay.joined_ms,
            placeable: place.is_some(),
            by_name: place.flatten(),
            attrs: stay.attrs.clone().unwrap_or_default(),
            priority: stay.priority,
            gives_up,
            ring_ms,
            faults: stay.faults.clone(),
            next_fault: 0,
            talk_ms,
            wrapup_ms,
            in_period,
            phase: CallPhase::NotYet,
        });
    }

    // Agents: kept history agents with their own steps, then the extra ones.
    let profiles: BTreeMap<&AgentId, &AgentProfile> =
        input.agents.iter().map(|p| (&p.id, p)).collect();
    let mut initial: Vec<(AgentId, Own)> = Vec::new();
    let mut steps: Vec<(u64, usize, Ev)> = Vec::new();
    for (id, line) in &history.agents {
        if !profiles.contains_key(id) {
            continue;
        }
        summary.agents_kept += 1;
        initial.push((id.clone(), line.initial.clone()));
        for (at, order, step) in &line.steps {
            steps.push((*at, *order, Ev::Agent(id.clone(), step.clone())));
        }
    }
    let template = match options.extra_agents {
        ExtraAgentShift::LongestShift => history
            .agents
            .values()
            .map(|l| (logged_in_ms(l, start, to), l))
            .filter(|(ms, _)| *ms > 0)
            // The first of the longest, in id order.
            .fold(
                None,
                |best: Option<(u64, &AgentLine)>, (ms, l)| match best {
                    Some((b, _)) if b >= ms => best,
                    _ => Some((ms, l)),
                },
            )
            .map(|(_, l)| l),
        ExtraAgentShift::WholePeriod => None,
    };
    for p in input.agents {
        if history.agents.contains_key(&p.id) {
            continue;
        }
        summary.extra_agents.push(p.id.clone());
        match template {
            Some(line) => {
                initial.push((p.id.clone(), line.initial.clone()));
                for (at, order, step) in &line.steps {
                    steps.push((*at, *order, Ev::Agent(p.id.clone(), step.clone())));
                }
            }
            None => initial.push((p.id.clone(), Own::Ready)),
        }
    }

    let mut replay = Replay {
        router: Router::new(input.rules.clone()),
        rules: input.rules,
        index: calls
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect(),
        calls,
        skills: input
            .agents
            .iter()
            .map(|p| (p.id.clone(), p.skills.clone()))
            .collect(),
        queue: BTreeMap::new(),
        seq: 0,
        offers: HashMap::new(),
        next_token: 0,
        wrapping: HashMap::new(),
        recover: HashMap::new(),
        mean_recover_ms,
        log: Vec::new(),
        refused: 0,
        unplaced: 0,
        replayed: 0,
    };

    // Who is logged in when the replay starts.
    for (agent, own) in initial {
        let mut first = |step| replay.schedule(start, Ev::Agent(agent.clone(), step));
        match own {
            Own::Offline => {}
            Own::Ready => {
                first(Step::Login);
                first(Step::Ready);
            }
            Own::NotReady(r) => {
                first(Step::Login);
                if r != LOGIN_REASON {
                    first(Step::NotReady(r));
                }
            }
        }
    }
    // Arrivals and agent steps in log order, so same-millisecond ties keep history's order.
    for (c, order) in history.stay_order.iter().enumerate() {
        steps.push((replay.calls[c].at, *order, Ev::Arrive(c)));
    }
    steps.sort_by_key(|(at, order, _)| (*at, *order));
    for (at, _, ev) in steps {
        replay.schedule(at, ev);
    }

    let total = replay.calls.len();
    let every = (total / options.progress_steps.max(1)).max(1);
    let mut done = 0;
    let mut now = start;
    loop {
        let next_ev = replay.queue.first_key_value().map(|(k, _)| k.0);
        let next_timer = replay.router.poll_timeout();
        // A due router timer goes first: `handle_input` would fire it first anyway.
        let (at, timer) = match (next_ev, next_timer) {
            (None, None) => break,
            (Some(e), Some(t)) if t < e => (t, true),
            (Some(e), _) => (e, false),
            (None, Some(t)) => (t, true),
        };
        if at >= to {
            break;
        }
        now = now.max(at);
        if timer {
            replay.router.handle_timeout(now);
            replay.drain(now);
            continue;
        }
        let (_, ev) = replay.queue.pop_first().expect("seen above");
        let arrival = matches!(ev, Ev::Arrive(_));
        replay.dispatch(now, ev);
        if arrival {
            done += 1;
            if done % every == 0 {
                progress(done, total);
            }
        }
    }
    progress(total, total);
    Ok(ReplayOutcome {
        log: replay.log,
        unplaced_calls: replay.unplaced,
        replayed_calls: replay.replayed,
        refused_inputs: replay.refused,
        history: summary,
    })
}

/// Replays the period (as [`replay`]) and compares: both sides computed by
/// `metrics::compute` over `[from_ms, to_ms)` with the same options (the proposed rules'
/// service-level thresholds, and the actual rules' for queues the proposal drops).
pub fn simulate(
    input: &SimulationInput<'_>,
    options: &SimulationOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SimulationReport, SimulateError> {
    let (from, to) = (input.from_ms, input.to_ms);
    let outcome = replay(input, options, progress)?;
    let mut report_options = input
        .actual_rules
        .map_or_else(ReportOptions::default, ReportOptions::from_rules);
    report_options
        .service_level_ms
        .extend(ReportOptions::from_rules(input.rules).service_level_ms);
    let actual = compute(input.events, from, to, &report_options);
    let predicted = compute(&outcome.log, from, to, &report_options);

    let mut order: Vec<QueueId> = input.rules.queues().iter().map(|q| q.id.clone()).collect();
    let mut others: Vec<QueueId> = actual
        .queues
        .iter()
        .chain(&predicted.queues)
        .map(|q| q.queue.clone())
        .filter(|q| !order.contains(q))
        .collect();
    others.sort();
    others.dedup();
    order.extend(others);
    let stats_of = |report: &super::metrics::Report, q: &QueueId| {
        report
            .queues
            .iter()
            .find(|t| &t.queue == q)
            .map(|t| t.stats.clone())
    };
    let (mut sum_actual, mut sum_predicted) = (QueueStats::default(), QueueStats::default());
    let mut per_queue = Vec::new();
    for q in order {
        let a = stats_of(&actual, &q);
        let p = stats_of(&predicted, &q);
        if a.is_none() && p.is_none() {
            continue;
        }
        let (a, p) = (a.unwrap_or_default(), p.unwrap_or_default());
        merge(&mut sum_actual, &a);
        merge(&mut sum_predicted, &p);
        let threshold = report_options
            .service_level_ms
            .get(&q)
            .copied()
            .unwrap_or(report_options.default_service_level_ms);
        per_queue.push(QueueComparison {
            queue: q,
            service_level_s: threshold as f64 / 1000.0,
            actual: Figures::from_stats(&a),
            predicted: Figures::from_stats(&p),
        });
    }
    Ok(SimulationReport {
        from_ms: from,
        to_ms: to,
        seed: options.seed,
        per_queue,
        total: TotalComparison {
            actual: Figures::from_stats(&sum_actual),
            predicted: Figures::from_stats(&sum_predicted),
        },
        unplaced_calls: outcome.unplaced_calls,
        replayed_calls: outcome.replayed_calls,
        refused_inputs: outcome.refused_inputs,
        history: outcome.history,
    })
}

/// Adds the counts `Figures` reads.
fn merge(into: &mut QueueStats, s: &QueueStats) {
    into.offered += s.offered;
    into.answered += s.answered;
    into.abandoned += s.abandoned;
    into.answered_within_sl += s.answered_within_sl;
    into.abandoned_after_sl += s.abandoned_after_sl;
    into.answered_hold_ms += s.answered_hold_ms;
    into.holds += s.holds;
    into.hold_ms += s.hold_ms;
    into.longest_wait_ms = into.longest_wait_ms.max(s.longest_wait_ms);
}

// ---- rendering ---------------------------------------------------------------------------

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}s"))
}

fn pair(actual: String, predicted: String) -> String {
    format!("{actual} / {predicted}")
}

/// The comparison as a plain-text table: actual / predicted in each cell.
pub fn render_table(report: &SimulationReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>13} {:>17} {:>15} {:>17} {:>15}",
        "queue", "offered", "service level", "ASA", "abandoned", "longest wait"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>13} {:>17} {:>15} {:>17} {:>15}",
        "", "act / pred", "act / pred", "act / pred", "act / pred", "act / pred"
    );
    let mut line = |name: &str, a: &Figures, p: &Figures| {
        let _ = writeln!(
            out,
            "{:<16} {:>13} {:>17} {:>15} {:>17} {:>15}",
            name,
            pair(a.offered.to_string(), p.offered.to_string()),
            pair(pct(a.service_level), pct(p.service_level)),
            pair(secs(a.asa_s), secs(p.asa_s)),
            pair(pct(a.abandonment_rate), pct(p.abandonment_rate)),
            pair(secs(a.longest_wait_s), secs(p.longest_wait_s)),
        );
    };
    for q in &report.per_queue {
        line(&q.queue.0, &q.actual, &q.predicted);
    }
    line("all queues", &report.total.actual, &report.total.predicted);
    let h = &report.history;
    let _ = writeln!(
        out,
        "\n{} calls replayed, {} unplaced (no proposed queue takes them), {} warm-up calls; \
         {} refused inputs.",
        report.replayed_calls, report.unplaced_calls, h.warmup_calls, report.refused_inputs
    );
    let _ = writeln!(
        out,
        "Patience drawn for {} callers ({} unlimited); talk time borrowed for {}; {} \
         ring-no-answers/rejects in history.",
        h.patience_drawn, h.patience_unlimited, h.talk_borrowed, h.ring_no_answer_or_rejected
    );
    if !h.extra_agents.is_empty() {
        let names: Vec<&str> = h.extra_agents.iter().map(|a| a.0.as_str()).collect();
        let _ = writeln!(out, "Extra agents: {}.", names.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::path::Path;

    /// A quarter-hour boundary in November 2023.
    const T0: u64 = 1_699_999_200_000;
    const HOUR: u64 = 3_600_000;

    const RULES: &str = r#"
skills = ["english", "spanish", "water"]

[[queue]]
id = "water"
priority = 10
requires = { english = 2, water = 2 }
condition = 'language != "es" && category in ["water_leak", "no_water", "water_bill"]'
wrapup_s = 30
service_level_s = 60

[[queue.escalation]]
after_s = 120
drop_skills = ["water"]

[[queue]]
id = "spanish"
priority = 10
requires = { spanish = 2 }
condition = 'language == "es"'
exit_key = "0"
wrapup_s = 30
service_level_s = 60

[[queue]]
id = "general"
requires = { english = 1 }
condition = 'true'
max_wait_s = 1200
wrapup_s = 20
service_level_s = 60
"#;

    fn rules(text: &str) -> Rules {
        Rules::parse(text, Path::new("queues.toml")).expect("test rules")
    }

    fn skills(list: &[(&str, u8)]) -> SkillSet {
        list.iter().map(|(s, p)| (s.to_string(), *p)).collect()
    }

    fn profile(id: &str, skills: SkillSet) -> AgentProfile {
        AgentProfile {
            id: AgentId(id.into()),
            name: id.into(),
            sip_user: None,
            skills,
            languages: Vec::new(),
            ha1_md5: None,
            ha1_sha256: None,
        }
    }

    /// One agent's day in the seeded load (seconds after T0).
    struct Plan {
        profile: AgentProfile,
        login_s: u64,
        logout_s: u64,
        break_s: u64,
    }

    /// `n` cross-trained agents: two thirds work the whole day, a third come in an hour late;
    /// each takes a 15-minute break.
    fn staff(n: usize, hours: u64) -> Vec<Plan> {
        (0..n)
            .map(|i| {
                let sk = match i % 5 {
                    0 => skills(&[("english", 3), ("water", 3)]),
                    1 => skills(&[("english", 2), ("spanish", 4)]),
                    2 => skills(&[("english", 3)]),
                    3 => skills(&[("english", 3), ("water", 2)]),
                    _ => skills(&[("english", 4), ("spanish", 2)]),
                };
                let login_s = if i % 3 == 2 { 3600 } else { 0 };
                Plan {
                    profile: profile(&format!("agent{i:02}"), sk),
                    login_s,
                    logout_s: hours * 3600 - 600 + (i as u64 % 4) * 300,
                    break_s: login_s + 2 * 3600 + (i as u64 * 7 % 60) * 60,
                }
            })
            .collect()
    }

    fn profiles(plans: &[Plan]) -> Vec<AgentProfile> {
        plans.iter().map(|p| p.profile.clone()).collect()
    }

    const CATEGORIES: [&str; 6] = [
        "water_leak",
        "no_water",
        "water_bill",
        "pothole",
        "missed_pickup",
        "noise",
    ];

    #[derive(Debug)]
    enum G {
        Login(usize),
        Ready(usize),
        Break(usize),
        Back(usize),
        Logout(usize),
        Arrive(usize),
        GiveUp(CallId, bool),
        Answer(AgentId, CallId, u64),
        Reject(AgentId, CallId, u64),
        End(CallId),
        WrapDone(AgentId, u64),
        ReadyAgain(AgentId),
    }

    fn exp(rng: &mut SmallRng, mean: f64) -> f64 {
        -mean * (1.0 - rng.gen::<f64>()).ln()
    }

    fn lognormal(rng: &mut SmallRng, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (1.0 - rng.gen::<f64>(), rng.gen::<f64>());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }

    /// Drives a Router the way the runtime and the people on the phones would, for `hours` of
    /// Poisson arrivals (`per_hour`), and returns its queue log: agents log in, go ready, take
    /// a break, log out; they answer after 2-8 s, sometimes let it ring out (2%) or reject
    /// (1%) and go ready again 20 s later; talk is lognormal (median 200 s); a third end
    /// wrap-up early; callers give up after an exponential patience (mean 150 s), Spanish
    /// callers a tenth of the time with the exit key; 4% are urgent (priority 5).
    fn seeded_history(
        seed: u64,
        rules: &Rules,
        plans: &[Plan],
        hours: u64,
        per_hour: f64,
        faults: bool,
    ) -> Vec<QueueEvent> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut router = Router::new(rules.clone());
        let mut queue: BTreeMap<(u64, u64), G> = BTreeMap::new();
        let mut seq = 0u64;
        let mut push = |q: &mut BTreeMap<(u64, u64), G>, at: u64, g: G| {
            q.insert((at, seq), g);
            seq += 1;
        };
        for (i, p) in plans.iter().enumerate() {
            push(&mut queue, T0 + p.login_s * 1000, G::Login(i));
            push(&mut queue, T0 + p.break_s * 1000, G::Break(i));
            push(&mut queue, T0 + (p.break_s + 900) * 1000, G::Back(i));
            push(&mut queue, T0 + p.logout_s * 1000, G::Logout(i));
        }
        let mut arrivals = Vec::new();
        let mut t = T0 as f64;
        loop {
            t += exp(&mut rng, 3_600_000.0 / per_hour);
            if t >= (T0 + hours * HOUR) as f64 {
                break;
            }
            let language = if rng.gen_bool(0.15) { "es" } else { "en" };
            let category = CATEGORIES[rng.gen_range(0..CATEGORIES.len())];
            let priority = if rng.gen_bool(0.04) { 5 } else { 0 };
            let attrs = CallerAttrs {
                language: language.into(),
                category: category.into(),
                district: format!("d{}", rng.gen_range(1..=7)),
                priority,
            };
            let patience = exp(&mut rng, 150_000.0) as u64;
            arrivals.push((t as u64, attrs, patience));
        }
        for (n, (at, _, _)) in arrivals.iter().enumerate() {
            push(&mut queue, *at, G::Arrive(n));
        }
        let mut offers: HashMap<AgentId, u64> = HashMap::new();
        let mut wraps: HashMap<AgentId, u64> = HashMap::new();
        let mut token = 0u64;
        let mut log = Vec::new();
        let mut now = T0;
        loop {
            let next = queue.first_key_value().map(|(k, _)| k.0);
            let timer = router.poll_timeout();
            let (at, is_timer) = match (next, timer) {
                (None, None) => break,
                (Some(e), Some(t)) if t < e => (t, true),
                (Some(e), _) => (e, false),
                (None, Some(t)) => (t, true),
            };
            now = now.max(at);
            if is_timer {
                router.handle_timeout(now);
            } else {
                let (_, g) = queue.pop_first().unwrap();
                let agent_of = |i: usize| plans[i].profile.id.clone();
                // Inputs may be refused when they no longer apply (a late answer): ignore,
                // as the runtime does.
                let _ = match g {
                    G::Login(i) => {
                        push(&mut queue, now + 5_000, G::Ready(i));
                        router.handle_input(
                            now,
                            RouterInput::AgentLogin {
                                agent: agent_of(i),
                                skills: plans[i].profile.skills.clone(),
                            },
                        )
                    }
                    G::Ready(i) => {
                        router.handle_input(now, RouterInput::AgentReady { agent: agent_of(i) })
                    }
                    G::Break(i) => router.handle_input(
                        now,
                        RouterInput::AgentNotReady {
                            agent: agent_of(i),
                            reason: "break".into(),
                        },
                    ),
                    G::Back(i) => {
                        router.handle_input(now, RouterInput::AgentReady { agent: agent_of(i) })
                    }
                    G::Logout(i) => {
                        router.handle_input(now, RouterInput::AgentLogout { agent: agent_of(i) })
                    }
                    G::Arrive(n) => {
                        let (_, attrs, patience) = arrivals[n].clone();
                        let call = CallId(format!("c{n}"));
                        let spanish = attrs.language == "es";
                        push(
                            &mut queue,
                            now + patience,
                            G::GiveUp(call.clone(), spanish && rng.gen_bool(0.1)),
                        );
                        let priority = attrs.priority as i32;
                        router.handle_input(
                            now,
                            RouterInput::CallerJoin {
                                call,
                                queue: None,
                                attrs,
                                priority,
                            },
                        )
                    }
                    G::GiveUp(call, exit) => match router.call_status(&call) {
                        Some(super::super::core::CallStatus::Talking { .. }) | None => Ok(()),
                        Some(_) if exit => {
                            router.handle_input(now, RouterInput::CallerExit { call })
                        }
                        Some(_) => router.handle_input(now, RouterInput::CallerHangup { call }),
                    },
                    G::Answer(agent, call, tok) if offers.get(&agent) == Some(&tok) => {
                        router.handle_input(now, RouterInput::AgentAnswered { agent, call })
                    }
                    G::Reject(agent, call, tok) if offers.get(&agent) == Some(&tok) => {
                        router.handle_input(now, RouterInput::AgentRejected { agent, call })
                    }
                    G::Answer(..) | G::Reject(..) => Ok(()),
                    G::End(call) => router.handle_input(now, RouterInput::CallEnded { call }),
                    G::WrapDone(agent, w) => {
                        if wraps.get(&agent) == Some(&w)
                            && router.agent_state(&agent) == Some(&AgentState::WrapUp)
                        {
                            router.handle_input(now, RouterInput::WrapUpDone { agent })
                        } else {
                            Ok(())
                        }
                    }
                    G::ReadyAgain(agent) => match router.agent_state(&agent) {
                        Some(AgentState::NotReady(r)) if is_router_reason(r) => {
                            router.handle_input(now, RouterInput::AgentReady { agent })
                        }
                        _ => Ok(()),
                    },
                };
            }
            while let Some(out) = router.poll_output() {
                match out {
                    RouterOutput::Offer { call, agent, .. } => {
                        token += 1;
                        offers.insert(agent.clone(), token);
                        let r: f64 = rng.gen();
                        if faults && r < 0.02 {
                            // Rings out: the router's ring timer handles it.
                        } else if faults && r < 0.03 {
                            push(&mut queue, now + 3_000, G::Reject(agent, call, token));
                        } else {
                            let ring = rng.gen_range(2_000..8_000);
                            push(&mut queue, now + ring, G::Answer(agent, call, token));
                        }
                    }
                    RouterOutput::CancelOffer { agent, .. } => {
                        offers.remove(&agent);
                    }
                    RouterOutput::Connected { call, agent, .. } => {
                        offers.remove(&agent);
                        let talk = lognormal(&mut rng, 200_000.0, 0.6) as u64;
                        push(&mut queue, now + talk.max(5_000), G::End(call));
                    }
                    RouterOutput::AgentStateChanged {
                        agent,
                        state: AgentState::NotReady(r),
                    } if is_router_reason(&r) => {
                        push(&mut queue, now + 20_000, G::ReadyAgain(agent));
                    }
                    RouterOutput::Record(e) => {
                        if e.kind == QueueEventKind::Ended && rng.gen_bool(0.33) {
                            let agent = e.agent.clone().unwrap();
                            let w = wraps.entry(agent.clone()).or_default();
                            *w += 1;
                            let w = *w;
                            let after = rng.gen_range(5_000..15_000);
                            push(&mut queue, now + after, G::WrapDone(agent, w));
                        } else if e.kind == QueueEventKind::Ended {
                            *wraps.entry(e.agent.clone().unwrap()).or_default() += 1;
                        }
                        log.push(e);
                    }
                    _ => {}
                }
            }
        }
        log
    }

    fn run(
        events: &[QueueEvent],
        from: u64,
        to: u64,
        rules: &Rules,
        agents: &[AgentProfile],
        options: &SimulationOptions,
    ) -> SimulationReport {
        simulate(
            &SimulationInput {
                events,
                from_ms: from,
                to_ms: to,
                rules,
                agents,
                actual_rules: Some(rules),
            },
            options,
            &mut |_, _| {},
        )
        .expect("a period")
    }

    fn sl(f: &Figures) -> f64 {
        f.service_level.expect("calls counted")
    }

    fn show(label: &str, report: &SimulationReport) {
        println!("{label}");
        for q in &report.per_queue {
            println!(
                "  {:<8} offered {:>4}/{:<4} SL {:>5.1}/{:<5.1} ASA {:>6.1}/{:<6.1} aband {:>4.1}%/{:<4.1}%",
                q.queue.0,
                q.actual.offered,
                q.predicted.offered,
                q.actual.service_level.unwrap_or(f64::NAN) * 100.0,
                q.predicted.service_level.unwrap_or(f64::NAN) * 100.0,
                q.actual.asa_s.unwrap_or(f64::NAN),
                q.predicted.asa_s.unwrap_or(f64::NAN),
                q.actual.abandonment_rate.unwrap_or(f64::NAN) * 100.0,
                q.predicted.abandonment_rate.unwrap_or(f64::NAN) * 100.0,
            );
        }
        let t = &report.total;
        println!(
            "  total    offered {}/{} SL {:.1}/{:.1} ASA {:.1}/{:.1}",
            t.actual.offered,
            t.predicted.offered,
            sl(&t.actual) * 100.0,
            sl(&t.predicted) * 100.0,
            t.actual.asa_s.unwrap_or(f64::NAN),
            t.predicted.asa_s.unwrap_or(f64::NAN),
        );
    }

    /// Same rules and agents: the replay is the history's own run, with and without ring-outs
    /// and rejects; every call event comes back identical. Agent state lines may differ by
    /// zero-length blips (a break asked during a call is replayed at the instant it applied),
    /// so they are not compared.
    #[test]
    fn same_rules_replay_is_the_history() {
        let rules = rules(RULES);
        let plans = staff(10, 6);
        let agents = profiles(&plans);
        for (seed, faults) in (1..=6).map(|s| (s, s % 2 == 0)) {
            let history = seeded_history(seed, &rules, &plans, 6, 85.0, faults);
            let to = T0 + 6 * HOUR;
            let input = SimulationInput {
                events: &history,
                from_ms: T0,
                to_ms: to,
                rules: &rules,
                agents: &agents,
                actual_rules: Some(&rules),
            };
            let out = replay(&input, &SimulationOptions::default(), &mut |_, _| {}).unwrap();
            let calls = |log: &[QueueEvent]| -> Vec<QueueEvent> {
                log.iter()
                    .filter(|e| e.at_ms < to && e.kind != QueueEventKind::AgentState)
                    .cloned()
                    .collect()
            };
            let (h, r) = (calls(&history), calls(&out.log));
            assert!(h.len() > 1000, "seed {seed}: a real load");
            if let Some(i) = (0..h.len().min(r.len())).find(|&i| h[i] != r[i]) {
                panic!("seed {seed}: event {i} differs:\n{:?}\n{:?}", h[i], r[i]);
            }
            assert_eq!(h.len(), r.len(), "seed {seed}");
            assert_eq!(out.refused_inputs, 0);
        }
    }

    /// (a) The acceptance test: same rules and agents reproduce the actual service level
    /// within 2 points, per queue with enough calls (100 offered) and overall, for several
    /// seeds, on a history with ring-no-answers and rejects (which the replay leaves out).
    #[test]
    fn same_rules_reproduce_the_actual_service_level() {
        let rules = rules(RULES);
        let plans = staff(10, 6);
        let agents = profiles(&plans);
        for seed in [1, 2, 3, 4, 5] {
            let history = seeded_history(seed, &rules, &plans, 6, 85.0, true);
            let (from, to) = (T0 + HOUR, T0 + 6 * HOUR);
            let report = run(
                &history,
                from,
                to,
                &rules,
                &agents,
                &SimulationOptions::default(),
            );
            show(&format!("seed {seed}"), &report);
            println!("  {:?}", report.history);
            assert_eq!(report.refused_inputs, 0);
            assert_eq!(report.unplaced_calls, 0);
            assert!(report.total.actual.abandoned > 0, "the load has abandons");
            for q in &report.per_queue {
                if q.actual.offered < 100 {
                    continue;
                }
                let (a, p) = (sl(&q.actual), sl(&q.predicted));
                assert!(
                    (a - p).abs() <= 0.02,
                    "seed {seed} queue {}: actual {a:.3} predicted {p:.3}",
                    q.queue
                );
            }
            let (a, p) = (sl(&report.total.actual), sl(&report.total.predicted));
            assert!((a - p).abs() <= 0.02, "seed {seed}: {a:.3} vs {p:.3}");
            assert!(
                a < 0.97,
                "seed {seed}: the load should make callers wait ({a:.3})"
            );
        }
    }

    fn busiest(report: &SimulationReport) -> QueueId {
        report
            .per_queue
            .iter()
            .max_by_key(|q| q.actual.offered)
            .unwrap()
            .queue
            .clone()
    }

    /// (b) One extra agent with the busiest queue's skills predicts a shorter ASA there, with
    /// either shift rule.
    #[test]
    fn one_extra_agent_shortens_the_predicted_asa() {
        let rules = rules(RULES);
        let plans = staff(10, 6);
        let agents = profiles(&plans);
        for seed in [1, 2, 3] {
            let history = seeded_history(seed, &rules, &plans, 6, 85.0, true);
            let (from, to) = (T0 + HOUR, T0 + 6 * HOUR);
            let options = SimulationOptions::default();
            let base = run(&history, from, to, &rules, &agents, &options);
            let queue = busiest(&base);
            let mut more = agents.clone();
            let mut sk = rules.queue(&queue).unwrap().requires.clone();
            sk.entry("english".into()).or_insert(3);
            more.push(profile("extra.1", sk));
            for shift in [ExtraAgentShift::LongestShift, ExtraAgentShift::WholePeriod] {
                let options = SimulationOptions {
                    extra_agents: shift,
                    ..SimulationOptions::default()
                };
                let with = run(&history, from, to, &rules, &more, &options);
                assert_eq!(with.history.extra_agents, vec![AgentId("extra.1".into())]);
                let asa = |r: &SimulationReport| {
                    r.per_queue
                        .iter()
                        .find(|q| q.queue == queue)
                        .unwrap()
                        .predicted
                        .asa_s
                        .unwrap()
                };
                println!(
                    "seed {seed} {shift:?}: {queue} ASA actual {:.1}s, same staff {:.1}s, +1 agent {:.1}s",
                    base.per_queue.iter().find(|q| q.queue == queue).unwrap().actual.asa_s.unwrap(),
                    asa(&base),
                    asa(&with)
                );
                assert!(asa(&with) < asa(&base), "seed {seed} {shift:?}");
                assert_eq!(with.refused_inputs, 0);
            }
        }
    }

    /// (c) A rule change routes differently: a new queue taking water bills gets exactly
    /// those calls and the water queue loses them; with no catch-all queue the calls nothing
    /// takes are counted as unplaced.
    #[test]
    fn a_new_condition_moves_a_category() {
        let base_rules = rules(RULES);
        let plans = staff(10, 6);
        let agents = profiles(&plans);
        let history = seeded_history(7, &base_rules, &plans, 6, 85.0, true);
        let (from, to) = (T0 + HOUR, T0 + 6 * HOUR);
        let period_calls = |pred: &dyn Fn(&CallerAttrs) -> bool| {
            history
                .iter()
                .filter(|e| e.kind == QueueEventKind::Joined && e.at_ms >= from && e.at_ms < to)
                .filter(|e| pred(e.attrs.as_ref().unwrap()))
                .count() as u64
        };
        let bills = period_calls(&|a| a.language != "es" && a.category == "water_bill");
        assert!(bills > 20);

        let billing = RULES.replace(
            r#"[[queue]]
id = "general""#,
            r#"[[queue]]
id = "billing"
requires = { english = 1 }
condition = 'category == "water_bill"'
wrapup_s = 20

[[queue]]
id = "general""#,
        );
        // Conditions are tried in file order and billing comes after water, so water must
        // stop taking bills.
        let billing = billing.replace(
            r#"["water_leak", "no_water", "water_bill"]"#,
            r#"["water_leak", "no_water"]"#,
        );
        let proposed = rules(&billing);
        let report = run(
            &history,
            from,
            to,
            &proposed,
            &agents,
            &SimulationOptions::default(),
        );
        show("bills to their own queue", &report);
        let fig = |q: &str| report.per_queue.iter().find(|c| c.queue.0 == q).unwrap();
        assert_eq!(fig("billing").actual.offered, 0);
        assert_eq!(fig("billing").predicted.offered, bills);
        assert_eq!(
            fig("water").predicted.offered,
            fig("water").actual.offered - bills
        );
        assert_eq!(report.unplaced_calls, 0);
        // Queue order: the proposed rules' file order.
        let order: Vec<&str> = report
            .per_queue
            .iter()
            .map(|q| q.queue.0.as_str())
            .collect();
        assert_eq!(order, ["water", "spanish", "billing", "general"]);

        // No catch-all: drop the general queue; what only it took is unplaced.
        let cut = RULES.find("[[queue]]\nid = \"general\"").unwrap();
        let narrow = rules(&RULES[..cut]);
        let report = run(
            &history,
            from,
            to,
            &narrow,
            &agents,
            &SimulationOptions::default(),
        );
        let general = period_calls(&|a| {
            a.language != "es"
                && !["water_leak", "no_water", "water_bill"].contains(&a.category.as_str())
        });
        assert_eq!(report.unplaced_calls, general);
        let g = report
            .per_queue
            .iter()
            .find(|q| q.queue.0 == "general")
            .unwrap();
        assert!(g.actual.offered > 0);
        assert_eq!(g.predicted.offered, 0);
        assert_eq!(
            report.replayed_calls + report.unplaced_calls,
            report.history.calls
        );
    }

    /// (d) An empty history gives an empty report; an empty period is an error.
    #[test]
    fn empty_history_and_empty_period() {
        let rules = rules(RULES);
        let mut calls = Vec::new();
        let report = simulate(
            &SimulationInput {
                events: &[],
                from_ms: T0,
                to_ms: T0 + HOUR,
                rules: &rules,
                agents: &[],
                actual_rules: None,
            },
            &SimulationOptions::default(),
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
        assert!(report.per_queue.is_empty());
        assert_eq!(report.total.actual, Figures::default());
        assert_eq!(report.total.predicted, Figures::default());
        assert_eq!(report.replayed_calls, 0);
        assert_eq!(calls, vec![(0, 0)]);
        assert!(render_table(&report).contains("all queues"));
        let err = simulate(
            &SimulationInput {
                events: &[],
                from_ms: T0,
                to_ms: T0,
                rules: &rules,
                agents: &[],
                actual_rules: None,
            },
            &SimulationOptions::default(),
            &mut |_, _| {},
        );
        assert_eq!(
            err,
            Err(SimulateError::EmptyPeriod {
                from_ms: T0,
                to_ms: T0
            })
        );
    }

    /// (e) A period starting mid-day, with callers waiting and agents busy at `from`: calls
    /// that joined in the warm-up are replayed (so agents are busy at `from` as they were),
    /// earlier ones are not, and only events inside the period count on both sides. Without
    /// a warm-up agents start the period idle, so the prediction is better than it was.
    #[test]
    fn calls_in_progress_at_the_start() {
        let rules = rules(RULES);
        let plans = staff(10, 6);
        let agents = profiles(&plans);
        let history = seeded_history(11, &rules, &plans, 6, 85.0, true);
        let (from, to) = (T0 + 3 * HOUR, T0 + 6 * HOUR);
        let joined_in = |a: u64, b: u64| {
            history
                .iter()
                .filter(|e| e.kind == QueueEventKind::Joined && e.at_ms >= a && e.at_ms < b)
                .count() as u64
        };
        for warmup_ms in [0, 20 * 60_000, HOUR] {
            let options = SimulationOptions {
                warmup_ms,
                ..SimulationOptions::default()
            };
            let report = run(&history, from, to, &rules, &agents, &options);
            show(
                &format!("from 3h, warm-up {} min", warmup_ms / 60_000),
                &report,
            );
            assert_eq!(
                report.history.warmup_calls,
                joined_in(from - warmup_ms, from)
            );
            assert_eq!(report.replayed_calls, joined_in(from, to));
            assert_eq!(report.total.predicted.offered, report.total.actual.offered);
            assert_eq!(report.refused_inputs, 0);
            let (a, p) = (sl(&report.total.actual), sl(&report.total.predicted));
            if warmup_ms == HOUR {
                assert!((a - p).abs() <= 0.02, "{a:.3} vs {p:.3}");
            } else {
                assert!(
                    p >= a - 0.02,
                    "idle agents at the start cannot make it worse"
                );
            }
        }
    }

    /// The not-ready reasons this module treats as the router's own are the ones core uses.
    #[test]
    fn router_reasons_match_the_core() {
        let rules = rules(RULES);
        let mut r = Router::new(rules.clone());
        let x = AgentId("x".into());
        let join = |r: &mut Router, now, call: &str| {
            r.handle_input(
                now,
                RouterInput::CallerJoin {
                    call: call.into(),
                    queue: Some(QueueId("general".into())),
                    attrs: CallerAttrs::default(),
                    priority: 0,
                },
            )
            .unwrap();
        };
        r.handle_input(
            0,
            RouterInput::AgentLogin {
                agent: x.clone(),
                skills: skills(&[("english", 1)]),
            },
        )
        .unwrap();
        let login = r.agent_state(&x).cloned();
        r.handle_input(0, RouterInput::AgentReady { agent: x.clone() })
            .unwrap();
        join(&mut r, 0, "c1");
        r.handle_timeout(60_000);
        let rna = r.agent_state(&x).cloned();
        r.handle_input(60_000, RouterInput::AgentReady { agent: x.clone() })
            .unwrap();
        r.handle_input(
            60_000,
            RouterInput::AgentRejected {
                agent: x.clone(),
                call: "c1".into(),
            },
        )
        .unwrap();
        let rejected = r.agent_state(&x).cloned();
        assert_eq!(login, Some(AgentState::NotReady(LOGIN_REASON.into())));
        assert_eq!(
            rna,
            Some(AgentState::NotReady(RING_NO_ANSWER_REASON.into()))
        );
        assert_eq!(rejected, Some(AgentState::NotReady(REJECTED_REASON.into())));
    }

    #[test]
    fn patience_estimate_draws_beyond_the_observed_wait() {
        // Abandons at 10, 20, 30 s; censored at 15 and 40 s.
        let est = PatienceEstimate::new(vec![
            (10_000, true),
            (15_000, false),
            (20_000, true),
            (30_000, true),
            (40_000, false),
        ]);
        assert_eq!(est.abandons, 3);
        assert!((est.survival_at(10_000) - 0.8).abs() < 1e-9);
        assert!((est.survival_at(20_000) - 0.8 * 2.0 / 3.0).abs() < 1e-9);
        for k in 1..=100 {
            let u = f64::from(k) / 100.0;
            if let Some(p) = est.draw_beyond(15_000, u) {
                assert!(p > 15_000);
            }
        }
        // Given T > 15 s: P(T > 20 s) = S(20)/S(15) = 2/3 and P(T > 30 s) = 1/3, so u above
        // 2/3 gives up at 20 s, u in (1/3, 2/3] at 30 s, and u at or below 1/3 outlasts every
        // recorded abandon.
        assert_eq!(est.draw_beyond(15_000, 0.9), Some(20_000));
        assert_eq!(est.draw_beyond(15_000, 0.5), Some(30_000));
        assert_eq!(est.draw_beyond(15_000, 0.2), None);
        assert_eq!(
            est.draw_beyond(30_000, 0.5),
            None,
            "beyond every recorded abandon"
        );
        assert_eq!(PatienceEstimate::new(Vec::new()).draw_beyond(0, 0.5), None);
    }

    /// Same seed, same report; the JSON the API returns has the figures; progress counts up
    /// to the total; the table shows each queue.
    #[test]
    fn deterministic_serializable_with_progress() {
        let rules = rules(RULES);
        let plans = staff(10, 6);
        let agents = profiles(&plans);
        let history = seeded_history(5, &rules, &plans, 6, 85.0, true);
        let input = SimulationInput {
            events: &history,
            from_ms: T0 + HOUR,
            to_ms: T0 + 6 * HOUR,
            rules: &rules,
            agents: &agents[1..],
            actual_rules: Some(&rules),
        };
        let mut ticks = Vec::new();
        let one = simulate(&input, &SimulationOptions::default(), &mut |d, t| {
            ticks.push((d, t))
        })
        .unwrap();
        let two = simulate(&input, &SimulationOptions::default(), &mut |_, _| {}).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.history.agents_kept, 9, "agent00 is not in the proposal");
        let total = ticks.last().unwrap().1;
        assert_eq!(ticks.last(), Some(&(total, total)));
        assert!(ticks.len() > 50);
        assert!(ticks.windows(2).all(|w| w[0].0 <= w[1].0));
        let json = serde_json::to_value(&one).unwrap();
        assert_eq!(json["per_queue"][0]["queue"], "water");
        assert!(json["per_queue"][0]["predicted"]["service_level"].is_f64());
        assert!(json["total"]["actual"]["asa_s"].is_f64());
        let table = render_table(&one);
        println!("{table}");
        for q in ["water", "spanish", "general", "all queues"] {
            assert!(table.contains(q));
        }
    }
}
