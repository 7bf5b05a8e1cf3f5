//! `bench ewt`: a seeded discrete-event simulator of a 311 centre and the scenarios it runs,
//! used to compare every wait estimator on the same sample paths. It owns the scenario
//! definitions, the simulation (time-varying Poisson arrivals, lognormal or exponential handle
//! times and patience, skill groups with hourly staffing, the engine's queue discipline), the
//! scoring and the printed table (`run_bench`).
//!
//! Scoring: at each arrival that finds no free skilled agent (callers answered at once are not
//! asked about: nothing is announced to them), every estimator is asked for that caller's
//! wait, through the same `Fallback`. The primary figures compare with the realised wait of
//! callers who were then served. Abandoned callers have no realised wait; they are left out
//! of the primary figures, and a secondary RASE also scores them against their *potential*
//! wait: the time at which an agent skilled for their queue first took a caller who joined
//! after them, or went idle, which under this discipline is exactly when they would have been
//! answered had they stayed (nobody ahead of them is affected by their leaving).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::estimators::{
    estimate_or_fallback, AgentActivity, AgentView, AsteriskAverage, CallKey, CallerRef,
    CivicConfig, Civicline, Fallback, HistoryConfig, Hol, Les, Observation, QlM, QueueIx, QueueSet,
    ScheduledLogin, Snapshot, WaitEstimator, WaitingCaller,
};

/// A positive random duration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    Exp {
        mean: f64,
    },
    /// Lognormal with the given mean and coefficient of variation.
    LogNormal {
        mean: f64,
        cv: f64,
    },
}

impl Dist {
    pub fn sample(&self, rng: &mut SmallRng) -> f64 {
        match *self {
            Dist::Exp { mean } => mean * -(1.0 - rng.gen::<f64>()).ln(),
            Dist::LogNormal { mean, cv } => {
                let s2 = (1.0 + cv * cv).ln();
                let m = mean.ln() - s2 / 2.0;
                (m + s2.sqrt() * std_normal(rng)).exp()
            }
        }
    }

    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Exp { mean } | Dist::LogNormal { mean, .. } => mean,
        }
    }
}

/// A standard normal draw (Box-Muller; one of the pair is dropped for simplicity).
fn std_normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueueSpec {
    pub name: &'static str,
    /// Fraction of arrivals.
    pub share: f64,
    pub handle: Dist,
    pub patience: Dist,
}

/// Agents with the same skills; `staff[h]` of them are logged in during hour `h` (the last
/// figure holds after the window while the queues drain).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    pub name: &'static str,
    pub skills: Vec<QueueIx>,
    pub staff: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Surge {
    pub from_h: f64,
    pub to_h: f64,
    pub factor: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub queues: Vec<QueueSpec>,
    pub groups: Vec<GroupSpec>,
    /// Total arrivals per hour, hour by hour; its length is the window.
    pub arrivals_per_hour: Vec<f64>,
    pub surge: Option<Surge>,
    /// Callers arriving in the first hours feed the estimators but are not scored.
    pub warmup_h: f64,
    pub replications: usize,
    pub seed: u64,
    /// Scored against the ">= 10% RASE ahead" target.
    pub multi_skill: bool,
    /// Informational civicline variants to run as well.
    pub variants: Variants,
}

impl Scenario {
    fn hours(&self) -> usize {
        self.arrivals_per_hour.len()
    }

    fn rate_at(&self, t: f64) -> f64 {
        let h = ((t / 3600.0) as usize).min(self.hours() - 1);
        let surge = match &self.surge {
            Some(s) if t >= s.from_h * 3600.0 && t < s.to_h * 3600.0 => s.factor,
            _ => 1.0,
        };
        self.arrivals_per_hour[h] * surge / 3600.0
    }

    /// The same centre at `f` times the volume and staff, over the first `hours` hours: for
    /// quick runs.
    pub fn scaled(&self, f: f64, hours: usize, replications: usize) -> Scenario {
        let hours = hours.min(self.hours()).max(1);
        let mut s = self.clone();
        s.arrivals_per_hour = s.arrivals_per_hour[..hours].iter().map(|a| a * f).collect();
        for g in &mut s.groups {
            g.staff = g.staff[..hours.min(g.staff.len())]
                .iter()
                .map(|&n| ((f64::from(n) * f).round() as u32).max(1))
                .collect();
        }
        s.replications = replications;
        s.warmup_h = s.warmup_h.min(hours as f64 / 3.0);
        s
    }
}

