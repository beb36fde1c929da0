//! The elites the engine can run: a [`EliteSource`] says how to build one elite's weights,
//! and [`EliteCache`] keeps the hot ones as ready models in an LRU bounded by a memory
//! budget.
//!
//! An elite is a genome (design §1). A [`ServingPolicy`] says how an elite that is not
//! resident is served: its dense weights materialised into the LRU (dropped when the budget
//! is needed for another elite and no running sequence uses them: a running batch holds an
//! `Arc` of its model, so an elite in use is never freed under it), or straight from the
//! experts' factors (the base's dense weights shared, a low-rank delta per matrix: no
//! materialisation, no memory, slower per token), or the first until the elite has proved
//! hot (the default; docs/performance.md, "Serving from factors vs materialising", has the
//! measurements behind it).

use std::collections::HashMap;
use std::str::FromStr;
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
    /// What a row served from factors costs beside a dense one: the multiply-adds of the
    /// low-rank products per row (every expert's factors of every factored matrix, `Σ_k r_k
    /// (m + n)`) over those of the dense products of the same matrices (`Σ m n`); `None`
    /// for a source without factors. [`ServingPolicy::Auto`] derives its row threshold
    /// from it.
    fn factor_cost(&self) -> Option<f64> {
        None
    }
    /// Builds `elite`'s model from factors (the base's dense weights shared, low-rank
    /// deltas added), or `None` when this source has no factors: its elites are always
    /// materialised.
    fn load_factored(
        &self,
        _elite: &str,
        _device: &Device,
        _precision: Precision,
    ) -> Result<Option<Llama>> {
        Ok(None)
    }
    /// Loads what every elite served from factors shares (the dense base), so that the
    /// first one does not wait for it.
    fn prepare_factored(&self, _device: &Device, _precision: Precision) -> Result<()> {
        Ok(())
    }
}

/// How the [`EliteCache`] serves an elite that is not resident (elites resident in the LRU
/// are always served from their dense weights).
///
/// The trade-off (docs/performance.md, "Serving from factors vs materialising" and "Mixed
/// batches"): a materialisation costs seconds and blocks the scheduler, and a dense elite
/// takes a whole model's memory and a forward pass of its own every step; the elites served
/// from factors cost no time to set up and almost no memory, and all share one forward pass
/// per step (the base's products once for all their rows, the deltas' products once per
/// matrix). So what materialising an elite saves per step is only its rows' share of that
/// mixed pass, against the fixed cost of a dense pass of its own: it pays for an elite that
/// carries many rows (measured on 2 cores, SmolLM2-135M at rank 64: break-even near 14 rows
/// while other elites keep the mixed pass running), or that has the mixed batch to itself
/// (materialising then removes the mixed pass, and a dense pass is 1.5-1.8x cheaper at any
/// row count), and not for many elites with a row or two each (8 x 1 and 4 x 2 rows cost
/// 1.7-2.2x the CPU materialised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingPolicy {
    /// Materialise every elite into the LRU (an elite waits while the budget is taken by
    /// elites in use).
    Materialise,
    /// Serve every non-resident elite from factors; never materialise (sources without
    /// factors are materialised all the same).
    Factors,
    /// Serve an elite from factors until both
    ///
    /// - it has generated `materialise_after` tokens from factors since it was last evicted
    ///   (a prompt token counts as
    ///   1/[`PROMPT_TOKENS_PER_TOKEN`](ServingPolicy::PROMPT_TOKENS_PER_TOKEN) of one): the
    ///   ski-rental part, so that the seconds a materialisation costs are only spent on an
    ///   elite that has already been served a while (an elite that goes cold early has
    ///   cost at most that many tokens' extra time; the threshold sits in the measured
    ///   single-elite break-evens), and
    /// - over its recent decode steps (an exponential average over about
    ///   [`ROW_AVERAGE_STEPS`](ServingPolicy::ROW_AVERAGE_STEPS)) it carried at least
    ///   `min_rows` rows of the mixed batch, or had the mixed batch to itself in at least
    ///   half of them: the mixed-batch part, so that an elite is only taken out of the
    ///   shared pass when a dense pass of its own is cheaper than its rows' share of it;
    ///
    /// then materialise it into the LRU if the budget has room (else keep serving it from
    /// factors). `min_rows: None` (the default) takes the row threshold from the factors'
    /// cost ([`min_rows_for`](ServingPolicy::min_rows_for)); `Some(0)` is the rule before
    /// mixed batches (tokens only).
    Auto {
        materialise_after: u64,
        min_rows: Option<u32>,
    },
}

