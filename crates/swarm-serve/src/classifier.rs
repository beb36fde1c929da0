//! The router's skill classifier: multinomial naive Bayes over hashed features (lower-cased
//! word unigrams and bigrams, and character trigrams of words), our own code.
//!
//! Why naive Bayes: it trains in one pass over the skills' training prompts, needs no
//! hyper-parameter search, and classifies by summing a few hundred table look-ups, so a
//! request costs microseconds (measured in the tests and reported in the docs). Features are
//! hashed into a fixed table (FNV-1a) so the model is a flat array whatever the vocabulary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServeError};

/// Laplace smoothing of the feature counts.
pub const DEFAULT_SMOOTHING: f32 = 0.1;

/// Hash table size (2^18 buckets per skill, f32: 1 MiB per skill).
const BUCKETS: usize = 1 << 18;

/// A trained classifier: per skill, a log-prior and log-likelihoods of hashed features.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillClassifier {
    skills: Vec<String>,
    log_prior: Vec<f32>,
    /// `skills.len()` rows of `BUCKETS` log-probabilities.
    log_likelihood: Vec<Vec<f32>>,
}

fn fnv1a(parts: &[&[u8]]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) % BUCKETS
}

/// Hashed features of a text (with repetition: counts matter to multinomial NB).
pub fn features(text: &str) -> Vec<usize> {
    let lower = text.to_lowercase();
    // Words keep code punctuation as their own tokens: `SELECT`, `*`, `;`, `|`, `def`, `(`.
    let mut words: Vec<&str> = Vec::new();
    let mut start = None;
    for (i, c) in lower.char_indices() {
        if c.is_alphanumeric() || c == '_' {
            if start.is_none() {
                start = Some(i);
            }
        } else {
            if let Some(s) = start.take() {
                words.push(&lower[s..i]);
            }
            if !c.is_whitespace() {
                words.push(&lower[i..i + c.len_utf8()]);
            }
        }
    }
    if let Some(s) = start {
        words.push(&lower[s..]);
    }
    let mut out = Vec::with_capacity(words.len() * 4);
    for (i, w) in words.iter().enumerate() {
        out.push(fnv1a(&[b"w", w.as_bytes()]));
        if i > 0 {
            out.push(fnv1a(&[b"b", words[i - 1].as_bytes(), w.as_bytes()]));
        }
        let bytes = w.as_bytes();
        if bytes.len() > 3 {
            for tri in bytes.windows(3) {
                out.push(fnv1a(&[b"c", tri]));
            }
        }
    }
    out
}

