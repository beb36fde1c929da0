//! The tokenizer of a GGUF file, rebuilt from its `tokenizer.ggml.*` metadata so that it
//! gives llama.cpp's token ids.
//!
//! We build an HF `tokenizer.json` (as a JSON value) and let the `tokenizers` crate load it:
//! a byte-level BPE model from `tokenizer.ggml.tokens` and `.merges`, a pre-tokenizer made of
//! llama.cpp's own split regexes for `tokenizer.ggml.pre` (applied one after the other, each
//! keeping the text between its matches, as `unicode_regex_split` does) followed by a
//! byte-level mapping with no prefix space, control and user-defined tokens as added tokens,
//! and a BOS prefix when the file asks for one. The result can be saved as a
//! `tokenizer.json` that HF tools read.
//!
//! Why not candle's `from_gguf`-style builder: it uses GPT-2's single regex with a prefix
//! space, which is wrong for SmolLM2 (`pre = "smollm"` splits digits one by one and adds no
//! space); the model then answers every chat with `<|im_end|>` at once.

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map, Value as Json};

use super::GgufFile;
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// llama.cpp's `llama_token_type` values that become added tokens.
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's pre-tokenizer regex, as llama.cpp writes it.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's (llama.cpp's case-insensitive-free rewrite of the tiktoken pattern).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: as Llama 3's but single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes for one `tokenizer.ggml.pre` value.
struct PreTokenizer {
    regexes: &'static [&'static str],
    /// Llama 3 style vocabularies look a whole word up before merging (HF `ignore_merges`).
    ignore_merges: bool,
    /// Whether a BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    add_bos: bool,
}

