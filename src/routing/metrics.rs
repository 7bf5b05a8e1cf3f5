//! Queue and agent reports computed from the queue event log alone, in pure code: per queue and
//! per 15-minute interval, and per agent, over `[from_ms, to_ms)`; plus table and CSV output.
//!
//! Definitions (each event counts in the interval that contains its `at_ms`):
//! - offered: calls entering the queue (`joined`), overflow arrivals included.
//! - answered, abandoned, exited, max_wait, no_agents, overflowed (out of the queue), removed:
//!   events of that kind.
//! - hold: a call's time in the queue when it leaves it, by any way (answered, abandoned,
//!   exited, max wait, overflowed, no agents, removed). Average, 90th percentile (nearest
//!   rank: the smallest hold with at least 90% of holds at or below it) and longest.
//! - ASA (average speed of answer): the mean hold of answered calls.
//! - Service level, with T the queue's `service_level_s`:
//!   answered within T / (answered + abandoned after T). Calls abandoned within T ("short
//!   abandons") are left out, and so are calls that left any other way: the usual contact-centre
//!   definition that does not punish callers who hang up at once. "Within T" is hold <= T.
//!   None when nothing counts.
//! - AHT (average handle time): (talk time of `ended` + wrap-up time of `wrapup_done`) / ended.
//! - Abandonment rate: abandoned / offered.
//!
//! Per agent, from `agent_state` events: time in each state clipped to `[from_ms, to_ms)`;
//! events before `from_ms` only say what state an agent was in when the period starts. Before
//! an agent's first event they count as offline; the last state lasts until `to_ms` or the
//! last event of the slice, whichever is earlier (the log cannot say more). Idle is ready
//! time, offered is reserved + ringing, and occupancy = (talk + wrap-up) / (talk + wrap-up +
//! idle + offered). `calls` counts `answered` events.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::core::{AgentState, QueueEvent, QueueEventKind};
use super::rules::{AgentId, QueueId, Rules, DEFAULT_SERVICE_LEVEL_S};

/// The reporting interval.
pub const INTERVAL_MS: u64 = 15 * 60 * 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    pub interval_ms: u64,
    /// Service-level threshold per queue; others use `default_service_level_ms`.
    pub service_level_ms: BTreeMap<QueueId, u64>,
    pub default_service_level_ms: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            interval_ms: INTERVAL_MS,
            service_level_ms: BTreeMap::new(),
            default_service_level_ms: DEFAULT_SERVICE_LEVEL_S * 1000,
        }
    }
}

impl ReportOptions {
    /// 15-minute intervals and each queue's `service_level_s`.
    pub fn from_rules(rules: &Rules) -> ReportOptions {
        ReportOptions {
            service_level_ms: rules
                .queues()
                .iter()
                .map(|q| (q.id.clone(), q.service_level_s.saturating_mul(1000)))
                .collect(),
            ..ReportOptions::default()
        }
    }

    fn threshold(&self, queue: &QueueId) -> u64 {
        self.service_level_ms
            .get(queue)
            .copied()
            .unwrap_or(self.default_service_level_ms)
    }
}

