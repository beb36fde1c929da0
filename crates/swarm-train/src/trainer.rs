//! The training loop: AdamW (candle-nn), linear warm-up then cosine decay, global-norm
//! gradient clipping, seeded batches, a progress bar.

use std::time::{Duration, Instant};

use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::data::{Batcher, Sequence};
use crate::error::{Result, TrainError};
use crate::model::TrainableLlama;

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up.
    pub warmup: usize,
    /// The cosine decays to `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Global gradient norm limit (0 turns clipping off).
    pub grad_clip: f64,
    /// Seed of the batch order.
    pub seed: u64,
}

impl TrainSettings {
    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let progress = (step - self.warmup) as f64 / span as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

/// What a training run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: usize,
    /// Mean loss of the first 10 steps.
    pub first_loss: f32,
    /// Mean loss of the last 10% of the steps (at least one).
    pub final_loss: f32,
    /// Input tokens seen (padding excluded).
    pub tokens: usize,
    pub elapsed: Duration,
}

/// Trains `model` in place on `data`, with a progress bar on stderr when `progress`.
pub fn train(
    model: &TrainableLlama,
    data: &[Sequence],
    settings: &TrainSettings,
    label: &str,
    progress: bool,
) -> Result<TrainReport> {
    let bar = if progress {
        progress_bar(settings.steps, label)
    } else {
        ProgressBar::hidden()
    };
    train_with_bar(model, data, settings, label, bar)
}

/// A training progress bar of `steps` steps named `label`, for [`train_with_bar`] (add it to
/// an `indicatif::MultiProgress` to show several trainings at once).
pub fn progress_bar(steps: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>9} [{elapsed_precise}] {bar:30} {pos}/{len} steps, {msg} (eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}

/// [`train`], reporting on `bar`.
pub fn train_with_bar(
    model: &TrainableLlama,
    data: &[Sequence],
    settings: &TrainSettings,
    label: &str,
    bar: ProgressBar,
) -> Result<TrainReport> {
    let start = Instant::now();
    let vars = model.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: settings.lr_at(0),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: settings.weight_decay,
        },
    )?;
    let mut batches = Batcher::new(data, settings.batch_size, settings.seed, model.device())?;
    let mut losses = Vec::with_capacity(settings.steps);
    let mut tokens = 0;
    for step in 0..settings.steps {
        let batch = batches.next_batch()?;
        tokens += batch.tokens;
        let loss = model.loss(&batch.inputs, &batch.targets, &batch.weights)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::Diverged { step, loss: value });
        }
        losses.push(value);
        let mut grads = loss.backward()?;
        if settings.grad_clip > 0.0 {
            let mut sq = 0f64;
            for v in &vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                }
            }
            let norm = sq.sqrt();
            if norm > settings.grad_clip {
                let scale = settings.grad_clip / norm;
                for v in &vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        grads.insert(v.as_tensor(), (g * scale)?);
                    }
                }
            }
        }
        opt.set_learning_rate(settings.lr_at(step));
        opt.step(&grads)?;
        bar.inc(1);
        if step.is_multiple_of(10) || step + 1 == settings.steps {
            let recent = &losses[losses.len().saturating_sub(10)..];
            let mean = recent.iter().sum::<f32>() / recent.len() as f32;
            bar.set_message(format!("loss {mean:.3}"));
            tracing::debug!(label, step, loss = mean, "training");
        }
    }
    bar.finish_and_clear();
    let mean = |xs: &[f32]| {
        if xs.is_empty() {
            f32::NAN
        } else {
            xs.iter().sum::<f32>() / xs.len() as f32
        }
    };
    let tail = (losses.len() / 10).max(1).min(losses.len());
    Ok(TrainReport {
        steps: settings.steps,
        first_loss: mean(&losses[..losses.len().min(10)]),
        final_loss: mean(&losses[losses.len() - tail..]),
        tokens,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_and_decays() {
        let s = TrainSettings {
            steps: 100,
            batch_size: 1,
            lr: 1e-3,
            warmup: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 0,
        };
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(100) - 1e-4).abs() < 1e-9);
        assert!(s.lr_at(50) < s.lr_at(20));
    }
}
