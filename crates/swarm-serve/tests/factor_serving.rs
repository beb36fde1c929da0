//! Serving elites straight from the experts' factors: a tiny swarm is built on disk like in
//! `swarm_dir.rs` (a random base, three "experts" perturbed from it, their SVD factors,
//! genomes and `swarm.json`), and every elite served from factors (the base's dense weights
//! shared, a low-rank delta per matrix) must answer exactly what the same elite materialised
//! answers (greedy), at full rank and with truncated factors, alone and through the engine
//! with mixed elites in flight; the `Auto` policy must materialise an elite once it has run
//! enough tokens from factors carrying enough rows of the mixed batch (or running alone), not
//! the elites with a row each, and never wait for room in the budget.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::greedy;
use common::swarm::{complete, serve_loaded, TinySwarm, MAX_TOKENS, PROMPT};
use swarm_merge::testing::{rel_diff, tiny_config};
use swarm_merge::{Genome, Rank};
use swarm_model::{Llama, Precision};
use swarm_serve::{
    load_swarm_dir_with, open_swarm, AppState, EliteCache, EliteSource, Engine, Event, GenerateJob,
    ModelEngine, ModelEngineConfig, Prompt, SamplingParams, ServingPolicy,
};
use tokio::sync::mpsc;

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
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);
    // A fresh cache over the swarm with room for `budget` bytes, serving by `policy`.
    let cache_with = |budget: usize, policy: ServingPolicy| {
        let opened = open_swarm(&s.swarm).unwrap();
        EliteCache::new(Box::new(opened.swarm), Device::Cpu, Precision::F32, budget)
            .with_policy(policy)
    };
    let auto = |materialise_after, min_rows: u32| ServingPolicy::Auto {
        materialise_after,
        min_rows: Some(min_rows),
    };
    let mut cache = cache_with(one, auto(20, 4));
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
    // Hot: materialised once it has generated 20 tokens (a prompt token counts as 1/10)
    // carrying 4 rows of a mixed batch of 6.
    cache.record_prefill("e7", 39);
    for _ in 0..4 {
        cache.record_decode("e7", 4, 6);
    }
    cache.get("e7").unwrap();
    assert_eq!(cache.loads, 0, "19.9 tokens");
    cache.record_prefill("e7", 1);
    let dense = cache.get("e7").unwrap();
    assert_eq!((cache.loads, cache.resident(), cache.factored()), (1, 1, 0));
    // Another hot elite while e7 is in use (its Arc held) and the budget holds one: it is
    // served from factors instead of waiting or going over the budget.
    for _ in 0..25 {
        cache.record_decode("e9", 4, 4);
    }
    let e9 = cache.get("e9").unwrap();
    assert_eq!((cache.loads, cache.resident()), (1, 1));
    assert!(cache.is_resident("e7") && !cache.is_resident("e9"));
    drop((dense, e7, e9));
    // Once e7 is idle, e9 (hot) takes its place.
    cache.get("e9").unwrap();
    assert_eq!((cache.loads, cache.resident()), (2, 1));
    assert!(cache.is_resident("e9"));
    // e7 starts again from nothing after its eviction: from factors.
    cache.get("e7").unwrap();
    assert_eq!(cache.loads, 2);

    // Many tokens but few rows among others' (one of five, or three on average over the
    // recent steps): it stays in the mixed batch; alone in most of its recent steps, even
    // with one row, it is materialised.
    let mut cache = cache_with(4 * one, auto(20, 4));
    for _ in 0..100 {
        cache.record_decode("e7", 1, 5);
    }
    for _ in 0..10 {
        cache.record_decode("e7", 8, 9);
        cache.record_decode("e7", 1, 9);
        cache.record_decode("e7", 1, 9);
        cache.record_decode("e7", 2, 9);
    }
    cache.get("e7").unwrap();
    assert_eq!(
        cache.loads, 0,
        "few rows among others' stay in the mixed batch"
    );
    for _ in 0..8 {
        cache.record_decode("e7", 1, 1);
    }
    cache.get("e7").unwrap();
    assert_eq!(cache.loads, 1, "alone: materialised");
    // `min_rows: 0` is the rule before mixed batches: tokens only.
    let mut cache = cache_with(4 * one, auto(20, 0));
    for _ in 0..20 {
        cache.record_decode("e7", 1, 8);
    }
    cache.get("e7").unwrap();
    assert_eq!(cache.loads, 1);

    // `Materialise` never serves from factors, and waits for room.
    let mut cache = cache_with(one, ServingPolicy::Materialise);
    assert!(cache.needs_room("e7"));
    cache.get("e7").unwrap();
    assert_eq!((cache.loads, cache.factored_builds), (1, 0));

    // The policy's text forms; `auto` and `auto:<tokens>` take the row threshold from the
    // factors' cost.
    let from_factors = |materialise_after| ServingPolicy::Auto {
        materialise_after,
        min_rows: None,
    };
    for (text, policy) in [
        ("materialise", ServingPolicy::Materialise),
        ("factors", ServingPolicy::Factors),
        ("auto:7", from_factors(7)),
        ("auto:7:3", auto(7, 3)),
        ("auto:64:0", auto(64, 0)),
        ("auto", ServingPolicy::default()),
    ] {
        assert_eq!(text.parse::<ServingPolicy>().unwrap(), policy);
        if text.contains(':') {
            assert_eq!(policy.to_string(), text);
        }
    }
    assert_eq!(
        ServingPolicy::default(),
        from_factors(ServingPolicy::DEFAULT_MATERIALISE_AFTER)
    );
    // The threshold from the factors' cost: the measured 16 at the reference cost (rank
    // 64 of SmolLM2), fewer rows for costlier factors (6 at full rank, 8.2x the cost),
    // more for cheaper ones, 16 when the cost is unknown; a cache reports what it uses.
    let reference = Some(ServingPolicy::REFERENCE_FACTOR_COST);
    assert_eq!(
        ServingPolicy::min_rows_for(reference),
        ServingPolicy::DEFAULT_MIN_ROWS
    );
    assert_eq!(ServingPolicy::min_rows_for(Some(4.167)), 6);
    assert_eq!(ServingPolicy::min_rows_for(Some(0.507 / 4.0)), 32);
    assert_eq!(
        ServingPolicy::min_rows_for(None),
        ServingPolicy::DEFAULT_MIN_ROWS
    );
    assert_eq!(
        ServingPolicy::min_rows_for(Some(0.0)),
        ServingPolicy::DEFAULT_MIN_ROWS
    );
    assert_eq!(ServingPolicy::min_rows_for(Some(1e9)), 1);
    let derived = cache_with(one, ServingPolicy::default());
    let opened = open_swarm(&s.swarm).unwrap();
    let cost = opened.swarm.factor_cost().unwrap();
    assert!(cost > 0.0, "{cost}");
    assert_eq!(
        derived.auto_min_rows(),
        Some(ServingPolicy::min_rows_for(Some(cost)))
    );
    assert_eq!(cache_with(one, auto(7, 3)).auto_min_rows(), Some(3));
    assert_eq!(
        cache_with(one, ServingPolicy::Factors).auto_min_rows(),
        None
    );
    for bad in [
        "sometimes",
        "auto:",
        "auto:x",
        "auto:7:",
        "auto:7:-1",
        "auto:7:3:1",
    ] {
        let err = bad.parse::<ServingPolicy>().unwrap_err().to_string();
        assert!(err.contains("auto:<tokens>:<rows>"), "{bad}: {err}");
    }
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
        min_rows: Some(ServingPolicy::DEFAULT_MIN_ROWS),
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

