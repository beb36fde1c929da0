//! Tables of a bootstrap's scores: plain text for the terminal, markdown for the results doc,
//! and the check of the toy world's targets.

use std::fmt::Write;

use swarm_tasks::Skill;

use crate::world::{WorldReport, WorldSpec};

/// Rows models, columns skills, pass rates in percent.
pub fn score_table(report: &WorldReport) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:<10}", "model");
    for skill in Skill::ALL {
        let _ = write!(s, "{:>10}", skill.name());
    }
    s.push('\n');
    for m in &report.scores {
        let _ = write!(s, "{:<10}", m.model);
        for (skill, rate) in Skill::ALL.iter().zip(&m.pass_rate) {
            let mark = if skill.name() == m.model { "*" } else { " " };
            let _ = write!(s, "{:>9.1}{mark}", 100.0 * rate);
        }
        s.push('\n');
    }
    s
}

/// A one-paragraph summary: parameters, losses, wall times.
pub fn summary(report: &WorldReport) -> String {
    let t = &report.timings;
    let mut s = format!(
        "toy world ({} preset, seed {}): {} parameters, vocab {}, in {}\n",
        report.preset.name(),
        report.seed,
        report.parameters,
        report.vocab_size,
        report.out.display()
    );
    let _ = writeln!(
        s,
        "base: loss {:.3} -> {:.3} in {} steps ({:.0} s)",
        report.base_train.first_loss,
        report.base_train.final_loss,
        report.base_train.steps,
        report.base_train.elapsed.as_secs_f64()
    );
    for (name, r) in &report.expert_train {
        let _ = writeln!(
            s,
            "{name}: loss {:.3} -> {:.3} in {} steps ({:.0} s)",
            r.first_loss,
            r.final_loss,
            r.steps,
            r.elapsed.as_secs_f64()
        );
    }
    let _ = writeln!(
        s,
        "wall time: data {:.0} s, base {:.0} s, experts {:.0} s, save {:.0} s, eval {:.0} s, total {:.0} s",
        t.data.as_secs_f64(),
        t.base.as_secs_f64(),
        t.experts.as_secs_f64(),
        t.save.as_secs_f64(),
        t.eval.as_secs_f64(),
        t.total.as_secs_f64()
    );
    s
}

/// The targets of the toy world, checked on one report: each expert >= 50% on its skill and
/// above the base; the base above zero on every skill. Returns (target, held) pairs.
pub fn check_targets(report: &WorldReport) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let Some(base) = report.scores.iter().find(|m| m.model == "base") else {
        return out;
    };
    for (k, skill) in Skill::ALL.iter().enumerate() {
        let Some(expert) = report.scores.iter().find(|m| m.model == skill.name()) else {
            continue;
        };
        let (e, b) = (expert.pass_rate[k], base.pass_rate[k]);
        out.push((format!("{skill} expert >= 50% on {skill}"), e >= 0.5));
        out.push((format!("{skill} expert > base on {skill}"), e > b));
        out.push((format!("base > 0 on {skill}"), b > 0.0));
    }
    out
}

/// The markdown section of one seed.
pub fn markdown_section(report: &WorldReport) -> String {
    let mut s = format!("### Seed {}\n\n", report.seed);
    s.push_str("| model |");
    for skill in Skill::ALL {
        let _ = write!(s, " {skill} |");
    }
    s.push_str("\n|---|");
    for _ in Skill::ALL {
        s.push_str("---:|");
    }
    s.push('\n');
    for m in &report.scores {
        let _ = write!(s, "| {} |", m.model);
        for (k, skill) in Skill::ALL.iter().enumerate() {
            let pct = 100.0 * m.pass_rate[k];
            if m.model == skill.name() {
                let _ = write!(s, " **{pct:.0}%** ({}/{}) |", m.passed[k], m.episodes[k]);
            } else {
                let _ = write!(s, " {pct:.0}% ({}/{}) |", m.passed[k], m.episodes[k]);
            }
        }
        s.push('\n');
    }
    s.push('\n');
    let t = &report.timings;
    let _ = writeln!(
        s,
        "Loss: base {:.2} → {:.2} ({} steps); {}.",
        report.base_train.first_loss,
        report.base_train.final_loss,
        report.base_train.steps,
        report
            .expert_train
            .iter()
            .map(|(n, r)| format!(
                "{n} {:.2} → {:.2} ({} steps)",
                r.first_loss, r.final_loss, r.steps
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "Wall time: {:.0} s (data + tokenizer {:.0} s, base {:.0} s, experts {:.0} s, save {:.0} s, evaluation {:.0} s).\n",
        t.total.as_secs_f64(),
        t.data.as_secs_f64(),
        t.base.as_secs_f64(),
        t.experts.as_secs_f64(),
        t.save.as_secs_f64(),
        t.eval.as_secs_f64()
    );
    let failed: Vec<String> = check_targets(report)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| t)
        .collect();
    if failed.is_empty() {
        s.push_str("Targets: all hold.\n\n");
    } else {
        let _ = writeln!(s, "Targets missed: {}.\n", failed.join("; "));
    }
    s
}

/// Mean pass rates over seeds (rows models, columns skills) as a markdown table.
pub fn markdown_mean(reports: &[WorldReport]) -> String {
    let mut s = String::from("| model |");
    for skill in Skill::ALL {
        let _ = write!(s, " {skill} |");
    }
    s.push_str("\n|---|");
    for _ in Skill::ALL {
        s.push_str("---:|");
    }
    s.push('\n');
    let Some(first) = reports.first() else {
        return s;
    };
    for (row, m) in first.scores.iter().enumerate() {
        let _ = write!(s, "| {} |", m.model);
        for k in 0..Skill::ALL.len() {
            let rates: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.scores.get(row).map(|m| m.pass_rate[k]))
                .collect();
            let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
            let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = write!(
                s,
                " {:.0}% ({:.0}–{:.0}) |",
                100.0 * mean,
                100.0 * min,
                100.0 * max
            );
        }
        s.push('\n');
    }
    s
}

