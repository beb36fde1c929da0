//! The HTTP layer in-process (`tower::ServiceExt::oneshot`) over a small scripted engine: the
//! engine trait is the seam, so routes, validation, errors, auth, the queue, streaming and
//! cancellation are tested without a model. The real engine is tested in `engine.rs` and
//! against the official `openai` client in `scripts/serve/`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use serde_json::{json, Value};
use swarm_serve::{
    app, call_text, AppState, EliteInfo, Engine, EngineStatus, Event, Failure, FinishReason,
    GenerateJob, Prompt, PromptLogprobs, Router, ServerConfig, SkillClassifier, SwarmInfo,
    TokenLogprob, TopLogprob,
};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Emits `max_tokens` words derived from the seed, one every `delay`, and counts the jobs
/// whose receiver went away (cancellations).
#[derive(Default)]
struct ScriptedEngine {
    delay_ms: u64,
    not_ready: AtomicBool,
    cancelled: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

impl Engine for ScriptedEngine {
    fn submit(&self, job: GenerateJob) -> Result<mpsc::UnboundedReceiver<Event>, Failure> {
        let (tx, rx) = mpsc::unbounded_channel();
        let prompt_tokens = match &job.prompt {
            Prompt::Chat(m) => m.iter().map(|m| m.content.split_whitespace().count()).sum(),
            Prompt::Text(t) => t.split_whitespace().count(),
            Prompt::Tokens(t) => t.len(),
        };
        if prompt_tokens > 1000 {
            let _ = tx.send(Event::Failed(Failure::PromptTooLong {
                tokens: prompt_tokens,
                limit: 1000,
            }));
            return Ok(rx);
        }
        // As if the prefix cache held the first half of every prompt.
        let cached_tokens = prompt_tokens / 2;
        let delay = Duration::from_millis(self.delay_ms);
        let cancelled = self.cancelled.clone();
        let finished = self.finished.clone();
        tokio::spawn(async move {
            let _ = tx.send(Event::Started { prompt_tokens });
            // `echo`: the prompt's words back, each after the first with ln p = -1.
            if job.params.echo {
                let text = match &job.prompt {
                    Prompt::Text(t) => t.clone(),
                    _ => String::new(),
                };
                let words: Vec<String> = text.split_inclusive(' ').map(String::from).collect();
                let logprobs = job.params.logprobs.map(|_| PromptLogprobs {
                    first_token: words.first().cloned().unwrap_or_default().into_bytes(),
                    rest: words[1.min(words.len())..]
                        .iter()
                        .map(|w| TokenLogprob {
                            bytes: w.clone().into_bytes(),
                            logprob: -1.0,
                            top: Vec::new(),
                        })
                        .collect(),
                });
                let _ = tx.send(Event::Echo { text, logprobs });
            }
            // Function calling: a sentence, then one call of each function it may call (two
            // at most; one without parallel calls), sent a few characters at a time so that
            // tags split across events.
            if let Some(tools) = &job.params.tools {
                let calls: Vec<String> = tools
                    .callable()
                    .iter()
                    .take(if tools.parallel { 2 } else { 1 })
                    .enumerate()
                    .map(|(k, &f)| call_text(&tools.functions[f].name, &format!("{{\"n\": {k}}}")))
                    .collect();
                // `max_tokens` cuts it, a "token" being 3 bytes.
                let answer = format!("Checking. {}", calls.join("\n"));
                let pieces: Vec<&[u8]> = answer.as_bytes().chunks(3).collect();
                let sent = pieces.len().min(job.params.max_tokens);
                for piece in &pieces[..sent] {
                    let _ = tx.send(Event::Text {
                        text: String::from_utf8_lossy(piece).into_owned(),
                        tokens: 1,
                        logprobs: Vec::new(),
                    });
                }
                let _ = tx.send(Event::Done {
                    finish: if sent < pieces.len() {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    },
                    completion_tokens: sent,
                    cached_tokens,
                });
                finished.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let mut state = job.params.seed ^ 0x9e37_79b9_7f4a_7c15;
            let mut text = String::new();
            for i in 0..job.params.max_tokens {
                tokio::time::sleep(delay).await;
                if tx.is_closed() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // Past the request's deadline the job stops, as the real engine's do.
                if job.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    let _ = tx.send(Event::Failed(Failure::Timeout));
                    return;
                }
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let word = format!("w{} ", (state >> 33) % 100);
                text.push_str(&word);
                if job.params.stop.iter().any(|s| text.contains(s.as_str())) {
                    let _ = tx.send(Event::Done {
                        finish: FinishReason::Stop,
                        completion_tokens: i + 1,
                        cached_tokens,
                    });
                    finished.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // Asked for log-probabilities: word i has ln p = -i/10, and the alternatives
                // are the word itself then "alt1 ", "alt2 ", ... each 1 lower.
                let logprobs = match job.params.logprobs {
                    Some(top) => vec![TokenLogprob {
                        bytes: word.clone().into_bytes(),
                        logprob: -(i as f32) / 10.0,
                        top: (0..top)
                            .map(|k| TopLogprob {
                                bytes: if k == 0 {
                                    word.clone().into_bytes()
                                } else {
                                    format!("alt{k} ").into_bytes()
                                },
                                logprob: -(i as f32) / 10.0 - k as f32,
                            })
                            .collect(),
                    }],
                    None => Vec::new(),
                };
                let _ = tx.send(Event::Text {
                    text: word,
                    tokens: 1,
                    logprobs,
                });
            }
            let _ = tx.send(Event::Done {
                finish: FinishReason::Length,
                completion_tokens: job.params.max_tokens,
                cached_tokens,
            });
            finished.fetch_add(1, Ordering::SeqCst);
        });
        Ok(rx)
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            ready: !self.not_ready.load(Ordering::SeqCst),
            elites_resident: 1,
            ..Default::default()
        }
    }
}

fn swarm() -> SwarmInfo {
    let elite = |id: &str, c: f64, d: f64| EliteInfo {
        id: id.into(),
        scores: [("coding".to_string(), c), ("database".to_string(), d)].into(),
    };
    SwarmInfo {
        name: "toy".into(),
        base: "toy-base".into(),
        skills: vec!["coding".into(), "database".into()],
        elites: vec![elite("elite-code", 0.9, 0.2), elite("elite-sql", 0.3, 0.8)],
        created: 1,
    }
}

fn classifier() -> SkillClassifier {
    let mut ex = Vec::new();
    for i in 0..30 {
        ex.push((
            "coding",
            format!("Write a Python function f{i}(xs): def f{i}(xs): return xs[{i}]"),
        ));
        ex.push((
            "database",
            format!("SQL: SELECT name FROM t{i} WHERE id = {i} ORDER BY name;"),
        ));
    }
    SkillClassifier::train(ex.iter().map(|(s, t)| (*s, t.as_str())), 0.1).unwrap()
}

fn state_with(engine: ScriptedEngine, config: ServerConfig) -> (AppState, Arc<ScriptedEngine>) {
    let engine = Arc::new(engine);
    let state = AppState::new(
        engine.clone(),
        Router::new(swarm(), Some(classifier())),
        config,
    );
    (state, engine)
}

fn state() -> AppState {
    state_with(ScriptedEngine::default(), ServerConfig::default()).0
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send(
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app(state.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

async fn send_json(
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let (s, h, b) = send(state, req).await;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&b)));
    (s, h, v)
}

fn assert_envelope(v: &Value, kind: &str) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.as_object().unwrap().contains_key("param"));
    assert!(e.as_object().unwrap().contains_key("code"));
}

