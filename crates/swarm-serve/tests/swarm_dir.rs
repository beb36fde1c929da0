//! Serving a swarm directory end to end: a tiny swarm is built on disk (a random base, three
//! "experts" perturbed from it, their SVD factors, genomes and `swarm.json` written with the
//! manifest types), opened with [`load_swarm_dir`] and served in-process. `/v1/models` must
//! list the skills and elites with their scores, `swarm/<skill>` must take the best elite for
//! that skill, an elite id that elite, and what an elite answers must be what its genome,
//! materialised directly, answers. Bad directories must fail with their reason.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::Device;
use serde_json::{json, Value};
use swarm_merge::testing::{perturbed, random_model, tiny_config};
use swarm_merge::{
    materialise_to_weights, save_genomes, EliteEntry, FactorEntry, FactorSet, FactoriseOptions,
    Genome, ModelEntry, SkillEntry, SwarmManifest, SWARM_FORMAT, SWARM_GENOMES_FILE,
};
use swarm_model::{
    generate, GenerationParams, Llama, LlamaConfig, Precision, StreamControl, TensorSource,
    Tokenizer, Weights,
};
use swarm_serve::{
    app, load_swarm_dir, AppState, ModelEngine, ModelEngineConfig, ServerConfig, ELITE_HEADER,
};
use tower::ServiceExt;

const SKILLS: [&str; 3] = ["coding", "database", "os"];

/// Word-level tokenizer: `<pad>` `<s>` `</s>` then `t3` .. `t63` (the tiny config's vocab).
fn tokenizer() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<pad>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for i in 3..64 {
        vocab.insert(format!("t{i}"), i.into());
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}
    });
    let inner: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    Tokenizer::new(inner, Some("<s>".into()), Some("</s>".into()))
}

/// The tiny config with weights large enough that greedy decoding depends on them (the
/// elites must answer differently, or the test could not tell them apart).
fn config() -> LlamaConfig {
    tiny_config()
}