impl SkillClassifier {
    /// Trains on `(skill, text)` examples with Laplace smoothing `alpha`.
    pub fn train<'a>(
        examples: impl IntoIterator<Item = (&'a str, &'a str)>,
        alpha: f32,
    ) -> Result<Self> {
        let mut counts: BTreeMap<String, (usize, Vec<f32>)> = BTreeMap::new();
        for (skill, text) in examples {
            let entry = counts
                .entry(skill.to_string())
                .or_insert_with(|| (0, vec![0.0; BUCKETS]));
            entry.0 += 1;
            for f in features(text) {
                entry.1[f] += 1.0;
            }
        }
        if counts.len() < 2 {
            return Err(ServeError::Config(format!(
                "the router's classifier needs examples of at least 2 skills, got {}",
                counts.len()
            )));
        }
        let total_docs: usize = counts.values().map(|(n, _)| n).sum();
        let mut skills = Vec::new();
        let mut log_prior = Vec::new();
        let mut log_likelihood = Vec::new();
        for (skill, (docs, feats)) in counts {
            let total: f32 = feats.iter().sum::<f32>() + alpha * BUCKETS as f32;
            skills.push(skill);
            log_prior.push((docs as f32 / total_docs as f32).ln());
            log_likelihood.push(feats.iter().map(|c| ((c + alpha) / total).ln()).collect());
        }
        Ok(Self {
            skills,
            log_prior,
            log_likelihood,
        })
    }

    /// The skills known, in the order of [`SkillClassifier::mix`].
    pub fn skills(&self) -> &[String] {
        &self.skills
    }

    /// The posterior over skills (sums to 1). With no features (empty text) it is the prior.
    pub fn mix(&self, text: &str) -> Vec<(String, f64)> {
        let feats = features(text);
        let scores: Vec<f64> = (0..self.skills.len())
            .map(|k| {
                let row = &self.log_likelihood[k];
                f64::from(self.log_prior[k]) + feats.iter().map(|&f| f64::from(row[f])).sum::<f64>()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = exp.iter().sum();
        self.skills
            .iter()
            .cloned()
            .zip(exp.into_iter().map(|e| e / z))
            .collect()
    }

    /// The most likely skill.
    pub fn predict(&self, text: &str) -> &str {
        let mix = self.mix(text);
        let best = mix
            .iter()
            .enumerate()
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        &self.skills[best]
    }

    /// Accuracy per skill on labelled examples: `skill -> (correct, total)`.
    pub fn evaluate<'a>(
        &self,
        examples: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> BTreeMap<String, (usize, usize)> {
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (skill, text) in examples {
            let e = out.entry(skill.to_string()).or_default();
            e.1 += 1;
            if self.predict(text) == skill {
                e.0 += 1;
            }
        }
        out
    }
}

/// What the router reads of a task prompt: every turn, the system prompt included (as for
/// requests: a client's system prompt often says more about the skill than its question).
pub fn routing_text(messages: &[swarm_tasks::ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The non-system turns of a task prompt: how a client that sends no system prompt (or a
/// generic one) asks.
pub fn user_turns_text(messages: &[swarm_tasks::ChatMessage]) -> String {
    messages
        .iter()
        .filter(|m| m.role != swarm_tasks::Role::System)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `(skill, text)` examples from the skills' synthetic suites, `per_skill` of each, read as
/// the router reads requests ([`routing_text`]).
pub fn synthetic_examples(
    split: swarm_tasks::Split,
    per_skill: usize,
    seed: u64,
) -> Vec<(String, String)> {
    synthetic_prompts(split, per_skill, seed, routing_text)
}

/// `(skill, text)` examples from the skills' synthetic suites, each prompt read by `read`.
pub fn synthetic_prompts(
    split: swarm_tasks::Split,
    per_skill: usize,
    seed: u64,
    read: fn(&[swarm_tasks::ChatMessage]) -> String,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for skill in swarm_tasks::Skill::ALL {
        for e in swarm_tasks::generate_synthetic(skill, split, per_skill, seed) {
            out.push((skill.name().to_string(), read(&e.prompt)));
        }
    }
    out
}

impl SkillClassifier {
    /// Trains on the training split of every skill's synthetic suite.
    pub fn train_on_skills(per_skill: usize, seed: u64) -> Result<Self> {
        Self::train_on(&swarm_tasks::Skill::ALL, per_skill, seed)
    }

    /// Trains on the training split of `skills`' synthetic suites, each prompt twice: with
    /// its system prompt and without (so that requests without one are not misread).
    pub fn train_on(skills: &[swarm_tasks::Skill], per_skill: usize, seed: u64) -> Result<Self> {
        let split = swarm_tasks::Split::Train;
        let data: Vec<(String, String)> = synthetic_prompts(split, per_skill, seed, routing_text)
            .into_iter()
            .chain(synthetic_prompts(split, per_skill, seed, user_turns_text))
            .filter(|(s, _)| skills.iter().any(|k| k.name() == s))
            .collect();
        Self::train(
            data.iter().map(|(s, t)| (s.as_str(), t.as_str())),
            DEFAULT_SMOOTHING,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        for i in 0..40 {
            v.push(("coding", format!("Write a Python function f{i}(xs) that returns the sum of a list; def f{i}(xs): return sum(xs)")));
            v.push((
                "database",
                format!(
                    "Write an SQL query: SELECT name FROM table_{i} WHERE age > {i} ORDER BY name;"
                ),
            ));
            v.push(("os", format!("Using bash, count the files in /tmp/dir{i} with ls | wc -l and print the number")));
        }
        v
    }

    #[test]
    fn separates_the_skills() {
        let c = corpus();
        let clf = SkillClassifier::train(c.iter().map(|(s, t)| (*s, t.as_str())), 0.1).unwrap();
        assert_eq!(
            clf.predict("def add(a, b): return a + b  # python"),
            "coding"
        );
        assert_eq!(
            clf.predict("SELECT count(*) FROM users WHERE id = 3"),
            "database"
        );
        assert_eq!(clf.predict("find /var/log -name '*.log' | wc -l"), "os");
        let mix = clf.mix("hello");
        let total: f64 = mix.iter().map(|(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn needs_two_skills() {
        assert!(SkillClassifier::train([("coding", "x")], 1.0).is_err());
    }
}
