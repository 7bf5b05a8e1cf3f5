//! IVR flows: the menu a caller walks, defined as data (`routing-rules/ivr.toml`) and run by a
//! pure interpreter: `(session, event, now) -> actions`. No audio, no sockets, no clock: the
//! engine turns actions into media commands and feeds back prompt-done, digit and recording
//! events. A flow with a dangling step, an unknown prompt or a bad key is refused at load with
//! the file, line and reason, so a broken edit never reaches a caller.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    start: Spanned<String>,
    languages: Vec<String>,
    /// Played before a step's prompts are repeated after a timeout or a wrong key.
    retry_prompt: Spanned<String>,
    #[serde(rename = "step")]
    steps: Vec<StepFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    id: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    prompts: Vec<Spanned<String>>,
    /// Menu: key -> step id.
    #[serde(default)]
    keys: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Menu: key -> language chosen by pressing it.
    #[serde(default)]
    languages: BTreeMap<String, Spanned<String>>,
    next: Option<Spanned<String>>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    /// Where a caller goes after the last retry (default: the hand-off step `on_fail` names).
    on_fail: Option<Spanned<String>>,
    max_seconds: Option<u64>,
    silence_ms: Option<u64>,
    max_digits: Option<usize>,
    queue: Option<String>,
    /// Understand: where silence or noise goes (re-record), `retries` times, then `on_fail`.
    on_empty: Option<Spanned<String>>,
    /// Understand: where a draft the recogniser is unsure of goes (a case for an agent).
    on_low_confidence: Option<Spanned<String>>,
    /// Understand: where callers go when speech recognition is down or failed.
    on_unavailable: Option<Spanned<String>>,
    /// Entering the step more often than this sends the caller to `on_fail` instead
    /// ("record again" is offered once).
    max_entries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// Play prompts, wait for one key.
    Menu { keys: BTreeMap<char, Choice> },
    /// Play prompts, then record the caller until end of speech, `#`, or `max`.
    Record {
        max: Duration,
        silence: Duration,
        next: usize,
    },
    /// Play prompts, collect digits until `#` or `max` digits.
    Digits { max: usize, next: usize },
    /// Play prompts, then go on.
    Say { next: usize },
    /// Hand the caller to a queue.
    Handoff { queue: String },
    /// Play prompts, then hang up.
    Hangup,
    /// Store a case for the caller's last recording, read its number back, go on.
    CaseCreate { next: usize },
    /// Look up the case whose number the caller last keyed in, say its status, go on.
    CaseStatus { next: usize },
    /// Wait (at most `timeout`) for the case draft of the last recording. A confident draft is
    /// said back ("you reported a pothole") and goes to `next`; so does the deadline, because a
    /// caller is never held hostage by speech recognition (the case is completed when the text
    /// arrives). Silence or noise re-records; an unsure draft or a recogniser that is down
    /// goes to an agent.
    Understand {
        next: usize,
        on_empty: usize,
        on_low_confidence: usize,
        on_unavailable: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub goto: usize,
    pub language: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    pub prompts: Vec<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub on_fail: Option<usize>,
    pub max_entries: Option<u32>,
}

