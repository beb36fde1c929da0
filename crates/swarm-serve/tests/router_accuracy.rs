//! The router's classifier: trained on the skills' synthetic training prompts, measured on
//! held-out prompts (the synthetic test split, and public benchmarks when their files are
//! there), per skill, with the time per classification. Target: 95% or better.
//!
//! Each held-out prompt is read twice: as the router reads a request (every turn, the
//! system prompt included) and with its user turns only (a client that sends no system
//! prompt). The target is asserted on the synthetic test split, read both ways.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use swarm_serve::{routing_text, synthetic_prompts, user_turns_text, SkillClassifier};
use swarm_tasks::{load_suite, DataDirs, Skill, Split, SuiteRequest};

/// How a task prompt is read into the text the router classifies.
type ReadPrompt = fn(&[swarm_tasks::ChatMessage]) -> String;

#[test]
fn held_out_accuracy_per_skill() {
    let started = Instant::now();
    let clf = SkillClassifier::train_on_skills(300, 0).unwrap();
    let train_s = started.elapsed().as_secs_f64();
    println!("trained on 3 x 300 synthetic training prompts (each with and without its system prompt) in {train_s:.2} s");
    println!("| held-out set | read as | skill | accuracy | n |");
    println!("|---|---|---|---|---|");
    let readings: [(&str, ReadPrompt); 2] =
        [("all turns", routing_text), ("user turns", user_turns_text)];
    let mut test = Vec::new();
    for (reading, read) in readings {
        let examples = synthetic_prompts(Split::Test, 200, 0, read);
        let report = clf.evaluate(examples.iter().map(|(s, t)| (s.as_str(), t.as_str())));
        for (skill, (ok, n)) in &report {
            let acc = *ok as f64 / *n as f64;
            println!(
                "| synthetic test split | {reading} | {skill} | {:.1}% | {n} |",
                100.0 * acc
            );
            assert!(acc >= 0.95, "{skill} ({reading}): {acc}");
        }
        test.extend(examples);
    }
    // Public benchmarks: a distribution the classifier never saw.
    let dirs = DataDirs::from_env();
    for (skill, suite) in [
        (Skill::Coding, "mbpp"),
        (Skill::Coding, "humaneval"),
        (Skill::Database, "spider"),
        (Skill::Os, "agentbench"),
        (Skill::Os, "nl2bash"),
    ] {
        let req = SuiteRequest {
            skill,
            suite: suite.into(),
            split: Split::Test,
            limit: Some(300),
            seed: 0,
        };
        match load_suite(&req, &dirs) {
            Ok(loaded) if !loaded.episodes.is_empty() => {
                for (reading, read) in readings {
                    let texts: Vec<String> =
                        loaded.episodes.iter().map(|e| read(&e.prompt)).collect();
                    let r = clf.evaluate(texts.iter().map(|t| (skill.name(), t.as_str())));
                    let (ok, n) = r[skill.name()];
                    println!(
                        "| {suite} (public) | {reading} | {skill} | {:.1}% | {n} |",
                        100.0 * ok as f64 / n as f64
                    );
                }
            }
            Ok(_) => println!("| {suite} (public) | - | {skill} | no episodes | 0 |"),
            Err(e) => println!("| {suite} (public) | - | {skill} | not available: {e} | 0 |"),
        }
    }
    // Speed: classify the whole synthetic test split.
    let started = Instant::now();
    for (_, t) in &test {
        std::hint::black_box(clf.mix(t));
    }
    let per = started.elapsed().as_secs_f64() / test.len() as f64;
    let mean_chars = test.iter().map(|(_, t)| t.len()).sum::<usize>() / test.len();
    println!(
        "classification: {:.1} us per prompt (mean {mean_chars} characters)",
        per * 1e6
    );
    // Generous bound (shared 2-core machines, unoptimised builds): well under a millisecond.
    assert!(per < 2e-3, "{per}");
}
