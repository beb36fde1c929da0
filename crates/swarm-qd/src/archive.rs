//! The grid archive: behaviour space cut into cells, one elite per cell.

use std::collections::BTreeMap;

use rand::Rng;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{finite, same_len, QdError, Result};
use crate::metrics::ArchiveMetrics;

/// One behaviour dimension: a range and a number of bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BehaviourDim {
    /// Name, for reports and plots (e.g. the skill whose score this is).
    pub name: String,
    /// Lower end of the range; values below it fall into bin 0.
    pub min: f64,
    /// Upper end of the range; values above it fall into the last bin.
    pub max: f64,
    /// Number of bins, at least 1.
    pub bins: usize,
}

impl BehaviourDim {
    /// A dimension named `name` over `[min, max]` with `bins` bins.
    pub fn new(name: impl Into<String>, min: f64, max: f64, bins: usize) -> Self {
        Self {
            name: name.into(),
            min,
            max,
            bins,
        }
    }

    /// Bin edges exactly as `numpy.linspace(min, max, bins + 1)` computes them: `i * step +
    /// min` with `step = (max - min) / bins`, and the last edge set to `max`. CycleQD bins with
    /// these edges, so we reproduce them bit for bit rather than `min + i * (max - min) / bins`.
    pub fn edges(&self) -> Vec<f64> {
        let step = (self.max - self.min) / self.bins as f64;
        (0..=self.bins)
            .map(|i| {
                if i == self.bins {
                    self.max
                } else {
                    i as f64 * step + self.min
                }
            })
            .collect()
    }

    fn validate(&self, dim: usize) -> Result<()> {
        if !(self.min.is_finite() && self.max.is_finite() && self.min < self.max) {
            return Err(QdError::InvalidRange {
                dim,
                min: self.min,
                max: self.max,
            });
        }
        if self.bins == 0 {
            return Err(QdError::ZeroBins { dim });
        }
        Ok(())
    }
}

/// The bin of `value` given `edges` (`G + 1` increasing values), as CycleQD computes it:
/// `clamp(numpy.digitize(value, edges, right=True) - 1, 0, G - 1)`.
///
/// Bins are right-closed: bin `b` is `(edges[b], edges[b + 1]]`, except that `min` itself and
/// everything below it go to bin 0 and everything above `max` to bin `G - 1`. (CycleQD's code
/// clamps every dimension with the first dimension's bin count; with equal counts, as in all
/// its configs, that is the same thing, and with unequal ones per-dimension is what is meant.)
pub fn bin_of(edges: &[f64], value: f64) -> usize {
    let bins = edges.len() - 1;
    // digitize(right=True) = searchsorted(side='left') = number of edges strictly below value.
    let below = edges.partition_point(|&e| e < value);
    below.saturating_sub(1).min(bins - 1)
}

/// Where an elite came from. Kept with every elite for lineage reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EliteMeta {
    /// Unique id of this individual within its run (the ticket or evaluation number).
    pub id: u64,
    /// Generation in which it was made (0 for the initial elites, e.g. the experts).
    pub generation: u64,
    /// Ids of its parents (empty for initial elites).
    pub parents: Vec<u64>,
    /// Parameters of the operators that made it (crossover weights, mutation scale, ...).
    pub operator: BTreeMap<String, f64>,
}

/// One elite: a genome handle with its quality, behaviour values and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Elite<G> {
    /// The genome, or a handle to it; this crate never looks inside.
    pub genome: G,
    /// Quality in this archive (higher is better).
    pub quality: f64,
    /// Behaviour values, one per dimension of the archive (unbinned).
    pub behaviour: Vec<f64>,
    /// Lineage.
    pub meta: EliteMeta,
}

/// What [`GridArchive::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InsertOutcome {
    /// The cell was empty; the candidate now fills it.
    NewCell {
        /// Flat index of the cell.
        cell: usize,
    },
    /// The candidate was strictly better than the cell's elite and replaced it.
    Improved {
        /// Flat index of the cell.
        cell: usize,
        /// Quality of the elite it replaced.
        previous: f64,
    },
    /// The cell's elite was at least as good; nothing changed.
    NotAdded {
        /// Flat index of the cell.
        cell: usize,
        /// Quality of the elite that stays.
        incumbent: f64,
    },
}

