//! The HTTP API under `/api/v1`, Prometheus `/metrics` and Open311 `/open311/v2`. One table,
//! [`ROUTES`], names every route with its method, who may call it and what it does; the axum
//! router and the OpenAPI document are both built from it, so they cannot disagree. Handlers
//! live in the files named after what they own; this file holds the shared state, the one
//! JSON error shape and the body extractor that turns bad bodies into clear 4xx answers.

pub mod auth;
pub mod cases;
pub mod export;
pub mod live;
pub mod open311;
pub mod openapi;
pub mod prometheus;
pub mod rules;
pub mod simulate;
pub mod wallboard;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;

use super::store::{Store, StoreError};
use super::HealthState;
use crate::config::{ApiConfig, ApiRole};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token (health, the OpenAPI document, Open311 reads).
    Public,
    /// A bearer token of at least this role.
    Role(ApiRole),
    /// Open311 `api_key` in the form body (checked by the handler, per the spec).
    Open311Key,
    /// Prometheus: public or read-only, as `[api] metrics_without_token` says.
    Metrics,
}

/// One route: the single source for the router and the OpenAPI document.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    pub method: &'static str,
    /// axum syntax (`{id}`), which is also OpenAPI's.
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// Query parameters (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Name of the request body schema in `openapi::schemas` (None: no body).
    pub body: Option<&'static str>,
    /// What a success returns: "json", "csv", "text", "sse".
    pub produces: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        summary,
        query: &[],
        body: None,
        produces: "json",
    }
}

const READ: Access = Access::Role(ApiRole::ReadOnly);
const AGENT: Access = Access::Role(ApiRole::Agent);
const MANAGER: Access = Access::Role(ApiRole::Manager);

const RANGE: &[(&str, &str)] = &[
    (
        "from",
        "start, UTC: 2026-11-27, 2026-11-27T08:00, 2026-11-27T08:00:00Z or unix ms (required)",
    ),
    ("to", "end, exclusive, same forms (required)"),
];

pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/healthz", Access::Public, "Liveness and the first numbers an operator checks"),
    route("GET", "/api/v1/openapi.json", Access::Public, "This document"),
    route("GET", "/api/v1/agents", READ, "Agents with state, since when, skills and languages"),
    route("GET", "/api/v1/agents/{id}", READ, "One agent"),
    RouteSpec {
        body: Some("AgentStateChange"),
        ..route(
            "POST",
            "/api/v1/agents/{id}/state",
            AGENT,
            "Set an agent ready or not ready (202: handed to the engine). An agent token may change only the agent whose id is the token's name",
        )
    },
    route("GET", "/api/v1/queues", READ, "Queues: live state and today's figures"),
    route("GET", "/api/v1/calls", READ, "Calls in progress with their phase"),
    route("GET", "/api/v1/live", READ, "The live snapshot (queues, agents, calls)"),
    RouteSpec {
        produces: "sse",
        ..route(
            "GET",
            "/api/v1/live/stream",
            READ,
            "Server-sent events: `snapshot` on connect and on change (at most every 500 ms)",
        )
    },
    RouteSpec {
        query: RANGE,
        ..route("GET", "/api/v1/metrics", READ, "Interval report: per queue and 15-minute interval, per agent")
    },
    RouteSpec {
        query: &[
            ("status", "open or closed; comma list"),
            ("category", "category id; comma list"),
            ("department", "department; comma list"),
            ("older_than_days", "created more than this many days ago"),
            ("newer_than_days", "created less than this many days ago"),
            ("limit", "1..1000, default 100"),
            ("offset", "default 0"),
        ],
        ..route("GET", "/api/v1/cases", READ, "Cases, filtered, oldest first")
    },
    route("GET", "/api/v1/cases/summary", READ, "Open cases per department by age; those open more than 90 days called out"),
    route("GET", "/api/v1/cases/{number}", READ, "One case"),
    RouteSpec {
        body: Some("CaseChange"),
        ..route("PATCH", "/api/v1/cases/{number}", MANAGER, "Change a case's status and/or department (recorded in its history)")
    },
    route("GET", "/api/v1/cases/{number}/history", READ, "A case's history"),
    route("GET", "/api/v1/rules", READ, "Rules versions applied through the API, and the one in force"),
    RouteSpec {
        body: Some("RulesSet"),
        ..route("POST", "/api/v1/rules/validate", MANAGER, "Check a proposed rule set; errors name file, line and reason")
    },
    RouteSpec {
        body: Some("RulesSet"),
        ..route("POST", "/api/v1/rules", MANAGER, "Apply a rule set: checked, written as a new version, swapped in atomically, logged")
    },
    RouteSpec {
        body: Some("AgentSkillsChange"),
        ..route("PUT", "/api/v1/agents/{id}/skills", MANAGER, "Replace an agent's skills: saved in agents.toml, applied at once, logged with who")
    },
    RouteSpec {
        body: Some("SimulationRequest"),
        ..route("POST", "/api/v1/simulate", MANAGER, "Replay a recorded period under proposed rules: predicted and actual service level, ASA, abandonment, longest wait per queue")
    },
    RouteSpec {
        body: Some("RulesRollback"),
        ..route("POST", "/api/v1/rules/rollback", MANAGER, "Apply an earlier version again (as a new version)")
    },
    RouteSpec {
        query: RANGE,
        produces: "csv",
        ..route("GET", "/api/v1/export/calls.csv", MANAGER, "Call records (every call event but queue events) in a date range")
    },
    RouteSpec {
        query: RANGE,
        produces: "csv",
        ..route("GET", "/api/v1/export/queue_events.csv", MANAGER, "Queue events in a date range")
    },
    RouteSpec {
        produces: "text",
        ..route("GET", "/metrics", Access::Metrics, "Prometheus text exposition")
    },
    route("GET", "/open311/v2/services.json", Access::Public, "GeoReport v2: service list (one per case category)"),
    RouteSpec {
        produces: "xml",
        ..route("GET", "/open311/v2/services.xml", Access::Public, "GeoReport v2: service list, XML")
    },
    route("GET", "/open311/v2/services/{service_code}", Access::Public, "GeoReport v2: service definition (`{code}.json` or `.xml`; no metadata, so always 404 in the GeoReport error format)"),
    RouteSpec {
        query: OPEN311_REQUEST_FILTERS,
        ..route("GET", "/open311/v2/requests.json", Access::Public, "GeoReport v2: service requests, newest first, at most 1000")
    },
    RouteSpec {
        query: OPEN311_REQUEST_FILTERS,
        produces: "xml",
        ..route("GET", "/open311/v2/requests.xml", Access::Public, "GeoReport v2: service requests, XML")
    },
    RouteSpec {
        body: Some("Open311Request"),
        ..route("POST", "/open311/v2/requests.json", Access::Open311Key, "GeoReport v2: create a service request (form-encoded, api_key required)")
    },
    RouteSpec {
        body: Some("Open311Request"),
        produces: "xml",
        ..route("POST", "/open311/v2/requests.xml", Access::Open311Key, "GeoReport v2: create a service request, XML answer")
    },
    route("GET", "/open311/v2/requests/{id}", Access::Public, "GeoReport v2: one service request (`{id}.json` or `{id}.xml`)"),
];

/// The filters of GeoReport's `GET requests` (both formats).
const OPEN311_REQUEST_FILTERS: &[(&str, &str)] = &[
    (
        "service_request_id",
        "comma list; overrides the other filters",
    ),
    ("service_code", "comma list"),
    ("start_date", "RFC 3339; default 90 days before end_date"),
    ("end_date", "RFC 3339; default now"),
    ("status", "open, closed or both, comma list"),
];

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub health: HealthState,
    pub store: Store,
    pub auth: Arc<auth::Auth>,
    pub open311: Arc<open311::Open311>,
    pub rules: Option<Arc<rules::RulesControl>>,
    pub live: watch::Receiver<Arc<live::Published>>,
    pub metrics: Arc<prometheus::Metrics>,
    pub config: Arc<ApiConfig>,
}

