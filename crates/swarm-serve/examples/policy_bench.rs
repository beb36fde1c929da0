//! Serving policies end to end: one workload through the engine ([`ModelEngine`]) under each
//! [`ServingPolicy`], so that what `auto` decides (which elites to materialise, when) is
//! timed with everything it costs: the materialisations on the scheduler thread, the dense
//! batches' passes and the mixed batch's.
//!
//! The swarm of `mixed_batch_bench` (a real base, SmolLM2-135M-Instruct by default,
//! dequantised to f32; three perturbed experts factorised at `rank`, the factor set cached
//! with `factor_bench`'s; elites that are each a different child of all three). A workload
//! is a `+`-separated list of `NxR` (N elites with R rows each) or `R` (one elite with R
//! rows): `24+6x1` is one hot elite with 24 rows beside six cold ones with one. Every row
//! is a client that sends `jobs` greedy jobs one after the other (a closed loop: the next
//! when the last ends), each a prompt of `prompt` tokens and up to `tokens` generated. Every
//! run starts with nothing resident, the dense base for factors loaded (once for all runs,
//! as a server loads it at start), and a memory budget that holds every elite, so that
//! `materialise` and `auto` are never short of room.
//!
//! Printed per workload and policy: generated tokens, wall seconds, the process's CPU
//! seconds (user + system, all threads: what a busy shared machine disturbs less), CPU ms per
//! generated token, forward passes, materialisations, and the load average before and
//! after.
//!
//! ```text
//! cargo run --release -p swarm-serve --example policy_bench -- \
//!     [model=smollm2] [rank=64] [workloads=24+6x1,8x1] \
//!     [policies=materialise,factors,auto:64:0,auto] [tokens=48] [jobs=3] [prompt=32] [rel=0.05]
//! ```

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use common::{cpu_seconds, load_average};
use swarm_merge::Rank;
use swarm_model::{Llama, LlamaConfig, Precision};
use swarm_serve::{
    model_bytes, EliteCache, EliteSource, Engine, Event, GenerateJob, GenomeSwarm, LoadedSwarm,
    ModelEngine, ModelEngineConfig, Prompt, SamplingParams, ServingPolicy,
};

/// One swarm for every run (its dense base for factors loaded once), each run with an
/// [`EliteCache`] of its own.
struct Shared(Arc<GenomeSwarm>);

impl EliteSource for Shared {
    fn config(&self) -> &LlamaConfig {
        self.0.config()
    }
    fn load(
        &self,
        elite: &str,
        device: &Device,
        precision: Precision,
    ) -> swarm_serve::Result<Llama> {
        self.0.load(elite, device, precision)
    }
    fn factor_cost(&self) -> Option<f64> {
        self.0.factor_cost()
    }
    fn load_factored(
        &self,
        elite: &str,
        device: &Device,
        precision: Precision,
    ) -> swarm_serve::Result<Option<Llama>> {
        self.0.load_factored(elite, device, precision)
    }
    fn prepare_factored(&self, device: &Device, precision: Precision) -> swarm_serve::Result<()> {
        self.0.prepare_factored(device, precision)
    }
}

/// Rows per elite, elite by elite.
fn parse_workload(s: &str) -> Result<Vec<usize>> {
    let mut rows = Vec::new();
    for term in s.split('+') {
        let (n, r) = match term.split_once('x') {
            Some((n, r)) => (n.parse::<usize>()?, r.parse::<usize>()?),
            None => (1, term.parse::<usize>()?),
        };
        if n == 0 || r == 0 {
            bail!("workload `{s}`: `{term}` has no rows");
        }
        rows.extend(std::iter::repeat_n(r, n));
    }
    Ok(rows)
}

struct Run {
    generated: usize,
    wall_s: f64,
    cpu_s: f64,
    forward_passes: u64,
    materialisations: u64,
    load_before: String,
    load_after: String,
}