/// An engine over the swarm in `dir` whose load waits for the returned gate (nothing
/// resident at the start), so that the jobs submitted before the gate opens are all admitted
/// at its first step.
fn gated_engine(
    dir: &Path,
    policy: ServingPolicy,
    budget: usize,
) -> (Arc<ModelEngine>, std::sync::mpsc::Sender<()>) {
    gated_engine_with(dir, policy, budget, ModelEngineConfig::default())
}

/// [`gated_engine`] with its scheduler's settings.
fn gated_engine_with(
    dir: &Path,
    policy: ServingPolicy,
    budget: usize,
    config: ModelEngineConfig,
) -> (Arc<ModelEngine>, std::sync::mpsc::Sender<()>) {
    let (gate, wait) = std::sync::mpsc::channel::<()>();
    let opened = open_swarm(dir).unwrap();
    let loaded = opened.into_loaded(Device::Cpu, Precision::F32, budget, policy, Vec::new());
    let engine = ModelEngine::start(config, move || {
        let _ = wait.recv();
        Ok(loaded)
    })
    .unwrap();
    (Arc::new(engine), gate)
}

/// A sampled job: `elite` on `prompt`, up to `max_tokens`, with its own seed.
fn sampled(elite: &str, prompt: Vec<u32>, max_tokens: usize, seed: u64) -> GenerateJob {
    GenerateJob {
        request_id: format!("{elite}-{seed}"),
        elite: elite.to_string(),
        prompt: Prompt::Tokens(prompt),
        params: SamplingParams::new(max_tokens, 0.9, seed),
        deadline: None,
    }
}

