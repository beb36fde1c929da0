//! The router: a request's `model` field, plus its text, resolved to the elite that serves it.
//!
//! - `swarm` (the default): classify every turn into a skill mix `p`, then take the elite
//!   with the best expected score `Σ_s p_s · score_s` from the scores stored in the swarm;
//! - `swarm/<skill>`: the elite with the best score for that skill;
//! - an elite id: that elite.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::classifier::SkillClassifier;
use crate::error::ApiError;
use crate::openai::ModelCard;
use crate::validation::ROUTER_MODEL;

/// One elite as the router and `/v1/models` see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EliteInfo {
    pub id: String,
    /// Per-skill scores in [0, 1], as stored in the swarm.
    #[serde(default)]
    pub scores: BTreeMap<String, f64>,
}

/// What the HTTP layer knows of the swarm it serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwarmInfo {
    /// The swarm's name (`owned_by` of every entry).
    pub name: String,
    /// The base model reference (the `parent` of every elite).
    pub base: String,
    pub skills: Vec<String>,
    pub elites: Vec<EliteInfo>,
    /// Unix seconds (the `created` of every entry).
    #[serde(default)]
    pub created: u64,
}

/// The router's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub elite: String,
    /// The skill mix used (empty when the request named an elite).
    pub mix: Vec<(String, f64)>,
}

/// Resolves `model` names to elites.
#[derive(Debug, Clone)]
pub struct Router {
    swarm: SwarmInfo,
    classifier: Option<SkillClassifier>,
}

impl Router {
    /// A router over `swarm`; without a classifier `swarm` serves the elite with the best
    /// mean score.
    pub fn new(swarm: SwarmInfo, classifier: Option<SkillClassifier>) -> Self {
        Self { swarm, classifier }
    }

    pub fn swarm(&self) -> &SwarmInfo {
        &self.swarm
    }

    pub fn classifier(&self) -> Option<&SkillClassifier> {
        self.classifier.as_ref()
    }

