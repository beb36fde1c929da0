//! CycleQD: K skills, K archives, the quality role cycling between them, asynchronous
//! steady-state ask/tell.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::archive::{BehaviourDim, Elite, EliteMeta, GridArchive, InsertOutcome};
use crate::error::{finite, same_len, QdError, Result};
use crate::metrics::{GenerationMetrics, MetricsHistory};
use crate::sampling::ParentSampler;

/// Settings of a CycleQD run. Build with [`CycleQdConfig::new`] and adjust the fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CycleQdConfig {
    /// One axis per skill: its name and how its score is binned when it serves as a
    /// behaviour (e.g. MBPP over `[0, 0.75]` in 15 bins, as in CycleQD's configs).
    pub skills: Vec<BehaviourDim>,
    /// Generations spent on one quality skill before moving to the next (CycleQD: 1).
    pub cycle_interval: u64,
    /// Children per generation. CycleQD's code counts every child as a generation (1); a
    /// larger value makes a generation a batch, with metrics recorded once per batch.
    pub children_per_generation: u64,
    /// Parents per child (crossover of two models in CycleQD).
    pub parents_per_child: usize,
    /// How parents are drawn from the active archive.
    pub sampler: ParentSampler,
    /// Subtracted from each quality in QD-scores (see [`crate::ArchiveMetrics::qd_score`]).
    pub qd_score_offset: f64,
    /// Seed of the run's random number generator.
    pub seed: u64,
}

impl CycleQdConfig {
    /// CycleQD's defaults for `skills`: cycle every generation, one child per generation, two
    /// parents, elite sampling with the paper's formula, offset 0, seed 0.
    pub fn new(skills: Vec<BehaviourDim>) -> Self {
        Self {
            skills,
            cycle_interval: 1,
            children_per_generation: 1,
            parents_per_child: 2,
            sampler: ParentSampler::default(),
            qd_score_offset: 0.0,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason| {
            Err(QdError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.skills.is_empty() {
            return bad("skills", "[]".into(), "at least one skill is needed");
        }
        if self.cycle_interval == 0 {
            return bad("cycle_interval", "0".into(), "must be at least 1");
        }
        if self.children_per_generation == 0 {
            return bad("children_per_generation", "0".into(), "must be at least 1");
        }
        if self.parents_per_child == 0 {
            return bad("parents_per_child", "0".into(), "must be at least 1");
        }
        if !self.qd_score_offset.is_finite() {
            return bad(
                "qd_score_offset",
                self.qd_score_offset.to_string(),
                "must be finite",
            );
        }
        self.sampler.validate()
    }

    /// The behaviour dimensions of archive `i`: every skill but `i`, in skill order.
    fn behaviour_dims(&self, i: usize) -> Vec<BehaviourDim> {
        self.skills
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

/// A parent handed out with a ticket: a copy of the elite as it was when the ticket was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parent<G> {
    /// The elite's id ([`EliteMeta::id`]).
    pub id: u64,
    /// Its genome handle.
    pub genome: G,
    /// Its scores on every skill, in skill order.
    pub scores: Vec<f64>,
}

/// Work handed out by [`CycleQd::ask`]: make one child from `parents`, evaluate it on every
/// skill, and give the result to [`CycleQd::tell`] under `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ticket<G> {
    /// Id of the ticket; also the id of the child if it becomes an elite.
    pub id: u64,
    /// Generation the child belongs to (1-based).
    pub generation: u64,
    /// The quality skill of this generation: the archive the parents come from, and the
    /// skill an SVD mutation should follow.
    pub quality_skill: usize,
    /// Parents drawn from archive `quality_skill` as it was at `ask` time.
    pub parents: Vec<Parent<G>>,
    /// Seed for the variation operators of this child, so that a child does not depend on the
    /// order or the machine in which children are made.
    pub seed: u64,
}

/// An evaluated child for [`CycleQd::tell`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Child<G> {
    /// The child's genome handle.
    pub genome: G,
    /// Its score on every skill, in skill order.
    pub scores: Vec<f64>,
    /// Parameters of the operators that made it, kept in the elite's metadata.
    pub operator: BTreeMap<String, f64>,
}

impl<G> Child<G> {
    /// A child with no operator parameters recorded.
    pub fn new(genome: G, scores: Vec<f64>) -> Self {
        Self {
            genome,
            scores,
            operator: BTreeMap::new(),
        }
    }

    /// Records an operator parameter.
    pub fn with_param(mut self, name: impl Into<String>, value: f64) -> Self {
        self.operator.insert(name.into(), value);
        self
    }
}

/// The CycleQD scheduler. In archive `i` the quality is skill `i`'s score and the cell is given
/// by the other skills' scores. Parents come from the archive of the generation's quality skill;
/// every evaluated child is offered to all K archives.
///
/// Asynchronous steady state: [`ask`](Self::ask) hands out any number of tickets at once,
/// each made from the archive as it is at that moment; [`tell`](Self::tell) accepts results in
/// any order and inserts them against the archives as they are when the result arrives.
///
/// The whole scheduler, random number generator and outstanding tickets included, serialises;
/// see [`QdState::save`](crate::QdState::save) and [`QdState::load`](crate::QdState::load).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "G: Serialize",
    deserialize = "G: serde::de::DeserializeOwned"
))]
pub struct CycleQd<G> {
    config: CycleQdConfig,
    archives: Vec<GridArchive<G>>,
    rng: ChaCha8Rng,
    next_id: u64,
    asked: u64,
    told: u64,
    cancelled: u64,
    initial: u64,
    outstanding: BTreeMap<u64, Ticket<G>>,
    history: MetricsHistory,
}

