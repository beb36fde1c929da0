//! The run loop: CycleQD ask/tell over genomes, per-stage timings, an atomic checkpoint after
//! every generation, and resume.
//!
//! A run directory holds:
//! - `config.toml`: the config the run started with (a resumed run reads it from here);
//! - `factors.safetensors`: the experts' factorised task vectors (swarm-merge's format);
//! - `genomes.safetensors`: every genome an archive holds, named `g<id>`;
//! - `progress.json`: expert scores, the axis ranges used, one record per generation;
//! - `state.json`: the CycleQD state (archives of genome ids, RNG, history), swarm-qd's format;
//! - `evolve.log`: the tracing log.
//!
//! Each generation writes genomes, then progress, then state, each atomically; the state is
//! last, so whatever state is on disk refers only to genomes and records already on disk.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use swarm_merge::{load_genomes, save_genomes, FactorSet, Genome};
use swarm_qd::{BehaviourDim, Child, CycleQd, CycleQdConfig, QdState, Ticket};

use crate::config::{Mutation, RunPlan};
use crate::error::{EvolveError, Result};
use crate::evaluator::{EvalSet, Evaluator, StageTimes};

/// File names inside a run dir.
pub const CONFIG_FILE: &str = "config.toml";
pub const FACTORS_FILE: &str = "factors.safetensors";
pub const GENOMES_FILE: &str = "genomes.safetensors";
pub const PROGRESS_FILE: &str = "progress.json";
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "evolve.log";

/// The scheduler type of a run: genomes are referred to by id.
pub type Scheduler = CycleQd<u64>;

/// One generation, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u64,
    pub child: u64,
    pub quality_skill: usize,
    pub parents: Vec<u64>,
    pub scores: Vec<f64>,
    /// Archives the child entered (new cell or improvement).
    pub inserted: Vec<usize>,
    pub times: StageTimes,
    /// Wall time of the whole generation.
    pub wall: Duration,
}

/// Everything about a run besides the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub skills: Vec<String>,
    pub experts: Vec<String>,
    /// Fitness-split scores of each expert (rows: experts, columns: skills).
    pub expert_scores: Vec<Vec<f64>>,
    /// Axis ranges used, per skill.
    pub ranges: Vec<(f64, f64)>,
    /// Seconds spent evaluating the experts.
    pub expert_eval_seconds: f64,
    pub records: Vec<GenerationRecord>,
}

/// Options of one invocation.
#[derive(Debug, Clone, Default)]
pub struct LoopOptions {
    /// Show a progress bar.
    pub progress: bool,
    /// Stop after this many generations in this invocation (tests, benchmarks).
    pub max_new_generations: Option<u64>,
}

/// The paper's default range: 85% of the weakest expert's score to 115% of the strongest's.
pub fn default_range(scores: &[f64]) -> (f64, f64) {
    let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = (0.85 * lo.max(0.0), 1.15 * hi.max(0.0));
    if hi - lo < 1e-6 {
        // Every expert scored the same (e.g. all zero): fall back to the whole score range.
        (0.0, 1.0)
    } else {
        (lo, hi)
    }
}

fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)?;
    swarm_model::write_atomic(path, &text)?;
    Ok(())
}

/// A run in memory: scheduler, genomes by id, progress.
pub struct RunState {
    pub dir: PathBuf,
    pub qd: Scheduler,
    pub genomes: HashMap<u64, Genome>,
    pub progress: Progress,
    /// Ids in the genome file on disk.
    persisted: BTreeSet<u64>,
}

impl RunState {
    /// True if `dir` holds a checkpoint.
    pub fn exists(dir: &Path) -> bool {
        dir.join(STATE_FILE).is_file()
    }

