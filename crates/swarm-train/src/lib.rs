//! # swarm-train
//!
//! Training with candle on the CPU: the toy world that `swarm bootstrap` builds, in the shape
//! of the CycleQD paper (a base, and one expert per skill fine-tuned from it).
//!
//! - [`TrainableLlama`]: the Llama of swarm-model written with differentiable candle ops on
//!   [`candle_core::Var`]s named with the HF tensor names; [`TrainableLlama::to_weights`]
//!   gives what `swarm_model::Llama::load` and `save_hf_dir` take.
//! - [`train_tokenizer`]: byte-level BPE with ChatML special tokens, trained on the corpus.
//! - [`train`]: AdamW with warm-up, cosine decay and clipping over seeded [`Batcher`]s of
//!   [`Sequence`]s (loss only on the assistant's answer in chats).
//! - [`bootstrap`]: data → tokenizer → base → experts → HF dirs → evaluation on the test
//!   splits with the real checkers ([`ModelAgent`] plays the episodes).
//!
//! ```no_run
//! use swarm_train::{bootstrap, score_table, BootstrapOptions, Preset, WorldSpec};
//! # fn main() -> swarm_train::Result<()> {
//! let report = bootstrap(&BootstrapOptions {
//!     spec: WorldSpec::preset(Preset::Micro),
//!     seed: 0,
//!     out: "/tmp/toy".into(),
//!     progress: false,
//!     evaluate: true,
//! })?;
//! println!("{}", score_table(&report));
//! # Ok(()) }
//! ```
//!
//! Determinism: data, tokenizer, initialisation and batch order are functions of the seed.
//! With the same number of threads the trained weights are identical from run to run; with a
//! different number of threads, matrix products may sum in a different order and the weights
//! differ in the last bits (and greedy answers may then differ).

mod agent;
mod corpus;
mod data;
mod error;
mod fused;
mod model;
mod report;
mod tokenizer;
mod trainer;
mod world;

pub use agent::ModelAgent;
pub use corpus::{
    general_documents, skill_documents, to_model_message, ChatExample, Document, GENERAL_SYSTEM,
};
pub use data::{encode, encode_all, Batch, Batcher, Sequence};
pub use error::{Result, TrainError};
pub use model::{masked_cross_entropy, TrainableLlama};
pub use report::{
    check_targets, markdown_mean, markdown_report, markdown_section, score_table, summary,
};
pub use tokenizer::{train_tokenizer, IM_END, IM_START, PAD_TOKEN};
pub use trainer::{progress_bar, train, train_with_bar, TrainReport, TrainSettings};
pub use world::{
    bootstrap, evaluate_models, train_expert, world_documents, BootstrapOptions, ExpertOverride,
    ModelScores, Preset, Timings, WorldDocuments, WorldReport, WorldSpec, MODEL_NAMES,
    REFERENCE_PROMPT,
};
