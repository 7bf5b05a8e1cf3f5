//! Callbacks on a fake clock: the offer while waiting, the number confirmed or keyed and checked
//! against the dial plan, the place kept after the caller hangs up, the agent answering first
//! and the resident called through the gateway and bridged, retries and giving up, and
//! callbacks restored after a restart in their original order. No sockets: the engine's
//! outputs are read and SIP answers are fed back by hand.
#![allow(clippy::disallowed_methods)] // a fake clock needs one real base instant

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use civicline::engine::{
    CallbackRecord, CallbackSetup, DialPlan, Engine, EngineConfig, Input, MediaCommand, MediaEvent,
    Output, PortPool, RestoredCallback,
};
use civicline::events::{CallEvent, EventKind};
use civicline::routing::rules::CallerAttrs;
use civicline::sip::message::SipMessage;
use civicline::sip::transport::Peer;

const GATEWAY: &str = "127.0.0.1:5080";

fn callbacks(max_attempts: u32) -> Arc<CallbackSetup> {
    let defaults = civicline::config::CallbackConfig::default();
    Arc::new(CallbackSetup {
        gateway: Peer::udp("127.0.0.1:5060".parse().unwrap(), GATEWAY.parse().unwrap()),
        gateway_host: GATEWAY.into(),
        offer_after: Duration::ZERO,
        key: '1',
        dial_plan: DialPlan::new(&defaults.allowed, &defaults.denied).unwrap(),
        max_attempts,
        retry_after: Duration::from_secs(60),
        ring_timeout: Duration::from_secs(30),
        give_up_after: Duration::from_secs(4 * 3600),
    })
}

struct World {
    engine: Engine,
    caller: Peer,
    agent: Peer,
    now: Instant,
    events: Vec<CallEvent>,
    /// (media call_ref, prompts, play_id)
    played: Vec<(String, Vec<String>, u64)>,
    sent: Vec<SipMessage>,
    bridges: Vec<(String, String)>,
    saved: Vec<CallbackRecord>,
    call_ref: String,
}