    /// Loads a checkpoint.
    pub fn load(dir: &Path, factors: &FactorSet) -> Result<RunState> {
        let qd = Scheduler::load(dir.join(STATE_FILE))?;
        let progress: Progress = {
            let p = dir.join(PROGRESS_FILE);
            let text = std::fs::read(&p).map_err(EvolveError::io(&p))?;
            serde_json::from_slice(&text)?
        };
        let mut progress = progress;
        // Progress is written before the state: drop records the state does not know.
        let done = qd.generations_done();
        progress.records.retain(|r| r.generation <= done);
        let path = dir.join(GENOMES_FILE);
        let mut genomes = HashMap::new();
        for (name, g) in load_genomes(&path, factors.layout())? {
            let id = name
                .strip_prefix('g')
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| EvolveError::RunDir {
                    path: path.clone(),
                    reason: format!("genome name {name:?} is not g<id>"),
                })?;
            genomes.insert(id, g);
        }
        for a in qd.archives() {
            for e in a.elites() {
                if !genomes.contains_key(&e.genome) {
                    return Err(EvolveError::RunDir {
                        path: path.clone(),
                        reason: format!("genome {} of an elite is missing", e.genome),
                    });
                }
            }
        }
        let persisted = genomes.keys().copied().collect();
        Ok(RunState {
            dir: dir.to_path_buf(),
            qd,
            genomes,
            progress,
            persisted,
        })
    }

    /// Ids any archive refers to.
    fn live_ids(&self) -> BTreeSet<u64> {
        self.qd
            .archives()
            .iter()
            .flat_map(|a| a.elites().iter().map(|e| e.genome))
            .collect()
    }

    /// Writes genomes, progress and state, each atomically, in that order.
    pub fn checkpoint(&mut self) -> Result<()> {
        let live = self.live_ids();
        // Keep what the state on disk still refers to until the new state replaces it.
        let keep: BTreeSet<u64> = live.union(&self.persisted).copied().collect();
        let names: Vec<(String, u64)> = keep.iter().map(|id| (format!("g{id}"), *id)).collect();
        let list: Vec<(&str, &Genome)> = names
            .iter()
            .filter_map(|(n, id)| self.genomes.get(id).map(|g| (n.as_str(), g)))
            .collect();
        save_genomes(&self.dir.join(GENOMES_FILE), &list)?;
        write_json_atomic(&self.dir.join(PROGRESS_FILE), &self.progress)?;
        self.qd.save(self.dir.join(STATE_FILE))?;
        self.persisted = keep;
        // Now the state on disk needs only `live`: forget the rest (rewritten away next time).
        self.genomes.retain(|id, _| live.contains(id));
        self.persisted = self
            .persisted
            .intersection(&live)
            .copied()
            .collect::<BTreeSet<_>>();
        // The file still holds the dropped ones; that is harmless (superset).
        Ok(())
    }
}

/// Starts a new run: evaluates the experts, sets the axes, seeds the archives, checkpoints.
pub fn start(
    plan: &RunPlan,
    dir: &Path,
    factors: &FactorSet,
    eval: &dyn Evaluator,
) -> Result<RunState> {
    std::fs::create_dir_all(dir).map_err(EvolveError::io(dir))?;
    let k = plan.skills.len();
    let t = Instant::now();
    let mut expert_genomes = Vec::with_capacity(plan.experts.len());
    let mut expert_scores = Vec::with_capacity(plan.experts.len());
    for (i, e) in plan.experts.iter().enumerate() {
        let g = Genome::expert(factors.layout(), i)?;
        let ev = eval.evaluate(&g, EvalSet::Fitness)?;
        tracing::info!(expert = %e.name, scores = ?ev.scores, "expert evaluated");
        expert_genomes.push(g);
        expert_scores.push(ev.scores);
    }
    let ranges: Vec<(f64, f64)> = (0..k)
        .map(|s| {
            plan.skills[s].range.unwrap_or_else(|| {
                default_range(&expert_scores.iter().map(|r| r[s]).collect::<Vec<_>>())
            })
        })
        .collect();
    let dims = plan
        .skills
        .iter()
        .zip(&ranges)
        .map(|(s, &(lo, hi))| BehaviourDim::new(s.name(), lo, hi, s.bins))
        .collect();
    let mut cfg = CycleQdConfig::new(dims);
    cfg.cycle_interval = plan.qd.quality_interval;
    cfg.sampler = plan.qd.sampler;
    cfg.seed = plan.seed;
    let mut qd = Scheduler::new(cfg)?;
    let mut genomes = HashMap::new();
    for (i, (g, s)) in expert_genomes.into_iter().zip(&expert_scores).enumerate() {
        qd.insert_initial(i as u64, s.clone())?;
        genomes.insert(i as u64, g);
    }
    let progress = Progress {
        skills: plan.skill_names(),
        experts: plan.experts.iter().map(|e| e.name.clone()).collect(),
        expert_scores,
        ranges,
        expert_eval_seconds: t.elapsed().as_secs_f64(),
        records: Vec::new(),
    };
    let mut state = RunState {
        dir: dir.to_path_buf(),
        qd,
        genomes,
        progress,
        persisted: BTreeSet::new(),
    };
    state.checkpoint()?;
    Ok(state)
}

