//! The toy study: CycleQD on the toy world and the paper's ablations, one after another, then
//! `docs/results/toy-cycleqd.md` with what was measured.
//!
//! ```text
//! cargo run --release -p swarm-evolve --example toy_study            # all four configs
//! cargo run --release -p swarm-evolve --example toy_study -- configs/toy.toml   # a subset
//! ```
//!
//! A run dir that already holds a checkpoint is resumed (a finished run is only re-reported).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use swarm_evolve::{evolve, table_markdown, EvolveOptions, RunPlan, RunState};

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chosen: Vec<(String, String)> = if args.is_empty() {
        CONFIGS
            .iter()
            .map(|(c, d)| (c.to_string(), d.to_string()))
            .collect()
    } else {
        args.iter().map(|c| (c.clone(), c.clone())).collect()
    };
    let command = format!(
        "cargo run --release -p swarm-evolve --example toy_study{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let started = Instant::now();
    let mut md = String::new();
    let mut ablation = String::new();
    let mut main_table = String::new();
    let mut seeds = Vec::new();
    let _ = writeln!(
        ablation,
        "| variant | config | test mean, aggregated | test mean, best elites (own skill) | QD-score per archive | coverage per archive | wall (s) |"
    );
    let _ = writeln!(ablation, "|---|---|---:|---:|---|---|---:|");
    for (config, description) in &chosen {
        let plan = RunPlan::from_file(Path::new(config))?;
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
                ..Default::default()
            },
        )?;
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
    let _ = writeln!(md, "# CycleQD on the toy world\n");
    let _ = writeln!(md, "Produced by `{command}` (seed {:?}) in {:.0} s of wall time on this machine (2 shared cores).\n", seeds, started.elapsed().as_secs_f64());
    let _ = writeln!(md, "Scores are mean episode scores on each skill's **test** split (never seen during evolution); merge baselines chose λ / density on validation.\n");
    let _ = writeln!(md, "## CycleQD against the baselines\n\n{main_table}");
    let _ = writeln!(md, "## Ablation (the paper's components)\n\n{ablation}");
    let _ = writeln!(md, "QD-scores and coverage are on the fitness (validation) split, per archive in skill order (coding / database / os).\n");
    let out = Path::new("docs/results/toy-cycleqd.md");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &md)?;
    println!("{md}");
    Ok(())
}
