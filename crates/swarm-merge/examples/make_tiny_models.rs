//! Writes the tiny random HF model dirs the mergekit fixtures are made from:
//! `base` (seeded random Llama, hidden 32, 2 layers, vocab 64) and two "experts" `a`, `b`
//! (the base plus 10% Gaussian noise).
//!
//! `cargo run -p swarm-merge --example make_tiny_models -- tests/reference/mergekit/models`

use std::path::PathBuf;

use swarm_merge::testing::{perturbed, random_model, save_hf_dir, tiny_config};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/reference/mergekit/models".to_string()),
    );
    let config = tiny_config();
    let base = random_model(&config, 1);
    let a = perturbed(&base, 2, 0.1);
    let b = perturbed(&base, 3, 0.1);
    for (name, weights) in [("base", &base), ("a", &a), ("b", &b)] {
        let dir = out.join(name);
        save_hf_dir(&dir, &config, weights)?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}