fn main() -> Result<()> {
    swarm_model::configure_allocator();
    let threads = swarm_model::configure_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let reference = arg(0, "smollm2");
    let rank: Rank = arg(1, "64").parse()?;
    let workloads: Vec<(String, Vec<usize>)> = arg(2, "24+6x1,8x1")
        .split(',')
        .map(|w| Ok((w.to_string(), parse_workload(w)?)))
        .collect::<Result<_>>()?;
    let policies: Vec<ServingPolicy> = arg(3, "materialise,factors,auto:64:0,auto")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let tokens: usize = arg(4, "48").parse()?;
    let jobs: usize = arg(5, "3").parse()?;
    let prompt: usize = arg(6, "32").parse()?;
    let rel: f32 = arg(7, "0.05").parse()?;
    if tokens == 0 || jobs == 0 || prompt == 0 {
        bail!("tokens, jobs and prompt tokens must be positive");
    }
    let k = workloads.iter().map(|(_, w)| w.len()).max().unwrap_or(1);

    let device = Device::Cpu;
    let precision = Precision::F32;
    let (pretrained, swarm, ids) = common::children_swarm(&reference, rank, rel, k)?;
    let config = pretrained.config.clone();
    let template = pretrained.chat_template()?;
    println!(
        "model {}, f32 on the CPU, CANDLE_NUM_THREADS={threads}, RAYON_NUM_THREADS={}, rank \
         {rank}, {k} elites; each row {jobs} jobs of {prompt} prompt tokens and up to {tokens} \
         generated, greedy",
        pretrained.name,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
    );
    let t = Instant::now();
    swarm.prepare_factored(&device, precision)?;
    println!(
        "dense base for factors loaded in {:.1} s (once for all runs)",
        t.elapsed().as_secs_f64()
    );
    let swarm = Arc::new(swarm);
    let budget = k * model_bytes(&config, precision);
    let vocab = config.vocab_size;

    let mut results = Vec::new();
    for (name, rows) in &workloads {
        for &policy in &policies {
            let elites = EliteCache::new(
                Box::new(Shared(swarm.clone())),
                device.clone(),
                precision,
                budget,
            )
            .with_policy(policy);
            let loaded = LoadedSwarm {
                elites,
                tokenizer: pretrained.tokenizer.clone(),
                template: template.clone(),
                stop_ids: Vec::new(),
                warm: Vec::new(),
            };
            let engine = ModelEngine::start(
                ModelEngineConfig {
                    max_batch: rows.iter().sum(),
                    ..ModelEngineConfig::default()
                },
                move || Ok(loaded),
            )?;
            let start = Instant::now();
            while !engine.status().ready {
                if start.elapsed() > Duration::from_secs(600) {
                    bail!("the engine did not get ready");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let load_before = load_average();
            let cpu = cpu_seconds()?;
            let t = Instant::now();
            // One client thread per row: (elite, row).
            let clients: Vec<(usize, usize)> = rows
                .iter()
                .enumerate()
                .flat_map(|(e, &r)| (0..r).map(move |row| (e, row)))
                .collect();
            let generated: usize = std::thread::scope(|s| {
                let handles: Vec<_> = clients
                    .iter()
                    .enumerate()
                    .map(|(c, &(e, _))| {
                        let engine = &engine;
                        let elite = &ids[e];
                        s.spawn(move || -> Result<usize> {
                            let mut n = 0;
                            for j in 0..jobs {
                                let ids = (0..prompt)
                                    .map(|i| {
                                        (100 + (c * 7919 + j * 613 + i * 104_729) % (vocab - 200))
                                            as u32
                                    })
                                    .collect();
                                n += run_job(engine, elite, ids, tokens)?;
                            }
                            Ok(n)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| anyhow::anyhow!("a client panicked"))?)
                    .sum::<Result<usize>>()
            })?;
            let wall_s = t.elapsed().as_secs_f64();
            let cpu_s = cpu_seconds()? - cpu;
            let status = engine.status();
            let run = Run {
                generated,
                wall_s,
                cpu_s,
                forward_passes: status.forward_passes,
                materialisations: status.materialisations,
                load_before,
                load_after: load_average(),
            };
            println!(
                "{name} {policy}: {} tokens in {:.1} s wall, {:.1} CPU s ({:.1} CPU ms/token), \
                 {} passes, {} materialised; load {} -> {}",
                run.generated,
                run.wall_s,
                run.cpu_s,
                1e3 * run.cpu_s / run.generated.max(1) as f64,
                run.forward_passes,
                run.materialisations,
                run.load_before,
                run.load_after
            );
            results.push((name.clone(), policy, run));
            drop(engine);
        }
    }

    println!();
    println!(
        "| workload | policy | tokens | wall s | CPU s | CPU ms/token | tok/s | passes | \
         materialised | load before -> after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, policy, r) in &results {
        println!(
            "| {name} | {policy} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} -> {} |",
            r.generated,
            r.wall_s,
            r.cpu_s,
            1e3 * r.cpu_s / r.generated.max(1) as f64,
            r.generated as f64 / r.wall_s,
            r.forward_passes,
            r.materialisations,
            r.load_before,
            r.load_after
        );
    }
    Ok(())
}

/// One greedy job of `elite` on `prompt`, to its end: the tokens it generated.
fn run_job(engine: &ModelEngine, elite: &str, prompt: Vec<u32>, tokens: usize) -> Result<usize> {
    let job = GenerateJob {
        request_id: format!("bench-{elite}"),
        elite: elite.to_string(),
        prompt: Prompt::Tokens(prompt),
        params: SamplingParams::new(tokens, 0.0, 0),
        deadline: None,
    };
    let mut rx = engine
        .submit(job)
        .map_err(|f| anyhow::anyhow!("submit: {f:?}"))?;
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Done {
                completion_tokens, ..
            } => return Ok(completion_tokens),
            Event::Failed(f) => bail!("elite {elite}: {f:?}"),
            Event::Started { .. } | Event::Echo { .. } | Event::Text { .. } => {}
        }
    }
    Err(anyhow::anyhow!("elite {elite}: the job's channel closed")).context("run_job")
}
