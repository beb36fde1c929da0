//! The toy study: CycleQD on the toy world and the paper's ablations, one after another, then
//! `docs/results/toy-cycleqd.md` with what was measured (`scripts/toy/toy-study.sh` runs it).
//!
//! ```text
//! cargo run --release -p swarm-evolve --example toy_study            # all four configs
//! cargo run --release -p swarm-evolve --example toy_study -- configs/toy.toml   # a subset
//! ```
//!
//! The toy world is built first (full preset, the run's seed) if it is not on disk. A run dir
//! that already holds a checkpoint is resumed (a finished run is only re-reported).
//!
//! For a quick check of the pipeline, environment variables shrink the study; the report's
//! command line shows every one that was set:
//! - `TOY_STUDY_GENERATIONS=N`: N generations per config;
//! - `TOY_STUDY_EPISODES=N`: at most N fitness and N test episodes per skill;
//! - `TOY_STUDY_PRESET=micro`: build a micro world if the world is missing (scores mean nothing);
//! - `TOY_STUDY_ROOT=DIR`: run dirs and swarms under DIR instead of `runs/` and `agents/`;
//! - `TOY_STUDY_REPORT=PATH`: write the report there instead of `docs/results/toy-cycleqd.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use swarm_evolve::{
    evolve, table_markdown, EvolveOptions, EvolveOutcome, RunPlan, RunState, WorldBootstrap,
};
use swarm_train::Preset;

const CONFIGS: [(&str, &str); 4] = [
    (
        "configs/toy-ablation-crossover.toml",
        "crossover only (uniform parents, no mutation)",
    ),
    (
        "configs/toy-ablation-svd.toml",
        "+ SVD mutation (uniform parents)",
    ),
    ("configs/toy.toml", "+ elite sampling = CycleQD"),
    (
        "configs/toy-ablation-fixed-quality.toml",
        "CycleQD with a fixed quality (coding), no cycling",
    ),
];

const ENV_KNOBS: [&str; 5] = [
    "TOY_STUDY_GENERATIONS",
    "TOY_STUDY_EPISODES",
    "TOY_STUDY_PRESET",
    "TOY_STUDY_ROOT",
    "TOY_STUDY_REPORT",
];

fn knob<T: FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) => Ok(Some(
            v.parse()
                .with_context(|| format!("{name}={v:?} is not valid"))?,
        )),
        Err(_) => Ok(None),
    }
}

/// The machine's 1-minute load average (the study shares 2 cores with other work).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The plan of `config` with the study's knobs applied.
fn study_plan(config: &str, root: Option<&Path>) -> anyhow::Result<RunPlan> {
    let mut plan = RunPlan::from_file(Path::new(config))?;
    if let Some(g) = knob::<u64>("TOY_STUDY_GENERATIONS")? {
        plan.qd.generations = g;
    }
    if let Some(n) = knob::<usize>("TOY_STUDY_EPISODES")? {
        for s in &mut plan.skills {
            s.fitness.limit = Some(s.fitness.limit.map_or(n, |l| l.min(n)));
            s.test.limit = Some(s.test.limit.map_or(n, |l| l.min(n)));
        }
    }
    if let Some(root) = root {
        plan.run_dir = root.join(&plan.run_dir);
        plan.output = root.join(&plan.output);
    }
    Ok(plan)
}

fn secs(d: Duration, n: usize) -> String {
    format!("{:.3}", d.as_secs_f64() / n.max(1) as f64)
}

/// One row of the stage-time table: mean seconds per generation.
fn timing_row(description: &str, o: &EvolveOutcome) -> String {
    let t = &o.stage_totals;
    let n = o.generations_timed;
    let overhead = (t.operators + t.materialise).as_secs_f64();
    let total = t.total().as_secs_f64();
    format!(
        "| {description} | {n} | {} | {} | {} | {} | {} | {:.3} | {:.1}% |",
        secs(t.operators, n),
        secs(t.materialise, n),
        secs(t.generation, n),
        secs(t.checks, n),
        secs(t.checkpoint, n),
        o.generations_wall_seconds / n.max(1) as f64,
        if total > 0.0 {
            100.0 * overhead / total
        } else {
            0.0
        }
    )
}

