//! `swarm merge config.yaml --out DIR`: mergekit-style merges (linear, task_arithmetic, ties,
//! dare_linear, dare_ties, slerp) streamed into an HF dir.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `swarm merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// mergekit YAML (merge_method, base_model, models[].model/parameters, parameters, dtype).
    pub config: PathBuf,
    /// Output HF dir (model.safetensors, config.json, the base's tokenizer files).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Seed of DARE's random drops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace the output dir if it exists (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
}

/// Runs `swarm merge`.
pub fn run(args: &MergeArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let plan = swarm_merge::MergePlan::from_yaml(&text)
        .with_context(|| format!("{}", args.config.display()))?
        .with_seed(args.seed);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let options = swarm_merge::RunOptions {
        overwrite: args.force,
    };
    let report = swarm_merge::run(&plan, &args.out, &options, &mut |done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    println!(
        "{}: {} tensors, {:.1} MB in {:.2} s ({})",
        report.out_dir.display(),
        report.tensors,
        report.bytes_written as f64 / 1e6,
        report.seconds,
        plan.method.name()
    );
    Ok(())
}
