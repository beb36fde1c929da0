//! End to end on a micro world (a random 2-layer Llama with a byte-level tokenizer, and three
//! perturbed "experts"): factorise, evaluate with real generation and sandboxed checks, evolve,
//! resume, export the swarm and write the report. The scores are those of random models (near
//! zero); what is tested is that every stage runs and writes what it should.

use std::path::Path;

use swarm_evolve::{evolve, load_manifest, plan_for_resume, EvolveOptions, RunPlan, RunState};
use swarm_merge::testing;

/// GPT-2's byte-to-unicode table: the byte-level alphabet.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    pairs
        .into_iter()
        .filter_map(|(_, c)| char::from_u32(c))
        .collect()
}

fn write_tokenizer(path: &Path) -> anyhow::Result<()> {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(256, "<|im_start|>"), special(257, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(path, serde_json::to_vec(&json)?)?;
    Ok(())
}

fn micro_world(dir: &Path) -> anyhow::Result<()> {
    let mut config = testing::tiny_config();
    config.vocab_size = 260;
    config.max_position_embeddings = 1024;
    config.bos_token_id = None;
    config.eos_token_ids = vec![257];
    std::fs::create_dir_all(dir)?;
    let tok_path = dir.join("tokenizer.json");
    write_tokenizer(&tok_path)?;
    let tok = swarm_model::Tokenizer::from_file(&tok_path)?
        .with_special_tokens(None, Some("<|im_end|>".into()));
    let base = testing::random_model(&config, 1);
    swarm_model::save_hf_dir(&dir.join("base"), &config, &base, &tok, None)?;
    for (i, name) in ["coding", "database", "os"].iter().enumerate() {
        let w = testing::perturbed(&base, 10 + i as u64, 0.2);
        swarm_model::save_hf_dir(&dir.join(name), &config, &w, &tok, None)?;
    }
    Ok(())
}

#[test]
fn micro_world_end_to_end_with_resume_export_and_report() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let world = tmp.path().join("world");
    micro_world(&world)?;
    let run_dir = tmp.path().join("run");
    let out = tmp.path().join("agents/micro");
    let cfg = tmp.path().join("micro.toml");
    let w = world.display();
    std::fs::write(
        &cfg,
        format!(
            r#"
name = "micro"
seed = 3
run_dir = "{}"
output = "{}"
[base]
model = "{w}/base"
[[experts]]
model = "{w}/coding"
skill = "coding"
[[experts]]
model = "{w}/database"
skill = "database"
[[experts]]
model = "{w}/os"
skill = "os"
[[skills]]
name = "coding"
episodes = 2
test_episodes = 2
bins = 4
[[skills]]
name = "database"
episodes = 2
test_episodes = 2
bins = 4
[[skills]]
name = "os"
episodes = 2
test_episodes = 2
bins = 4
[qd]
generations = 3
[model]
batch_size = 4
max_new_tokens = 4
[baselines]
task_arithmetic_lambdas = [0.5]
ties_densities = [0.5]
"#,
            run_dir.display(),
            out.display()
        ),
    )?;
    let plan = RunPlan::from_file(&cfg)?;
    // Two generations, then stop (as if interrupted between generations).
    let first = evolve(
        &plan,
        &EvolveOptions {
            max_new_generations: Some(2),
            ..Default::default()
        },
    )?;
    assert_eq!(first.generations_done, 2);
    assert!(!first.finished && first.swarm_dir.is_none());
    // A second start without --resume refuses to overwrite the checkpoint.
    assert!(evolve(&plan, &EvolveOptions::default()).is_err());
    // Resume from the run dir alone.
    let plan2 = plan_for_resume(&run_dir)?;
    let done = evolve(
        &plan2,
        &EvolveOptions {
            resume: true,
            command: "test".into(),
            ..Default::default()
        },
    )?;
    assert!(done.finished);
    assert_eq!(done.generations_done, 3);

    // The run dir.
    for f in [
        "config.toml",
        "factors.safetensors",
        "genomes.safetensors",
        "progress.json",
        "state.json",
        "evolve.log",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    let log = std::fs::read_to_string(run_dir.join("evolve.log"))?;
    assert!(log.contains("gen    3"), "{log}");

    // The swarm.
    let m = load_manifest(&out)?;
    assert_eq!(m.skills.len(), 3);
    assert_eq!(m.experts.len(), 3);
    assert_eq!(m.aggregated.as_deref(), Some("aggregated"));
    assert!(m
        .elites
        .iter()
        .any(|e| e.tags.contains(&"aggregated".to_string())));
    assert_eq!(m.best.len(), 3);
    let f = swarm_merge::FactorSet::load(&out.join("factors.safetensors"))?;
    let genomes = swarm_merge::load_genomes(&out.join("genomes.safetensors"), f.layout())?;
    for e in &m.elites {
        assert!(
            genomes.iter().any(|(n, _)| *n == e.id),
            "genome of {} missing",
            e.id
        );
    }
    let state = RunState::load(&run_dir, &f)?;
    assert_eq!(state.qd.generations_done(), 3);

    // The report.
    let report = std::fs::read_to_string(run_dir.join("report/report.md"))?;
    for row in [
        "| base |",
        "| expert coding |",
        "| linear average |",
        "| task arithmetic |",
        "| TIES |",
        "| best elite os |",
        "| aggregated (CycleQD) |",
    ] {
        assert!(report.contains(row), "{row} missing from\n{report}");
    }
    for png in ["archive-coding.png", "qd-score.png", "coverage.png"] {
        let bytes = std::fs::read(run_dir.join("report").join(png))?;
        assert_eq!(&bytes[1..4], b"PNG");
    }
    Ok(())
}
