//! Mixed batches of elites served from factors: one grouped forward pass for all of them vs
//! one forward pass per elite, and vs each elite materialised (one pass per elite).
//!
//! The setting of `factor_bench` (a real base, SmolLM2-135M-Instruct by default, dequantised
//! to f32; three "experts" as random perturbations of it, factorised at `rank`; the factor
//! set cached in `$SWARM_BENCH_CACHE`, shared with `factor_bench`), and `k` elites, each a
//! different child of all three experts (every matrix's delta sums three low-rank terms).
//! For each `k` and batch total `n`, `n / k` rows per elite, decode is timed three ways:
//!
//! - **grouped**: the `k` elites served from factors in one batch, rows grouped by elite,
//!   one `Llama::decode_grouped` per step (every base product once for all rows);
//! - **per elite**: the same factored elites, one batch and one `Llama::decode` per elite
//!   per step (the engine before mixed batches);
//! - **materialised**: each elite's dense weights, one batch and one decode per elite per
//!   step (what the LRU serves when every elite is resident: `k` dense models in memory).
//!
//! Decode tok/s is the batch total over the median step's wall time; CPU s/step is the
//! process's CPU time (user + system, from `/proc/self/stat`) per step, which a busy shared
//! machine disturbs less than wall time. Prompts are `prompt` tokens, left-padded to vary.
//!
//! ```text
//! cargo run --release -p swarm-serve --example mixed_batch_bench -- \
//!     [model=smollm2] [rank=64] [elites=1,4,8] [totals=8,32] [prompt=32] [steps=16] [rel=0.05]
//! ```

mod common;

use common::{cpu_seconds, load_average};

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use swarm_merge::Rank;
use swarm_model::{argmax_rows, KvCache, Llama, Precision, RowGroup};
use swarm_serve::EliteSource;

