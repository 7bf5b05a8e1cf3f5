//! Prometheus `GET /metrics` in the text exposition format (0.0.4), written by hand: calls,
//! queue lengths, the queue wait histogram (holds of answered and abandoned callers, observed
//! from the engine's queue events), agents by state, transcription latency and SIP responses
//! sent by status code. Auth: a read-only token unless `[api] metrics_without_token = true`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use crate::events::{CallEvent, EventKind};

/// Upper bounds in seconds of the wait buckets (callers wait seconds to many minutes).
const WAIT_BUCKETS: &[f64] = &[
    5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0,
];
/// Upper bounds in seconds of the transcription buckets (a 10 s clip takes about 1.5 s).
const LATENCY_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];

/// A histogram that many threads observe into without a lock.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bound, observations at or below it (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    /// Above the last bound.
    over: AtomicU64,
    /// Sum in microseconds, so it stays an integer.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        match self.bounds.iter().position(|&b| seconds <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.over.load(Ordering::Relaxed)
    }

    /// `name_bucket{labels,le=".."}`, `_sum`, `_count` lines.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

impl Default for Histogram {
    /// Transcription latency buckets (the default user is `TranscribeStats`).
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// What the runtime observes for Prometheus beyond the engine's own counters.
#[derive(Debug)]
pub struct Metrics {
    pub wait_answered: Histogram,
    pub wait_abandoned: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            wait_answered: Histogram::new(WAIT_BUCKETS),
            wait_abandoned: Histogram::new(WAIT_BUCKETS),
        }
    }
}

impl Metrics {
    /// Takes the hold of answered and abandoned callers from the engine's queue events.
    pub fn observe_event(&self, event: &CallEvent) {
        if event.kind != EventKind::Queue {
            return;
        }
        let Some(detail) = event.detail.as_deref() else {
            return;
        };
        // Cheap test first: most queue events are neither.
        let histogram = if detail.contains("\"answered\"") {
            &self.wait_answered
        } else if detail.contains("\"abandoned\"") {
            &self.wait_abandoned
        } else {
            return;
        };
        let Ok(parsed) = serde_json::from_str::<crate::routing::core::QueueEvent>(detail) else {
            return;
        };
        use crate::routing::core::QueueEventKind as K;
        if let (K::Answered | K::Abandoned, Some(hold)) = (parsed.kind, parsed.hold_ms) {
            histogram.observe(hold as f64 / 1000.0);
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`
pub async fn serve(State(state): State<ApiState>) -> impl IntoResponse {
    let engine = state
        .health
        .engine
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let live = state.live.borrow().clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP civicline_calls_total Calls received since start."
    );
    let _ = writeln!(out, "# TYPE civicline_calls_total counter");
    let _ = writeln!(out, "civicline_calls_total {}", engine.calls_total);
    let _ = writeln!(out, "# HELP civicline_calls_active Calls in progress.");
    let _ = writeln!(out, "# TYPE civicline_calls_active gauge");
    let _ = writeln!(out, "civicline_calls_active {}", engine.calls_active);
    let _ = writeln!(
        out,
        "# HELP civicline_queue_waiting Callers waiting per queue."
    );
    let _ = writeln!(out, "# TYPE civicline_queue_waiting gauge");
    for q in &live.snapshot.queues {
        let _ = writeln!(
            out,
            "civicline_queue_waiting{{queue=\"{}\"}} {}",
            escape(&q.id),
            q.waiting
        );
    }
    let _ = writeln!(
        out,
        "# HELP civicline_queue_wait_seconds Callers' hold when answered or abandoned."
    );
    let _ = writeln!(out, "# TYPE civicline_queue_wait_seconds histogram");
    state.metrics.wait_answered.render(
        &mut out,
        "civicline_queue_wait_seconds",
        "outcome=\"answered\"",
    );
    state.metrics.wait_abandoned.render(
        &mut out,
        "civicline_queue_wait_seconds",
        "outcome=\"abandoned\"",
    );
    let _ = writeln!(out, "# HELP civicline_agents Agents per state.");
    let _ = writeln!(out, "# TYPE civicline_agents gauge");
    let mut states: std::collections::BTreeMap<&str, u64> = [
        "offline",
        "ready",
        "reserved",
        "ringing",
        "talking",
        "wrap_up",
        "not_ready",
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    for a in &live.snapshot.agents {
        // not_ready(reason) counts as not_ready: reasons are free text, not a label set.
        let base = a.state.split('(').next().unwrap_or("");
        if let Some(n) = states.get_mut(base) {
            *n += 1;
        }
    }
    for (s, n) in states {
        let _ = writeln!(out, "civicline_agents{{state=\"{s}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP civicline_transcription_seconds Time whisper took per recording."
    );
    let _ = writeln!(out, "# TYPE civicline_transcription_seconds histogram");
    state
        .health
        .speech
        .stats
        .latency
        .render(&mut out, "civicline_transcription_seconds", "");
    let _ = writeln!(
        out,
        "# HELP civicline_sip_responses_total SIP responses sent, by status code (4xx-6xx are the errors)."
    );
    let _ = writeln!(out, "# TYPE civicline_sip_responses_total counter");
    for (code, n) in &engine.responses_sent {
        let _ = writeln!(out, "civicline_sip_responses_total{{code=\"{code}\"}} {n}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        let mut out = String::new();
        h.render(&mut out, "x", "q=\"a\"");
        assert!(out.contains("x_bucket{q=\"a\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{q=\"a\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{q=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{q=\"a\"} 55.5\n"), "{out}");
        assert!(out.contains("x_count{q=\"a\"} 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
