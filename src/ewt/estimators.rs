//! Expected-wait-time (EWT) estimators behind one trait, fed only what the routing engine can
//! observe: the queue event stream (`Observation`) and, when asked, a `Snapshot` of who waits
//! where, which agents are logged in with which skills and what they are doing, and the
//! staffing schedule. It owns the four baselines (LES, HOL, Asterisk's average, QL-m), the
//! civicline estimator (`Civicline`: run the current state forward in a small Monte Carlo
//! simulation) and the fallback used when an estimator has nothing to go on.
//!
//! Conventions:
//! - Time is an f64 in seconds on one clock chosen by the caller (the engine passes its
//!   `now_ms / 1000`); nothing here reads a clock.
//! - Queues are dense indices (`QueueIx`, below 64 so that skills fit a `QueueSet` bitmask);
//!   calls are `CallKey`s. The engine maps its string ids to these.
//! - An estimate is the expected *remaining* wait, from `snapshot.now` until an agent is
//!   matched to the caller, for a caller who does not hang up. `None` means "no basis";
//!   `estimate_or_fallback` turns that into the configured per-queue default.
//! - Queue discipline (as in `routing::core` when queue priorities are equal): a freed agent
//!   takes the best caller among all the queues they are skilled for, best meaning higher
//!   `priority`, then longest waiting (`joined_at`), then lower `CallKey`.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::erlang::ql_conditional_mean;

/// A queue, as a dense index below `QueueSet::MAX_QUEUES`.
pub type QueueIx = u16;

/// A call's key, unique while the engine runs.
pub type CallKey = u64;

/// A set of queues (an agent's skills), as a bitmask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueueSet(pub u64);

impl QueueSet {
    pub const MAX_QUEUES: QueueIx = 64;

    pub fn of(queues: &[QueueIx]) -> QueueSet {
        let mut set = QueueSet(0);
        for &q in queues {
            set.insert(q);
        }
        set
    }

    pub fn insert(&mut self, q: QueueIx) {
        debug_assert!(q < Self::MAX_QUEUES);
        self.0 |= 1 << q;
    }

    pub fn contains(self, q: QueueIx) -> bool {
        q < Self::MAX_QUEUES && self.0 & (1 << q) != 0
    }

    pub fn is_only(self, q: QueueIx) -> bool {
        q < Self::MAX_QUEUES && self.0 == 1 << q
    }

    pub fn iter(self) -> impl Iterator<Item = QueueIx> {
        (0..Self::MAX_QUEUES).filter(move |&q| self.contains(q))
    }
}

/// What the engine reports as it happens. Times are when the event happened.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    /// A caller entered the queue.
    Joined {
        at: f64,
        call: CallKey,
        queue: QueueIx,
    },
    /// A caller was matched with an agent after waiting `waited` seconds.
    Answered {
        at: f64,
        call: CallKey,
        queue: QueueIx,
        waited: f64,
    },
    /// A caller hung up in the queue after `waited` seconds.
    Abandoned {
        at: f64,
        call: CallKey,
        queue: QueueIx,
        waited: f64,
    },
    /// A caller left the queue another way (overflow, max wait, removed): censored patience.
    Exited {
        at: f64,
        call: CallKey,
        queue: QueueIx,
        waited: f64,
    },
    /// An agent finished a call (talk plus wrap-up, `handle` seconds) taken from `queue`.
    Completed {
        at: f64,
        call: CallKey,
        queue: QueueIx,
        handle: f64,
    },
}

impl Observation {
    pub fn at(&self) -> f64 {
        match *self {
            Observation::Joined { at, .. }
            | Observation::Answered { at, .. }
            | Observation::Abandoned { at, .. }
            | Observation::Exited { at, .. }
            | Observation::Completed { at, .. } => at,
        }
    }
}

/// A caller waiting in a queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitingCaller {
    pub call: CallKey,
    pub queue: QueueIx,
    /// When the caller joined (their original join time, kept through overflow).
    pub joined_at: f64,
    /// Queue priority and caller priority folded into one number; higher goes first.
    pub priority: i32,
}

impl WaitingCaller {
    /// True when `self` is taken before `other` by an agent skilled for both queues.
    pub fn goes_before(&self, other: &WaitingCaller) -> bool {
        (std::cmp::Reverse(self.priority), self.joined_at, self.call)
            < (
                std::cmp::Reverse(other.priority),
                other.joined_at,
                other.call,
            )
    }
}

/// What a logged-in agent is doing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AgentActivity {
    /// Ready for a call since `since`.
    Idle { since: f64 },
    /// Handling (talk or wrap-up) a call from `queue`, taken at `since`.
    Busy { since: f64, queue: QueueIx },
    /// Logged in but not taking calls (break, after-call work not tied to a queue).
    NotReady,
}

/// A logged-in agent as the estimators see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgentView {
    pub skills: QueueSet,
    pub activity: AgentActivity,
    /// Scheduled end of shift: the agent finishes the call in hand but takes no new call after
    /// this. None when not known.
    pub leaves_at: Option<f64>,
}

/// An agent the schedule says will log in at `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduledLogin {
    pub at: f64,
    pub skills: QueueSet,
    pub leaves_at: Option<f64>,
}

/// The state of the centre when an estimate is asked for. All slices are in any order.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub now: f64,
    pub waiting: &'a [WaitingCaller],
    pub agents: &'a [AgentView],
    /// Logins the staffing schedule has planned after `now` (may be empty).
    pub scheduled: &'a [ScheduledLogin],
}

