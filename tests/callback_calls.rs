//! Callbacks end to end over 127.0.0.1 with real peers: a SIPp caller in a queue hears position,
//! wait and the callback offer (event log), presses 1 and 1 and is hung up; a headless baresip
//! agent is made ready through the HTTP API; a SIPp UAS standing in for the resident's phone
//! behind the gateway is called and bridged; the recorded hold time counts from the original
//! join. Also: callbacks in the store are put back in line when the server starts again.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::events;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn free_udp_port(even: bool) -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if (!even || port % 2 == 0) && port < 65_000 {
            return port;
        }
    }
}

fn with_callbacks(gateway: SocketAddr) -> impl FnOnce(&mut civicline::config::Config) {
    move |c| {
        c.ivr.flow = root().join("routing-rules/ivr.toml");
        c.ivr.prompts_dir = root().join("prompts");
        c.routing.queues = root().join("routing-rules/queues.toml");
        c.routing.agents = root().join("routing-rules/agents.toml");
        // Debian's baresip 1.0 cannot answer a SHA-256 challenge.
        c.routing.digest_algorithms = vec!["MD5".into()];
        c.callbacks.gateway = format!("sip:{gateway}");
        c.callbacks.offer_after_s = 0;
        c.api.tokens = vec![civicline::config::ApiToken {
            name: "supervisor".into(),
            role: civicline::config::ApiRole::Manager,
            token_sha256: sha256_hex(MANAGER_TOKEN),
        }];
    }
}

