//! The router's skill classifier: multinomial logistic regression (softmax regression) over
//! hashed features (lower-cased word unigrams and bigrams, and character trigrams of words),
//! our own code.
//!
//! Why this model: it trains in a few passes of stochastic gradient descent over the skills'
//! training prompts (milliseconds), and classifies by summing a few hundred table look-ups,
//! so a request costs microseconds (measured in the tests and reported in the docs). It
//! replaced multinomial naive Bayes on the same features: naive Bayes counts every feature
//! as independent evidence, so a free-form shell question whose words also occur in coding
//! prompts ("implement", "return", "count") was outvoted; a discriminative model learns
//! which features separate the skills (measured in docs/performance.md, "The router's
//! classifier"). Each prompt is a set of features (presence, not counts) scaled to unit
//! length, so a long schema or docstring weighs no more than a one-line question. Features
//! are hashed into a fixed table (FNV-1a) so the model is a flat array whatever the
//! vocabulary.
//!
//! For the synthetic skills, two such models are pooled: one trained on the skills' prompt
//! formats, one on requests typed as people type them (`router_requests.tsv`); see
//! [`SkillClassifier::with_requests`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServeError};

/// L2 penalty on the weights (per example: the loss is the mean cross-entropy plus
/// `l2 / 2 * |w|^2`), as [`SkillClassifier::train`] takes it.
pub const DEFAULT_L2: f32 = 1e-4;

/// Hash table size (2^18 buckets of one f32 per skill: 1 MiB per skill).
const BUCKETS: usize = 1 << 18;

/// Passes of stochastic gradient descent over the training prompts.
const EPOCHS: usize = 8;

/// Step size of stochastic gradient descent (features have unit length, so steps of this
/// size are stable; measured from 0.1 to 1.0 with the same accuracy).
const LEARNING_RATE: f32 = 0.5;

/// Seed of the order in which training prompts are visited (training is deterministic).
const SHUFFLE_SEED: u64 = 0x5eed;

/// A trained classifier: per hashed feature, one weight per skill, and a bias per skill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillClassifier {
    skills: Vec<String>,
    /// `skills.len()` biases.
    bias: Vec<f32>,
    /// `BUCKETS` rows of `skills.len()` weights (feature-major: a feature's weights for every
    /// skill are adjacent, one cache line per look-up).
    weights: Vec<f32>,
    /// A second model of the same skills, trained on free-form requests: its posterior is
    /// pooled with this one's (see [`SkillClassifier::with_requests`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests: Option<Box<SkillClassifier>>,
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

/// Hashed features of a text, with repetition, in text order.
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

/// A text as the model sees it: its distinct features, each of value `scale` (unit length).
struct Encoded {
    feats: Vec<usize>,
    scale: f32,
}

fn encode(text: &str) -> Encoded {
    let mut feats = features(text);
    feats.sort_unstable();
    feats.dedup();
    let scale = 1.0 / (feats.len().max(1) as f32).sqrt();
    Encoded { feats, scale }
}

/// SplitMix64: the shuffle's random numbers (no dependency for one permutation per epoch).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// In-place softmax of `scores`.
fn softmax(scores: &mut [f64]) {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut z = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        z += *s;
    }
    for s in scores.iter_mut() {
        *s /= z;
    }
}