/// `data:` payloads of an SSE body.
fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// A chat or completion stream's chunks, parsed, after checking that it ends with `[DONE]`.
fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn lists_router_skills_and_elites() {
    let (s, _, v) = send_json(&state(), get("/v1/models")).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "swarm",
            "swarm/coding",
            "swarm/database",
            "elite-code",
            "elite-sql"
        ]
    );
    assert_eq!(v["data"][3]["parent"], "toy-base");
    assert_eq!(v["data"][3]["owned_by"], "toy");
    assert_eq!(v["data"][3]["swarm"]["scores"]["coding"], 0.9);
    let (s, _, v) = send_json(&state(), get("/v1/models/swarm/coding")).await;
    assert_eq!(
        (s, v["id"].as_str()),
        (StatusCode::OK, Some("swarm/coding"))
    );
}

#[tokio::test]
async fn chat_answers_with_usage_and_the_serving_elite() {
    let body = json!({"model": "swarm/database", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3});
    let req = Request::post("/v1/chat/completions")
        .header("x-request-id", "abc-123")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (s, h, v) = send_json(&state(), req).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-swarm-elite"], "elite-sql");
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "elite-sql");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
               "prompt_tokens_details": {"cached_tokens": 1}})
    );
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        3
    );
}

#[tokio::test]
async fn the_router_classifies_every_turn() {
    let st = state();
    for (text, elite) in [
        (
            "SELECT name FROM users WHERE id = 3 ORDER BY name;",
            "elite-sql",
        ),
        (
            "def add(a, b): return a + b  # a Python function",
            "elite-code",
        ),
    ] {
        let body = json!({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and?"}], "max_tokens": 1});
        let (s, h, _) = send_json(&st, post("/v1/chat/completions", body)).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-swarm-elite"], elite, "{text}");
    }
}

#[tokio::test]
async fn completions_and_n_choices() {
    let body = json!({"model": "elite-code", "prompt": "one two three", "max_tokens": 2, "n": 3, "seed": 5});
    let (s, _, v) = send_json(&state(), post("/v1/completions", body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    // The prompt's cached tokens count once too, like its tokens.
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    // Choices use seeds 5, 6, 7: not all equal.
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert!(texts.iter().any(|t| *t != texts[0]), "{texts:?}");
}

#[tokio::test]
async fn a_list_of_prompts_answers_each_as_if_alone() {
    let st = state();
    let body = json!({"model": "elite-code", "prompt": ["one two three", "four five"], "max_tokens": 2, "n": 2, "seed": 5});
    let (s, _, v) = send_json(&st, post("/v1/completions", body)).await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    let indices: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3]);
    // Each prompt once, however many choices: 3 + 2 words.
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1 + 1);
    // Prompt p's choice j has the seed it would have alone: seed + j.
    for (p, prompt) in ["one two three", "four five"].iter().enumerate() {
        let alone =
            json!({"model": "elite-code", "prompt": prompt, "max_tokens": 2, "n": 2, "seed": 5});
        let (_, _, a) = send_json(&st, post("/v1/completions", alone)).await;
        for j in 0..2 {
            assert_eq!(
                choices[p * 2 + j]["text"],
                a["choices"][j]["text"],
                "prompt {p} choice {j}"
            );
        }
    }
    // Streamed, every choice index appears and finishes once.
    let body =
        json!({"model": "elite-code", "prompt": ["a", "b", "c"], "max_tokens": 2, "stream": true});
    let (s, _, b) = send(&st, post("/v1/completions", body)).await;
    assert_eq!(s, 200);
    let data = sse_data(&b);
    let mut finished = Vec::new();
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            assert_eq!(reason, "length");
            finished.push(chunk["choices"][0]["index"].as_u64().unwrap());
        }
    }
    finished.sort_unstable();
    assert_eq!(finished, [0, 1, 2]);
    let (s, _, v) = send_json(&st, post("/v1/completions", json!({"prompt": []}))).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "prompt");
}