impl ServingPolicy {
    /// `Auto`'s default threshold, in generated tokens: within the break-evens measured on
    /// SmolLM2-135M at batch 1 (12-86 tokens at full rank, 9-41 or never at rank 64; 37-348
    /// at batch 8), docs/performance.md, "Serving from factors vs materialising".
    pub const DEFAULT_MATERIALISE_AFTER: u64 = 64;

    /// `Auto`'s row threshold for factors that cost
    /// [`REFERENCE_FACTOR_COST`](Self::REFERENCE_FACTOR_COST), and for sources whose cost
    /// is unknown: above the measured break-even of an elite sharing the mixed batch with
    /// others (about 14 rows on SmolLM2-135M at rank 64: a dense pass costs ~0.030 CPU s
    /// plus ~0.0033 s a row, a row of the mixed pass ~0.0055 s), rounded up so that a wrong
    /// guess errs towards factors, which cost no memory and no stall. Through the engine
    /// (`examples/policy_bench.rs`, one run each on a loaded machine) 16 did not lose to 8:
    /// with an elite of 12 rows beside six of one, 8 materialised it and spent 8% more CPU
    /// than 16, which kept it in the mixed batch (docs/performance.md, "Which is faster
    /// when").
    pub const DEFAULT_MIN_ROWS: u32 = 16;

    /// The [`factor_cost`](EliteSource::factor_cost) of the swarm on which
    /// [`DEFAULT_MIN_ROWS`](Self::DEFAULT_MIN_ROWS) was measured: SmolLM2-135M, three experts
    /// factorised at rank 64 (the embedding included).
    pub const REFERENCE_FACTOR_COST: f64 = 0.507;

    /// `Auto`'s row threshold for factors that cost `factor_cost` (see
    /// [`EliteSource::factor_cost`]): [`DEFAULT_MIN_ROWS`](Self::DEFAULT_MIN_ROWS) scaled by
    /// `√(REFERENCE_FACTOR_COST / factor_cost)`, rounded up, at least 1. Costlier factors
    /// make a row of the mixed pass dearer, so an elite's own dense pass pays with fewer
    /// rows; the square root is the fit through the two break-evens measured on the same
    /// machine (docs/performance.md, "`auto` and the factors' rank"): ~18 rows at rank 64,
    /// 5-7 at full rank (8.2x the cost), where the per-row cost of the mixed pass grew ~2x,
    /// not 8x (it reads the factors once per step, whatever the rows). Full rank gives 6.
    pub fn min_rows_for(factor_cost: Option<f64>) -> u32 {
        match factor_cost {
            Some(cost) if cost.is_finite() && cost > 0.0 => {
                let rows =
                    f64::from(Self::DEFAULT_MIN_ROWS) * (Self::REFERENCE_FACTOR_COST / cost).sqrt();
                // Within [1, 1024]: the cast cannot overflow.
                rows.ceil().clamp(1.0, 1024.0) as u32
            }
            _ => Self::DEFAULT_MIN_ROWS,
        }
    }

    /// How many recent decode steps `Auto`'s row average weighs (exponentially: each step
    /// counts 1/this of the average): enough to ride out one job ending or starting, few
    /// enough to follow a change of load within a second or two.
    pub const ROW_AVERAGE_STEPS: u32 = 8;

    /// How many prompt tokens count as one generated token for `Auto`: what a prompt token
    /// costs more from factors than dense is about a tenth of what a generated token costs
    /// more (prefill runs matrix-matrix products, where the deltas' extra FLOP are cheap;
    /// the prefill break-evens measured were 3-31x the decode ones, ~10x in the middle;
    /// docs/performance.md).
    pub const PROMPT_TOKENS_PER_TOKEN: u64 = 10;
}

impl Default for ServingPolicy {
    fn default() -> Self {
        ServingPolicy::Auto {
            materialise_after: Self::DEFAULT_MATERIALISE_AFTER,
            min_rows: None,
        }
    }
}

