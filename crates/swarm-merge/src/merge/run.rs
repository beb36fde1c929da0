//! Runs a [`MergePlan`]: opens the inputs, checks that they fit together before writing
//! anything, then streams one tensor at a time from every input through the method into an
//! HF dir that appears only when complete.
//!
//! Within a tensor the merge works in chunks of `CHUNK` entries: each input's chunk is
//! viewed in the mapped safetensors file (f32; other dtypes are read into an f32 buffer)
//! and combined, several chunks at once on the rayon threads (each output entry computed as
//! a sequential pass would), and the output block goes to the writer's thread, which writes
//! it while the next is mixed. Linear, task arithmetic and SLERP hold only chunks (and a few
//! MiB of each input mapped); DARE one bit per entry per model; TIES the entries near each
//! threshold (or, with `rescale`, one tensor's magnitudes). So a merge stays below one model
//! plus one tensor, whatever the number of inputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use swarm_model::{write_model_metadata, LlamaConfig, Pretrained, TensorSource, Tokenizer};

use crate::error::{MergeError, Result};
use crate::factor::check_same_tensors;
use crate::merge::linear::{accumulate, finish, linear_scale};
use crate::merge::plan::{MergePlan, PlanKind};
use crate::merge::simd;
use crate::merge::slerp::{combine, SlerpSums};
use crate::merge::sparsify::PlanScratch;
use crate::merge::stream::{TensorInput, CHUNK};
use crate::merge::task_arithmetic::{GtaMixer, GtaParams, MixWork};
use crate::reader::SafetensorsReader;
use crate::writer::{parse_dtype, torch_dtype_name, HfDirWriter, TensorSpec};

/// An input model opened for streaming.
pub struct InputModel {
    pub reference: String,
    pub config: LlamaConfig,
    pub weights: Box<dyn TensorSource>,
    /// The HF dir it came from, whose tokenizer files an output can copy.
    pub dir: Option<PathBuf>,
    /// Tokenizer and chat template of a model that is not an HF dir (GGUF, hub id), written
    /// next to an output that takes its metadata from this model.
    pub tokenizer: Option<(Tokenizer, Option<String>)>,
    /// The same safetensors files as `weights` when the model is an HF dir, read in chunks
    /// by the merge (a `dyn TensorSource` only loads whole tensors).
    files: Option<SafetensorsReader>,
}

impl InputModel {
    /// Opens an HF dir (`config.json` and safetensors weights, read tensor by tensor), or
    /// anything else `swarm_model::Pretrained::open` takes (a GGUF file, a hub id).
    pub fn open(reference: &str) -> Result<InputModel> {
        let dir = PathBuf::from(reference);
        if dir.is_dir() && dir.join("config.json").is_file() {
            let config = LlamaConfig::from_file(&dir.join("config.json"))?;
            let weights = Box::new(SafetensorsReader::open_dir(&dir)?);
            // A second handle on the same files, mapped for the merge's chunked reads: only
            // headers are parsed twice.
            let files = Some(SafetensorsReader::open_dir(&dir)?.map_files());
            return Ok(InputModel {
                reference: reference.to_string(),
                config,
                weights,
                dir: Some(dir),
                tokenizer: None,
                files,
            });
        }
        let p = Pretrained::open(reference)?;
        Ok(InputModel {
            reference: reference.to_string(),
            config: p.config,
            weights: p.weights,
            dir: None,
            tokenizer: Some((p.tokenizer, p.chat_template)),
            files: None,
        })
    }

    /// An in-memory model (tests, benchmarks).
    pub fn from_source(
        reference: &str,
        config: LlamaConfig,
        weights: Box<dyn TensorSource>,
    ) -> InputModel {
        InputModel {
            reference: reference.to_string(),
            config,
            weights,
            dir: None,
            tokenizer: None,
            files: None,
        }
    }

    fn tensor<'a>(&'a self, name: &'a str, round_to: Option<DType>) -> Result<TensorInput<'a>> {
        TensorInput::open(self.files.as_ref(), self.weights.as_ref(), name, round_to)
    }
}

/// Options of [`run`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replace an existing output dir (only once the new one is complete).
    pub overwrite: bool,
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub out_dir: PathBuf,
    pub tensors: usize,
    pub bytes_written: usize,
    pub seconds: f64,
}