    /// The elite with the best expected score for `mix`; among equals, the best mean score
    /// over all skills (the safer pick when the mix is a guess), then the first listed.
    fn best_for(&self, mix: &[(String, f64)]) -> Option<&EliteInfo> {
        let mean = |e: &EliteInfo| -> f64 {
            let n = e.scores.len().max(1) as f64;
            e.scores.values().sum::<f64>() / n
        };
        let expected = |e: &EliteInfo| -> f64 {
            if mix.is_empty() {
                return mean(e);
            }
            mix.iter()
                .map(|(s, p)| p * e.scores.get(s).copied().unwrap_or(0.0))
                .sum()
        };
        let mut best: Option<(&EliteInfo, (f64, f64))> = None;
        for e in &self.swarm.elites {
            let v = (expected(e), mean(e));
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((e, v));
            }
        }
        best.map(|(e, _)| e)
    }

    /// Resolves `model` (and the request's text, for the router) to an elite.
    pub fn route(&self, model: &str, text: impl FnOnce() -> String) -> Result<Route, ApiError> {
        let not_found = || ApiError::model_not_found(model);
        if model == ROUTER_MODEL {
            let mix = match &self.classifier {
                Some(c) => c.mix(&text()),
                None => Vec::new(),
            };
            let elite = self.best_for(&mix).ok_or_else(not_found)?;
            return Ok(Route {
                elite: elite.id.clone(),
                mix,
            });
        }
        if let Some(skill) = model.strip_prefix("swarm/") {
            if self.swarm.skills.iter().any(|s| s == skill) {
                let mix = vec![(skill.to_string(), 1.0)];
                let elite = self.best_for(&mix).ok_or_else(not_found)?;
                return Ok(Route {
                    elite: elite.id.clone(),
                    mix,
                });
            }
        }
        match self.swarm.elites.iter().find(|e| e.id == model) {
            Some(e) => Ok(Route {
                elite: e.id.clone(),
                mix: Vec::new(),
            }),
            None => Err(not_found()),
        }
    }

    /// `GET /v1/models`: the router, one entry per skill, then every elite.
    pub fn model_cards(&self) -> Vec<ModelCard> {
        let s = &self.swarm;
        let card = |id: String, parent: Option<String>, extra: serde_json::Value| ModelCard {
            id,
            object: "model".to_string(),
            created: s.created,
            owned_by: s.name.clone(),
            parent,
            swarm: Some(extra),
        };
        let mut out = vec![card(
            ROUTER_MODEL.to_string(),
            None,
            json!({"kind": "router", "skills": s.skills, "elites": s.elites.len(),
                   "classifier": self.classifier.is_some()}),
        )];
        for skill in &s.skills {
            let best = self.best_for(&[(skill.clone(), 1.0)]).map(|e| e.id.clone());
            out.push(card(
                format!("swarm/{skill}"),
                None,
                json!({"kind": "skill", "skill": skill, "elite": best}),
            ));
        }
        for e in &s.elites {
            out.push(card(
                e.id.clone(),
                Some(s.base.clone()),
                json!({"kind": "elite", "scores": e.scores}),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swarm() -> SwarmInfo {
        let elite = |id: &str, c: f64, d: f64| EliteInfo {
            id: id.into(),
            scores: [("coding".to_string(), c), ("database".to_string(), d)].into(),
        };
        SwarmInfo {
            name: "toy".into(),
            base: "base".into(),
            skills: vec!["coding".into(), "database".into()],
            elites: vec![
                elite("a", 0.9, 0.1),
                elite("b", 0.2, 0.8),
                elite("c", 0.6, 0.6),
            ],
            created: 0,
        }
    }

    #[test]
    fn routes_by_name() {
        let r = Router::new(swarm(), None);
        assert_eq!(r.route("swarm/coding", String::new).unwrap().elite, "a");
        assert_eq!(r.route("swarm/database", String::new).unwrap().elite, "b");
        assert_eq!(r.route("b", String::new).unwrap().elite, "b");
        // No classifier: best mean score.
        assert_eq!(r.route("swarm", String::new).unwrap().elite, "c");
        // A tie on the requested skill goes to the better generalist, wherever it is listed.
        let mut tied = swarm();
        tied.elites.push(EliteInfo {
            id: "d".into(),
            scores: [("coding".to_string(), 0.9), ("database".to_string(), 0.5)].into(),
        });
        let r2 = Router::new(tied, None);
        assert_eq!(r2.route("swarm/coding", String::new).unwrap().elite, "d");
        assert_eq!(
            r.route("swarm/os", String::new)
                .unwrap_err()
                .status
                .as_u16(),
            404
        );
        assert_eq!(
            r.route("zzz", String::new).unwrap_err().code,
            Some("model_not_found")
        );
    }

    #[test]
    fn routes_by_mix() {
        let mut examples = Vec::new();
        for i in 0..20 {
            examples.push((
                "coding",
                format!("def f{i}(x): return x + {i}  # python function"),
            ));
            examples.push(("database", format!("SELECT * FROM t{i} WHERE x = {i};")));
        }
        let clf = SkillClassifier::train(
            examples.iter().map(|(s, t)| (*s, t.as_str())),
            crate::classifier::DEFAULT_L2,
        )
        .unwrap();
        let r = Router::new(swarm(), Some(clf));
        let route = r
            .route("swarm", || "SELECT name FROM users WHERE x = 1;".into())
            .unwrap();
        assert_eq!(route.elite, "b");
        let route = r
            .route("swarm", || "def g(y): return y  # python".into())
            .unwrap();
        assert_eq!(route.elite, "a");
        let cards = r.model_cards();
        assert_eq!(cards.len(), 1 + 2 + 3);
        assert_eq!(cards[3].parent.as_deref(), Some("base"));
        assert_eq!(cards[1].id, "swarm/coding");
    }
}
