//! Seeded simulation of the routing core: a fake clock, callers who arrive, wait, press the
//! exit key or hang up, agents who answer late or not at all, reject, take breaks, log out and
//! back in, and two rules reloads (one removes a queue), thousands of calls through the real
//! `Router`. An independent model built only from the router's outputs and the public rules
//! checks after every step:
//! - no agent is offered a call while offered another or talking, and only when ready;
//! - no ready agent idles while a caller they qualify for waits;
//! - every offer goes to an agent who qualifies, and no waiting caller the agent qualifies for
//!   has a better place (queue priority, caller priority, original join time, join order);
//! - each answered call is connected once with one hold time (whole wait) and one `answered`
//!   record (time in the queue), and every record's hold matches the model's clock;
//! - every call ends in exactly one final state, and an answered call ends exactly once;
//! - the router's queries (agent states, call states, waiting lists) agree with the model;
//! - no timer is left due after a step;
//! - every few hundred steps and at the end, metrics recomputed from the log equal the live
//!   counters.
//!
//! A failure names its seed. `ROUTING_SEED=n` replays one seed; `ROUTING_SIM_CALLS=n` changes
//! the calls per seed, `ROUTING_SIM_SEEDS=n` the number of seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use civicline::routing::core::{
    AgentState, CallId, CallStatus, QueueEvent, QueueEventKind, Router, RouterInput, RouterOutput,
};
use civicline::routing::metrics::{compute, ReportOptions};
use civicline::routing::rules::{AgentId, CallerAttrs, QueueId, Rules, SkillSet};

const RULES_A: &str = r#"
skills = ["english", "spanish", "streets", "water", "escalations"]

[[queue]]
id = "vip"
priority = 50
requires = { escalations = 2 }
strategy = "ring-all"
condition = 'priority >= 8'
when_no_agents = "overflow"
overflow = { after_s = 40, to = "general" }
ring_timeout_s = 8
wrapup_s = 3

[[queue]]
id = "es"
priority = 10
requires = { spanish = 3 }
strategy = "longest-idle"
condition = 'language == "es"'
exit_key = "0"
max_wait_s = 240
wrapup_s = 5

[[queue.escalation]]
after_s = 30
min_proficiency = { spanish = 1 }

[[queue]]
id = "streets"
priority = 10
requires = { english = 2, streets = 4 }
strategy = "fewest-calls"
condition = 'category in ["pothole", "graffiti"]'
overflow = { after_s = 120, to = "general" }
ring_timeout_s = 10

[[queue.escalation]]
after_s = 20
min_proficiency = { streets = 2 }

[[queue.escalation]]
after_s = 60
drop_skills = ["streets"]
also_accept = { escalations = 1 }

[[queue]]
id = "water"
priority = 20
requires = { water = 3 }
strategy = "round-robin"
condition = 'category == "water_leak"'
when_no_agents = "leave"
max_wait_s = 150

[[queue]]
id = "general"
requires = { english = 1 }
strategy = "most-skilled"
condition = 'true'
max_wait_s = 400
wrapup_s = 2
"#;

/// Water is gone (its callers are re-placed or removed), general no longer takes French
/// speakers, streets widens sooner and priorities move.
const RULES_B: &str = r#"
skills = ["english", "spanish", "streets", "water", "escalations"]

[[queue]]
id = "vip"
priority = 50
requires = { escalations = 2 }
strategy = "ring-all"
condition = 'priority >= 8'
when_no_agents = "overflow"
overflow = { after_s = 40, to = "general" }
ring_timeout_s = 8

[[queue]]
id = "es"
priority = 10
requires = { spanish = 2 }
strategy = "round-robin"
condition = 'language == "es"'
max_wait_s = 300

[[queue]]
id = "streets"
priority = 15
requires = { english = 2, streets = 3 }
strategy = "longest-idle"
condition = 'category in ["pothole", "graffiti"]'
overflow = { after_s = 90, to = "general" }

[[queue.escalation]]
after_s = 10
drop_skills = ["streets"]

[[queue]]
id = "general"
priority = 1
requires = { english = 1 }
strategy = "fewest-calls"
condition = 'language != "fr"'
max_wait_s = 600
wrapup_s = 4
"#;

const CATEGORIES: &[&str] = &["pothole", "graffiti", "water_leak", "noise", "other"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    Waiting,
    Ringing,
    Talking,
    Done,
}

