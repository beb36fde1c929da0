//! Times our f32 product kernel alone, on one thread, for the weight shapes of SmolLM2-135M
//! and a few batch sizes, with each weight in cache and read from memory, and prints
//! GMAC/s: the rate to hold against the CPU's FMA peak when a decode step's products look
//! slow; and the time to transpose the input rows, which each product does first.
//!
//! ```text
//! cargo run --release -p swarm-model --example product_kernel -- [rows=8,16,32]
//! ```

use anyhow::{bail, Result};
use swarm_model::kernel_bench::{best_products_time, best_transpose_time};

fn main() -> Result<()> {
    let rows: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "8,16,32".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if rows.iter().any(|&r| r < 5) {
        bail!("rows must be 5 or more (2 to 4 rows take the dot-product kernel)");
    }
    // (name, output rows, input width): SmolLM2-135M's products per layer, and lm_head.
    let shapes = [
        ("q, o", 576, 576),
        ("k, v", 192, 576),
        ("gate, up", 1536, 576),
        ("down", 576, 1536),
        ("lm_head", 49152, 576),
    ];
    println!("| input | rows | transposition (once per product) |");
    println!("|---|---:|---:|");
    for &r in &rows {
        for in_dim in [576, 1536] {
            let seconds = best_transpose_time(r, in_dim, 2000);
            println!("| {in_dim} wide | {r} | {:.1} µs |", seconds * 1e6);
        }
    }
    println!();
    println!("| weight | out x in | rows | in cache GMAC/s | from memory GMAC/s | kernel |");
    println!("|---|---|---:|---:|---:|---|");
    for &r in &rows {
        for (name, len, in_dim) in shapes {
            let macs = (len * in_dim * r) as f64;
            // About two seconds of products for each measurement, at least 20 runs.
            let repeats = (2e9 / macs).max(20.0) as usize;
            let (Some((kernel, hot)), Some((_, cold))) = (
                best_products_time(len, in_dim, r, false, repeats),
                best_products_time(len, in_dim, r, true, repeats),
            ) else {
                bail!("this CPU has neither AVX2 nor AVX-512: the kernel does not run here");
            };
            println!(
                "| {name} | {len} x {in_dim} | {r} | {:.1} | {:.1} | {kernel} |",
                macs / hot / 1e9,
                macs / cold / 1e9
            );
        }
    }
    Ok(())
}
