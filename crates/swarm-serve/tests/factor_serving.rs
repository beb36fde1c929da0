//! Serving elites straight from the experts' factors: a tiny swarm is built on disk like in
//! `swarm_dir.rs` (a random base, three "experts" perturbed from it, their SVD factors,
//! genomes and `swarm.json`), and every elite served from factors (the base's dense weights
//! shared, a low-rank delta per matrix) must answer exactly what the same elite materialised
//! answers (greedy), at full rank and with truncated factors, alone and through the engine
//! with mixed elites in flight; the `Auto` policy must materialise an elite once it has run
//! enough tokens from factors, and never wait for room in the budget.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use swarm_merge::testing::{perturbed, random_model, tiny_config};
use swarm_merge::{
    save_genomes, EliteEntry, FactorEntry, FactorSet, FactoriseOptions, Genome, ModelEntry, Rank,
    SkillEntry, SwarmManifest, SWARM_FORMAT, SWARM_GENOMES_FILE,
};
use swarm_model::{
    generate, GenerationParams, Llama, Precision, StreamControl, TensorSource, Tokenizer, Weights,
};
use swarm_serve::{
    app, load_swarm_dir_with, open_swarm, AppState, EliteCache, EliteSource, Engine, ModelEngine,
    ModelEngineConfig, ServerConfig, ServingPolicy, ELITE_HEADER,
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

/// Matrices scaled so that greedy decoding depends on the weights (the elites must answer
/// differently, or the test could not tell them apart); norms kept.
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
    ids: Vec<String>,
}

/// Three experts, a two-parent child and a three-parent mutated child (every expert active:
/// the delta of each matrix sums three low-rank terms), with factors at `rank`.
fn build_swarm(rank: Rank) -> TinySwarm {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config();
    let base = scaled(&random_model(&config, 1), 25.0);
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
    // A mutation-like change of every coefficient, so no two experts' terms are in
    // proportion.
    let mixed = child
        .weighted_pair(&genomes["expert-os"], 0.6, 0.4)
        .unwrap();
    let values: Vec<f32> = mixed
        .values()
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + 0.3 * (i as f32).sin()))
        .collect();
    let grandchild = Genome::from_values(layout, values).unwrap();
    genomes.insert("e7".to_string(), child);
    genomes.insert("e9".to_string(), grandchild);
    let refs: Vec<(&str, &Genome)> = genomes.iter().map(|(n, g)| (n.as_str(), g)).collect();
    save_genomes(&swarm.join(SWARM_GENOMES_FILE), &refs).unwrap();

    let meta = factors.meta();
    let ids: Vec<String> = genomes.keys().cloned().collect();
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
        elites: ids
            .iter()
            .enumerate()
            .map(|(i, id)| EliteEntry {
                id: id.clone(),
                scores: SKILLS
                    .iter()
                    .enumerate()
                    .map(|(k, s)| (s.to_string(), ((i + k) % 5) as f64 / 5.0))
                    .collect(),
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
    manifest.save(&swarm).unwrap();
    TinySwarm {
        _dir: dir,
        swarm,
        ids,
    }
}

const PROMPT: [u32; 5] = [5, 17, 33, 8, 41];
const MAX_TOKENS: usize = 12;

fn greedy(model: &Llama) -> Vec<u32> {
    let out = generate(
        model,
        &tokenizer(),
        &[PROMPT.to_vec()],
        &[GenerationParams::greedy(MAX_TOKENS)],
        |_| StreamControl::Continue,
    )
    .unwrap();
    out[0].token_ids.clone()
}

fn greedy_text(model: &Llama) -> String {
    let out = generate(
        model,
        &tokenizer(),
        &[PROMPT.to_vec()],
        &[GenerationParams::greedy(MAX_TOKENS)],
        |_| StreamControl::Continue,
    )
    .unwrap();
    out[0].text.clone()
}

fn logits(model: &Llama) -> Tensor {
    let ids = Tensor::new(&PROMPT, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&ids, &mut model.new_cache(1, 0)).unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    (norm(&(a - b).unwrap()) / norm(b)).sqrt()
}

/// Every elite from factors = the same elite materialised: logits to 1e-4 (relative),
/// greedy tokens exactly.
fn check_factored_equals_materialised(rank: Rank) {
    let s = build_swarm(rank);
    let opened = open_swarm(&s.swarm).unwrap();
    let swarm = &opened.swarm;
    let mut answers = BTreeMap::new();
    for id in &s.ids {
        let dense = swarm.load(id, &Device::Cpu, Precision::F32).unwrap();
        let factored = swarm.factored(id, &Device::Cpu, Precision::F32).unwrap();
        let rel = rel_diff(&logits(&factored), &logits(&dense));
        assert!(rel < 1e-4, "{rank} {id}: logits differ by {rel} (relative)");
        let tokens = greedy(&dense);
        assert_eq!(
            greedy(&factored),
            tokens,
            "{rank} {id}: greedy tokens differ"
        );
        answers.insert(id.clone(), tokens);
    }
    let distinct: std::collections::BTreeSet<&Vec<u32>> = answers.values().collect();
    assert!(distinct.len() >= 3, "the elites answer alike: {answers:?}");
}

#[test]
fn factored_elites_answer_what_materialised_elites_answer_full_rank() {
    check_factored_equals_materialised(Rank::Full);
}

#[test]
fn factored_elites_answer_what_materialised_elites_answer_truncated() {
    check_factored_equals_materialised(Rank::Top(3));
}

#[test]
fn auto_policy_materialises_hot_elites_and_never_waits() {
    let s = build_swarm(Rank::Full);
    let opened = open_swarm(&s.swarm).unwrap();
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);
    let mut cache = EliteCache::new(Box::new(opened.swarm), Device::Cpu, Precision::F32, one)
        .with_policy(ServingPolicy::Auto {
            materialise_after: 20,
        });
    cache.prepare().unwrap();
    // Cold: from factors, nothing materialised, no room needed.
    let e7 = cache.get("e7").unwrap();
    assert_eq!(
        (cache.loads, cache.factored_builds, cache.resident()),
        (0, 1, 0)
    );
    assert!(!cache.needs_room("e7"));
    // Built once: the same model again.
    assert!(Arc::ptr_eq(&e7, &cache.get("e7").unwrap()));
    // Hot: materialised once it has generated 20 tokens (a prompt token counts as 1/10).
    cache.record_tokens("e7", 9, 19);
    cache.get("e7").unwrap();
    assert_eq!(cache.loads, 0);
    cache.record_tokens("e7", 1, 0);
    let dense = cache.get("e7").unwrap();
    assert_eq!((cache.loads, cache.resident(), cache.factored()), (1, 1, 0));
    // Another hot elite while e7 is in use (its Arc held) and the budget holds one: it is
    // served from factors instead of waiting or going over the budget.
    cache.record_tokens("e9", 0, 100);
    let e9 = cache.get("e9").unwrap();
    assert_eq!((cache.loads, cache.resident()), (1, 1));
    assert!(cache.is_resident("e7") && !cache.is_resident("e9"));
    drop((dense, e7, e9));
    // Once e7 is idle, e9 (hot) takes its place.
    cache.get("e9").unwrap();
    assert_eq!((cache.loads, cache.resident()), (2, 1));
    assert!(cache.is_resident("e9"));
    // e7 starts again from zero after its eviction: from factors.
    cache.get("e7").unwrap();
    assert_eq!(cache.loads, 2);

    // `Materialise` never serves from factors, and waits for room.
    let opened = open_swarm(&s.swarm).unwrap();
    let mut cache = EliteCache::new(Box::new(opened.swarm), Device::Cpu, Precision::F32, one)
        .with_policy(ServingPolicy::Materialise);
    assert!(cache.needs_room("e7"));
    cache.get("e7").unwrap();
    assert_eq!((cache.loads, cache.factored_builds), (1, 0));

    // The policy's text forms.
    for (text, policy) in [
        ("materialise", ServingPolicy::Materialise),
        ("factors", ServingPolicy::Factors),
        (
            "auto:7",
            ServingPolicy::Auto {
                materialise_after: 7,
            },
        ),
        ("auto", ServingPolicy::default()),
    ] {
        assert_eq!(text.parse::<ServingPolicy>().unwrap(), policy);
    }
    let err = "sometimes"
        .parse::<ServingPolicy>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("auto:<tokens>"), "{err}");
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
    (elite, v["choices"][0]["text"].as_str().unwrap().to_string())
}