struct SimCall {
    id: CallId,
    priority: i32,
    seq: u64,
    joined: u64,
    queue: QueueId,
    queue_joined: u64,
    state: CallState,
    ringing: Vec<usize>,
    talking: Option<usize>,
    finals: u32,
    answered: u32,
    connected: u32,
    ended: u32,
}

struct SimAgent {
    id: AgentId,
    skills: SkillSet,
    state: AgentState,
    offer: Option<usize>,
    talking: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
enum Resp {
    Ringing,
    Answer,
    Reject,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Arrive,
    Patience(usize),
    Exit(usize),
    Respond {
        agent: usize,
        call: usize,
        what: Resp,
    },
    EndTalk {
        call: usize,
        by_caller: bool,
    },
    AgentLife(usize),
    Ready(usize),
    Login(usize),
    Reload(bool),
}

struct Sim {
    seed: u64,
    /// Metrics are recomputed from the whole log and compared with the live counters every
    /// this many steps (1 in `metrics_match_the_log_after_every_step`).
    metrics_every: u64,
    now: u64,
    rng: SmallRng,
    router: Router,
    rules: Rules,
    rules_a: Rules,
    rules_b: Rules,
    calls: Vec<SimCall>,
    index: BTreeMap<CallId, usize>,
    waiting: BTreeSet<usize>,
    agents: Vec<SimAgent>,
    agent_index: BTreeMap<AgentId, usize>,
    agenda: BTreeMap<(u64, u64), Ev>,
    agenda_seq: u64,
    next_seq: u64,
    arrivals_left: usize,
    log: Vec<QueueEvent>,
    steps: u64,
    refused_joins: u64,
}

macro_rules! ensure {
    ($sim:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!(
                "seed {} at t={} ms, step {}: {} (replay: ROUTING_SEED={} cargo test --test sim_routing)",
                $sim.seed, $sim.now, $sim.steps, format!($($arg)+), $sim.seed
            );
        }
    };
}

const START_MS: u64 = 1_700_000_000_000;

impl Sim {
    fn new(seed: u64, calls: usize) -> Sim {
        let rules_a = Rules::parse(RULES_A, Path::new("sim_a.toml")).expect("rules A");
        let rules_b = Rules::parse(RULES_B, Path::new("sim_b.toml")).expect("rules B");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut agents = Vec::new();
        let mut agent_index = BTreeMap::new();
        for i in 0..14 {
            let id = AgentId(format!("agent{i:02}"));
            agent_index.insert(id.clone(), i);
            agents.push(SimAgent {
                id,
                skills: random_skills(&mut rng),
                state: AgentState::Offline,
                offer: None,
                talking: None,
            });
        }
        let mut sim = Sim {
            seed,
            now: START_MS,
            rng,
            router: Router::new(rules_a.clone()),
            rules: rules_a.clone(),
            rules_a,
            rules_b,
            calls: Vec::new(),
            index: BTreeMap::new(),
            waiting: BTreeSet::new(),
            agents,
            agent_index,
            agenda: BTreeMap::new(),
            agenda_seq: 0,
            next_seq: 0,
            arrivals_left: calls,
            log: Vec::new(),
            steps: 0,
            metrics_every: 400,
            refused_joins: 0,
        };
        for a in 0..sim.agents.len() {
            let at = sim.rng.gen_range(0..60_000);
            sim.at(at, Ev::Login(a));
            let life = sim.rng.gen_range(60_000..400_000);
            sim.at(life, Ev::AgentLife(a));
        }
        sim.at(1_000, Ev::Arrive);
        // Mean arrival gap ~5 s: the two reloads land mid-traffic.
        let span = calls as u64 * 5_000;
        sim.at(span * 2 / 5, Ev::Reload(true));
        sim.at(span * 7 / 10, Ev::Reload(false));
        sim
    }

    /// Schedules `ev` `delay_ms` from now, on a 500 ms grid so that inputs and timers often
    /// share an instant.
    fn at(&mut self, delay_ms: u64, ev: Ev) {
        let t = (self.now + delay_ms).div_ceil(500) * 500;
        self.agenda.insert((t, self.agenda_seq), ev);
        self.agenda_seq += 1;
    }