/// The results document of several seeds: setup, mean table, one section per seed.
/// `command` is what produced it (written into the text).
pub fn markdown_report(reports: &[WorldReport], command: &str, total_secs: f64) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    // What was built; reports from before the spec was recorded used their preset's.
    let spec = first
        .spec
        .clone()
        .unwrap_or_else(|| WorldSpec::preset(first.preset));
    let mut s = String::new();
    s.push_str("# The toy world: base and experts\n\n");
    s.push_str(&format!(
        "Written by `{command}` (see `scripts/toy/toy-world.sh`), {} threads, {:.0} s for all \
         seeds. Scores are pass rates \
         on each skill's synthetic **test** split ({} episodes per skill, greedy decoding, \
         checked by swarm-tasks' real checkers: Python tests, SQLite, bubblewrap shell).\n\n",
        first.threads, total_secs, spec.test_episodes
    ));
    s.push_str(&format!(
        "Model: Llama architecture, {} layers, hidden {}, MLP {}, {} heads ({} KV), tied \
         embeddings, byte-level BPE vocabulary of {} tokens trained on the corpus{}; {} \
         parameters. Base: {} steps × {} sequences (lr {}) on {} general documents plus {} \
         training chats of each skill{}. Experts: {} steps × {} (lr {}) from the base on {} chats \
         of their skill, plus {:.0}% of their sequences replayed from the base's mix (rehearsal){}. \
         Loss only on the assistant's answers in chats.\n\n",
        spec.num_layers,
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_heads,
        spec.num_kv_heads,
        first.vocab_size,
        if spec.split_digits {
            " (digits split one per token)"
        } else {
            ""
        },
        first.parameters,
        spec.base.steps,
        spec.base.batch_size,
        spec.base.lr,
        spec.general_docs,
        spec.base_skill_examples,
        base_overrides_text(&spec),
        spec.expert.steps,
        spec.expert.batch_size,
        spec.expert.lr,
        spec.expert_examples,
        spec.expert_replay * 100.0,
        overrides_text(&spec),
    ));
    if !first.scores.is_empty() {
        s.push_str("## Mean over seeds (min–max)\n\n");
        s.push_str(&markdown_mean(reports));
        s.push('\n');
    }
    s.push_str("## Per seed\n\n");
    for r in reports {
        s.push_str(&markdown_section(r));
    }
    s
}

/// ", except the coding expert: 2000 steps (lr 0.004)" for the spec's per-expert overrides.
fn overrides_text(spec: &WorldSpec) -> String {
    let parts: Vec<String> = spec
        .expert_overrides
        .iter()
        .map(|o| {
            let settings = spec.expert_settings(o.skill);
            format!(
                "the {} expert: {} steps (lr {})",
                o.skill.name(),
                settings.steps,
                settings.lr
            )
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(", except {}", parts.join(", "))
    }
}

/// " (N of <skill>)" for each skill whose share of the base's mix differs.
fn base_overrides_text(spec: &WorldSpec) -> String {
    spec.base_skill_overrides
        .iter()
        .map(|o| format!(" ({} of {})", o.examples, o.skill.name()))
        .collect()
}
