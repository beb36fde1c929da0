//! The synthetic suites: every task is solved by its gold answer and failed by a wrong one,
//! and memorising the training split does not pass the test split.

use std::collections::HashMap;

use swarm_tasks::{
    generate_synthetic, run_episodes, Agent, Checker, ConstantAgent, Conversation, Episode,
    GoldAgent, Limits, Role, RunOptions, Skill, Split, TaskError,
};

fn checker() -> Checker {
    Checker::new(Limits::default()).unwrap_or_else(|e| panic!("sandbox required: {e}"))
}

fn wrong_answer(skill: Skill) -> &'static str {
    match skill {
        Skill::Coding => "```python\ndef f(x):\n    return None\n```",
        Skill::Database => "```sql\nSELECT 'wrong'\n```",
        Skill::Os => "```bash\necho wrong\n```",
    }
}

#[test]
fn gold_passes_and_wrong_fails_on_every_split() -> Result<(), TaskError> {
    let checker = checker();
    for skill in Skill::ALL {
        for split in Split::ALL {
            let eps = generate_synthetic(skill, split, 16, 1);
            assert_eq!(eps.len(), 16);
            let gold = run_episodes(
                &checker,
                &GoldAgent::new(&eps),
                &eps,
                &RunOptions::default(),
            )?;
            for r in &gold.results {
                assert!(
                    r.passed,
                    "{skill} {split}: gold failed on {}: {}",
                    r.id, r.reason
                );
            }
            let wrong = run_episodes(
                &checker,
                &ConstantAgent(wrong_answer(skill).into()),
                &eps,
                &RunOptions::default(),
            )?;
            for r in &wrong.results {
                assert!(!r.passed, "{skill} {split}: wrong answer passed {}", r.id);
                assert!(!r.reason.is_empty());
            }
        }
    }
    Ok(())
}

/// Answers with the gold of the training episode with the same prompt, or else of the
/// training episode whose prompt shares the most words.
struct Memoriser {
    train: Vec<(String, String)>,
}

impl Memoriser {
    fn new(train: &[Episode]) -> Self {
        Self {
            train: train
                .iter()
                .map(|e| (user_text(&e.prompt), e.gold[0].clone()))
                .collect(),
        }
    }
}

fn user_text(m: &[swarm_tasks::ChatMessage]) -> String {
    m.iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Agent for Memoriser {
    fn respond(&self, c: &Conversation<'_>) -> Result<String, TaskError> {
        let q = user_text(c.messages);
        let words: HashMap<&str, ()> = q.split_whitespace().map(|w| (w, ())).collect();
        let best = self
            .train
            .iter()
            .max_by_key(|(p, _)| {
                if *p == q {
                    usize::MAX
                } else {
                    p.split_whitespace()
                        .filter(|w| words.contains_key(w))
                        .count()
                }
            })
            .map(|(_, g)| g.clone())
            .unwrap_or_default();
        Ok(best)
    }
}

#[test]
fn memorising_train_does_not_pass_test() -> Result<(), TaskError> {
    let checker = checker();
    for skill in Skill::ALL {
        let train = generate_synthetic(skill, Split::Train, 400, 3);
        let test = generate_synthetic(skill, Split::Test, 40, 3);
        let train_prompts: Vec<String> = train.iter().map(|e| user_text(&e.prompt)).collect();
        for e in &test {
            assert!(
                !train_prompts.contains(&user_text(&e.prompt)),
                "{skill}: a test prompt appears in train: {}",
                user_text(&e.prompt)
            );
        }
        let report = run_episodes(
            &checker,
            &Memoriser::new(&train),
            &test,
            &RunOptions::default(),
        )?;
        assert!(
            report.pass_rate() < 0.35,
            "{skill}: memorising train passes {:.0}% of test",
            100.0 * report.pass_rate()
        );
    }
    Ok(())
}

/// Answers the gold of the episodes it was given, and a wrong answer to the rest.
struct PartlyRight {
    gold: HashMap<String, String>,
    wrong: &'static str,
}

impl Agent for PartlyRight {
    fn respond(&self, c: &Conversation<'_>) -> Result<String, TaskError> {
        Ok(self
            .gold
            .get(c.episode_id)
            .cloned()
            .unwrap_or_else(|| self.wrong.to_string()))
    }
}

/// Every synthetic episode names its family, and a suite's report counts passes per family.
#[test]
fn reports_count_passes_per_family() -> Result<(), TaskError> {
    let checker = checker();
    for skill in Skill::ALL {
        let eps = generate_synthetic(skill, Split::Test, 40, 2);
        let names = swarm_tasks::synthetic_families(skill);
        for e in &eps {
            let family = e
                .family
                .as_deref()
                .unwrap_or_else(|| panic!("{} has no family", e.id));
            assert!(names.contains(&family), "{}: unknown family {family}", e.id);
        }
        // The first half answered right, the rest wrong.
        let right = &eps[..eps.len() / 2];
        let agent = PartlyRight {
            gold: right
                .iter()
                .map(|e| (e.id.clone(), e.gold[0].clone()))
                .collect(),
            wrong: wrong_answer(skill),
        };
        let report = run_episodes(&checker, &agent, &eps, &RunOptions::default())?;
        let tallies = report.by_family();
        assert!(tallies.len() > 1, "{skill}: 40 tasks of one family");
        assert!(tallies.windows(2).all(|w| w[0].family < w[1].family));
        assert_eq!(tallies.iter().map(|t| t.episodes).sum::<usize>(), eps.len());
        for t in &tallies {
            let of_family = |e: &&Episode| e.family.as_deref() == Some(t.family.as_str());
            assert_eq!(t.episodes, eps.iter().filter(of_family).count());
            assert_eq!(
                t.passed,
                right.iter().filter(of_family).count(),
                "{skill} {}",
                t.family
            );
        }
    }
    Ok(())
}
