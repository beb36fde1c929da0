//! Re-trains one expert of a finished toy world from that world's saved base, with settings
//! overridden from the environment, and scores it on every skill's test split: a cheap way to
//! tune one expert without rebuilding the base (the world is deterministic for its seed, so the
//! base, the tokenizer and the data are the ones `bootstrap` used).
//!
//! `TOY_WORLD=<world dir> TOY_SKILL=coding TOY_OUT=<dir> [TOY_EXPERT_STEPS, TOY_EXPERT_LR,
//! TOY_REPLAY] cargo run --release -p swarm-train --example expert_probe`

mod common;

use common::env;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use swarm_model::{save_hf_dir, Pretrained};
use swarm_tasks::Skill;
use swarm_train::{
    encode_all, evaluate_models, progress_bar, train_expert, world_documents, WorldReport,
};

fn main() -> anyhow::Result<()> {
    common::start();
    let world: PathBuf = env("TOY_WORLD").context("set TOY_WORLD to a finished world's dir")?;
    let out: PathBuf = env("TOY_OUT").context("set TOY_OUT")?;
    let skill: Skill = std::env::var("TOY_SKILL")
        .unwrap_or_else(|_| "coding".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("TOY_SKILL: {e}"))?;
    let report_path = world.join("bootstrap.json");
    let report: WorldReport = serde_json::from_slice(
        &std::fs::read(&report_path).with_context(|| format!("reading {report_path:?}"))?,
    )
    .with_context(|| format!("parsing {report_path:?}"))?;
    let mut spec = report
        .spec
        .context("the world's bootstrap.json does not record its settings")?;
    spec.override_expert(skill, env("TOY_EXPERT_STEPS"), env("TOY_EXPERT_LR"));
    let settings = spec.expert_settings(skill);
    if let Some(v) = env("TOY_REPLAY") {
        spec.expert_replay = v;
    }

    let base = Pretrained::from_hf_dir(&world.join("base"))?;
    let weights = base.load_weights(&Device::Cpu, DType::F32)?;
    let template = base.chat_template()?;
    let docs = world_documents(&spec, report.seed);
    let (base_data, _) = encode_all(&docs.base, &base.tokenizer, &template, spec.max_seq_len)?;
    let k = Skill::ALL
        .iter()
        .position(|&s| s == skill)
        .context("unknown skill")?;
    let (skill_data, _) = encode_all(
        &docs.skills[k],
        &base.tokenizer,
        &template,
        spec.max_seq_len,
    )?;
    let (train_report, expert) = train_expert(
        &spec,
        report.seed,
        skill,
        &weights,
        &base.config,
        &Device::Cpu,
        &skill_data,
        &base_data,
        progress_bar(settings.steps, skill.name()),
    )?;
    let dir = out.join(skill.name());
    save_hf_dir(
        &dir,
        &base.config,
        &expert,
        &base.tokenizer,
        Some(swarm_model::CHATML_TEMPLATE),
    )?;
    let scores = evaluate_models(&[dir], &spec, report.seed, &out, false)?;
    println!(
        "seed {} {} steps {} lr {} replay {}: loss {:.3} -> {:.3}; pass rates {:?}",
        report.seed,
        skill.name(),
        settings.steps,
        settings.lr,
        spec.expert_replay,
        train_report.first_loss,
        train_report.final_loss,
        scores.first().map(|s| &s.pass_rate)
    );
    Ok(())
}