fn group(name: &'static str, skills: &[QueueIx], peak: u32, profile: &[f64]) -> GroupSpec {
    GroupSpec {
        name,
        skills: skills.to_vec(),
        staff: profile
            .iter()
            .map(|p| (f64::from(peak) * p).round() as u32)
            .collect(),
    }
}

/// The scenarios of `bench ewt`.
pub fn scenarios() -> Vec<Scenario> {
    let lognormal = |mean: f64, cv: f64| Dist::LogNormal { mean, cv };
    // Small city: ~1,500 calls a day, 8 busiest hours simulated, one queue, 12 at peak.
    let small = Scenario {
        name: "small city",
        description: "one queue, ~1,500 calls/day (8 busiest hours), 9-12 agents by hour",
        queues: vec![QueueSpec {
            name: "311",
            share: 1.0,
            handle: lognormal(240.0, 0.8),
            patience: lognormal(300.0, 1.0),
        }],
        groups: vec![GroupSpec {
            name: "all",
            skills: vec![0],
            staff: vec![10, 12, 12, 12, 11, 12, 11, 9],
        }],
        arrivals_per_hour: vec![120.0, 160.0, 175.0, 165.0, 145.0, 160.0, 140.0, 115.0],
        surge: None,
        warmup_h: 1.0,
        replications: 16,
        seed: 11,
        multi_skill: false,
        variants: Variants {
            pure_sim: true,
            no_schedule: false,
        },
    };
    // Large city: ~30,000 calls a day; a 5-hour window around the peak.
    let profile = [0.86, 0.97, 1.0, 0.93, 0.86];
    let arrivals = vec![1900.0, 2250.0, 2400.0, 2200.0, 1950.0];
    let large_queues = vec![
        QueueSpec {
            name: "general",
            share: 0.5,
            handle: lognormal(300.0, 0.9),
            patience: lognormal(360.0, 1.0),
        },
        QueueSpec {
            name: "sanitation",
            share: 0.2,
            handle: lognormal(240.0, 0.8),
            patience: lognormal(300.0, 1.0),
        },
        QueueSpec {
            name: "transport",
            share: 0.15,
            handle: lognormal(270.0, 0.8),
            patience: lognormal(300.0, 1.0),
        },
        QueueSpec {
            name: "spanish",
            share: 0.15,
            handle: lognormal(360.0, 0.9),
            patience: lognormal(420.0, 1.0),
        },
    ];
    let large_groups = |scale: f64| {
        let p: Vec<f64> = profile.iter().map(|x| x * scale).collect();
        vec![
            group("general", &[0], 62, &p),
            group("sanitation", &[1], 20, &p),
            group("transport", &[2], 16, &p),
            group("bilingual", &[3, 0], 30, &p),
            group("cross G+S+T", &[0, 1, 2], 50, &p),
            group("cross all", &[0, 1, 2, 3], 22, &p),
        ]
    };
    let large = Scenario {
        name: "large city",
        description: "4 queues, ~30,000 calls/day (5 peak hours), 6 skill groups, ~200 agents",
        queues: large_queues.clone(),
        groups: large_groups(1.0),
        arrivals_per_hour: arrivals.clone(),
        surge: None,
        warmup_h: 1.0,
        replications: 4,
        seed: 22,
        multi_skill: true,
        variants: Variants::default(),
    };
    let surge = Scenario {
        name: "surge",
        description: "large city, arrivals x1.8 for 3 hours (hours 1-4), staffing unchanged",
        surge: Some(Surge {
            from_h: 1.0,
            to_h: 4.0,
            factor: 1.8,
        }),
        seed: 33,
        ..large.clone()
    };
    let under = Scenario {
        name: "understaffed",
        description: "large city at 80% staffing, shorter patience: heavy abandonment",
        queues: large_queues
            .iter()
            .map(|q| QueueSpec {
                patience: lognormal(q.patience.mean() * 0.5, 1.0),
                ..q.clone()
            })
            .collect(),
        groups: large_groups(0.8),
        seed: 44,
        ..large.clone()
    };
    let mmsm = Scenario {
        name: "M/M/s+M",
        description: "one queue, Poisson 300/h, exp. handle 240 s, exp. patience 300 s, 20 agents",
        queues: vec![QueueSpec {
            name: "q",
            share: 1.0,
            handle: Dist::Exp { mean: 240.0 },
            patience: Dist::Exp { mean: 300.0 },
        }],
        groups: vec![GroupSpec {
            name: "all",
            skills: vec![0],
            staff: vec![20],
        }],
        arrivals_per_hour: vec![300.0; 8],
        surge: None,
        warmup_h: 1.0,
        replications: 8,
        seed: 55,
        multi_skill: false,
        variants: Variants {
            pure_sim: true,
            no_schedule: false,
        },
    };
    vec![small, large, surge, under, mmsm]
}