fn main() -> anyhow::Result<()> {
    // Before any tensor exists, as the `swarm` binary does (scripts run this binary directly,
    // without cargo's [env]).
    swarm_model::configure_cpu_threads();
    swarm_model::configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chosen: Vec<(String, String)> = if args.is_empty() {
        CONFIGS
            .iter()
            .map(|(c, d)| (c.to_string(), d.to_string()))
            .collect()
    } else {
        args.iter().map(|c| (c.clone(), c.clone())).collect()
    };
    let env_prefix: String = ENV_KNOBS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
        .collect();
    let command = format!(
        "{env_prefix}cargo run --release -p swarm-evolve --example toy_study{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let preset = match std::env::var("TOY_STUDY_PRESET") {
        Ok(p) => Preset::from_str(&p)?,
        Err(_) => Preset::Full,
    };
    let root = std::env::var_os("TOY_STUDY_ROOT").map(PathBuf::from);
    let report_path = std::env::var_os("TOY_STUDY_REPORT").map_or_else(
        || PathBuf::from("docs/results/toy-cycleqd.md"),
        PathBuf::from,
    );
    let load_at_start = load_average();
    let started = Instant::now();
    let mut ablation = String::new();
    let mut timings = String::new();
    let mut main_table = String::new();
    let mut world_note = String::new();
    let mut seeds = Vec::new();
    let _ = writeln!(
        ablation,
        "| variant | config | test mean, aggregated | test mean, best elites (own skill) | QD-score per archive | coverage per archive | wall (s) |"
    );
    let _ = writeln!(ablation, "|---|---|---:|---:|---|---|---:|");
    let _ = writeln!(
        timings,
        "| variant | generations | operators | materialisation (+ model load) | generation | checks (not hidden by generation) | checkpoint | wall | operators + materialisation share |"
    );
    let _ = writeln!(timings, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (config, description) in &chosen {
        let plan = study_plan(config, root.as_deref())?;
        seeds.push(plan.seed);
        let resume = RunState::exists(&plan.run_dir);
        eprintln!(
            "== {config} ({description}){}",
            if resume { ", resuming" } else { "" }
        );
        let outcome = evolve(
            &plan,
            &EvolveOptions {
                resume,
                progress: true,
                command: command.clone(),
                world: Some(WorldBootstrap {
                    preset,
                    ..WorldBootstrap::toy(&plan)
                }),
                ..Default::default()
            },
        )
        .with_context(|| format!("the run of {config}"))?;
        anyhow::ensure!(
            outcome.finished,
            "{config}: the run stopped after {} generations",
            outcome.generations_done
        );
        if let Some(s) = outcome.world_seconds {
            world_note = format!(
                "The toy world was missing and was built first ({} preset, seed {}) in {s:.0} s; that time is not in the runs' wall times.\n\n",
                preset.name(),
                plan.seed
            );
        }
        let names = plan.skill_names();
        let agg = outcome
            .rows
            .iter()
            .find(|r| r.model.starts_with("aggregated"))
            .map(|r| r.mean());
        let own: Vec<f64> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                outcome
                    .rows
                    .iter()
                    .find(|r| r.model == format!("best elite {n}"))
                    .map(|r| r.scores[i])
            })
            .collect();
        let own_mean = if own.is_empty() {
            f64::NAN
        } else {
            own.iter().sum::<f64>() / own.len() as f64
        };
        let fmt = |v: Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            ablation,
            "| {description} | `{config}` | {} | {own_mean:.3} | {} | {} | {:.0} |",
            agg.map_or("-".into(), |a| format!("{a:.3}")),
            fmt(outcome.archives.iter().map(|m| m.qd_score).collect()),
            fmt(outcome.archives.iter().map(|m| m.coverage).collect()),
            outcome.run_seconds
        );
        let _ = writeln!(timings, "{}", timing_row(description, &outcome));
        if config.ends_with("configs/toy.toml") || main_table.is_empty() {
            main_table = format!(
                "Run `{}` ({config}), report with heatmaps and plots in `{}`:\n\n{}",
                plan.name,
                outcome
                    .report
                    .as_ref()
                    .map_or(PathBuf::new(), |p| p.clone())
                    .display(),
                table_markdown(&names, &outcome.rows)
            );
        }
    }
    seeds.dedup();
    let seeds = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut md = String::new();
    let _ = writeln!(md, "# CycleQD on the toy world\n");
    let _ = writeln!(
        md,
        "Produced by `{command}` (seed {seeds}) in {:.0} s of wall time on this machine ({} threads; 1-minute load average {load_at_start} at the start, {} at the end).\n",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    md.push_str(&world_note);
    let _ = writeln!(md, "Scores are mean episode scores on each skill's **test** split (never seen during evolution); merge baselines chose λ / density on validation.\n");
    let _ = writeln!(md, "## CycleQD against the baselines\n\n{main_table}");
    let _ = writeln!(md, "## Ablation (the paper's components)\n\n{ablation}");
    let _ = writeln!(md, "QD-scores and coverage are on the fitness (validation) split, per archive in skill order (coding / database / os).\n");
    let _ = writeln!(
        md,
        "## Time per generation\n\nMean seconds per generation and stage, over every generation of each run (each run's `report/report.md` has the same for that run alone; `evolve.log` in its run dir has every generation).\n\n{timings}"
    );
    if let Some(dir) = report_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    swarm_model::write_atomic(&report_path, md.as_bytes())?;
    println!("{md}");
    eprintln!("written: {}", report_path.display());
    Ok(())
}