impl Snapshot<'_> {
    pub fn caller(&self, caller: CallerRef) -> Option<&WaitingCaller> {
        self.waiting.iter().find(|c| c.call == caller.0)
    }

    /// Callers in the same queue who go before `who` (0 for the head of the line).
    pub fn ahead_in_queue(&self, who: &WaitingCaller) -> usize {
        self.waiting
            .iter()
            .filter(|c| c.queue == who.queue && c.goes_before(who))
            .count()
    }

    /// The head of the line of `queue`.
    pub fn head_of_line(&self, queue: QueueIx) -> Option<&WaitingCaller> {
        self.waiting
            .iter()
            .filter(|c| c.queue == queue)
            .reduce(|best, c| if c.goes_before(best) { c } else { best })
    }

    /// Agents logged in (in any activity) who are skilled for `queue`.
    pub fn staffed(&self, queue: QueueIx) -> u32 {
        self.agents
            .iter()
            .filter(|a| a.skills.contains(queue))
            .count() as u32
    }
}

/// Which caller an estimate is for: a caller in `snapshot.waiting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerRef(pub CallKey);

/// An expected-wait estimator. `observe` is called with every event, in time order;
/// `estimate` must not change state, so that every estimator can be asked about the same
/// snapshot (and the same estimator asked twice gives the same answer).
pub trait WaitEstimator {
    fn name(&self) -> &str;
    fn observe(&mut self, event: &Observation);
    /// Expected remaining wait in seconds for `caller`, or None without a basis.
    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64>;
}

/// What to say when an estimator has no basis (no history yet, or history older than
/// `stale_after_s`): a configured default per queue, else `default_s`. The default is a
/// figure the city sets from its own reports (e.g. last month's ASA for that queue); it is
/// deliberately not learned, so it is predictable when the system has just started.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    pub per_queue: BTreeMap<QueueIx, f64>,
    pub default_s: f64,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback {
            per_queue: BTreeMap::new(),
            default_s: 120.0,
        }
    }
}

impl Fallback {
    pub fn for_queue(&self, queue: QueueIx) -> f64 {
        self.per_queue
            .get(&queue)
            .copied()
            .unwrap_or(self.default_s)
    }
}

/// Where an announced figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Estimator,
    Fallback,
}

/// Asks `estimator`, and uses `fallback` when it has no basis or answers something that is not
/// a finite non-negative number (which is then treated as "no basis", not clamped).
pub fn estimate_or_fallback(
    estimator: &dyn WaitEstimator,
    snapshot: &Snapshot,
    caller: CallerRef,
    fallback: &Fallback,
) -> (f64, Source) {
    match estimator.estimate(snapshot, caller) {
        Some(w) if w.is_finite() && w >= 0.0 => (w, Source::Estimator),
        _ => {
            let queue = snapshot.caller(caller).map(|c| c.queue);
            (
                queue.map_or(fallback.default_s, |q| fallback.for_queue(q)),
                Source::Fallback,
            )
        }
    }
}

/// How long history stays usable. Baselines that use "the last hour" read `window_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryConfig {
    pub window_s: f64,
    /// LES and Asterisk's average give up (fall back) when their last answer in the queue is
    /// older than this.
    pub stale_after_s: f64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            window_s: 3600.0,
            stale_after_s: 1800.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LES

/// Last-to-enter-service: the wait of the last caller of the same queue to be answered.
#[derive(Clone, Debug, Default)]
pub struct Les {
    pub config: HistoryConfig,
    last: BTreeMap<QueueIx, (f64, f64)>,
}

impl Les {
    pub fn new(config: HistoryConfig) -> Les {
        Les {
            config,
            last: BTreeMap::new(),
        }
    }
}

impl WaitEstimator for Les {
    fn name(&self) -> &str {
        "LES"
    }

    fn observe(&mut self, event: &Observation) {
        if let Observation::Answered {
            at, queue, waited, ..
        } = *event
        {
            self.last.insert(queue, (at, waited));
        }
    }

    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64> {
        let who = snapshot.caller(caller)?;
        let (at, waited) = *self.last.get(&who.queue)?;
        (snapshot.now - at <= self.config.stale_after_s).then_some(waited)
    }
}

// ---------------------------------------------------------------------------------------------
// HOL

/// Head-of-line: the time the caller at the head of the same queue has waited so far. It
/// needs no history; for the head of the line itself it is the caller's own elapsed wait.
#[derive(Clone, Debug, Default)]
pub struct Hol;

impl WaitEstimator for Hol {
    fn name(&self) -> &str {
        "HOL"
    }

    fn observe(&mut self, _event: &Observation) {}

    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64> {
        let who = snapshot.caller(caller)?;
        let head = snapshot.head_of_line(who.queue)?;
        Some((snapshot.now - head.joined_at).max(0.0))
    }
}

// ---------------------------------------------------------------------------------------------
// Asterisk

/// Asterisk app_queue's average, as its `say_position` announces it: on every answer
/// `holdtime = (3*holdtime + wait) / 4` (`recalc_holdtime`), and the caller hears
/// `abs((holdtime + 30) - elapsed)`: the same figure whatever their position, and the absolute
/// value makes it grow again once the caller has waited longer than the average (the bug the
/// issue names). app_queue starts from 0 and never forgets; here an empty or stale history (no
/// answer for `stale_after_s`) goes to the fallback instead of announcing 0.
#[derive(Clone, Debug, Default)]
pub struct AsteriskAverage {
    pub config: HistoryConfig,
    holdtime: BTreeMap<QueueIx, (f64, f64)>,
}

impl AsteriskAverage {
    pub fn new(config: HistoryConfig) -> AsteriskAverage {
        AsteriskAverage {
            config,
            holdtime: BTreeMap::new(),
        }
    }
}

impl WaitEstimator for AsteriskAverage {
    fn name(&self) -> &str {
        "Asterisk"
    }

    fn observe(&mut self, event: &Observation) {
        if let Observation::Answered {
            at, queue, waited, ..
        } = *event
        {
            let entry = self.holdtime.entry(queue).or_insert((at, 0.0));
            entry.0 = at;
            entry.1 = (3.0 * entry.1 + waited) / 4.0;
        }
    }

    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64> {
        let who = snapshot.caller(caller)?;
        let (at, holdtime) = *self.holdtime.get(&who.queue)?;
        if snapshot.now - at > self.config.stale_after_s {
            return None;
        }
        let elapsed = (snapshot.now - who.joined_at).max(0.0);
        Some((holdtime + 30.0 - elapsed).abs())
    }
}

