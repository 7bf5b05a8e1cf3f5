//! The interval report as JSON (`GET /api/v1/metrics`, the same figures as `civicline report`)
//! and the CSV exports of call records and queue events for a date range. Callers' numbers are
//! masked to their last four digits in exports: a file that leaves the building should not
//! carry them whole.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiState, RangeQuery};
use crate::routing::metrics::{QueueStats, Report, ReportOptions};
use crate::routing::rules::QueueId;
use crate::runtime::report::queue_report_with;
use crate::runtime::store::EventRow;

fn range(
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(i64, i64), ApiError> {
    match query {
        Ok(Query(q)) => q.parse(),
        Err(e) => Err(super::query_rejection(e)),
    }
}

/// Service levels from the queues in force now (the live view carries them).
fn options(state: &ApiState) -> ReportOptions {
    ReportOptions {
        service_level_ms: state
            .live
            .borrow()
            .snapshot
            .queues
            .iter()
            .map(|q| (QueueId(q.id.clone()), q.service_level_s * 1000))
            .collect(),
        ..ReportOptions::default()
    }
}

fn stats_json(s: &QueueStats) -> Value {
    json!({
        "offered": s.offered,
        "answered": s.answered,
        "abandoned": s.abandoned,
        "overflowed": s.overflowed,
        "exited": s.exited,
        "max_wait": s.max_wait,
        "no_agents": s.no_agents,
        "removed": s.removed,
        "ended": s.ended,
        "answered_within_sl": s.answered_within_sl,
        "service_level": s.service_level(),
        "asa_ms": s.asa_ms(),
        "avg_hold_ms": s.avg_hold_ms(),
        "p90_hold_ms": s.p90_hold_ms,
        "longest_wait_ms": s.longest_wait_ms,
        "aht_ms": s.aht_ms(),
        "abandonment_rate": s.abandonment_rate(),
    })
}

pub fn report_json(report: &Report) -> Value {
    json!({
        "from_ms": report.from_ms,
        "to_ms": report.to_ms,
        "interval_ms": report.interval_ms,
        "queues": report.queues.iter().map(|q| json!({
            "queue": q.queue.0,
            "total": stats_json(&q.stats),
            "intervals": report.intervals.iter().filter(|r| r.queue == q.queue).map(|r| json!({
                "start_ms": r.start_ms,
                "stats": stats_json(&r.stats),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "agents": report.agents.iter().map(|a| json!({
            "agent": a.agent.0,
            "calls": a.calls,
            "talk_ms": a.talk_ms,
            "wrapup_ms": a.wrapup_ms,
            "idle_ms": a.idle_ms,
            "offered_ms": a.offered_ms,
            "not_ready_ms": a.not_ready_ms,
            "occupancy": a.occupancy(),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/metrics?from=&to=`
pub async fn metrics(
    State(state): State<ApiState>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (from, to) = range(query)?;
    let report = queue_report_with(&state.store, &options(&state), from, to)
        .await
        .map_err(|e| match e {
            crate::runtime::report::ReportError::Store(e) => ApiError::store(e),
            other => ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                other.to_string(),
            ),
        })?;
    Ok(Json(report_json(&report)))
}

/// RFC 4180 field: quoted when it holds a comma, quote or line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `***4567`: enough to tell calls apart, not enough to call back.
pub fn mask_caller(caller: &str) -> String {
    // The user part of a URI (`sip:5551234567@host`), not the host's digits.
    let user = caller.split('@').next().unwrap_or(caller);
    let digits: Vec<char> = user.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 4 {
        return "***".into();
    }
    format!(
        "***{}",
        digits[digits.len() - 4..].iter().collect::<String>()
    )
}

fn csv_response(name: &str, body: String) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// `GET /api/v1/export/calls.csv?from=&to=`: every call event except queue events (those are
/// the other export), in log order.
pub async fn calls_csv(
    State(state): State<ApiState>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let (from, to) = range(query)?;
    let rows = state
        .store
        .events_between(None, Some("queue"), from, to)
        .await?;
    Ok(csv_response("calls.csv", calls_csv_text(&rows)))
}

/// `GET /api/v1/export/queue_events.csv?from=&to=`: the router's queue events, one per line.
pub async fn queue_events_csv(
    State(state): State<ApiState>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let (from, to) = range(query)?;
    let rows = state
        .store
        .events_between(Some("queue"), None, from, to)
        .await?;
    Ok(csv_response(
        "queue_events.csv",
        queue_events_csv_text(&rows),
    ))
}

/// The call records CSV (also `civicline export calls`).
pub fn calls_csv_text(rows: &[EventRow]) -> String {
    let mut out = String::from(
        "seq,occurred_at_ms,occurred_at_utc,call_ref,sip_call_id,kind,status_code,reason,duration_ms,caller,detail\n",
    );
    for row in rows {
        let e = &row.event;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            row.seq,
            e.occurred_at_ms,
            utc(e.occurred_at_ms),
            field(&e.call_ref),
            field(&e.sip_call_id),
            field(&e.kind),
            opt(e.status_code),
            field(e.reason.as_deref().unwrap_or("")),
            opt(e.duration_ms),
            e.caller.as_deref().map(mask_caller).unwrap_or_default(),
            field(e.detail.as_deref().unwrap_or("")),
        ));
    }
    out
}

/// The queue events CSV (also `civicline export queue-events`).
pub fn queue_events_csv_text(rows: &[EventRow]) -> String {
    let mut out = String::from(
        "seq,occurred_at_ms,occurred_at_utc,event,call_ref,queue,agent,to_queue,state,hold_ms,talk_ms,wrapup_ms,priority\n",
    );
    for row in rows {
        let detail: Value = row
            .event
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let text = |key: &str| match &detail[key] {
            Value::Null => String::new(),
            Value::String(s) => field(s),
            other => field(&other.to_string()),
        };
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            row.seq,
            row.event.occurred_at_ms,
            utc(row.event.occurred_at_ms),
            text("kind"),
            field(&row.event.call_ref),
            text("queue"),
            text("agent"),
            text("to_queue"),
            text("state"),
            text("hold_ms"),
            text("talk_ms"),
            text("wrapup_ms"),
            text("priority"),
        ));
    }
    out
}

/// Unix ms as `2026-11-27T08:15:30.123Z`.
pub fn utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rest = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_round_trips_with_parse_time() {
        for ms in [0, 1_795_767_330_000, 951_782_400_000, 1_709_164_800_123] {
            let text = utc(ms);
            let parsed = crate::runtime::report::parse_time(&text[..19]).unwrap();
            assert_eq!(parsed, ms - ms % 1000, "{text}");
        }
        assert_eq!(utc(1_795_767_330_000), "2026-11-27T08:15:30.000Z");
    }

    #[test]
    fn callers_are_masked_and_fields_quoted() {
        assert_eq!(mask_caller("sip:5551234567@host"), "***4567");
        assert_eq!(mask_caller("123"), "***");
        assert_eq!(mask_caller("5551234567"), "***4567");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