/// One queue over one interval or the whole period. Sums are kept so that figures can be
/// compared exactly and merged; the ratios are methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub offered: u64,
    pub agent_offers: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub overflowed: u64,
    pub exited: u64,
    pub max_wait: u64,
    pub no_agents: u64,
    pub removed: u64,
    pub ring_no_answer: u64,
    pub rejected: u64,
    pub ended: u64,
    pub answered_within_sl: u64,
    pub abandoned_after_sl: u64,
    pub answered_hold_ms: u64,
    /// Calls that left the queue (any way) and the sum of their holds.
    pub holds: u64,
    pub hold_ms: u64,
    pub p90_hold_ms: Option<u64>,
    pub longest_wait_ms: u64,
    pub talk_ms: u64,
    pub wrapup_ms: u64,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl QueueStats {
    /// answered within T / (answered + abandoned after T).
    pub fn service_level(&self) -> Option<f64> {
        ratio(
            self.answered_within_sl,
            self.answered + self.abandoned_after_sl,
        )
    }

    pub fn asa_ms(&self) -> Option<f64> {
        ratio(self.answered_hold_ms, self.answered)
    }

    pub fn avg_hold_ms(&self) -> Option<f64> {
        ratio(self.hold_ms, self.holds)
    }

    pub fn aht_ms(&self) -> Option<f64> {
        ratio(self.talk_ms + self.wrapup_ms, self.ended)
    }

    pub fn abandonment_rate(&self) -> Option<f64> {
        ratio(self.abandoned, self.offered)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntervalRow {
    pub queue: QueueId,
    pub start_ms: u64,
    pub stats: QueueStats,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueTotal {
    pub queue: QueueId,
    pub stats: QueueStats,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub agent: AgentId,
    pub calls: u64,
    pub talk_ms: u64,
    pub wrapup_ms: u64,
    /// Ready, waiting for a call.
    pub idle_ms: u64,
    /// Reserved or ringing.
    pub offered_ms: u64,
    pub not_ready_ms: u64,
}

impl AgentStats {
    /// (talk + wrap-up) / (talk + wrap-up + idle + offered).
    pub fn occupancy(&self) -> Option<f64> {
        let busy = self.talk_ms + self.wrapup_ms;
        ratio(busy, busy + self.idle_ms + self.offered_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub from_ms: u64,
    pub to_ms: u64,
    pub interval_ms: u64,
    /// Queue by queue, intervals in time order; intervals with no event for a queue are left
    /// out.
    pub intervals: Vec<IntervalRow>,
    /// The whole period, per queue.
    pub queues: Vec<QueueTotal>,
    pub agents: Vec<AgentStats>,
}

#[derive(Default)]
struct Acc {
    stats: QueueStats,
    holds: Vec<u64>,
}

impl Acc {
    fn hold(&mut self, h: u64) {
        self.stats.holds += 1;
        self.stats.hold_ms += h;
        self.stats.longest_wait_ms = self.stats.longest_wait_ms.max(h);
        self.holds.push(h);
    }

    fn finish(mut self) -> QueueStats {
        self.holds.sort_unstable();
        self.stats.p90_hold_ms = percentile(&self.holds, 90);
        self.stats
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() as u64 * p).div_ceil(100).max(1);
    Some(sorted[rank as usize - 1])
}

fn apply(acc: &mut Acc, e: &QueueEvent, threshold: u64) {
    let hold = e.hold_ms.unwrap_or(0);
    let s = &mut acc.stats;
    match e.kind {
        QueueEventKind::Joined => s.offered += 1,
        QueueEventKind::Offered => s.agent_offers += 1,
        QueueEventKind::RingNoAnswer => s.ring_no_answer += 1,
        QueueEventKind::Rejected => s.rejected += 1,
        QueueEventKind::OfferCancelled | QueueEventKind::AgentState => {}
        QueueEventKind::Answered => {
            s.answered += 1;
            s.answered_hold_ms += hold;
            if hold <= threshold {
                s.answered_within_sl += 1;
            }
            acc.hold(hold);
        }
        QueueEventKind::Abandoned => {
            s.abandoned += 1;
            if hold > threshold {
                s.abandoned_after_sl += 1;
            }
            acc.hold(hold);
        }
        QueueEventKind::Overflowed => {
            s.overflowed += 1;
            acc.hold(hold);
        }
        QueueEventKind::Exited => {
            s.exited += 1;
            acc.hold(hold);
        }
        QueueEventKind::MaxWait => {
            s.max_wait += 1;
            acc.hold(hold);
        }
        QueueEventKind::NoAgents => {
            s.no_agents += 1;
            acc.hold(hold);
        }
        QueueEventKind::Removed => {
            s.removed += 1;
            acc.hold(hold);
        }
        QueueEventKind::Ended => {
            s.ended += 1;
            s.talk_ms += e.talk_ms.unwrap_or(0);
        }
        QueueEventKind::WrapupDone => s.wrapup_ms += e.wrapup_ms.unwrap_or(0),
    }
}

/// Computes the report of `[from_ms, to_ms)` from `events` (in any order; ties keep slice
/// order). Pass the log from before `from_ms` too when agent state durations matter.
pub fn compute(events: &[QueueEvent], from_ms: u64, to_ms: u64, options: &ReportOptions) -> Report {
    let interval_ms = options.interval_ms.max(1);
    let mut sorted: Vec<&QueueEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.at_ms);

    let mut intervals: BTreeMap<(QueueId, u64), Acc> = BTreeMap::new();
    let mut totals: BTreeMap<QueueId, Acc> = BTreeMap::new();
    // Per agent: answered calls in range, and (current state, since) for the durations.
    let mut agents: BTreeMap<AgentId, (AgentStats, AgentState, u64)> = BTreeMap::new();
    let end = sorted.last().map_or(from_ms, |e| e.at_ms.min(to_ms));

    for e in &sorted {
        let in_range = e.at_ms >= from_ms && e.at_ms < to_ms;
        if e.kind == QueueEventKind::AgentState {
            if let (Some(agent), Some(state)) = (&e.agent, &e.state) {
                let entry = agents.entry(agent.clone()).or_insert_with(|| {
                    (
                        AgentStats {
                            agent: agent.clone(),
                            ..AgentStats::default()
                        },
                        AgentState::Offline,
                        e.at_ms,
                    )
                });
                add_state_time(&mut entry.0, &entry.1, entry.2, e.at_ms, from_ms, to_ms);
                entry.1 = state.clone();
                entry.2 = e.at_ms;
            }
            continue;
        }
        if !in_range {
            continue;
        }
        if e.kind == QueueEventKind::Answered {
            if let Some(agent) = &e.agent {
                agents
                    .entry(agent.clone())
                    .or_insert_with(|| {
                        (
                            AgentStats {
                                agent: agent.clone(),
                                ..AgentStats::default()
                            },
                            AgentState::Offline,
                            e.at_ms,
                        )
                    })
                    .0
                    .calls += 1;
            }
        }
        let Some(queue) = &e.queue else { continue };
        let threshold = options.threshold(queue);
        let start = e.at_ms - e.at_ms % interval_ms;
        apply(
            intervals.entry((queue.clone(), start)).or_default(),
            e,
            threshold,
        );
        apply(totals.entry(queue.clone()).or_default(), e, threshold);
    }

    let agents = agents
        .into_values()
        .map(|(mut stats, state, since)| {
            add_state_time(&mut stats, &state, since, end, from_ms, to_ms);
            stats
        })
        .collect();
    Report {
        from_ms,
        to_ms,
        interval_ms,
        intervals: intervals
            .into_iter()
            .map(|((queue, start_ms), acc)| IntervalRow {
                queue,
                start_ms,
                stats: acc.finish(),
            })
            .collect(),
        queues: totals
            .into_iter()
            .map(|(queue, acc)| QueueTotal {
                queue,
                stats: acc.finish(),
            })
            .collect(),
        agents,
    }
}

/// Adds the time `[since, until)` spent in `state`, clipped to `[from, to)`.
fn add_state_time(
    s: &mut AgentStats,
    state: &AgentState,
    since: u64,
    until: u64,
    from: u64,
    to: u64,
) {
    let start = since.max(from);
    let stop = until.min(to);
    if stop <= start {
        return;
    }
    let d = stop - start;
    match state {
        AgentState::Offline => {}
        AgentState::Ready => s.idle_ms += d,
        AgentState::Reserved | AgentState::Ringing => s.offered_ms += d,
        AgentState::Talking => s.talk_ms += d,
        AgentState::WrapUp => s.wrapup_ms += d,
        AgentState::NotReady(_) => s.not_ready_ms += d,
    }
}

// ---- rendering ---------------------------------------------------------------------------

/// "YYYY-MM-DD HH:MM" in UTC for milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02}")
}

fn secs(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |v| format!("{:.1}", v / 1000.0))
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |v| format!("{:.1}", v * 100.0))
}

fn queue_line(out: &mut String, queue: &str, when: &str, s: &QueueStats) {
    let _ = writeln!(
        out,
        "{queue:<14} {when:<16} {:>7} {:>8} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7}",
        s.offered,
        s.answered,
        s.abandoned,
        pct(s.service_level()),
        secs(s.asa_ms()),
        secs(s.avg_hold_ms()),
        secs(s.p90_hold_ms.map(|v| v as f64)),
        secs((s.holds > 0).then_some(s.longest_wait_ms as f64)),
        secs(s.aht_ms()),
        pct(s.abandonment_rate()),
    );
}

/// A fixed-width text table: each queue's intervals then its total, then the agents.
/// Durations in seconds, rates in percent, "-" where nothing counts.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let until = if report.to_ms == u64::MAX {
        "the end of the log".to_string()
    } else {
        utc(report.to_ms)
    };
    let _ = writeln!(
        out,
        "Queues from {} to {until} (UTC), {}-minute intervals",
        utc(report.from_ms),
        report.interval_ms / 60_000
    );
    let _ = writeln!(
        out,
        "{:<14} {:<16} {:>7} {:>8} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "queue",
        "interval",
        "offered",
        "answered",
        "abandoned",
        "SL%",
        "ASA s",
        "hold s",
        "p90 s",
        "longest",
        "AHT s",
        "aband%"
    );
    for total in &report.queues {
        for row in report.intervals.iter().filter(|r| r.queue == total.queue) {
            queue_line(&mut out, &row.queue.0, &utc(row.start_ms), &row.stats);
        }
        queue_line(&mut out, &total.queue.0, "total", &total.stats);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "agent", "calls", "talk s", "wrap s", "idle s", "offered s", "n/ready s", "occupancy%"
    );
    for a in &report.agents {
        let _ = writeln!(
            out,
            "{:<16} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            a.agent.0,
            a.calls,
            secs(Some(a.talk_ms as f64)),
            secs(Some(a.wrapup_ms as f64)),
            secs(Some(a.idle_ms as f64)),
            secs(Some(a.offered_ms as f64)),
            secs(Some(a.not_ready_ms as f64)),
            pct(a.occupancy()),
        );
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.4}"))
}

