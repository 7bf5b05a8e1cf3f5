//! The tokio runtime around the engine: sockets, the RTP port pool, the clock, the event log and
//! the HTTP endpoint. It moves bytes and time into the engine and carries out what comes back;
//! it decides nothing. `start` binds everything and returns a [`Server`]; `run` adds the signal
//! handling the binary needs. This is the only module that reads the clock.
#![allow(clippy::disallowed_methods)] // the runtime is where the clock is read

pub mod api;
pub mod event_log;
pub mod http;
pub mod media;
pub mod prompts;
pub mod report;
pub mod rtp;
pub mod speech;
pub mod speech_corpus;
pub mod store;
pub mod transcriber;
pub mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::engine::{Engine, EngineStats, Input, Output, PortPool};
use crate::events::CallEvent;
use event_log::{EventLog, EventLogConfig};
use store::{Store, StoredEvent};

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Maps engine instants to wall-clock time: one anchor taken at start.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    start: std::time::Instant,
    start_unix_ms: i64,
}

impl WallClock {
    pub fn now() -> WallClock {
        WallClock {
            start: tokio::time::Instant::now().into_std(),
            start_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    pub fn unix_ms(&self, at: std::time::Instant) -> i64 {
        if at >= self.start {
            self.start_unix_ms + (at - self.start).as_millis() as i64
        } else {
            self.start_unix_ms - (self.start - at).as_millis() as i64
        }
    }
}

pub fn stored_event(clock: &WallClock, event: &CallEvent) -> StoredEvent {
    StoredEvent {
        occurred_at_ms: clock.unix_ms(event.at),
        call_ref: event.call_ref.clone(),
        sip_call_id: event.sip_call_id.clone(),
        kind: event.kind.as_str().to_string(),
        status_code: event.status_code.map(i32::from),
        reason: event.reason.clone(),
        duration_ms: event.duration.map(|d| d.as_millis() as i64),
        caller: event.caller.clone(),
        detail: event.detail.clone(),
    }
}

/// What `/healthz` shows, refreshed by the engine task.
#[derive(Clone)]
pub struct HealthState {
    pub engine: Arc<Mutex<EngineStats>>,
    pub free_rtp_ports: Arc<std::sync::atomic::AtomicUsize>,
    pub log: EventLog,
    pub transport: Arc<transport::TransportStats>,
    pub media: Arc<media::MediaStats>,
    pub store_backend: &'static str,
    pub speech: speech::SpeechHealth,
    /// The engine's inbound channel, for commands from the HTTP API.
    pub engine_inbound: mpsc::Sender<Input>,
    /// Agent ids known from agents.toml (the API answers 404 for others).
    pub agent_ids: Arc<Vec<String>>,
    /// Callback states the store refused after every retry (such a callback would not survive
    /// a restart): shown on /healthz, which then says degraded.
    pub callbacks_unsaved: Arc<std::sync::atomic::AtomicU64>,
}

/// How often the engine's live view is taken (and published when it changed).
const LIVE_EVERY: Duration = Duration::from_millis(250);

/// A running server. Addresses are the real bound ones (port 0 in the config picks free ports).
pub struct Server {
    pub sip_udp: Vec<SocketAddr>,
    pub sip_tcp: Vec<SocketAddr>,
    pub http: SocketAddr,
    pub rtp_ports: Vec<u16>,
    pub store: Store,
    log: EventLog,
    shutdown: watch::Sender<bool>,
    engine_task: JoinHandle<anyhow::Result<()>>,
    /// Where reloads go (the engine's inbound channel) and what they read.
    reload: Option<RoutingFiles>,
}

/// The routing files a reload reads, and the engine it feeds.
struct RoutingFiles {
    engine: mpsc::Sender<Input>,
    queues: std::path::PathBuf,
    agents: std::path::PathBuf,
}

impl Server {
    /// Asks the server to stop: calls in progress get BYE, then the log is flushed.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Reloads queues.toml and agents.toml (SIGHUP does this too). Both are checked first, the
    /// agents against the new rules; if either does not load, the refusal names file, line and
    /// reason and everything already running stays in force. Good files replace the rules
    /// without dropping a call, then the agents (`Input::ReloadAgents`).
    pub async fn reload_routing(&self) -> anyhow::Result<()> {
        let Some(files) = &self.reload else {
            anyhow::bail!("no queues configured");
        };
        let rules = crate::routing::rules::Rules::load(&files.queues)?;
        let agents = crate::routing::rules::load_agents(&files.agents, &rules)?;
        files
            .engine
            .send(Input::ReloadRouting(Box::new(rules)))
            .await
            .context("the engine has stopped")?;
        files
            .engine
            .send(Input::ReloadAgents(agents))
            .await
            .context("the engine has stopped")?;
        tracing::info!(queues = %files.queues.display(), agents = %files.agents.display(), "queue rules and agents reloaded");
        Ok(())
    }

    /// Waits until every event recorded so far is committed to the store.
    pub async fn flush_events(&self) {
        self.log.flush().await;
    }

    /// Event log counters (submitted, committed, failures).
    pub fn log_health(&self) -> event_log::LogHealth {
        self.log.health()
    }

    /// Waits for the server to finish after `shutdown`.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.engine_task.await.context("engine task panicked")?
    }
}

/// Binds every socket, opens the store, and starts the engine task.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let url = config.database_url();
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("opening the event store at {}", redact_url(&url)))?;
    let listeners = transport::Listeners::bind(&config.sip.udp, &config.sip.tcp).await?;
    let sip_udp = listeners
        .udp
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let sip_tcp = listeners
        .tcp
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let (flow, prompts) = load_ivr(&config)?;
    let rtp = rtp::RtpPool::bind(&config.media)?;
    let rtp_ports = rtp.ports();
    tracing::info!(ports = rtp_ports.len(), "RTP ports bound in advance");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Sockets keep running after shutdown is asked for, so BYE answers still arrive during the
    // grace period; they stop once the engine has finished.
    let (io_stop_tx, io_stop_rx) = watch::channel(false);
    let (inbound_tx, inbound_rx) = mpsc::channel::<Input>(16_384);
    let senders = transport::start(
        listeners,
        transport::TcpLimits {
            max_connections: config.sip.max_tcp_connections,
            message_timeout: Duration::from_millis(config.sip.tcp_message_timeout_ms),
            idle_timeout: Duration::from_secs(config.sip.tcp_idle_timeout_s),
        },
        inbound_tx.clone(),
        io_stop_rx.clone(),
    );
    let media = media::spawn(
        rtp.into_sockets(),
        Arc::new(media::PromptFrames::new(&prompts)),
        inbound_tx.clone(),
        media::MediaSettings {
            rtp_timeout: Duration::from_secs(config.media.rtp_timeout_s),
            recordings_dir: config.store.data_dir.join("recordings"),
            no_speech_timeout: Duration::from_secs(config.media.no_speech_timeout_s),
        },
        io_stop_rx,
    )?;

    let (log, log_task) = EventLog::spawn(
        store.clone(),
        EventLogConfig {
            max_batch: config.store.max_batch.max(1),
            fallback_dir: config.store.data_dir.clone(),
            ..EventLogConfig::default()
        },
    );
    let speech = speech::SpeechService::start(
        &speech::SpeechSettings {
            model: config.speech.model.clone(),
            workers: config.speech.workers.max(1),
            queue: config.speech.queue.max(1),
            categories: config.speech.categories.clone(),
            streets: config.speech.streets.clone(),
            min_confidence: config.speech.min_confidence,
            decode: transcriber::DecodeSettings {
                beam_size: config.speech.beam_size,
                audio_ctx_to_clip: config.speech.audio_ctx_to_clip,
                threads: config.speech.threads,
                background_priority: config.speech.background_priority,
                ..Default::default()
            },
        },
        store.clone(),
        inbound_tx.clone(),
        None,
    )?;
    let instance = format!("{:08x}", rand::random::<u32>());
    let mut engine_config = config.engine_config(instance);
    engine_config.flow = flow;
    engine_config.routing = load_routing(&config)?;
    engine_config.callbacks = load_callbacks(&config, &sip_udp)?;
    // Callbacks the store holds go back in line once the engine runs (below).
    let pending_callbacks = match (&engine_config.callbacks, &engine_config.routing) {
        (Some(_), Some(_)) => store
            .callbacks_in(&["waiting", "dialing"])
            .await
            .context("reading pending callbacks")?,
        _ => Vec::new(),
    };
    let agent_ids = Arc::new(
        engine_config
            .routing
            .iter()
            .flat_map(|r| r.agents.iter().map(|a| a.id.0.clone()))
            .collect::<Vec<_>>(),
    );
    let engine = Engine::new(
        engine_config,
        PortPool::new(rtp_ports.iter().copied()),
        rand::random(),
    );
    let health = HealthState {
        engine: Arc::new(Mutex::new(engine.stats())),
        free_rtp_ports: Arc::new(std::sync::atomic::AtomicUsize::new(engine.free_rtp_ports())),
        log: log.clone(),
        transport: senders.stats.clone(),
        media: media.stats.clone(),
        store_backend: store.backend(),
        speech: speech.health(),
        engine_inbound: inbound_tx.clone(),
        agent_ids,
        callbacks_unsaved: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let auth = api::auth::Auth::new(&config.api.tokens)?;
    if auth.is_empty() {
        tracing::warn!(
            "no API tokens configured: /api/v1 answers 401 (civicline api-token makes one)"
        );
    }
    let open311 = api::open311::Open311::load(&config.speech.categories, &config.open311.api_keys)?;
    let metrics = Arc::new(api::prometheus::Metrics::default());
    let first_view = engine.live_snapshot(tokio::time::Instant::now().into_std());
    let first = api::live::first(&first_view, unix_ms_now());
    let (live_tx, live_rx) = watch::channel(Arc::new(first));
    let (engine_live_tx, engine_live_rx) = watch::channel(Arc::new(first_view));
    tokio::spawn(api::live::publish(engine_live_rx, live_tx, store.clone()));
    let api_state = api::ApiState {
        health: health.clone(),
        store: store.clone(),
        auth: Arc::new(auth),
        open311: Arc::new(open311),
        rules: (!config.routing.queues.as_os_str().is_empty()).then(|| {
            Arc::new(api::rules::RulesControl::new(
                inbound_tx.clone(),
                config.routing.queues.clone(),
                config.routing.agents.clone(),
                log.clone(),
            ))
        }),
        live: live_rx,
        metrics: metrics.clone(),
        config: Arc::new(config.api.clone()),
    };
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http.listen))?;
    let http = http_listener.local_addr()?;
    let http_task = tokio::spawn(http::serve(http_listener, api_state, shutdown_rx.clone()));

    let grace = Duration::from_millis(config.sip.shutdown_grace_ms);
    let server_log = log.clone();
    let reload = (!config.routing.queues.as_os_str().is_empty()).then(|| RoutingFiles {
        engine: inbound_tx.clone(),
        queues: config.routing.queues.clone(),
        agents: config.routing.agents.clone(),
    });
    if !pending_callbacks.is_empty() {
        let restored = restored_callbacks(pending_callbacks, unix_ms_now());
        tracing::info!(count = restored.len(), "callbacks restored from the store");
        inbound_tx
            .send(Input::RestoreCallbacks(restored))
            .await
            .context("engine channel")?;
    }
    let callback_writer = CallbackWriter::spawn(store.clone(), health.callbacks_unsaved.clone());
    let cases = CaseStore {
        store: store.clone(),
        answers: inbound_tx,
    };
    let engine_task = tokio::spawn(async move {
        let closer = log.clone();
        let result = engine_loop(
            engine,
            inbound_rx,
            senders,
            log,
            health,
            shutdown_rx,
            grace,
            media,
            cases,
            speech,
            callback_writer,
            LiveOut {
                view: engine_live_tx,
                metrics,
            },
        )
        .await;
        let _ = io_stop_tx.send(true);
        // The engine has stopped, so nothing appends any more: commit the rest and stop the writer.
        closer.close();
        let logged = log_task.join().await;
        // An HTTP client holding a keep-alive connection must not keep the process up.
        let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
        result?;
        logged.context("event log")?;
        Ok(())
    });
    tracing::info!(udp = ?sip_udp, tcp = ?sip_tcp, %http, "civicline listening");
    Ok(Server {
        sip_udp,
        sip_tcp,
        http,
        rtp_ports,
        store,
        log: server_log,
        shutdown: shutdown_tx,
        engine_task,
        reload,
    })
}