impl World {
    fn new(max_attempts: u32) -> World {
        let config = EngineConfig {
            flow: Some(common::bundled_flow()),
            routing: Some(common::bundled_routing()),
            callbacks: Some(callbacks(max_attempts)),
            ..EngineConfig::default()
        };
        World {
            engine: Engine::new(config, PortPool::new(20000..20020), 11),
            caller: Peer::udp(
                "127.0.0.1:5060".parse().unwrap(),
                "127.0.0.1:5099".parse().unwrap(),
            ),
            agent: Peer::udp(
                "127.0.0.1:5060".parse().unwrap(),
                "127.0.0.1:6002".parse().unwrap(),
            ),
            now: Instant::now(),
            events: Vec::new(),
            played: Vec::new(),
            sent: Vec::new(),
            bridges: Vec::new(),
            saved: Vec::new(),
            call_ref: String::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Transmit { bytes, .. } => {
                    self.sent.push(SipMessage::parse(&bytes).unwrap())
                }
                Output::Record(e) => self.events.push(e),
                Output::Media(MediaCommand::Play {
                    call_ref,
                    prompts,
                    play_id,
                    ..
                }) => self.played.push((call_ref, prompts, play_id)),
                Output::Media(MediaCommand::Bridge { a, b }) => self.bridges.push((a, b)),
                Output::SaveCallback(record) => self.saved.push(record),
                _ => {}
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.engine.poll_timeout() {
            if at > until {
                break;
            }
            self.now = at.max(self.now);
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self.engine.handle_timeout(self.now);
        self.drain();
    }

    fn sip(&mut self, from: Peer, text: String) {
        self.engine.handle_input(
            self.now,
            Input::Sip {
                peer: from,
                bytes: Bytes::from(text),
            },
        );
        self.drain();
    }

    fn media(&mut self, call_ref: &str, event: MediaEvent) {
        self.engine.handle_input(
            self.now,
            Input::Media {
                call_ref: call_ref.into(),
                event,
            },
        );
        self.drain();
    }

    fn key(&mut self, digit: char) {
        let call_ref = self.call_ref.clone();
        self.media(&call_ref, MediaEvent::Digit(digit));
    }

    /// The last playback to `call_ref` ends.
    fn prompt_done(&mut self, call_ref: &str) {
        let play_id = self
            .played
            .iter()
            .rev()
            .find(|(c, _, _)| c == call_ref)
            .map(|p| p.2)
            .unwrap_or_else(|| panic!("nothing played to {call_ref}: {:?}", self.played));
        self.media(call_ref, MediaEvent::PromptFinished { play_id });
    }

    fn last_prompts_to(&self, call_ref: &str) -> Vec<String> {
        self.played
            .iter()
            .rev()
            .find(|(c, _, _)| c == call_ref)
            .map(|p| p.1.clone())
            .unwrap_or_default()
    }

    fn callback_events(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::Callback)
            .map(|e| e.reason.clone().unwrap_or_default())
            .collect()
    }

    /// A caller whose caller ID is `number` answers, picks English and asks for an agent.
    fn caller_joins(&mut self, number: &str) {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        let caller = self.caller;
        self.sip(caller, format!(
            "INVITE sip:311@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKinv\r\nFrom: <sip:{number}@127.0.0.1>;tag=r\r\nTo: <sip:311@127.0.0.1>\r\nCall-ID: cb-caller\r\nCSeq: 1 INVITE\r\nContact: <sip:r@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ));
        let ok = self
            .sent
            .iter()
            .find(|m| m.status() == Some(200) && m.header("Call-ID") == Some("cb-caller"))
            .unwrap()
            .clone();
        self.sip(caller, format!(
            "ACK sip:311@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKack\r\nFrom: {}\r\nTo: {}\r\nCall-ID: cb-caller\r\nCSeq: 1 ACK\r\n\r\n",
            ok.header("From").unwrap(),
            ok.header("To").unwrap()
        ));
        self.call_ref = self
            .events
            .iter()
            .find(|e| e.kind == EventKind::Received)
            .unwrap()
            .call_ref
            .clone();
        let call_ref = self.call_ref.clone();
        self.prompt_done(&call_ref);
        self.key('1'); // English
        self.key('0'); // an agent
    }

    /// Agent 1002 (Michael, general_en) registers, then goes not ready.
    fn agent_registers_not_ready(&mut self) {
        let agent = self.agent;
        let register = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6002;branch=z9hG4bKreg{cseq}\r\n\
                 From: <sip:1002@127.0.0.1>;tag=ag\r\nTo: <sip:1002@127.0.0.1>\r\nCall-ID: agent-reg\r\n\
                 CSeq: {cseq} REGISTER\r\nContact: <sip:1002@127.0.0.1:6002>\r\n{auth}Content-Length: 0\r\n\r\n"
            )
        };
        self.sip(agent, register(1, ""));
        let challenge = self.sent.last().unwrap().clone();
        let md5 = challenge
            .header_lines("WWW-Authenticate")
            .find(|c| c.contains("MD5"))
            .unwrap()
            .to_string();
        let param = |name: &str| {
            md5.split(&format!("{name}=\""))
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        let (nonce, opaque) = (param("nonce"), param("opaque"));
        let ha1 = common::md5_hex("1002:civicline:civic-1002");
        let ha2 = common::md5_hex("REGISTER:sip:127.0.0.1");
        let response = common::md5_hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
        let auth = format!(
            "Authorization: Digest username=\"1002\", realm=\"civicline\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1\", response=\"{response}\", algorithm=MD5, cnonce=\"abc\", qop=auth, nc=00000001, opaque=\"{opaque}\"\r\n"
        );
        self.sip(agent, register(2, &auth));
        assert_eq!(self.sent.last().unwrap().status(), Some(200));
        self.agent_state(false);
    }

    fn agent_state(&mut self, ready: bool) {
        self.engine.handle_input(
            self.now,
            Input::AgentState {
                agent: "m.okafor".into(),
                ready,
                reason: "test".into(),
            },
        );
        self.drain();
    }

    /// The newest INVITE sent to `to` (the agent's phone or the gateway).
    fn last_invite_to(&self, request_uri_part: &str) -> SipMessage {
        self.sent
            .iter()
            .rev()
            .find(|m| {
                m.method() == Some("INVITE")
                    && m.request_uri()
                        .is_some_and(|u| u.contains(request_uri_part))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no INVITE to {request_uri_part}"))
    }

    /// Answers `invite` with `status` (and SDP on a 200) from `peer`.
    fn answer(&mut self, peer: Peer, invite: &SipMessage, status: u16, tag: &str) {
        let sdp = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        let (reason, body) = match status {
            200 => ("OK", sdp),
            180 => ("Ringing", ""),
            _ => ("Busy Here", ""),
        };
        let content_type = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        let text = format!(
            "SIP/2.0 {status} {reason}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag={tag}\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\n\
             Contact: <{}>\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            invite.header("Via").unwrap(),
            invite.header("From").unwrap(),
            invite.header("To").unwrap(),
            invite.header("Call-ID").unwrap(),
            invite.request_uri().unwrap(),
            body.len()
        );
        self.sip(peer, text);
    }

    /// The media reference of the leg whose prompts were `first_prompt` most recently.
    fn leg_playing(&self, first_prompt: &str) -> String {
        self.played
            .iter()
            .rev()
            .find(|(_, p, _)| p.first().map(String::as_str) == Some(first_prompt))
            .map(|p| p.0.clone())
            .unwrap_or_else(|| panic!("nothing played {first_prompt}: {:?}", self.played))
    }

    fn gateway(&self) -> Peer {
        Peer::udp("127.0.0.1:5060".parse().unwrap(), GATEWAY.parse().unwrap())
    }
}

/// Offer, confirm the caller ID, hang up keeping the place; five minutes later the agent is
/// free: the agent is called first, then the resident through the gateway, and the two are
/// bridged after the resident's greeting. The hold time counts from the original join.
#[test]
fn a_callback_keeps_the_place_and_calls_the_resident_when_an_agent_answers() {
    let mut w = World::new(3);
    w.agent_registers_not_ready();
    w.caller_joins("3125550142");
    let call_ref = w.call_ref.clone();
    let joined = w.last_prompts_to(&call_ref);
    assert!(
        joined.contains(&"your_position_is".to_string())
            && joined.contains(&"callback_offer".to_string()),
        "position, wait and the callback offer on joining: {joined:?}"
    );
    // Keys other than the callback key are still ignored while waiting.
    w.key('5');
    assert_eq!(w.last_prompts_to(&call_ref), joined);

    w.key('1');
    assert_eq!(
        w.last_prompts_to(&call_ref).join(" "),
        "callback_confirm digit_3 digit_1 digit_2 digit_5 digit_5 digit_5 digit_0 digit_1 digit_4 digit_2 callback_confirm_keys",
        "the caller ID is read back"
    );
    w.key('1');
    assert_eq!(w.last_prompts_to(&call_ref), ["callback_accepted"]);
    assert_eq!(w.callback_events(), ["requested"]);
    let requested = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::Callback)
        .unwrap();
    assert_eq!(
        requested.detail.as_deref(),
        Some("{\"number\":\"***0142\"}"),
        "only the last four digits are logged"
    );
    assert_eq!(w.saved.last().unwrap().state, "waiting");
    assert_eq!(w.saved.last().unwrap().number, "3125550142");

    // The goodbye plays, then the call ends; the router is NOT told the caller abandoned.
    w.prompt_done(&call_ref);
    assert_eq!(w.sent.last().unwrap().method(), Some("BYE"));
    assert!(!w
        .events
        .iter()
        .any(|e| e.kind == EventKind::Queue && e.reason.as_deref() == Some("abandoned")));

    // Five minutes later Michael is ready: his phone rings first.
    w.advance(Duration::from_secs(300));
    let agent = w.agent;
    w.agent_state(true);
    let agent_invite = w.last_invite_to("1002@");
    w.answer(agent, &agent_invite, 200, "agentleg");
    let whisper = w.leg_playing("callback_agent_whisper");
    assert!(whisper.contains("-agent-"), "{whisper}");
    // Then the resident, through the gateway, at the confirmed number.
    let resident_invite = w.last_invite_to("@127.0.0.1:5080");
    assert_eq!(
        resident_invite.request_uri(),
        Some("sip:3125550142@127.0.0.1:5080")
    );
    assert_eq!(
        w.callback_events(),
        ["requested", "dialing"],
        "{:?}",
        w.events
    );
    // The agent hears music while the resident's phone rings.
    w.prompt_done(&whisper);
    assert_eq!(w.last_prompts_to(&whisper), ["hold_music", "please_hold"]);

    let gateway = w.gateway();
    w.answer(gateway, &resident_invite, 180, "res");
    w.advance(Duration::from_secs(5));
    w.answer(gateway, &resident_invite, 200, "res");
    let greeting = w.leg_playing("callback_greeting");
    assert!(greeting.contains("-callback-"));
    assert!(w.bridges.is_empty(), "no bridge before the greeting ends");
    w.prompt_done(&greeting);
    assert_eq!(w.bridges, [(greeting.clone(), whisper.clone())]);

    let connected = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::Callback && e.reason.as_deref() == Some("connected"))
        .unwrap();
    assert!(
        connected.duration.unwrap() >= Duration::from_secs(305),
        "the wait counts from the original join: {:?}",
        connected.duration
    );
    let answered = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::Queue && e.reason.as_deref() == Some("answered"))
        .unwrap();
    assert!(
        answered.duration.unwrap() >= Duration::from_secs(300),
        "the queue's hold time counts from the original join: {:?}",
        answered.duration
    );

    // The resident hangs up: 200 to them, BYE to the agent, the callback is complete.
    let from_tag = resident_invite
        .header("From")
        .unwrap()
        .split("tag=")
        .nth(1)
        .unwrap()
        .to_string();
    let bye = format!(
        "BYE sip:311@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {GATEWAY};branch=z9hG4bKresbye\r\n\
         From: {};tag=res\r\nTo: <sip:311@127.0.0.1:5060>;tag={from_tag}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        resident_invite.header("To").unwrap(),
        resident_invite.header("Call-ID").unwrap()
    );
    w.sip(gateway, bye);
    let last_two: Vec<String> = w.sent[w.sent.len() - 2..]
        .iter()
        .map(|m| {
            m.method()
                .map(str::to_string)
                .unwrap_or_else(|| m.status().unwrap().to_string())
        })
        .collect();
    assert_eq!(last_two, ["200", "BYE"]);
    assert_eq!(
        w.sent.last().unwrap().header("Call-ID"),
        agent_invite.header("Call-ID")
    );
    assert_eq!(
        w.callback_events(),
        ["requested", "dialing", "connected", "completed"]
    );
    let states: Vec<&str> = w.saved.iter().map(|r| r.state).collect();
    assert_eq!(states, ["waiting", "dialing", "connected", "completed"]);
}

/// A busy resident: the agent's leg ends, the callback waits `retry_after` and goes back in
/// line at its original place; after `max_attempts` unanswered calls it is recorded as failed.
#[test]
fn a_resident_who_cannot_be_reached_is_retried_then_recorded_as_failed() {
    let mut w = World::new(2);
    w.agent_registers_not_ready();
    w.caller_joins("3125550142");
    let call_ref = w.call_ref.clone();
    w.key('1');
    w.key('1');
    w.prompt_done(&call_ref);
    w.advance(Duration::from_secs(10));
    let agent = w.agent;
    let gateway = w.gateway();
    w.agent_state(true);

    // Attempt 1: busy.
    let agent_invite = w.last_invite_to("1002@");
    w.answer(agent, &agent_invite, 200, "agentleg1");
    let resident_invite = w.last_invite_to("@127.0.0.1:5080");
    w.answer(gateway, &resident_invite, 486, "res1");
    assert!(
        w.sent
            .iter()
            .any(|m| m.method() == Some("BYE")
                && m.header("Call-ID") == agent_invite.header("Call-ID")),
        "the agent's leg is hung up"
    );
    assert_eq!(
        w.callback_events(),
        ["requested", "dialing", "attempt_failed"]
    );
    let invites_before = w
        .sent
        .iter()
        .filter(|m| m.method() == Some("INVITE"))
        .count();
    // Wrap-up (30 s) ends before the 60 s pause: nothing is offered during the pause.
    w.advance(Duration::from_secs(59));
    assert_eq!(
        w.sent
            .iter()
            .filter(|m| m.method() == Some("INVITE"))
            .count(),
        invites_before,
        "the callback waits out its pause"
    );
    // Attempt 2 after the pause: the resident never answers; after 30 s of ringing it is
    // cancelled, and with two attempts used the callback fails.
    w.advance(Duration::from_secs(2));
    let agent_invite = w.last_invite_to("1002@");
    w.answer(agent, &agent_invite, 200, "agentleg2");
    let resident_invite2 = w.last_invite_to("@127.0.0.1:5080");
    assert_ne!(
        resident_invite2.header("Call-ID"),
        resident_invite.header("Call-ID")
    );
    w.advance(Duration::from_secs(31));
    assert!(
        w.sent.iter().any(|m| m.method() == Some("CANCEL")
            && m.header("Call-ID") == resident_invite2.header("Call-ID")),
        "the unanswered call to the resident is cancelled"
    );
    assert_eq!(
        w.callback_events(),
        [
            "requested",
            "dialing",
            "attempt_failed",
            "dialing",
            "attempt_failed",
            "failed"
        ]
    );
    let failed = w
        .events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Callback)
        .unwrap();
    assert!(
        failed.detail.as_deref().unwrap().contains("2 attempts"),
        "{failed:?}"
    );
    assert_eq!(w.saved.last().unwrap().state, "failed");
    // Nothing more is tried.
    w.advance(Duration::from_secs(600));
    let calls_to_resident: std::collections::BTreeSet<&str> = w
        .sent
        .iter()
        .filter(|m| m.method() == Some("INVITE") && m.request_uri().unwrap().contains("5080"))
        .filter_map(|m| m.header("Call-ID"))
        .collect();
    assert_eq!(
        calls_to_resident.len(),
        2,
        "two attempts, retransmissions aside"
    );
}

