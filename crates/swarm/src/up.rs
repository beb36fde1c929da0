//! `swarm up`: the whole flow in one command. Builds the toy world if it is missing, evolves a
//! short swarm on it (`configs/quick.toml`), and serves that swarm. Every step reuses what an
//! earlier `swarm up` left: a world on disk is kept, an interrupted evolution is resumed from
//! its last checkpoint, and an exported swarm is served as it is.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use swarm_evolve::{evolve, plan_for_resume, EvolveOptions, RunPlan, RunState, WorldBootstrap};

use crate::serve::ServeArgs;

/// Build the toy world if missing, evolve a short swarm on it, and serve it.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Run config of the evolution (its `output` is the swarm that is served).
    #[arg(long, default_value = "configs/quick.toml")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "SWARM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "SWARM_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Stop once the swarm is evolved and exported; do not serve it.
    #[arg(long)]
    pub no_serve: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The file that marks an exported swarm (see agents/README.md).
const MANIFEST: &str = "swarm.json";

/// Runs `swarm up`.
pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    let plan = RunPlan::from_file(&args.config)
        .with_context(|| format!("reading run config {}", args.config.display()))?;
    let world = WorldBootstrap {
        progress: !args.quiet,
        ..WorldBootstrap::toy(&plan)
    };

    // 1. The toy world, where the config's models are in it.
    if world.models_in_world(&plan).is_empty() {
        eprintln!(
            "[1/3] models: the config's own (base {}), not the toy world's",
            plan.base.reference
        );
    } else if world.missing(&plan).is_empty() {
        eprintln!("[1/3] toy world: found in {}", world.dir.display());
    } else {
        eprintln!(
            "[1/3] toy world: missing; training it now in {} (swarm bootstrap --preset {} --seed {}: \
             a base and three experts, trained on this CPU; docs/results/toy-world.md says how long it took here)",
            world.dir.display(),
            world.preset.name(),
            world.seed
        );
        if let Some(report) = world.ensure(&plan)? {
            eprintln!(
                "      built in {:.0} s ({} parameters per model)",
                report.timings.total.as_secs_f64(),
                report.parameters
            );
        }
    }

    // 2. The swarm.
    let swarm_dir = evolve_unless_done(&plan, &world, args)?;

    // 3. Serving it.
    if args.no_serve {
        eprintln!(
            "[3/3] not serving (--no-serve); serve it with: swarm serve --swarm {}",
            swarm_dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "[3/3] serving {} on http://{}:{}/v1 (model \"swarm\" routes each request to an elite; Ctrl-C stops)",
        swarm_dir.display(),
        args.host,
        args.port
    );
    let serve = ServeArgs {
        host: args.host.clone(),
        port: args.port,
        swarm: Some(swarm_dir),
        model: None,
        ..ServeArgs::default()
    };
    crate::serve::run(&serve)
}

/// Evolves the plan's swarm unless it is exported already; resumes an unfinished run.
/// Returns the swarm's directory.
fn evolve_unless_done(
    plan: &RunPlan,
    world: &WorldBootstrap,
    args: &UpArgs,
) -> anyhow::Result<PathBuf> {
    if is_exported(&plan.output) {
        eprintln!(
            "[2/3] swarm: found {} (delete it, and {}, to evolve a new one)",
            plan.output.display(),
            plan.run_dir.display()
        );
        return Ok(plan.output.clone());
    }
    let resume = RunState::exists(&plan.run_dir);
    // A resumed run keeps the config it started with (the copy in its run dir).
    let plan = if resume {
        plan_for_resume(&plan.run_dir)?
    } else {
        plan.clone()
    };
    eprintln!(
        "[2/3] swarm: {} {} generations of CycleQD ({} skills) in {}, exported to {}",
        if resume { "resuming" } else { "evolving" },
        plan.qd.generations,
        plan.skills.len(),
        plan.run_dir.display(),
        plan.output.display()
    );
    let outcome = evolve(
        &plan,
        &EvolveOptions {
            resume,
            progress: !args.quiet,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            world: Some(world.clone()),
            ..Default::default()
        },
    )
    .with_context(|| {
        if resume {
            format!(
                "resuming the run in {} (delete that directory to start over, e.g. after the toy world was rebuilt)",
                plan.run_dir.display()
            )
        } else {
            format!("evolving {}", plan.name)
        }
    })?;
    let swarm_dir = outcome
        .swarm_dir
        .filter(|dir| is_exported(dir))
        .with_context(|| {
            format!(
                "the run in {} ended after {} of {} generations without exporting a swarm",
                outcome.run_dir.display(),
                outcome.generations_done,
                plan.qd.generations
            )
        })?;
    eprintln!(
        "      done in {:.0} s; report: {}",
        outcome.wall_seconds,
        outcome
            .report
            .map_or_else(|| "-".to_string(), |r| r.display().to_string())
    );
    Ok(swarm_dir)
}

fn is_exported(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}