fn csv_queue_row(
    out: &mut String,
    scope: &str,
    queue: &QueueId,
    start: Option<u64>,
    s: &QueueStats,
) {
    let _ = writeln!(
        out,
        "{scope},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        csv_field(&queue.0),
        start.map_or_else(String::new, |v| v.to_string()),
        start.map_or_else(String::new, utc),
        s.offered,
        s.answered,
        s.abandoned,
        s.overflowed,
        s.exited,
        s.max_wait,
        s.no_agents,
        opt(s.service_level()),
        opt(s.asa_ms()),
        opt(s.avg_hold_ms()),
        s.p90_hold_ms.map_or_else(String::new, |v| v.to_string()),
        if s.holds > 0 {
            s.longest_wait_ms.to_string()
        } else {
            String::new()
        },
        opt(s.aht_ms()),
        opt(s.abandonment_rate()),
        s.ended,
    );
}

/// CSV in two blocks separated by an empty line, each with its header: queue rows (scope
/// `interval` or `total`), then agent rows. Durations in ms, ratios as fractions; empty
/// where nothing counts.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::from(
        "scope,queue,interval_start_ms,interval_start_utc,offered,answered,abandoned,overflowed,\
         exited,max_wait,no_agents,service_level,asa_ms,avg_hold_ms,p90_hold_ms,longest_wait_ms,\
         aht_ms,abandonment_rate,ended\n",
    );
    for total in &report.queues {
        for row in report.intervals.iter().filter(|r| r.queue == total.queue) {
            csv_queue_row(
                &mut out,
                "interval",
                &row.queue,
                Some(row.start_ms),
                &row.stats,
            );
        }
        csv_queue_row(&mut out, "total", &total.queue, None, &total.stats);
    }
    out.push_str("\nagent,calls,talk_ms,wrapup_ms,idle_ms,offered_ms,not_ready_ms,occupancy\n");
    for a in &report.agents {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&a.agent.0),
            a.calls,
            a.talk_ms,
            a.wrapup_ms,
            a.idle_ms,
            a.offered_ms,
            a.not_ready_ms,
            opt(a.occupancy()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::core::CallId;
    use super::*;

    fn ev(at: u64, kind: QueueEventKind, call: &str, queue: &str) -> QueueEvent {
        let mut e = QueueEvent::new(at, kind);
        e.call = Some(CallId(call.into()));
        e.queue = Some(QueueId(queue.into()));
        e
    }

    fn with_hold(mut e: QueueEvent, hold: u64) -> QueueEvent {
        e.hold_ms = Some(hold);
        e
    }

    fn agent_state(at: u64, agent: &str, state: AgentState) -> QueueEvent {
        let mut e = QueueEvent::new(at, QueueEventKind::AgentState);
        e.agent = Some(AgentId(agent.into()));
        e.state = Some(state);
        e
    }

    /// Ten calls in queue q, all in the first interval: holds 10..=100 s for 1..=8 answered,
    /// call 9 abandoned after 5 s (short), call 10 abandoned after 90 s.
    fn log() -> Vec<QueueEvent> {
        let mut out = Vec::new();
        for i in 1..=10u64 {
            out.push(ev(i, QueueEventKind::Joined, &format!("c{i}"), "q"));
        }
        for i in 1..=8u64 {
            let mut a = with_hold(
                ev(200_000 + i, QueueEventKind::Answered, &format!("c{i}"), "q"),
                i * 10_000,
            );
            a.agent = Some(AgentId("x".into()));
            out.push(a);
            let mut end = ev(300_000 + i, QueueEventKind::Ended, &format!("c{i}"), "q");
            end.talk_ms = Some(60_000);
            out.push(end);
            let mut w = ev(
                310_000 + i,
                QueueEventKind::WrapupDone,
                &format!("c{i}"),
                "q",
            );
            w.wrapup_ms = Some(20_000);
            out.push(w);
        }
        out.push(with_hold(
            ev(100_000, QueueEventKind::Abandoned, "c9", "q"),
            5_000,
        ));
        out.push(with_hold(
            ev(100_001, QueueEventKind::Abandoned, "c10", "q"),
            90_000,
        ));
        out
    }

    #[test]
    fn queue_figures_follow_the_documented_definitions() {
        let options = ReportOptions {
            service_level_ms: [(QueueId("q".into()), 60_000)].into(),
            ..ReportOptions::default()
        };
        let r = compute(&log(), 0, INTERVAL_MS, &options);
        let s = &r.queues[0].stats;
        assert_eq!((s.offered, s.answered, s.abandoned), (10, 8, 2));
        // Answered within 60 s: holds 10..60 s -> 6; denominator 8 answered + 1 late abandon.
        assert_eq!((s.answered_within_sl, s.abandoned_after_sl), (6, 1));
        assert!((s.service_level().unwrap() - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(s.asa_ms(), Some(45_000.0));
        // Holds: 10..80 s, 5 s, 90 s -> sorted 5,10,20,...,80,90; nearest rank 9 of 10 = 80 s.
        assert_eq!(s.p90_hold_ms, Some(80_000));
        assert_eq!(s.longest_wait_ms, 90_000);
        assert_eq!(s.avg_hold_ms(), Some((360_000.0 + 95_000.0) / 10.0));
        assert_eq!(s.aht_ms(), Some(80_000.0));
        assert_eq!(s.abandonment_rate(), Some(0.2));
        assert_eq!(r.intervals.len(), 1);
        assert_eq!(r.intervals[0].stats, *s);
        assert_eq!(r.agents[0].calls, 8);
    }

    #[test]
    fn events_fall_in_their_own_interval_and_the_range_is_half_open() {
        let mut events = log();
        events.push(ev(INTERVAL_MS, QueueEventKind::Joined, "late", "q"));
        events.push(ev(2 * INTERVAL_MS, QueueEventKind::Joined, "out", "q"));
        let r = compute(&events, 0, 2 * INTERVAL_MS, &ReportOptions::default());
        assert_eq!(r.intervals.len(), 2);
        assert_eq!(r.intervals[1].start_ms, INTERVAL_MS);
        assert_eq!(r.intervals[1].stats.offered, 1);
        assert_eq!(r.queues[0].stats.offered, 11);
        let later = compute(
            &events,
            INTERVAL_MS,
            3 * INTERVAL_MS,
            &ReportOptions::default(),
        );
        assert_eq!(later.queues[0].stats.offered, 2);
        assert_eq!(later.queues[0].stats.answered, 0);
    }

    #[test]
    fn agent_time_is_clipped_to_the_period() {
        let events = vec![
            agent_state(0, "x", AgentState::NotReady("login".into())),
            agent_state(1_000, "x", AgentState::Ready),
            agent_state(5_000, "x", AgentState::Reserved),
            agent_state(6_000, "x", AgentState::Talking),
            agent_state(16_000, "x", AgentState::WrapUp),
            agent_state(20_000, "x", AgentState::Ready),
            agent_state(30_000, "x", AgentState::Offline),
        ];
        let r = compute(&events, 2_000, 25_000, &ReportOptions::default());
        let a = &r.agents[0];
        assert_eq!(
            (
                a.idle_ms,
                a.offered_ms,
                a.talk_ms,
                a.wrapup_ms,
                a.not_ready_ms
            ),
            (3_000 + 5_000, 1_000, 10_000, 4_000, 0)
        );
        assert_eq!(a.occupancy(), Some(14_000.0 / 23_000.0));
        // The last state runs to the last event, not to the end of the period.
        let open = compute(&events[..6], 0, u64::MAX, &ReportOptions::default());
        assert_eq!(open.agents[0].idle_ms, 4_000);
    }

    #[test]
    fn rendering() {
        let mut events = log();
        events.push(agent_state(0, "x,y", AgentState::Ready));
        events.push(agent_state(400_000, "x,y", AgentState::Offline));
        let r = compute(&events, 0, INTERVAL_MS, &ReportOptions::default());
        let table = render_table(&r);
        assert!(table.contains("1970-01-01 00:00"), "{table}");
        let total = table
            .lines()
            .find(|l| l.starts_with("q ") && l.contains("total"))
            .unwrap();
        // offered, answered, abandoned, SL% (6 within 60 s of 9), ASA 45.0 s, aband% 20.0
        let cols: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(&cols[2..6], ["10", "8", "2", "66.7"], "{total}");
        assert_eq!(cols[6], "45.0");
        assert_eq!(*cols.last().unwrap(), "20.0");
        let csv = render_csv(&r);
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), row.len());
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("scope"), "interval");
        assert_eq!(col("service_level"), "0.6667");
        assert_eq!(col("p90_hold_ms"), "80000");
        assert!(csv.contains("\n\"x,y\",0,0,0,400000,0,0,0.0000\n"), "{csv}");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13");
    }
}
