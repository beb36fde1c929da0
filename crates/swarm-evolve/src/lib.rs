//! swarm-evolve: CycleQD over LLMs, end to end.
mod config;
mod error;
mod plan;

pub use config::{
    expand_reference, toy_dir, BaselinePlan, ExpertSpec, ModelPlan, ModelSpec, Mutation, QdPlan,
    RawConfig, RunPlan, SkillSpec, SuiteSpec,
};
pub use error::{EvolveError, Result};
pub use plan::{builtin_architecture, sizes, ArchSource, DryRun, Sizes};
