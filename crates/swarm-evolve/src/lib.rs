//! # swarm-evolve
//!
//! CycleQD over LLMs, end to end: from a base model and one expert per skill to an exported
//! swarm of elites, resumable after a crash, with a report anyone can re-run.
//!
//! - [`RunPlan`]: a run config (`configs/*.toml`) resolved, unknown keys rejected;
//!   [`DryRun`] prints what it would do, with sizes and a memory estimate.
//! - [`LlmEvaluator`]: genome -> dense weights (swarm-merge) -> [`swarm_model::Llama`] ->
//!   batched greedy answers to every episode of every skill -> sandboxed checks
//!   (swarm-tasks), overlapping the next skill's generation -> per-skill scores. Any
//!   [`Evaluator`] can drive the loop.
//! - [`RunState`]: CycleQD's scheduler over genome ids, the genomes and the progress records,
//!   checkpointed atomically after every generation; [`run_generations`] is the loop.
//! - [`export_swarm`]: `agents/<name>/{swarm.json, factors.safetensors, genomes.safetensors}`.
//! - [`write_report`]: `report.md`, archive heatmaps and metric plots, and the test table.
//! - [`WorldBootstrap`]: builds the toy world (swarm-train) when a run names its models and
//!   they are not on disk.
//! - [`evolve`]: all of it, as `swarm evolve` runs it.
//!
//! ```no_run
//! use swarm_evolve::{evolve, EvolveOptions, RunPlan};
//! # fn main() -> Result<(), swarm_evolve::EvolveError> {
//! let plan = RunPlan::from_file(std::path::Path::new("configs/toy.toml"))?;
//! let outcome = evolve(&plan, &EvolveOptions { progress: true, ..Default::default() })?;
//! println!("{} generations, swarm in {:?}", outcome.generations_done, outcome.swarm_dir);
//! # Ok(()) }
//! ```

mod bootstrap;
mod config;
mod driver;
mod error;
mod evaluator;
mod export;
mod plan;
mod png;
mod report;
mod run;
pub mod testing;
mod world;

pub use bootstrap::WorldBootstrap;
pub use config::{
    expand_reference, toy_dir, BaselinePlan, ExpertSpec, ModelPlan, ModelSpec, Mutation, QdPlan,
    RawConfig, RunPlan, SkillSpec, SuiteSpec,
};
pub use driver::{
    evolve, finish, plan_for_resume, ties_weights, with_log_file, EvolveOptions, EvolveOutcome,
};
pub use error::{EvolveError, Result};
pub use evaluator::{
    load_f32, play_skills, EvalSet, Evaluation, Evaluator, LlmEvaluator, StageTimes,
};
pub use export::{
    aggregate, export_swarm, load_manifest, CellEntry, EliteEntry, FactorEntry, ModelEntry,
    SkillEntry, SwarmManifest, SWARM_FORMAT,
};
pub use plan::{builtin_architecture, sizes, ArchSource, DryRun, Sizes};
pub use png::{heatmap, line_plot, Canvas};
pub use report::{table_markdown, test_table, timing_summary, write_plots, write_report, Row};
pub use run::{
    default_range, make_child, run_generations, start, GenerationRecord, LoopOptions, Progress,
    RunState, Scheduler, CONFIG_FILE, FACTORS_FILE, GENOMES_FILE, LOG_FILE, PROGRESS_FILE,
    STATE_FILE,
};
/// The agent [`play_skills`] plays episodes with (swarm-train's, shared with `swarm bootstrap`
/// and `swarm eval` so that a model scores the same everywhere).
pub use swarm_train::ModelAgent;
pub use world::open_world;
