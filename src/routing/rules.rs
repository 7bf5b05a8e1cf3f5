//! The routing rules: `routing-rules/queues.toml` (skills and queues) and `agents.toml` (each
//! agent's skills), validated at load into plain data the routing core reads, plus the small
//! condition language that picks a caller's queue from their attributes.
//!
//! Loading is a pure function of the text: a file that fails validation is refused whole with
//! its file, line and reason, and nothing a caller already holds changes, so a bad reload
//! leaves the running rules in place.
//!
//! Conditions are a tiny expression language rather than CEL: the attributes are four known
//! names, so every attribute name and type is checked at load (CEL would find a misspelt
//! attribute only when a call evaluates it), and evaluation is a walk over a small AST with no
//! allocation. Grammar (`||` binds looser than `&&`, `!` tighter):
//!
//! ```text
//! expr    = and ( "||" and )*
//! and     = unary ( "&&" unary )*
//! unary   = "!" unary | "(" expr ")" | "true" | "false" | test
//! test    = attr ( "==" | "!=" | "<" | "<=" | ">" | ">=" ) literal
//!         | attr "in" "[" literal ( "," literal )* "]"
//! attr    = "language" | "category" | "district"      (strings)
//!         | "priority"                                (integer; the only one that orders)
//! literal = "..." | '...' | integer
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Proficiencies run from 1 (can take the call) to 5 (expert).
pub const MIN_PROFICIENCY: u8 = 1;
pub const MAX_PROFICIENCY: u8 = 5;
/// Service-level threshold when a queue names none (the common 80/20-style target uses 20 s;
/// a 311 line is not an emergency line, so 60 s).
pub const DEFAULT_SERVICE_LEVEL_S: u64 = 60;
pub const DEFAULT_RING_TIMEOUT_S: u64 = 20;
pub const DEFAULT_WRAPUP_S: u64 = 0;
/// Deeper nesting than this in a condition is refused (it would only come from a broken file,
/// and the parser is recursive).
const MAX_EXPR_DEPTH: usize = 32;

/// A queue's id as written in the rules file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(pub String);

/// An agent's id as written in agents.toml (and as the login carries it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub String);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for QueueId {
    fn from(s: &str) -> Self {
        QueueId(s.to_string())
    }
}

impl From<&str> for AgentId {
    fn from(s: &str) -> Self {
        AgentId(s.to_string())
    }
}

/// Skill name -> proficiency (1..=5). For a queue it is a minimum; for an agent, what they have.
pub type SkillSet = BTreeMap<String, u8>;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RulesError {
    /// The 1-based line a validation error points at (None for a read error).
    pub fn line(&self) -> Option<usize> {
        match self {
            RulesError::Invalid { line, .. } => Some(*line),
            RulesError::Read { .. } => None,
        }
    }
}

/// A condition that did not compile; `column` is 1-based within the condition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct ExprError {
    pub column: usize,
    /// Byte offset in the condition text, to find the line of a multi-line condition.
    pub offset: usize,
    pub reason: String,
}

/// What the IVR knows about a caller when it asks which queue they belong in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerAttrs {
    /// "en", "es", ... (the IVR's language choice).
    pub language: String,
    /// A case category id from categories.toml ("pothole"), or empty.
    pub category: String,
    /// Council district or similar, or empty.
    pub district: String,
    pub priority: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The ready agent idle longest.
    LongestIdle,
    /// The ready agent who has taken the fewest calls since login (then longest idle).
    FewestCalls,
    /// The ready agent this queue offered a call to least recently (a rotation that survives
    /// agents coming and going).
    RoundRobin,
    /// The ready agent with the highest summed proficiency in the queue's base skills.
    MostSkilled,
    /// Every ready eligible agent rings; the first to answer takes the call.
    RingAll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenNoAgents {
    /// Wait even with nobody logged in who could ever take the call.
    Join,
    /// Leave at once (the core answers NoAgents).
    Leave,
    /// Go straight to the overflow queue.
    Overflow,
}

/// Which agents may take a call at one escalation level: an agent qualifies when they meet
/// every minimum of at least one alternative. The first alternative is the queue's
/// `requires` as narrowed by escalation; later ones come from `also_accept`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    alternatives: Vec<SkillSet>,
}

impl Requirement {
    pub fn accepts(&self, skills: &SkillSet) -> bool {
        self.alternatives.iter().any(|alt| {
            alt.iter()
                .all(|(skill, min)| skills.get(skill).is_some_and(|have| have >= min))
        })
    }

    pub fn alternatives(&self) -> &[SkillSet] {
        &self.alternatives
    }
}

/// One `[[queue.escalation]]` step: from `after_s` in the queue on, the requirement is widened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscalationStep {
    pub after_s: u64,
    /// Lowered minimums for skills the queue requires.
    pub min_proficiency: SkillSet,
    /// Skills no longer required.
    pub drop_skills: Vec<String>,
    /// Another set of skills that also qualifies (say, supervisors).
    pub also_accept: SkillSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// After this long in the queue the caller moves on; None: only `when_no_agents`.
    pub after_s: Option<u64>,
    pub to: QueueId,
}

