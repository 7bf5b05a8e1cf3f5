//! RTP pacing benchmark: for 100, 500 and 1000 concurrent calls, each being played a prompt, how
//! far the gaps between a call's RTP packets stray from 20 ms (p50, p99, max), and the server's
//! CPU per call. The release server runs as its own process (so its CPU is measured alone); this
//! process places the calls over 127.0.0.1 and timestamps every RTP packet on arrival.
//!
//! Run: `cargo bench --bench pacing` (add `-- 100 500` to choose call counts, `--seconds N` for
//! the measurement window). Arrival times are the kernel's receive timestamps (SO_TIMESTAMPNS),
//! so this client's own scheduling on the same two cores does not blur them; `--user-time`
//! timestamps in user space instead, to show how much a busy receiver adds.
#![allow(clippy::disallowed_methods)] // a fake clock needs one real base instant

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use civicline::sip::message::SipMessage;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Enables kernel receive timestamps on a socket.
fn enable_timestamps(socket: &UdpSocket) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and a pointer to a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMPNS");
}

/// One datagram with the kernel's arrival time (nanoseconds, CLOCK_REALTIME).
fn recv_timestamped(fd: i32, buffer: &mut [u8]) -> std::io::Result<(usize, u128)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr() as *mut libc::c_void,
        iov_len: buffer.len(),
    };
    let mut control = [0u8; 128];
    // SAFETY: msghdr is plain data; every pointer set below refers to a live local buffer.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    header.msg_controllen = control.len() as _;
    // SAFETY: recvmsg on a valid non-blocking fd with the buffers described above.
    let len = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = 0u128;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                stamp = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok((len as usize, stamp))
}

const FLOW: &str = r#"start = "play"
languages = ["en"]
retry_prompt = "sorry_didnt_get_that"

[[step]]
id = "play"
kind = "say"
prompts = ["greeting_language", "greeting_language", "greeting_language", "greeting_language", "greeting_language"]
next = "bye"

[[step]]
id = "bye"
kind = "hangup"
prompts = ["goodbye"]
"#;

