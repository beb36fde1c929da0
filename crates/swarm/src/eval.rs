//! `swarm eval`: score one model on one suite with the real checkers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use swarm_tasks::{evaluate, EvalRequest, Skill, Split, SuiteRequest, SUITES};
use swarm_train::ModelAgent;

use crate::model_args::ModelArgs;

/// Score a model on a skill's suite: generate answers in batches (greedy), run the checkers,
/// print the score and write per-episode results as JSONL.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The skill: coding, database or os.
    #[arg(long, required_unless_present = "list")]
    pub skill: Option<Skill>,
    /// Print every suite (skill, name, splits, source) and exit.
    #[arg(long)]
    pub list: bool,
    /// The suite (e.g. synthetic, humaneval, mbpp, spider, intercode-sql, agentbench,
    /// nl2bash); `--list` prints them all.
    #[arg(long, default_value = "synthetic")]
    pub suite: String,
    /// train, validation or test.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// At most this many episodes (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Seed of synthetic suites.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most new tokens per answer (at least 1).
    #[arg(long, default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tokens: usize,
    /// Conversations generated together in one batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Where the per-episode JSONL goes (default: `eval-<skill>-<suite>-<split>.jsonl`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Every suite, a line each: skill, name, splits and where it comes from.
fn suite_list() -> String {
    SUITES
        .iter()
        .map(|s| {
            let splits: Vec<&str> = s.splits.iter().map(|p| p.name()).collect();
            format!(
                "{:<9} {:<14} {:<23} {}\n",
                s.skill.name(),
                s.name,
                splits.join(","),
                s.description
            )
        })
        .collect()
}

/// `swarm eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let skill = match (args.list, args.skill) {
        (false, Some(skill)) => skill,
        _ => {
            print!("{}", suite_list());
            return Ok(());
        }
    };
    let known = SUITES
        .iter()
        .any(|s| s.skill == skill && s.name == args.suite);
    if !known {
        let names: Vec<_> = SUITES
            .iter()
            .filter(|s| s.skill == skill)
            .map(|s| s.name)
            .collect();
        anyhow::bail!(
            "no suite `{}` for skill {}; available: {}",
            args.suite,
            skill,
            names.join(", ")
        );
    }
    let loaded = args.model.load()?;
    let agent = ModelAgent::new(
        &loaded.model,
        &loaded.tokenizer,
        &loaded.template,
        args.max_tokens,
        args.batch_size,
    );
    let suite = SuiteRequest {
        skill,
        suite: args.suite.clone(),
        split: args.split,
        limit: args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        seed: args.seed,
    };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "eval-{}-{}-{}.jsonl",
            skill, args.suite, args.split
        ))
    });
    let mut request = EvalRequest::new(suite);
    request.batch_size = args.batch_size.max(1);
    request.results_path = Some(out.clone());
    let summary = evaluate(&agent, &request).context("evaluation failed")?;
    println!("{summary}");
    if agent.truncated_prompts() > 0 {
        eprintln!(
            "note: {} prompts were longer than the model's {} positions allow and were cut from the left",
            agent.truncated_prompts(),
            loaded.model.config().max_position_embeddings
        );
    }
    eprintln!("per-episode results: {}", out.display());
    Ok(())
}
