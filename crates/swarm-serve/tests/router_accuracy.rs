//! The router's classifier: trained on the skills' synthetic training prompts, measured on
//! held-out prompts (the synthetic test split, and public benchmarks when their files are
//! there), per skill, with the time per classification. Target: 95% or better on every set.
//!
//! Each held-out prompt is read three ways: as the router reads a request (every turn, the
//! system prompt included), with its user turns only (a client that sends no system
//! prompt), and as its task text (user turns without the labels of swarm-tasks' prompt
//! formats, "Task: ", "Request: "...: a client that does not use those formats); and each
//! held-out task's gold answer is read as code (a request made of a query, a command or a
//! function). No held-out prompt or answer is trained on: training uses the synthetic
//! suites' train split only, and the public suites are not trained on at all.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use swarm_serve::{routing_text, user_turns_text, SkillClassifier};
use swarm_tasks::{
    answer_code, generate_synthetic, load_suite, without_format_labels, DataDirs, Episode, Skill,
    Split, SuiteRequest,
};

/// How a held-out task is read into the text the router classifies.
type Read = fn(&Episode) -> String;

/// The accuracy every held-out set must reach, per skill and reading.
const TARGET: f64 = 0.95;

/// Every reading of a held-out task, by name.
const READINGS: [(&str, Read); 4] = [
    ("all turns", |e| routing_text(&e.prompt)),
    ("user turns", |e| user_turns_text(&e.prompt)),
    ("task text", |e| {
        without_format_labels(&user_turns_text(&e.prompt))
    }),
    ("answer code", |e| answer_code(&e.gold)),
];

#[test]
fn held_out_accuracy_per_skill() {
    let started = Instant::now();
    let clf = SkillClassifier::train_on_skills(300, 0).unwrap();
    let train_s = started.elapsed().as_secs_f64();
    println!(
        "trained on 3 x 300 synthetic training prompts (each read as all turns, user turns and \
         task text, and its gold answer as code), pooled with a model of {} hand-written \
         requests, in {train_s:.2} s",
        swarm_serve::free_form_requests().count()
    );
    println!("| held-out set | read as | skill | accuracy | n |");
    println!("|---|---|---|---|---|");
    let mut below = Vec::new();
    let mut check = |set: &str, reading: &str, skill: &str, ok: usize, n: usize| {
        if n == 0 {
            println!("| {set} | {reading} | {skill} | nothing to read | 0 |");
            return;
        }
        let acc = ok as f64 / n as f64;
        println!(
            "| {set} | {reading} | {skill} | {:.1}% | {n} |",
            100.0 * acc
        );
        if acc < TARGET {
            below.push(format!("{set} ({reading}, {skill}): {ok}/{n}"));
        }
    };
    let mut test = Vec::new();
    for (reading, read) in READINGS {
        for skill in Skill::ALL {
            let texts: Vec<String> = generate_synthetic(skill, Split::Test, 200, 0)
                .iter()
                .map(read)
                .collect();
            let (ok, n) = accuracy(&clf, skill, &texts);
            check("synthetic test split", reading, skill.name(), ok, n);
            test.extend(texts);
        }
    }
    // Public benchmarks: a distribution the classifier never saw. AgentBench OS is read
    // whole, its dev split (26 tasks, 17 loaded) with its test split (119, 109 loaded):
    // neither is trained on, and 17 tasks alone cannot measure 95%.
    let dirs = DataDirs::from_env();
    for (skill, suite, splits) in [
        (Skill::Coding, "mbpp", &[Split::Test][..]),
        (Skill::Coding, "humaneval", &[Split::Test][..]),
        (Skill::Database, "spider", &[Split::Test][..]),
        (
            Skill::Os,
            "agentbench",
            &[Split::Validation, Split::Test][..],
        ),
        (Skill::Os, "nl2bash", &[Split::Test][..]),
    ] {
        let names: Vec<&str> = splits.iter().map(|s| s.name()).collect();
        let set = format!("{suite} {} (public)", names.join(" + "));
        let mut episodes = Vec::new();
        for &split in splits {
            let req = SuiteRequest {
                skill,
                suite: suite.into(),
                split,
                limit: Some(300),
                seed: 0,
            };
            match load_suite(&req, &dirs) {
                Ok(loaded) => {
                    println!("({suite} {split}: {} tasks)", loaded.episodes.len());
                    episodes.extend(loaded.episodes);
                }
                Err(e) => println!("({suite} {split}: not available: {e})"),
            }
        }
        if episodes.is_empty() {
            println!("| {set} | - | {skill} | no episodes | 0 |");
            continue;
        }
        for (reading, read) in READINGS {
            let texts: Vec<String> = episodes.iter().map(read).collect();
            let (ok, n) = accuracy(&clf, skill, &texts);
            check(&set, reading, skill.name(), ok, n);
        }
    }
    assert!(below.is_empty(), "under {TARGET}: {below:?}");
    // Free-form requests, written by hand as people type them, with no prompt format of
    // swarm-tasks (none of them among the requests the router trains on, but written by the
    // same hand). Reported, not held to the target, which coding does not reach
    // (docs/performance.md, "The router's classifier"); `--router-data` trains the router on
    // a deployment's own requests.
    let free_form = include_str!("data/free_form_requests.tsv");
    for skill in Skill::ALL {
        let texts: Vec<String> = free_form
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .filter(|(s, _)| *s == skill.name())
            .map(|(_, t)| t.to_string())
            .collect();
        let (ok, n) = accuracy(&clf, skill, &texts);
        println!(
            "| free-form requests (hand-written; reported only) | as typed | {} | {:.1}% | {n} |",
            skill.name(),
            100.0 * ok as f64 / n.max(1) as f64
        );
    }
    // Speed: classify the whole synthetic test split.
    let started = Instant::now();
    for t in &test {
        std::hint::black_box(clf.mix(t));
    }
    let per = started.elapsed().as_secs_f64() / test.len() as f64;
    let mean_chars = test.iter().map(String::len).sum::<usize>() / test.len();
    println!(
        "classification: {:.1} us per prompt (mean {mean_chars} characters)",
        per * 1e6
    );
    // Generous bounds (shared 2-core machines): training well under a second at server
    // start, classification well under a millisecond.
    assert!(train_s < 5.0, "{train_s}");
    assert!(per < 2e-3, "{per}");
}

/// `(correct, n)` over the non-empty `texts` (tasks without a gold answer have no code).
/// Prints the first few texts read as another skill, so that a table under 100% says why.
fn accuracy(clf: &SkillClassifier, skill: Skill, texts: &[String]) -> (usize, usize) {
    let texts: Vec<&String> = texts.iter().filter(|t| !t.trim().is_empty()).collect();
    let misses: Vec<(&String, &str)> = texts
        .iter()
        .map(|t| (*t, clf.predict(t)))
        .filter(|(_, predicted)| *predicted != skill.name())
        .collect();
    for (text, predicted) in misses.iter().take(3) {
        let shown: String = text.chars().take(160).collect();
        println!("  (read as {predicted}: {:?})", shown.replace('\n', " "));
    }
    (texts.len() - misses.len(), texts.len())
}
