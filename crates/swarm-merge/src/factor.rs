//! Factorisation of task vectors: `τ_k = θ_k − θ_base = U_k · diag(S_k) · V_kᵀ` per matrix.
//!
//! This is what makes a CycleQD elite a point instead of a model (design §1): every child
//! crossover and SVD mutation can make is `W_base + Σ_k U_k diag(c_k) V_kᵀ` for some
//! coefficient vectors `c_k`. A [`FactorSet`] holds, for every tensor of the model and every
//! expert, either the SVD factors (2-D matrices) or the full task vector (1-D tensors, and any
//! matrix the caller asks to keep dense), and the [`GenomeLayout`] of the genomes that live in
//! it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use faer::MatRef;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use swarm_model::TensorSource;

use crate::error::{MergeError, Result};
use crate::genome::GenomeLayout;
use crate::reader::SafetensorsReader;
use crate::writer::{write_streaming, TensorSpec};

/// How many singular triplets to keep per matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Rank {
    /// All `min(rows, cols)` of them: reconstruction is exact up to rounding.
    #[default]
    Full,
    /// The top `r` (or all of them if the matrix has fewer).
    Top(usize),
}

impl Rank {
    /// How many triplets of an `m x n` matrix are kept.
    pub fn kept(self, m: usize, n: usize) -> usize {
        let full = m.min(n);
        match self {
            Rank::Full => full,
            Rank::Top(r) => r.min(full),
        }
    }
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rank::Full => write!(f, "full"),
            Rank::Top(r) => write!(f, "{r}"),
        }
    }
}

impl FromStr for Rank {
    type Err = MergeError;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("full") {
            return Ok(Rank::Full);
        }
        match s.parse::<usize>() {
            Ok(r) if r > 0 => Ok(Rank::Top(r)),
            _ => Err(MergeError::invalid(
                "rank",
                format!("{s:?}: expected \"full\" or a positive number"),
            )),
        }
    }
}

/// Options of [`FactorSet::factorise`].
#[derive(Debug, Clone)]
pub struct FactoriseOptions {
    /// Rank kept per matrix (default: full).
    pub rank: Rank,
    /// Matrices kept as full task vectors with one scalar coefficient per expert, like 1-D
    /// tensors (SVD mutation leaves them untouched). Exact names.
    pub dense: Vec<String>,
    /// Compute the SVD in f64 (slower, ~1e-12 instead of ~1e-6 relative reconstruction).
    pub svd_f64: bool,
    /// Measure each tensor's reconstruction error with a matmul (otherwise it is computed
    /// from the discarded singular values, which is exact in exact arithmetic).
    pub measure_error: bool,
}

impl Default for FactoriseOptions {
    fn default() -> Self {
        Self {
            rank: Rank::Full,
            dense: Vec::new(),
            svd_f64: false,
            measure_error: true,
        }
    }
}

/// The kept SVD factors of one expert's task vector of one matrix: `U` (`m x r`), `S` (`r`),
/// `Vᵀ` (`r x n`), all f32 on the CPU.
#[derive(Debug, Clone)]
pub struct SvdFactors {
    pub u: Tensor,
    pub s: Vec<f32>,
    pub vt: Tensor,
}

/// What is stored for one tensor, per expert.
#[derive(Debug, Clone)]
pub enum TensorFactors {
    /// A matrix: truncated SVD factors per expert.
    Svd(Vec<SvdFactors>),
    /// A 1-D tensor (or a matrix kept dense): the full task vector per expert.
    Dense(Vec<Tensor>),
}

/// One tensor of the model with its factors.
#[derive(Debug, Clone)]
pub struct FactoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub factors: TensorFactors,
}

/// Per tensor and expert: what was kept and how far the kept factors are from the task vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    /// `"svd"` or `"dense"`.
    pub kind: String,
    /// Per expert: singular triplets kept (1 for dense tensors).
    pub ranks: Vec<usize>,
    /// Per expert: `‖τ − U S Vᵀ‖_F / ‖τ‖_F` (0 for a zero task vector and for dense tensors).
    pub rel_errors: Vec<f64>,
}

