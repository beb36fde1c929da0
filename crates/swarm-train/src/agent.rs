//! A model-backed [`Agent`]: renders each conversation with the chat template, generates
//! greedily in batches with swarm-model, and stops at the end of the assistant's turn.
//!
//! One agent serves every caller that plays episodes with a model (`swarm bootstrap`'s
//! table, `swarm eval`, the evolution's evaluator), so that the same model given the same
//! episodes gets the same answers, and so the same score, wherever it is played.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use swarm_model::{generate, ChatTemplate, GenerationParams, Llama, StreamControl, Tokenizer};
use swarm_tasks::{Agent, ChatMessage, Conversation, TaskError};

use crate::corpus::to_model_message;

/// The fewest positions a prompt leaves for the answer before it is cut (fewer when
/// `max_new_tokens` asks for fewer). The toy world's answers take 20-60 tokens.
pub const MIN_ANSWER_TOKENS: usize = 64;

/// Answers conversations with a [`Llama`] (greedy decoding), `batch_size` at a time.
///
/// A prompt is kept whole while it leaves room for an answer of `MIN_ANSWER_TOKENS` (or
/// `max_new_tokens`, if fewer) in the model's positions; the answer then stops at the end of
/// the context. A longer prompt is cut from the left (the latest turns are kept): a long
/// multi-turn episode is then answered from its recent context, as chat front-ends do,
/// instead of failing outright. Reserving all of `max_new_tokens` instead would cut the task
/// itself out of every prompt of a model whose context is not much longer than that.
#[derive(Debug)]
pub struct ModelAgent<'a> {
    model: &'a Llama,
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    params: GenerationParams,
    batch_size: usize,
    usage: Mutex<Usage>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    generated_tokens: usize,
    generation_time: Duration,
    truncated_prompts: usize,
}

impl<'a> ModelAgent<'a> {
    /// Greedy decoding of at most `max_new_tokens`, stopping at the template's end of turn,
    /// at most `batch_size` conversations per forward batch (at least one).
    pub fn new(
        model: &'a Llama,
        tokenizer: &'a Tokenizer,
        template: &'a ChatTemplate,
        max_new_tokens: usize,
        batch_size: usize,
    ) -> Self {
        let mut params = GenerationParams::greedy(max_new_tokens);
        params.stop_token_ids = template.stop_token_ids(tokenizer);
        Self {
            model,
            tokenizer,
            template,
            params,
            batch_size: batch_size.max(1),
            usage: Mutex::new(Usage::default()),
        }
    }

    /// Conversations per forward batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.usage().generated_tokens
    }

    /// Time spent generating so far.
    pub fn generation_time(&self) -> Duration {
        self.usage().generation_time
    }

    /// Prompts cut from the left so far because they did not fit with the answer.
    pub fn truncated_prompts(&self) -> usize {
        self.usage().truncated_prompts
    }

    fn usage(&self) -> Usage {
        self.usage.lock().map(|u| *u).unwrap_or_default()
    }

    /// The prompt's token ids, and whether it had to be cut to fit.
    fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<(Vec<u32>, bool), TaskError> {
        let messages: Vec<_> = messages.iter().map(to_model_message).collect();
        let text = self
            .template
            .render(&messages, true)
            .map_err(|e| TaskError::Agent(e.to_string()))?;
        let mut ids = self
            .tokenizer
            .encode(&text, false)
            .map_err(|e| TaskError::Agent(e.to_string()))?;
        let positions = self.model.config().max_position_embeddings;
        let room = self.params.max_new_tokens.min(MIN_ANSWER_TOKENS);
        let keep = positions.saturating_sub(room + 1).max(1);
        let cut = ids.len() > keep;
        if cut {
            ids.drain(..ids.len() - keep);
        }
        Ok((ids, cut))
    }

    /// Answers conversations, `batch_size` at a time, in order.
    pub fn answer(&self, conversations: &[&[ChatMessage]]) -> Vec<Result<String, TaskError>> {
        let start = Instant::now();
        let mut out = Vec::with_capacity(conversations.len());
        let mut usage = Usage::default();
        for chunk in conversations.chunks(self.batch_size) {
            let mut prompts = Vec::with_capacity(chunk.len());
            let mut slots = Vec::with_capacity(chunk.len());
            for messages in chunk {
                match self.prompt_ids(messages) {
                    Ok((ids, cut)) => {
                        usage.truncated_prompts += usize::from(cut);
                        slots.push(Ok(prompts.len()));
                        prompts.push(ids);
                    }
                    Err(e) => slots.push(Err(e)),
                }
            }
            let generated = if prompts.is_empty() {
                Ok(Vec::new())
            } else {
                generate(
                    self.model,
                    self.tokenizer,
                    &prompts,
                    std::slice::from_ref(&self.params),
                    |_| StreamControl::Continue,
                )
            };
            match generated {
                Ok(g) => {
                    usage.generated_tokens += g.iter().map(|x| x.token_ids.len()).sum::<usize>();
                    for slot in slots {
                        out.push(slot.and_then(|i| {
                            g.get(i)
                                .map(|x| x.text.clone())
                                .ok_or_else(|| TaskError::Agent("missing generation".into()))
                        }));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "generation failed for a batch");
                    for slot in slots {
                        out.push(slot.and_then(|_| {
                            Err(TaskError::Agent(format!("generation failed: {e}")))
                        }));
                    }
                }
            }
        }
        usage.generation_time = start.elapsed();
        if let Ok(mut total) = self.usage.lock() {
            total.generated_tokens += usage.generated_tokens;
            total.generation_time += usage.generation_time;
            total.truncated_prompts += usage.truncated_prompts;
        }
        out
    }
}

