//! A tiny swarm directory on disk: a random base, three "experts" perturbed from it, their
//! SVD factors, genomes and `swarm.json` written with swarm-merge's manifest types; and the
//! HTTP helpers to serve it in-process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use swarm_merge::testing::{perturbed, random_model, tiny_config};
use swarm_merge::{
    save_genomes, EliteEntry, FactorEntry, FactorSet, FactoriseOptions, Genome, ModelEntry, Rank,
    SkillEntry, SwarmManifest, SWARM_FORMAT, SWARM_GENOMES_FILE,
};
use swarm_model::{TensorSource, Weights};
use swarm_serve::{
    app, AppState, LoadedSwarm, ModelEngine, ModelEngineConfig, Router, ServerConfig, ELITE_HEADER,
};
use tower::ServiceExt;

use super::{tokenizer, wait_ready};

/// The experts' skills, in the order of every score vector.
pub const SKILLS: [&str; 3] = ["coding", "database", "os"];
/// The prompt (token ids) the elites are asked, and how many tokens they answer.
pub const PROMPT: [u32; 5] = [5, 17, 33, 8, 41];
pub const MAX_TOKENS: usize = 12;

/// Matrices scaled so that greedy decoding depends on the weights (the elites must answer
/// differently, or the tests could not tell them apart); norms kept.
pub fn scaled(w: &Weights, factor: f64) -> Weights {
    let mut out = Weights::new();
    for (name, t) in w.iter() {
        let t = if name.ends_with("norm.weight") {
            t.clone()
        } else {
            t.affine(factor, 0.0).unwrap()
        };
        out.insert(name.clone(), t);
    }
    out
}

/// The random base of every tiny swarm (`seed` 1), or another one.
pub fn base_model(seed: u64) -> Weights {
    scaled(&random_model(&tiny_config(), seed), 25.0)
}

pub struct TinySwarm {
    _dir: tempfile::TempDir,
    /// The swarm directory (`swarm.json`, factors, genomes) once [`TinySwarm::save`]d.
    pub swarm: PathBuf,
    /// The base as an HF directory, with the tokenizer.
    pub base_dir: PathBuf,
    pub base: Weights,
    pub factors: FactorSet,
    /// `expert-<skill>` for each skill and `e7` (0.7 coding + 0.3 database); tests may add.
    pub genomes: BTreeMap<String, Genome>,
}

impl TinySwarm {
    /// The base saved, the experts factorised at `rank` and the factors saved; the genomes
    /// and the manifest wait for [`TinySwarm::save`].
    pub fn new(rank: Rank) -> TinySwarm {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config();
        let base = base_model(1);
        let experts: Vec<Weights> = (0..3).map(|k| perturbed(&base, 10 + k, 0.5)).collect();
        let base_dir = dir.path().join("base");
        swarm_model::save_hf_dir(&base_dir, &config, &base, &tokenizer(), None).unwrap();
        let named: Vec<(&str, &dyn TensorSource)> = SKILLS
            .iter()
            .zip(&experts)
            .map(|(s, w)| (*s, w as &dyn TensorSource))
            .collect();
        let options = FactoriseOptions {
            rank,
            ..FactoriseOptions::default()
        };
        let factors = FactorSet::factorise(&base, &named, &options).unwrap();
        let swarm = dir.path().join("swarm");
        std::fs::create_dir_all(&swarm).unwrap();
        factors.save(&swarm.join("factors.safetensors")).unwrap();
        let layout = factors.layout();
        let mut genomes = BTreeMap::new();
        for (k, s) in SKILLS.iter().enumerate() {
            genomes.insert(format!("expert-{s}"), Genome::expert(layout, k).unwrap());
        }
        let child = genomes["expert-coding"]
            .weighted_pair(&genomes["expert-database"], 0.7, 0.3)
            .unwrap();
        genomes.insert("e7".to_string(), child);
        TinySwarm {
            _dir: dir,
            swarm,
            base_dir,
            base,
            factors,
            genomes,
        }
    }

    /// Writes the genomes and `swarm.json`: the manifest lists `elites` (id, scores by
    /// [`SKILLS`]) in that order, and `expert-<skill>` is the best for each skill.
    pub fn save(&self, elites: &[(&str, [f64; 3])]) {
        let refs: Vec<(&str, &Genome)> =
            self.genomes.iter().map(|(n, g)| (n.as_str(), g)).collect();
        save_genomes(&self.swarm.join(SWARM_GENOMES_FILE), &refs).unwrap();
        let meta = self.factors.meta();
        let manifest = SwarmManifest {
            format: SWARM_FORMAT.into(),
            name: "tiny".into(),
            base: ModelEntry {
                name: "base".into(),
                reference: self.base_dir.display().to_string(),
                hash: meta.base_hash.clone(),
                skill: None,
            },
            experts: SKILLS
                .iter()
                .zip(&meta.experts)
                .map(|(s, info)| ModelEntry {
                    name: s.to_string(),
                    reference: format!("toy:{s}"),
                    hash: info.hash.clone(),
                    skill: Some(s.to_string()),
                })
                .collect(),
            skills: SKILLS
                .iter()
                .map(|s| SkillEntry::new(*s, "synthetic", "validation", Some(8), 5, (0.0, 1.0)))
                .collect(),
            factors: FactorEntry {
                file: "factors.safetensors".into(),
                id: self.factors.id().into(),
                rank: meta.rank.clone(),
                max_rel_error: self.factors.max_rel_error(),
                genome_len: self.factors.layout().len(),
            },
            elites: elites
                .iter()
                .map(|(id, s)| EliteEntry {
                    id: id.to_string(),
                    scores: SKILLS.iter().map(|k| k.to_string()).zip(*s).collect(),
                    cells: vec![],
                    tags: vec![],
                    generation: 0,
                    parents: vec![],
                })
                .collect(),
            best: SKILLS
                .iter()
                .map(|s| (s.to_string(), format!("expert-{s}")))
                .collect(),
            aggregated: None,
            generations: 1,
            seed: 0,
        };
        manifest.save(&self.swarm).unwrap();
    }
}

/// A router and swarm served in-process, once the engine is ready.
pub async fn serve_loaded(router: Router, loaded: LoadedSwarm) -> (AppState, Arc<ModelEngine>) {
    let engine =
        Arc::new(ModelEngine::start(ModelEngineConfig::default(), move || Ok(loaded)).unwrap());
    let state = AppState::new(engine.clone(), router, ServerConfig::default());
    // Readiness is polled, not timed: the first elite is materialised before it.
    wait_ready(&engine).await;
    (state, engine)
}

/// One request: (status, the elite that served it, the JSON body or `Null`).
pub async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app(state.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let elite = response
        .headers()
        .get(ELITE_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, elite, value)
}

/// `/v1/completions` on [`PROMPT`], greedy: (elite that served, text). The response's model
/// must be that elite.
pub async fn complete(state: &AppState, model: &str) -> (String, String) {
    let body = json!({"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                      "temperature": 0});
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, elite, v) = send(state, req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let elite = elite.unwrap();
    assert_eq!(v["model"], elite.as_str());
    (elite, v["choices"][0]["text"].as_str().unwrap().to_string())
}
