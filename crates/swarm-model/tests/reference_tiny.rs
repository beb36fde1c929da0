//! Our forward pass against HF transformers on the tiny random Llamas of
//! `tests/reference/fixtures/` (made by `tests/reference/make_fixtures.py`): logits to 1e-4
//! relative in f32, greedy tokens exactly, through every path (full sequence, KV-cache decode,
//! left-padded batch).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use swarm_model::{argmax_rows, Llama, LlamaConfig, Precision, SafetensorsFiles};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/fixtures")
}

struct Fixture {
    input_ids: Vec<Vec<u32>>,
    logits_positions: Vec<Vec<usize>>,
    logits: Vec<Vec<Vec<f32>>>,
    greedy: Vec<Vec<u32>>,
}

fn read_fixture(name: &str) -> Result<(Fixture, PathBuf)> {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let get = |k: &str| json.get(k).cloned().context(format!("{name}: no `{k}`"));
    let model_dir = get("model_dir")?
        .as_str()
        .context("model_dir is not a string")?
        .to_string();
    Ok((
        Fixture {
            input_ids: serde_json::from_value(get("input_ids")?)?,
            logits_positions: serde_json::from_value(get("logits_positions")?)?,
            logits: serde_json::from_value(get("logits")?)?,
            greedy: serde_json::from_value(get("greedy")?)?,
        },
        fixtures().join(model_dir),
    ))
}

fn load(dir: &std::path::Path, precision: Precision) -> Result<Llama> {
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let weights = SafetensorsFiles::open_dir(dir)?;
    Ok(Llama::load(&weights, &config, &Device::Cpu, precision)?)
}

/// `|ours - ref| <= tol * max(1, |ref|)` elementwise; returns the worst scaled error.
fn worst_error(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Greedy continuation of all prompts at once (left-padded batch, KV cache).
fn greedy_batch(model: &Llama, prompts: &[Vec<u32>], steps: usize) -> Result<Vec<Vec<u32>>> {
    let mut cache = model.new_cache(prompts.len(), 0);
    let mut logits = model.prefill(prompts, &mut cache)?;
    let mut out = vec![Vec::new(); prompts.len()];
    for step in 0..steps {
        let next = argmax_rows(&logits)?;
        for (o, &t) in out.iter_mut().zip(&next) {
            o.push(t);
        }
        if step + 1 < steps {
            logits = model.decode(&next, &mut cache)?;
        }
    }
    Ok(out)
}

fn check(name: &str, precision: Precision, tol: f32) -> Result<()> {
    let (fx, dir) = read_fixture(name)?;
    let model = load(&dir, precision)?;
    for (p, ids) in fx.input_ids.iter().enumerate() {
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        let logits = model
            .forward(&input, &mut model.new_cache(1, 0))?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?;
        for (k, &pos) in fx.logits_positions[p].iter().enumerate() {
            let ours: Vec<f32> = logits.get(pos)?.to_vec1()?;
            let err = worst_error(&ours, &fx.logits[p][k]);
            assert!(
                err <= tol,
                "{name} prompt {p} position {pos}: scaled error {err} > {tol}"
            );
        }
        // One prompt alone through the KV cache.
        let alone = greedy_batch(&model, std::slice::from_ref(ids), fx.greedy[p].len())?;
        assert_eq!(alone[0], fx.greedy[p], "{name} prompt {p}: greedy tokens");
    }
    // Both prompts (7 and 12 tokens) in one left-padded batch.
    let steps = fx.greedy[0].len();
    let batch = greedy_batch(&model, &fx.input_ids, steps)?;
    assert_eq!(batch, fx.greedy, "{name}: batched greedy tokens");
    Ok(())
}

#[test]
fn untied_gqa_matches_transformers() -> Result<()> {
    check("tiny-llama-gqa-untied", Precision::F32, 1e-4)
}

#[test]
fn tied_gqa_with_llama31_rope_scaling_matches_transformers() -> Result<()> {
    check("tiny-llama-gqa-tied", Precision::F32, 1e-4)
}

#[test]
fn bf16_checkpoint_upcast_matches_transformers() -> Result<()> {
    check("tiny-llama-gqa-untied-bf16", Precision::F32, 1e-4)
}

#[test]
fn f16_checkpoint_upcast_matches_transformers() -> Result<()> {
    check("tiny-llama-gqa-untied-f16", Precision::F32, 1e-4)
}

#[test]
fn f16_compute_stays_close() -> Result<()> {
    // Computing in f16 rounds every activation: compare loosely, greedy must still agree.
    check("tiny-llama-gqa-untied-f16", Precision::F16, 2e-2)
}
