//! `swarm bench --materialise`: how long turning a genome into dense weights takes on a
//! device, next to the time it takes just to put the base's bytes there.
//!
//! The inputs are those of swarm-merge's `merge_bench`: a base (the default SmolLM2 model,
//! `--model`, or `--random` weights of its shape) and three synthetic experts, the base plus
//! Gaussian noise of 1% of each tensor's RMS, factorised at `--rank`. The genome is a CycleQD
//! child: a crossover of experts 0 and 1 mutated along expert 2, so every expert contributes.
//! Per repetition it times
//!
//! - the *floor*: every base tensor put on the device in f32 (on the CPU a copy into fresh
//!   buffers; on a GPU the upload), which any materialisation has to do;
//! - the *materialisation*: `W_base + Σ_k U_k diag(c_k) V_kᵀ` for every tensor, into memory
//!   on the device (what `swarm serve` does when it makes an elite resident).
//!
//! On a device other than the CPU it also materialises the same genome on the CPU and prints
//! the largest relative difference of a tensor between the two: the check that the device's
//! products agree with ours.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use swarm_merge::testing::{self, bench_child};
use swarm_merge::{materialise_flop, FactorSet, FactoriseOptions, Genome, Rank};
use swarm_model::{random_weights, LlamaConfig, Pretrained, TensorSource, Weights};

use crate::bench::median;

/// Relative RMS of the synthetic experts' noise (as in `merge_bench`).
const EXPERT_NOISE: f32 = 0.01;
/// Synthetic experts: enough for crossover (two parents) and a mutation along a third.
const EXPERTS: usize = 3;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct MaterialiseReport {
    /// Seconds to load every base tensor onto the device in f32, median over repetitions.
    pub floor_s: f64,
    /// Seconds to materialise the genome on the device, median over repetitions.
    pub materialise_s: f64,
    /// Fastest materialisation.
    pub materialise_min_s: f64,
    /// Bytes of the dense f32 model it produces.
    pub bytes: usize,
    /// FLOP of the low-rank products (`2·m·n·Σr` per matrix over the experts in use).
    pub flop: f64,
    /// Largest relative difference (Frobenius) of a tensor from the CPU's materialisation;
    /// `None` on the CPU itself.
    pub max_rel_diff_from_cpu: Option<f64>,
}

/// The synthetic experts of `base` (noise of [`EXPERT_NOISE`] of each tensor's RMS),
/// factorised at `rank`.
pub fn synthetic_factors(base: &Weights, rank: Rank) -> Result<FactorSet> {
    let experts: Vec<Weights> = (0..EXPERTS)
        .map(|k| testing::perturbed(base, 1 + k as u64, EXPERT_NOISE))
        .collect();
    let names: Vec<String> = (0..EXPERTS).map(|k| format!("expert{k}")).collect();
    let sources: Vec<(&str, &dyn TensorSource)> = names
        .iter()
        .zip(&experts)
        .map(|(n, w)| (n.as_str(), w as &dyn TensorSource))
        .collect();
    let options = FactoriseOptions {
        rank,
        measure_error: false,
        ..FactoriseOptions::default()
    };
    Ok(FactorSet::factorise(base, &sources, &options)?)
}

