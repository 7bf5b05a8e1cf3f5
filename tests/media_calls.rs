//! Calls with real RTP over 127.0.0.1: SIPp plays a pcap (audio, speech and RFC 4733 keys) and
//! walks the default menu; all 16 DTMF keys arrive exactly once; a silent call is timed out;
//! malformed RTP and STUN are dropped and counted while symmetric RTP follows the caller.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use civicline::sip::sdp;
use common::{
    best_correlation, events, heard_recording, in_dialog, invite, read_wav, Client, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A free even UDP port for SIPp's media socket (tests run in parallel).
fn free_media_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if port % 2 == 0 && port < 65_000 {
            return port;
        }
    }
}

/// Runs a pcap-playing SIPp scenario from the repository root (where the pcap paths resolve).
async fn sipp_pcap(target: SocketAddr, scenario: &str) -> (i32, String) {
    let errors = tempfile::tempdir().unwrap();
    let error_file = errors.path().join("errors.log");
    let media_port = free_media_port().to_string();
    let mut command = Command::new("sipp");
    command
        .current_dir(root())
        .arg(target.to_string())
        .args(["-sf", &format!("tests/sipp/{scenario}")])
        .args([
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port,
            "-p",
            "0",
        ])
        .args([
            "-m",
            "1",
            "-l",
            "1",
            "-nostdin",
            "-timeout",
            "90s",
            "-timeout_error",
        ])
        .args(["-trace_err", "-error_file", error_file.to_str().unwrap()]);
    let output = tokio::task::spawn_blocking(move || {
        command
            .output()
            .expect("sipp runs (scripts/test installs it)")
    })
    .await
    .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    text.push_str(&std::fs::read_to_string(&error_file).unwrap_or_default());
    (output.status.code().unwrap_or(-1), text)
}