// ---------------------------------------------------------------------------------------------
// The simulation

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ev {
    Arrival,
    Abandon(usize),
    Done(usize),
    ShiftStart(usize),
    ShiftEnd(usize),
}

#[derive(Clone, Copy, Debug)]
struct Timed {
    at: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Timed {}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.total_cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AgentState {
    Off,
    Idle {
        since: f64,
    },
    Busy {
        since: f64,
        queue: QueueIx,
        call: usize,
    },
}

#[derive(Clone, Debug)]
struct Agent {
    skills: QueueSet,
    start: f64,
    end: Option<f64>,
    state: AgentState,
}

#[derive(Clone, Debug)]
struct Call {
    queue: QueueIx,
    arrived: f64,
    answered: Option<f64>,
    /// Set when the caller abandoned; the potential wait once known.
    abandoned: bool,
    potential: Option<f64>,
    /// Estimates, one per estimator, when the caller was asked about.
    estimates: Option<Vec<f64>>,
}

/// One scored caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub replication: usize,
    pub hour: usize,
    pub queue: QueueIx,
    pub estimates: Vec<f64>,
    /// Realised wait of a served caller.
    pub realised: Option<f64>,
    /// Potential wait of an abandoned caller.
    pub potential: Option<f64>,
}

/// Agents' shifts from the hourly staffing: last in, first out within each group.
fn shifts(s: &Scenario) -> Vec<Agent> {
    let mut agents = Vec::new();
    for g in &s.groups {
        let skills = QueueSet::of(&g.skills);
        let mut on: Vec<usize> = Vec::new();
        for (h, &n) in g.staff.iter().enumerate() {
            let t = h as f64 * 3600.0;
            while on.len() < n as usize {
                on.push(agents.len());
                agents.push(Agent {
                    skills,
                    start: t,
                    end: None,
                    state: AgentState::Off,
                });
            }
            while on.len() > n as usize {
                let a = on.pop().expect("non-empty");
                agents[a].end = Some(t);
            }
        }
    }
    agents
}

/// Which informational civicline variants run besides the real one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Variants {
    /// civicline without deferral to QL-m on single-skill pools.
    pub pure_sim: bool,
    /// civicline without the staffing schedule.
    pub no_schedule: bool,
}

/// The estimators of the bench, in table order: the four baselines, the variants, civicline.
fn estimators(variants: Variants, seed: u64) -> Vec<Box<dyn WaitEstimator + Send>> {
    let history = HistoryConfig::default();
    let mut v: Vec<Box<dyn WaitEstimator + Send>> = vec![
        Box::new(Les::new(history)),
        Box::new(Hol),
        Box::new(AsteriskAverage::new(history)),
        Box::new(QlM::new(history)),
    ];
    if variants.no_schedule {
        v.push(Box::new(Named(
            "civicline (no schedule)",
            Civicline::new(CivicConfig {
                use_schedule: false,
                seed,
                ..CivicConfig::default()
            }),
        )));
    }
    if variants.pure_sim {
        v.push(Box::new(Named(
            "civicline (sim only)",
            Civicline::new(CivicConfig {
                defer_single_skill: false,
                seed,
                ..CivicConfig::default()
            }),
        )));
    }
    v.push(Box::new(Civicline::new(CivicConfig {
        seed,
        ..CivicConfig::default()
    })));
    v
}

