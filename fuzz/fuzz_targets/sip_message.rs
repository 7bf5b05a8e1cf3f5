//! Checks that SIP message parsing, printing and the typed header views never panic on any bytes, that a parsed message prints to bytes that parse again to the same message, and that stream framing never claims more bytes than it was given.
#![no_main]

use civicline::sip::framing::{next_frame, Frame};
use civicline::sip::headers::{
    host_ip, split_params_public, uri_scheme, CSeq, NameAddr, SipUri, Via,
};
use civicline::sip::message::SipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // TCP framing sees the same bytes at the front of a stream buffer.
    match next_frame(data) {
        Frame::Message { len } => {
            assert!(len <= data.len(), "framed {len} bytes of {}", data.len());
            let _ = SipMessage::parse(&data[..len]);
        }
        Frame::KeepAlive { len, .. } => {
            assert!(
                len > 0 && len <= data.len(),
                "keep-alive of {len} bytes of {}",
                data.len()
            );
        }
        Frame::Incomplete | Frame::Invalid(_) => {}
    }

    let Ok(msg) = SipMessage::parse(data) else {
        return;
    };
    exercise_views(&msg);

    // Printing must give bytes that parse again, to the same start line, headers and body
    // (Content-Length is recomputed by to_bytes, so it is left out of the comparison).
    let printed = msg.to_bytes();
    let again = match SipMessage::parse(&printed) {
        Ok(m) => m,
        Err(e) => panic!(
            "printed message does not parse again: {e}\nprinted: {:?}",
            String::from_utf8_lossy(&printed)
        ),
    };
    assert_eq!(
        again.start, msg.start,
        "start line changed by a print/parse round trip"
    );
    let without_length = |m: &SipMessage| {
        m.headers
            .iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("Content-Length"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_length(&again),
        without_length(&msg),
        "headers changed by a round trip"
    );
    assert_eq!(again.body, msg.body, "body changed by a round trip");
    assert_eq!(again.content_length(), Ok(Some(msg.body.len())));
    exercise_views(&again);
});

fn exercise_views(msg: &SipMessage) {
    let _ = msg.is_request();
    let _ = msg.method();
    let _ = msg.status();
    let _ = msg.content_length();
    let _ = msg.header_count("Via");

    for value in msg.header_values("Via") {
        let _ = split_params_public(value);
        if let Ok(via) = Via::parse(value) {
            let _ = via.branch();
            let _ = via.param("rport");
            let _ = via.param("received");
            let _ = host_ip(&via.host);
            let _ = via.sent_by();
        }
    }

    let name_addrs = msg
        .header_lines("From")
        .chain(msg.header_lines("To"))
        .chain(msg.header_values("Contact"));
    for value in name_addrs {
        if let Ok(addr) = NameAddr::parse(value) {
            let _ = addr.tag();
            exercise_uri(&addr.uri);
        }
    }

    for value in msg.header_lines("CSeq") {
        let _ = CSeq::parse(value);
    }

    if let Some(uri) = msg.request_uri() {
        exercise_uri(uri);
    }
}

fn exercise_uri(uri: &str) {
    let _ = uri_scheme(uri);
    if let Ok(sip) = SipUri::parse(uri) {
        let _ = host_ip(&sip.host);
    }
}