/// A validated queue. Fields are public to read; a `Queue` only comes from `Rules::parse`.
#[derive(Clone, Debug)]
pub struct Queue {
    pub id: QueueId,
    pub name: String,
    /// Higher first, across queues: an agent who can serve two queues takes the higher one's
    /// caller first, whoever waited longer.
    pub priority: i32,
    pub requires: SkillSet,
    pub strategy: Strategy,
    pub condition: Option<Condition>,
    pub escalation: Vec<EscalationStep>,
    pub overflow: Option<Overflow>,
    pub max_wait_s: Option<u64>,
    pub exit_key: Option<char>,
    pub when_no_agents: WhenNoAgents,
    pub wrapup_s: u64,
    pub ring_timeout_s: u64,
    pub service_level_s: u64,
    /// `levels[k]`: who qualifies after k escalation steps (levels[0] = `requires`).
    levels: Vec<Requirement>,
}

impl Queue {
    /// Who qualifies at each escalation level; the last is the widest.
    pub fn levels(&self) -> &[Requirement] {
        &self.levels
    }

    /// The escalation level of a caller who has been `waited_ms` in this queue.
    pub fn level_at(&self, waited_ms: u64) -> usize {
        self.escalation
            .iter()
            .take_while(|s| s.after_s.saturating_mul(1000) <= waited_ms)
            .count()
    }

    /// When (ms after joining this queue) level `level + 1` starts, if there is one.
    pub fn next_level_ms(&self, level: usize) -> Option<u64> {
        self.escalation
            .get(level)
            .map(|s| s.after_s.saturating_mul(1000))
    }

    /// Summed proficiency in the queue's base skills (the most-skilled strategy's score).
    pub fn skill_score(&self, skills: &SkillSet) -> u32 {
        self.requires
            .keys()
            .map(|s| u32::from(skills.get(s).copied().unwrap_or(0)))
            .sum()
    }
}

