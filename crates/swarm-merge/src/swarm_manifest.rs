//! `swarm.json`, the manifest of a swarm on disk (`agents/<name>/`, see `agents/README.md`):
//! the types `swarm evolve` writes and `swarm serve` reads, and the checks a manifest must
//! pass before anything trusts it.
//!
//! It lives here, below both of them, because a swarm is a base, factors and genomes, which
//! is this crate's vocabulary: the writer (swarm-evolve) and the reader (swarm-serve) share
//! one definition without depending on each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{MergeError, Result};

/// Format tag of `swarm.json`.
pub const SWARM_FORMAT: &str = "swarm/1";
/// The manifest's file name in a swarm directory.
pub const SWARM_MANIFEST_FILE: &str = "swarm.json";
/// The genomes' file name in a swarm directory (one tensor per elite, named by its id).
pub const SWARM_GENOMES_FILE: &str = "genomes.safetensors";

/// A model reference in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    /// As given in the run config (path, GGUF, hub id with revision, `toy:<name>`).
    pub reference: String,
    /// swarm-merge's content hash of its tensors.
    pub hash: String,
    /// The skill an expert was trained for (experts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
}

/// A skill in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillEntry {
    pub name: String,
    pub suite: String,
    pub split: String,
    pub episodes: Option<usize>,
    pub bins: usize,
    pub range: (f64, f64),
    /// Metric the score is (mean episode score in [0, 1]).
    pub metric: String,
}

/// The metric every score in a swarm is: each episode scores in [0, 1], a skill's score is
/// their mean.
pub const MEAN_EPISODE_SCORE: &str = "mean episode score";

impl SkillEntry {
    /// A skill scored by [`MEAN_EPISODE_SCORE`] on `episodes` episodes (all when `None`) of
    /// `suite`'s `split`, with `bins` bins over `range` as a behaviour axis.
    pub fn new(
        name: impl Into<String>,
        suite: impl Into<String>,
        split: impl Into<String>,
        episodes: Option<usize>,
        bins: usize,
        range: (f64, f64),
    ) -> Self {
        Self {
            name: name.into(),
            suite: suite.into(),
            split: split.into(),
            episodes,
            bins,
            range,
            metric: MEAN_EPISODE_SCORE.into(),
        }
    }
}

/// Where an elite sits in one archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellEntry {
    /// The archive's quality skill.
    pub archive: String,
    pub cell: usize,
    /// Bin per behaviour axis (the other skills, in skill order).
    pub coords: Vec<usize>,
}

/// One elite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EliteEntry {
    /// Unique in the swarm; also the genome's tensor name in `genomes.safetensors`.
    pub id: String,
    /// Fitness-split score per skill.
    pub scores: BTreeMap<String, f64>,
    pub cells: Vec<CellEntry>,
    /// `expert:<name>`, `best:<skill>`, `aggregated`.
    pub tags: Vec<String>,
    pub generation: u64,
    pub parents: Vec<String>,
}

/// The factor set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorEntry {
    /// File name in the swarm directory.
    pub file: String,
    pub id: String,
    pub rank: String,
    pub max_rel_error: f64,
    pub genome_len: usize,
}

/// `swarm.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmManifest {
    pub format: String,
    pub name: String,
    pub base: ModelEntry,
    pub experts: Vec<ModelEntry>,
    pub skills: Vec<SkillEntry>,
    pub factors: FactorEntry,
    pub elites: Vec<EliteEntry>,
    /// Id of the best elite per skill.
    pub best: BTreeMap<String, String>,
    /// Id of the paper's aggregated model.
    pub aggregated: Option<String>,
    pub generations: u64,
    pub seed: u64,
}

impl SwarmManifest {
    /// Reads and checks `dir/swarm.json`.
    pub fn load(dir: &Path) -> Result<SwarmManifest> {
        let path = dir.join(SWARM_MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| MergeError::io(&path, e))?;
        Self::from_json(&bytes, &path)
    }