/// Makes the child of a ticket: crossover of its two parents, then SVD mutation toward the
/// quality skill's expert, with a generator seeded by the ticket alone.
pub fn make_child(
    plan: &RunPlan,
    genomes: &HashMap<u64, Genome>,
    ticket: &Ticket<u64>,
) -> Result<Genome> {
    let get = |id: u64| {
        genomes
            .get(&id)
            .ok_or_else(|| EvolveError::Eval(format!("parent genome {id} is not in memory")))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(ticket.seed);
    let p1 = get(ticket.parents[0].genome)?;
    let p2 = match ticket.parents.get(1) {
        Some(p) => get(p.genome)?,
        None => p1,
    };
    let mut child = p1.crossover(p2, plan.qd.crossover, &mut rng)?;
    if let Mutation::Svd { w_max } = plan.qd.mutation {
        let q = plan.expert_of_skill(ticket.quality_skill).ok_or_else(|| {
            EvolveError::Eval(format!("no expert for skill {}", ticket.quality_skill))
        })?;
        child.mutate(q, w_max as f32, &mut rng)?;
    }
    Ok(child)
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Runs generations until the plan's count (or the invocation's limit), checkpointing each.
pub fn run_generations(
    plan: &RunPlan,
    state: &mut RunState,
    eval: &dyn Evaluator,
    opts: &LoopOptions,
) -> Result<()> {
    let total = plan.qd.generations;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} gen {pos}/{len} (eta {eta}) {msg}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_position(state.qd.generations_done());
    let names = plan.skill_names();
    let mut done_here = 0u64;
    while state.qd.generations_done() < total {
        if opts.max_new_generations.is_some_and(|m| done_here >= m) {
            break;
        }
        let n = (total - state.qd.generations_done()).min(plan.qd.workers as u64) as usize;
        let wall = Instant::now();
        let tickets = state.qd.ask(n)?;
        bar.set_message(format!(
            "quality {} | best {}",
            names[tickets[0].quality_skill],
            best_line(state, &names)
        ));
        // Operators.
        let t = Instant::now();
        let children = tickets
            .iter()
            .map(|tk| make_child(plan, &state.genomes, tk))
            .collect::<Result<Vec<_>>>()?;
        let op_time = t.elapsed() / n as u32;
        // Evaluations (one thread each when workers > 1).
        let evals = if n == 1 {
            vec![eval.evaluate(&children[0], EvalSet::Fitness)]
        } else {
            std::thread::scope(|s| {
                let hs: Vec<_> = children
                    .iter()
                    .map(|c| s.spawn(move || eval.evaluate(c, EvalSet::Fitness)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(EvolveError::Eval("evaluation thread panicked".into()))
                        })
                    })
                    .collect()
            })
        };
        for ((ticket, child), ev) in tickets.iter().zip(children).zip(evals) {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(ticket = ticket.id, error = %e, "evaluation failed; child dropped");
                    state.qd.cancel(ticket.id)?;
                    return Err(e);
                }
            };
            let outcomes = state
                .qd
                .tell(ticket.id, Child::new(ticket.id, ev.scores.clone()))?;
            state.genomes.insert(ticket.id, child);
            let inserted = outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| o.is_added())
                .map(|(i, _)| i)
                .collect();
            let mut times = ev.times;
            times.operators = op_time;
            state.progress.records.push(GenerationRecord {
                generation: ticket.generation,
                child: ticket.id,
                quality_skill: ticket.quality_skill,
                parents: ticket.parents.iter().map(|p| p.id).collect(),
                scores: ev.scores,
                inserted,
                times,
                wall: Duration::ZERO,
            });
        }
        // Wall time before the checkpoint is recorded with it; the checkpoint's own time is
        // added in memory and reaches disk with the next checkpoint.
        let len = state.progress.records.len();
        let before = wall.elapsed();
        for r in &mut state.progress.records[len - n..] {
            r.wall = before / n as u32;
        }
        let t = Instant::now();
        state.checkpoint()?;
        let ckpt = t.elapsed();
        for r in &mut state.progress.records[len - n..] {
            r.times.checkpoint = ckpt / n as u32;
            r.wall += ckpt / n as u32;
        }
        let wall = wall.elapsed();
        if let Some(r) = state.progress.records.last() {
            let tm = &r.times;
            let line = format!(
                "gen {:>4} q={:<8} scores {} -> {} | operators {} materialise {} generation {} checks {} checkpoint {} (total {})",
                r.generation,
                names[r.quality_skill],
                r.scores.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join("/"),
                if r.inserted.is_empty() {
                    "-".to_string()
                } else {
                    r.inserted.iter().map(|&i| names[i].as_str()).collect::<Vec<_>>().join(",")
                },
                fmt_secs(tm.operators),
                fmt_secs(tm.materialise),
                fmt_secs(tm.generation),
                fmt_secs(tm.checks),
                fmt_secs(tm.checkpoint),
                fmt_secs(wall),
            );
            tracing::info!("{line}");
            if opts.progress {
                // indicatif drops `println` on a hidden bar (stderr not a terminal, as under
                // a script writing a log): the stage times must reach the log all the same.
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
        }
        bar.set_position(state.qd.generations_done());
        done_here += n as u64;
    }
    bar.finish_and_clear();
    Ok(())
}

fn best_line(state: &RunState, names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {:.3}", state.qd.best(i).map_or(0.0, |e| e.quality)))
        .collect::<Vec<_>>()
        .join(", ")
}
