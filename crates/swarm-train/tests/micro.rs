//! The micro preset end to end: four HF dirs that load, reference logits, and a score table.
//! No score thresholds: the micro world is a pipeline check, not a model.

use swarm_model::Pretrained;
use swarm_tasks::Skill;
use swarm_train::{bootstrap, score_table, BootstrapOptions, Preset, WorldSpec, MODEL_NAMES};

#[test]
fn micro_pipeline_end_to_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = BootstrapOptions {
        spec: WorldSpec::preset(Preset::Micro),
        seed: 0,
        out: dir.path().to_path_buf(),
        progress: false,
        evaluate: true,
    };
    let report = bootstrap(&opts)?;
    for name in MODEL_NAMES {
        let model = Pretrained::open(&dir.path().join(name).display().to_string())?;
        assert_eq!(model.config.vocab_size, report.vocab_size);
        assert!(model.chat_template.is_some(), "{name} has no chat template");
        assert_eq!(model.tokenizer.eos_token(), Some("<|im_end|>"));
        assert!(dir
            .path()
            .join("logits")
            .join(format!("{name}.json"))
            .exists());
    }
    assert_eq!(report.scores.len(), 4);
    for m in &report.scores {
        assert_eq!(m.pass_rate.len(), Skill::ALL.len());
        assert!(m.episodes.iter().all(|&n| n > 0));
    }
    let table = score_table(&report);
    assert!(
        table.contains("database") && table.contains("base"),
        "{table}"
    );
    assert!(report.base_train.final_loss.is_finite());
    // The experts moved away from the base (they were trained), but not far.
    let base = Pretrained::open(&dir.path().join("base").display().to_string())?;
    let coding = Pretrained::open(&dir.path().join("coding").display().to_string())?;
    let device = candle_core::Device::Cpu;
    let name = "model.layers.0.mlp.up_proj.weight";
    let a = base.weights.load(name, &device)?;
    let b = coding.weights.load(name, &device)?;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff > 0.0 && diff < 0.1, "task vector entry {diff}");

    // Same seed, same world (the same thread count in one process).
    let again = tempfile::tempdir()?;
    let opts2 = BootstrapOptions {
        out: again.path().to_path_buf(),
        evaluate: false,
        ..opts
    };
    bootstrap(&opts2)?;
    for name in MODEL_NAMES {
        let x = std::fs::read(dir.path().join(name).join("model.safetensors"))?;
        let y = std::fs::read(again.path().join(name).join("model.safetensors"))?;
        assert!(x == y, "{name} differs between two runs with the same seed");
        let x = std::fs::read(dir.path().join(name).join("tokenizer.json"))?;
        let y = std::fs::read(again.path().join(name).join("tokenizer.json"))?;
        assert!(x == y, "{name}: tokenizer differs");
    }
    Ok(())
}
