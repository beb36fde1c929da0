//! A cheap, deterministic scorer for tests of the run loop: it scores a genome by how much of
//! each expert it carries, with interference between experts, so archives fill in a
//! non-trivial way without any model.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use swarm_merge::{FactorSet, Genome};

use crate::error::Result;
use crate::evaluator::{EvalSet, Evaluation, Evaluator, StageTimes};

/// Scores genomes from their coefficients alone.
pub struct GenomeScorer {
    experts: Vec<Vec<f32>>,
    calls: AtomicUsize,
    /// At this (0-based) call, write `hang.1` and sleep forever (a process to be killed).
    pub hang_at: Option<(usize, PathBuf)>,
}

impl GenomeScorer {
    pub fn new(factors: &FactorSet) -> Result<Self> {
        let k = factors.experts().len();
        let experts = (0..k)
            .map(|i| Genome::expert(factors.layout(), i).map(|g| g.values().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            experts,
            calls: AtomicUsize::new(0),
            hang_at: None,
        })
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Evaluator for GenomeScorer {
    fn num_skills(&self) -> usize {
        self.experts.len()
    }

    fn evaluate(&self, genome: &Genome, _set: EvalSet) -> Result<Evaluation> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some((at, marker)) = &self.hang_at {
            if call == *at {
                let _ = std::fs::write(marker, b"in flight");
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        let v = genome.values();
        let frac: Vec<f64> = self
            .experts
            .iter()
            .map(|e| {
                let dot: f64 = e
                    .iter()
                    .zip(v)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let nn: f64 = e.iter().map(|a| (*a as f64).powi(2)).sum();
                if nn > 0.0 {
                    dot / nn
                } else {
                    0.0
                }
            })
            .collect();
        let scores = (0..frac.len())
            .map(|k| {
                let others: f64 = frac
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != k)
                    .map(|(_, f)| f * f)
                    .sum();
                (0.8 * frac[k] - 0.2 * others + 0.15 * frac.iter().sum::<f64>()).clamp(0.0, 1.0)
            })
            .collect();
        Ok(Evaluation {
            scores,
            times: StageTimes::default(),
            answers: 0,
        })
    }
}
