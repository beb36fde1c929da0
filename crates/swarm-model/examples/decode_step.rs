//! Times prefill and decode steps of a model of SmolLM2-135M's shape with random weights, at
//! several batch sizes: the quickest way to profile the forward pass (`perf record -g` on this
//! binary) without the `swarm` binary or a model file. Dense products do not depend on the
//! values, so random weights run at the speed of real ones.
//!
//! ```text
//! cargo run --release -p swarm-model --example decode_step -- \
//!     [precision=f32] [batches=1,8,32] [prompt_tokens=500] [decode_steps=16] \
//!     [kv_cache=default|f32|f16] [order=sequential|interleaved]
//! ```
//! `interleaved` prefills every batch size first, then takes their decode steps in turn, so
//! that on a shared machine their medians come from the same minutes.
//! Threads: `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS`.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use swarm_model::{argmax_rows, random_weights, KvCache, Llama, LlamaConfig, Precision};

fn main() -> Result<()> {
    // As the `swarm` binary does, so that timings match it.
    swarm_model::configure_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let precision: Precision = arg(0, "f32").parse()?;
    let batches: Vec<usize> = arg(1, "1,8,32")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let prompt_tokens: usize = arg(2, "500").parse()?;
    let decode_steps: usize = arg(3, "16").parse()?;
    let kv_cache = match arg(4, "default").as_str() {
        "default" => None,
        "f32" => Some(candle_core::DType::F32),
        "f16" => Some(candle_core::DType::F16),
        other => bail!("kv_cache must be f32 or f16, got {other:?}"),
    };
    if batches.contains(&0) || prompt_tokens == 0 || decode_steps == 0 {
        bail!("batch sizes, prompt tokens and decode steps must be positive");
    }
    let config = LlamaConfig::smollm2_135m();
    let device = Device::Cpu;
    let weights = random_weights(&config, 0, &device)?;
    let mut model = Llama::load(&weights, &config, &device, precision)?;
    model.set_kv_cache_dtype(kv_cache)?;
    drop(weights);
    println!(
        "{precision}, prompt {prompt_tokens} tokens, {decode_steps} decode steps, KV cache {}",
        kv_cache.map_or("as activations".to_string(), |d| format!("{d:?}"))
    );
    let interleaved = match arg(5, "sequential").as_str() {
        "sequential" => false,
        "interleaved" => true,
        other => bail!("order must be sequential or interleaved, got {other:?}"),
    };
    if interleaved {
        return run_interleaved(&model, &batches, prompt_tokens, decode_steps);
    }
    for &batch in &batches {
        let (mut cache, mut next, prefill_s) =
            prefilled(&model, batch, prompt_tokens, decode_steps)?;
        // A profiler can attach now to see decode steps only (`perf record -p PID`).
        eprintln!("batch {batch}: prefilled, decoding");
        let mut steps = Vec::with_capacity(decode_steps);
        let cpu0 = process_cpu_seconds();
        for _ in 0..decode_steps {
            let t = Instant::now();
            next = argmax_rows(&model.decode(&next, &mut cache)?)?;
            steps.push(t.elapsed().as_secs_f64());
        }
        let cpu_per_step = match (cpu0, process_cpu_seconds()) {
            (Some(a), Some(b)) => format!("{:.1} ms", (b - a) * 1e3 / decode_steps as f64),
            _ => "n/a".to_string(),
        };
        let (median, min) = median_and_min(&mut steps);
        println!(
            "batch {batch:>3}: prefill {:>7.1} tok/s; decode step median {:>7.2} ms \
             (min {:.2}, CPU time {cpu_per_step}), {:>7.1} tok/s",
            (batch * prompt_tokens) as f64 / prefill_s,
            median * 1e3,
            min * 1e3,
            batch as f64 / median,
        );
    }
    Ok(())
}

/// A cache for `batch` prompts of `prompt_tokens` (room for `decode_steps` more), prefilled,
/// with each row's next token and the prefill's seconds.
fn prefilled(
    model: &Llama,
    batch: usize,
    prompt_tokens: usize,
    decode_steps: usize,
) -> Result<(KvCache, Vec<u32>, f64)> {
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..prompt_tokens)
                .map(|i| (100 + (b * 7919 + i * 104_729) % 49_000) as u32)
                .collect()
        })
        .collect();
    let mut cache = model.new_cache(batch, prompt_tokens + decode_steps);
    let t0 = Instant::now();
    let next = argmax_rows(&model.prefill(&prompts, &mut cache)?)?;
    Ok((cache, next, t0.elapsed().as_secs_f64()))
}

/// Prefills every batch size, then takes one decode step of each in turn, `decode_steps`
/// times: on a shared machine, whose speed drifts over seconds, the batch sizes' medians then
/// come from the same minutes, and their ratio says more than that of runs one after another.
fn run_interleaved(
    model: &Llama,
    batches: &[usize],
    prompt_tokens: usize,
    decode_steps: usize,
) -> Result<()> {
    let mut runs = Vec::with_capacity(batches.len());
    for &batch in batches {
        let (cache, next, _) = prefilled(model, batch, prompt_tokens, decode_steps)?;
        runs.push((batch, cache, next, Vec::with_capacity(decode_steps)));
    }
    eprintln!("prefilled, decoding the batch sizes in turn");
    for _ in 0..decode_steps {
        for (_, cache, next, steps) in runs.iter_mut() {
            let t = Instant::now();
            *next = argmax_rows(&model.decode(next, cache)?)?;
            steps.push(t.elapsed().as_secs_f64());
        }
    }
    let mut first_rate = None;
    for (batch, _, _, mut steps) in runs {
        let (median, min) = median_and_min(&mut steps);
        let rate = batch as f64 / median;
        let first = *first_rate.get_or_insert(rate);
        println!(
            "batch {batch:>3}: decode step median {:>7.2} ms (min {:.2}), {rate:>7.1} tok/s, \
             {:.1}x the first batch size's",
            median * 1e3,
            min * 1e3,
            rate / first,
        );
    }
    Ok(())
}

/// The median and the minimum of `steps`, which it sorts.
fn median_and_min(steps: &mut [f64]) -> (f64, f64) {
    steps.sort_by(f64::total_cmp);
    (steps[steps.len() / 2], steps[0])
}

/// CPU time of this process so far (user + system, all threads; Linux), which on a shared
/// machine says more about the code than wall time does.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters here.
    Some(ticks / 100.0)
}