impl FromStr for ServingPolicy {
    type Err = ServeError;
    /// `materialise`, `factors`, `auto`, `auto:<tokens>` (the row threshold from the
    /// factors' cost) or `auto:<tokens>:<rows>`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let bad = || {
            ServeError::Config(format!(
                "elite serving policy `{s}`: expected `materialise`, `factors`, `auto`, \
                 `auto:<tokens>` or `auto:<tokens>:<rows>`"
            ))
        };
        match s.as_str() {
            "materialise" | "materialize" | "dense" => Ok(ServingPolicy::Materialise),
            "factors" | "factored" => Ok(ServingPolicy::Factors),
            "auto" => Ok(ServingPolicy::default()),
            other => {
                let rest = other.strip_prefix("auto:").ok_or_else(bad)?;
                let (tokens, rows) = match rest.split_once(':') {
                    Some((t, r)) => (t, Some(r)),
                    None => (rest, None),
                };
                let materialise_after = tokens.parse::<u64>().map_err(|_| bad())?;
                let min_rows = match rows {
                    Some(r) => Some(r.parse::<u32>().map_err(|_| bad())?),
                    None => None,
                };
                Ok(ServingPolicy::Auto {
                    materialise_after,
                    min_rows,
                })
            }
        }
    }
}

impl std::fmt::Display for ServingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServingPolicy::Materialise => f.write_str("materialise"),
            ServingPolicy::Factors => f.write_str("factors"),
            ServingPolicy::Auto {
                materialise_after,
                min_rows: Some(rows),
            } => write!(f, "auto:{materialise_after}:{rows}"),
            ServingPolicy::Auto {
                materialise_after,
                min_rows: None,
            } => write!(f, "auto:{materialise_after}"),
        }
    }
}

/// What `Auto` knows of a non-resident elite since it was last evicted.
#[derive(Debug, Clone, Copy, Default)]
struct Heat {
    /// Tokens run from factors, in units of one prompt token.
    units: u64,
    /// Decode steps seen in the mixed batch (the averages below start at the first).
    steps: u64,
    /// Its rows per decode step, averaged over its recent steps.
    rows: f64,
    /// The fraction of its recent decode steps in which its rows were all the mixed
    /// batch's rows.
    alone: f64,
}

impl Heat {
    fn decode_step(&mut self, rows: usize, batch_rows: usize) {
        self.units += rows as u64 * ServingPolicy::PROMPT_TOKENS_PER_TOKEN;
        let alone = if rows >= batch_rows { 1.0 } else { 0.0 };
        let rows = rows as f64;
        if self.steps == 0 {
            (self.rows, self.alone) = (rows, alone);
        } else {
            let w = 1.0 / f64::from(ServingPolicy::ROW_AVERAGE_STEPS);
            self.rows += w * (rows - self.rows);
            self.alone += w * (alone - self.alone);
        }
        self.steps += 1;
    }