/// An estimator under another name.
struct Named<E>(&'static str, E);

impl<E: WaitEstimator> WaitEstimator for Named<E> {
    fn name(&self) -> &str {
        self.0
    }

    fn observe(&mut self, event: &Observation) {
        self.1.observe(event);
    }

    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64> {
        self.1.estimate(snapshot, caller)
    }
}

/// Names of the estimators run on `s`, in table order.
pub fn estimator_names(s: &Scenario) -> Vec<String> {
    estimators(s.variants, 0)
        .iter()
        .map(|e| e.name().to_string())
        .collect()
}

struct World<'a> {
    s: &'a Scenario,
    rng: SmallRng,
    now: f64,
    seq: u64,
    events: BinaryHeap<Timed>,
    agents: Vec<Agent>,
    calls: Vec<Call>,
    waiting: Vec<WaitingCaller>,
    /// Abandoned callers whose potential wait is not known yet, per queue, in arrival order.
    pending: Vec<VecDeque<usize>>,
    logins: Vec<ScheduledLogin>,
    estimators: Vec<Box<dyn WaitEstimator + Send>>,
    fallback: Fallback,
    views: Vec<AgentView>,
}

impl World<'_> {
    fn schedule(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.events.push(Timed {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn observe(&mut self, o: Observation) {
        for e in &mut self.estimators {
            e.observe(&o);
        }
    }

    /// Agent `a` takes call `c` now.
    fn assign(&mut self, a: usize, c: usize) {
        let now = self.now;
        let call = &mut self.calls[c];
        call.answered = Some(now);
        let (queue, waited) = (call.queue, now - call.arrived);
        self.agents[a].state = AgentState::Busy {
            since: now,
            queue,
            call: c,
        };
        self.observe(Observation::Answered {
            at: now,
            call: c as CallKey,
            queue,
            waited,
        });
        let handle = self.s.queues[queue as usize].handle.sample(&mut self.rng);
        self.schedule(now + handle, Ev::Done(a));
    }

    /// Agent `a` is free now: take the best waiting caller it is skilled for, or go idle.
    fn free(&mut self, a: usize) {
        let skills = self.agents[a].skills;
        let best = self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| skills.contains(w.queue))
            .reduce(|b, x| if x.1.goes_before(b.1) { x } else { b })
            .map(|(i, w)| (i, *w));
        // Abandoned callers who would have been taken now (before `best`) had they stayed.
        for q in skills.iter() {
            let pending = &mut self.pending[q as usize];
            while let Some(&p) = pending.front() {
                let before = best.is_none_or(|(_, w)| self.calls[p].arrived < w.joined_at);
                if !before {
                    break;
                }
                self.calls[p].potential = Some(self.now - self.calls[p].arrived);
                pending.pop_front();
            }
        }
        match best {
            Some((i, w)) => {
                self.waiting.swap_remove(i);
                self.assign(a, w.call as usize);
            }
            None => self.agents[a].state = AgentState::Idle { since: self.now },
        }
    }

    fn arrival(&mut self) {
        let now = self.now;
        let u: f64 = self.rng.gen();
        let mut acc = 0.0;
        let mut queue = (self.s.queues.len() - 1) as QueueIx;
        for (q, spec) in self.s.queues.iter().enumerate() {
            acc += spec.share;
            if u < acc {
                queue = q as QueueIx;
                break;
            }
        }
        let c = self.calls.len();
        self.calls.push(Call {
            queue,
            arrived: now,
            answered: None,
            abandoned: false,
            potential: None,
            estimates: None,
        });
        self.observe(Observation::Joined {
            at: now,
            call: c as CallKey,
            queue,
        });
        // The longest-idle skilled agent takes the call at once.
        let idle = self
            .agents
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a.state {
                AgentState::Idle { since } if a.skills.contains(queue) => Some((i, since)),
                _ => None,
            })
            .min_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((a, _)) = idle {
            self.assign(a, c);
            return;
        }
        self.waiting.push(WaitingCaller {
            call: c as CallKey,
            queue,
            joined_at: now,
            priority: 0,
        });
        let patience = self.s.queues[queue as usize].patience.sample(&mut self.rng);
        self.schedule(now + patience, Ev::Abandon(c));
        // Ask every estimator about this caller, on the same snapshot.
        self.views.clear();
        for a in &self.agents {
            let activity = match a.state {
                AgentState::Off => continue,
                AgentState::Idle { since } => AgentActivity::Idle { since },
                AgentState::Busy { since, queue, .. } => AgentActivity::Busy { since, queue },
            };
            self.views.push(AgentView {
                skills: a.skills,
                activity,
                leaves_at: a.end,
            });
        }
        let from = self.logins.partition_point(|l| l.at <= now);
        let to = self.logins.partition_point(|l| l.at <= now + 3600.0);
        let snapshot = Snapshot {
            now,
            waiting: &self.waiting,
            agents: &self.views,
            scheduled: &self.logins[from..to],
        };
        let estimates = self
            .estimators
            .iter()
            .map(|e| {
                estimate_or_fallback(
                    e.as_ref(),
                    &snapshot,
                    CallerRef(c as CallKey),
                    &self.fallback,
                )
                .0
            })
            .collect();
        self.calls[c].estimates = Some(estimates);
    }

    fn run(&mut self) {
        let end = self.s.hours() as f64 * 3600.0;
        let max_rate = (0..self.s.hours())
            .map(|h| self.s.rate_at(h as f64 * 3600.0 + 1.0))
            .chain(
                self.s
                    .surge
                    .iter()
                    .map(|g| self.s.rate_at(g.from_h * 3600.0)),
            )
            .fold(0.0, f64::max);
        for a in 0..self.agents.len() {
            let (start, stop) = (self.agents[a].start, self.agents[a].end);
            self.schedule(start, Ev::ShiftStart(a));
            if let Some(t) = stop {
                self.schedule(t, Ev::ShiftEnd(a));
            }
        }
        // Arrivals by thinning a Poisson stream at the peak rate.
        let s = self.s;
        let next_arrival = |rng: &mut SmallRng, from: f64| -> Option<f64> {
            let mut t = from;
            loop {
                t += -(1.0 - rng.gen::<f64>()).ln() / max_rate;
                if t >= end {
                    return None;
                }
                if rng.gen::<f64>() * max_rate < s.rate_at(t) {
                    return Some(t);
                }
            }
        };
        if let Some(t) = next_arrival(&mut self.rng, 0.0) {
            self.schedule(t, Ev::Arrival);
        }
        while let Some(Timed { at, ev, .. }) = self.events.pop() {
            self.now = at;
            match ev {
                Ev::Arrival => {
                    self.arrival();
                    if let Some(t) = next_arrival(&mut self.rng, at) {
                        self.schedule(t, Ev::Arrival);
                    }
                }
                Ev::Abandon(c) => {
                    if let Some(i) = self.waiting.iter().position(|w| w.call == c as CallKey) {
                        self.waiting.swap_remove(i);
                        let call = &mut self.calls[c];
                        call.abandoned = true;
                        let (queue, waited) = (call.queue, at - call.arrived);
                        self.pending[queue as usize].push_back(c);
                        self.observe(Observation::Abandoned {
                            at,
                            call: c as CallKey,
                            queue,
                            waited,
                        });
                    }
                }
                Ev::Done(a) => {
                    if let AgentState::Busy { since, queue, call } = self.agents[a].state {
                        self.observe(Observation::Completed {
                            at,
                            call: call as CallKey,
                            queue,
                            handle: at - since,
                        });
                    }
                    if self.agents[a].end.is_some_and(|e| at >= e) {
                        self.agents[a].state = AgentState::Off;
                    } else {
                        self.free(a);
                    }
                }
                Ev::ShiftStart(a) => self.free(a),
                Ev::ShiftEnd(a) => {
                    if matches!(self.agents[a].state, AgentState::Idle { .. }) {
                        self.agents[a].state = AgentState::Off;
                    }
                }
            }
        }
    }
}

