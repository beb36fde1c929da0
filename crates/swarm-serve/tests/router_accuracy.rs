//! The router's classifier: trained on the skills' synthetic training prompts, measured on
//! held-out prompts (the synthetic test split, and public benchmarks when their files are
//! there), per skill, with the time per classification. Target: 95% or better.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use swarm_serve::{routing_text, synthetic_examples, SkillClassifier};
use swarm_tasks::{load_suite, DataDirs, Skill, Split, SuiteRequest};

#[test]
fn held_out_accuracy_per_skill() {
    let started = Instant::now();
    let clf = SkillClassifier::train_on_skills(300, 0).unwrap();
    let train_s = started.elapsed().as_secs_f64();
    let test = synthetic_examples(Split::Test, 200, 0);
    let report = clf.evaluate(test.iter().map(|(s, t)| (s.as_str(), t.as_str())));
    println!("trained on 3 x 300 synthetic training prompts in {train_s:.2} s");
    println!("| held-out set | skill | accuracy | n |");
    println!("|---|---|---|---|");
    for (skill, (ok, n)) in &report {
        let acc = *ok as f64 / *n as f64;
        println!(
            "| synthetic test split | {skill} | {:.1}% | {n} |",
            100.0 * acc
        );
        assert!(acc >= 0.95, "{skill}: {acc}");
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
                let texts: Vec<String> = loaded
                    .episodes
                    .iter()
                    .map(|e| routing_text(&e.prompt))
                    .collect();
                let r = clf.evaluate(texts.iter().map(|t| (skill.name(), t.as_str())));
                let (ok, n) = r[skill.name()];
                println!(
                    "| {suite} (public) | {skill} | {:.1}% | {n} |",
                    100.0 * ok as f64 / n as f64
                );
            }
            Ok(_) => println!("| {suite} (public) | {skill} | no episodes | 0 |"),
            Err(e) => println!("| {suite} (public) | {skill} | not available: {e} | 0 |"),
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
