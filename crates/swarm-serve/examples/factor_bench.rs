//! Serving an elite from factors vs materialising it: which is faster when.
//!
//! On a real base model (SmolLM2-135M-Instruct by default, dequantised from its GGUF to f32),
//! three "experts" are made as random perturbations of the base (Gaussian noise of `rel`
//! times each tensor's RMS: full-rank task vectors, so the SVD factors are as large as real
//! full-rank ones; the speed of a product does not depend on the values), factorised at each
//! rank asked for, and two elites are timed: an expert (one expert's factors active) and a
//! child of all three (every matrix's delta sums three low-rank terms), each
//!
//! - materialised: `GenomeSwarm::load` (dense weights `W + Σ U diag(c) Vᵀ` from the base
//!   source, then `Llama::load`), as the server does for a non-resident elite;
//! - served from factors: `GenomeSwarm::factored` (the dense base loaded once and shared, a
//!   low-rank delta per matrix and active expert, the factor set's tensors not copied);
//! - served from fused factors: one delta per matrix, `a = [V_1ᵀ; V_2ᵀ; ...]` and
//!   `b = [U_1 diag(c_1) | U_2 diag(c_2) | ...]` concatenated for this elite (a copy of the
//!   factors per elite; what `GenomeSwarm` does instead is concatenate once, shared by every
//!   elite, where that is small);
//!
//! then prefill (`prompt` tokens per row) and decode (`steps` steps, median) at each batch
//! size, and the break-even: how many tokens an elite must serve before materialising it
//! (once) costs less than serving it from factors.
//!
//! ```text
//! cargo run --release -p swarm-serve --example factor_bench -- \
//!     [model=smollm2] [ranks=full,64] [batches=1,8] [prompt=128] [steps=32] [rel=0.05]
//! ```
//! Factor sets are cached in `$SWARM_BENCH_CACHE` (default `/tmp/swarm-factor-bench`).
//! Several elites in one batch (one grouped forward pass vs one per elite): `mixed_batch_bench`.
//! Threads: `RAYON_NUM_THREADS`; candle's element-wise pool gets one thread as in
//! `swarm serve` unless `CANDLE_NUM_THREADS` is set.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use swarm_merge::{FactorSet, Genome, Rank, TensorFactors};
use swarm_model::{argmax_rows, Llama, LowRankDelta, ModelDelta, Precision, Pretrained, Weights};
use swarm_serve::{model_bytes, EliteSource, GenomeSwarm};

fn main() -> Result<()> {
    swarm_model::configure_allocator();
    let threads = swarm_model::configure_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let reference = arg(0, "smollm2");
    let ranks: Vec<Rank> = arg(1, "full,64")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let batches: Vec<usize> = arg(2, "1,8")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let prompt: usize = arg(3, "128").parse()?;
    let steps: usize = arg(4, "32").parse()?;
    let rel: f32 = arg(5, "0.05").parse()?;
    if batches.contains(&0) || prompt == 0 || steps == 0 {
        bail!("batch sizes, prompt tokens and decode steps must be positive");
    }
    let cache_dir = common::factor_cache_dir()?;

    let device = Device::Cpu;
    let precision = Precision::F32;
    let pretrained = Pretrained::open(&reference)?;
    let config = pretrained.config.clone();
    println!(
        "model {} ({} layers, hidden {}, vocab {}), f32 on the CPU, CANDLE_NUM_THREADS={threads}, \
         prompt {prompt} tokens, {steps} decode steps",
        pretrained.name, config.num_hidden_layers, config.hidden_size, config.vocab_size
    );
    let started = Instant::now();
    let base = pretrained.load_weights(&device, DType::F32)?;
    let experts: Vec<Weights> = (0..3)
        .map(|k| swarm_merge::testing::perturbed(&base, 1000 + k, rel))
        .collect();
    println!(
        "base and 3 perturbed experts in memory: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for &rank in &ranks {
        let path = common::factor_path(&cache_dir, &pretrained.name, rank, rel);
        let started = Instant::now();
        let cached = path.is_file();
        let factors = swarm_merge::testing::factors_cached(&base, &experts, rank, &path)
            .with_context(|| format!("factors in {}", path.display()))?;
        println!(
            "rank {rank}: factors {:.0} MB ({:.1} s to {}), max relative truncation error {:.3}",
            factors.size_in_bytes() as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            if cached { "load" } else { "make" },
            factors.max_rel_error()
        );
        let layout = factors.layout().clone();
        let e: Vec<Genome> = (0..3)
            .map(|k| Genome::expert(&layout, k))
            .collect::<Result<_, _>>()?;
        let child = e[0]
            .weighted_pair(&e[1], 0.5, 0.5)?
            .weighted_pair(&e[2], 2.0, 1.0)?;
        let genomes: BTreeMap<String, Genome> = [
            ("expert".to_string(), e[0].clone()),
            ("child".to_string(), child),
        ]
        .into();
        // The base as the server reads it (a GGUF file is dequantised tensor by tensor).
        let source = Pretrained::open(&reference)?.weights;
        let swarm = GenomeSwarm::new(config.clone(), source, factors.clone(), genomes.clone());
        // The dense base every factored elite shares: loaded once per server.
        let t = Instant::now();
        swarm.prepare_factored(&device, precision)?;
        println!(
            "rank {rank}: dense base for factored serving loaded in {:.2} s (once)",
            t.elapsed().as_secs_f64()
        );
        let base_model = Llama::load(&base, &config, &device, precision)?;

        for (elite, genome) in &genomes {
            let t = Instant::now();
            let dense = swarm.load(elite, &device, precision)?;
            let materialise_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let factored = swarm.factored(elite, &device, precision)?;
            let factored_build_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let fused = base_model.with_delta(&fused_delta(&factors, genome, &base)?)?;
            let fused_build_s = t.elapsed().as_secs_f64();
            let active = (0..3)
                .filter(|&k| {
                    factors.tensors().iter().any(|t| {
                        genome
                            .coefficients(&t.name, k)
                            .is_some_and(|c| c.iter().any(|v| *v != 0.0))
                    })
                })
                .count();
            for (how, model, setup_s) in [
                ("materialised", &dense, materialise_s),
                ("factors", &factored, factored_build_s),
                ("fused factors", &fused, fused_build_s),
            ] {
                for &batch in &batches {
                    let (prefill_tps, decode_tps) = speed(model, batch, prompt, steps)?;
                    println!(
                        "rank {rank} {elite} ({active} experts) {how} batch {batch}: setup \
                         {setup_s:.2} s, prefill {prefill_tps:.1} tok/s, decode {decode_tps:.1} \
                         tok/s"
                    );
                    rows.push(Row {
                        rank,
                        elite: elite.clone(),
                        active,
                        how,
                        batch,
                        setup_s,
                        prefill_tps,
                        decode_tps,
                    });
                }
            }
        }
    }

    println!();
    println!("| rank | elite | served | setup s | batch | prefill tok/s | decode tok/s |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} ({} experts) | {} | {:.2} | {} | {:.1} | {:.1} |",
            r.rank, r.elite, r.active, r.how, r.setup_s, r.batch, r.prefill_tps, r.decode_tps
        );
    }
    println!();
    println!(
        "Break-even: tokens after which materialising (setup, once) has cost less than \
         serving from factors, `(T_materialise - T_setup_factors) / (1/v_factors - 1/v_dense)` \
         with v in tok/s (decode; prefill in brackets); `never` where factors are as fast, \
         `0` where setting up the factored model costs more than materialising."
    );
    println!();
    println!(
        "| rank | elite | served from | batch | break-even decode tokens | (prefill tokens) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows.iter().filter(|r| r.how != "materialised") {
        let Some(d) = rows.iter().find(|d| {
            d.how == "materialised" && d.rank == r.rank && d.elite == r.elite && d.batch == r.batch
        }) else {
            continue;
        };
        let even = |v_f: f64, v_d: f64| {
            // Seconds saved by not materialising, and lost per token served from factors.
            let saved = d.setup_s - r.setup_s;
            let extra = 1.0 / v_f - 1.0 / v_d;
            match (saved > 0.0, extra > 0.0) {
                (true, true) => format!("{:.0}", saved / extra),
                (true, false) => "never".to_string(),
                (false, _) => "0".to_string(),
            }
        };
        println!(
            "| {} | {} ({} experts) | {} | {} | {} | ({}) |",
            r.rank,
            r.elite,
            r.active,
            r.how,
            r.batch,
            even(r.decode_tps, d.decode_tps),
            even(r.prefill_tps, d.prefill_tps)
        );
    }
    println!();
    println!(
        "memory: a dense elite {:.0} MB; an elite from factors holds its coefficients and 1-D \
         tensors (the base and the factors are shared)",
        model_bytes(&config, precision) as f64 / 1e6
    );
    Ok(())
}

