//! Bad input and hostile peers over real loopback sockets: malformed datagrams, TCP framing,
//! slow and oversized TCP peers, the connection cap, graceful shutdown with calls up, /healthz.
//! Waits are for an event with a deadline (a reply, a closed socket), never a bare sleep.

mod common;

use std::time::Duration;

use civicline::sip::message::SipMessage;
use common::{branch_of, in_dialog, invite, options, Client, PCMU_OFFER, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn assert_still_answers(client: &Client, branch: &str) {
    client.send(&options(client.local(), branch)).await;
    let (_, ok) = client
        .recv_until(WAIT, |m| m.status() == Some(200) && branch_of(m) == branch)
        .await;
    assert!(ok.is_some(), "server stopped answering OPTIONS");
}

#[tokio::test]
async fn garbage_is_dropped_and_broken_requests_get_400() {
    let server = common::start().await;
    let client = Client::new(server.udp()).await;
    for junk in [
        &b"\x00\x01\x02garbage"[..],
        b"SIP/2.0 abc\r\n\r\n",
        b"INVITE\r\n\r\n",
        &[0xff; 1400],
    ] {
        client.send(junk).await;
    }
    // A request whose CSeq is broken: routable, so it gets 400 naming the fault.
    let bad = String::from_utf8(options(client.local(), "z9hG4bKbad"))
        .unwrap()
        .replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS");
    client.send(bad.as_bytes()).await;
    let reply = client.recv(WAIT).await.expect("a 400");
    assert_eq!(reply.status(), Some(400));
    assert!(
        reply
            .to_bytes()
            .starts_with(b"SIP/2.0 400 Bad Request (CSeq"),
        "{:?}",
        String::from_utf8_lossy(&reply.to_bytes())
    );
    // A datagram near the UDP maximum: no crash, still answering.
    let mut huge = options(client.local(), "z9hG4bKhuge");
    huge.truncate(huge.len() - 4);
    huge.extend(std::iter::repeat_n(b'a', 60_000));
    client.send(&huge).await;
    assert_still_answers(&client, "z9hG4bKafter").await;
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

async fn read_message(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<SipMessage> {
    loop {
        if let civicline::sip::framing::Frame::Message { len } =
            civicline::sip::framing::next_frame(buffer)
        {
            let message = SipMessage::parse(&buffer[..len]).unwrap();
            buffer.drain(..len);
            return Some(message);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn tcp_options(local: std::net::SocketAddr, branch: &str) -> Vec<u8> {
    String::from_utf8(options(local, branch))
        .unwrap()
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .into_bytes()
}

#[tokio::test]
async fn tcp_frames_by_content_length_and_answers_keepalives() {
    let server = common::start().await;
    let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
    let local = stream.local_addr().unwrap();
    // Two requests in one write, then one split across three writes.
    let mut both = tcp_options(local, "z9hG4bKt1");
    both.extend(tcp_options(local, "z9hG4bKt2"));
    stream.write_all(&both).await.unwrap();
    let third = tcp_options(local, "z9hG4bKt3");
    for piece in third.chunks(third.len() / 3 + 1) {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut buffer = Vec::new();
    let mut branches = Vec::new();
    for _ in 0..3 {
        let m = read_message(&mut stream, &mut buffer)
            .await
            .expect("a response");
        assert_eq!(m.status(), Some(200));
        branches.push(branch_of(&m));
    }
    assert_eq!(branches, ["z9hG4bKt1", "z9hG4bKt2", "z9hG4bKt3"]);
    // RFC 5626 keep-alive: a double CRLF ping gets a single CRLF pong.
    stream.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// True once the server closes the connection (read returns 0 or an error) within the deadline.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slow_and_endless_tcp_peers_are_cut_off_without_stalling_others() {
    let server = common::start_with(|c| c.sip.tcp_message_timeout_ms = 300).await;
    // A slow-loris: half a request, then nothing.
    let mut slow = TcpStream::connect(server.tcp()).await.unwrap();
    slow.write_all(&tcp_options(slow.local_addr().unwrap(), "z9hG4bKslow")[..40])
        .await
        .unwrap();
    // Headers that never end.
    let mut endless = TcpStream::connect(server.tcp()).await.unwrap();
    let mut flood = b"OPTIONS sip:311@127.0.0.1 SIP/2.0\r\nX-Flood: ".to_vec();
    flood.extend(std::iter::repeat_n(b'a', 70_000));
    let _ = endless.write_all(&flood).await;
    // Meanwhile another TCP caller and a UDP caller are served at once.
    let mut good = TcpStream::connect(server.tcp()).await.unwrap();
    good.write_all(&tcp_options(good.local_addr().unwrap(), "z9hG4bKgood"))
        .await
        .unwrap();
    let mut buffer = Vec::new();
    assert_eq!(
        read_message(&mut good, &mut buffer)
            .await
            .and_then(|m| m.status()),
        Some(200)
    );
    let udp = Client::new(server.udp()).await;
    assert_still_answers(&udp, "z9hG4bKudp").await;
    assert!(
        closed_by_server(&mut endless).await,
        "header flood must be cut off"
    );
    assert!(
        closed_by_server(&mut slow).await,
        "slow peer must be cut off after the message timeout"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

#[tokio::test]
async fn tcp_connection_cap_refuses_extra_connections() {
    let server = common::start_with(|c| c.sip.max_tcp_connections = 2).await;
    let mut held = Vec::new();
    for n in 0..2 {
        let mut s = TcpStream::connect(server.tcp()).await.unwrap();
        // A round trip proves the server accepted and registered this connection.
        s.write_all(&tcp_options(
            s.local_addr().unwrap(),
            &format!("z9hG4bKcap{n}"),
        ))
        .await
        .unwrap();
        let mut buffer = Vec::new();
        assert!(read_message(&mut s, &mut buffer).await.is_some());
        held.push(s);
    }
    let mut extra = TcpStream::connect(server.tcp()).await.unwrap();
    assert!(
        closed_by_server(&mut extra).await,
        "third connection must be refused"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

#[tokio::test]
async fn shutdown_hangs_up_calls_and_flushes_the_log() {
    let server = common::start().await;
    let client = Client::new(server.udp()).await;
    client
        .send(&invite(
            client.local(),
            "shut-1@test",
            "z9hG4bKs1",
            PCMU_OFFER,
        ))
        .await;
    let (_, ok) = client.recv_until(WAIT, |m| m.status() == Some(200)).await;
    let ok = ok.expect("200 OK");
    client
        .send(&in_dialog(client.local(), &ok, "ACK", 1, "z9hG4bKs2"))
        .await;
    server.server.shutdown();
    let (_, bye) = client.recv_until(WAIT, |m| m.method() == Some("BYE")).await;
    let bye = bye.expect("the server sends BYE on shutdown");
    assert_eq!(bye.header("Call-ID"), Some("shut-1@test"));
    let ok_bye = civicline::sip::response::build_response(&bye, server.udp(), 200, None, "test");
    client.send(&ok_bye.to_bytes()).await;
    let store = server.server.store.clone();
    server.server.wait().await.unwrap();
    let events = store.events(Some(""), 10).await.unwrap();
    assert!(events.is_empty());
    let all = store.events(None, 100).await.unwrap();
    let kinds: Vec<(&str, Option<&str>)> = all
        .iter()
        .map(|r| (r.event.kind.as_str(), r.event.reason.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("received", None),
            ("answered", None),
            ("ended", Some("shutdown")),
            ("rtp_stats", None)
        ]
    );
    assert_eq!(all[0].event.caller.as_deref(), Some("5551234567"));
}

#[tokio::test]
async fn healthz_reports_calls_and_the_event_log() {
    let server = common::start().await;
    let client = Client::new(server.udp()).await;
    client
        .send(&invite(
            client.local(),
            "health-1@test",
            "z9hG4bKh1",
            PCMU_OFFER,
        ))
        .await;
    let (_, ok) = client.recv_until(WAIT, |m| m.status() == Some(200)).await;
    assert!(ok.is_some());
    server.server.flush_events().await;
    // The engine publishes its counters at most every 100 ms: poll until they show the call.
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        let mut http = TcpStream::connect(server.server.http).await.unwrap();
        http.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        http.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body: serde_json::Value =
            serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        if body["calls_active"] == 1 || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "ok");
    assert_eq!(body["calls_active"], 1);
    assert_eq!(body["event_log"]["backend"], "sqlite");
    assert_eq!(body["event_log"]["committed"], 2);
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// Inputs the fuzz targets once crashed on (tests/fuzz-regressions/), sent as datagrams: the
/// server must drop or answer them and keep serving.
#[tokio::test]
async fn fuzz_regressions_do_not_crash_the_server() {
    let server = common::start().await;
    let client = Client::new(server.udp()).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        client.send(&std::fs::read(entry.path()).unwrap()).await;
        assert_still_answers(&client, &format!("z9hG4bKfuzz{count}")).await;
        count += 1;
    }
    assert!(count >= 2);
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