#[tokio::test]
async fn seeds_reproduce() {
    let st = state();
    let ask = |seed: u64| json!({"messages": [{"role": "user", "content": "x"}], "seed": seed, "max_tokens": 8, "temperature": 1.0});
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = send_json(&st, post("/v1/chat/completions", ask(7))).await.2;
    let b = send_json(&st, post("/v1/chat/completions", ask(7))).await.2;
    let c = send_json(&st, post("/v1/chat/completions", ask(8))).await.2;
    assert_eq!(text(&a), text(&b));
    assert_ne!(text(&a), text(&c));
}

#[tokio::test]
async fn streams_chunks_usage_and_done() {
    let body = json!({"model": "elite-code", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 4,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (s, h, b) = send(&state(), post("/v1/chat/completions", body)).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["x-swarm-elite"], "elite-code");
    let chunks = sse_chunks(&b);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "elite-code"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["prompt_tokens"], 2);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert!(finish["usage"].is_null());
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 4);
}

#[tokio::test]
async fn streams_completions() {
    let body = json!({"prompt": "a", "max_tokens": 2, "stream": true});
    let (s, _, b) = send(&state(), post("/v1/completions", body)).await;
    assert_eq!(s, 200);
    let data = sse_data(&b);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last.get("usage").is_none());
}

/// A chat with `logprobs` and `top_logprobs`: one entry per token, whose texts make the
/// message, each with its alternatives most likely first; without them, `logprobs` is null.
#[tokio::test]
async fn chat_logprobs_list_every_token() {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "logprobs": true, "top_logprobs": 2, "seed": 1});
    let (s, _, v) = send_json(&state(), post("/v1/chat/completions", body)).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    let joined: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, choice["message"]["content"].as_str().unwrap());
    for (i, t) in content.iter().enumerate() {
        let logprob = -(i as f64) / 10.0;
        assert!(
            (t["logprob"].as_f64().unwrap() - logprob).abs() < 1e-6,
            "{t}"
        );
        let bytes: Vec<u8> = serde_json::from_value(t["bytes"].clone()).unwrap();
        assert_eq!(bytes, t["token"].as_str().unwrap().as_bytes());
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], t["token"]);
        assert_eq!(top[1]["token"], "alt1 ");
        assert!((top[1]["logprob"].as_f64().unwrap() - (logprob - 1.0)).abs() < 1e-6);
    }
    assert!(choice["logprobs"]["refusal"].is_null());

    // `logprobs` alone: the tokens without alternatives.
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "logprobs": true});
    let (_, _, v) = send_json(&state(), post("/v1/chat/completions", body)).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert!(content.iter().all(|t| t["top_logprobs"] == json!([])));

    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (_, _, v) = send_json(&state(), post("/v1/chat/completions", body)).await;
    assert!(v["choices"][0]["logprobs"].is_null());
}

/// Completions' legacy lists: tokens, their log-probabilities, a map of alternatives each,
/// and each token's offset in the text; streamed, the offsets carry on across chunks.
#[tokio::test]
async fn completion_logprobs_in_the_legacy_format() {
    let body = json!({"prompt": "a", "max_tokens": 3, "logprobs": 2, "seed": 4});
    let (s, _, v) = send_json(&state(), post("/v1/completions", body.clone())).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    let text = choice["text"].as_str().unwrap();
    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text);
    let mut offset = 0;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(logprobs["text_offset"][i], offset);
        offset += token.chars().count();
        let top = logprobs["top_logprobs"][i].as_object().unwrap();
        let keys: Vec<&String> = top.keys().collect();
        assert_eq!(keys.len(), 2);
        assert!(
            top.contains_key(*token) && top.contains_key("alt1 "),
            "{top:?}"
        );
        assert_eq!(logprobs["token_logprobs"][i], top[*token]);
    }

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (s, _, b) = send(&state(), post("/v1/completions", streamed)).await;
    assert_eq!(s, 200);
    let chunks: Vec<Value> = sse_data(&b)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut offsets = Vec::new();
    let mut streamed_text = String::new();
    for c in &chunks {
        let choice = &c["choices"][0];
        streamed_text.push_str(choice["text"].as_str().unwrap());
        if choice["finish_reason"].is_null() {
            offsets.extend(
                choice["logprobs"]["text_offset"]
                    .as_array()
                    .unwrap()
                    .clone(),
            );
        } else {
            assert!(choice["logprobs"].is_null(), "{c}");
        }
    }
    assert_eq!(streamed_text, text);
    assert_eq!(Value::from(offsets), logprobs["text_offset"]);
}

