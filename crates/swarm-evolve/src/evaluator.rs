//! The evaluator: genome -> dense weights -> model -> batched greedy answers to every episode
//! of every skill -> sandboxed checks (overlapping the next skill's generation) -> scores.

use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use swarm_merge::{materialise_to_weights, FactorSet, Genome};
use swarm_model::{ChatTemplate, Llama, LlamaConfig, Precision, TensorSource, Tokenizer, Weights};
use swarm_tasks::{run_episodes, Checker, Episode, RunOptions, Step, TaskError};

use swarm_train::ModelAgent;

use crate::error::{EvolveError, Result};

/// Time spent in each stage of one evaluation (or one generation of the run).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageTimes {
    /// Crossover and mutation.
    pub operators: Duration,
    /// Genome -> dense weights, and loading them into the model.
    pub materialise: Duration,
    /// Batched generation.
    pub generation: Duration,
    /// Checks not hidden behind generation (the wait after the last batch).
    pub checks: Duration,
    /// Writing the checkpoint.
    pub checkpoint: Duration,
}

impl StageTimes {
    pub fn total(&self) -> Duration {
        self.operators + self.materialise + self.generation + self.checks + self.checkpoint
    }

    pub fn add(&mut self, o: &StageTimes) {
        self.operators += o.operators;
        self.materialise += o.materialise;
        self.generation += o.generation;
        self.checks += o.checks;
        self.checkpoint += o.checkpoint;
    }
}

/// Scores on every skill, in the run's skill order, and how long they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub scores: Vec<f64>,
    pub times: StageTimes,
    /// Conversations answered.
    pub answers: usize,
}

/// Which episode set to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSet {
    /// The fitness episodes (validation).
    Fitness,
    /// The report's episodes (test).
    Test,
}

/// Something that scores genomes. The run loop only needs this, so tests can drive it with a
/// cheap scorer and the real one plugs in the LLM.
pub trait Evaluator: Sync {
    /// Number of skills scored.
    fn num_skills(&self) -> usize;
    /// Scores a genome.
    fn evaluate(&self, genome: &Genome, set: EvalSet) -> Result<Evaluation>;
    /// Scores dense weights (baselines); by default unsupported.
    fn evaluate_weights(&self, _weights: &Weights, _set: EvalSet) -> Result<Evaluation> {
        Err(EvolveError::Eval(
            "this evaluator cannot score dense weights".into(),
        ))
    }
}

/// Scores single-round answers (all in parallel on the rayon pool).
fn check_single_round(
    checker: &Checker,
    episodes: &[Episode],
    answers: Vec<std::result::Result<String, TaskError>>,
) -> f64 {
    use rayon::prelude::*;
    if episodes.is_empty() {
        return 0.0;
    }
    let total: f64 = episodes
        .par_iter()
        .zip(answers.into_par_iter())
        .map(|(ep, answer)| {
            let Ok(answer) = answer else { return 0.0 };
            match checker
                .start(ep)
                .and_then(|mut env| env.step(&answer, true))
            {
                Ok(Step::Done(o)) => o.score,
                Ok(Step::Observe(_)) => 0.0,
                Err(e) => {
                    tracing::warn!(episode = %ep.id, error = %e, "checker error (scored 0)");
                    0.0
                }
            }
        })
        .sum();
    total / episodes.len() as f64
}

/// Plays every skill's episodes with `agent`: skill by skill, each skill's answers checked on
/// another thread while the next skill generates. Multi-round suites go through the episode
/// runner. Returns per-skill mean scores, generation time and the checks' exposed time.
pub fn play_skills(
    agent: &ModelAgent<'_>,
    checker: &Checker,
    skills: &[Vec<Episode>],
) -> Result<(Vec<f64>, Duration, Duration, usize)> {
    let start_gen = agent.generation_time();
    let mut scores = vec![0.0; skills.len()];
    let mut answers_n = 0;
    let mut exposed = Duration::ZERO;
    std::thread::scope(|scope| -> Result<()> {
        let mut pending = Vec::new();
        for (k, episodes) in skills.iter().enumerate() {
            answers_n += episodes.len();
            if episodes.iter().any(|e| e.max_rounds > 1) {
                let opts = RunOptions {
                    batch_size: agent.batch_size(),
                    ..RunOptions::default()
                };
                let report = run_episodes(checker, agent, episodes, &opts)?;
                scores[k] = report.mean_score;
                continue;
            }
            let msgs: Vec<&[swarm_tasks::ChatMessage]> =
                episodes.iter().map(|e| e.prompt.as_slice()).collect();
            let answers = agent.answer(&msgs);
            pending.push((
                k,
                scope.spawn(move || check_single_round(checker, episodes, answers)),
            ));
        }
        let t = Instant::now();
        for (k, h) in pending {
            scores[k] = h
                .join()
                .map_err(|_| EvolveError::Eval("a checking thread panicked".into()))?;
        }
        exposed = t.elapsed();
        Ok(())
    })?;
    Ok((
        scores,
        agent.generation_time() - start_gen,
        exposed,
        answers_n,
    ))
}

/// Everything the LLM evaluator keeps: the base in memory (f32), the factors, the tokenizer and
/// chat template, the episodes and the checker.
pub struct LlmEvaluator {
    pub config: LlamaConfig,
    pub base: Weights,
    pub factors: FactorSet,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub device: Device,
    pub precision: Precision,
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub checker: Checker,
    pub fitness: Vec<Vec<Episode>>,
    pub test: Vec<Vec<Episode>>,
}

impl LlmEvaluator {
    /// Loads `weights` as a model and plays `set`.
    pub fn play(&self, weights: &dyn TensorSource, set: EvalSet) -> Result<Evaluation> {
        let t = Instant::now();
        let model = Llama::load(weights, &self.config, &self.device, self.precision)?;
        let load = t.elapsed();
        let agent = ModelAgent::new(
            &model,
            &self.tokenizer,
            &self.template,
            self.max_new_tokens,
            self.batch_size,
        );
        let episodes = match set {
            EvalSet::Fitness => &self.fitness,
            EvalSet::Test => &self.test,
        };
        let (scores, generation, checks, answers) = play_skills(&agent, &self.checker, episodes)?;
        Ok(Evaluation {
            scores,
            times: StageTimes {
                materialise: load,
                generation,
                checks,
                ..StageTimes::default()
            },
            answers,
        })
    }
}

impl Evaluator for LlmEvaluator {
    fn num_skills(&self) -> usize {
        self.fitness.len()
    }

    fn evaluate(&self, genome: &Genome, set: EvalSet) -> Result<Evaluation> {
        let t = Instant::now();
        let weights = materialise_to_weights(&self.base, &self.factors, genome, &self.device)?;
        let mat = t.elapsed();
        let mut e = self.play(&weights, set)?;
        e.times.materialise += mat;
        Ok(e)
    }

    fn evaluate_weights(&self, weights: &Weights, set: EvalSet) -> Result<Evaluation> {
        self.play(weights, set)
    }
}

/// Loads a model's weights as f32 on the CPU (the base is kept so for materialisation).
pub fn load_f32(source: &dyn TensorSource) -> Result<Weights> {
    Ok(Weights::from_source(source, &Device::Cpu, DType::F32)?)
}