/// A caller ID the dial plan refuses is not offered for confirmation; keyed international and
/// premium numbers are refused with a prompt, and after two refusals the caller keeps waiting.
/// An allowed number keyed in is read back for confirmation.
#[test]
fn forbidden_numbers_are_refused_with_a_prompt() {
    let mut w = World::new(3);
    w.caller_joins("19005550142");
    let call_ref = w.call_ref.clone();
    w.key('1');
    assert_eq!(
        w.last_prompts_to(&call_ref),
        ["callback_enter_number"],
        "a premium caller ID is never read back as the number to call"
    );
    for d in "011442071234567#".chars() {
        w.key(d);
    }
    assert_eq!(
        w.last_prompts_to(&call_ref),
        ["callback_refused", "callback_enter_number"]
    );
    for d in "9005550142#".chars() {
        w.key(d);
    }
    assert_eq!(
        w.last_prompts_to(&call_ref),
        ["callback_refused", "hold_music", "please_hold"],
        "two refusals: back to waiting"
    );
    assert_eq!(w.callback_events(), ["refused", "refused"]);
    assert!(w.saved.is_empty(), "no callback was made");
    let details: Vec<String> = w
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Callback)
        .map(|e| e.detail.clone().unwrap())
        .collect();
    assert!(details[0].contains("denied by pattern 011."), "{details:?}");
    assert!(!details.iter().any(|d| d.contains("9005550142")));

    // A number that is allowed, keyed in, is read back; 1 confirms.
    w.key('1');
    for d in "3125550199#".chars() {
        w.key(d);
    }
    assert_eq!(
        w.last_prompts_to(&call_ref).first().map(String::as_str),
        Some("callback_confirm")
    );
    w.key('1');
    assert_eq!(w.saved.last().unwrap().number, "3125550199");

    // The dialogue lapses back to the music when nobody presses anything.
    let mut w = World::new(3);
    w.caller_joins("3125550142");
    let call_ref = w.call_ref.clone();
    w.key('1');
    w.advance(Duration::from_secs(16));
    assert_eq!(w.last_prompts_to(&call_ref), ["hold_music", "please_hold"]);
}

