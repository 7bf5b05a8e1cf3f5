//! The RTP port pool: UDP sockets bound once at start-up, so a call never fails for lack of a
//! port mid-answer and the ports a call can get are known in advance. The sockets then belong
//! to the media task (`media.rs`); the engine only tracks which port numbers are free.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

use crate::config::MediaConfig;

pub struct RtpPool {
    /// RTP socket and, for fixed ranges, the RTCP socket on port + 1.
    sockets: HashMap<u16, (UdpSocket, Option<UdpSocket>)>,
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
        Ok(RtpPool { sockets })
    }

    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.sockets.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// Hands the bound sockets to the media task: (RTP port, RTP socket, RTCP socket).
    pub fn into_sockets(self) -> Vec<(u16, UdpSocket, Option<UdpSocket>)> {
        self.sockets
            .into_iter()
            .map(|(port, (rtp, rtcp))| (port, rtp, rtcp))
            .collect()
    }
}
