//! The toy world (`swarm bootstrap`): a tokenizer, a base trained on a broad mix, one expert
//! per skill fine-tuned from it, four HF dirs, and their scores on each skill's test split.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use swarm_model::{
    save_hf_dir, ChatTemplate, Llama, LlamaConfig, Precision, Pretrained, Tokenizer, Weights,
    CHATML_TEMPLATE,
};
use swarm_tasks::{generate_synthetic, run_episodes, Checker, Limits, RunOptions, Skill, Split};

use crate::agent::ModelAgent;
use crate::corpus::{general_documents, shuffle, skill_documents, Document};
use crate::data::{encode_all, Sequence};
use crate::error::{Result, TrainError};
use crate::model::TrainableLlama;
use crate::tokenizer::{train_tokenizer, IM_END, IM_START};
use crate::trainer::{progress_bar, train, train_with_bar, TrainReport, TrainSettings};

/// The names of the four models, in table order.
pub const MODEL_NAMES: [&str; 4] = ["base", "coding", "database", "os"];

/// A named size of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Seconds: a pipeline check for CI (scores mean nothing).
    Micro,
    /// Minutes on 2 cores: the world the targets are measured on.
    Full,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Micro => "micro",
            Preset::Full => "full",
        }
    }
}

impl FromStr for Preset {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "micro" => Ok(Preset::Micro),
            "full" => Ok(Preset::Full),
            other => Err(TrainError::config(
                "preset",
                format!("unknown preset `{other}`; expected micro or full"),
            )),
        }
    }
}

/// How one skill's expert trains differently from the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertOverride {
    pub skill: Skill,
    /// Optimiser steps instead of `WorldSpec::expert.steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Peak learning rate instead of `WorldSpec::expert.lr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

/// How many of one skill's chats the base's mix holds, instead of `base_skill_examples`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSkillOverride {
    pub skill: Skill,
    pub examples: usize,
}

/// Everything that defines a world besides its seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorldSpec {
    pub preset: Preset,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_positions: usize,
    /// Pre-tokenise every digit as its own token, as Llama and SmolLM2 do, so that a number
    /// in a prompt is copied digit by digit instead of through one learned token per number.
    #[serde(default)]
    pub split_digits: bool,
    /// Training sequences longer than this are dropped.
    pub max_seq_len: usize,
    /// General documents in the base mix.
    pub general_docs: usize,
    /// Share of the general documents that are chats.
    pub general_chat_share: f64,
    /// Examples of each skill in the base mix (the first ones of the expert's data).
    pub base_skill_examples: usize,
    /// Skills whose share of the base mix differs from `base_skill_examples` (none: every
    /// skill alike).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_skill_overrides: Vec<BaseSkillOverride>,
    pub base: TrainSettings,
    /// Examples of each skill for its expert.
    pub expert_examples: usize,
    /// Share of each expert's training sequences replayed from the base's own mix (general
    /// text and every skill's base-level chats): rehearsal, so that fine-tuning one skill does
    /// not rewrite what the base does on the others. 0 trains on the skill's chats alone.
    pub expert_replay: f64,
    pub expert: TrainSettings,
    /// Experts whose training differs from `expert` (none: every expert trains alike).
    #[serde(default)]
    pub expert_overrides: Vec<ExpertOverride>,
    /// Test episodes per skill.
    pub test_episodes: usize,
    pub max_new_tokens: usize,
    pub eval_batch: usize,
}