/// After a restart, stored callbacks go back in line by their original join time: the one who
/// waited longest is called first, ahead of a caller who joined later on the line.
#[test]
fn restored_callbacks_keep_their_original_order() {
    let mut w = World::new(3);
    w.agent_registers_not_ready();
    let restored = |call_ref: &str, number: &str, waited_s: u64| RestoredCallback {
        call_ref: call_ref.into(),
        number: number.into(),
        language: "en".into(),
        queue: Some("general_en".into()),
        attrs: CallerAttrs {
            language: "en".into(),
            ..CallerAttrs::default()
        },
        priority: 0,
        attempts: 0,
        waited: Duration::from_secs(waited_s),
    };
    let now = w.now;
    w.engine.handle_input(
        now,
        Input::RestoreCallbacks(vec![
            restored("cb-newer", "3125550111", 300),
            restored("cb-older", "3125550122", 900),
        ]),
    );
    w.drain();
    assert_eq!(w.callback_events(), ["restored", "restored"]);
    w.caller_joins("3125550142");
    w.advance(Duration::from_secs(1));
    let agent = w.agent;
    w.agent_state(true);
    let agent_invite = w.last_invite_to("1002@");
    w.answer(agent, &agent_invite, 200, "agentleg");
    let resident_invite = w.last_invite_to("@127.0.0.1:5080");
    assert_eq!(
        resident_invite.request_uri(),
        Some("sip:3125550122@127.0.0.1:5080"),
        "the callback that has waited longest goes first"
    );
    let dialing = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::Callback && e.reason.as_deref() == Some("dialing"))
        .unwrap();
    assert_eq!(dialing.call_ref, "cb-older");
    let detail: serde_json::Value =
        serde_json::from_str(dialing.detail.as_deref().unwrap()).unwrap();
    assert!(detail["waited_ms"].as_u64().unwrap() >= 900_000, "{detail}");
}