/// `echo`: the text starts with the prompt, and the legacy lists start with its tokens, the
/// first with null log-probabilities; streamed, the prompt is the first chunk.
#[tokio::test]
async fn echo_puts_the_prompt_first() {
    let body = json!({"prompt": "one two three", "max_tokens": 2, "echo": true,
        "logprobs": 0, "seed": 2});
    let (s, _, v) = send_json(&state(), post("/v1/completions", body.clone())).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert!(
        text.starts_with("one two three") && text.len() > 13,
        "{text}"
    );
    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 3 + 2);
    assert_eq!(tokens.concat(), text);
    assert!(logprobs["token_logprobs"][0].is_null() && logprobs["top_logprobs"][0].is_null());
    assert_eq!(logprobs["token_logprobs"][1], -1.0);
    assert_eq!(
        logprobs["text_offset"].as_array().unwrap()[..4],
        [0, 4, 8, 13]
    );

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, _, b) = send(&state(), post("/v1/completions", streamed)).await;
    let first: Value = serde_json::from_str(&sse_data(&b)[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "one two three");
    assert!(first["choices"][0]["logprobs"]["token_logprobs"][0].is_null());

    // With `max_tokens: 0`, only with `echo`.
    let body = json!({"prompt": "one two", "max_tokens": 0});
    let (s, _, v) = send_json(&state(), post("/v1/completions", body)).await;
    assert_eq!(
        (s.as_u16(), v["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
}

/// Streamed chat chunks carry the log-probabilities of their own tokens.
#[tokio::test]
async fn streamed_chat_chunks_carry_their_logprobs() {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "logprobs": true, "top_logprobs": 1, "stream": true});
    let (s, _, b) = send(&state(), post("/v1/chat/completions", body)).await;
    assert_eq!(s, 200);
    let mut tokens = 0;
    for d in sse_data(&b).iter().filter(|d| *d != "[DONE]") {
        let c: Value = serde_json::from_str(d).unwrap();
        let choice = &c["choices"][0];
        match choice["delta"]["content"].as_str() {
            Some(text) if !text.is_empty() => {
                let content = choice["logprobs"]["content"].as_array().unwrap();
                let joined: String = content
                    .iter()
                    .map(|t| t["token"].as_str().unwrap())
                    .collect();
                assert_eq!(joined, text);
                tokens += content.len();
            }
            _ => assert!(choice["logprobs"].is_null(), "{c}"),
        }
    }
    assert_eq!(tokens, 3);
}

fn tools_request(stream: bool) -> Value {
    json!({"model": "elite-code", "messages": [{"role": "user", "content": "weather?"}],
           "tools": [{"type": "function", "function": {"name": "get_weather"}},
                     {"type": "function", "function": {"name": "get_time"}}],
           "stream": stream})
}

#[tokio::test]
async fn tool_calls_are_read_out_of_the_answer() {
    let (s, _, v) = send_json(&state(), post("/v1/chat/completions", tools_request(false))).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking. ");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    for (k, (call, name)) in calls.iter().zip(["get_weather", "get_time"]).enumerate() {
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], name);
        assert_eq!(call["function"]["arguments"], format!("{{\"n\": {k}}}"));
    }
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    // A named function: the answer may call only it.
    let mut named = tools_request(false);
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, _, v) = send_json(&state(), post("/v1/chat/completions", named)).await;
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_time");

    // Without tools the same text would be content: no tool_calls key at all.
    let (_, _, v) = send_json(
        &state(),
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        ),
    )
    .await;
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}

/// A streamed choice's calls put together as clients do: the parts with one `index`, the
/// first with the id, type and name, the rest appending arguments. Also how many parts each
/// call came in.
fn merged_calls<'a>(deltas: impl Iterator<Item = &'a Value>) -> Vec<(Value, usize)> {
    let mut calls: Vec<(Value, usize)> = Vec::new();
    for part in deltas {
        let index = part["index"].as_u64().unwrap() as usize;
        let arguments = part["function"]["arguments"].as_str().unwrap();
        if index == calls.len() {
            assert!(part["id"].as_str().unwrap().starts_with("call_"), "{part}");
            assert_eq!(part["type"], "function");
            assert!(part["function"]["name"].is_string(), "{part}");
            calls.push((part.clone(), 1));
        } else {
            assert_eq!(index + 1, calls.len(), "parts of an earlier call: {part}");
            for key in ["id", "type"] {
                assert!(part.get(key).is_none(), "a later part with {key}: {part}");
            }
            assert!(part["function"].get("name").is_none(), "{part}");
            let (call, parts) = &mut calls[index];
            let so_far = call["function"]["arguments"].as_str().unwrap().to_string();
            call["function"]["arguments"] = json!(so_far + arguments);
            *parts += 1;
        }
    }
    calls
}

