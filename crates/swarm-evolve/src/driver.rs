//! `swarm evolve` end to end: open the world, start or resume, run the generations, then export
//! the swarm and write the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use rand::SeedableRng;
use swarm_merge::merge::task_arithmetic::{mix, Consensus, GtaParams, Sparsify, TaskVector};
use swarm_merge::{materialise_tensor, Genome};
use swarm_model::{TensorSource, Weights};

use crate::bootstrap::WorldBootstrap;
use crate::config::RunPlan;
use crate::error::{EvolveError, Result};
use crate::evaluator::{EvalSet, Evaluator, LlmEvaluator, StageTimes};
use crate::export::{aggregate, export_swarm};
use crate::report::{test_table, timing_summary, write_report, Row};
use crate::run::{
    run_generations, start, LoopOptions, RunState, CONFIG_FILE, FACTORS_FILE, LOG_FILE,
};
use crate::world::open_world;

/// Options of [`evolve`].
#[derive(Debug, Clone, Default)]
pub struct EvolveOptions {
    /// Continue the checkpoint in the run dir (it must exist).
    pub resume: bool,
    /// Progress bar and per-generation lines on stderr.
    pub progress: bool,
    /// Stop after this many generations in this invocation.
    pub max_new_generations: Option<u64>,
    /// Skip export and report at the end.
    pub no_finish: bool,
    /// The command line, for the report.
    pub command: String,
    /// Build this toy world first if the plan names models of it that are not on disk
    /// (`None`: a missing model is an error when the world is opened).
    pub world: Option<WorldBootstrap>,
}

/// What a call did.
#[derive(Debug, Clone)]
pub struct EvolveOutcome {
    pub run_dir: PathBuf,
    pub generations_done: u64,
    pub finished: bool,
    pub swarm_dir: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// The test table, when the run finished and was reported.
    pub rows: Vec<Row>,
    /// Final QD-score, coverage and best quality per archive.
    pub archives: Vec<swarm_qd::ArchiveMetrics>,
    /// Seconds spent building the toy world first (`None`: it was there, or not asked for).
    pub world_seconds: Option<f64>,
    /// Time per stage summed over every generation of the run (all invocations).
    pub stage_totals: StageTimes,
    /// Generations those times cover, and their summed wall time (checkpoints included).
    pub generations_timed: usize,
    pub generations_wall_seconds: f64,
    /// Wall time of the whole run (all invocations, export and report included).
    pub run_seconds: f64,
    pub wall_seconds: f64,
}

/// The plan of an existing run dir (from its `config.toml`), with the run dir set to `dir`.
pub fn plan_for_resume(dir: &Path) -> Result<RunPlan> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        let reason = if dir.is_dir() {
            format!("not a run directory: it has no {CONFIG_FILE} (`swarm evolve` writes one when a run starts)")
        } else {
            "no such run directory".to_string()
        };
        return Err(EvolveError::RunDir {
            path: dir.to_path_buf(),
            reason,
        });
    }
    let mut plan = RunPlan::from_file(&path)?;
    plan.run_dir = dir.to_path_buf();
    Ok(plan)
}

