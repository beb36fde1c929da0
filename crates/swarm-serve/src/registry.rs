//! The elites the engine can run: a [`EliteSource`] says how to build one elite's weights,
//! and [`EliteCache`] keeps the hot ones as ready models in an LRU bounded by a memory
//! budget.
//!
//! An elite is a genome (design §1); its dense weights are materialised on first use and
//! dropped when the budget is needed for another elite and no running sequence uses them
//! (a running batch holds an `Arc` of its model, so an elite in use is never freed under it).

use std::sync::Arc;

use candle_core::Device;
use swarm_model::{Llama, LlamaConfig, Precision, TensorSource};

use crate::error::{Result, ServeError};
use crate::router::SwarmInfo;

/// How to build each elite's weights. Implementations: [`SingleModel`] (one model as a
/// one-elite swarm) and, with genomes, a source that materialises `W_base + Σ U c Vᵀ`.
pub trait EliteSource: Send + Sync {
    /// The architecture every elite shares.
    fn config(&self) -> &LlamaConfig;
    /// Builds `elite`'s model on `device` in `precision`.
    fn load(&self, elite: &str, device: &Device, precision: Precision) -> Result<Llama>;
}

/// One model served as a swarm of one elite, or, for load tests of multi-elite serving, as
/// several elites that are copies of it (each materialised separately, grouped separately
/// in batches: the serving costs of distinct elites with the numbers of one).
pub struct SingleModel {
    pub elites: Vec<String>,
    pub config: LlamaConfig,
    pub weights: Box<dyn TensorSource>,
}

impl EliteSource for SingleModel {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn load(&self, elite: &str, device: &Device, precision: Precision) -> Result<Llama> {
        if !self.elites.iter().any(|e| e == elite) {
            return Err(ServeError::Swarm(format!(
                "no elite `{elite}` in this swarm"
            )));
        }
        Ok(Llama::load(
            self.weights.as_ref(),
            &self.config,
            device,
            precision,
        )?)
    }
}

/// Bytes a dense copy of a model takes in `precision` (parameters × element size).
pub fn model_bytes(config: &LlamaConfig, precision: Precision) -> usize {
    let params: usize = config
        .tensor_shapes()
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    match precision {
        // 32 int8 weights and one f16 scale per block.
        Precision::Q8_0 => params * 34 / 32,
        p => params * p.activation_dtype().size_in_bytes(),
    }
}

struct Resident {
    elite: String,
    model: Arc<Llama>,
    last_used: u64,
}

/// Hot elites as ready models, least recently used evicted first, within `budget_bytes`.
pub struct EliteCache {
    source: Box<dyn EliteSource>,
    device: Device,
    precision: Precision,
    budget_bytes: usize,
    elite_bytes: usize,
    resident: Vec<Resident>,
    clock: u64,
    /// Materialisations so far (for metrics and tests).
    pub loads: u64,
}

impl EliteCache {
    pub fn new(
        source: Box<dyn EliteSource>,
        device: Device,
        precision: Precision,
        budget_bytes: usize,
    ) -> Self {
        let elite_bytes = model_bytes(source.config(), precision);
        Self {
            source,
            device,
            precision,
            budget_bytes,
            elite_bytes,
            resident: Vec::new(),
            clock: 0,
            loads: 0,
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        self.source.config()
    }

    /// Elites resident now.
    pub fn resident(&self) -> usize {
        self.resident.len()
    }

    /// Bytes of resident weights.
    pub fn resident_bytes(&self) -> usize {
        self.resident.len() * self.elite_bytes
    }

    /// Whether `elite` is resident.
    pub fn is_resident(&self, elite: &str) -> bool {
        self.resident.iter().any(|r| r.elite == elite)
    }

    /// How many more elites can be materialised now without going over the budget: free
    /// room plus resident elites that no running sequence uses (evictable).
    pub fn room_for_new(&self) -> usize {
        let fit = self
            .budget_bytes
            .checked_div(self.elite_bytes)
            .unwrap_or(usize::MAX);
        let free = fit.saturating_sub(self.resident.len());
        let idle = self
            .resident
            .iter()
            .filter(|r| Arc::strong_count(&r.model) == 1)
            .count();
        // At least one elite may always be resident, whatever the budget.
        if self.resident.is_empty() {
            return free.max(1);
        }
        free + idle
    }

    /// The model of `elite`, materialised if it is not resident.
    pub fn get(&mut self, elite: &str) -> Result<Arc<Llama>> {
        self.clock += 1;
        if let Some(r) = self.resident.iter_mut().find(|r| r.elite == elite) {
            r.last_used = self.clock;
            return Ok(r.model.clone());
        }
        self.make_room();
        let started = std::time::Instant::now();
        let model = Arc::new(self.source.load(elite, &self.device, self.precision)?);
        self.loads += 1;
        tracing::info!(
            elite,
            seconds = started.elapsed().as_secs_f64(),
            resident = self.resident.len() + 1,
            "elite materialised"
        );
        self.resident.push(Resident {
            elite: elite.to_string(),
            model: model.clone(),
            last_used: self.clock,
        });
        Ok(model)
    }

    /// Evicts least recently used elites not in use until one more fits the budget.
    fn make_room(&mut self) {
        while !self.resident.is_empty()
            && (self.resident.len() + 1) * self.elite_bytes > self.budget_bytes
        {
            let victim = self
                .resident
                .iter()
                .enumerate()
                .filter(|(_, r)| Arc::strong_count(&r.model) == 1)
                .min_by_key(|(_, r)| r.last_used)
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    let r = self.resident.swap_remove(i);
                    tracing::info!(elite = %r.elite, "elite evicted");
                }
                None => {
                    tracing::warn!(
                        budget = self.budget_bytes,
                        "every resident elite is in use: over the memory budget"
                    );
                    return;
                }
            }
        }
    }
}

/// The one-elite swarm of a plain model: its single elite is the model itself.
pub fn single_model_swarm(name: &str, base: &str) -> SwarmInfo {
    copies_swarm(&[name.to_string()], base)
}

/// Elite ids of `n` copies of a model: `name`, `name~1`, ... `name~{n-1}`.
pub fn copy_ids(name: &str, n: usize) -> Vec<String> {
    (0..n.max(1))
        .map(|i| {
            if i == 0 {
                name.to_string()
            } else {
                format!("{name}~{i}")
            }
        })
        .collect()
}

/// A swarm whose elites are copies of one model (no scores: the router takes the first).
pub fn copies_swarm(ids: &[String], base: &str) -> SwarmInfo {
    SwarmInfo {
        name: "swarm".to_string(),
        base: base.to_string(),
        skills: Vec::new(),
        elites: ids
            .iter()
            .map(|id| crate::router::EliteInfo {
                id: id.clone(),
                scores: Default::default(),
            })
            .collect(),
        created: crate::server::unix_now(),
    }
}