impl WorldSpec {
    /// The settings of a preset.
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Micro => Self {
                preset,
                vocab_size: 400,
                hidden_size: 32,
                intermediate_size: 64,
                num_layers: 2,
                num_heads: 2,
                num_kv_heads: 1,
                max_positions: 256,
                split_digits: false,
                max_seq_len: 256,
                general_docs: 200,
                general_chat_share: 0.3,
                base_skill_examples: 20,
                base_skill_overrides: Vec::new(),
                base: TrainSettings {
                    steps: 20,
                    batch_size: 8,
                    lr: 3e-3,
                    warmup: 5,
                    min_lr_ratio: 0.1,
                    weight_decay: 0.0,
                    grad_clip: 1.0,
                    seed: 0,
                },
                expert_examples: 40,
                expert_replay: 0.0,
                expert: TrainSettings {
                    steps: 5,
                    batch_size: 8,
                    lr: 1e-3,
                    warmup: 2,
                    min_lr_ratio: 0.1,
                    weight_decay: 0.0,
                    grad_clip: 1.0,
                    seed: 0,
                },
                expert_overrides: Vec::new(),
                test_episodes: 4,
                max_new_tokens: 16,
                eval_batch: 16,
            },
            Preset::Full => Self {
                preset,
                vocab_size: 1024,
                hidden_size: 96,
                intermediate_size: 288,
                num_layers: 4,
                num_heads: 3,
                num_kv_heads: 3,
                max_positions: 256,
                split_digits: true,
                max_seq_len: 256,
                general_docs: 3000,
                general_chat_share: 0.6,
                base_skill_examples: 600,
                base_skill_overrides: Vec::new(),
                // 1800 steps rather than 1300: at 1300 the base's weakest skill sat at 0-5%,
                // so some (skill, seed) of every setting probed landed on 0 of 100
                // (docs/results/toy-world.md); the fused training kernels paid for the steps.
                base: TrainSettings {
                    steps: 1800,
                    batch_size: 16,
                    lr: 3e-3,
                    warmup: 50,
                    min_lr_ratio: 0.1,
                    weight_decay: 0.0,
                    grad_clip: 1.0,
                    seed: 0,
                },
                expert_examples: 12000,
                expert_replay: 0.3,
                expert: TrainSettings {
                    steps: 1400,
                    batch_size: 16,
                    lr: 2e-3,
                    warmup: 30,
                    min_lr_ratio: 0.1,
                    weight_decay: 0.0,
                    grad_clip: 1.0,
                    seed: 0,
                },
                // The coding expert must copy the request's constants (thresholds, letters,
                // factors) into code; at lr 2e-3 it learned the functions' shapes but often
                // not the constants (test pass rate 43 / 38 / 68% over seeds 0-2), at 4e-3
                // 68 / 48 / 75% (examples/expert_probe from the same bases, 60 episodes;
                // docs/results/toy-world.md). The other experts already learned theirs.
                // It trains 1800 steps rather than 1400: after the fused kernels changed the last
                // bits of training, seed 2's coding expert fell from 74% to 44% at 1400 steps,
                // too close to the line to hold by design.
                expert_overrides: vec![ExpertOverride {
                    skill: Skill::Coding,
                    steps: Some(1800),
                    lr: Some(4e-3),
                }],
                // 100 rather than 60: the base's few percent must be told from zero.
                test_episodes: 100,
                max_new_tokens: 64,
                eval_batch: 50,
            },
        }
    }

    /// The training settings of `skill`'s expert: `expert` with that skill's overrides.
    pub fn expert_settings(&self, skill: Skill) -> TrainSettings {
        let mut settings = self.expert.clone();
        for o in self.expert_overrides.iter().filter(|o| o.skill == skill) {
            if let Some(steps) = o.steps {
                settings.steps = steps;
            }
            if let Some(lr) = o.lr {
                settings.lr = lr;
            }
        }
        settings
    }

    /// How many of `skill`'s chats the base's mix holds.
    pub fn base_examples(&self, skill: Skill) -> usize {
        self.base_skill_overrides
            .iter()
            .rev()
            .find(|o| o.skill == skill)
            .map_or(self.base_skill_examples, |o| o.examples)
    }

    /// Sets how many of `skill`'s chats the base's mix holds, replacing an earlier override.
    pub fn override_base_examples(&mut self, skill: Skill, examples: usize) {
        self.base_skill_overrides.retain(|o| o.skill != skill);
        self.base_skill_overrides
            .push(BaseSkillOverride { skill, examples });
    }

    /// Sets `skill`'s expert's steps and/or learning rate, replacing an earlier override.
    pub fn override_expert(&mut self, skill: Skill, steps: Option<usize>, lr: Option<f64>) {
        if steps.is_none() && lr.is_none() {
            return;
        }
        let o = match self.expert_overrides.iter_mut().find(|o| o.skill == skill) {
            Some(o) => o,
            None => {
                self.expert_overrides.push(ExpertOverride {
                    skill,
                    steps: None,
                    lr: None,
                });
                let last = self.expert_overrides.len() - 1;
                &mut self.expert_overrides[last]
            }
        };
        o.steps = steps.or(o.steps);
        o.lr = lr.or(o.lr);
    }

    /// The model's configuration for a tokenizer.
    pub fn llama_config(&self, tokenizer: &Tokenizer) -> LlamaConfig {
        LlamaConfig {
            vocab_size: tokenizer.vocab_size(),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: self.num_kv_heads,
            head_dim: self.hidden_size / self.num_heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: tokenizer.token_to_id(IM_START),
            eos_token_ids: tokenizer.token_to_id(IM_END).into_iter().collect(),
            torch_dtype: "float32".into(),
        }
    }
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub spec: WorldSpec,
    pub seed: u64,
    /// Gets `base/`, `coding/`, `database/`, `os/` (HF dirs) and `eval/`, `logits/`.
    pub out: PathBuf,
    pub progress: bool,
    /// Score the four models on the test splits.
    pub evaluate: bool,
}

