//! Tiny random models for tests, examples and the mergekit fixtures.
//!
//! Built in memory from [`LlamaConfig::tensor_shapes`], so they have exactly the names and
//! shapes of a real checkpoint of that architecture.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use swarm_model::{LlamaConfig, Weights};

use crate::error::{MergeError, Result};
use crate::{CrossoverParams, FactorSet, Genome};

/// A small Llama config: hidden 32, 2 layers, vocab 64, untied head.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        torch_dtype: "float32".to_string(),
    }
}

fn normal_vec(rng: &mut ChaCha8Rng, n: usize, mean: f32, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            mean + std * z
        })
        .collect()
}

/// Random weights of `config`'s shapes: matrices ~ N(0, 0.02²), norms ~ 1 + N(0, 0.01²).
pub fn random_model(config: &LlamaConfig, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    for (name, shape) in config.tensor_shapes() {
        let n: usize = shape.iter().product();
        let values = if shape.len() == 1 {
            normal_vec(&mut rng, n, 1.0, 0.01)
        } else {
            normal_vec(&mut rng, n, 0.0, 0.02)
        };
        // The shape and the value count agree by construction.
        if let Ok(t) = Tensor::from_vec(values, shape, &Device::Cpu) {
            w.insert(name, t);
        }
    }
    w
}

/// An "expert": `base` plus Gaussian noise of `rel` times each tensor's RMS.
pub fn perturbed(base: &Weights, seed: u64, rel: f32) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Weights::new();
    for (name, t) in base.iter() {
        let Ok(values) = t.flatten_all().and_then(|x| x.to_vec1::<f32>()) else {
            continue;
        };
        let rms = (values.iter().map(|v| v * v).sum::<f32>() / values.len().max(1) as f32).sqrt();
        let noise = normal_vec(&mut rng, values.len(), 0.0, rel * rms);
        let values: Vec<f32> = values.iter().zip(&noise).map(|(a, b)| a + b).collect();
        if let Ok(t) = Tensor::from_vec(values, t.dims(), &Device::Cpu) {
            out.insert(name.clone(), t);
        }
    }
    out
}

/// The genome the benchmarks materialise: experts 0 and 1 crossed over, then mutated along
/// expert 2, so that all three experts contribute (as in an evolved swarm). `factors` must
/// hold at least three experts.
pub fn bench_child(factors: &FactorSet) -> Result<Genome> {
    let layout = factors.layout();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut child = Genome::expert(layout, 0)?.crossover(
        &Genome::expert(layout, 1)?,
        CrossoverParams::default(),
        &mut rng,
    )?;
    child.mutate(2, 0.1, &mut rng)?;
    Ok(child)
}

/// `‖a − b‖_F / ‖b‖_F` in f64 (0 when both are zero).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let v = |t: &Tensor| -> Vec<f32> {
        t.flatten_all()
            .and_then(|x| x.to_dtype(candle_core::DType::F32))
            .and_then(|x| x.to_vec1::<f32>())
            .unwrap_or_default()
    };
    let (a, b) = (v(a), v(b));
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Saves weights as an HF dir: `model.safetensors` and `config.json`.
pub fn save_hf_dir(dir: &Path, config: &LlamaConfig, weights: &Weights) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| MergeError::io(dir, e))?;
    weights.save_safetensors(&dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(&config.to_hf_json())
        .map_err(|e| MergeError::file(dir, e.to_string()))?;
    swarm_model::write_atomic(&dir.join("config.json"), json.as_bytes())?;
    Ok(())
}

/// The SVD factors of `experts` (named `expert0`, `expert1`, ...) against `base` at `rank`,
/// read from `path` when an earlier run saved them there, else factorised and saved to it:
/// benchmarks on SmolLM2-sized models pay for the SVDs once, not on every run.
pub fn factors_cached(
    base: &dyn swarm_model::TensorSource,
    experts: &[Weights],
    rank: crate::Rank,
    path: &Path,
) -> Result<crate::FactorSet> {
    if path.is_file() {
        return crate::FactorSet::load(path);
    }
    let names: Vec<String> = (0..experts.len()).map(|k| format!("expert{k}")).collect();
    let named: Vec<(&str, &dyn swarm_model::TensorSource)> = names
        .iter()
        .zip(experts)
        .map(|(n, w)| (n.as_str(), w as &dyn swarm_model::TensorSource))
        .collect();
    let options = crate::FactoriseOptions {
        rank,
        measure_error: false,
        ..crate::FactoriseOptions::default()
    };
    let factors = crate::FactorSet::factorise(base, &named, &options)?;
    factors.save(path)?;
    Ok(factors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_cached_factorises_once_then_loads_the_same_factors() {
        let base = random_model(&tiny_config(), 1);
        let experts = vec![perturbed(&base, 2, 0.1), perturbed(&base, 3, 0.1)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("factors.safetensors");
        let made = factors_cached(&base, &experts, crate::Rank::Top(4), &path).unwrap();
        assert!(path.is_file());
        let written = std::fs::read(&path).unwrap();
        // The second call must not factorise (it would get other experts here) but load.
        let other = vec![perturbed(&base, 9, 0.5)];
        let loaded = factors_cached(&base, &other, crate::Rank::Top(4), &path).unwrap();
        assert_eq!(loaded.layout(), made.layout());
        assert_eq!(loaded.size_in_bytes(), made.size_in_bytes());
        assert_eq!(std::fs::read(&path).unwrap(), written);
    }
}
