//! A swarm directory (`agents/<name>/`, written by `swarm evolve`) as an [`EliteSource`]:
//! the base and the experts' factors are loaded once, every elite is a genome, and an
//! elite's dense weights are materialised (`W_base + Σ_k U_k diag(c_k) V_kᵀ`, design §1)
//! when the [`EliteCache`] asks for them.
//!
//! Opening checks everything a bad directory can get wrong before the server listens: the
//! manifest (format, ids, scores), the base (content hash against the manifest and the
//! factors), the factors (the id the manifest names) and the genomes (one per elite, of the
//! factors' layout), so that `swarm serve --swarm DIR` fails at once with the reason.

use candle_core::Device;
use std::collections::BTreeMap;
use std::path::Path;
use swarm_merge::{FactorSet, Genome, SwarmManifest, SWARM_GENOMES_FILE, SWARM_MANIFEST_FILE};
use swarm_model::{Llama, LlamaConfig, Precision, Pretrained, TensorSource, Weights};

use crate::error::{Result, ServeError};
use crate::model_engine::LoadedSwarm;
use crate::registry::{EliteCache, EliteSource};
use crate::router::{EliteInfo, SwarmInfo};

/// The base, the factors and every elite's genome of one swarm.
pub struct GenomeSwarm {
    config: LlamaConfig,
    base: Box<dyn TensorSource>,
    factors: FactorSet,
    genomes: BTreeMap<String, Genome>,
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
        let genome = self
            .genomes
            .get(elite)
            .ok_or_else(|| ServeError::Swarm(format!("no elite `{elite}` in this swarm")))?;
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

impl EliteSource for GenomeSwarm {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn load(&self, elite: &str, device: &Device, precision: Precision) -> Result<Llama> {
        let weights = self.materialise(elite, device)?;
        Ok(Llama::load(&weights, &self.config, device, precision)?)
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
    let swarm = GenomeSwarm {
        config: pretrained.config.clone(),
        base: pretrained.weights,
        factors,
        genomes,
    };
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
    /// The engine's view: elites materialised on demand into an LRU of `memory_budget`
    /// bytes; `warm` elites first (the router's default choice, so the first request does
    /// not wait for it).
    pub fn into_loaded(
        self,
        device: Device,
        precision: Precision,
        memory_budget: usize,
        warm: Vec<String>,
    ) -> LoadedSwarm {
        LoadedSwarm {
            elites: EliteCache::new(Box::new(self.swarm), device, precision, memory_budget),
            tokenizer: self.pretrained_tokenizer,
            template: self.template,
            stop_ids: self.stop_ids,
            warm,
        }
    }
}
