//! The HTTP endpoint (axum). For now `/healthz`: liveness plus the numbers an operator checks
//! first (active calls, event-log backlog, store errors). Later issues add the API under /api/v1.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use super::HealthState;

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/agents/{id}/state", post(set_agent_state))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HealthState,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "HTTP server failed");
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentStateBody {
    /// "ready" or "not_ready".
    state: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/agents/{id}/state` with `{"state": "ready"}` or
/// `{"state": "not_ready", "reason": "lunch"}`: 202 when handed to the engine (the change shows
/// as an `agent_state` queue event), 404 for an unknown agent, 400 for anything else.
async fn set_agent_state(
    State(state): State<HealthState>,
    Path(id): Path<String>,
    body: Result<Json<AgentStateBody>, axum::extract::rejection::JsonRejection>,
) -> impl IntoResponse {
    let Ok(Json(body)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": "expected {\"state\": \"ready\" | \"not_ready\", \"reason\": \"...\"}"}),
            ),
        );
    };
    if !state.agent_ids.contains(&id) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such agent"})),
        );
    }
    let ready = match body.state.as_str() {
        "ready" => true,
        "not_ready" => false,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "state is ready or not_ready"})),
            )
        }
    };
    let input = crate::engine::Input::AgentState {
        agent: id,
        ready,
        reason: body.reason.unwrap_or_else(|| "manual".into()),
    };
    match state.engine_inbound.send(input).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"accepted": true}))),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "shutting down"})),
        ),
    }
}

async fn healthz(State(state): State<HealthState>) -> impl IntoResponse {
    let engine = state.engine.lock().map(|s| s.clone()).unwrap_or_default();
    let log = state.log.health();
    // Degraded, not down: calls are still answered while the store retries.
    let status = if log.last_error.is_some() || state.speech.mode == "degraded" {
        "degraded"
    } else {
        "ok"
    };
    let t = &state.transport;
    let body = json!({
        "status": status,
        "calls_active": engine.calls_active,
        "calls_total": engine.calls_total,
        "free_rtp_ports": state.free_rtp_ports.load(Ordering::Relaxed),
        "sip": {
            "messages": engine.messages,
            "unparseable": engine.unparseable,
            "stray_responses": engine.stray_responses,
            "responses_sent": engine.responses_sent,
            "udp_dropped_overload": t.udp_dropped_overload.load(Ordering::Relaxed),
            "udp_oversized": t.udp_oversized.load(Ordering::Relaxed),
            "tcp_rejected_limit": t.tcp_rejected_limit.load(Ordering::Relaxed),
            "tcp_closed_invalid": t.tcp_closed_invalid.load(Ordering::Relaxed),
            "tcp_closed_timeout": t.tcp_closed_timeout.load(Ordering::Relaxed),
        },
        "media": {
            "packets_in": state.media.packets_in.load(Ordering::Relaxed),
            "packets_out": state.media.packets_out.load(Ordering::Relaxed),
            "malformed": state.media.malformed.load(Ordering::Relaxed),
            "dropped_overload": state.media.dropped_overload.load(Ordering::Relaxed),
            "stun_ignored": state.media.stun_ignored.load(Ordering::Relaxed),
        },
        "speech": {
            "mode": state.speech.mode,
            "reason": state.speech.reason,
            "workers": state.speech.workers,
            "done": state.speech.stats.done.load(Ordering::Relaxed),
            "failed": state.speech.stats.failed.load(Ordering::Relaxed),
            "refused_queue_full": state.speech.stats.refused_queue_full.load(Ordering::Relaxed),
        },
        "event_log": {
            "backend": state.store_backend,
            "submitted": log.submitted,
            "committed": log.committed,
            "backlog": log.backlog(),
            "failed_attempts": log.failed_attempts,
            "last_error": log.last_error,
        },
    });
    (StatusCode::OK, Json(body))
}
