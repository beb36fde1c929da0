//! Materialisation: a genome to dense weights, one tensor at a time.
//!
//! `W = W_base + Σ_k (U_k · diag(c_k)) · V_kᵀ` over the experts whose coefficients are not
//! all zero; dense tensors add `Σ_k a_k · τ_k`. Only the factors, the output tensor being
//! computed and (into a dir) the few tensors queued for the writer thread exist at a time,
//! beyond what the caller keeps.
//!
//! On the CPU the base tensor is read straight into the output buffer (in parallel pieces
//! where the source allows) and the products are accumulated into it by faer's GEMM
//! (`W += A · B`, no product tensor, no separate add), in tasks of a few output rows on the
//! rayon threads: each task adds every expert's term to its rows while they sit in L2, so
//! the output is swept from memory once however many experts contribute. The arithmetic is
//! `2·m·n·Σr` FLOP per matrix: at full rank that, not I/O, bounds the time.
//! On a CUDA device the same sum is done with candle's matmul.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Storage, StorageRef, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use swarm_model::{TensorSource, Weights};

use crate::error::{MergeError, Result};
use crate::factor::{FactorSet, FactoredTensor, SvdFactors, TensorFactors};
use crate::genome::Genome;
use crate::writer::{HfDirWriter, TensorSpec};

fn check(factors: &FactorSet, base: &dyn TensorSource, genome: &Genome) -> Result<()> {
    if genome.layout().factor_set_id() != factors.id() {
        return Err(MergeError::Genome(format!(
            "this genome belongs to factor set {}, not to {} (the factors given)",
            genome.layout().factor_set_id(),
            factors.id()
        )));
    }
    for t in factors.tensors() {
        let shape = base.shape(&t.name).map_err(|_| {
            MergeError::tensor(
                &t.name,
                format!("missing from the base ({})", base.describe()),
            )
        })?;
        if shape != t.shape {
            return Err(MergeError::tensor(
                &t.name,
                format!(
                    "has shape {shape:?} in the base, {:?} in the factors",
                    t.shape
                ),
            ));
        }
    }
    Ok(())
}

/// The f32 values of a CPU tensor, borrowed from its storage when it is contiguous f32
/// (factors are), else copied out.
enum F32Values<'a> {
    Borrowed(StorageRef<'a>, usize, usize),
    Owned(Vec<f32>),
}

impl<'a> F32Values<'a> {
    fn of(t: &'a Tensor) -> Result<Self> {
        if t.dtype() == DType::F32 {
            let (storage, layout) = t.storage_and_layout();
            let on_cpu = matches!(&*storage, Storage::Cpu(_));
            if let (true, Some((from, to))) = (on_cpu, layout.contiguous_offsets()) {
                return Ok(F32Values::Borrowed(storage, from, to));
            }
        }
        Ok(F32Values::Owned(
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        ))
    }

    fn as_slice(&self) -> Result<&[f32]> {
        match self {
            F32Values::Owned(v) => Ok(v),
            F32Values::Borrowed(storage, from, to) => match &**storage {
                Storage::Cpu(cpu) => Ok(&cpu.as_slice::<f32>()?[*from..*to]),
                _ => Err(MergeError::invalid("tensor", "not on the CPU")),
            },
        }
    }
}

/// The coefficients of expert `k` for tensor `name`.
fn coefficients<'g>(genome: &'g Genome, name: &str, k: usize) -> Result<&'g [f32]> {
    genome
        .coefficients(name, k)
        .ok_or_else(|| MergeError::Genome(format!("no coefficients for `{name}`")))
}

/// The experts of a matrix that contribute: factors and coefficients, all-zero ones skipped.
fn active_experts<'f, 'g>(
    genome: &'g Genome,
    name: &str,
    experts: &'f [SvdFactors],
) -> Result<Vec<(&'f SvdFactors, &'g [f32])>> {
    let mut active = Vec::new();
    for (k, f) in experts.iter().enumerate() {
        let c = coefficients(genome, name, k)?;
        if c.len() != f.s.len() {
            return Err(MergeError::Genome(format!(
                "`{name}` expert {k}: {} coefficients for rank {}",
                c.len(),
                f.s.len()
            )));
        }
        if c.iter().any(|v| *v != 0.0) {
            active.push((f, c));
        }
    }
    Ok(active)
}

/// Output values per task of the chunked products: a task's rows of the output (128 KiB)
/// stay in L2 while each expert's product sweeps them, and a matrix splits into enough
/// tasks for rayon to even out its threads' work.
const TASK_VALUES: usize = 1 << 15;

