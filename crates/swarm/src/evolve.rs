//! `swarm evolve`: CycleQD over the base and experts of a run config.

use std::path::PathBuf;

use anyhow::Context as _;
use swarm_evolve::{evolve, plan_for_resume, DryRun, EvolveOptions, RunPlan, WorldBootstrap};

/// The run config `swarm evolve` uses when none is given.
const DEFAULT_CONFIG: &str = "configs/toy.toml";

/// Evolve a swarm with CycleQD (default: `configs/toy.toml` on the toy world, which is built
/// first when its models are not on disk).
#[derive(Debug, Clone, clap::Args)]
pub struct EvolveArgs {
    /// Run config (TOML); see `configs/`. Default: configs/toy.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this run directory from its last checkpoint.
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Validate the config and print the plan (models, skills, archives, sizes, memory)
    /// without loading any weights.
    #[arg(long)]
    pub dry_run: bool,
    /// Override the run directory of the config.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Override where the swarm is exported.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Override the number of generations.
    #[arg(long)]
    pub generations: Option<u64>,
    /// Stop after this many generations in this invocation (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Do not export or report when the run completes.
    #[arg(long)]
    pub no_finish: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn load_plan(args: &EvolveArgs) -> anyhow::Result<RunPlan> {
    let mut plan = if let Some(dir) = &args.resume {
        plan_for_resume(dir)?
    } else {
        let path = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        RunPlan::from_file(&path)
            .with_context(|| format!("reading run config {}", path.display()))?
    };
    if let Some(d) = &args.run_dir {
        plan.run_dir = d.clone();
    }
    if let Some(o) = &args.output {
        plan.output = o.clone();
    }
    if let Some(g) = args.generations {
        plan.qd.generations = g;
    }
    Ok(plan)
}

/// Runs `swarm evolve`.
pub fn run(args: &EvolveArgs) -> anyhow::Result<()> {
    let plan = load_plan(args)?;
    // A config naming toy models (`toy:base`, ...) gets the toy world built first when they
    // are not on disk, as `swarm bootstrap --seed <the run's seed>` would build it.
    let world = WorldBootstrap {
        progress: !args.quiet,
        ..WorldBootstrap::toy(&plan)
    };
    if args.dry_run {
        let note = world.describe(&plan);
        print!("{}", DryRun::new(plan)?);
        if let Some(note) = note {
            println!("note: {note}");
        }
        return Ok(());
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let outcome = evolve(
        &plan,
        &EvolveOptions {
            resume: args.resume.is_some(),
            progress: !args.quiet,
            max_new_generations: args.stop_after,
            no_finish: args.no_finish,
            command,
            world: Some(world),
        },
    )?;
    println!(
        "{} generations done in {} ({:.0} s this invocation)",
        outcome.generations_done,
        outcome.run_dir.display(),
        outcome.wall_seconds
    );
    if let Some(s) = outcome.swarm_dir {
        println!("swarm: {}", s.display());
    }
    if let Some(r) = outcome.report {
        println!("report: {}", r.display());
    }
    if !outcome.finished {
        println!(
            "continue with: swarm evolve --resume {}",
            outcome.run_dir.display()
        );
    }
    Ok(())
}