    /// Parses and checks a manifest's bytes; `path` names it in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<SwarmManifest> {
        // The format tag first, so that a manifest of another version says so rather than
        // failing on the first field that changed.
        let raw: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| MergeError::file(path, format!("not valid JSON: {e}")))?;
        match raw.get("format").and_then(|f| f.as_str()) {
            Some(SWARM_FORMAT) => {}
            Some(other) => {
                return Err(MergeError::file(
                    path,
                    format!("swarm format {other:?}, expected {SWARM_FORMAT:?}"),
                ))
            }
            None => {
                return Err(MergeError::file(
                    path,
                    format!("no `format` field: not a swarm manifest ({SWARM_FORMAT:?})"),
                ))
            }
        }
        let manifest: SwarmManifest = serde_json::from_value(raw)
            .map_err(|e| MergeError::file(path, format!("not a swarm manifest: {e}")))?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Checks what serde cannot: ids unique and non-empty, scores only for known skills and
    /// finite, `best`/`aggregated` naming elites that exist, the factor file a plain name.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(MergeError::file(path, message));
        if self.format != SWARM_FORMAT {
            return bad(format!(
                "swarm format {:?}, expected {SWARM_FORMAT:?}",
                self.format
            ));
        }
        let mut skills = BTreeSet::new();
        for s in &self.skills {
            if s.name.is_empty() || !skills.insert(s.name.as_str()) {
                return bad(format!("skill name {:?} is empty or repeated", s.name));
            }
        }
        if self.elites.is_empty() {
            return bad("`elites` is empty: a swarm needs at least one elite".to_string());
        }
        let mut ids = BTreeSet::new();
        for e in &self.elites {
            // `__` prefixes are reserved in safetensors; `/` would make the id a route.
            if e.id.is_empty() || e.id.starts_with("__") || e.id.contains('/') {
                return bad(format!(
                    "elite id {:?} is not usable (empty, `__...` or containing `/`)",
                    e.id
                ));
            }
            if !ids.insert(e.id.as_str()) {
                return bad(format!("elite id {:?} appears twice", e.id));
            }
            for (skill, score) in &e.scores {
                if !skills.contains(skill.as_str()) {
                    return bad(format!(
                        "elite {:?} has a score for {skill:?}, which is not in `skills`",
                        e.id
                    ));
                }
                if !score.is_finite() {
                    return bad(format!(
                        "elite {:?}: score for {skill:?} is {score}, not a number",
                        e.id
                    ));
                }
            }
        }
        for (skill, id) in &self.best {
            if !skills.contains(skill.as_str()) {
                return bad(format!("`best` names skill {skill:?}, not in `skills`"));
            }
            if !ids.contains(id.as_str()) {
                return bad(format!("`best.{skill}` is {id:?}, not an elite"));
            }
        }
        if let Some(id) = &self.aggregated {
            if !ids.contains(id.as_str()) {
                return bad(format!("`aggregated` is {id:?}, not an elite"));
            }
        }
        let file = Path::new(&self.factors.file);
        let plain = file.components().count() == 1
            && matches!(
                file.components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !plain {
            return bad(format!(
                "`factors.file` is {:?}: it must be a file name inside the swarm directory",
                self.factors.file
            ));
        }
        Ok(())
    }

    /// The elite with id `id`.
    pub fn elite(&self, id: &str) -> Option<&EliteEntry> {
        self.elites.iter().find(|e| e.id == id)
    }

    /// Skill names, in the order of every score vector.
    pub fn skill_names(&self) -> Vec<String> {
        self.skills.iter().map(|s| s.name.clone()).collect()
    }

    /// The factor file of the swarm in `dir`.
    pub fn factors_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.factors.file)
    }

    /// Writes `dir/swarm.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SWARM_MANIFEST_FILE);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| MergeError::file(&path, format!("cannot encode the manifest: {e}")))?;
        swarm_model::write_atomic(&path, &text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> SwarmManifest {
        let model = |name: &str| ModelEntry {
            name: name.into(),
            reference: format!("toy:{name}"),
            hash: "h".into(),
            skill: None,
        };
        SwarmManifest {
            format: SWARM_FORMAT.into(),
            name: "t".into(),
            base: model("base"),
            experts: vec![model("coding")],
            skills: vec![SkillEntry::new(
                "coding",
                "synthetic",
                "validation",
                Some(8),
                5,
                (0.0, 1.0),
            )],
            factors: FactorEntry {
                file: "factors.safetensors".into(),
                id: "f".into(),
                rank: "full".into(),
                max_rel_error: 0.0,
                genome_len: 3,
            },
            elites: vec![EliteEntry {
                id: "e1".into(),
                scores: [("coding".to_string(), 0.5)].into(),
                cells: vec![],
                tags: vec![],
                generation: 0,
                parents: vec![],
            }],
            best: [("coding".to_string(), "e1".to_string())].into(),
            aggregated: None,
            generations: 1,
            seed: 0,
        }
    }

    fn error_of(m: &SwarmManifest) -> String {
        let bytes = serde_json::to_vec(m).unwrap();
        SwarmManifest::from_json(&bytes, Path::new("x/swarm.json"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn round_trips_through_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest();
        m.save(dir.path()).unwrap();
        assert_eq!(SwarmManifest::load(dir.path()).unwrap(), m);
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let mut m = manifest();
        m.format = "swarm/0".into();
        assert!(error_of(&m).contains("\"swarm/0\", expected \"swarm/1\""));

        let mut m = manifest();
        m.elites.push(m.elites[0].clone());
        assert!(error_of(&m).contains("appears twice"));

        let mut m = manifest();
        m.best.insert("coding".into(), "nobody".into());
        assert!(error_of(&m).contains("\"nobody\", not an elite"));

        let mut m = manifest();
        m.elites[0].scores.insert("cooking".into(), 1.0);
        assert!(error_of(&m).contains("\"cooking\", which is not in `skills`"));

        let mut m = manifest();
        m.factors.file = "../../etc/passwd".into();
        assert!(error_of(&m).contains("`factors.file`"));

        let err = SwarmManifest::from_json(b"{\"format\": \"swarm/1\"}", Path::new("s.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a swarm manifest") && err.contains("missing field"));
        let err = SwarmManifest::from_json(b"[1,", Path::new("s.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let err = SwarmManifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("swarm.json"), "{err}");
    }
}