const MANAGER_TOKEN: &str = "callback-test-manager-token";

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn http_post(server: &common::TestServer, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(server.server.http)
        .await
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {MANAGER_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    response[9..12].parse().unwrap()
}

/// Polls the event log until `check` holds (or fails with the log after `limit`).
async fn wait_for(
    server: &common::TestServer,
    what: &str,
    limit: Duration,
    check: impl Fn(&[civicline::runtime::store::EventRow]) -> bool,
) -> Vec<civicline::runtime::store::EventRow> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        server.server.flush_events().await;
        let rows = events(server).await;
        if check(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen within {limit:?}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn callback_reasons(rows: &[civicline::runtime::store::EventRow]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.event.kind == "callback")
        .map(|r| r.event.reason.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_caller_is_called_back_at_a_sipp_phone_when_an_agent_frees() {
    // The resident's phone behind the gateway: a SIPp UAS that rings, answers, listens 4 s and
    // hangs up (tests/sipp/resident_uas.xml).
    let gateway_port = free_udp_port(false);
    let gateway: SocketAddr = format!("127.0.0.1:{gateway_port}").parse().unwrap();
    let server = common::start_with(with_callbacks(gateway)).await;
    let resident = Command::new("sipp")
        .current_dir(root())
        .args(["-sf", "tests/sipp/resident_uas.xml"])
        .args(["-i", "127.0.0.1", "-p", &gateway_port.to_string()])
        .args(["-mp", &free_udp_port(true).to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "150s", "-timeout_error"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp runs (scripts/test installs it)");

    // Michael (1002, English) registers with baresip, which answers every call; then he goes
    // not ready, so the caller waits.
    let registrar = server.udp().to_string();
    let mut agent = Command::new("timeout")
        .process_group(0)
        .arg("120")
        .arg(root().join("scripts/baresip-agent"))
        .args(["1002", "civic-1002", &registrar, "110"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip-agent runs");
    wait_for(&server, "agent ready", Duration::from_secs(20), |rows| {
        rows.iter().any(|r| {
            r.event.kind == "queue"
                && r.event
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("\"state\":\"ready\"")
        })
    })
    .await;
    assert_eq!(
        http_post(
            &server,
            "/api/v1/agents/m.okafor/state",
            r#"{"state":"not_ready","reason":"on another call"}"#
        )
        .await,
        202
    );

    // The caller: English, an agent, then 1 for a callback and 1 to confirm; hung up by us.
    let mut caller = Command::new("sipp");
    caller
        .current_dir(root())
        .arg(server.udp().to_string())
        .args(["-sf", "tests/sipp/callback_walk.xml"])
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", "0"])
        .args(["-mp", &free_udp_port(true).to_string()])
        .args(["-m", "1", "-l", "1", "-nostdin", "-timeout", "60s"])
        .arg("-timeout_error");
    let output = tokio::task::spawn_blocking(move || caller.output().expect("sipp runs"))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "caller scenario: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = wait_for(
        &server,
        "callback requested",
        Duration::from_secs(5),
        |rows| callback_reasons(rows).contains(&"requested".to_string()),
    )
    .await;
    let caller_ref = rows
        .iter()
        .find(|r| r.event.kind == "callback")
        .unwrap()
        .event
        .call_ref
        .clone();
    let announced: Vec<&civicline::runtime::store::EventRow> = rows
        .iter()
        .filter(|r| r.event.kind == "announced" && r.event.call_ref == caller_ref)
        .collect();
    assert!(
        !announced.is_empty(),
        "position and wait were announced: {rows:#?}"
    );
    let detail: serde_json::Value =
        serde_json::from_str(announced[0].event.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["position"], 1);
    assert!(detail["announced_s"].as_f64().is_some());
    let joined_at = rows
        .iter()
        .find(|r| {
            r.event.call_ref == caller_ref
                && r.event.kind == "queue"
                && r.event.reason.as_deref() == Some("joined")
        })
        .expect("the caller joined a queue")
        .event
        .occurred_at_ms;
    let ended = rows
        .iter()
        .find(|r| r.event.call_ref == caller_ref && r.event.kind == "ended")
        .expect("the caller's call ended");
    assert_eq!(ended.event.reason.as_deref(), Some("callback_requested"));
    assert!(
        !rows
            .iter()
            .any(|r| r.event.call_ref == caller_ref
                && r.event.reason.as_deref() == Some("abandoned")),
        "hanging up for a callback is not an abandon"
    );
    let pending = server
        .server
        .store
        .callbacks_in(&["waiting"])
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "the callback is stored");
    assert_eq!(pending[0].number, "3125550142");

    // The place is kept while nobody is free; then Michael frees up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        http_post(
            &server,
            "/api/v1/agents/m.okafor/state",
            r#"{"state":"ready"}"#
        )
        .await,
        202
    );
    let ready_at = common::unix_ms();
    let rows = wait_for(
        &server,
        "callback connected",
        Duration::from_secs(30),
        |rows| callback_reasons(rows).contains(&"connected".to_string()),
    )
    .await;
    let answered = rows
        .iter()
        .find(|r| {
            r.event.call_ref == caller_ref
                && r.event.kind == "queue"
                && r.event.reason.as_deref() == Some("answered")
        })
        .expect("the callback was answered by the agent");
    let hold_ms = answered.event.duration_ms.unwrap();
    assert!(
        hold_ms >= ready_at - joined_at - 100,
        "hold {hold_ms} ms counts from the original join ({} ms before the agent was ready)",
        ready_at - joined_at
    );
    let connected = rows
        .iter()
        .find(|r| r.event.kind == "callback" && r.event.reason.as_deref() == Some("connected"))
        .unwrap();
    assert!(connected.event.duration_ms.unwrap() >= hold_ms);

    // The resident hangs up after 4 s: the agent's leg is hung up with it and the callback is
    // complete.
    let resident_output = tokio::task::spawn_blocking(move || {
        // The UAS exits after its BYE; its `-timeout 150s` bounds it if anything goes wrong.
        resident.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let rows = wait_for(
        &server,
        "callback completed",
        Duration::from_secs(40),
        |rows| callback_reasons(rows).contains(&"completed".to_string()),
    )
    .await;
    assert!(
        resident_output.status.success(),
        "the resident's SIPp phone: {}{}",
        String::from_utf8_lossy(&resident_output.stdout),
        String::from_utf8_lossy(&resident_output.stderr)
    );
    assert_eq!(
        callback_reasons(&rows),
        ["requested", "dialing", "connected", "completed"]
    );
    // baresip and the `timeout` around it are one process group.
    unsafe {
        libc::kill(-(agent.id() as i32), libc::SIGTERM);
    }
    let _ = agent.wait();
    assert!(server
        .server
        .store
        .callbacks_in(&["waiting", "dialing"])
        .await
        .unwrap()
        .is_empty());
}

/// A waiting callback in the store is put back in line when the server starts: a queue
/// `joined` event for it, a `restored` callback event, and its stored wait kept.
#[tokio::test]
async fn stored_callbacks_are_restored_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let gateway: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = || {
        let mut config = common::test_config(dir.path());
        with_callbacks(gateway)(&mut config);
        config
    };
    // First run: just the schema; then a callback row as a previous run would have left it.
    let first = civicline::runtime::start(config()).await.unwrap();
    let joined_at_ms = common::unix_ms() - 600_000;
    first
        .store
        .upsert_callback(&civicline::runtime::store::StoredCallback {
            call_ref: "earlier-run-7".into(),
            number: "3125550142".into(),
            language: "en".into(),
            queue: Some("general_en".into()),
            attrs: r#"{"language":"en","category":"","district":"","priority":0}"#.into(),
            priority: 0,
            state: "waiting".into(),
            attempts: 1,
            last_result: Some("486".into()),
            joined_at_ms,
            updated_at_ms: joined_at_ms + 1000,
        })
        .await
        .unwrap();
    first.shutdown();
    first.wait().await.unwrap();

    let second = civicline::runtime::start(config()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        second.flush_events().await;
        let rows = second.store.events(None, 10_000).await.unwrap();
        let restored = rows
            .iter()
            .find(|r| r.event.kind == "callback" && r.event.reason.as_deref() == Some("restored"));
        let joined = rows.iter().any(|r| {
            r.event.call_ref == "earlier-run-7" && r.event.reason.as_deref() == Some("joined")
        });
        if let (Some(restored), true) = (restored, joined) {
            let detail: serde_json::Value =
                serde_json::from_str(restored.event.detail.as_deref().unwrap()).unwrap();
            assert!(detail["waited_ms"].as_u64().unwrap() >= 600_000, "{detail}");
            assert_eq!(detail["attempts"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not restored: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.shutdown();
    second.wait().await.unwrap();
}

/// A callback that used up its attempts is in the manager's report.
#[tokio::test]
async fn a_failed_callback_shows_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let server = civicline::runtime::start(common::test_config(dir.path()))
        .await
        .unwrap();
    let at = common::unix_ms() - 60_000;
    let event = |reason: &str, offset: i64| civicline::runtime::store::StoredEvent {
        occurred_at_ms: at + offset,
        call_ref: "cb-report-1".into(),
        sip_call_id: String::new(),
        kind: "callback".into(),
        status_code: None,
        reason: Some(reason.into()),
        duration_ms: None,
        caller: None,
        detail: Some("{}".into()),
    };
    let rows: Vec<_> = [
        "requested",
        "dialing",
        "attempt_failed",
        "dialing",
        "attempt_failed",
        "failed",
    ]
    .iter()
    .enumerate()
    .map(|(i, r)| event(r, i as i64))
    .collect();
    server.store.append(&rows).await.unwrap();
    server.shutdown();
    server.wait().await.unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_civicline"))
        .args(["report", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(
            "Callbacks: 1 requested, 0 numbers refused by the dial plan, 2 calls to residents (2 unanswered or failed), 0 connected, 0 completed, 1 given up after all attempts"
        ),
        "{text}"
    );
}
