//! The episode runner: plays a whole suite with an agent, generating in batches and checking
//! in parallel (bounded by the cores), with a progress bar, writing one JSONL line per episode.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::agent::{Agent, Conversation};
use crate::episode::{ChatMessage, Episode, EpisodeResult, Outcome, Round, Step};
use crate::error::TaskError;
use crate::skills::{Checker, EpisodeEnv};

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Conversations handed to the agent at once.
    pub batch_size: usize,
    /// Checking threads; 0 means one per core.
    pub threads: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Where to write per-episode results (JSONL), if anywhere.
    pub results_path: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch_size: 16,
            threads: 0,
            progress: false,
            results_path: None,
        }
    }
}

/// The outcome of a suite.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    /// Episodes run.
    pub episodes: usize,
    /// Episodes solved.
    pub passed: usize,
    /// Mean score in [0, 1].
    pub mean_score: f64,
    /// Episodes whose checker failed (sandbox or data errors), counted as failures.
    pub checker_errors: usize,
    /// Checks per second (checking time only, all threads).
    pub checks_per_second: f64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Per-episode results, in episode order.
    pub results: Vec<EpisodeResult>,
}

impl SuiteReport {
    /// Fraction of episodes solved.
    pub fn pass_rate(&self) -> f64 {
        if self.episodes == 0 {
            0.0
        } else {
            self.passed as f64 / self.episodes as f64
        }
    }

    /// Pass counts per task family ([`Episode::family`]), sorted by family name; episodes
    /// without a family are left out, so a suite without families gives an empty list.
    pub fn by_family(&self) -> Vec<FamilyTally> {
        let mut tallies: std::collections::BTreeMap<&str, FamilyTally> = Default::default();
        for r in &self.results {
            let Some(family) = r.family.as_deref() else {
                continue;
            };
            let t = tallies.entry(family).or_insert_with(|| FamilyTally {
                family: family.to_string(),
                episodes: 0,
                passed: 0,
            });
            t.episodes += 1;
            t.passed += usize::from(r.passed);
        }
        tallies.into_values().collect()
    }
}

/// How one task family of a suite did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FamilyTally {
    pub family: String,
    pub episodes: usize,
    pub passed: usize,
}

struct State<'a> {
    env: Option<Box<dyn EpisodeEnv + 'a>>,
    messages: Vec<ChatMessage>,
    rounds: Vec<Round>,
    outcome: Option<Outcome>,
    checker_error: bool,
    check_time: Duration,
}

impl State<'_> {
    fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.env = None; // drop the scratch now
    }
}