/// One expert the factors were made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertInfo {
    pub name: String,
    /// [`model_hash`] of its weights.
    pub hash: String,
}

/// What a factor file says about itself (stored as JSON in the safetensors metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorMeta {
    pub format: String,
    /// Names this factor set: a hash of the base, the experts, the rank and the layout.
    /// Genomes carry it, so a genome is never applied to other factors.
    pub id: String,
    pub base_hash: String,
    pub experts: Vec<ExpertInfo>,
    /// `"full"` or the number kept.
    pub rank: String,
    /// dtype of the stored factors.
    pub dtype: String,
    /// In model order.
    pub tensors: Vec<TensorReport>,
}

const FORMAT: &str = "swarm-factors/1";

/// The factors of every expert's task vector, for every tensor of the model.
#[derive(Debug, Clone)]
pub struct FactorSet {
    meta: FactorMeta,
    tensors: Vec<FactoredTensor>,
    index: HashMap<String, usize>,
    layout: Arc<GenomeLayout>,
}

/// sha256 of one tensor, its name and shape, over its f32 values.
fn tensor_digest(name: &str, t: &Tensor) -> Result<[u8; 32]> {
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    for d in t.dims() {
        h.update((*d as u64).to_le_bytes());
    }
    for chunk in values.chunks(1 << 14) {
        let mut buf = Vec::with_capacity(chunk.len() * 4);
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        h.update(&buf);
    }
    Ok(h.finalize().into())
}

