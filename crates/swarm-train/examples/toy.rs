//! Builds one toy world with a preset, optionally overridden from the environment (for tuning):
//! `TOY_PRESET`, `TOY_SEED`, `TOY_OUT`, `TOY_BASE_STEPS`, `TOY_EXPERT_STEPS`, `TOY_BASE_LR`,
//! `TOY_EXPERT_LR`, `TOY_BASE_SKILL`, `TOY_GENERAL`, `TOY_TEST`, `TOY_HIDDEN`, `TOY_LAYERS`, `TOY_HEADS`, `TOY_REPLAY`,
//! `TOY_SPLIT_DIGITS` (0 or 1), and per skill `TOY_EXPERT_STEPS_<SKILL>`, `TOY_EXPERT_LR_<SKILL>`, `TOY_BASE_SKILL_<SKILL>`
//! (`SKILL` = `CODING`, `DATABASE` or `OS`).
//!
//! `cargo run --release -p swarm-train --example toy`

mod common;

use common::env;
use swarm_train::{
    bootstrap, markdown_report, score_table, summary, BootstrapOptions, Preset, WorldSpec,
};

fn main() -> anyhow::Result<()> {
    common::start();
    let preset: Preset = std::env::var("TOY_PRESET")
        .unwrap_or_else(|_| "full".into())
        .parse()?;
    let mut spec = WorldSpec::preset(preset);
    if let Some(v) = env("TOY_BASE_STEPS") {
        spec.base.steps = v;
    }
    if let Some(v) = env("TOY_EXPERT_STEPS") {
        spec.expert.steps = v;
    }
    if let Some(v) = env("TOY_BASE_LR") {
        spec.base.lr = v;
    }
    if let Some(v) = env("TOY_EXPERT_LR") {
        spec.expert.lr = v;
    }
    if let Some(v) = env("TOY_BASE_SKILL") {
        spec.base_skill_examples = v;
    }
    if let Some(v) = env("TOY_GENERAL") {
        spec.general_docs = v;
    }
    if let Some(v) = env("TOY_TEST") {
        spec.test_episodes = v;
    }
    if let Some(v) = env("TOY_HIDDEN") {
        spec.hidden_size = v;
        spec.intermediate_size = 3 * v;
    }
    if let Some(v) = env("TOY_HEADS") {
        spec.num_heads = v;
        spec.num_kv_heads = v;
    }
    if let Some(v) = env("TOY_REPLAY") {
        spec.expert_replay = v;
    }
    if let Some(v) = env("TOY_LAYERS") {
        spec.num_layers = v;
    }
    if let Some(v) = env::<u8>("TOY_SPLIT_DIGITS") {
        spec.split_digits = v != 0;
    }
    for skill in swarm_tasks::Skill::ALL {
        let upper = skill.name().to_ascii_uppercase();
        let steps = env(&format!("TOY_EXPERT_STEPS_{upper}"));
        let lr = env(&format!("TOY_EXPERT_LR_{upper}"));
        spec.override_expert(skill, steps, lr);
        if let Some(n) = env(&format!("TOY_BASE_SKILL_{upper}")) {
            spec.override_base_examples(skill, n);
        }
    }
    // TOY_REPORT_FROM=dir,dir,... renders TOY_REPORT from finished worlds' bootstrap.json.
    if let (Ok(dirs), Ok(path)) = (
        std::env::var("TOY_REPORT_FROM"),
        std::env::var("TOY_REPORT"),
    ) {
        let mut reports = Vec::new();
        for d in dirs.split(',') {
            let text = std::fs::read_to_string(std::path::Path::new(d).join("bootstrap.json"))?;
            reports.push(serde_json::from_str::<swarm_train::WorldReport>(&text)?);
        }
        let seeds: Vec<String> = reports.iter().map(|r| r.seed.to_string()).collect();
        let total: f64 = reports.iter().map(|r| r.timings.total.as_secs_f64()).sum();
        let command = format!(
            "TOY_SEED=<s> cargo run --release -p swarm-train --example toy, once per seed ({}), \
             then TOY_REPORT_FROM",
            seeds.join(", ")
        );
        std::fs::write(&path, markdown_report(&reports, &command, total))?;
        return Ok(());
    }
    // TOY_SEEDS=0,1,2 builds one world per seed in OUT/seed-N; TOY_REPORT=path writes markdown.
    let seeds: Vec<u64> = match std::env::var("TOY_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?,
        Err(_) => vec![env("TOY_SEED").unwrap_or(0)],
    };
    let out = std::path::PathBuf::from(
        std::env::var("TOY_OUT").unwrap_or_else(|_| "/tmp/toy-world".into()),
    );
    let start = std::time::Instant::now();
    let mut reports = Vec::new();
    for &seed in &seeds {
        let dir = if seeds.len() == 1 {
            out.clone()
        } else {
            out.join(format!("seed-{seed}"))
        };
        let report = bootstrap(&BootstrapOptions {
            spec: spec.clone(),
            seed,
            out: dir,
            progress: false,
            evaluate: env::<u8>("TOY_NO_EVAL").is_none(),
        })?;
        print!("{}", summary(&report));
        print!("{}", score_table(&report));
        reports.push(report);
    }
    if let Ok(path) = std::env::var("TOY_REPORT") {
        let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
        let command = format!(
            "TOY_SEEDS={} TOY_REPORT={path} cargo run --release -p swarm-train --example toy",
            list.join(",")
        );
        let text = markdown_report(&reports, &command, start.elapsed().as_secs_f64());
        std::fs::write(&path, text)?;
    }
    Ok(())
}
