//! The real engine ([`ModelEngine`]) on a tiny random Llama: continuous batching must give
//! every sequence exactly what `swarm_model::generate` gives it alone (greedy), whatever joins
//! or leaves the batch meanwhile; dropping a receiver frees its row; deadlines and limits hold.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{greedy, tokenizer, wait_ready};
use swarm_model::{
    ChatTemplate, JsonCheck, JsonPrefix, Llama, LlamaConfig, Precision, Tokenizer, Weights,
    CHATML_TEMPLATE,
};
use swarm_serve::{resolve_tools, split_answer};
use swarm_serve::{
    EliteCache, Engine, Event, Failure, FinishReason, GenerateJob, JsonFormat, LoadedSwarm,
    ModelEngine, ModelEngineConfig, Prompt, SamplingParams, SingleModel, ToolCallGuide, ToolSet,
};
use tokio::sync::mpsc;

/// swarm-merge's tiny Llama with a tied head (the head path of SmolLM2) and a context of 96
/// positions (`limits_and_deadlines` runs into it).
fn config() -> LlamaConfig {
    LlamaConfig {
        intermediate_size: 64,
        max_position_embeddings: 96,
        tie_word_embeddings: true,
        ..swarm_merge::testing::tiny_config()
    }
}

fn weights(config: &LlamaConfig) -> Weights {
    let mut w = Weights::new();
    let mut state = 0x1234_5678_u64;
    for (name, shape) in config.tensor_shapes() {
        let n: usize = shape.iter().product();
        let scale = 2.5 / (shape[shape.len() - 1] as f32).sqrt();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = ((state >> 40) as f32) / ((1u64 << 24) as f32) * 2.0 - 1.0;
                if name.ends_with("norm.weight") {
                    1.0 + 0.1 * u
                } else {
                    u * scale
                }
            })
            .collect();
        w.insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    }
    w
}

fn engine(max_batch: usize) -> ModelEngine {
    engine_with_budget(max_batch, 1 << 30)
}

fn engine_with_budget(max_batch: usize, budget: usize) -> ModelEngine {
    engine_with(max_batch, budget, tokenizer)
}

fn engine_with(max_batch: usize, budget: usize, tokenizer: fn() -> Tokenizer) -> ModelEngine {
    ModelEngine::start(
        ModelEngineConfig {
            max_batch,
            max_prefill_tokens: 64,
            ..ModelEngineConfig::default()
        },
        move || {
            let config = config();
            let tokenizer = tokenizer();
            let template = ChatTemplate::new(CHATML_TEMPLATE, &tokenizer)?;
            let source = SingleModel {
                elites: vec!["e".into(), "f".into()],
                config: config.clone(),
                weights: Box::new(weights(&config)),
            };
            Ok(LoadedSwarm {
                elites: EliteCache::new(Box::new(source), Device::Cpu, Precision::F32, budget),
                tokenizer,
                template,
                stop_ids: vec![],
                warm: vec!["e".into()],
            })
        },
    )
    .unwrap()
}

/// The engine's model, loaded on its own: the reference the engine's answers are held to.
fn reference_model() -> Llama {
    let config = config();
    Llama::load(&weights(&config), &config, &Device::Cpu, Precision::F32).unwrap()
}

fn reference(prompt: &[u32], max_tokens: usize) -> (String, usize) {
    let out = greedy(&reference_model(), prompt, max_tokens);
    (out.text, out.token_ids.len())
}

/// The logits of every position of `ids`, from one forward pass of `model` alone.
fn all_logits(model: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, &mut model.new_cache(1, 0)).unwrap();
    logits.squeeze(0).unwrap().to_vec2().unwrap()
}

/// The logits of the token after `ids` (the head run on the last position only).
fn next_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward_last(&input, &mut model.new_cache(1, 0))
        .unwrap();
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

/// `ln Σ exp(row)`: a logit minus this is its log-probability.
fn log_normaliser(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|l| (l - max).exp()).sum::<f32>().ln()
}

fn job(prompt: Vec<u32>, max_tokens: usize, temperature: f32, seed: u64) -> GenerateJob {
    GenerateJob {
        request_id: "t".into(),
        elite: "e".into(),
        prompt: Prompt::Tokens(prompt),
        params: SamplingParams::new(max_tokens, temperature, seed),
        deadline: None,
    }
}

