//! Run configs: the raw TOML ([`RawConfig`], unknown keys are errors) and the resolved
//! [`RunPlan`] with no defaults left to apply.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use swarm_merge::{CrossoverParams, Rank};
use swarm_model::Precision;
use swarm_qd::{EliteFormula, ParentSampler};
use swarm_tasks::{Skill, Split};

use crate::error::{EvolveError, Result};

/// The config file as written. Every table rejects unknown keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name of the swarm (the directory under `agents/`).
    pub name: String,
    /// Seed of the run (QD scheduler, operators, synthetic suites unless a skill says).
    #[serde(default)]
    pub seed: u64,
    /// Run directory: checkpoints, logs, report (default `runs/<name>`).
    pub run_dir: Option<PathBuf>,
    /// Where the swarm is exported (default `agents/<name>`).
    pub output: Option<PathBuf>,
    pub base: RawModel,
    pub experts: Vec<RawExpert>,
    pub skills: Vec<RawSkill>,
    #[serde(default)]
    pub qd: RawQd,
    #[serde(default)]
    pub model: RawModelSettings,
    #[serde(default)]
    pub baselines: RawBaselines,
}

/// `[base]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// A local HF dir, a `.gguf` file, a hub id (`org/name[@rev]`), or `toy:<name>`.
    pub model: String,
    /// A built-in architecture used by `--dry-run` when the model is not on disk
    /// (`llama3-8b`).
    pub architecture: Option<String>,
}

/// `[[experts]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpert {
    /// Short name (defaults to the skill's name).
    pub name: Option<String>,
    /// Model reference, as for the base.
    pub model: String,
    /// The skill this expert was fine-tuned for: SVD mutation in that skill's generations
    /// follows this expert's singular vectors.
    pub skill: String,
}

/// `[[skills]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSkill {
    /// `coding`, `database` or `os`.
    pub name: String,
    /// Suite name (see `swarm_tasks::SUITES`); default `synthetic`.
    pub suite: Option<String>,
    /// Split used for fitness (default `validation`).
    pub split: Option<String>,
    /// At most this many fitness episodes (synthetic suites generate exactly this many).
    pub episodes: Option<usize>,
    /// Suite of the final report (default: the same suite).
    pub test_suite: Option<String>,
    /// Split of the final report (default `test`).
    pub test_split: Option<String>,
    /// At most this many test episodes.
    pub test_episodes: Option<usize>,
    /// Seed of synthetic suites (default: the run seed).
    pub suite_seed: Option<u64>,
    /// Bins of this skill's behaviour axis (default 15, as in the paper).
    pub bins: Option<usize>,
    /// Range of the axis; default: 85% of the weakest expert's score to 115% of the
    /// strongest's (the paper's rule), measured on the fitness split before the run.
    pub range: Option<[f64; 2]>,
}

/// `[qd]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQd {
    /// Generations (children) to run (default 100).
    pub generations: Option<u64>,
    /// Generations per quality skill before moving on (default 1).
    pub quality_interval: Option<u64>,
    /// Keep this skill as the quality forever (ablation: no cycling).
    pub fixed_quality: Option<String>,
    /// `elite` (paper), `elite_released` (released code's formula) or `uniform`.
    pub sampler: Option<String>,
    /// Crossover weights ω ~ N(μ, σ²); default μ = 1.
    pub crossover_mean: Option<f64>,
    /// Default σ = 0.01.
    pub crossover_std: Option<f64>,
    /// `svd` (default) or `none`.
    pub mutation: Option<String>,
    /// SVD mutation scale: w ~ U[0, w_max] (default 0.1, the released code's rate).
    pub w_max: Option<f64>,
    /// Children evaluated at once (default 1).
    pub workers: Option<usize>,
}