    fn run(&mut self) {
        loop {
            let next_ev = self.agenda.keys().next().map(|k| k.0);
            let next_timer = self.router.poll_timeout();
            let (t, timer_first) = match (next_ev, next_timer) {
                (None, None) => break,
                (Some(e), None) => (e, false),
                (None, Some(t)) => (t, true),
                (Some(e), Some(t)) => (e.min(t), t <= e),
            };
            ensure!(self, t >= self.now, "time went backwards to {t}");
            self.now = t;
            self.steps += 1;
            if timer_first {
                self.router.handle_timeout(t);
            } else {
                let (&key, &ev) = self.agenda.iter().next().expect("an event");
                self.agenda.remove(&key);
                self.event(ev);
            }
            self.outputs();
            self.check_step();
            if self.steps % self.metrics_every == 0 {
                self.check_metrics();
            }
        }
        self.finish();
    }

    fn send(&mut self, input: RouterInput) -> bool {
        self.router.handle_input(self.now, input).is_ok()
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive => self.arrive(),
            Ev::Patience(c) => {
                let expect = self.calls[c].state != CallState::Done;
                let ok = self.send(RouterInput::CallerHangup {
                    call: self.calls[c].id.clone(),
                });
                ensure!(
                    self,
                    ok == expect,
                    "hangup of {:?}: ok={ok}",
                    self.calls[c].id
                );
            }
            Ev::Exit(c) => {
                let expect = matches!(self.calls[c].state, CallState::Waiting | CallState::Ringing);
                let ok = self.send(RouterInput::CallerExit {
                    call: self.calls[c].id.clone(),
                });
                ensure!(
                    self,
                    ok == expect,
                    "exit of {:?}: ok={ok}",
                    self.calls[c].id
                );
            }
            Ev::Respond { agent, call, what } => {
                let expect = self.agents[agent].offer == Some(call)
                    && self.calls[call].state == CallState::Ringing;
                let (a, c) = (self.agents[agent].id.clone(), self.calls[call].id.clone());
                let input = match what {
                    Resp::Ringing => RouterInput::AgentRinging { agent: a, call: c },
                    Resp::Answer => RouterInput::AgentAnswered { agent: a, call: c },
                    Resp::Reject => RouterInput::AgentRejected { agent: a, call: c },
                };
                let ok = self.send(input);
                ensure!(
                    self,
                    ok == expect,
                    "{what:?} by agent {agent} for call {call}: ok={ok}"
                );
                if ok && matches!(what, Resp::Ringing) {
                    self.respond_later(agent, call);
                }
            }
            Ev::EndTalk { call, by_caller } => {
                let expect = self.calls[call].state == CallState::Talking;
                let id = self.calls[call].id.clone();
                let ok = if by_caller {
                    self.send(RouterInput::CallerHangup { call: id })
                } else {
                    self.send(RouterInput::CallEnded { call: id })
                };
                ensure!(self, ok == expect, "end of call {call}: ok={ok}");
            }
            Ev::AgentLife(a) => self.agent_life(a),
            Ev::Ready(a) => {
                let expect = self.agents[a].state != AgentState::Offline;
                let ok = self.send(RouterInput::AgentReady {
                    agent: self.agents[a].id.clone(),
                });
                ensure!(self, ok == expect, "ready of agent {a}: ok={ok}");
            }
            Ev::Login(a) => {
                let expect = self.agents[a].state == AgentState::Offline;
                if expect && self.rng.gen_bool(0.3) {
                    self.agents[a].skills = random_skills(&mut self.rng);
                }
                let ok = self.send(RouterInput::AgentLogin {
                    agent: self.agents[a].id.clone(),
                    skills: self.agents[a].skills.clone(),
                });
                ensure!(self, ok == expect, "login of agent {a}: ok={ok}");
                let d = self.rng.gen_range(1_000..10_000);
                self.at(d, Ev::Ready(a));
            }
            Ev::Reload(to_b) => {
                let rules = if to_b {
                    self.rules_b.clone()
                } else {
                    self.rules_a.clone()
                };
                self.rules = rules.clone();
                self.router.replace_rules(self.now, rules);
            }
        }
    }

    fn arrive(&mut self) {
        if self.arrivals_left == 0 {
            return;
        }
        self.arrivals_left -= 1;
        let gap = self.rng.gen_range(0..10_000);
        self.at(gap, Ev::Arrive);
        let r = &mut self.rng;
        let language = match r.gen_range(0..10) {
            0..=6 => "en",
            7 | 8 => "es",
            _ => "fr",
        };
        let priority: i32 = match r.gen_range(0..100) {
            0..=4 => r.gen_range(8..10),
            5..=19 => r.gen_range(1..4),
            _ => 0,
        };
        let attrs = CallerAttrs {
            language: language.into(),
            category: CATEGORIES[r.gen_range(0..CATEGORIES.len())].into(),
            district: format!("d{}", r.gen_range(1..6)),
            priority: i64::from(priority),
        };
        let queue = if r.gen_bool(0.2) {
            let qs = self.rules.queues();
            Some(qs[r.gen_range(0..qs.len())].id.clone())
        } else {
            None
        };
        let expect = queue.is_some() || self.rules.select_queue(&attrs).is_some();
        let id = CallId(format!("c{}", self.calls.len()));
        let ok = self.send(RouterInput::CallerJoin {
            call: id.clone(),
            queue: queue.clone(),
            attrs,
            priority,
        });
        ensure!(self, ok == expect, "join of {id:?} to {queue:?}: ok={ok}");
        if !ok {
            self.refused_joins += 1;
            return;
        }
        let c = self.calls.len();
        self.calls.push(SimCall {
            id: id.clone(),
            priority,
            seq: self.next_seq,
            joined: self.now,
            queue: QueueId(String::new()),
            queue_joined: self.now,
            state: CallState::Waiting,
            ringing: Vec::new(),
            talking: None,
            finals: 0,
            answered: 0,
            connected: 0,
            ended: 0,
        });
        self.next_seq += 1;
        self.index.insert(id, c);
        // The joined record is among the outputs still to read; the model learns the queue
        // there. Patience: exponential, mean two minutes (ten for some, who meet max_wait_s);
        // some press the exit key.
        let mean = if self.rng.gen_bool(0.15) {
            600_000.0
        } else {
            120_000.0
        };
        let patience = (-(1.0 - self.rng.gen::<f64>()).ln() * mean) as u64;
        self.at(patience.max(500), Ev::Patience(c));
        if self.rng.gen_bool(0.05) {
            let d = self.rng.gen_range(1_000..60_000);
            self.at(d, Ev::Exit(c));
        }
    }

    /// After an offer (or the ringing report): answer, reject, or let it ring out.
    fn respond_later(&mut self, agent: usize, call: usize) {
        let roll = self.rng.gen_range(0..100);
        let (delay, what) = match roll {
            0..=64 => (self.rng.gen_range(300..9_000), Resp::Answer),
            65..=74 => (self.rng.gen_range(300..4_000), Resp::Reject),
            // Past every ring timeout: refused as stale.
            75..=79 => (self.rng.gen_range(26_000..30_000), Resp::Answer),
            _ => return,
        };
        self.at(delay, Ev::Respond { agent, call, what });
    }

    fn agent_life(&mut self, a: usize) {
        if self.arrivals_left > 0 {
            let d = self.rng.gen_range(60_000..400_000);
            self.at(d, Ev::AgentLife(a));
        }
        let id = self.agents[a].id.clone();
        let state = self.agents[a].state.clone();
        let roll = self.rng.gen_range(0..100);
        match state {
            AgentState::Offline => {}
            AgentState::WrapUp if roll < 50 => {
                let ok = self.send(RouterInput::WrapUpDone { agent: id });
                ensure!(self, ok, "wrap-up done of agent {a}");
            }
            _ if roll < 45 => {
                let ok = self.send(RouterInput::AgentNotReady {
                    agent: id,
                    reason: "break".into(),
                });
                ensure!(self, ok, "not ready of agent {a}");
                let d = self.rng.gen_range(20_000..120_000);
                self.at(d, Ev::Ready(a));
            }
            _ if roll < 60 => {
                let ok = self.send(RouterInput::AgentLogout { agent: id });
                ensure!(self, ok, "logout of agent {a}");
                let d = self.rng.gen_range(30_000..300_000);
                self.at(d, Ev::Login(a));
            }
            _ => {}
        }
    }

    // ---- the model ----------------------------------------------------------------------

    fn call_of(&self, id: &CallId) -> usize {
        *self
            .index
            .get(id)
            .unwrap_or_else(|| panic!("seed {}: output names unknown call {id:?}", self.seed))
    }

    fn agent_of(&self, id: &AgentId) -> usize {
        self.agent_index[id]
    }

    /// (queue priority, caller priority, original join, join order): smaller goes first.
    fn rank(&self, c: usize) -> (i64, i64, u64, u64) {
        let call = &self.calls[c];
        let qp = self.rules.queue(&call.queue).map_or(0, |q| q.priority);
        (
            -i64::from(qp),
            -i64::from(call.priority),
            call.joined,
            call.seq,
        )
    }

    fn eligible(&self, agent: usize, c: usize) -> bool {
        let call = &self.calls[c];
        let Some(q) = self.rules.queue(&call.queue) else {
            return false;
        };
        let level = q.level_at(self.now - call.queue_joined);
        q.levels()[level].accepts(&self.agents[agent].skills)
    }

    fn outputs(&mut self) {
        while let Some(out) = self.router.poll_output() {
            match out {
                RouterOutput::Offer { call, agent, queue } => {
                    let (c, a) = (self.call_of(&call), self.agent_of(&agent));
                    ensure!(
                        self,
                        self.agents[a].offer.is_none() && self.agents[a].talking.is_none(),
                        "agent {agent} offered {call} while holding {:?}/{:?}",
                        self.agents[a].offer,
                        self.agents[a].talking
                    );
                    ensure!(
                        self,
                        self.agents[a].state == AgentState::Reserved,
                        "agent {agent} offered in state {}",
                        self.agents[a].state
                    );
                    ensure!(
                        self,
                        queue == self.calls[c].queue,
                        "offer names queue {queue}"
                    );
                    ensure!(
                        self,
                        matches!(self.calls[c].state, CallState::Waiting | CallState::Ringing),
                        "offer of {call} in state {:?}",
                        self.calls[c].state
                    );
                    ensure!(
                        self,
                        self.eligible(a, c),
                        "agent {agent} does not qualify for {call}"
                    );
                    let mine = self.rank(c);
                    for &d in &self.waiting {
                        if d != c && self.eligible(a, d) {
                            ensure!(
                                self,
                                self.rank(d) > mine,
                                "FIFO: agent {agent} got {call} {mine:?} while {} {:?} waits",
                                self.calls[d].id,
                                self.rank(d)
                            );
                        }
                    }
                    self.waiting.remove(&c);
                    self.calls[c].state = CallState::Ringing;
                    self.calls[c].ringing.push(a);
                    self.agents[a].offer = Some(c);
                    if self.rng.gen_bool(0.5) {
                        self.at(
                            200,
                            Ev::Respond {
                                agent: a,
                                call: c,
                                what: Resp::Ringing,
                            },
                        );
                    } else {
                        self.respond_later(a, c);
                    }
                }
                RouterOutput::CancelOffer { call, agent } => {
                    let (c, a) = (self.call_of(&call), self.agent_of(&agent));
                    ensure!(
                        self,
                        self.agents[a].offer == Some(c),
                        "cancel of an offer {agent} does not hold"
                    );
                    self.agents[a].offer = None;
                    self.calls[c].ringing.retain(|&x| x != a);
                    if self.calls[c].ringing.is_empty() {
                        self.calls[c].state = CallState::Waiting;
                        self.waiting.insert(c);
                    }
                }
                RouterOutput::Connected {
                    call,
                    agent,
                    queue,
                    hold_ms,
                } => {
                    let (c, a) = (self.call_of(&call), self.agent_of(&agent));
                    ensure!(
                        self,
                        self.calls[c].state == CallState::Ringing && self.calls[c].ringing == [a],
                        "connect of {call} to {agent} while ringing {:?}",
                        self.calls[c].ringing
                    );
                    ensure!(
                        self,
                        queue == self.calls[c].queue,
                        "connected in queue {queue}"
                    );
                    ensure!(
                        self,
                        hold_ms == self.now - self.calls[c].joined,
                        "hold {hold_ms} of {call}"
                    );
                    self.calls[c].connected += 1;
                    self.calls[c].ringing.clear();
                    self.calls[c].state = CallState::Talking;
                    self.calls[c].talking = Some(a);
                    self.agents[a].offer = None;
                    self.agents[a].talking = Some(c);
                    let talk = self.rng.gen_range(5_000..240_000);
                    let by_caller = self.rng.gen_bool(0.3);
                    self.at(talk, Ev::EndTalk { call: c, by_caller });
                }
                RouterOutput::AgentStateChanged { agent, state } => {
                    let a = self.agent_of(&agent);
                    ensure!(
                        self,
                        self.agents[a].state == state,
                        "state output {state} before its record"
                    );
                    if let AgentState::NotReady(reason) = &state {
                        if reason != "break" {
                            let d = self.rng.gen_range(2_000..20_000);
                            self.at(d, Ev::Ready(a));
                        }
                    }
                }
                RouterOutput::Record(ev) => self.record(ev),
                RouterOutput::Overflowed { call, .. } => {
                    let c = self.call_of(&call);
                    ensure!(
                        self,
                        self.calls[c].state == CallState::Waiting,
                        "overflow of {call} not waiting"
                    );
                }
                RouterOutput::MaxWaitExceeded { call, .. }
                | RouterOutput::NoAgents { call, .. }
                | RouterOutput::Removed { call, .. } => {
                    let c = self.call_of(&call);
                    ensure!(
                        self,
                        self.calls[c].state == CallState::Done,
                        "{call} left but is not done"
                    );
                }
            }
        }
    }

    fn record(&mut self, ev: QueueEvent) {
        ensure!(
            self,
            ev.at_ms == self.now,
            "record stamped {} at {}",
            ev.at_ms,
            self.now
        );
        self.log.push(ev.clone());
        if ev.kind == QueueEventKind::AgentState {
            let a = self.agent_of(ev.agent.as_ref().expect("agent"));
            let new = ev.state.clone().expect("state");
            let old = self.agents[a].state.clone();
            let legal = match &new {
                AgentState::Reserved => old == AgentState::Ready,
                AgentState::Ringing => old == AgentState::Reserved,
                AgentState::Talking => {
                    old.clone() == AgentState::Reserved || old == AgentState::Ringing
                }
                AgentState::WrapUp => old == AgentState::Talking,
                _ => old != new,
            };
            ensure!(self, legal, "agent {a}: {old} -> {new}");
            self.agents[a].state = new;
            return;
        }
        let Some(call) = &ev.call else { return };
        let c = self.call_of(call);
        let hold_ok = ev
            .hold_ms
            .is_none_or(|h| h == self.now - self.calls[c].queue_joined);
        match ev.kind {
            QueueEventKind::Joined => {
                let q = ev.queue.clone().expect("queue");
                ensure!(
                    self,
                    self.rules.queue(&q).is_some(),
                    "joined unknown queue {q}"
                );
                self.calls[c].queue = q;
                self.calls[c].queue_joined = self.now;
                self.calls[c].state = CallState::Waiting;
                self.waiting.insert(c);
            }
            QueueEventKind::Answered => {
                ensure!(
                    self,
                    hold_ok && ev.hold_ms.is_some(),
                    "answered hold {:?}",
                    ev.hold_ms
                );
                self.calls[c].answered += 1;
                self.calls[c].finals += 1;
            }
            QueueEventKind::Abandoned
            | QueueEventKind::Exited
            | QueueEventKind::MaxWait
            | QueueEventKind::NoAgents
            | QueueEventKind::Removed => {
                ensure!(
                    self,
                    hold_ok && ev.hold_ms.is_some(),
                    "{:?} hold {:?}",
                    ev.kind,
                    ev.hold_ms
                );
                ensure!(
                    self,
                    self.calls[c].ringing.is_empty(),
                    "{call} left with agents ringing"
                );
                self.calls[c].finals += 1;
                self.calls[c].state = CallState::Done;
                self.waiting.remove(&c);
            }
            QueueEventKind::Overflowed => {
                ensure!(self, hold_ok, "overflow hold {:?}", ev.hold_ms);
                self.waiting.remove(&c);
            }
            QueueEventKind::Rejected => {
                // The agent's leg is over: no CancelOffer follows.
                let a = self.agent_of(ev.agent.as_ref().expect("agent"));
                ensure!(
                    self,
                    self.agents[a].offer == Some(c),
                    "reject of an offer agent {a} does not hold"
                );
                self.agents[a].offer = None;
                self.calls[c].ringing.retain(|&x| x != a);
                if self.calls[c].ringing.is_empty() {
                    self.calls[c].state = CallState::Waiting;
                    self.waiting.insert(c);
                }
            }
            QueueEventKind::Ended => {
                let a = self.calls[c].talking.take().expect("a talking call");
                ensure!(
                    self,
                    ev.agent.as_ref() == Some(&self.agents[a].id),
                    "ended by another agent"
                );
                self.agents[a].talking = None;
                self.calls[c].ended += 1;
                self.calls[c].state = CallState::Done;
            }
            _ => {}
        }
    }

    fn check_step(&mut self) {
        if let Some(t) = self.router.poll_timeout() {
            ensure!(self, t > self.now, "timer due at {t} left unfired");
        }
        for (a, agent) in self.agents.iter().enumerate() {
            let real = self
                .router
                .agent_state(&agent.id)
                .cloned()
                .unwrap_or(AgentState::Offline);
            ensure!(
                self,
                real == agent.state,
                "agent {a} is {real} in the router, {} in the model",
                agent.state
            );
            ensure!(
                self,
                agent.offer.is_none()
                    || agent.state.clone() == AgentState::Reserved
                    || agent.state == AgentState::Ringing,
                "agent {a} holds an offer in state {}",
                agent.state
            );
            ensure!(
                self,
                agent.offer.is_none() || agent.talking.is_none(),
                "agent {a} offered while talking"
            );
        }
        // Work-conserving: a ready agent never idles while a caller they qualify for waits
        // (this is what catches escalation that widens without matching).
        for (a, agent) in self.agents.iter().enumerate() {
            if agent.state == AgentState::Ready {
                for &c in &self.waiting {
                    ensure!(
                        self,
                        !self.eligible(a, c),
                        "agent {a} idles while {} waits for them",
                        self.calls[c].id
                    );
                }
            }
        }
        let mut by_queue: BTreeMap<QueueId, Vec<usize>> = BTreeMap::new();
        for &c in &self.waiting {
            by_queue
                .entry(self.calls[c].queue.clone())
                .or_default()
                .push(c);
        }
        for q in self.rules.queues() {
            let mut list = by_queue.remove(&q.id).unwrap_or_default();
            list.sort_by_key(|&c| self.rank(c));
            let expected: Vec<CallId> = list.iter().map(|&c| self.calls[c].id.clone()).collect();
            let real: Vec<CallId> = self
                .router
                .waiting(&q.id)
                .into_iter()
                .map(|w| w.call)
                .collect();
            ensure!(
                self,
                real == expected,
                "queue {} waits {real:?}, model {expected:?}",
                q.id
            );
        }
        ensure!(
            self,
            by_queue.is_empty(),
            "model callers wait in unknown queues {:?}",
            by_queue.keys()
        );
        let live = self
            .calls
            .iter()
            .filter(|c| c.state != CallState::Done)
            .count();
        ensure!(
            self,
            live == self.router.active_calls(),
            "router tracks {} calls, model {live}",
            self.router.active_calls()
        );
        // Spot-check call states (every call would be quadratic over the run).
        if let Some(c) = self.waiting.iter().next().copied() {
            let status = self.router.call_status(&self.calls[c].id);
            ensure!(
                self,
                matches!(status, Some(CallStatus::Waiting { .. })),
                "waiting call has status {status:?}"
            );
        }
        for c in self.calls.iter().rev().take(20) {
            let status = self.router.call_status(&c.id);
            let ok = match c.state {
                CallState::Waiting => matches!(status, Some(CallStatus::Waiting { .. })),
                CallState::Ringing => {
                    matches!(&status, Some(CallStatus::Ringing { agents, .. }) if agents.len() == c.ringing.len())
                }
                CallState::Talking => matches!(status, Some(CallStatus::Talking { .. })),
                CallState::Done => status.is_none(),
            };
            ensure!(
                self,
                ok,
                "call {} is {:?} in the model, {status:?} in the router",
                c.id,
                c.state
            );
        }
    }

    fn check_metrics(&self) {
        let report = compute(&self.log, 0, u64::MAX, &ReportOptions::default());
        let counters = self.router.all_counters();
        ensure!(
            self,
            report.queues.len() == counters.len(),
            "{} queues in the report, {} counted",
            report.queues.len(),
            counters.len()
        );
        for total in &report.queues {
            let s = &total.stats;
            let live = &counters[&total.queue];
            let pairs = [
                ("offered", s.offered, live.offered),
                ("agent_offers", s.agent_offers, live.agent_offers),
                ("answered", s.answered, live.answered),
                ("abandoned", s.abandoned, live.abandoned),
                ("overflowed", s.overflowed, live.overflowed),
                ("exited", s.exited, live.exited),
                ("max_wait", s.max_wait, live.max_wait),
                ("no_agents", s.no_agents, live.no_agents),
                ("removed", s.removed, live.removed),
                ("ring_no_answer", s.ring_no_answer, live.ring_no_answer),
                ("rejected", s.rejected, live.rejected),
                ("ended", s.ended, live.ended),
                (
                    "answered_hold_ms",
                    s.answered_hold_ms,
                    live.answered_hold_ms,
                ),
            ];
            for (name, from_log, counted) in pairs {
                ensure!(
                    self,
                    from_log == counted,
                    "queue {} {name}: log says {from_log}, counters {counted}",
                    total.queue
                );
            }
            // Conservation: everyone who entered a queue left it one way or is still there.
            let left = s.answered
                + s.abandoned
                + s.overflowed
                + s.exited
                + s.max_wait
                + s.no_agents
                + s.removed;
            let inside = self
                .calls
                .iter()
                .filter(|c| {
                    c.queue == total.queue
                        && matches!(c.state, CallState::Waiting | CallState::Ringing)
                })
                .count() as u64;
            ensure!(
                self,
                s.offered == left + inside,
                "queue {}: {} offered, {left} left, {inside} inside",
                total.queue,
                s.offered
            );
        }
        for a in &report.agents {
            let live = self.router.agent_calls(&a.agent).unwrap_or(0);
            ensure!(
                self,
                a.calls == live,
                "agent {} calls: log {} counters {live}",
                a.agent,
                a.calls
            );
        }
    }

    fn finish(&self) {
        ensure!(
            self,
            self.router.active_calls() == 0,
            "{} calls left",
            self.router.active_calls()
        );
        for c in &self.calls {
            ensure!(
                self,
                c.finals == 1,
                "call {} has {} final states",
                c.id,
                c.finals
            );
            ensure!(
                self,
                c.answered == c.connected && c.answered <= 1,
                "call {} answered {} connected {}",
                c.id,
                c.answered,
                c.connected
            );
            ensure!(
                self,
                c.ended == c.answered,
                "call {} answered {} ended {}",
                c.id,
                c.answered,
                c.ended
            );
        }
        self.check_metrics();
    }
}