/// A validated flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub steps: Vec<Step>,
    pub start: usize,
    pub languages: Vec<String>,
    pub retry_prompt: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Flow {
    pub fn load(path: &Path, prompt_exists: &dyn Fn(&str) -> bool) -> Result<Flow, FlowError> {
        let text = std::fs::read_to_string(path).map_err(|e| FlowError::Invalid {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Flow::parse(&text, path, prompt_exists)
    }

    pub fn parse(
        text: &str,
        path: &Path,
        prompt_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Flow, FlowError> {
        let err = |offset: usize, reason: String| FlowError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            reason,
        };
        let file: FlowFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            err(offset, e.message().to_string())
        })?;
        if file.languages.is_empty() {
            return Err(err(0, "at least one language is needed".into()));
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (n, step) in file.steps.iter().enumerate() {
            if index.insert(step.id.get_ref(), n).is_some() {
                return Err(err(
                    step.id.span().start,
                    format!("step {:?} is defined twice", step.id.get_ref()),
                ));
            }
        }
        let target = |name: &Spanned<String>| -> Result<usize, FlowError> {
            index.get(name.get_ref().as_str()).copied().ok_or_else(|| {
                err(
                    name.span().start,
                    format!("no step named {:?}", name.get_ref()),
                )
            })
        };
        let check_prompt = |name: &Spanned<String>| -> Result<String, FlowError> {
            if prompt_exists(name.get_ref()) {
                Ok(name.get_ref().clone())
            } else {
                Err(err(
                    name.span().start,
                    format!("unknown prompt {:?}", name.get_ref()),
                ))
            }
        };
        let retry_prompt = check_prompt(&file.retry_prompt)?;
        let mut steps = Vec::new();
        for step in &file.steps {
            let prompts = step
                .prompts
                .iter()
                .map(check_prompt)
                .collect::<Result<Vec<_>, _>>()?;
            let need_next = |what: &str| -> Result<usize, FlowError> {
                match &step.next {
                    Some(next) => target(next),
                    None => Err(err(
                        step.kind.span().start,
                        format!("a {what} step needs `next`"),
                    )),
                }
            };
            let kind = match step.kind.get_ref().as_str() {
                "menu" => {
                    if step.keys.is_empty() {
                        return Err(err(
                            step.kind.span().start,
                            "a menu step needs `keys`".into(),
                        ));
                    }
                    let mut keys = BTreeMap::new();
                    for (key, goto) in &step.keys {
                        let mut chars = key.get_ref().chars();
                        let (Some(c), None) = (chars.next(), chars.next()) else {
                            return Err(err(
                                key.span().start,
                                format!("key {:?} is not one DTMF key", key.get_ref()),
                            ));
                        };
                        if !"0123456789*#ABCD".contains(c) {
                            return Err(err(
                                key.span().start,
                                format!("key {c:?} is not a DTMF key"),
                            ));
                        }
                        let language = step
                            .languages
                            .get(key.get_ref())
                            .map(|l| l.get_ref().clone());
                        keys.insert(
                            c,
                            Choice {
                                goto: target(goto)?,
                                language,
                            },
                        );
                    }
                    for (key, language) in &step.languages {
                        if !file.languages.contains(language.get_ref()) {
                            return Err(err(
                                language.span().start,
                                format!("language {:?} is not in `languages`", language.get_ref()),
                            ));
                        }
                        if !step.keys.keys().any(|k| k.get_ref() == key) {
                            return Err(err(
                                language.span().start,
                                format!("language key {key:?} has no entry in `keys`"),
                            ));
                        }
                    }
                    StepKind::Menu { keys }
                }
                "record" => StepKind::Record {
                    max: Duration::from_secs(step.max_seconds.unwrap_or(60)),
                    silence: Duration::from_millis(step.silence_ms.unwrap_or(1500)),
                    next: need_next("record")?,
                },
                "digits" => StepKind::Digits {
                    max: step.max_digits.unwrap_or(12),
                    next: need_next("digits")?,
                },
                "say" => StepKind::Say {
                    next: need_next("say")?,
                },
                "handoff" => StepKind::Handoff {
                    queue: step.queue.clone().ok_or_else(|| {
                        err(
                            step.kind.span().start,
                            "a handoff step needs `queue`".into(),
                        )
                    })?,
                },
                "hangup" => StepKind::Hangup,
                "case_create" => StepKind::CaseCreate {
                    next: need_next("case_create")?,
                },
                "case_status" => StepKind::CaseStatus {
                    next: need_next("case_status")?,
                },
                "understand" => {
                    let need = |field: &Option<Spanned<String>>, name: &str| match field {
                        Some(id) => target(id),
                        None => Err(err(
                            step.kind.span().start,
                            format!("an understand step needs `{name}`"),
                        )),
                    };
                    StepKind::Understand {
                        next: need_next("understand")?,
                        on_empty: need(&step.on_empty, "on_empty")?,
                        on_low_confidence: need(&step.on_low_confidence, "on_low_confidence")?,
                        on_unavailable: need(&step.on_unavailable, "on_unavailable")?,
                    }
                }
                other => {
                    return Err(err(
                        step.kind.span().start,
                        format!(
                            "unknown step kind {other:?} (menu, record, digits, say, handoff, \
                             hangup, case_create, case_status, understand)"
                        ),
                    ))
                }
            };
            steps.push(Step {
                id: step.id.get_ref().clone(),
                kind,
                prompts,
                timeout: Duration::from_millis(step.timeout_ms.unwrap_or(5000)),
                retries: step.retries.unwrap_or(2),
                on_fail: step.on_fail.as_ref().map(target).transpose()?,
                max_entries: step.max_entries,
            });
            if step.max_entries.is_some() && step.on_fail.is_none() {
                return Err(err(
                    step.id.span().start,
                    "`max_entries` needs `on_fail` (where the caller goes after)".into(),
                ));
            }
        }
        let start = target(&file.start)?;
        Ok(Flow {
            steps,
            start,
            languages: file.languages,
            retry_prompt,
        })
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// What the caller did or the media layer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrEvent {
    PromptFinished,
    Digit(char),
    /// The capture ended (end of speech, `#`, maximum length, or stopped).
    RecordingFinished {
        duration: Duration,
    },
    /// The case asked for by `CreateCase` is stored under this number.
    CaseCreated {
        number: String,
    },
    /// The case could not be stored (the recording is kept; the caller goes to `on_fail`).
    CaseCreateFailed,
    /// The answer to `LookupCase`: `None` when no case has that number.
    CaseFound(Option<CaseInfo>),
    /// What speech recognition made of the last recording.
    Draft(DraftOutcome),
}

/// The transcription stage's verdict on one recording, as far as the flow cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftOutcome {
    /// A category the drafter is confident of.
    Understood { category: String },
    /// Words, but no category the drafter is sure of: a person should read it.
    LowConfidence,
    /// Silence or noise: nothing to file.
    Empty,
    /// No recogniser (degraded mode), a full queue or a failed transcription.
    Unavailable,
}

/// The prompt that names a department: "Streets & Sanitation" -> `department_streets_sanitation`.
pub fn department_prompt(department: &str) -> String {
    let mut slug = String::from("department_");
    let mut gap = false;
    for c in department.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !slug.ends_with('_') {
                slug.push('_');
            }
            gap = false;
            slug.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    slug
}

/// What a caller is told about a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseInfo {
    pub open: bool,
    pub days_open: u32,
    /// Said as `department_is` + `department_prompt(..)` when known.
    pub department: Option<String>,
}

