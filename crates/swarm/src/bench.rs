//! `swarm bench`: prefill and decode speed of the model core, and peak memory.
//!
//! For each batch size it prefills `batch` prompts of `--prompt-tokens` tokens in one batch,
//! then decodes `--decode-tokens` greedy tokens per sequence through the KV cache (the loop
//! `generate` runs, minus sampling and detokenisation). Each measurement is repeated and the
//! median is reported, because the machines we run on are shared and timings swing. Peak
//! memory is the process's peak resident set (VmHWM), reset before each batch size.
//!
//! With `--materialise` it times turning a genome into dense weights instead
//! ([`crate::materialise_bench`]).

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::model_args::parse_kv_cache_dtype;
use swarm_model::{
    argmax_rows, parse_device, random_weights, Llama, LlamaConfig, Precision, Pretrained,
};

/// Measure prefill and decode throughput (tokens/s) and peak memory.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The model: a `.gguf` file, an HF dir, a cached hub id, or `smollm2` (the default).
    #[arg(long, short = 'm', default_value = "smollm2")]
    pub model: String,
    /// Benchmark random weights of SmolLM2-135M's shape instead of a model file.
    #[arg(long)]
    pub random: bool,
    /// Where to run: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32`, `f16`, `bf16` or `q8_0`. Default: f32 on the CPU, bf16 on CUDA.
    #[arg(long)]
    pub precision: Option<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch: Vec<usize>,
    /// Tokens in each prompt.
    #[arg(long, default_value_t = 500)]
    pub prompt_tokens: usize,
    /// Tokens decoded per sequence.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Store the KV cache in this dtype (`f16` halves it and the bytes each decode step reads;
    /// logits move by ~1e-3 relative). Default: the model's activation dtype.
    #[arg(long)]
    pub kv_cache: Option<String>,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// CPU threads (sets `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS`); default: all cores.
    /// On a machine busy with other work, 1 thread can beat 2: candle's thread pools wait on
    /// each other, and a descheduled worker stalls every matrix product.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Time materialising a genome (a crossover and mutation of three synthetic experts of
    /// the model) into dense f32 weights on --device, instead of decoding; compared with the
    /// time to load the base there, and on a GPU with the CPU's result. The decoding flags
    /// (--batch, --prompt-tokens, --decode-tokens, --precision, --kv-cache) do not apply.
    #[arg(
        long,
        conflicts_with_all = ["batch", "prompt_tokens", "decode_tokens", "precision", "kv_cache"]
    )]
    pub materialise: bool,
    /// With --materialise: the experts' SVD rank, a number or `full`.
    #[arg(long, default_value = "64", requires = "materialise")]
    pub rank: String,
}

/// One row of the result table.
struct Row {
    batch: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    peak_rss_mib: Option<f64>,
    cache_mib: f64,
}