/// The live view (wallboard, /api/v1/live) counts waits from the join on the router's clock,
/// and a resident who hung up keeping their place is still listed, as callback_pending.
#[test]
fn the_live_view_shows_waits_and_pending_callbacks() {
    let mut w = World::new(3);
    w.caller_joins("3125550142");
    w.advance(Duration::from_secs(90));
    let live = w.engine.live_snapshot(w.now);
    let general = live.queues.iter().find(|q| q.id == "general_en").unwrap();
    assert_eq!(general.waiting, 1);
    assert!((90..=91).contains(&general.longest_wait_s), "{general:?}");
    let call = live
        .calls
        .iter()
        .find(|c| c.call_ref == w.call_ref)
        .unwrap();
    assert_eq!((call.phase, call.waited_s), ("queued", 90));

    let call_ref = w.call_ref.clone();
    w.key('1');
    w.key('1');
    w.prompt_done(&call_ref); // goodbye, BYE
    let bye = w.sent.last().unwrap().clone();
    assert_eq!(bye.method(), Some("BYE"));
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        bye.header("Via").unwrap(),
        bye.header("From").unwrap(),
        bye.header("To").unwrap(),
        bye.header("Call-ID").unwrap(),
        bye.header("CSeq").unwrap()
    );
    let caller = w.caller;
    w.sip(caller, ok);
    w.advance(Duration::from_secs(30));
    let live = w.engine.live_snapshot(w.now);
    let general = live.queues.iter().find(|q| q.id == "general_en").unwrap();
    assert_eq!(general.waiting, 1, "the callback keeps its place in line");
    let call = live.calls.iter().find(|c| c.call_ref == call_ref).unwrap();
    assert_eq!(call.phase, "callback_pending");
    assert!((120..=122).contains(&call.waited_s), "{call:?}");
}