/// What the engine must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrAction {
    /// Play these prompt ids (already resolved for the caller's language), in order.
    Play {
        prompts: Vec<String>,
        language: String,
    },
    /// Barge-in: stop the prompt now.
    StopPlayback,
    StartCapture {
        max: Duration,
        silence: Duration,
    },
    StopCapture,
    /// The caller entered a step (for the event log).
    Entered {
        step: String,
    },
    DigitsCollected {
        step: String,
        digits: String,
    },
    /// Send the caller to a queue.
    HandOff {
        queue: String,
    },
    Hangup,
    /// Store a case for the caller's last recording; answered by `CaseCreated`.
    CreateCase,
    /// Find the case with this number; answered by `CaseFound`.
    LookupCase {
        number: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prompting,
    Waiting,
    Recording,
    /// Waiting for the store (case created or found); then its prompts play.
    Store,
    /// Waiting for the draft of the last recording.
    Understanding,
    /// Playing what the store answered; `PromptFinished` moves on.
    Telling,
    Done,
}

/// One caller's place in a flow.
#[derive(Debug, Clone)]
pub struct IvrSession {
    step: usize,
    failures: u32,
    pub language: String,
    phase: Phase,
    digits: String,
    /// The digits of the last completed `digits` step (a case number, for `case_status`).
    last_digits: Option<String>,
    deadline: Option<Instant>,
    /// A draft that arrived before the flow reached its understand step.
    pending_draft: Option<DraftOutcome>,
    /// Recordings that came back empty, over the whole call.
    empty_drafts: u32,
    /// How often each step was entered (for `max_entries`).
    entries: HashMap<usize, u32>,
}

