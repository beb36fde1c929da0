//! A swarm directory for load benchmarks: `OUT_DIR/{swarm.json, factors.safetensors,
//! genomes.safetensors}` in the layout `swarm evolve` exports (agents/README.md), served by
//! `swarm serve --swarm OUT_DIR` (and `scripts/serve/bench.sh` with `SWARM_DIR=OUT_DIR`).
//!
//! The setting of `factor_bench`, `mixed_batch_bench` and `policy_bench`: a real base
//! (SmolLM2-135M-Instruct by default, from swarm's model cache), three "experts" that are
//! random perturbations of it (Gaussian noise of `rel` times each tensor's RMS), their task
//! vectors factorised at `rank` (the factor set cached in `$SWARM_BENCH_CACHE`, else
//! `/tmp/swarm-factor-bench`, shared with those examples). Elite `i` of `elites` is a child
//! of all three experts drawn from its own random stream (seed `seed`, stream `i`, so an
//! elite does not depend on how many are made): weights `w_k ~ U[0.1, 1]`, the genome
//! `Σ_k w_k g_k / Σ_k w_k` over the experts' genomes `g_k`, then CycleQD's SVD mutation on one
//! random expert (`w ~ U[0, 0.1]`, swarm-evolve's default rate). Every matrix's delta sums
//! three low-rank terms and no two elites have the same weights, as in an evolved swarm.
//!
//! The experts are noise, so no elite has a skill: the manifest's scores are synthetic,
//! `0.1 + 0.8 w_k / Σ w` for the skill of expert `k` (coding, database, os), which gives the
//! router distinct elites to choose from, and `best` names the top scorer of each skill.
//! The manifest says so in each skill's `metric`. The factors' `max_rel_error` is the rank
//! truncation's, computed from the discarded singular values (large at rank 64: the noise
//! is full rank).
//!
//! Every file is written atomically (swarm-merge's writers); the manifest last. At the end
//! the directory is opened as `swarm serve` opens it (`swarm_serve::open_swarm`: manifest,
//! base hash, factor-set id, genomes), so a directory this writes is one the server takes.
//!
//! ```text
//! cargo build --release -p swarm-serve --example make_bench_swarm
//! target/release/examples/make_bench_swarm OUT_DIR [elites=100] [rank=64] [model=smollm2] \
//!     [rel=0.05] [seed=0]
//! ```

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swarm_merge::{
    save_genomes, EliteEntry, FactorEntry, FactorSet, Genome, ModelEntry, Rank, SkillEntry,
    SwarmManifest, SWARM_FORMAT, SWARM_GENOMES_FILE,
};
use swarm_model::Pretrained;

/// The experts' skills, expert `k` for `SKILLS[k]`: the skills swarm-tasks knows, so that
/// the server's router trains its classifier on them.
const SKILLS: [&str; common::EXPERTS] = ["coding", "database", "os"];
/// SVD mutation scale, `w ~ U[0, W_MAX]` (swarm-evolve's default `w_max`).
const W_MAX: f32 = 0.1;
/// The factor file's name in the swarm directory (as `swarm evolve` exports it).
const FACTORS_FILE: &str = "factors.safetensors";

const USAGE: &str = "usage: make_bench_swarm OUT_DIR [elites=100] [rank=64] [model=smollm2] \
                     [rel=0.05] [seed=0]";