/// Progress of a merge: tensors done, total, the tensor just written.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// The architecture fields that must agree between merged models.
fn check_configs(reference: &InputModel, other: &InputModel) -> Result<()> {
    let (a, b) = (&reference.config, &other.config);
    let fields: [(&str, usize, usize); 7] = [
        ("vocab_size", a.vocab_size, b.vocab_size),
        ("hidden_size", a.hidden_size, b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size,
            b.intermediate_size,
        ),
        (
            "num_hidden_layers",
            a.num_hidden_layers,
            b.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            a.num_attention_heads,
            b.num_attention_heads,
        ),
        (
            "num_key_value_heads",
            a.num_key_value_heads,
            b.num_key_value_heads,
        ),
        ("head_dim", a.head_dim, b.head_dim),
    ];
    for (field, x, y) in fields {
        if x != y {
            return Err(MergeError::Architecture(format!(
                "{field} is {y} in {} but {x} in {}",
                other.reference, reference.reference
            )));
        }
    }
    if a.tie_word_embeddings != b.tie_word_embeddings {
        return Err(MergeError::Architecture(format!(
            "tie_word_embeddings is {} in {} but {} in {}",
            b.tie_word_embeddings, other.reference, a.tie_word_embeddings, reference.reference
        )));
    }
    Ok(())
}

/// A seed per (plan seed, tensor, model), so DARE's drops do not depend on tensor order.
fn tensor_rng(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    ChaCha8Rng::from_seed(d)
}

/// Files copied from the base's HF dir next to the merged weights.
const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "chat_template.jinja",
];

fn write_metadata(staging: &Path, reference: &InputModel, out_dtype: DType) -> Result<()> {
    if let (None, Some((tokenizer, template))) = (&reference.dir, &reference.tokenizer) {
        let mut config = reference.config.clone();
        config.torch_dtype = torch_dtype_name(out_dtype).to_string();
        write_model_metadata(staging, &config, tokenizer, template.as_deref())?;
        return Ok(());
    }
    let mut config = reference.config.to_hf_json();
    if let Some(dir) = &reference.dir {
        // Keep every field of the original config.json, only the dtype changes.
        let path = dir.join("config.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                config = v;
            }
        }
        for name in COPIED_FILES {
            let src = dir.join(name);
            if src.is_file() {
                let dst = staging.join(name);
                std::fs::copy(&src, &dst).map_err(|e| MergeError::io(&src, e))?;
            }
        }
    }
    config["torch_dtype"] = torch_dtype_name(out_dtype).into();
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| MergeError::file(staging, e.to_string()))?;
    let path = staging.join("config.json");
    std::fs::write(&path, text).map_err(|e| MergeError::io(&path, e))
}

/// Output chunks mixed in parallel per block handed to the writer.
const PIECES: usize = 4;

/// One parallel piece's buffers in the mixing pass of linear, task arithmetic, TIES and DARE.
#[derive(Default)]
struct Piece {
    /// One chunk of each task vector (linear: the first holds one input's chunk).
    deltas: Vec<Vec<f32>>,
    /// Linear: the f64 sums of one chunk.
    acc: Vec<f64>,
    work: MixWork,
    /// What views of the inputs fall back on (see `TensorInput::view`): the base's chunk,
    /// another input's, their raw bytes.
    base: Vec<f32>,
    input: Vec<f32>,
    bytes: Vec<u8>,
}

/// Buffers reused from tensor to tensor (fresh buffers are fresh pages to fault in).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    y: Vec<f32>,
    /// Planning buffers (TIES: one tensor's magnitudes).
    plan: PlanScratch,
    /// Raw bytes of the sequential reads (SLERP).
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Writes tensor `name` in blocks of [`PIECES`] chunks, the chunks of a block filled at once
/// on the rayon threads: `fill(start, out, piece)` fills entries `start..start + out.len()`
/// with `piece`'s buffers (`deltas` holds `inputs` chunk buffers of [`CHUNK`] entries).
fn write_in_pieces(
    writer: &mut HfDirWriter,
    name: &str,
    inputs: usize,
    pieces: &mut Vec<Piece>,
    fill: impl Fn(usize, &mut [f32], &mut Piece) -> Result<()> + Sync,
) -> Result<()> {
    pieces.resize_with(PIECES, Piece::default);
    for p in pieces.iter_mut() {
        p.deltas.resize_with(inputs, Vec::new);
        for d in p.deltas.iter_mut() {
            d.resize(CHUNK, 0.0);
        }
    }
    writer.write_f32_chunks(name, PIECES * CHUNK, |block_start, block| {
        block
            .par_chunks_mut(CHUNK)
            .zip(pieces.par_iter_mut())
            .enumerate()
            .try_for_each(|(c, (out, p))| fill(block_start + c * CHUNK, out, p))
    })
}