// ---------------------------------------------------------------------------------------------
// Windowed history shared by QL-m and civicline

/// Values with their times, kept for `window_s` after the latest observation (and at least
/// the last `min_keep`), with their sum and a sorted copy for resampling.
#[derive(Clone, Debug, Default)]
struct Window {
    window_s: f64,
    min_keep: usize,
    items: VecDeque<(f64, f64)>,
    sorted: Vec<f64>,
    sum: f64,
}

impl Window {
    fn new(window_s: f64, min_keep: usize) -> Window {
        Window {
            window_s,
            min_keep,
            ..Window::default()
        }
    }

    fn push(&mut self, at: f64, value: f64) {
        self.items.push_back((at, value));
        let i = self.sorted.partition_point(|&v| v < value);
        self.sorted.insert(i, value);
        self.sum += value;
        while self.items.len() > self.min_keep
            && self
                .items
                .front()
                .is_some_and(|&(t, _)| t < at - self.window_s)
        {
            let (_, v) = self.items.pop_front().expect("checked non-empty");
            let i = self.sorted.partition_point(|&x| x < v);
            self.sorted.remove(i);
            self.sum -= v;
        }
        if self.items.is_empty() {
            self.sum = 0.0;
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Entries newer than `since`, and their sum. Entries are in time order.
    fn since(&self, since: f64) -> (usize, f64) {
        let first = self.items.partition_point(|&(t, _)| t < since);
        let n = self.items.len() - first;
        if first == 0 {
            (n, self.sum)
        } else {
            (n, self.items.range(first..).map(|&(_, v)| v).sum())
        }
    }
}

/// Per-queue rates over the last `window_s`: service rate mu = completions / total handle
/// time, and abandonment rate theta = abandons / total time spent waiting by everyone who left
/// the queue (the maximum-likelihood rate for exponential patience with censoring by service).
#[derive(Clone, Debug, Default)]
struct QueueRates {
    handle: Window,
    /// Waits of everyone who left the queue (answered, abandoned, exited).
    waits: Window,
    /// Abandons (value 1).
    abandons: Window,
}

impl QueueRates {
    fn new(window_s: f64, handle_min_keep: usize) -> QueueRates {
        QueueRates {
            handle: Window::new(window_s, handle_min_keep),
            waits: Window::new(window_s, 0),
            abandons: Window::new(window_s, 0),
        }
    }

    fn observe(&mut self, event: &Observation) {
        match *event {
            Observation::Answered { at, waited, .. } | Observation::Exited { at, waited, .. } => {
                self.waits.push(at, waited.max(0.0));
            }
            Observation::Abandoned { at, waited, .. } => {
                self.waits.push(at, waited.max(0.0));
                self.abandons.push(at, 1.0);
            }
            Observation::Completed { at, handle, .. } if handle > 0.0 && handle.is_finite() => {
                self.handle.push(at, handle);
            }
            _ => {}
        }
    }

    /// (mu, theta) from events after `now - window`; None without a completed call.
    fn rates(&self, now: f64, window_s: f64) -> Option<(f64, f64)> {
        let since = now - window_s;
        let (n, total) = self.handle.since(since);
        if n == 0 || total <= 0.0 {
            return None;
        }
        let mu = n as f64 / total;
        let (_, exposure) = self.waits.since(since);
        let (abandons, _) = self.abandons.since(since);
        let theta = if exposure > 0.0 {
            abandons as f64 / exposure
        } else {
            0.0
        };
        Some((mu, theta))
    }
}

fn queue_entry<T>(
    map: &mut BTreeMap<QueueIx, T>,
    queue: QueueIx,
    make: impl FnOnce() -> T,
) -> &mut T {
    map.entry(queue).or_insert_with(make)
}

fn event_queue(event: &Observation) -> QueueIx {
    match *event {
        Observation::Joined { queue, .. }
        | Observation::Answered { queue, .. }
        | Observation::Abandoned { queue, .. }
        | Observation::Exited { queue, .. }
        | Observation::Completed { queue, .. } => queue,
    }
}

// ---------------------------------------------------------------------------------------------
// QL-m

/// QL-m: the Erlang-A conditional mean for a caller with `n` callers ahead in the same queue,
/// `sum_{i=0..=n} 1/(s*mu + i*theta)`, with `s` the logged-in agents skilled for the queue and
/// mu, theta estimated over the last hour of that queue's events. It treats every skilled agent
/// as dedicated to the queue, which is exactly right only for a single-skill pool.
#[derive(Clone, Debug, Default)]
pub struct QlM {
    pub config: HistoryConfig,
    rates: BTreeMap<QueueIx, QueueRates>,
}

impl QlM {
    pub fn new(config: HistoryConfig) -> QlM {
        QlM {
            config,
            rates: BTreeMap::new(),
        }
    }

    /// The estimate for `who`, also used by `Civicline` when it defers.
    fn ql(&self, snapshot: &Snapshot, who: &WaitingCaller) -> Option<f64> {
        let (mu, theta) = self
            .rates
            .get(&who.queue)?
            .rates(snapshot.now, self.config.window_s)?;
        let s = snapshot.staffed(who.queue);
        // With a free skilled agent the caller would already have been matched; the engine
        // only asks about callers who wait, so no special case for that here.
        ql_conditional_mean(snapshot.ahead_in_queue(who), s, mu, theta)
    }
}

impl WaitEstimator for QlM {
    fn name(&self) -> &str {
        "QL-m"
    }

    fn observe(&mut self, event: &Observation) {
        let window_s = self.config.window_s;
        queue_entry(&mut self.rates, event_queue(event), || {
            QueueRates::new(window_s, 0)
        })
        .observe(event);
    }

    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64> {
        let who = snapshot.caller(caller)?;
        self.ql(snapshot, who)
    }
}

// ---------------------------------------------------------------------------------------------
// Civicline

/// Patience as a piecewise-constant hazard over time-in-queue, estimated per queue from
/// abandons and exposure (time spent waiting in each bin by everyone who left the queue), with
/// exponential forgetting so that the last hour or so dominates. Unlike the single rate of
/// QL-m it captures that callers hang up mostly early or mostly late (lognormal patience).
#[derive(Clone, Debug)]
struct HazardTable {
    bin_s: f64,
    abandons: Vec<f64>,
    exposure: Vec<f64>,
    decayed_to: f64,
    tau_s: f64,
}

impl HazardTable {
    const BINS: usize = 60;

    fn new(bin_s: f64, tau_s: f64) -> HazardTable {
        HazardTable {
            bin_s,
            abandons: vec![0.0; Self::BINS],
            exposure: vec![0.0; Self::BINS],
            decayed_to: f64::NEG_INFINITY,
            tau_s,
        }
    }

    fn observe(&mut self, at: f64, waited: f64, abandoned: bool) {
        if self.decayed_to.is_finite() && at > self.decayed_to {
            let f = (-(at - self.decayed_to) / self.tau_s).exp();
            self.abandons
                .iter_mut()
                .chain(self.exposure.iter_mut())
                .for_each(|x| *x *= f);
        }
        self.decayed_to = self.decayed_to.max(at);
        let waited = waited.max(0.0);
        let mut left = waited;
        for e in self.exposure.iter_mut() {
            if left <= 0.0 {
                break;
            }
            let d = left.min(self.bin_s);
            *e += d;
            left -= d;
        }
        // Time past the last bin counts in the last (open-ended) bin.
        if left > 0.0 {
            self.exposure[Self::BINS - 1] += left;
        }
        if abandoned {
            let bin = ((waited / self.bin_s) as usize).min(Self::BINS - 1);
            self.abandons[bin] += 1.0;
        }
    }

    /// Cumulative hazard at the end of each bin, with each bin's rate shrunk towards the pooled
    /// rate (one bin's worth of pooled exposure as prior) so that sparse bins do not swing.
    fn cumulative(&self) -> Vec<f64> {
        let total_a: f64 = self.abandons.iter().sum();
        let total_e: f64 = self.exposure.iter().sum();
        let pooled = if total_e > 0.0 {
            total_a / total_e
        } else {
            0.0
        };
        let prior_e = 4.0 * self.bin_s;
        let mut cum = Vec::with_capacity(Self::BINS);
        let mut h = 0.0;
        for b in 0..Self::BINS {
            let rate = (self.abandons[b] + pooled * prior_e) / (self.exposure[b] + prior_e);
            h += rate * self.bin_s;
            cum.push(h);
        }
        cum
    }
}

/// Samples remaining patience from a cumulative hazard (as built by `HazardTable::cumulative`).
struct Patience<'a> {
    cum: &'a [f64],
    bin_s: f64,
}

impl Patience<'_> {
    fn cum_at(&self, t: f64) -> f64 {
        let x = t / self.bin_s;
        let b = x as usize;
        let last = self.cum.len() - 1;
        if b > last {
            let rate =
                (self.cum[last] - if last > 0 { self.cum[last - 1] } else { 0.0 }) / self.bin_s;
            return self.cum[last] + rate * (t - (last + 1) as f64 * self.bin_s);
        }
        let start = if b > 0 { self.cum[b - 1] } else { 0.0 };
        start + (self.cum[b] - start) * (x - b as f64)
    }

