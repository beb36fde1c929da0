//! llama.cpp tensor names to HF names, and the Q/K row order llama.cpp changes.

/// What becomes of a GGUF tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// An HF tensor; `permute_heads` is `Some(Q)` / `Some(K)` for rows to un-permute.
    Hf { name: String, rows: Rows },
    /// A tensor llama.cpp derives from the config and HF does not store; skipped, and why.
    Derived(&'static str),
}

/// Which head count a tensor's rows are grouped by when undoing llama.cpp's permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    AsIs,
    /// `q_proj`: rows grouped by `n_head`.
    QueryHeads,
    /// `k_proj`: rows grouped by `n_head_kv`.
    KeyHeads,
}

/// Maps a llama-architecture GGUF tensor name to its HF name; `None` for names we do not know.
pub(crate) fn map_llama(gguf: &str) -> Option<Mapped> {
    let hf = |name: String, rows| Some(Mapped::Hf { name, rows });
    match gguf {
        "token_embd.weight" => return hf("model.embed_tokens.weight".into(), Rows::AsIs),
        "output_norm.weight" => return hf("model.norm.weight".into(), Rows::AsIs),
        "output.weight" => return hf("lm_head.weight".into(), Rows::AsIs),
        // Llama 3.1 frequency factors: HF computes them from `rope_scaling` (see config.rs).
        "rope_freqs.weight" => {
            return Some(Mapped::Derived(
                "RoPE frequency factors; HF derives them from `rope_scaling`",
            ))
        }
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    // Only plain decimal layer numbers, so `blk.+1.` or `blk.01.` do not alias `blk.1.`.
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return None;
    }
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (module, rows) = match part {
        "attn_q" => ("self_attn.q_proj", Rows::QueryHeads),
        "attn_k" => ("self_attn.k_proj", Rows::KeyHeads),
        "attn_v" => ("self_attn.v_proj", Rows::AsIs),
        "attn_output" => ("self_attn.o_proj", Rows::AsIs),
        "ffn_gate" => ("mlp.gate_proj", Rows::AsIs),
        "ffn_up" => ("mlp.up_proj", Rows::AsIs),
        "ffn_down" => ("mlp.down_proj", Rows::AsIs),
        "attn_norm" if kind == "weight" => ("input_layernorm", Rows::AsIs),
        "ffn_norm" if kind == "weight" => ("post_attention_layernorm", Rows::AsIs),
        // Old conversions stored the rotary inverse frequencies per layer.
        "attn_rot_embd" => {
            return Some(Mapped::Derived(
                "RoPE inverse frequencies; computed from the config",
            ))
        }
        _ => return None,
    };
    hf(format!("model.layers.{layer}.{module}.{kind}"), rows)
}

/// Undoes llama.cpp's Q/K permutation in place.
///
/// `convert_hf_to_gguf.py` reorders each head's rows from HF's half-split RoPE layout
/// (`[x_0..x_{d/2}, y_0..y_{d/2}]`) to ggml's interleaved one (`[x_0, y_0, x_1, y_1, ...]`):
/// `w.reshape(heads, 2, d/2, cols).swapaxes(1, 2)`. Its inverse views the rows as
/// `(heads, d/2, 2)` and swaps the last two axes. Works for weights (`cols` = hidden size)
/// and biases (`cols` = 1).
pub(crate) fn unpermute_heads(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) holds HF row (h, j, i).
                let src = (h * head_dim + i * 2 + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.12.attn_k.bias",
                "model.layers.12.self_attn.k_proj.bias",
            ),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.3.ffn_down.weight",
                "model.layers.3.mlp.down_proj.weight",
            ),
            (
                "blk.3.attn_norm.weight",
                "model.layers.3.input_layernorm.weight",
            ),
            (
                "blk.3.ffn_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
        ];
        for (gguf, hf) in cases {
            match map_llama(gguf) {
                Some(Mapped::Hf { name, .. }) => assert_eq!(name, hf, "{gguf}"),
                other => panic!("{gguf}: {other:?}"),
            }
        }
        for bad in [
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk.1.attn_qq.weight",
            "blk.1.attn_q.scale",
            "blk.1.attn_norm.bias",
            "foo",
        ] {
            assert_eq!(map_llama(bad), None, "{bad}");
        }
        assert!(matches!(
            map_llama("rope_freqs.weight"),
            Some(Mapped::Derived(_))
        ));
    }

    /// The permutation `convert_hf_to_gguf.py` applies, written as it is there.
    fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let (d, half) = (rows / heads, rows / heads / 2);
        let mut out = vec![0f32; data.len()];
        for h in 0..heads {
            for a in 0..2 {
                for i in 0..half {
                    // reshape(heads, 2, half, cols).swapaxes(1, 2): out[h, i, a] = in[h, a, i]
                    let src = (h * d + a * half + i) * cols;
                    let dst = (h * d + i * 2 + a) * cols;
                    out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llamacpp_permute() {
        let (heads, d, cols) = (3, 8, 5);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let gguf = permute(&hf, heads * d, cols, heads);
        assert_ne!(gguf, hf);
        // Interleaved: GGUF rows 0,1 of head 0 are HF rows 0 and d/2.
        assert_eq!(gguf[cols], hf[(d / 2) * cols]);
        assert_eq!(unpermute_heads(&gguf, heads * d, cols, heads), hf);
    }
}
