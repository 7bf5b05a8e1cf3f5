//! Routing throughput of the pure core: 2,000 agents, 50 queues (each with two escalation
//! steps, strategies mixed, priorities 0-4) and a steady number of waiting callers.
//!
//! A "decision" is one match of an agent with a caller: the router choosing, when an agent
//! frees up, the best caller across every queue and escalation level the agent qualifies for
//! (or, when a caller arrives to ready agents, the agent its queue's strategy prefers), and
//! sending the Offer. Each measured cycle is three inputs: a call ends (the agent frees up and
//! is matched: the decision), the agent answers the new offer, and a new caller joins so the
//! number waiting stays the same; outputs are drained as a runtime would. The fake clock moves
//! 1 ms per cycle, so escalation timers fire during the run too.
//!
//! `cargo bench --bench routing` (release profile). Scaling is shown at 1k, 10k and 100k
//! waiting callers: with O(log n) structures the rate should fall only slowly.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use civicline::routing::core::{AgentState, CallId, Router, RouterInput, RouterOutput};
use civicline::routing::rules::{AgentId, CallerAttrs, QueueId, Rules, SkillSet};

const AGENTS: usize = 2_000;
const QUEUES: usize = 50;
const TOPICS: usize = 18;
const STRATEGIES: [&str; 4] = [
    "longest-idle",
    "fewest-calls",
    "round-robin",
    "most-skilled",
];

fn rules() -> Rules {
    let mut text = String::from("skills = [\"english\", \"spanish\"");
    for t in 0..TOPICS {
        text.push_str(&format!(", \"t{t:02}\""));
    }
    text.push_str("]\n");
    for q in 0..QUEUES {
        let topic = q % TOPICS;
        let language = if q % 4 == 0 { "spanish" } else { "english" };
        text.push_str(&format!(
            "[[queue]]\nid = \"q{q:02}\"\npriority = {}\nstrategy = \"{}\"\n\
             requires = {{ {language} = 2, t{topic:02} = 3 }}\nring_timeout_s = 20\n\
             [[queue.escalation]]\nafter_s = 30\nmin_proficiency = {{ t{topic:02} = 1 }}\n\
             [[queue.escalation]]\nafter_s = 90\ndrop_skills = [\"t{topic:02}\"]\n",
            q % 5,
            STRATEGIES[q % STRATEGIES.len()],
        ));
    }
    Rules::parse(&text, Path::new("bench.toml")).expect("bench rules")
}

fn agent_skills(rng: &mut SmallRng) -> SkillSet {
    let mut s = SkillSet::new();
    if rng.gen_bool(0.9) {
        s.insert("english".into(), rng.gen_range(2..=5));
    }
    if rng.gen_bool(0.3) || s.is_empty() {
        s.insert("spanish".into(), rng.gen_range(2..=5));
    }
    for _ in 0..4 {
        s.insert(
            format!("t{:02}", rng.gen_range(0..TOPICS)),
            rng.gen_range(1..=5),
        );
    }
    s
}

struct Bench {
    router: Router,
    rng: SmallRng,
    now: u64,
    next_call: u64,
    /// Per agent: the call they are offered or talking on.
    holding: Vec<Option<CallId>>,
    agent_ids: Vec<AgentId>,
    offers: u64,
    inputs: u64,
    last_offered: Option<usize>,
}

impl Bench {
    fn input(&mut self, input: RouterInput) {
        self.inputs += 1;
        self.router
            .handle_input(self.now, input)
            .expect("bench input accepted");
        while let Some(out) = self.router.poll_output() {
            if let RouterOutput::Offer { call, agent, .. } = out {
                self.offers += 1;
                let a: usize = agent.0[1..].parse().expect("agent index");
                self.holding[a] = Some(call);
                self.last_offered = Some(a);
            }
        }
    }

    fn join(&mut self) {
        let q = self.rng.gen_range(0..QUEUES);
        let call = CallId(format!("c{}", self.next_call));
        self.next_call += 1;
        let priority = i32::from(self.rng.gen_bool(0.05));
        self.input(RouterInput::CallerJoin {
            call,
            queue: Some(QueueId(format!("q{q:02}"))),
            attrs: CallerAttrs::default(),
            priority,
        });
    }

    fn answer_all(&mut self) {
        for a in 0..AGENTS {
            if let Some(call) = self.holding[a].clone() {
                let agent = self.agent_ids[a].clone();
                if self.router.agent_state(&agent) != Some(&AgentState::Talking) {
                    self.input(RouterInput::AgentAnswered { agent, call });
                }
            }
        }
    }
}

