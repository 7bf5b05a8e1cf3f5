//! Queues end to end over 127.0.0.1. Agents' phones are real baresip softphones that REGISTER
//! with digest authentication and answer automatically; callers are baresip too, walking the
//! default flow with keys. A Spanish caller reaches the Spanish-speaking agent, an English
//! caller the most skilled English agent; a tone the caller sends is heard by the agent and the
//! agent's tone by the caller; hold and talk times are in the log and in the report.
//! Also, over raw UDP: the REGISTER challenge, 403 for a wrong password and for an unknown user
//! alike, 200 for the right one (MD5 and SHA-256), and the throttle after repeated failures.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{baresip_call, events, heard_recording};
use md5::{Digest, Md5};
use sha2::Sha256;
use tokio::net::UdpSocket;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn with_queues(algorithms: &[&str]) -> impl FnOnce(&mut civicline::config::Config) {
    let algorithms: Vec<String> = algorithms.iter().map(|a| a.to_string()).collect();
    move |c| {
        c.ivr.flow = root().join("routing-rules/ivr.toml");
        c.ivr.prompts_dir = root().join("prompts");
        c.routing.queues = root().join("routing-rules/queues.toml");
        c.routing.agents = root().join("routing-rules/agents.toml");
        c.routing.digest_algorithms = algorithms;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn h(algorithm: &str, text: &str) -> String {
    match algorithm {
        "MD5" => hex(&Md5::digest(text.as_bytes())),
        _ => hex(&Sha256::digest(text.as_bytes())),
    }
}

fn param(challenge: &str, name: &str) -> String {
    let start = challenge.find(&format!("{name}=")).unwrap() + name.len() + 1;
    let rest = &challenge[start..];
    let rest = rest.trim_start_matches('"');
    rest[..rest.find(['"', ',']).unwrap_or(rest.len())].to_string()
}

/// One REGISTER from `user` over `socket`; returns the whole response text.
async fn register(
    socket: &UdpSocket,
    server: std::net::SocketAddr,
    user: &str,
    cseq: u32,
    authorization: Option<String>,
) -> String {
    let port = socket.local_addr().unwrap().port();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let text = format!(
        "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKr{user}{cseq};rport\r\n\
         From: <sip:{user}@127.0.0.1>;tag=t{user}\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: reg-{user}\r\n\
         CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 600\r\n\
         Max-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    socket.send_to(text.as_bytes(), server).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(common::WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buffer[..n]).to_string()
}

fn answer(challenge: &str, algorithm: &str, user: &str, password: &str, uri: &str) -> String {
    let (realm, nonce, opaque) = (
        param(challenge, "realm"),
        param(challenge, "nonce"),
        param(challenge, "opaque"),
    );
    let ha1 = h(algorithm, &format!("{user}:{realm}:{password}"));
    let ha2 = h(algorithm, &format!("REGISTER:{uri}"));
    let response = h(
        algorithm,
        &format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"),
    );
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, cnonce=\"c0ffee\", qop=auth, nc=00000001, opaque=\"{opaque}\""
    )
}

fn challenges(response: &str) -> Vec<String> {
    response
        .lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn agents_authenticate_with_digest_and_guessing_is_refused_then_throttled() {
    let server = common::start_with(with_queues(&["SHA-256", "MD5"])).await;
    let target = server.udp();
    let uri = format!("sip:{target}");
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // No credentials: 401 with SHA-256 offered before MD5 (RFC 8760).
    let first = register(&socket, target, "1001", 1, None).await;
    assert!(first.starts_with("SIP/2.0 401"), "{first}");
    let offered = challenges(&first);
    assert_eq!(offered.len(), 2, "{first}");
    assert!(offered[0].contains("algorithm=SHA-256") && offered[1].contains("algorithm=MD5"));

    // The right password, SHA-256: 200 with the binding.
    let auth = answer(&offered[0], "SHA-256", "1001", "civic-1001", &uri);
    let ok = register(&socket, target, "1001", 2, Some(auth)).await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(ok.contains("Contact: <sip:1001@127.0.0.1:"), "{ok}");
    // And MD5 for another agent.
    let first = register(&socket, target, "1002", 1, None).await;
    let md5 = challenges(&first)
        .into_iter()
        .find(|c| c.contains("MD5"))
        .unwrap();
    let auth = answer(&md5, "MD5", "1002", "civic-1002", &uri);
    let ok = register(&socket, target, "1002", 2, Some(auth)).await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    // A wrong password and an unknown user get the same answer: 403.
    let attacker = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let first = register(&attacker, target, "1003", 1, None).await;
    let challenge = challenges(&first).remove(0);
    let wrong = register(
        &attacker,
        target,
        "1003",
        2,
        Some(answer(&challenge, "SHA-256", "1003", "guess", &uri)),
    )
    .await;
    let first = register(&attacker, target, "9999", 1, None).await;
    let challenge = challenges(&first).remove(0);
    let unknown = register(
        &attacker,
        target,
        "9999",
        2,
        Some(answer(&challenge, "SHA-256", "9999", "guess", &uri)),
    )
    .await;
    let status = |r: &str| r.lines().next().unwrap_or_default().to_string();
    assert_eq!(status(&wrong), "SIP/2.0 403 Forbidden");
    assert_eq!(status(&unknown), status(&wrong), "no account enumeration");

    // Keep guessing: after a few failures the source is throttled (503 with Retry-After,
    // nothing checked), while the agent's own source is unaffected.
    let mut throttled = None;
    for n in 0..10u32 {
        let first = register(&attacker, target, "1003", 10 + 2 * n, None).await;
        if first.starts_with("SIP/2.0 503") {
            throttled = Some(first);
            break;
        }
        let challenge = challenges(&first).remove(0);
        let reply = register(
            &attacker,
            target,
            "1003",
            11 + 2 * n,
            Some(answer(
                &challenge,
                "SHA-256",
                "1003",
                &format!("guess{n}"),
                &uri,
            )),
        )
        .await;
        if reply.starts_with("SIP/2.0 503") {
            throttled = Some(reply);
            break;
        }
        assert_eq!(status(&reply), "SIP/2.0 403 Forbidden");
    }
    let throttled = throttled.expect("repeated failures are throttled");
    assert!(throttled.contains("Retry-After: "), "{throttled}");
    let fine = register(&socket, target, "1001", 3, None).await;
    assert!(fine.starts_with("SIP/2.0 401"), "{fine}");
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// A WAV of a steady tone (8 kHz), after `silence_s` of silence.
fn tone_wav(path: &Path, hz: f64, seconds: f64, silence_s: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * 8000.0) as usize {
        let t = i as f64 / 8000.0;
        let sample = if t < silence_s {
            0.0
        } else {
            8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()
        };
        writer.write_sample(sample as i16).unwrap();
    }
    writer.finalize().unwrap();
}

/// The largest share of a 200 ms window's energy at `hz` (Goertzel), over the whole recording.
fn tone_share(samples: &[f64], hz: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    samples
        .chunks(1600)
        .filter(|w| w.len() == 1600)
        .map(|w| {
            let (mut s1, mut s2) = (0.0, 0.0);
            for x in w {
                let s0 = x + k * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - k * s1 * s2;
            let total: f64 = w.iter().map(|x| x * x).sum::<f64>() * w.len() as f64 / 2.0;
            if total > 0.0 {
                power / total
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_reach_agents_with_the_right_skill_and_hear_each_other() {
    // Debian's baresip 1.0 cannot answer a SHA-256 challenge at all: offer MD5 only here.
    let server = common::start_with(with_queues(&["MD5"])).await;
    let registrar = server.udp().to_string();
    let dir = tempfile::tempdir().unwrap();
    let agent_mic = dir.path().join("agent.wav");
    tone_wav(&agent_mic, 600.0, 90.0, 0.0);
    let caller_mic = dir.path().join("caller.wav");
    tone_wav(&caller_mic, 1000.0, 40.0, 6.0);

    // Ana (1001: Spanish 5, English 4) and Michael (1002: English 5) log in by registering.
    let mut agents = Vec::new();
    for (user, password) in [("1001", "civic-1001"), ("1002", "civic-1002")] {
        let child = Command::new("timeout")
            .arg("100")
            .arg(root().join("scripts/baresip-agent"))
            .args([user, password, &registrar, "90"])
            .env("BARESIP_SOURCE_WAV", &agent_mic)
            .env(
                "BARESIP_RECORD_DIR",
                dir.path().join(format!("agent-{user}")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip-agent runs");
        agents.push(child);
    }
    // Both are ready once their REGISTER went through (queue events show it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = events(&server).await;
        let ready = rows
            .iter()
            .filter(|r| {
                r.event.kind == "queue"
                    && r.event
                        .detail
                        .as_deref()
                        .unwrap_or("")
                        .contains("\"state\":\"ready\"")
            })
            .count();
        if ready >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents did not register: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A Spanish caller: 2 (Español), 0 (an agent). Then an English caller: 1, 0.
    let target = format!("sip:311@{}", server.udp());
    for (language_key, name) in [("2", "es"), ("1", "en")] {
        let (t, m, r) = (
            target.clone(),
            caller_mic.clone(),
            dir.path().join(format!("caller-{name}")),
        );
        let text = tokio::task::spawn_blocking(move || {
            baresip_call(
                t,
                16,
                vec![(2.0, language_key), (4.0, "0")],
                Some(&m),
                Some(&r),
            )
        })
        .await
        .unwrap();
        assert!(text.contains("Call established"), "{text}");
    }

    let rows = events(&server).await;
    let answered: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| r.event.kind == "queue" && r.event.reason.as_deref() == Some("answered"))
        .map(|r| serde_json::from_str(r.event.detail.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(answered.len(), 2, "{rows:#?}");
    assert_eq!(answered[0]["queue"], "general_es");
    assert_eq!(
        answered[0]["agent"], "a.garcia",
        "Spanish goes to the Spanish speaker"
    );
    assert_eq!(answered[1]["queue"], "general_en");
    assert_eq!(answered[1]["agent"], "m.okafor", "most skilled in English");
    for a in &answered {
        assert!(a["hold_ms"].as_u64().is_some(), "one hold time each: {a}");
    }

    // The audio crossed the bridge both ways: the caller's 1 kHz at the agent, the agent's
    // 600 Hz at the caller (a pure tone scores near 1, speech and silence far lower).
    let at_agent = heard_recording(&dir.path().join("agent-1001"));
    assert!(
        tone_share(&at_agent, 1000.0) > 0.8,
        "agent hears the caller's tone"
    );
    let at_caller = heard_recording(&dir.path().join("caller-es"));
    assert!(
        tone_share(&at_caller, 600.0) > 0.8,
        "caller hears the agent's tone"
    );
    let at_michael = heard_recording(&dir.path().join("agent-1002"));
    assert!(
        tone_share(&at_michael, 1000.0) > 0.8,
        "second call bridged too"
    );

    // The report shows each queue's answered call with its hold time.
    let report = civicline::runtime::report::queue_report(&server.server.store, None, 0, i64::MAX)
        .await
        .unwrap();
    let table = civicline::routing::metrics::render_table(&report);
    assert!(
        table.contains("general_es") && table.contains("general_en"),
        "{table}"
    );
    for queue in &report.queues {
        assert_eq!(queue.stats.answered, 1, "{table}");
    }
    for mut agent in agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// A server with queues whose `file` (queues.toml or agents.toml) is a copy in a temporary
/// folder, for a test to rewrite and reload: the server, the copy's path, its original text,
/// and the folder (kept alive by the caller).
async fn with_a_copy_of(
    file: &str,
    algorithms: &[&str],
) -> (
    common::TestServer,
    std::path::PathBuf,
    String,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(file);
    let original = std::fs::read_to_string(root().join("routing-rules").join(file)).unwrap();
    std::fs::write(&copy, &original).unwrap();
    let path = copy.clone();
    let queues = with_queues(algorithms);
    let is_agents = file == "agents.toml";
    let server = common::start_with(move |c| {
        queues(c);
        match is_agents {
            true => c.routing.agents = path,
            false => c.routing.queues = path,
        }
    })
    .await;
    (server, copy, original, dir)
}

/// Writes `broken` (which names the undeclared skill "klingon") to `file` and checks that a
/// reload is refused naming the file, the line and the skill.
async fn reload_is_refused_at_the_klingon(server: &common::TestServer, file: &Path, broken: &str) {
    std::fs::write(file, broken).unwrap();
    let line = broken[..broken.find("klingon").unwrap()]
        .matches('\n')
        .count()
        + 1;
    let name = file.file_name().unwrap().to_string_lossy();
    let error = format!("{:#}", server.server.reload_routing().await.unwrap_err());
    assert!(
        error.contains(&format!("{name}:{line}:")) && error.contains("klingon"),
        "{error}"
    );
}

#[tokio::test]
async fn a_broken_queue_file_is_refused_with_its_line_and_the_running_rules_stay() {
    let (server, queues, original, _dir) = with_a_copy_of("queues.toml", &["MD5"]).await;
    server
        .server
        .reload_routing()
        .await
        .expect("the same rules reload");

    // An unknown skill: refused with file, line and reason.
    let broken = original.replacen(
        "requires = { spanish = 3 }",
        "requires = { klingon = 3 }",
        1,
    );
    assert_ne!(broken, original);
    reload_is_refused_at_the_klingon(&server, &queues, &broken).await;
    // An overflow cycle too: streets -> sanitation -> streets.
    let cycle: String = original
        .lines()
        .scan(None::<String>, |queue, line| {
            if let Some(id) = line.strip_prefix("id = ") {
                *queue = Some(id.trim_matches('"').to_string());
            }
            let line = match (queue.as_deref(), line.starts_with("overflow = ")) {
                (Some("streets"), true) => "overflow = { after_s = 600, to = \"sanitation\" }",
                (Some("sanitation"), true) => "overflow = { after_s = 600, to = \"streets\" }",
                _ => line,
            };
            Some(format!("{line}\n"))
        })
        .collect();
    assert!(cycle.contains("to = \"sanitation\""));
    std::fs::write(&queues, &cycle).unwrap();
    let error = format!("{:#}", server.server.reload_routing().await.unwrap_err());
    assert!(
        error.contains("queues.toml:") && error.contains("cycle"),
        "{error}"
    );

    // The server still answers and a good file loads again.
    std::fs::write(&queues, &original).unwrap();
    server
        .server
        .reload_routing()
        .await
        .expect("good rules reload");
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

async fn http_post(server: &common::TestServer, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(server.server.http)
        .await
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response)
}

/// A manager token for the API tests here (tests/api.rs covers the tokens themselves).
const API_TOKEN: &str = "queue-calls-manager";

#[tokio::test]
async fn agents_go_not_ready_and_ready_through_the_http_api() {
    let queues = with_queues(&["SHA-256", "MD5"]);
    let server = common::start_with(|c| {
        queues(c);
        c.api.tokens = vec![civicline::config::ApiToken {
            name: "supervisor".into(),
            role: civicline::config::ApiRole::Manager,
            token_sha256: hex(&Sha256::digest(API_TOKEN.as_bytes())),
        }];
    })
    .await;
    let target = server.server.sip_udp[0];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first = register(&socket, target, "1002", 1, None).await;
    let auth = answer(
        &challenges(&first)[0],
        "SHA-256",
        "1002",
        "civic-1002",
        &format!("sip:{target}"),
    );
    assert!(register(&socket, target, "1002", 2, Some(auth))
        .await
        .starts_with("SIP/2.0 200"));

    let path = "/api/v1/agents/m.okafor/state";
    let (status, _) = http_post(&server, path, r#"{"state":"not_ready","reason":"lunch"}"#).await;
    assert_eq!(status, 202);
    let (status, _) = http_post(&server, path, r#"{"state":"ready"}"#).await;
    assert_eq!(status, 202);
    let (status, _) = http_post(
        &server,
        "/api/v1/agents/nobody/state",
        r#"{"state":"ready"}"#,
    )
    .await;
    assert_eq!(status, 404);
    // Well-formed JSON with a bad value names the field (422); malformed JSON is 400.
    let (status, _) = http_post(&server, path, r#"{"state":"asleep"}"#).await;
    assert_eq!(status, 422);
    let (status, _) = http_post(&server, path, "not json").await;
    assert_eq!(status, 400);

    // 202 means handed to the engine: wait (bounded) until the engine has logged both changes.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let states = loop {
        let states: Vec<String> = events(&server)
            .await
            .into_iter()
            .filter(|r| r.event.kind == "queue" && r.event.call_ref == "agent:m.okafor")
            .map(|r| {
                let detail: serde_json::Value =
                    serde_json::from_str(r.event.detail.as_deref().unwrap()).unwrap();
                detail["state"].to_string()
            })
            .collect();
        if states.len() >= 4 || tokio::time::Instant::now() > deadline {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        states,
        [
            r#"{"not_ready":"login"}"#,
            r#""ready""#,
            r#"{"not_ready":"lunch"}"#,
            r#""ready""#
        ],
        "login, ready on register, then the two API calls"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// REGISTER with the digest answer to the server's first challenge; the final response.
async fn sign_in(
    socket: &UdpSocket,
    target: std::net::SocketAddr,
    user: &str,
    password: &str,
    cseq: u32,
) -> String {
    let first = register(socket, target, user, cseq, None).await;
    let Some(challenge) = challenges(&first).into_iter().next() else {
        return first;
    };
    let auth = answer(
        &challenge,
        "SHA-256",
        user,
        password,
        &format!("sip:{target}"),
    );
    register(socket, target, user, cseq + 1, Some(auth)).await
}

/// agents.toml reloaded (SIGHUP's path): a removed agent is signed out and their phone
/// refused, a new agent's phone registers, and a broken file is refused with file, line and
/// reason while the agents already loaded stay.
#[tokio::test]
async fn agents_added_and_removed_in_the_file_take_effect_on_reload() {
    let (server, agents, original, _dir) = with_a_copy_of("agents.toml", &["SHA-256"]).await;
    let target = server.udp();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let status = |r: String| r.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        status(sign_in(&socket, target, "1002", "civic-1002", 1).await),
        "SIP/2.0 200 OK"
    );
    assert_eq!(
        status(sign_in(&socket, target, "1009", "civic-1009", 1).await),
        "SIP/2.0 403 Forbidden",
        "not an agent yet"
    );

    // m.okafor leaves the file; n.new (SIP user 1009) joins it.
    let without_okafor: Vec<&str> = original
        .split("[[agent]]")
        .filter(|block| !block.contains("id = \"m.okafor\""))
        .collect();
    assert_eq!(
        without_okafor.len() + 1,
        original.split("[[agent]]").count()
    );
    let ha1 = h("SHA-256", "1009:civicline:civic-1009");
    let changed = format!(
        "{}\n[[agent]]\nid = \"n.new\"\nname = \"New Agent\"\nsip_user = \"1009\"\n\
         ha1_sha256 = \"{ha1}\"\nskills = {{ english = 3, water = 2 }}\nlanguages = [\"en\"]\n",
        without_okafor.join("[[agent]]")
    );
    std::fs::write(&agents, &changed).unwrap();
    server
        .server
        .reload_routing()
        .await
        .expect("the new agents load");
    // Each answer below comes after the engine took the reload (one input channel).
    assert_eq!(
        status(sign_in(&socket, target, "1009", "civic-1009", 3).await),
        "SIP/2.0 200 OK",
        "the new agent's phone registers"
    );
    assert_eq!(
        status(sign_in(&socket, target, "1002", "civic-1002", 3).await),
        "SIP/2.0 403 Forbidden",
        "the removed agent's phone is refused"
    );
    server.server.flush_events().await;
    let states = |agent: &str, rows: &[civicline::runtime::store::EventRow]| -> Vec<String> {
        rows.iter()
            .filter(|r| r.event.kind == "queue" && r.event.call_ref == format!("agent:{agent}"))
            .map(|r| {
                let detail: serde_json::Value =
                    serde_json::from_str(r.event.detail.as_deref().unwrap()).unwrap();
                detail["state"].to_string()
            })
            .collect()
    };
    let rows = events(&server).await;
    assert_eq!(
        states("m.okafor", &rows).last().map(String::as_str),
        Some(r#""offline""#),
        "signed out by the reload: {:?}",
        states("m.okafor", &rows)
    );
    assert_eq!(
        states("n.new", &rows).last().map(String::as_str),
        Some(r#""ready""#),
        "signed in by their phone: {:?}",
        states("n.new", &rows)
    );

    // A broken file: refused with file, line and reason; n.new still registers.
    let broken = changed.replacen("water = 2", "klingon = 2", 1);
    reload_is_refused_at_the_klingon(&server, &agents, &broken).await;
    assert_eq!(
        status(sign_in(&socket, target, "1009", "civic-1009", 5).await),
        "SIP/2.0 200 OK"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
