//! Test support shared by the integration tests: an in-process server on free loopback ports
//! with its own data directory, and a small UDP SIP client that waits for replies with a deadline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use civicline::config::Config;
use civicline::runtime::{self, Server};
use civicline::sip::message::SipMessage;
use tokio::net::UdpSocket;

pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

/// A config for tests: loopback, port 0 everywhere, a fresh SQLite file.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.sip.udp = vec!["127.0.0.1:0".parse().unwrap()];
    config.sip.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.sip.answer_delay_ms = 0;
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.rtp_port_min = 0;
    config.media.rtp_ports = 32;
    config.store.data_dir = dir.to_path_buf();
    config.sip.shutdown_grace_ms = 500;
    // SIP-level tests run without the IVR; tests/ivr_calls.rs turns it on.
    config.ivr.flow = std::path::PathBuf::new();
    // Whisper is loaded only where a test asks for it (tests/speech_calls.rs): elsewhere the
    // speech stage runs degraded, which is itself a tested mode.
    config.speech.model = std::path::PathBuf::new();
    // One ggml thread: tests run side by side on two cores, and spinning threads beyond the
    // cores stall each other.
    config.speech.threads = 1;
    // Normal priority: under SCHED_IDLE a transcription would wait for whatever the test run
    // beside it keeps the cores busy with (production wants exactly that: calls first).
    config.speech.background_priority = false;
    // Queues only where a test asks for them (tests/queue_calls.rs).
    config.routing.queues = std::path::PathBuf::new();
    config
}

/// The imported speech model (scripts/fetch-model; scripts/test runs it), or a clear failure.
pub fn speech_model() -> PathBuf {
    let path = std::env::var("CIVICLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/models/ggml-tiny.en.bin")
        });
    assert!(
        path.is_file(),
        "{} missing: run scripts/fetch-model (scripts/test does)",
        path.display()
    );
    path
}

pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    edit(&mut config);
    let server = runtime::start(config).await.expect("server starts");
    TestServer { server, dir }
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    pub fn udp(&self) -> SocketAddr {
        self.server.sip_udp[0]
    }
    pub fn tcp(&self) -> SocketAddr {
        self.server.sip_tcp[0]
    }
}

/// Where the shared RFC torture messages are (beside the checkout, or `CIVICLINE_CONFORMANCE_DIR`).
pub fn conformance_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CIVICLINE_CONFORMANCE_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance")
}

pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    pub async fn new(server: SocketAddr) -> Client {
        let bind = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        Client {
            socket: UdpSocket::bind(bind).await.unwrap(),
            server,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    /// The next message, or None when nothing arrives within `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<SipMessage> {
        let mut buffer = vec![0u8; 65_536];
        match tokio::time::timeout(wait, self.socket.recv_from(&mut buffer)).await {
            Ok(Ok((len, _))) => {
                Some(SipMessage::parse(&buffer[..len]).expect("server sent parseable SIP"))
            }
            _ => None,
        }
    }

    /// Receives until a message satisfies `done`; returns everything received before it too.
    pub async fn recv_until(
        &self,
        wait: Duration,
        mut done: impl FnMut(&SipMessage) -> bool,
    ) -> (Vec<SipMessage>, Option<SipMessage>) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(m) if done(&m) => return (before, Some(m)),
                Some(m) => before.push(m),
                None => return (before, None),
            }
        }
    }
}

pub fn branch_of(message: &SipMessage) -> String {
    message
        .header_values("Via")
        .first()
        .and_then(|v| civicline::sip::headers::Via::parse(v).ok())
        .and_then(|v| v.branch().map(str::to_string))
        .unwrap_or_default()
}

/// The host part of a SIP URI for an address (IPv6 in brackets).
pub fn uri_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}

pub fn options(local: SocketAddr, branch: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:311@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=p{branch}\r\nTo: <sip:311@{host}>\r\n\
Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        host = uri_host(local),
    )
    .into_bytes()
}

pub const PCMU_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

