//! `swarm serve` end to end: options -> the swarm to serve -> engine -> HTTP on a socket,
//! until SIGTERM or Ctrl-C, then a graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use swarm_model::{parse_device, Precision, Pretrained};

use crate::classifier::SkillClassifier;
use crate::error::{Result, ServeError};
use crate::model_engine::{LoadedSwarm, ModelEngine, ModelEngineConfig};
use crate::registry::{copies_swarm, copy_ids, EliteCache, SingleModel};
use crate::router::Router;
use crate::server::{serve, AppState, ServerConfig};
use crate::validation::Limits;

/// Everything `swarm serve` needs, resolved (no defaults left to apply).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// A model reference (`--model`): served as a one-elite swarm.
    pub model: Option<String>,
    /// A swarm directory (`agents/<name>/`).
    pub swarm: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Weight precision; `None` picks the device's default (f32 on CPU, bf16 on CUDA).
    pub precision: Option<String>,
    /// Memory budget for resident dense elites, bytes.
    pub memory_budget: usize,
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

/// Runs the server until SIGTERM / Ctrl-C; blocks the calling thread.
pub fn run(options: ServeOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Engine(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(options))
}

async fn run_async(options: ServeOptions) -> Result<()> {
    if options.swarm.is_some() {
        return Err(ServeError::Swarm(
            "serving a multi-elite swarm directory needs genome materialisation, which is not \
             wired in yet; serve one model with --model"
                .to_string(),
        ));
    }
    let device = parse_device(&options.device)?;
    let precision = match &options.precision {
        Some(p) => p
            .parse::<Precision>()
            .map_err(|e| ServeError::Config(format!("--precision: {e}")))?,
        None => Precision::default_for(&device),
    };
    precision.check_device(&device)?;
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
    let classifier = match &options.router_data {
        Some(path) => {
            let data = read_router_data(path)?;
            Some(SkillClassifier::train(
                data.iter().map(|(s, t)| (s.as_str(), t.as_str())),
                0.1,
            )?)
        }
        None => None,
    };
    let budget = options.memory_budget;
    let engine = ModelEngine::start(options.engine.clone(), move || {
        load_single_model(&reference, &ids, device, precision, budget)
    })?;
    let state = AppState::new(
        Arc::new(engine),
        Router::new(swarm, classifier),
        options.server.clone(),
    );
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Io {
            path: options.addr.to_string(),
            source,
        })?;
    tracing::info!(addr = %options.addr, elite, "serving (503 on /ready until loaded)");
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
