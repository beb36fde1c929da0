//! Serving a swarm directory end to end: a tiny swarm is built on disk (a random base, three
//! "experts" perturbed from it, their SVD factors, genomes and `swarm.json` written with the
//! manifest types), opened with [`load_swarm_dir`] and served in-process. `/v1/models` must
//! list the skills and elites with their scores, `swarm/<skill>` must take the best elite for
//! that skill, an elite id that elite, and what an elite answers must be what its genome,
//! materialised directly, answers. Bad directories must fail with their reason.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::Device;
use common::swarm::{
    base_model, complete, send, serve_loaded, TinySwarm, MAX_TOKENS, PROMPT, SKILLS,
};
use common::{greedy, tokenizer};
use serde_json::json;
use swarm_merge::testing::tiny_config;
use swarm_merge::{materialise_to_weights, Rank, SWARM_GENOMES_FILE};
use swarm_model::{Llama, Precision};
use swarm_serve::{load_swarm_dir, AppState};

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

/// The three experts and their child `e7`, listed in the order of [`scores`].
fn build_swarm() -> TinySwarm {
    let s = TinySwarm::new(Rank::Full);
    s.save(&scores());
    s
}

/// The swarm served in-process, once the engine is ready; `/ready` must say so.
async fn serve(dir: &Path, memory_budget: usize) -> AppState {
    let (router, loaded) =
        load_swarm_dir(dir, Device::Cpu, Precision::F32, memory_budget, None).unwrap();
    let (state, _engine) = serve_loaded(router, loaded).await;
    let (status, _, v) = send(&state, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    state
}

/// What the genome of `elite` answers when materialised directly (no server, no cache).
fn direct_answer(s: &TinySwarm, elite: &str) -> String {
    let weights =
        materialise_to_weights(&s.base, &s.factors, &s.genomes[elite], &Device::Cpu).unwrap();
    let model = Llama::load(&weights, &tiny_config(), &Device::Cpu, Precision::F32).unwrap();
    greedy(&model, &PROMPT, MAX_TOKENS).text
}

#[tokio::test]
async fn serves_a_swarm_directory() {
    let s = build_swarm();
    // Room for two elites: serving all four goes through evictions and rematerialisation.
    let two = 2 * swarm_serve::model_bytes(&tiny_config(), Precision::F32);
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
    let other = base_model(99);
    swarm_model::save_hf_dir(&s.base_dir, &tiny_config(), &other, &tokenizer(), None).unwrap();
    let err = open_error(&s.swarm);
    assert!(
        err.contains("the base does not match the swarm") && err.contains("not the base"),
        "{err}"
    );
    swarm_model::save_hf_dir(&s.base_dir, &tiny_config(), &s.base, &tokenizer(), None).unwrap();

    // Put back, it opens.
    assert!(load_swarm_dir(&s.swarm, Device::Cpu, Precision::F32, 1 << 30, None).is_ok());
}
