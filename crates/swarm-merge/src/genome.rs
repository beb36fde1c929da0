//! Genomes: a CycleQD elite as coefficients in factor space, and the CycleQD operators on them.
//!
//! A genome holds, per matrix and per expert `k`, a coefficient vector `c_k` (one entry per
//! kept singular triplet) and, per 1-D (or dense) tensor and per expert, one scalar `a_k`:
//!
//! ```text
//! W = W_base + Σ_k U_k · diag(c_k) · V_kᵀ        b = b_base + Σ_k a_k · τ_k
//! ```
//!
//! All coefficients sit in one flat `Vec<f32>`, laid out by a [`GenomeLayout`] shared by every
//! genome of a factor set, so crossover, mutation and aggregation are loops over one array.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use swarm_model::TensorSource;

use crate::error::{MergeError, Result};
use crate::factor::{FactorMeta, FactoredTensor, TensorFactors};
use crate::reader::SafetensorsReader;
use crate::writer::{write_streaming, TensorSpec};

/// Where one tensor's coefficients sit in a genome.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub tensor: String,
    /// SVD factors (coefficient vectors) or a dense task vector (one scalar).
    pub factored: bool,
    /// Per expert, the range of its coefficients in [`Genome::values`].
    pub ranges: Vec<Range<usize>>,
}

/// How the coefficients of every genome of one factor set are laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct GenomeLayout {
    factor_set_id: String,
    experts: Vec<String>,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    /// The experts' own coefficients: `S_k` in expert `k`'s ranges of factored tensors, 1 in
    /// its dense ranges.
    expert_values: Vec<f32>,
    len: usize,
}

impl GenomeLayout {
    pub(crate) fn from_factors(meta: &FactorMeta, tensors: &[FactoredTensor]) -> Self {
        let mut slots = Vec::with_capacity(tensors.len());
        let mut expert_values = Vec::new();
        for t in tensors {
            let mut ranges = Vec::new();
            let factored = matches!(t.factors, TensorFactors::Svd(_));
            match &t.factors {
                TensorFactors::Svd(experts) => {
                    for f in experts {
                        let start = expert_values.len();
                        expert_values.extend_from_slice(&f.s);
                        ranges.push(start..expert_values.len());
                    }
                }
                TensorFactors::Dense(experts) => {
                    for _ in experts {
                        let start = expert_values.len();
                        expert_values.push(1.0);
                        ranges.push(start..start + 1);
                    }
                }
            }
            slots.push(Slot {
                tensor: t.name.clone(),
                factored,
                ranges,
            });
        }
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.tensor.clone(), i))
            .collect();
        GenomeLayout {
            factor_set_id: meta.id.clone(),
            experts: meta.experts.iter().map(|e| e.name.clone()).collect(),
            len: expert_values.len(),
            slots,
            index,
            expert_values,
        }
    }

    /// The factor set this layout belongs to.
    pub fn factor_set_id(&self) -> &str {
        &self.factor_set_id
    }

    /// Expert names, in coefficient order.
    pub fn experts(&self) -> &[String] {
        &self.experts
    }

    /// Per tensor, where its coefficients are.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The slot of one tensor.
    pub fn slot(&self, tensor: &str) -> Option<&Slot> {
        self.index.get(tensor).map(|i| &self.slots[*i])
    }

    /// Number of coefficients in a genome.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Parameters of the CycleQD crossover; defaults are the released code's (μ = 1, σ = 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossoverParams {
    pub mean: f64,
    pub std: f64,
}

impl Default for CrossoverParams {
    fn default() -> Self {
        Self {
            mean: 1.0,
            std: 0.01,
        }
    }
}

/// One elite in factor space.
#[derive(Debug, Clone, PartialEq)]
pub struct Genome {
    layout: Arc<GenomeLayout>,
    values: Vec<f32>,
}

