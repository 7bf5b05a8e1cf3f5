//! Live state for the wallboard and the API (shape: /work/notes/contract-live.md): the engine
//! publishes its pure [`EngineLive`] view; the publisher task here adds wall-clock times,
//! agents' time in state and "today" figures, and publishes one serialized snapshot that every
//! reader and SSE stream shares. Also the agents, queues and calls endpoints built on it.
//!
//! "Today" is since 00:00 UTC, computed from the durable event log (so it spans restarts),
//! refreshed every 5 s; it lags the live figures by the log's commit delay.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiState};
use crate::config::ApiRole;
use crate::engine::live::{EngineLive, LiveCall};
use crate::routing::metrics::ReportOptions;
use crate::routing::rules::QueueId;
use crate::runtime::store::Store;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LiveSnapshot {
    pub at_ms: i64,
    pub queues: Vec<QueueOut>,
    pub agents: Vec<AgentOut>,
    pub calls: Vec<LiveCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueOut {
    pub id: String,
    pub name: String,
    pub waiting: usize,
    pub longest_wait_s: u64,
    pub estimate_s: Option<u64>,
    pub agents_ready: usize,
    pub agents_busy: usize,
    pub service_level_s: u64,
    pub offered_today: u64,
    pub answered_today: u64,
    pub abandoned_today: u64,
    pub service_level_today: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentOut {
    pub id: String,
    pub name: String,
    pub state: String,
    /// When the agent entered this state as the publisher saw it (within its 250 ms tick), or
    /// when the server started for agents that have not changed since.
    pub since_ms: i64,
    pub time_in_state_s: i64,
    pub skills: std::collections::BTreeMap<String, u8>,
}

/// The latest snapshot and its JSON, serialized once for every reader.
#[derive(Debug, Default)]
pub struct Published {
    pub snapshot: LiveSnapshot,
    pub json: String,
}

#[derive(Clone, Copy, Debug, Default)]
struct Today {
    offered: u64,
    answered: u64,
    abandoned: u64,
    service_level: Option<f64>,
}

const PUBLISH_EVERY: Duration = Duration::from_millis(500);
const TODAY_EVERY: Duration = Duration::from_secs(5);
const DAY_MS: i64 = 86_400_000;

/// Runs until the engine's sender goes (the engine stopped), then drops the publisher, which
/// ends every SSE stream.
pub async fn publish(
    mut engine: watch::Receiver<Arc<EngineLive>>,
    out: watch::Sender<Arc<Published>>,
    store: Store,
) {
    let started_ms = super::super::unix_ms_now();
    let mut since: HashMap<String, (String, i64)> = HashMap::new();
    let mut today: HashMap<String, Today> = HashMap::new();
    let mut today_at: Option<tokio::time::Instant> = None;
    let mut last: Option<LiveSnapshot> = None;
    loop {
        let view = engine.borrow_and_update().clone();
        let now_ms = super::super::unix_ms_now();
        if today_at.is_none_or(|at| at.elapsed() >= TODAY_EVERY) {
            today_at = Some(tokio::time::Instant::now());
            match today_figures(&store, &view, now_ms).await {
                Ok(figures) => today = figures,
                Err(error) => tracing::warn!(%error, "today's queue figures not refreshed"),
            }
        }
        let mut snapshot = build(&view, &mut since, &today, now_ms, started_ms);
        let changed = last.as_ref().is_none_or(|l| {
            let mut l = l.clone();
            l.at_ms = snapshot.at_ms;
            l != snapshot
        });
        if changed {
            snapshot.at_ms = now_ms;
            let json = serde_json::to_string(&snapshot).unwrap_or_default();
            last = Some(snapshot.clone());
            let _ = out.send(Arc::new(Published { snapshot, json }));
        }
        // At most one snapshot per PUBLISH_EVERY; wake for an engine change or for "today".
        tokio::time::sleep(PUBLISH_EVERY).await;
        tokio::select! {
            changed = engine.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(TODAY_EVERY) => {}
        }
    }
}

/// The first snapshot, from the engine as it starts (today's figures follow within 500 ms), so
/// the API never serves an empty one.
pub fn first(view: &EngineLive, now_ms: i64) -> Published {
    let snapshot = build(view, &mut HashMap::new(), &HashMap::new(), now_ms, now_ms);
    let json = serde_json::to_string(&snapshot).unwrap_or_default();
    Published { snapshot, json }
}

fn build(
    view: &EngineLive,
    since: &mut HashMap<String, (String, i64)>,
    today: &HashMap<String, Today>,
    now_ms: i64,
    started_ms: i64,
) -> LiveSnapshot {
    let agents = view
        .agents
        .iter()
        .map(|a| {
            let entry = since
                .entry(a.id.clone())
                .or_insert_with(|| (a.state.clone(), started_ms));
            if entry.0 != a.state {
                *entry = (a.state.clone(), now_ms);
            }
            AgentOut {
                id: a.id.clone(),
                name: a.name.clone(),
                state: a.state.clone(),
                since_ms: entry.1,
                time_in_state_s: (now_ms - entry.1).max(0) / 1000,
                skills: a.skills.clone(),
            }
        })
        .collect();
    let queues = view
        .queues
        .iter()
        .map(|q| {
            let t = today.get(&q.id).copied().unwrap_or_default();
            QueueOut {
                id: q.id.clone(),
                name: q.name.clone(),
                waiting: q.waiting,
                longest_wait_s: q.longest_wait_s,
                estimate_s: q.estimate_s,
                agents_ready: q.agents_ready,
                agents_busy: q.agents_busy,
                service_level_s: q.service_level_s,
                offered_today: t.offered,
                answered_today: t.answered,
                abandoned_today: t.abandoned,
                service_level_today: t.service_level.map(|s| (s * 1000.0).round() / 1000.0),
            }
        })
        .collect();
    LiveSnapshot {
        at_ms: now_ms,
        queues,
        agents,
        calls: view.calls.clone(),
    }
}

/// Today's figures per queue from the event log, with the live queues' service levels.
async fn today_figures(
    store: &Store,
    view: &EngineLive,
    now_ms: i64,
) -> Result<HashMap<String, Today>, crate::runtime::report::ReportError> {
    let midnight = now_ms - now_ms.rem_euclid(DAY_MS);
    let options = ReportOptions {
        service_level_ms: view
            .queues
            .iter()
            .map(|q| (QueueId(q.id.clone()), q.service_level_s * 1000))
            .collect(),
        ..ReportOptions::default()
    };
    let report =
        crate::runtime::report::queue_report_with(store, &options, midnight, now_ms + 1).await?;
    Ok(report
        .queues
        .iter()
        .map(|q| {
            (
                q.queue.0.clone(),
                Today {
                    offered: q.stats.offered,
                    answered: q.stats.answered,
                    abandoned: q.stats.abandoned,
                    service_level: q.stats.service_level(),
                },
            )
        })
        .collect())
}

fn current(state: &ApiState) -> Arc<Published> {
    state.live.borrow().clone()
}

/// `GET /api/v1/live`
pub async fn snapshot(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        current(&state).json.clone(),
    )
}

/// `GET /api/v1/live/stream`: the snapshot on connect, then each new one.
pub async fn stream(State(state): State<ApiState>) -> impl IntoResponse {
    let mut rx = state.live.clone();
    rx.mark_changed();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let json = rx.borrow_and_update().json.clone();
        let event = Event::default().event("snapshot").data(json);
        Some((Ok::<_, Infallible>(event), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /api/v1/queues`
pub async fn queues(State(state): State<ApiState>) -> impl IntoResponse {
    let live = current(&state);
    Json(json!({ "at_ms": live.snapshot.at_ms, "queues": live.snapshot.queues }))
}

/// `GET /api/v1/calls`
pub async fn calls(State(state): State<ApiState>) -> impl IntoResponse {
    let live = current(&state);
    Json(json!({ "at_ms": live.snapshot.at_ms, "calls": live.snapshot.calls }))
}

/// `GET /api/v1/agents`
pub async fn agents(State(state): State<ApiState>) -> impl IntoResponse {
    let live = current(&state);
    Json(json!({ "at_ms": live.snapshot.at_ms, "agents": live.snapshot.agents }))
}

/// `GET /api/v1/agents/{id}`
pub async fn agent(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AgentOut>, ApiError> {
    current(&state)
        .snapshot
        .agents
        .iter()
        .find(|a| a.id == id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such agent"))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStateBody {
    /// "ready" or "not_ready".
    state: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/agents/{id}/state` with `{"state": "ready"}` or
/// `{"state": "not_ready", "reason": "lunch"}`: 202 when handed to the engine (the change shows
/// as an `agent_state` queue event), 404 for an unknown agent, 422 for a bad state.
pub async fn set_agent_state(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AgentStateBody>,
) -> Result<impl IntoResponse, ApiError> {
    if caller.role < ApiRole::Manager && caller.name != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "an agent token changes only its own agent (the token's name is the agent id)",
        ));
    }
    if !state.health.agent_ids.contains(&id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such agent"));
    }
    let ready = match body.state.as_str() {
        "ready" => true,
        "not_ready" => false,
        _ => return Err(ApiError::field("state", "ready or not_ready")),
    };
    if body.reason.as_deref().is_some_and(|r| r.len() > 64) {
        return Err(ApiError::field("reason", "at most 64 characters"));
    }
    let input = crate::engine::Input::AgentState {
        agent: id,
        ready,
        reason: body.reason.unwrap_or_else(|| "manual".into()),
    };
    match state.health.engine_inbound.send(input).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true})))),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        )),
    }
}