fn with_ivr(flow: &Path) -> impl FnOnce(&mut civicline::config::Config) + '_ {
    move |c| {
        c.ivr.flow = flow.to_path_buf();
        c.ivr.prompts_dir = root().join("prompts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_walks_the_default_menu_with_rtp_and_rfc4733() {
    let flow = root().join("routing-rules/ivr.toml");
    let server = common::start_with(|c| {
        with_ivr(&flow)(c);
        c.speech.model = "/nonexistent/ggml-model.bin".into();
    })
    .await;
    // A speech model that is not there: the server says so on /healthz and runs degraded, so the spoken
    // report is stored as a case with its recording and the caller goes to an agent.
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["speech"]["mode"], "degraded", "{health}");
    let (status, output) = sipp_pcap(server.udp(), "menu_walk.xml").await;
    assert_eq!(status, 0, "{output}");
    server.server.shutdown();
    let store = server.server.store.clone();
    server.server.wait().await.unwrap();
    let rows = store.events(None, 1000).await.unwrap();
    let steps: Vec<&str> = rows
        .iter()
        .filter(|r| r.event.kind == "ivr_step")
        .filter_map(|r| r.event.reason.as_deref())
        .collect();
    assert_eq!(
        steps,
        [
            "language",
            "main_menu",
            "describe_problem",
            "understand",
            "create_case_for_agent",
            "agent"
        ]
    );
    let digits: Vec<&str> = rows
        .iter()
        .filter(|r| r.event.kind == "digit")
        .filter_map(|r| r.event.detail.as_deref())
        .collect();
    assert_eq!(
        digits, [r#"{"digit":"1"}"#; 3],
        "each RFC 4733 key press once"
    );
    let prompts: Vec<String> = rows
        .iter()
        .filter(|r| r.event.kind == "prompt")
        .map(|r| {
            let detail: serde_json::Value =
                serde_json::from_str(r.event.detail.as_deref().unwrap()).unwrap();
            let ids: Vec<&str> = detail["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            ids.join("+")
        })
        .collect();
    assert_eq!(
        prompts,
        [
            "greeting_language",
            "main_menu",
            "describe_problem+tone",
            "your_case_number_is+digit_1+digit_0+digit_0+digit_0+digit_0+digit_0+digit_1",
            "transferring+all_agents_busy"
        ],
        "the prompts played, in order"
    );
    // The recording: speech of 4.0 s after about 2 s of comfort noise, ended by 1.5 s of silence.
    let recording = rows
        .iter()
        .find(|r| r.event.kind == "recording")
        .expect("a recording event");
    assert_eq!(recording.event.reason.as_deref(), Some("end_of_speech"));
    let millis = recording.event.duration_ms.unwrap();
    assert!((5_000..10_000).contains(&millis), "recorded {millis} ms");
    let detail: serde_json::Value =
        serde_json::from_str(recording.event.detail.as_deref().unwrap()).unwrap();
    let wav = hound::WavReader::open(detail["path"].as_str().unwrap())
        .expect("the recording is kept as a WAV");
    let samples: Vec<i16> = wav.into_samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(samples.len() as i64 / 8, millis);
    // Energy: the loudest second must be speech-loud (the comfort noise is near -60 dBFS).
    let loudest = samples
        .chunks(8000)
        .map(|c| (c.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .fold(0.0, f64::max);
    assert!(loudest > 1000.0, "loudest second RMS {loudest}");
    let transcript = rows.iter().find(|r| r.event.kind == "transcript").unwrap();
    assert_eq!(transcript.event.reason.as_deref(), Some("unavailable"));
    let ended = rows.iter().find(|r| r.event.kind == "ended").unwrap();
    assert_eq!(ended.event.reason.as_deref(), Some("no_queue"));
    // The report became case 1000001 at once, linked to its recording, and was read back.
    let created = rows
        .iter()
        .find(|r| r.event.kind == "case_created")
        .expect("case_created");
    assert_eq!(
        created.event.detail.as_deref(),
        Some(r#"{"case_number":"1000001"}"#)
    );
    let case = store
        .find_case("1000001")
        .await
        .unwrap()
        .expect("the case is stored");
    assert_eq!(case.status, "open");
    assert_eq!(case.audio_path.as_deref(), detail["path"].as_str());
    assert_eq!(
        case.call_ref.as_deref(),
        Some(created.event.call_ref.as_str())
    );
    let stats = rows
        .iter()
        .find(|r| r.event.kind == "rtp_stats")
        .expect("RTP stats at hang-up");
    let stats: serde_json::Value =
        serde_json::from_str(stats.event.detail.as_deref().unwrap()).unwrap();
    assert!(
        stats["packets_received"].as_u64().unwrap() > 1000,
        "{stats}"
    );
    assert!(stats["packets_sent"].as_u64().unwrap() > 1000, "{stats}");
    assert_eq!(stats["packets_lost"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sixteen_rfc4733_keys_arrive_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("digits.toml");
    std::fs::write(
        &flow,
        r#"start = "collect"
languages = ["en"]
retry_prompt = "sorry_didnt_get_that"

[[step]]
id = "collect"
kind = "digits"
prompts = ["enter_case_number"]
max_digits = 30
timeout_ms = 10000
next = "bye"

[[step]]
id = "bye"
kind = "hangup"
prompts = ["goodbye", "silence_200ms", "goodbye"]
"#,
    )
    .unwrap();
    let server = common::start_with(with_ivr(&flow)).await;
    let (status, output) = sipp_pcap(server.udp(), "dtmf_digits.xml").await;
    assert_eq!(status, 0, "{output}");
    let rows = events(&server).await;
    let digits: String = rows
        .iter()
        .filter(|r| r.event.kind == "digit")
        .map(|r| {
            let detail: serde_json::Value =
                serde_json::from_str(r.event.detail.as_deref().unwrap()).unwrap();
            detail["digit"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(digits, "0123456789*#ABCD");
    let collected = rows
        .iter()
        .find(|r| r.event.reason.as_deref() == Some("collect:collected"))
        .unwrap();
    assert_eq!(
        collected.event.detail.as_deref(),
        Some(r#"{"digits":"0123456789*"}"#)
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// INVITE (SDP pointing at `rtp`) and ACK; returns the server's RTP address from the answer.
async fn establish(
    client: &Client,
    rtp: &UdpSocket,
    call_id: &str,
) -> (SocketAddr, civicline::sip::message::SipMessage) {
    let offer = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        rtp.local_addr().unwrap().port()
    );
    client
        .send(&invite(
            client.local(),
            call_id,
            &format!("z9hG4bK{call_id}"),
            &offer,
        ))
        .await;
    let (_, ok) = client.recv_until(WAIT, |m| m.status() == Some(200)).await;
    let ok = ok.expect("200 OK");
    client
        .send(&in_dialog(
            client.local(),
            &ok,
            "ACK",
            1,
            &format!("z9hG4bK{call_id}ack"),
        ))
        .await;
    let answer = sdp::parse(&ok.body).unwrap();
    let audio = &answer.media[0];
    let ip = audio.connection.or(answer.connection).unwrap();
    (SocketAddr::new(ip, audio.port), ok)
}

#[tokio::test]
async fn a_call_without_rtp_is_timed_out_and_ended_cleanly() {
    let server = common::start_with(|c| c.media.rtp_timeout_s = 1).await;
    let client = Client::new(server.udp()).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    establish(&client, &rtp, "silent-1").await;
    let (_, bye) = client.recv_until(WAIT, |m| m.method() == Some("BYE")).await;
    let bye = bye.expect("BYE after the RTP timeout");
    client
        .send(
            &civicline::sip::response::build_response(&bye, server.udp(), 200, None, "t")
                .to_bytes(),
        )
        .await;
    let rows = events(&server).await;
    let ended = rows
        .iter()
        .find(|r| r.event.kind == "ended")
        .expect("ended");
    assert_eq!(ended.event.reason.as_deref(), Some("rtp_timeout"));
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

async fn healthz(server: &common::TestServer) -> serde_json::Value {
    let mut http = TcpStream::connect(server.server.http).await.unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// Receives RTP until one packet comes; returns its payload type.
async fn next_rtp(socket: &UdpSocket) -> Option<u8> {
    let mut buffer = [0u8; 2048];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .ok()?
        .ok()?;
    civicline::media::rtp::parse(&buffer[..len])
        .ok()
        .map(|p| p.header.payload_type)
}

#[tokio::test]
async fn malformed_rtp_and_stun_are_dropped_and_rtp_is_symmetric() {
    let server = common::start().await;
    let client = Client::new(server.udp()).await;
    let offered = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (server_rtp, _) = establish(&client, &offered, "media-1").await;
    // The server sends 20 ms PCMU frames to the address in our offer.
    assert_eq!(next_rtp(&offered).await, Some(0));
    // From another socket: garbage, a STUN binding request, then one valid PCMU packet.
    let actual = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    actual
        .send_to(b"\x00\x01garbage", server_rtp)
        .await
        .unwrap();
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[7u8; 12]);
    actual.send_to(&stun, server_rtp).await.unwrap();
    let mut packet = Vec::new();
    civicline::media::rtp::write(
        &civicline::media::rtp::RtpHeader::new(0, 1, 160, 0xCAFE),
        &[0xFF; 160],
        &mut packet,
    );
    actual.send_to(&packet, server_rtp).await.unwrap();
    // Symmetric RTP: the server now sends where the caller's RTP really comes from.
    assert_eq!(
        next_rtp(&actual).await,
        Some(0),
        "RTP follows the caller's real source"
    );
    let health = healthz(&server).await;
    assert!(
        health["media"]["malformed"].as_u64().unwrap() >= 1,
        "{health}"
    );
    assert!(
        health["media"]["stun_ignored"].as_u64().unwrap() >= 1,
        "{health}"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
    let _ = Duration::ZERO;
}

/// baresip calls with its aufile "microphone" playing speech and its sndfile module recording
/// what it hears. The flow greets, records after a tone, and says goodbye.
///
/// Threshold 0.9 for the cross-correlations: the audio crosses G.711 mu-law once (about 38 dB
/// SNR, which alone allows a correlation near 0.999), and a 0.5 s excerpt is short enough not
/// to straddle a jitter-buffer adjustment; an unrelated prompt (the negative control below)
/// scores far lower, so 0.9 separates "this is the greeting" from "this is speech".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_hears_the_greeting_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("greet_record.toml");
    std::fs::write(
        &flow,
        r#"start = "greet"
languages = ["en"]
retry_prompt = "sorry_didnt_get_that"

[[step]]
id = "greet"
kind = "say"
prompts = ["greeting_language"]
next = "record"

[[step]]
id = "record"
kind = "record"
prompts = ["tone"]
max_seconds = 20
silence_ms = 1500
next = "bye"

[[step]]
id = "bye"
kind = "hangup"
prompts = ["goodbye"]
"#,
    )
    .unwrap();
    // The microphone: 9 s of silence (greeting 7.7 s + tone 0.3 s, then 1 s), the speech, 8 s.
    let speech = read_wav(&root().join("tests/media/speech_pothole.wav"));
    let mic = dir.path().join("mic.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&mic, spec).unwrap();
    for sample in std::iter::repeat_n(0.0, 72_000)
        .chain(speech.iter().copied())
        .chain(std::iter::repeat_n(0.0, 64_000))
    {
        writer.write_sample(sample as i16).unwrap();
    }
    writer.finalize().unwrap();

    let server = common::start_with(with_ivr(&flow)).await;
    let heard = dir.path().join("heard");
    let target = format!("sip:311@{}", server.udp());
    let script = root().join("scripts/baresip-call");
    let (mic_env, heard_env) = (mic.clone(), heard.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("60")
            .arg(script)
            .args([&target, "22"])
            .env("BARESIP_SOURCE_WAV", mic_env)
            .env("BARESIP_RECORD_DIR", heard_env)
            .output()
            .expect("baresip-call runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("Call established"), "{text}");

    // The server's recording: about 1 s before the speech, 4.0 s of speech, 1.5 s of silence.
    let rows = events(&server).await;
    let recording = rows
        .iter()
        .find(|r| r.event.kind == "recording")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(recording.event.reason.as_deref(), Some("end_of_speech"));
    let millis = recording.event.duration_ms.unwrap();
    assert!(
        (5_500..8_000).contains(&millis),
        "recorded {millis} ms, expected about 6.5 s"
    );
    let detail: serde_json::Value =
        serde_json::from_str(recording.event.detail.as_deref().unwrap()).unwrap();
    let recorded = read_wav(Path::new(detail["path"].as_str().unwrap()));
    let speech_excerpt = &speech[8000..12_000];
    let (score, _) = best_correlation(speech_excerpt, &recorded, 0..recorded.len());
    assert!(
        score > 0.9,
        "the caller's speech is in the recording: correlation {score:.3}"
    );

    // What baresip heard contains the greeting.
    let heard_audio = heard_recording(&heard);
    let greeting = read_wav(&root().join("prompts/common/greeting_language.wav"));
    let (score, lag) = best_correlation(&greeting[8000..12_000], &heard_audio, 0..40_000);
    assert!(
        score > 0.9,
        "greeting heard: correlation {score:.3} at lag {lag}"
    );
    let goodbye = read_wav(&root().join("prompts/en/goodbye.wav"));
    let (control, _) = best_correlation(&goodbye[4000..8000], &heard_audio[..56_000], 0..40_000);
    assert!(
        control < 0.5,
        "negative control: an unplayed prompt correlates {control:.3}"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