/// One expert's term of a matrix: `U` (m x r) as stored, `diag(c) Vᵀ` (r x n) scaled here.
struct LowRankTerm<'a> {
    u: F32Values<'a>,
    scaled_vt: Vec<f32>,
    rank: usize,
}

/// `w (m x n, row-major) += Σ_k U_k diag(c_k) V_kᵀ`, in tasks of a few output rows on the
/// rayon threads, each a sequential GEMM per expert (faer) accumulating into its rows.
///
/// Why rows and not one parallel GEMM per matrix: faer's parallel GEMM splits a product
/// between the threads and waits for the slowest, and while materialising into a dir the
/// writer thread takes one of the cores now and then (two cores here); rayon hands the rows
/// of a slowed thread to the other. `diag(c)` is folded into one copy of `Vᵀ` per expert
/// (r x n: a small fraction of the matrix at low rank, at most its size at full rank),
/// which every task shares; `U` is read in place.
fn add_low_rank(
    name: &str,
    w: &mut [f32],
    (m, n): (usize, usize),
    active: &[(&SvdFactors, &[f32])],
) -> Result<()> {
    let mut terms = Vec::with_capacity(active.len());
    for (f, c) in active {
        let rank = c.len();
        let (u, vt) = (F32Values::of(&f.u)?, F32Values::of(&f.vt)?);
        let vt = vt.as_slice()?;
        if u.as_slice()?.len() != m * rank || vt.len() != rank * n {
            return Err(MergeError::tensor(
                name,
                format!(
                    "factors of shape {:?} and {:?} do not fit a {m}x{n} matrix at rank {rank}",
                    f.u.dims(),
                    f.vt.dims()
                ),
            ));
        }
        let mut scaled_vt = vt.to_vec();
        for (row, s) in scaled_vt.chunks_exact_mut(n.max(1)).zip(*c) {
            row.iter_mut().for_each(|x| *x *= s);
        }
        terms.push(LowRankTerm { u, scaled_vt, rank });
    }
    if terms.is_empty() || m * n == 0 {
        return Ok(());
    }
    let rows_per_task = (TASK_VALUES / n).max(1);
    w.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .try_for_each(|(task, rows)| -> Result<()> {
            let first = task * rows_per_task;
            let count = rows.len() / n;
            let mut dst = MatMut::from_row_major_slice_mut(rows, count, n);
            for term in &terms {
                let r = term.rank;
                let u = &term.u.as_slice()?[first * r..(first + count) * r];
                matmul(
                    dst.as_mut(),
                    Accum::Add,
                    MatRef::from_row_major_slice(u, count, r),
                    MatRef::from_row_major_slice(&term.scaled_vt, r, n),
                    1.0f32,
                    Par::Seq,
                );
            }
            Ok(())
        })
}

/// One tensor on the CPU into `w`, a flat row-major f32 buffer of its size (what it held
/// before is overwritten: the base tensor is read into it, then the experts' terms added).
fn materialise_cpu(
    base: &dyn TensorSource,
    genome: &Genome,
    t: &FactoredTensor,
    w: &mut [f32],
) -> Result<()> {
    let name = t.name.as_str();
    base.read_f32_into(name, w)?;
    match &t.factors {
        TensorFactors::Svd(experts) => {
            let (m, n) = match t.shape.as_slice() {
                [m, n] => (*m, *n),
                other => {
                    return Err(MergeError::tensor(
                        name,
                        format!("has SVD factors but shape {other:?}"),
                    ))
                }
            };
            let active = active_experts(genome, name, experts)?;
            add_low_rank(name, w, (m, n), &active)?;
        }
        TensorFactors::Dense(taus) => {
            for (k, tau) in taus.iter().enumerate() {
                let a = dense_coefficient(genome, name, k)?;
                if a == 0.0 {
                    continue;
                }
                let tau = F32Values::of(tau)?;
                let tau = tau.as_slice()?;
                if tau.len() != w.len() {
                    return Err(MergeError::tensor(
                        name,
                        format!("task vector of {} entries, base of {}", tau.len(), w.len()),
                    ));
                }
                w.par_chunks_mut(TASK_VALUES)
                    .zip(tau.par_chunks(TASK_VALUES))
                    .for_each(|(w, tau)| w.iter_mut().zip(tau).for_each(|(x, d)| *x += a * d));
            }
        }
    }
    Ok(())
}

/// Expert `k`'s scalar coefficient for the 1-D tensor `name`.
fn dense_coefficient(genome: &Genome, name: &str, k: usize) -> Result<f32> {
    coefficients(genome, name, k)?
        .first()
        .copied()
        .ok_or_else(|| MergeError::Genome(format!("no coefficient for `{name}`")))
}