/// Runs one replication and returns its scored callers.
pub fn replicate(s: &Scenario, replication: usize) -> Vec<Record> {
    let seed = s
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(replication as u64);
    let agents = shifts(s);
    let mut logins: Vec<ScheduledLogin> = agents
        .iter()
        .filter(|a| a.start > 0.0)
        .map(|a| ScheduledLogin {
            at: a.start,
            skills: a.skills,
            leaves_at: a.end,
        })
        .collect();
    logins.sort_by(|x, y| x.at.total_cmp(&y.at));
    let mut world = World {
        s,
        rng: SmallRng::seed_from_u64(seed),
        now: 0.0,
        seq: 0,
        events: BinaryHeap::new(),
        agents,
        calls: Vec::new(),
        waiting: Vec::new(),
        pending: vec![VecDeque::new(); s.queues.len()],
        logins,
        estimators: estimators(s.variants, seed),
        fallback: Fallback::default(),
        views: Vec::new(),
    };
    world.run();
    let warmup = s.warmup_h * 3600.0;
    world
        .calls
        .into_iter()
        .filter(|c| c.arrived >= warmup)
        .filter_map(|c| {
            let estimates = c.estimates?;
            Some(Record {
                replication,
                hour: (c.arrived / 3600.0) as usize,
                queue: c.queue,
                estimates,
                realised: c.answered.map(|t| t - c.arrived),
                potential: if c.abandoned { c.potential } else { None },
            })
        })
        .collect()
}

