//! The HTTP API over 127.0.0.1 against an in-process server: every route in the OpenAPI
//! document exists (and nothing else), tokens and roles (401 with WWW-Authenticate, 403),
//! bodies (400 malformed, 413 too large, 415 wrong type, 422 naming the field), cases with
//! filters (injection-looking values match nothing and harm nothing), history, rules validate /
//! apply / rollback changing what the router serves, live state over SSE, the interval report,
//! CSV exports, Prometheus, and a store failure reported as 503.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use civicline::config::{ApiRole, ApiToken, Config};
use civicline::routing::core::{CallId, QueueEvent, QueueEventKind};
use civicline::routing::rules::QueueId;
use civicline::runtime::api::auth::{hex, sha256};
use civicline::runtime::store::StoredEvent;
use serde_json::{json, Value};

const MANAGER: &str = "manager-token-1";
const AGENT: &str = "agent-token-1";
const READER: &str = "reader-token-1";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn token(name: &str, role: ApiRole, token: &str) -> ApiToken {
    ApiToken {
        name: name.into(),
        role,
        token_sha256: hex(&sha256(token.as_bytes())),
    }
}

/// Queues from copies of the default rules in the server's own directory (applying rules
/// rewrites the queues file, and must not touch the repository's).
fn configure(config: &mut Config) {
    let dir = config.store.data_dir.join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["queues.toml", "agents.toml"] {
        std::fs::copy(root().join("routing-rules").join(file), dir.join(file)).unwrap();
    }
    config.routing.queues = dir.join("queues.toml");
    config.routing.agents = dir.join("agents.toml");
    config.speech.categories = root().join("routing-rules/categories.toml");
    config.speech.streets = root().join("routing-rules/streets.txt");
    config.api.tokens = vec![
        token("alice", ApiRole::Manager, MANAGER),
        token("m.okafor", ApiRole::Agent, AGENT),
        token("wallboard", ApiRole::ReadOnly, READER),
    ];
}

async fn start() -> common::TestServer {
    common::start_with(configure).await
}

struct Api {
    addr: SocketAddr,
}

impl Api {
    fn of(server: &common::TestServer) -> Api {
        Api {
            addr: server.server.http,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        common::http(self.addr, "GET", path, &headers, None).await
    }

    async fn get_json(&self, path: &str, token: &str) -> Value {
        let (status, _, body) = self.get(path, Some(token)).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    async fn send(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let (status, _, text) = common::http(
            self.addr,
            method,
            path,
            &[("Authorization", &auth)],
            Some(("application/json", body.as_bytes())),
        )
        .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

async fn stop(server: common::TestServer) {
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let server = start().await;
    let api = Api::of(&server);
    let (status, _, body) = api.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("the document parses");
    assert_eq!(doc["openapi"], "3.0.3");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let table: BTreeSet<(String, String)> = civicline::runtime::api::ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, table);
    // Every documented route is really routed: never the router's own "no such route" 404
    // nor 405 (placeholders may well give a handler's 404, 401 or 4xx).
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "x.json")
            .replace("{number}", "1")
            .replace("{service_code}", "pothole.json");
        let (status, _, body) = common::http(
            api.addr,
            method,
            &concrete,
            &[],
            (method != "GET").then_some(("application/json", b"{}".as_slice())),
        )
        .await;
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !body.contains("no such route"),
            "{method} {path} is documented but not routed"
        );
    }
    let (status, _, body) = api.get("/api/v1/nothing-here", Some(MANAGER)).await;
    assert_eq!(status, 404);
    assert!(body.contains("no such route"));
    stop(server).await;
}

#[tokio::test]
async fn without_tokens_configured_the_api_says_how_to_add_one() {
    let server = common::start_with(|c| {
        configure(c);
        c.api.tokens.clear();
    })
    .await;
    let api = Api::of(&server);
    let (status, head, body) = api.get("/api/v1/agents", Some(MANAGER)).await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("civicline api-token"), "{body}");
    // Health stays open.
    assert_eq!(api.get("/healthz", None).await.0, 200);
    stop(server).await;
}