/// The router for every route in [`ROUTES`]; anything else is a JSON 404.
pub fn router(state: ApiState) -> axum::Router {
    let mut app = axum::Router::new();
    for spec in ROUTES {
        let mut handler = handler(spec);
        if matches!(spec.body, Some("RulesSet" | "SimulationRequest")) {
            handler = handler.layer(DefaultBodyLimit::max(state.config.max_rules_bytes));
        }
        if let Some(role) = auth::required_role(spec.access, &state.config) {
            handler = handler.route_layer(axum::middleware::from_fn_with_state(
                (state.clone(), role),
                auth::require,
            ));
        }
        app = app.route(spec.path, handler);
    }
    // The wallboard's pages are not API routes (no token: they hold no data), so they stay
    // out of ROUTES and the OpenAPI document.
    app.merge(wallboard::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// The handler of one table row; a row without one stops the server at start (and the test
/// that builds the router), so the table cannot name a route that does not exist.
fn handler(spec: &RouteSpec) -> MethodRouter<ApiState> {
    let filter = match spec.method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        "PUT" => MethodFilter::PUT,
        other => panic!("method {other} in ROUTES"),
    };
    let get_only = |m: MethodRouter<ApiState>| {
        assert_eq!(spec.method, "GET", "{}", spec.path);
        m
    };
    match (spec.method, spec.path) {
        (_, "/healthz") => get_only(get(super::http::healthz)),
        (_, "/api/v1/openapi.json") => get_only(get(openapi::serve)),
        (_, "/api/v1/agents") => get_only(get(live::agents)),
        (_, "/api/v1/agents/{id}") => get_only(get(live::agent)),
        ("POST", "/api/v1/agents/{id}/state") => on(filter, live::set_agent_state),
        (_, "/api/v1/queues") => get_only(get(live::queues)),
        (_, "/api/v1/calls") => get_only(get(live::calls)),
        (_, "/api/v1/live") => get_only(get(live::snapshot)),
        (_, "/api/v1/live/stream") => get_only(get(live::stream)),
        (_, "/api/v1/metrics") => get_only(get(export::metrics)),
        (_, "/api/v1/cases") => get_only(get(cases::list)),
        (_, "/api/v1/cases/summary") => get_only(get(cases::summary)),
        ("GET", "/api/v1/cases/{number}") => on(filter, cases::one),
        ("PATCH", "/api/v1/cases/{number}") => on(filter, cases::change),
        (_, "/api/v1/cases/{number}/history") => get_only(get(cases::history)),
        ("GET", "/api/v1/rules") => on(filter, rules::versions),
        ("POST", "/api/v1/rules") => on(filter, rules::apply),
        ("POST", "/api/v1/rules/validate") => on(filter, rules::validate),
        ("POST", "/api/v1/rules/rollback") => on(filter, rules::rollback),
        ("POST", "/api/v1/simulate") => on(filter, simulate::run),
        ("PUT", "/api/v1/agents/{id}/skills") => on(filter, rules::set_agent_skills),
        (_, "/api/v1/export/calls.csv") => get_only(get(export::calls_csv)),
        (_, "/api/v1/export/queue_events.csv") => get_only(get(export::queue_events_csv)),
        (_, "/metrics") => get_only(get(prometheus::serve)),
        (_, "/open311/v2/services.json" | "/open311/v2/services.xml") => {
            get_only(get(open311::services))
        }
        (_, "/open311/v2/services/{service_code}") => get_only(get(open311::service_definition)),
        ("GET", "/open311/v2/requests.json" | "/open311/v2/requests.xml") => {
            on(filter, open311::requests)
        }
        ("POST", "/open311/v2/requests.json" | "/open311/v2/requests.xml") => {
            on(filter, open311::create)
        }
        (_, "/open311/v2/requests/{id}") => get_only(get(open311::request)),
        (method, path) => panic!("ROUTES names {method} {path} but no handler serves it"),
    }
}

/// The one error shape: `{"error": "...", "fields": {"field": "reason"}}` (fields only for
/// 422).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    /// Extra headers (WWW-Authenticate on 401).
    pub www_authenticate: bool,
    /// Extra top-level members (a rules error's `errors` list with file, line and reason).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            fields: BTreeMap::new(),
            www_authenticate: false,
            extra: serde_json::Map::new(),
        }
    }

    /// 422 naming the fields at fault.
    pub fn fields(fields: BTreeMap<String, String>) -> ApiError {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        ApiError {
            message: format!("invalid fields: {}", names.join(", ")),
            fields,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "")
        }
    }

    pub fn field(name: &str, reason: impl Into<String>) -> ApiError {
        ApiError::fields(BTreeMap::from([(name.to_string(), reason.into())]))
    }

    /// A store failure: reported, never a silent success. 503 so a client retries.
    pub fn store(error: StoreError) -> ApiError {
        tracing::error!(%error, "API store operation failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database refused the operation, nothing was changed: {error}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::store(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if !self.fields.is_empty() {
            body["fields"] = json!(self.fields);
        }
        for (key, value) in self.extra {
            body[key] = value;
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.www_authenticate {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"civicline\""),
            );
        }
        response
    }
}

