//! Opening a run's world: base and experts, their factors (made once per run dir), the episodes
//! and the checker, as an [`LlmEvaluator`].

use std::path::Path;
use std::time::Instant;

use swarm_merge::{FactorSet, FactoriseOptions};
use swarm_model::{parse_device, Precision, Pretrained};
use swarm_tasks::{Checker, DataDirs, Limits};

use crate::config::RunPlan;
use crate::error::{EvolveError, Result};
use crate::evaluator::{load_f32, LlmEvaluator};
use crate::run::FACTORS_FILE;

/// Opens the models of `plan`, factorises the experts (or loads the factors already in
/// `run_dir`), loads every suite and returns the evaluator.
pub fn open_world(plan: &RunPlan, run_dir: &Path) -> Result<LlmEvaluator> {
    let t = Instant::now();
    let base = Pretrained::open(&plan.base.reference)?;
    let base_weights = load_f32(base.weights.as_ref())?;
    let factors_path = run_dir.join(FACTORS_FILE);
    let factors = if factors_path.is_file() {
        let f = FactorSet::load(&factors_path)?;
        f.verify_base(&base_weights)?;
        let names: Vec<&str> = f.experts().iter().map(|e| e.name.as_str()).collect();
        let want: Vec<&str> = plan.experts.iter().map(|e| e.name.as_str()).collect();
        if names != want {
            return Err(EvolveError::RunDir {
                path: factors_path,
                reason: format!("factors of experts {names:?}, the config names {want:?}"),
            });
        }
        f
    } else {
        let experts = plan
            .experts
            .iter()
            .map(|e| Pretrained::open(&e.reference))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let sources: Vec<(&str, &dyn swarm_model::TensorSource)> = plan
            .experts
            .iter()
            .zip(&experts)
            .map(|(e, p)| (e.name.as_str(), p.weights.as_ref()))
            .collect();
        let opts = FactoriseOptions {
            rank: plan.model.rank,
            ..FactoriseOptions::default()
        };
        let tf = Instant::now();
        let f = FactorSet::factorise(&base_weights, &sources, &opts)?;
        tracing::info!(
            seconds = tf.elapsed().as_secs_f64(),
            max_rel_error = f.max_rel_error(),
            bytes = f.size_in_bytes(),
            "experts factorised"
        );
        std::fs::create_dir_all(run_dir).map_err(EvolveError::io(run_dir))?;
        f.save(&factors_path)?;
        f
    };
    let device = parse_device(&plan.model.device)?;
    let precision = plan
        .model
        .precision
        .unwrap_or(Precision::default_for(&device));
    let dirs = DataDirs::from_env();
    let mut fitness = Vec::new();
    let mut test = Vec::new();
    for s in &plan.skills {
        fitness.push(swarm_tasks::episodes(&s.fitness.request(s.skill), &dirs)?);
        test.push(swarm_tasks::episodes(&s.test.request(s.skill), &dirs)?);
    }
    let template = base.chat_template()?;
    tracing::info!(seconds = t.elapsed().as_secs_f64(), "world opened");
    Ok(LlmEvaluator {
        config: base.config.clone(),
        base: base_weights,
        factors,
        tokenizer: base.tokenizer,
        template,
        device,
        precision,
        batch_size: plan.model.batch_size,
        max_new_tokens: plan.model.max_new_tokens,
        checker: Checker::new(Limits::default())?,
        fitness,
        test,
    })
}