    /// Remaining patience of a caller who has waited `elapsed`: the time at which the
    /// cumulative hazard has grown by an Exp(1) draw.
    fn remaining(&self, elapsed: f64, rng: &mut SmallRng) -> f64 {
        let target = self.cum_at(elapsed) + exp1(rng);
        let last = self.cum.len() - 1;
        if target > self.cum[last] {
            let rate =
                (self.cum[last] - if last > 0 { self.cum[last - 1] } else { 0.0 }) / self.bin_s;
            if rate <= 0.0 {
                return f64::INFINITY;
            }
            return ((last + 1) as f64 * self.bin_s + (target - self.cum[last]) / rate - elapsed)
                .max(0.0);
        }
        let b = self.cum.partition_point(|&c| c < target);
        let start = if b > 0 { self.cum[b - 1] } else { 0.0 };
        let width = self.cum[b] - start;
        let frac = if width > 0.0 {
            (target - start) / width
        } else {
            0.0
        };
        ((b as f64 + frac) * self.bin_s - elapsed).max(0.0)
    }
}

/// A draw from Exp(1), from a uniform in (0, 1].
fn exp1(rng: &mut SmallRng) -> f64 {
    let u: f64 = 1.0 - rng.gen::<f64>();
    -u.ln()
}

/// Settings of the civicline estimator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CivicConfig {
    pub history: HistoryConfig,
    /// Monte Carlo runs per estimate.
    pub runs: usize,
    /// Handle times kept per queue for resampling even when older than the window.
    pub min_handle_samples: usize,
    /// Width of a patience-hazard bin.
    pub hazard_bin_s: f64,
    /// Forgetting time constant of the patience hazard.
    pub hazard_tau_s: f64,
    /// Seed mixed into every estimate's random stream (each estimate is reproducible).
    pub seed: u64,
    /// Answer with QL-m when the caller's queue is an isolated single-skill pool (see
    /// `Civicline`). Off only to measure the simulation alone.
    pub defer_single_skill: bool,
    /// Use the staffing schedule (scheduled logins, shift ends). Off for an engine without a
    /// schedule, and to measure what the schedule is worth.
    pub use_schedule: bool,
}