impl IvrSession {
    pub fn start(flow: &Flow, now: Instant) -> (IvrSession, Vec<IvrAction>) {
        let mut session = IvrSession {
            step: flow.start,
            failures: 0,
            language: flow.languages[0].clone(),
            phase: Phase::Prompting,
            digits: String::new(),
            last_digits: None,
            deadline: None,
            pending_draft: None,
            empty_drafts: 0,
            entries: HashMap::new(),
        };
        let mut actions = Vec::new();
        session.enter(flow, flow.start, now, &mut actions);
        (session, actions)
    }

    /// A session that starts at `step` in `language` (a caller coming back from a queue).
    pub fn start_at(
        flow: &Flow,
        step: usize,
        language: &str,
        now: Instant,
    ) -> (IvrSession, Vec<IvrAction>) {
        let (mut session, _) = IvrSession::start(flow, now);
        session.language = language.to_string();
        let mut actions = Vec::new();
        session.enter(flow, step, now, &mut actions);
        (session, actions)
    }

    pub fn current_step<'f>(&self, flow: &'f Flow) -> &'f Step {
        &flow.steps[self.step]
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn enter(&mut self, flow: &Flow, step: usize, now: Instant, actions: &mut Vec<IvrAction>) {
        self.enter_step(flow, step, now, actions, false)
    }

    fn enter_step(
        &mut self,
        flow: &Flow,
        step: usize,
        now: Instant,
        actions: &mut Vec<IvrAction>,
        retry: bool,
    ) {
        let entries = self.entries.entry(step).or_insert(0);
        *entries += 1;
        if let (Some(max), Some(on_fail)) = (flow.steps[step].max_entries, flow.steps[step].on_fail)
        {
            // Loading checked that max_entries comes with on_fail; a loop of such steps is
            // bounded because each entry is counted.
            if *entries > max && on_fail != step {
                return self.enter_step(flow, on_fail, now, actions, false);
            }
        }
        self.step = step;
        self.failures = 0;
        self.digits.clear();
        actions.push(IvrAction::Entered {
            step: flow.steps[step].id.clone(),
        });
        if matches!(flow.steps[step].kind, StepKind::Record { .. }) {
            // A new recording: any draft still owed is for the old one.
            self.pending_draft = None;
        }
        self.prompt(flow, now, actions, retry);
    }

    /// Plays the step's prompts (after the retry prompt when `retry`), or acts at once.
    fn prompt(&mut self, flow: &Flow, now: Instant, actions: &mut Vec<IvrAction>, retry: bool) {
        let step = &flow.steps[self.step];
        let mut prompts = Vec::new();
        if retry {
            prompts.push(flow.retry_prompt.clone());
        }
        prompts.extend(step.prompts.iter().cloned());
        self.deadline = None;
        if let StepKind::Handoff { queue } = &step.kind {
            if !prompts.is_empty() {
                actions.push(IvrAction::Play {
                    prompts,
                    language: self.language.clone(),
                });
            }
            actions.push(IvrAction::HandOff {
                queue: queue.clone(),
            });
            self.phase = Phase::Done;
            return;
        }
        if prompts.is_empty() {
            self.after_prompt(flow, now, actions);
            return;
        }
        actions.push(IvrAction::Play {
            prompts,
            language: self.language.clone(),
        });
        self.phase = Phase::Prompting;
    }

    fn after_prompt(&mut self, flow: &Flow, now: Instant, actions: &mut Vec<IvrAction>) {
        let step = &flow.steps[self.step];
        match &step.kind {
            StepKind::Menu { .. } | StepKind::Digits { .. } => {
                self.phase = Phase::Waiting;
                self.deadline = Some(now + step.timeout);
            }
            StepKind::Record { max, silence, .. } => {
                self.phase = Phase::Recording;
                // The capture stops itself; this deadline is a backstop if no report comes.
                self.deadline = Some(now + *max + Duration::from_secs(5));
                actions.push(IvrAction::StartCapture {
                    max: *max,
                    silence: *silence,
                });
            }
            StepKind::Say { next } => {
                let next = *next;
                self.enter(flow, next, now, actions);
            }
            StepKind::Hangup => {
                self.phase = Phase::Done;
                actions.push(IvrAction::Hangup);
            }
            StepKind::CaseCreate { .. } => {
                self.phase = Phase::Store;
                actions.push(IvrAction::CreateCase);
            }
            StepKind::CaseStatus { .. } => {
                self.phase = Phase::Store;
                let number = self.last_digits.clone().unwrap_or_default();
                actions.push(IvrAction::LookupCase { number });
            }
            StepKind::Understand { .. } => {
                self.phase = Phase::Understanding;
                self.deadline = Some(now + step.timeout);
                if let Some(draft) = self.pending_draft.take() {
                    self.understood(flow, now, draft, actions);
                }
            }
            StepKind::Handoff { .. } => {}
        }
    }

    /// A timeout or a wrong key: repeat with the retry prompt, or give up after `retries`.
    fn fail(&mut self, flow: &Flow, now: Instant, actions: &mut Vec<IvrAction>) {
        self.failures += 1;
        let step = &flow.steps[self.step];
        if self.failures > step.retries {
            match step.on_fail {
                Some(target) => self.enter(flow, target, now, actions),
                None => {
                    self.phase = Phase::Done;
                    self.deadline = None;
                    actions.push(IvrAction::Hangup);
                }
            }
        } else {
            self.digits.clear();
            self.prompt(flow, now, actions, true);
        }
    }

    pub fn handle(&mut self, flow: &Flow, now: Instant, event: IvrEvent) -> Vec<IvrAction> {
        let mut actions = Vec::new();
        if self.phase == Phase::Done {
            return actions;
        }
        let step = &flow.steps[self.step];
        match event {
            IvrEvent::PromptFinished if self.phase == Phase::Prompting => {
                self.after_prompt(flow, now, &mut actions)
            }
            IvrEvent::PromptFinished if self.phase == Phase::Telling => {
                if let StepKind::CaseCreate { next }
                | StepKind::CaseStatus { next }
                | StepKind::Understand { next, .. } = step.kind
                {
                    self.enter(flow, next, now, &mut actions);
                }
            }
            IvrEvent::Draft(draft) => {
                if self.phase == Phase::Understanding {
                    self.understood(flow, now, draft, &mut actions);
                } else {
                    self.pending_draft = Some(draft);
                }
            }
            IvrEvent::PromptFinished => {}
            IvrEvent::CaseCreated { number } if self.phase == Phase::Store => {
                let mut prompts = vec!["your_case_number_is".to_string()];
                prompts.extend(crate::numbers::say_digits(&number));
                self.tell(prompts, &mut actions);
            }
            IvrEvent::CaseCreateFailed if self.phase == Phase::Store => match step.on_fail {
                Some(target) => self.enter(flow, target, now, &mut actions),
                None => {
                    self.phase = Phase::Done;
                    actions.push(IvrAction::Hangup);
                }
            },
            IvrEvent::CaseFound(found) if self.phase == Phase::Store => {
                let prompts = match found {
                    Some(info) => {
                        let status = if info.open {
                            "case_status_open"
                        } else {
                            "case_status_closed"
                        };
                        let mut prompts = vec![status.to_string()];
                        if let Some(department) = &info.department {
                            prompts.push("department_is".into());
                            prompts.push(department_prompt(department));
                        }
                        prompts.extend(crate::numbers::say_number(info.days_open, &self.language));
                        prompts.push("days_open".into());
                        prompts
                    }
                    // No such case: the retry prompt ("sorry, I didn't get that") says so.
                    None => vec![flow.retry_prompt.clone()],
                };
                self.tell(prompts, &mut actions);
            }
            IvrEvent::CaseCreated { .. } | IvrEvent::CaseCreateFailed | IvrEvent::CaseFound(_) => {}
            IvrEvent::Digit(digit) => match (&step.kind, self.phase) {
                (StepKind::Menu { keys }, Phase::Prompting | Phase::Waiting) => {
                    if self.phase == Phase::Prompting {
                        actions.push(IvrAction::StopPlayback);
                    }
                    match keys.get(&digit) {
                        Some(choice) => {
                            if let Some(language) = &choice.language {
                                self.language = language.clone();
                            }
                            let goto = choice.goto;
                            self.enter(flow, goto, now, &mut actions);
                        }
                        None => self.fail(flow, now, &mut actions),
                    }
                }
                (StepKind::Digits { max, next }, Phase::Prompting | Phase::Waiting) => {
                    if self.phase == Phase::Prompting {
                        actions.push(IvrAction::StopPlayback);
                        self.phase = Phase::Waiting;
                    }
                    if digit != '#' {
                        self.digits.push(digit);
                    }
                    if digit == '#' || self.digits.len() >= *max {
                        if self.digits.is_empty() {
                            self.fail(flow, now, &mut actions);
                        } else {
                            let digits = std::mem::take(&mut self.digits);
                            self.last_digits = Some(digits.clone());
                            actions.push(IvrAction::DigitsCollected {
                                step: step.id.clone(),
                                digits,
                            });
                            let next = *next;
                            self.enter(flow, next, now, &mut actions);
                        }
                    } else {
                        self.deadline = Some(now + step.timeout);
                    }
                }
                (StepKind::Record { .. }, Phase::Recording) if digit == '#' => {
                    actions.push(IvrAction::StopCapture)
                }
                // Keys during a prompt with nothing to choose, or during a recording, are ignored.
                _ => {}
            },
            IvrEvent::RecordingFinished { .. } => {
                if let (StepKind::Record { next, .. }, Phase::Recording) = (&step.kind, self.phase)
                {
                    let next = *next;
                    self.enter(flow, next, now, &mut actions);
                }
            }
        }
        actions
    }

    /// The understand step's decision on a draft.
    fn understood(
        &mut self,
        flow: &Flow,
        now: Instant,
        draft: DraftOutcome,
        actions: &mut Vec<IvrAction>,
    ) {
        let step = &flow.steps[self.step];
        let StepKind::Understand {
            on_empty,
            on_low_confidence,
            on_unavailable,
            ..
        } = step.kind
        else {
            return;
        };
        self.deadline = None;
        match draft {
            DraftOutcome::Understood { category } => self.tell(
                vec!["you_reported".into(), format!("category_{category}")],
                actions,
            ),
            DraftOutcome::LowConfidence => self.enter(flow, on_low_confidence, now, actions),
            DraftOutcome::Unavailable => self.enter(flow, on_unavailable, now, actions),
            DraftOutcome::Empty => {
                self.empty_drafts += 1;
                if self.empty_drafts > step.retries {
                    match step.on_fail {
                        Some(target) => self.enter(flow, target, now, actions),
                        None => {
                            self.phase = Phase::Done;
                            actions.push(IvrAction::Hangup);
                        }
                    }
                } else {
                    self.enter_step(flow, on_empty, now, actions, true);
                }
            }
        }
    }

    fn tell(&mut self, prompts: Vec<String>, actions: &mut Vec<IvrAction>) {
        self.phase = Phase::Telling;
        actions.push(IvrAction::Play {
            prompts,
            language: self.language.clone(),
        });
    }

    pub fn handle_timeout(&mut self, flow: &Flow, now: Instant) -> Vec<IvrAction> {
        let mut actions = Vec::new();
        match self.deadline {
            Some(at) if at <= now => {
                self.deadline = None;
                match self.phase {
                    Phase::Waiting => self.fail(flow, now, &mut actions),
                    Phase::Recording => actions.push(IvrAction::StopCapture),
                    // The text is late: go on; the case is completed when it arrives.
                    Phase::Understanding => {
                        if let StepKind::Understand { next, .. } = flow.steps[self.step].kind {
                            self.enter(flow, next, now, &mut actions);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        actions
    }
}

/// Prompts available on disk: `<dir>/<lang>/<id>.wav` or `<dir>/common/<id>.wav`.
pub fn prompt_exists_in(dir: &Path, languages: &[&str]) -> impl Fn(&str) -> bool {
    let dir = dir.to_path_buf();
    let languages: Vec<String> = languages.iter().map(|s| s.to_string()).collect();
    move |id: &str| {
        dir.join("common").join(format!("{id}.wav")).is_file()
            || languages
                .iter()
                .all(|l| dir.join(l).join(format!("{id}.wav")).is_file())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fake clock needs one real base instant
mod tests {
    use super::*;

    const FLOW: &str = r#"
start = "language"
languages = ["en", "es"]
retry_prompt = "sorry"

[[step]]
id = "language"
kind = "menu"
prompts = ["greeting"]
keys = { "1" = "main", "2" = "main" }
languages = { "2" = "es" }
on_fail = "main"

[[step]]
id = "main"
kind = "menu"
prompts = ["main_menu"]
keys = { "1" = "describe", "2" = "case", "0" = "agent" }
timeout_ms = 4000
retries = 1
on_fail = "agent"

[[step]]
id = "describe"
kind = "record"
prompts = ["describe", "tone"]
max_seconds = 30
next = "agent"

[[step]]
id = "case"
kind = "digits"
prompts = ["enter_case"]
max_digits = 8
next = "agent"

[[step]]
id = "agent"
kind = "handoff"
queue = "general"
"#;

    fn flow() -> Flow {
        Flow::parse(FLOW, Path::new("ivr.toml"), &|_| true).unwrap()
    }

    fn played(actions: &[IvrAction]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                IvrAction::Play { prompts, .. } => Some(prompts.join("+")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn language_choice_then_menu_with_barge_in() {
        let flow = flow();
        let t0 = Instant::now();
        let (mut s, actions) = IvrSession::start(&flow, t0);
        assert_eq!(played(&actions), ["greeting"]);
        let actions = s.handle(&flow, t0, IvrEvent::Digit('2'));
        assert_eq!(
            actions[0],
            IvrAction::StopPlayback,
            "a key stops the prompt"
        );
        assert_eq!(s.language, "es");
        assert_eq!(played(&actions), ["main_menu"]);
        let actions = s.handle(&flow, t0, IvrEvent::Digit('1'));
        assert!(actions.contains(&IvrAction::Entered {
            step: "describe".into()
        }));
        let actions = s.handle(&flow, t0, IvrEvent::PromptFinished);
        assert!(matches!(actions[0], IvrAction::StartCapture { .. }));
        assert!(s
            .handle(&flow, t0, IvrEvent::Digit('#'))
            .contains(&IvrAction::StopCapture));
        let actions = s.handle(
            &flow,
            t0,
            IvrEvent::RecordingFinished {
                duration: Duration::from_secs(4),
            },
        );
        assert!(actions.contains(&IvrAction::HandOff {
            queue: "general".into()
        }));
        assert!(s.is_done());
    }

    #[test]
    fn timeouts_retry_with_sorry_then_hand_off() {
        let flow = flow();
        let t0 = Instant::now();
        let (mut s, _) = IvrSession::start(&flow, t0);
        s.handle(&flow, t0, IvrEvent::Digit('1'));
        s.handle(&flow, t0, IvrEvent::PromptFinished);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(4)));
        assert!(s
            .handle_timeout(&flow, t0 + Duration::from_millis(3999))
            .is_empty());
        let retry = s.handle_timeout(&flow, t0 + Duration::from_secs(4));
        assert_eq!(played(&retry), ["sorry+main_menu"]);
        let t1 = t0 + Duration::from_secs(5);
        s.handle(&flow, t1, IvrEvent::PromptFinished);
        // A wrong key counts as a failure too; retries = 1, so this is the last one.
        let last = s.handle(&flow, t1, IvrEvent::Digit('9'));
        assert!(
            last.contains(&IvrAction::HandOff {
                queue: "general".into()
            }),
            "{last:?}"
        );
    }

    #[test]
    fn digits_until_pound() {
        let flow = flow();
        let t0 = Instant::now();
        let (mut s, _) = IvrSession::start(&flow, t0);
        s.handle(&flow, t0, IvrEvent::Digit('1'));
        s.handle(&flow, t0, IvrEvent::Digit('2'));
        let mut collected = None;
        for d in "4711#".chars() {
            for a in s.handle(&flow, t0, IvrEvent::Digit(d)) {
                if let IvrAction::DigitsCollected { digits, .. } = a {
                    collected = Some(digits);
                }
            }
        }
        assert_eq!(collected.as_deref(), Some("4711"));
    }

    #[test]
    fn cases_are_created_read_back_and_looked_up() {
        let text = r#"
start = "menu"
languages = ["en"]
retry_prompt = "sorry"

[[step]]
id = "menu"
kind = "menu"
keys = { "1" = "create", "2" = "number" }

[[step]]
id = "create"
kind = "case_create"
next = "bye"
on_fail = "bye"

[[step]]
id = "number"
kind = "digits"
next = "status"

[[step]]
id = "status"
kind = "case_status"
next = "bye"

[[step]]
id = "bye"
kind = "hangup"
prompts = ["goodbye"]
"#;
        let flow = Flow::parse(text, Path::new("f"), &|_| true).unwrap();
        let t0 = Instant::now();
        let (mut s, _) = IvrSession::start(&flow, t0);
        s.handle(&flow, t0, IvrEvent::PromptFinished);
        let actions = s.handle(&flow, t0, IvrEvent::Digit('1'));
        assert!(actions.contains(&IvrAction::CreateCase));
        let actions = s.handle(
            &flow,
            t0,
            IvrEvent::CaseCreated {
                number: "1000042".into(),
            },
        );
        assert_eq!(
            played(&actions),
            ["your_case_number_is+digit_1+digit_0+digit_0+digit_0+digit_0+digit_4+digit_2"]
        );
        let actions = s.handle(&flow, t0, IvrEvent::PromptFinished);
        assert_eq!(played(&actions), ["goodbye"]);

        let (mut s, _) = IvrSession::start(&flow, t0);
        s.handle(&flow, t0, IvrEvent::Digit('2'));
        s.handle(&flow, t0, IvrEvent::PromptFinished);
        let mut lookup = Vec::new();
        for d in "1000042#".chars() {
            lookup.extend(s.handle(&flow, t0, IvrEvent::Digit(d)));
        }
        assert!(
            lookup.contains(&IvrAction::LookupCase {
                number: "1000042".into()
            }),
            "{lookup:?}"
        );
        let actions = s.handle(
            &flow,
            t0,
            IvrEvent::CaseFound(Some(CaseInfo {
                open: true,
                days_open: 12,
                department: None,
            })),
        );
        assert_eq!(played(&actions), ["case_status_open+number_12+days_open"]);
        s.handle(&flow, t0, IvrEvent::PromptFinished);
        assert!(s
            .handle(&flow, t0, IvrEvent::PromptFinished)
            .contains(&IvrAction::Hangup));
    }

    #[test]
    fn bad_flows_are_refused_with_line_and_reason() {
        let dangling = FLOW.replace(
            "next = \"agent\"\n\n[[step]]\nid = \"case\"",
            "next = \"nowhere\"\n\n[[step]]\nid = \"case\"",
        );
        let e = Flow::parse(&dangling, Path::new("ivr.toml"), &|_| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ivr.toml:28:") && e.contains("no step named \"nowhere\""),
            "{e}"
        );
        let e = Flow::parse(FLOW, Path::new("ivr.toml"), &|p| p != "tone")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ivr.toml:26:") && e.contains("unknown prompt \"tone\""),
            "{e}"
        );
        let e = Flow::parse(
            &FLOW.replace("\"0\" = \"agent\"", "\"x\" = \"agent\""),
            Path::new("f"),
            &|_| true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a DTMF key"), "{e}");
        let e = Flow::parse("start = 1", Path::new("f"), &|_| true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f:1:"), "{e}");
    }
}
