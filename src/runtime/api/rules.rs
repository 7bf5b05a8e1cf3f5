//! Routing rules through the API: validate a proposed queues.toml (and agents.toml against it)
//! with the loaders start-up uses, apply it, roll back. Applying writes the queues file in
//! place (write then rename, so a restart or SIGHUP loads the same rules), records the text as
//! a new version in `rules_versions` (the file's earlier text becomes version 1 on the first
//! apply, so it can be rolled back to), swaps the rules into the engine as SIGHUP does, and
//! records a `rules_applied` event with who and when. A set with an error changes nothing and
//! answers 422 with file, line and reason. Applies are serialized by one lock.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiState};
use crate::engine::Input;
use crate::routing::rules::{parse_agents, Rules, RulesError};
use crate::runtime::event_log::EventLog;
use crate::runtime::store::StoredEvent;
use crate::runtime::unix_ms_now;

/// What applying needs: where the files are and the engine's inbound channel.
pub struct RulesControl {
    pub engine: mpsc::Sender<Input>,
    pub queues_path: PathBuf,
    pub agents_path: PathBuf,
    pub log: EventLog,
    lock: Mutex<()>,
}

impl RulesControl {
    pub fn new(
        engine: mpsc::Sender<Input>,
        queues_path: PathBuf,
        agents_path: PathBuf,
        log: EventLog,
    ) -> RulesControl {
        RulesControl {
            engine,
            queues_path,
            agents_path,
            log,
            lock: Mutex::new(()),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSet {
    queues_toml: String,
    /// Checked against the proposed queues; None checks the agents file in use.
    #[serde(default)]
    agents_toml: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesRollback {
    version: i64,
}

fn control(state: &ApiState) -> Result<&RulesControl, ApiError> {
    state.rules.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "queues are not configured ([routing] queues is empty)",
        )
    })
}

/// 422 with the file, line and reason of a rules error.
pub(super) fn rules_error(field: &str, error: &RulesError) -> ApiError {
    let (file, line, reason) = match error {
        RulesError::Invalid { path, line, reason } => {
            (path.display().to_string(), Some(*line), reason.clone())
        }
        RulesError::Read { path, source } => (path.display().to_string(), None, source.to_string()),
    };
    let mut api = ApiError::field(field, error.to_string());
    api.message = format!("the rule set has an error, nothing was changed: {error}");
    api.extra.insert(
        "errors".into(),
        json!([{ "file": file, "line": line, "reason": reason }]),
    );
    api
}

/// Parses queues (and agents against them) exactly as start-up does.
fn check(
    control: &RulesControl,
    queues_toml: &str,
    agents_toml: Option<&str>,
) -> Result<(Rules, usize), ApiError> {
    let rules = Rules::parse(queues_toml, &control.queues_path)
        .map_err(|e| rules_error("queues_toml", &e))?;
    let agents_text = match agents_toml {
        Some(text) => text.to_string(),
        None => std::fs::read_to_string(&control.agents_path).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", control.agents_path.display()),
            )
        })?,
    };
    let agents = parse_agents(&agents_text, &control.agents_path, &rules)
        .map_err(|e| rules_error("agents_toml", &e))?;
    Ok((rules, agents.len()))
}

/// `POST /api/v1/rules/validate`
pub async fn validate(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<RulesSet>,
) -> Result<Json<Value>, ApiError> {
    let control = control(&state)?;
    let (rules, agents) = check(control, &body.queues_toml, body.agents_toml.as_deref())?;
    Ok(Json(json!({
        "valid": true,
        "queues": rules.queues().iter().map(|q| q.id.0.clone()).collect::<Vec<_>>(),
        "agents": agents,
    })))
}

/// `POST /api/v1/rules`
pub async fn apply(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<RulesSet>,
) -> Result<Json<Value>, ApiError> {
    let control = control(&state)?;
    if body.agents_toml.is_some() {
        // The engine takes agents (and their credentials) at start only; refusing is honest,
        // applying the queues and silently ignoring the agents would not be.
        return Err(ApiError::field(
            "agents_toml",
            "agents cannot be changed while running yet: validate them here, edit the agents file and restart",
        ));
    }
    let (rules, _) = check(control, &body.queues_toml, None)?;
    install(&state, control, rules, &body.queues_toml, &caller, "apply").await
}

/// `POST /api/v1/rules/rollback`
pub async fn rollback(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<RulesRollback>,
) -> Result<Json<Value>, ApiError> {
    let control = control(&state)?;
    let versions = state.store.rules_versions().await?;
    let Some(old) = versions.iter().find(|v| v.version == body.version) else {
        return Err(ApiError::field(
            "version",
            format!("no version {} (GET /api/v1/rules lists them)", body.version),
        ));
    };
    let (rules, _) = check(control, &old.queues_toml, None)?;
    let action = format!("rollback:{}", body.version);
    install(
        &state,
        control,
        rules,
        &old.queues_toml.clone(),
        &caller,
        &action,
    )
    .await
}

/// Writes the file, records the version, swaps the rules in, logs it. Each step that fails
/// undoes the ones before and answers with the reason.
async fn install(
    state: &ApiState,
    control: &RulesControl,
    rules: Rules,
    text: &str,
    caller: &Caller,
    action: &str,
) -> Result<Json<Value>, ApiError> {
    let _one_at_a_time = control.lock.lock().await;
    let now = unix_ms_now();
    let previous = std::fs::read_to_string(&control.queues_path).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {}: {e}", control.queues_path.display()),
        )
    })?;
    if state.store.rules_versions().await?.is_empty() {
        state
            .store
            .add_rules_version(&previous, "file", "original", now)
            .await?;
    }
    write_atomically(&control.queues_path, text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot write {}, nothing was changed: {e}",
                control.queues_path.display()
            ),
        )
    })?;
    let version = match state
        .store
        .add_rules_version(text, &caller.by(), action, now)
        .await
    {
        Ok(version) => version,
        Err(error) => {
            if let Err(undo) = write_atomically(&control.queues_path, &previous) {
                tracing::error!(%undo, "restoring the queues file after a failed version write");
            }
            return Err(ApiError::store(error));
        }
    };
    if control
        .engine
        .send(Input::ReloadRouting(Box::new(rules)))
        .await
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine has stopped",
        ));
    }
    let detail = json!({ "version": version, "by": caller.by(), "action": action });
    control.log.append(StoredEvent {
        occurred_at_ms: now,
        call_ref: format!("rules:v{version}"),
        sip_call_id: String::new(),
        kind: "rules_applied".into(),
        status_code: None,
        reason: Some(action.to_string()),
        duration_ms: None,
        caller: None,
        detail: Some(detail.to_string()),
    });
    tracing::info!(version, by = %caller.by(), action, "queue rules applied through the API");
    Ok(Json(json!({
        "version": version,
        "applied_by": caller.by(),
        "applied_at_ms": now,
        "action": action,
    })))
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let temp = path.with_extension(format!("toml.tmp{}", std::process::id()));
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

/// `GET /api/v1/rules`
pub async fn versions(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let control = control(&state)?;
    let versions = state.store.rules_versions().await?;
    Ok(Json(json!({
        "file": control.queues_path.display().to_string(),
        "current": versions.last().map(|v| v.version),
        "versions": versions,
    })))
}
