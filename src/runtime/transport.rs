//! SIP sockets: UDP receive loops and TCP connections, each feeding framed messages to the engine
//! task through one bounded channel, and the table the engine task uses to send on them.
//!
//! A slow or hostile TCP peer only ever blocks its own task: reads have a deadline per message and
//! an idle deadline, writes go through a bounded per-connection queue that is never awaited by the
//! engine (a full queue closes that connection), and the number of connections is capped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

use crate::engine::Input;
use crate::sip::framing::{next_frame, Frame};
use crate::sip::message::MAX_MESSAGE_BYTES;
use crate::sip::transport::{Peer, Transport};

/// Counters the transports keep (shown on `/healthz`).
#[derive(Debug, Default)]
pub struct TransportStats {
    pub udp_dropped_overload: AtomicU64,
    pub udp_oversized: AtomicU64,
    pub tcp_rejected_limit: AtomicU64,
    pub tcp_closed_invalid: AtomicU64,
    pub tcp_closed_timeout: AtomicU64,
}

/// Everything the engine task needs to send.
#[derive(Clone)]
pub struct Senders {
    udp: Arc<HashMap<SocketAddr, Arc<UdpSocket>>>,
    tcp: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
    pub stats: Arc<TransportStats>,
}

impl Senders {
    /// Sends without ever awaiting a slow peer.
    pub fn send(&self, to: Peer, bytes: Bytes) {
        match to.transport {
            Transport::Udp => {
                let Some(socket) = self.udp.get(&to.local) else {
                    tracing::warn!(local = %to.local, "no UDP socket for reply");
                    return;
                };
                if let Err(error) = socket.try_send_to(&bytes, to.remote) {
                    tracing::debug!(%error, to = %to.remote, "UDP send failed");
                }
            }
            Transport::Tcp => {
                let Some(id) = to.connection else { return };
                let sender = self.tcp.lock().ok().and_then(|m| m.get(&id).cloned());
                match sender {
                    Some(sender) => {
                        if sender.try_send(bytes).is_err() {
                            // The peer is not reading: close it rather than queue without bound.
                            if let Ok(mut map) = self.tcp.lock() {
                                map.remove(&id);
                            }
                        }
                    }
                    None => tracing::debug!(connection = id, "TCP connection gone before reply"),
                }
            }
        }
    }
}

pub struct Listeners {
    pub udp: Vec<Arc<UdpSocket>>,
    pub tcp: Vec<TcpListener>,
}

impl Listeners {
    pub async fn bind(udp: &[SocketAddr], tcp: &[SocketAddr]) -> std::io::Result<Listeners> {
        let mut sockets = Vec::new();
        for addr in udp {
            let socket = UdpSocket::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding SIP UDP {addr}: {e}"))
            })?;
            sockets.push(Arc::new(socket));
        }
        let mut listeners = Vec::new();
        for addr in tcp {
            // Same port as UDP when the TCP address asks for port 0 next to a fixed UDP port is
            // not attempted: tests read back the real addresses instead.
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding SIP TCP {addr}: {e}"))
            })?;
            listeners.push(listener);
        }
        Ok(Listeners {
            udp: sockets,
            tcp: listeners,
        })
    }
}