impl<G: Clone> CycleQd<G> {
    /// A scheduler with K empty archives.
    pub fn new(config: CycleQdConfig) -> Result<Self> {
        config.validate()?;
        let archives = (0..config.skills.len())
            .map(|i| GridArchive::new(config.behaviour_dims(i)))
            .collect::<Result<Vec<_>>>()?;
        let names = config.skills.iter().map(|s| s.name.clone()).collect();
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            history: MetricsHistory::new(names, config.qd_score_offset),
            config,
            archives,
            next_id: 0,
            asked: 0,
            told: 0,
            cancelled: 0,
            initial: 0,
            outstanding: BTreeMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CycleQdConfig {
        &self.config
    }

    /// Number of skills (and archives).
    pub fn num_skills(&self) -> usize {
        self.config.skills.len()
    }

    /// Archive `i` (quality: skill `i`).
    ///
    /// # Panics
    /// If `i >= self.num_skills()`.
    pub fn archive(&self, i: usize) -> &GridArchive<G> {
        &self.archives[i]
    }

    /// All archives, in skill order.
    pub fn archives(&self) -> &[GridArchive<G>] {
        &self.archives
    }

    /// The best elite of archive `i`: the highest score on skill `i`; among equal scores,
    /// the highest mean score on the other skills (its behaviour values); then the first
    /// filled. Scores on a few dozen episodes tie often, above all at 1.0, and a child that
    /// ties an expert on the expert's skill while doing better on the others is the better
    /// model, for the aggregated model and for a router alike. `None` for an empty archive.
    ///
    /// # Panics
    /// If `i >= self.num_skills()`.
    pub fn best(&self, i: usize) -> Option<&Elite<G>> {
        let mean = |e: &Elite<G>| e.behaviour.iter().sum::<f64>() / e.behaviour.len().max(1) as f64;
        self.archives[i]
            .elites()
            .iter()
            .fold(None, |best: Option<&Elite<G>>, e| match best {
                Some(b) if (b.quality, mean(b)) >= (e.quality, mean(e)) => Some(b),
                _ => Some(e),
            })
    }

    /// Metrics so far: generation 0 after the initial elites, then one record per completed
    /// generation.
    pub fn history(&self) -> &MetricsHistory {
        &self.history
    }

    /// Completed generations (children told / children per generation).
    pub fn generations_done(&self) -> u64 {
        self.told / self.config.children_per_generation
    }

    /// Children told so far.
    pub fn children_told(&self) -> u64 {
        self.told
    }

    /// Tickets handed out and not yet told, by id.
    pub fn outstanding(&self) -> impl Iterator<Item = &Ticket<G>> {
        self.outstanding.values()
    }

    /// The quality skill of generation `generation` (1-based):
    /// `((generation - 1) / cycle_interval) mod K`.
    pub fn quality_skill_of(&self, generation: u64) -> usize {
        let k = self.num_skills() as u64;
        (generation.saturating_sub(1) / self.config.cycle_interval % k) as usize
    }

    /// Offers an initial elite (an expert, a seed model) to every archive, as generation 0
    /// with no parents. Returns what happened in each archive.
    pub fn insert_initial(&mut self, genome: G, scores: Vec<f64>) -> Result<Vec<InsertOutcome>> {
        self.check_scores(&scores)?;
        let id = self.next_id;
        self.next_id += 1;
        self.initial += 1;
        let meta = EliteMeta {
            id,
            generation: 0,
            parents: Vec::new(),
            operator: BTreeMap::new(),
        };
        let outcomes = self.offer(&genome, &scores, &meta)?;
        let record = self.snapshot(0);
        match self.history.records.last_mut() {
            Some(last) if last.generation == 0 => *last = record,
            _ => self.history.push(record),
        }
        Ok(outcomes)
    }

    /// Hands out `n` tickets. Each one's parents are drawn from its generation's quality
    /// archive as it is now; the archives do not change until results are told.
    ///
    /// Fails, handing out nothing, if an archive the tickets need is empty.
    pub fn ask(&mut self, n: usize) -> Result<Vec<Ticket<G>>> {
        let cpg = self.config.children_per_generation;
        for k in 0..n as u64 {
            let q = self.quality_skill_of((self.asked + k) / cpg + 1);
            if self.archives[q].is_empty() {
                return Err(QdError::EmptyArchive { archive: q });
            }
        }
        let mut tickets = Vec::with_capacity(n);
        for _ in 0..n {
            let generation = self.asked / cpg + 1;
            let quality_skill = self.quality_skill_of(generation);
            let archive = &self.archives[quality_skill];
            let picks = self
                .config
                .sampler
                .sample(archive, self.config.parents_per_child, &mut self.rng)
                .ok_or(QdError::EmptyArchive {
                    archive: quality_skill,
                })?;
            let parents = picks
                .into_iter()
                .map(|p| {
                    let e = &archive.elites()[p];
                    let mut scores = e.behaviour.clone();
                    scores.insert(quality_skill, e.quality);
                    Parent {
                        id: e.meta.id,
                        genome: e.genome.clone(),
                        scores,
                    }
                })
                .collect();
            let ticket = Ticket {
                id: self.next_id,
                generation,
                quality_skill,
                parents,
                seed: self.rng.gen(),
            };
            self.next_id += 1;
            self.asked += 1;
            self.outstanding.insert(ticket.id, ticket.clone());
            tickets.push(ticket);
        }
        Ok(tickets)
    }

    /// Gives the evaluated child of ticket `id`; it is offered to all K archives as they are
    /// now. Returns what happened in each archive. An invalid child (wrong number of scores,
    /// a score not finite) is an error and leaves the ticket outstanding.
    pub fn tell(&mut self, id: u64, child: Child<G>) -> Result<Vec<InsertOutcome>> {
        self.check_scores(&child.scores)?;
        let ticket = self
            .outstanding
            .remove(&id)
            .ok_or(QdError::UnknownTicket { id })?;
        let meta = EliteMeta {
            id,
            generation: ticket.generation,
            parents: ticket.parents.iter().map(|p| p.id).collect(),
            operator: child.operator,
        };
        let outcomes = self.offer(&child.genome, &child.scores, &meta)?;
        self.told += 1;
        if self
            .told
            .is_multiple_of(self.config.children_per_generation)
        {
            let record = self.snapshot(self.generations_done());
            self.history.push(record);
        }
        Ok(outcomes)
    }

    /// Withdraws ticket `id` (its evaluation failed or was lost) and returns it. A cancelled
    /// ticket counts toward no generation; its generation completes with later children.
    pub fn cancel(&mut self, id: u64) -> Result<Ticket<G>> {
        let ticket = self
            .outstanding
            .remove(&id)
            .ok_or(QdError::UnknownTicket { id })?;
        self.cancelled += 1;
        Ok(ticket)
    }

    fn check_scores(&self, scores: &[f64]) -> Result<()> {
        same_len("skill scores", self.num_skills(), scores.len())?;
        for &s in scores {
            finite("skill score", s)?;
        }
        Ok(())
    }

    fn offer(
        &mut self,
        genome: &G,
        scores: &[f64],
        meta: &EliteMeta,
    ) -> Result<Vec<InsertOutcome>> {
        let mut behaviour = Vec::with_capacity(scores.len());
        let mut outcomes = Vec::with_capacity(scores.len());
        for (i, archive) in self.archives.iter_mut().enumerate() {
            behaviour.clear();
            behaviour.extend(
                scores
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, &s)| s),
            );
            outcomes.push(
                archive.insert_with(scores[i], &behaviour, || (genome.clone(), meta.clone()))?,
            );
        }
        Ok(outcomes)
    }

    fn snapshot(&self, generation: u64) -> GenerationMetrics {
        GenerationMetrics {
            generation,
            evaluations: self.initial + self.told,
            archives: self
                .archives
                .iter()
                .map(|a| a.metrics(self.config.qd_score_offset))
                .collect(),
        }
    }

    /// Checks the invariants a deserialised scheduler must satisfy.
    pub(crate) fn check(&self) -> Result<()> {
        self.config.validate()?;
        let bad = |m: String| Err(QdError::Inconsistent(m));
        if self.archives.len() != self.num_skills() {
            return bad(format!(
                "{} archives for {} skills",
                self.archives.len(),
                self.num_skills()
            ));
        }
        for (i, a) in self.archives.iter().enumerate() {
            if a.dims() != self.config.behaviour_dims(i).as_slice() {
                return bad(format!(
                    "archive {i} has dimensions other than the skills' axes"
                ));
            }
        }
        let closed = self.told.checked_add(self.cancelled);
        if closed.is_none_or(|c| c > self.asked || self.asked - c != self.outstanding.len() as u64)
        {
            return bad(format!(
                "{} tickets outstanding, but {} asked, {} told and {} cancelled",
                self.outstanding.len(),
                self.asked,
                self.told,
                self.cancelled
            ));
        }
        if self
            .outstanding
            .last_key_value()
            .is_some_and(|(&id, _)| id >= self.next_id)
        {
            return bad("a ticket id is not below the next id".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::EliteFormula;

    fn skills(k: usize) -> Vec<BehaviourDim> {
        (0..k)
            .map(|i| BehaviourDim::new(format!("s{i}"), 0.0, 1.0, 10))
            .collect()
    }

    fn seeded(k: usize, config: impl FnOnce(&mut CycleQdConfig)) -> CycleQd<u64> {
        let mut c = CycleQdConfig::new(skills(k));
        config(&mut c);
        let mut qd = CycleQd::new(c).unwrap();
        for e in 0..k {
            let mut scores = vec![0.1; k];
            scores[e] = 0.9;
            qd.insert_initial(e as u64, scores).unwrap();
        }
        qd
    }

    #[test]
    fn archive_i_uses_skill_i_as_quality_and_the_others_as_cells() {
        let mut qd = CycleQd::<u64>::new(CycleQdConfig::new(skills(3))).unwrap();
        let out = qd.insert_initial(5, vec![0.25, 0.55, 0.95]).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(InsertOutcome::is_added));
        let a0 = qd.archive(0);
        assert_eq!(a0.dims().len(), 2);
        assert_eq!(a0.elites()[0].quality, 0.25);
        assert_eq!(a0.elites()[0].behaviour, vec![0.55, 0.95]);
        assert_eq!(a0.cell_coords(out[0].cell()), vec![5, 9]);
        let a1 = qd.archive(1);
        assert_eq!(a1.elites()[0].quality, 0.55);
        assert_eq!(a1.cell_coords(out[1].cell()), vec![2, 9]);
        let a2 = qd.archive(2);
        assert_eq!(a2.elites()[0].quality, 0.95);
        assert_eq!(a2.cell_coords(out[2].cell()), vec![2, 5]);
        assert_eq!(qd.history().records.len(), 1);
        assert_eq!(qd.history().records[0].generation, 0);
    }

    #[test]
    fn best_breaks_quality_ties_by_the_other_skills() {
        let mut qd = CycleQd::<u64>::new(CycleQdConfig::new(skills(3))).unwrap();
        // Three elites in different cells of archive 0, two tied on skill 0.
        qd.insert_initial(0, vec![0.8, 0.1, 0.1]).unwrap();
        qd.insert_initial(1, vec![0.8, 0.5, 0.6]).unwrap();
        qd.insert_initial(2, vec![0.7, 0.9, 0.9]).unwrap();
        assert_eq!(qd.best(0).map(|e| e.genome), Some(1));
        // A higher score on the archive's own skill wins whatever the others.
        qd.insert_initial(3, vec![0.85, 0.0, 0.3]).unwrap();
        assert_eq!(qd.best(0).map(|e| e.genome), Some(3));
        // Full ties go to the first filled.
        let mut qd = CycleQd::<u64>::new(CycleQdConfig::new(skills(3))).unwrap();
        qd.insert_initial(7, vec![0.5, 0.25, 0.75]).unwrap();
        qd.insert_initial(8, vec![0.5, 0.75, 0.25]).unwrap();
        assert_eq!(qd.archive(0).elites().len(), 2);
        assert_eq!(qd.best(0).map(|e| e.genome), Some(7));
        let empty = CycleQd::<u64>::new(CycleQdConfig::new(skills(2))).unwrap();
        assert!(empty.best(1).is_none());
    }

    #[test]
    fn quality_role_cycles_every_interval() {
        let mut qd = seeded(3, |_| {});
        let roles: Vec<usize> = qd.ask(7).unwrap().iter().map(|t| t.quality_skill).collect();
        assert_eq!(roles, vec![0, 1, 2, 0, 1, 2, 0]);

        let mut qd = seeded(3, |c| c.cycle_interval = 2);
        let roles: Vec<usize> = qd.ask(7).unwrap().iter().map(|t| t.quality_skill).collect();
        assert_eq!(roles, vec![0, 0, 1, 1, 2, 2, 0]);

        let mut qd = seeded(2, |c| c.children_per_generation = 3);
        let t = qd.ask(7).unwrap();
        let roles: Vec<usize> = t.iter().map(|t| t.quality_skill).collect();
        let gens: Vec<u64> = t.iter().map(|t| t.generation).collect();
        assert_eq!(roles, vec![0, 0, 0, 1, 1, 1, 0]);
        assert_eq!(gens, vec![1, 1, 1, 2, 2, 2, 3]);
    }

    #[test]
    fn parents_come_only_from_the_active_archive() {
        let mut qd = CycleQd::<u64>::new(CycleQdConfig {
            sampler: ParentSampler::Uniform,
            ..CycleQdConfig::new(skills(2))
        })
        .unwrap();
        // Archive 0 (cells by skill 1): bins 5 and 3, both kept.
        // Archive 1 (cells by skill 0): both in bin 8, only genome 1 (0.55 > 0.35) kept.
        qd.insert_initial(1, vec![0.85, 0.55]).unwrap();
        qd.insert_initial(2, vec![0.86, 0.35]).unwrap();
        assert_eq!(qd.archive(0).len(), 2);
        assert_eq!(qd.archive(1).len(), 1);
        let mut seen_2_in_0 = false;
        for t in qd.ask(40).unwrap() {
            for p in &t.parents {
                if t.quality_skill == 1 {
                    assert_eq!(p.genome, 1, "archive 1 holds only genome 1");
                    assert_eq!(p.scores, vec![0.85, 0.55]);
                }
                seen_2_in_0 |= t.quality_skill == 0 && p.genome == 2;
            }
        }
        assert!(seen_2_in_0);
    }

    #[test]
    fn every_child_is_offered_to_all_archives() {
        let mut qd = seeded(3, |_| {});
        let t = qd.ask(1).unwrap().remove(0);
        let out = qd
            .tell(
                t.id,
                Child::new(99, vec![0.95, 0.95, 0.95]).with_param("w", 0.3),
            )
            .unwrap();
        assert!(out.iter().all(InsertOutcome::is_added));
        for a in qd.archives() {
            let e = a.elites().iter().find(|e| e.genome == 99).unwrap();
            assert_eq!(e.meta.generation, 1);
            assert_eq!(e.meta.parents.len(), 2);
            assert_eq!(e.meta.operator.get("w"), Some(&0.3));
        }
        assert_eq!(qd.history().last().map(|r| r.generation), Some(1));
    }

    #[test]
    fn out_of_order_tell_rechecks_against_the_current_archive() {
        let mut qd = seeded(2, |_| {});
        let t = qd.ask(3).unwrap();
        assert_eq!(qd.outstanding().count(), 3);
        // The last ticket comes back first and takes cell (archive 0, skill-1 bin 4).
        let late = qd.tell(t[2].id, Child::new(30, vec![0.8, 0.45])).unwrap();
        assert!(matches!(late[0], InsertOutcome::NewCell { .. }));
        // The first ticket, handed out when that cell was empty, lands in the same cell with a
        // lower quality: it is checked against the archive as it is now, and not added.
        let early = qd.tell(t[0].id, Child::new(10, vec![0.7, 0.41])).unwrap();
        assert_eq!(
            early[0],
            InsertOutcome::NotAdded {
                cell: late[0].cell(),
                incumbent: 0.8
            }
        );
        // Telling a ticket twice, or one never handed out, is an error.
        assert!(matches!(
            qd.tell(t[0].id, Child::new(10, vec![0.7, 0.41])),
            Err(QdError::UnknownTicket { .. })
        ));
        assert!(matches!(
            qd.tell(12345, Child::new(1, vec![0.7, 0.41])),
            Err(QdError::UnknownTicket { id: 12345 })
        ));
        // A bad child is an error and keeps the ticket outstanding.
        assert!(qd.tell(t[1].id, Child::new(20, vec![0.5])).is_err());
        assert!(qd
            .tell(t[1].id, Child::new(20, vec![0.5, f64::NAN]))
            .is_err());
        assert!(qd.tell(t[1].id, Child::new(20, vec![0.5, 0.5])).is_ok());
        assert_eq!(qd.outstanding().count(), 0);
        assert_eq!(qd.children_told(), 3);
    }

    #[test]
    fn cancelled_tickets_leave_the_flight_and_count_for_nothing() {
        let mut qd = seeded(2, |_| {});
        let t = qd.ask(2).unwrap();
        assert_eq!(qd.cancel(t[0].id).unwrap().id, t[0].id);
        assert!(matches!(
            qd.cancel(t[0].id),
            Err(QdError::UnknownTicket { .. })
        ));
        assert!(matches!(
            qd.tell(t[0].id, Child::new(1, vec![0.5, 0.5])),
            Err(QdError::UnknownTicket { .. })
        ));
        assert_eq!(qd.outstanding().count(), 1);
        assert_eq!(qd.generations_done(), 0);
        qd.tell(t[1].id, Child::new(1, vec![0.5, 0.5])).unwrap();
        assert_eq!(qd.generations_done(), 1);
        qd.check().unwrap();
    }

    #[test]
    fn tickets_keep_the_parents_they_were_made_from() {
        let mut qd = seeded(2, |c| c.parents_per_child = 1);
        let t = qd.ask(1).unwrap().remove(0);
        let before = t.parents[0].clone();
        // Replace every elite of both archives with far better children.
        for g in 0..40 {
            let u = qd.ask(1).unwrap().remove(0);
            let s = (g % 10) as f64 / 10.0 + 0.05;
            qd.tell(u.id, Child::new(1000 + g, vec![s, s])).unwrap();
        }
        assert_eq!(
            qd.outstanding()
                .find(|o| o.id == t.id)
                .map(|o| &o.parents[0]),
            Some(&before)
        );
    }

    #[test]
    fn ask_on_an_empty_archive_fails_and_hands_out_nothing() {
        let mut qd = CycleQd::<u64>::new(CycleQdConfig::new(skills(2))).unwrap();
        assert!(matches!(
            qd.ask(1),
            Err(QdError::EmptyArchive { archive: 0 })
        ));
        assert_eq!(qd.outstanding().count(), 0);
    }

    #[test]
    fn released_code_sampler_runs() {
        let mut qd = seeded(3, |c| {
            c.sampler = ParentSampler::Elite {
                formula: EliteFormula::released_code(),
            }
        });
        assert_eq!(qd.ask(5).unwrap().len(), 5);
    }

    #[test]
    fn config_is_validated() {
        let mut c = CycleQdConfig::new(skills(2));
        c.cycle_interval = 0;
        assert!(matches!(
            CycleQd::<u64>::new(c),
            Err(QdError::InvalidConfig {
                field: "cycle_interval",
                ..
            })
        ));
        assert!(CycleQd::<u64>::new(CycleQdConfig::new(vec![])).is_err());
    }
}
