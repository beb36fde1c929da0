//! Synthetic suites: seeded, deterministic, with disjoint train / validation / test splits.
//!
//! Each task is drawn from a family (a template) and its *semantic parameters* (constants,
//! the value asked about, the threshold...). The parameters decide the split (about
//! 80 / 10 / 10 within each family), so a test task never shares its parameters with a
//! training task: memorising training answers cannot pass the test split, while the
//! families themselves are shared, so the skill is learnable. Surface details (function
//! names, file names, rows) vary freely on top.
//!
//! Every split holds every family, in the same shares: [`generate`] picks the family first
//! and then draws that family's tasks until one belongs to the split. Validation therefore
//! asks the same kinds of questions as test, which is what makes it fit for model
//! selection. Families whose parameters are a small finite set (the coding suite's
//! constants) are split by [`split_of_index`], which holds out at least one parameter
//! setting for validation and one for test; open-ended ones (file names, table values)
//! by the hash of their key, [`split_of`].

pub mod coding;
pub mod database;
pub mod os;

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
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

/// The split a family + parameter key belongs to, by its hash (80 / 10 / 10). For families
/// with many parameter settings; a family with few may miss a split by chance, which
/// `split_of_index` rules out.
pub fn split_of(key: &str) -> Split {
    let digest = Sha256::digest(key.as_bytes());
    match digest[0] % 10 {
        0..=7 => Split::Train,
        8 => Split::Validation,
        _ => Split::Test,
    }
}

/// The split of parameter setting `index` of a family with `count` settings in all.
///
/// A fixed permutation of `0..count` (chosen by the family's name) puts one tenth of the
/// settings, rounded up, in validation, as many in test, and the rest in train; so every
/// family with three or more settings reaches every split. With fewer than three, every
/// setting is for training.
pub fn split_of_index(family: &str, index: usize, count: usize) -> Split {
    if count < 3 {
        return Split::Train;
    }
    let held_out = count.div_ceil(10);
    let digest = Sha256::digest(family.as_bytes());
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let n = count as u64;
    let offset = word(0) % n;
    // An affine map x -> stride·x + offset is a permutation of 0..n when gcd(stride, n) = 1.
    let mut stride = 1 + word(8) % (n - 1);
    while gcd(stride, n) != 1 {
        stride = stride % (n - 1) + 1;
    }
    let position = ((index as u64 % n) * stride + offset) % n;
    match position as usize {
        p if p < held_out => Split::Validation,
        p if p < 2 * held_out => Split::Test,
        _ => Split::Train,
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A generated task before it becomes an episode: its split key, its split and the episode.
pub(crate) struct Draft {
    /// The family and its semantic parameters, e.g. `coding/affine/3/7`.
    #[cfg_attr(not(test), allow(dead_code, reason = "the split tests compare keys"))]
    pub key: String,
    pub split: Split,
    pub episode: Episode,
}

/// The families of a skill's suite, in the order its `draft` numbers them.
pub fn families(skill: Skill) -> &'static [&'static str] {
    match skill {
        Skill::Coding => coding::FAMILIES,
        Skill::Database => database::FAMILIES,
        Skill::Os => os::FAMILIES,
    }
}

fn draft(skill: Skill, rng: &mut ChaCha8Rng, family: usize) -> Draft {
    match skill {
        Skill::Coding => coding::draft(rng, family),
        Skill::Database => database::draft(rng, family),
        Skill::Os => os::draft(rng, family),
    }
}

/// How many drafts of one family [`generate`] tries before it gives up on that pick: a
/// family holds about a tenth of its settings in each held-out split, so 200 tries miss
/// one with odds of about 1e-9.
const TRIES_PER_FAMILY: usize = 200;

/// Generates `n` episodes of a skill's synthetic suite for a split. Same arguments, same
/// episodes.
pub fn generate(skill: Skill, split: Split, n: usize, seed: u64) -> Vec<Episode> {
    generate_drafts(skill, split, n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, (family, draft))| {
            let mut ep = draft.episode;
            ep.suite = "synthetic".into();
            ep.id = format!("synthetic-{}-{}/{i}", skill.name(), split.name());
            ep.family = families(skill).get(family).map(|name| name.to_string());
            ep
        })
        .collect()
}