/// Runs every replication of `s` on up to two threads; records in replication order.
pub fn run_scenario(s: &Scenario) -> Vec<Record> {
    let reps: Vec<usize> = (0..s.replications).collect();
    let mut out: Vec<Vec<Record>> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = reps
            .chunks(s.replications.div_ceil(2).max(1))
            .map(|chunk| {
                scope.spawn(move || chunk.iter().map(|&r| replicate(s, r)).collect::<Vec<_>>())
            })
            .collect();
        for h in handles {
            out.extend(h.join().expect("replication thread panicked"));
        }
    });
    out.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// Scoring

/// Accuracy of one estimator against realised waits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// sqrt(mean squared error) / mean realised wait.
    pub rase: f64,
    pub mae: f64,
    /// Mean of (estimate - realised).
    pub bias: f64,
    /// Share with |error| <= max(30 s, 20% of realised).
    pub hit: f64,
    pub mse: f64,
    pub n: usize,
}

/// Scores estimator `k` over (estimate, realised) pairs.
pub fn score(pairs: impl Iterator<Item = (f64, f64)>) -> Score {
    let (mut n, mut se, mut ae, mut e, mut hits, mut real) = (0usize, 0.0, 0.0, 0.0, 0usize, 0.0);
    for (est, w) in pairs {
        let err = est - w;
        n += 1;
        se += err * err;
        ae += err.abs();
        e += err;
        real += w;
        if err.abs() <= (0.2 * w).max(30.0) {
            hits += 1;
        }
    }
    let nf = n.max(1) as f64;
    let mean_real = real / nf;
    Score {
        rase: if mean_real > 0.0 {
            (se / nf).sqrt() / mean_real
        } else {
            f64::NAN
        },
        mae: ae / nf,
        bias: e / nf,
        hit: hits as f64 / nf,
        mse: se / nf,
        n,
    }
}

/// Mean difference of squared errors (estimator `a` minus `b`) over served callers, with a
/// 95% confidence half-width from batch means: one batch per (replication, hour), the
/// ratio-estimator variance over batches (callers in one batch are correlated; batches much
/// less so). Returns (mean, half-width, batches).
pub fn paired_difference(records: &[Record], a: usize, b: usize) -> (f64, f64, usize) {
    let mut batches: std::collections::BTreeMap<(usize, usize), (f64, f64)> = Default::default();
    for r in records {
        if let Some(w) = r.realised {
            let d = (r.estimates[a] - w).powi(2) - (r.estimates[b] - w).powi(2);
            let e = batches.entry((r.replication, r.hour)).or_default();
            e.0 += d;
            e.1 += 1.0;
        }
    }
    let total_d: f64 = batches.values().map(|x| x.0).sum();
    let total_n: f64 = batches.values().map(|x| x.1).sum();
    let k = batches.len();
    if k < 2 || total_n == 0.0 {
        return (total_d / total_n.max(1.0), f64::NAN, k);
    }
    let mean = total_d / total_n;
    let ss: f64 = batches.values().map(|&(d, n)| (d - mean * n).powi(2)).sum();
    let se = (k as f64 / (k as f64 - 1.0) * ss).sqrt() / total_n;
    (mean, t975(k - 1) * se, k)
}

/// Two-sided 95% Student t quantile.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        f64::NAN
    } else if df <= 30 {
        T[df - 1]
    } else {
        1.96 + 2.4 / df as f64
    }
}