/// The validated rules: declared skills and queues in file order.
#[derive(Clone, Debug)]
pub struct Rules {
    skills: Vec<String>,
    queues: Vec<Queue>,
    index: HashMap<QueueId, usize>,
}

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Rules::parse(&text, path)
    }

    /// Validates `text` (the contents of `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Rules, RulesError> {
        let err = |offset: usize, reason: String| invalid(path, text, offset, reason);
        let file: RulesFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;

        let mut skills: Vec<String> = Vec::new();
        for s in file.skills.get_ref() {
            check_name(s.get_ref(), "skill").map_err(|r| err(s.span().start, r))?;
            if skills.contains(s.get_ref()) {
                return Err(err(
                    s.span().start,
                    format!("duplicate skill {:?}", s.get_ref()),
                ));
            }
            skills.push(s.get_ref().clone());
        }
        if skills.is_empty() {
            return Err(err(file.skills.span().start, "no skills declared".into()));
        }
        if file.queues.is_empty() {
            return Err(err(0, "no [[queue]] table".into()));
        }

        let mut queues: Vec<Queue> = Vec::new();
        let mut index: HashMap<QueueId, usize> = HashMap::new();
        // Where each overflow target was written, for the cross-queue checks below.
        let mut overflow_at: Vec<Option<usize>> = Vec::new();
        for q in file.queues {
            let id = q.id.get_ref();
            check_name(id, "queue id").map_err(|r| err(q.id.span().start, r))?;
            if index.contains_key(&QueueId(id.clone())) {
                return Err(err(q.id.span().start, format!("duplicate queue id {id:?}")));
            }
            let requires = match &q.requires {
                Some(r) => skill_map(r.get_ref(), &skills, &err)?,
                None => SkillSet::new(),
            };
            let priority = match &q.priority {
                Some(p) => i32::try_from(*p.get_ref()).map_err(|_| {
                    err(
                        p.span().start,
                        format!("priority {} is out of range", p.get_ref()),
                    )
                })?,
                None => 0,
            };
            let condition = match &q.condition {
                Some(c) => Some(Condition::parse(c.get_ref()).map_err(|e| {
                    // The span starts at the opening quote; the error's offset is inside.
                    let extra_lines = c.get_ref()[..e.offset.min(c.get_ref().len())]
                        .matches('\n')
                        .count();
                    RulesError::Invalid {
                        path: path.to_path_buf(),
                        line: line_of(text, c.span().start) + extra_lines,
                        reason: format!("bad condition {:?}: {e}", c.get_ref()),
                    }
                })?),
                None => None,
            };

            // Escalation: each step must come later than the one before and only widen.
            let mut levels = vec![Requirement {
                alternatives: vec![requires.clone()],
            }];
            let mut escalation = Vec::new();
            let mut last_after: Option<u64> = None;
            for step in &q.escalation {
                let after_s = non_negative(&step.after_s, "after_s", &err)?;
                if last_after.is_some_and(|last| after_s <= last) {
                    return Err(err(
                        step.after_s.span().start,
                        format!("escalation after_s {after_s} must be later than the step before"),
                    ));
                }
                last_after = Some(after_s);
                let mut current = levels.last().cloned().expect("levels starts non-empty");
                let min_proficiency = skill_map(&step.min_proficiency, &skills, &err)?;
                for (skill, value) in &step.min_proficiency {
                    let new = min_proficiency[skill];
                    match current.alternatives[0].get(skill) {
                        Some(&old) if new <= old => {
                            current.alternatives[0].insert(skill.clone(), new);
                        }
                        Some(&old) => {
                            return Err(err(
                                value.span().start,
                                format!(
                                    "escalation must widen: {skill} {new} is above the {old} already required"
                                ),
                            ));
                        }
                        None => {
                            return Err(err(
                                value.span().start,
                                format!(
                                    "escalation must widen: {skill} is not required at this point (use also_accept for another set of skills)"
                                ),
                            ));
                        }
                    }
                }
                let mut drop_skills = Vec::new();
                for s in &step.drop_skills {
                    known_skill(s.get_ref(), &skills).map_err(|r| err(s.span().start, r))?;
                    if current.alternatives[0].remove(s.get_ref()).is_none() {
                        return Err(err(
                            s.span().start,
                            format!(
                                "drop_skills: {:?} is not required at this point",
                                s.get_ref()
                            ),
                        ));
                    }
                    drop_skills.push(s.get_ref().clone());
                }
                let also_accept = skill_map(&step.also_accept, &skills, &err)?;
                if !also_accept.is_empty() {
                    current.alternatives.push(also_accept.clone());
                }
                if min_proficiency.is_empty() && drop_skills.is_empty() && also_accept.is_empty() {
                    return Err(err(
                        step.after_s.span().start,
                        "escalation step changes nothing (give min_proficiency, drop_skills or also_accept)"
                            .into(),
                    ));
                }
                levels.push(current);
                escalation.push(EscalationStep {
                    after_s,
                    min_proficiency,
                    drop_skills,
                    also_accept,
                });
            }

            let overflow = match &q.overflow {
                Some(o) => Some(Overflow {
                    after_s: match &o.get_ref().after_s {
                        Some(a) => Some(non_negative(a, "overflow after_s", &err)?),
                        None => None,
                    },
                    to: QueueId(o.get_ref().to.clone()),
                }),
                None => None,
            };
            overflow_at.push(q.overflow.as_ref().map(|o| o.span().start));
            let when_no_agents = q
                .when_no_agents
                .as_ref()
                .map(|w| *w.get_ref())
                .unwrap_or(WhenNoAgents::Join);
            if when_no_agents == WhenNoAgents::Overflow && overflow.is_none() {
                let at = q.when_no_agents.as_ref().map_or(0, |w| w.span().start);
                return Err(err(
                    at,
                    "when_no_agents = \"overflow\" needs an overflow = { to = ... }".into(),
                ));
            }
            let exit_key = match &q.exit_key {
                Some(k) => {
                    let mut chars = k.get_ref().chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) if c.is_ascii_digit() || c == '*' || c == '#' => Some(c),
                        _ => {
                            return Err(err(
                                k.span().start,
                                format!(
                                    "exit_key {:?} must be one DTMF key (0-9, * or #)",
                                    k.get_ref()
                                ),
                            ))
                        }
                    }
                }
                None => None,
            };
            let seconds = |v: &Option<Spanned<i64>>, name: &str, default: u64| match v {
                Some(v) => non_negative(v, name, &err),
                None => Ok(default),
            };
            let ring_timeout_s =
                seconds(&q.ring_timeout_s, "ring_timeout_s", DEFAULT_RING_TIMEOUT_S)?;
            if ring_timeout_s == 0 {
                let at = q.ring_timeout_s.as_ref().map_or(0, |v| v.span().start);
                return Err(err(at, "ring_timeout_s must be at least 1".into()));
            }
            let max_wait_s = match &q.max_wait_s {
                Some(v) => Some(non_negative(v, "max_wait_s", &err)?),
                None => None,
            };
            let queue = Queue {
                id: QueueId(id.clone()),
                name: q
                    .name
                    .as_ref()
                    .map(|n| n.get_ref().clone())
                    .unwrap_or_else(|| id.clone()),
                priority,
                requires,
                strategy: q
                    .strategy
                    .as_ref()
                    .map(|s| *s.get_ref())
                    .unwrap_or(Strategy::LongestIdle),
                condition,
                escalation,
                overflow,
                max_wait_s,
                exit_key,
                when_no_agents,
                wrapup_s: seconds(&q.wrapup_s, "wrapup_s", DEFAULT_WRAPUP_S)?,
                ring_timeout_s,
                service_level_s: seconds(
                    &q.service_level_s,
                    "service_level_s",
                    DEFAULT_SERVICE_LEVEL_S,
                )?,
                levels,
            };
            index.insert(queue.id.clone(), queues.len());
            queues.push(queue);
        }

        // Overflow targets must exist, and following them must never come back round.
        for (i, q) in queues.iter().enumerate() {
            let Some(o) = &q.overflow else { continue };
            let at = overflow_at[i].unwrap_or(0);
            if !index.contains_key(&o.to) {
                return Err(err(at, format!("overflow to unknown queue {:?}", o.to.0)));
            }
            if o.to == q.id {
                return Err(err(at, format!("queue {:?} overflows to itself", q.id.0)));
            }
            let mut path = vec![q.id.0.clone()];
            let mut cur = index[&o.to];
            loop {
                path.push(queues[cur].id.0.clone());
                if cur == i {
                    return Err(err(at, format!("overflow cycle: {}", path.join(" -> "))));
                }
                match &queues[cur].overflow {
                    // The chain has at most queues.len() links before it must repeat.
                    Some(next) if path.len() <= queues.len() + 1 => cur = index[&next.to],
                    _ => break,
                }
            }
        }

        Ok(Rules {
            skills,
            queues,
            index,
        })
    }

    pub fn skills(&self) -> &[String] {
        &self.skills
    }

    /// Queues in file order.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    pub fn queue(&self, id: &QueueId) -> Option<&Queue> {
        self.index.get(id).map(|&i| &self.queues[i])
    }

    /// Position of a queue in file order.
    pub fn queue_index(&self, id: &QueueId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The first queue, in file order, whose condition holds for the caller. Queues without a
    /// condition are never chosen here (only by naming them, say from a transfer).
    pub fn select_queue(&self, attrs: &CallerAttrs) -> Option<QueueId> {
        self.queues
            .iter()
            .find(|q| q.condition.as_ref().is_some_and(|c| c.eval(attrs)))
            .map(|q| q.id.clone())
    }
}