/// Loads and checks the IVR flow and every prompt it names; any fault stops start-up with the
/// file, line and reason (a flow is never half-loaded).
fn load_ivr(
    config: &Config,
) -> anyhow::Result<(Option<Arc<crate::ivr::Flow>>, prompts::PromptStore)> {
    if config.ivr.flow.as_os_str().is_empty() {
        return Ok((None, prompts::PromptStore::default()));
    }
    let dir = &config.ivr.prompts_dir;
    // Languages come from the flow, but the flow's prompt check needs the store: read the
    // language list first with a permissive check, then validate for real.
    let probe = crate::ivr::Flow::load(&config.ivr.flow, &|_| true)?;
    let store = prompts::PromptStore::load(dir, &probe.languages)?;
    let languages = probe.languages.clone();
    let exists = |id: &str| languages.iter().all(|l| store.contains(l, id));
    let flow = crate::ivr::Flow::load(&config.ivr.flow, &exists)?;
    // Prompts the engine plays itself, outside any flow step.
    store.require(dir, &flow.languages, &["all_agents_busy"])?;
    if !config.routing.queues.as_os_str().is_empty() {
        let hold: Vec<&str> = config
            .routing
            .hold_prompts
            .iter()
            .map(String::as_str)
            .collect();
        store.require(dir, &flow.languages, &hold)?;
    }
    tracing::info!(
        steps = flow.steps.len(),
        prompts = store.len(),
        "IVR flow and prompts loaded"
    );
    Ok((Some(Arc::new(flow)), store))
}