/// Runs the benchmark and prints a markdown table on stdout.
pub fn run(args: &BenchArgs) -> Result<()> {
    set_threads(args.threads)?;
    if args.materialise {
        return crate::materialise_bench::run(
            args.random,
            &args.model,
            &args.rank,
            &args.device,
            args.repeats,
        );
    }
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch needs positive batch sizes");
    }
    if args.prompt_tokens == 0 || args.decode_tokens == 0 || args.repeats == 0 {
        bail!("--prompt-tokens, --decode-tokens and --repeats must be positive");
    }
    let device = parse_device(&args.device)?;
    let precision = match &args.precision {
        Some(p) => p.parse::<Precision>()?,
        None => Precision::default_for(&device),
    };
    let started = Instant::now();
    let (name, model) = if args.random {
        let config = LlamaConfig::smollm2_135m();
        let weights = random_weights(&config, 0, &device)?;
        let model = Llama::load(&weights, &config, &device, precision)?;
        ("random weights, SmolLM2-135M shape".to_string(), model)
    } else {
        let pretrained = Pretrained::open(&args.model)
            .with_context(|| format!("cannot open model `{}`", args.model))?;
        let model = Llama::load(
            pretrained.weights.as_ref(),
            &pretrained.config,
            &device,
            precision,
        )?;
        (pretrained.name, model)
    };
    let mut model = model;
    if let Some(dtype) = &args.kv_cache {
        let dtype = parse_kv_cache_dtype(dtype)?;
        model.set_kv_cache_dtype(Some(dtype))?;
    }
    let kv_cache = model
        .kv_cache_dtype()
        .unwrap_or(precision.activation_dtype())
        .as_str();
    let load_s = started.elapsed().as_secs_f64();
    let config = model.config().clone();
    let needed = args.prompt_tokens + args.decode_tokens;
    if needed > config.max_position_embeddings {
        bail!(
            "--prompt-tokens + --decode-tokens = {needed} exceeds the model's {} positions",
            config.max_position_embeddings
        );
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    eprintln!(
        "model: {name}; {precision} on {}; loaded in {load_s:.1} s; {threads} threads",
        args.device
    );

    let mut rows = Vec::new();
    for &batch in &args.batch {
        reset_peak_rss();
        // Deterministic pseudo-random prompts over the ordinary vocabulary.
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|b| {
                (0..args.prompt_tokens)
                    .map(|i| (100 + (b * 7919 + i * 104_729) % (config.vocab_size - 100)) as u32)
                    .collect()
            })
            .collect();
        let mut prefill_times = Vec::new();
        let mut decode_times = Vec::new();
        let mut cache_bytes = 0;
        for _ in 0..args.repeats {
            let mut cache = model.new_cache(batch, needed);
            let t0 = Instant::now();
            let logits = model.prefill(&prompts, &mut cache)?;
            let mut next = argmax_rows(&logits)?;
            prefill_times.push(t0.elapsed().as_secs_f64());
            let t1 = Instant::now();
            for _ in 0..args.decode_tokens {
                let logits = model.decode(&next, &mut cache)?;
                next = argmax_rows(&logits)?;
            }
            decode_times.push(t1.elapsed().as_secs_f64());
            cache_bytes = cache.size_in_bytes();
        }
        let row = Row {
            batch,
            prefill_tok_s: (batch * args.prompt_tokens) as f64 / median(&mut prefill_times),
            decode_tok_s: (batch * args.decode_tokens) as f64 / median(&mut decode_times),
            peak_rss_mib: peak_rss_mib(),
            cache_mib: cache_bytes as f64 / (1024.0 * 1024.0),
        };
        eprintln!(
            "batch {batch}: prefill {:.1} tok/s, decode {:.1} tok/s",
            row.prefill_tok_s, row.decode_tok_s
        );
        rows.push(row);
    }

    println!(
        "{name}, {precision} on {} (KV cache {kv_cache}), {threads} threads; prompt {} \
         tokens, {} decoded per sequence, median of {}",
        args.device, args.prompt_tokens, args.decode_tokens, args.repeats
    );
    println!();
    println!(
        "| batch | prefill tok/s | decode tok/s (all sequences) | decode tok/s per sequence \
         | decode vs batch 1 | KV cache MiB | peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let base = rows.first().map(|r| r.decode_tok_s).unwrap_or(1.0);
    for r in &rows {
        let rss = r
            .peak_rss_mib
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "n/a".to_string());
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1}x | {:.0} | {rss} |",
            r.batch,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.decode_tok_s / r.batch as f64,
            r.decode_tok_s / base,
            r.cache_mib,
        );
    }
    Ok(())
}

/// `--threads`: sets the pools' sizes, before the first tensor operation (candle and rayon
/// size their pools once).
fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be positive");
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
    Ok(())
}

/// The median of `xs` (sorted in place); `xs` must not be empty.
pub(crate) fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Peak resident set of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets `VmHWM` to the current resident set (Linux; ignored elsewhere).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