/// One tensor on a non-CPU device, with candle: one fused matmul per matrix.
fn materialise_on_device(
    base: &dyn TensorSource,
    genome: &Genome,
    t: &FactoredTensor,
    device: &Device,
) -> Result<Tensor> {
    let name = t.name.as_str();
    let mut w = base.load(name, device)?.to_dtype(DType::F32)?;
    match &t.factors {
        TensorFactors::Svd(experts) => {
            let active = active_experts(genome, name, experts)?;
            if active.is_empty() {
                return Ok(w);
            }
            let mut us = Vec::with_capacity(active.len());
            let mut vts = Vec::with_capacity(active.len());
            for (f, c) in &active {
                let c = Tensor::from_slice(c, (1, c.len()), device)?;
                us.push(f.u.to_device(device)?.broadcast_mul(&c)?);
                vts.push(f.vt.to_device(device)?);
            }
            let delta = Tensor::cat(&us, 1)?.matmul(&Tensor::cat(&vts, 0)?)?;
            w = (w + delta)?;
        }
        TensorFactors::Dense(taus) => {
            for (k, tau) in taus.iter().enumerate() {
                let a = dense_coefficient(genome, name, k)?;
                if a == 0.0 {
                    continue;
                }
                w = (w + tau.to_device(device)?.affine(a as f64, 0.0)?)?;
            }
        }
    }
    Ok(w)
}

/// FLOP of materialising `genome` from `factors`: `2·m·n·r` per matrix and per expert the
/// genome uses there (the low-rank products; adding the base is not counted). What a
/// materialisation's time is compared with: at SmolLM2-135M's size and rank 64, a child of
/// three experts is ~52 GFLOP, more than its bytes take to read and write on a 2-core CPU.
pub fn materialise_flop(factors: &FactorSet, genome: &Genome) -> f64 {
    let mut flop = 0.0;
    for t in factors.tensors() {
        if let (TensorFactors::Svd(experts), [m, n]) = (&t.factors, t.shape.as_slice()) {
            for k in 0..experts.len() {
                let c = genome.coefficients(&t.name, k).unwrap_or(&[]);
                if c.iter().any(|v| *v != 0.0) {
                    flop += 2.0 * (m * n * c.len()) as f64;
                }
            }
        }
    }
    flop
}

/// Computes one tensor of the genome's model on `device`, in f32.
pub fn materialise_tensor(
    base: &dyn TensorSource,
    factors: &FactorSet,
    genome: &Genome,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    let t = factors
        .tensor(name)
        .ok_or_else(|| MergeError::tensor(name, "not in the factor set"))?;
    if device.is_cpu() {
        let mut w = vec![0f32; t.shape.iter().product()];
        materialise_cpu(base, genome, t, &mut w)?;
        return Ok(Tensor::from_vec(w, t.shape.as_slice(), device)?);
    }
    materialise_on_device(base, genome, t, device)
}

/// Materialises every tensor (in factor-set order) and hands each to `sink` as soon as it
/// is computed.
pub fn materialise(
    base: &dyn TensorSource,
    factors: &FactorSet,
    genome: &Genome,
    device: &Device,
    mut sink: impl FnMut(&str, Tensor) -> Result<()>,
) -> Result<()> {
    check(factors, base, genome)?;
    for t in factors.tensors() {
        let w = materialise_tensor(base, factors, genome, &t.name, device)?;
        sink(&t.name, w)?;
    }
    Ok(())
}

/// Materialises into memory (f32, on `device`).
pub fn materialise_to_weights(
    base: &dyn TensorSource,
    factors: &FactorSet,
    genome: &Genome,
    device: &Device,
) -> Result<Weights> {
    let mut out = Weights::new();
    materialise(base, factors, genome, device, |name, t| {
        out.insert(name, t);
        Ok(())
    })?;
    Ok(out)
}

/// Where and how [`materialise_to_dir`] writes.
#[derive(Debug, Clone)]
pub struct DirOutput {
    pub dir: PathBuf,
    /// dtype of `model.safetensors`.
    pub dtype: DType,
    /// Replace an existing dir (once the new one is complete).
    pub overwrite: bool,
}

impl DirOutput {
    /// f32 output into `dir`, which must not exist yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            dtype: DType::F32,
            overwrite: false,
        }
    }
}