impl SkillClassifier {
    /// Trains on `(skill, text)` examples with L2 penalty `l2` (see [`DEFAULT_L2`]).
    ///
    /// Every skill weighs the same in the loss whatever its number of examples (each example
    /// of skill `k` weighs `n / (skills * n_k)`), so the classifier has no prior for the skill
    /// with the most prompts.
    pub fn train<'a>(
        examples: impl IntoIterator<Item = (&'a str, &'a str)>,
        l2: f32,
    ) -> Result<Self> {
        let mut labelled: Vec<(String, Encoded)> = examples
            .into_iter()
            .map(|(skill, text)| (skill.to_string(), encode(text)))
            .collect();
        let skills: Vec<String> = labelled
            .iter()
            .map(|(s, _)| s.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if skills.len() < 2 {
            return Err(ServeError::Config(format!(
                "the router's classifier needs examples of at least 2 skills, got {}",
                skills.len()
            )));
        }
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(ServeError::Config(format!(
                "the router's classifier needs a finite L2 penalty >= 0, got {l2}"
            )));
        }
        let k = skills.len();
        let data: Vec<(usize, Encoded)> = labelled
            .drain(..)
            .map(|(s, e)| (skills.iter().position(|x| *x == s).unwrap_or(0), e))
            .collect();
        let mut per_skill = vec![0usize; k];
        for (y, _) in &data {
            per_skill[*y] += 1;
        }
        let class_weight: Vec<f64> = per_skill
            .iter()
            .map(|&n| data.len() as f64 / (k as f64 * n.max(1) as f64))
            .collect();

        // Plain SGD on the weighted cross-entropy. The L2 decay multiplies every weight by
        // (1 - lr * l2) each step; it is kept as one factor `decay` (w = decay * v) so a step
        // costs the example's features, not the whole table (Bottou 2012, "Stochastic
        // gradient descent tricks", section 5.1).
        let mut v = vec![0f32; BUCKETS * k];
        let mut bias = vec![0f64; k];
        let mut decay: f64 = 1.0;
        let shrink = 1.0 - f64::from(LEARNING_RATE) * f64::from(l2);
        let lr = f64::from(LEARNING_RATE);
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = SHUFFLE_SEED;
        let mut p = vec![0f64; k];
        for _ in 0..EPOCHS {
            for i in (1..order.len()).rev() {
                let j = (splitmix(&mut rng) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            for &i in &order {
                let (y, x) = &data[i];
                let scale = f64::from(x.scale);
                p.copy_from_slice(&bias);
                for &f in &x.feats {
                    let row = &v[f * k..(f + 1) * k];
                    for (pk, w) in p.iter_mut().zip(row) {
                        *pk += decay * scale * f64::from(*w);
                    }
                }
                softmax(&mut p);
                decay *= shrink;
                for (c, pk) in p.iter_mut().enumerate() {
                    let target = if c == *y { 1.0 } else { 0.0 };
                    *pk = (*pk - target) * class_weight[*y];
                }
                for &f in &x.feats {
                    let row = &mut v[f * k..(f + 1) * k];
                    for (w, g) in row.iter_mut().zip(&p) {
                        *w -= (lr * g * scale / decay) as f32;
                    }
                }
                for (b, g) in bias.iter_mut().zip(&p) {
                    *b -= lr * g;
                }
                if decay < 1e-6 {
                    for w in v.iter_mut() {
                        *w = (f64::from(*w) * decay) as f32;
                    }
                    decay = 1.0;
                }
            }
        }
        for w in v.iter_mut() {
            *w = (f64::from(*w) * decay) as f32;
        }
        Ok(Self {
            skills,
            bias: bias.into_iter().map(|b| b as f32).collect(),
            weights: v,
            requests: None,
        })
    }

    /// Pools this classifier with `requests`, a classifier of the same skills trained on
    /// free-form requests: the posterior becomes their normalised geometric mean (log-linear
    /// pooling, equal weights). Why: a model trained on prompts of one form reads every
    /// request it has not seen the like of as the skill whose prompts look plainest, and a
    /// few dozen requests alone cannot learn the forms; pooled, each settles what it knows
    /// and defers where it is unsure (docs/performance.md, "The router's classifier").
    pub fn with_requests(mut self, requests: SkillClassifier) -> Result<Self> {
        if requests.skills != self.skills {
            return Err(ServeError::Config(format!(
                "the requests' classifier knows the skills {:?}, not {:?}",
                requests.skills, self.skills
            )));
        }
        self.requests = Some(Box::new(requests));
        Ok(self)
    }

    /// The skills known, in the order of [`SkillClassifier::mix`].
    pub fn skills(&self) -> &[String] {
        &self.skills
    }

    /// The posterior over skills (sums to 1). With no features (empty text) it is the
    /// softmax of the biases (pooled with the requests' model's, if any).
    pub fn mix(&self, text: &str) -> Vec<(String, f64)> {
        let x = encode(text);
        let mut posterior = self.posterior(&x);
        if let Some(requests) = &self.requests {
            // Log-linear pooling: the mean of the log-probabilities, normalised.
            for (p, q) in posterior.iter_mut().zip(requests.posterior(&x)) {
                *p = 0.5 * (p.max(f64::MIN_POSITIVE).ln() + q.max(f64::MIN_POSITIVE).ln());
            }
            softmax(&mut posterior);
        }
        self.skills.iter().cloned().zip(posterior).collect()
    }

    /// This model's own posterior over its skills for an encoded text.
    fn posterior(&self, x: &Encoded) -> Vec<f64> {
        let k = self.skills.len();
        let mut sums = vec![0f32; k];
        for &f in &x.feats {
            let row = &self.weights[f * k..(f + 1) * k];
            for (s, w) in sums.iter_mut().zip(row) {
                *s += *w;
            }
        }
        let mut scores: Vec<f64> = sums
            .iter()
            .zip(&self.bias)
            .map(|(s, b)| f64::from(*b) + f64::from(x.scale) * f64::from(*s))
            .collect();
        softmax(&mut scores);
        scores
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

/// The user turns without the labels of swarm-tasks' prompt formats ("Task: ", "Request: ",
/// ...): the task as a client that does not use those formats asks it.
pub fn task_text(messages: &[swarm_tasks::ChatMessage]) -> String {
    swarm_tasks::without_format_labels(&user_turns_text(messages))
}

impl SkillClassifier {
    /// Trains on the training split of every skill's synthetic suite.
    pub fn train_on_skills(per_skill: usize, seed: u64) -> Result<Self> {
        Self::train_on(&swarm_tasks::Skill::ALL, per_skill, seed)
    }

    /// Trains on the training split of `skills`' synthetic suites, each prompt read three
    /// ways: with its system prompt ([`routing_text`]), without ([`user_turns_text`]: clients
    /// that send none), and without the labels of the prompt formats (`task_text`: clients
    /// that do not use them), so that the classifier learns the tasks rather than the formats;
    /// plus each prompt's gold answer as code ([`swarm_tasks::answer_code`]: requests made
    /// of a query, a command or a function, which the prompts themselves never show). Pooled
    /// with a model of the hand-written free-form requests of these skills
    /// ([`free_form_requests`], [`SkillClassifier::with_requests`]) when every skill has some.
    pub fn train_on(skills: &[swarm_tasks::Skill], per_skill: usize, seed: u64) -> Result<Self> {
        let readings: [fn(&[swarm_tasks::ChatMessage]) -> String; 3] =
            [routing_text, user_turns_text, task_text];
        let mut data: Vec<(&str, String)> = Vec::new();
        for &skill in skills {
            let split = swarm_tasks::Split::Train;
            for e in swarm_tasks::generate_synthetic(skill, split, per_skill, seed) {
                for read in readings {
                    data.push((skill.name(), read(&e.prompt)));
                }
                let code = swarm_tasks::answer_code(&e.gold);
                if !code.trim().is_empty() {
                    data.push((skill.name(), code));
                }
            }
        }
        let formats = Self::train(data.iter().map(|(s, t)| (*s, t.as_str())), DEFAULT_L2)?;
        let requests: Vec<(&str, &str)> = free_form_requests()
            .filter(|(skill, _)| skills.iter().any(|k| k.name() == *skill))
            .collect();
        match Self::train(requests, DEFAULT_L2) {
            Ok(requests) if requests.skills == formats.skills => formats.with_requests(requests),
            // Skills without hand-written requests: the formats' model alone.
            _ => Ok(formats),
        }
    }
}

/// Requests as people type them, written by hand per skill (`router_requests.tsv`):
/// `(skill, text)`.
pub fn free_form_requests() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("router_requests.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
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
        let clf =
            SkillClassifier::train(c.iter().map(|(s, t)| (*s, t.as_str())), DEFAULT_L2).unwrap();
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
    fn needs_two_skills_and_a_valid_penalty() {
        assert!(SkillClassifier::train([("coding", "x")], 1.0).is_err());
        let two = [("coding", "def f(): pass"), ("database", "SELECT 1")];
        assert!(SkillClassifier::train(two, f32::NAN).is_err());
        assert!(SkillClassifier::train(two, -1.0).is_err());
        assert!(SkillClassifier::train(two, 0.0).is_ok());
    }

    #[test]
    fn deterministic_and_not_biased_to_the_larger_skill() {
        // 10 database prompts against 200 coding ones: the database question still wins,
        // and the same data gives the same model.
        let mut v: Vec<(&str, String)> = (0..200)
            .map(|i| {
                (
                    "coding",
                    format!("Write a Python function f{i}(xs) returning xs[{i}]"),
                )
            })
            .collect();
        v.extend((0..10).map(|i| ("database", format!("SELECT name FROM t{i} WHERE id = {i};"))));
        let train =
            || SkillClassifier::train(v.iter().map(|(s, t)| (*s, t.as_str())), DEFAULT_L2).unwrap();
        let (a, b) = (train(), train());
        assert_eq!(
            a.predict("SELECT id FROM users WHERE name = 'x';"),
            "database"
        );
        assert_eq!(a.mix("SELECT 1"), b.mix("SELECT 1"));
    }

    #[test]
    fn a_requests_model_is_pooled_as_the_geometric_mean() {
        let c = corpus();
        let formats =
            SkillClassifier::train(c.iter().map(|(s, t)| (*s, t.as_str())), DEFAULT_L2).unwrap();
        let requests = SkillClassifier::train(
            [
                ("coding", "implement binary search"),
                ("database", "how many orders per customer"),
                ("os", "kill the process on port 80"),
            ],
            DEFAULT_L2,
        )
        .unwrap();
        let text = "how many orders per customer";
        let (p, q) = (formats.mix(text), requests.mix(text));
        let pooled = formats.clone().with_requests(requests).unwrap().mix(text);
        let unnormalised: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a.1 * b.1).sqrt()).collect();
        let z: f64 = unnormalised.iter().sum();
        for ((skill, got), want) in pooled.iter().zip(&unnormalised) {
            assert!(
                (got - want / z).abs() < 1e-9,
                "{skill}: {got} vs {}",
                want / z
            );
        }
        assert_eq!(
            pooled.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            formats.skills()
        );
        // A model of other skills cannot be pooled.
        let two = SkillClassifier::train([("coding", "f"), ("os", "ls")], DEFAULT_L2).unwrap();
        let e = formats.with_requests(two).unwrap_err().to_string();
        assert!(e.contains("skills"), "{e}");
    }

    #[test]
    fn the_synthetic_skills_router_pools_the_free_form_requests() {
        let clf = SkillClassifier::train_on_skills(30, 0).unwrap();
        assert!(clf.requests.is_some());
        assert!(free_form_requests().count() >= 150);
    }
}
