//! What `factor_bench` and `mixed_batch_bench` share: where the synthetic experts' factor sets
//! are cached between runs, and under which name.

use std::path::{Path, PathBuf};

use swarm_merge::Rank;

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