impl Agent for ModelAgent<'_> {
    fn respond(&self, conversation: &Conversation<'_>) -> Result<String, TaskError> {
        self.answer(&[conversation.messages])
            .pop()
            .unwrap_or_else(|| Err(TaskError::Agent("no reply".into())))
    }

    fn respond_batch(&self, conversations: &[Conversation<'_>]) -> Vec<Result<String, TaskError>> {
        let messages: Vec<&[ChatMessage]> = conversations.iter().map(|c| c.messages).collect();
        self.answer(&messages)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use swarm_model::{random_weights, Precision, CHATML_TEMPLATE};

    use super::*;
    use crate::tokenizer::train_tokenizer;
    use crate::world::{Preset, WorldSpec};

    /// A random micro model with `positions` positions, its tokenizer and template.
    fn micro(positions: usize) -> (Llama, Tokenizer, ChatTemplate) {
        let corpus = [
            "def f(x):\n    return x * 3",
            "SELECT name FROM t",
            "ls -la",
        ];
        let texts: Vec<&str> = corpus.iter().cycle().take(100).copied().collect();
        let tokenizer = train_tokenizer(texts.into_iter(), 300, false).unwrap();
        let mut config = WorldSpec::preset(Preset::Micro).llama_config(&tokenizer);
        config.max_position_embeddings = positions;
        let weights = random_weights(&config, 7, &Device::Cpu).unwrap();
        let model = Llama::load(&weights, &config, &Device::Cpu, Precision::F32).unwrap();
        let template = ChatTemplate::new(CHATML_TEMPLATE, &tokenizer).unwrap();
        (model, tokenizer, template)
    }

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage::user(text)]
    }

    #[test]
    fn batches_answer_in_order_like_one_at_a_time() {
        let (model, tokenizer, template) = micro(256);
        let prompts = [
            user("return x"),
            user("SELECT name FROM t WHERE x > 3 AND y < 4"),
            user("ls"),
        ];
        let messages: Vec<&[ChatMessage]> = prompts.iter().map(Vec::as_slice).collect();
        let batched = ModelAgent::new(&model, &tokenizer, &template, 6, 2).answer(&messages);
        let single = ModelAgent::new(&model, &tokenizer, &template, 6, 1);
        for (m, b) in messages.iter().zip(&batched) {
            let alone = single.answer(&[m]).pop().unwrap().unwrap();
            assert_eq!(b.as_ref().unwrap(), &alone);
        }
        assert!(single.generated_tokens() > 0);
        assert_eq!(single.truncated_prompts(), 0);
    }

    #[test]
    fn a_prompt_longer_than_the_positions_keeps_its_latest_tokens() {
        let (model, tokenizer, template) = micro(48);
        let agent = ModelAgent::new(&model, &tokenizer, &template, 8, 4);
        let long = user(&"SELECT name FROM t; ".repeat(40));
        let answers = agent.answer(&[long.as_slice(), user("ls").as_slice()]);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(agent.truncated_prompts(), 1);
        let (ids, cut) = agent.prompt_ids(&long).unwrap();
        assert!(cut);
        assert_eq!(ids.len(), 48 - 8 - 1);
    }

    #[test]
    fn a_prompt_that_fits_is_kept_whole_when_max_new_tokens_would_not() {
        // 128 positions, 200 new tokens asked: reserving them all would leave no prompt.
        let (model, tokenizer, template) = micro(128);
        let agent = ModelAgent::new(&model, &tokenizer, &template, 200, 1);
        let prompt = user("SELECT name FROM t WHERE x > 3");
        let (whole, _) = ModelAgent::new(&model, &tokenizer, &template, 8, 1)
            .prompt_ids(&prompt)
            .unwrap();
        assert!(whole.len() < 128 - MIN_ANSWER_TOKENS - 1, "{}", whole.len());
        let (ids, cut) = agent.prompt_ids(&prompt).unwrap();
        assert!(!cut);
        assert_eq!(ids, whole);
        // The answer stops at the end of the context instead of failing.
        let answers = agent.answer(&[prompt.as_slice()]);
        assert!(answers[0].is_ok(), "{answers:?}");
        // A prompt past the reserve is cut to leave exactly MIN_ANSWER_TOKENS.
        let long = user(&"SELECT name FROM t; ".repeat(40));
        let (ids, cut) = agent.prompt_ids(&long).unwrap();
        assert!(cut);
        assert_eq!(ids.len(), 128 - MIN_ANSWER_TOKENS - 1);
    }
}
