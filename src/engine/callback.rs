//! Callbacks that keep a caller's place in line: the offer while they wait ("press 1 to be
//! called back"), the number (caller ID or keyed in) checked against the dial plan so the line
//! can never be used for toll fraud, the place kept in the router after they hang up, and, once
//! an agent has answered for them, the call to the resident through the gateway, bridged to the
//! agent. Failed attempts are retried after a pause, up to a limit, then recorded as failed.
//! The router decides who is next exactly as for callers on the line; this file carries it out.
//!
//! Agent first (as Amazon Connect and Twilio's queued callbacks do): the agent answers, hears
//! "callback" and the category, then the resident's phone rings; the resident never waits on
//! hold a second time.

use std::time::{Duration, Instant};

use super::queueing::{LegKind, LegState};
use super::{json_string, Engine, MediaCommand, MediaEvent, Output};
use crate::events::{CallEvent, EventKind};
use crate::routing::core::{CallId, RouterError, RouterInput};
use crate::routing::rules::{CallerAttrs, QueueId};
use crate::sip::headers::{NameAddr, SipUri};
use crate::sip::transport::Peer;

/// How long the caller has to press a key in the callback dialogue before it lapses back to
/// the hold music.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);
/// Keyed numbers longer than this are refused (E.164 allows 15 digits).
const MAX_KEYED_DIGITS: usize = 15;
/// Wrong numbers keyed before the dialogue gives up and the caller keeps waiting on the line.
const MAX_ENTRY_TRIES: u8 = 2;

// ---- the dial plan -------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialPlanError {
    #[error("dial pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
}

/// One element of a dial pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternItem {
    /// Exactly this set of digits (a literal digit is a set of one).
    Digit([bool; 10]),
    /// `.`: one or more digits of any kind; `!`: zero or more. Only at the end.
    Rest { at_least_one: bool },
}

/// A number pattern in Asterisk's extension syntax, which telephony administrators already
/// know: `X` any digit, `Z` 1-9, `N` 2-9, `[2-5]` or `[147]` a set, a digit itself, and at the
/// end `.` (one or more digits) or `!` (zero or more). A leading `_` is allowed and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialPattern {
    text: String,
    items: Vec<PatternItem>,
}

impl DialPattern {
    pub fn parse(text: &str) -> Result<DialPattern, DialPlanError> {
        let bad = |reason: &str| DialPlanError::BadPattern {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let body = text.strip_prefix('_').unwrap_or(text);
        if body.is_empty() {
            return Err(bad("empty pattern"));
        }
        let mut items = Vec::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            let set = |range: std::ops::RangeInclusive<usize>| {
                let mut s = [false; 10];
                s[range].iter_mut().for_each(|d| *d = true);
                s
            };
            let item = match c.to_ascii_uppercase() {
                d @ '0'..='9' => {
                    let d = d as usize - '0' as usize;
                    PatternItem::Digit(set(d..=d))
                }
                'X' => PatternItem::Digit(set(0..=9)),
                'Z' => PatternItem::Digit(set(1..=9)),
                'N' => PatternItem::Digit(set(2..=9)),
                '[' => {
                    let mut s = [false; 10];
                    let mut previous: Option<usize> = None;
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        match c {
                            ']' => {
                                closed = true;
                                break;
                            }
                            '0'..='9' => {
                                let d = c as usize - '0' as usize;
                                s[d] = true;
                                previous = Some(d);
                            }
                            '-' => {
                                let (Some(from), Some(to)) = (
                                    previous,
                                    chars
                                        .next()
                                        .and_then(|c| c.to_digit(10))
                                        .map(|d| d as usize),
                                ) else {
                                    return Err(bad("a range in [] needs a digit on each side"));
                                };
                                if to < from {
                                    return Err(bad("a range in [] must go upwards"));
                                }
                                s[from..=to].iter_mut().for_each(|d| *d = true);
                            }
                            _ => return Err(bad("only digits and ranges go inside []")),
                        }
                    }
                    if !closed {
                        return Err(bad("[ without ]"));
                    }
                    if !s.contains(&true) {
                        return Err(bad("[] matches nothing"));
                    }
                    PatternItem::Digit(s)
                }
                '.' | '!' => {
                    if chars.peek().is_some() {
                        return Err(bad("'.' and '!' may only end a pattern"));
                    }
                    PatternItem::Rest {
                        at_least_one: c == '.',
                    }
                }
                other => return Err(bad(&format!("unexpected {other:?}"))),
            };
            items.push(item);
        }
        Ok(DialPattern {
            text: text.to_string(),
            items,
        })
    }

    /// Whether the whole of `number` (digits only) matches.
    pub fn matches(&self, number: &str) -> bool {
        let digits: Vec<usize> = number
            .chars()
            .map(|c| c.to_digit(10).map(|d| d as usize))
            .collect::<Option<_>>()
            .unwrap_or_default();
        if digits.len() != number.len() {
            return false;
        }
        let mut i = 0;
        for item in &self.items {
            match item {
                PatternItem::Digit(set) => match digits.get(i) {
                    Some(&d) if set[d] => i += 1,
                    _ => return false,
                },
                PatternItem::Rest { at_least_one } => {
                    return !*at_least_one || digits.len() > i;
                }
            }
        }
        i == digits.len()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Which numbers the engine may call back: a number is refused when a `denied` pattern matches
/// it, and allowed only when an `allowed` pattern matches (a default of refusal, so a pattern
/// list left out can never open the line to premium or international numbers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialPlan {
    pub allowed: Vec<DialPattern>,
    pub denied: Vec<DialPattern>,
}