/// Reads a job to its end: (text, completion tokens).
async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> (String, usize) {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::Done {
                completion_tokens, ..
            } => return (text, completion_tokens),
            Event::Failed(f) => panic!("job failed: {f:?}"),
            Event::Started { .. } | Event::Echo { .. } => {}
        }
    }
    panic!("the job's channel closed before its end");
}

/// The engine's forward passes once they reach `at_least` (the status is published after
/// the step that sent a job's last event); panics after 30 s.
async fn passes_after(engine: &ModelEngine, at_least: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let passes = engine.status().forward_passes;
        if passes >= at_least {
            return passes;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{passes} forward passes, expected {at_least}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Jobs of three elites (two of one), prompts of different lengths, that end at different
/// steps.
fn mixed_jobs(ids: &[String]) -> Vec<GenerateJob> {
    vec![
        sampled(&ids[0], vec![5, 17, 33, 8, 41], 12, 1),
        sampled(&ids[1], vec![9, 12, 40, 7, 8, 61, 3, 22], 5, 2),
        sampled(&ids[2], vec![30, 31], 9, 3),
        sampled(&ids[0], vec![44, 45, 46], 12, 4),
    ]
}

#[tokio::test]
async fn elites_from_factors_share_one_forward_pass_per_step() {
    let (s, ids) = build_swarm(Rank::Full);
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);
    let jobs = mixed_jobs(&ids);

    // Alone: each job by itself, one after another; a job of n tokens takes n passes (the
    // prefill gives the first token).
    let (engine, gate) = gated_engine(&s.swarm, ServingPolicy::Factors, one);
    gate.send(()).unwrap();
    common::wait_ready(&engine).await;
    let mut alone = Vec::new();
    for job in &jobs {
        let before = engine.status().forward_passes;
        let (text, n) = collect(engine.submit(job.clone()).unwrap()).await;
        assert_eq!(
            passes_after(&engine, before + n as u64).await - before,
            n as u64
        );
        alone.push((text, n));
    }
    assert!(
        alone.iter().map(|(t, _)| t).collect::<BTreeSet<_>>().len() >= 3,
        "the elites answer alike: {alone:?}"
    );

    // Together: admitted at one step, prefilled in one pass and decoded in one pass per
    // step for all four rows (three elites), rows leaving as their jobs end: as many passes
    // as the longest job has tokens, and each job's text as alone.
    let (engine, gate) = gated_engine(&s.swarm, ServingPolicy::Factors, one);
    let receivers: Vec<_> = jobs
        .iter()
        .map(|j| engine.submit(j.clone()).unwrap())
        .collect();
    gate.send(()).unwrap();
    let together = futures_util::future::join_all(receivers.into_iter().map(collect)).await;
    assert_eq!(together, alone);
    let longest = alone.iter().map(|(_, n)| *n).max().unwrap() as u64;
    let total: u64 = alone.iter().map(|(_, n)| *n as u64).sum();
    assert!(longest < total, "the jobs are too short to share steps");
    assert_eq!(passes_after(&engine, longest).await, longest);
    assert_eq!(engine.status().elites_resident, 0);

    // A job that arrives while its elite's rows run joins them in the middle of the mixed
    // batch (the first elite's group, before the others'): its text is still its own.
    let (engine, gate) = gated_engine(&s.swarm, ServingPolicy::Factors, one);
    let mut receivers: Vec<_> = jobs[..3]
        .iter()
        .map(|j| engine.submit(j.clone()).unwrap())
        .collect();
    gate.send(()).unwrap();
    let mut head = String::new();
    while head.split_whitespace().count() < 2 {
        match receivers[0].recv().await.unwrap() {
            Event::Text { text, .. } => head.push_str(&text),
            Event::Started { .. } | Event::Echo { .. } => {}
            e => panic!("the first job ended early: {e:?}"),
        }
    }
    receivers.push(engine.submit(jobs[3].clone()).unwrap());
    let mut joined = futures_util::future::join_all(receivers.into_iter().map(collect)).await;
    joined[0].0.insert_str(0, &head);
    assert_eq!(joined, alone);
}

/// Prefix caching with elites served from factors: a prompt that continues a finished
/// sequence of its elite is prefilled from the cached keys and values and joins the mixed
/// batch beside another elite's fresh row; both answer as they do with the cache off.
#[tokio::test]
async fn a_cached_prefix_joins_the_mixed_batch_and_answers_alike() {
    let (s, ids) = build_swarm(Rank::Full);
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);
    let prefix: Vec<u32> = (0..40).map(|i| 3 + (i * 13) % 59).collect();
    let mut continued = prefix.clone();
    continued.extend([21, 22, 23, 24]);
    let first = sampled(&ids[0], prefix, 6, 21);
    let next = sampled(&ids[0], continued, 8, 22);
    let beside = sampled(&ids[1], vec![9, 12, 40, 7], 8, 23);

    let mut answers = Vec::new();
    for cache_bytes in [0, 64 << 20] {
        let config = ModelEngineConfig {
            prefix_cache_bytes: cache_bytes,
            ..ModelEngineConfig::default()
        };
        let (engine, gate) = gated_engine_with(&s.swarm, ServingPolicy::Factors, one, config);
        gate.send(()).unwrap();
        common::wait_ready(&engine).await;
        collect(engine.submit(first.clone()).unwrap()).await;
        let mut rx = engine.submit(next.clone()).unwrap();
        let rx_beside = engine.submit(beside.clone()).unwrap();
        let mut text = String::new();
        let cached = loop {
            match rx.recv().await.unwrap() {
                Event::Text { text: t, .. } => text.push_str(&t),
                Event::Done { cached_tokens, .. } => break cached_tokens,
                Event::Started { .. } | Event::Echo { .. } => {}
                e => panic!("{e:?}"),
            }
        };
        let stats = engine.status().prefix_cache;
        if cache_bytes == 0 {
            assert_eq!((cached, stats.hits, stats.entries), (0, 0, 0));
        } else {
            // The first job's prompt at least (and its answer's first token, if `next`
            // happens to go on with it).
            assert!(cached >= 40, "{cached} tokens reused");
            assert_eq!(stats.hits, 1);
        }
        assert_eq!(engine.status().elites_resident, 0);
        answers.push((text, collect(rx_beside).await.0));
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn an_elite_materialised_while_its_rows_run_from_factors_keeps_their_text() {
    let (s, ids) = build_swarm(Rank::Full);
    let one = swarm_serve::model_bytes(&tiny_config(), Precision::F32);
    let first = sampled(&ids[0], vec![5, 17, 33, 8, 41], 24, 11);
    let other = sampled(&ids[1], vec![9, 12, 40], 24, 12);
    let second = sampled(&ids[0], vec![44, 45, 46, 47], 8, 13);
    let (engine, gate) = gated_engine(&s.swarm, ServingPolicy::Factors, one);
    gate.send(()).unwrap();
    common::wait_ready(&engine).await;
    let mut alone = Vec::new();
    for job in [&first, &other, &second] {
        alone.push(collect(engine.submit(job.clone()).unwrap()).await);
    }

    // `Auto` materialises an elite after 2 tokens with a row of the mixed batch: `first`
    // and `other` start from factors in the mixed batch; `second`, submitted once `first`
    // has generated 3 tokens (2 decode steps), finds its elite hot and materialises it (a
    // dense batch of its own) while `first` still runs from factors.
    let auto = ServingPolicy::Auto {
        materialise_after: 2,
        min_rows: Some(1),
    };
    let (engine, gate) = gated_engine(&s.swarm, auto, one);
    let mut rx_first = engine.submit(first).unwrap();
    let rx_other = engine.submit(other).unwrap();
    gate.send(()).unwrap();
    let mut text = String::new();
    let mut tokens = 0;
    while tokens < 3 {
        match rx_first.recv().await.unwrap() {
            Event::Started { .. } | Event::Echo { .. } => {}
            Event::Text { text: t, .. } => {
                text.push_str(&t);
                tokens += 1;
            }
            e => panic!("`first` ended after {tokens} tokens: {e:?}"),
        }
    }
    let rx_second = engine.submit(second).unwrap();
    let (rest, n) = collect(rx_first).await;
    text.push_str(&rest);
    assert_eq!((text, n), alone[0]);
    assert_eq!(collect(rx_other).await, alone[1]);
    assert_eq!(collect(rx_second).await, alone[2]);
    assert_eq!(engine.status().elites_resident, 1);
}

/// Two waves of the same jobs through an engine with `policy` (a budget for every elite):
/// the texts of each wave, and the elites resident after the second.
async fn two_waves(
    dir: &Path,
    policy: ServingPolicy,
    jobs: &[GenerateJob],
) -> (Vec<(String, usize)>, Vec<(String, usize)>, u64) {
    let all = 5 * swarm_serve::model_bytes(&tiny_config(), Precision::F32);
    let (engine, gate) = gated_engine(dir, policy, all);
    let receivers: Vec<_> = jobs
        .iter()
        .map(|j| engine.submit(j.clone()).unwrap())
        .collect();
    gate.send(()).unwrap();
    let first = futures_util::future::join_all(receivers.into_iter().map(collect)).await;
    assert_eq!(
        engine.status().materialisations,
        0,
        "{policy}: the first wave"
    );
    let receivers: Vec<_> = jobs
        .iter()
        .map(|j| engine.submit(j.clone()).unwrap())
        .collect();
    let second = futures_util::future::join_all(receivers.into_iter().map(collect)).await;
    let status = engine.status();
    assert_eq!(status.materialisations, status.elites_resident as u64);
    (first, second, status.materialisations)
}

#[tokio::test]
async fn auto_materialises_an_elite_with_many_rows_not_elites_with_one() {
    let (s, ids) = build_swarm(Rank::Full);
    // `Auto` after 6 tokens, for an elite with 3 rows or more (or alone).
    let auto = ServingPolicy::Auto {
        materialise_after: 6,
        min_rows: Some(3),
    };
    let prompt = |i: usize| vec![5 + i as u32, 17, 33, 8 + 2 * i as u32];

    // One row each for every elite, many tokens each: the elites stay in the mixed batch
    // (nothing materialised), and answer as they do from factors.
    let one_each: Vec<GenerateJob> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| sampled(id, prompt(i), 16, 100 + i as u64))
        .collect();
    let (want, _, _) = two_waves(&s.swarm, ServingPolicy::Factors, &one_each).await;
    let (first, second, materialised) = two_waves(&s.swarm, auto, &one_each).await;
    assert_eq!(materialised, 0);
    assert_eq!((&first, &second), (&want, &want));
    // The rule before mixed batches (tokens only) materialises every one of them that ran
    // 6 decode steps (a job may end early, at the end-of-sequence token).
    let tokens_only = ServingPolicy::Auto {
        materialise_after: 6,
        min_rows: Some(0),
    };
    let (_, second, materialised) = two_waves(&s.swarm, tokens_only, &one_each).await;
    let long = want.iter().filter(|(_, n)| *n > 6).count() as u64;
    assert!(long >= 3, "the jobs end too early: {want:?}");
    assert_eq!(materialised, long);
    assert_eq!(second, want);

    // One elite with six rows beside two elites with one: the first is materialised for
    // the second wave (its rows a dense batch of their own), the others stay in the mixed
    // batch; every text as from factors.
    let mut hot_and_cold: Vec<GenerateJob> = (0..6)
        .map(|i| sampled(&ids[0], prompt(i), 16, 200 + i as u64))
        .collect();
    hot_and_cold.push(sampled(&ids[1], prompt(6), 16, 300));
    hot_and_cold.push(sampled(&ids[2], prompt(7), 16, 301));
    let (want, _, _) = two_waves(&s.swarm, ServingPolicy::Factors, &hot_and_cold).await;
    let (first, second, materialised) = two_waves(&s.swarm, auto, &hot_and_cold).await;
    assert_eq!(materialised, 1);
    assert_eq!((&first, &second), (&want, &want));
}
