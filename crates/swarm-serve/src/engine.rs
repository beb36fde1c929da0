//! The seam between HTTP and inference: the [`Engine`] trait.
//!
//! The HTTP layer validates, routes and admits a request, then hands the engine one
//! [`GenerateJob`] per choice and reads [`Event`]s back from a channel. Dropping the receiver
//! cancels the job: the engine notices at its next step and frees the sequence. The real
//! engine is [`crate::ModelEngine`]; HTTP tests run in-process against small engines written
//! in the tests.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::prefix_cache::PrefixCacheStats;
use crate::validation::{Prompt, SamplingParams};

/// One sequence to generate (one choice of one request).
#[derive(Debug, Clone)]
pub struct GenerateJob {
    /// Echoed in the engine's logs.
    pub request_id: String,
    /// The elite that serves it (already chosen by the router).
    pub elite: String,
    pub prompt: Prompt,
    /// `seed` is this choice's own seed.
    pub params: SamplingParams,
    /// The job is stopped with [`Failure::Timeout`] past this instant.
    pub deadline: Option<Instant>,
}

/// A generated token's log-probability under the elite's own distribution at its step
/// (temperature 1, before top-p), and the most likely tokens there.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's exact bytes: part of a UTF-8 character, for some tokens.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely first; as many as the job asked for.
    pub top: Vec<TopLogprob>,
}

/// The prompt's tokens with their log-probabilities given the tokens before them: the
/// first token has none.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprobs {
    pub first_token: Vec<u8>,
    /// Tokens 2, 3, ... of the prompt.
    pub rest: Vec<TokenLogprob>,
}

/// One of the most likely tokens at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why a sequence ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the model's context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The prompt does not fit (tokens, limit).
    PromptTooLong { tokens: usize, limit: usize },
    /// A token id out of the vocabulary (completions with token prompts).
    InvalidToken(u32),
    /// The prompt cannot be run as given (empty, template error, bad sampling values).
    Invalid(String),
    /// A request field other than the prompt names something this model lacks (a
    /// `logit_bias` token outside the vocabulary).
    InvalidField { param: String, message: String },
    /// The per-request deadline passed.
    Timeout,
    /// Loading, draining or stopped.
    Unavailable(String),
    /// Anything else; the detail is logged, not sent.
    Internal(String),
}

/// What the engine reports about one job, in order: `Started`, any number of `Text`, then
/// `Done` or `Failed` (a `Failed` may also come first).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt was tokenised and admitted.
    Started {
        prompt_tokens: usize,
    },
    /// The prompt, echoed (`echo`, completions): its text and, when the job asked for
    /// log-probabilities, its tokens'. Comes before any `Text`.
    Echo {
        text: String,
        logprobs: Option<PromptLogprobs>,
    },
    /// New text (already cut before any stop string) and the tokens it came from.
    Text {
        text: String,
        tokens: usize,
        /// The log-probabilities of those tokens, when the job asked for them
        /// ([`SamplingParams::logprobs`]); empty otherwise, and for an end-of-turn token.
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish: FinishReason,
        completion_tokens: usize,
        /// Prompt tokens whose keys and values came from the prefix cache instead of a
        /// prefill (`usage.prompt_tokens_details.cached_tokens`).
        cached_tokens: usize,
    },
    Failed(Failure),
}

/// What `/metrics` and `/ready` read from the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatus {
    /// Loaded and accepting jobs.
    pub ready: bool,
    /// Sequences in the running batch(es).
    pub batch_size: usize,
    /// Jobs received, not yet in the batch.
    pub waiting: usize,
    /// Elites with dense weights in memory.
    pub elites_resident: usize,
    /// Bytes of those weights.
    pub resident_bytes: usize,
    /// Running batches: forward passes per decode step (one per dense elite with running
    /// sequences, one for all the elites served from factors).
    pub batches: usize,
    /// Forward passes run so far, prefill and decode.
    pub forward_passes: u64,
    /// Elites materialised into dense weights so far (the warm ones and re-materialisations
    /// after an eviction included).
    pub materialisations: u64,
    /// The prefix cache's hits and holdings.
    pub prefix_cache: PrefixCacheStats,
}

/// Runs generation jobs. Implementations must not block the caller: `submit` queues the job
/// and returns at once.
pub trait Engine: Send + Sync + 'static {
    /// Queues a job; its events arrive on the returned channel.
    fn submit(&self, job: GenerateJob) -> Result<mpsc::UnboundedReceiver<Event>, Failure>;
    /// For `/ready` and `/metrics`.
    fn status(&self) -> EngineStatus;
    /// Stops taking jobs and lets the running ones finish (graceful drain).
    fn begin_drain(&self) {}
}
