//! The official `openai` Python client against the real engine on the default model
//! (SmolLM2-135M-Instruct), served on real sockets on 127.0.0.1: three servers share one
//! engine (open, behind an API key, and with a queue of one, for the 429 check).
//!
//! Needs `.venv-serve` with `openai` (`.ci/setup.d/40-serve.sh`) and the cached default model
//! (`.ci/setup.d/10-model.sh`); without them the test says why and passes vacuously.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use swarm_serve::{
    load_single_model, serve, single_model_swarm, AppState, Engine, ModelEngine, ModelEngineConfig,
    Router, ServerConfig, DEFAULT_ELITE,
};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client() {
    let root = workspace_root();
    let python = root.join(".venv-serve/bin/python");
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    // A missing client is a setup error, not a pass: CI installs it, and so can anyone.
    assert!(
        has_openai,
        "{} with `openai` not found: run .ci/setup.d/40-serve.sh",
        python.display()
    );
    let model = swarm_model::ensure_default_model()
        .unwrap_or_else(|e| panic!("default model unavailable (run .ci/setup.d/10-model.sh): {e}"));
    let reference = model.display().to_string();
    let engine = ModelEngine::start(
        ModelEngineConfig {
            max_batch: 32,
            max_prefill_tokens: 2048,
            ..ModelEngineConfig::default()
        },
        move || {
            load_single_model(
                &reference,
                &[DEFAULT_ELITE.to_string()],
                candle_core::Device::Cpu,
                swarm_model::Precision::F32,
                1 << 30,
            )
        },
    )
    .unwrap();
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let swarm = single_model_swarm(DEFAULT_ELITE, "smollm2");
    let configs = [
        ServerConfig {
            queue_capacity: 64,
            ..Default::default()
        },
        ServerConfig {
            api_keys: vec!["sk-test".into()],
            ..Default::default()
        },
        ServerConfig {
            queue_capacity: 1,
            ..Default::default()
        },
    ];
    let mut urls = Vec::new();
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    for config in configs {
        let state = AppState::new(engine.clone(), Router::new(swarm.clone(), None), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}/v1", listener.local_addr().unwrap()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        servers.push(tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        })));
    }
    for _ in 0..600 {
        if engine.status().ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(engine.status().ready, "the model did not load in 60 s");
    let script = root.join("scripts/serve/openai_client_test.py");
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).args(&urls).output())
            .await
            .unwrap()
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the openai client checks failed:\n{stdout}"
    );
    // Graceful shutdown: every server drains and returns.
    for tx in stops {
        let _ = tx.send(());
    }
    for s in servers {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
