//! # swarm-model
//!
//! Llama-family language models for swarm: everything between a file on disk and generated
//! text.
//!
//! - [`LlamaConfig`]: the resolved architecture (from `config.json` or GGUF metadata).
//! - [`TensorSource`]: named tensors in HF layout, streamed one at a time from memory-mapped
//!   safetensors ([`SafetensorsFiles`]), GGUF, or memory ([`Weights`]).
//! - [`Tokenizer`]: the `tokenizers` crate with the model's special tokens.
//! - [`Llama`]: the forward pass, with a [`KvCache`] kept outside; [`Llama::with_delta`] adds
//!   a [`ModelDelta`] (low-rank deltas, replaced tensors) without copying the base, and
//!   [`Llama::decode_grouped`] runs a batch mixing such models, grouped by [`RowGroup`].
//!
//! Every loader yields the same tensor names and layout (see [`LlamaConfig::tensor_shapes`]),
//! so weights from a GGUF file and from an HF dir can be merged with each other.

mod allocator;
mod attention;
mod chat_template;
mod config;
mod delta;
mod device;
mod error;
mod f32_kernel;
mod fsutil;
mod generation;
mod gguf;
mod hub;
mod json_prefix;
mod json_schema;
#[doc(hidden)]
pub mod kernel_bench;
mod kv_cache;
mod lanes;
mod linear;
mod llama;
mod pretrained;
mod products;
mod q8_0;
mod sampling;
mod session;
mod simd;
mod tokenizer;
mod weights;

pub use allocator::configure_allocator;
pub use chat_template::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
pub use config::{HfConfig, Llama3RopeScaling, LlamaConfig};
pub use delta::{LowRankDelta, ModelDelta};
pub use device::{
    configure_cpu_threads, default_dtype, device_name, parse_device, CANDLE_THREADS_ENV,
};
pub use error::{ModelError, Result};
pub use fsutil::write_atomic;
pub use generation::{
    generate, FinishReason, Generated, GenerationParams, StreamControl, TextStream, TokenEvent,
};
pub use gguf::{GgmlType, GgufFile};
pub use hub::{
    cache_dir, ensure_default_model, expand_toy_reference, sha256_file, toy_models_dir, ModelFiles,
    ModelRef, DEFAULT_MODEL, TOY_WORLD_EDITION,
};
pub use json_prefix::{JsonCheck, JsonPrefix};
pub use json_schema::{JsonSchema, SchemaPrefix};
pub use kv_cache::KvCache;
pub use linear::Precision;
pub use llama::{argmax_rows, random_weights, rope_inv_freq, rope_tables, Llama, RowGroup};
pub use pretrained::{
    check_weights, replace_dir_atomically, save_hf_dir, write_model_metadata, Pretrained,
};
pub use sampling::{
    argmax, token_logprobs, LogitAdjustments, Sampler, SamplingParams, TokenLogprobs,
};
pub use session::Session;
pub use tokenizer::Tokenizer;
pub use weights::{decode_le_to_f32, write_safetensors, SafetensorsFiles, TensorSource, Weights};