/// Agents scarce: `waiting` callers stay queued while agents free up and are matched.
// Benchmarks read the real clock to time themselves; the router never does.
#[allow(clippy::disallowed_methods)]
fn agents_free_up(waiting: usize, cycles: usize) -> (f64, f64, Duration) {
    let mut b = Bench {
        router: Router::new(rules()),
        rng: SmallRng::seed_from_u64(7),
        now: 0,
        next_call: 0,
        holding: vec![None; AGENTS],
        agent_ids: (0..AGENTS).map(|a| AgentId(format!("a{a}"))).collect(),
        offers: 0,
        inputs: 0,
        last_offered: None,
    };
    for _ in 0..waiting + AGENTS {
        b.join();
    }
    for a in 0..AGENTS {
        let skills = agent_skills(&mut b.rng);
        let agent = b.agent_ids[a].clone();
        b.input(RouterInput::AgentLogin {
            agent: agent.clone(),
            skills,
        });
        b.input(RouterInput::AgentReady { agent });
    }
    b.answer_all();
    let (offers0, inputs0) = (b.offers, b.inputs);
    let start = Instant::now();
    for i in 0..cycles {
        b.now += 1;
        let a = i % AGENTS;
        let agent = b.agent_ids[a].clone();
        match b.router.agent_state(&agent) {
            Some(AgentState::Talking) => {
                let call = b.holding[a].take().expect("a talking agent holds a call");
                b.input(RouterInput::CallEnded { call });
                // The freed agent was matched (the decision); they answer.
                if let Some(next) = b.holding[a].clone() {
                    b.input(RouterInput::AgentAnswered { agent, call: next });
                }
            }
            Some(AgentState::Reserved) => {
                let call = b.holding[a].clone().expect("a reserved agent holds a call");
                b.input(RouterInput::AgentAnswered { agent, call });
            }
            _ => {}
        }
        b.join();
    }
    let elapsed = start.elapsed();
    black_box(&b.router);
    let secs = elapsed.as_secs_f64();
    (
        (b.offers - offers0) as f64 / secs,
        (b.inputs - inputs0) as f64 / secs,
        elapsed,
    )
}

/// Agents plentiful: every arriving caller is matched at once to a ready agent by strategy.
#[allow(clippy::disallowed_methods)]
fn callers_arrive(cycles: usize) -> (f64, f64, Duration) {
    let mut b = Bench {
        router: Router::new(rules()),
        rng: SmallRng::seed_from_u64(11),
        now: 0,
        next_call: 0,
        holding: vec![None; AGENTS],
        agent_ids: (0..AGENTS).map(|a| AgentId(format!("a{a}"))).collect(),
        offers: 0,
        inputs: 0,
        last_offered: None,
    };
    for a in 0..AGENTS {
        let skills = agent_skills(&mut b.rng);
        let agent = b.agent_ids[a].clone();
        b.input(RouterInput::AgentLogin {
            agent: agent.clone(),
            skills,
        });
        b.input(RouterInput::AgentReady { agent });
    }
    let (offers0, inputs0) = (b.offers, b.inputs);
    let start = Instant::now();
    for _ in 0..cycles {
        b.now += 1;
        b.join();
        let Some(a) = b.last_offered.take() else {
            continue;
        };
        let call = b.holding[a].take().expect("offered");
        let agent = b.agent_ids[a].clone();
        b.input(RouterInput::AgentAnswered {
            agent,
            call: call.clone(),
        });
        b.input(RouterInput::CallEnded { call });
    }
    let elapsed = start.elapsed();
    black_box(&b.router);
    let secs = elapsed.as_secs_f64();
    (
        (b.offers - offers0) as f64 / secs,
        (b.inputs - inputs0) as f64 / secs,
        elapsed,
    )
}

fn main() {
    println!(
        "routing bench: {AGENTS} agents, {QUEUES} queues x 3 escalation levels, mixed strategies"
    );
    println!(
        "decision = one agent/caller match (Offer) chosen by the router; each cycle = call ends + \
         answer + new caller joins, outputs drained"
    );
    let cycles = 200_000;
    for waiting in [1_000, 10_000, 100_000] {
        let (decisions, inputs, elapsed) = agents_free_up(waiting, cycles);
        println!(
            "agents free up, {waiting:>6} waiting: {decisions:>10.0} decisions/s  {inputs:>10.0} inputs/s  \
             ({:.2} us/decision, {cycles} cycles in {:.2} s)",
            1e6 / decisions,
            elapsed.as_secs_f64()
        );
    }
    let (decisions, inputs, elapsed) = callers_arrive(cycles);
    println!(
        "callers arrive,      0 waiting: {decisions:>10.0} decisions/s  {inputs:>10.0} inputs/s  \
         ({:.2} us/decision, {cycles} cycles in {:.2} s)",
        1e6 / decisions,
        elapsed.as_secs_f64()
    );
}
