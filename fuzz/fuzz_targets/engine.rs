//! Checks that the engine never panics on any UDP datagram: the bytes go in as one SIP message (and once more as a retransmission), every timer up to 64 s later is run, and every output is drained; every datagram the engine transmits must parse as SIP.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use civicline::engine::{Engine, EngineConfig, Input, Output, PortPool};
use civicline::sip::message::SipMessage;
use civicline::sip::transport::Peer;
use libfuzzer_sys::fuzz_target;

fn drain(engine: &mut Engine) {
    while let Some(out) = engine.poll_output() {
        if let Output::Transmit { bytes, .. } = out {
            if let Err(e) = SipMessage::parse(&bytes) {
                panic!(
                    "engine transmitted unparseable SIP ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut engine = Engine::new(EngineConfig::default(), PortPool::new(20000..20010), 1);
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let remote: SocketAddr = "192.0.2.1:5070".parse().unwrap();
    let bytes = Bytes::copy_from_slice(data);

    engine.handle_input(
        now,
        Input::Sip {
            peer: Peer::udp(local, remote),
            bytes: bytes.clone(),
        },
    );
    drain(&mut engine);
    let _ = engine.poll_timeout();
    // The same datagram again, as a UDP retransmission would bring it.
    engine.handle_input(
        now + Duration::from_millis(500),
        Input::Sip {
            peer: Peer::udp(local, remote),
            bytes,
        },
    );
    drain(&mut engine);
    engine.handle_timeout(now + Duration::from_secs(64));
    drain(&mut engine);
    let _ = engine.stats();
    let _ = engine.live_transactions();
});
