//! A swarm directory (`agents/<name>/`, written by `swarm evolve`) as an [`EliteSource`]:
//! the base and the experts' factors are loaded once, every elite is a genome, and an
//! elite's dense weights are materialised (`W_base + Σ_k U_k diag(c_k) V_kᵀ`, design §1)
//! when the [`EliteCache`] asks for them, or the elite is served straight from the factors
//! ([`GenomeSwarm::factored`]): one dense copy of the base, shared by every such elite, and
//! per matrix and active expert a low-rank delta `x·V_k·diag(c_k)·U_kᵀ` whose `U_k` and
//! `V_kᵀ` are the factor set's own tensors (shared, not copied): an elite served this way
//! costs its coefficients and its 1-D tensors, a few MB at most.
//!
//! Opening checks everything a bad directory can get wrong before the server listens: the
//! manifest (format, ids, scores), the base (content hash against the manifest and the
//! factors), the factors (the id the manifest names) and the genomes (one per elite, of the
//! factors' layout), so that `swarm serve --swarm DIR` fails at once with the reason.

use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use swarm_merge::{
    FactorSet, Genome, SwarmManifest, TensorFactors, SWARM_GENOMES_FILE, SWARM_MANIFEST_FILE,
};
use swarm_model::{
    Llama, LlamaConfig, LowRankDelta, ModelDelta, Precision, Pretrained, TensorSource, Weights,
};

use crate::error::{Result, ServeError};
use crate::model_engine::LoadedSwarm;
use crate::registry::{EliteCache, EliteSource, ServingPolicy};
use crate::router::{EliteInfo, SwarmInfo};

/// The base, the factors and every elite's genome of one swarm.
pub struct GenomeSwarm {
    config: LlamaConfig,
    base: Box<dyn TensorSource>,
    factors: FactorSet,
    genomes: BTreeMap<String, Genome>,
    /// The dense base and the factors on the serving device, built on the first elite
    /// served from factors.
    served_base: Mutex<Option<ServedBase>>,
}

/// What every elite served from factors shares.
struct ServedBase {
    device: Device,
    precision: Precision,
    model: Llama,
    /// Per factored matrix, on `device` in the activation dtype.
    factors: BTreeMap<String, ServedFactors>,
}

/// One matrix's factors as served.
struct ServedFactors {
    /// Per expert: `(Vᵀ_k, U_k)` (the factor set's own tensors on a CPU in f32: no copy).
    experts: Vec<(Tensor, Tensor)>,
    /// `([V_1ᵀ; V_2ᵀ; ...], [U_1 | U_2 | ...])`, concatenated once and shared by every elite
    /// with more than one active expert, when the concatenation is at most twice the size
    /// of the matrix (`Σ_k r_k (m + n) <= 2 m n`: true at SmolLM2's shapes at rank 64,
    /// false at full rank): at low rank a decode step is dominated by the number of small
    /// products, and one product pair per matrix instead of one per expert is faster
    /// (docs/performance.md, "Serving from factors vs materialising"); at full rank the
    /// arithmetic dominates and the copy would double the factors' memory for no gain.
    fused: Option<(Tensor, Tensor)>,
}

impl GenomeSwarm {
    /// The elite ids, sorted.
    pub fn elite_ids(&self) -> impl Iterator<Item = &str> {
        self.genomes.keys().map(String::as_str)
    }

    /// The genome of `elite`.
    pub fn genome(&self, elite: &str) -> Option<&Genome> {
        self.genomes.get(elite)
    }

    /// Bytes the factors hold (loaded once, shared by every elite).
    pub fn factor_bytes(&self) -> usize {
        self.factors.size_in_bytes()
    }

    /// `elite`'s dense weights (f32, on `device`): the materialised tensors over the base's.
    pub fn materialise(&self, elite: &str, device: &Device) -> Result<Weights> {
        let genome = self.genome_of(elite)?;
        let mut weights =
            swarm_merge::materialise_to_weights(self.base.as_ref(), &self.factors, genome, device)?;
        // Tensors the factors do not cover (none in a swarm from `swarm evolve`, which
        // factorises every tensor) are the base's own.
        for name in self.base.names() {
            if !weights.contains(&name) {
                weights.insert(name.clone(), self.base.load(&name, device)?);
            }
        }
        Ok(weights)
    }
}

impl GenomeSwarm {
    /// Opens a swarm from its parts (the base must be the one `factors` were made from;
    /// [`open_swarm`] checks that for a directory).
    pub fn new(
        config: LlamaConfig,
        base: Box<dyn TensorSource>,
        factors: FactorSet,
        genomes: BTreeMap<String, Genome>,
    ) -> Self {
        Self {
            config,
            base,
            factors,
            genomes,
            served_base: Mutex::new(None),
        }
    }