impl InsertOutcome {
    /// Flat index of the cell the candidate fell into.
    pub fn cell(&self) -> usize {
        match *self {
            Self::NewCell { cell } | Self::Improved { cell, .. } | Self::NotAdded { cell, .. } => {
                cell
            }
        }
    }

    /// Whether the candidate entered the archive.
    pub fn is_added(&self) -> bool {
        !matches!(self, Self::NotAdded { .. })
    }
}

const EMPTY: u32 = u32::MAX;

/// A grid archive over any number of behaviour dimensions, one elite per cell.
///
/// Cells are numbered row-major (the last dimension varies fastest, like `numpy.ravel_multi_index`).
/// Elites are kept in the order their cells were first filled; uniform sampling and iteration
/// follow that order, and it is part of the serialised state, so a resumed run samples exactly as
/// the uninterrupted one.
#[derive(Clone, Debug)]
pub struct GridArchive<G> {
    dims: Vec<BehaviourDim>,
    edges: Vec<Vec<f64>>,
    strides: Vec<usize>,
    /// Per cell: position in `elites`, or `EMPTY`.
    cells: Vec<u32>,
    elites: Vec<Elite<G>>,
    /// Per elite: its cell.
    elite_cells: Vec<u32>,
}

impl<G> GridArchive<G> {
    /// An empty archive over `dims`.
    pub fn new(dims: Vec<BehaviourDim>) -> Result<Self> {
        for (i, d) in dims.iter().enumerate() {
            d.validate(i)?;
        }
        let bins: Vec<usize> = dims.iter().map(|d| d.bins).collect();
        let total = bins
            .iter()
            .try_fold(1usize, |acc, &b| acc.checked_mul(b))
            .filter(|&n| n < EMPTY as usize)
            .ok_or_else(|| QdError::GridTooLarge { dims: bins.clone() })?;
        let mut strides = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * bins[i + 1];
        }
        Ok(Self {
            edges: dims.iter().map(BehaviourDim::edges).collect(),
            dims,
            strides,
            cells: vec![EMPTY; total],
            elites: Vec::new(),
            elite_cells: Vec::new(),
        })
    }

    /// The behaviour dimensions.
    pub fn dims(&self) -> &[BehaviourDim] {
        &self.dims
    }

    /// Bin edges of dimension `dim` (`bins + 1` values).
    pub fn edges(&self, dim: usize) -> &[f64] {
        &self.edges[dim]
    }

    /// Number of cells.
    pub fn num_cells(&self) -> usize {
        self.cells.len()
    }

    /// Number of filled cells.
    pub fn len(&self) -> usize {
        self.elites.len()
    }

    /// Whether no cell is filled.
    pub fn is_empty(&self) -> bool {
        self.elites.is_empty()
    }

    /// Bins of each dimension for `behaviour`.
    pub fn bins_of(&self, behaviour: &[f64]) -> Result<Vec<usize>> {
        self.check_behaviour(behaviour)?;
        Ok(self
            .edges
            .iter()
            .zip(behaviour)
            .map(|(e, &v)| bin_of(e, v))
            .collect())
    }

    /// Flat cell index of `behaviour`.
    pub fn cell_of(&self, behaviour: &[f64]) -> Result<usize> {
        self.check_behaviour(behaviour)?;
        Ok(self.cell_unchecked(behaviour))
    }

    /// Flat index -> bins per dimension.
    ///
    /// # Panics
    /// If `cell >= self.num_cells()` (a caller bug).
    pub fn cell_coords(&self, cell: usize) -> Vec<usize> {
        assert!(cell < self.cells.len(), "cell {cell} out of range");
        self.strides
            .iter()
            .zip(&self.dims)
            .map(|(&s, d)| (cell / s) % d.bins)
            .collect()
    }

    /// The elite in cell `cell`, if any.
    pub fn get(&self, cell: usize) -> Option<&Elite<G>> {
        match self.cells.get(cell) {
            Some(&pos) if pos != EMPTY => self.elites.get(pos as usize),
            _ => None,
        }
    }

    /// The elites, in the order their cells were first filled.
    pub fn elites(&self) -> &[Elite<G>] {
        &self.elites
    }

    /// `(cell, elite)` pairs, in the order the cells were first filled.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Elite<G>)> {
        self.elite_cells
            .iter()
            .map(|&c| c as usize)
            .zip(self.elites.iter())
    }

    /// The best elite (the first of equals in fill order), if any.
    pub fn best(&self) -> Option<&Elite<G>> {
        self.elites
            .iter()
            .fold(None, |best: Option<&Elite<G>>, e| match best {
                Some(b) if b.quality >= e.quality => Some(b),
                _ => Some(e),
            })
    }

    /// One elite drawn uniformly (with replacement across calls), as pyribs' `sample_elites`.
    pub fn sample_uniform<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&Elite<G>> {
        if self.elites.is_empty() {
            None
        } else {
            Some(&self.elites[rng.gen_range(0..self.elites.len())])
        }
    }

    /// QD-score, coverage and best quality. The QD-score is `sum(quality - offset)` over the
    /// elites, as pyribs computes it with `qd_score_offset`.
    pub fn metrics(&self, qd_score_offset: f64) -> ArchiveMetrics {
        let qd_score = self
            .elites
            .iter()
            .map(|e| e.quality - qd_score_offset)
            .sum();
        ArchiveMetrics {
            filled: self.elites.len(),
            cells: self.cells.len(),
            coverage: self.elites.len() as f64 / self.cells.len() as f64,
            qd_score,
            best_quality: self.best().map(|e| e.quality),
        }
    }

    /// Offers `elite`: it enters if its cell is empty or holds a strictly worse elite.
    pub fn insert(&mut self, elite: Elite<G>) -> Result<InsertOutcome> {
        let Elite {
            genome,
            quality,
            behaviour,
            meta,
        } = elite;
        self.insert_with(quality, &behaviour, move || (genome, meta))
    }

    /// Offers a candidate by its quality and behaviour, building it with `build` only if it
    /// enters (so that rejected candidates cost no allocation).
    pub fn insert_with(
        &mut self,
        quality: f64,
        behaviour: &[f64],
        build: impl FnOnce() -> (G, EliteMeta),
    ) -> Result<InsertOutcome> {
        finite("quality", quality)?;
        self.check_behaviour(behaviour)?;
        let cell = self.cell_unchecked(behaviour);
        let pos = self.cells[cell];
        if pos == EMPTY {
            let (genome, meta) = build();
            self.cells[cell] = self.elites.len() as u32;
            self.elites.push(Elite {
                genome,
                quality,
                behaviour: behaviour.to_vec(),
                meta,
            });
            self.elite_cells.push(cell as u32);
            return Ok(InsertOutcome::NewCell { cell });
        }
        let incumbent = &mut self.elites[pos as usize];
        if quality > incumbent.quality {
            let previous = incumbent.quality;
            let (genome, meta) = build();
            *incumbent = Elite {
                genome,
                quality,
                behaviour: behaviour.to_vec(),
                meta,
            };
            Ok(InsertOutcome::Improved { cell, previous })
        } else {
            Ok(InsertOutcome::NotAdded {
                cell,
                incumbent: incumbent.quality,
            })
        }
    }

    fn check_behaviour(&self, behaviour: &[f64]) -> Result<()> {
        same_len("behaviour values", self.dims.len(), behaviour.len())?;
        for &v in behaviour {
            finite("behaviour value", v)?;
        }
        Ok(())
    }

    fn cell_unchecked(&self, behaviour: &[f64]) -> usize {
        self.edges
            .iter()
            .zip(behaviour)
            .zip(&self.strides)
            .map(|((e, &v), &s)| bin_of(e, v) * s)
            .sum()
    }
}

