//! Call events: the append-only record every metric is derived from. The engine creates them
//! with engine-clock instants; the runtime stamps wall-clock time and the store commits them.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An initial INVITE arrived and a call reference was assigned.
    Received,
    /// We answered with 200 OK; `duration` is the time from INVITE to answer.
    Answered,
    /// We refused the call (4xx/5xx); `status_code` and `reason` say why.
    Rejected,
    /// The caller cancelled before we answered (487 sent).
    Cancelled,
    /// The call ended; `reason` says who hung up, `duration` is the talk time since answer.
    Ended,
    /// Something went wrong on an established call (no ACK, BYE unanswered).
    Failed,
    /// The caller entered an IVR step (`reason` = step id) or finished collecting digits.
    IvrStep,
    /// The caller pressed a key (`detail.digit`).
    Digit,
    /// A recording of the caller ended (`duration`, `detail.path`, `reason` why it stopped).
    Recording,
    /// The caller was handed to a queue (`detail.queue`).
    HandOff,
    /// RTP figures of a finished call (`detail`: packets, loss, jitter).
    RtpStats,
    /// Prompts queued for the caller (`detail.prompts`, `detail.language`).
    Prompt,
    /// A case was stored for the call (`detail.case_number`).
    CaseCreated,
    /// A recording's draft came back (`reason`: understood, low_confidence, empty,
    /// unavailable; `detail`: path, category, confidence, timings; never the words).
    Transcript,
    /// A routing-core queue event (`reason`: joined, offered, answered, abandoned, ...;
    /// `detail`: the event as JSON; `duration`: the hold time where there is one).
    Queue,
    /// A queued caller was told their position and wait (`detail`: position, estimate_s,
    /// announced_s), logged so announced and realised waits can be compared.
    Announced,
    /// A callback's step (`reason`: requested, refused, dialing, attempt_failed, connected,
    /// completed, failed, restored; `detail`: the number's last four digits, attempt, result;
    /// `duration` on connected: the whole wait since the original join).
    Callback,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Answered => "answered",
            EventKind::Rejected => "rejected",
            EventKind::Cancelled => "cancelled",
            EventKind::Ended => "ended",
            EventKind::Failed => "failed",
            EventKind::IvrStep => "ivr_step",
            EventKind::Digit => "digit",
            EventKind::Recording => "recording",
            EventKind::HandOff => "handoff",
            EventKind::RtpStats => "rtp_stats",
            EventKind::Prompt => "prompt",
            EventKind::CaseCreated => "case_created",
            EventKind::Transcript => "transcript",
            EventKind::Queue => "queue",
            EventKind::Announced => "announced",
            EventKind::Callback => "callback",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Received,
            EventKind::Answered,
            EventKind::Rejected,
            EventKind::Cancelled,
            EventKind::Ended,
            EventKind::Failed,
            EventKind::IvrStep,
            EventKind::Digit,
            EventKind::Recording,
            EventKind::HandOff,
            EventKind::RtpStats,
            EventKind::Prompt,
            EventKind::CaseCreated,
            EventKind::Transcript,
            EventKind::Queue,
            EventKind::Announced,
            EventKind::Callback,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One event as the engine decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEvent {
    pub at: Instant,
    /// Our reference for the call, unique across restarts (`<instance>-<n>`).
    pub call_ref: String,
    pub sip_call_id: String,
    pub kind: EventKind,
    pub status_code: Option<u16>,
    pub reason: Option<String>,
    pub duration: Option<Duration>,
    /// The caller's user part (a phone number). Stored, never logged at info level.
    pub caller: Option<String>,
    /// Extra facts as a JSON object.
    pub detail: Option<String>,
}

/// A caller number safe for logs: only the last two digits stay visible.
pub fn mask_caller(number: &str) -> String {
    let visible: String = number
        .chars()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("***{visible}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_masking() {
        for k in [
            "received",
            "answered",
            "rejected",
            "cancelled",
            "ended",
            "failed",
        ] {
            assert_eq!(EventKind::parse(k).unwrap().as_str(), k);
        }
        assert_eq!(mask_caller("+15551234567"), "***67");
    }
}