/// One model's scores: pass rate per skill, in [`Skill::ALL`] order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelScores {
    pub model: String,
    pub pass_rate: Vec<f64>,
    pub passed: Vec<usize>,
    pub episodes: Vec<usize>,
}

/// Wall times of the phases.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub data: Duration,
    pub base: Duration,
    pub experts: Duration,
    pub save: Duration,
    pub eval: Duration,
    pub total: Duration,
}

/// What a bootstrap did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorldReport {
    pub preset: Preset,
    pub seed: u64,
    pub parameters: usize,
    pub vocab_size: usize,
    pub out: PathBuf,
    pub base_train: TrainReport,
    pub expert_train: Vec<(String, TrainReport)>,
    /// Training sequences dropped for length.
    pub dropped: usize,
    /// Empty when evaluation was skipped.
    pub scores: Vec<ModelScores>,
    pub timings: Timings,
    /// Threads candle and the checkers could use.
    pub threads: usize,
    /// The settings the world was built with (absent in reports written before it was
    /// recorded: those worlds were built with their preset's settings).
    #[serde(default)]
    pub spec: Option<WorldSpec>,
}

/// `skill` plus enough sequences of `replay` (cycled) to make up `share` of the result.
fn with_replay(skill: &[Sequence], replay: &[Sequence], share: f64) -> Vec<Sequence> {
    let mut out = skill.to_vec();
    if share > 0.0 && share < 1.0 && !replay.is_empty() {
        let n = (skill.len() as f64 * share / (1.0 - share)).round() as usize;
        out.extend(replay.iter().cycle().take(n).cloned());
    }
    out
}

/// The documents a world is trained on.
pub struct WorldDocuments {
    /// The base's mix: general documents plus the first few chats of each skill, shuffled.
    pub base: Vec<Document>,
    /// Each skill's training chats, in `Skill::ALL` order.
    pub skills: Vec<Vec<Document>>,
}

/// The documents of the world `spec` builds for `seed` (deterministic).
pub fn world_documents(spec: &WorldSpec, seed: u64) -> WorldDocuments {
    let skills: Vec<Vec<Document>> = Skill::ALL
        .iter()
        .map(|&s| skill_documents(s, spec.expert_examples, seed))
        .collect();
    let mut base = general_documents(spec.general_docs, spec.general_chat_share, seed);
    for (&skill, docs) in Skill::ALL.iter().zip(&skills) {
        base.extend(docs.iter().take(spec.base_examples(skill)).cloned());
    }
    shuffle(&mut base, seed);
    WorldDocuments { base, skills }
}

