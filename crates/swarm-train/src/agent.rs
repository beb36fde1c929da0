//! A model-backed [`Agent`]: renders each conversation with the chat template, generates
//! greedily in one batch with swarm-model, and stops at the end of the assistant's turn.

use std::sync::Mutex;

use swarm_model::{generate, ChatTemplate, GenerationParams, Llama, StreamControl, Tokenizer};
use swarm_tasks::{Agent, Conversation, TaskError};

use crate::corpus::to_model_message;

/// Answers episodes with a [`Llama`] (greedy decoding).
#[derive(Debug)]
pub struct ModelAgent {
    model: Llama,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    params: GenerationParams,
    /// Generated tokens so far (for throughput reports).
    generated: Mutex<usize>,
}

impl ModelAgent {
    /// Greedy decoding of at most `max_new_tokens`, stopping at the template's end of turn.
    pub fn new(
        model: Llama,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        max_new_tokens: usize,
    ) -> Self {
        let mut params = GenerationParams::greedy(max_new_tokens);
        params.stop_token_ids = template.stop_token_ids(&tokenizer);
        Self {
            model,
            tokenizer,
            template,
            params,
            generated: Mutex::new(0),
        }
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.generated.lock().map(|g| *g).unwrap_or(0)
    }

    fn prompt_ids(&self, c: &Conversation<'_>) -> Result<Vec<u32>, TaskError> {
        let messages: Vec<_> = c.messages.iter().map(to_model_message).collect();
        let text = self
            .template
            .render(&messages, true)
            .map_err(|e| TaskError::Agent(e.to_string()))?;
        self.tokenizer
            .encode(&text, false)
            .map_err(|e| TaskError::Agent(e.to_string()))
    }
}

impl Agent for ModelAgent {
    fn respond(&self, conversation: &Conversation<'_>) -> Result<String, TaskError> {
        self.respond_batch(std::slice::from_ref(conversation))
            .pop()
            .unwrap_or_else(|| Err(TaskError::Agent("no reply".into())))
    }

    fn respond_batch(&self, conversations: &[Conversation<'_>]) -> Vec<Result<String, TaskError>> {
        let max_prompt = self
            .model
            .config()
            .max_position_embeddings
            .saturating_sub(1);
        let mut out: Vec<Result<String, TaskError>> = Vec::with_capacity(conversations.len());
        let mut prompts = Vec::new();
        let mut slots = Vec::new();
        for (i, c) in conversations.iter().enumerate() {
            match self.prompt_ids(c) {
                Ok(ids) if ids.len() < max_prompt => {
                    prompts.push(ids);
                    slots.push(i);
                    out.push(Ok(String::new()));
                }
                Ok(ids) => out.push(Err(TaskError::Agent(format!(
                    "prompt of {} tokens does not fit the model's {} positions",
                    ids.len(),
                    max_prompt + 1
                )))),
                Err(e) => out.push(Err(e)),
            }
        }
        if prompts.is_empty() {
            return out;
        }
        match generate(
            &self.model,
            &self.tokenizer,
            &prompts,
            std::slice::from_ref(&self.params),
            |_| StreamControl::Continue,
        ) {
            Ok(generated) => {
                let mut count = 0;
                for (slot, g) in slots.into_iter().zip(generated) {
                    count += g.token_ids.len();
                    out[slot] = Ok(g.text);
                }
                if let Ok(mut n) = self.generated.lock() {
                    *n += count;
                }
            }
            Err(e) => {
                for slot in slots {
                    out[slot] = Err(TaskError::Agent(format!("generation failed: {e}")));
                }
            }
        }
        out
    }
}
