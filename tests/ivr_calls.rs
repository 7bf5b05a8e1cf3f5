//! The default 311 flow (routing-rules/ivr.toml, bundled prompts) driven through the real engine
//! on a fake clock: a caller answers the language menu by SIP INFO, walks the main menu with
//! keys reported by the media layer, records a problem, hears the draft's category said back,
//! lets the confirmation time out and hears the case number. Also each speech outcome: unsure
//! (case stored, agent), silence (one new take, then an agent, no case), late (the call goes on),
//! recognition down (case with its recording, agent). Every step is in the event log. Also: a flow or prompt fault stops start-up with file, line and reason.
#![allow(clippy::disallowed_methods)] // a fake clock needs one real base instant

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use civicline::engine::{Engine, EngineConfig, Input, MediaCommand, MediaEvent, Output, PortPool};
use civicline::events::{CallEvent, EventKind};
use civicline::ivr::DraftOutcome;
use civicline::sip::message::SipMessage;
use civicline::sip::transport::Peer;

struct World {
    engine: Engine,
    peer: Peer,
    events: Vec<CallEvent>,
    played: Vec<(String, Vec<String>)>,
    last_play_id: u64,
    captures: usize,
    utterances: Vec<String>,
    case_requests: Vec<String>,
    sent: Vec<SipMessage>,
    bridges: Vec<(String, String)>,
}

impl World {
    fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Transmit { bytes, .. } => {
                    self.sent.push(SipMessage::parse(&bytes).unwrap())
                }
                Output::Record(e) => self.events.push(e),
                Output::Media(MediaCommand::Play {
                    prompts,
                    language,
                    play_id,
                    ..
                }) => {
                    self.played.push((language, prompts));
                    self.last_play_id = play_id;
                }
                Output::Media(MediaCommand::StartCapture { .. }) => self.captures += 1,
                Output::Media(MediaCommand::Bridge { a, b }) => self.bridges.push((a, b)),
                Output::Media(_) => {}
                Output::Utterance { path, .. } => self.utterances.push(path),
                Output::CreateCase { audio_path, .. } => {
                    self.case_requests.push(audio_path.unwrap_or_default())
                }
                Output::LookupCase { number, .. } => self.case_requests.push(number),
                Output::SaveCallback(_) => {}
            }
        }
    }
    fn sip(&mut self, now: Instant, text: String) {
        let peer = self.peer;
        self.sip_from(now, peer, text);
    }
    fn sip_from(&mut self, now: Instant, peer: Peer, text: String) {
        self.engine.handle_input(
            now,
            Input::Sip {
                peer,
                bytes: Bytes::from(text),
            },
        );
        self.drain();
    }
    fn prompt_done(&mut self, now: Instant) {
        let play_id = self.last_play_id;
        self.media(now, MediaEvent::PromptFinished { play_id });
    }
    fn transcript(&mut self, now: Instant, path: &str, outcome: DraftOutcome) {
        let call_ref = self.events[0].call_ref.clone();
        self.engine.handle_input(
            now,
            Input::Transcript {
                call_ref,
                audio_path: path.into(),
                outcome,
                detail: None,
            },
        );
        self.drain();
    }
    fn case_created(&mut self, now: Instant, number: &str) {
        let call_ref = self.events[0].call_ref.clone();
        self.engine.handle_input(
            now,
            Input::Case {
                call_ref,
                event: civicline::engine::CaseEvent::Created {
                    number: number.into(),
                },
            },
        );
        self.drain();
    }
    fn media(&mut self, now: Instant, event: MediaEvent) {
        let call_ref = self.events[0].call_ref.clone();
        self.engine
            .handle_input(now, Input::Media { call_ref, event });
        self.drain();
    }
}

/// Via prefix of the simulated caller's requests (a branch suffix follows).
const HEAD: &str = "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK";

/// A caller on the bundled flow: INVITE (PCMU + telephone-event), 200, ACK. Returns the world
/// and the dialog's From/To/Call-ID lines for further requests.
fn answered_call(t0: Instant, seed: u64, call_id: &str) -> (World, String) {
    answered_call_with(t0, seed, call_id, None)
}