/// A JSON body: 415 unless `Content-Type: application/json`, 413 over the size limit, 400 for
/// malformed JSON, 422 naming the field for JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "request body too large")
            } else {
                ApiError::new(status, format!("cannot read the body: {e}"))
            }
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(body) => Ok(ApiJson(body)),
            Err(error) => {
                let path = error.path().to_string();
                let inner = error.into_inner().to_string();
                Err(ApiError::field(&field_name(&path, &inner), inner))
            }
        }
    }
}

/// The field a deserialisation error is about: its path, or for a missing or unknown field
/// (reported at the enclosing object) the name serde quotes in backticks.
fn field_name(path: &str, message: &str) -> String {
    if path != "." && !path.is_empty() {
        return path.to_string();
    }
    message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "body".into())
}

/// `?from=&to=` for reports and exports.
#[derive(serde::Deserialize)]
pub struct RangeQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl RangeQuery {
    /// Both ends parsed (422 naming the one at fault); `to` must be after `from`.
    pub fn parse(&self) -> Result<(i64, i64), ApiError> {
        let mut fields = BTreeMap::new();
        let mut one = |name: &str, text: &Option<String>| match text {
            None => {
                fields.insert(name.to_string(), "required".to_string());
                None
            }
            Some(t) => {
                let parsed = super::report::parse_time(t);
                if parsed.is_none() {
                    fields.insert(
                        name.to_string(),
                        "expected 2026-11-27, 2026-11-27T08:00[:00][Z] or unix ms".to_string(),
                    );
                }
                parsed
            }
        };
        let from = one("from", &self.from);
        let to = one("to", &self.to);
        if !fields.is_empty() {
            return Err(ApiError::fields(fields));
        }
        let (from, to) = (from.unwrap_or(0), to.unwrap_or(0));
        if to <= from {
            return Err(ApiError::field("to", "must be after from"));
        }
        Ok((from, to))
    }
}

/// Query strings the API could not read (a typed query with a bad value) answer 422 too.
pub fn query_rejection(error: axum::extract::rejection::QueryRejection) -> ApiError {
    let text = error.body_text();
    let field = text.split('`').nth(1).unwrap_or("query").to_string();
    ApiError::field(&field, text)
}

pub fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}