/// Why a number is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Empty,
    Denied(String),
    NotAllowed,
}

impl Refusal {
    pub fn as_str(&self) -> String {
        match self {
            Refusal::Empty => "no number".into(),
            Refusal::Denied(p) => format!("denied by pattern {p}"),
            Refusal::NotAllowed => "matches no allowed pattern".into(),
        }
    }
}

impl DialPlan {
    pub fn new(allowed: &[String], denied: &[String]) -> Result<DialPlan, DialPlanError> {
        Ok(DialPlan {
            allowed: allowed
                .iter()
                .map(|p| DialPattern::parse(p))
                .collect::<Result<_, _>>()?,
            denied: denied
                .iter()
                .map(|p| DialPattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn check(&self, number: &str) -> Result<(), Refusal> {
        if number.is_empty() {
            return Err(Refusal::Empty);
        }
        if let Some(p) = self.denied.iter().find(|p| p.matches(number)) {
            return Err(Refusal::Denied(p.as_str().to_string()));
        }
        if self.allowed.iter().any(|p| p.matches(number)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

/// The digits of a caller ID: the user part of a `sip:`/`tel:` URI in a From header, with `+`,
/// spaces, dots and dashes taken out; None when anything else is left (a name, not a number).
pub fn caller_id_number(from: &str) -> Option<String> {
    let uri = NameAddr::parse(from).ok()?.uri;
    let user = match SipUri::parse(&uri) {
        Ok(u) => u.user?,
        Err(_) => uri.strip_prefix("tel:")?.split(';').next()?.to_string(),
    };
    let digits: String = user
        .chars()
        .filter(|c| !matches!(c, '+' | ' ' | '-' | '.' | '(' | ')'))
        .collect();
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

/// A number as logs and events show it: only the last four digits.
pub fn masked(number: &str) -> String {
    let tail: String = number
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("***{tail}")
}

// ---- settings, records ---------------------------------------------------------------------

/// Callback settings, checked by the runtime (`[callbacks]` in the config).
#[derive(Debug, Clone)]
pub struct CallbackSetup {
    /// Where calls to residents go (a SIP trunk's gateway); the Request-URI is
    /// `sip:<number>@<gateway_host>`.
    pub gateway: Peer,
    pub gateway_host: String,
    /// Offered when the wait announced to the caller is at least this.
    pub offer_after: Duration,
    /// The key that accepts the offer.
    pub key: char,
    pub dial_plan: DialPlan,
    /// Calls to the resident per callback, at most.
    pub max_attempts: u32,
    pub retry_after: Duration,
    /// A resident's phone rings this long before the attempt counts as unanswered.
    pub ring_timeout: Duration,
    /// A callback still waiting this long after the original join is given up (recorded).
    pub give_up_after: Duration,
}

/// A callback's state as the store keeps it (one row per callback, replaced on each change).
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackRecord {
    /// The router's call id: the original call's reference.
    pub call_ref: String,
    /// The number to call, in full (the store needs it; logs and events never show it).
    pub number: String,
    pub language: String,
    pub queue: Option<String>,
    pub attrs: CallerAttrs,
    pub priority: i32,
    /// waiting | dialing | connected | completed | failed
    pub state: &'static str,
    pub attempts: u32,
    pub last_result: Option<String>,
    /// The engine-clock instant of this change, and how long the resident had been in line
    /// then (since the original join): the runtime turns both into wall-clock times.
    pub at: Instant,
    pub waited: Duration,
}

/// A callback the store held at start-up, to put back in line.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredCallback {
    pub call_ref: String,
    pub number: String,
    pub language: String,
    pub queue: Option<String>,
    pub attrs: CallerAttrs,
    pub priority: i32,
    pub attempts: u32,
    /// Time since the original join, by the wall clock.
    pub waited: Duration,
}

/// The dialogue after the caller pressed the callback key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CallbackAsk {
    /// "We will call you back at ... To confirm, press 1; for another number, press 2."
    Confirm { number: String, deadline: Instant },
    /// Keying a number, ended by `#`.
    Enter {
        digits: String,
        tries: u8,
        deadline: Instant,
    },
}

impl CallbackAsk {
    pub(super) fn deadline(&self) -> Instant {
        match self {
            CallbackAsk::Confirm { deadline, .. } | CallbackAsk::Enter { deadline, .. } => {
                *deadline
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallbackState {
    /// In line in the router (or about to be offered to an agent).
    Waiting,
    /// Out of line until then (after a failed attempt, or when no agent was logged in).
    Parked { until: Instant },
    /// An agent answered for the resident; the resident's phone rings.
    Dialing { agent_leg: u64 },
    /// The resident answered.
    Talking { agent_leg: u64 },
}

/// A callback kept in the engine until it is completed or given up.
#[derive(Debug, Clone)]
pub(super) struct Callback {
    pub(super) number: String,
    pub(super) language: String,
    pub(super) category: Option<String>,
    pub(super) queue: Option<QueueId>,
    pub(super) attrs: CallerAttrs,
    pub(super) priority: i32,
    /// Router time of the original join: the place in line, and where hold time counts from.
    pub(super) joined_ms: u64,
    pub(super) expires_at: Instant,
    pub(super) attempts: u32,
    pub(super) state: CallbackState,
}

impl Callback {
    /// The next moment this callback needs the engine: the end of a pause, or giving up.
    pub(super) fn parked_until(&self) -> Option<Instant> {
        match self.state {
            CallbackState::Parked { until } => Some(until.min(self.expires_at)),
            CallbackState::Waiting => Some(self.expires_at),
            _ => None,
        }
    }
}

// ---- the engine's side ---------------------------------------------------------------------

impl Engine {
    fn callback_setup(&self) -> Option<std::sync::Arc<CallbackSetup>> {
        self.queueing.as_ref()?;
        self.config.callbacks.clone()
    }

    /// A key from a waiting caller, for the callback offer and dialogue (true when taken).
    pub(super) fn callback_key(&mut self, now: Instant, number: u64, digit: char) -> bool {
        let Some(setup) = self.callback_setup() else {
            return false;
        };
        let remote_uri = match self.calls.get(&number) {
            Some(c) => c.remote_uri.clone(),
            None => return false,
        };
        let language = self.language_of(number);
        let Some(waiting) = self
            .queueing
            .as_deref_mut()
            .and_then(|q| q.queued.get_mut(&number))
        else {
            return false;
        };
        let deadline = now + ASK_TIMEOUT;
        let ask = waiting.callback.clone();
        match ask {
            None => {
                if digit != setup.key || !waiting.callback_offered {
                    return false;
                }
                match caller_id_number(&remote_uri).filter(|n| setup.dial_plan.check(n).is_ok()) {
                    Some(caller_id) => {
                        waiting.callback = Some(CallbackAsk::Confirm {
                            number: caller_id.clone(),
                            deadline,
                        });
                        self.play(now, number, confirm_prompts(&caller_id), language);
                    }
                    None => {
                        waiting.callback = Some(CallbackAsk::Enter {
                            digits: String::new(),
                            tries: 0,
                            deadline,
                        });
                        self.play(now, number, vec!["callback_enter_number".into()], language);
                    }
                }
            }
            Some(CallbackAsk::Confirm { number: target, .. }) => match digit {
                '1' => self.accept_callback(now, number, target),
                '2' => {
                    waiting.callback = Some(CallbackAsk::Enter {
                        digits: String::new(),
                        tries: 0,
                        deadline,
                    });
                    self.play(now, number, vec!["callback_enter_number".into()], language);
                }
                '*' => self.end_callback_ask(now, number, None),
                _ => {}
            },
            Some(CallbackAsk::Enter { digits, tries, .. }) => match digit {
                '0'..='9' => {
                    let mut digits = digits;
                    if digits.len() < MAX_KEYED_DIGITS + 1 {
                        digits.push(digit);
                    }
                    waiting.callback = Some(CallbackAsk::Enter {
                        digits,
                        tries,
                        deadline,
                    });
                }
                '#' => match setup.dial_plan.check(&digits) {
                    Ok(()) if digits.len() <= MAX_KEYED_DIGITS => {
                        waiting.callback = Some(CallbackAsk::Confirm {
                            number: digits.clone(),
                            deadline,
                        });
                        self.play(now, number, confirm_prompts(&digits), language);
                    }
                    refused => {
                        let reason = match refused {
                            Err(r) => r.as_str(),
                            Ok(()) => "too long".into(),
                        };
                        let mut event = self.record_for(number, now, EventKind::Callback);
                        event.reason = Some("refused".into());
                        event.detail = Some(format!(
                            "{{\"number\":{},\"why\":{}}}",
                            json_string(&masked(&digits)),
                            json_string(&reason)
                        ));
                        self.emit(event);
                        let tries = tries + 1;
                        if tries >= MAX_ENTRY_TRIES {
                            self.end_callback_ask(now, number, Some("callback_refused"));
                        } else if let Some(w) = self
                            .queueing
                            .as_deref_mut()
                            .and_then(|q| q.queued.get_mut(&number))
                        {
                            w.callback = Some(CallbackAsk::Enter {
                                digits: String::new(),
                                tries,
                                deadline,
                            });
                            self.play(
                                now,
                                number,
                                vec!["callback_refused".into(), "callback_enter_number".into()],
                                language,
                            );
                        }
                    }
                },
                '*' => self.end_callback_ask(now, number, None),
                _ => {}
            },
        }
        true
    }

    /// Back to waiting on the line, with the hold music (after `first`, if given).
    fn end_callback_ask(&mut self, now: Instant, number: u64, first: Option<&str>) {
        let hold = match self.queueing.as_deref_mut() {
            Some(q) => {
                if let Some(w) = q.queued.get_mut(&number) {
                    w.callback = None;
                }
                q.setup.hold_prompts.clone()
            }
            None => return,
        };
        let language = self.language_of(number);
        let prompts = first.map(str::to_string).into_iter().chain(hold).collect();
        self.play(now, number, prompts, language);
    }

    /// The caller confirmed: their place in the router stays, the call ends after a goodbye.
    fn accept_callback(&mut self, now: Instant, number: u64, target: String) {
        let Some(call_ref) = self.calls.get(&number).map(|c| c.call_ref.clone()) else {
            return;
        };
        let language = self.language_of(number);
        let Some(setup) = self.callback_setup() else {
            return;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(waiting) = q.queued.remove(&number) else {
            return;
        };
        // A leg already ringing an agent for this caller now serves the callback: it must not
        // end with the call that is about to hang up.
        for leg in q.legs.values_mut().filter(|l| l.caller == Some(number)) {
            leg.caller = None;
        }
        let ms = q.ms(now);
        let waited = Duration::from_millis(ms.saturating_sub(waiting.joined_ms));
        let callback = Callback {
            number: target,
            language: language.clone(),
            category: waiting.category.clone(),
            queue: waiting.queue.clone(),
            attrs: waiting.attrs.clone(),
            priority: 0,
            joined_ms: waiting.joined_ms,
            expires_at: now + setup.give_up_after.saturating_sub(waited),
            attempts: 0,
            state: CallbackState::Waiting,
        };
        let shown = masked(&callback.number);
        q.callbacks.insert(call_ref.clone(), callback);
        let mut event = self.record_for(number, now, EventKind::Callback);
        event.reason = Some("requested".into());
        event.duration = Some(waited);
        event.detail = Some(format!("{{\"number\":{}}}", json_string(&shown)));
        self.emit(event);
        self.save_callback(now, &call_ref, "waiting", None);
        if let Some(c) = self.calls.get_mut(&number) {
            c.hangup_after_prompt = Some("callback_requested");
        }
        self.play(now, number, vec!["callback_accepted".into()], language);
    }

    fn callback_event(&mut self, now: Instant, call_ref: &str, reason: &str, detail: String) {
        self.emit(CallEvent {
            at: now,
            sip_call_id: String::new(),
            call_ref: call_ref.to_string(),
            kind: EventKind::Callback,
            status_code: None,
            reason: Some(reason.into()),
            duration: None,
            caller: None,
            detail: Some(detail),
        });
    }

    /// Hands the callback's state to the runtime for the store.
    fn save_callback(
        &mut self,
        now: Instant,
        call_ref: &str,
        state: &'static str,
        result: Option<String>,
    ) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        let Some(c) = q.callbacks.get(call_ref) else {
            return;
        };
        let record = CallbackRecord {
            call_ref: call_ref.to_string(),
            number: c.number.clone(),
            language: c.language.clone(),
            queue: c.queue.as_ref().map(|q| q.0.clone()),
            attrs: c.attrs.clone(),
            priority: c.priority,
            state,
            attempts: c.attempts,
            last_result: result,
            at: now,
            waited: Duration::from_millis(ms.saturating_sub(c.joined_ms)),
        };
        self.outputs.push_back(Output::SaveCallback(record));
    }

    /// Puts a callback back in line at its original place (`queue`: None lets the rules pick).
    fn rejoin_callback(&mut self, now: Instant, call_ref: &str, queue: Option<QueueId>) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        let Some(c) = q.callbacks.get_mut(call_ref) else {
            return;
        };
        c.state = CallbackState::Waiting;
        let input = RouterInput::CallerRejoin {
            call: CallId(call_ref.to_string()),
            queue: queue.or_else(|| c.queue.clone()),
            attrs: c.attrs.clone(),
            priority: c.priority,
            joined_ms: c.joined_ms,
        };
        match q.router.handle_input(ms, input) {
            Ok(()) | Err(RouterError::DuplicateCall(_)) => {}
            Err(error) => {
                let result = format!("cannot rejoin: {error}");
                self.give_up_callback(now, call_ref, &result);
            }
        }
        self.drain_router(now);
    }

    /// A callback that left the router's queue without an agent: max wait goes back in line
    /// at once (the resident is not on the line, so there is nothing to hang up), no agents
    /// waits `retry_after`, a reload that removed its queue lets the rules pick another.
    pub(super) fn callback_left_queue(
        &mut self,
        now: Instant,
        call: &CallId,
        queue: Option<QueueId>,
        no_agents: bool,
    ) -> bool {
        let Some(setup) = self.callback_setup() else {
            return false;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return false;
        };
        let Some(c) = q.callbacks.get_mut(&call.0) else {
            return false;
        };
        if no_agents {
            c.state = CallbackState::Parked {
                until: now + setup.retry_after,
            };
        } else {
            if queue.is_none() {
                // A reload removed its queue: from now on the rules pick one by the caller's
                // attributes.
                c.queue = None;
            }
            self.rejoin_callback(now, &call.0, queue);
        }
        true
    }

    /// An agent answered for a callback: the agent hears "callback" and the category while the
    /// resident's phone rings through the gateway.
    pub(super) fn callback_connected(&mut self, now: Instant, agent_leg: u64) {
        let Some(setup) = self.callback_setup() else {
            return;
        };
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let Some(leg) = q.legs.get_mut(&agent_leg) else {
            return;
        };
        let (call, agent) = (leg.call.clone(), leg.agent.clone());
        leg.play_id += 1;
        let (play_id, agent_media) = (leg.play_id, leg.media_ref.clone());
        let ms = q.ms(now);
        let Some(c) = q.callbacks.get_mut(&call.0) else {
            return;
        };
        c.attempts += 1;
        c.state = CallbackState::Dialing { agent_leg };
        let attempt = c.attempts;
        let waited_ms = ms.saturating_sub(c.joined_ms);
        let target = c.number.clone();
        let mut whisper = vec!["callback_agent_whisper".to_string()];
        if let Some(category) = &c.category {
            whisper.push(format!("category_{category}"));
        }
        self.outputs.push_back(Output::Media(MediaCommand::Play {
            call_ref: agent_media,
            prompts: whisper,
            language: "en".into(),
            play_id,
        }));
        self.callback_event(
            now,
            &call.0,
            "dialing",
            format!(
                "{{\"number\":{},\"attempt\":{attempt},\"agent\":{},\"waited_ms\":{waited_ms}}}",
                json_string(&masked(&target)),
                json_string(&agent.0)
            ),
        );
        self.save_callback(now, &call.0, "dialing", None);
        let host = &setup.gateway_host;
        let uri = format!("sip:{target}@{host}");
        let to = format!("<{uri}>");
        let kind = LegKind::Resident { agent_leg };
        match self.invite_leg(now, setup.gateway, uri, to, &call, None, &agent, kind) {
            Some(resident) => {
                if let Some(q) = self.queueing.as_deref_mut() {
                    if let Some(leg) = q.legs.get_mut(&resident) {
                        leg.ring_deadline = Some(now + setup.ring_timeout);
                    }
                    if let Some(leg) = q.legs.get_mut(&agent_leg) {
                        leg.kind = LegKind::Agent {
                            resident: Some(resident),
                        };
                    }
                }
            }
            None => self.resident_failed(now, agent_leg, "no RTP port free"),
        }
    }

    /// The resident answered: they hear who is calling, then the bridge to the agent.
    pub(super) fn resident_answered(&mut self, now: Instant, resident_leg: u64) {
        let Some(q) = self.queueing.as_deref_mut() else {
            return;
        };
        let ms = q.ms(now);
        let Some(leg) = q.legs.get_mut(&resident_leg) else {
            return;
        };
        leg.ring_deadline = None;
        leg.play_id += 1;
        let (play_id, media, call) = (leg.play_id, leg.media_ref.clone(), leg.call.clone());
        let LegKind::Resident { agent_leg } = leg.kind else {
            return;
        };
        let Some(c) = q.callbacks.get_mut(&call.0) else {
            return;
        };
        c.state = CallbackState::Talking { agent_leg };
        let waited = ms.saturating_sub(c.joined_ms);
        let language = c.language.clone();
        self.outputs.push_back(Output::Media(MediaCommand::Play {
            call_ref: media,
            prompts: vec!["callback_greeting".into()],
            language,
            play_id,
        }));
        let attempt = q.callbacks.get(&call.0).map_or(0, |c| c.attempts);
        self.emit(CallEvent {
            at: now,
            sip_call_id: String::new(),
            call_ref: call.0.clone(),
            kind: EventKind::Callback,
            status_code: None,
            reason: Some("connected".into()),
            duration: Some(Duration::from_millis(waited)),
            caller: None,
            detail: Some(format!("{{\"attempt\":{attempt},\"waited_ms\":{waited}}}")),
        });
        self.save_callback(now, &call.0, "connected", None);
    }

    /// Prompts finished and media trouble on a callback's legs.
    pub(super) fn callback_leg_media(&mut self, now: Instant, leg_number: u64, event: &MediaEvent) {
        let Some(q) = self.queueing.as_deref() else {
            return;
        };
        let Some(leg) = q.legs.get(&leg_number) else {
            return;
        };
        let (kind, state, play_id) = (leg.kind, leg.state, leg.play_id);
        match event {
            MediaEvent::PromptFinished { play_id: finished } if *finished == play_id => {
                match kind {
                    // The greeting is over: bridge the resident to the agent.
                    LegKind::Resident { agent_leg } if state == LegState::Whisper => {
                        self.bridge(now, agent_leg);
                    }
                    // The agent's whisper (or hold music) ended while the resident's phone
                    // still rings: more music.
                    LegKind::Agent { .. } if state == LegState::Whisper => {
                        let hold = q.setup.hold_prompts.clone();
                        if let Some(leg) = self
                            .queueing
                            .as_deref_mut()
                            .and_then(|q| q.legs.get_mut(&leg_number))
                        {
                            leg.play_id += 1;
                            let play = MediaCommand::Play {
                                call_ref: leg.media_ref.clone(),
                                prompts: hold,
                                language: "en".into(),
                                play_id: leg.play_id,
                            };
                            self.outputs.push_back(Output::Media(play));
                        }
                    }
                    _ => {}
                }
            }
            MediaEvent::RtpTimeout => match kind {
                LegKind::Resident { agent_leg } => {
                    self.send_leg_bye(now, leg_number);
                    self.forget_leg(leg_number);
                    self.resident_hung_up(now, agent_leg);
                }
                LegKind::Agent { .. } => self.agent_hung_up(now, leg_number, "agent_rtp_timeout"),
            },
            _ => {}
        }
    }

    /// The resident hung up (or their audio stopped): the agent's leg ends and the callback is
    /// complete.
    pub(super) fn resident_hung_up(&mut self, now: Instant, agent_leg: u64) {
        if let Some(call) = self.end_agent_side(now, agent_leg) {
            self.finish_callback(now, &call.0, "completed", None);
        }
        self.drain_router(now);
    }

    /// Ends the agent's leg of a callback and tells the router the call ended (the agent wraps
    /// up); the router's call id, if the leg was still there.
    fn end_agent_side(&mut self, now: Instant, agent_leg: u64) -> Option<CallId> {
        let call = self.queueing.as_deref()?.legs.get(&agent_leg)?.call.clone();
        self.end_leg(now, agent_leg);
        let q = self.queueing.as_deref_mut()?;
        let ms = q.ms(now);
        let _ = q
            .router
            .handle_input(ms, RouterInput::CallEnded { call: call.clone() });
        Some(call)
    }

    /// The agent's side of a callback ended (`agent_hung_up` has already told the router and
    /// ended the resident's leg): complete if the resident had answered, else a failed attempt.
    pub(super) fn callback_agent_gone(&mut self, now: Instant, call: &CallId, reason: &str) {
        let state = self
            .queueing
            .as_deref()
            .and_then(|q| q.callbacks.get(&call.0))
            .map(|c| c.state);
        match state {
            Some(CallbackState::Talking { .. }) => {
                self.finish_callback(now, &call.0, "completed", None)
            }
            Some(_) => self.attempt_failed(now, &call.0, reason),
            None => {}
        }
    }

    /// The resident could not be reached on this attempt (busy, declined, unanswered, no
    /// audio): the agent's leg ends, then the callback is tried again later or given up.
    pub(super) fn resident_failed(&mut self, now: Instant, agent_leg: u64, result: &str) {
        if let Some(call) = self.end_agent_side(now, agent_leg) {
            self.attempt_failed(now, &call.0, result);
        }
        self.drain_router(now);
    }

    fn attempt_failed(&mut self, now: Instant, call_ref: &str, result: &str) {
        let Some(setup) = self.callback_setup() else {
            return;
        };
        let Some(c) = self
            .queueing
            .as_deref_mut()
            .and_then(|q| q.callbacks.get_mut(call_ref))
        else {
            return;
        };
        let attempt = c.attempts;
        let retry_at = now + setup.retry_after;
        let give_up = attempt >= setup.max_attempts || retry_at >= c.expires_at;
        if !give_up {
            c.state = CallbackState::Parked { until: retry_at };
        }
        self.callback_event(
            now,
            call_ref,
            "attempt_failed",
            format!(
                "{{\"attempt\":{attempt},\"result\":{},\"retry\":{}}}",
                json_string(result),
                !give_up
            ),
        );
        if give_up {
            let why = format!("{attempt} attempts; last: {result}");
            self.give_up_callback(now, call_ref, &why);
        } else {
            self.save_callback(now, call_ref, "waiting", Some(result.to_string()));
        }
    }

    /// Records the callback as failed (it shows in reports) and forgets it.
    fn give_up_callback(&mut self, now: Instant, call_ref: &str, why: &str) {
        self.finish_callback(now, call_ref, "failed", Some(why.to_string()));
    }

    fn finish_callback(
        &mut self,
        now: Instant,
        call_ref: &str,
        state: &'static str,
        why: Option<String>,
    ) {
        let attempts = self
            .queueing
            .as_deref()
            .and_then(|q| q.callbacks.get(call_ref))
            .map(|c| c.attempts);
        let Some(attempts) = attempts else {
            return;
        };
        let detail = match &why {
            Some(why) => format!("{{\"attempts\":{attempts},\"why\":{}}}", json_string(why)),
            None => format!("{{\"attempts\":{attempts}}}"),
        };
        self.callback_event(now, call_ref, state, detail);
        self.save_callback(now, call_ref, state, why);
        if let Some(q) = self.queueing.as_deref_mut() {
            q.callbacks.remove(call_ref);
        }
    }

    /// Lapsed dialogues, unanswered residents, pauses that ended and callbacks too old.
    pub(super) fn callback_timeouts(&mut self, now: Instant) {
        let Some(q) = self.queueing.as_deref() else {
            return;
        };
        let lapsed: Vec<u64> = q
            .queued
            .iter()
            .filter(|(_, w)| w.callback.as_ref().is_some_and(|a| a.deadline() <= now))
            .map(|(&n, _)| n)
            .collect();
        let unanswered: Vec<(u64, u64)> = q
            .legs
            .iter()
            .filter(|(_, l)| l.ring_deadline.is_some_and(|d| d <= now))
            .filter_map(|(&n, l)| match l.kind {
                LegKind::Resident { agent_leg } => Some((n, agent_leg)),
                _ => None,
            })
            .collect();
        let mut expired = Vec::new();
        let mut resume = Vec::new();
        for (call_ref, c) in &q.callbacks {
            match c.state {
                CallbackState::Waiting | CallbackState::Parked { .. } if c.expires_at <= now => {
                    expired.push((call_ref.clone(), c.state));
                }
                CallbackState::Parked { until } if until <= now => resume.push(call_ref.clone()),
                _ => {}
            }
        }
        for number in lapsed {
            self.end_callback_ask(now, number, None);
        }
        for (resident, agent_leg) in unanswered {
            if let Some(leg) = self
                .queueing
                .as_deref_mut()
                .and_then(|q| q.legs.get_mut(&resident))
            {
                leg.ring_deadline = None;
            }
            self.end_leg(now, resident);
            self.resident_failed(now, agent_leg, "no answer");
        }
        for (call_ref, state) in expired {
            if state == CallbackState::Waiting {
                // Still in line: it leaves the queue (recorded as abandoned there).
                if let Some(q) = self.queueing.as_deref_mut() {
                    let ms = q.ms(now);
                    let call = CallId(call_ref.clone());
                    let _ = q
                        .router
                        .handle_input(ms, RouterInput::CallerHangup { call });
                }
            }
            self.give_up_callback(now, &call_ref, "expired before an agent was free");
            self.drain_router(now);
        }
        for call_ref in resume {
            self.rejoin_callback(now, &call_ref, None);
        }
    }

    /// Callbacks from the store at start-up: each goes back in line at the place its original
    /// join time gives it.
    pub(super) fn restore_callbacks(&mut self, now: Instant, restored: Vec<RestoredCallback>) {
        let Some(setup) = self.callback_setup() else {
            // Callbacks are switched off now: they are recorded as failed rather than lost.
            for r in restored {
                self.callback_event(
                    now,
                    &r.call_ref,
                    "failed",
                    "{\"why\":\"callbacks are not configured\"}".into(),
                );
            }
            return;
        };
        for r in restored {
            let Some(q) = self.queueing.as_deref_mut() else {
                return;
            };
            let ms = q.ms(now);
            let callback = Callback {
                number: r.number,
                language: r.language,
                category: (!r.attrs.category.is_empty()).then(|| r.attrs.category.clone()),
                queue: r.queue.map(QueueId),
                attrs: r.attrs,
                priority: r.priority,
                joined_ms: ms.saturating_sub(r.waited.as_millis() as u64),
                expires_at: now + setup.give_up_after.saturating_sub(r.waited),
                attempts: r.attempts,
                state: CallbackState::Waiting,
            };
            q.callbacks.insert(r.call_ref.clone(), callback);
            self.callback_event(
                now,
                &r.call_ref,
                "restored",
                format!(
                    "{{\"waited_ms\":{},\"attempts\":{}}}",
                    r.waited.as_millis(),
                    r.attempts
                ),
            );
            self.rejoin_callback(now, &r.call_ref, None);
        }
    }
}

/// "We will call you back at 3 1 2 ... To confirm, press 1; for another number, press 2."
fn confirm_prompts(number: &str) -> Vec<String> {
    let mut prompts = vec!["callback_confirm".to_string()];
    prompts.extend(crate::numbers::say_digits(number));
    prompts.push("callback_confirm_keys".into());
    prompts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DialPlan {
        DialPlan::new(
            &["NXXNXXXXXX".into(), "1NXXNXXXXXX".into()],
            &[
                "011.".into(),
                "1900XXXXXXX".into(),
                "900XXXXXXX".into(),
                "1976XXXXXXX".into(),
                "976XXXXXXX".into(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn local_and_long_distance_numbers_are_allowed() {
        assert_eq!(plan().check("3125550142"), Ok(()));
        assert_eq!(plan().check("13125550142"), Ok(()));
    }

    #[test]
    fn premium_and_international_numbers_are_refused() {
        assert!(
            matches!(plan().check("19005550142"), Err(Refusal::Denied(p)) if p == "1900XXXXXXX")
        );
        assert!(matches!(
            plan().check("9005550142"),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(plan().check("011442071234567"), Err(Refusal::Denied(p)) if p == "011."));
        assert_eq!(plan().check("5551230002"), Err(Refusal::NotAllowed)); // N in 4th place
        assert_eq!(plan().check("911"), Err(Refusal::NotAllowed));
        assert_eq!(plan().check(""), Err(Refusal::Empty));
        assert_eq!(plan().check("31255501x2"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn an_empty_allow_list_allows_nothing() {
        let plan = DialPlan::new(&[], &[]).unwrap();
        assert_eq!(plan.check("3125550142"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn pattern_syntax() {
        let p = DialPattern::parse("_1[2-4]Z!").unwrap();
        assert!(p.matches("121"));
        assert!(p.matches("1419999"));
        assert!(!p.matches("150"));
        assert!(!p.matches("120"));
        assert!(!p.matches("12"));
        let p = DialPattern::parse("[147]X.").unwrap();
        assert!(p.matches("400"));
        assert!(!p.matches("40"));
        for bad in ["", "1.2", "[12", "[]", "[3-1]", "1Q", "[a]"] {
            assert!(
                DialPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn caller_id_digits() {
        assert_eq!(
            caller_id_number("\"Resident\" <sip:+1-312-555-0142@10.0.0.1>;tag=x").as_deref(),
            Some("13125550142")
        );
        assert_eq!(
            caller_id_number("<tel:+13125550142;phone-context=x>").as_deref(),
            Some("13125550142")
        );
        assert_eq!(caller_id_number("<sip:alice@example.com>"), None);
        assert_eq!(caller_id_number("<sip:example.com>"), None);
        assert_eq!(masked("3125550142"), "***0142");
        assert_eq!(masked("12"), "***12");
    }
}