/// Fine-tunes the expert of `skill` from the base's weights on its skill's sequences, with
/// `spec.expert_replay` of its sequences replayed from the base's mix. Deterministic for
/// `seed` and the skill, whatever else runs at the same time.
#[allow(clippy::too_many_arguments)]
pub fn train_expert(
    spec: &WorldSpec,
    seed: u64,
    skill: Skill,
    base_weights: &Weights,
    config: &LlamaConfig,
    device: &Device,
    skill_data: &[Sequence],
    base_data: &[Sequence],
    bar: indicatif::ProgressBar,
) -> Result<(TrainReport, Weights)> {
    let k = Skill::ALL.iter().position(|&s| s == skill).unwrap_or(0);
    let expert = TrainableLlama::from_source(base_weights, config, device)?;
    let settings = TrainSettings {
        seed: seed.wrapping_add(1 + k as u64),
        ..spec.expert_settings(skill)
    };
    let data = with_replay(skill_data, base_data, spec.expert_replay);
    let report = train_with_bar(&expert, &data, &settings, skill.name(), bar)?;
    tracing::info!(
        skill = skill.name(),
        first = report.first_loss,
        last = report.final_loss,
        secs = report.elapsed.as_secs_f64(),
        "expert trained"
    );
    Ok((report, expert.to_weights()?))
}

/// Creates `dir` and writes (then removes) a probe file in it.
fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| TrainError::io(&probe, e))?;
    std::fs::remove_file(&probe).map_err(|e| TrainError::io(&probe, e))
}