    /// `elite`'s changes to the base as low-rank deltas (`a = V_kᵀ`, `b = U_k`, `s = c_k`
    /// per matrix and expert with a non-zero coefficient) and replaced tensors (1-D tensors
    /// and matrices kept dense: `base + Σ_k a_k τ_k`), the factors taken from `factors`.
    fn delta(
        &self,
        elite: &str,
        factors: &BTreeMap<String, ServedFactors>,
        device: &Device,
        precision: Precision,
    ) -> Result<ModelDelta> {
        let genome = self.genome_of(elite)?;
        let dtype = precision.activation_dtype();
        let mut delta = ModelDelta::new();
        for t in self.factors.tensors() {
            let name = t.name.as_str();
            let coefficients = |k: usize| {
                genome.coefficients(name, k).ok_or_else(|| {
                    ServeError::Swarm(format!("elite `{elite}` has no coefficients for `{name}`"))
                })
            };
            match &t.factors {
                TensorFactors::Svd(experts) => {
                    let shared = factors.get(name).ok_or_else(|| {
                        ServeError::Swarm(format!("no served factors for `{name}`"))
                    })?;
                    let scale = |c: &[f32]| {
                        Tensor::from_slice(c, c.len(), device)
                            .and_then(|s| s.to_dtype(dtype))
                            .map_err(candle)
                    };
                    let mut active = Vec::new();
                    for k in 0..experts.len() {
                        let c = coefficients(k)?;
                        if c.iter().any(|v| *v != 0.0) {
                            active.push((k, c));
                        }
                    }
                    match &shared.fused {
                        Some((a, b)) if active.len() > 1 => {
                            // Inactive experts get zero coefficients in the shared product.
                            let mut c = Vec::with_capacity(a.dims()[0]);
                            for k in 0..experts.len() {
                                c.extend_from_slice(coefficients(k)?);
                            }
                            let d = LowRankDelta::scaled(a.clone(), scale(&c)?, b.clone())
                                .map_err(|e| ServeError::Swarm(format!("`{name}`: {e}")))?;
                            delta.add_low_rank(name, d);
                        }
                        _ => {
                            for (k, c) in active {
                                let (a, b) = shared.experts.get(k).ok_or_else(|| {
                                    ServeError::Swarm(format!("`{name}`: no factors of expert {k}"))
                                })?;
                                let d = LowRankDelta::scaled(a.clone(), scale(c)?, b.clone())
                                    .map_err(|e| {
                                        ServeError::Swarm(format!("`{name}` expert {k}: {e}"))
                                    })?;
                                delta.add_low_rank(name, d);
                            }
                        }
                    }
                }
                TensorFactors::Dense(taus) => {
                    let mut changed = false;
                    for k in 0..taus.len() {
                        changed |= coefficients(k)?.iter().any(|v| *v != 0.0);
                    }
                    if changed {
                        let w = swarm_merge::materialise_tensor(
                            self.base.as_ref(),
                            &self.factors,
                            genome,
                            name,
                            device,
                        )?;
                        delta.replace(name, w);
                    }
                }
            }
        }
        Ok(delta)
    }

    fn genome_of(&self, elite: &str) -> Result<&Genome> {
        self.genomes
            .get(elite)
            .ok_or_else(|| ServeError::Swarm(format!("no elite `{elite}` in this swarm")))
    }

