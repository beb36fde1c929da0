//! What `factor_bench`, `mixed_batch_bench`, `policy_bench` and `make_bench_swarm` share:
//! where the synthetic experts' factor sets are cached between runs, and under which name;
//! the swarm of children of those experts that the middle two serve; the process's CPU time
//! and the load average, printed next to every timing (the benches run on a shared machine).

// Each example uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use swarm_merge::{FactorSet, Genome, Rank};
use swarm_model::{Pretrained, Weights};
use swarm_serve::GenomeSwarm;

/// `$SWARM_BENCH_CACHE`, else `/tmp/swarm-factor-bench`, created if missing.
pub fn factor_cache_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::var_os("SWARM_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/swarm-factor-bench"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The cached factor set of `model`'s perturbed experts at `rank` and noise `rel`.
pub fn factor_path(cache_dir: &Path, model: &str, rank: Rank, rel: f32) -> PathBuf {
    cache_dir.join(format!(
        "{}-{rank}-{rel}.safetensors",
        swarm_serve::model_elite_id(model)
    ))
}

/// How many perturbed experts [`perturbed_factors`] makes.
pub const EXPERTS: usize = 3;

/// The seed of perturbed expert `k`'s noise.
pub fn expert_seed(k: usize) -> u64 {
    1000 + k as u64
}

/// The factor set of [`EXPERTS`] "experts" of `pretrained`'s base (Gaussian noise of `rel`
/// times each tensor's RMS, seeds [`expert_seed`]), factorised at `rank`: read from the
/// cache ([`factor_path`]) when an earlier run made it, else made and cached.
pub fn perturbed_factors(pretrained: &Pretrained, rank: Rank, rel: f32) -> Result<FactorSet> {
    let cache_dir = factor_cache_dir()?;
    let base = pretrained.load_weights(&Device::Cpu, DType::F32)?;
    let path = factor_path(&cache_dir, &pretrained.name, rank, rel);
    let experts: Vec<Weights> = (0..EXPERTS)
        .map(|k| swarm_merge::testing::perturbed(&base, expert_seed(k), rel))
        .collect();
    swarm_merge::testing::factors_cached(&base, &experts, rank, &path)
        .with_context(|| format!("factors in {}", path.display()))
}

/// `k` elites `elite00`, `elite01`, ... over `reference`'s base, each a different child of
/// all three of its perturbed experts (Gaussian noise of `rel` times each tensor's RMS,
/// factorised at `rank`, the factor set cached): every matrix's delta sums three low-rank
/// terms, and no two elites have the same weights. With the opened model (its weights
/// moved into the swarm: its name, config, tokenizer and template stay) and the ids.
pub fn children_swarm(
    reference: &str,
    rank: Rank,
    rel: f32,
    k: usize,
) -> Result<(Pretrained, GenomeSwarm, Vec<String>)> {
    let pretrained = Pretrained::open(reference)?;
    let factors = perturbed_factors(&pretrained, rank, rel)?;
    let layout = factors.layout().clone();
    let e: Vec<Genome> = (0..EXPERTS)
        .map(|k| Genome::expert(&layout, k))
        .collect::<Result<_, _>>()?;
    let mut genomes = BTreeMap::new();
    for i in 0..k {
        let w = 1.0 + i as f64;
        let child =
            e[0].weighted_pair(&e[1], w, 1.0)?
                .weighted_pair(&e[2], 2.0, 0.5 + 0.25 * i as f64)?;
        genomes.insert(format!("elite{i:02}"), child);
    }
    let ids: Vec<String> = genomes.keys().cloned().collect();
    // The base as the server reads it (a GGUF file is dequantised tensor by tensor).
    let source = Pretrained::open(reference)?.weights;
    let swarm = GenomeSwarm::new(pretrained.config.clone(), source, factors, genomes);
    Ok((pretrained, swarm, ids))
}

/// User + system CPU seconds of this process so far, all its threads (`/proc/self/stat`,
/// fields 14 and 15, in clock ticks of 1/100 s).
pub fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/self/stat is short")?
            .parse::<f64>()?)
    };
    // Field 14 is the 12th after the command name (state is field 3, index 0 here).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}