/// The pre-tokenizer llama.cpp (`llama-vocab.cpp`) uses for `pre`; unknown names get its
/// `default`, as llama.cpp does (with a warning).
fn pre_tokenizer(pre: &str) -> PreTokenizer {
    let p = |regexes, ignore_merges, add_bos| PreTokenizer {
        regexes,
        ignore_merges,
        add_bos,
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => p(&[LLAMA3], true, true),
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => p(&[LLAMA3], false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            p(&[r"\p{N}", GPT2], false, false)
        }
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "mpt" | "olmo" | "jais" | "trillion"
        | "exaone4" => p(&[GPT2], false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "megrez" | "hunyuan" => {
            p(&[QWEN2], false, false)
        }
        "falcon" => p(
            &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            false,
            false,
        ),
        other => {
            if other != "default" {
                tracing::warn!(
                    "GGUF pre-tokenizer {other:?} is not known; using llama.cpp's default"
                );
            }
            p(
                &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
                false,
                false,
            )
        }
    }
}

/// Builds the tokenizer of `file`.
pub(crate) fn build(file: &GgufFile) -> Result<Tokenizer> {
    let err = |message: String| file.error(format!("tokenizer: {message}"));
    let model = file
        .metadata_str("tokenizer.ggml.model")
        .ok_or_else(|| err("missing `tokenizer.ggml.model`".into()))?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer model {model:?} is not supported; only byte-level BPE (\"gpt2\") is"
        )));
    }
    let pre_name = file
        .metadata_str("tokenizer.ggml.pre")
        .unwrap_or_else(|| "default".to_string());
    let pre = pre_tokenizer(&pre_name);

    let tokens = string_array(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| err("missing `tokenizer.ggml.tokens`".into()))?;
    let types = match file.metadata().get("tokenizer.ggml.token_type") {
        None => None,
        Some(Value::Array(items)) => {
            let types: Option<Vec<i64>> = items.iter().map(super::value_as_i64).collect();
            match types {
                Some(t) if t.len() == tokens.len() => Some(t),
                _ => {
                    return Err(err(format!(
                        "`tokenizer.ggml.token_type` must be {} integers",
                        tokens.len()
                    )))
                }
            }
        }
        Some(_) => return Err(err("`tokenizer.ggml.token_type` is not an array".into())),
    };
    let merges = string_array(file, "tokenizer.ggml.merges")?
        .ok_or_else(|| err("missing `tokenizer.ggml.merges`".into()))?;

    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        // llama.cpp renames empty tokens the same way, so ids stay aligned.
        let token = if token.is_empty() {
            format!("[EMPTY_{id}]")
        } else {
            token.clone()
        };
        let ty = types.as_ref().map_or(1, |t| t[id]);
        if matches!(
            ty,
            TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
        ) {
            // Control tokens are "special" (skipped when decoding with
            // `skip_special_tokens`); user-defined ones are ordinary text that is matched
            // whole, as llama.cpp does.
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false,
                "special": ty != TOKEN_TYPE_USER_DEFINED,
            }));
        }
        if vocab.insert(token.clone(), json!(id)).is_some() {
            return Err(err(format!(
                "token {token:?} appears twice in `tokenizer.ggml.tokens`"
            )));
        }
    }

    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, merge) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first byte.
        // (Bytes, as there: the first token may be a multi-byte character; a space is ASCII
        // so the split is on a character boundary.)
        let split = merge
            .as_bytes()
            .iter()
            .skip(1)
            .position(|&b| b == b' ')
            .map(|p| p + 1)
            .ok_or_else(|| err(format!("merge #{i} {merge:?} is not two tokens")))?;
        merge_pairs.push(json!([&merge[..split], &merge[split + 1..]]));
    }

    let token_text = |key: &str| -> Result<Option<String>> {
        match file.metadata().get(key) {
            None => Ok(None),
            Some(v) => {
                let id = super::value_as_u64(v)
                    .ok_or_else(|| err(format!("`{key}` is not a token id")))?;
                let text = usize::try_from(id)
                    .ok()
                    .and_then(|i| tokens.get(i))
                    .ok_or_else(|| {
                        err(format!(
                            "`{key}` = {id} is outside the vocabulary ({} tokens)",
                            tokens.len()
                        ))
                    })?;
                Ok(Some(text.clone()))
            }
        }
    };
    let bos = token_text("tokenizer.ggml.bos_token_id")?;
    let eos = token_text("tokenizer.ggml.eos_token_id")?;
    let add_bos = match file.metadata().get("tokenizer.ggml.add_bos_token") {
        None => pre.add_bos,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(err("`tokenizer.ggml.add_bos_token` is not a bool".into())),
    };
    let add_eos = matches!(
        file.metadata().get("tokenizer.ggml.add_eos_token"),
        Some(Value::Bool(true))
    );

    let post_processor = post_processor(
        add_bos.then_some(bos.as_deref()).flatten(),
        add_eos.then_some(eos.as_deref()).flatten(),
        &vocab,
    );
    if add_bos && bos.is_none() {
        return Err(err(
            "`tokenizer.ggml.add_bos_token` is set but there is no BOS token".into(),
        ));
    }

    let mut pretokenizers: Vec<Json> = pre
        .regexes
        .iter()
        .map(|r| {
            json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                   "invert": false})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
               "use_regex": false});
    pretokenizers.push(byte_level.clone());

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretokenizers},
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": pre.ignore_merges,
            "vocab": vocab, "merges": merge_pairs,
        },
    });
    let inner: tokenizers::Tokenizer = serde_json::from_value(tokenizer_json)
        .map_err(|e| err(format!("cannot build a tokenizer from the metadata: {e}")))?;
    Ok(Tokenizer::new(inner, bos, eos))
}

/// A `TemplateProcessing` that adds BOS before and/or EOS after each sequence, or null.
fn post_processor(bos: Option<&str>, eos: Option<&str>, vocab: &Map<String, Json>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special_tokens = Map::new();
    for t in [bos, eos].into_iter().flatten() {
        special_tokens.insert(
            t.to_string(),
            json!({"id": t, "ids": [vocab.get(t)], "tokens": [t]}),
        );
    }
    for (part, seq_id, type_id) in [(&mut single, "A", 0), (&mut pair, "A", 0)] {
        if let Some(b) = bos {
            part.push(special(b));
        }
        part.push(seq(seq_id, type_id));
        if let Some(e) = eos {
            part.push(special(e));
        }
    }
    if let Some(b) = bos {
        pair.push(special(b));
    }
    pair.push(seq("B", 1));
    if let Some(e) = eos {
        pair.push(special(e));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair,
           "special_tokens": special_tokens})
}

/// A metadata array of strings; `None` when the key is absent.
fn string_array(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    match file.metadata().get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(file.error(format!("`{key}` holds a non-string"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(file.error(format!("`{key}` is not an array"))),
    }
}
