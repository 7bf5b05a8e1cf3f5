//! Checks that SDP parsing and offer/answer never panic on any bytes, and that whenever an offer negotiates, the answer we build parses again and is acceptable to our own answer rules with the same codec.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use civicline::sip::sdp::{accept_answer, build_answer, negotiate, parse, Codec, LocalMedia};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let offer = match parse(data) {
        Ok(offer) => offer,
        Err(e) => {
            let _ = e.line();
            let _ = e.to_string();
            return;
        }
    };
    for m in &offer.media {
        let _ = m.is_audio();
        let _ = m.is_plain_rtp();
    }
    let _ = negotiate(&offer, &[]);
    let _ = negotiate(&offer, &[Codec::Pcma]);

    let neg = match negotiate(&offer, &[Codec::Pcmu, Codec::Pcma]) {
        Ok(neg) => neg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let local = LocalMedia {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        rtp_port: 20_000,
        session_id: 1_700_000_000,
        session_version: 1_700_000_000,
        username: "civicline".to_string(),
    };
    let answer = build_answer(&offer, &neg, &local);
    let parsed = match parse(answer.as_bytes()) {
        Ok(parsed) => parsed,
        Err(e) => panic!("our answer does not parse: {e}\nanswer: {answer:?}"),
    };
    assert_eq!(
        parsed.media.len(),
        offer.media.len(),
        "answer must have one m= line per offered m= line\nanswer: {answer:?}"
    );
    match accept_answer(&parsed) {
        Ok(back) => assert_eq!(back.codec, neg.codec, "answer: {answer:?}"),
        Err(e) => panic!("our answer is not acceptable to us: {e}\nanswer: {answer:?}"),
    }
});
