//! The managers' report: queue events read back from the durable log (kind `queue`, written by
//! the engine from the routing core's decisions) and turned into per-queue, per-interval and
//! per-agent figures by the pure `routing::metrics`. Event times are the log's wall-clock times,
//! so a report spans restarts.

use super::store::{Store, StoreError};
use crate::routing::core::QueueEvent;
use crate::routing::metrics::{compute, Report, ReportOptions};
use crate::routing::rules::Rules;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Simulate(#[from] crate::routing::simulate::SimulateError),
    #[error("event log row at {at_ms} ms has an unreadable queue event: {reason}")]
    BadEvent { at_ms: i64, reason: String },
}

/// Reads the queue events of `[from_ms, to_ms)` and computes the report. `rules` gives each
/// queue's service-level threshold (the default of 60 s otherwise).
pub async fn queue_report(
    store: &Store,
    rules: Option<&Rules>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Report, ReportError> {
    let options = rules.map(ReportOptions::from_rules).unwrap_or_default();
    queue_report_with(store, &options, from_ms, to_ms).await
}

/// [`queue_report`] with the options given (the live view knows the service levels in force).
pub async fn queue_report_with(
    store: &Store,
    options: &ReportOptions,
    from_ms: i64,
    to_ms: i64,
) -> Result<Report, ReportError> {
    let events = queue_events(store, from_ms, to_ms).await?;
    Ok(compute(
        &events,
        from_ms.max(0) as u64,
        to_ms.max(0) as u64,
        options,
    ))
}

/// The routing core's queue events of `[from_ms, to_ms)` as logged, on the log's clock.
pub async fn queue_events(
    store: &Store,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<QueueEvent>, ReportError> {
    let rows = store.events_of_kind("queue", from_ms, to_ms).await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let detail = row.detail.unwrap_or_default();
        let mut event: QueueEvent =
            serde_json::from_str(&detail).map_err(|e| ReportError::BadEvent {
                at_ms: row.occurred_at_ms,
                reason: e.to_string(),
            })?;
        // The router's clock restarts with the process; the log's clock does not.
        event.at_ms = row.occurred_at_ms.max(0) as u64;
        events.push(event);
    }
    Ok(events)
}

/// The proposed rules and agents, and the rules in force (their wrap-up timers tell recorded
/// wrap-ups that were the timer's from the agent's own).
pub struct ProposedRules {
    pub rules: Rules,
    pub agents: Vec<crate::routing::rules::AgentProfile>,
    pub running: Option<Rules>,
}

/// Replays the recorded period `[from_ms, to_ms)` under proposed rules (`civicline simulate`
/// and `POST /api/v1/simulate`). Reads the warm-up before `from_ms` (callers already waiting at
/// the start) and an hour after `to_ms` (talk times of calls answered near the end); the pure
/// replay runs on a blocking thread, reporting `progress(done, total)` arrivals.
pub async fn simulate_period(
    store: &Store,
    from_ms: i64,
    to_ms: i64,
    proposed: ProposedRules,
    options: crate::routing::simulate::SimulationOptions,
    mut progress: impl FnMut(usize, usize) + Send + 'static,
) -> Result<crate::routing::simulate::SimulationReport, ReportError> {
    let read_from = from_ms - options.warmup_ms as i64;
    let events = queue_events(store, read_from, to_ms + 3_600_000).await?;
    let replay = tokio::task::spawn_blocking(move || {
        let input = crate::routing::simulate::SimulationInput {
            events: &events,
            from_ms: from_ms.max(0) as u64,
            to_ms: to_ms.max(0) as u64,
            rules: &proposed.rules,
            agents: &proposed.agents,
            actual_rules: proposed.running.as_ref(),
        };
        crate::routing::simulate::simulate(&input, &options, &mut progress)
    });
    // A panic in the replay is a bug: let it surface as one.
    Ok(replay.await.expect("the replay thread")?)
}

/// Callbacks over a period, from their `callback` events: what residents asked for and what
/// became of it (a callback that used up its attempts shows as failed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallbackSummary {
    pub requested: u64,
    pub refused_numbers: u64,
    pub attempts: u64,
    pub attempts_failed: u64,
    pub connected: u64,
    pub completed: u64,
    pub failed: u64,
}

pub async fn callback_summary(
    store: &Store,
    from_ms: i64,
    to_ms: i64,
) -> Result<CallbackSummary, ReportError> {
    let mut summary = CallbackSummary::default();
    for row in store.events_of_kind("callback", from_ms, to_ms).await? {
        match row.reason.as_deref() {
            Some("requested") => summary.requested += 1,
            Some("refused") => summary.refused_numbers += 1,
            Some("dialing") => summary.attempts += 1,
            Some("attempt_failed") => summary.attempts_failed += 1,
            Some("connected") => summary.connected += 1,
            Some("completed") => summary.completed += 1,
            Some("failed") => summary.failed += 1,
            _ => {}
        }
    }
    Ok(summary)
}

impl CallbackSummary {
    pub fn render(&self) -> String {
        format!(
            "Callbacks: {} requested, {} numbers refused by the dial plan, {} calls to residents \
             ({} unanswered or failed), {} connected, {} completed, {} given up after all attempts\n",
            self.requested,
            self.refused_numbers,
            self.attempts,
            self.attempts_failed,
            self.connected,
            self.completed,
            self.failed
        )
    }
}

/// `2026-11-27`, `2026-11-27T08:15`, `2026-11-27T08:15:30` (UTC) or unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut t = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse::<i64>().ok());
    let (hour, minute) = (t.next()??, t.next().flatten().unwrap_or(0));
    let second = t.next().flatten().unwrap_or(0);
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2026-11-27T08:15"), Some(1_795_767_300_000));
        assert_eq!(parse_time("2026-11-27T08:15:30Z"), Some(1_795_767_330_000));
        assert_eq!(parse_time("1795767300000"), Some(1_795_767_300_000));
        assert_eq!(parse_time("2026-13-01"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
