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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSkillsChange {
    /// The agent's whole skill set: skill -> proficiency 1..=5.
    skills: std::collections::BTreeMap<String, i64>,
}

/// `PUT /api/v1/agents/{id}/skills`: replaces one agent's skills. The agents file is edited in
/// place (only that agent's `skills` line; comments and credentials stay), checked with the
/// loader start-up uses against the rules in force, written atomically, then handed to the
/// engine, which applies it at once (waiting callers the agent now qualifies for can be
/// offered) and records who changed what.
pub async fn set_agent_skills(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiJson(body): ApiJson<AgentSkillsChange>,
) -> Result<Json<Value>, ApiError> {
    let control = control(&state)?;
    let mut fields = std::collections::BTreeMap::new();
    for (skill, &value) in &body.skills {
        if !(1..=5).contains(&value) {
            fields.insert(
                format!("skills.{skill}"),
                "a proficiency from 1 to 5".to_string(),
            );
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let skills: crate::routing::rules::SkillSet = body
        .skills
        .iter()
        .map(|(k, &v)| (k.clone(), v as u8))
        .collect();
    let _one_at_a_time = control.lock.lock().await;
    let internal = |what: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what);
    let text = std::fs::read_to_string(&control.agents_path).map_err(|e| {
        internal(format!(
            "cannot read {}: {e}",
            control.agents_path.display()
        ))
    })?;
    let edited = with_skills(&text, &id, &skills)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such agent in the agents file"))?;
    let rules = Rules::load(&control.queues_path).map_err(|e| rules_error("queues_toml", &e))?;
    parse_agents(&edited, &control.agents_path, &rules).map_err(|e| rules_error("skills", &e))?;
    write_atomically(&control.agents_path, &edited).map_err(|e| {
        internal(format!(
            "cannot write {}: {e}",
            control.agents_path.display()
        ))
    })?;
    control
        .engine
        .send(Input::AgentSkills {
            agent: id.clone(),
            skills: skills.clone(),
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let now = unix_ms_now();
    let detail = json!({ "agent": id, "skills": skills, "by": caller.by() });
    control.log.append(StoredEvent {
        occurred_at_ms: now,
        call_ref: format!("agent:{id}"),
        sip_call_id: String::new(),
        kind: "agent_skills".into(),
        status_code: None,
        reason: Some("changed".into()),
        duration_ms: None,
        caller: None,
        detail: Some(detail.to_string()),
    });
    tracing::info!(agent = %id, by = %caller.by(), "agent skills changed through the API");
    Ok(Json(
        json!({ "agent": id, "skills": skills, "changed_by": caller.by() }),
    ))
}

/// The agents file with agent `id`'s `skills` replaced (an inline table, the file's other
/// text untouched); None when no `[[agent]]` has that id.
fn with_skills(text: &str, id: &str, skills: &crate::routing::rules::SkillSet) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    let agents = doc.get_mut("agent")?.as_array_of_tables_mut()?;
    let agent = agents
        .iter_mut()
        .find(|a| a.get("id").and_then(|v| v.as_str()) == Some(id))?;
    let mut table = toml_edit::InlineTable::new();
    for (skill, &value) in skills {
        table.insert(skill, i64::from(value).into());
    }
    agent.insert("skills", toml_edit::value(table));
    Some(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agents_skills_line_changes() {
        let text = "# agents\n[[agent]]\nid = \"a\"\nname = \"A\" # keep\nskills = { english = 2 }\n\n[[agent]]\nid = \"b\"\nskills = { spanish = 3 }\n";
        let skills = [("english".to_string(), 4), ("water".to_string(), 1)].into();
        let edited = with_skills(text, "a", &skills).unwrap();
        assert_eq!(
            edited,
            "# agents\n[[agent]]\nid = \"a\"\nname = \"A\" # keep\nskills = { english = 4, water = 1 }\n\n[[agent]]\nid = \"b\"\nskills = { spanish = 3 }\n"
        );
        assert_eq!(with_skills(text, "nobody", &skills), None);
    }
}