/// Linear on one tensor: the weighted sum of a chunk of every input, in f64, several chunks at
/// once (one per rayon thread), each output entry computed exactly as a sequential pass would.
fn merge_linear(
    plan: &MergePlan,
    normalize: bool,
    name: &str,
    inputs: &[TensorInput],
    writer: &mut HfDirWriter,
    scratch: &mut Scratch,
) -> Result<()> {
    let weights: Vec<f64> = plan.models.iter().map(|m| m.weight).collect();
    let scale = linear_scale(name, &weights, normalize)?;
    write_in_pieces(writer, name, 1, &mut scratch.pieces, |start, out, p| {
        let len = out.len();
        let Piece {
            acc,
            input: buf,
            bytes,
            ..
        } = p;
        acc.clear();
        acc.resize(len, 0.0);
        for (input, w) in inputs.iter().zip(&weights) {
            let x = input.view(start, len, buf, bytes)?;
            accumulate(acc, x, *w);
        }
        finish(out, acc, scale);
        Ok(())
    })
}

/// Task arithmetic, TIES and DARE on one tensor: the plan of each sparsified task vector (its
/// threshold or mask), then one pass that mixes a chunk of every task vector into the base's
/// and writes it. Every pass works on several chunks at once, one per rayon thread; each
/// output entry is computed exactly as a sequential pass would.
///
/// Planning reads the base and the model again for each task vector it needs (TIES, in one
/// pass for all of them; DARE with `rescale`), so 3E + 1 tensor reads for E models, all but
/// the first of each from the page cache (through the map, without a copy). Keeping the task vectors between the plans and the mix (1 + E + 1 reads) was tried
/// and measured no faster, at E tensors of memory more (see docs/performance.md).
#[allow(clippy::too_many_arguments)]
fn merge_task_vectors(
    plan: &MergePlan,
    params: &GtaParams,
    name: &str,
    n: usize,
    base: &TensorInput,
    inputs: &[TensorInput],
    writer: &mut HfDirWriter,
    scratch: &mut Scratch,
) -> Result<()> {
    let experts: Vec<(f64, f64)> = plan.models.iter().map(|m| (m.weight, m.density)).collect();
    let mut rng = tensor_rng(plan.seed, name);
    let Scratch { plan, pieces, .. } = scratch;
    let mixer = GtaMixer::plan(
        name,
        n,
        params,
        &experts,
        &mut rng,
        plan,
        |i, start, chunk, s| {
            let len = chunk.len();
            let b = base.view(start, len, &mut s.a, &mut s.bytes)?;
            let x = inputs[i].view(start, len, &mut s.b, &mut s.bytes)?;
            subtract(chunk, x, b);
            Ok(())
        },
    )?;
    write_in_pieces(writer, name, inputs.len(), pieces, |start, out, p| {
        let len = out.len();
        let Piece {
            deltas,
            work,
            base: base_buf,
            input: buf,
            bytes,
            ..
        } = p;
        let b = base.view(start, len, base_buf, bytes)?;
        for (input, d) in inputs.iter().zip(deltas.iter_mut()) {
            let x = input.view(start, len, buf, bytes)?;
            subtract(&mut d[..len], x, b);
        }
        mixer.mix_chunk(start, b, out, deltas, work);
        Ok(())
    })
}

/// `d = x - b`, entry by entry (a task vector's chunk), through [`simd::fast`]: compiled for
/// the baseline alone it ran four lanes at a time (SSE2).
fn subtract(d: &mut [f32], x: &[f32], b: &[f32]) {
    simd::fast(Subtract { d, x, b });
}

/// [`subtract`]'s arguments.
struct Subtract<'a> {
    d: &'a mut [f32],
    x: &'a [f32],
    b: &'a [f32],
}