pub fn invite(local: SocketAddr, call_id: &str, branch: &str, sdp: &str) -> Vec<u8> {
    let host = uri_host(local);
    format!(
        "INVITE sip:311@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: \"Resident\" <sip:5551234567@{host}>;tag=f{call_id}\r\nTo: <sip:311@{host}>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:5551234567@{local}>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// An ACK or BYE in the dialog a 200 OK established.
pub fn in_dialog(
    local: SocketAddr,
    ok: &SipMessage,
    method: &str,
    cseq: u32,
    branch: &str,
) -> Vec<u8> {
    format!(
        "{method} sip:311@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        host = uri_host(local),
        from = ok.header("From").unwrap(),
        to = ok.header("To").unwrap(),
        call_id = ok.header("Call-ID").unwrap(),
    )
    .into_bytes()
}

pub const WAIT: Duration = Duration::from_secs(5);

/// An 8 kHz WAV as samples.
pub fn read_wav(path: &std::path::Path) -> Vec<f64> {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(reader.spec().sample_rate, 8000, "{}", path.display());
    reader
        .into_samples::<i16>()
        .map(|s| s.unwrap() as f64)
        .collect()
}

/// Best normalised cross-correlation of `needle` against `haystack` at lags in `lags`.
pub fn best_correlation(
    needle: &[f64],
    haystack: &[f64],
    lags: std::ops::Range<usize>,
) -> (f64, usize) {
    let needle_norm = needle.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut best = (0.0, 0);
    for lag in lags {
        let Some(window) = haystack.get(lag..lag + needle.len()) else {
            break;
        };
        let dot: f64 = needle.iter().zip(window).map(|(a, b)| a * b).sum();
        let norm = window.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 && dot / (needle_norm * norm) > best.0 {
            best = (dot / (needle_norm * norm), lag);
        }
    }
    best
}

/// A call from baresip (scripts/baresip-call) to `target` for `seconds`: `keys` are (seconds
/// after dialling, text) typed on its console, which baresip sends as RFC 4733 events; `mic` is
/// what it says; what it hears is recorded under `heard` (see [`heard_recording`]). Returns its
/// output. Real time on purpose: baresip is a real phone on a real clock.
pub fn baresip_call(
    target: String,
    seconds: u32,
    keys: Vec<(f64, &'static str)>,
    mic: Option<&std::path::Path>,
    heard: Option<&std::path::Path>,
) -> String {
    use std::process::{Command, Stdio};
    let mut command = Command::new("timeout");
    command
        .arg((seconds + 15).to_string())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/baresip-call"))
        .args([target, seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(mic) = mic {
        command.env("BARESIP_SOURCE_WAV", mic);
    }
    if let Some(heard) = heard {
        command.env("BARESIP_RECORD_DIR", heard);
    }
    let mut child = command.spawn().expect("baresip-call runs");
    let mut stdin = child.stdin.take().unwrap();
    let typist = std::thread::spawn(move || {
        use std::io::Write;
        let mut at = 0.0;
        for (when, text) in keys {
            std::thread::sleep(Duration::from_secs_f64((when - at).max(0.0)));
            at = when;
            let _ = stdin.write_all(text.as_bytes());
            let _ = stdin.flush();
        }
        // Keep stdin open until baresip ends the call itself.
        std::thread::sleep(Duration::from_secs(u64::from(seconds)));
    });
    let output = child.wait_with_output().unwrap();
    drop(typist);
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

/// What baresip heard on its call: the `*-dec.wav` its sndfile module wrote into `dir`.
pub fn heard_recording(dir: &std::path::Path) -> Vec<f64> {
    let dec = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip's recording of what it heard");
    read_wav(&dec)
}

/// Every event committed so far, in log order.
pub async fn events(server: &TestServer) -> Vec<civicline::runtime::store::EventRow> {
    server.server.flush_events().await;
    server.server.store.events(None, 10_000).await.unwrap()
}

/// Wall-clock Unix milliseconds, to compare with the event log's `occurred_at_ms`.
pub fn unix_ms() -> i64 {
    civicline::runtime::unix_ms_now()
}

/// One HTTP/1.1 exchange over a fresh connection (`Connection: close`): status, headers
/// (lowercased names) and body, with a chunked body decoded.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut bytes = Vec::new();
    if let Some((content_type, data)) = body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            data.len()
        ));
        bytes.extend_from_slice(request.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(data);
    } else {
        request.push_str("\r\n");
        bytes.extend_from_slice(request.as_bytes());
    }
    // The server may answer (413) before reading all of a large body: ignore write errors.
    let _ = stream.write_all(&bytes).await;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a full response");
    let status = head[9..12].parse().unwrap();
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// The bundled IVR flow (routing-rules/ivr.toml) with the bundled prompts, for fake-clock tests.
pub fn bundled_flow() -> std::sync::Arc<civicline::ivr::Flow> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exists = civicline::ivr::prompt_exists_in(&root.join("prompts"), &["en", "es"]);
    std::sync::Arc::new(
        civicline::ivr::Flow::load(&root.join("routing-rules/ivr.toml"), &exists)
            .expect("the bundled flow is valid"),
    )
}

/// The bundled queues and agents, hold music, announcements every minute.
pub fn bundled_routing() -> std::sync::Arc<civicline::engine::RoutingSetup> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules =
        civicline::routing::rules::Rules::load(&root.join("routing-rules/queues.toml")).unwrap();
    let agents =
        civicline::routing::rules::load_agents(&root.join("routing-rules/agents.toml"), &rules)
            .unwrap();
    std::sync::Arc::new(civicline::engine::RoutingSetup {
        rules,
        agents,
        digest: Default::default(),
        ready_on_register: true,
        hold_prompts: vec!["hold_music".into(), "please_hold".into()],
        announce_every: Duration::from_secs(60),
    })
}

pub fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
