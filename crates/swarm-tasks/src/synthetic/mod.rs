//! Synthetic suites: seeded, deterministic, with disjoint train / validation / test splits.
//!
//! Each task is drawn from a family (a template) and its *semantic parameters* (constants,
//! the value asked about, the threshold...). A task belongs to the split its family and
//! parameters hash to (80 / 10 / 10), so a test task never shares its parameters with a
//! training task: memorising training answers cannot pass the test split, while the
//! families themselves are shared, so the skill is learnable. Surface details (function
//! names, file names, rows) vary freely on top.

pub mod coding;
pub mod database;
pub mod os;

use std::fmt;
use std::str::FromStr;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::episode::{Episode, Skill};
use crate::error::TaskError;

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// For training.
    Train,
    /// For model selection.
    Validation,
    /// For final evaluation.
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = TaskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "validation" | "valid" | "val" | "dev" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            _ => Err(TaskError::Unknown {
                kind: "split",
                name: s.into(),
                known: "train, validation, test".into(),
            }),
        }
    }
}

/// The split a family + parameter key belongs to.
pub fn split_of(key: &str) -> Split {
    let digest = Sha256::digest(key.as_bytes());
    match digest[0] % 10 {
        0..=7 => Split::Train,
        8 => Split::Validation,
        _ => Split::Test,
    }
}

/// A generated task before it becomes an episode: its split key and the episode.
pub(crate) struct Draft {
    pub key: String,
    pub episode: Episode,
}

/// Generates `n` episodes of a skill's synthetic suite for a split. Same arguments, same
/// episodes.
pub fn generate(skill: Skill, split: Split, n: usize, seed: u64) -> Vec<Episode> {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(skill.name().as_bytes());
    h.update(split.name().as_bytes());
    let d = h.finalize();
    let mut seed_bytes = [0u8; 32];
    seed_bytes.copy_from_slice(&d);
    let mut rng = ChaCha8Rng::from_seed(seed_bytes);
    let mut out = Vec::with_capacity(n);
    let mut attempts = 0usize;
    while out.len() < n && attempts < n * 200 + 1000 {
        attempts += 1;
        let draft = match skill {
            Skill::Coding => coding::draft(&mut rng),
            Skill::Database => database::draft(&mut rng),
            Skill::Os => os::draft(&mut rng),
        };
        if split_of(&draft.key) != split {
            continue;
        }
        let mut ep = draft.episode;
        ep.suite = "synthetic".into();
        ep.id = format!("synthetic-{}-{}/{}", skill.name(), split.name(), out.len());
        out.push(ep);
    }
    out
}

/// Vocabulary for names and words.
pub(crate) const WORDS: &[&str] = &[
    "apple", "river", "stone", "cloud", "tiger", "maple", "orbit", "pixel", "delta", "ember",
    "frost", "grape", "honey", "ivory", "jelly", "koala", "lemon", "mango", "noble", "ocean",
    "pearl", "quilt", "robin", "solar", "tulip", "umber", "vivid", "willow", "yacht", "zebra",
];

pub(crate) fn pick<'a, R: rand::Rng>(rng: &mut R, items: &'a [&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        for skill in Skill::ALL {
            let a = generate(skill, Split::Train, 20, 7);
            let b = generate(skill, Split::Train, 20, 7);
            assert_eq!(a.len(), 20);
            let pa: Vec<_> = a.iter().map(|e| e.prompt.clone()).collect();
            let pb: Vec<_> = b.iter().map(|e| e.prompt.clone()).collect();
            assert_eq!(pa, pb);
            let c = generate(skill, Split::Train, 20, 8);
            assert_ne!(pa, c.iter().map(|e| e.prompt.clone()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn split_names_parse() -> Result<(), TaskError> {
        assert_eq!("val".parse::<Split>()?, Split::Validation);
        assert!("holdout".parse::<Split>().is_err());
        Ok(())
    }
}