pub struct TcpLimits {
    pub max_connections: usize,
    pub message_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Starts the receive tasks; returns the send table.
pub fn start(
    listeners: Listeners,
    limits: TcpLimits,
    inbound: mpsc::Sender<Input>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Senders {
    let stats = Arc::new(TransportStats::default());
    let mut udp = HashMap::new();
    for socket in listeners.udp {
        let local = socket.local_addr().expect("bound socket has an address");
        udp.insert(local, socket.clone());
        tokio::spawn(udp_loop(
            socket,
            local,
            inbound.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
    }
    let senders = Senders {
        udp: Arc::new(udp),
        tcp: Arc::new(Mutex::new(HashMap::new())),
        stats: stats.clone(),
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let next_id = Arc::new(AtomicU64::new(1));
    for listener in listeners.tcp {
        tokio::spawn(accept_loop(
            listener,
            senders.clone(),
            permits.clone(),
            limits.clone(),
            next_id.clone(),
            inbound.clone(),
            shutdown.clone(),
        ));
    }
    senders
}

async fn udp_loop(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    inbound: mpsc::Sender<Input>,
    stats: Arc<TransportStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // One byte more than the largest message we accept, to tell "exactly full" from "too big".
    let mut buffer = vec![0u8; MAX_MESSAGE_BYTES + 1];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buffer) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (len, remote) = match received {
            Ok(r) => r,
            Err(error) => {
                // ICMP errors from earlier sends surface here on some systems; keep serving.
                tracing::debug!(%error, "UDP receive error");
                continue;
            }
        };
        if len > MAX_MESSAGE_BYTES {
            stats.udp_oversized.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = %remote, "dropping oversized UDP datagram");
            continue;
        }
        if len == 0
            || buffer[..len]
                .iter()
                .all(|b| *b == b'\r' || *b == b'\n' || *b == 0)
        {
            continue; // Keep-alives and empty datagrams.
        }
        let input = Input::Sip {
            peer: Peer::udp(local, remote),
            bytes: Bytes::copy_from_slice(&buffer[..len]),
        };
        if inbound.try_send(input).is_err() {
            // Overload: UDP senders retransmit, so shedding here is safe and keeps latency bounded.
            stats.udp_dropped_overload.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    senders: Senders,
    permits: Arc<Semaphore>,
    limits: Arc<TcpLimits>,
    next_id: Arc<AtomicU64>,
    inbound: mpsc::Sender<Input>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .expect("bound listener has an address");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            senders
                .stats
                .tcp_rejected_limit
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let senders = senders.clone();
        let limits = limits.clone();
        let inbound = inbound.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(
                stream, local, remote, id, senders, &limits, inbound, shutdown,
            )
            .await;
            drop(permit);
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    id: u64,
    senders: Senders,
    limits: &TcpLimits,
    inbound: mpsc::Sender<Input>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(256);
    if let Ok(mut map) = senders.tcp.lock() {
        map.insert(id, out_tx.clone());
    }
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let peer = Peer::tcp(local, remote, id);
    let mut buffer = BytesMut::with_capacity(4096);
    let mut message_started: Option<tokio::time::Instant> = None;
    'read: loop {
        // Hand every complete frame to the engine before reading more.
        loop {
            match next_frame(&buffer) {
                Frame::Incomplete => break,
                Frame::KeepAlive { len, pong } => {
                    buffer.advance(len);
                    if pong {
                        let _ = out_tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                }
                Frame::Message { len } => {
                    let bytes = buffer.split_to(len).freeze();
                    message_started = None;
                    if inbound.send(Input::Sip { peer, bytes }).await.is_err() {
                        break 'read;
                    }
                }
                Frame::Invalid(reason) => {
                    senders
                        .stats
                        .tcp_closed_invalid
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, reason, "closing TCP connection that cannot be framed");
                    break 'read;
                }
            }
        }
        if !buffer.is_empty() && message_started.is_none() {
            message_started = Some(tokio::time::Instant::now());
        }
        let deadline = match message_started {
            Some(started) => started + limits.message_timeout,
            None => tokio::time::Instant::now() + limits.idle_timeout,
        };
        if buffer.capacity() - buffer.len() < 2048 {
            buffer.reserve(4096);
        }
        tokio::select! {
            read = reader.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                senders.stats.tcp_closed_timeout.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "closing slow or idle TCP connection");
                break;
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if let Ok(mut map) = senders.tcp.lock() {
        map.remove(&id);
    }
    drop(out_tx);
    // Let queued replies (a final BYE, say) go out before the socket closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), write_task).await;
}