/// One agent from agents.toml; routing only reads `skills` (sign-in is elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentProfile {
    pub id: AgentId,
    pub name: String,
    pub sip_user: Option<String>,
    pub skills: SkillSet,
    pub languages: Vec<String>,
    /// Digest credentials as stored hashes (HA1 = H(user:realm:password)), never the password.
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

/// Loads agents.toml, checking every skill against the declared skills of `rules`.
pub fn load_agents(path: &Path, rules: &Rules) -> Result<Vec<AgentProfile>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_agents(&text, path, rules)
}

pub fn parse_agents(
    text: &str,
    path: &Path,
    rules: &Rules,
) -> Result<Vec<AgentProfile>, RulesError> {
    let err = |offset: usize, reason: String| invalid(path, text, offset, reason);
    let file: AgentsFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let mut out: Vec<AgentProfile> = Vec::new();
    for a in file.agents {
        let id = a.id.get_ref();
        if id.is_empty() || id.chars().any(char::is_whitespace) {
            return Err(err(
                a.id.span().start,
                format!("agent id {id:?} must be non-empty with no spaces"),
            ));
        }
        if out.iter().any(|p| p.id.0 == *id) {
            return Err(err(a.id.span().start, format!("duplicate agent id {id:?}")));
        }
        let skills = skill_map(a.skills.get_ref(), &rules.skills, &err)?;
        let hash = |field: &Option<Spanned<String>>, len: usize| match field {
            Some(h)
                if h.get_ref().len() != len
                    || !h.get_ref().bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Err(err(
                    h.span().start,
                    format!("an HA1 here is {len} hex digits (civicline agent-ha1 prints them)"),
                ))
            }
            Some(h) => Ok(Some(h.get_ref().to_ascii_lowercase())),
            None => Ok(None),
        };
        let ha1_md5 = hash(&a.ha1_md5, 32)?;
        let ha1_sha256 = hash(&a.ha1_sha256, 64)?;
        out.push(AgentProfile {
            id: AgentId(id.clone()),
            name: a.name.unwrap_or_else(|| id.clone()),
            sip_user: a.sip_user,
            skills,
            languages: a.languages,
            ha1_md5,
            ha1_sha256,
        });
    }
    Ok(out)
}

// ---- file shapes -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    skills: Spanned<Vec<Spanned<String>>>,
    #[serde(default, rename = "queue")]
    queues: Vec<QueueFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueFile {
    id: Spanned<String>,
    name: Option<Spanned<String>>,
    priority: Option<Spanned<i64>>,
    requires: Option<Spanned<BTreeMap<String, Spanned<i64>>>>,
    strategy: Option<Spanned<Strategy>>,
    condition: Option<Spanned<String>>,
    #[serde(default)]
    escalation: Vec<StepFile>,
    overflow: Option<Spanned<OverflowFile>>,
    max_wait_s: Option<Spanned<i64>>,
    exit_key: Option<Spanned<String>>,
    when_no_agents: Option<Spanned<WhenNoAgents>>,
    wrapup_s: Option<Spanned<i64>>,
    ring_timeout_s: Option<Spanned<i64>>,
    service_level_s: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    after_s: Spanned<i64>,
    #[serde(default)]
    min_proficiency: BTreeMap<String, Spanned<i64>>,
    #[serde(default)]
    drop_skills: Vec<Spanned<String>>,
    #[serde(default)]
    also_accept: BTreeMap<String, Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverflowFile {
    after_s: Option<Spanned<i64>>,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    #[serde(default, rename = "agent")]
    agents: Vec<AgentFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    id: Spanned<String>,
    name: Option<String>,
    sip_user: Option<String>,
    skills: Spanned<BTreeMap<String, Spanned<i64>>>,
    #[serde(default)]
    languages: Vec<String>,
    ha1_md5: Option<Spanned<String>>,
    ha1_sha256: Option<Spanned<String>>,
}

// ---- validation helpers ------------------------------------------------------------------

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn invalid(path: &Path, text: &str, offset: usize, reason: String) -> RulesError {
    RulesError::Invalid {
        path: path.to_path_buf(),
        line: line_of(text, offset),
        reason,
    }
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> RulesError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    invalid(path, text, offset, e.message().trim().to_string())
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{what} {name:?} must be lowercase letters, digits and `_`"
        ));
    }
    Ok(())
}