fn same_layout(a: &Arc<GenomeLayout>, b: &Arc<GenomeLayout>) -> Result<()> {
    if Arc::ptr_eq(a, b) || a.factor_set_id == b.factor_set_id {
        Ok(())
    } else {
        Err(MergeError::Genome(format!(
            "genomes of different factor sets ({} and {}) cannot be combined",
            a.factor_set_id, b.factor_set_id
        )))
    }
}

impl Genome {
    /// The base model: every coefficient zero.
    pub fn base(layout: &Arc<GenomeLayout>) -> Genome {
        Genome {
            layout: layout.clone(),
            values: vec![0.0; layout.len],
        }
    }

    /// Expert `k` itself: `c_k = S_k` (and `a_k = 1`), zero elsewhere.
    pub fn expert(layout: &Arc<GenomeLayout>, k: usize) -> Result<Genome> {
        if k >= layout.experts.len() {
            return Err(MergeError::Genome(format!(
                "expert index {k} out of range: there are {} experts",
                layout.experts.len()
            )));
        }
        let mut g = Genome::base(layout);
        for slot in &layout.slots {
            let r = slot.ranges[k].clone();
            g.values[r.clone()].copy_from_slice(&layout.expert_values[r]);
        }
        Ok(g)
    }

    /// A genome from raw coefficients laid out as `layout` says.
    pub fn from_values(layout: &Arc<GenomeLayout>, values: Vec<f32>) -> Result<Genome> {
        if values.len() != layout.len {
            return Err(MergeError::Genome(format!(
                "{} coefficients given, the layout has {}",
                values.len(),
                layout.len
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(MergeError::Genome(format!("coefficient {i} is not finite")));
        }
        Ok(Genome {
            layout: layout.clone(),
            values,
        })
    }

    pub fn layout(&self) -> &Arc<GenomeLayout> {
        &self.layout
    }

    /// All coefficients, flat.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The coefficients of `tensor` for expert `k` (a vector for a matrix, one scalar for a
    /// dense tensor).
    pub fn coefficients(&self, tensor: &str, k: usize) -> Option<&[f32]> {
        let slot = self.layout.slot(tensor)?;
        slot.ranges.get(k).map(|r| &self.values[r.clone()])
    }

    /// CycleQD crossover: `(ω1·g1 + ω2·g2) / (ω1 + ω2)` with `ω1, ω2 ~ N(μ, σ²)`, one pair
    /// for the whole genome. Equal to the dense crossover `θ_base + (ω1 τ1 + ω2 τ2)/(ω1 + ω2)`.
    pub fn crossover(
        &self,
        other: &Genome,
        params: CrossoverParams,
        rng: &mut impl Rng,
    ) -> Result<Genome> {
        same_layout(&self.layout, &other.layout)?;
        let normal = Normal::new(params.mean, params.std)
            .map_err(|e| MergeError::invalid("crossover std", format!("{}: {e}", params.std)))?;
        let w1 = normal.sample(rng);
        let w2 = normal.sample(rng);
        self.weighted_pair(other, w1, w2)
    }

    /// `(w1·self + w2·other) / (w1 + w2)`: the crossover with given weights.
    pub fn weighted_pair(&self, other: &Genome, w1: f64, w2: f64) -> Result<Genome> {
        same_layout(&self.layout, &other.layout)?;
        let sum = w1 + w2;
        if !sum.is_finite() || sum.abs() < 1e-12 {
            return Err(MergeError::invalid(
                "crossover weights",
                format!("ω1 + ω2 = {sum} cannot be divided by"),
            ));
        }
        let (a, b) = ((w1 / sum) as f32, (w2 / sum) as f32);
        let values = self
            .values
            .iter()
            .zip(&other.values)
            .map(|(x, y)| a * x + b * y)
            .collect();
        Ok(Genome {
            layout: self.layout.clone(),
            values,
        })
    }

    /// CycleQD's SVD mutation on the expert `q` of the current quality skill:
    /// `c_q += w ⊙ S_q` with `w ~ U[0, w_max]` drawn per singular value, on every matrix;
    /// 1-D (dense) tensors are untouched.
    pub fn mutate(&mut self, q: usize, w_max: f32, rng: &mut impl Rng) -> Result<()> {
        if q >= self.layout.experts.len() {
            return Err(MergeError::Genome(format!(
                "expert index {q} out of range: there are {} experts",
                self.layout.experts.len()
            )));
        }
        if !(w_max.is_finite() && w_max >= 0.0) {
            return Err(MergeError::invalid("w_max", format!("{w_max} is not >= 0")));
        }
        let layout = self.layout.clone();
        for slot in layout.slots.iter().filter(|s| s.factored) {
            for i in slot.ranges[q].clone() {
                let w: f32 = if w_max > 0.0 {
                    rng.gen_range(0.0..=w_max)
                } else {
                    0.0
                };
                self.values[i] += w * layout.expert_values[i];
            }
        }
        Ok(())
    }

    /// The paper's final model: `Σ_k softmax(f)_k · g_k` over genomes with fitness `f`.
    pub fn aggregate(genomes: &[&Genome], fitness: &[f64]) -> Result<Genome> {
        let first = genomes
            .first()
            .ok_or_else(|| MergeError::invalid("genomes", "nothing to aggregate"))?;
        if genomes.len() != fitness.len() {
            return Err(MergeError::invalid(
                "fitness",
                format!("{} values for {} genomes", fitness.len(), genomes.len()),
            ));
        }
        if let Some(f) = fitness.iter().find(|f| !f.is_finite()) {
            return Err(MergeError::invalid("fitness", format!("{f} is not finite")));
        }
        let max = fitness.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = fitness.iter().map(|f| (f - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        let mut values = vec![0.0f32; first.layout.len];
        for (g, e) in genomes.iter().zip(&exp) {
            same_layout(&first.layout, &g.layout)?;
            let w = (e / total) as f32;
            for (v, x) in values.iter_mut().zip(&g.values) {
                *v += w * x;
            }
        }
        Ok(Genome {
            layout: first.layout.clone(),
            values,
        })
    }
}

const FORMAT: &str = "swarm-genomes/1";

/// Saves named genomes (all of one factor set) to one safetensors file, atomically: one 1-D
/// f32 tensor per genome, the factor-set id and expert names in the metadata.
pub fn save_genomes(path: &Path, genomes: &[(&str, &Genome)]) -> Result<()> {
    let first = genomes
        .first()
        .ok_or_else(|| MergeError::invalid("genomes", "nothing to save"))?;
    let layout = first.1.layout.clone();
    for (name, g) in genomes {
        same_layout(&layout, &g.layout)?;
        if name.is_empty() || name.starts_with("__") {
            return Err(MergeError::invalid("genome name", format!("{name:?}")));
        }
    }
    let specs: Vec<TensorSpec> = genomes
        .iter()
        .map(|(name, _)| TensorSpec::new(*name, vec![layout.len], DType::F32))
        .collect();
    let experts = serde_json::to_string(&layout.experts)
        .map_err(|e| MergeError::Genome(format!("cannot encode experts: {e}")))?;
    let metadata: BTreeMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("factor_set_id".to_string(), layout.factor_set_id.clone()),
        ("experts".to_string(), experts),
        ("len".to_string(), layout.len.to_string()),
    ]
    .into();
    let mut next = genomes.iter();
    write_streaming(path, specs, &metadata, |spec| {
        let (_, g) = next
            .next()
            .ok_or_else(|| MergeError::tensor(&spec.name, "internal: no genome to write"))?;
        Ok(Tensor::from_slice(&g.values, g.values.len(), &Device::Cpu)?)
    })
}

/// Loads every genome of a file written by [`save_genomes`], checking that it belongs to
/// `layout`'s factor set. Sorted by name.
pub fn load_genomes(path: &Path, layout: &Arc<GenomeLayout>) -> Result<Vec<(String, Genome)>> {
    let reader = SafetensorsReader::open(&[path.to_path_buf()])?;
    let meta = reader.metadata();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(MergeError::file(path, "not a swarm genome file"));
    }
    let id = meta.get("factor_set_id").cloned().unwrap_or_default();
    if id != layout.factor_set_id {
        return Err(MergeError::Genome(format!(
            "{}: these genomes belong to factor set {id}, not to {} (the factors given)",
            path.display(),
            layout.factor_set_id
        )));
    }
    let mut out = Vec::new();
    for name in reader.names() {
        let values = reader
            .load(&name, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let g = Genome::from_values(layout, values)
            .map_err(|e| MergeError::Genome(format!("{}: `{name}`: {e}", path.display())))?;
        out.push((name, g));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::{FactorSet, FactoriseOptions};
    use crate::testing::{perturbed, random_model, tiny_config};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn factors() -> FactorSet {
        let cfg = tiny_config();
        let base = random_model(&cfg, 1);
        let e1 = perturbed(&base, 2, 0.1);
        let e2 = perturbed(&base, 3, 0.1);
        FactorSet::factorise(
            &base,
            &[("a", &e1 as &dyn TensorSource), ("b", &e2)],
            &FactoriseOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn operators_are_seeded_and_deterministic() {
        let f = factors();
        let l = f.layout();
        let (a, b) = (Genome::expert(l, 0).unwrap(), Genome::expert(l, 1).unwrap());
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut c = a
                .crossover(&b, CrossoverParams::default(), &mut rng)
                .unwrap();
            c.mutate(1, 0.1, &mut rng).unwrap();
            c
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn zero_mutation_is_a_no_op_and_dense_tensors_are_untouched() {
        let f = factors();
        let l = f.layout();
        let g = Genome::expert(l, 0).unwrap();
        let mut m = g.clone();
        m.mutate(0, 0.0, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!(m, g);
        m.mutate(0, 0.1, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let norm = "model.norm.weight";
        assert_eq!(m.coefficients(norm, 0), g.coefficients(norm, 0));
        let q = "model.layers.0.self_attn.q_proj.weight";
        let (before, after) = (g.coefficients(q, 0).unwrap(), m.coefficients(q, 0).unwrap());
        for (x, y) in before.iter().zip(after) {
            // c += w S with w in [0, 0.1] and c = S: c grows by at most 10%.
            assert!(*y >= *x && *y <= x * 1.1 + 1e-6, "{x} -> {y}");
        }
        // Expert 1's coefficients stay zero.
        assert!(m.coefficients(q, 1).unwrap().iter().all(|v| *v == 0.0));
    }

    #[test]
    fn aggregation_is_a_softmax_average() {
        let f = factors();
        let l = f.layout();
        let (a, b) = (Genome::expert(l, 0).unwrap(), Genome::expert(l, 1).unwrap());
        let agg = Genome::aggregate(&[&a, &b], &[0.0, 0.0]).unwrap();
        let half = a.weighted_pair(&b, 1.0, 1.0).unwrap();
        for (x, y) in agg.values().iter().zip(half.values()) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0));
        }
        let sharp = Genome::aggregate(&[&a, &b], &[100.0, 0.0]).unwrap();
        assert!(sharp
            .values()
            .iter()
            .zip(a.values())
            .all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0)));
        assert!(Genome::aggregate(&[&a], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn genomes_round_trip_and_refuse_other_factors() {
        let f = factors();
        let l = f.layout();
        let a = Genome::expert(l, 0).unwrap();
        let base = Genome::base(l);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("genomes.safetensors");
        save_genomes(&p, &[("expert-a", &a), ("base", &base)]).unwrap();
        let back = load_genomes(&p, l).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, "base");
        assert_eq!(back[1].1, a);

        let cfg = tiny_config();
        let other_base = random_model(&cfg, 9);
        let other = FactorSet::factorise(
            &other_base,
            &[("a", &perturbed(&other_base, 2, 0.1) as &dyn TensorSource)],
            &FactoriseOptions::default(),
        )
        .unwrap();
        let err = load_genomes(&p, other.layout()).unwrap_err().to_string();
        assert!(err.contains("factor set"), "{err}");
        let o = Genome::base(other.layout());
        assert!(a.weighted_pair(&o, 1.0, 1.0).is_err());
    }
}