/// The table for one scenario; also says whether its target was met (None: no target).
pub fn report(s: &Scenario, records: &[Record], out: &mut String) -> Option<bool> {
    let names = estimator_names(s);
    let k_civ = names.len() - 1;
    let served: Vec<&Record> = records.iter().filter(|r| r.realised.is_some()).collect();
    let abandoned = records.iter().filter(|r| r.realised.is_none()).count();
    let with_potential = records.iter().filter(|r| r.potential.is_some()).count();
    let mean_wait =
        served.iter().filter_map(|r| r.realised).sum::<f64>() / served.len().max(1) as f64;
    let _ = writeln!(out, "== {} == {}", s.name, s.description);
    let _ = writeln!(
        out,
        "   {} h simulated ({} h warm-up not scored), {} replications; {} delayed callers scored: {} served (mean wait {:.1} s), {} abandoned ({} with potential wait)",
        s.hours(),
        s.warmup_h,
        s.replications,
        records.len(),
        served.len(),
        mean_wait,
        abandoned,
        with_potential
    );
    let _ = writeln!(
        out,
        "   {:<22} {:>7} {:>8} {:>9} {:>6}   {:>17}",
        "estimator", "RASE", "MAE s", "bias s", "hit%", "RASE incl. aband."
    );
    let mut scores = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let sc = score(
            served
                .iter()
                .map(|r| (r.estimates[k], r.realised.unwrap_or(0.0))),
        );
        let all = score(
            records
                .iter()
                .filter_map(|r| Some((r.estimates[k], r.realised.or(r.potential)?))),
        );
        let _ = writeln!(
            out,
            "   {:<22} {:>7.3} {:>8.1} {:>+9.1} {:>6.1}   {:>17.3}",
            name,
            sc.rase,
            sc.mae,
            sc.bias,
            100.0 * sc.hit,
            all.rase
        );
        scores.push(sc);
    }
    // The best baseline by RASE (the first four estimators are the baselines).
    let best = (0..4)
        .min_by(|&a, &b| scores[a].rase.total_cmp(&scores[b].rase))
        .expect("four baselines");
    let gain = 1.0 - scores[k_civ].rase / scores[best].rase;
    let (d, hw, batches) = paired_difference(records, k_civ, best);
    let _ = writeln!(
        out,
        "   civicline vs best baseline ({}): RASE {:.3} vs {:.3} ({:+.1}% better); paired mean diff. of squared errors {:+.0} s^2, 95% CI [{:+.0}, {:+.0}] ({:+.1}% .. {:+.1}% of the baseline's MSE; {} batches = replication x hour)",
        names[best],
        scores[k_civ].rase,
        scores[best].rase,
        100.0 * gain,
        d,
        d - hw,
        d + hw,
        100.0 * (d - hw) / scores[best].mse,
        100.0 * (d + hw) / scores[best].mse,
        batches
    );
    let met = if s.multi_skill {
        let ok = gain >= 0.10;
        let _ = writeln!(
            out,
            "   target (multi-skill): civicline >= 10% lower RASE than the best baseline: {}",
            if ok { "MET" } else { "NOT MET" }
        );
        Some(ok)
    } else if s.queues.len() == 1 && matches!(s.queues[0].handle, Dist::Exp { .. }) {
        let ql = names.iter().position(|n| n == "QL-m").expect("QL-m runs");
        let ratio = scores[k_civ].rase / scores[ql].rase;
        let ok = ratio <= 1.02;
        let _ = writeln!(
            out,
            "   target (M/M/s+M): civicline RASE within 2% of QL-m: ratio {:.4}: {}",
            ratio,
            if ok { "MET" } else { "NOT MET" }
        );
        Some(ok)
    } else {
        None
    };
    let _ = writeln!(out);
    met
}

/// The whole `bench ewt` table. `quick` runs every scenario at reduced volume, over a shorter
/// window and with one or two replications (for tests); the full run is the one to quote.
pub fn run_bench(quick: bool) -> String {
    run_bench_with(quick, false)
}

