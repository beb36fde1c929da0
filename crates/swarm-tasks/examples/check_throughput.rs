//! Checks per second for each skill: every episode of a suite is answered with its gold
//! solution and checked for real (sandboxed Python and shell, SQLite), in parallel on all
//! cores. Prints a markdown table.
//!
//!     cargo run --release -p swarm-tasks --example check_throughput [-- --quick]

use std::time::Instant;

use swarm_tasks::{
    load_suite, run_episodes, Checker, DataDirs, GoldAgent, Limits, RunOptions, Skill, Split,
    SuiteRequest,
};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = |full: usize| if quick { full / 5 } else { full };
    let checker = Checker::new(Limits::default())?;
    let dirs = DataDirs::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let suites = [
        (Skill::Coding, "synthetic", Split::Test, Some(n(400))),
        (Skill::Coding, "humaneval", Split::Test, None),
        (Skill::Database, "synthetic", Split::Test, Some(n(4000))),
        (Skill::Database, "spider", Split::Test, None),
        (Skill::Os, "synthetic", Split::Test, Some(n(400))),
        (Skill::Os, "nl2bash", Split::Test, None),
        (Skill::Os, "agentbench", Split::Test, None),
    ];
    println!("| skill | suite | episodes | passed | wall s | checks/s ({cores} cores) |");
    println!("|---|---|---:|---:|---:|---:|");
    for (skill, suite, split, limit) in suites {
        let req = SuiteRequest {
            skill,
            suite: suite.into(),
            split,
            limit: if quick && limit.is_none() {
                Some(50)
            } else {
                limit
            },
            seed: 0,
        };
        let eps = match load_suite(&req, &dirs) {
            Ok(s) => s.episodes,
            Err(e) => {
                println!("| {skill} | {suite} | - | - | - | skipped: {e} |");
                continue;
            }
        };
        let start = Instant::now();
        let report = run_episodes(
            &checker,
            &GoldAgent::new(&eps),
            &eps,
            &RunOptions::default(),
        )?;
        let wall = start.elapsed().as_secs_f64();
        println!(
            "| {skill} | {suite} | {} | {} | {wall:.1} | {:.0} |",
            report.episodes,
            report.passed,
            report.episodes as f64 / wall
        );
    }
    Ok(())
}