impl Default for CivicConfig {
    fn default() -> Self {
        CivicConfig {
            history: HistoryConfig::default(),
            runs: 24,
            min_handle_samples: 50,
            hazard_bin_s: 20.0,
            hazard_tau_s: 3600.0,
            seed: 0x311,
            defer_single_skill: true,
            use_schedule: true,
        }
    }
}

/// civicline's estimator. It runs the current state forward `runs` times and averages when
/// the caller is matched:
/// - every busy agent frees after a remaining handle time resampled from the queue's recent
///   handle times longer than the time already spent on the call (no distribution assumed);
/// - agents whose shift ends stop taking calls, and scheduled logins join at their time;
/// - every caller ahead (anyone, in any queue, who would be taken before this caller by some
///   agent) hangs up after a remaining patience drawn from the queue's hazard table;
/// - a freed agent takes the best caller among all its queues (the engine's rule), so shared
///   cross-trained agents and the load of the other queues are accounted for.
///
/// Callers who arrive later never overtake this one (equal priorities), so future arrivals
/// are not simulated; a higher-priority future arrival is a known gap.
///
/// When the caller's queue is served by a pool of single-skill agents that nobody else draws
/// on and no staffing change is scheduled, the state is an M/M/s+M-like single queue for which
/// the closed form QL-m is the optimal (and noise-free) answer, so civicline defers to it.
#[derive(Clone, Debug)]
pub struct Civicline {
    pub config: CivicConfig,
    ql: QlM,
    handle: BTreeMap<QueueIx, Window>,
    hazard: BTreeMap<QueueIx, HazardTable>,
}

impl Civicline {
    pub fn new(config: CivicConfig) -> Civicline {
        Civicline {
            config,
            ql: QlM::new(config.history),
            handle: BTreeMap::new(),
            hazard: BTreeMap::new(),
        }
    }

    /// True when `queue` is an isolated single-skill pool with no scheduled change in sight.
    fn single_skill(snapshot: &Snapshot, queue: QueueIx, use_schedule: bool) -> bool {
        let pool_ok = snapshot
            .agents
            .iter()
            .filter(|a| a.skills.contains(queue))
            .all(|a| {
                a.skills.is_only(queue)
                    && (!use_schedule || a.leaves_at.is_none_or(|t| t > snapshot.now + 3600.0))
            });
        let no_logins = !snapshot
            .scheduled
            .iter()
            .any(|l| l.skills.contains(queue) && l.at <= snapshot.now + 3600.0);
        pool_ok && no_logins
    }

    fn seed_for(&self, snapshot: &Snapshot, caller: CallerRef) -> u64 {
        // SplitMix-style mixing of the seed, the time and the call: reproducible per question.
        let mut z = self.config.seed
            ^ snapshot.now.to_bits().rotate_left(17)
            ^ caller.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Remaining handle time of a call that has lasted `elapsed`: a recent handle time of the queue
/// longer than `elapsed`, minus `elapsed`; when none is longer, the mean handle time (memoryless
/// tail). `sorted` is non-empty.
fn residual_handle(sorted: &[f64], mean: f64, elapsed: f64, rng: &mut SmallRng) -> f64 {
    let i = sorted.partition_point(|&v| v <= elapsed);
    if i < sorted.len() {
        sorted[rng.gen_range(i..sorted.len())] - elapsed
    } else {
        mean * exp1(rng)
    }
}

#[derive(Clone, Copy, PartialEq)]
struct Free {
    at: f64,
    agent: usize,
}

impl Eq for Free {}

impl Ord for Free {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Min-heap on time, then agent index for determinism.
        other
            .at
            .total_cmp(&self.at)
            .then(other.agent.cmp(&self.agent))
    }
}

impl PartialOrd for Free {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl WaitEstimator for Civicline {
    fn name(&self) -> &str {
        "civicline"
    }

    fn observe(&mut self, event: &Observation) {
        self.ql.observe(event);
        let cfg = self.config;
        match *event {
            Observation::Completed {
                at, queue, handle, ..
            } if handle > 0.0 && handle.is_finite() => {
                queue_entry(&mut self.handle, queue, || {
                    Window::new(cfg.history.window_s, cfg.min_handle_samples)
                })
                .push(at, handle);
            }
            Observation::Answered {
                at, queue, waited, ..
            }
            | Observation::Exited {
                at, queue, waited, ..
            } => {
                queue_entry(&mut self.hazard, queue, || {
                    HazardTable::new(cfg.hazard_bin_s, cfg.hazard_tau_s)
                })
                .observe(at, waited, false);
            }
            Observation::Abandoned {
                at, queue, waited, ..
            } => {
                queue_entry(&mut self.hazard, queue, || {
                    HazardTable::new(cfg.hazard_bin_s, cfg.hazard_tau_s)
                })
                .observe(at, waited, true);
            }
            _ => {}
        }
    }

    fn estimate(&self, snapshot: &Snapshot, caller: CallerRef) -> Option<f64> {
        let who = *snapshot.caller(caller)?;
        let use_schedule = self.config.use_schedule;
        let no_schedule = Snapshot {
            scheduled: &[],
            ..*snapshot
        };
        let snapshot = if use_schedule { snapshot } else { &no_schedule };
        if self.config.defer_single_skill
            && Civicline::single_skill(snapshot, who.queue, use_schedule)
        {
            return self.ql.ql(snapshot, &who);
        }
        let now = snapshot.now;
        // Everyone who goes before this caller, in the order agents would take them.
        let mut ahead: Vec<WaitingCaller> = snapshot
            .waiting
            .iter()
            .filter(|c| c.goes_before(&who))
            .copied()
            .collect();
        ahead.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.joined_at.total_cmp(&b.joined_at))
                .then(a.call.cmp(&b.call))
        });

