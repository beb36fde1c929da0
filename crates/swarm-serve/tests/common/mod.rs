//! Test support shared by the swarm-serve integration tests (`mod common;` in each): the
//! word-level tokenizer of the tiny models, greedy generation alone (the reference every
//! serving path must match) and waiting for an engine; [`swarm`] builds a tiny swarm directory
//! on disk and serves it in-process.

use std::time::{Duration, Instant};

use serde_json::json;
use swarm_model::{generate, Generated, GenerationParams, Llama, StreamControl, Tokenizer};
use swarm_serve::{Engine, ModelEngine};

// `engine.rs` serves one model from memory, no swarm directory.
#[allow(dead_code)]
pub mod swarm;

/// Word-level tokenizer: `<pad>` `<s>` `</s>` then `t3` .. `t63` (the tiny configs' vocab).
pub fn tokenizer() -> Tokenizer {
    let words: Vec<String> = (3..64).map(|i| format!("t{i}")).collect();
    word_level_tokenizer(&words, serde_json::Value::Null)
}

/// A word-level tokenizer: `<pad>` `<s>` `</s>` (special) then `words` as ids 3, 4, ...,
/// decoded with `decoder` (`null`: words joined by spaces).
pub fn word_level_tokenizer(words: &[String], decoder: serde_json::Value) -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<pad>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for (i, w) in words.iter().enumerate() {
        vocab.insert(w.clone(), (i + 3).into());
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": decoder,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}
    });
    let inner: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    Tokenizer::new(inner, Some("<s>".into()), Some("</s>".into()))
}

/// `model` alone, greedy, on one prompt: what an engine or server must answer for it.
pub fn greedy(model: &Llama, prompt: &[u32], max_tokens: usize) -> Generated {
    let mut out = generate(
        model,
        &tokenizer(),
        &[prompt.to_vec()],
        &[GenerationParams::greedy(max_tokens)],
        |_| StreamControl::Continue,
    )
    .unwrap();
    out.swap_remove(0)
}

/// Polls (not timed) until `engine` is ready; panics after 30 s.
pub async fn wait_ready(engine: &ModelEngine) {
    let start = Instant::now();
    while !engine.status().ready {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the engine never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