fn random_skills(rng: &mut SmallRng) -> SkillSet {
    let mut s = SkillSet::new();
    for (skill, p) in [
        ("english", 0.85),
        ("spanish", 0.3),
        ("streets", 0.4),
        ("water", 0.35),
        ("escalations", 0.2),
    ] {
        if rng.gen_bool(p) {
            s.insert(skill.to_string(), rng.gen_range(1..=5));
        }
    }
    if s.is_empty() {
        s.insert("english".into(), 3);
    }
    s
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_simulation() {
    let calls = env_u64("ROUTING_SIM_CALLS").unwrap_or(1_500) as usize;
    let seeds: Vec<u64> = match env_u64("ROUTING_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("ROUTING_SIM_SEEDS").unwrap_or(6)).collect(),
    };
    let mut totals = (0usize, 0u64, 0u64, 0u64);
    for seed in seeds {
        let mut sim = Sim::new(seed, calls);
        sim.run();
        let counters = sim.router.all_counters();
        let answered: u64 = counters.values().map(|c| c.answered).sum();
        let abandoned: u64 = counters.values().map(|c| c.abandoned).sum();
        // The run must have exercised what it claims to check.
        let kinds: BTreeSet<String> = sim.log.iter().map(|e| format!("{:?}", e.kind)).collect();
        for needed in [
            "Answered",
            "Abandoned",
            "Overflowed",
            "Exited",
            "MaxWait",
            "RingNoAnswer",
            "Rejected",
            "OfferCancelled",
            "WrapupDone",
        ] {
            ensure!(
                sim,
                kinds.contains(needed),
                "the run never produced {needed}"
            );
        }
        ensure!(sim, answered > calls as u64 / 4, "only {answered} answered");
        totals.0 += sim.calls.len();
        totals.1 += answered;
        totals.2 += abandoned;
        totals.3 += sim.steps;
        let kinds_count = |k: QueueEventKind| sim.log.iter().filter(|e| e.kind == k).count();
        println!(
            "seed {seed}: {} calls, {} refused joins, {answered} answered, {abandoned} abandoned, {} max wait, {} overflowed, {} ring-no-answer, {} steps",
            sim.calls.len(),
            sim.refused_joins,
            kinds_count(QueueEventKind::MaxWait),
            kinds_count(QueueEventKind::Overflowed),
            kinds_count(QueueEventKind::RingNoAnswer),
            sim.steps
        );
    }
    println!(
        "simulated {} calls ({} answered, {} abandoned) in {} steps",
        totals.0, totals.1, totals.2, totals.3
    );
}

/// The same world, smaller, with the metrics recomputed from the log after every single step
/// (the big run above does it every 400 steps to stay fast).
#[test]
fn metrics_match_the_log_after_every_step() {
    for seed in 100..103 {
        let mut sim = Sim::new(seed, 150);
        sim.metrics_every = 1;
        sim.run();
        ensure!(sim, sim.steps > 500, "only {} steps", sim.steps);
    }
}
