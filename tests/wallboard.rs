//! The wallboard in a real browser: headless Chromium (Debian `chromium`, driven by
//! playwright-core from npm, tests/browser/wallboard.mjs) opens `/wallboard` on a running
//! server, reports the waiting count once the first live snapshot has rendered, then SIPp
//! places a call that waits in a queue and the page must show the count change. Screenshots of
//! the wallboard and the cases page are kept as test artefacts in
//! `target/test-artefacts/` (scripts/test installs chromium and the npm package).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use civicline::config::{ApiRole, ApiToken};

const READER: &str = "wallboard-test-token-0123456789";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn free_even_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if port % 2 == 0 && port < 65_000 {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallboard_shows_a_caller_joining_a_queue_in_chromium() {
    let server = common::start_with(|c| {
        c.ivr.flow = root().join("routing-rules/ivr.toml");
        c.ivr.prompts_dir = root().join("prompts");
        c.routing.queues = root().join("routing-rules/queues.toml");
        c.routing.agents = root().join("routing-rules/agents.toml");
        c.api.tokens = vec![ApiToken {
            name: "wallboard".into(),
            role: ApiRole::ReadOnly,
            token_sha256: sha256_hex(READER),
        }];
    })
    .await;
    let artefacts = root().join("target/test-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("wallboard.png");
    let base = format!("http://{}", server.server.http);
    let mut browser = Command::new("node")
        .arg(root().join("tests/browser/wallboard.mjs"))
        .args([&base, READER, screenshot.to_str().unwrap(), "60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/test installs nodejs, npm and chromium)");
    let stdout = browser.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("READY ") {
                let _ = ready_tx.send(line.clone());
            }
            lines.push(line);
        }
        lines
    });
    let ready = tokio::task::spawn_blocking(move || {
        ready_rx.recv_timeout(std::time::Duration::from_secs(60))
    })
    .await
    .unwrap();
    let Ok(ready) = ready else {
        let output = browser.wait_with_output().unwrap();
        panic!(
            "the page never rendered a snapshot: {:?} {}",
            reader.join().unwrap(),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    assert_eq!(ready, "READY initial=0", "nobody waits yet");

    // A caller asks for an agent (keys 1 then 0) and waits: nobody is logged in, and the
    // general queue keeps callers until max_wait_s. Its later keys are ignored in the queue.
    let mut caller = Command::new("sipp")
        .current_dir(root())
        .arg(server.udp().to_string())
        .args(["-sf", "tests/sipp/callback_walk.xml"])
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", "0"])
        .args(["-mp", &free_even_port().to_string()])
        .args(["-m", "1", "-l", "1", "-nostdin", "-timeout", "90s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs");
    let status = tokio::task::spawn_blocking(move || browser.wait().unwrap())
        .await
        .unwrap();
    let lines = reader.join().unwrap();
    let _ = caller.kill();
    let _ = caller.wait();
    assert!(status.success(), "browser test failed: {lines:?}");
    assert!(
        lines.iter().any(|l| l == "CHANGED from=0 to=1"),
        "{lines:?}"
    );
    assert!(lines.last().is_some_and(|l| l == "OK"), "{lines:?}");
    assert!(screenshot.is_file());
    assert!(artefacts.join("wallboard-cases.png").is_file());
}
