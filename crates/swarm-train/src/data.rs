//! Token sequences with per-token loss weights, and seeded batches of them.
//!
//! A chat is encoded exactly as generation will see it: the rendered prompt (ending with
//! `<|im_start|>assistant\n`) is tokenised on its own, then the answer, then `<|im_end|>`;
//! only the answer and `<|im_end|>` carry a loss. Plain text is framed by `<|endoftext|>` and
//! trained on every token.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use swarm_model::{ChatTemplate, Tokenizer};

use crate::corpus::Document;
use crate::error::{Result, TrainError};
use crate::tokenizer::{IM_END, PAD_TOKEN};

/// A tokenised document: `weights[i]` is the loss weight of predicting `tokens[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of tokens with a loss.
    pub fn trained_tokens(&self) -> usize {
        self.weights.iter().filter(|w| **w > 0.0).count()
    }
}

fn special_id(tokenizer: &Tokenizer, token: &str) -> Result<u32> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| TrainError::Tokenizer(format!("the tokenizer has no {token}")))
}

/// Encodes a document.
pub fn encode(doc: &Document, tokenizer: &Tokenizer, template: &ChatTemplate) -> Result<Sequence> {
    match doc {
        Document::Text(text) => {
            let pad = special_id(tokenizer, PAD_TOKEN)?;
            let mut tokens = vec![pad];
            tokens.extend(tokenizer.encode(text, false)?);
            tokens.push(pad);
            let mut weights = vec![1.0; tokens.len()];
            weights[0] = 0.0;
            Ok(Sequence { tokens, weights })
        }
        Document::Chat(chat) => {
            let prompt = template.render(&chat.prompt, true)?;
            let mut tokens = tokenizer.encode(&prompt, false)?;
            let mut weights = vec![0.0; tokens.len()];
            let answer = tokenizer.encode(&chat.answer, false)?;
            weights.extend(std::iter::repeat_n(1.0, answer.len() + 1));
            tokens.extend(answer);
            tokens.push(special_id(tokenizer, IM_END)?);
            Ok(Sequence { tokens, weights })
        }
    }
}

/// Encodes every document, dropping those longer than `max_len` tokens; returns the kept
/// sequences and how many were dropped.
pub fn encode_all(
    docs: &[Document],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
) -> Result<(Vec<Sequence>, usize)> {
    // Documents encode independently: spread them over rayon's threads, keeping their order.
    let encoded: Vec<Sequence> = docs
        .par_iter()
        .map(|d| encode(d, tokenizer, template))
        .collect::<Result<_>>()?;
    let total = encoded.len();
    let kept: Vec<Sequence> = encoded
        .into_iter()
        .filter(|s| s.len() <= max_len && s.trained_tokens() > 0)
        .collect();
    let dropped = total - kept.len();
    Ok((kept, dropped))
}

/// One batch: inputs, targets and weights, each (b, t), right-padded.
#[derive(Debug, Clone)]
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
    /// Real (unpadded) input tokens.
    pub tokens: usize,
}

/// Endless seeded batches over `data`: each epoch is shuffled, cut into windows of 16
/// batches, each window sorted by length (less padding), and the batches shuffled again.
#[derive(Debug)]
pub struct Batcher<'a> {
    data: &'a [Sequence],
    batch_size: usize,
    rng: ChaCha8Rng,
    queue: Vec<Vec<usize>>,
    device: Device,
}

impl<'a> Batcher<'a> {
    pub fn new(
        data: &'a [Sequence],
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if data.is_empty() {
            return Err(TrainError::NoData("no sequences to batch".into()));
        }
        if batch_size == 0 {
            return Err(TrainError::config("batch_size", "must be at least 1"));
        }
        Ok(Self {
            data,
            batch_size,
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: Vec::new(),
            device: device.clone(),
        })
    }

    fn refill(&mut self) {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        order.shuffle(&mut self.rng);
        let window = self.batch_size * 16;
        let mut batches = Vec::new();
        for chunk in order.chunks(window) {
            let mut chunk = chunk.to_vec();
            chunk.sort_by_key(|&i| self.data[i].len());
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut self.rng);
        // Popped from the end.
        batches.reverse();
        self.queue = batches;
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        if self.queue.is_empty() {
            self.refill();
        }
        let rows = self
            .queue
            .pop()
            .ok_or_else(|| TrainError::NoData("empty epoch".into()))?;
        let t = rows
            .iter()
            .map(|&i| self.data[i].len() - 1)
            .max()
            .unwrap_or(1)
            .max(1);
        let b = rows.len();
        let mut inputs = vec![0u32; b * t];
        let mut targets = vec![0u32; b * t];
        let mut weights = vec![0f32; b * t];
        let mut tokens = 0;
        for (r, &i) in rows.iter().enumerate() {
            let s = &self.data[i];
            let n = s.len() - 1;
            tokens += n;
            inputs[r * t..r * t + n].copy_from_slice(&s.tokens[..n]);
            targets[r * t..r * t + n].copy_from_slice(&s.tokens[1..]);
            weights[r * t..r * t + n].copy_from_slice(&s.weights[1..]);
        }
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (b, t), &self.device)?,
            targets: Tensor::from_vec(targets, (b, t), &self.device)?,
            weights: Tensor::from_vec(weights, (b, t), &self.device)?,
            tokens,
        })
    }
}