    /// Builds (once per device and precision) the dense base and the factors on `device`.
    fn with_served_base<T>(
        &self,
        device: &Device,
        precision: Precision,
        f: impl FnOnce(&ServedBase) -> Result<T>,
    ) -> Result<T> {
        let mut slot = self
            .served_base
            .lock()
            .map_err(|_| ServeError::Engine("the served base's lock is poisoned".to_string()))?;
        let fits = slot
            .as_ref()
            .is_some_and(|b| b.precision == precision && b.device.same_device(device));
        if !fits {
            let started = std::time::Instant::now();
            let model = Llama::load(self.base.as_ref(), &self.config, device, precision)?;
            let dtype = precision.activation_dtype();
            let mut factors = BTreeMap::new();
            for t in self.factors.tensors() {
                if let TensorFactors::Svd(experts) = &t.factors {
                    let conv = |x: &Tensor| -> Result<Tensor> {
                        x.to_device(device)
                            .and_then(|x| x.to_dtype(dtype))
                            .and_then(|x| x.contiguous())
                            .map_err(candle)
                    };
                    let pairs = experts
                        .iter()
                        .map(|e| Ok((conv(&e.vt)?, conv(&e.u)?)))
                        .collect::<Result<Vec<_>>>()?;
                    let rank: usize = experts.iter().map(|e| e.s.len()).sum();
                    let small = match t.shape.as_slice() {
                        [m, n] => rank * (m + n) <= 2 * m * n,
                        _ => false,
                    };
                    let fused = if pairs.len() > 1 && small {
                        let a: Vec<Tensor> = pairs.iter().map(|(a, _)| a.clone()).collect();
                        let b: Vec<Tensor> = pairs.iter().map(|(_, b)| b.clone()).collect();
                        Some((
                            Tensor::cat(&a, 0).map_err(candle)?,
                            Tensor::cat(&b, 1).map_err(candle)?,
                        ))
                    } else {
                        None
                    };
                    factors.insert(
                        t.name.clone(),
                        ServedFactors {
                            experts: pairs,
                            fused,
                        },
                    );
                }
            }
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                %precision,
                "base loaded for serving elites from factors"
            );
            *slot = Some(ServedBase {
                device: device.clone(),
                precision,
                model,
                factors,
            });
        }
        match slot.as_ref() {
            Some(base) => f(base),
            None => Err(ServeError::Engine("the served base is missing".to_string())),
        }
    }

    /// `elite` served from factors: a model that shares the base's dense weights (loaded
    /// once) and adds, per matrix, `Σ_k x·V_k·diag(c_k)·U_kᵀ` over the experts its genome
    /// uses; its 1-D tensors are its own. Exact in exact arithmetic: it computes what the
    /// materialised elite computes, up to rounding.
    pub fn factored(&self, elite: &str, device: &Device, precision: Precision) -> Result<Llama> {
        self.with_served_base(device, precision, |base| {
            let delta = self.delta(elite, &base.factors, device, precision)?;
            Ok(base.model.with_delta(&delta)?)
        })
    }
}

impl EliteSource for GenomeSwarm {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn load(&self, elite: &str, device: &Device, precision: Precision) -> Result<Llama> {
        let weights = self.materialise(elite, device)?;
        Ok(Llama::load(&weights, &self.config, device, precision)?)
    }

    fn factor_cost(&self) -> Option<f64> {
        let (mut low_rank, mut dense) = (0usize, 0usize);
        for t in self.factors.tensors() {
            if let (TensorFactors::Svd(experts), [m, n]) = (&t.factors, t.shape.as_slice()) {
                low_rank += experts.iter().map(|e| e.s.len() * (m + n)).sum::<usize>();
                dense += m * n;
            }
        }
        (dense > 0).then(|| low_rank as f64 / dense as f64)
    }

    fn load_factored(
        &self,
        elite: &str,
        device: &Device,
        precision: Precision,
    ) -> Result<Option<Llama>> {
        self.factored(elite, device, precision).map(Some)
    }

    fn prepare_factored(&self, device: &Device, precision: Precision) -> Result<()> {
        self.with_served_base(device, precision, |_| Ok(()))
    }
}

/// A swarm directory, opened and checked: what the router needs ([`SwarmInfo`]) and what
/// the engine needs ([`LoadedSwarm`], built by [`OpenedSwarm::into_loaded`]).
pub struct OpenedSwarm {
    pub manifest: SwarmManifest,
    pub info: SwarmInfo,
    pub swarm: GenomeSwarm,
    pretrained_tokenizer: swarm_model::Tokenizer,
    template: swarm_model::ChatTemplate,
    stop_ids: Vec<u32>,
}

fn candle(e: candle_core::Error) -> ServeError {
    ServeError::Model(e.into())
}

fn in_dir(dir: &Path, what: &str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Swarm(format!("{}: {what}: {e}", dir.display()))
}