fn answered_call_with(
    t0: Instant,
    seed: u64,
    call_id: &str,
    routing: Option<Arc<civicline::engine::RoutingSetup>>,
) -> (World, String) {
    let config = EngineConfig {
        flow: Some(common::bundled_flow()),
        routing,
        ..EngineConfig::default()
    };
    let mut w = World {
        engine: Engine::new(config, PortPool::new(20000..20010), seed),
        peer: Peer::udp(
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1:5099".parse().unwrap(),
        ),
        events: Vec::new(),
        played: Vec::new(),
        last_play_id: 0,
        captures: 0,
        utterances: Vec::new(),
        case_requests: Vec::new(),
        sent: Vec::new(),
        bridges: Vec::new(),
    };
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    w.sip(t0, format!("INVITE sip:311@127.0.0.1 SIP/2.0\r\n{HEAD}i-{call_id}\r\nFrom: <sip:5551112222@127.0.0.1>;tag=r\r\nTo: <sip:311@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:r@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
    let ok = w
        .sent
        .iter()
        .find(|m| m.status() == Some(200))
        .unwrap()
        .clone();
    let dialog = format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\n",
        ok.header("From").unwrap(),
        ok.header("To").unwrap()
    );
    w.sip(
        t0,
        format!(
            "ACK sip:311@127.0.0.1 SIP/2.0\r\n{HEAD}a-{call_id}\r\n{dialog}CSeq: 1 ACK\r\n\r\n"
        ),
    );
    (w, dialog)
}

#[test]
fn default_flow_walks_menu_records_and_hands_off() {
    let t0 = Instant::now();
    let (mut w, dialog) = answered_call(t0, 3, "ivr-1");
    let head = HEAD;
    assert_eq!(
        w.played.last().unwrap(),
        &("en".to_string(), vec!["greeting_language".to_string()])
    );

    // "2" by SIP INFO (application/dtmf-relay), during the greeting: barge-in, Spanish.
    let info = "Signal=2\r\nDuration=160\r\n";
    w.sip(t0, format!("INFO sip:311@127.0.0.1 SIP/2.0\r\n{head}n1\r\n{dialog}CSeq: 2 INFO\r\nContent-Type: application/dtmf-relay\r\nContent-Length: {}\r\n\r\n{info}", info.len()));
    assert_eq!(w.sent.last().unwrap().status(), Some(200));
    assert_eq!(
        w.played.last().unwrap(),
        &("es".to_string(), vec!["main_menu".to_string()])
    );

    // "1": report a problem; after the prompt and tone the recording starts.
    // A late "finished" for the interrupted greeting is stale and changes nothing.
    let played_before = w.played.len();
    w.media(
        t0,
        MediaEvent::PromptFinished {
            play_id: w.last_play_id - 1,
        },
    );
    assert_eq!(w.played.len(), played_before);
    w.prompt_done(t0);
    w.media(t0, MediaEvent::Digit('1'));
    assert_eq!(w.played.last().unwrap().1, ["describe_problem", "tone"]);
    w.prompt_done(t0);
    assert_eq!(w.captures, 1);
    w.media(
        t0 + Duration::from_secs(9),
        MediaEvent::RecordingFinished {
            duration: Duration::from_secs(8),
            path: Some("data/recordings/x.wav".into()),
            reason: "end_of_speech".into(),
        },
    );
    // Understanding: nothing plays until the draft comes back.
    assert_eq!(w.played.last().unwrap().1, ["describe_problem", "tone"]);
    assert_eq!(
        w.utterances,
        ["data/recordings/x.wav"],
        "the utterance goes on to transcription"
    );
    w.transcript(
        t0 + Duration::from_secs(10),
        "data/recordings/x.wav",
        DraftOutcome::Understood {
            category: "pothole".into(),
        },
    );
    assert_eq!(
        w.played.last().unwrap().1,
        ["you_reported", "category_pothole"]
    );
    w.prompt_done(t0 + Duration::from_secs(11));
    assert_eq!(w.played.last().unwrap().1, ["confirm_recording"]);

    // Silence at the confirmation: two retries with "sorry", then the report is kept anyway.
    let t1 = t0 + Duration::from_secs(12);
    w.prompt_done(t1);
    let mut now = t1;
    for _ in 0..3 {
        now = w.engine.poll_timeout().unwrap();
        assert!(
            now - t1 < Duration::from_secs(60),
            "an IVR timer is pending"
        );
        w.engine.handle_timeout(now);
        w.drain();
        w.prompt_done(now);
    }
    let prompts: Vec<String> = w.played.iter().map(|(_, p)| p.join("+")).collect();
    assert_eq!(
        prompts[prompts.len() - 2..],
        [
            "sorry_didnt_get_that+confirm_recording",
            "sorry_didnt_get_that+confirm_recording",
        ]
    );
    assert_eq!(w.case_requests, ["data/recordings/x.wav"]);
    w.case_created(now, "1000042");
    assert_eq!(
        w.played.last().unwrap().1.join("+"),
        "your_case_number_is+digit_1+digit_0+digit_0+digit_0+digit_0+digit_4+digit_2"
    );
    w.prompt_done(now);
    assert_eq!(w.played.last().unwrap().1, ["goodbye"]);
    w.prompt_done(now);
    assert_eq!(w.sent.last().unwrap().method(), Some("BYE"));

    let log: Vec<(EventKind, Option<String>)> = w
        .events
        .iter()
        .map(|e| (e.kind, e.reason.clone()))
        .collect();
    let steps: Vec<&str> = log
        .iter()
        .filter(|(k, _)| *k == EventKind::IvrStep)
        .filter_map(|(_, r)| r.as_deref())
        .collect();
    assert_eq!(
        steps,
        [
            "language",
            "main_menu",
            "describe_problem",
            "understand",
            "confirm_recording",
            "create_case",
            "goodbye"
        ]
    );
    assert_eq!(
        w.events
            .iter()
            .filter(|e| e.kind == EventKind::Digit)
            .count(),
        2
    );
    let recording = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::Recording)
        .unwrap();
    assert!(recording
        .detail
        .as_deref()
        .unwrap()
        .contains("data/recordings/x.wav"));
    assert!(log.contains(&(EventKind::Transcript, Some("understood".into()))));
    assert!(log.contains(&(EventKind::CaseCreated, None)));
    assert_eq!(
        log.last().unwrap(),
        &(EventKind::Ended, Some("ivr_hangup".into()))
    );
}