/// Builds the world: data and tokenizer, base, experts, HF dirs, evaluation.
pub fn bootstrap(opts: &BootstrapOptions) -> Result<WorldReport> {
    let start = Instant::now();
    let spec = &opts.spec;
    let seed = opts.seed;
    let device = Device::Cpu;
    let mut timings = Timings::default();
    // The full preset trains for about twelve minutes: an output dir that cannot be written
    // should fail now, not then.
    ensure_writable(&opts.out)?;

    // Data: the skills' training chats (the base gets the first few of each) and general text.
    let t = Instant::now();
    let WorldDocuments {
        base: base_docs,
        skills: skill_docs,
    } = world_documents(spec, seed);
    // The role names the chat template writes are part of the corpus too.
    let roles = ["system\n", "user\n", "assistant\n"];
    let texts = base_docs
        .iter()
        .chain(skill_docs.iter().flatten())
        .flat_map(Document::texts)
        .chain(roles.iter().copied().cycle().take(3 * 64));
    let tokenizer = train_tokenizer(texts, spec.vocab_size, spec.split_digits)?;
    let template = ChatTemplate::new(CHATML_TEMPLATE, &tokenizer)?;
    let config = spec.llama_config(&tokenizer);
    let (base_data, mut dropped) = encode_all(&base_docs, &tokenizer, &template, spec.max_seq_len)?;
    let mut expert_data: Vec<Vec<Sequence>> = Vec::new();
    for docs in &skill_docs {
        let (data, d) = encode_all(docs, &tokenizer, &template, spec.max_seq_len)?;
        dropped += d;
        expert_data.push(data);
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            max = spec.max_seq_len,
            "training sequences dropped for length"
        );
    }
    timings.data = t.elapsed();
    tracing::info!(
        parameters = config.num_parameters(),
        vocab = config.vocab_size,
        base_sequences = base_data.len(),
        "toy world: data and tokenizer ready"
    );

    // The base.
    let t = Instant::now();
    let base = TrainableLlama::init(&config, &device, seed)?;
    let base_settings = TrainSettings {
        seed,
        ..spec.base.clone()
    };
    let base_train = train(&base, &base_data, &base_settings, "base", opts.progress)?;
    let base_weights = base.to_weights()?;
    timings.base = t.elapsed();
    tracing::info!(
        first = base_train.first_loss,
        last = base_train.final_loss,
        secs = base_train.elapsed.as_secs_f64(),
        "base trained"
    );

    // The experts, each from the base, all at once: one expert's small matrix products keep
    // about one core busy, so three trainings side by side finish sooner than one after
    // another (each is deterministic for its seed, whatever the interleaving). Each runs its
    // parallel kernels in its own one-thread pool: in the shared pool, three trainers hand
    // every product to two workers and sleep until it is done (60 steps of each: 23.4 s
    // shared, 19.0 s in own pools, same losses).
    let t = Instant::now();
    let bars = indicatif::MultiProgress::new();
    if !opts.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let trained: Vec<Result<(TrainReport, Weights)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = Skill::ALL
            .iter()
            .enumerate()
            .map(|(k, skill)| {
                let bar = bars.add(progress_bar(
                    spec.expert_settings(*skill).steps,
                    skill.name(),
                ));
                let (base_weights, config, device) = (&base_weights, &config, &device);
                let (expert_data, base_data) = (&expert_data[k], &base_data);
                scope.spawn(move || {
                    let train = || {
                        train_expert(
                            spec,
                            seed,
                            *skill,
                            base_weights,
                            config,
                            device,
                            expert_data,
                            base_data,
                            bar,
                        )
                    };
                    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                        Ok(pool) => pool.install(train),
                        Err(_) => train(),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(Skill::ALL)
            .map(|(h, skill)| {
                h.join()
                    .unwrap_or_else(|_| Err(TrainError::Panicked(skill.name().to_string())))
            })
            .collect()
    });
    let mut expert_weights = Vec::new();
    let mut expert_train = Vec::new();
    for (skill, result) in Skill::ALL.iter().zip(trained) {
        let (report, weights) = result?;
        expert_train.push((skill.name().to_string(), report));
        expert_weights.push(weights);
    }
    timings.experts = t.elapsed();

    // Save.
    let t = Instant::now();
    let mut dirs = Vec::new();
    for (name, weights) in MODEL_NAMES
        .iter()
        .zip(std::iter::once(&base_weights).chain(expert_weights.iter()))
    {
        let dir = opts.out.join(name);
        save_hf_dir(&dir, &config, weights, &tokenizer, Some(CHATML_TEMPLATE))?;
        dirs.push(dir);
    }
    write_reference_logits(&opts.out, &dirs, &tokenizer, &template)?;
    timings.save = t.elapsed();

    // Evaluate.
    let t = Instant::now();
    let scores = if opts.evaluate {
        evaluate_models(&dirs, spec, seed, &opts.out, opts.progress)?
    } else {
        Vec::new()
    };
    timings.eval = t.elapsed();
    timings.total = start.elapsed();
    let report = WorldReport {
        preset: spec.preset,
        seed,
        parameters: config.num_parameters(),
        vocab_size: config.vocab_size,
        out: opts.out.clone(),
        base_train,
        expert_train,
        dropped,
        scores,
        timings,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        spec: Some(spec.clone()),
    };
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    let path = opts.out.join("bootstrap.json");
    swarm_model::write_atomic(&path, &json)?;
    Ok(report)
}

/// Scores every model dir on every skill's test split with the real checkers.
pub fn evaluate_models(
    dirs: &[PathBuf],
    spec: &WorldSpec,
    seed: u64,
    out: &Path,
    progress: bool,
) -> Result<Vec<ModelScores>> {
    let checker = Checker::new(Limits::default())?;
    let suites: Vec<_> = Skill::ALL
        .iter()
        .map(|&s| generate_synthetic(s, Split::Test, spec.test_episodes, seed))
        .collect();
    let eval_dir = out.join("eval");
    std::fs::create_dir_all(&eval_dir).map_err(|e| TrainError::io(&eval_dir, e))?;
    let mut scores = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pretrained = Pretrained::from_hf_dir(dir)?;
        let model = Llama::load(
            pretrained.weights.as_ref(),
            &pretrained.config,
            &Device::Cpu,
            Precision::F32,
        )?;
        let template = pretrained.chat_template()?;
        let agent = ModelAgent::new(
            &model,
            &pretrained.tokenizer,
            &template,
            spec.max_new_tokens,
            spec.eval_batch,
        );
        let mut s = ModelScores {
            model: name.clone(),
            pass_rate: Vec::new(),
            passed: Vec::new(),
            episodes: Vec::new(),
        };
        for (skill, episodes) in Skill::ALL.iter().zip(&suites) {
            let opts = RunOptions {
                batch_size: spec.eval_batch,
                threads: 0,
                progress,
                results_path: Some(eval_dir.join(format!("{name}-{}.jsonl", skill.name()))),
            };
            let report = run_episodes(&checker, &agent, episodes, &opts)?;
            tracing::info!(
                model = %name,
                skill = skill.name(),
                passed = report.passed,
                episodes = report.episodes,
                "evaluated"
            );
            s.pass_rate.push(report.pass_rate());
            s.passed.push(report.passed);
            s.episodes.push(report.episodes);
        }
        scores.push(s);
    }
    Ok(scores)
}

