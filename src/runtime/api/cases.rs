//! Cases for managers and the cases page: list and filter (status, category, department, age),
//! one case, its history, open cases per department by age, and changes to status and
//! department. Every filter value reaches SQL as a bound parameter; every change is written
//! with its history line in one transaction, and a failed write answers 503 (nothing changed).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, ApiJson, ApiState};
use crate::runtime::store::{CaseFilter, CaseRecord};
use crate::runtime::unix_ms_now;

const DAY_MS: i64 = 86_400_000;
const MAX_LIMIT: i64 = 1000;

/// A case as the API shows it in lists (see the contract).
#[derive(Debug, Serialize)]
pub struct CaseOut {
    pub case_number: String,
    pub status: String,
    pub category: Option<String>,
    pub department: Option<String>,
    pub address: Option<String>,
    pub description: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub age_days: i64,
}

impl CaseOut {
    pub fn new(case: &CaseRecord, now_ms: i64) -> CaseOut {
        CaseOut {
            case_number: case.case_number.clone(),
            status: case.status.clone(),
            category: case.category.clone(),
            department: case.department.clone(),
            address: case.address.clone(),
            description: case.description.clone(),
            created_at_ms: case.created_at_ms,
            updated_at_ms: case.updated_at_ms,
            age_days: (now_ms - case.created_at_ms).max(0) / DAY_MS,
        }
    }
}

/// The query string as a map; a broken one (bad percent-encoding) is a 400.
pub fn params(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// A comma list (empty items dropped).
pub fn comma_list(text: Option<&String>) -> Vec<String> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// A non-negative integer parameter, 422 naming it otherwise.
pub fn number(
    params: &HashMap<String, String>,
    name: &str,
    fields: &mut BTreeMap<String, String>,
) -> Option<i64> {
    let text = params.get(name)?;
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Some(n),
        _ => {
            fields.insert(name.into(), "a whole number, 0 or more".into());
            None
        }
    }
}

/// `GET /api/v1/cases`
pub async fn list_cases(state: &ApiState, uri: &Uri) -> Result<Value, ApiError> {
    let params = params(uri)?;
    let mut fields = BTreeMap::new();
    let statuses = comma_list(params.get("status"));
    if let Some(bad) = statuses.iter().find(|s| *s != "open" && *s != "closed") {
        fields.insert("status".into(), format!("open or closed, not {bad:?}"));
    }
    let older = number(&params, "older_than_days", &mut fields);
    let newer = number(&params, "newer_than_days", &mut fields);
    let limit = number(&params, "limit", &mut fields).unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        fields.insert("limit".into(), format!("1 to {MAX_LIMIT}"));
    }
    let offset = number(&params, "offset", &mut fields).unwrap_or(0);
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let now = unix_ms_now();
    let filter = CaseFilter {
        statuses,
        categories: comma_list(params.get("category")),
        departments: comma_list(params.get("department")),
        created_before_ms: older.map(|d| now - d.saturating_mul(DAY_MS)),
        created_from_ms: newer.map(|d| now - d.saturating_mul(DAY_MS)),
        limit,
        offset,
        ..CaseFilter::default()
    };
    let (total, cases) = state.store.list_cases(&filter).await?;
    let cases: Vec<CaseOut> = cases.iter().map(|c| CaseOut::new(c, now)).collect();
    Ok(json!({ "total": total, "cases": cases }))
}

pub async fn list(State(state): State<ApiState>, uri: Uri) -> Result<Json<Value>, ApiError> {
    list_cases(&state, &uri).await.map(Json)
}

/// `GET /api/v1/cases/summary`
pub async fn summary(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let now = unix_ms_now();
    let departments = state.store.open_cases_by_department(now).await?;
    let over_90: i64 = departments.iter().map(|d| d.open_over_90_days).sum();
    Ok(Json(json!({
        "at_ms": now,
        "open_over_90_days": over_90,
        "departments": departments,
    })))
}

/// `GET /api/v1/cases/{number}`: the list fields plus what the call left (transcript,
/// confidence, call reference).
pub async fn one(
    State(state): State<ApiState>,
    Path(number): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let case = state
        .store
        .find_case(&number)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such case"))?;
    let mut out = json!(CaseOut::new(&case, unix_ms_now()));
    out["transcript"] = json!(case.transcript);
    out["confidence"] = json!(case.confidence);
    out["call_ref"] = json!(case.call_ref);
    out["lat"] = json!(case.lat);
    out["long"] = json!(case.lon);
    Ok(Json(out))
}

/// `GET /api/v1/cases/{number}/history`
pub async fn history(
    State(state): State<ApiState>,
    Path(number): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.store.find_case(&number).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such case"));
    }
    let history = state.store.case_history(&number).await?;
    Ok(Json(json!({ "case_number": number, "history": history })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseChange {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    department: Option<String>,
}

/// `PATCH /api/v1/cases/{number}` with `{"status": "closed"}` and/or `{"department": "..."}`.
pub async fn change(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(number): Path<String>,
    ApiJson(body): ApiJson<CaseChange>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = BTreeMap::new();
    if body.status.is_none() && body.department.is_none() {
        fields.insert("status".into(), "give status and/or department".into());
    }
    if let Some(status) = &body.status {
        if status != "open" && status != "closed" {
            fields.insert("status".into(), "open or closed".into());
        }
    }
    if let Some(department) = &body.department {
        let known = state.open311.departments();
        if department.trim().is_empty() || department.len() > 100 {
            fields.insert("department".into(), "1 to 100 characters".into());
        } else if !known.is_empty() && !known.iter().any(|d| d == department) {
            fields.insert(
                "department".into(),
                format!(
                    "one of the departments in categories.toml: {}",
                    known.join(", ")
                ),
            );
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let now = unix_ms_now();
    let case = state
        .store
        .change_case(
            &number,
            body.status.as_deref(),
            body.department.as_deref(),
            &caller.by(),
            now,
        )
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such case"))?;
    Ok(Json(json!(CaseOut::new(&case, now))))
}