fn combine_digests(digests: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// A content hash of a model's weights: sha256 over every tensor's name, shape and f32 values,
/// in name order. Equal weights from a GGUF file and an HF dir hash equally.
pub fn model_hash(source: &dyn TensorSource) -> Result<String> {
    let names = source.names();
    let digests: Vec<[u8; 32]> = names
        .par_iter()
        .map(|name| tensor_digest(name, &source.load(name, &Device::Cpu)?))
        .collect::<Result<_>>()?;
    Ok(combine_digests(&digests))
}

/// Checks that `other` has exactly the tensors of `base` with the same shapes; the error names
/// the first tensor that differs and the model it belongs to.
pub fn check_same_tensors(
    base: &dyn TensorSource,
    other: &dyn TensorSource,
    other_name: &str,
) -> Result<()> {
    let label = |name: &str, desc: String| {
        if desc == name {
            desc
        } else {
            format!("{name} ({desc})")
        }
    };
    let other_label = label(other_name, other.describe());
    let base_label = label("the base", base.describe());
    let base_names = base.names();
    for name in &base_names {
        let want = base.shape(name)?;
        match other.shape(name) {
            Err(_) => {
                return Err(MergeError::tensor(
                    name,
                    format!("missing from {other_label}"),
                ))
            }
            Ok(got) if got != want => {
                return Err(MergeError::tensor(
                    name,
                    format!("has shape {got:?} in {other_label} but {want:?} in {base_label}"),
                ))
            }
            Ok(_) => {}
        }
    }
    let base_set: std::collections::HashSet<&String> = base_names.iter().collect();
    if let Some(extra) = other.names().iter().find(|n| !base_set.contains(n)) {
        return Err(MergeError::tensor(
            extra,
            format!("is in {other_label} but not in {base_label}"),
        ));
    }
    Ok(())
}

/// The result of factorising one tensor.
struct Factored {
    tensor: FactoredTensor,
    report: TensorReport,
    base_digest: [u8; 32],
    expert_digests: Vec<[u8; 32]>,
}

/// Thin SVD of a row-major `m x n` matrix, keeping the top `keep` triplets. Returns `U`
/// (`m x keep`, row-major), all singular values (descending), `Vᵀ` (`keep x n`, row-major).
fn svd_top(
    name: &str,
    data: &[f32],
    m: usize,
    n: usize,
    keep: usize,
    in_f64: bool,
) -> Result<(Vec<f32>, Vec<f64>, Vec<f32>)> {
    let fail = |e: faer::linalg::solvers::SvdError| MergeError::Svd {
        name: name.to_string(),
        message: format!("{e:?}"),
    };
    macro_rules! extract {
        ($svd:expr) => {{
            let svd = $svd;
            let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
            let mut u_out = Vec::with_capacity(m * keep);
            for i in 0..m {
                for j in 0..keep {
                    u_out.push(u[(i, j)] as f32);
                }
            }
            let s_all: Vec<f64> = (0..s.nrows()).map(|i| s[i] as f64).collect();
            let mut vt_out = Vec::with_capacity(keep * n);
            for j in 0..keep {
                for i in 0..n {
                    vt_out.push(v[(i, j)] as f32);
                }
            }
            (u_out, s_all, vt_out)
        }};
    }
    if in_f64 {
        let a = faer::Mat::<f64>::from_fn(m, n, |i, j| data[i * n + j] as f64);
        Ok(extract!(a.thin_svd().map_err(fail)?))
    } else {
        let a = MatRef::from_row_major_slice(data, m, n);
        Ok(extract!(a.thin_svd().map_err(fail)?))
    }
}

fn frobenius(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt()
}

fn factor_one(
    name: &str,
    shape: &[usize],
    base: &dyn TensorSource,
    experts: &[(&str, &dyn TensorSource)],
    opts: &FactoriseOptions,
) -> Result<Factored> {
    let cpu = Device::Cpu;
    let base_t = base.load(name, &cpu)?.to_dtype(DType::F32)?;
    let base_digest = tensor_digest(name, &base_t)?;
    let svd = shape.len() == 2 && !opts.dense.iter().any(|d| d == name);
    let mut expert_digests = Vec::with_capacity(experts.len());
    let mut svds = Vec::new();
    let mut dense = Vec::new();
    let mut ranks = Vec::new();
    let mut rel_errors = Vec::new();
    for (expert_name, source) in experts {
        let t = source.load(name, &cpu)?.to_dtype(DType::F32)?;
        if t.dims() != shape {
            return Err(MergeError::tensor(
                name,
                format!(
                    "has shape {:?} in expert {expert_name} but {shape:?} in the base",
                    t.dims()
                ),
            ));
        }
        expert_digests.push(tensor_digest(name, &t)?);
        let tau = (t - &base_t)?;
        if !svd {
            ranks.push(1);
            rel_errors.push(0.0);
            dense.push(tau);
            continue;
        }
        let (m, n) = (shape[0], shape[1]);
        let keep = opts.rank.kept(m, n);
        let tau_v = tau.flatten_all()?.to_vec1::<f32>()?;
        let norm = frobenius(&tau_v);
        let (u, s_all, vt) = svd_top(name, &tau_v, m, n, keep, opts.svd_f64)?;
        let s: Vec<f32> = s_all[..keep].iter().map(|v| *v as f32).collect();
        let u = Tensor::from_vec(u, (m, keep), &cpu)?;
        let vt = Tensor::from_vec(vt, (keep, n), &cpu)?;
        let err = if norm == 0.0 {
            0.0
        } else if opts.measure_error {
            let s_t = Tensor::from_slice(&s, (1, keep), &cpu)?;
            let rec = u.broadcast_mul(&s_t)?.matmul(&vt)?;
            let diff = (tau - rec)?.flatten_all()?.to_vec1::<f32>()?;
            frobenius(&diff) / norm
        } else {
            let dropped: f64 = s_all[keep..].iter().map(|v| v * v).sum();
            let total: f64 = s_all.iter().map(|v| v * v).sum();
            (dropped / total).sqrt()
        };
        ranks.push(keep);
        rel_errors.push(err);
        svds.push(SvdFactors { u, s, vt });
    }
    let factors = if svd {
        TensorFactors::Svd(svds)
    } else {
        TensorFactors::Dense(dense)
    };
    Ok(Factored {
        report: TensorReport {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind: if svd { "svd" } else { "dense" }.to_string(),
            ranks,
            rel_errors,
        },
        tensor: FactoredTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            factors,
        },
        base_digest,
        expert_digests,
    })
}

