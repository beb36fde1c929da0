//! Plain MAP-Elites with a Gaussian emitter over a real vector, on the same [`GridArchive`], to
//! compare with the field's reference library (pyribs' `GridArchive` + `GaussianEmitter`).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::archive::{BehaviourDim, EliteMeta, GridArchive, InsertOutcome};
use crate::error::{finite, same_len, QdError, Result};
use crate::metrics::{GenerationMetrics, MetricsHistory};

/// Settings of a MAP-Elites run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapElitesConfig {
    /// Behaviour (measure) dimensions of the archive.
    pub dims: Vec<BehaviourDim>,
    /// Length of a solution.
    pub solution_dim: usize,
    /// Standard deviation of the isotropic Gaussian mutation.
    pub sigma: f64,
    /// Centre of the Gaussian from which solutions are drawn while the archive is empty.
    pub x0: Vec<f64>,
    /// Solutions per iteration.
    pub batch_size: usize,
    /// Subtracted from each objective in QD-scores.
    pub qd_score_offset: f64,
    /// Record metrics every this many iterations (1: every iteration).
    pub metrics_every: u64,
    /// Seed of the run's random number generator.
    pub seed: u64,
}

impl MapElitesConfig {
    fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason| {
            Err(QdError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.solution_dim == 0 {
            return bad("solution_dim", "0".into(), "must be at least 1");
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return bad("sigma", self.sigma.to_string(), "must be finite and >= 0");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "must be at least 1");
        }
        if self.metrics_every == 0 {
            return bad("metrics_every", "0".into(), "must be at least 1");
        }
        if !self.qd_score_offset.is_finite() {
            return bad(
                "qd_score_offset",
                self.qd_score_offset.to_string(),
                "must be finite",
            );
        }
        same_len("x0", self.solution_dim, self.x0.len())?;
        for &v in &self.x0 {
            finite("x0", v)?;
        }
        Ok(())
    }
}

/// Counts of what one [`MapElites::tell`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TellSummary {
    /// Solutions that filled an empty cell.
    pub new_cells: usize,
    /// Solutions that replaced a worse elite.
    pub improved: usize,
}

/// MAP-Elites, batch by batch, as pyribs runs it: [`ask`](Self::ask) draws `batch_size`
/// parents uniformly (with replacement) from the archive as it is, adds `N(0, sigma^2 I)` to
/// each; [`tell`](Self::tell) inserts the evaluated batch. While the archive is empty the
/// parents are `x0`. Solutions are not clipped (pyribs' sphere benchmark sets no bounds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapElites {
    config: MapElitesConfig,
    archive: GridArchive<Vec<f64>>,
    rng: ChaCha8Rng,
    iteration: u64,
    evaluations: u64,
    /// The batch asked and not yet told: solutions (row-major) and each row's parent id.
    batch: Vec<f64>,
    batch_parents: Vec<Option<u64>>,
    history: MetricsHistory,
}