struct Row {
    rank: Rank,
    elite: String,
    active: usize,
    how: &'static str,
    batch: usize,
    setup_s: f64,
    prefill_tps: f64,
    decode_tps: f64,
}

/// Prefill tok/s (batch rows of `prompt` tokens) and decode tok/s (median step).
fn speed(model: &Llama, batch: usize, prompt: usize, steps: usize) -> Result<(f64, f64)> {
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..prompt)
                .map(|i| (100 + (b * 7919 + i * 104_729) % (vocab - 200)) as u32)
                .collect()
        })
        .collect();
    let mut cache = model.new_cache(batch, prompt + steps);
    let t = Instant::now();
    let mut next = argmax_rows(&model.prefill(&prompts, &mut cache)?)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        next = argmax_rows(&model.decode(&next, &mut cache)?)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(((batch * prompt) as f64 / prefill_s, batch as f64 / median))
}

/// One delta per matrix over the genome's active experts, concatenated:
/// `a = [V_kᵀ; ...]`, `b = [U_k diag(c_k) | ...]`; 1-D tensors replaced.
fn fused_delta(factors: &FactorSet, genome: &Genome, base: &Weights) -> Result<ModelDelta> {
    let mut delta = ModelDelta::new();
    for t in factors.tensors() {
        let name = t.name.as_str();
        match &t.factors {
            TensorFactors::Svd(experts) => {
                let mut a = Vec::new();
                let mut b = Vec::new();
                for (k, f) in experts.iter().enumerate() {
                    let c = genome.coefficients(name, k).context("coefficients")?;
                    if c.iter().all(|v| *v == 0.0) {
                        continue;
                    }
                    let s = Tensor::from_slice(c, (1, c.len()), &Device::Cpu)?;
                    a.push(f.vt.clone());
                    b.push(f.u.broadcast_mul(&s)?);
                }
                if !a.is_empty() {
                    let d = LowRankDelta::new(Tensor::cat(&a, 0)?, Tensor::cat(&b, 1)?)?;
                    delta.add_low_rank(name, d);
                }
            }
            TensorFactors::Dense(taus) => {
                let mut v = base.get(name).context("a base tensor")?.clone();
                let mut changed = false;
                for (k, tau) in taus.iter().enumerate() {
                    let c = *genome
                        .coefficients(name, k)
                        .and_then(|c| c.first())
                        .context("coefficients")?;
                    if c != 0.0 {
                        v = (v + tau.affine(f64::from(c), 0.0)?)?;
                        changed = true;
                    }
                }
                if changed {
                    delta.replace(name, v);
                }
            }
        }
    }
    Ok(delta)
}
