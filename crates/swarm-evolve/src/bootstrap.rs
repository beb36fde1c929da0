//! The toy world on demand: a run whose config names toy models (`toy:base`, `toy:coding`, ...)
//! builds them first with swarm-train's `bootstrap` when they are not on disk, so that
//! `swarm evolve` with no arguments works on a fresh checkout.
//!
//! Any missing model rebuilds the whole world: the experts' task vectors only mean something
//! against the base they were fine-tuned from, so models of two different builds must never
//! be mixed.

use std::path::{Path, PathBuf};

use swarm_train::{bootstrap, BootstrapOptions, Preset, WorldReport, WorldSpec, MODEL_NAMES};

use crate::config::{toy_dir, RunPlan};
use crate::error::{EvolveError, Result};

/// How to build the toy world when a run needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldBootstrap {
    /// The world's directory: models of the plan under it are the toy world's.
    pub dir: PathBuf,
    pub preset: Preset,
    /// Seed of the world's data, tokenizer and training.
    pub seed: u64,
    /// Score the new models on the test splits (as `swarm bootstrap` does).
    pub evaluate: bool,
    /// swarm-train's progress bars.
    pub progress: bool,
}

impl WorldBootstrap {
    /// What `swarm bootstrap --seed <run seed>` builds: the full preset in the swarm cache.
    pub fn toy(plan: &RunPlan) -> WorldBootstrap {
        WorldBootstrap {
            dir: toy_dir(),
            preset: Preset::Full,
            seed: plan.seed,
            evaluate: true,
            progress: true,
        }
    }

    /// The model dirs of `plan` (base first, then the experts) that lie in this world's
    /// directory: none for a config of other models.
    pub fn models_in_world(&self, plan: &RunPlan) -> Vec<PathBuf> {
        std::iter::once(&plan.base.reference)
            .chain(plan.experts.iter().map(|e| &e.reference))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(&self.dir))
            .collect()
    }

    /// The [`models_in_world`](Self::models_in_world) that are not on disk. A model counts
    /// as present when its `config.json` is there: swarm-model writes a model dir into a
    /// staging dir and renames it into place.
    pub fn missing(&self, plan: &RunPlan) -> Vec<PathBuf> {
        self.models_in_world(plan)
            .into_iter()
            .filter(|p| !p.join("config.json").is_file())
            .collect()
    }

    /// One line for `--dry-run` and the logs, or `None` when nothing is missing.
    pub fn describe(&self, plan: &RunPlan) -> Option<String> {
        let missing = self.missing(plan);
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "the toy world is missing ({}): it would first be built in {} (swarm bootstrap --preset {} --seed {})",
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.dir.display(),
            self.preset.name(),
            self.seed
        ))
    }

    /// Builds the world if `plan` needs one of its models and any is missing. Returns the
    /// bootstrap's report, or `None` when everything was already there.
    pub fn ensure(&self, plan: &RunPlan) -> Result<Option<WorldReport>> {
        let missing = self.missing(plan);
        if missing.is_empty() {
            return Ok(None);
        }
        // Refuse before hours of training if the world would not hold the model anyway.
        if let Some(p) = missing.iter().find(|p| !self.is_world_model(p)) {
            return Err(EvolveError::RunDir {
                path: p.clone(),
                reason: format!(
                    "is not a model of the toy world (it has {} under {})",
                    MODEL_NAMES.join(", "),
                    self.dir.display()
                ),
            });
        }
        tracing::info!(
            dir = %self.dir.display(),
            preset = self.preset.name(),
            seed = self.seed,
            missing = missing.len(),
            "the toy world is missing: building it (swarm bootstrap)"
        );
        let report = bootstrap(&BootstrapOptions {
            spec: WorldSpec::preset(self.preset),
            seed: self.seed,
            out: self.dir.clone(),
            progress: self.progress,
            evaluate: self.evaluate,
        })?;
        tracing::info!(
            seconds = report.timings.total.as_secs_f64(),
            parameters = report.parameters,
            "toy world built"
        );
        if let Some(p) = self.missing(plan).first() {
            return Err(EvolveError::RunDir {
                path: p.clone(),
                reason: "still missing after the toy world was built".into(),
            });
        }
        Ok(Some(report))
    }

    fn is_world_model(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| MODEL_NAMES.contains(&n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_in(world: &Path) -> anyhow::Result<RunPlan> {
        let w = world.display();
        let text = format!(
            r#"
name = "t"
seed = 7
[base]
model = "{w}/base"
[[experts]]
model = "{w}/coding"
skill = "coding"
[[experts]]
model = "/elsewhere/database"
skill = "database"
[[skills]]
name = "coding"
[[skills]]
name = "database"
"#
        );
        Ok(RunPlan::from_toml(&text, Path::new("t.toml"))?)
    }

    #[test]
    fn only_missing_models_inside_the_world_count() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let world = tmp.path().join("toy");
        let plan = plan_in(&world)?;
        let wb = WorldBootstrap {
            dir: world.clone(),
            ..WorldBootstrap::toy(&plan)
        };
        assert_eq!(wb.seed, 7);
        assert_eq!(wb.preset, Preset::Full);
        // The expert outside the world is not the bootstrap's business.
        assert_eq!(
            wb.missing(&plan),
            vec![world.join("base"), world.join("coding")]
        );
        let line = wb.describe(&plan).unwrap_or_default();
        assert!(line.contains("--preset full --seed 7"), "{line}");
        std::fs::create_dir_all(world.join("base"))?;
        std::fs::write(world.join("base/config.json"), "{}")?;
        assert_eq!(wb.missing(&plan), vec![world.join("coding")]);
        std::fs::create_dir_all(world.join("coding"))?;
        std::fs::write(world.join("coding/config.json"), "{}")?;
        assert!(wb.missing(&plan).is_empty());
        assert_eq!(wb.describe(&plan), None);
        // Nothing missing: nothing is trained.
        assert!(wb.ensure(&plan)?.is_none());
        Ok(())
    }

    #[test]
    fn a_model_the_world_does_not_make_is_refused_before_training() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let world = tmp.path().join("toy");
        let mut plan = plan_in(&world)?;
        plan.base.reference = world.join("bigger-base").display().to_string();
        let wb = WorldBootstrap {
            dir: world.clone(),
            ..WorldBootstrap::toy(&plan)
        };
        let e = wb
            .ensure(&plan)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("bigger-base") && e.contains("not a model of the toy world"),
            "{e}"
        );
        assert!(!world.exists(), "nothing was built");
        Ok(())
    }
}
