//! SmolLM2-135M-Instruct (the GGUF, dequantised to f32) against HF transformers
//! (`tests/reference/fixtures/smollm2.json`): top-50 logits at three positions of three chat
//! prompts, and the greedy answers through `generate` (batched, with the GGUF tokenizer).
//!
//! Needs the GGUF: `$SWARM_SMOLLM2_GGUF`, else swarm's model cache, where the CI setup script
//! puts it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use swarm_model::{
    cache_dir, generate, FinishReason, GenerationParams, GgufFile, Llama, Precision, StreamControl,
};

fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARM_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let p = cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "SmolLM2 GGUF not found at {}: run the CI setup script or set SWARM_SMOLLM2_GGUF",
        p.display()
    );
    p
}

#[derive(serde::Deserialize)]
struct Logits {
    position: usize,
    top_ids: Vec<u32>,
    top_values: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct Prompt {
    prompt_ids: Vec<u32>,
    logits: Vec<Logits>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

#[derive(serde::Deserialize)]
struct Fixture {
    eos_id: u32,
    max_new_tokens: usize,
    prompts: Vec<Prompt>,
}

#[test]
fn smollm2_matches_transformers() -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/fixtures/smollm2.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let fx: Fixture = serde_json::from_str(&text)?;

    let gguf = GgufFile::open(&smollm2_path())?;
    let config = gguf.config()?;
    let tokenizer = gguf.tokenizer()?;
    let model = Llama::load(&gguf, &config, &Device::Cpu, Precision::F32)?;

    let mut worst = 0f32;
    for (p, prompt) in fx.prompts.iter().enumerate() {
        let ids = &prompt.prompt_ids;
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        let logits = model
            .forward(&input, &mut model.new_cache(1, 0))?
            .squeeze(0)?;
        for reference in &prompt.logits {
            let ours: Vec<f32> = logits.get(reference.position)?.to_vec1()?;
            // Our own top token must be the reference's.
            assert_eq!(
                swarm_model::argmax(&ours),
                reference.top_ids[0],
                "prompt {p} position {}",
                reference.position
            );
            for (&id, &value) in reference.top_ids.iter().zip(&reference.top_values) {
                let err = (ours[id as usize] - value).abs() / value.abs().max(1.0);
                worst = worst.max(err);
            }
        }
    }
    eprintln!("SmolLM2 vs transformers: worst scaled top-50 logit error {worst:.2e}");
    // Same dequantised weights, f32 throughout: only summation order differs.
    assert!(worst < 1e-4, "worst scaled logit error {worst}");

    // The three greedy answers in one left-padded batch (37, 42 and 42 tokens).
    let prompts: Vec<Vec<u32>> = fx.prompts.iter().map(|p| p.prompt_ids.clone()).collect();
    let params = GenerationParams {
        stop_token_ids: vec![fx.eos_id],
        ..GenerationParams::greedy(fx.max_new_tokens)
    };
    let out = generate(&model, &tokenizer, &prompts, &[params], |_| {
        StreamControl::Continue
    })?;
    for (o, p) in out.iter().zip(&fx.prompts) {
        assert_eq!(o.token_ids, p.greedy_ids);
        assert_eq!(o.text, p.greedy_text);
        let expected = if p.greedy_ids.last() == Some(&fx.eos_id) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(o.finish_reason, expected);
    }
    assert_eq!(out[0].text, "The capital of France is Paris.");
    Ok(())
}

/// The bytes of each token, joined, are the text it encodes: also where a token holds part
/// of a character (accents, CJK, emoji split by byte-level BPE), which decoding the token
/// alone cannot show.
#[test]
fn token_bytes_rebuild_the_text() -> Result<()> {
    let tokenizer = GgufFile::open(&smollm2_path())?.tokenizer()?;
    let mut split_characters = 0;
    for text in [
        "def f(x):\n\treturn x * 3 + 7",
        "SELECT name FROM singer WHERE age > 30;",
        "ls -la | grep '\\.rs$'  # ✓",
        "Grüße, naïve café — 日本語 🦀🚀",
    ] {
        let ids = tokenizer.encode(text, false)?;
        let mut bytes = Vec::new();
        for &id in &ids {
            let token = tokenizer.token_bytes(id).context("an id of the encoding")?;
            split_characters += usize::from(std::str::from_utf8(&token).is_err());
            bytes.extend(token);
        }
        assert_eq!(String::from_utf8(bytes)?, text);
    }
    assert!(split_characters > 0, "no token held part of a character");
    assert_eq!(tokenizer.token_bytes(u32::MAX), None);
    Ok(())
}