fn factor_set_id(
    base_hash: &str,
    experts: &[ExpertInfo],
    rank: &str,
    tensors: &[TensorReport],
) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(base_hash.as_bytes());
    for e in experts {
        h.update(e.name.as_bytes());
        h.update([0u8]);
        h.update(e.hash.as_bytes());
    }
    h.update(rank.as_bytes());
    for t in tensors {
        h.update(t.name.as_bytes());
        h.update(t.kind.as_bytes());
        for r in &t.ranks {
            h.update((*r as u64).to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

impl FactorSet {
    /// Factorises every expert's task vector against `base`, tensor by tensor, in parallel.
    ///
    /// Every expert must have exactly the base's tensors and shapes; the error names the first
    /// that differs.
    pub fn factorise(
        base: &dyn TensorSource,
        experts: &[(&str, &dyn TensorSource)],
        opts: &FactoriseOptions,
    ) -> Result<FactorSet> {
        if experts.is_empty() {
            return Err(MergeError::invalid(
                "experts",
                "at least one expert is needed",
            ));
        }
        if let Rank::Top(0) = opts.rank {
            return Err(MergeError::invalid("rank", "must be positive"));
        }
        for (i, (name, _)) in experts.iter().enumerate() {
            if experts[..i].iter().any(|(n, _)| n == name) {
                return Err(MergeError::invalid(
                    "experts",
                    format!("name {name:?} is used twice"),
                ));
            }
        }
        for (name, source) in experts {
            check_same_tensors(base, *source, &format!("expert {name}"))?;
        }
        let names = base.names();
        let mut work: Vec<(usize, String, Vec<usize>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Ok((i, n.clone(), base.shape(n)?)))
            .collect::<Result<_>>()?;
        // Biggest first, so the long SVDs do not end up alone at the end.
        work.sort_by_key(|(_, _, s)| std::cmp::Reverse(s.iter().product::<usize>()));
        let mut done: Vec<(usize, Factored)> = work
            .par_iter()
            .map(|(i, name, shape)| {
                let f = factor_one(name, shape, base, experts, opts)?;
                tracing::debug!(tensor = %name, errors = ?f.report.rel_errors, "factorised");
                Ok((*i, f))
            })
            .collect::<Result<_>>()?;
        done.sort_by_key(|(i, _)| *i);
        let base_hash =
            combine_digests(&done.iter().map(|(_, f)| f.base_digest).collect::<Vec<_>>());
        let expert_infos: Vec<ExpertInfo> = experts
            .iter()
            .enumerate()
            .map(|(k, (name, _))| ExpertInfo {
                name: name.to_string(),
                hash: combine_digests(
                    &done
                        .iter()
                        .map(|(_, f)| f.expert_digests[k])
                        .collect::<Vec<_>>(),
                ),
            })
            .collect();
        let reports: Vec<TensorReport> = done.iter().map(|(_, f)| f.report.clone()).collect();
        let rank = opts.rank.to_string();
        let meta = FactorMeta {
            format: FORMAT.to_string(),
            id: factor_set_id(&base_hash, &expert_infos, &rank, &reports),
            base_hash,
            experts: expert_infos,
            rank,
            dtype: "F32".to_string(),
            tensors: reports,
        };
        let tensors = done.into_iter().map(|(_, f)| f.tensor).collect();
        Self::assemble(meta, tensors)
    }

    fn assemble(meta: FactorMeta, tensors: Vec<FactoredTensor>) -> Result<FactorSet> {
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let layout = Arc::new(GenomeLayout::from_factors(&meta, &tensors));
        Ok(FactorSet {
            meta,
            tensors,
            index,
            layout,
        })
    }

    /// The id genomes of this factor set carry.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// Everything the factor file says about itself, with the per-tensor errors.
    pub fn meta(&self) -> &FactorMeta {
        &self.meta
    }

    /// The experts, in genome order.
    pub fn experts(&self) -> &[ExpertInfo] {
        &self.meta.experts
    }

    /// Index of the expert called `name`.
    pub fn expert_index(&self, name: &str) -> Option<usize> {
        self.meta.experts.iter().position(|e| e.name == name)
    }

    /// Tensors in model (name) order.
    pub fn tensors(&self) -> &[FactoredTensor] {
        &self.tensors
    }

    /// One tensor's factors.
    pub fn tensor(&self, name: &str) -> Option<&FactoredTensor> {
        self.index.get(name).map(|i| &self.tensors[*i])
    }

    /// The layout of genomes in this factor set.
    pub fn layout(&self) -> &Arc<GenomeLayout> {
        &self.layout
    }

    /// The largest relative reconstruction error over tensors and experts.
    pub fn max_rel_error(&self) -> f64 {
        self.meta
            .tensors
            .iter()
            .flat_map(|t| t.rel_errors.iter().copied())
            .fold(0.0, f64::max)
    }

    /// Bytes held by the factors.
    pub fn size_in_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.tensors
            .iter()
            .map(|t| match &t.factors {
                TensorFactors::Svd(f) => f
                    .iter()
                    .map(|f| bytes(&f.u) + bytes(&f.vt) + 4 * f.s.len())
                    .sum::<usize>(),
                TensorFactors::Dense(d) => d.iter().map(bytes).sum(),
            })
            .sum()
    }

    /// Checks that `base` is the model these factors were made from (by content hash).
    pub fn verify_base(&self, base: &dyn TensorSource) -> Result<()> {
        let hash = model_hash(base)?;
        if hash != self.meta.base_hash {
            return Err(MergeError::Factors(format!(
                "{} is not the base these factors were made from (hash {}, expected {})",
                base.describe(),
                hash,
                self.meta.base_hash
            )));
        }
        Ok(())
    }

    /// Saves the factors as one safetensors file (atomically), with [`FactorMeta`] as JSON in
    /// the metadata under `swarm_factors`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut specs = Vec::new();
        let mut sources: Vec<Tensor> = Vec::new();
        for t in &self.tensors {
            match &t.factors {
                TensorFactors::Svd(experts) => {
                    for (k, f) in experts.iter().enumerate() {
                        let s = Tensor::from_slice(&f.s, f.s.len(), &Device::Cpu)?;
                        for (part, tensor) in [("u", &f.u), ("s", &s), ("vt", &f.vt)] {
                            specs.push(TensorSpec::new(
                                format!("{}/{part}/{k}", t.name),
                                tensor.dims().to_vec(),
                                DType::F32,
                            ));
                            sources.push(tensor.clone());
                        }
                    }
                }
                TensorFactors::Dense(experts) => {
                    for (k, tau) in experts.iter().enumerate() {
                        specs.push(TensorSpec::new(
                            format!("{}/tau/{k}", t.name),
                            tau.dims().to_vec(),
                            DType::F32,
                        ));
                        sources.push(tau.clone());
                    }
                }
            }
        }
        let meta_json = serde_json::to_string(&self.meta)
            .map_err(|e| MergeError::Factors(format!("cannot encode metadata: {e}")))?;
        let metadata: BTreeMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("swarm_factors".to_string(), meta_json),
        ]
        .into();
        let mut next = sources.into_iter();
        write_streaming(path, specs, &metadata, |spec| {
            next.next()
                .ok_or_else(|| MergeError::tensor(&spec.name, "internal: no tensor to write"))
        })
    }

    /// Loads a factor file written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<FactorSet> {
        let reader = SafetensorsReader::open(&[path.to_path_buf()])?;
        let bad = |m: String| MergeError::file(path, format!("not a swarm factor file: {m}"));
        let json = reader
            .metadata()
            .get("swarm_factors")
            .ok_or_else(|| bad("no `swarm_factors` metadata".to_string()))?;
        let meta: FactorMeta =
            serde_json::from_str(json).map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT:?}",
                meta.format
            )));
        }
        let cpu = Device::Cpu;
        let load = |name: String, shape: &[usize]| -> Result<Tensor> {
            let t = reader.load(&name, &cpu)?.to_dtype(DType::F32)?;
            if t.dims() != shape {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(t)
        };
        let mut tensors = Vec::with_capacity(meta.tensors.len());
        for t in &meta.tensors {
            if t.ranks.len() != meta.experts.len() {
                return Err(bad(format!("`{}` lists {} ranks", t.name, t.ranks.len())));
            }
            let factors = if t.kind == "svd" {
                let (m, n) = match t.shape.as_slice() {
                    [m, n] => (*m, *n),
                    other => return Err(bad(format!("`{}` has shape {other:?}", t.name))),
                };
                let mut experts = Vec::new();
                for (k, r) in t.ranks.iter().enumerate() {
                    let u = load(format!("{}/u/{k}", t.name), &[m, *r])?;
                    let s = load(format!("{}/s/{k}", t.name), &[*r])?.to_vec1::<f32>()?;
                    let vt = load(format!("{}/vt/{k}", t.name), &[*r, n])?;
                    experts.push(SvdFactors { u, s, vt });
                }
                TensorFactors::Svd(experts)
            } else {
                let taus = (0..meta.experts.len())
                    .map(|k| load(format!("{}/tau/{k}", t.name), &t.shape))
                    .collect::<Result<_>>()?;
                TensorFactors::Dense(taus)
            };
            tensors.push(FactoredTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                factors,
            });
        }
        let expected = factor_set_id(&meta.base_hash, &meta.experts, &meta.rank, &meta.tensors);
        if expected != meta.id {
            return Err(bad(format!("id {} does not match its contents", meta.id)));
        }
        Self::assemble(meta, tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{perturbed, random_model, tiny_config};

    #[test]
    fn rank_parses() {
        assert_eq!("full".parse::<Rank>().unwrap(), Rank::Full);
        assert_eq!("64".parse::<Rank>().unwrap(), Rank::Top(64));
        assert!("0".parse::<Rank>().is_err());
        assert!("x".parse::<Rank>().is_err());
        assert_eq!(Rank::Top(64).kept(32, 100), 32);
    }

    #[test]
    fn full_rank_errors_are_tiny_and_file_round_trips() {
        let cfg = tiny_config();
        let base = random_model(&cfg, 1);
        let e1 = perturbed(&base, 2, 0.1);
        let f = FactorSet::factorise(
            &base,
            &[("a", &e1 as &dyn TensorSource)],
            &FactoriseOptions::default(),
        )
        .unwrap();
        assert!(f.max_rel_error() < 1e-5, "{}", f.max_rel_error());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("factors.safetensors");
        f.save(&p).unwrap();
        let g = FactorSet::load(&p).unwrap();
        assert_eq!(g.meta(), f.meta());
        assert_eq!(g.layout().len(), f.layout().len());
        f.verify_base(&base).unwrap();
        assert!(f.verify_base(&e1).is_err());
    }

    #[test]
    fn mismatched_expert_is_refused_naming_the_tensor() {
        let cfg = tiny_config();
        let base = random_model(&cfg, 1);
        let mut e = perturbed(&base, 2, 0.1);
        e.remove("model.norm.weight");
        let err = FactorSet::factorise(
            &base,
            &[("a", &e as &dyn TensorSource)],
            &FactoriseOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("model.norm.weight"), "{err}");
    }
}