        // The agents who can take calls, with when each first frees: idle ones now, busy ones
        // after a residual handle time (drawn per run), scheduled logins at their time.
        struct SimAgent {
            skills: QueueSet,
            leaves_at: f64,
            start: f64,
            /// (time already on the call, queue of the call) for a busy agent.
            busy: Option<(f64, QueueIx)>,
        }
        let mut agents: Vec<SimAgent> =
            Vec::with_capacity(snapshot.agents.len() + snapshot.scheduled.len());
        for a in snapshot.agents {
            let busy = match a.activity {
                AgentActivity::Idle { .. } => None,
                AgentActivity::Busy { since, queue } => Some(((now - since).max(0.0), queue)),
                AgentActivity::NotReady => continue,
            };
            let leaves_at = a
                .leaves_at
                .filter(|_| use_schedule)
                .unwrap_or(f64::INFINITY);
            agents.push(SimAgent {
                skills: a.skills,
                leaves_at,
                start: now,
                busy,
            });
        }
        for l in snapshot.scheduled.iter().filter(|l| l.at >= now) {
            agents.push(SimAgent {
                skills: l.skills,
                leaves_at: l.leaves_at.unwrap_or(f64::INFINITY),
                start: l.at,
                busy: None,
            });
        }
        if !agents.iter().any(|a| a.skills.contains(who.queue)) {
            return None;
        }

        // Handle-time samples per queue; a queue with fewer than 5 borrows everyone's.
        let needs_pool = agents
            .iter()
            .filter_map(|a| a.busy.map(|(_, q)| q))
            .chain(ahead.iter().map(|c| c.queue))
            .any(|q| self.handle.get(&q).is_none_or(|w| w.len() < 5));
        let mut pooled: Vec<f64> = Vec::new();
        if needs_pool {
            pooled = self
                .handle
                .values()
                .flat_map(|w| w.sorted.iter().copied())
                .collect();
            pooled.sort_by(f64::total_cmp);
        }
        let pooled_mean = pooled.iter().sum::<f64>() / pooled.len().max(1) as f64;
        let handle_of = |q: QueueIx| -> Option<(&[f64], f64)> {
            match self.handle.get(&q) {
                Some(w) if w.len() >= 5 => Some((&w.sorted, w.sum / w.len() as f64)),
                _ if !pooled.is_empty() => Some((&pooled, pooled_mean)),
                _ => None,
            }
        };

        // One line per queue that has callers ahead (plus the caller's own), as indices into
        // `ahead` in order; a cursor skips the ones taken or gone.
        let mut line_queues: Vec<QueueIx> = ahead
            .iter()
            .map(|c| c.queue)
            .chain(std::iter::once(who.queue))
            .collect();
        line_queues.sort_unstable();
        line_queues.dedup();
        let lines: Vec<Vec<usize>> = line_queues
            .iter()
            .map(|&q| (0..ahead.len()).filter(|&i| ahead[i].queue == q).collect())
            .collect();
        let own_line = line_queues
            .iter()
            .position(|&q| q == who.queue)
            .expect("included above");
        let cums: Vec<Vec<f64>> = line_queues
            .iter()
            .map(|q| {
                self.hazard
                    .get(q)
                    .map(HazardTable::cumulative)
                    .unwrap_or_default()
            })
            .collect();
        let line_of: Vec<usize> = ahead
            .iter()
            .map(|c| line_queues.binary_search(&c.queue).expect("listed"))
            .collect();