/// [`generate`]'s drafts, each with its family's index.
fn generate_drafts(skill: Skill, split: Split, n: usize, seed: u64) -> Vec<(usize, Draft)> {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(skill.name().as_bytes());
    h.update(split.name().as_bytes());
    let d = h.finalize();
    let mut seed_bytes = [0u8; 32];
    seed_bytes.copy_from_slice(&d);
    let mut rng = ChaCha8Rng::from_seed(seed_bytes);
    let family_count = families(skill).len();
    let mut out = Vec::with_capacity(n);
    // Bounded, so that a family with no setting in `split` cannot stall generation.
    for _ in 0..n * 4 + 16 {
        if out.len() == n {
            break;
        }
        let family = rng.gen_range(0..family_count);
        let found = (0..TRIES_PER_FAMILY)
            .map(|_| draft(skill, &mut rng, family))
            .find(|d| d.split == split);
        if let Some(found) = found {
            out.push((family, found));
        }
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
    fn split_of_index_holds_out_a_tenth_of_every_family_and_at_least_one() {
        for count in 3..=300 {
            let mut per_split = [0usize; 3];
            for index in 0..count {
                let split = split_of_index("coding/family", index, count);
                per_split[match split {
                    Split::Train => 0,
                    Split::Validation => 1,
                    Split::Test => 2,
                }] += 1;
            }
            let held_out = count.div_ceil(10);
            assert_eq!(
                per_split,
                [count - 2 * held_out, held_out, held_out],
                "{count} settings"
            );
        }
        assert_eq!(split_of_index("coding/family", 0, 2), Split::Train);
        assert_eq!(split_of_index("coding/family", 1, 2), Split::Train);
    }

    #[test]
    fn every_family_reaches_every_split() {
        for skill in Skill::ALL {
            let names = families(skill);
            for split in Split::ALL {
                let drafts = generate_drafts(skill, split, 40 * names.len(), 3);
                assert_eq!(drafts.len(), 40 * names.len(), "{skill:?} {split:?}");
                for (family, name) in names.iter().enumerate() {
                    assert!(
                        drafts.iter().any(|(f, _)| *f == family),
                        "{skill:?}: family {name} has no task in {split:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn validation_and_test_ask_the_same_mix_of_families() {
        for skill in Skill::ALL {
            let names = families(skill);
            let share = |split| {
                let drafts = generate_drafts(skill, split, 600, 11);
                let mut counts = vec![0.0f64; names.len()];
                for (f, _) in &drafts {
                    counts[*f] += 1.0 / drafts.len() as f64;
                }
                counts
            };
            let (validation, test) = (share(Split::Validation), share(Split::Test));
            for (f, name) in names.iter().enumerate() {
                // Both are draws of the same uniform mix: at 600 draws a gap of 0.06 between
                // the two shares is about 3 standard deviations.
                assert!(
                    (validation[f] - test[f]).abs() < 0.06,
                    "{skill:?} family {name}: validation {:.3} vs test {:.3}",
                    validation[f],
                    test[f]
                );
            }
        }
    }

    #[test]
    fn held_out_tasks_never_share_settings_with_training_tasks() {
        for skill in Skill::ALL {
            let keys = |split| -> std::collections::HashSet<String> {
                generate_drafts(skill, split, 400, 5)
                    .into_iter()
                    .map(|(_, d)| d.key)
                    .collect()
            };
            let train = keys(Split::Train);
            for split in [Split::Validation, Split::Test] {
                let held_out = keys(split);
                assert!(
                    held_out.is_disjoint(&train),
                    "{skill:?}: a {split:?} setting is also a training setting"
                );
            }
        }
    }

    #[test]
    fn split_names_parse() -> Result<(), TaskError> {
        assert_eq!("val".parse::<Split>()?, Split::Validation);
        assert!("holdout".parse::<Split>().is_err());
        Ok(())
    }
}
