//! Transport addressing as the pure layers see it: which transport a message came over and
//! where a reply must go. Sockets themselves belong to `runtime/`; this is only the address book.

use std::fmt;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// Reliable transports need no retransmission timers (RFC 3261 section 17).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The far end of one message: transport, remote address, the local socket it arrived on, and for
/// stream transports the connection it belongs to (replies go back over the same connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub connection: Option<u64>,
}

impl Peer {
    pub fn udp(local: SocketAddr, remote: SocketAddr) -> Peer {
        Peer {
            transport: Transport::Udp,
            remote,
            local,
            connection: None,
        }
    }

    pub fn tcp(local: SocketAddr, remote: SocketAddr, connection: u64) -> Peer {
        Peer {
            transport: Transport::Tcp,
            remote,
            local,
            connection: Some(connection),
        }
    }
}
