//! Batched text generation: prefill every prompt in one left-padded batch, then decode one
//! token per sequence per step, sampling each sequence with its own seeded sampler.
//!
//! Stop strings are matched on the decoded text (so they are found across token boundaries)
//! and the text is cut before them. Streaming never sends text that could still turn out to
//! be the start of a stop string, or an incomplete UTF-8 character: the concatenation of the
//! streamed pieces of a sequence is exactly its final [`Generated::text`].
//!
//! Finished sequences stay in the batch (their outputs ignored) until a quarter of the rows
//! are finished; then the cache drops them in one copy ([`KvCache::select_rows`](crate::KvCache::select_rows)).

use std::collections::BTreeSet;

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::llama::Llama;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// What to generate for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// At most this many new tokens (the stop token included).
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1]; 1 turns it off.
    pub top_p: f64,
    /// Sample among the `top_k` most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Seed of this sequence's sampler: the same seed gives the same output.
    pub seed: u64,
    /// Generation stops before the first occurrence of any of these in the text.
    pub stop_strings: Vec<String>,
    /// Generation stops after any of these tokens (added to the model's EOS tokens).
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the model's and tokenizer's EOS tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl GenerationParams {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }

    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` or the model's context length.
    Length,
    /// The streaming callback asked to stop.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI spelling (`stop`, `length`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The result of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Every generated token, a final stop token included.
    pub token_ids: Vec<u32>,
    /// The decoded text without special tokens, cut before a stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused instead of prefilled (a
    /// [`Session`](crate::Session)'s turn; 0 from [`generate`]).
    pub cached_prompt_tokens: usize,
}

/// One streamed step of one sequence.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// Index of the prompt this sequence belongs to.
    pub sequence: usize,
    pub token_id: u32,
    /// Text that became final with this token (may be empty).
    pub text: &'a str,
    /// Set on the last event of the sequence.
    pub finish_reason: Option<FinishReason>,
}

/// What the streaming callback wants next for its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamControl {
    Continue,
    /// Cancel this sequence (its result has [`FinishReason::Cancelled`]).
    Stop,
}

/// Generates a continuation of every prompt (token ids, e.g. a rendered chat template), all
/// in one batch. `params` holds one entry for all prompts or one per prompt. `on_token` is
/// called for every generated token of every sequence and may cancel that sequence.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &[GenerationParams],
    mut on_token: impl FnMut(&TokenEvent) -> StreamControl,
) -> Result<Vec<Generated>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let params_of = |i: usize| -> Result<&GenerationParams> {
        match params.len() {
            1 => Ok(&params[0]),
            n if n == prompts.len() => Ok(&params[i]),
            n => Err(ModelError::Generation(format!(
                "{n} generation parameter sets for {} prompts; give one, or one per prompt",
                prompts.len()
            ))),
        }
    };
    let max_positions = model.config().max_position_embeddings;
    let mut seqs = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        seqs.push(Sequence::new(
            model,
            tokenizer,
            i,
            prompt.len(),
            params_of(i)?,
        )?);
    }

    // Sequences asked for no tokens are done before any forward pass.
    let rows: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].finish.is_none())
        .collect();
    if rows.is_empty() {
        return Ok(seqs.into_iter().map(Sequence::into_generated).collect());
    }

    let longest_prompt = rows.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    let most_new = rows
        .iter()
        .map(|&i| seqs[i].max_new_tokens)
        .max()
        .unwrap_or(0);
    let capacity = (longest_prompt + most_new).min(max_positions);
    let mut cache = model.new_cache(rows.len(), capacity);
    let batch_prompts: Vec<Vec<u32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
    let logits = model.prefill(&batch_prompts, &mut cache)?;
    decode(
        model,
        tokenizer,
        &mut seqs,
        rows,
        &mut cache,
        logits,
        &mut on_token,
    )?;
    Ok(seqs.into_iter().map(Sequence::into_generated).collect())
}

/// Decodes the sequences `seqs[rows[r]]`, row `r` of `cache`, from the logits of their last
/// prompt position until every one has finished. Finished rows leave the cache in batches;
/// a single row stays in it, holding everything it ran.
pub(crate) fn decode(
    model: &Llama,
    tokenizer: &Tokenizer,
    seqs: &mut [Sequence],
    mut rows: Vec<usize>,
    cache: &mut KvCache,
    mut logits: Tensor,
    on_token: &mut impl FnMut(&TokenEvent) -> StreamControl,
) -> Result<()> {
    let max_positions = model.config().max_position_embeddings;
    loop {
        let rows_logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let seq_lens = cache.seq_lens();
        let mut next_tokens = vec![0u32; rows.len()];
        for (r, &i) in rows.iter().enumerate() {
            let seq = &mut seqs[i];
            if seq.finish.is_some() {
                continue;
            }
            let token = seq.sampler.sample(&rows_logits[r])?;
            next_tokens[r] = token;
            // The token would sit at position seq_lens[r]; one more must fit to continue.
            let at_context_end = seq_lens[r] + 1 >= max_positions;
            let event = seq.push(token, tokenizer, at_context_end)?;
            let control = on_token(&TokenEvent {
                sequence: i,
                token_id: token,
                text: &event,
                finish_reason: seq.finish,
            });
            if control == StreamControl::Stop && seq.finish.is_none() {
                seq.finish = Some(FinishReason::Cancelled);
            }
        }

        let alive: Vec<usize> = (0..rows.len())
            .filter(|&r| seqs[rows[r]].finish.is_none())
            .collect();
        if alive.is_empty() {
            break;
        }
        // Drop finished rows once they are a quarter of the batch, or when a finished row
        // would overrun the context.
        let dead = rows.len() - alive.len();
        let dead_at_limit = (0..rows.len())
            .any(|r| seqs[rows[r]].finish.is_some() && seq_lens[r] + 1 >= max_positions);
        if dead > 0 && (dead * 4 >= rows.len() || dead_at_limit) {
            cache.select_rows(&alive)?;
            next_tokens = alive.iter().map(|&r| next_tokens[r]).collect();
            rows = alive.iter().map(|&r| rows[r]).collect();
        }
        logits = model.decode(&next_tokens, cache)?;
    }
    Ok(())
}

/// The state of one prompt's generation.
pub(crate) struct Sequence {
    sampler: Sampler,
    stop_ids: BTreeSet<u32>,
    stream: TextStream,
    max_new_tokens: usize,
    prompt_tokens: usize,
    pub(crate) tokens: Vec<u32>,
    pub(crate) finish: Option<FinishReason>,
}

impl Sequence {
    /// Prompt `index` (of `prompt_len` tokens), checked against the model's context, to be
    /// continued as `p` says. Asked for no tokens, it is finished already.
    pub(crate) fn new(
        model: &Llama,
        tokenizer: &Tokenizer,
        index: usize,
        prompt_len: usize,
        p: &GenerationParams,
    ) -> Result<Self> {
        let max_positions = model.config().max_position_embeddings;
        if prompt_len == 0 {
            return Err(ModelError::Generation(format!("prompt {index} is empty")));
        }
        if prompt_len >= max_positions {
            return Err(ModelError::Generation(format!(
                "prompt {index} has {prompt_len} tokens; the model takes at most \
                 {max_positions} positions, leaving no room to generate"
            )));
        }
        let mut stop_ids: BTreeSet<u32> = p.stop_token_ids.iter().copied().collect();
        if !p.ignore_eos {
            stop_ids.extend(model.config().eos_token_ids.iter().copied());
            stop_ids.extend(tokenizer.eos_token_id());
        }
        Ok(Sequence {
            sampler: Sampler::new(p.sampling())?,
            stop_ids,
            stream: TextStream::new(p.stop_strings.clone())?,
            max_new_tokens: p.max_new_tokens,
            prompt_tokens: prompt_len,
            tokens: Vec::new(),
            finish: (p.max_new_tokens == 0).then_some(FinishReason::Length),
        })
    }

    /// Records a sampled token and returns the text it makes final.
    fn push(&mut self, token: u32, tokenizer: &Tokenizer, at_context_end: bool) -> Result<String> {
        self.tokens.push(token);
        if self.stop_ids.contains(&token) {
            self.finish = Some(FinishReason::Stop);
            return Ok(self.stream.finish());
        }
        let text = tokenizer.decode(&self.tokens, true)?;
        if let Some(piece) = self.stream.update(text) {
            self.finish = Some(FinishReason::Stop);
            return Ok(piece);
        }
        if self.tokens.len() >= self.max_new_tokens || at_context_end {
            self.finish = Some(FinishReason::Length);
            return Ok(self.stream.finish());
        }
        Ok(self.stream.take_safe())
    }

    pub(crate) fn into_generated(self) -> Generated {
        let finish_reason = self.finish.unwrap_or(FinishReason::Length);
        Generated {
            token_ids: self.tokens,
            text: self.stream.into_text(),
            finish_reason,
            prompt_tokens: self.prompt_tokens,
            cached_prompt_tokens: 0,
        }
    }
}

/// The decoded text of one sequence and how much of it has been streamed: incremental
/// detokenisation with stop strings. Shared with the server's continuous-batching engine so
/// both stream under one contract (no half characters, no possible stop-string prefix, pieces
/// that concatenate to the final text).
#[derive(Debug, Clone)]
pub struct TextStream {
    stop_strings: Vec<String>,
    /// Everything decoded so far (cut before a stop string once one is found).
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
}

impl TextStream {
    /// A stream cut at any of `stop_strings` (none may be empty).
    pub fn new(stop_strings: Vec<String>) -> Result<Self> {
        if stop_strings.iter().any(String::is_empty) {
            return Err(ModelError::Generation(
                "stop strings must not be empty".to_string(),
            ));
        }
        Ok(Self {
            stop_strings,
            text: String::new(),
            sent: 0,
        })
    }

    /// Takes the full decoded text so far. If it contains a stop string, cuts it there and
    /// returns the final unsent piece.
    pub fn update(&mut self, text: String) -> Option<String> {
        self.text = text;
        let cut = self
            .stop_strings
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()?;
        self.text.truncate(cut);
        Some(self.finish())
    }

    /// Takes the full decoded text so far and returns `(piece, stopped)`: the text that became
    /// final, and whether a stop string was found (the text is then cut before it).
    pub fn push(&mut self, text: String) -> (String, bool) {
        match self.update(text) {
            Some(piece) => (piece, true),
            None => (self.take_safe(), false),
        }
    }

    /// Returns the text that can no longer change: everything except an incomplete UTF-8
    /// character at the end and the longest suffix that begins a stop string.
    pub fn take_safe(&mut self) -> String {
        let mut end = self.text.len();
        if self.text.ends_with('\u{FFFD}') {
            end = self.text.rfind('\u{FFFD}').unwrap_or(end);
        }
        let held = self
            .stop_strings
            .iter()
            .map(|s| longest_suffix_prefix(&self.text[..end], s))
            .max()
            .unwrap_or(0);
        end -= held;
        self.take_until(end)
    }

    /// Returns everything not yet sent.
    pub fn finish(&mut self) -> String {
        self.take_until(self.text.len())
    }

    fn take_until(&mut self, end: usize) -> String {
        // Decoding more tokens may rarely rewrite earlier text (tokenizer clean-up): never
        // resend, never split a character.
        if end <= self.sent || !self.text.is_char_boundary(self.sent) {
            return String::new();
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }

    /// The final text: exactly what was streamed (a cancelled sequence keeps only that).
    pub fn into_text(mut self) -> String {
        if self.sent <= self.text.len() && self.text.is_char_boundary(self.sent) {
            self.text.truncate(self.sent);
        }
        self.text
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn text_stream_holds_back_a_possible_stop_and_cuts_at_it() {
        let mut s = TextStream::new(vec!["END".into()]).unwrap();
        assert_eq!(s.push("hello E".into()), ("hello ".into(), false));
        assert_eq!(s.push("hello EN".into()), (String::new(), false));
        assert_eq!(s.push("hello ENX".into()), ("ENX".into(), false));
        assert_eq!(
            s.push("hello ENX and END more".into()),
            (" and ".into(), true)
        );
    }

    #[test]
    fn text_stream_never_splits_a_character() {
        let mut s = TextStream::new(vec![]).unwrap();
        assert_eq!(s.push("a\u{FFFD}".into()), ("a".into(), false));
        assert_eq!(s.push("aé".into()), ("é".into(), false));
        assert_eq!(s.finish(), "");
    }

    use super::*;
    use crate::llama::tests::tiny_model;

    /// A tokenizer for the tiny test model: id 0 `<pad>`, 1 `<s>`, 2 `</s>` (special), then
    /// two-letter pieces, decoded by plain concatenation.
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        let letters: Vec<char> = "abcdefgh".chars().collect();
        let mut vocab = serde_json::Map::new();
        for (id, t) in ["<pad>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(t.to_string(), id.into());
        }
        let mut id = 3;
        'outer: for a in &letters {
            for b in &letters {
                if id == 64 {
                    break 'outer;
                }
                vocab.insert(format!("{a}{b}"), id.into());
                id += 1;
            }
        }
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null, "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}
        });
        let inner: tokenizers::Tokenizer = json.to_string().parse().expect("tiny tokenizer");
        Tokenizer::new(inner, Some("<s>".into()), Some("</s>".into()))
    }

    fn prompts() -> Vec<Vec<u32>> {
        vec![vec![1, 5, 9, 33, 12, 40], vec![1, 17], vec![1, 20, 21, 22]]
    }

    fn run(params: &[GenerationParams]) -> Vec<Generated> {
        let model = tiny_model(false, 4, 2);
        generate(&model, &tiny_tokenizer(), &prompts(), params, |_| {
            StreamControl::Continue
        })
        .unwrap()
    }

    fn no_eos(max: usize) -> GenerationParams {
        GenerationParams {
            ignore_eos: true,
            ..GenerationParams::greedy(max)
        }
    }

    #[test]
    fn greedy_batch_equals_each_prompt_alone_and_argmax() {
        let model = tiny_model(false, 4, 2);
        let tok = tiny_tokenizer();
        let batch = run(&[no_eos(12)]);
        for (i, p) in prompts().iter().enumerate() {
            let alone = generate(&model, &tok, std::slice::from_ref(p), &[no_eos(12)], |_| {
                StreamControl::Continue
            })
            .unwrap();
            assert_eq!(alone[0], batch[i]);
            assert_eq!(batch[i].finish_reason, FinishReason::Length);
            assert_eq!(batch[i].token_ids.len(), 12);
            assert_eq!(batch[i].prompt_tokens, p.len());
            // Greedy is the argmax of a plain forward pass.
            let mut cache = model.new_cache(1, 0);
            let mut seq = p.clone();
            for &expected in &batch[i].token_ids {
                let ids = candle_core::Tensor::from_vec(
                    seq.clone(),
                    (1, seq.len()),
                    &candle_core::Device::Cpu,
                )
                .unwrap();
                let logits = model.forward_last(&ids, &mut cache).unwrap();
                cache = model.new_cache(1, 0);
                let next = crate::llama::argmax_rows(&logits).unwrap()[0];
                assert_eq!(next, expected);
                seq.push(next);
            }
        }
    }

    #[test]
    fn same_seed_same_output_also_in_a_batch() {
        let sampled = |seed| GenerationParams {
            temperature: 1.5,
            seed,
            ..no_eos(16)
        };
        let a = run(&[sampled(1), sampled(2), sampled(3)]);
        let b = run(&[sampled(1), sampled(2), sampled(3)]);
        assert_eq!(a, b);
        // Sequence 1 alone with the same seed samples the same tokens.
        let model = tiny_model(false, 4, 2);
        let alone = generate(
            &model,
            &tiny_tokenizer(),
            &prompts()[1..2],
            &[sampled(2)],
            |_| StreamControl::Continue,
        )
        .unwrap();
        assert_eq!(alone[0], a[1]);
        // Different seeds differ at a high temperature.
        let c = run(&[sampled(4), sampled(5), sampled(6)]);
        assert_ne!(a[0].token_ids, c[0].token_ids);
    }

    #[test]
    fn stop_strings_match_across_token_boundaries() {
        let tok = tiny_tokenizer();
        let base = run(&[no_eos(12)]);
        let text = &base[0].text;
        assert!(text.len() >= 12, "two letters per ordinary token: {text}");
        // A stop string that starts inside one token and ends inside a later one.
        let stop = text[5..10].to_string();
        let cut = text.find(&stop).unwrap();
        // The first prefix of the tokens whose text contains the stop string.
        let needed = (1..=12)
            .find(|&n| {
                tok.decode(&base[0].token_ids[..n], true)
                    .unwrap()
                    .contains(&stop)
            })
            .unwrap();
        let mut streamed = vec![String::new(); 3];
        let model = tiny_model(false, 4, 2);
        let params = GenerationParams {
            stop_strings: vec!["zzz".into(), stop.clone()],
            ..no_eos(12)
        };
        let out = generate(&model, &tok, &prompts(), &[params], |e| {
            streamed[e.sequence].push_str(e.text);
            StreamControl::Continue
        })
        .unwrap();
        assert_eq!(out[0].text, text[..cut]);
        assert_eq!(out[0].finish_reason, FinishReason::Stop);
        assert_eq!(out[0].token_ids, base[0].token_ids[..needed]);
        for (s, o) in streamed.iter().zip(&out) {
            assert_eq!(s, &o.text, "streamed pieces add up to the text");
        }
    }

    #[test]
    fn stop_tokens_and_eos_end_sequences() {
        let base = run(&[no_eos(8)]);
        let stop_at = base[2].token_ids[3];
        let first = base[2]
            .token_ids
            .iter()
            .position(|&t| t == stop_at)
            .unwrap();
        let out = run(&[GenerationParams {
            stop_token_ids: vec![stop_at],
            ..no_eos(8)
        }]);
        assert_eq!(out[2].finish_reason, FinishReason::Stop);
        assert_eq!(out[2].token_ids, base[2].token_ids[..=first]);
    }

    #[test]
    fn cancellation_stops_one_sequence() {
        let base = run(&[no_eos(10)]);
        let model = tiny_model(false, 4, 2);
        let mut seen = 0;
        let out = generate(&model, &tiny_tokenizer(), &prompts(), &[no_eos(10)], |e| {
            if e.sequence == 1 {
                seen += 1;
                if seen == 3 {
                    return StreamControl::Stop;
                }
            }
            StreamControl::Continue
        })
        .unwrap();
        assert_eq!(out[1].finish_reason, FinishReason::Cancelled);
        assert_eq!(out[1].token_ids, base[1].token_ids[..3]);
        assert_eq!(seen, 3, "no events after cancelling");
        assert_eq!(out[0], base[0]);
        assert_eq!(out[2], base[2]);
    }

    #[test]
    fn per_prompt_lengths_and_zero_tokens() {
        let out = run(&[no_eos(0), no_eos(3), no_eos(9)]);
        let lens: Vec<usize> = out.iter().map(|g| g.token_ids.len()).collect();
        assert_eq!(lens, vec![0, 3, 9]);
        assert_eq!(out[0].finish_reason, FinishReason::Length);
        let base = run(&[no_eos(9)]);
        assert_eq!(
            out[2], base[2],
            "rows dropped from the batch do not disturb others"
        );
    }

    #[test]
    fn context_end_is_length() {
        let model = tiny_model(false, 4, 2);
        let prompt: Vec<u32> = (0..120).map(|i| 3 + i % 60).collect();
        let out = generate(
            &model,
            &tiny_tokenizer(),
            &[prompt, vec![1, 4]],
            &[no_eos(100)],
            |_| StreamControl::Continue,
        )
        .unwrap();
        assert_eq!(out[0].finish_reason, FinishReason::Length);
        assert_eq!(out[0].token_ids.len(), 8);
        assert_eq!(out[1].token_ids.len(), 100);
    }

    #[test]
    fn bad_requests_are_errors() {
        let model = tiny_model(false, 4, 2);
        let tok = tiny_tokenizer();
        let go = |p: &[Vec<u32>], g: &[GenerationParams]| {
            generate(&model, &tok, p, g, |_| StreamControl::Continue)
        };
        assert!(go(&[vec![]], &[no_eos(3)]).is_err());
        assert!(go(&prompts(), &[no_eos(3), no_eos(3)]).is_err());
        let long: Vec<u32> = vec![3; 128];
        assert!(go(&[long], &[no_eos(3)]).is_err());
        let bad = GenerationParams {
            top_p: 0.0,
            ..no_eos(3)
        };
        assert!(go(&prompts(), &[bad]).is_err());
        let empty_stop = GenerationParams {
            stop_strings: vec![String::new()],
            ..no_eos(3)
        };
        assert!(go(&prompts(), &[empty_stop]).is_err());
    }

    #[test]
    fn text_stream_holds_back_possible_stop_prefixes() {
        let mut s = TextStream::new(vec!["</end>".into()]).unwrap();
        assert!(s.update("Hello </".into()).is_none());
        assert_eq!(s.take_safe(), "Hello ");
        assert!(s.update("Hello </e".into()).is_none());
        assert_eq!(s.take_safe(), "");
        assert!(s.update("Hello </em> ok".into()).is_none());
        assert_eq!(s.take_safe(), "</em> ok");
        assert_eq!(s.update("Hello </em> ok</end>x".into()).unwrap(), "");
        assert_eq!(s.into_text(), "Hello </em> ok");
        let mut s = TextStream::new(vec![]).unwrap();
        assert!(s.update("caf\u{FFFD}".into()).is_none());
        assert_eq!(s.take_safe(), "caf");
        assert!(s.update("café".into()).is_none());
        assert_eq!(s.take_safe(), "é");
    }
}