/// Reads a job to its end: (text, completion tokens, finish).
async fn collect(
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Result<(String, usize, FinishReason), Failure> {
    let mut text = String::new();
    let mut tokens = 0;
    while let Some(e) = rx.recv().await {
        match e {
            Event::Started { .. } | Event::Echo { .. } => {}
            Event::Text {
                text: t, tokens: n, ..
            } => {
                text.push_str(&t);
                tokens += n;
            }
            Event::Done {
                finish,
                completion_tokens,
                ..
            } => {
                assert_eq!(tokens, completion_tokens);
                return Ok((text, completion_tokens, finish));
            }
            Event::Failed(f) => return Err(f),
        }
    }
    Err(Failure::Internal("channel closed".into()))
}

fn prompts() -> Vec<Vec<u32>> {
    (0..10u32)
        .map(|i| {
            (0..(3 + 4 * i % 17))
                .map(|j| 3 + (i * 7 + j * 5) % 61)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_batching_matches_generation_alone() {
    let e = engine(4);
    wait_ready(&e).await;
    let mut handles = Vec::new();
    // Staggered arrivals with a batch of 4: jobs join and leave a running batch.
    for (i, p) in prompts().into_iter().enumerate() {
        let max_tokens = 5 + (i * 3) % 11;
        let rx = e.submit(job(p.clone(), max_tokens, 0.0, 0)).unwrap();
        handles.push((p, max_tokens, tokio::spawn(collect(rx))));
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    for (p, max_tokens, h) in handles {
        let (text, n, _) = h.await.unwrap().unwrap();
        let (want, want_n) = reference(&p, max_tokens);
        assert_eq!((text.as_str(), n), (want.as_str(), want_n), "prompt {p:?}");
    }
    assert_eq!(e.status().batch_size, 0);
}

/// Sampled jobs running side by side report, for every token, the model's own
/// log-probability at that position (its softmax at temperature 1, whatever the job's
/// temperature) and the most likely tokens there, as the model alone computes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_the_models_own() {
    let e = engine(4);
    wait_ready(&e).await;
    let top = 3;
    let jobs: Vec<_> = prompts()
        .into_iter()
        .take(4)
        .enumerate()
        .map(|(i, p)| {
            let mut j = job(p.clone(), 8, 0.8, 10 + i as u64);
            j.params.logprobs = Some(top);
            (p, e.submit(j).unwrap())
        })
        .collect();
    let model = reference_model();
    let tokenizer = tokenizer();
    let id = |bytes: &[u8]| {
        tokenizer
            .token_to_id(std::str::from_utf8(bytes).unwrap())
            .unwrap()
    };
    for (prompt, mut rx) in jobs {
        let mut reported = Vec::new();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Text { logprobs, .. } => reported.extend(logprobs),
                Event::Done { .. } => break,
                Event::Started { .. } | Event::Echo { .. } => {}
                Event::Failed(f) => panic!("{f:?}"),
            }
        }
        assert_eq!(reported.len(), 8);
        let mut ids = prompt.clone();
        for token in &reported {
            let logits = next_logits(&model, &ids);
            let log_sum = log_normaliser(&logits);
            let chosen = id(&token.bytes);
            let want = logits[chosen as usize] - log_sum;
            assert!(
                (token.logprob - want).abs() < 1e-4,
                "{} vs {want}",
                token.logprob
            );
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let top_ids: Vec<usize> = token.top.iter().map(|t| id(&t.bytes) as usize).collect();
            assert_eq!(top_ids, order[..top], "prompt {prompt:?}");
            for t in &token.top {
                assert!((t.logprob - (logits[id(&t.bytes) as usize] - log_sum)).abs() < 1e-4);
            }
            ids.push(chosen);
        }
    }
}

/// A tokenizer for the tiny model whose 61 tokens are JSON's pieces (brackets, quotes,
/// digits, letters, literals), joined without spaces when decoded.
fn json_tokenizer() -> Tokenizer {
    let mut pieces: Vec<String> = ["{", "}", "[", "]", "\"", ":", ",", " ", "-", ".", "+"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pieces.extend(
        (b'0'..=b'9')
            .chain(b'a'..=b'z')
            .map(|b| (b as char).to_string()),
    );
    pieces.extend(
        [
            "true", "false", "null", "{\"", "\"}", "\":", "\",", "\n", "  ", "}}", "E", "\\\"",
            "\\n", "]]",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    assert_eq!(pieces.len(), 61);
    common::word_level_tokenizer(&pieces, serde_json::json!({"type": "Fuse"}))
}

/// JSON mode on a random model: whatever it samples, every answer is a prefix of a JSON
/// object, and one that ends with `stop` is a whole object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_answers_are_json() {
    let e = engine_with(8, 1 << 30, json_tokenizer);
    wait_ready(&e).await;
    let runs: Vec<_> = (0..16u64)
        .map(|seed| {
            let temperature = if seed == 0 { 0.0 } else { 1.5 };
            let mut j = job(vec![5, 6, 7], 60, temperature, seed);
            j.params.json = Some(JsonFormat::Object);
            e.submit(j).unwrap()
        })
        .collect();
    let mut whole = 0;
    for rx in runs {
        let (text, _, finish) = collect(rx).await.unwrap();
        assert!(
            JsonPrefix::new().push(text.as_bytes()),
            "not JSON: {text:?}"
        );
        if finish == FinishReason::Stop {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            whole += 1;
        }
    }
    // The seeds are fixed: some answers close their object (9 of 16 when written), and
    // the others run into max_tokens.
    assert!(whole > 0, "no answer closed its object");

    // With a schema: every answer is a prefix of an object of it, and a closed one is one.
    let schema: serde_json::Value = serde_json::json!({
        "type": "object", "additionalProperties": false, "required": ["a", "b", "c"],
        "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yz"]},
            "c": {"type": "array", "items": {"type": "boolean"}}}
    });
    let compiled = std::sync::Arc::new(swarm_model::JsonSchema::compile(&schema).unwrap());
    let runs: Vec<_> = (0..16u64)
        .map(|seed| {
            let mut j = job(vec![5, 6, 7], 60, if seed == 0 { 0.0 } else { 1.5 }, seed);
            j.params.json = Some(JsonFormat::Schema(compiled.clone()));
            e.submit(j).unwrap()
        })
        .collect();
    let mut whole = 0;
    for rx in runs {
        let (text, _, finish) = collect(rx).await.unwrap();
        let mut check = swarm_model::SchemaPrefix::new(compiled.clone());
        assert!(check.push(text.as_bytes()), "not of the schema: {text:?}");
        if finish == FinishReason::Stop {
            assert!(check.is_complete(), "{text:?}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["a"].is_i64() && (v["b"] == "x" || v["b"] == "yz"), "{v}");
            assert!(
                v["c"].as_array().unwrap().iter().all(|x| x.is_boolean()),
                "{v}"
            );
            whole += 1;
        }
    }
    assert!(whole > 0, "no answer closed its object");

    // The tiny model's own tokenizer has no JSON tokens: the job fails and says why.
    let e = engine(2);
    wait_ready(&e).await;
    let mut j = job(vec![5, 6, 7], 5, 0.0, 0);
    j.params.json = Some(JsonFormat::Object);
    match collect(e.submit(j).unwrap()).await {
        Err(Failure::Internal(message)) => assert!(message.contains("JSON"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// A tokenizer for the tiny model whose 61 tokens can write function calls: the tags, JSON's
/// punctuation, the functions' and keys' names, letters and digits.
fn tool_tokenizer() -> Tokenizer {
    let mut pieces: Vec<String> = [
        "<tool_call>",
        "</tool_call>",
        "\n",
        "{",
        "}",
        "\"",
        ":",
        ",",
        " ",
        "[",
        "]",
        "name",
        "arguments",
        "get",
        "_",
        "weather",
        "time",
        "city",
        "zone",
        "Hi",
        "there",
        "Paris",
        "true",
        "null",
        ".",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    pieces.extend(
        (b'a'..=b'z')
            .chain(b'0'..=b'9')
            .map(|b| (b as char).to_string()),
    );
    assert_eq!(pieces.len(), 61);
    common::word_level_tokenizer(&pieces, serde_json::json!({"type": "Fuse"}))
}

fn weather_and_time(choice: &str, parallel: bool) -> std::sync::Arc<ToolSet> {
    let tools = serde_json::json!([
        {"type": "function", "function": {"name": "get_weather", "strict": true, "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time"}}
    ]);
    std::sync::Arc::new(
        resolve_tools(
            Some(&tools),
            Some(&serde_json::json!(choice)),
            Some(&serde_json::json!(parallel)),
        )
        .unwrap()
        .unwrap(),
    )
}

/// Function calling on a random model: with `required`, every answer is a call of a listed
/// function whose arguments fit its schema; with `auto`, the model writes what it likes, but
/// whatever follows a `<tool_call>` tag is a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_guided() {
    let e = engine_with(8, 1 << 30, tool_tokenizer);
    wait_ready(&e).await;
    let required = weather_and_time("required", false);
    let runs: Vec<_> = (0..16u64)
        .map(|seed| {
            let mut j = job(vec![5, 6, 7], 60, if seed == 0 { 0.0 } else { 1.5 }, seed);
            j.params.tools = Some(required.clone());
            e.submit(j).unwrap()
        })
        .collect();
    let mut whole = 0;
    for rx in runs {
        let (text, _, finish) = collect(rx).await.unwrap();
        let mut guide = ToolCallGuide::new(required.clone());
        assert!(guide.push(text.as_bytes()), "not a call: {text:?}");
        if finish == FinishReason::Stop {
            // Parallel calls off: the one call ends the answer.
            assert!(guide.is_complete(), "{text:?}");
            let (content, calls) = split_answer(&text);
            assert_eq!((content, calls.len()), (None, 1), "{text:?}");
            let arguments: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
            match calls[0].name.as_str() {
                "get_weather" => {
                    assert!(arguments["city"].is_string(), "{arguments}");
                    assert_eq!(arguments.as_object().unwrap().len(), 1);
                }
                "get_time" => assert_eq!(arguments, serde_json::json!({})),
                other => panic!("called {other}"),
            }
            whole += 1;
        }
    }
    assert!(whole > 0, "no answer finished its call");

    let auto = weather_and_time("auto", true);
    let runs: Vec<_> = (0..16u64)
        .map(|seed| {
            let mut j = job(vec![5, 6, 7], 60, 1.5, seed);
            j.params.tools = Some(auto.clone());
            e.submit(j).unwrap()
        })
        .collect();
    let mut called = 0;
    for rx in runs {
        let (text, _, finish) = collect(rx).await.unwrap();
        let mut guide = ToolCallGuide::new(auto.clone());
        assert!(guide.push(text.as_bytes()), "a broken call: {text:?}");
        let (content, calls) = split_answer(&text);
        if finish == FinishReason::Stop {
            // Ended by the model in free text: every call it opened was read out.
            assert!(
                !content.unwrap_or_default().contains("<tool_call>"),
                "{text:?}"
            );
        }
        called += usize::from(!calls.is_empty());
    }
    assert!(called > 0, "no answer made a call");
}

/// `echo` sends the prompt back before the answer; with `logprobs`, each prompt token's
/// log-probability after the ones before it, as one forward pass of the model computes
/// them; with no new tokens the prompt is the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_the_prompt_and_its_logprobs() {
    let e = engine(4);
    wait_ready(&e).await;
    let model = reference_model();
    let tokenizer = tokenizer();
    let prompt: Vec<u32> = (0..40).map(|i| 3 + (i * 7) % 61).collect();
    let logits = all_logits(&model, &prompt);
    for max_tokens in [0, 3] {
        let mut j = job(prompt.clone(), max_tokens, 0.0, 0);
        j.params.echo = true;
        j.params.logprobs = Some(2);
        let mut rx = e.submit(j).unwrap();
        let mut echoed = None;
        let mut generated = 0;
        loop {
            match rx.recv().await.unwrap() {
                Event::Echo { text, logprobs } => echoed = Some((text, logprobs.unwrap())),
                Event::Text { .. } => {
                    assert!(echoed.is_some(), "text before the echo");
                    generated += 1;
                }
                Event::Done {
                    completion_tokens, ..
                } => {
                    assert_eq!(completion_tokens, max_tokens);
                    break;
                }
                Event::Started { .. } => {}
                Event::Failed(f) => panic!("{f:?}"),
            }
        }
        assert_eq!(generated, max_tokens);
        let (text, logprobs) = echoed.unwrap();
        assert_eq!(text, tokenizer.decode(&prompt, false).unwrap());
        assert_eq!(logprobs.first_token, b"t3");
        assert_eq!(logprobs.rest.len(), prompt.len() - 1);
        for (i, token) in logprobs.rest.iter().enumerate() {
            let row = &logits[i];
            let want = row[prompt[i + 1] as usize] - log_normaliser(row);
            assert!(
                (token.logprob - want).abs() < 1e-4,
                "token {}: {} vs {want}",
                i + 1,
                token.logprob
            );
            assert_eq!(token.bytes, format!("t{}", prompt[i + 1]).into_bytes());
            assert_eq!(token.top.len(), 2);
        }
    }
}

/// `logit_bias` and the penalties change what greedy decoding picks exactly as applying
/// them to the model's logits by hand does, step by step; a bias outside the vocabulary is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_and_penalties_steer_greedy_decoding() {
    let e = engine(4);
    wait_ready(&e).await;
    let model = reference_model();
    let tokenizer = tokenizer();
    let prompt = vec![5u32, 6, 7];
    let cases = [
        (vec![(9u32, 100.0f32)], 0.0f32, 0.0f32),
        (vec![(9, 3.0), (12, -100.0)], 0.0, 0.0),
        (vec![], 1.5, 0.0),
        (vec![], 0.0, 2.0),
        (vec![(20, 1.0)], -0.5, 1.0),
    ];
    let plain = collect(e.submit(job(prompt.clone(), 12, 0.0, 0)).unwrap())
        .await
        .unwrap()
        .0;
    for (bias, frequency, presence) in cases {
        let mut j = job(prompt.clone(), 12, 0.0, 0);
        j.params.logit_bias = bias.clone();
        j.params.frequency_penalty = frequency;
        j.params.presence_penalty = presence;
        let (text, _, _) = collect(e.submit(j).unwrap()).await.unwrap();
        // By hand: the model's logits for the text so far, adjusted, argmax.
        let adjust = swarm_model::LogitAdjustments {
            bias: bias.clone(),
            frequency_penalty: frequency,
            presence_penalty: presence,
        };
        let mut ids = prompt.clone();
        for _ in 0..12 {
            let mut logits = next_logits(&model, &ids);
            adjust.apply(&mut logits, &ids[prompt.len()..]);
            ids.push(swarm_model::argmax(&logits));
        }
        let want = tokenizer.decode(&ids[prompt.len()..], true).unwrap();
        assert_eq!(
            text, want,
            "bias {bias:?}, penalties {frequency} {presence}"
        );
        assert_ne!(
            text, plain,
            "bias {bias:?}, penalties {frequency} {presence} changed nothing"
        );
    }
    let mut j = job(prompt, 4, 0.0, 0);
    j.params.logit_bias = vec![(64, 1.0)];
    match collect(e.submit(j).unwrap()).await {
        Err(Failure::InvalidField { param, message }) => {
            assert_eq!(param, "logit_bias");
            assert!(message.contains("64"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_reproduce_and_differ() {
    let e = engine(8);
    wait_ready(&e).await;
    let run = |seed| collect(e.submit(job(vec![5, 6, 7], 20, 1.0, seed)).unwrap());
    let (a, b, c) = (
        run(1).await.unwrap(),
        run(1).await.unwrap(),
        run(2).await.unwrap(),
    );
    assert_eq!(a.0, b.0);
    assert_ne!(a.0, c.0);
}

/// The prompt tokens a job took from the prefix cache, and its text.
async fn cached_and_text(mut rx: mpsc::UnboundedReceiver<Event>) -> (usize, String) {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::Done { cached_tokens, .. } => return (cached_tokens, text),
            Event::Failed(f) => panic!("{f:?}"),
            Event::Started { .. } | Event::Echo { .. } => {}
        }
    }
    panic!("channel closed");
}

/// A conversation's next turn (its prompt, the answer, and more) continues from the cached
/// keys and values of the turn before, and answers exactly as a full prefill does; a prompt
/// sharing only the first turn's prompt reuses that much; another elite reuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_turn_continues_from_the_prefix_cache() {
    let e = engine(8);
    wait_ready(&e).await;
    let turn1: Vec<u32> = (0..40).map(|i| 3 + (i * 11) % 59).collect();
    let (cached, text) = cached_and_text(e.submit(job(turn1.clone(), 10, 0.0, 0)).unwrap()).await;
    let answer = greedy(&reference_model(), &turn1, 10);
    assert_eq!((cached, text.as_str()), (0, answer.text.as_str()));
    assert_eq!(answer.token_ids.len(), 10);

    // The row ran the prompt and all of the answer but its last token.
    let ran = turn1.len() + answer.token_ids.len() - 1;
    let mut turn2 = turn1.clone();
    turn2.extend(&answer.token_ids);
    turn2.extend([7, 8, 9, 10, 11, 12]);
    let (cached, text) = cached_and_text(e.submit(job(turn2.clone(), 12, 0.0, 0)).unwrap()).await;
    assert_eq!(cached, ran);
    assert_eq!(text, reference(&turn2, 12).0);

    let mut other = turn1.clone();
    other.extend([50, 51, 52, 53, 54]);
    let (cached, text) = cached_and_text(e.submit(job(other.clone(), 8, 0.0, 0)).unwrap()).await;
    assert_eq!(cached, turn1.len());
    assert_eq!(text, reference(&other, 8).0);

    let mut elsewhere = job(turn2, 4, 0.0, 0);
    elsewhere.elite = "f".into();
    let (cached, _) = cached_and_text(e.submit(elsewhere).unwrap()).await;
    assert_eq!(cached, 0);
    let stats = e.status().prefix_cache;
    assert_eq!(stats.hits, 2);
    assert_eq!(stats.reused_tokens, (ran + turn1.len()) as u64);
    assert!(stats.entries >= 2 && stats.bytes > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_frees_the_row() {
    let e = engine(8);
    wait_ready(&e).await;
    let mut rx = e.submit(job(vec![5, 6, 7], 80, 1.0, 3)).unwrap();
    let other = e.submit(job(vec![9, 10], 30, 1.0, 4)).unwrap();
    // Wait until the first job produced text, then go away.
    loop {
        if let Some(Event::Text { .. }) = rx.recv().await {
            break;
        }
    }
    drop(rx);
    let (_, n, _) = collect(other).await.unwrap();
    assert!(n > 0);
    let start = Instant::now();
    while e.status().batch_size > 0 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(e.status().batch_size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_deadlines() {
    let e = engine(8);
    wait_ready(&e).await;
    let too_long = job((0..96).map(|i| 3 + i % 60).collect(), 4, 0.0, 0);
    assert!(matches!(
        collect(e.submit(too_long).unwrap()).await,
        Err(Failure::PromptTooLong {
            tokens: 96,
            limit: 95
        })
    ));
    assert!(matches!(
        collect(e.submit(job(vec![3, 99], 4, 0.0, 0)).unwrap()).await,
        Err(Failure::InvalidToken(99))
    ));
    let mut late = job(vec![3, 4], 50, 1.0, 0);
    late.deadline = Some(Instant::now());
    assert!(matches!(
        collect(e.submit(late).unwrap()).await,
        Err(Failure::Timeout)
    ));
    // max_tokens beyond the context: cut at the context, finish `length`.
    let (_, n, finish) = collect(
        e.submit(job((0..90).map(|i| 3 + i % 60).collect(), 50, 1.0, 5))
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(n <= 6);
    if n == 6 {
        assert_eq!(finish, FinishReason::Length);
    }
    // Chat prompts go through the template.
    let mut chat = job(vec![], 3, 0.0, 0);
    chat.prompt = Prompt::Chat(vec![swarm_model::ChatMessage::user("t5 t6")]);
    let rx = e.submit(chat).unwrap();
    assert!(collect(rx).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elites_beyond_the_budget_are_evicted_and_rematerialised() {
    let one = swarm_serve::model_bytes(&config(), Precision::F32);
    let e = engine_with_budget(4, one);
    wait_ready(&e).await;
    let (want, _) = reference(&[5, 6, 7], 6);
    for elite in ["e", "f", "e", "f"] {
        let mut j = job(vec![5, 6, 7], 6, 0.0, 0);
        j.elite = elite.into();
        let (text, _, _) = collect(e.submit(j).unwrap()).await.unwrap();
        assert_eq!(text, want, "{elite}");
        assert_eq!(e.status().elites_resident, 1);
    }
    // Mixed elites in flight at once: one batch per elite, both answers right.
    let mut a = job(vec![5, 6, 7], 6, 0.0, 0);
    a.elite = "e".into();
    let mut b = a.clone();
    b.elite = "f".into();
    let (ra, rb) = (e.submit(a).unwrap(), e.submit(b).unwrap());
    assert_eq!(collect(ra).await.unwrap().0, want);
    assert_eq!(collect(rb).await.unwrap().0, want);
    let mut unknown = job(vec![5], 2, 0.0, 0);
    unknown.elite = "zz".into();
    assert!(matches!(
        collect(e.submit(unknown).unwrap()).await,
        Err(Failure::Internal(_))
    ));
}