fn scaled(w: &Weights, factor: f64) -> Weights {
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

struct TinySwarm {
    _dir: tempfile::TempDir,
    swarm: std::path::PathBuf,
    base_dir: std::path::PathBuf,
    base: Weights,
    factors: FactorSet,
    genomes: BTreeMap<String, Genome>,
}

/// Scores chosen so that each skill has a different best elite, and the child is best on
/// none alone but best on the mean.
fn scores() -> Vec<(&'static str, [f64; 3])> {
    vec![
        ("expert-coding", [0.9, 0.1, 0.2]),
        ("expert-database", [0.2, 0.8, 0.1]),
        ("expert-os", [0.1, 0.2, 0.7]),
        ("e7", [0.6, 0.6, 0.6]),
    ]
}

fn build_swarm() -> TinySwarm {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let base = scaled(&random_model(&config, 1), 25.0);
    let experts: Vec<Weights> = (0..3).map(|k| perturbed(&base, 10 + k, 0.5)).collect();
    let base_dir = dir.path().join("base");
    swarm_model::save_hf_dir(&base_dir, &config, &base, &tokenizer(), None).unwrap();
    let named: Vec<(&str, &dyn TensorSource)> = SKILLS
        .iter()
        .zip(&experts)
        .map(|(s, w)| (*s, w as &dyn TensorSource))
        .collect();
    let factors = FactorSet::factorise(&base, &named, &FactoriseOptions::default()).unwrap();
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
    let refs: Vec<(&str, &Genome)> = genomes.iter().map(|(n, g)| (n.as_str(), g)).collect();
    save_genomes(&swarm.join(SWARM_GENOMES_FILE), &refs).unwrap();

    let meta = factors.meta();
    let manifest = SwarmManifest {
        format: SWARM_FORMAT.into(),
        name: "tiny".into(),
        base: ModelEntry {
            name: "base".into(),
            reference: base_dir.display().to_string(),
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
            .map(|s| SkillEntry {
                name: s.to_string(),
                suite: "synthetic".into(),
                split: "validation".into(),
                episodes: Some(8),
                bins: 5,
                range: (0.0, 1.0),
                metric: "mean episode score".into(),
            })
            .collect(),
        factors: FactorEntry {
            file: "factors.safetensors".into(),
            id: factors.id().into(),
            rank: meta.rank.clone(),
            max_rel_error: factors.max_rel_error(),
            genome_len: layout.len(),
        },
        elites: scores()
            .into_iter()
            .map(|(id, s)| EliteEntry {
                id: id.into(),
                scores: SKILLS.iter().map(|k| k.to_string()).zip(s).collect(),
                cells: vec![],
                tags: vec![],
                generation: 0,
                parents: vec![],
            })
            .collect(),
        best: [
            ("coding".to_string(), "expert-coding".to_string()),
            ("database".to_string(), "expert-database".to_string()),
            ("os".to_string(), "expert-os".to_string()),
        ]
        .into(),
        aggregated: None,
        generations: 1,
        seed: 0,
    };
    manifest.save(&swarm).unwrap();
    TinySwarm {
        _dir: dir,
        swarm,
        base_dir,
        base,
        factors,
        genomes,
    }
}

/// The swarm served in-process, once the engine is ready.
async fn serve(dir: &Path, memory_budget: usize) -> AppState {
    let (router, loaded) =
        load_swarm_dir(dir, Device::Cpu, Precision::F32, memory_budget, None).unwrap();
    let engine = ModelEngine::start(ModelEngineConfig::default(), move || Ok(loaded)).unwrap();
    let state = AppState::new(Arc::new(engine), router, ServerConfig::default());
    // Readiness is polled, not timed: the first elite is materialised before it.
    for _ in 0..600 {
        let (status, _, _) =
            send(&state, Request::get("/ready").body(Body::empty()).unwrap()).await;
        if status == StatusCode::OK {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the engine never became ready");
}

async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
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

const PROMPT: [u32; 5] = [5, 17, 33, 8, 41];
const MAX_TOKENS: usize = 12;

/// `/v1/completions` on token ids, greedy: (elite that served, text).
async fn complete(state: &AppState, model: &str) -> (String, String) {
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

/// What the genome of `elite` answers when materialised directly (no server, no cache).
fn direct_answer(s: &TinySwarm, elite: &str) -> String {
    let weights =
        materialise_to_weights(&s.base, &s.factors, &s.genomes[elite], &Device::Cpu).unwrap();
    let model = Llama::load(&weights, &config(), &Device::Cpu, Precision::F32).unwrap();
    let out = generate(
        &model,
        &tokenizer(),
        &[PROMPT.to_vec()],
        &[GenerationParams::greedy(MAX_TOKENS)],
        |_| StreamControl::Continue,
    )
    .unwrap();
    out[0].text.clone()
}

#[tokio::test]
async fn serves_a_swarm_directory() {
    let s = build_swarm();
    // Room for two elites: serving all four goes through evictions and rematerialisation.
    let two = 2 * swarm_serve::model_bytes(&config(), Precision::F32);
    let state = serve(&s.swarm, two).await;

    // The router, one entry per skill (with the elite it takes), every elite with scores.
    let (status, _, v) = send(
        &state,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cards = v["data"].as_array().unwrap();
    let ids: Vec<&str> = cards.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "swarm",
            "swarm/coding",
            "swarm/database",
            "swarm/os",
            "expert-coding",
            "expert-database",
            "expert-os",
            "e7"
        ]
    );
    assert_eq!(cards[0]["swarm"]["classifier"], true);
    for (id, expected) in scores() {
        let card = cards.iter().find(|c| c["id"] == id).unwrap();
        assert_eq!(card["parent"], s.base_dir.display().to_string());
        assert_eq!(card["owned_by"], "tiny");
        for (skill, score) in SKILLS.iter().zip(expected) {
            assert_eq!(card["swarm"]["scores"][skill], score, "{id} {skill}");
        }
    }

    // `swarm/<skill>`: the best elite for the skill serves.
    for skill in SKILLS {
        let (elite, _) = complete(&state, &format!("swarm/{skill}")).await;
        assert_eq!(elite, format!("expert-{skill}"));
        let card = cards
            .iter()
            .find(|c| c["id"] == format!("swarm/{skill}"))
            .unwrap();
        assert_eq!(card["swarm"]["elite"], elite.as_str());
    }

    // An elite id serves that elite, and answers what its genome answers materialised
    // directly; the elites answer differently, so a mix-up would show.
    let mut answers = BTreeMap::new();
    for (id, _) in scores() {
        let (elite, text) = complete(&state, id).await;
        assert_eq!(elite, id);
        assert_eq!(text, direct_answer(&s, id), "elite {id}");
        answers.insert(id, text);
    }
    let distinct: std::collections::BTreeSet<&String> = answers.values().collect();
    assert!(distinct.len() >= 3, "the elites answer alike: {answers:?}");
    // Again, after the evictions the budget of two forced: the same answers.
    for (id, _) in scores().into_iter().rev() {
        assert_eq!(
            complete(&state, id).await.1,
            answers[id],
            "elite {id} again"
        );
    }

    // The router: a SQL request goes to the database expert, a Python one to the coder.
    for (text, elite) in [
        (
            "Write an SQL query: SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
            "expert-database",
        ),
        (
            "Write a Python function def is_prime(n) that returns True when n is prime.",
            "expert-coding",
        ),
    ] {
        let body = json!({"model": "swarm", "max_tokens": 2, "temperature": 0,
                          "messages": [{"role": "user", "content": text}]});
        let req = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, served, v) = send(&state, req).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(served.as_deref(), Some(elite), "{text}");
    }

    // Unknown ids are 404s.
    let body = json!({"model": "e999", "prompt": "t5", "max_tokens": 1});
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(send(&state, req).await.0, StatusCode::NOT_FOUND);
}

fn open_error(dir: &Path) -> String {
    match load_swarm_dir(dir, Device::Cpu, Precision::F32, 1 << 30, None) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_swarm_directories_say_why() {
    let s = build_swarm();

    // Not a swarm at all.
    let err = open_error(&s.base_dir);
    assert!(err.contains("has no swarm.json"), "{err}");

    // A missing genome file.
    let genomes = s.swarm.join(SWARM_GENOMES_FILE);
    let kept = std::fs::read(&genomes).unwrap();
    std::fs::remove_file(&genomes).unwrap();
    let err = open_error(&s.swarm);
    assert!(err.contains("genomes.safetensors is missing"), "{err}");
    std::fs::write(&genomes, &kept).unwrap();

    // Another format.
    let manifest_path = s.swarm.join("swarm.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("swarm/1", "swarm/9")).unwrap();
    let err = open_error(&s.swarm);
    assert!(err.contains("\"swarm/9\", expected \"swarm/1\""), "{err}");

    // A manifest whose elite has no genome.
    std::fs::write(&manifest_path, manifest.replace("\"e7\"", "\"e8\"")).unwrap();
    let err = open_error(&s.swarm);
    assert!(
        err.contains("elite `e8` of the manifest has no genome"),
        "{err}"
    );
    std::fs::write(&manifest_path, &manifest).unwrap();

    // A base that is not the one the factors were made from.
    let other = scaled(&random_model(&config(), 99), 25.0);
    swarm_model::save_hf_dir(&s.base_dir, &config(), &other, &tokenizer(), None).unwrap();
    let err = open_error(&s.swarm);
    assert!(
        err.contains("the base does not match the swarm") && err.contains("not the base"),
        "{err}"
    );
    swarm_model::save_hf_dir(&s.base_dir, &config(), &s.base, &tokenizer(), None).unwrap();

    // Put back, it opens.
    assert!(load_swarm_dir(&s.swarm, Device::Cpu, Precision::F32, 1 << 30, None).is_ok());
}