/// The prompt whose logits are written for the transformers check.
pub const REFERENCE_PROMPT: &str = "Write a Python function `f(x)` that returns x * 3 + 7.";

/// Writes `logits/<model>.json` (`input_ids` and the f32 logits of every position) from
/// swarm-model's inference forward, for `scripts/toy/check_transformers.py`.
fn write_reference_logits(
    out: &Path,
    dirs: &[PathBuf],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<()> {
    let messages = [
        swarm_model::ChatMessage::system(swarm_tasks::CODING_SYSTEM),
        swarm_model::ChatMessage::user(REFERENCE_PROMPT),
    ];
    let text = template.render(&messages, true)?;
    let ids = tokenizer.encode(&text, false)?;
    let logits_dir = out.join("logits");
    std::fs::create_dir_all(&logits_dir).map_err(|e| TrainError::io(&logits_dir, e))?;
    for dir in dirs {
        let pretrained = Pretrained::from_hf_dir(dir)?;
        let model = Llama::load(
            pretrained.weights.as_ref(),
            &pretrained.config,
            &Device::Cpu,
            Precision::F32,
        )?;
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        let logits = model
            .forward(&input, &mut model.new_cache(1, 0))?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        let json = serde_json::json!({ "messages": messages, "input_ids": ids, "logits": logits });
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = logits_dir.join(format!("{name}.json"));
        swarm_model::write_atomic(&path, json.to_string().as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_dir_that_cannot_be_made_fails_before_training() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"not a dir").expect("write");
        let opts = BootstrapOptions {
            spec: WorldSpec::preset(Preset::Full),
            seed: 0,
            out: file.join("world"),
            progress: false,
            evaluate: true,
        };
        let error = bootstrap(&opts).expect_err("a dir under a file cannot be created");
        assert!(
            matches!(&error, TrainError::Io { path, .. } if path == &file.join("world")),
            "{error}"
        );
        assert_eq!(std::fs::read(&file).expect("read"), b"not a dir");
    }

    #[test]
    fn an_override_changes_only_its_skills_expert() {
        let mut spec = WorldSpec::preset(Preset::Full);
        let plain = spec.expert.clone();
        spec.override_expert(Skill::Coding, Some(2000), None);
        spec.override_expert(Skill::Coding, None, Some(4e-3));
        // Nothing to override: no entry.
        spec.override_expert(Skill::Os, None, None);
        assert_eq!(spec.expert_overrides.len(), 1);
        let coding = spec.expert_settings(Skill::Coding);
        assert_eq!((coding.steps, coding.lr), (2000, 4e-3));
        assert_eq!(coding.batch_size, plain.batch_size);
        for skill in [Skill::Database, Skill::Os] {
            let s = spec.expert_settings(skill);
            assert_eq!((s.steps, s.lr), (plain.steps, plain.lr));
        }
    }

    #[test]
    fn a_base_override_changes_only_its_skills_share_of_the_mix() {
        let mut spec = WorldSpec::preset(Preset::Micro);
        spec.override_base_examples(Skill::Coding, 5);
        spec.override_base_examples(Skill::Coding, 30);
        assert_eq!(spec.base_skill_overrides.len(), 1);
        assert_eq!(spec.base_examples(Skill::Coding), 30);
        assert_eq!(spec.base_examples(Skill::Os), spec.base_skill_examples);
        let docs = world_documents(&spec, 0);
        let plain = world_documents(&WorldSpec::preset(Preset::Micro), 0);
        assert_eq!(
            docs.base.len(),
            plain.base.len() + 30 - spec.base_skill_examples
        );
    }

    #[test]
    fn specs_written_before_overrides_existed_still_load() {
        let spec = WorldSpec::preset(Preset::Micro);
        let mut json = serde_json::to_value(&spec).unwrap();
        json.as_object_mut().unwrap().remove("expert_overrides");
        let back: WorldSpec = serde_json::from_value(json).unwrap();
        assert!(back.expert_overrides.is_empty());
        assert_eq!(back.expert_settings(Skill::Coding).steps, spec.expert.steps);
    }
}
