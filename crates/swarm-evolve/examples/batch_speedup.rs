//! Generation throughput of the evaluator: one episode at a time against batches, on the
//! fitness episodes of a run config's skills (the base model answers).
//!
//! ```text
//! cargo run --release -p swarm-evolve --example batch_speedup -- configs/toy.toml 1 8 32
//! SWARM_FIXED_LENGTH=1 cargo run ... # every answer runs to max_new_tokens (pure throughput)
//! ```
//!
//! With the model's own stops, a batch runs as long as its longest answer, so the speed-up
//! depends on how answer lengths vary; with fixed lengths it is the throughput gain alone.

use std::path::Path;
use std::time::Instant;

use swarm_evolve::{ModelAgent, RunPlan};
use swarm_model::{parse_device, Llama, Precision, Pretrained};
use swarm_tasks::DataDirs;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = args.first().map_or("configs/toy.toml", |s| s.as_str());
    let batches: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![1, 8, 32]
    };
    let plan = RunPlan::from_file(Path::new(config))?;
    let base = Pretrained::open(&plan.base.reference)?;
    let device = parse_device(&plan.model.device)?;
    let precision = plan
        .model
        .precision
        .unwrap_or(Precision::default_for(&device));
    let model = Llama::load(base.weights.as_ref(), &base.config, &device, precision)?;
    let template = base.chat_template()?;
    let dirs = DataDirs::from_env();
    let mut prompts = Vec::new();
    for s in &plan.skills {
        for e in swarm_tasks::episodes(&s.fitness.request(s.skill), &dirs)? {
            prompts.push(e.prompt);
        }
    }
    let msgs: Vec<&[swarm_tasks::ChatMessage]> = prompts.iter().map(|p| p.as_slice()).collect();
    println!("| batch | conversations | seconds | conversations/s | speed-up |");
    println!("|---:|---:|---:|---:|---:|");
    let mut first = None;
    for b in batches {
        let agent = ModelAgent::new(
            &model,
            &base.tokenizer,
            &template,
            plan.model.max_new_tokens,
            b,
        );
        let t = Instant::now();
        let answers = agent.answer(&msgs);
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(answers.len() == msgs.len());
        let rate = msgs.len() as f64 / secs;
        let base_rate = *first.get_or_insert(rate);
        println!(
            "| {b} | {} | {secs:.2} | {rate:.2} | {:.2}x |",
            msgs.len(),
            rate / base_rate
        );
    }
    Ok(())
}