/// A caller on the bundled flow who has pressed 1 and finished a recording at `at`.
fn recorded(seed: u64, call_id: &str, path: &str) -> (World, Instant) {
    let t0 = Instant::now();
    let (mut w, _) = answered_call(t0, seed, call_id);
    w.prompt_done(t0);
    w.media(t0, MediaEvent::Digit('1'));
    w.prompt_done(t0);
    w.media(t0, MediaEvent::Digit('1'));
    w.prompt_done(t0);
    assert_eq!(w.captures, 1);
    let at = t0 + Duration::from_secs(10);
    w.media(
        at,
        MediaEvent::RecordingFinished {
            duration: Duration::from_secs(8),
            path: Some(path.into()),
            reason: "end_of_speech".into(),
        },
    );
    (w, at)
}

#[test]
fn unsure_draft_stores_the_case_and_hands_it_to_an_agent() {
    let (mut w, at) = recorded(4, "ivr-low", "r/low.wav");
    w.transcript(at, "r/low.wav", DraftOutcome::LowConfidence);
    assert_eq!(w.case_requests, ["r/low.wav"], "the case is stored first");
    w.case_created(at, "1000007");
    w.prompt_done(at);
    let handoff = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::HandOff)
        .expect("handed to an agent");
    assert!(
        handoff
            .detail
            .as_deref()
            .unwrap()
            .contains("\"case_number\":\"1000007\""),
        "the agent gets the case: {:?}",
        handoff.detail
    );
}

#[test]
fn silence_gets_one_new_take_then_an_agent_and_no_case() {
    let (mut w, at) = recorded(5, "ivr-empty", "r/e1.wav");
    w.transcript(at, "r/e1.wav", DraftOutcome::Empty);
    assert_eq!(
        w.played.last().unwrap().1,
        ["sorry_didnt_get_that", "describe_problem", "tone"]
    );
    w.prompt_done(at);
    assert_eq!(w.captures, 2);
    // Silence again, reported by the media layer itself: no transcription is asked for.
    w.media(
        at + Duration::from_secs(10),
        MediaEvent::RecordingFinished {
            duration: Duration::from_secs(5),
            path: Some("r/e2.wav".into()),
            reason: "no_speech".into(),
        },
    );
    assert_eq!(w.utterances, ["r/e1.wav"]);
    assert!(w.case_requests.is_empty(), "no case for silence");
    assert!(w.events.iter().any(|e| e.kind == EventKind::HandOff));
}