/// On disk an archive is its dimensions and its elites in fill order; cells are recomputed on
/// load, which also checks that no two elites claim one cell.
#[derive(Serialize)]
#[serde(bound(serialize = "G: Serialize"))]
struct ArchiveReprRef<'a, G> {
    dims: &'a [BehaviourDim],
    elites: &'a [Elite<G>],
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "G: Deserialize<'de>"))]
struct ArchiveRepr<G> {
    dims: Vec<BehaviourDim>,
    elites: Vec<Elite<G>>,
}

impl<G: Serialize> Serialize for GridArchive<G> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ArchiveReprRef {
            dims: &self.dims,
            elites: &self.elites,
        }
        .serialize(s)
    }
}

impl<'de, G: Deserialize<'de>> Deserialize<'de> for GridArchive<G> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let repr = ArchiveRepr::<G>::deserialize(d)?;
        let mut archive = GridArchive::new(repr.dims).map_err(D::Error::custom)?;
        for elite in repr.elites {
            let outcome = archive.insert(elite).map_err(D::Error::custom)?;
            if !matches!(outcome, InsertOutcome::NewCell { .. }) {
                return Err(D::Error::custom(format!(
                    "two elites in cell {}",
                    outcome.cell()
                )));
            }
        }
        Ok(archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elite(q: f64, b: &[f64]) -> Elite<u32> {
        Elite {
            genome: 7,
            quality: q,
            behaviour: b.to_vec(),
            meta: EliteMeta::default(),
        }
    }

    #[test]
    fn edges_match_numpy_linspace() {
        // numpy.linspace(0.0, 0.75, 16) and linspace(-256, 256, 101)[1], [37], printed by numpy.
        let e = BehaviourDim::new("mbpp", 0.0, 0.75, 15).edges();
        assert_eq!(e.len(), 16);
        assert_eq!(e[0], 0.0);
        assert_eq!(e[1], 0.05);
        assert_eq!(e[3], 0.15000000000000002);
        assert_eq!(e[15], 0.75);
        let e = BehaviourDim::new("m", -256.0, 256.0, 100).edges();
        assert_eq!(e[1], -250.88);
        assert_eq!(e[37], -66.56);
        assert_eq!(e[100], 256.0);
    }

    #[test]
    fn binning_at_edges_is_right_closed_and_clamped() {
        // Bins of width 0.25 over [0, 1]: edges 0, .25, .5, .75, 1.
        let e = BehaviourDim::new("x", 0.0, 1.0, 4).edges();
        assert_eq!(bin_of(&e, -3.0), 0, "below min clamps to 0");
        assert_eq!(bin_of(&e, 0.0), 0, "min itself is bin 0");
        assert_eq!(bin_of(&e, 0.1), 0);
        assert_eq!(
            bin_of(&e, 0.25),
            0,
            "an inner edge belongs to the bin on its left"
        );
        assert_eq!(bin_of(&e, 0.250_000_000_000_000_06), 1);
        assert_eq!(bin_of(&e, 0.5), 1);
        assert_eq!(bin_of(&e, 0.75), 2);
        assert_eq!(bin_of(&e, 0.76), 3);
        assert_eq!(bin_of(&e, 1.0), 3, "max is the last bin");
        assert_eq!(bin_of(&e, 7.0), 3, "above max clamps to the last bin");
        // CycleQD's MBPP axis: 0.15 lies on the edge 0.15000000000000002 -> bin 2 (not 3).
        let e = BehaviourDim::new("mbpp", 0.0, 0.75, 15).edges();
        assert_eq!(bin_of(&e, 0.15), 2);
        assert_eq!(bin_of(&e, 0.05), 0);
        assert_eq!(bin_of(&e, 0.0500001), 1);
    }

    #[test]
    fn cells_are_row_major() -> Result<()> {
        let a: GridArchive<u32> = GridArchive::new(vec![
            BehaviourDim::new("a", 0.0, 3.0, 3),
            BehaviourDim::new("b", 0.0, 5.0, 5),
        ])?;
        assert_eq!(a.num_cells(), 15);
        assert_eq!(a.cell_of(&[2.5, 0.5])?, 2 * 5);
        assert_eq!(a.cell_of(&[1.5, 4.5])?, 5 + 4);
        assert_eq!(a.cell_coords(9), vec![1, 4]);
        assert_eq!(a.bins_of(&[1.5, 4.5])?, vec![1, 4]);
        Ok(())
    }

    #[test]
    fn insert_replaces_only_on_strictly_better() -> Result<()> {
        let mut a = GridArchive::new(vec![BehaviourDim::new("x", 0.0, 1.0, 2)])?;
        assert_eq!(
            a.insert(elite(1.0, &[0.2]))?,
            InsertOutcome::NewCell { cell: 0 }
        );
        assert_eq!(
            a.insert(elite(1.0, &[0.3]))?,
            InsertOutcome::NotAdded {
                cell: 0,
                incumbent: 1.0
            },
            "a tie does not replace"
        );
        assert_eq!(
            a.insert(elite(0.5, &[0.1]))?,
            InsertOutcome::NotAdded {
                cell: 0,
                incumbent: 1.0
            }
        );
        assert_eq!(
            a.insert(elite(2.0, &[0.4]))?,
            InsertOutcome::Improved {
                cell: 0,
                previous: 1.0
            }
        );
        assert_eq!(a.get(0).map(|e| e.behaviour.clone()), Some(vec![0.4]));
        assert_eq!(
            a.insert(elite(-1.0, &[0.9]))?,
            InsertOutcome::NewCell { cell: 1 }
        );
        assert_eq!(a.len(), 2);
        let m = a.metrics(-2.0);
        assert_eq!(m.qd_score, (2.0 + 2.0) + (-1.0 + 2.0));
        assert_eq!(m.coverage, 1.0);
        assert_eq!(m.best_quality, Some(2.0));
        Ok(())
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            GridArchive::<u32>::new(vec![BehaviourDim::new("x", 1.0, 1.0, 2)]),
            Err(QdError::InvalidRange { dim: 0, .. })
        ));
        assert!(matches!(
            GridArchive::<u32>::new(vec![BehaviourDim::new("x", 0.0, 1.0, 0)]),
            Err(QdError::ZeroBins { dim: 0 })
        ));
        assert!(matches!(
            GridArchive::<u32>::new(vec![BehaviourDim::new("x", 0.0, 1.0, 1 << 20); 3]),
            Err(QdError::GridTooLarge { .. })
        ));
        let mut a = GridArchive::new(vec![BehaviourDim::new("x", 0.0, 1.0, 2)]).unwrap();
        assert!(matches!(
            a.insert(elite(f64::NAN, &[0.5])),
            Err(QdError::NotFinite { .. })
        ));
        assert!(matches!(
            a.insert(elite(1.0, &[f64::INFINITY])),
            Err(QdError::NotFinite { .. })
        ));
        assert!(matches!(
            a.insert(elite(1.0, &[0.5, 0.5])),
            Err(QdError::WrongLength { .. })
        ));
        assert!(a.is_empty());
    }

    #[test]
    fn serde_round_trip_keeps_fill_order_and_rejects_collisions() -> anyhow::Result<()> {
        let mut a = GridArchive::new(vec![BehaviourDim::new("x", 0.0, 1.0, 4)])?;
        a.insert(elite(1.0, &[0.9]))?;
        a.insert(elite(2.0, &[0.1]))?;
        a.insert(elite(3.0, &[0.95]))?;
        let json = serde_json::to_string(&a)?;
        let b: GridArchive<u32> = serde_json::from_str(&json)?;
        assert_eq!(b.elites(), a.elites());
        assert_eq!(b.iter().map(|(c, _)| c).collect::<Vec<_>>(), vec![3, 0]);
        let bad = json.replace("0.1", "0.91");
        assert!(serde_json::from_str::<GridArchive<u32>>(&bad).is_err());
        Ok(())
    }
}
