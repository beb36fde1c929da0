//! `swarm evolve` on a config that names the toy world (`toy:base`, `toy:coding`, ...) when the
//! world is not on disk: it is built first (swarm-train's bootstrap, micro preset here to stay
//! fast), then the run proceeds on it; a second run finds it and builds nothing.
//!
//! The only test in this file: it points the swarm cache (`SWARM_CACHE_DIR`) at a temporary
//! directory for the whole process, before any other thread could read the environment.

use std::path::Path;

use swarm_evolve::{evolve, load_manifest, toy_dir, EvolveOptions, RunPlan, WorldBootstrap};
use swarm_train::Preset;

fn config(name: &str, tmp: &Path) -> String {
    let run_dir = tmp.join("runs").join(name);
    let out = tmp.join("agents").join(name);
    let skills: String = ["coding", "database", "os"]
        .iter()
        .map(|s| format!("[[skills]]\nname = \"{s}\"\nepisodes = 2\ntest_episodes = 2\nbins = 4\n"))
        .collect();
    format!(
        r#"
name = "{name}"
seed = 0
run_dir = "{}"
output = "{}"
[base]
model = "toy:base"
[[experts]]
model = "toy:coding"
skill = "coding"
[[experts]]
model = "toy:database"
skill = "database"
[[experts]]
model = "toy:os"
skill = "os"
{skills}
[qd]
generations = 2
[model]
batch_size = 4
max_new_tokens = 4
[baselines]
enabled = false
"#,
        run_dir.display(),
        out.display()
    )
}

#[test]
fn a_missing_toy_world_is_built_then_the_run_proceeds() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    std::env::set_var("SWARM_CACHE_DIR", tmp.path().join("cache"));
    let world_dir = tmp
        .path()
        .join("cache")
        .join(format!("toy-{}", swarm_model::TOY_WORLD_EDITION));
    assert_eq!(toy_dir(), world_dir);

    let path = tmp.path().join("first.toml");
    std::fs::write(&path, config("first", tmp.path()))?;
    let plan = RunPlan::from_file(&path)?;
    assert_eq!(
        plan.base.reference,
        world_dir.join("base").display().to_string()
    );
    let world = WorldBootstrap {
        preset: Preset::Micro,
        evaluate: false,
        progress: false,
        ..WorldBootstrap::toy(&plan)
    };
    assert_eq!(world.missing(&plan).len(), 4);
    let line = world.describe(&plan).unwrap_or_default();
    assert!(line.contains("--preset micro --seed 0"), "{line}");

    let outcome = evolve(
        &plan,
        &EvolveOptions {
            world: Some(world.clone()),
            command: "test".into(),
            ..Default::default()
        },
    )?;
    assert!(outcome.world_seconds.is_some(), "the world was built");
    for model in ["base", "coding", "database", "os"] {
        assert!(
            world_dir.join(model).join("config.json").is_file(),
            "{model}"
        );
    }
    assert!(world.missing(&plan).is_empty());
    assert!(outcome.finished);
    assert_eq!(outcome.generations_done, 2);
    assert_eq!(outcome.generations_timed, 2);
    assert!(outcome.generations_wall_seconds > 0.0);
    let manifest = load_manifest(&tmp.path().join("agents/first"))?;
    assert_eq!(manifest.skills.len(), 3);

    // Another run on the same world: found, not rebuilt.
    let path = tmp.path().join("second.toml");
    std::fs::write(&path, config("second", tmp.path()))?;
    let plan = RunPlan::from_file(&path)?;
    let outcome = evolve(
        &plan,
        &EvolveOptions {
            world: Some(world),
            max_new_generations: Some(1),
            ..Default::default()
        },
    )?;
    assert_eq!(outcome.world_seconds, None);
    assert_eq!(outcome.generations_done, 1);
    Ok(())
}
