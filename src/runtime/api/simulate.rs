//! `POST /api/v1/simulate`: `civicline simulate` over HTTP. The proposed queues.toml (and
//! optionally agents.toml) are checked like a rules change, the recorded queue events of the
//! period are read from the store, and the pure replay (`routing::simulate`) runs on a blocking
//! thread; the answer is the report as JSON (per queue, actual and predicted figures).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::{ApiError, ApiJson, ApiState};
use crate::routing::rules::{parse_agents, Rules};
use crate::routing::simulate::SimulationOptions;
use crate::runtime::report::{parse_time, simulate_period, ProposedRules, ReportError};

/// Periods longer than this are refused: a replay holds the whole period's events in memory.
const MAX_PERIOD_MS: i64 = 31 * 24 * 3600 * 1000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationRequest {
    queues_toml: String,
    /// None: the agents file in use.
    #[serde(default)]
    agents_toml: Option<String>,
    from: String,
    to: String,
    #[serde(default)]
    seed: Option<u64>,
}

/// `POST /api/v1/simulate`
pub async fn run(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<SimulationRequest>,
) -> Result<Json<Value>, ApiError> {
    let control = state.rules.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "queues are not configured ([routing] queues is empty)",
        )
    })?;
    let from_ms = parse_time(&body.from)
        .ok_or_else(|| ApiError::field("from", "a time: 2026-11-27T08:00 or unix ms"))?;
    let to_ms = parse_time(&body.to)
        .ok_or_else(|| ApiError::field("to", "a time: 2026-11-27T08:00 or unix ms"))?;
    if to_ms <= from_ms || to_ms - from_ms > MAX_PERIOD_MS {
        return Err(ApiError::field(
            "to",
            "after from, and at most 31 days after it",
        ));
    }
    let proposed = Rules::parse(&body.queues_toml, &control.queues_path)
        .map_err(|e| super::rules::rules_error("queues_toml", &e))?;
    let agents_text = match &body.agents_toml {
        Some(text) => text.clone(),
        None => std::fs::read_to_string(&control.agents_path).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", control.agents_path.display()),
            )
        })?,
    };
    let agents = parse_agents(&agents_text, &control.agents_path, &proposed)
        .map_err(|e| super::rules::rules_error("agents_toml", &e))?;
    let proposed = ProposedRules {
        rules: proposed,
        agents,
        running: Rules::load(&control.queues_path).ok(),
    };
    let options = SimulationOptions {
        seed: body.seed.unwrap_or(SimulationOptions::default().seed),
        ..SimulationOptions::default()
    };
    let report = simulate_period(&state.store, from_ms, to_ms, proposed, options, |_, _| {})
        .await
        .map_err(|e| match e {
            ReportError::Simulate(e) => ApiError::field("to", e.to_string()),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;
    serde_json::to_value(&report)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