/// `[model]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelSettings {
    /// `cpu`, `cuda`, `cuda:N` (default `cpu`).
    pub device: Option<String>,
    /// `f32`, `f16`, `bf16`, `q8_0` (default: the device's).
    pub precision: Option<String>,
    /// Factor rank: `"full"` or a number (default full).
    pub rank: Option<toml::Value>,
    /// Conversations per generation batch (default 32).
    pub batch_size: Option<usize>,
    /// Tokens generated per answer (default 128).
    pub max_new_tokens: Option<usize>,
}

/// `[baselines]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBaselines {
    /// Evaluate the classic merges for the report (default true).
    pub enabled: Option<bool>,
    /// Task-arithmetic λ candidates, chosen on validation (default [0.3, 0.5, 0.7, 1.0]).
    pub task_arithmetic_lambdas: Option<Vec<f64>>,
    /// TIES density candidates, chosen on validation (default [0.2, 0.5, 0.8]).
    pub ties_densities: Option<Vec<f64>>,
    /// TIES λ (default 1.0).
    pub ties_lambda: Option<f64>,
}

/// How a mutation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mutation {
    /// No mutation (ablation).
    None,
    /// SVD mutation on the quality skill's expert with `w ~ U[0, w_max]`.
    Svd { w_max: f64 },
}

/// A model reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    /// As written (`toy:` references already expanded to paths).
    pub reference: String,
    /// Built-in architecture for dry runs.
    pub architecture: Option<String>,
}

/// An expert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpertSpec {
    pub name: String,
    pub reference: String,
    /// Index of its skill in [`RunPlan::skills`].
    pub skill: usize,
}

/// One suite request, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteSpec {
    pub suite: String,
    pub split: Split,
    pub limit: Option<usize>,
    pub seed: u64,
}

impl SuiteSpec {
    /// The request for `skill`.
    pub fn request(&self, skill: Skill) -> swarm_tasks::SuiteRequest {
        swarm_tasks::SuiteRequest {
            skill,
            suite: self.suite.clone(),
            split: self.split,
            limit: self.limit,
            seed: self.seed,
        }
    }
}

/// A skill, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkillSpec {
    pub skill: Skill,
    /// Fitness episodes.
    pub fitness: SuiteSpec,
    /// Report episodes.
    pub test: SuiteSpec,
    pub bins: usize,
    /// Fixed range, or `None` for the paper's rule.
    pub range: Option<(f64, f64)>,
}

impl SkillSpec {
    pub fn name(&self) -> &'static str {
        self.skill.name()
    }
}

/// The QD part, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QdPlan {
    pub generations: u64,
    pub quality_interval: u64,
    /// True when the quality never cycles (skills are reordered so it is skill 0).
    pub fixed_quality: bool,
    #[serde(skip)]
    pub sampler: ParentSampler,
    pub sampler_name: String,
    #[serde(skip)]
    pub crossover: CrossoverParams,
    pub crossover_mean: f64,
    pub crossover_std: f64,
    pub mutation: Mutation,
    pub workers: usize,
}

/// Model settings, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPlan {
    pub device: String,
    /// `None`: the device's default.
    #[serde(skip)]
    pub precision: Option<Precision>,
    #[serde(skip)]
    pub rank: Rank,
    pub rank_name: String,
    pub batch_size: usize,
    pub max_new_tokens: usize,
}

/// Baselines, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselinePlan {
    pub enabled: bool,
    pub task_arithmetic_lambdas: Vec<f64>,
    pub ties_densities: Vec<f64>,
    pub ties_lambda: f64,
}

/// A run config with every default applied and every value checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPlan {
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub output: PathBuf,
    pub base: ModelSpec,
    pub experts: Vec<ExpertSpec>,
    pub skills: Vec<SkillSpec>,
    pub qd: QdPlan,
    pub model: ModelPlan,
    pub baselines: BaselinePlan,
}

impl RunPlan {
    /// Reads and resolves a config file.
    pub fn from_file(path: &Path) -> Result<RunPlan> {
        let text = std::fs::read_to_string(path).map_err(EvolveError::io(path))?;
        Self::from_toml(&text, path)
    }