/// Plays every episode with `agent` and scores it.
pub fn run_episodes(
    checker: &Checker,
    agent: &dyn Agent,
    episodes: &[Episode],
    opts: &RunOptions,
) -> Result<SuiteReport, TaskError> {
    let start = Instant::now();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| TaskError::Output(format!("cannot start checking threads: {e}")))?;
    let bar = if opts.progress {
        let b = ProgressBar::new(episodes.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} passed {msg} ({per_sec}, eta {eta})",
        ) {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let passed_so_far = std::sync::atomic::AtomicUsize::new(0);
    let mut states: Vec<State<'_>> = pool.install(|| {
        episodes
            .par_iter()
            .map(|ep| {
                let t = Instant::now();
                let (env, outcome, err) = match checker.start(ep) {
                    Ok(env) => (Some(env), None, false),
                    Err(e) => {
                        tracing::warn!(episode = %ep.id, error = %e, "cannot start episode");
                        (
                            None,
                            Some(Outcome::fail(format!("checker error: {e}"))),
                            true,
                        )
                    }
                };
                State {
                    env,
                    messages: ep.prompt.clone(),
                    rounds: Vec::new(),
                    outcome,
                    checker_error: err,
                    check_time: t.elapsed(),
                }
            })
            .collect()
    });
    for s in &states {
        if s.outcome.is_some() {
            bar.inc(1);
        }
    }
    let max_rounds = episodes
        .iter()
        .map(|e| e.max_rounds.max(1))
        .max()
        .unwrap_or(1);
    for round in 0..max_rounds {
        let active: Vec<usize> = (0..episodes.len())
            .filter(|&i| states[i].outcome.is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let mut replies: Vec<Result<String, TaskError>> = Vec::with_capacity(active.len());
        for chunk in active.chunks(opts.batch_size.max(1)) {
            let convs: Vec<Conversation<'_>> = chunk
                .iter()
                .map(|&i| Conversation {
                    episode_id: &episodes[i].id,
                    skill: episodes[i].skill(),
                    messages: &states[i].messages,
                })
                .collect();
            let mut got = agent.respond_batch(&convs);
            got.resize_with(chunk.len(), || {
                Err(TaskError::Agent("agent returned too few replies".into()))
            });
            replies.extend(got);
        }
        // Hand each active state its reply, then check them all in parallel.
        let mut work: Vec<(&mut State<'_>, &Episode, Result<String, TaskError>)> = Vec::new();
        let mut reply_iter = replies.into_iter();
        let mut active_iter = active.iter().peekable();
        for (i, s) in states.iter_mut().enumerate() {
            if active_iter.peek() == Some(&&i) {
                active_iter.next();
                if let Some(r) = reply_iter.next() {
                    work.push((s, &episodes[i], r));
                }
            }
        }
        pool.install(|| {
            work.into_par_iter().for_each(|(s, ep, reply)| {
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        s.finish(Outcome::fail(format!("no answer: {e}")));
                        bar.inc(1);
                        return;
                    }
                };
                let last = round + 1 >= ep.max_rounds.max(1);
                let t = Instant::now();
                let step = match s.env.as_mut() {
                    Some(env) => env.step(&reply, last),
                    None => Ok(Step::Done(Outcome::fail("episode has no environment"))),
                };
                s.check_time += t.elapsed();
                s.messages.push(ChatMessage::assistant(reply.clone()));
                match step {
                    Ok(Step::Observe(obs)) if !last => {
                        s.rounds.push(Round {
                            action: reply,
                            observation: Some(obs.clone()),
                        });
                        s.messages.push(ChatMessage::user(obs));
                    }
                    Ok(Step::Observe(_)) => {
                        s.rounds.push(Round {
                            action: reply,
                            observation: None,
                        });
                        s.finish(Outcome::fail("round limit reached without an answer"));
                    }
                    Ok(Step::Done(o)) => {
                        s.rounds.push(Round {
                            action: reply,
                            observation: None,
                        });
                        if o.passed {
                            passed_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        s.finish(o);
                    }
                    Err(e) => {
                        tracing::warn!(episode = %ep.id, error = %e, "checker error");
                        s.rounds.push(Round {
                            action: reply,
                            observation: None,
                        });
                        s.checker_error = true;
                        s.finish(Outcome::fail(format!("checker error: {e}")));
                    }
                }
                if s.outcome.is_some() {
                    bar.set_message(
                        passed_so_far
                            .load(std::sync::atomic::Ordering::Relaxed)
                            .to_string(),
                    );
                    bar.inc(1);
                }
            });
        });
    }
    bar.finish_and_clear();
    let mut results = Vec::with_capacity(episodes.len());
    let mut check_total = Duration::ZERO;
    let mut checker_errors = 0;
    for (ep, s) in episodes.iter().zip(states) {
        let outcome = s
            .outcome
            .unwrap_or_else(|| Outcome::fail("round limit reached without an answer"));
        check_total += s.check_time;
        checker_errors += usize::from(s.checker_error);
        results.push(EpisodeResult {
            id: ep.id.clone(),
            skill: ep.skill(),
            suite: ep.suite.clone(),
            family: ep.family.clone(),
            score: outcome.score,
            passed: outcome.passed,
            reason: outcome.reason,
            rounds: s.rounds,
            check_ms: s.check_time.as_millis() as u64,
        });
    }
    let n = results.len();
    let passed = results.iter().filter(|r| r.passed).count();
    let mean_score = if n == 0 {
        0.0
    } else {
        results.iter().map(|r| r.score).sum::<f64>() / n as f64
    };
    let checks_per_second = if check_total.is_zero() {
        0.0
    } else {
        n as f64 / (check_total.as_secs_f64() / threads as f64)
    };
    if let Some(path) = &opts.results_path {
        write_jsonl(path, &results)?;
    }
    Ok(SuiteReport {
        episodes: n,
        passed,
        mean_score,
        checker_errors,
        checks_per_second,
        elapsed: start.elapsed(),
        results,
    })
}

/// Writes results as JSON Lines (via a temporary file, renamed into place).
pub fn write_jsonl(path: &std::path::Path, results: &[EpisodeResult]) -> Result<(), TaskError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(TaskError::io(parent))?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let file = std::fs::File::create(&tmp).map_err(TaskError::io(&tmp))?;
    let mut w = std::io::BufWriter::new(file);
    for r in results {
        let line = serde_json::to_string(r).map_err(|e| TaskError::Output(e.to_string()))?;
        writeln!(w, "{line}").map_err(TaskError::io(&tmp))?;
    }
    w.flush().map_err(TaskError::io(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(TaskError::io(path))?;
    Ok(())
}
