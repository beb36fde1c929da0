//! `swarm serve` end to end: options -> the swarm to serve -> engine -> HTTP on a socket,
//! until SIGTERM or Ctrl-C, then a graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use swarm_model::{parse_device, Precision, Pretrained};

use crate::classifier::SkillClassifier;
use crate::error::{Result, ServeError};
use crate::genome_swarm::open_swarm;
use crate::model_engine::{LoadedSwarm, ModelEngine, ModelEngineConfig};
use crate::registry::{copies_swarm, copy_ids, EliteCache, ServingPolicy, SingleModel};
use crate::router::Router;
use crate::server::{serve, AppState, ServerConfig};
use crate::validation::Limits;

/// Everything `swarm serve` needs, resolved (no defaults left to apply).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// A model reference (`--model`): served as a one-elite swarm (exclusive with `swarm`).
    pub model: Option<String>,
    /// A swarm directory (`agents/<name>/`): its elites, materialised from genomes on
    /// demand.
    pub swarm: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Weight precision; `None` picks the device's default (f32 on CPU, bf16 on CUDA).
    pub precision: Option<String>,
    /// Memory budget for resident dense elites, bytes.
    pub memory_budget: usize,
    /// How a swarm's elites are served: materialised into the LRU, from the experts'
    /// factors, or from factors until they are hot (see [`ServingPolicy`]).
    pub elite_serving: ServingPolicy,
    pub engine: ModelEngineConfig,
    pub server: ServerConfig,
    /// Labelled prompts (`{"skill": ..., "text": ...}` JSON lines) to train the router on.
    pub router_data: Option<PathBuf>,
    /// Serve the model as this many elites (copies; load tests of multi-elite serving).
    pub copies: usize,
    /// Longest graceful drain before giving up.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model: None,
            swarm: None,
            device: "cpu".to_string(),
            precision: None,
            memory_budget: 4 << 30,
            elite_serving: ServingPolicy::default(),
            engine: ModelEngineConfig::default(),
            server: ServerConfig {
                limits: Limits::default(),
                ..ServerConfig::default()
            },
            router_data: None,
            copies: 1,
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// The elite id of the default model served alone.
pub const DEFAULT_ELITE: &str = "smollm2-135m-instruct";

/// The elite id of a model served alone: its file or directory name.
pub fn model_elite_id(reference: &str) -> String {
    let name = std::path::Path::new(reference)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(reference);
    let name = name.strip_suffix(".gguf").unwrap_or(name);
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "model".to_string()
    } else {
        id
    }
}

/// Reads router training data: JSON lines `{"skill": "...", "text": "..."}`.
pub fn read_router_data(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    #[derive(serde::Deserialize)]
    struct Row {
        skill: String,
        text: String,
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Row>(l)
                .map(|r| (r.skill, r.text))
                .map_err(|source| ServeError::Json {
                    path: path.display().to_string(),
                    source,
                })
        })
        .collect()
}

/// Opens one model (any `--model` reference; empty: the default model) as a swarm whose
/// elites `elites` are that model (one, or copies for load tests), on `device` in `precision`.
pub fn load_single_model(
    reference: &str,
    elites: &[String],
    device: candle_core::Device,
    precision: Precision,
    memory_budget: usize,
) -> Result<LoadedSwarm> {
    let started = std::time::Instant::now();
    let pretrained = Pretrained::open(reference)?;
    let template = pretrained.chat_template()?;
    let stop_ids = template.stop_token_ids(&pretrained.tokenizer);
    tracing::info!(model = %pretrained.name, %precision, "model opened");
    let source = SingleModel {
        elites: elites.to_vec(),
        config: pretrained.config.clone(),
        weights: pretrained.weights,
    };
    let warm = elites.iter().take(1).cloned().collect();
    let elites = EliteCache::new(Box::new(source), device, precision, memory_budget);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "swarm opened");
    Ok(LoadedSwarm {
        elites,
        tokenizer: pretrained.tokenizer,
        template,
        stop_ids,
        warm,
    })
}

/// Skill-router examples per skill when the router trains on the skills' synthetic
/// training prompts (enough for the accuracy reported in docs/performance.md; training
/// takes well under a second).
pub const ROUTER_EXAMPLES_PER_SKILL: usize = 300;

