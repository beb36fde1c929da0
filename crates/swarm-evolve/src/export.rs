//! Export of a run as a swarm: `agents/<name>/{swarm.json, factors.safetensors,
//! genomes.safetensors}` (see `agents/README.md`). Every file is written atomically.

use std::collections::BTreeMap;
use std::path::Path;

use swarm_merge::{save_genomes, FactorSet, Genome};

use crate::config::RunPlan;
use crate::error::{EvolveError, Result};
use crate::run::RunState;

// The manifest's types live in swarm-merge, so that swarm-serve reads what this writes
// without depending on swarm-evolve.
pub use swarm_merge::{
    CellEntry, EliteEntry, FactorEntry, ModelEntry, SkillEntry, SwarmManifest, SWARM_FORMAT,
};

/// The aggregated model of the paper: `Σ_i softmax(q)_i · g_i` over each archive's best elite
/// ([`swarm_qd::CycleQd::best`]: ties broken by the other skills' scores), `q_i` its
/// quality. Returns the genome and the ids it merged.
pub fn aggregate(state: &RunState) -> Result<Option<(Genome, Vec<u64>)>> {
    let mut genomes = Vec::new();
    let mut fitness = Vec::new();
    let mut ids = Vec::new();
    for i in 0..state.qd.num_skills() {
        if let Some(e) = state.qd.best(i) {
            let g = state
                .genomes
                .get(&e.genome)
                .ok_or_else(|| EvolveError::Eval(format!("genome {} missing", e.genome)))?;
            genomes.push(g);
            fitness.push(e.quality);
            ids.push(e.genome);
        }
    }
    if genomes.is_empty() {
        return Ok(None);
    }
    Ok(Some((Genome::aggregate(&genomes, &fitness)?, ids)))
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp-copy");
    std::fs::copy(from, &tmp).map_err(EvolveError::io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(EvolveError::io(to))?;
    Ok(())
}

/// Writes the swarm. `aggregated` is the aggregated genome with its fitness scores.
pub fn export_swarm(
    plan: &RunPlan,
    state: &RunState,
    factors: &FactorSet,
    factors_file: &Path,
    aggregated: Option<(&Genome, &[f64], &[u64])>,
    out: &Path,
) -> Result<SwarmManifest> {
    std::fs::create_dir_all(out).map_err(EvolveError::io(out))?;
    let names = plan.skill_names();
    let k = names.len();
    let name_of = |id: u64| {
        if (id as usize) < plan.experts.len() {
            format!("expert-{}", plan.experts[id as usize].name)
        } else {
            format!("e{id}")
        }
    };
    let mut elites: BTreeMap<u64, EliteEntry> = BTreeMap::new();
    for (i, a) in state.qd.archives().iter().enumerate() {
        for (cell, e) in a.iter() {
            let entry = elites.entry(e.genome).or_insert_with(|| {
                let mut scores = BTreeMap::new();
                let mut b = e.behaviour.iter();
                for (j, n) in names.iter().enumerate() {
                    let v = if j == i {
                        e.quality
                    } else {
                        b.next().copied().unwrap_or(0.0)
                    };
                    scores.insert(n.clone(), v);
                }
                let mut tags = Vec::new();
                if (e.genome as usize) < plan.experts.len() {
                    tags.push(format!("expert:{}", plan.experts[e.genome as usize].name));
                }
                EliteEntry {
                    id: name_of(e.genome),
                    scores,
                    cells: Vec::new(),
                    tags,
                    generation: e.meta.generation,
                    parents: e.meta.parents.iter().map(|p| name_of(*p)).collect(),
                }
            });
            entry.cells.push(CellEntry {
                archive: names[i].clone(),
                cell,
                coords: a.cell_coords(cell),
            });
        }
    }
    let mut best = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(e) = state.qd.best(i) {
            best.insert(name.clone(), name_of(e.genome));
            if let Some(entry) = elites.get_mut(&e.genome) {
                entry.tags.push(format!("best:{name}"));
            }
        }
    }
    let mut list: Vec<EliteEntry> = elites.into_values().collect();
    let mut genome_list: Vec<(String, &Genome)> = Vec::new();
    for a in state.qd.archives() {
        for e in a.elites() {
            let id = name_of(e.genome);
            if !genome_list.iter().any(|(n, _)| *n == id) {
                let g = state
                    .genomes
                    .get(&e.genome)
                    .ok_or_else(|| EvolveError::Eval(format!("genome {} missing", e.genome)))?;
                genome_list.push((id, g));
            }
        }
    }
    let mut aggregated_id = None;
    if let Some((g, scores, from)) = aggregated {
        let id = "aggregated".to_string();
        list.push(EliteEntry {
            id: id.clone(),
            scores: names.iter().cloned().zip(scores.iter().copied()).collect(),
            cells: Vec::new(),
            tags: vec!["aggregated".into()],
            generation: state.qd.generations_done(),
            parents: from.iter().map(|p| name_of(*p)).collect(),
        });
        genome_list.push((id.clone(), g));
        aggregated_id = Some(id);
    }
    let refs: Vec<(&str, &Genome)> = genome_list.iter().map(|(n, g)| (n.as_str(), *g)).collect();
    save_genomes(&out.join("genomes.safetensors"), &refs)?;
    copy_atomic(factors_file, &out.join("factors.safetensors"))?;
    let meta = factors.meta();
    let manifest = SwarmManifest {
        format: SWARM_FORMAT.into(),
        name: plan.name.clone(),
        base: ModelEntry {
            name: "base".into(),
            reference: plan.base.reference.clone(),
            hash: meta.base_hash.clone(),
            skill: None,
        },
        experts: plan
            .experts
            .iter()
            .zip(&meta.experts)
            .map(|(e, info)| ModelEntry {
                name: e.name.clone(),
                reference: e.reference.clone(),
                hash: info.hash.clone(),
                skill: Some(names[e.skill].clone()),
            })
            .collect(),
        skills: plan
            .skills
            .iter()
            .zip(&state.progress.ranges)
            .map(|(s, r)| {
                SkillEntry::new(
                    s.name(),
                    s.fitness.suite.clone(),
                    s.fitness.split.to_string(),
                    s.fitness.limit,
                    s.bins,
                    *r,
                )
            })
            .collect(),
        factors: FactorEntry {
            file: "factors.safetensors".into(),
            id: factors.id().into(),
            rank: meta.rank.clone(),
            max_rel_error: factors.max_rel_error(),
            genome_len: factors.layout().len(),
        },
        elites: list,
        best,
        aggregated: aggregated_id,
        generations: state.qd.generations_done(),
        seed: plan.seed,
    };
    debug_assert_eq!(manifest.skills.len(), k);
    let text = serde_json::to_vec_pretty(&manifest)?;
    swarm_model::write_atomic(&out.join("swarm.json"), &text)?;
    Ok(manifest)
}

/// Reads a swarm's manifest (checked: see [`SwarmManifest::load`]).
pub fn load_manifest(dir: &Path) -> Result<SwarmManifest> {
    Ok(SwarmManifest::load(dir)?)
}