impl simd::Kernel for Subtract<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for ((d, x), b) in self.d.iter_mut().zip(self.x).zip(self.b) {
            *d = x - b;
        }
    }
}

/// Runs `plan` on models opened by `open` (pass [`InputModel::open`] for HF dirs), writing an
/// HF dir at `out_dir`.
pub fn run_with(
    plan: &MergePlan,
    out_dir: &Path,
    options: &RunOptions,
    open: &dyn Fn(&str) -> Result<InputModel>,
    progress: Progress<'_>,
) -> Result<MergeReport> {
    let started = Instant::now();
    let base = plan.base_model.as_deref().map(open).transpose()?;
    let models: Vec<InputModel> = plan
        .models
        .iter()
        .map(|m| open(&m.reference))
        .collect::<Result<_>>()?;
    let reference = base
        .as_ref()
        .or(models.first())
        .ok_or_else(|| MergeError::Config("nothing to merge".to_string()))?;
    for m in &models {
        if std::ptr::eq(m, reference) {
            continue;
        }
        check_same_tensors(reference.weights.as_ref(), m.weights.as_ref(), &m.reference)?;
        check_configs(reference, m)?;
    }
    let out_dtype = plan
        .out_dtype
        .or(plan.dtype)
        .or_else(|| parse_dtype(&reference.config.torch_dtype))
        .unwrap_or(DType::F32);
    let names = reference.weights.names();
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|n| Ok(TensorSpec::new(n, reference.weights.shape(n)?, out_dtype)))
        .collect::<Result<_>>()?;
    let total = specs.len();
    let mut bytes_written = 0usize;
    let mut writer = HfDirWriter::create(out_dir, specs.clone(), options.overwrite)?;
    let mut scratch = Scratch::default();
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.name.as_str();
        let n: usize = spec.shape.iter().product();
        let inputs: Vec<TensorInput> = models
            .iter()
            .map(|m| m.tensor(name, plan.dtype))
            .collect::<Result<_>>()?;
        match &plan.kind {
            PlanKind::Linear { normalize } => {
                merge_linear(plan, *normalize, name, &inputs, &mut writer, &mut scratch)?;
            }
            PlanKind::TaskArithmetic(params) => {
                let base_m = base.as_ref().ok_or_else(|| {
                    MergeError::Config("task arithmetic needs a base model".to_string())
                })?;
                let base_t = base_m.tensor(name, plan.dtype)?;
                merge_task_vectors(
                    plan,
                    params,
                    name,
                    n,
                    &base_t,
                    &inputs,
                    &mut writer,
                    &mut scratch,
                )?;
            }
            PlanKind::Slerp { t } => {
                let base_m = base
                    .as_ref()
                    .ok_or_else(|| MergeError::Config("slerp needs a base model".to_string()))?;
                let base_t = base_m.tensor(name, plan.dtype)?;
                let other = inputs
                    .first()
                    .ok_or_else(|| MergeError::Config("slerp needs a second model".to_string()))?;
                // Two passes: the norms and the angle, then the output.
                let (v0, v1, bytes) = (&mut scratch.x, &mut scratch.y, &mut scratch.bytes);
                v0.resize(CHUNK.min(n), 0.0);
                v1.resize(CHUNK.min(n), 0.0);
                let mut sums = SlerpSums::default();
                let mut start = 0;
                while start < n {
                    let len = CHUNK.min(n - start);
                    base_t.read_shared(start, &mut v0[..len], bytes)?;
                    other.read_shared(start, &mut v1[..len], bytes)?;
                    sums.add(&v0[..len], &v1[..len]);
                    start += len;
                }
                let c = sums.coefficients(*t);
                writer.write_f32_chunks(name, CHUNK, |start, out| {
                    let len = out.len();
                    base_t.read_shared(start, &mut v0[..len], bytes)?;
                    other.read_shared(start, &mut v1[..len], bytes)?;
                    combine(out, &v0[..len], &v1[..len], c);
                    Ok(())
                })?;
            }
        }
        bytes_written += n * out_dtype.size_in_bytes();
        progress(i + 1, total, name);
    }
    write_metadata(writer.staging_dir(), reference, out_dtype)?;
    writer.finish()?;
    Ok(MergeReport {
        out_dir: out_dir.to_path_buf(),
        tensors: total,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs `plan` on HF dirs, writing an HF dir at `out_dir`.
pub fn run(
    plan: &MergePlan,
    out_dir: &Path,
    options: &RunOptions,
    progress: Progress<'_>,
) -> Result<MergeReport> {
    run_with(plan, out_dir, options, &InputModel::open, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{perturbed, random_model, rel_diff, save_hf_dir, tiny_config};
    use candle_core::Device;
    use swarm_model::Weights;

    struct Fixture {
        dir: tempfile::TempDir,
        base: Weights,
        a: Weights,
        b: Weights,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_config();
        let base = random_model(&cfg, 1);
        let a = perturbed(&base, 2, 0.1);
        let b = perturbed(&base, 3, 0.1);
        for (name, w) in [("base", &base), ("a", &a), ("b", &b)] {
            save_hf_dir(&dir.path().join(name), &cfg, w).unwrap();
        }
        std::fs::write(dir.path().join("base/tokenizer.json"), "{}").unwrap();
        Fixture { dir, base, a, b }
    }

    fn yaml(f: &Fixture, body: &str) -> String {
        body.replace("$D", &f.dir.path().display().to_string())
    }

    fn merge(f: &Fixture, body: &str, out: &str) -> Result<SafetensorsReader> {
        let plan = MergePlan::from_yaml(&yaml(f, body))?;
        let out = f.dir.path().join(out);
        run(&plan, &out, &RunOptions::default(), &mut |_, _, _| {})?;
        SafetensorsReader::open_dir(&out)
    }

    #[test]
    fn linear_and_task_arithmetic_match_hand_computation() {
        let f = fixture();
        let out = merge(
            &f,
            "merge_method: linear\nmodels:\n  - model: $D/a\n    parameters: {weight: 1}\n  - model: $D/b\n    parameters: {weight: 3}\n",
            "lin",
        )
        .unwrap();
        let out_ta = merge(
            &f,
            "merge_method: task_arithmetic\nbase_model: $D/base\nmodels:\n  - model: $D/a\n    parameters: {weight: 0.5}\n  - model: $D/b\n    parameters: {weight: 0.25}\nparameters: {lambda: 2}\n",
            "ta",
        )
        .unwrap();
        for (name, base) in f.base.iter() {
            let (a, b) = (f.a.get(name).unwrap(), f.b.get(name).unwrap());
            let want = ((a + (b * 3.0).unwrap()).unwrap() / 4.0).unwrap();
            let got = out.load(name, &Device::Cpu).unwrap();
            assert!(rel_diff(&got, &want) < 1e-6, "{name}");
            let ta = (((a - base).unwrap() * 0.5).unwrap() + ((b - base).unwrap() * 0.25).unwrap())
                .unwrap();
            let want = (base + (ta * 2.0).unwrap()).unwrap();
            let got = out_ta.load(name, &Device::Cpu).unwrap();
            assert!(rel_diff(&got, &want) < 1e-6, "{name}");
        }
        let out_dir = f.dir.path().join("lin");
        assert!(out_dir.join("config.json").exists());
        // The base of linear is the first model: tokenizer copied from the base dir only when
        // one is named.
        let ta_dir = f.dir.path().join("ta");
        assert!(ta_dir.join("tokenizer.json").exists());
        LlamaConfig::from_file(&ta_dir.join("config.json")).unwrap();
    }

    #[test]
    fn slerp_endpoints_and_dare_statistics() {
        let f = fixture();
        let s0 = merge(
            &f,
            "merge_method: slerp\nbase_model: $D/base\nmodels:\n  - model: $D/base\n  - model: $D/a\nparameters: {t: 0}\n",
            "s0",
        )
        .unwrap();
        let name = "model.layers.0.mlp.up_proj.weight";
        let got = s0.load(name, &Device::Cpu).unwrap();
        assert!(rel_diff(&got, f.base.get(name).unwrap()) < 1e-6);

        let dare = merge(
            &f,
            "merge_method: dare_linear\nbase_model: $D/base\nmodels:\n  - model: $D/a\n    parameters: {weight: 1, density: 0.3}\n",
            "dare",
        )
        .unwrap();
        let (mut kept, mut total) = (0usize, 0usize);
        for (name, base) in f.base.iter() {
            let got = dare.load(name, &Device::Cpu).unwrap();
            let d = (got - base)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let tau = (f.a.get(name).unwrap() - base)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            kept += d.iter().filter(|v| v.abs() > 1e-9).count();
            total += d.len();
            let l1 = |x: &[f32]| x.iter().map(|v| v.abs() as f64).sum::<f64>();
            // rescale keeps each tensor's L1 norm of the task vector
            assert!((l1(&d) / l1(&tau) - 1.0).abs() < 1e-3, "{name}");
        }
        let frac = kept as f64 / total as f64;
        assert!((frac - 0.3).abs() < 0.01, "kept {frac}");
    }

    /// Mapped inputs (HF dirs, views of the files) merge to the same bits as in-memory ones,
    /// on tensors big enough for the mapped views (4096 entries), TIES's one-pass trimming
    /// (4 chunks) and the release of windows behind a pass (two 4 MiB windows): a 70000-row
    /// embedding and LM head.
    #[test]
    fn mapped_and_in_memory_inputs_merge_to_the_same_bits() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny_config();
        cfg.vocab_size = 70_000;
        let base = random_model(&cfg, 1);
        let models = [
            ("base", base.clone()),
            ("a", perturbed(&base, 2, 0.1)),
            ("b", perturbed(&base, 3, 0.1)),
        ];
        for (name, w) in &models {
            save_hf_dir(&dir.path().join(name), &cfg, w).unwrap();
        }
        let d = dir.path().display().to_string();
        let in_memory = |reference: &str| {
            let (_, w) = models
                .iter()
                .find(|(name, _)| reference.ends_with(&format!("/{name}")))
                .unwrap();
            Ok(InputModel::from_source(
                reference,
                cfg.clone(),
                Box::new(w.clone()),
            ))
        };
        for method in ["ties", "dare_ties"] {
            let yaml = format!(
                "merge_method: {method}\nbase_model: {d}/base\nmodels:\n  - model: {d}/a\n    parameters: {{weight: 0.5, density: 0.5}}\n  - model: {d}/b\n    parameters: {{weight: 0.5, density: 0.3}}\ndtype: float32\n"
            );
            let plan = MergePlan::from_yaml(&yaml).unwrap();
            let (mapped, loaded) = (dir.path().join("mapped"), dir.path().join("loaded"));
            let options = RunOptions { overwrite: true };
            run(&plan, &mapped, &options, &mut |_, _, _| {}).unwrap();
            run_with(&plan, &loaded, &options, &in_memory, &mut |_, _, _| {}).unwrap();
            let (mapped, loaded) = (
                SafetensorsReader::open_dir(&mapped).unwrap(),
                SafetensorsReader::open_dir(&loaded).unwrap(),
            );
            for name in mapped.names() {
                let (x, y) = (
                    mapped.read_f32_vec(&name).unwrap(),
                    loaded.read_f32_vec(&name).unwrap(),
                );
                let same = x.iter().zip(&y).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same && x.len() == y.len(), "{method}: {name}");
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_refused_naming_the_tensor_and_leave_nothing() {
        let f = fixture();
        // A model with a different vocabulary.
        let mut cfg = tiny_config();
        cfg.vocab_size = 72;
        save_hf_dir(&f.dir.path().join("big"), &cfg, &random_model(&cfg, 4)).unwrap();
        // A model with a tensor missing.
        let cfg = tiny_config();
        let mut missing = perturbed(&f.base, 5, 0.1);
        missing.remove("model.layers.1.mlp.down_proj.weight");
        save_hf_dir(&f.dir.path().join("missing"), &cfg, &missing).unwrap();
        for (model, needle) in [
            ("big", "`lm_head.weight`: has shape [72, 32]"),
            ("missing", "model.layers.1.mlp.down_proj.weight"),
            ("nowhere", "nowhere"),
        ] {
            let body = format!(
                "merge_method: ties\nbase_model: $D/base\nmodels:\n  - model: $D/{model}\n    parameters: {{weight: 1, density: 0.5}}\n"
            );
            let err = merge(&f, &body, "out").err().unwrap().to_string();
            assert!(err.contains(needle), "{model}: {err}");
            assert!(!f.dir.path().join("out").exists());
        }
        let names: Vec<String> = std::fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
}
