//! A conversation's keys and values kept from one turn to the next.
//!
//! A chat sends the whole conversation at every turn: the prompt of turn `k + 1` is the
//! prompt of turn `k`, its answer, and the new message. [`generate`](crate::generate) would
//! prefill all of it again; a [`Session`] keeps the cache of the tokens it has run and, at
//! the next turn, runs only the prompt's tokens after the longest prefix it shares with them.
//! What the reused keys and values hold is what a prefill would compute (checked in the
//! tests against [`generate`](crate::generate), greedy tokens equal), so a session changes
//! how long a turn takes, not what it says, up to float rounding.

use candle_core::Tensor;

use crate::error::Result;
use crate::generation::{decode, Generated, GenerationParams, Sequence, StreamControl, TokenEvent};
use crate::kv_cache::KvCache;
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;

/// The tokens one model has run for a conversation, and their keys and values. A session
/// belongs to the model it was used with: give it another and the reused keys are wrong.
#[derive(Debug, Default)]
pub struct Session {
    cache: Option<KvCache>,
    tokens: Vec<u32>,
}

impl Session {
    /// An empty session: its first turn prefills the whole prompt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the conversation (a new one starts).
    pub fn reset(&mut self) {
        self.cache = None;
        self.tokens.clear();
    }

    /// The tokens whose keys and values the session holds: the last turn's prompt and its
    /// answer, up to the last token sampled (never run).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Answers `prompt` as [`generate`](crate::generate) answers one prompt, reusing the keys
    /// and values of the longest prefix `prompt` shares with [`Session::tokens`] (all of the
    /// prompt but its last token at most, whose logits start the answer).
    /// [`Generated::cached_prompt_tokens`] says how many were reused. On an error the session
    /// is left empty, never holding keys that its tokens do not describe.
    pub fn generate(
        &mut self,
        model: &Llama,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        params: &GenerationParams,
        mut on_token: impl FnMut(&TokenEvent) -> StreamControl,
    ) -> Result<Generated> {
        let mut seq = Sequence::new(model, tokenizer, 0, prompt.len(), params)?;
        if seq.finish.is_some() {
            return Ok(seq.into_generated());
        }
        let shared = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        let capacity =
            (prompt.len() + params.max_new_tokens).min(model.config().max_position_embeddings);
        let previous = self.cache.take();
        self.tokens.clear();
        let (mut cache, reused) = match previous {
            Some(mut cache) if shared > 0 => {
                cache.truncate(shared)?;
                (cache, shared)
            }
            _ => (model.new_cache(1, capacity), 0),
        };
        let rest = Tensor::new(&prompt[reused..], model.device())?.unsqueeze(0)?;
        let logits = model.forward_last(&rest, &mut cache)?;
        let seqs = std::slice::from_mut(&mut seq);
        decode(
            model,
            tokenizer,
            seqs,
            vec![0],
            &mut cache,
            logits,
            &mut on_token,
        )?;
        let held = cache.seq_lens().first().copied().unwrap_or(0);
        self.tokens = prompt
            .iter()
            .chain(&seq.tokens)
            .copied()
            .take(held)
            .collect();
        self.cache = Some(cache);
        let mut generated = seq.into_generated();
        generated.cached_prompt_tokens = reused;
        Ok(generated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;
    use crate::generation::tests::tiny_tokenizer;
    use crate::llama::tests::tiny_model;

    fn no_eos(max: usize) -> GenerationParams {
        GenerationParams {
            ignore_eos: true,
            ..GenerationParams::greedy(max)
        }
    }

    fn alone(model: &Llama, prompt: &[u32], params: &GenerationParams) -> Generated {
        let tok = tiny_tokenizer();
        let mut out = generate(
            model,
            &tok,
            &[prompt.to_vec()],
            std::slice::from_ref(params),
            |_| StreamControl::Continue,
        )
        .unwrap();
        out.remove(0)
    }

    /// Three turns of a conversation, each prompt the last one, its answer and more: every
    /// turn answers as `generate` does from scratch, reusing all it ran before.
    #[test]
    fn each_turn_answers_as_a_full_prefill_and_reuses_the_last() {
        let model = tiny_model(false, 4, 2);
        let tok = tiny_tokenizer();
        let mut session = Session::new();
        let mut prompt: Vec<u32> = vec![1, 5, 9, 33, 12, 40, 7, 8];
        let mut expected_reuse = 0;
        for turn in 0..3 {
            let params = no_eos(6 + turn);
            let got = session
                .generate(&model, &tok, &prompt, &params, |_| StreamControl::Continue)
                .unwrap();
            let mut want = alone(&model, &prompt, &params);
            want.cached_prompt_tokens = expected_reuse;
            assert_eq!(got, want, "turn {turn}");
            // The session ran the prompt and the answer but its last token.
            let ran = prompt.len() + got.token_ids.len() - 1;
            assert_eq!(session.tokens().len(), ran);
            assert_eq!(&session.tokens()[..prompt.len()], &prompt[..]);
            prompt.extend(&got.token_ids);
            prompt.extend([20 + turn as u32, 21, 22]);
            expected_reuse = ran;
        }
    }

    /// A prompt that goes back (it shares only the start of what was run), one equal to what
    /// was run, a sampled turn, and `reset`: each answers as alone.
    #[test]
    fn a_shorter_or_diverging_prompt_reuses_what_it_shares() {
        let model = tiny_model(false, 4, 2);
        let tok = tiny_tokenizer();
        let mut session = Session::new();
        let first: Vec<u32> = vec![1, 5, 9, 33, 12, 40, 7, 8, 9, 10];
        let params = no_eos(5);
        let run = |session: &mut Session, prompt: &[u32], params: &GenerationParams| {
            session
                .generate(&model, &tok, prompt, params, |_| StreamControl::Continue)
                .unwrap()
        };
        run(&mut session, &first, &params);
        let diverging = [&first[..4], &[50, 51, 52]].concat();
        let got = run(&mut session, &diverging, &params);
        assert_eq!(got.cached_prompt_tokens, 4);
        assert_eq!(got.token_ids, alone(&model, &diverging, &params).token_ids);
        // The same prompt again: all but its last token.
        let got = run(&mut session, &diverging, &params);
        assert_eq!(got.cached_prompt_tokens, diverging.len() - 1);
        assert_eq!(got.token_ids, alone(&model, &diverging, &params).token_ids);
        let sampled = GenerationParams {
            temperature: 1.3,
            seed: 9,
            ..no_eos(8)
        };
        let got = run(&mut session, &first, &sampled);
        assert_eq!(got.cached_prompt_tokens, 4);
        assert_eq!(got.token_ids, alone(&model, &first, &sampled).token_ids);
        session.reset();
        assert!(session.tokens().is_empty());
        let got = run(&mut session, &first, &params);
        assert_eq!(got.cached_prompt_tokens, 0);
        // Nothing to generate: nothing runs, and the session keeps what it had.
        let held = session.tokens().to_vec();
        let got = run(&mut session, &first, &no_eos(0));
        assert!(got.token_ids.is_empty());
        assert_eq!(session.tokens(), &held[..]);
    }
}