#[tokio::test]
async fn streamed_tool_calls_come_as_their_arguments_are_written() {
    let (s, _, b) = send(&state(), post("/v1/chat/completions", tools_request(true))).await;
    assert_eq!(s, 200);
    let chunks = sse_chunks(&b);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Checking. ");
    let calls = merged_calls(
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten(),
    );
    assert_eq!(calls.len(), 2);
    for (k, (call, parts)) in calls.iter().enumerate() {
        assert_eq!(call["function"]["arguments"], format!("{{\"n\": {k}}}"));
        // The engine sends 3 bytes at a time: the arguments come in several parts.
        assert!(*parts > 1, "call {k} came in one part");
    }
    assert_eq!(calls[1].0["function"]["name"], "get_time");
    // No chunk's content holds any of a call's text.
    assert!(!content.contains('<'));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    // The same calls as the plain answer.
    let (_, _, plain) =
        send_json(&state(), post("/v1/chat/completions", tools_request(false))).await;
    let plain = plain["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    for (streamed, plain) in calls.iter().zip(&plain) {
        assert_eq!(streamed.0["function"], plain["function"]);
    }
}

/// A call cut short by `max_tokens` in its arguments is a call with the arguments written so
/// far and `finish_reason: "length"`, streamed or not; cut before its arguments, it is text.
#[tokio::test]
async fn a_call_cut_short_keeps_its_arguments_so_far() {
    // The answer up to the first call's arguments (its `{` included) is 20 tokens.
    let body = |stream: bool, max_tokens: usize| {
        let mut body = tools_request(stream);
        body["max_tokens"] = json!(max_tokens);
        body
    };
    let (s, _, v) = send_json(&state(), post("/v1/chat/completions", body(false, 21))).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["message"]["content"], "Checking. ");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"].as_str().unwrap();
    assert!(
        arguments.starts_with('{') && arguments.len() < "{\"n\": 0}".len(),
        "{arguments:?}"
    );

    let (_, _, b) = send(&state(), post("/v1/chat/completions", body(true, 21))).await;
    let chunks = sse_chunks(&b);
    let streamed = merged_calls(
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten(),
    );
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0].0["function"], calls[0]["function"]);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // Cut in the name: the block is text.
    let (_, _, v) = send_json(&state(), post("/v1/chat/completions", body(false, 10))).await;
    let message = &v["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none(), "{message}");
    assert!(message["content"].as_str().unwrap().contains("<tool_call>"));
}

#[tokio::test]
async fn each_choice_reads_its_own_calls() {
    let mut body = tools_request(true);
    body["n"] = json!(2);
    let (s, _, b) = send(&state(), post("/v1/chat/completions", body)).await;
    assert_eq!(s, 200);
    let chunks = sse_chunks(&b);
    for choice in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0])
            .filter(|c| c["index"] == choice)
            .collect();
        let content: String = mine
            .iter()
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Checking. ", "choice {choice}");
        // Each choice's calls count from 0, their parts in order.
        let calls = merged_calls(
            mine.iter()
                .filter_map(|c| c["delta"]["tool_calls"].as_array())
                .flatten(),
        );
        let arguments: Vec<&Value> = calls
            .iter()
            .map(|c| &c.0["function"]["arguments"])
            .collect();
        assert_eq!(
            arguments,
            [&json!("{\"n\": 0}"), &json!("{\"n\": 1}")],
            "choice {choice}"
        );
        let finish: Vec<&Value> = mine
            .iter()
            .map(|c| &c["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, [&json!("tool_calls")], "choice {choice}");
    }
}

#[tokio::test]
async fn legacy_functions_answer_with_function_call() {
    let body = |stream: bool| {
        json!({"model": "elite-code", "messages": [{"role": "user", "content": "weather?"}],
               "functions": [{"name": "get_weather"}, {"name": "get_time"}], "stream": stream})
    };
    let (s, _, v) = send_json(&state(), post("/v1/chat/completions", body(false))).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "function_call");
    assert_eq!(choice["message"]["content"], "Checking. ");
    assert_eq!(
        choice["message"]["function_call"],
        json!({"name": "get_weather", "arguments": "{\"n\": 0}"})
    );
    assert!(choice["message"].get("tool_calls").is_none());

    let (_, _, b) = send(&state(), post("/v1/chat/completions", body(true))).await;
    let chunks = sse_chunks(&b);
    let parts: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["delta"]["function_call"])
        .filter(|c| !c.is_null())
        .collect();
    // The name first, then the arguments in parts.
    assert_eq!(parts[0]["name"], "get_weather");
    assert!(parts[1..].iter().all(|p| p.get("name").is_none()));
    assert!(parts.len() > 1);
    let arguments: String = parts
        .iter()
        .map(|p| p["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, "{\"n\": 0}");
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "function_call"
    );
}