#[test]
fn a_late_draft_does_not_hold_the_caller() {
    let (mut w, at) = recorded(6, "ivr-late", "r/late.wav");
    // Run the clock to the understand step's deadline (other timers may come first).
    let mut deadline = at;
    while w.played.last().unwrap().1 != ["confirm_recording"] {
        deadline = w.engine.poll_timeout().expect("a deadline is pending");
        assert!(deadline - at <= Duration::from_secs(8), "held too long");
        w.engine.handle_timeout(deadline);
        w.drain();
    }
    // The text arrives later: logged for the case, but the flow has moved on.
    let played = w.played.len();
    w.transcript(
        deadline + Duration::from_secs(1),
        "r/late.wav",
        DraftOutcome::Understood {
            category: "graffiti".into(),
        },
    );
    assert_eq!(w.played.len(), played);
    assert!(w.events.iter().any(|e| e.kind == EventKind::Transcript));
}

#[test]
fn recognition_down_sends_the_caller_to_an_agent_with_the_recording_kept() {
    let (mut w, at) = recorded(7, "ivr-down", "r/down.wav");
    w.transcript(at, "r/down.wav", DraftOutcome::Unavailable);
    assert_eq!(w.case_requests, ["r/down.wav"]);
    w.case_created(at, "1000008");
    w.prompt_done(at);
    assert!(w.events.iter().any(|e| e.kind == EventKind::HandOff));
}

#[tokio::test]
async fn broken_flow_or_missing_prompt_stops_start_up_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/routing-rules/ivr.toml"
    ))
    .unwrap();
    let broken = dir.path().join("ivr.toml");
    std::fs::write(
        &broken,
        original.replace(
            "next = \"confirm_recording\"",
            "next = \"confirm_recordin\"",
        ),
    )
    .unwrap();
    let mut config = civicline::config::Config::default();
    config.sip.udp = vec!["127.0.0.1:0".parse().unwrap()];
    config.sip.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.rtp_port_min = 0;
    config.media.rtp_ports = 2;
    config.store.data_dir = dir.path().to_path_buf();
    config.ivr.flow = broken.clone();
    let error = format!(
        "{:#}",
        civicline::runtime::start(config.clone())
            .await
            .err()
            .expect("start-up refused")
    );
    assert!(
        error.contains("ivr.toml:59:") && error.contains("no step named \"confirm_recordin\""),
        "{error}"
    );

    std::fs::write(
        &broken,
        original.replace("\"transferring\"", "\"transfering\""),
    )
    .unwrap();
    let error = format!(
        "{:#}",
        civicline::runtime::start(config)
            .await
            .err()
            .expect("start-up refused")
    );
    assert!(error.contains("unknown prompt \"transfering\""), "{error}");
}

/// Menu option 2: the caller keys a case number (RFC 4733 keys via the media layer), the engine
/// asks the store, and the caller hears the status and how many days the case has been open.
#[test]
fn case_status_by_phone() {
    let t0 = Instant::now();
    let (mut w, _) = answered_call(t0, 5, "status-1");
    for key in "12".chars() {
        w.media(t0, MediaEvent::Digit(key));
    }
    assert_eq!(w.played.last().unwrap().1, ["enter_case_number"]);
    for key in "1000007#".chars() {
        w.media(t0, MediaEvent::Digit(key));
    }
    assert_eq!(
        w.case_requests,
        ["1000007"],
        "the engine asks the store for the keyed number"
    );
    let call_ref = w.events[0].call_ref.clone();
    w.engine.handle_input(
        t0,
        Input::Case {
            call_ref,
            event: civicline::engine::CaseEvent::Found(Some(civicline::ivr::CaseInfo {
                open: true,
                days_open: 3,
                department: None,
            })),
        },
    );
    w.drain();
    assert_eq!(
        w.played.last().unwrap().1,
        ["case_status_open", "digit_3", "days_open"]
    );
    w.prompt_done(t0);
    assert_eq!(w.played.last().unwrap().1, ["goodbye"]);
    w.prompt_done(t0);
    assert_eq!(w.sent.last().unwrap().method(), Some("BYE"));
    let steps: Vec<String> = w
        .events
        .iter()
        .filter(|e| e.kind == EventKind::IvrStep)
        .filter_map(|e| e.reason.clone())
        .collect();
    assert_eq!(
        steps,
        [
            "language",
            "main_menu",
            "case_number",
            "case_number:collected",
            "case_status",
            "goodbye"
        ]
    );
}