/// Runs `f` with tracing also going to the run's log file.
pub fn with_log_file<T>(dir: &Path, f: impl FnOnce() -> T) -> Result<T> {
    std::fs::create_dir_all(dir).map_err(EvolveError::io(dir))?;
    let path = dir.join(LOG_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(EvolveError::io(&path))?;
    let sub = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .finish();
    Ok(tracing::subscriber::with_default(sub, f))
}

/// TIES (mergekit's defaults: magnitude sparsification, sum sign consensus, normalised) over
/// the experts' task vectors as the factors hold them.
pub fn ties_weights(ev: &LlmEvaluator, density: f64, lambda: f64) -> Result<Weights> {
    let k = ev.factors.experts().len();
    let experts: Vec<Genome> = (0..k)
        .map(|i| Genome::expert(ev.factors.layout(), i))
        .collect::<std::result::Result<_, _>>()?;
    let params = GtaParams {
        sparsify: Some(Sparsify::Magnitude),
        consensus: Some(Consensus::Sum),
        normalize: true,
        rescale: false,
        lambda,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut out = Weights::new();
    let cpu = candle_core::Device::Cpu;
    for t in ev.factors.tensors() {
        let base = ev
            .base
            .load(&t.name, &cpu)?
            .to_dtype(candle_core::DType::F32)?;
        let base_v: Vec<f32> = base.flatten_all()?.to_vec1()?;
        let mut tvs = Vec::with_capacity(k);
        for g in &experts {
            let w: Vec<f32> = materialise_tensor(&ev.base, &ev.factors, g, &t.name, &cpu)?
                .flatten_all()?
                .to_vec1()?;
            let delta = w.iter().zip(&base_v).map(|(a, b)| a - b).collect();
            tvs.push(TaskVector {
                delta,
                weight: 1.0,
                density,
            });
        }
        let merged = mix(&t.name, base_v, tvs, &params, &mut rng)?;
        out.insert(
            t.name.clone(),
            Tensor::from_vec(merged, t.shape.clone(), &cpu)?,
        );
    }
    Ok(out)
}

/// Starts (or resumes) the run of `plan`, runs it, and on completion exports and reports.
pub fn evolve(plan: &RunPlan, opts: &EvolveOptions) -> Result<EvolveOutcome> {
    let dir = plan.run_dir.clone();
    if !opts.resume && RunState::exists(&dir) {
        return Err(EvolveError::RunDir {
            path: dir,
            reason:
                "holds a checkpoint already; continue it with --resume, or choose another run_dir"
                    .into(),
        });
    }
    if opts.resume && !RunState::exists(&dir) {
        return Err(EvolveError::RunDir {
            path: dir,
            reason: "holds no checkpoint (state.json) to resume".into(),
        });
    }
    // Before anything is written to the run dir: a failed build leaves no half-started run.
    let world_seconds = match &opts.world {
        Some(world) => world
            .ensure(plan)?
            .map(|report| report.timings.total.as_secs_f64()),
        None => None,
    };
    std::fs::create_dir_all(&dir).map_err(EvolveError::io(&dir))?;
    if !opts.resume {
        let text = std::fs::read(&plan.source).map_err(EvolveError::io(&plan.source))?;
        swarm_model::write_atomic(&dir.join(CONFIG_FILE), &text)?;
    }
    let mut outcome = with_log_file(&dir, || evolve_inner(plan, opts))??;
    outcome.world_seconds = world_seconds;
    Ok(outcome)
}

fn evolve_inner(plan: &RunPlan, opts: &EvolveOptions) -> Result<EvolveOutcome> {
    let t = Instant::now();
    let dir = plan.run_dir.clone();
    tracing::info!(run = %plan.name, dir = %dir.display(), resume = opts.resume, "evolve");
    let ev = open_world(plan, &dir)?;
    let mut state = if opts.resume {
        RunState::load(&dir, &ev.factors)?
    } else {
        start(plan, &dir, &ev.factors, &ev)?
    };
    run_generations(
        plan,
        &mut state,
        &ev,
        &LoopOptions {
            progress: opts.progress,
            max_new_generations: opts.max_new_generations,
        },
    )?;
    let done = state.qd.generations_done();
    let (stage_totals, generations_wall_seconds) = timing_summary(&state);
    let mut outcome = EvolveOutcome {
        run_dir: dir.clone(),
        generations_done: done,
        finished: done >= plan.qd.generations,
        swarm_dir: None,
        report: None,
        rows: Vec::new(),
        archives: state
            .qd
            .history()
            .last()
            .map(|r| r.archives.clone())
            .unwrap_or_default(),
        world_seconds: None,
        stage_totals,
        generations_timed: state.progress.records.len(),
        generations_wall_seconds,
        run_seconds: 0.0,
        wall_seconds: 0.0,
    };
    if outcome.finished && !opts.no_finish {
        let (swarm, report, rows, secs) = finish(plan, &state, &ev, opts)?;
        outcome.swarm_dir = Some(swarm);
        outcome.report = Some(report);
        outcome.rows = rows;
        outcome.run_seconds = secs;
    }
    outcome.wall_seconds = t.elapsed().as_secs_f64();
    Ok(outcome)
}

/// Export and report of a finished run.
pub fn finish(
    plan: &RunPlan,
    state: &RunState,
    ev: &LlmEvaluator,
    opts: &EvolveOptions,
) -> Result<(PathBuf, PathBuf, Vec<Row>, f64)> {
    let t = Instant::now();
    let agg = aggregate(state)?;
    let agg_scores = match &agg {
        Some((g, _)) => Some(ev.evaluate(g, EvalSet::Fitness)?.scores),
        None => None,
    };
    let manifest_agg = match (&agg, &agg_scores) {
        (Some((g, ids)), Some(s)) => Some((g, s.as_slice(), ids.as_slice())),
        _ => None,
    };
    export_swarm(
        plan,
        state,
        &ev.factors,
        &plan.run_dir.join(FACTORS_FILE),
        manifest_agg,
        &plan.output,
    )?;
    tracing::info!(out = %plan.output.display(), "swarm exported");
    let ties = |d: f64, l: f64| ties_weights(ev, d, l);
    let rows = test_table(plan, state, ev, agg.as_ref().map(|(g, _)| g), Some(&ties))?;
    let report_dir = plan.run_dir.join("report");
    let wall: f64 = state.progress.expert_eval_seconds
        + state
            .progress
            .records
            .iter()
            .map(|r| r.wall.as_secs_f64())
            .sum::<f64>()
        + t.elapsed().as_secs_f64();
    write_report(plan, state, &rows, &report_dir, &opts.command, wall)?;
    Ok((
        plan.output.clone(),
        report_dir.join("report.md"),
        rows,
        wall,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_from_a_dir_without_a_run_says_so() {
        let tmp = tempfile::tempdir().expect("temp dir");
        for (dir, expected) in [
            (tmp.path().to_path_buf(), "not a run directory"),
            (tmp.path().join("missing"), "no such run directory"),
        ] {
            match plan_for_resume(&dir) {
                Err(EvolveError::RunDir { path, reason }) => {
                    assert_eq!(path, dir);
                    assert!(reason.contains(expected), "{reason}");
                }
                other => panic!("expected a RunDir error, got {other:?}"),
            }
        }
    }
}
