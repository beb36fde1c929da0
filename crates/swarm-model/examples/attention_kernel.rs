//! Times one decode step's attention alone, for SmolLM2-135M's shape (30 layers, 3 KV heads
//! of 3 query heads, head size 64) over a cache of f32 or f16 keys and values that a step
//! reads from memory: what to hold against the bytes the cache holds when a decode step's
//! attention looks slow.
//!
//! ```text
//! cargo run --release -p swarm-model --example attention_kernel -- [batch=32] [slots=500] [cache=f32,f16]
//! ```
//! Threads: `RAYON_NUM_THREADS`.

use anyhow::{bail, Result};
use candle_core::DType;
use swarm_model::kernel_bench::median_attention_time;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let batch: usize = arg(0, "32").parse()?;
    let slots: usize = arg(1, "500").parse()?;
    let caches: Vec<String> = arg(2, "f32,f16").split(',').map(String::from).collect();
    if batch == 0 || slots == 0 {
        bail!("batch and slots must be positive");
    }
    let (layers, kv_heads, group, head_dim) = (30, 3, 3, 64);
    println!("| cache | batch | slots | step's attention | cache bytes read | GB/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for name in &caches {
        let (dtype, bytes) = match name.as_str() {
            "f32" => (DType::F32, 4),
            "f16" => (DType::F16, 2),
            other => bail!("the cache is f32 or f16, got {other:?}"),
        };
        let seconds =
            median_attention_time(batch, kv_heads, group, head_dim, slots, layers, dtype, 15)?;
        let read = (layers * batch * kv_heads * slots * head_dim * 2 * bytes) as f64;
        println!(
            "| {name} | {batch} | {slots} | {:.2} ms | {:.0} MB | {:.1} |",
            seconds * 1e3,
            read / 1e6,
            read / seconds / 1e9
        );
    }
    Ok(())
}
