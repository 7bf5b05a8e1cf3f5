//! SIPp (Debian `sip-tester`) as a real caller over 127.0.0.1 against an in-process server:
//! 200 sequential calls INVITE/200/ACK/BYE/200, CANCEL before answer (200 + 487), a G.729-only
//! offer (488), calls over TCP; and every one of them must be in the event log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use civicline::runtime::store::EventRow;

fn sipp_available() {
    let found = Command::new("sipp").arg("-v").output().is_ok();
    assert!(
        found,
        "sipp not found: install Debian's sip-tester (scripts/test does)"
    );
}

/// Runs sipp to completion (bounded by `-timeout`), returning its exit status and output.
async fn sipp(target: SocketAddr, args: &[&str]) -> (i32, String) {
    sipp_available();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("sipp");
    command
        .current_dir(dir.path())
        .arg(target.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-nostdin",
            "-timeout",
            "120s",
            "-timeout_error",
            "-trace_err",
        ])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output().expect("sipp runs"))
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    // Keep sipp's error log in the failure message: it says what went wrong on the wire.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with("_errors.log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    (output.status.code().unwrap_or(-1), text)
}

fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn all_events(server: &common::TestServer) -> Vec<EventRow> {
    server.server.flush_events().await;
    server.server.store.events(None, 1_000_000).await.unwrap()
}

/// Call events per call reference, in order. `rtp_stats` is left out: it is the media layer's
/// report, checked on its own where it matters.
fn kinds_per_call(events: &[EventRow]) -> BTreeMap<String, Vec<String>> {
    let mut per_call: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in events.iter().filter(|r| r.event.kind != "rtp_stats") {
        per_call
            .entry(row.event.call_ref.clone())
            .or_default()
            .push(row.event.kind.clone());
    }
    per_call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sequential_calls_all_succeed_and_are_logged() {
    let server = common::start().await;
    let (status, output) = sipp(
        server.udp(),
        &["-sn", "uac", "-m", "200", "-l", "1", "-r", "100"],
    )
    .await;
    assert_eq!(status, 0, "sipp reported failed calls:\n{output}");
    server.server.shutdown();
    let store = server.server.store.clone();
    server.server.wait().await.unwrap();
    let events = store.events(None, 1_000_000).await.unwrap();
    let per_call = kinds_per_call(&events);
    assert_eq!(per_call.len(), 200, "one call reference per call");
    for (call, kinds) in &per_call {
        assert_eq!(kinds, &["received", "answered", "ended"], "call {call}");
    }
    let sip_ids: BTreeSet<&str> = events
        .iter()
        .map(|r| r.event.sip_call_id.as_str())
        .collect();
    assert_eq!(sip_ids.len(), 200);
    assert!(events
        .iter()
        .filter(|r| r.event.kind == "ended")
        .all(
            |r| r.event.reason.as_deref() == Some("caller_hangup") && r.event.duration_ms.is_some()
        ));
    // Times are wall-clock milliseconds, in log order.
    assert!(events
        .windows(2)
        .all(|w| w[0].event.occurred_at_ms <= w[1].event.occurred_at_ms));
}

/// Runs five calls of a scenario that ends each call with one final event, and checks every
/// call's log is `received` then that event, with the status code and reason expected.
async fn five_calls_end_as(
    server: common::TestServer,
    scenario_file: &str,
    kind: &str,
    code: i32,
    reason: &str,
) {
    let (status, output) = sipp(
        server.udp(),
        &["-sf", &scenario(scenario_file), "-m", "5", "-l", "1"],
    )
    .await;
    assert_eq!(status, 0, "{output}");
    let events = all_events(&server).await;
    let per_call = kinds_per_call(&events);
    assert_eq!(per_call.len(), 5);
    for kinds in per_call.values() {
        assert_eq!(kinds, &["received", kind]);
    }
    assert!(events
        .iter()
        .filter(|r| r.event.kind == kind)
        .all(|r| r.event.status_code == Some(code)
            && r.event.reason.as_deref().unwrap_or("").starts_with(reason)));
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_answer_gets_200_and_487() {
    let server = common::start_with(|c| c.sip.answer_delay_ms = 3_000).await;
    five_calls_end_as(server, "cancel.xml", "cancelled", 487, "caller_cancelled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g729_only_offer_gets_488() {
    five_calls_end_as(
        common::start().await,
        "g729.xml",
        "rejected",
        488,
        "no_common_codec",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_tcp() {
    let server = common::start().await;
    let (status, output) = sipp(
        server.tcp(),
        &["-sn", "uac", "-t", "t1", "-m", "50", "-l", "5", "-r", "50"],
    )
    .await;
    assert_eq!(status, 0, "{output}");
    server.server.shutdown();
    let store = server.server.store.clone();
    server.server.wait().await.unwrap();
    let per_call = kinds_per_call(&store.events(None, 10_000).await.unwrap());
    assert_eq!(per_call.len(), 50);
    assert!(per_call
        .values()
        .all(|k| k == &["received", "answered", "ended"]));
}

/// baresip (Debian `baresip-core`), headless, calls in through scripts/baresip-call, stays up for
/// two seconds and hangs up: the call is answered and its talk time recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_call_is_answered_and_logged() {
    let server = common::start().await;
    let target = format!("sip:311@{}", server.udp());
    let script = format!("{}/scripts/baresip-call", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["30", &script, &target, "2"])
            .output()
            .expect("baresip-call runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("Call established"), "{text}");
    let events = all_events(&server).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|r| r.event.kind.as_str())
        .filter(|k| *k != "rtp_stats")
        .collect();
    assert_eq!(kinds, ["received", "answered", "ended"], "{text}");
    assert_eq!(events[0].event.caller.as_deref(), Some("resident"));
    let talk = events[2].event.duration_ms.unwrap();
    assert!(
        (1_500..10_000).contains(&talk),
        "talk time {talk} ms for a 2 s call"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
