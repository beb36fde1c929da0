//! QD-score, coverage and best quality, per archive and per generation.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The state of one archive at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiveMetrics {
    /// Filled cells.
    pub filled: usize,
    /// All cells.
    pub cells: usize,
    /// `filled / cells`, in [0, 1].
    pub coverage: f64,
    /// `sum(quality - offset)` over the elites (pyribs' `qd_score` with `qd_score_offset`).
    /// The offset keeps every term positive when qualities can be negative, so that filling a
    /// cell never lowers the score.
    pub qd_score: f64,
    /// Best quality, `None` while the archive is empty.
    pub best_quality: Option<f64>,
}

/// Every archive's metrics after one generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationMetrics {
    /// Generation number (1 for the first generation after the initial elites, 0 for them).
    pub generation: u64,
    /// Evaluations told so far, initial elites included.
    pub evaluations: u64,
    /// One entry per archive, in archive order.
    pub archives: Vec<ArchiveMetrics>,
}

/// The metrics of a run, one record per generation, for plots and reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsHistory {
    /// Archive names, in archive order (column labels for plots).
    pub archive_names: Vec<String>,
    /// Offset used for every QD-score in this history.
    pub qd_score_offset: f64,
    /// Records, oldest first.
    pub records: Vec<GenerationMetrics>,
}

impl MetricsHistory {
    /// An empty history for archives named `archive_names`.
    pub fn new(archive_names: Vec<String>, qd_score_offset: f64) -> Self {
        Self {
            archive_names,
            qd_score_offset,
            records: Vec::new(),
        }
    }

    /// Appends a record.
    pub fn push(&mut self, record: GenerationMetrics) {
        self.records.push(record);
    }

    /// The latest record.
    pub fn last(&self) -> Option<&GenerationMetrics> {
        self.records.last()
    }

    /// The history as CSV, one row per generation and archive:
    /// `generation,evaluations,archive,filled,cells,coverage,qd_score,best_quality`
    /// (`best_quality` empty while the archive is empty).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "generation,evaluations,archive,filled,cells,coverage,qd_score,best_quality\n",
        );
        for r in &self.records {
            for (i, m) in r.archives.iter().enumerate() {
                let name = self.archive_names.get(i).map_or("", String::as_str);
                let best = m.best_quality.map(|b| b.to_string()).unwrap_or_default();
                // Writing to a String cannot fail.
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{}",
                    r.generation,
                    r.evaluations,
                    name,
                    m.filled,
                    m.cells,
                    m.coverage,
                    m.qd_score,
                    best
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_row_per_archive_and_generation() {
        let mut h = MetricsHistory::new(vec!["a".into(), "b".into()], 0.0);
        let m = |filled, best| ArchiveMetrics {
            filled,
            cells: 4,
            coverage: filled as f64 / 4.0,
            qd_score: filled as f64,
            best_quality: best,
        };
        h.push(GenerationMetrics {
            generation: 1,
            evaluations: 3,
            archives: vec![m(1, Some(0.5)), m(0, None)],
        });
        let csv = h.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "1,3,a,1,4,0.25,1,0.5");
        assert_eq!(lines[2], "1,3,b,0,4,0,0,");
    }
}
