//! Our merges against mergekit's, on the tiny random models in
//! `tests/reference/mergekit/models` (made by `examples/make_tiny_models.rs`), with fixtures
//! made by `scripts/merge/make_mergekit_fixtures.py` (mergekit 0.1.5, torch, CPU, f32).
//!
//! Every tensor: shape, sum, L2 norm and 16 sampled values; three tensors: every value.
//! Tolerance 1e-6 (absolute, on values of order 0.02-1). Task arithmetic and TIES do
//! mergekit's f32 operations in its order, so their sampled and full values must be the
//! same f32 values.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};

use candle_core::Device;
use swarm_merge::{run, MergePlan, RunOptions, SafetensorsReader};
use swarm_model::TensorSource;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/mergekit")
}

/// Compares our merge of `method`'s config with mergekit's fixture; with `exact`, every
/// compared value must be the fixture's f32 value itself.
fn check(method: &str, exact: bool) {
    let dir = reference_dir();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("fixtures/{method}.json"))).unwrap(),
    )
    .unwrap();
    let config = fixture["config"].as_str().unwrap();
    let yaml = std::fs::read_to_string(dir.join(config)).unwrap();
    // Paths in the configs are relative to tests/reference/mergekit.
    let yaml = yaml.replace("models/", &format!("{}/models/", dir.display()));
    let plan = MergePlan::from_yaml(&yaml).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run(&plan, &out, &RunOptions::default(), &mut |_, _, _| {}).unwrap();
    let ours = SafetensorsReader::open_dir(&out).unwrap();

    let tensors = fixture["tensors"].as_object().unwrap();
    assert_eq!(ours.names().len(), tensors.len(), "{method}: tensor count");
    let mut worst = 0f64;
    for (name, want) in tensors {
        let got = ours.load(name, &Device::Cpu).unwrap();
        let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        assert_eq!(got.dims(), shape.as_slice(), "{method}: {name}");
        let v = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sum: f64 = v.iter().map(|x| *x as f64).sum();
        let l2: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let n = v.len() as f64;
        // A sum of n values each within 1e-6.
        assert!(
            (sum - want["sum"].as_f64().unwrap()).abs() <= 1e-6 * n,
            "{method}: {name}: sum {sum} vs {}",
            want["sum"]
        );
        assert!(
            (l2 - want["l2"].as_f64().unwrap()).abs() <= 1e-6 * n.sqrt(),
            "{method}: {name}: l2"
        );
        let idx = want["sample_indices"].as_array().unwrap();
        let vals = want["sample_values"].as_array().unwrap();
        for (i, x) in idx.iter().zip(vals) {
            let (i, x) = (i.as_u64().unwrap() as usize, x.as_f64().unwrap());
            let d = (v[i] as f64 - x).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6, "{method}: {name}[{i}]: {} vs {x}", v[i]);
            if exact {
                assert_eq!(v[i], x as f32, "{method}: {name}[{i}]");
            }
        }
    }
    for (name, values) in fixture["full"].as_object().unwrap() {
        let got = ours
            .load(name, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = values.as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = (*g as f64 - w.as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6, "{method}: {name}[{i}]: {g} vs {w}");
            if exact {
                assert_eq!(*g, w.as_f64().unwrap() as f32, "{method}: {name}[{i}]");
            }
        }
    }
    eprintln!("{method}: largest difference from mergekit {worst:.2e}");
}

#[test]
fn linear_matches_mergekit() {
    check("linear", false);
    check("linear_unnormalized", false);
}

#[test]
fn task_arithmetic_matches_mergekit() {
    check("task_arithmetic", true);
}

#[test]
fn ties_matches_mergekit() {
    check("ties", true);
    check("ties_unnormalized", true);
}

#[test]
fn slerp_matches_mergekit() {
    check("slerp", false);
}
