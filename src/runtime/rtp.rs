//! The RTP port pool: UDP sockets bound once at start-up, so a call never fails for lack of a
//! port mid-answer and the ports a call can get are known in advance. Media flow itself (G.711,
//! pacing, DTMF) arrives with the media issue; until then a call's port is reserved and silent.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

use crate::config::MediaConfig;
use crate::engine::MediaCommand;

pub struct RtpPool {
    /// RTP socket and, for fixed ranges, the RTCP socket on port + 1.
    sockets: HashMap<u16, (UdpSocket, Option<UdpSocket>)>,
    open_calls: usize,
}

impl RtpPool {
    pub fn bind(config: &MediaConfig) -> anyhow::Result<RtpPool> {
        let mut sockets = HashMap::new();
        if config.rtp_port_min == 0 {
            for _ in 0..config.rtp_ports {
                let socket = UdpSocket::bind(SocketAddr::new(config.rtp_ip, 0))?;
                let port = socket.local_addr()?.port();
                sockets.insert(port, (socket, None));
            }
        } else {
            // RTP on even ports, RTCP on the odd port above (RFC 3550 section 11).
            let first = config.rtp_port_min + config.rtp_port_min % 2;
            let mut port = first;
            let mut skipped = 0;
            while sockets.len() < config.rtp_ports as usize && port < u16::MAX - 1 {
                let rtp = UdpSocket::bind(SocketAddr::new(config.rtp_ip, port));
                let rtcp = UdpSocket::bind(SocketAddr::new(config.rtp_ip, port + 1));
                match (rtp, rtcp) {
                    (Ok(rtp), Ok(rtcp)) => {
                        sockets.insert(port, (rtp, Some(rtcp)));
                    }
                    _ => skipped += 1,
                }
                port += 2;
            }
            if skipped > 0 {
                tracing::warn!(skipped, "RTP ports in use by something else were skipped");
            }
        }
        if sockets.is_empty() && config.rtp_ports > 0 {
            anyhow::bail!(
                "could not bind any RTP port from {}:{}",
                config.rtp_ip,
                config.rtp_port_min
            );
        }
        Ok(RtpPool {
            sockets,
            open_calls: 0,
        })
    }

    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.sockets.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    pub fn open_calls(&self) -> usize {
        self.open_calls
    }

    pub fn apply(&mut self, command: &MediaCommand) {
        match command {
            MediaCommand::Open { rtp_port, .. } => {
                if self.sockets.contains_key(rtp_port) {
                    self.open_calls += 1;
                }
            }
            MediaCommand::Close { rtp_port, .. } => {
                if self.sockets.contains_key(rtp_port) {
                    self.open_calls = self.open_calls.saturating_sub(1);
                }
            }
            // Playback and capture need the RTP media path, which is not wired in yet.
            other => tracing::debug!(?other, "media command without a media path yet"),
        }
    }
}