/// Loads and checks queues.toml and agents.toml; any fault stops start-up with file, line and
/// reason.
fn load_routing(config: &Config) -> anyhow::Result<Option<Arc<crate::engine::RoutingSetup>>> {
    let routing = &config.routing;
    if routing.queues.as_os_str().is_empty() {
        return Ok(None);
    }
    let rules = crate::routing::rules::Rules::load(&routing.queues)?;
    let agents = crate::routing::rules::load_agents(&routing.agents, &rules)?;
    let algorithms: Vec<String> = routing
        .digest_algorithms
        .iter()
        .map(|a| a.to_ascii_uppercase())
        .collect();
    if algorithms.is_empty() || algorithms.iter().any(|a| a != "MD5" && a != "SHA-256") {
        anyhow::bail!(
            "[routing] digest_algorithms must list \"SHA-256\" and/or \"MD5\", not {:?}",
            routing.digest_algorithms
        );
    }
    tracing::info!(
        queues = rules.queues().len(),
        agents = agents.len(),
        "queues and agents loaded"
    );
    Ok(Some(Arc::new(crate::engine::RoutingSetup {
        rules,
        agents,
        digest: crate::sip::digest::DigestConfig {
            realm: routing.realm.clone(),
            offer_md5: algorithms.iter().any(|a| a == "MD5"),
            offer_sha256: algorithms.iter().any(|a| a == "SHA-256"),
            md5_first: algorithms.first().is_some_and(|a| a == "MD5"),
            ..Default::default()
        },
        ready_on_register: routing.ready_on_register,
        hold_prompts: routing.hold_prompts.clone(),
        announce_every: Duration::from_secs(routing.announce_every_s),
    })))
}

