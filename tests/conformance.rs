//! RFC 4475 and RFC 5118 torture messages, each sent over UDP to one running server. Every
//! message must get the answer tests/conformance/expected.toml gives (from the RFCs' text), and
//! after every message an OPTIONS must still get 200: nothing may wedge or crash the server.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{branch_of, conformance_dir, options, Client};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expectations {
    message: Vec<Expected>,
}

#[derive(Deserialize)]
struct Expected {
    file: String,
    section: String,
    expect: Vec<u16>,
    provisional_ok: bool,
}

#[tokio::test]
async fn torture_messages_get_the_rfc_answers() {
    let dir = conformance_dir();
    assert!(
        dir.join("rfc4475").is_dir(),
        "RFC 4475 messages not found at {} (set CIVICLINE_CONFORMANCE_DIR)",
        dir.display()
    );
    let table: Expectations = toml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/expected.toml"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        table.message.len(),
        61,
        "49 RFC 4475 + 12 RFC 5118 messages"
    );

    // A fresh server per message: several corpus messages share a transaction key (branch +
    // sent-by + method), and a correct server answers the second as a retransmission of the first.
    let mut failures = Vec::new();
    for (n, case) in table.message.iter().enumerate() {
        let server = common::start().await;
        let bytes = std::fs::read(dir.join(&case.file)).unwrap();
        let client = Client::new(server.udp()).await;
        client.send(&bytes).await;
        let probe_branch = format!("z9hG4bKprobe{n}");
        client.send(&options(client.local(), &probe_branch)).await;
        let (answers, probe) = client
            .recv_until(Duration::from_secs(5), |m| {
                m.status() == Some(200) && branch_of(m) == probe_branch
            })
            .await;
        if probe.is_none() {
            failures.push(format!("{}: OPTIONS after it got no 200", case.file));
            continue;
        }
        let finals: Vec<u16> = answers
            .iter()
            .filter_map(|m| m.status())
            .filter(|c| *c >= 200)
            .collect();
        let provisionals: BTreeSet<u16> = answers
            .iter()
            .filter_map(|m| m.status())
            .filter(|c| *c < 200)
            .collect();
        let requests = answers.iter().filter(|m| m.is_request()).count();
        let verdict = if case.expect.is_empty() {
            (answers.is_empty()).then_some(()).ok_or(format!(
                "expected no answer, got {finals:?} and {requests} requests"
            ))
        } else if finals.first().is_some_and(|c| case.expect.contains(c)) {
            if !provisionals.is_empty() && !case.provisional_ok {
                Err(format!("unexpected provisional {provisionals:?}"))
            } else {
                Ok(())
            }
        } else {
            Err(format!(
                "expected one of {:?}, got finals {finals:?}",
                case.expect
            ))
        };
        if let Err(why) = verdict {
            failures.push(format!(
                "{} (RFC section {}): {why}",
                case.file, case.section
            ));
        }
        server.server.shutdown();
        server.server.wait().await.expect("clean shutdown");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// All 61 messages back to back at one running server, each followed by an OPTIONS that must
/// still get 200; then a clean shutdown. Nothing in the corpus may wedge or kill the server.
#[tokio::test]
async fn one_server_survives_the_whole_corpus() {
    let dir = conformance_dir();
    let table: Expectations = toml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/expected.toml"
        ))
        .unwrap(),
    )
    .unwrap();
    let server = common::start().await;
    let client = Client::new(server.udp()).await;
    for round in 0..3 {
        for (n, case) in table.message.iter().enumerate() {
            client
                .send(&std::fs::read(dir.join(&case.file)).unwrap())
                .await;
            let probe_branch = format!("z9hG4bKall{round}x{n}");
            client.send(&options(client.local(), &probe_branch)).await;
            let (_, probe) = client
                .recv_until(Duration::from_secs(5), |m| {
                    m.status() == Some(200) && branch_of(m) == probe_branch
                })
                .await;
            assert!(
                probe.is_some(),
                "round {round}: OPTIONS after {} got no 200",
                case.file
            );
        }
    }
    server.server.shutdown();
    server
        .server
        .wait()
        .await
        .expect("clean shutdown after the torture run");
}

#[tokio::test]
async fn ipv6_listener_answers_options() {
    let server = common::start_with(|c| {
        c.sip.udp = vec!["[::1]:0".parse().unwrap()];
        c.sip.tcp = vec!["[::1]:0".parse().unwrap()];
    })
    .await;
    let client = Client::new(server.udp()).await;
    client.send(&options(client.local(), "z9hG4bKv6")).await;
    let reply = client
        .recv(common::WAIT)
        .await
        .expect("OPTIONS over IPv6 answered");
    assert_eq!(reply.status(), Some(200));
    assert!(reply.header("Allow").unwrap().contains("INVITE"));
    let via = reply.header("Via").unwrap();
    assert!(
        via.contains(&format!("rport={}", client.local().port())),
        "{via}"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