#[tokio::test]
async fn tokens_are_checked_and_roles_enforced() {
    let server = start().await;
    let api = Api::of(&server);
    let (status, head, body) = api.get("/api/v1/agents", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"));
    assert!(body.contains("missing token"));
    let (status, _, body) = api.get("/api/v1/agents", Some("not-a-token")).await;
    assert_eq!(status, 401);
    assert!(body.contains("unknown token"));
    let (status, _, body) = common::http(
        api.addr,
        "GET",
        "/api/v1/agents",
        &[("Authorization", "Basic YWxpY2U6cHc=")],
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("malformed"));
    // ?token= works for reads (EventSource) ...
    let (status, _, _) = common::http(
        api.addr,
        "GET",
        &format!("/api/v1/agents?token={READER}"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    // ... but not for changes.
    let (status, _, _) = common::http(
        api.addr,
        "PATCH",
        &format!("/api/v1/cases/1000001?token={MANAGER}"),
        &[],
        Some(("application/json", br#"{"status":"closed"}"#)),
    )
    .await;
    assert_eq!(status, 401);
    // Roles: read-only cannot change, agents cannot manage, nor export.
    let (status, body) = api
        .send(
            "PATCH",
            "/api/v1/cases/1000001",
            READER,
            r#"{"status":"closed"}"#,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("manager"));
    let (status, _) = api
        .send("POST", "/api/v1/rules", AGENT, r#"{"queues_toml":""}"#)
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = api
        .get("/api/v1/export/calls.csv?from=0&to=1", Some(READER))
        .await;
    assert_eq!(status, 403);
    stop(server).await;
}

#[tokio::test]
async fn agents_are_listed_and_their_state_changed_with_clear_errors() {
    let server = start().await;
    let api = Api::of(&server);
    let agents = api.get_json("/api/v1/agents", READER).await;
    let list = agents["agents"].as_array().unwrap();
    let okafor = list
        .iter()
        .find(|a| a["id"] == "m.okafor")
        .unwrap_or_else(|| panic!("m.okafor in {agents}"));
    assert_eq!(okafor["state"], "offline");
    assert!(okafor["skills"]
        .as_object()
        .unwrap()
        .contains_key("english"));
    let one = api.get_json("/api/v1/agents/a.garcia", READER).await;
    assert_eq!(one["name"], "Ana Garcia");
    assert_eq!(api.get("/api/v1/agents/nobody", Some(READER)).await.0, 404);

    let path = "/api/v1/agents/m.okafor/state";
    // An agent token changes its own agent only.
    let (status, _) = api
        .send(
            "POST",
            "/api/v1/agents/a.garcia/state",
            AGENT,
            r#"{"state":"ready"}"#,
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = api.send("POST", path, AGENT, r#"{"state":"asleep"}"#).await;
    assert_eq!(status, 422);
    assert!(body["fields"]["state"].is_string(), "{body}");
    let (status, body) = api.send("POST", path, AGENT, r#"{"reason":"x"}"#).await;
    assert_eq!(status, 422);
    assert!(
        body["fields"]["state"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{body}"
    );
    let (status, body) = api.send("POST", path, AGENT, r#"{"state":1}"#).await;
    assert_eq!(status, 422);
    assert!(body["fields"]["state"].is_string(), "{body}");
    let (status, body) = api
        .send("POST", path, AGENT, r#"{"state":"ready","colour":"red"}"#)
        .await;
    assert_eq!(status, 422);
    assert!(body["fields"]["colour"].is_string(), "{body}");
    let (status, body) = api.send("POST", path, AGENT, r#"{"state": "ready""#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("malformed JSON"));
    let auth = format!("Bearer {AGENT}");
    let (status, _, _) = common::http(
        api.addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        Some(("text/plain", b"ready")),
    )
    .await;
    assert_eq!(status, 415);
    let huge = format!(r#"{{"state":"ready","reason":"{}"}}"#, "x".repeat(100_000));
    let (status, _, body) = common::http(
        api.addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        Some(("application/json", huge.as_bytes())),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = api
        .send(
            "POST",
            "/api/v1/agents/nobody/state",
            MANAGER,
            r#"{"state":"ready"}"#,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .send(
            "POST",
            path,
            AGENT,
            r#"{"state":"not_ready","reason":"lunch"}"#,
        )
        .await;
    assert_eq!(status, 202);
    stop(server).await;
}

const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn cases_are_filtered_changed_and_keep_their_history() {
    let server = start().await;
    let api = Api::of(&server);
    let store = &server.server.store;
    let now = civicline::runtime::unix_ms_now();
    let old = store
        .create_case("c-old", None, now - 120 * DAY_MS)
        .await
        .unwrap();
    let new = store
        .create_case("c-new", None, now - DAY_MS)
        .await
        .unwrap();
    for (case, department) in [(&old, "Streets & Sanitation"), (&new, "Water")] {
        store
            .change_case(&case.case_number, None, Some(department), "test", now)
            .await
            .unwrap();
    }

    let all = api.get_json("/api/v1/cases", READER).await;
    assert_eq!(all["total"], 2);
    assert_eq!(
        all["cases"][0]["case_number"], old.case_number,
        "oldest first"
    );
    assert!(all["cases"][0]["age_days"].as_i64().unwrap() >= 119);
    let aged = api
        .get_json("/api/v1/cases?status=open&older_than_days=90", READER)
        .await;
    assert_eq!(aged["total"], 1);
    assert_eq!(aged["cases"][0]["case_number"], old.case_number);
    let water = api.get_json("/api/v1/cases?department=Water", READER).await;
    assert_eq!(water["total"], 1);
    // Values that would be SQL if pasted into a statement match nothing and change nothing.
    for hostile in [
        "x%27%20OR%20%271%27%3D%271",
        "%27%3B%20DROP%20TABLE%20cases%3B%20--",
        "Water%22%20OR%201%3D1%20--",
    ] {
        let found = api
            .get_json(&format!("/api/v1/cases?department={hostile}"), READER)
            .await;
        assert_eq!(found["total"], 0, "{hostile}");
        let found = api
            .get_json(&format!("/api/v1/cases?category={hostile}"), READER)
            .await;
        assert_eq!(found["total"], 0, "{hostile}");
    }
    assert_eq!(api.get_json("/api/v1/cases", READER).await["total"], 2);
    let (status, _, body) = api
        .get("/api/v1/cases?limit=0&status=lost", Some(READER))
        .await;
    assert_eq!(status, 422);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["fields"]["limit"].is_string() && body["fields"]["status"].is_string());

    let summary = api.get_json("/api/v1/cases/summary", READER).await;
    assert_eq!(summary["open_over_90_days"], 1);
    let streets = summary["departments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["department"] == "Streets & Sanitation")
        .unwrap();
    assert_eq!(streets["open_over_90_days"], 1);

    let path = format!("/api/v1/cases/{}", new.case_number);
    let (status, body) = api
        .send("PATCH", &path, MANAGER, r#"{"status":"shut"}"#)
        .await;
    assert_eq!(status, 422);
    assert!(body["fields"]["status"].is_string());
    let (status, body) = api
        .send(
            "PATCH",
            &path,
            MANAGER,
            r#"{"department":"Ministry of Silly Walks"}"#,
        )
        .await;
    assert_eq!(status, 422);
    assert!(body["fields"]["department"].is_string());
    let (status, body) = api.send("PATCH", &path, MANAGER, "{}").await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api
        .send(
            "PATCH",
            "/api/v1/cases/999",
            MANAGER,
            r#"{"status":"closed"}"#,
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = api
        .send(
            "PATCH",
            &path,
            MANAGER,
            r#"{"status":"closed","department":"Streets & Sanitation"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "closed");
    let one = api.get_json(&path, READER).await;
    assert_eq!(one["department"], "Streets & Sanitation");
    assert_eq!(one["call_ref"], "c-new");

    let history = api.get_json(&format!("{path}/history"), READER).await;
    let lines = history["history"].as_array().unwrap();
    assert_eq!(lines[0]["action"], "created");
    assert_eq!(lines[0]["by"], "phone");
    assert_eq!(lines[0]["detail"]["call_ref"], "c-new");
    let status_line = lines.iter().find(|l| l["action"] == "status").unwrap();
    assert_eq!(status_line["by"], "token:alice");
    assert_eq!(
        status_line["detail"],
        json!({"from": "open", "to": "closed"})
    );
    assert!(lines
        .iter()
        .any(|l| l["action"] == "department" && l["by"] == "token:alice"));
    assert_eq!(
        api.get("/api/v1/cases/999/history", Some(READER)).await.0,
        404
    );

    // A write the database refuses is reported, not swallowed.
    store.close().await;
    let (status, body) = api
        .send("PATCH", &path, MANAGER, r#"{"status":"open"}"#)
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("nothing was changed"));
    stop(server).await;
}

async fn queue_ids(api: &Api) -> Vec<String> {
    api.get_json("/api/v1/queues", READER).await["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls the live queues until `done` holds (the engine swaps rules a moment after the API
/// answers, and the live view is published every 500 ms).
async fn wait_queues(api: &Api, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let ids = queue_ids(api).await;
        if done(&ids) || tokio::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rules_are_validated_applied_and_rolled_back() {
    let server = start().await;
    let api = Api::of(&server);
    let ids = wait_queues(&api, |ids| !ids.is_empty()).await;
    assert!(ids.contains(&"general_en".to_string()), "{ids:?}");
    let original = std::fs::read_to_string(server.dir.path().join("rules/queues.toml")).unwrap();
    let added = format!(
        "{original}\n[[queue]]\nid = \"potholes_fast\"\nname = \"Potholes (fast lane)\"\npriority = 5\nrequires = {{ streets = 4 }}\nstrategy = \"longest-idle\"\ncondition = 'category == \"pothole\"'\n"
    );
    let broken = format!(
        "{original}\n[[queue]]\nid = \"bad\"\nname = \"Bad\"\nrequires = {{ juggling = 3 }}\n"
    );
    let body = |text: &str| json!({ "queues_toml": text }).to_string();

    let (status, v) = api
        .send("POST", "/api/v1/rules/validate", MANAGER, &body(&broken))
        .await;
    assert_eq!(status, 422, "{v}");
    let error = &v["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("queues.toml"),
        "{v}"
    );
    assert!(
        error["line"].as_u64().unwrap() > original.lines().count() as u64,
        "{v}"
    );
    assert!(
        error["reason"].as_str().unwrap().contains("juggling"),
        "{v}"
    );
    assert!(v["fields"]["queues_toml"].is_string());
    let (status, v) = api
        .send("POST", "/api/v1/rules/validate", MANAGER, &body(&added))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["valid"], true);
    // Agents checked against the proposed queues: a skill the queues do not declare.
    let agents = std::fs::read_to_string(root().join("routing-rules/agents.toml")).unwrap();
    let bad_agents = agents.replacen("english = 4", "english = 4, juggling = 2", 1);
    let (status, v) = api
        .send(
            "POST",
            "/api/v1/rules/validate",
            MANAGER,
            &json!({"queues_toml": added, "agents_toml": bad_agents}).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["errors"][0]["file"]
        .as_str()
        .unwrap()
        .ends_with("agents.toml"));

    // A broken set changes nothing.
    let (status, _) = api
        .send("POST", "/api/v1/rules", MANAGER, &body(&broken))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        std::fs::read_to_string(server.dir.path().join("rules/queues.toml")).unwrap(),
        original
    );
    let (status, v) = api
        .send("POST", "/api/v1/rules", MANAGER, "{\"queues\": 1}")
        .await;
    assert_eq!(status, 422);
    assert!(
        v["fields"]["queues"].is_string() || v["fields"]["queues_toml"].is_string(),
        "{v}"
    );

    let (status, v) = api
        .send("POST", "/api/v1/rules", MANAGER, &body(&added))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 2, "version 1 is the file as it was");
    assert_eq!(v["applied_by"], "token:alice");
    let ids = wait_queues(&api, |ids| ids.contains(&"potholes_fast".to_string())).await;
    assert!(ids.contains(&"potholes_fast".to_string()), "{ids:?}");
    assert!(
        std::fs::read_to_string(server.dir.path().join("rules/queues.toml"))
            .unwrap()
            .contains("potholes_fast")
    );

    let versions = api.get_json("/api/v1/rules", READER).await;
    assert_eq!(versions["current"], 2);
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(list[0]["action"], "original");
    assert_eq!(list[1]["applied_by"], "token:alice");

    let (status, v) = api
        .send(
            "POST",
            "/api/v1/rules/rollback",
            MANAGER,
            r#"{"version": 99}"#,
        )
        .await;
    assert_eq!(status, 422);
    assert!(v["fields"]["version"].is_string());
    let (status, v) = api
        .send(
            "POST",
            "/api/v1/rules/rollback",
            MANAGER,
            r#"{"version": 1}"#,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 3);
    assert_eq!(v["action"], "rollback:1");
    let ids = wait_queues(&api, |ids| !ids.contains(&"potholes_fast".to_string())).await;
    assert!(!ids.contains(&"potholes_fast".to_string()), "{ids:?}");

    // Who and when, in the event log.
    let events = common::events(&server).await;
    let applied: Vec<Value> = events
        .iter()
        .filter(|e| e.event.kind == "rules_applied")
        .map(|e| serde_json::from_str(e.event.detail.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert_eq!(applied[0]["by"], "token:alice");
    assert_eq!(applied[1]["action"], "rollback:1");

    // Agents cannot be swapped live: said so, nothing applied.
    let (status, v) = api
        .send(
            "POST",
            "/api/v1/rules",
            MANAGER,
            &json!({"queues_toml": added, "agents_toml": agents}).to_string(),
        )
        .await;
    assert_eq!(status, 422);
    assert!(v["fields"]["agents_toml"].is_string());
    stop(server).await;
}

#[tokio::test]
async fn live_state_is_served_and_streamed() {
    let server = start().await;
    let api = Api::of(&server);
    let live = api.get_json("/api/v1/live", READER).await;
    assert!(live["at_ms"].as_i64().unwrap() > 0);
    let general = live["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == "general_en")
        .expect("general_en");
    for key in [
        "name",
        "waiting",
        "longest_wait_s",
        "estimate_s",
        "agents_ready",
        "agents_busy",
        "service_level_s",
        "offered_today",
        "answered_today",
        "abandoned_today",
        "service_level_today",
    ] {
        assert!(general.get(key).is_some(), "{key} missing: {general}");
    }
    let agent = &live["agents"][0];
    for key in ["id", "name", "state", "since_ms", "time_in_state_s"] {
        assert!(agent.get(key).is_some(), "{key} missing: {agent}");
    }
    assert!(live["calls"].as_array().unwrap().is_empty());
    assert!(api.get_json("/api/v1/calls", READER).await["calls"].is_array());

    // SSE: a snapshot event at once, over ?token= as a browser's EventSource would.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    stream
        .write_all(
            format!("GET /api/v1/live/stream?token={READER} HTTP/1.1\r\nHost: x\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut buffer = vec![0u8; 65_536];
    while !(seen.contains("event: snapshot") && seen.contains("\n\n")) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buffer))
            .await
            .expect("a snapshot in time")
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    let data = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let snapshot: Value = serde_json::from_str(data).expect("the data is one JSON object");
    assert!(snapshot["queues"].is_array());
    drop(stream);
    stop(server).await;
}

fn queue_event(at_ms: i64, kind: QueueEventKind, call: &str, hold_ms: Option<u64>) -> StoredEvent {
    let mut event = QueueEvent::new(at_ms as u64, kind);
    event.call = Some(CallId(call.into()));
    event.queue = Some(QueueId("general_en".into()));
    event.hold_ms = hold_ms;
    StoredEvent {
        occurred_at_ms: at_ms,
        call_ref: call.into(),
        sip_call_id: format!("{call}@test"),
        kind: "queue".into(),
        status_code: None,
        reason: None,
        duration_ms: None,
        caller: None,
        detail: Some(serde_json::to_string(&event).unwrap()),
    }
}

#[tokio::test]
async fn metrics_report_and_exports_cover_a_date_range() {
    let server = start().await;
    let api = Api::of(&server);
    let t0 = 1_795_767_300_000; // 2026-11-27T08:15Z
    server
        .server
        .store
        .append(&[
            StoredEvent {
                occurred_at_ms: t0,
                call_ref: "c-1".into(),
                sip_call_id: "c-1@test".into(),
                kind: "received".into(),
                status_code: None,
                reason: None,
                duration_ms: None,
                caller: Some("sip:5551234567@127.0.0.1".into()),
                detail: Some("{\"a\":\"b,c\"}".into()),
            },
            queue_event(t0 + 1000, QueueEventKind::Joined, "c-1", None),
            queue_event(t0 + 31_000, QueueEventKind::Answered, "c-1", Some(30_000)),
        ])
        .await
        .unwrap();
    let report = api
        .get_json(
            "/api/v1/metrics?from=2026-11-27T08:00&to=2026-11-27T09:00",
            READER,
        )
        .await;
    let general = &report["queues"][0];
    assert_eq!(general["queue"], "general_en");
    assert_eq!(general["total"]["offered"], 1);
    assert_eq!(general["total"]["answered"], 1);
    assert_eq!(general["total"]["asa_ms"], 30_000.0);
    assert_eq!(general["intervals"][0]["start_ms"], t0);
    let (status, _, body) = api.get("/api/v1/metrics?to=yesterday", Some(READER)).await;
    assert_eq!(status, 422);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["fields"]["from"], "required");
    assert!(body["fields"]["to"].is_string());

    let (status, head, csv) = api
        .get(
            "/api/v1/export/calls.csv?from=2026-11-27&to=2026-11-28",
            Some(MANAGER),
        )
        .await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("seq,occurred_at_ms,occurred_at_utc,call_ref"));
    assert_eq!(lines.len(), 2, "queue events are the other export: {csv}");
    assert!(lines[1].contains("2026-11-27T08:15:00.000Z,c-1,c-1@test,received"));
    assert!(lines[1].contains("***4567"));
    assert!(!lines[1].contains("5551234567"), "the caller is masked");
    assert!(
        lines[1].ends_with("\"{\"\"a\"\":\"\"b,c\"\"}\""),
        "{}",
        lines[1]
    );
    let (status, _, csv) = api
        .get(
            &format!(
                "/api/v1/export/queue_events.csv?from={t0}&to={}",
                t0 + 60_000
            ),
            Some(MANAGER),
        )
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[2].contains(",answered,c-1,general_en,"),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(",30000,"), "{}", lines[2]);
    let (status, _, _) = api
        .get("/api/v1/export/queue_events.csv?from=5&to=1", Some(MANAGER))
        .await;
    assert_eq!(status, 422);
    stop(server).await;
}

#[tokio::test]
async fn prometheus_metrics_need_a_token_unless_configured_open() {
    let server = start().await;
    let api = Api::of(&server);
    // One SIP request, so a response code shows.
    let client = common::Client::new(server.udp()).await;
    client
        .send(&common::options(client.local(), "z9hG4bKprom1"))
        .await;
    client.recv(common::WAIT).await.expect("200 to OPTIONS");
    assert_eq!(api.get("/metrics", None).await.0, 401);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let text = loop {
        let (status, head, text) = api.get("/metrics", Some(READER)).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/plain; version=0.0.4"));
        if text.contains("civicline_sip_responses_total{code=\"200\"} 1")
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for needle in [
        "# TYPE civicline_calls_total counter",
        "civicline_calls_active 0",
        "civicline_queue_waiting{queue=\"general_en\"} 0",
        "civicline_queue_wait_seconds_bucket{outcome=\"answered\",le=\"+Inf\"} 0",
        "civicline_agents{state=\"offline\"}",
        "civicline_transcription_seconds_count 0",
        "civicline_sip_responses_total{code=\"200\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    stop(server).await;

    let server = common::start_with(|c| {
        configure(c);
        c.api.metrics_without_token = true;
    })
    .await;
    assert_eq!(Api::of(&server).get("/metrics", None).await.0, 200);
    stop(server).await;
}

/// A recorded period made by a seeded load driven through the real routing core (as the engine
/// would: offers answered at once, talk times drawn, wrap-up by the router's timer), appended
/// to the store as the engine logs queue events. Returns the period's bounds (unix ms).
async fn seeded_history(server: &common::TestServer, agents: &[&str]) -> (i64, i64) {
    use civicline::routing::core::{Router, RouterInput, RouterOutput};
    use civicline::routing::rules::{load_agents, AgentId, CallerAttrs, Rules};
    use rand::{Rng, SeedableRng};
    let rules = Rules::load(&server.dir.path().join("rules/queues.toml")).unwrap();
    let profiles = load_agents(&server.dir.path().join("rules/agents.toml"), &rules).unwrap();
    let mut router = Router::new(rules);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut log: Vec<QueueEvent> = Vec::new();
    let mut ends: Vec<(u64, CallId)> = Vec::new();
    let hour = 3_600_000u64;
    let mut next_arrival = 0u64;
    let mut n = 0;
    for id in agents {
        let profile = profiles.iter().find(|p| p.id.0 == *id).unwrap();
        let agent = AgentId(id.to_string());
        router
            .handle_input(
                0,
                RouterInput::AgentLogin {
                    agent: agent.clone(),
                    skills: profile.skills.clone(),
                },
            )
            .unwrap();
        router
            .handle_input(0, RouterInput::AgentReady { agent })
            .unwrap();
    }
    let mut now = 0u64;
    while now < 2 * hour {
        if now >= next_arrival {
            n += 1;
            let attrs = CallerAttrs {
                language: "en".into(),
                ..CallerAttrs::default()
            };
            router
                .handle_input(
                    now,
                    RouterInput::CallerJoin {
                        call: CallId(format!("hist-{n}")),
                        queue: None,
                        attrs,
                        priority: 0,
                    },
                )
                .unwrap();
            // About 40 calls an hour.
            next_arrival = now + rng.gen_range(10_000..170_000);
        }
        ends.retain(|(at, call)| {
            if *at <= now {
                let _ = router.handle_input(now, RouterInput::CallEnded { call: call.clone() });
                false
            } else {
                true
            }
        });
        if router.poll_timeout().is_some_and(|t| t <= now) {
            router.handle_timeout(now);
        }
        while let Some(output) = router.poll_output() {
            match output {
                RouterOutput::Offer { call, agent, .. } => {
                    let _ = router.handle_input(now, RouterInput::AgentAnswered { agent, call });
                }
                RouterOutput::Connected { call, .. } => {
                    ends.push((now + rng.gen_range(60_000..300_000), call));
                }
                RouterOutput::Record(event) => log.push(event),
                _ => {}
            }
        }
        now += 1000;
    }
    let base = common::unix_ms() - 3 * hour as i64;
    let rows: Vec<StoredEvent> = log
        .iter()
        .map(|e| StoredEvent {
            occurred_at_ms: base + e.at_ms as i64,
            call_ref: e
                .call
                .as_ref()
                .map(|c| c.0.clone())
                .unwrap_or_else(|| "agent".into()),
            sip_call_id: String::new(),
            kind: "queue".into(),
            status_code: None,
            reason: Some(format!("{:?}", e.kind)),
            duration_ms: e.hold_ms.map(|h| h as i64),
            caller: None,
            detail: Some(serde_json::to_string(e).unwrap()),
        })
        .collect();
    server.server.store.append(&rows).await.unwrap();
    (base + 15 * 60_000, base + 2 * hour as i64)
}

#[tokio::test]
async fn a_rule_change_is_simulated_on_the_recorded_period() {
    let server = start().await;
    let api = Api::of(&server);
    let (from, to) = seeded_history(&server, &["m.okafor"]).await;
    let queues = std::fs::read_to_string(server.dir.path().join("rules/queues.toml")).unwrap();
    let agents = std::fs::read_to_string(server.dir.path().join("rules/agents.toml")).unwrap();
    // The agents file with only Michael, as in the history; and with Michael and a second
    // English speaker (Linh, who serves general_en too).
    let only = |ids: &[&str]| -> String {
        let mut out = String::new();
        for block in agents.split("[[agent]]").skip(1) {
            if ids
                .iter()
                .any(|id| block.contains(&format!("id = \"{id}\"")))
            {
                out.push_str("[[agent]]");
                out.push_str(block);
            }
        }
        out
    };
    let body = |agents_toml: &str| {
        json!({
            "queues_toml": queues,
            "agents_toml": agents_toml,
            "from": from.to_string(),
            "to": to.to_string(),
        })
        .to_string()
    };
    let general = |report: &Value| -> Value {
        report["per_queue"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == "general_en")
            .cloned()
            .unwrap_or_else(|| panic!("no general_en in {report}"))
    };

    let (status, same) = api
        .send(
            "POST",
            "/api/v1/simulate",
            MANAGER,
            &body(&only(&["m.okafor"])),
        )
        .await;
    assert_eq!(status, 200, "{same}");
    let q = general(&same);
    let (actual, predicted) = (&q["actual"], &q["predicted"]);
    assert!(actual["offered"].as_u64().unwrap() >= 30, "{q}");
    let sl = |f: &Value| f["service_level"].as_f64().unwrap();
    assert!(
        (sl(actual) - sl(predicted)).abs() <= 0.02,
        "same rules reproduce the service level within 2 points: {q}"
    );

    let (status, more) = api
        .send(
            "POST",
            "/api/v1/simulate",
            MANAGER,
            &body(&only(&["m.okafor", "l.nguyen"])),
        )
        .await;
    assert_eq!(status, 200, "{more}");
    let asa = |f: &Value| f["asa_s"].as_f64().unwrap();
    assert!(
        asa(&general(&more)["predicted"]) < asa(&general(&same)["predicted"]),
        "one more agent predicts a shorter speed of answer: {} vs {}",
        general(&more),
        general(&same)
    );

    // Bad input: a broken rule set names file and line; a bad period names the field; only a
    // manager may run it.
    let broken = json!({"queues_toml": "[[queue]]\nid = 5\n", "from": from.to_string(), "to": to.to_string()});
    let (status, v) = api
        .send("POST", "/api/v1/simulate", MANAGER, &broken.to_string())
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["errors"][0]["line"].as_u64().is_some(), "{v}");
    let backwards = json!({"queues_toml": queues, "from": to.to_string(), "to": from.to_string()});
    let (status, v) = api
        .send("POST", "/api/v1/simulate", MANAGER, &backwards.to_string())
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["fields"]["to"].is_string(), "{v}");
    let (status, _) = api
        .send("POST", "/api/v1/simulate", READER, &body(&agents))
        .await;
    assert_eq!(status, 403);

    // The same from the command line, on the stopped server's store: the table on stdout,
    // the progress bar on stderr.
    let common::TestServer { server, dir } = server;
    server.shutdown();
    server.wait().await.unwrap();
    let data_dir = dir.path().to_path_buf();
    let rules_dir = data_dir.join("rules");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_civicline"))
        .args(["simulate", "--data-dir", data_dir.to_str().unwrap()])
        .args(["--rules", rules_dir.to_str().unwrap()])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("general_en"), "{stdout}");
    assert!(stderr.contains("replaying ["), "{stderr}");
}

#[tokio::test]
async fn an_agents_skills_are_changed_saved_and_applied() {
    let server = start().await;
    let api = Api::of(&server);
    let path = "/api/v1/agents/m.okafor/skills";
    let (status, v) = api
        .send(
            "PUT",
            path,
            MANAGER,
            r#"{"skills":{"english":5,"spanish":4}}"#,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed_by"], "token:alice");
    // Saved in the agents file, only the skills line changed (credentials kept).
    let file = std::fs::read_to_string(server.dir.path().join("rules/agents.toml")).unwrap();
    assert!(
        file.contains("skills = { english = 5, spanish = 4 }"),
        "{file}"
    );
    assert!(file.contains("ha1_md5 = \"7bbbed166f01308300197c9502c68a08\""));
    // Applied: the live view shows them (it is published within half a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let agent = api.get_json("/api/v1/agents/m.okafor", READER).await;
        if agent["skills"]["spanish"] == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{agent}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Recorded with who.
    server.server.flush_events().await;
    let logged = server
        .server
        .store
        .events_of_kind("agent_skills", 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(logged.len(), 1);
    assert!(logged[0].detail.as_deref().unwrap().contains("token:alice"));

    // Bad input changes nothing: an undeclared skill (file, line, reason), an out-of-range
    // proficiency (the field), an unknown agent, an agent's token.
    let (status, v) = api
        .send("PUT", path, MANAGER, r#"{"skills":{"juggling":3}}"#)
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("juggling"),
        "{v}"
    );
    let (status, v) = api
        .send("PUT", path, MANAGER, r#"{"skills":{"english":9}}"#)
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["fields"]["skills.english"].is_string(), "{v}");
    let (status, _) = api
        .send(
            "PUT",
            "/api/v1/agents/nobody/skills",
            MANAGER,
            r#"{"skills":{}}"#,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .send("PUT", path, AGENT, r#"{"skills":{"english":1}}"#)
        .await;
    assert_eq!(status, 403);
    let after = std::fs::read_to_string(server.dir.path().join("rules/agents.toml")).unwrap();
    assert_eq!(after, file, "refused changes leave the file alone");
    stop(server).await;
}