fn main() -> Result<()> {
    swarm_model::configure_allocator();
    swarm_model::configure_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let Some(out) = args.first().map(PathBuf::from) else {
        bail!("{USAGE}");
    };
    let elites: usize = arg(1, "100")
        .parse()
        .with_context(|| format!("elites: a count\n{USAGE}"))?;
    let rank: Rank = arg(2, "64")
        .parse()
        .with_context(|| format!("rank: a positive number or `full`\n{USAGE}"))?;
    let reference = arg(3, "smollm2");
    let rel: f32 = arg(4, "0.05")
        .parse()
        .with_context(|| format!("rel: the experts' noise, a fraction of each RMS\n{USAGE}"))?;
    let seed: u64 = arg(5, "0")
        .parse()
        .with_context(|| format!("seed: an unsigned integer\n{USAGE}"))?;
    if elites == 0 || !(rel.is_finite() && rel > 0.0) {
        bail!("elites must be positive and rel a positive number (got {elites}, {rel})\n{USAGE}");
    }

    let started = Instant::now();
    let pretrained = Pretrained::open(&reference)?;
    let factors = common::perturbed_factors(&pretrained, rank, rel)?;
    println!(
        "{}: {} perturbed experts (noise {rel} x RMS) at rank {rank}: factors {:.0} MB, \
         max relative truncation error {:.3} ({:.1} s)",
        pretrained.name,
        common::EXPERTS,
        factors.size_in_bytes() as f64 / 1e6,
        factors.max_rel_error(),
        started.elapsed().as_secs_f64()
    );

    let width = (elites - 1).to_string().len();
    let children: Vec<(String, Genome, [f64; common::EXPERTS])> = (0..elites)
        .map(|i| {
            let (genome, scores) = child(&factors, seed, i as u64)?;
            Ok((format!("e{i:0width$}"), genome, scores))
        })
        .collect::<Result<_>>()?;

    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    factors.save(&out.join(FACTORS_FILE))?;
    let refs: Vec<(&str, &Genome)> = children.iter().map(|(id, g, _)| (id.as_str(), g)).collect();
    save_genomes(&out.join(SWARM_GENOMES_FILE), &refs)?;
    let manifest = manifest(&reference, rel, seed, &factors, &children);
    manifest.save(&out)?;

    // What `swarm serve --swarm OUT_DIR` checks before it listens.
    let opened = swarm_serve::open_swarm(&out)
        .with_context(|| format!("{} was written but does not open", out.display()))?;
    let best: Vec<String> = manifest
        .best
        .iter()
        .map(|(skill, id)| format!("{skill} {id}"))
        .collect();
    println!(
        "{}: {} elites ({} .. {}), genomes {:.1} MB; best: {}; opened as `swarm serve` opens \
         it ({:.1} s in all)",
        out.display(),
        opened.info.elites.len(),
        refs.first().map_or("", |(id, _)| id),
        refs.last().map_or("", |(id, _)| id),
        (elites * factors.layout().len() * 4) as f64 / 1e6,
        best.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Child `i` of the experts, from stream `i` of `seed`, and its synthetic scores (one per
/// skill, by the child's weight on that skill's expert).
fn child(factors: &FactorSet, seed: u64, i: u64) -> Result<(Genome, [f64; common::EXPERTS])> {
    let layout = factors.layout();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i);
    let w: [f64; common::EXPERTS] = std::array::from_fn(|_| rng.gen_range(0.1..=1.0));
    // `weighted_pair` normalises by the pair's sum, so the running pair's weight is the sum
    // of the weights merged into it: the result is `Σ_k w_k g_k / Σ_k w_k`.
    let mut genome = Genome::expert(layout, 0)?;
    let mut merged = w[0];
    for (k, wk) in w.iter().enumerate().skip(1) {
        genome = genome.weighted_pair(&Genome::expert(layout, k)?, merged, *wk)?;
        merged += wk;
    }
    let q = rng.gen_range(0..common::EXPERTS);
    genome.mutate(q, W_MAX, &mut rng)?;
    let scores = w.map(|wk| ((0.1 + 0.8 * wk / merged) * 1000.0).round() / 1000.0);
    Ok((genome, scores))
}

/// `swarm.json` for `children` over `reference`'s base and `factors`.
fn manifest(
    reference: &str,
    rel: f32,
    seed: u64,
    factors: &FactorSet,
    children: &[(String, Genome, [f64; common::EXPERTS])],
) -> SwarmManifest {
    let meta = factors.meta();
    let mut best = std::collections::BTreeMap::new();
    for (k, skill) in SKILLS.iter().enumerate() {
        let top = children
            .iter()
            .max_by(|a, b| a.2[k].total_cmp(&b.2[k]))
            .map(|(id, _, _)| id.clone());
        if let Some(id) = top {
            best.insert(skill.to_string(), id);
        }
    }
    let elites = children
        .iter()
        .map(|(id, _, scores)| EliteEntry {
            id: id.clone(),
            scores: SKILLS.iter().map(|s| s.to_string()).zip(*scores).collect(),
            cells: Vec::new(),
            tags: best
                .iter()
                .filter(|(_, b)| *b == id)
                .map(|(skill, _)| format!("best:{skill}"))
                .collect(),
            generation: 0,
            parents: Vec::new(),
        })
        .collect();
    SwarmManifest {
        format: SWARM_FORMAT.into(),
        name: "bench".into(),
        base: ModelEntry {
            name: "base".into(),
            reference: reference.into(),
            hash: meta.base_hash.clone(),
            skill: None,
        },
        experts: SKILLS
            .iter()
            .zip(&meta.experts)
            .enumerate()
            .map(|(k, (skill, info))| ModelEntry {
                name: skill.to_string(),
                reference: format!(
                    "{reference} + Gaussian noise of {rel} x each tensor's RMS, seed {}",
                    common::expert_seed(k)
                ),
                hash: info.hash.clone(),
                skill: Some(skill.to_string()),
            })
            .collect(),
        skills: SKILLS
            .iter()
            .map(|s| SkillEntry {
                metric: "synthetic, not measured: 0.1 + 0.8 x the elite's weight on this \
                         skill's expert (make_bench_swarm)"
                    .into(),
                ..SkillEntry::new(*s, "none", "none", None, 10, (0.0, 1.0))
            })
            .collect(),
        factors: FactorEntry {
            file: FACTORS_FILE.into(),
            id: factors.id().into(),
            rank: meta.rank.clone(),
            max_rel_error: factors.max_rel_error(),
            genome_len: factors.layout().len(),
        },
        elites,
        best,
        aggregated: None,
        generations: 0,
        seed,
    }
}