/// The swarm served in-process with `policy`, once the engine is ready.
async fn serve(dir: &Path, policy: ServingPolicy, budget: usize) -> (AppState, Arc<ModelEngine>) {
    let (router, loaded) =
        load_swarm_dir_with(dir, Device::Cpu, Precision::F32, budget, policy, None).unwrap();
    let engine =
        Arc::new(ModelEngine::start(ModelEngineConfig::default(), move || Ok(loaded)).unwrap());
    let state = AppState::new(engine.clone(), router, ServerConfig::default());
    for _ in 0..600 {
        if engine.status().ready {
            return (state, engine);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the engine never became ready");
}

#[tokio::test]
async fn the_engine_serves_mixed_elites_from_factors() {
    let s = build_swarm(Rank::Full);
    let opened = open_swarm(&s.swarm).unwrap();
    let direct: BTreeMap<String, String> = s
        .ids
        .iter()
        .map(|id| {
            let dense = opened.swarm.load(id, &Device::Cpu, Precision::F32).unwrap();
            (id.clone(), greedy_text(&dense))
        })
        .collect();
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);

    // `Factors`: every elite at once, in one engine step after another (mixed elites in
    // flight, one batch per elite); only the warm elite is ever resident.
    let (state, engine) = serve(&s.swarm, ServingPolicy::Factors, one).await;
    let answers = futures_util::future::join_all(
        s.ids
            .iter()
            .chain(s.ids.iter())
            .map(|id| complete(&state, id)),
    )
    .await;
    for (elite, text) in answers {
        assert_eq!(text, direct[&elite], "elite {elite} from factors");
    }
    assert_eq!(engine.status().elites_resident, 1);

    // `Auto` with a low threshold: the second request of an elite finds it materialised
    // (over a budget of one elite, so the LRU turns over), and answers alike.
    let auto = ServingPolicy::Auto {
        materialise_after: MAX_TOKENS as u64,
    };
    let (state, _engine) = serve(&s.swarm, auto, one).await;
    for round in 0..2 {
        for id in &s.ids {
            let (elite, text) = complete(&state, id).await;
            assert_eq!(&elite, id);
            assert_eq!(text, direct[id], "elite {id}, round {round}");
        }
    }
}