#[tokio::test]
async fn errors_use_the_envelope() {
    let st = state();
    let (s, _, v) = send_json(
        &st,
        post(
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ),
    )
    .await;
    assert_eq!(s, 404);
    assert_envelope(&v, "invalid_request_error");
    assert_eq!(v["error"]["code"], "model_not_found");

    let (s, _, v) = send_json(
        &st,
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "audio": {"voice": "alloy"}}),
        ),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "audio");

    let req = Request::post("/v1/chat/completions")
        .body(Body::from("{not json"))
        .unwrap();
    let (s, _, v) = send_json(&st, req).await;
    assert_eq!(s, 400);
    assert_envelope(&v, "invalid_request_error");

    let (s, _, v) = send_json(&st, post("/v1/chat/completions", json!({"messages": "hi"}))).await;
    assert_eq!(s, 400);
    assert_envelope(&v, "invalid_request_error");

    let long = "w ".repeat(1500);
    let (s, _, v) = send_json(&st, post("/v1/completions", json!({"prompt": long}))).await;
    assert_eq!(s, 413);
    assert_eq!(v["error"]["param"], "prompt");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1500 tokens") && message.contains("at most 1000"),
        "{message}"
    );

    let (s, _, v) = send_json(&st, get("/v2/nothing")).await;
    assert_eq!(s, 404);
    assert_envelope(&v, "invalid_request_error");
    let (s, _, v) = send_json(&st, get("/v1/chat/completions")).await;
    assert_eq!(s, 405);
    assert_envelope(&v, "invalid_request_error");
}

#[tokio::test]
async fn body_limit_gives_413() {
    let config = ServerConfig {
        body_limit: 1000,
        ..Default::default()
    };
    let (st, _) = state_with(ScriptedEngine::default(), config);
    let body = json!({"prompt": "x".repeat(5000)});
    let (s, _, v) = send_json(&st, post("/v1/completions", body)).await;
    assert_eq!(s, 413);
    assert_envelope(&v, "invalid_request_error");
}