fn known_skill(name: &str, skills: &[String]) -> Result<(), String> {
    if skills.iter().any(|s| s == name) {
        Ok(())
    } else {
        Err(format!(
            "unknown skill {name:?} (declared: {})",
            skills.join(", ")
        ))
    }
}

fn skill_map(
    raw: &BTreeMap<String, Spanned<i64>>,
    skills: &[String],
    err: &dyn Fn(usize, String) -> RulesError,
) -> Result<SkillSet, RulesError> {
    let mut out = SkillSet::new();
    for (name, value) in raw {
        // A map key has no span of its own; its value sits on the same line.
        known_skill(name, skills).map_err(|r| err(value.span().start, r))?;
        let v = *value.get_ref();
        if !(i64::from(MIN_PROFICIENCY)..=i64::from(MAX_PROFICIENCY)).contains(&v) {
            return Err(err(
                value.span().start,
                format!(
                    "proficiency {v} for {name:?} is outside {MIN_PROFICIENCY}..={MAX_PROFICIENCY}"
                ),
            ));
        }
        out.insert(name.clone(), v as u8);
    }
    Ok(out)
}

fn non_negative(
    v: &Spanned<i64>,
    name: &str,
    err: &dyn Fn(usize, String) -> RulesError,
) -> Result<u64, RulesError> {
    u64::try_from(*v.get_ref())
        .map_err(|_| err(v.span().start, format!("{name} must not be negative")))
}

// ---- conditions --------------------------------------------------------------------------

/// A compiled caller condition; `source` is the text as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    Language,
    Category,
    District,
    Priority,
}

impl Attr {
    fn parse(name: &str) -> Option<Attr> {
        match name {
            "language" => Some(Attr::Language),
            "category" => Some(Attr::Category),
            "district" => Some(Attr::District),
            "priority" => Some(Attr::Priority),
            _ => None,
        }
    }