/// `run_bench`, optionally (`ablation`) also running civicline without the staffing schedule
/// in the multi-skill scenarios, to show what the schedule contributes (slower).
pub fn run_bench_with(quick: bool, ablation: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench ewt ({}): errors are estimate - realised wait, over delayed callers who were then served;\n\
         fallback when an estimator has no basis: 120 s. Hit: |error| <= max(30 s, 20% of realised).\n",
        if quick { "quick" } else { "full" }
    );
    let mut targets = Vec::new();
    for s in scenarios() {
        let mut s = if quick {
            let f = if s.multi_skill { 0.2 } else { 1.0 };
            s.scaled(f, 3, 2)
        } else {
            s
        };
        s.variants.no_schedule |= ablation && s.multi_skill;
        let records = run_scenario(&s);
        if let Some(met) = report(&s, &records, &mut out) {
            targets.push((s.name, met));
        }
    }
    let summary: Vec<String> = targets
        .iter()
        .map(|(n, m)| format!("{n}: {}", if *m { "met" } else { "NOT met" }))
        .collect();
    let _ = writeln!(out, "targets: {}", summary.join("; "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_and_exp_have_the_stated_mean() {
        let mut rng = SmallRng::seed_from_u64(7);
        for d in [
            Dist::Exp { mean: 240.0 },
            Dist::LogNormal {
                mean: 300.0,
                cv: 0.9,
            },
        ] {
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| d.sample(&mut rng)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            assert!((mean / d.mean() - 1.0).abs() < 0.02, "{d:?}: {mean}");
            assert!(xs.iter().all(|&x| x > 0.0));
            if let Dist::LogNormal { cv, .. } = d {
                let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
                assert!(
                    (var.sqrt() / mean - cv).abs() < 0.05,
                    "cv {}",
                    var.sqrt() / mean
                );
            }
        }
    }

    #[test]
    fn shifts_follow_staffing_last_in_first_out() {
        let s = Scenario {
            groups: vec![GroupSpec {
                name: "g",
                skills: vec![0],
                staff: vec![2, 3, 1],
            }],
            ..scenarios().remove(0)
        };
        let a = shifts(&s);
        assert_eq!(a.len(), 3);
        assert_eq!((a[0].start, a[0].end), (0.0, None));
        assert_eq!((a[1].start, a[1].end), (0.0, Some(7200.0)));
        assert_eq!((a[2].start, a[2].end), (3600.0, Some(7200.0)));
    }

    #[test]
    fn score_and_paired_difference() {
        let sc = score([(10.0, 20.0), (50.0, 40.0), (100.0, 200.0)].into_iter());
        assert_eq!(sc.n, 3);
        assert!((sc.mae - (10.0 + 10.0 + 100.0) / 3.0).abs() < 1e-9);
        assert!((sc.bias - (-10.0 + 10.0 - 100.0) / 3.0).abs() < 1e-9);
        // Hits: |10| <= 30 yes, |10| <= 30 yes, |100| <= 40 no.
        assert!((sc.hit - 2.0 / 3.0).abs() < 1e-9);
        assert!((sc.rase - (10_200.0_f64 / 3.0).sqrt() / (260.0 / 3.0)).abs() < 1e-9);
        let rec = |replication, hour, a: f64, b: f64, w: f64| Record {
            replication,
            hour,
            queue: 0,
            estimates: vec![a, b],
            realised: Some(w),
            potential: None,
        };
        let records = vec![
            rec(0, 0, 10.0, 20.0, 10.0),
            rec(0, 1, 12.0, 20.0, 10.0),
            rec(1, 0, 10.0, 30.0, 10.0),
        ];
        let (d, hw, k) = paired_difference(&records, 0, 1);
        assert_eq!(k, 3);
        assert!((d - (-100.0 - 96.0 - 400.0) / 3.0).abs() < 1e-9);
        assert!(hw > 0.0);
    }

    #[test]
    fn potential_wait_of_abandoned_callers_is_recorded() {
        // Overloaded single queue: many abandon, and most get a potential wait.
        let s = Scenario {
            arrivals_per_hour: vec![400.0; 2],
            groups: vec![GroupSpec {
                name: "g",
                skills: vec![0],
                staff: vec![5],
            }],
            warmup_h: 0.5,
            replications: 1,
            ..scenarios().pop().expect("M/M/s+M")
        };
        let records = replicate(&s, 0);
        let abandoned = records.iter().filter(|r| r.realised.is_none()).count();
        let potential: Vec<f64> = records.iter().filter_map(|r| r.potential).collect();
        assert!(abandoned > 50, "{abandoned}");
        assert!(
            potential.len() * 10 >= abandoned * 8,
            "{} of {abandoned}",
            potential.len()
        );
        assert!(potential.iter().all(|&w| w > 0.0));
    }
}