/// Times `repeats` floors and materialisations of `genome` on `device` (see the module docs).
pub fn measure(
    base: &Weights,
    factors: &FactorSet,
    genome: &Genome,
    device: &Device,
    repeats: usize,
) -> Result<MaterialiseReport> {
    if repeats == 0 {
        bail!("repeats must be positive");
    }
    let names = base.names();
    let mut floors = Vec::with_capacity(repeats);
    let mut times = Vec::with_capacity(repeats);
    let mut last: Option<Weights> = None;
    for _ in 0..repeats {
        let start = Instant::now();
        let loaded = names
            .iter()
            .map(|n| load_copy(base, n, device))
            .collect::<Result<Vec<Tensor>>>()?;
        device.synchronize()?;
        floors.push(start.elapsed().as_secs_f64());
        drop(loaded);
        // The previous repetition's weights go first, so that at most one model's worth
        // lives on the device beside the base.
        drop(last.take());
        let start = Instant::now();
        let weights = swarm_merge::materialise_to_weights(base, factors, genome, device)?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
        last = Some(weights);
    }
    let bytes = names
        .iter()
        .map(|n| Ok(base.shape(n)?.iter().product::<usize>() * 4))
        .collect::<Result<Vec<usize>>>()?
        .iter()
        .sum();
    let max_rel_diff_from_cpu = match (&last, device.is_cpu()) {
        (Some(on_device), false) => {
            let on_cpu = swarm_merge::materialise_to_weights(base, factors, genome, &Device::Cpu)?;
            Some(max_rel_diff(on_device, &on_cpu)?)
        }
        _ => None,
    };
    let materialise_min_s = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(MaterialiseReport {
        floor_s: median(&mut floors),
        materialise_s: median(&mut times),
        materialise_min_s,
        bytes,
        flop: materialise_flop(factors, genome),
        max_rel_diff_from_cpu,
    })
}

/// The largest relative difference (Frobenius) between a tensor of `got` (on any device)
/// and the same tensor of `want`; an error names a tensor of `want` that `got` lacks.
fn max_rel_diff(got: &Weights, want: &Weights) -> Result<f64> {
    let mut worst = 0f64;
    for (name, want) in want.iter() {
        let got = got
            .get(name)
            .with_context(|| format!("`{name}` missing from the device's weights"))?
            .to_device(&Device::Cpu)?;
        worst = worst.max(testing::rel_diff(&got, want));
    }
    Ok(worst)
}

/// Base tensor `name` in f32 on `device`, in memory of its own: on the CPU a copy into a
/// fresh buffer (an in-memory tensor would otherwise be shared, not copied), as the CPU's
/// materialisation reads the base; elsewhere the upload.
fn load_copy(base: &Weights, name: &str, device: &Device) -> Result<Tensor> {
    if device.is_cpu() {
        let shape = base.shape(name)?;
        let mut values = vec![0f32; shape.iter().product()];
        base.read_f32_into(name, &mut values)?;
        return Ok(Tensor::from_vec(values, shape, device)?);
    }
    Ok(base.load(name, device)?.to_dtype(DType::F32)?)
}

/// The base as f32 tensors in memory: random weights of SmolLM2-135M's shape, or the model
/// `reference` names (dequantised when it is a GGUF file).
pub fn load_base(random: bool, reference: &str) -> Result<(String, Weights)> {
    if random {
        let config = LlamaConfig::smollm2_135m();
        let weights = random_weights(&config, 0, &Device::Cpu)?;
        return Ok(("random weights, SmolLM2-135M shape".to_string(), weights));
    }
    let pretrained =
        Pretrained::open(reference).with_context(|| format!("cannot open model `{reference}`"))?;
    let weights = pretrained.load_weights(&Device::Cpu, DType::F32)?;
    Ok((pretrained.name, weights))
}

/// `swarm bench --materialise`: builds the inputs, measures, prints a markdown table.
pub fn run(
    random: bool,
    reference: &str,
    rank: &str,
    device_name: &str,
    repeats: usize,
) -> Result<()> {
    let rank: Rank = rank.parse().context("--rank")?;
    if repeats == 0 {
        bail!("--repeats must be positive");
    }
    let device = swarm_model::parse_device(device_name)?;
    let (name, base) = load_base(random, reference)?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!(
        "base: {name}; factorising {EXPERTS} synthetic experts at rank {rank}"
    ));
    let started = Instant::now();
    let factors = synthetic_factors(&base, rank);
    let factorise_s = started.elapsed().as_secs_f64();
    spinner.set_message(format!(
        "factorised in {factorise_s:.1} s; materialising on {device_name}, {repeats} times"
    ));
    let report = factors.and_then(|factors| {
        let genome = bench_child(&factors)?;
        measure(&base, &factors, &genome, &device, repeats)
    });
    spinner.finish_and_clear();
    eprintln!("factorised {EXPERTS} synthetic experts at rank {rank} in {factorise_s:.1} s");
    let report = report?;
    print_report(&name, &rank, device_name, repeats, &report);
    Ok(())
}

