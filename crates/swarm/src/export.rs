//! `swarm export --swarm DIR --elite NAME --out DIR`: one elite of a swarm as a standalone HF
//! model dir (`model.safetensors`, `config.json`, tokenizer files, chat template), for tools
//! that know nothing of swarms (transformers, vLLM, llama.cpp's converter, `swarm chat`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `swarm export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The swarm directory (`agents/<name>/`, written by `swarm evolve`).
    #[arg(long)]
    pub swarm: PathBuf,
    /// Which elite, named as the API's `model` field names it: `swarm` (the best mean score),
    /// `swarm/<skill>` (the best for that skill) or an elite id (see `GET /v1/models`).
    #[arg(long, default_value = "swarm")]
    pub elite: String,
    /// The HF dir to write.
    #[arg(long, short)]
    pub out: PathBuf,
    /// dtype of `model.safetensors`: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Replace the output dir if it exists (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
}

/// Runs `swarm export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let Some(dtype) = swarm_merge::parse_dtype(&args.dtype) else {
        bail!("--dtype {}: use f32, bf16 or f16", args.dtype);
    };
    if args.out.exists() && !args.force {
        bail!(
            "{} exists; pass --force to replace it (only once the new dir is complete)",
            args.out.display()
        );
    }
    let opened = swarm_serve::open_swarm(&args.swarm)
        .with_context(|| format!("opening the swarm {}", args.swarm.display()))?;
    let router = swarm_serve::Router::new(opened.info.clone(), None);
    let elite = match router.route(&args.elite, String::new) {
        Ok(route) => route.elite,
        Err(_) => {
            let skills = opened.info.skills.join(", ");
            let ids: Vec<&str> = opened.info.elites.iter().map(|e| e.id.as_str()).collect();
            bail!(
                "no elite `{}` in {}: name `swarm`, `swarm/<skill>` (skills: {skills}) or an \
                 elite id ({})",
                args.elite,
                args.swarm.display(),
                ids.join(", ")
            );
        }
    };
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!("materialising {elite} into {}", args.out.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let out = swarm_merge::DirOutput {
        dtype,
        overwrite: args.force,
        ..swarm_merge::DirOutput::new(&args.out)
    };
    let exported = opened.export_elite(&elite, &out);
    spinner.finish_and_clear();
    exported.with_context(|| format!("exporting `{elite}` to {}", args.out.display()))?;
    println!(
        "{}: elite {elite} of swarm {} ({:.2} s); try `swarm chat --model {}`",
        args.out.display(),
        opened.info.name,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