struct Server {
    child: Child,
    sip: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(calls: usize) -> Server {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = root.join("target/release/civicline");
    assert!(
        binary.exists(),
        "build the server first: cargo build --release"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flow.toml"), FLOW).unwrap();
    let sip_port = free_port();
    let http_port = free_port();
    let config = format!(
        "[sip]\nudp = [\"127.0.0.1:{sip_port}\"]\ntcp = []\nanswer_delay_ms = 0\n\
[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
[media]\nrtp_port_min = 0\nrtp_ports = {}\nrtp_timeout_s = 120\n\
[store]\ndata_dir = \"{}\"\n\
[ivr]\nflow = \"{}\"\nprompts_dir = \"{}\"\n",
        calls + 10,
        dir.path().display(),
        dir.path().join("flow.toml").display(),
        root.join("prompts").display()
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("server starts");
    let sip: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
    // Wait until it answers OPTIONS.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..100 {
        let _ = probe.send_to(&options(probe.local_addr().unwrap()), sip);
        let mut buffer = [0u8; 4096];
        if probe.recv_from(&mut buffer).is_ok() {
            return Server {
                child,
                sip,
                _dir: dir,
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start");
}

fn options(local: SocketAddr) -> Vec<u8> {
    format!(
        "OPTIONS sip:311@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{}\r\nMax-Forwards: 70\r\n\
From: <sip:bench@127.0.0.1>;tag=b\r\nTo: <sip:311@127.0.0.1>\r\nCall-ID: probe{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        rand_u32(),
        rand_u32()
    )
    .into_bytes()
}

fn rand_u32() -> u32 {
    rand::random()
}

/// CPU seconds (user + system) the server process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// Places one call whose SDP points at `rtp`; returns once the ACK is sent.
async fn place_call(sip: &UdpSocket, server: SocketAddr, rtp: &UdpSocket, n: usize) {
    let local = sip.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        rtp.local_addr().unwrap().port()
    );
    let invite = format!(
        "INVITE sip:311@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKp{n}\r\nMax-Forwards: 70\r\n\
From: <sip:bench{n}@127.0.0.1>;tag=t{n}\r\nTo: <sip:311@127.0.0.1>\r\nCall-ID: pacing-{n}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:bench@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), server).await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut counts: Vec<usize> = Vec::new();
    let mut seconds = 10u64;
    let mut user_time = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(10),
            "--bench" => {}
            "--user-time" => user_time = true,
            other => {
                if let Ok(n) = other.parse() {
                    counts.push(n);
                }
            }
        }
    }
    if counts.is_empty() {
        counts = vec![100, 500, 1000];
    }
    let clock = if user_time {
        "user-space"
    } else {
        "kernel (SO_TIMESTAMPNS)"
    };
    println!("RTP pacing: {seconds} s window per step, one prompt stream per call, 127.0.0.1, {clock} arrival times");
    println!("| calls | packets | p50 dev ms | p99 dev ms | max dev ms | server CPU % | CPU % per call |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for calls in counts {
        run_step(calls, seconds, user_time).await;
    }
}

async fn run_step(calls: usize, seconds: u64, user_time: bool) {
    let server = start_server(calls);
    let sip = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Answer every response with an ACK (the 200 carries the To tag we need).
    let acker = {
        let sip = sip.clone();
        let server_addr = server.sip;
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            let mut answered = 0usize;
            while let Ok((len, _)) = sip.recv_from(&mut buffer).await {
                let Ok(message) = SipMessage::parse(&buffer[..len]) else {
                    continue;
                };
                if message.status() == Some(200)
                    && message
                        .header("CSeq")
                        .is_some_and(|c| c.ends_with("INVITE"))
                {
                    let local = sip.local_addr().unwrap();
                    let ack = format!(
                        "ACK sip:311@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKa{}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                        rand_u32(),
                        message.header("From").unwrap_or_default(),
                        message.header("To").unwrap_or_default(),
                        message.header("Call-ID").unwrap_or_default()
                    );
                    let _ = sip.send_to(ack.as_bytes(), server_addr).await;
                    answered += 1;
                } else if message.method() == Some("BYE") {
                    let ok = civicline::sip::response::build_response(
                        &message,
                        server_addr,
                        200,
                        None,
                        "bench",
                    );
                    let _ = sip.send_to(&ok.to_bytes(), server_addr).await;
                }
            }
            answered
        })
    };
    let mut sockets = Vec::with_capacity(calls);
    for n in 0..calls {
        let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable_timestamps(&rtp);
        place_call(&sip, server.sip, &rtp, n).await;
        sockets.push(rtp);
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let every call settle into its stream, then drop what queued meanwhile and measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stale = [0u8; 512];
    for socket in &sockets {
        while socket.try_recv_from(&mut stale).is_ok() {}
    }
    let cpu_before = cpu_seconds(server.child.id());
    let start = Instant::now();
    let window = Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(calls);
    for socket in sockets {
        tasks.push(tokio::spawn(async move {
            let mut arrivals: Vec<u128> = Vec::with_capacity(600);
            let mut buffer = [0u8; 512];
            let deadline = tokio::time::Instant::now() + window;
            let fd = socket.as_raw_fd();
            loop {
                match tokio::time::timeout_at(deadline, socket.readable()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
                match socket.try_io(Interest::READABLE, || recv_timestamped(fd, &mut buffer)) {
                    Ok((len, kernel_ns)) if len > 12 && buffer[1] & 0x7f == 0 => {
                        let user_ns = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_nanos();
                        arrivals.push(if user_time || kernel_ns == 0 {
                            user_ns
                        } else {
                            kernel_ns
                        });
                    }
                    _ => {}
                }
            }
            arrivals
        }));
    }
    let mut deviations_us: Vec<u64> = Vec::new();
    let mut packets = 0usize;
    for task in tasks {
        let arrivals = task.await.unwrap();
        packets += arrivals.len();
        for pair in arrivals.windows(2) {
            let gap_us = (pair[1].saturating_sub(pair[0]) / 1000) as i64;
            let deviation = gap_us - 20_000;
            deviations_us.push(deviation.unsigned_abs());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id()) - cpu_before;
    deviations_us.sort_unstable();
    let pick = |q: f64| -> f64 {
        if deviations_us.is_empty() {
            return f64::NAN;
        }
        let index = ((deviations_us.len() - 1) as f64 * q).round() as usize;
        deviations_us[index] as f64 / 1000.0
    };
    let cpu_percent = cpu / elapsed * 100.0;
    println!(
        "| {calls} | {packets} | {:.3} | {:.3} | {:.3} | {:.1} | {:.4} |",
        pick(0.5),
        pick(0.99),
        pick(1.0),
        cpu_percent,
        cpu_percent / calls as f64
    );
    let expected = calls as f64 * elapsed * 50.0;
    if (packets as f64) < expected * 0.95 {
        println!("  (warning: {packets} packets received, {expected:.0} expected: calls missing or packets dropped)");
    }
    acker.abort();
    drop(server);
}
