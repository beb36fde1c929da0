//! The runner: multi-turn episodes, batching, JSONL results, and clear errors for missing data.

use std::sync::atomic::{AtomicUsize, Ordering};

use swarm_tasks::{
    run_episodes, Agent, Checker, Conversation, DataDirs, Episode, EpisodeResult, GoldAgent,
    Limits, OsCheck, OsFile, OsTask, Role, RunOptions, Skill, SuiteRequest, Task, TaskError,
};

fn multi_turn_episode(id: &str, expected: &str) -> Episode {
    Episode {
        id: id.into(),
        suite: "inline".into(),
        prompt: swarm_tasks::os_agent_prompt("How many lines does /home/agent/a.txt have?"),
        max_rounds: 3,
        task: Task::Os(OsTask {
            writable: vec!["/home/agent".into()],
            workdir: "/home/agent".into(),
            files: vec![OsFile {
                path: "/home/agent/a.txt".into(),
                contents: "x\ny\nz\n".into(),
                executable: false,
            }],
            setup_script: None,
            check: OsCheck::AnswerMatch {
                expected: expected.into(),
            },
        }),
        gold: vec![
            "Act: bash\n```bash\nwc -l < a.txt\n```".into(),
            "Act: answer({{observation}})".into(),
        ],
        family: None,
    }
}

/// Counts calls and batch sizes; runs a command, then answers what it saw.
struct Counting {
    calls: AtomicUsize,
    max_batch: AtomicUsize,
}

impl Agent for Counting {
    fn respond(&self, c: &Conversation<'_>) -> Result<String, TaskError> {
        let rounds = c
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        Ok(match rounds {
            0 => "Think: count.\nAct: bash\n```bash\nwc -l < a.txt\n```".into(),
            _ => {
                let seen = c
                    .messages
                    .last()
                    .map(|m| m.content.trim().to_string())
                    .unwrap_or_default();
                format!("Act: answer({seen})")
            }
        })
    }

    fn respond_batch(&self, cs: &[Conversation<'_>]) -> Vec<Result<String, TaskError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.max_batch.fetch_max(cs.len(), Ordering::Relaxed);
        cs.iter().map(|c| self.respond(c)).collect()
    }
}

#[test]
fn multi_turn_episodes_run_in_batches_and_write_jsonl() -> Result<(), TaskError> {
    let checker = Checker::new(Limits::default())?;
    let eps: Vec<Episode> = (0..5)
        .map(|i| multi_turn_episode(&format!("e{i}"), if i == 4 { "4" } else { "3" }))
        .collect();
    let dir = tempfile::tempdir().map_err(|e| TaskError::Output(e.to_string()))?;
    let out = dir.path().join("results/run.jsonl");
    let agent = Counting {
        calls: AtomicUsize::new(0),
        max_batch: AtomicUsize::new(0),
    };
    let opts = RunOptions {
        batch_size: 2,
        results_path: Some(out.clone()),
        ..RunOptions::default()
    };
    let report = run_episodes(&checker, &agent, &eps, &opts)?;
    assert_eq!(report.episodes, 5);
    assert_eq!(report.passed, 4, "{:?}", report.results);
    assert_eq!(agent.max_batch.load(Ordering::Relaxed), 2);
    // Two rounds of five conversations in batches of two: 3 + 3 calls.
    assert_eq!(agent.calls.load(Ordering::Relaxed), 6);
    let r0 = &report.results[0];
    assert_eq!(r0.rounds.len(), 2);
    assert_eq!(
        r0.rounds[0].observation.as_deref().map(str::trim),
        Some("3")
    );
    assert!(!report.results[4].passed);
    assert!(report.results[4].reason.contains("expected answer"));
    let text = std::fs::read_to_string(&out).map_err(|e| TaskError::Output(e.to_string()))?;
    let lines: Vec<EpisodeResult> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| TaskError::Output(e.to_string()))?;
    assert_eq!(lines, report.results);
    // The gold agent answers with the observation it was shown.
    let gold = run_episodes(
        &checker,
        &GoldAgent::new(&eps[..4]),
        &eps[..4],
        &RunOptions::default(),
    )?;
    assert_eq!(gold.passed, 4);
    Ok(())
}

#[test]
fn round_limit_ends_an_episode_that_never_answers() -> Result<(), TaskError> {
    let checker = Checker::new(Limits::default())?;
    let eps = vec![multi_turn_episode("loop", "3")];
    let agent = swarm_tasks::ConstantAgent("Act: bash\n```bash\nls\n```".into());
    let report = run_episodes(&checker, &agent, &eps, &RunOptions::default())?;
    assert!(!report.results[0].passed);
    assert_eq!(report.results[0].rounds.len(), 3);
    assert!(report.results[0].reason.contains("round limit"));
    Ok(())
}

#[test]
fn missing_data_names_the_setup_script() {
    let dirs = DataDirs {
        shared: "/nonexistent/shared".into(),
        cache: "/nonexistent/cache".into(),
    };
    let req = SuiteRequest {
        skill: Skill::Coding,
        suite: "humaneval".into(),
        split: swarm_tasks::Split::Test,
        limit: None,
        seed: 0,
    };
    let err = swarm_tasks::load_suite(&req, &dirs)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("scripts/fetch-data.sh"), "{err}");
    let req = SuiteRequest {
        suite: "mbpp".into(),
        ..req
    };
    let err = swarm_tasks::load_suite(&req, &dirs)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("SWARM_DATA_DIR"), "{err}");
    let req = SuiteRequest {
        suite: "nope".into(),
        ..req
    };
    let err = swarm_tasks::load_suite(&req, &dirs)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("humaneval"), "{err}");
}