    fn is_int(self) -> bool {
        self == Attr::Priority
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Lit {
    Str(String),
    Int(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Const(bool),
    Cmp { attr: Attr, op: CmpOp, lit: Lit },
    In { attr: Attr, list: Vec<Lit> },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Condition {
    pub fn parse(source: &str) -> Result<Condition, ExprError> {
        let tokens = tokenize(source)?;
        let mut p = Parser {
            source,
            tokens,
            pos: 0,
            depth: 0,
        };
        let expr = p.or()?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(p.error_at(t.at, format!("unexpected {}", t.tok.describe())));
        }
        Ok(Condition {
            source: source.to_string(),
            expr,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn eval(&self, attrs: &CallerAttrs) -> bool {
        eval(&self.expr, attrs)
    }
}

fn eval(e: &Expr, a: &CallerAttrs) -> bool {
    match e {
        Expr::Const(b) => *b,
        Expr::Cmp { attr, op, lit } => compare(*attr, *op, lit, a),
        Expr::In { attr, list } => list.iter().any(|lit| compare(*attr, CmpOp::Eq, lit, a)),
        Expr::Not(inner) => !eval(inner, a),
        Expr::And(l, r) => eval(l, a) && eval(r, a),
        Expr::Or(l, r) => eval(l, a) || eval(r, a),
    }
}

fn compare(attr: Attr, op: CmpOp, lit: &Lit, a: &CallerAttrs) -> bool {
    let text = match attr {
        Attr::Language => &a.language,
        Attr::Category => &a.category,
        Attr::District => &a.district,
        Attr::Priority => {
            // Types were checked at compile time; a string literal never reaches here.
            let Lit::Int(v) = lit else { return false };
            return match op {
                CmpOp::Eq => a.priority == *v,
                CmpOp::Ne => a.priority != *v,
                CmpOp::Lt => a.priority < *v,
                CmpOp::Le => a.priority <= *v,
                CmpOp::Gt => a.priority > *v,
                CmpOp::Ge => a.priority >= *v,
            };
        }
    };
    let Lit::Str(v) = lit else { return false };
    match op {
        CmpOp::Eq => text == v,
        CmpOp::Ne => text != v,
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Sym(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Sym(s) => format!("`{s}`"),
        }
    }
}

struct Token {
    tok: Tok,
    at: usize,
}

fn column(source: &str, at: usize) -> usize {
    let line_start = source[..at].rfind('\n').map_or(0, |i| i + 1);
    source[line_start..at].chars().count() + 1
}

fn tokenize(source: &str) -> Result<Vec<Token>, ExprError> {
    let err = |at: usize, reason: String| ExprError {
        column: column(source, at),
        offset: at,
        reason,
    };
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(source[start..i].to_string()),
                at: start,
            });
        } else if c.is_ascii_digit()
            || (c == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let v: i64 = source[start..i]
                .parse()
                .map_err(|_| err(start, format!("number {} is too large", &source[start..i])))?;
            out.push(Token {
                tok: Tok::Int(v),
                at: start,
            });
        } else if c == b'"' || c == b'\'' {
            let close = source[i + 1..]
                .find(c as char)
                .ok_or_else(|| err(start, "unterminated string".into()))?;
            out.push(Token {
                tok: Tok::Str(source[i + 1..i + 1 + close].to_string()),
                at: start,
            });
            i += close + 2;
        } else {
            let two = source.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match two {
                "==" => "==",
                "!=" => "!=",
                "<=" => "<=",
                ">=" => ">=",
                "&&" => "&&",
                "||" => "||",
                _ => match c {
                    b'<' => "<",
                    b'>' => ">",
                    b'!' => "!",
                    b'(' => "(",
                    b')' => ")",
                    b'[' => "[",
                    b']' => "]",
                    b',' => ",",
                    _ => {
                        let ch = source[i..].chars().next().unwrap_or('?');
                        return Err(err(start, format!("unexpected character {ch:?}")));
                    }
                },
            };
            i += sym.len();
            out.push(Token {
                tok: Tok::Sym(sym),
                at: start,
            });
        }
    }
    Ok(out)
}

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error_at(&self, at: usize, reason: String) -> ExprError {
        ExprError {
            column: column(self.source, at),
            offset: at,
            reason,
        }
    }

    fn end_error(&self, expected: &str) -> ExprError {
        self.error_at(
            self.source.len(),
            format!("expected {expected}, found the end"),
        )
    }

    fn peek_sym(&self, sym: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token { tok: Tok::Sym(s), .. }) if *s == sym)
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), ExprError> {
        match self.tokens.get(self.pos) {
            Some(Token {
                tok: Tok::Sym(s), ..
            }) if *s == sym => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(self.error_at(
                t.at,
                format!("expected `{sym}`, found {}", t.tok.describe()),
            )),
            None => Err(self.end_error(&format!("`{sym}`"))),
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.peek_sym("||") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.peek_sym("&&") {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            let at = self
                .tokens
                .get(self.pos)
                .map_or(self.source.len(), |t| t.at);
            return Err(self.error_at(at, "nested too deeply".into()));
        }
        let result = self.unary_inner();
        self.depth -= 1;
        result
    }

    fn unary_inner(&mut self) -> Result<Expr, ExprError> {
        let Some(t) = self.tokens.get(self.pos) else {
            return Err(self.end_error("a test"));
        };
        let at = t.at;
        match &t.tok {
            Tok::Sym("!") => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Tok::Sym("(") => {
                self.pos += 1;
                let inner = self.or()?;
                self.expect_sym(")")?;
                Ok(inner)
            }
            Tok::Ident(name) if name == "true" => {
                self.pos += 1;
                Ok(Expr::Const(true))
            }
            Tok::Ident(name) if name == "false" => {
                self.pos += 1;
                Ok(Expr::Const(false))
            }
            Tok::Ident(name) => {
                let attr = Attr::parse(name).ok_or_else(|| {
                    self.error_at(
                        at,
                        format!(
                            "unknown attribute `{name}` (known: language, category, district, priority)"
                        ),
                    )
                })?;
                self.pos += 1;
                self.test(attr, at)
            }
            other => Err(self.error_at(at, format!("expected a test, found {}", other.describe()))),
        }
    }

    fn literal(&mut self, attr: Attr) -> Result<Lit, ExprError> {
        let Some(t) = self.tokens.get(self.pos) else {
            return Err(self.end_error("a value"));
        };
        let lit = match (&t.tok, attr.is_int()) {
            (Tok::Str(s), false) => Lit::Str(s.clone()),
            (Tok::Int(i), true) => Lit::Int(*i),
            (Tok::Str(_), true) => {
                return Err(self.error_at(
                    t.at,
                    "priority is a number; compare it with a number".into(),
                ))
            }
            (Tok::Int(_), false) => {
                return Err(self.error_at(
                    t.at,
                    "this attribute is text; compare it with a quoted string".into(),
                ))
            }
            (other, _) => {
                return Err(self.error_at(
                    t.at,
                    format!("expected a value, found {}", other.describe()),
                ))
            }
        };
        self.pos += 1;
        Ok(lit)
    }

    fn test(&mut self, attr: Attr, attr_at: usize) -> Result<Expr, ExprError> {
        let Some(t) = self.tokens.get(self.pos) else {
            return Err(self.end_error("a comparison after the attribute"));
        };
        let at = t.at;
        let op = match &t.tok {
            Tok::Ident(k) if k == "in" => {
                self.pos += 1;
                self.expect_sym("[")?;
                let mut list = vec![self.literal(attr)?];
                while self.peek_sym(",") {
                    self.pos += 1;
                    list.push(self.literal(attr)?);
                }
                self.expect_sym("]")?;
                return Ok(Expr::In { attr, list });
            }
            Tok::Sym("==") => CmpOp::Eq,
            Tok::Sym("!=") => CmpOp::Ne,
            Tok::Sym("<") => CmpOp::Lt,
            Tok::Sym("<=") => CmpOp::Le,
            Tok::Sym(">") => CmpOp::Gt,
            Tok::Sym(">=") => CmpOp::Ge,
            other => {
                return Err(self.error_at(
                    at,
                    format!("expected a comparison or `in`, found {}", other.describe()),
                ))
            }
        };
        if !attr.is_int() && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return Err(self.error_at(
                attr_at,
                "text attributes compare only with ==, != or in".into(),
            ));
        }
        self.pos += 1;
        let lit = self.literal(attr)?;
        Ok(Expr::Cmp { attr, op, lit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/routing-rules/queues.toml"
    ));

    fn parse(text: &str) -> Result<Rules, RulesError> {
        Rules::parse(text, Path::new("queues.toml"))
    }

    /// Asserts that `text` is refused at `line` with a reason containing `needle`.
    fn refused(text: &str, line: usize, needle: &str) {
        let e = parse(text).expect_err("must be refused");
        let shown = e.to_string();
        assert_eq!(e.line(), Some(line), "wrong line in {shown}");
        assert!(
            shown.starts_with(&format!("queues.toml:{line}: ")),
            "{shown}"
        );
        assert!(shown.contains(needle), "{shown} lacks {needle:?}");
    }

    const HEAD: &str = "skills = [\"english\", \"spanish\", \"streets\"]\n";

    fn attrs(language: &str, category: &str, priority: i64) -> CallerAttrs {
        CallerAttrs {
            language: language.into(),
            category: category.into(),
            district: String::new(),
            priority,
        }
    }

    #[test]
    fn sample_file_loads_and_selects_queues() {
        let rules = parse(SAMPLE).expect("the sample rules load");
        assert!(rules.queues().len() >= 5);
        let q = |l, c, p| rules.select_queue(&attrs(l, c, p)).map(|q| q.0);
        assert_eq!(q("en", "pothole", 0).as_deref(), Some("streets"));
        assert_eq!(q("es", "pothole", 0).as_deref(), Some("general_es"));
        assert_eq!(q("en", "water_leak", 0).as_deref(), Some("water"));
        assert_eq!(q("en", "noise", 0).as_deref(), Some("general_en"));
        assert_eq!(q("en", "pothole", 9).as_deref(), Some("supervisor"));
        let streets = rules.queue(&"streets".into()).unwrap();
        assert_eq!(streets.exit_key, Some('0'));
        assert!(streets.levels().len() >= 2);
    }

    #[test]
    fn first_match_wins_in_file_order() {
        let text = format!(
            "{HEAD}[[queue]]\nid = \"a\"\ncondition = 'language == \"en\"'\n\
             [[queue]]\nid = \"b\"\ncondition = 'true'\n[[queue]]\nid = \"c\"\n"
        );
        let rules = parse(&text).unwrap();
        assert_eq!(rules.select_queue(&attrs("en", "", 0)), Some("a".into()));
        assert_eq!(rules.select_queue(&attrs("es", "", 0)), Some("b".into()));
        // c has no condition: never selected, though it exists.
        assert!(rules.queue(&"c".into()).is_some());
    }

    #[test]
    fn escalation_levels_widen() {
        let text = format!(
            "{HEAD}[[queue]]\nid = \"s\"\nrequires = {{ streets = 4, english = 3 }}\n\
             [[queue.escalation]]\nafter_s = 60\nmin_proficiency = {{ streets = 2 }}\n\
             [[queue.escalation]]\nafter_s = 120\ndrop_skills = [\"streets\"]\nalso_accept = {{ spanish = 5 }}\n"
        );
        let rules = parse(&text).unwrap();
        let q = rules.queue(&"s".into()).unwrap();
        let agent: SkillSet = [("streets".to_string(), 2), ("english".to_string(), 3)].into();
        let spanish: SkillSet = [("spanish".to_string(), 5)].into();
        assert_eq!(q.level_at(59_999), 0);
        assert_eq!(q.level_at(60_000), 1);
        assert_eq!(q.level_at(500_000), 2);
        assert_eq!(q.next_level_ms(0), Some(60_000));
        assert_eq!(q.next_level_ms(2), None);
        assert!(!q.levels()[0].accepts(&agent));
        assert!(q.levels()[1].accepts(&agent));
        assert!(!q.levels()[1].accepts(&spanish));
        assert!(q.levels()[2].accepts(&spanish));
        assert!(q.levels()[2].accepts(&[("english".to_string(), 3)].into()));
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nstratgy = \"longest-idle\"\n"),
            4,
            "unknown field `stratgy`",
        );
    }

    #[test]
    fn unknown_skill_is_refused() {
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nrequires = {{ plumbing = 2 }}\n"),
            4,
            "unknown skill \"plumbing\"",
        );
        refused(
            &format!(
                "{HEAD}[[queue]]\nid = \"a\"\nrequires = {{ english = 2 }}\n\n\
                 [[queue.escalation]]\nafter_s = 10\ndrop_skills = [\"water\"]\n"
            ),
            8,
            "unknown skill \"water\"",
        );
    }

    #[test]
    fn proficiency_out_of_range_is_refused() {
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nrequires = {{ english = 6 }}\n"),
            4,
            "outside 1..=5",
        );
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\n\nrequires = {{ english = 0 }}\n"),
            5,
            "proficiency 0",
        );
    }

    #[test]
    fn overflow_to_unknown_queue_is_refused() {
        refused(
            &format!(
                "{HEAD}[[queue]]\nid = \"a\"\noverflow = {{ after_s = 60, to = \"nowhere\" }}\n"
            ),
            4,
            "overflow to unknown queue \"nowhere\"",
        );
    }

    #[test]
    fn overflow_cycle_is_refused() {
        refused(
            &format!(
                "{HEAD}[[queue]]\nid = \"a\"\noverflow = {{ after_s = 60, to = \"b\" }}\n\
                 [[queue]]\nid = \"b\"\noverflow = {{ after_s = 60, to = \"c\" }}\n\
                 [[queue]]\nid = \"c\"\noverflow = {{ after_s = 60, to = \"a\" }}\n"
            ),
            4,
            "overflow cycle: a -> b -> c -> a",
        );
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\noverflow = {{ to = \"a\" }}\n"),
            4,
            "overflows to itself",
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        let cases = [
            ("langauge == \"en\"", "unknown attribute `langauge`"),
            ("language == 3", "compare it with a quoted string"),
            ("priority == \"high\"", "priority is a number"),
            ("language < \"en\"", "compare only with ==, != or in"),
            ("(language == \"en\"", "expected `)`"),
            ("language == \"en\" &&", "found the end"),
            ("language in [\"en\" \"es\"]", "expected `]`"),
            ("language == \"en\" extra", "unexpected `extra`"),
            ("language == \"en", "unterminated string"),
            ("language = \"en\"", "unexpected character '='"),
        ];
        for (expr, needle) in cases {
            refused(
                &format!("{HEAD}[[queue]]\nid = \"a\"\n\ncondition = '{expr}'\n"),
                5,
                needle,
            );
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\n[[queue]]\nid = \"a\"\n"),
            5,
            "duplicate queue id \"a\"",
        );
        refused(
            "skills = [\"english\",\n  \"english\"]\n[[queue]]\nid = \"a\"\n",
            2,
            "duplicate skill",
        );
    }

    #[test]
    fn other_checks() {
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nwhen_no_agents = \"overflow\"\n"),
            4,
            "needs an overflow",
        );
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nstrategy = \"random\"\n"),
            4,
            "unknown variant `random`",
        );
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nexit_key = \"12\"\n"),
            4,
            "one DTMF key",
        );
        refused(
            &format!(
                "{HEAD}[[queue]]\nid = \"a\"\nrequires = {{ english = 2 }}\n\
                 [[queue.escalation]]\nafter_s = 10\nmin_proficiency = {{ english = 3 }}\n"
            ),
            7,
            "escalation must widen",
        );
        refused(
            &format!(
                "{HEAD}[[queue]]\nid = \"a\"\nrequires = {{ english = 2 }}\n\
                 [[queue.escalation]]\nafter_s = 10\nmin_proficiency = {{ english = 1 }}\n\
                 [[queue.escalation]]\nafter_s = 10\ndrop_skills = [\"english\"]\n"
            ),
            9,
            "must be later",
        );
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nring_timeout_s = 0\n"),
            4,
            "at least 1",
        );
        refused(&format!("{HEAD}[[queue]]\nid = \"A b\"\n"), 3, "lowercase");
        refused(
            &format!("{HEAD}[[queue]]\nid = \"a\"\nmax_wait_s = -1\n"),
            4,
            "negative",
        );
    }

    #[test]
    fn conditions_evaluate() {
        let c = Condition::parse(
            "(language == 'es' || district in [\"d1\", \"d2\"]) && !(priority < 3) && category != \"noise\"",
        )
        .unwrap();
        let mut a = attrs("es", "pothole", 3);
        assert!(c.eval(&a));
        a.priority = 2;
        assert!(!c.eval(&a));
        a.priority = 5;
        a.language = "en".into();
        assert!(!c.eval(&a));
        a.district = "d2".into();
        assert!(c.eval(&a));
        a.category = "noise".into();
        assert!(!c.eval(&a));
        assert!(Condition::parse("priority in [1, -2]")
            .unwrap()
            .eval(&attrs("", "", -2)));
        assert!(!Condition::parse("false || !true").unwrap().eval(&a));
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(Condition::parse(&deep)
            .unwrap_err()
            .reason
            .contains("nested"));
        let e = Condition::parse("language == 'en' && bogus == 'x'").unwrap_err();
        assert_eq!(e.column, 21);
    }

    #[test]
    fn agents_file_is_validated() {
        let rules = parse(SAMPLE).unwrap();
        let ok = parse_agents(
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/routing-rules/agents.toml"
            )),
            Path::new("agents.toml"),
            &rules,
        )
        .expect("sample agents load");
        assert!(ok.len() >= 4);
        assert!(ok.iter().all(|a| !a.skills.is_empty()));
        let bad = "[[agent]]\nid = \"x\"\nskills = { english = 3 }\n[[agent]]\nid = \"y\"\nskills = { plumbing = 1 }\n";
        let e = parse_agents(bad, Path::new("agents.toml"), &rules).unwrap_err();
        assert_eq!(e.line(), Some(6), "{e}");
        assert!(e.to_string().contains("unknown skill"), "{e}");
        let dup = "[[agent]]\nid = \"x\"\nskills = { english = 3 }\n[[agent]]\nid = \"x\"\nskills = { english = 9 }\n";
        let e = parse_agents(dup, Path::new("agents.toml"), &rules).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("agents.toml:5: duplicate agent id"),
            "{e}"
        );
        let extra = "[[agent]]\nid = \"x\"\nskills = { english = 3 }\npassword = \"x\"\n";
        let e = parse_agents(extra, Path::new("agents.toml"), &rules).unwrap_err();
        assert_eq!(e.line(), Some(4), "{e}");
    }

    #[test]
    fn read_error_names_the_file() {
        let e = Rules::load(Path::new("/nonexistent/queues.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/queues.toml: cannot read"),
            "{e}"
        );
        assert_eq!(e.line(), None);
    }
}
