//! # swarm-serve
//!
//! The swarm behind one OpenAI-compatible endpoint, in layers (TGI's router is the model):
//! routes -> [`openai`] wire types -> validation ([`ValidatedRequest`]) -> [`Router`] (skill
//! mix -> elite) -> bounded queue -> [`Engine`].
//!
//! - [`AppState`] / [`app`] / [`serve`]: the axum application over any [`Engine`].
//! - [`Router`] with [`SkillClassifier`]: `model: "swarm"` classifies the request into a skill
//!   mix and picks the elite with the best expected score; `swarm/<skill>` and elite ids too.
//! - [`Engine`]: jobs in, [`Event`]s out over a channel; dropping the receiver cancels.
//! - [`ModelEngine`]: the real engine, continuous batching on swarm-model's `Llama`, elites
//!   from an [`EliteCache`] (LRU of dense models within a memory budget), and a
//!   [`PrefixCache`] of finished sequences' keys and values, which later prompts that begin
//!   with them reuse instead of prefilling again.
//! - [`GenomeSwarm`] / [`load_swarm_dir`]: a swarm directory (`swarm.json`, factors,
//!   genomes) served as elites materialised from their genomes on demand or run straight
//!   from the factors, as a [`ServingPolicy`] says.
//! - `/v1/responses`: the Responses API, rewritten into a chat request (`responses.rs`).
//! - [`Metrics`]: Prometheus text exposition at `/metrics`.
//! - [`run`]: `swarm serve` end to end ([`ServeOptions`]).
//!
//! ```no_run
//! # async fn f(engine: std::sync::Arc<dyn swarm_serve::Engine>, swarm: swarm_serve::SwarmInfo) -> std::io::Result<()> {
//! use swarm_serve::{AppState, Router, ServerConfig};
//! let state = AppState::new(engine, Router::new(swarm, None), ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! swarm_serve::serve(listener, state, std::future::pending()).await
//! # }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod classifier;
mod engine;
mod error;
mod genome_swarm;
mod guide;
mod launch;
mod logprobs;
mod metrics;
mod model_engine;
pub mod openai;
mod prefix_cache;
mod registry;
mod responses;
mod router;
mod server;
mod stream;
mod tools;
mod validation;

pub use classifier::{
    free_form_requests, routing_text, synthetic_examples, synthetic_prompts, user_turns_text,
    SkillClassifier, DEFAULT_L2,
};
pub use engine::{
    Engine, EngineStatus, Event, Failure, FinishReason, GenerateJob, PromptLogprobs, TokenLogprob,
    TopLogprob,
};
pub use error::{ApiError, Result, ServeError};
pub use genome_swarm::{open_swarm, GenomeSwarm, OpenedSwarm};
pub use guide::ToolCallGuide;
pub use launch::{
    load_single_model, load_swarm_dir, load_swarm_dir_with, model_elite_id, read_router_data, run,
    skill_classifier, ServeOptions, DEFAULT_ELITE, ROUTER_EXAMPLES_PER_SKILL,
};
pub use metrics::Metrics;
pub use model_engine::{LoadedSwarm, ModelEngine, ModelEngineConfig};
pub use prefix_cache::{PrefixCache, PrefixCacheStats, MIN_REUSED_TOKENS};
pub use registry::{
    copies_swarm, copy_ids, model_bytes, single_model_swarm, EliteCache, EliteSource,
    ServingPolicy, SingleModel,
};
pub use router::{EliteInfo, Route, Router, SwarmInfo};
pub use server::{app, serve, AppState, RequestId, ServerConfig, ELITE_HEADER, REQUEST_ID_HEADER};
pub use tools::{
    call_text, resolve_tools, split_answer, FunctionTool, ParsedCall, ToolChoice, ToolSet,
};
pub use validation::{
    validate_chat, validate_completion, Endpoint, JsonFormat, Limits, Prompt, SamplingParams,
    ValidatedRequest, ROUTER_MODEL,
};
