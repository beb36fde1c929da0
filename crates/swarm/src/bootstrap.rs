//! `swarm bootstrap`: build the toy world (a base and three experts) and score it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use swarm_train::{
    bootstrap, markdown_report, score_table, summary, BootstrapOptions, Preset, WorldSpec,
};

/// The size of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PresetArg {
    /// Under a minute: a pipeline check (scores mean nothing).
    Micro,
    /// Minutes on 2 cores: the world the targets hold for.
    Full,
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// World size.
    #[arg(long, value_enum, default_value = "full")]
    pub preset: PresetArg,
    /// Seed of data, tokenizer, initialisation and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Several seeds, comma-separated (e.g. `0,1,2`): each world goes to `OUT/seed-N/`.
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    pub seeds: Vec<u64>,
    /// Where the model dirs go (default: the swarm cache's `toy-<edition>/`, e.g. `~/.cache/swarm/toy-2`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the results as markdown to this file (e.g. docs/results/toy-world.md).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Skip the evaluation on the test splits.
    #[arg(long)]
    pub no_eval: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &BootstrapArgs) -> anyhow::Result<()> {
    let preset = match args.preset {
        PresetArg::Micro => Preset::Micro,
        PresetArg::Full => Preset::Full,
    };
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => swarm_model::toy_models_dir(),
    };
    let seeds = if args.seeds.is_empty() {
        vec![args.seed]
    } else {
        args.seeds.clone()
    };
    let start = Instant::now();
    let mut reports = Vec::new();
    for &seed in &seeds {
        let dir = if seeds.len() == 1 {
            out.clone()
        } else {
            out.join(format!("seed-{seed}"))
        };
        let opts = BootstrapOptions {
            spec: WorldSpec::preset(preset),
            seed,
            out: dir.clone(),
            progress: !args.quiet,
            evaluate: !args.no_eval,
        };
        eprintln!(
            "building the toy world ({} preset, seed {seed}) in {}",
            preset.name(),
            dir.display()
        );
        let report = bootstrap(&opts)
            .with_context(|| format!("bootstrap with seed {seed} into {}", dir.display()))?;
        print!("{}", summary(&report));
        if !report.scores.is_empty() {
            println!("pass rates on the test splits (%, * = the expert's own skill):");
            print!("{}", score_table(&report));
        }
        reports.push(report);
    }
    if let Some(path) = &args.report {
        let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
        let command = format!(
            "swarm bootstrap --preset {} --seeds {} --report {}",
            preset.name(),
            seeds.join(","),
            path.display()
        );
        let text = markdown_report(&reports, &command, start.elapsed().as_secs_f64());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}
