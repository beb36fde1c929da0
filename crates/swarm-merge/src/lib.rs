//! # swarm-merge
//!
//! Task vectors, their SVD factorisation, CycleQD genomes and operators, streaming
//! materialisation, and the classic merge methods. It knows tensors, not skills.
//!
//! - [`FactorSet`]: every expert's task vector `τ_k = θ_k − θ_base`, factorised per matrix
//!   (`U_k diag(S_k) V_kᵀ`, full rank or top r) and kept whole for 1-D tensors.
//! - [`Genome`]: an elite as coefficients in factor space (`W = W_base + Σ_k U_k diag(c_k)
//!   V_kᵀ`), with the CycleQD operators: [`Genome::crossover`], [`Genome::mutate`] (SVD
//!   mutation), [`Genome::aggregate`]; [`save_genomes`]/[`load_genomes`].
//! - [`materialise`]: a genome to dense weights, tensor by tensor, into memory or an HF dir.
//! - [`MergePlan`]: mergekit-style merges (linear, task arithmetic, TIES, DARE, SLERP) read
//!   from mergekit YAML and streamed one tensor at a time into an HF dir.
//!
//! ```
//! use swarm_merge::{testing, FactorSet, FactoriseOptions, Genome, CrossoverParams};
//! use swarm_model::TensorSource;
//! use rand::SeedableRng;
//!
//! let config = testing::tiny_config();
//! let base = testing::random_model(&config, 1);
//! let coder = testing::perturbed(&base, 2, 0.1);
//! let writer = testing::perturbed(&base, 3, 0.1);
//! let experts: [(&str, &dyn TensorSource); 2] = [("coder", &coder), ("writer", &writer)];
//! let factors = FactorSet::factorise(&base, &experts, &FactoriseOptions::default())?;
//!
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let (a, b) = (Genome::expert(factors.layout(), 0)?, Genome::expert(factors.layout(), 1)?);
//! let mut child = a.crossover(&b, CrossoverParams::default(), &mut rng)?;
//! child.mutate(0, 0.1, &mut rng)?;
//! let weights = swarm_merge::materialise_to_weights(
//!     &base, &factors, &child, &candle_core::Device::Cpu)?;
//! assert_eq!(weights.len(), base.len());
//! # Ok::<(), swarm_merge::MergeError>(())
//! ```

mod error;
mod factor;
mod genome;
mod mapping;
mod materialise;
pub mod merge;
mod reader;
mod sink;
mod swarm_manifest;
pub mod testing;
mod writer;

pub use error::{MergeError, Result};
pub use factor::{
    check_same_tensors, model_hash, ExpertInfo, FactorMeta, FactorSet, FactoredTensor,
    FactoriseOptions, Rank, SvdFactors, TensorFactors, TensorReport,
};
pub use genome::{load_genomes, save_genomes, CrossoverParams, Genome, GenomeLayout, Slot};
pub use materialise::{
    materialise, materialise_flop, materialise_tensor, materialise_to_dir, materialise_to_weights,
    DirOutput,
};
pub use merge::plan::{MergeMethod, MergePlan, PlanKind, PlanModel};
pub use merge::run::{run, run_with, InputModel, MergeReport, RunOptions};
pub use merge::task_arithmetic::{Consensus, GtaParams, Sparsify};
pub use reader::SafetensorsReader;
pub use swarm_manifest::{
    CellEntry, EliteEntry, FactorEntry, ModelEntry, SkillEntry, SwarmManifest, MEAN_EPISODE_SCORE,
    SWARM_FORMAT, SWARM_GENOMES_FILE, SWARM_MANIFEST_FILE,
};
pub use writer::{parse_dtype, torch_dtype_name, HfDirWriter, SafetensorsStreamWriter, TensorSpec};
