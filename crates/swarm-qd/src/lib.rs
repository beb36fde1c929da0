//! Quality-diversity for swarm: CycleQD's archives and schedule, and a MAP-Elites driver
//! checked against pyribs on its published benchmark.
//!
//! This crate knows nothing of models. It is handed genome handles (any `G: Clone`), per-skill
//! scores and behaviour values, and decides what is kept and what is bred next.
//!
//! - [`GridArchive`]: behaviour space cut into a grid (`linspace` edges, right-closed bins,
//!   clamped, exactly as CycleQD's code bins), one [`Elite`] per cell, replaced only by a
//!   strictly better quality; [`GridArchive::insert`] says what happened ([`InsertOutcome`]).
//! - [`CycleQd`]: K skills, K archives; in archive `i` the quality is skill `i` and the cell is
//!   the bins of the other skills. The quality skill cycles every generation; parents come from
//!   its archive only; every child is offered to all K archives. Asynchronous steady state:
//!   [`CycleQd::ask`] hands out [`Ticket`]s, [`CycleQd::tell`] takes [`Child`]ren in any order.
//! - [`ParentSampler`]: uniform, or CycleQD's elite sampling ([`EliteFormula`]: the paper's or
//!   the released code's).
//! - [`MetricsHistory`]: QD-score (with offset), coverage and best quality per archive and
//!   generation.
//! - [`QdState`]: the complete state, RNG included, saved atomically and loaded with
//!   checks; a resumed run is exactly the run that never stopped.
//! - [`MapElites`]: MAP-Elites with a Gaussian emitter, and [`sphere`], pyribs' sphere linear
//!   projection benchmark (see `examples/sphere.rs` and `docs/performance.md`).
//!
//! ```
//! use swarm_qd::{BehaviourDim, Child, CycleQd, CycleQdConfig};
//!
//! # fn main() -> Result<(), swarm_qd::QdError> {
//! // Two skills, each binned over [0, 1] in 10 bins when it serves as a behaviour.
//! let skills = vec![
//!     BehaviourDim::new("coding", 0.0, 1.0, 10),
//!     BehaviourDim::new("sql", 0.0, 1.0, 10),
//! ];
//! let mut qd = CycleQd::<u32>::new(CycleQdConfig::new(skills))?;
//! // The experts seed every archive (the genome here is just an id).
//! qd.insert_initial(0, vec![0.8, 0.1])?;
//! qd.insert_initial(1, vec![0.2, 0.7])?;
//! for genome in 2..10 {
//!     // Hand out a child, "evaluate" it, and tell the result.
//!     let ticket = qd.ask(1)?.remove(0);
//!     let mean = |k: usize| ticket.parents.iter().map(|p| p.scores[k]).sum::<f64>() / 2.0;
//!     let scores = vec![mean(0) + 0.05, mean(1) + 0.05];
//!     qd.tell(ticket.id, Child::new(genome, scores))?;
//! }
//! let last = qd.history().last().expect("one record per generation");
//! assert_eq!(last.generation, 8);
//! assert!(last.archives[0].qd_score > 0.0);
//! # Ok(())
//! # }
//! ```

mod archive;
mod cycle;
mod error;
mod map_elites;
mod metrics;
mod sampling;
mod sphere;
mod state;

pub use archive::{bin_of, BehaviourDim, Elite, EliteMeta, GridArchive, InsertOutcome};
pub use cycle::{Child, CycleQd, CycleQdConfig, Parent, Ticket};
pub use error::{QdError, Result};
pub use map_elites::{MapElites, MapElitesConfig, TellSummary};
pub use metrics::{ArchiveMetrics, GenerationMetrics, MetricsHistory};
pub use sampling::{EliteFormula, ParentSampler};
pub use sphere::{
    run_sphere, sphere, sphere_config, SphereResult, PYRIBS_PUBLISHED_COVERAGE,
    PYRIBS_PUBLISHED_QD_SCORE,
};
pub use state::{QdState, STATE_FORMAT, STATE_VERSION};