/// The router's classifier for a swarm of `skills`: trained on `router_data` when given,
/// else on the synthetic training prompts of the skills swarm-tasks knows. `None` when
/// fewer than two skills can be told apart (the router then takes the best mean score).
pub fn skill_classifier(
    skills: &[String],
    router_data: Option<&std::path::Path>,
) -> Result<Option<SkillClassifier>> {
    if let Some(path) = router_data {
        let data = read_router_data(path)?;
        return Ok(Some(SkillClassifier::train(
            data.iter().map(|(s, t)| (s.as_str(), t.as_str())),
            crate::classifier::DEFAULT_L2,
        )?));
    }
    let known: Vec<swarm_tasks::Skill> = swarm_tasks::Skill::ALL
        .into_iter()
        .filter(|k| skills.iter().any(|s| s == k.name()))
        .collect();
    if known.len() < 2 {
        if !skills.is_empty() {
            tracing::warn!(
                ?skills,
                "fewer than two of the swarm's skills have training prompts in swarm-tasks \
                 (give --router-data): `swarm` serves the elite with the best mean score"
            );
        }
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let clf = SkillClassifier::train_on(&known, ROUTER_EXAMPLES_PER_SKILL, 0)?;
    tracing::info!(
        skills = ?clf.skills(),
        seconds = started.elapsed().as_secs_f64(),
        "router classifier trained on the skills' synthetic training prompts"
    );
    Ok(Some(clf))
}

/// Opens the swarm in `dir` for serving: the router over its elites and scores (with the
/// classifier of [`skill_classifier`]), and the engine's elites, on `device` in
/// `precision`, served with the default [`ServingPolicy`] (from factors until hot, then
/// materialised into an LRU of `memory_budget` bytes). The elite the router picks for a
/// request it knows nothing about is materialised first.
pub fn load_swarm_dir(
    dir: &std::path::Path,
    device: candle_core::Device,
    precision: Precision,
    memory_budget: usize,
    router_data: Option<&std::path::Path>,
) -> Result<(Router, LoadedSwarm)> {
    load_swarm_dir_with(
        dir,
        device,
        precision,
        memory_budget,
        ServingPolicy::default(),
        router_data,
    )
}

/// [`load_swarm_dir`] with the elites served as `policy` says.
pub fn load_swarm_dir_with(
    dir: &std::path::Path,
    device: candle_core::Device,
    precision: Precision,
    memory_budget: usize,
    policy: ServingPolicy,
    router_data: Option<&std::path::Path>,
) -> Result<(Router, LoadedSwarm)> {
    let opened = open_swarm(dir)?;
    let classifier = skill_classifier(&opened.info.skills, router_data)?;
    let router = Router::new(opened.info.clone(), classifier);
    let warm = router
        .route(crate::validation::ROUTER_MODEL, String::new)
        .map(|r| vec![r.elite])
        .unwrap_or_default();
    let loaded = opened.into_loaded(device, precision, memory_budget, policy, warm);
    Ok((router, loaded))
}

/// Runs the server until SIGTERM / Ctrl-C; blocks the calling thread.
pub fn run(options: ServeOptions) -> Result<()> {
    let device = parse_device(&options.device)?;
    let precision = match &options.precision {
        Some(p) => p
            .parse::<Precision>()
            .map_err(|e| ServeError::Config(format!("--precision: {e}")))?,
        None => Precision::default_for(&device),
    };
    precision.check_device(&device)?;
    // A swarm is opened and checked before the server listens, so that a bad directory
    // fails the command with its reason; a single model loads behind a 503 `/ready`.
    let (router, engine, serving) = match &options.swarm {
        Some(dir) => {
            if options.model.is_some() {
                return Err(ServeError::Config(
                    "--model and --swarm both given: serve one or the other".to_string(),
                ));
            }
            if options.copies > 1 {
                return Err(ServeError::Config(
                    "--copies applies to --model (copies of one model), not to --swarm".to_string(),
                ));
            }
            let policy = options.elite_serving;
            tracing::info!(%policy, "elite serving policy");
            let (router, loaded) = load_swarm_dir_with(
                dir,
                device,
                precision,
                options.memory_budget,
                policy,
                options.router_data.as_deref(),
            )?;
            let engine = ModelEngine::start(options.engine.clone(), move || Ok(loaded))?;
            (router, engine, dir.display().to_string())
        }
        None => {
            let reference = options.model.clone().unwrap_or_default();
            let elite = if reference.is_empty() {
                DEFAULT_ELITE.to_string()
            } else {
                model_elite_id(&reference)
            };
            let base = if reference.is_empty() {
                swarm_model::DEFAULT_MODEL.to_string()
            } else {
                reference.clone()
            };
            let ids = copy_ids(&elite, options.copies);
            let swarm = copies_swarm(&ids, &base);
            let classifier = skill_classifier(&[], options.router_data.as_deref())?;
            let budget = options.memory_budget;
            let engine = ModelEngine::start(options.engine.clone(), move || {
                load_single_model(&reference, &ids, device, precision, budget)
            })?;
            (Router::new(swarm, classifier), engine, elite)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Engine(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(options, router, engine, serving))
}

async fn run_async(
    options: ServeOptions,
    router: Router,
    engine: ModelEngine,
    serving: String,
) -> Result<()> {
    let state = AppState::new(Arc::new(engine), router, options.server.clone());
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: options.addr,
            source,
        })?;
    // The bound address, not the asked one: `--port 0` takes a free port, and this says which.
    let addr = listener.local_addr().unwrap_or(options.addr);
    tracing::info!(%addr, serving, "serving (503 on /ready until loaded)");
    let drain_timeout = options.drain_timeout;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    }));
    // After the signal, give running requests `drain_timeout` to finish.
    let drained = async {
        let _ = stop_rx.await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        r = server => match r {
            Ok(Ok(())) => {
                tracing::info!("drained; bye");
                Ok(())
            }
            Ok(Err(e)) => Err(ServeError::Io { path: options.addr.to_string(), source: e }),
            Err(e) => Err(ServeError::Engine(format!("server task failed: {e}"))),
        },
        _ = drained => {
            tracing::warn!(seconds = drain_timeout.as_secs(), "drain timed out; exiting");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