impl MapElites {
    /// A run with an empty archive.
    pub fn new(config: MapElitesConfig) -> Result<Self> {
        config.validate()?;
        let archive = GridArchive::new(config.dims.clone())?;
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            history: MetricsHistory::new(vec!["archive".into()], config.qd_score_offset),
            archive,
            config,
            iteration: 0,
            evaluations: 0,
            batch: Vec::new(),
            batch_parents: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MapElitesConfig {
        &self.config
    }

    /// The archive.
    pub fn archive(&self) -> &GridArchive<Vec<f64>> {
        &self.archive
    }

    /// Iterations completed.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Metrics so far.
    pub fn history(&self) -> &MetricsHistory {
        &self.history
    }

    /// Draws a batch; returns it row-major (`batch_size` rows of `solution_dim`). Asking again
    /// before telling replaces the batch.
    pub fn ask(&mut self) -> &[f64] {
        let (n, d) = (self.config.batch_size, self.config.solution_dim);
        self.batch.clear();
        self.batch.reserve(n * d);
        self.batch_parents.clear();
        for _ in 0..n {
            let parent = self.archive.sample_uniform(&mut self.rng);
            let (centre, id) = match parent {
                Some(e) => (e.genome.as_slice(), Some(e.meta.id)),
                None => (self.config.x0.as_slice(), None),
            };
            let sigma = self.config.sigma;
            let rng = &mut self.rng;
            self.batch.extend(centre.iter().map(|&c| {
                let z: f64 = StandardNormal.sample(rng);
                c + sigma * z
            }));
            self.batch_parents.push(id);
        }
        &self.batch
    }

    /// Inserts the evaluated batch: `objectives[i]` and `measures[i * m..(i + 1) * m]` belong
    /// to row `i` of the last [`ask`](Self::ask).
    pub fn tell(&mut self, objectives: &[f64], measures: &[f64]) -> Result<TellSummary> {
        if self.batch_parents.is_empty() {
            return Err(QdError::NothingAsked);
        }
        let n = self.batch_parents.len();
        let (d, m) = (self.config.solution_dim, self.config.dims.len());
        same_len("objectives", n, objectives.len())?;
        same_len("measures", n * m, measures.len())?;
        let mut summary = TellSummary::default();
        for i in 0..n {
            let id = self.evaluations + i as u64;
            let parents = self.batch_parents[i].into_iter().collect();
            let row = &self.batch[i * d..(i + 1) * d];
            let generation = self.iteration + 1;
            let outcome =
                self.archive
                    .insert_with(objectives[i], &measures[i * m..(i + 1) * m], || {
                        let meta = EliteMeta {
                            id,
                            generation,
                            parents,
                            operator: Default::default(),
                        };
                        (row.to_vec(), meta)
                    })?;
            match outcome {
                InsertOutcome::NewCell { .. } => summary.new_cells += 1,
                InsertOutcome::Improved { .. } => summary.improved += 1,
                InsertOutcome::NotAdded { .. } => {}
            }
        }
        self.evaluations += n as u64;
        self.iteration += 1;
        self.batch.clear();
        self.batch_parents.clear();
        if self.iteration.is_multiple_of(self.config.metrics_every) {
            self.history.push(GenerationMetrics {
                generation: self.iteration,
                evaluations: self.evaluations,
                archives: vec![self.archive.metrics(self.config.qd_score_offset)],
            });
        }
        Ok(summary)
    }

    /// One iteration: ask, evaluate every row with `evaluate(solution, measures_out) ->
    /// objective`, tell.
    pub fn step(
        &mut self,
        mut evaluate: impl FnMut(&[f64], &mut [f64]) -> f64,
    ) -> Result<TellSummary> {
        self.ask();
        let (d, m) = (self.config.solution_dim, self.config.dims.len());
        let n = self.batch_parents.len();
        let mut objectives = Vec::with_capacity(n);
        let mut measures = vec![0.0; n * m];
        for i in 0..n {
            let row = &self.batch[i * d..(i + 1) * d];
            objectives.push(evaluate(row, &mut measures[i * m..(i + 1) * m]));
        }
        self.tell(&objectives, &measures)
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.config.validate()?;
        let bad = |m: &str| Err(QdError::Inconsistent(m.into()));
        if self.archive.dims() != self.config.dims.as_slice() {
            return bad("archive dimensions differ from the config's");
        }
        if self
            .archive
            .elites()
            .iter()
            .any(|e| e.genome.len() != self.config.solution_dim)
        {
            return bad("an elite's solution has the wrong length");
        }
        if self.batch.len() != self.batch_parents.len() * self.config.solution_dim {
            return bad("the outstanding batch has the wrong size");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MapElitesConfig {
        MapElitesConfig {
            dims: vec![
                BehaviourDim::new("x0", -2.0, 2.0, 10),
                BehaviourDim::new("x1", -2.0, 2.0, 10),
            ],
            solution_dim: 3,
            sigma: 0.3,
            x0: vec![0.0; 3],
            batch_size: 16,
            qd_score_offset: -10.0,
            metrics_every: 1,
            seed: 3,
        }
    }

    fn eval(x: &[f64], m: &mut [f64]) -> f64 {
        m[0] = x[0];
        m[1] = x[1];
        -x.iter().map(|v| v * v).sum::<f64>()
    }

    #[test]
    fn first_batch_comes_from_x0_then_from_elites() -> Result<()> {
        let mut me = MapElites::new(config())?;
        let first = me.ask().to_vec();
        assert_eq!(first.len(), 16 * 3);
        assert!(first.iter().all(|v| v.abs() < 0.3 * 6.0));
        assert!(me.batch_parents.iter().all(Option::is_none));
        let objectives: Vec<f64> = first
            .chunks(3)
            .map(|x| -x.iter().map(|v| v * v).sum::<f64>())
            .collect();
        let measures: Vec<f64> = first.chunks(3).flat_map(|x| [x[0], x[1]]).collect();
        let s = me.tell(&objectives, &measures)?;
        assert!(s.new_cells > 0);
        me.ask();
        assert!(me.batch_parents.iter().all(Option::is_some));
        Ok(())
    }

    #[test]
    fn coverage_and_qd_score_grow() -> Result<()> {
        let mut me = MapElites::new(config())?;
        for _ in 0..200 {
            me.step(eval)?;
        }
        let h = &me.history().records;
        assert_eq!(h.len(), 200);
        let first = &h[0].archives[0];
        let last = &h[199].archives[0];
        assert!(last.coverage > 0.8, "coverage {}", last.coverage);
        assert!(last.qd_score > first.qd_score);
        assert!(h
            .windows(2)
            .all(|w| w[1].archives[0].qd_score >= w[0].archives[0].qd_score));
        Ok(())
    }

    #[test]
    fn tell_checks_its_input() -> Result<()> {
        let mut me = MapElites::new(config())?;
        assert!(matches!(me.tell(&[], &[]), Err(QdError::NothingAsked)));
        me.ask();
        assert!(matches!(
            me.tell(&[0.0; 15], &[0.0; 30]),
            Err(QdError::WrongLength { .. })
        ));
        let mut c = config();
        c.x0 = vec![0.0; 2];
        assert!(MapElites::new(c).is_err());
        Ok(())
    }
}