/// Queues on, nobody logged in: the caller who asks for an agent joins `general_en`, hears
/// their position and the (default) wait on joining and again every minute on the fake clock,
/// each announcement logged with its figures, hold music in between.
#[test]
fn a_waiting_caller_hears_position_and_wait_on_joining_and_every_minute() {
    let t0 = Instant::now();
    let (mut w, _) = answered_call_with(t0, 8, "ivr-queue", Some(common::bundled_routing()));
    w.prompt_done(t0);
    w.media(t0, MediaEvent::Digit('1')); // English
    w.media(t0, MediaEvent::Digit('0')); // an agent
    let joined = w.played.last().unwrap().1.join("+");
    assert_eq!(
        joined,
        "transferring+your_position_is+digit_1+estimated_wait+about+digit_3+minutes+hold_music+please_hold",
        "position 1, the stated default of 3 minutes with no history"
    );
    // The hold music loops; a minute later the next announcement, counted down and smoothed.
    let mut now = t0;
    loop {
        w.prompt_done(now);
        now = w
            .engine
            .poll_timeout()
            .unwrap()
            .max(now + Duration::from_secs(1));
        if now > t0 + Duration::from_secs(130) {
            break;
        }
        w.engine.handle_timeout(now);
        w.drain();
    }
    let announcements = w
        .played
        .iter()
        .filter(|(_, p)| p.first().map(String::as_str) == Some("your_position_is"))
        .count();
    assert_eq!(
        announcements, 2,
        "at 1 min and at 2 min, after the one on joining"
    );
    let logged: Vec<serde_json::Value> = w
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Announced)
        .map(|e| serde_json::from_str(e.detail.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(logged.len(), 3);
    // 180 s promised, a minute passes, the estimate is still 180: the countdown (120) moves
    // towards it by 1 - exp(-60 / 120) = 0.39, so 120 + 0.39 * 60 = 144 (ewt::announce::smooth).
    assert_eq!(logged[0]["announced_s"], 180);
    assert_eq!(logged[1]["announced_s"], 144);
    assert!(logged.iter().all(|l| l["position"] == 1));
}

/// The agent leg on a fake clock: agent 1002 registers (digest, MD5), an English caller asks
/// for an agent, the engine INVITEs the agent's registered Contact, the agent answers, the legs
/// are bridged; then the agent hangs up first and the caller's leg is ended too.
#[test]
fn an_agent_leg_is_invited_bridged_and_its_hang_up_ends_the_caller() {
    let t0 = Instant::now();
    let (mut w, caller_dialog) =
        answered_call_with(t0, 9, "ivr-leg", Some(common::bundled_routing()));
    let agent = Peer::udp(
        "127.0.0.1:5060".parse().unwrap(),
        "127.0.0.1:6002".parse().unwrap(),
    );
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6002;branch=z9hG4bKreg{cseq}\r\n\
             From: <sip:1002@127.0.0.1>;tag=ag\r\nTo: <sip:1002@127.0.0.1>\r\nCall-ID: agent-reg\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:1002-0x55@127.0.0.1:6002>\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    w.sip_from(t0, agent, register(1, ""));
    let challenge = w.sent.last().unwrap().clone();
    assert_eq!(challenge.status(), Some(401));
    let md5 = challenge
        .header_lines("WWW-Authenticate")
        .find(|c| c.contains("MD5"))
        .unwrap()
        .to_string();
    let nonce = md5
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let opaque = md5
        .split("opaque=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let ha1 = common::md5_hex("1002:civicline:civic-1002");
    let ha2 = common::md5_hex("REGISTER:sip:127.0.0.1");
    let response = common::md5_hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"1002\", realm=\"civicline\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1\", response=\"{response}\", algorithm=MD5, cnonce=\"abc\", qop=auth, nc=00000001, opaque=\"{opaque}\"\r\n"
    );
    w.sip_from(t0, agent, register(2, &auth));
    assert_eq!(w.sent.last().unwrap().status(), Some(200));

    // The caller: English, then 0 for an agent; Michael is offered the call at his Contact,
    // exactly as registered (baresip-style user part suffix kept).
    w.prompt_done(t0);
    w.media(t0, MediaEvent::Digit('1'));
    w.media(t0, MediaEvent::Digit('0'));
    let invite = w
        .sent
        .iter()
        .find(|m| m.method() == Some("INVITE"))
        .expect("the agent is called")
        .clone();
    assert_eq!(invite.request_uri(), Some("sip:1002-0x55@127.0.0.1:6002"));
    let sdp = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=agentleg\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:1002-0x55@127.0.0.1:6002>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        invite.header("Via").unwrap(),
        invite.header("From").unwrap(),
        invite.header("To").unwrap(),
        invite.header("Call-ID").unwrap(),
        sdp.len()
    );
    let t1 = t0 + Duration::from_secs(2);
    w.sip_from(t1, agent, ok);
    assert!(
        w.sent.iter().any(|m| m.method() == Some("ACK")),
        "the 2xx is acknowledged"
    );
    // No category on this call: no whisper, the legs are bridged at once (PCMU caller, PCMA
    // agent: the media task transcodes).
    assert_eq!(w.bridges.len(), 1, "{:?}", w.bridges);
    let answered = w
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Queue && e.reason.as_deref() == Some("answered"))
        .count();
    assert_eq!(answered, 1);

    // The agent hangs up: 200 to them, BYE to the caller.
    let from_tag = invite
        .header("From")
        .unwrap()
        .split("tag=")
        .nth(1)
        .unwrap()
        .to_string();
    let bye = format!(
        "BYE sip:311@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6002;branch=z9hG4bKagbye\r\n\
         From: {};tag=agentleg\r\nTo: <sip:311@127.0.0.1:5060>;tag={from_tag}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        invite.header("To").unwrap(),
        invite.header("Call-ID").unwrap()
    );
    let t2 = t1 + Duration::from_secs(30);
    w.sip_from(t2, agent, bye);
    let last_two: Vec<String> = w.sent[w.sent.len() - 2..]
        .iter()
        .map(|m| {
            m.method()
                .map(str::to_string)
                .unwrap_or_else(|| m.status().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        last_two,
        ["200", "BYE"],
        "200 to the agent, BYE to the caller"
    );
    let caller_bye = w.sent.last().unwrap();
    assert!(caller_dialog.contains(caller_bye.header("Call-ID").unwrap()));
    let ended = w
        .events
        .iter()
        .find(|e| e.kind == EventKind::Ended)
        .unwrap();
    assert_eq!(ended.reason.as_deref(), Some("agent_hangup"));
    assert!(w
        .events
        .iter()
        .any(|e| e.kind == EventKind::Queue && e.reason.as_deref() == Some("ended")));
}

/// The queue's exit key (0 in `general_en`) takes a waiting caller out of the queue and back to
/// the main menu; other keys while waiting are ignored.
#[test]
fn the_exit_key_takes_a_waiting_caller_back_to_the_main_menu() {
    let t0 = Instant::now();
    let (mut w, _) = answered_call_with(t0, 10, "ivr-exit", Some(common::bundled_routing()));
    w.prompt_done(t0);
    w.media(t0, MediaEvent::Digit('1')); // English
    w.media(t0, MediaEvent::Digit('0')); // an agent: joins general_en, nobody logged in
    assert_eq!(w.played.last().unwrap().1.last().unwrap(), "please_hold");
    let before = w.played.len();
    w.media(t0, MediaEvent::Digit('5'));
    assert_eq!(w.played.len(), before, "other keys do nothing in the queue");
    w.media(t0 + Duration::from_secs(20), MediaEvent::Digit('0'));
    assert_eq!(
        w.played.last().unwrap(),
        &("en".to_string(), vec!["main_menu".to_string()])
    );
    assert!(w
        .events
        .iter()
        .any(|e| e.kind == EventKind::Queue && e.reason.as_deref() == Some("exited")));
    // And the menu works again: 2 asks for a case number.
    w.prompt_done(t0 + Duration::from_secs(21));
    w.media(t0 + Duration::from_secs(22), MediaEvent::Digit('2'));
    assert_eq!(w.played.last().unwrap().1, ["enter_case_number"]);
}