fn print_report(name: &str, rank: &Rank, device: &str, repeats: usize, r: &MaterialiseReport) {
    println!(
        "{name}: a genome of {EXPERTS} experts at rank {rank} materialised in f32 on {device}, \
         median of {repeats}"
    );
    println!();
    println!(
        "| device | model MiB | floor: base onto the device, s | materialise, s (min) | vs floor \
         | low-rank GFLOP | GFLOP/s | max rel. diff from the CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let diff = r
        .max_rel_diff_from_cpu
        .map_or_else(|| "(is the CPU)".to_string(), |d| format!("{d:.1e}"));
    println!(
        "| {device} | {:.0} | {:.3} | {:.3} ({:.3}) | {:.2}x | {:.1} | {:.1} | {diff} |",
        r.bytes as f64 / (1024.0 * 1024.0),
        r.floor_s,
        r.materialise_s,
        r.materialise_min_s,
        r.materialise_s / r.floor_s,
        r.flop / 1e9,
        r.flop / 1e9 / r.materialise_s,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_low_rank_flop_of_every_expert_in_use() -> Result<()> {
        let config = testing::tiny_config();
        let base = testing::random_model(&config, 0);
        let factors = synthetic_factors(&base, Rank::Top(3))?;
        // The child uses all three experts (crossover of 0 and 1, mutation along 2): each
        // matrix costs 2·m·n·3 per expert.
        let matrices: usize = config
            .tensor_shapes()
            .iter()
            .filter(|(_, s)| s.len() == 2)
            .map(|(_, s)| s[0] * s[1])
            .sum();
        let child = bench_child(&factors)?;
        assert_eq!(
            materialise_flop(&factors, &child),
            (2 * matrices * 3 * 3) as f64
        );
        // Expert 0's own genome uses expert 0 alone.
        let expert = Genome::expert(factors.layout(), 0)?;
        assert_eq!(
            materialise_flop(&factors, &expert),
            (2 * matrices * 3) as f64
        );
        assert_eq!(
            materialise_flop(&factors, &Genome::base(factors.layout())),
            0.0
        );
        Ok(())
    }

    #[test]
    fn measures_a_materialisation_of_every_tensor() -> Result<()> {
        let config = testing::tiny_config();
        let base = testing::random_model(&config, 0);
        let factors = synthetic_factors(&base, Rank::Full)?;
        let child = bench_child(&factors)?;
        let report = measure(&base, &factors, &child, &Device::Cpu, 2)?;
        let values: usize = config
            .tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(report.bytes, values * 4);
        assert!(report.floor_s > 0.0 && report.materialise_s >= report.materialise_min_s);
        assert!(report.max_rel_diff_from_cpu.is_none());
        assert!(measure(&base, &factors, &child, &Device::Cpu, 0).is_err());
        Ok(())
    }

    #[test]
    fn compares_every_tensor_with_the_cpus() -> Result<()> {
        let base = testing::random_model(&testing::tiny_config(), 0);
        assert_eq!(max_rel_diff(&base, &base)?, 0.0);
        let moved = testing::perturbed(&base, 5, 0.01);
        let d = max_rel_diff(&moved, &base)?;
        assert!(d > 0.005 && d < 0.02, "{d}");
        let mut missing = base.clone();
        let name = base.names()[0].clone();
        missing.remove(&name);
        let err = max_rel_diff(&missing, &base).unwrap_err().to_string();
        assert!(err.contains(&name), "{err}");
        Ok(())
    }
}