    /// Parses and resolves config text; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<RunPlan> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| EvolveError::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.resolve(path)
    }

    /// Index of the expert of skill `s`.
    pub fn expert_of_skill(&self, s: usize) -> Option<usize> {
        self.experts.iter().position(|e| e.skill == s)
    }

    /// Skill names in order.
    pub fn skill_names(&self) -> Vec<String> {
        self.skills.iter().map(|s| s.name().to_string()).collect()
    }
}

/// Expands `toy:<name>` to the toy world's model dir (swarm-model owns the rule, so that
/// swarm-serve expands manifests the same way).
pub fn expand_reference(reference: &str) -> String {
    swarm_model::expand_toy_reference(reference)
}

/// Where `swarm bootstrap` puts the toy world.
pub fn toy_dir() -> PathBuf {
    swarm_model::toy_models_dir()
}

impl RawConfig {
    /// Resolves the raw config; `path` names the file in errors.
    pub fn resolve(&self, path: &Path) -> Result<RunPlan> {
        let bad = |key: &str, value: String, reason: &str| EvolveError::Config {
            path: path.to_path_buf(),
            key: key.to_string(),
            value,
            reason: reason.to_string(),
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            || self.name.starts_with('.')
        {
            return Err(bad(
                "name",
                format!("{:?}", self.name),
                "use letters, digits, '-', '_' and '.' (it names a directory)",
            ));
        }
        // Skills.
        if self.skills.is_empty() {
            return Err(bad("skills", "[]".into(), "at least one skill is needed"));
        }
        let mut skills = Vec::with_capacity(self.skills.len());
        for (i, s) in self.skills.iter().enumerate() {
            let key = |k: &str| format!("skills[{i}].{k}");
            let skill = Skill::from_str(&s.name).map_err(|_| {
                bad(
                    &key("name"),
                    format!("{:?}", s.name),
                    "expected coding, database or os",
                )
            })?;
            if skills.iter().any(|x: &SkillSpec| x.skill == skill) {
                return Err(bad(
                    &key("name"),
                    format!("{:?}", s.name),
                    "skill listed twice",
                ));
            }
            let split = |k: &str, v: &Option<String>, default: Split| -> Result<Split> {
                match v {
                    None => Ok(default),
                    Some(text) => Split::from_str(text).map_err(|_| {
                        bad(
                            &key(k),
                            format!("{text:?}"),
                            "expected train, validation or test",
                        )
                    }),
                }
            };
            let fitness_split = split("split", &s.split, Split::Validation)?;
            let test_split = split("test_split", &s.test_split, Split::Test)?;
            if fitness_split == Split::Test {
                return Err(bad(
                    &key("split"),
                    "\"test\"".into(),
                    "fitness must not use the test split (it is kept for the final report)",
                ));
            }
            let suite = s.suite.clone().unwrap_or_else(|| "synthetic".into());
            let test_suite = s.test_suite.clone().unwrap_or_else(|| suite.clone());
            for (k, name, sp) in [
                ("suite", &suite, fitness_split),
                ("test_suite", &test_suite, test_split),
            ] {
                let info = swarm_tasks::SUITES
                    .iter()
                    .find(|x| x.skill == skill && x.name == name.as_str())
                    .ok_or_else(|| {
                        bad(
                            &key(k),
                            format!("{name:?}"),
                            &format!(
                                "unknown suite for {skill}; known: {}",
                                swarm_tasks::SUITES
                                    .iter()
                                    .filter(|x| x.skill == skill)
                                    .map(|x| x.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                if !info.splits.contains(&sp) {
                    return Err(bad(
                        &key(k),
                        format!("{name:?}"),
                        &format!("suite has no {sp} split"),
                    ));
                }
            }
            for (k, v) in [("episodes", s.episodes), ("test_episodes", s.test_episodes)] {
                if v == Some(0) {
                    return Err(bad(&key(k), "0".into(), "must be at least 1"));
                }
            }
            let bins = s.bins.unwrap_or(15);
            if bins == 0 || bins > 1000 {
                return Err(bad(&key("bins"), bins.to_string(), "must be in 1..=1000"));
            }
            let range = match s.range {
                None => None,
                Some([lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi => Some((lo, hi)),
                Some([lo, hi]) => {
                    return Err(bad(
                        &key("range"),
                        format!("[{lo}, {hi}]"),
                        "need finite lo < hi",
                    ))
                }
            };
            let seed = s.suite_seed.unwrap_or(self.seed);
            skills.push(SkillSpec {
                skill,
                fitness: SuiteSpec {
                    suite,
                    split: fitness_split,
                    limit: s.episodes,
                    seed,
                },
                test: SuiteSpec {
                    suite: test_suite,
                    split: test_split,
                    limit: s.test_episodes,
                    seed,
                },
                bins,
                range,
            });
        }
        // QD settings (before experts: a fixed quality reorders the skills).
        let q = &self.qd;
        let generations = q.generations.unwrap_or(100);
        let quality_interval = q.quality_interval.unwrap_or(1);
        if quality_interval == 0 {
            return Err(bad("qd.quality_interval", "0".into(), "must be at least 1"));
        }
        let mut fixed_quality = false;
        if let Some(name) = &q.fixed_quality {
            let skill = Skill::from_str(name)
                .map_err(|_| bad("qd.fixed_quality", format!("{name:?}"), "not a skill"))?;
            let pos = skills
                .iter()
                .position(|s| s.skill == skill)
                .ok_or_else(|| {
                    bad(
                        "qd.fixed_quality",
                        format!("{name:?}"),
                        "not one of the run's skills",
                    )
                })?;
            skills[..=pos].rotate_right(1);
            fixed_quality = true;
        }
        let quality_interval = if fixed_quality {
            u64::MAX / 4
        } else {
            quality_interval
        };
        let sampler_name = q.sampler.clone().unwrap_or_else(|| "elite".into());
        let sampler = match sampler_name.as_str() {
            "elite" => ParentSampler::Elite {
                formula: EliteFormula::paper(),
            },
            "elite_released" => ParentSampler::Elite {
                formula: EliteFormula::released_code(),
            },
            "uniform" | "random" => ParentSampler::Uniform,
            other => {
                return Err(bad(
                    "qd.sampler",
                    format!("{other:?}"),
                    "expected elite, elite_released or uniform",
                ))
            }
        };
        let crossover_mean = q.crossover_mean.unwrap_or(1.0);
        let crossover_std = q.crossover_std.unwrap_or(0.01);
        if !crossover_mean.is_finite() || crossover_mean <= 0.0 {
            return Err(bad(
                "qd.crossover_mean",
                crossover_mean.to_string(),
                "must be > 0",
            ));
        }
        if !crossover_std.is_finite() || crossover_std < 0.0 {
            return Err(bad(
                "qd.crossover_std",
                crossover_std.to_string(),
                "must be >= 0",
            ));
        }
        let w_max = q.w_max.unwrap_or(0.1);
        let mutation = match q.mutation.as_deref().unwrap_or("svd") {
            "svd" => {
                if !w_max.is_finite() || w_max < 0.0 {
                    return Err(bad("qd.w_max", w_max.to_string(), "must be >= 0"));
                }
                Mutation::Svd { w_max }
            }
            "none" => Mutation::None,
            other => {
                return Err(bad(
                    "qd.mutation",
                    format!("{other:?}"),
                    "expected svd or none",
                ))
            }
        };
        let workers = q.workers.unwrap_or(1);
        if workers == 0 || workers > 64 {
            return Err(bad("qd.workers", workers.to_string(), "must be in 1..=64"));
        }
        // Experts: one per skill.
        let mut experts: Vec<ExpertSpec> = Vec::with_capacity(self.experts.len());
        for (i, e) in self.experts.iter().enumerate() {
            let key = |k: &str| format!("experts[{i}].{k}");
            let skill = Skill::from_str(&e.skill)
                .map_err(|_| bad(&key("skill"), format!("{:?}", e.skill), "not a skill"))?;
            let s = skills
                .iter()
                .position(|x| x.skill == skill)
                .ok_or_else(|| {
                    bad(
                        &key("skill"),
                        format!("{:?}", e.skill),
                        "not one of the run's [[skills]]",
                    )
                })?;
            if experts.iter().any(|x| x.skill == s) {
                return Err(bad(
                    &key("skill"),
                    format!("{:?}", e.skill),
                    "two experts for one skill",
                ));
            }
            let name = e.name.clone().unwrap_or_else(|| skill.name().to_string());
            if experts.iter().any(|x| x.name == name) {
                return Err(bad(&key("name"), format!("{name:?}"), "name used twice"));
            }
            if e.model.trim().is_empty() {
                return Err(bad(&key("model"), "\"\"".into(), "empty model reference"));
            }
            experts.push(ExpertSpec {
                name,
                reference: expand_reference(&e.model),
                skill: s,
            });
        }
        if let Some(s) = (0..skills.len()).find(|s| !experts.iter().any(|e| e.skill == *s)) {
            return Err(bad(
                "experts",
                format!("{} experts", experts.len()),
                &format!("skill {} has no expert (SVD mutation and the default bin range need one per skill)", skills[s].name()),
            ));
        }
        if self.base.model.trim().is_empty() {
            return Err(bad("base.model", "\"\"".into(), "empty model reference"));
        }
        if let Some(a) = &self.base.architecture {
            if crate::plan::builtin_architecture(a).is_none() {
                return Err(bad(
                    "base.architecture",
                    format!("{a:?}"),
                    "unknown; known: llama3-8b",
                ));
            }
        }
        // Model settings.
        let m = &self.model;
        let device = m.device.clone().unwrap_or_else(|| "cpu".into());
        let precision = match &m.precision {
            None => None,
            Some(p) => Some(Precision::from_str(p).map_err(|_| {
                bad(
                    "model.precision",
                    format!("{p:?}"),
                    "expected f32, f16, bf16 or q8_0",
                )
            })?),
        };
        let rank = match &m.rank {
            None => Rank::Full,
            Some(toml::Value::String(s)) => Rank::from_str(s).map_err(|_| {
                bad(
                    "model.rank",
                    format!("{s:?}"),
                    "expected \"full\" or a positive integer",
                )
            })?,
            Some(toml::Value::Integer(r)) if *r > 0 => Rank::Top(*r as usize),
            Some(v) => {
                return Err(bad(
                    "model.rank",
                    v.to_string(),
                    "expected \"full\" or a positive integer",
                ))
            }
        };
        let batch_size = m.batch_size.unwrap_or(32);
        if batch_size == 0 {
            return Err(bad("model.batch_size", "0".into(), "must be at least 1"));
        }
        let max_new_tokens = m.max_new_tokens.unwrap_or(128);
        if max_new_tokens == 0 {
            return Err(bad(
                "model.max_new_tokens",
                "0".into(),
                "must be at least 1",
            ));
        }
        // Baselines.
        let b = &self.baselines;
        let lambdas = b
            .task_arithmetic_lambdas
            .clone()
            .unwrap_or_else(|| vec![0.3, 0.5, 0.7, 1.0]);
        let densities = b
            .ties_densities
            .clone()
            .unwrap_or_else(|| vec![0.2, 0.5, 0.8]);
        if lambdas.is_empty() || lambdas.iter().any(|l| !l.is_finite() || *l <= 0.0) {
            return Err(bad(
                "baselines.task_arithmetic_lambdas",
                format!("{lambdas:?}"),
                "need positive values",
            ));
        }
        if densities.is_empty() || densities.iter().any(|d| !(*d > 0.0 && *d <= 1.0)) {
            return Err(bad(
                "baselines.ties_densities",
                format!("{densities:?}"),
                "need values in (0, 1]",
            ));
        }
        let ties_lambda = b.ties_lambda.unwrap_or(1.0);
        if !ties_lambda.is_finite() || ties_lambda <= 0.0 {
            return Err(bad(
                "baselines.ties_lambda",
                ties_lambda.to_string(),
                "must be > 0",
            ));
        }
        Ok(RunPlan {
            name: self.name.clone(),
            source: path.to_path_buf(),
            seed: self.seed,
            run_dir: self
                .run_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(&self.name)),
            output: self
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from("agents").join(&self.name)),
            base: ModelSpec {
                reference: expand_reference(&self.base.model),
                architecture: self.base.architecture.clone(),
            },
            experts,
            skills,
            qd: QdPlan {
                generations,
                quality_interval,
                fixed_quality,
                sampler,
                sampler_name,
                crossover: CrossoverParams {
                    mean: crossover_mean,
                    std: crossover_std,
                },
                crossover_mean,
                crossover_std,
                mutation,
                workers,
            },
            model: ModelPlan {
                device,
                precision,
                rank,
                rank_name: rank.to_string(),
                batch_size,
                max_new_tokens,
            },
            baselines: BaselinePlan {
                enabled: b.enabled.unwrap_or(true),
                task_arithmetic_lambdas: lambdas,
                ties_densities: densities,
                ties_lambda,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[base]
model = "/tmp/base"
[[experts]]
model = "/tmp/c"
skill = "coding"
[[experts]]
model = "/tmp/d"
skill = "database"
[[skills]]
name = "coding"
[[skills]]
name = "database"
episodes = 5
"#;

    fn plan(text: &str) -> Result<RunPlan> {
        RunPlan::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_the_papers_defaults() -> anyhow::Result<()> {
        let p = plan(MINIMAL)?;
        assert_eq!(p.skills.len(), 2);
        assert_eq!(p.skills[0].bins, 15);
        assert_eq!(p.skills[0].range, None);
        assert_eq!(p.skills[0].fitness.split, Split::Validation);
        assert_eq!(p.skills[0].test.split, Split::Test);
        assert_eq!(p.skills[1].fitness.limit, Some(5));
        assert_eq!(p.qd.quality_interval, 1);
        assert_eq!(p.qd.mutation, Mutation::Svd { w_max: 0.1 });
        assert_eq!(p.expert_of_skill(1), Some(1));
        assert_eq!(p.run_dir, PathBuf::from("runs/t"));
        Ok(())
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_file() {
        let text = MINIMAL.replace("[base]", "[base]\nmodle = 1");
        let e = plan(&text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("test.toml") && e.contains("modle"), "{e}");
        let text = format!("{MINIMAL}\n[qd]\ngenerationz = 3\n");
        let e = plan(&text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("generationz"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (needle, text) in [
            (
                "skills[0].split",
                MINIMAL.replace("name = \"coding\"", "name = \"coding\"\nsplit = \"test\""),
            ),
            (
                "qd.sampler",
                format!("{MINIMAL}\n[qd]\nsampler = \"best\"\n"),
            ),
            ("model.rank", format!("{MINIMAL}\n[model]\nrank = 0\n")),
            (
                "skills[1].range",
                MINIMAL.replace("episodes = 5", "range = [1.0, 0.5]"),
            ),
            (
                "experts",
                MINIMAL.replace("skill = \"database\"", "skill = \"coding\""),
            ),
        ] {
            let e = plan(&text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn fixed_quality_moves_the_skill_first() -> anyhow::Result<()> {
        let p = plan(&format!("{MINIMAL}\n[qd]\nfixed_quality = \"database\"\n"))?;
        assert_eq!(p.skills[0].skill, Skill::Database);
        assert_eq!(p.experts[1].skill, 0);
        assert!(p.qd.fixed_quality);
        Ok(())
    }

    #[test]
    fn shipped_configs_resolve() -> anyhow::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunPlan::from_file(&path)?;
                n += 1;
            }
        }
        assert!(n >= 2, "configs/ holds {n} configs");
        Ok(())
    }
}