/// Opens the swarm in `dir`: manifest, base (hash-checked), factors, genomes.
pub fn open_swarm(dir: &Path) -> Result<OpenedSwarm> {
    let started = std::time::Instant::now();
    if !dir.join(SWARM_MANIFEST_FILE).is_file() {
        return Err(ServeError::Swarm(format!(
            "{} is not a swarm directory: it has no {SWARM_MANIFEST_FILE} (write one with \
             `swarm evolve`)",
            dir.display()
        )));
    }
    let manifest = SwarmManifest::load(dir)?;
    let factors_path = manifest.factors_path(dir);
    let genomes_path = dir.join(SWARM_GENOMES_FILE);
    for path in [&factors_path, &genomes_path] {
        if !path.is_file() {
            return Err(ServeError::Swarm(format!(
                "{} is missing: a swarm directory holds {SWARM_MANIFEST_FILE}, {} and \
                 {SWARM_GENOMES_FILE}",
                path.display(),
                manifest.factors.file
            )));
        }
    }

    let reference = swarm_model::expand_toy_reference(&manifest.base.reference);
    let pretrained = Pretrained::open(&reference)
        .map_err(|e| in_dir(dir, &format!("cannot open the base `{reference}`"), e))?;
    let factors = FactorSet::load(&factors_path)?;
    if factors.id() != manifest.factors.id {
        return Err(ServeError::Swarm(format!(
            "{}: factor set {} does not match the manifest's {}",
            factors_path.display(),
            factors.id(),
            manifest.factors.id
        )));
    }
    if factors.meta().base_hash != manifest.base.hash {
        return Err(ServeError::Swarm(format!(
            "{}: the factors were made from base {}, the manifest names base {}",
            dir.display(),
            factors.meta().base_hash,
            manifest.base.hash
        )));
    }
    // The base on disk must be the one the factors were made from: any other base would
    // serve different models under the same elite ids.
    factors
        .verify_base(pretrained.weights.as_ref())
        .map_err(|e| in_dir(dir, "the base does not match the swarm", e))?;
    let mut genomes: BTreeMap<String, Genome> =
        swarm_merge::load_genomes(&genomes_path, factors.layout())?
            .into_iter()
            .collect();
    for e in &manifest.elites {
        if !genomes.contains_key(&e.id) {
            return Err(ServeError::Swarm(format!(
                "{}: elite `{}` of the manifest has no genome",
                genomes_path.display(),
                e.id
            )));
        }
    }
    // Genomes of no listed elite (none in a swarm as exported) are not served.
    genomes.retain(|id, _| manifest.elite(id).is_some());

    let template = pretrained.chat_template()?;
    let stop_ids = template.stop_token_ids(&pretrained.tokenizer);
    let info = SwarmInfo {
        name: manifest.name.clone(),
        base: manifest.base.reference.clone(),
        skills: manifest.skill_names(),
        elites: manifest
            .elites
            .iter()
            .map(|e| EliteInfo {
                id: e.id.clone(),
                scores: e.scores.clone(),
            })
            .collect(),
        created: crate::server::unix_now(),
    };
    let swarm = GenomeSwarm::new(
        pretrained.config.clone(),
        pretrained.weights,
        factors,
        genomes,
    );
    tracing::info!(
        swarm = %manifest.name,
        elites = manifest.elites.len(),
        factor_mb = swarm.factor_bytes() as f64 / 1e6,
        seconds = started.elapsed().as_secs_f64(),
        "swarm opened"
    );
    Ok(OpenedSwarm {
        manifest,
        info,
        swarm,
        pretrained_tokenizer: pretrained.tokenizer,
        template,
        stop_ids,
    })
}

impl OpenedSwarm {
    /// Writes `elite` (an elite id) as a standalone HF model dir that other tools load
    /// unchanged: its weights materialised straight into `model.safetensors` (in
    /// `out.dtype`), the base's `config.json`, tokenizer files and chat template beside them.
    /// The dir is built beside `out.dir` and renamed into place, so a failure leaves nothing
    /// behind; an existing `out.dir` is refused unless `out.overwrite`.
    pub fn export_elite(&self, elite: &str, out: &swarm_merge::DirOutput) -> Result<()> {
        let swarm = &self.swarm;
        let genome = swarm.genome_of(elite)?;
        // The dir holds the factor set's tensors: a base tensor outside it would be lost.
        if let Some(missing) = swarm
            .base
            .names()
            .into_iter()
            .find(|name| swarm.factors.tensor(name).is_none())
        {
            return Err(ServeError::Swarm(format!(
                "cannot export `{elite}`: the base's tensor `{missing}` is not in the swarm's \
                 factor set (a swarm from `swarm evolve` covers every tensor)"
            )));
        }
        let mut config = swarm.config.clone();
        config.torch_dtype = swarm_merge::torch_dtype_name(out.dtype).to_string();
        swarm_merge::materialise_to_dir(
            swarm.base.as_ref(),
            &swarm.factors,
            genome,
            &Device::Cpu,
            out,
            |staging| {
                swarm_model::write_model_metadata(
                    staging,
                    &config,
                    &self.pretrained_tokenizer,
                    Some(self.template.source()),
                )
                .map_err(swarm_merge::MergeError::from)
            },
        )?;
        Ok(())
    }

    /// The engine's view: elites materialised on demand into an LRU of `memory_budget`
    /// bytes or served from factors, as `policy` decides; `warm` elites materialised first
    /// (the router's default choice, so the first request does not wait for it).
    pub fn into_loaded(
        self,
        device: Device,
        precision: Precision,
        memory_budget: usize,
        policy: ServingPolicy,
        warm: Vec<String>,
    ) -> LoadedSwarm {
        LoadedSwarm {
            elites: EliteCache::new(Box::new(self.swarm), device, precision, memory_budget)
                .with_policy(policy),
            tokenizer: self.pretrained_tokenizer,
            template: self.template,
            stop_ids: self.stop_ids,
            warm,
        }
    }
}