        let mut rng = SmallRng::seed_from_u64(self.seed_for(snapshot, caller));
        let mut heap: BinaryHeap<Free> = BinaryHeap::with_capacity(agents.len());
        let mut gone_at = vec![0.0; ahead.len()];
        let mut taken = vec![false; ahead.len()];
        let mut cursor = vec![0usize; lines.len()];
        let (mut total, mut answered_runs) = (0.0, 0usize);
        for _ in 0..self.config.runs.max(1) {
            heap.clear();
            for (i, a) in agents.iter().enumerate() {
                let at = match a.busy {
                    Some((elapsed, q)) => match handle_of(q) {
                        Some((sorted, mean)) => {
                            a.start + residual_handle(sorted, mean, elapsed, &mut rng)
                        }
                        None => return None,
                    },
                    None => a.start,
                };
                heap.push(Free { at, agent: i });
            }
            for (i, c) in ahead.iter().enumerate() {
                let cum = &cums[line_of[i]];
                gone_at[i] = if cum.is_empty() {
                    f64::INFINITY
                } else {
                    now + Patience {
                        cum,
                        bin_s: self.config.hazard_bin_s,
                    }
                    .remaining(now - c.joined_at, &mut rng)
                };
                taken[i] = false;
            }
            cursor.iter_mut().for_each(|c| *c = 0);
            let mut served_at = None;
            while let Some(Free { at, agent }) = heap.pop() {
                let a = &agents[agent];
                if at >= a.leaves_at {
                    continue;
                }
                // The best caller this agent can take: the earliest head among its lines.
                let mut best: Option<(usize, usize)> = None; // (line, index into `ahead`)
                let mut own_eligible = false;
                for (li, &q) in line_queues.iter().enumerate() {
                    if !a.skills.contains(q) {
                        continue;
                    }
                    own_eligible |= li == own_line;
                    let line = &lines[li];
                    let cur = &mut cursor[li];
                    while *cur < line.len() && (taken[line[*cur]] || gone_at[line[*cur]] <= at) {
                        *cur += 1;
                    }
                    if let Some(&i) = line.get(*cur) {
                        if best.is_none_or(|(_, b)| i < b) {
                            best = Some((li, i));
                        }
                    }
                }
                match best {
                    Some((li, i)) => {
                        taken[i] = true;
                        cursor[li] += 1;
                        let (sorted, mean) = handle_of(ahead[i].queue)?;
                        heap.push(Free {
                            at: at + residual_handle(sorted, mean, 0.0, &mut rng),
                            agent,
                        });
                    }
                    None if own_eligible => {
                        served_at = Some(at);
                        break;
                    }
                    // Nobody this agent could take comes before our caller, and nobody who
                    // arrives later will (equal priorities): it plays no further part.
                    None => {}
                }
            }
            if let Some(t) = served_at {
                total += (t - now).max(0.0);
                answered_runs += 1;
            }
        }
        // Runs where nobody ever takes the caller (everyone skilled logs out) are left out of
        // the mean; when all are, there is no basis.
        (answered_runs > 0).then(|| total / answered_runs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(call: CallKey, queue: QueueIx, joined_at: f64) -> WaitingCaller {
        WaitingCaller {
            call,
            queue,
            joined_at,
            priority: 0,
        }
    }

    fn busy(skills: &[QueueIx], since: f64, queue: QueueIx) -> AgentView {
        AgentView {
            skills: QueueSet::of(skills),
            activity: AgentActivity::Busy { since, queue },
            leaves_at: None,
        }
    }

    fn answered(at: f64, queue: QueueIx, waited: f64) -> Observation {
        Observation::Answered {
            at,
            call: 0,
            queue,
            waited,
        }
    }

    fn completed(at: f64, queue: QueueIx, handle: f64) -> Observation {
        Observation::Completed {
            at,
            call: 0,
            queue,
            handle,
        }
    }

    #[test]
    fn queue_set_and_order() {
        let s = QueueSet::of(&[0, 3]);
        assert!(s.contains(3) && !s.contains(1) && !s.contains(64));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 3]);
        assert!(QueueSet::of(&[2]).is_only(2) && !s.is_only(0));
        let a = caller(1, 0, 10.0);
        let b = caller(2, 0, 5.0);
        assert!(b.goes_before(&a) && !a.goes_before(&b));
        let vip = WaitingCaller { priority: 5, ..a };
        assert!(vip.goes_before(&b));
    }

    #[test]
    fn les_uses_last_answer_of_same_queue_and_goes_stale() {
        let mut les = Les::new(HistoryConfig::default());
        les.observe(&answered(100.0, 0, 40.0));
        les.observe(&answered(110.0, 1, 400.0));
        les.observe(&answered(120.0, 0, 70.0));
        let waiting = [caller(9, 0, 130.0)];
        let snap = Snapshot {
            now: 130.0,
            waiting: &waiting,
            agents: &[],
            scheduled: &[],
        };
        assert_eq!(les.estimate(&snap, CallerRef(9)), Some(70.0));
        let late = Snapshot {
            now: 120.0 + 1801.0,
            ..snap
        };
        assert_eq!(les.estimate(&late, CallerRef(9)), None);
        assert_eq!(les.estimate(&snap, CallerRef(1234)), None);
        // Fallback takes over with the configured per-queue default.
        let mut fb = Fallback::default();
        fb.per_queue.insert(0, 90.0);
        assert_eq!(
            estimate_or_fallback(&les, &late, CallerRef(9), &fb),
            (90.0, Source::Fallback)
        );
        assert_eq!(
            estimate_or_fallback(&les, &snap, CallerRef(9), &fb),
            (70.0, Source::Estimator)
        );
    }

    #[test]
    fn hol_is_elapsed_wait_of_head_of_own_queue() {
        let waiting = [caller(1, 0, 50.0), caller(2, 1, 10.0), caller(3, 0, 80.0)];
        let snap = Snapshot {
            now: 100.0,
            waiting: &waiting,
            agents: &[],
            scheduled: &[],
        };
        assert_eq!(Hol.estimate(&snap, CallerRef(3)), Some(50.0));
        assert_eq!(Hol.estimate(&snap, CallerRef(2)), Some(90.0));
    }

    #[test]
    fn asterisk_average_is_three_quarters_old_plus_quarter_new_minus_elapsed_in_abs() {
        let mut ast = AsteriskAverage::new(HistoryConfig::default());
        ast.observe(&answered(0.0, 0, 100.0)); // (0*3 + 100)/4 = 25
        ast.observe(&answered(1.0, 0, 25.0)); // (75 + 25)/4 = 25
        ast.observe(&answered(2.0, 0, 65.0)); // (75 + 65)/4 = 35
        let waiting = [caller(1, 0, 1.0), caller(2, 0, 2.0), caller(3, 0, 3.0)];
        let snap = |now: f64| Snapshot {
            now,
            waiting: &waiting,
            agents: &[],
            scheduled: &[],
        };
        // Same figure for every position: holdtime + 30 - elapsed.
        assert_eq!(ast.estimate(&snap(3.0), CallerRef(3)), Some(65.0));
        assert_eq!(ast.estimate(&snap(3.0), CallerRef(1)), Some(63.0));
        // Past the average the absolute value makes it grow again (app_queue's bug).
        assert_eq!(ast.estimate(&snap(101.0), CallerRef(1)), Some(35.0));
    }

    #[test]
    fn qlm_uses_rates_over_window_and_position() {
        let mut ql = QlM::new(HistoryConfig::default());
        // Old history outside the hour must not count.
        ql.observe(&completed(0.0, 0, 10_000.0));
        for i in 0..10 {
            ql.observe(&completed(4000.0 + f64::from(i), 0, 200.0));
        }
        // Waits: 2 abandons over 1000 s total waiting -> theta = 0.002.
        ql.observe(&Observation::Abandoned {
            at: 4100.0,
            call: 1,
            queue: 0,
            waited: 300.0,
        });
        ql.observe(&Observation::Abandoned {
            at: 4101.0,
            call: 2,
            queue: 0,
            waited: 200.0,
        });
        ql.observe(&answered(4102.0, 0, 500.0));
        let agents = [busy(&[0], 4000.0, 0), busy(&[0], 4000.0, 0)];
        let waiting = [caller(1, 0, 4100.0), caller(2, 0, 4150.0)];
        let snap = Snapshot {
            now: 4200.0,
            waiting: &waiting,
            agents: &agents,
            scheduled: &[],
        };
        let mu = 1.0 / 200.0;
        let expect = 1.0 / (2.0 * mu) + 1.0 / (2.0 * mu + 0.002);
        let got = ql.estimate(&snap, CallerRef(2)).unwrap();
        assert!((got - expect).abs() < 1e-9, "{got} vs {expect}");
        // No completions in the last hour: no basis.
        let later = Snapshot {
            now: 9000.0,
            ..snap
        };
        assert_eq!(ql.estimate(&later, CallerRef(2)), None);
    }

    #[test]
    fn window_keeps_sorted_copy_and_min_keep() {
        let mut w = Window::new(10.0, 2);
        for (t, v) in [(0.0, 5.0), (1.0, 1.0), (2.0, 3.0), (50.0, 4.0)] {
            w.push(t, v);
        }
        // Everything before 40 is out of the window, but two entries are kept.
        assert_eq!(w.len(), 2);
        assert_eq!(w.sorted, vec![3.0, 4.0]);
        assert!((w.sum - 7.0).abs() < 1e-12);
        assert_eq!(w.since(49.0), (1, 4.0));
    }

    #[test]
    fn hazard_table_recovers_exponential_rate() {
        let mut h = HazardTable::new(20.0, 1e12);
        // Deterministic "exponential" sample with rate 1/100 via quantiles; half abandon.
        for i in 0..2000 {
            let u = (f64::from(i) + 0.5) / 2000.0;
            let w = -100.0 * (1.0 - u).ln();
            h.observe(f64::from(i), w, i % 2 == 0);
        }
        // Observed abandon hazard = 0.5 * 1/100 everywhere.
        let cum = h.cumulative();
        let rate_early = cum[4] / (5.0 * 20.0);
        assert!((rate_early - 0.005).abs() < 0.0008, "{rate_early}");
        let p = Patience {
            cum: &cum,
            bin_s: 20.0,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|_| p.remaining(0.0, &mut rng).min(5_000.0))
            .sum::<f64>()
            / f64::from(n);
        assert!(mean > 150.0 && mean < 250.0, "{mean}");
    }

    #[test]
    fn residual_handle_is_conditional_on_elapsed() {
        let sorted = [10.0, 20.0, 30.0, 300.0];
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..100 {
            let r = residual_handle(&sorted, 90.0, 25.0, &mut rng);
            assert!(r == 5.0 || r == 275.0, "{r}");
        }
        let r = residual_handle(&sorted, 90.0, 1000.0, &mut rng);
        assert!(r > 0.0);
    }

    fn trained_civic(queues: &[QueueIx], handle: f64) -> Civicline {
        let mut c = Civicline::new(CivicConfig {
            runs: 200,
            ..CivicConfig::default()
        });
        for &q in queues {
            for i in 0..100 {
                c.observe(&completed(f64::from(i), q, handle));
                // Nobody abandons: patience hazard 0.
                c.observe(&answered(f64::from(i), q, 10.0));
            }
        }
        c
    }

    #[test]
    fn civicline_counts_shared_agents() {
        // Deterministic handle time 100 s. One agent skilled for queues 0 and 1, busy since
        // t=0, frees at 100. Two callers of queue 1 joined before our queue-0 caller, so the
        // shared agent takes them first: our caller is answered at 300, 250 s from now.
        let c = trained_civic(&[0, 1], 100.0);
        let agents = [busy(&[0, 1], 0.0, 0)];
        let waiting = [caller(1, 1, 1.0), caller(2, 1, 2.0), caller(3, 0, 50.0)];
        let snap = Snapshot {
            now: 50.0,
            waiting: &waiting,
            agents: &agents,
            scheduled: &[],
        };
        let est = c.estimate(&snap, CallerRef(3)).unwrap();
        assert!((est - 250.0).abs() < 1e-6, "{est}");
        // QL-m sees one agent and nobody ahead in queue 0: one handle time.
        let ql_only = c.ql.estimate(&snap, CallerRef(3)).unwrap();
        assert!((ql_only - 100.0).abs() < 1e-6, "{ql_only}");
    }

    #[test]
    fn civicline_uses_scheduled_logins_and_shift_ends() {
        let c = trained_civic(&[0, 1], 100.0);
        // The busy agent leaves at 60 (after this call); a new agent logs in at 120.
        let agents = [AgentView {
            leaves_at: Some(60.0),
            ..busy(&[0, 1], 0.0, 0)
        }];
        let scheduled = [ScheduledLogin {
            at: 120.0,
            skills: QueueSet::of(&[0]),
            leaves_at: None,
        }];
        let waiting = [caller(3, 0, 50.0)];
        let snap = Snapshot {
            now: 50.0,
            waiting: &waiting,
            agents: &agents,
            scheduled: &scheduled,
        };
        let est = c.estimate(&snap, CallerRef(3)).unwrap();
        assert!((est - 70.0).abs() < 1e-6, "{est}");
        // Without the login nobody can ever take the caller.
        let snap = Snapshot {
            scheduled: &[],
            ..snap
        };
        assert_eq!(c.estimate(&snap, CallerRef(3)), None);
    }

    #[test]
    fn civicline_defers_to_qlm_on_single_skill_pool() {
        let c = trained_civic(&[0], 100.0);
        let agents = [busy(&[0], 0.0, 0), busy(&[0], 10.0, 0)];
        let waiting = [caller(1, 0, 20.0), caller(2, 0, 30.0)];
        let snap = Snapshot {
            now: 40.0,
            waiting: &waiting,
            agents: &agents,
            scheduled: &[],
        };
        assert_eq!(
            c.estimate(&snap, CallerRef(2)),
            c.ql.estimate(&snap, CallerRef(2))
        );
        // Same answer asked twice (estimate is pure).
        let multi = [busy(&[0, 1], 0.0, 0), busy(&[0], 10.0, 0)];
        let snap = Snapshot {
            agents: &multi,
            ..snap
        };
        assert_eq!(
            c.estimate(&snap, CallerRef(2)),
            c.estimate(&snap, CallerRef(2))
        );
    }
}