fn main() -> Result<()> {
    swarm_model::configure_allocator();
    let threads = swarm_model::configure_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let list = |s: String| -> Result<Vec<usize>> {
        s.split(',')
            .map(|x| x.parse::<usize>().context("a list of counts"))
            .collect()
    };
    let reference = arg(0, "smollm2");
    let rank: Rank = arg(1, "64").parse()?;
    let elite_counts = list(arg(2, "1,4,8"))?;
    let totals = list(arg(3, "8,32"))?;
    let prompt: usize = arg(4, "32").parse()?;
    let steps: usize = arg(5, "16").parse()?;
    let rel: f32 = arg(6, "0.05").parse()?;
    if elite_counts.contains(&0) || totals.contains(&0) || prompt < 4 || steps == 0 {
        bail!("elite counts, totals and decode steps must be positive, prompts >= 4 tokens");
    }
    let device = Device::Cpu;
    let precision = Precision::F32;
    let max_k = elite_counts.iter().copied().max().unwrap_or(1);
    let (pretrained, swarm, ids) = common::children_swarm(&reference, rank, rel, max_k)?;
    let config = pretrained.config.clone();
    println!(
        "model {} ({} layers, hidden {}), f32 on the CPU, CANDLE_NUM_THREADS={threads}, \
         RAYON_NUM_THREADS={}, rank {rank}, prompt {prompt} tokens, {steps} decode steps; \
         load average at start: {}",
        pretrained.name,
        config.num_hidden_layers,
        config.hidden_size,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        load_average()
    );
    swarm.prepare_factored(&device, precision)?;
    let factored: Vec<Llama> = ids
        .iter()
        .map(|id| swarm.factored(id, &device, precision))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let dense: Vec<Llama> = ids
        .iter()
        .map(|id| swarm.load(id, &device, precision))
        .collect::<Result<_, _>>()?;
    println!(
        "{max_k} elites materialised in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let vocab = config.vocab_size;
    let prompts = |n: usize| -> Vec<Vec<u32>> {
        (0..n)
            .map(|b| {
                // Lengths vary by up to a quarter: a left-padded batch.
                let len = prompt - (b * 5) % (prompt / 4).max(1);
                (0..len)
                    .map(|i| (100 + (b * 7919 + i * 104_729) % (vocab - 200)) as u32)
                    .collect()
            })
            .collect()
    };

    let mut rows = Vec::new();
    for &k in &elite_counts {
        for &total in &totals {
            if total % k != 0 {
                println!("skipping {k} elites x {total} rows: not a multiple");
                continue;
            }
            let m = total / k;
            let prompts = prompts(total);
            let grouped = time_grouped(&factored[..k], m, &prompts, steps)?;
            let per_elite = time_per_elite(&factored[..k], m, &prompts, steps)?;
            let materialised = time_per_elite(&dense[..k], m, &prompts, steps)?;
            for (how, t) in [
                ("grouped (factors)", grouped),
                ("per elite (factors)", per_elite),
                ("materialised, per elite", materialised),
            ] {
                println!(
                    "{k} elites x {m} rows ({total}) {how}: decode {:.1} tok/s, {:.3} s/step \
                     wall, {:.3} CPU s/step; prefill {:.0} tok/s",
                    total as f64 / t.step_s,
                    t.step_s,
                    t.cpu_step_s,
                    t.prefill_tps
                );
                rows.push((k, m, total, how, t));
            }
        }
    }

    println!();
    println!("load average at the end: {}", load_average());
    println!();
    println!(
        "| elites x rows | batch | served | decode tok/s | wall s/step | CPU s/step | \
         prefill tok/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (k, m, total, how, t) in &rows {
        println!(
            "| {k} x {m} | {total} | {how} | {:.1} | {:.3} | {:.3} | {:.0} |",
            *total as f64 / t.step_s,
            t.step_s,
            t.cpu_step_s,
            t.prefill_tps
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Median decode step, wall seconds.
    step_s: f64,
    /// CPU seconds (user + system, all threads) per decode step, mean.
    cpu_step_s: f64,
    prefill_tps: f64,
}

/// The elites' rows in one batch, grouped by elite: one pass per step.
fn time_grouped(models: &[Llama], m: usize, prompts: &[Vec<u32>], steps: usize) -> Result<Timing> {
    let groups: Vec<RowGroup> = models.iter().map(|model| RowGroup::new(model, m)).collect();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = models[0].new_cache(prompts.len(), longest + steps);
    let t = Instant::now();
    let mut next = argmax_rows(&Llama::prefill_grouped(&groups, prompts, &mut cache)?)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    let cpu = cpu_seconds()?;
    for _ in 0..steps {
        let t = Instant::now();
        next = argmax_rows(&Llama::decode_grouped(&groups, &next, &mut cache)?)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = cpu_seconds()? - cpu;
    Ok(timing(times, cpu, prompts, prefill_s))
}

/// One batch per elite: one pass per elite per step.
fn time_per_elite(
    models: &[Llama],
    m: usize,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Result<Timing> {
    let mut caches: Vec<KvCache> = Vec::new();
    let mut next: Vec<Vec<u32>> = Vec::new();
    let t = Instant::now();
    for (i, model) in models.iter().enumerate() {
        let mine = &prompts[i * m..(i + 1) * m];
        let longest = mine.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = model.new_cache(m, longest + steps);
        next.push(argmax_rows(&model.prefill(mine, &mut cache)?)?);
        caches.push(cache);
    }
    let prefill_s = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    let cpu = cpu_seconds()?;
    for _ in 0..steps {
        let t = Instant::now();
        for ((model, cache), next) in models.iter().zip(&mut caches).zip(&mut next) {
            *next = argmax_rows(&model.decode(next, cache)?)?;
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = cpu_seconds()? - cpu;
    Ok(timing(times, cpu, prompts, prefill_s))
}

fn timing(mut times: Vec<f64>, cpu: f64, prompts: &[Vec<u32>], prefill_s: f64) -> Timing {
    let steps = times.len();
    times.sort_by(f64::total_cmp);
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    Timing {
        step_s: times[steps / 2],
        cpu_step_s: cpu / steps as f64,
        prefill_tps: tokens as f64 / prefill_s,
    }
}
