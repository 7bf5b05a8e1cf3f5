//! How long `civicline simulate` takes to replay a recorded day: a history made by a seeded
//! load driven through the real routing core (two queues, 40 agents of whom a quarter speak
//! Spanish, 10 hours at about 520 calls an hour, exponential talk times, callers who hang up
//! after a random patience), then replayed under the same rules several times; prints calls,
//! events, the replay time (min and median) and, as a check, actual and predicted service level.
//!
//! `cargo bench --bench simulate` (release profile).

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use civicline::routing::core::{CallId, QueueEvent, Router, RouterInput, RouterOutput};
use civicline::routing::rules::{AgentId, AgentProfile, CallerAttrs, Rules};
use civicline::routing::simulate::{simulate, SimulationInput, SimulationOptions};

const HOUR: u64 = 3_600_000;
const HOURS: u64 = 10;
const AGENTS: usize = 40;
const CALLS_PER_HOUR: f64 = 520.0;

fn rules() -> Rules {
    Rules::parse(
        "skills = [\"english\", \"spanish\"]\n\
         [[queue]]\nid = \"spanish\"\nrequires = { spanish = 1 }\ncondition = 'language == \"es\"'\nwrapup_s = 20\n\
         [[queue]]\nid = \"general\"\nrequires = { english = 1 }\ncondition = 'true'\nwrapup_s = 20\n",
        std::path::Path::new("bench.toml"),
    )
    .expect("bench rules")
}

fn agents() -> Vec<AgentProfile> {
    (0..AGENTS)
        .map(|i| {
            let mut skills = vec![("english".to_string(), 3)];
            if i % 4 == 0 {
                skills.push(("spanish".to_string(), 4));
            }
            AgentProfile {
                id: AgentId(format!("a{i:02}")),
                name: format!("Agent {i}"),
                sip_user: None,
                skills: skills.into_iter().collect(),
                languages: Vec::new(),
                ha1_md5: None,
                ha1_sha256: None,
            }
        })
        .collect()
}

/// The router's own event log for a seeded day, as the engine would drive it.
fn history(rules: &Rules, agents: &[AgentProfile]) -> Vec<QueueEvent> {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut router = Router::new(rules.clone());
    let mut log = Vec::new();
    for a in agents {
        router
            .handle_input(
                0,
                RouterInput::AgentLogin {
                    agent: a.id.clone(),
                    skills: a.skills.clone(),
                },
            )
            .unwrap();
        router
            .handle_input(
                0,
                RouterInput::AgentReady {
                    agent: a.id.clone(),
                },
            )
            .unwrap();
    }
    let exp =
        |rng: &mut SmallRng, mean: f64| -> u64 { (-mean * (1.0 - rng.gen::<f64>()).ln()) as u64 };
    let mut next_arrival = 0u64;
    let mut n = 0u64;
    // (time, what): call ends and patience deadlines
    let mut ends: Vec<(u64, CallId)> = Vec::new();
    let mut patience: Vec<(u64, CallId)> = Vec::new();
    let mut now = 0u64;
    while now < HOURS * HOUR {
        if now >= next_arrival {
            n += 1;
            let call = CallId(format!("c{n}"));
            let language = if rng.gen_bool(0.2) { "es" } else { "en" };
            router
                .handle_input(
                    now,
                    RouterInput::CallerJoin {
                        call: call.clone(),
                        queue: None,
                        attrs: CallerAttrs {
                            language: language.into(),
                            ..CallerAttrs::default()
                        },
                        priority: 0,
                    },
                )
                .unwrap();
            patience.push((now + exp(&mut rng, 240_000.0), call));
            next_arrival = now + exp(&mut rng, HOUR as f64 / CALLS_PER_HOUR).max(1);
        }
        for list in [&mut ends, &mut patience] {
            let due: Vec<CallId> = list
                .iter()
                .filter(|(at, _)| *at <= now)
                .map(|(_, c)| c.clone())
                .collect();
            list.retain(|(at, _)| *at > now);
            for call in due {
                // Abandons for callers still waiting, ends for calls in progress; the router
                // refuses the rest (already answered, already gone), which is fine here.
                let _ = router.handle_input(now, RouterInput::CallerHangup { call });
            }
        }
        if router.poll_timeout().is_some_and(|t| t <= now) {
            router.handle_timeout(now);
        }
        while let Some(output) = router.poll_output() {
            match output {
                RouterOutput::Offer { call, agent, .. } => {
                    let _ = router.handle_input(now, RouterInput::AgentAnswered { agent, call });
                }
                RouterOutput::Connected { call, .. } => {
                    patience.retain(|(_, c)| *c != call);
                    ends.push((now + exp(&mut rng, 270_000.0), call));
                }
                RouterOutput::Record(event) => log.push(event),
                _ => {}
            }
        }
        now += 1000;
    }
    log
}

#[allow(clippy::disallowed_methods)] // a benchmark: the stopwatch is the point
fn main() {
    let rules = rules();
    let agents = agents();
    let started = Instant::now();
    let events = history(&rules, &agents);
    let made = started.elapsed();
    let calls = events
        .iter()
        .filter(|e| e.kind == civicline::routing::core::QueueEventKind::Joined)
        .count();
    let input = SimulationInput {
        events: &events,
        from_ms: HOUR,
        to_ms: HOURS * HOUR,
        rules: &rules,
        agents: &agents,
        actual_rules: Some(&rules),
    };
    let mut times: Vec<Duration> = Vec::new();
    let mut report = None;
    for _ in 0..7 {
        let t = Instant::now();
        report = Some(simulate(&input, &SimulationOptions::default(), &mut |_, _| {}).unwrap());
        times.push(t.elapsed());
    }
    times.sort();
    let report = report.unwrap();
    println!(
        "history: {calls} calls, {} queue events, {AGENTS} agents, {HOURS} h (made in {:.0} ms)",
        events.len(),
        made.as_secs_f64() * 1000.0
    );
    println!(
        "replay of hours 1-{HOURS} under the same rules, 7 runs: min {:.1} ms, median {:.1} ms",
        times[0].as_secs_f64() * 1000.0,
        times[3].as_secs_f64() * 1000.0
    );
    let sl = |f: &civicline::routing::simulate::Figures| {
        f.service_level
            .map_or("-".into(), |s| format!("{:.1} %", s * 100.0))
    };
    println!(
        "service level, all queues: actual {}, predicted {}",
        sl(&report.total.actual),
        sl(&report.total.predicted)
    );
}
