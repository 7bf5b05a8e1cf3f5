//! The HTTP endpoint (axum): serves the router of `api` (every route is in `api::ROUTES`) and
//! `/healthz`, liveness plus the numbers an operator checks first (active calls, event-log
//! backlog, store errors), unauthenticated.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use tokio::sync::watch;

use super::api::{self, ApiState};

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = api::router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "HTTP server failed");
    }
}

pub async fn healthz(State(state): State<ApiState>) -> impl IntoResponse {
    let state = &state.health;
    let engine = state.engine.lock().map(|s| s.clone()).unwrap_or_default();
    let log = state.log.health();
    // Degraded, not down: calls are still answered while the store retries.
    let callbacks_unsaved = state.callbacks_unsaved.load(Ordering::Relaxed);
    let status =
        if log.last_error.is_some() || state.speech.mode == "degraded" || callbacks_unsaved > 0 {
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
        "callbacks": {
            "unsaved": callbacks_unsaved,
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
