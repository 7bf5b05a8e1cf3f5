//! The live view of queues, agents and calls, for the wallboard and `GET /api/v1/live`: a pure
//! read of the engine's state at `now` (no clock read, nothing changed). The runtime adds what
//! the engine does not know (wall-clock times, "today" figures from the event log) before it
//! publishes; see `runtime::api::live`.

use std::time::Instant;

use serde::Serialize;

use super::{CallState, Engine};
use crate::routing::core::{AgentState, CallId, CallStatus};

/// What the engine knows right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EngineLive {
    pub queues: Vec<LiveQueue>,
    pub agents: Vec<LiveAgent>,
    pub calls: Vec<LiveCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveQueue {
    pub id: String,
    pub name: String,
    /// Callers waiting (not those ringing an agent).
    pub waiting: usize,
    /// The longest current wait, counted from when the caller first joined any queue.
    pub longest_wait_s: u64,
    /// The estimator's remaining wait for the last caller in line: a new caller waits at least
    /// this long. None when nobody waits (or the estimator has no view of the caller yet).
    pub estimate_s: Option<u64>,
    pub agents_ready: usize,
    /// Reserved, ringing, talking or in wrap-up.
    pub agents_busy: usize,
    pub service_level_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveAgent {
    pub id: String,
    pub name: String,
    /// The router's state text (offline, ready, ..., not_ready(reason)).
    pub state: String,
    pub skills: std::collections::BTreeMap<String, u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveCall {
    pub call_ref: String,
    /// ivr (anything before a queue: menus, recording, prompts), queued, ringing, talking;
    /// for a resident who hung up keeping their place: callback_pending (in line or between
    /// attempts), callback_dialing (an agent answered, the resident's phone rings),
    /// callback_talking.
    pub phase: &'static str,
    pub queue: Option<String>,
    /// Queued: since first joining a queue. Otherwise: since the call arrived.
    pub waited_s: u64,
}

impl Engine {
    /// Queues, agents and calls as they stand at `now`, in a stable order (queues as in the
    /// rules, agents as in agents.toml, calls by reference), so equal states compare equal.
    pub fn live_snapshot(&self, now: Instant) -> EngineLive {
        let mut live = EngineLive::default();
        let queueing = self.queueing.as_deref();
        let now_ms = queueing.and_then(|q| q.router_ms(now)).unwrap_or(0);
        // When each waiting caller first joined a queue, gathered once (not per call).
        let mut joined: std::collections::HashMap<String, u64> = Default::default();
        if let Some(q) = queueing {
            let router = q.router();
            let setup = q.setup();
            for profile in &setup.agents {
                let state = router
                    .agent_state(&profile.id)
                    .cloned()
                    .unwrap_or(AgentState::Offline);
                live.agents.push(LiveAgent {
                    id: profile.id.0.clone(),
                    name: profile.name.clone(),
                    state: state.to_string(),
                    skills: profile.skills.clone(),
                });
            }
            for queue in router.rules().queues() {
                let waiting = router.waiting(&queue.id);
                joined.extend(waiting.iter().map(|w| (w.call.0.clone(), w.joined_ms)));
                let longest = waiting
                    .iter()
                    .map(|w| now_ms.saturating_sub(w.joined_ms))
                    .max()
                    .unwrap_or(0);
                let estimate = waiting
                    .last()
                    .and_then(|w| q.estimate_for(&w.call.0, now_ms))
                    .map(|s| s.max(0.0).round() as u64);
                let (mut ready, mut busy) = (0, 0);
                for profile in &setup.agents {
                    if !queue.levels().iter().any(|l| l.accepts(&profile.skills)) {
                        continue;
                    }
                    match router.agent_state(&profile.id) {
                        Some(AgentState::Ready) => ready += 1,
                        Some(
                            AgentState::Reserved
                            | AgentState::Ringing
                            | AgentState::Talking
                            | AgentState::WrapUp,
                        ) => busy += 1,
                        _ => {}
                    }
                }
                live.queues.push(LiveQueue {
                    id: queue.id.0.clone(),
                    name: queue.name.clone(),
                    waiting: waiting.len(),
                    longest_wait_s: longest / 1000,
                    estimate_s: estimate,
                    agents_ready: ready,
                    agents_busy: busy,
                    service_level_s: queue.service_level_s,
                });
            }
        }
        for call in self.calls.values() {
            if call.state == CallState::Terminating {
                continue;
            }
            let since_arrival = now.saturating_duration_since(call.received_at).as_secs();
            let status =
                queueing.and_then(|q| q.router().call_status(&CallId(call.call_ref.clone())));
            let (phase, queue, waited_s) = match status {
                Some(CallStatus::Waiting { queue, .. }) => {
                    let waited = joined
                        .get(&call.call_ref)
                        .map(|&at| now_ms.saturating_sub(at) / 1000);
                    ("queued", Some(queue.0), waited.unwrap_or(since_arrival))
                }
                Some(CallStatus::Ringing { queue, .. }) => {
                    ("ringing", Some(queue.0), since_arrival)
                }
                Some(CallStatus::Talking { queue, .. }) => {
                    ("talking", Some(queue.0), since_arrival)
                }
                None => ("ivr", None, since_arrival),
            };
            live.calls.push(LiveCall {
                call_ref: call.call_ref.clone(),
                phase,
                queue,
                waited_s,
            });
        }
        if let Some(q) = queueing {
            for (call_ref, callback) in &q.callbacks {
                use super::callback::CallbackState;
                if self.call_refs.contains_key(call_ref) {
                    continue; // still on the line, hearing the goodbye: listed above
                }
                let phase = match callback.state {
                    CallbackState::Waiting | CallbackState::Parked { .. } => "callback_pending",
                    CallbackState::Dialing { .. } => "callback_dialing",
                    CallbackState::Talking { .. } => "callback_talking",
                };
                live.calls.push(LiveCall {
                    call_ref: call_ref.clone(),
                    phase,
                    queue: callback.queue.as_ref().map(|q| q.0.clone()),
                    waited_s: now_ms.saturating_sub(callback.joined_ms) / 1000,
                });
            }
        }
        live.calls.sort_by(|a, b| a.call_ref.cmp(&b.call_ref));
        live
    }
}