/// Materialises straight into an HF dir (`model.safetensors`), streaming. The dir is built
/// beside `out.dir` and renamed into place; `metadata` writes the other files (config.json,
/// tokenizer files) into the staging dir it is given.
pub fn materialise_to_dir(
    base: &dyn TensorSource,
    factors: &FactorSet,
    genome: &Genome,
    device: &Device,
    out: &DirOutput,
    metadata: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    check(factors, base, genome)?;
    let specs = factors
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(&t.name, t.shape.clone(), out.dtype))
        .collect();
    let mut writer = HfDirWriter::create(&out.dir, specs, out.overwrite)?;
    for t in factors.tensors() {
        if device.is_cpu() {
            // The whole tensor is one chunk: the base is read into a buffer the writer
            // thread hands back once written, the GEMM adds into it, and the writer thread
            // writes it while the next tensor is computed (no copy on this thread).
            let len = t.shape.iter().product();
            writer.write_f32_chunks(&t.name, len, |_, w| materialise_cpu(base, genome, t, w))?;
        } else {
            let w = materialise_on_device(base, genome, t, device)?;
            writer.write_tensor(&t.name, &w)?;
        }
    }
    metadata(writer.staging_dir())?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::{FactoriseOptions, Rank};
    use crate::genome::CrossoverParams;
    use crate::testing::{perturbed, random_model, rel_diff, tiny_config};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use swarm_model::LlamaConfig;

    fn setup(rank: Rank) -> (Weights, Weights, Weights, FactorSet) {
        let cfg = tiny_config();
        let base = random_model(&cfg, 1);
        let e1 = perturbed(&base, 2, 0.1);
        let e2 = perturbed(&base, 3, 0.1);
        let opts = FactoriseOptions {
            rank,
            ..FactoriseOptions::default()
        };
        let f = FactorSet::factorise(&base, &[("a", &e1 as &dyn TensorSource), ("b", &e2)], &opts)
            .unwrap();
        (base, e1, e2, f)
    }

    /// Relative error of `got` against `want` over the whole model (Frobenius, f64).
    fn model_rel_err(got: &Weights, want: &Weights) -> f64 {
        got.iter()
            .map(|(n, t)| rel_diff(t, want.get(n).unwrap()))
            .fold(0.0, f64::max)
    }

    #[test]
    fn full_rank_expert_genome_materialises_to_the_expert() {
        let (base, e1, e2, f) = setup(Rank::Full);
        let cpu = Device::Cpu;
        for (k, e) in [&e1, &e2].into_iter().enumerate() {
            let g = Genome::expert(f.layout(), k).unwrap();
            let w = materialise_to_weights(&base, &f, &g, &cpu).unwrap();
            let err = model_rel_err(&w, e);
            assert!(err <= 1e-5, "expert {k}: {err}");
        }
        let b = materialise_to_weights(&base, &f, &Genome::base(f.layout()), &cpu).unwrap();
        assert_eq!(model_rel_err(&b, &base), 0.0);
    }

    #[test]
    fn genome_crossover_equals_dense_crossover() {
        let (base, e1, e2, f) = setup(Rank::Full);
        let l = f.layout();
        let (g1, g2) = (Genome::expert(l, 0).unwrap(), Genome::expert(l, 1).unwrap());
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let params = CrossoverParams {
            mean: 1.0,
            std: 0.3,
        };
        let child = g1.crossover(&g2, params, &mut rng).unwrap();
        // Draw the same ω pair again and do the crossover on dense weights.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let normal = Normal::new(params.mean, params.std).unwrap();
        let (w1, w2) = (normal.sample(&mut rng), normal.sample(&mut rng));
        let got = materialise_to_weights(&base, &f, &child, &Device::Cpu).unwrap();
        let mut want = Weights::new();
        for (name, b) in base.iter() {
            let t1 = (e1.get(name).unwrap() - b).unwrap();
            let t2 = (e2.get(name).unwrap() - b).unwrap();
            let mix = ((t1 * w1).unwrap() + (t2 * w2).unwrap()).unwrap();
            want.insert(name, (b + (mix / (w1 + w2)).unwrap()).unwrap());
        }
        let err = model_rel_err(&got, &want);
        assert!(err <= 1e-5, "{err}");
    }
    use rand_distr::{Distribution, Normal};

    #[test]
    fn rank_r_error_matches_the_discarded_singular_values() {
        let (base, e1, _, f) = setup(Rank::Top(4));
        let full = setup(Rank::Full).3;
        let g = Genome::expert(f.layout(), 0).unwrap();
        let got = materialise_to_weights(&base, &f, &g, &Device::Cpu).unwrap();
        let gfull = Genome::expert(full.layout(), 0).unwrap();
        for t in f.tensors() {
            if t.shape.len() != 2 {
                continue;
            }
            let name = &t.name;
            let tau = (e1.get(name).unwrap() - base.get(name).unwrap()).unwrap();
            let diff = (got.get(name).unwrap() - e1.get(name).unwrap()).unwrap();
            let sq = |x: &Tensor| -> f64 {
                x.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum()
            };
            let s_all = gfull.coefficients(name, 0).unwrap();
            let discarded: f64 = s_all[4..].iter().map(|s| (*s as f64).powi(2)).sum();
            let (err, want) = (sq(&diff).sqrt(), discarded.sqrt());
            assert!(
                (err - want).abs() <= 1e-4 * sq(&tau).sqrt() + 1e-3 * want,
                "{name}: error {err}, discarded singular values {want}"
            );
            let reported = f.meta().tensors.iter().find(|r| &r.name == name).unwrap();
            let rel = want / sq(&tau).sqrt();
            assert!((reported.rel_errors[0] - rel).abs() < 1e-4, "{name}");
        }
    }

    #[test]
    fn tensors_larger_than_a_task_materialise_exactly() {
        // An embedding of 1100 x 40: 44,000 values, more than one task's 32,768, in tasks
        // of 819 rows and a last one of 281; as SVD factors and as a dense task vector.
        let cfg = LlamaConfig {
            vocab_size: 1100,
            hidden_size: 40,
            ..tiny_config()
        };
        let base = random_model(&cfg, 1);
        let (e1, e2) = (perturbed(&base, 2, 0.1), perturbed(&base, 3, 0.1));
        let embed = "model.embed_tokens.weight".to_string();
        assert!(base.get(&embed).unwrap().elem_count() > TASK_VALUES);
        for dense in [vec![], vec![embed.clone()]] {
            let opts = FactoriseOptions {
                rank: Rank::Full,
                dense,
                ..FactoriseOptions::default()
            };
            let experts = [("a", &e1 as &dyn TensorSource), ("b", &e2)];
            let f = FactorSet::factorise(&base, &experts, &opts).unwrap();
            let l = f.layout();
            for (k, e) in [&e1, &e2].into_iter().enumerate() {
                let g = Genome::expert(l, k).unwrap();
                let w = materialise_to_weights(&base, &f, &g, &Device::Cpu).unwrap();
                let err = model_rel_err(&w, e);
                assert!(err <= 1e-5, "expert {k}, {:?}: {err}", opts.dense);
            }
            // Both experts at once: the base plus both task vectors.
            let both = Genome::from_values(
                l,
                Genome::expert(l, 0)
                    .unwrap()
                    .values()
                    .iter()
                    .zip(Genome::expert(l, 1).unwrap().values())
                    .map(|(a, b)| a + b)
                    .collect(),
            )
            .unwrap();
            let got = materialise_to_weights(&base, &f, &both, &Device::Cpu).unwrap();
            let mut want = Weights::new();
            for (name, b) in base.iter() {
                let t1 = (e1.get(name).unwrap() - b).unwrap();
                let t2 = (e2.get(name).unwrap() - b).unwrap();
                want.insert(name, ((b + t1).unwrap() + t2).unwrap());
            }
            let err = model_rel_err(&got, &want);
            assert!(err <= 1e-5, "both experts, {:?}: {err}", opts.dense);
        }
    }

    #[test]
    fn hf_dir_output_matches_memory_output() {
        let (base, _, _, f) = setup(Rank::Full);
        let l = f.layout();
        let mut g = Genome::expert(l, 0).unwrap();
        g.mutate(1, 0.1, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("elite");
        materialise_to_dir(&base, &f, &g, &Device::Cpu, &DirOutput::new(&out), |d| {
            std::fs::write(d.join("config.json"), "{}").map_err(|e| MergeError::io(d, e))
        })
        .unwrap();
        assert!(out.join("config.json").exists());
        let files = crate::reader::SafetensorsReader::open_dir(&out).unwrap();
        let mem = materialise_to_weights(&base, &f, &g, &Device::Cpu).unwrap();
        for (name, t) in mem.iter() {
            let back = files.load(name, &Device::Cpu).unwrap();
            assert_eq!(rel_diff(&back, t), 0.0, "{name}");
        }
        // A failing metadata writer leaves nothing behind.
        let out2 = dir.path().join("elite2");
        let r = materialise_to_dir(&base, &f, &g, &Device::Cpu, &DirOutput::new(&out2), |_| {
            Err(MergeError::invalid("test", "boom"))
        });
        assert!(r.is_err());
        assert!(!out2.exists());
    }
}