/// Runs until `shutdown` completes, then stops gracefully.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = start(config).await?;
    #[cfg(unix)]
    let shutdown = async {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return anyhow::Ok(()),
                _ = hangup.recv() => {
                    if let Err(error) = server.reload_routing().await {
                        tracing::error!("queue rules and agents not reloaded, the running ones stay: {error:#}");
                    }
                }
            }
        }
    };
    shutdown.await?;
    tracing::info!("shutting down: hanging up calls and flushing the event log");
    server.shutdown();
    server.wait().await
}

fn redact_url(url: &str) -> String {
    // Never print a password from a postgres:// URL.
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn engine_loop(
    mut engine: Engine,
    mut inbound: mpsc::Receiver<Input>,
    senders: transport::Senders,
    log: EventLog,
    health: HealthState,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    media: media::MediaHandle,
    cases: CaseStore,
    speech: speech::SpeechService,
    callbacks: CallbackWriter,
    live: LiveOut,
) -> anyhow::Result<()> {
    let clock = WallClock::now();
    let mut last_live = tokio::time::Instant::now();
    let now = || tokio::time::Instant::now().into_std();
    let mut stopping_until: Option<tokio::time::Instant> = None;
    let mut last_health = tokio::time::Instant::now();
    // Once every socket task has stopped the channel reports closed; stop polling it then, or a
    // biased select would spin on it and starve the grace timer.
    let mut inbound_open = true;
    // Publishes the engine's counters even when nothing else wakes the loop.
    let mut health_tick = tokio::time::interval(Duration::from_millis(250));
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let timeout = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s), if stopping_until.is_none() => {
                engine.handle_input(now(), Input::Shutdown);
                stopping_until = Some(tokio::time::Instant::now() + grace);
            }
            input = inbound.recv(), if inbound_open => {
                match input {
                    Some(input) => {
                        engine.handle_input(now(), input);
                        // Take what else is queued without another trip through select.
                        for _ in 0..256 {
                            match inbound.try_recv() {
                                Ok(more) => engine.handle_input(now(), more),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        inbound_open = false;
                        if stopping_until.is_none() {
                            engine.handle_input(now(), Input::Shutdown);
                            stopping_until = Some(tokio::time::Instant::now() + grace);
                        }
                    }
                }
            }
            _ = sleep_until_opt(timeout) => engine.handle_timeout(now()),
            _ = health_tick.tick() => last_health = tokio::time::Instant::now() - Duration::from_secs(1),
            _ = sleep_until_opt(stopping_until) => {
                tracing::warn!("shutdown grace period over with calls still hanging up");
                break;
            }
        }
        while let Some(output) = engine.poll_output() {
            match output {
                Output::Transmit { to, bytes } => senders.send(to, bytes),
                Output::Record(event) => {
                    live.metrics.observe_event(&event);
                    log.append(stored_event(&clock, &event));
                }
                Output::Media(command) => media.apply(command),
                Output::CreateCase {
                    call_ref,
                    audio_path,
                } => cases.create(call_ref, audio_path, clock.unix_ms(now())),
                Output::LookupCase { call_ref, number } => {
                    cases.lookup(call_ref, number, clock.unix_ms(now()))
                }
                Output::Utterance { call_ref, path, .. } => speech.submit(call_ref, path),
                Output::SaveCallback(record) => callbacks.save(stored_callback(&clock, &record)),
            }
        }
        if last_health.elapsed() >= Duration::from_millis(100) || stopping_until.is_some() {
            last_health = tokio::time::Instant::now();
            if let Ok(mut stats) = health.engine.lock() {
                *stats = engine.stats();
            }
            health.free_rtp_ports.store(
                engine.free_rtp_ports(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if last_live.elapsed() >= LIVE_EVERY {
            last_live = tokio::time::Instant::now();
            let view = engine.live_snapshot(now());
            live.view.send_if_modified(|current| {
                let changed = **current != view;
                if changed {
                    *current = Arc::new(view);
                }
                changed
            });
        }
        if stopping_until.is_some() && engine.is_drained() {
            break;
        }
    }
    // Calls still hanging up when the grace period ran out are let go (their end is recorded);
    // every closed call owes its RTP figures: let the media task finish its commands, then take
    // the reports it queued.
    engine.abandon_remaining_calls();
    while let Some(output) = engine.poll_output() {
        match output {
            Output::Media(command) => media.apply(command),
            Output::Record(event) => {
                log.append(stored_event(&clock, &event));
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), media.sync()).await;
    while let Ok(input) = inbound.try_recv() {
        if matches!(input, Input::Media { .. }) {
            engine.handle_input(now(), input);
        }
    }
    while let Some(output) = engine.poll_output() {
        match output {
            Output::Record(event) => {
                log.append(stored_event(&clock, &event));
            }
            Output::SaveCallback(record) => callbacks.save(stored_callback(&clock, &record)),
            _ => {}
        }
    }
    callbacks.finish(grace).await;
    log.flush_with_timeout(grace).await;
    Ok(())
}

/// Callback rows written in the order the engine decided them (one writer task, so a later
/// state never lands before an earlier one), each retried with a pause before it is reported
/// as lost: a waiting callback that the store never heard of would not survive a restart.
struct CallbackWriter {
    rows: mpsc::UnboundedSender<store::StoredCallback>,
    task: JoinHandle<()>,
}

impl CallbackWriter {
    fn spawn(store: Store, unsaved: Arc<std::sync::atomic::AtomicU64>) -> CallbackWriter {
        let (rows, mut pending) = mpsc::unbounded_channel::<store::StoredCallback>();
        let task = tokio::spawn(async move {
            while let Some(row) = pending.recv().await {
                let mut delay = Duration::from_millis(100);
                for attempt in 1..=6 {
                    match store.upsert_callback(&row).await {
                        Ok(()) => break,
                        Err(error) if attempt == 6 => {
                            unsaved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(%error, call_ref = %row.call_ref, state = %row.state,
                                "callback state NOT stored after 6 attempts: it will not survive a restart");
                        }
                        Err(error) => {
                            tracing::warn!(%error, attempt, "storing a callback failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                }
            }
        });
        CallbackWriter { rows, task }
    }

    fn save(&self, row: store::StoredCallback) {
        if self.rows.send(row).is_err() {
            tracing::error!("callback writer stopped: a callback state was not stored");
        }
    }

    /// Writes what is queued (at most `limit`), then stops.
    async fn finish(self, limit: Duration) {
        drop(self.rows);
        if tokio::time::timeout(limit.max(Duration::from_secs(2)), self.task)
            .await
            .is_err()
        {
            tracing::error!("callback states still unwritten at shutdown");
        }
    }
}

fn stored_callback(
    clock: &WallClock,
    record: &crate::engine::CallbackRecord,
) -> store::StoredCallback {
    let at_ms = clock.unix_ms(record.at);
    store::StoredCallback {
        call_ref: record.call_ref.clone(),
        number: record.number.clone(),
        language: record.language.clone(),
        queue: record.queue.clone(),
        attrs: serde_json::to_string(&record.attrs).unwrap_or_else(|_| "{}".into()),
        priority: record.priority,
        state: record.state.to_string(),
        attempts: record.attempts as i32,
        last_result: record.last_result.clone(),
        joined_at_ms: at_ms - record.waited.as_millis() as i64,
        updated_at_ms: at_ms,
    }
}

/// Stored callbacks as the engine takes them back, their waits counted to `now_ms`.
fn restored_callbacks(
    rows: Vec<store::StoredCallback>,
    now_ms: i64,
) -> Vec<crate::engine::RestoredCallback> {
    rows.into_iter()
        .map(|r| crate::engine::RestoredCallback {
            attrs: serde_json::from_str(&r.attrs).unwrap_or_default(),
            waited: Duration::from_millis(now_ms.saturating_sub(r.joined_at_ms).max(0) as u64),
            call_ref: r.call_ref,
            number: r.number,
            language: r.language,
            queue: r.queue,
            priority: r.priority,
            attempts: r.attempts.max(0) as u32,
        })
        .collect()
}

/// Checks `[callbacks]`: the gateway must be `sip:IP:PORT` (no DNS lookups in the call path)
/// and every dial pattern must parse; empty gateway or no queues turns callbacks off.
fn load_callbacks(
    config: &Config,
    sip_udp: &[SocketAddr],
) -> anyhow::Result<Option<Arc<crate::engine::CallbackSetup>>> {
    let c = &config.callbacks;
    if c.gateway.is_empty() || config.routing.queues.as_os_str().is_empty() {
        return Ok(None);
    }
    let uri = crate::sip::headers::SipUri::parse(&c.gateway)
        .map_err(|e| anyhow::anyhow!("[callbacks] gateway {:?}: {e}", c.gateway))?;
    let ip: std::net::IpAddr = uri
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            anyhow::anyhow!(
                "[callbacks] gateway {:?}: the host must be an IP address",
                c.gateway
            )
        })?;
    let remote = SocketAddr::new(ip, uri.port.unwrap_or(5060));
    let local = sip_udp
        .iter()
        .find(|a| a.is_ipv4() == remote.is_ipv4())
        .copied()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "[callbacks] gateway {remote}: no SIP UDP socket of that address family"
            )
        })?;
    let key = match c.key.chars().collect::<Vec<_>>()[..] {
        [k] if k.is_ascii_digit() || k == '*' || k == '#' => k,
        _ => anyhow::bail!("[callbacks] key {:?}: one DTMF key (0-9, * or #)", c.key),
    };
    let dial_plan = crate::engine::DialPlan::new(&c.allowed, &c.denied)
        .map_err(|e| anyhow::anyhow!("[callbacks] {e}"))?;
    Ok(Some(Arc::new(crate::engine::CallbackSetup {
        gateway: crate::sip::transport::Peer::udp(local, remote),
        gateway_host: crate::engine::host_port(remote),
        offer_after: Duration::from_secs(c.offer_after_s),
        key,
        dial_plan,
        max_attempts: c.max_attempts.max(1),
        retry_after: Duration::from_secs(c.retry_after_s),
        ring_timeout: Duration::from_secs(c.ring_timeout_s.max(1)),
        give_up_after: Duration::from_secs(c.give_up_after_s),
    })))
}

/// Where the engine loop publishes its live view and what it observes for Prometheus.
struct LiveOut {
    view: watch::Sender<Arc<crate::engine::live::EngineLive>>,
    metrics: Arc<api::prometheus::Metrics>,
}

/// Case store work off the engine task: each request runs as its own task and answers through
/// the engine's inbound channel, so a slow database never stalls calls.
struct CaseStore {
    store: Store,
    answers: mpsc::Sender<Input>,
}

impl CaseStore {
    fn create(&self, call_ref: String, audio_path: Option<String>, now_ms: i64) {
        let (store, answers) = (self.store.clone(), self.answers.clone());
        tokio::spawn(async move {
            // A few tries before giving up: a brief lock or connection blip must not cost a case.
            let mut last_error = String::new();
            let mut event = None;
            for attempt in 0..3u64 {
                match store
                    .create_case(&call_ref, audio_path.as_deref(), now_ms)
                    .await
                {
                    Ok(case) => {
                        event = Some(crate::engine::CaseEvent::Created {
                            number: case.case_number,
                        });
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, attempt, "storing a case failed");
                        last_error = error.to_string();
                        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                    }
                }
            }
            let event =
                event.unwrap_or(crate::engine::CaseEvent::CreateFailed { reason: last_error });
            let _ = answers.send(Input::Case { call_ref, event }).await;
        });
    }

    fn lookup(&self, call_ref: String, number: String, now_ms: i64) {
        let (store, answers) = (self.store.clone(), self.answers.clone());
        tokio::spawn(async move {
            let found = match store.find_case(&number).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!(%error, "looking up a case failed");
                    None
                }
            };
            let info = found.map(|case| crate::ivr::CaseInfo {
                open: case.status == "open",
                days_open: ((now_ms - case.created_at_ms).max(0) / 86_400_000) as u32,
                department: case.department,
            });
            let event = crate::engine::CaseEvent::Found(info);
            let _ = answers.send(Input::Case { call_ref, event }).await;
        });
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl EventLog {
    /// Waits for the backlog to commit, but not forever: a failing store is handled at close.
    pub async fn flush_with_timeout(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callback state the store keeps refusing is retried, then counted (for /healthz) and
    /// reported, never dropped without a trace. (Real time: sqlx's pool timeouts do not work
    /// on a paused clock; the retries take about 3 s.)
    #[tokio::test]
    async fn callback_states_the_store_refuses_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let Store::Sqlite(pool) = &store else {
            unreachable!("a sqlite URL")
        };
        sqlx::query("DROP TABLE callbacks")
            .execute(pool)
            .await
            .unwrap();
        let unsaved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = CallbackWriter::spawn(store.clone(), unsaved.clone());
        writer.save(store::StoredCallback {
            call_ref: "c-1".into(),
            number: "3125550142".into(),
            language: "en".into(),
            queue: None,
            attrs: "{}".into(),
            priority: 0,
            state: "waiting".into(),
            attempts: 0,
            last_result: None,
            joined_at_ms: 0,
            updated_at_ms: 0,
        });
        writer.finish(Duration::from_secs(60)).await;
        assert_eq!(unsaved.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