#[tokio::test]
async fn api_keys() {
    let config = ServerConfig {
        api_keys: vec!["sk-good".into()],
        ..Default::default()
    };
    let (st, _) = state_with(ScriptedEngine::default(), config);
    let models = |auth: Option<&str>| {
        let mut r = Request::get("/v1/models");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::empty()).unwrap()
    };
    let (s, _, v) = send_json(&st, models(None)).await;
    assert_eq!(s, 401);
    assert_envelope(&v, "authentication_error");
    assert_eq!(send_json(&st, models(Some("Bearer sk-bad"))).await.0, 401);
    assert_eq!(send_json(&st, models(Some("Bearer sk-good"))).await.0, 200);
    let (s, _, _) = send(&st, get("/health")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn full_queue_gives_429_with_retry_after() {
    let config = ServerConfig {
        queue_capacity: 1,
        ..Default::default()
    };
    let (st, _) = state_with(
        ScriptedEngine {
            delay_ms: 50,
            ..Default::default()
        },
        config,
    );
    let body =
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": true});
    // The first stream holds the only slot while its body is unread.
    let first = app(st.clone())
        .oneshot(post("/v1/chat/completions", body.clone()))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let (s, h, v) = send_json(&st, post("/v1/chat/completions", body.clone())).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "1");
    assert_envelope(&v, "rate_limit_error");
    drop(first);
    // The slot comes back when the stream is dropped.
    let (s, _, _) = send(
        &st,
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
        ),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn loading_gives_503_and_ready_follows() {
    let engine = ScriptedEngine::default();
    engine.not_ready.store(true, Ordering::SeqCst);
    let (st, engine) = state_with(engine, ServerConfig::default());
    let (s, h, v) = send_json(&st, get("/ready")).await;
    assert_eq!(s, 503);
    assert!(h.contains_key("retry-after"));
    assert_envelope(&v, "server_error");
    let (s, _, _) = send_json(
        &st,
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        ),
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(send(&st, get("/health")).await.0, 200);
    engine.not_ready.store(false, Ordering::SeqCst);
    assert_eq!(send(&st, get("/ready")).await.0, 200);
}

/// Opens a stream on `path`, reads its first event (which holds `first`) and one more, then
/// goes away: generation must stop, the queue empty, and the request count as cancelled.
/// Returns the metrics text after it.
async fn drop_a_stream(path: &str, body: Value, first: &str) -> String {
    let (st, engine) = state_with(
        ScriptedEngine {
            delay_ms: 10,
            ..Default::default()
        },
        ServerConfig::default(),
    );
    let response = app(st.clone()).oneshot(post(path, body)).await.unwrap();
    let mut data = response.into_body().into_data_stream();
    let head = data.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head).contains(first));
    let _ = data.next().await;
    drop(data);
    for _ in 0..100 {
        if engine.cancelled.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(engine.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(engine.finished.load(Ordering::SeqCst), 0);
    assert_eq!(st.queue_depth(), 0);
    let (_, _, metrics) = send(&st, get("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("swarm_cancelled_total 1"), "{metrics}");
    // Counted once, under nginx's 499 (client closed request), not under the 200 that the
    // headers carried.
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("swarm_requests_total{") && l.contains(path))
        .collect();
    assert_eq!(counted.len(), 1, "{metrics}");
    assert!(
        counted[0].contains(r#"status="499""#) && counted[0].ends_with(" 1"),
        "{metrics}"
    );
    metrics
}

#[tokio::test]
async fn dropping_a_stream_cancels_generation() {
    let body =
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000, "stream": true});
    drop_a_stream("/v1/chat/completions", body, "assistant").await;
}

#[tokio::test]
async fn dropping_a_plain_request_cancels_generation() {
    let (st, engine) = state_with(
        ScriptedEngine {
            delay_ms: 10,
            ..Default::default()
        },
        ServerConfig::default(),
    );
    let body = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000});
    let fut = app(st.clone()).oneshot(post("/v1/chat/completions", body));
    // The client gives up after 100 ms: the handler future is dropped.
    assert!(tokio::time::timeout(Duration::from_millis(100), fut)
        .await
        .is_err());
    for _ in 0..100 {
        if engine.cancelled.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(engine.cancelled.load(Ordering::SeqCst), 1);
    let (_, _, metrics) = send(&st, get("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"swarm_requests_total{route="/v1/chat/completions",status="499","#),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_elite() {
    let st = state();
    let body = json!({"model": "elite-sql", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2});
    send(&st, post("/v1/chat/completions", body)).await;
    send(
        &st,
        post(
            "/v1/chat/completions",
            json!({"model": "zz", "messages": []}),
        ),
    )
    .await;
    let body = json!({"model": "elite-sql", "input": "x", "max_output_tokens": 2});
    send(&st, post("/v1/responses", body)).await;
    let (s, h, b) = send(&st, get("/metrics")).await;
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&b);
    assert!(
        text.contains(
            r#"swarm_requests_total{route="/v1/chat/completions",status="200",elite="elite-sql"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"swarm_requests_total{route="/v1/chat/completions",status="400",elite=""} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"swarm_completion_tokens_total{elite="elite-sql"} 4"#));
    assert!(
        text.contains(
            r#"swarm_requests_total{route="/v1/responses",status="200",elite="elite-sql"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains(r#"route="other""#), "{text}");
    assert!(text.contains("swarm_time_to_first_token_seconds_count"));
    assert!(text.contains("swarm_elites_resident 1"));
}

#[tokio::test]
async fn a_request_is_counted_once_with_its_final_status_and_elite() {
    let (st, _) = state_with(
        ScriptedEngine {
            delay_ms: 20,
            ..Default::default()
        },
        ServerConfig {
            request_timeout: Some(Duration::from_millis(150)),
            ..Default::default()
        },
    );
    let ask = |max_tokens: u64, stream: bool| {
        post(
            "/v1/chat/completions",
            json!({"model": "elite-sql", "messages": [{"role": "user", "content": "x"}],
                   "max_tokens": max_tokens, "stream": stream}),
        )
    };
    // Past the deadline: a 504 that names the elite that ran.
    let (s, h, v) = send_json(&st, ask(50, false)).await;
    assert_eq!(s, 504, "{v}");
    assert_envelope(&v, "timeout_error");
    assert_eq!(h["x-swarm-elite"], "elite-sql");
    // A stream's headers went out with 200; it ends with the timeout's error event.
    let (s, _, b) = send(&st, ask(50, true)).await;
    assert_eq!(s, 200);
    let last = sse_data(&b);
    assert!(last.iter().any(|d| d.contains("timeout_error")), "{last:?}");
    // A stream that ends well, after about 40 ms.
    let (s, _, _) = send(&st, ask(2, true)).await;
    assert_eq!(s, 200);

    let (_, _, b) = send(&st, get("/metrics")).await;
    let text = String::from_utf8_lossy(&b);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .to_string()
    };
    // Each request once: the timed-out stream under 504 (not also under 200).
    assert_eq!(
        line(
            r#"swarm_requests_total{route="/v1/chat/completions",status="504",elite="elite-sql"}"#
        ),
        r#"swarm_requests_total{route="/v1/chat/completions",status="504",elite="elite-sql"} 2"#
    );
    assert_eq!(
        line(
            r#"swarm_requests_total{route="/v1/chat/completions",status="200",elite="elite-sql"}"#
        ),
        r#"swarm_requests_total{route="/v1/chat/completions",status="200",elite="elite-sql"} 1"#
    );
    assert_eq!(
        line(r#"swarm_request_duration_seconds_count{route="/v1/chat/completions"}"#),
        r#"swarm_request_duration_seconds_count{route="/v1/chat/completions"} 3"#
    );
    // Latency runs to the end of each stream: the two 150 ms timeouts and the short stream
    // add up to at least 0.3 s (a count at the headers would be near 0).
    let sum: f64 = line(r#"swarm_request_duration_seconds_sum{route="/v1/chat/completions"}"#)
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sum >= 0.3, "{sum}");
}

#[tokio::test]
async fn cors_preflight() {
    let config = ServerConfig {
        cors_origins: vec!["http://localhost:3000".into()],
        api_keys: vec!["k".into()],
        ..Default::default()
    };
    let (st, _) = state_with(ScriptedEngine::default(), config);
    let req = Request::options("/v1/chat/completions")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = send(&st, req).await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
}

#[tokio::test]
async fn request_ids_are_generated_when_absent() {
    let (_, h, _) = send(&state(), get("/health")).await;
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req-"));
}

/// The Responses API: `input` and `instructions` in, `output` items and `usage` out; a cut
/// answer is `incomplete` with the reason.
#[tokio::test]
async fn responses_answer_with_output_items() {
    let body = json!({"model": "elite-code", "instructions": "Be brief.", "input": "hi there",
                      "max_output_tokens": 3, "metadata": {"k": "v"}});
    let (s, h, v) = send_json(&state(), post("/v1/responses", body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-swarm-elite"], "elite-code");
    assert_eq!(v["object"], "response");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["model"], "elite-code");
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["metadata"], json!({"k": "v"}));
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["role"], "assistant");
    let text = output[0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 3, "{text:?}");
    assert_eq!(v["usage"]["output_tokens"], 3);
    // The scripted engine counts a prompt's words: the system turn's and the user's.
    assert_eq!(v["usage"]["input_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 2);

    // Calls come as function_call items after the text that preceded them.
    let body = json!({"model": "elite-code", "input": "weather?",
                      "tools": [{"type": "function", "name": "get_weather"},
                                {"type": "function", "name": "get_time"}]});
    let (s, _, v) = send_json(&state(), post("/v1/responses", body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "completed");
    let output = v["output"].as_array().unwrap();
    let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "function_call", "function_call"]);
    assert_eq!(output[0]["content"][0]["text"], "Checking. ");
    assert_eq!(output[1]["name"], "get_weather");
    assert_eq!(output[1]["arguments"], "{\"n\": 0}");
    assert!(output[2]["call_id"].as_str().unwrap().starts_with("call_"));

    // What cannot be honoured is a 400 in OpenAI's envelope, naming the field.
    let body = json!({"input": "x", "previous_response_id": "resp_1"});
    let (s, _, v) = send_json(&state(), post("/v1/responses", body)).await;
    assert_eq!(s, 400);
    assert_envelope(&v, "invalid_request_error");
    assert_eq!(v["error"]["param"], "previous_response_id");
    let (s, _, v) = send_json(
        &state(),
        post("/v1/responses", json!({"model": "nope", "input": "x"})),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    // Nothing is stored: a stored response is a 404 that says so.
    let (s, _, v) = send_json(&state(), get("/v1/responses/resp_1")).await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stores no responses"),
        "{v}"
    );
    // An error about a message names the input item it came from.
    let body = json!({"instructions": "x", "input": [{"role": "user", "content": "a"},
                                                      {"role": "robot", "content": "b"}]});
    let (s, _, v) = send_json(&state(), post("/v1/responses", body)).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["param"]
            .as_str()
            .unwrap()
            .starts_with("input[1]"),
        "{v}"
    );
}

/// Streamed, a response is typed events, numbered in order, each named after its type:
/// `response.created` first, the items' events, `response.completed` last with the whole
/// response, whose items the deltas add up to.
#[tokio::test]
async fn responses_stream_typed_events() {
    let body = json!({"model": "elite-code", "input": "weather?", "stream": true,
                      "tools": [{"type": "function", "name": "get_weather"},
                                {"type": "function", "name": "get_time"}]});
    let (s, h, b) = send(&state(), post("/v1/responses", body)).await;
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = String::from_utf8_lossy(&b);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let events: Vec<Value> = sse_data(&b)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(names.len(), events.len());
    for (k, (name, event)) in names.iter().zip(&events).enumerate() {
        assert_eq!(event["type"], *name);
        assert_eq!(event["sequence_number"], k);
    }
    assert_eq!(names[0], "response.created");
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(names[1], "response.in_progress");
    assert_eq!(*names.last().unwrap(), "response.completed");
    let done = &events.last().unwrap()["response"];
    assert_eq!(done["status"], "completed");
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let input = done["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(
        done["usage"]["input_tokens_details"]["cached_tokens"],
        input / 2
    );
    let output = done["output"].as_array().unwrap();
    assert_eq!(output.len(), 3);
    let mut built = vec![String::new(); output.len()];
    for e in &events {
        if let Some(delta) = e["delta"].as_str() {
            built[e["output_index"].as_u64().unwrap() as usize].push_str(delta);
        }
    }
    assert_eq!(built[0], output[0]["content"][0]["text"].as_str().unwrap());
    assert_eq!(built[1], output[1]["arguments"].as_str().unwrap());
    assert_eq!(built[2], "{\"n\": 1}");
    // The arguments came in parts, as the engine wrote them.
    let parts = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .count();
    assert!(parts > 2, "{parts}");
}

/// A Responses stream whose client goes away stops its generation, as a chat stream does,
/// and the request is counted under its own route.
#[tokio::test]
async fn dropping_a_responses_stream_cancels_generation() {
    let body = json!({"input": "x", "max_output_tokens": 1000, "stream": true});
    let metrics = drop_a_stream("/v1/responses", body, "response.created").await;
    assert!(metrics.contains("route=\"/v1/responses\""), "{metrics}");
}
