//! Serving elites straight from the experts' factors: a tiny swarm is built on disk like in
//! `swarm_dir.rs` (a random base, three "experts" perturbed from it, their SVD factors,
//! genomes and `swarm.json`), and every elite served from factors (the base's dense weights
//! shared, a low-rank delta per matrix) must answer exactly what the same elite materialised
//! answers (greedy), at full rank and with truncated factors, alone and through the engine
//! with mixed elites in flight; the `Auto` policy must materialise an elite once it has run
//! enough tokens from factors, and never wait for room in the budget.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::greedy;
use common::swarm::{complete, serve_loaded, TinySwarm, MAX_TOKENS, PROMPT};
use swarm_merge::testing::{rel_diff, tiny_config};
use swarm_merge::{Genome, Rank};
use swarm_model::{Llama, Precision};
use swarm_serve::{
    load_swarm_dir_with, open_swarm, AppState, EliteCache, EliteSource, Engine, ModelEngine,
    ServingPolicy,
};

/// Three experts, a two-parent child and a three-parent mutated child (every expert active:
/// the delta of each matrix sums three low-rank terms), with factors at `rank`; with the
/// elites' ids (sorted, the order of the manifest).
fn build_swarm(rank: Rank) -> (TinySwarm, Vec<String>) {
    let mut s = TinySwarm::new(rank);
    // A mutation-like change of every coefficient, so no two experts' terms are in
    // proportion.
    let mixed = s.genomes["e7"]
        .weighted_pair(&s.genomes["expert-os"], 0.6, 0.4)
        .unwrap();
    let values: Vec<f32> = mixed
        .values()
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + 0.3 * (i as f32).sin()))
        .collect();
    let grandchild = Genome::from_values(s.factors.layout(), values).unwrap();
    s.genomes.insert("e9".to_string(), grandchild);
    let ids: Vec<String> = s.genomes.keys().cloned().collect();
    let elites: Vec<(&str, [f64; 3])> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), [0, 1, 2].map(|k| ((i + k) % 5) as f64 / 5.0)))
        .collect();
    s.save(&elites);
    (s, ids)
}

fn logits(model: &Llama) -> Tensor {
    let ids = Tensor::new(&PROMPT, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&ids, &mut model.new_cache(1, 0)).unwrap()
}

/// Every elite from factors = the same elite materialised: logits to 1e-4 (relative),
/// greedy tokens exactly.
fn check_factored_equals_materialised(rank: Rank) {
    let (s, ids) = build_swarm(rank);
    let opened = open_swarm(&s.swarm).unwrap();
    let swarm = &opened.swarm;
    let mut answers = BTreeMap::new();
    for id in &ids {
        let dense = swarm.load(id, &Device::Cpu, Precision::F32).unwrap();
        let factored = swarm.factored(id, &Device::Cpu, Precision::F32).unwrap();
        let rel = rel_diff(&logits(&factored), &logits(&dense));
        assert!(rel < 1e-4, "{rank} {id}: logits differ by {rel} (relative)");
        let tokens = greedy(&dense, &PROMPT, MAX_TOKENS).token_ids;
        assert_eq!(
            greedy(&factored, &PROMPT, MAX_TOKENS).token_ids,
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
    let (s, _) = build_swarm(Rank::Full);
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

/// The swarm served in-process with `policy`, once the engine is ready.
async fn serve(dir: &Path, policy: ServingPolicy, budget: usize) -> (AppState, Arc<ModelEngine>) {
    let (router, loaded) =
        load_swarm_dir_with(dir, Device::Cpu, Precision::F32, budget, policy, None).unwrap();
    serve_loaded(router, loaded).await
}

#[tokio::test]
async fn the_engine_serves_mixed_elites_from_factors() {
    let (s, ids) = build_swarm(Rank::Full);
    let opened = open_swarm(&s.swarm).unwrap();
    let direct: BTreeMap<String, String> = ids
        .iter()
        .map(|id| {
            let dense = opened.swarm.load(id, &Device::Cpu, Precision::F32).unwrap();
            (id.clone(), greedy(&dense, &PROMPT, MAX_TOKENS).text)
        })
        .collect();
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);

    // `Factors`: every elite at once, in one engine step after another (mixed elites in
    // flight, one batch per elite); only the warm elite is ever resident.
    let (state, engine) = serve(&s.swarm, ServingPolicy::Factors, one).await;
    let answers =
        futures_util::future::join_all(ids.iter().chain(ids.iter()).map(|id| complete(&state, id)))
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
        for id in &ids {
            let (elite, text) = complete(&state, id).await;
            assert_eq!(&elite, id);
            assert_eq!(text, direct[id], "elite {id}, round {round}");
        }
    }
}