    /// Whether `Auto { materialise_after, min_rows }` would materialise this elite (room
    /// in the budget aside).
    fn is_hot(&self, materialise_after: u64, min_rows: u32) -> bool {
        let served =
            self.units >= materialise_after.saturating_mul(ServingPolicy::PROMPT_TOKENS_PER_TOKEN);
        // Alone in a step, materialising would save the mixed pass's fixed cost (~0.046 CPU s
        // against ~0.030 for a dense pass, docs/performance.md): worth it for a one-row elite
        // alone in about 60% of its steps, less with more rows; half is the round middle.
        let carries = self.rows >= f64::from(min_rows) || self.alone >= 0.5;
        served && carries
    }
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

/// Hot elites as ready models, least recently used evicted first, within `budget_bytes`;
/// the others served from factors or materialised, as the [`ServingPolicy`] says.
pub struct EliteCache {
    source: Box<dyn EliteSource>,
    device: Device,
    precision: Precision,
    budget_bytes: usize,
    elite_bytes: usize,
    resident: Vec<Resident>,
    clock: u64,
    policy: ServingPolicy,
    /// `Auto`'s row threshold: the policy's, or the one for the source's factors.
    auto_min_rows: u32,
    /// Elites served from factors, built once each (they hold no matrices of their own).
    factored: HashMap<String, Arc<Llama>>,
    /// Whether the source has factors (`None` until asked).
    has_factors: Option<bool>,
    /// What each non-resident elite has run since it was last resident (for `Auto`).
    heat: HashMap<String, Heat>,
    /// Materialisations so far (for metrics and tests).
    pub loads: u64,
    /// Elite models built from factors so far (for metrics and tests).
    pub factored_builds: u64,
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
            policy: ServingPolicy::Materialise,
            auto_min_rows: ServingPolicy::DEFAULT_MIN_ROWS,
            factored: HashMap::new(),
            has_factors: None,
            heat: HashMap::new(),
            loads: 0,
            factored_builds: 0,
        }
    }

    /// Serves non-resident elites as `policy` says (the default of a new cache is
    /// [`ServingPolicy::Materialise`]).
    pub fn with_policy(mut self, policy: ServingPolicy) -> Self {
        self.policy = policy;
        if let ServingPolicy::Auto { min_rows, .. } = policy {
            self.auto_min_rows = min_rows.unwrap_or_else(|| {
                let cost = self.source.factor_cost();
                let rows = ServingPolicy::min_rows_for(cost);
                tracing::info!(
                    factor_cost = cost.unwrap_or(f64::NAN),
                    min_rows = rows,
                    "auto: the row threshold for this swarm's factors"
                );
                rows
            });
        }
        self
    }

    /// The rows per decode step an elite must carry before `Auto` materialises it (see
    /// [`ServingPolicy::Auto`]); `None` under the other policies.
    pub fn auto_min_rows(&self) -> Option<u32> {
        matches!(self.policy, ServingPolicy::Auto { .. }).then_some(self.auto_min_rows)
    }

    pub fn policy(&self) -> ServingPolicy {
        self.policy
    }

    /// Loads what elites served from factors share, when the policy may serve from factors
    /// (so that the first such request does not wait for it).
    pub fn prepare(&mut self) -> Result<()> {
        if self.policy != ServingPolicy::Materialise {
            self.source.prepare_factored(&self.device, self.precision)?;
        }
        Ok(())
    }

    /// Elites built from factors and kept (each holds only its coefficients and 1-D
    /// tensors; the base and the factors are shared).
    pub fn factored(&self) -> usize {
        self.factored.len()
    }

    /// Counts the `prompt` tokens of `elite` prefilled from factors (for `Auto`).
    pub fn record_prefill(&mut self, elite: &str, prompt: usize) {
        if !self.is_resident(elite) {
            self.heat.entry(elite.to_string()).or_default().units += prompt as u64;
        }
    }

    /// Counts one decode step of the mixed batch in which `elite` ran `rows` of its
    /// `batch_rows` rows (for `Auto`: its tokens, and how many rows it carries).
    pub fn record_decode(&mut self, elite: &str, rows: usize, batch_rows: usize) {
        if !self.is_resident(elite) {
            self.heat
                .entry(elite.to_string())
                .or_default()
                .decode_step(rows, batch_rows);
        }
    }

    /// Whether serving `elite` now needs room in the memory budget: it is not resident and
    /// can only be served dense (the policy materialises, or the source has no factors).
    /// Under `Factors` and `Auto` an elite never waits: without room it is served from
    /// factors.
    pub fn needs_room(&self, elite: &str) -> bool {
        !self.is_resident(elite)
            && (self.policy == ServingPolicy::Materialise || self.has_factors == Some(false))
    }

    /// Whether `get(elite)` would serve it from factors now.
    fn wants_factors(&self, elite: &str) -> bool {
        match self.policy {
            ServingPolicy::Materialise => false,
            ServingPolicy::Factors => true,
            ServingPolicy::Auto {
                materialise_after, ..
            } => {
                let min_rows = self.auto_min_rows;
                let hot = self
                    .heat
                    .get(elite)
                    .is_some_and(|h| h.is_hot(materialise_after, min_rows));
                !hot || self.room_for_new() == 0
            }
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

    /// The model of `elite`: resident, else served from factors or materialised as the
    /// policy says.
    pub fn get(&mut self, elite: &str) -> Result<Arc<Llama>> {
        self.clock += 1;
        if let Some(r) = self.resident.iter_mut().find(|r| r.elite == elite) {
            r.last_used = self.clock;
            return Ok(r.model.clone());
        }
        if self.has_factors != Some(false) && self.wants_factors(elite) {
            if let Some(model) = self.factored.get(elite) {
                return Ok(model.clone());
            }
            let started = std::time::Instant::now();
            match self
                .source
                .load_factored(elite, &self.device, self.precision)?
            {
                Some(model) => {
                    self.has_factors = Some(true);
                    self.factored_builds += 1;
                    let model = Arc::new(model);
                    tracing::info!(
                        elite,
                        seconds = started.elapsed().as_secs_f64(),
                        "elite served from factors"
                    );
                    self.factored.insert(elite.to_string(), model.clone());
                    return Ok(model);
                }
                None => self.has_factors = Some(false),
            }
        }
        self.materialise(elite)
    }

    /// Materialises `elite` into the LRU (evicting idle elites to make room), whatever the
    /// policy; a resident elite is returned as it is.
    pub fn materialise(&mut self, elite: &str) -> Result<Arc<Llama>> {
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
        // Resident now: its factored model (if any) is dropped once its batch ends, and what
        // `Auto` knows of it starts again from nothing when it is evicted.
        self.factored.remove(elite);
        self.heat.remove(elite);
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
