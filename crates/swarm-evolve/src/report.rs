//! The run's report: archive heatmaps, QD-score and coverage per generation, and one table on
//! the test split (base, experts, classic merges chosen on validation, best elites, the
//! aggregated model), written as `report.md` with PNG plots.

use std::fmt::Write as _;
use std::path::Path;

use swarm_merge::Genome;
use swarm_model::Weights;

use crate::config::RunPlan;
use crate::error::{EvolveError, Result};
use crate::evaluator::{EvalSet, Evaluator, StageTimes};
use crate::png::{heatmap, line_plot};
use crate::run::RunState;

/// One row of the test table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub model: String,
    /// How it was chosen or built.
    pub note: String,
    pub scores: Vec<f64>,
}

impl Row {
    pub fn mean(&self) -> f64 {
        if self.scores.is_empty() {
            0.0
        } else {
            self.scores.iter().sum::<f64>() / self.scores.len() as f64
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Builds TIES weights for a density and λ.
pub type TiesBuilder<'a> = &'a dyn Fn(f64, f64) -> Result<Weights>;

/// Evaluates every row of the test table. Merges' λ and density are chosen on the fitness
/// (validation) split by mean score.
pub fn test_table(
    plan: &RunPlan,
    state: &RunState,
    eval: &dyn Evaluator,
    aggregated: Option<&Genome>,
    ties: Option<TiesBuilder<'_>>,
) -> Result<Vec<Row>> {
    let layout = state
        .genomes
        .values()
        .next()
        .map(|g| g.layout().clone())
        .ok_or_else(|| EvolveError::Eval("no genome in the run".into()))?;
    let k = plan.experts.len();
    let experts: Vec<Genome> = (0..k)
        .map(|i| Genome::expert(&layout, i))
        .collect::<std::result::Result<_, _>>()?;
    let names = plan.skill_names();
    let mut rows = Vec::new();
    let test = |g: &Genome| -> Result<Vec<f64>> { Ok(eval.evaluate(g, EvalSet::Test)?.scores) };
    rows.push(Row {
        model: "base".into(),
        note: String::new(),
        scores: test(&Genome::base(&layout))?,
    });
    for (e, g) in plan.experts.iter().zip(&experts) {
        rows.push(Row {
            model: format!("expert {}", e.name),
            note: String::new(),
            scores: test(g)?,
        });
    }
    if plan.baselines.enabled {
        let refs: Vec<&Genome> = experts.iter().collect();
        let linear = Genome::aggregate(&refs, &vec![0.0; k])?;
        rows.push(Row {
            model: "linear average".into(),
            note: "mean of the experts".into(),
            scores: test(&linear)?,
        });
        // Task arithmetic: base + λ Σ τ_k, exactly a genome.
        let sum: Vec<f32> = (0..layout.len())
            .map(|i| experts.iter().map(|g| g.values()[i]).sum())
            .collect();
        let mut best: Option<(f64, f64, Genome)> = None;
        for &l in &plan.baselines.task_arithmetic_lambdas {
            let g = Genome::from_values(&layout, sum.iter().map(|v| v * l as f32).collect())?;
            let v = mean(&eval.evaluate(&g, EvalSet::Fitness)?.scores);
            tracing::info!(lambda = l, validation = v, "task arithmetic");
            if best.as_ref().is_none_or(|b| v > b.0) {
                best = Some((v, l, g));
            }
        }
        if let Some((v, l, g)) = best {
            rows.push(Row {
                model: "task arithmetic".into(),
                note: format!("λ = {l} (validation mean {v:.3})"),
                scores: test(&g)?,
            });
        }
        if let Some(ties) = ties {
            let lambda = plan.baselines.ties_lambda;
            let mut best: Option<(f64, f64)> = None;
            for &d in &plan.baselines.ties_densities {
                let w = ties(d, lambda)?;
                let v = mean(&eval.evaluate_weights(&w, EvalSet::Fitness)?.scores);
                tracing::info!(density = d, validation = v, "ties");
                if best.is_none_or(|b| v > b.0) {
                    best = Some((v, d));
                }
            }
            if let Some((v, d)) = best {
                let w = ties(d, lambda)?;
                rows.push(Row {
                    model: "TIES".into(),
                    note: format!("density {d}, λ {lambda} (validation mean {v:.3})"),
                    scores: eval.evaluate_weights(&w, EvalSet::Test)?.scores,
                });
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(e) = state.qd.best(i) {
            let g = state
                .genomes
                .get(&e.genome)
                .ok_or_else(|| EvolveError::Eval(format!("genome {} missing", e.genome)))?;
            rows.push(Row {
                model: format!("best elite {name}"),
                note: format!(
                    "id {}, generation {}, validation {:.3}",
                    e.genome, e.meta.generation, e.quality
                ),
                scores: test(g)?,
            });
        }
    }
    if let Some(g) = aggregated {
        rows.push(Row {
            model: "aggregated (CycleQD)".into(),
            note: "softmax-weighted best elites".into(),
            scores: test(g)?,
        });
    }
    Ok(rows)
}

/// Markdown of the test table.
pub fn table_markdown(names: &[String], rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| model | {} | average | note |", names.join(" | "));
    let _ = writeln!(s, "|---|{}---:|---|", "---:|".repeat(names.len()));
    for r in rows {
        let cells: Vec<String> = r.scores.iter().map(|v| format!("{:.3}", v)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {} |",
            r.model,
            cells.join(" | "),
            r.mean(),
            r.note
        );
    }
    s
}

/// Writes one heatmap per archive and the metric plots into `dir`; returns their file names.
pub fn write_plots(
    state: &RunState,
    names: &[String],
    dir: &Path,
) -> Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dir).map_err(EvolveError::io(dir))?;
    let mut out = Vec::new();
    for (i, a) in state.qd.archives().iter().enumerate() {
        let dims = a.dims();
        let (rows, cols) = match dims.len() {
            1 => (1, dims[0].bins),
            2 => (dims[1].bins, dims[0].bins),
            _ => continue,
        };
        let mut grid = vec![vec![None; cols]; rows];
        for (cell, e) in a.iter() {
            let c = a.cell_coords(cell);
            let (r, col) = if c.len() == 1 {
                (0, c[0])
            } else {
                (c[1], c[0])
            };
            grid[r][col] = Some(e.quality);
        }
        let qs: Vec<f64> = a.elites().iter().map(|e| e.quality).collect();
        let lo = qs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = qs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let file = format!("archive-{}.png", names[i]);
        heatmap(
            &grid,
            if lo.is_finite() { lo } else { 0.0 },
            if hi.is_finite() { hi } else { 1.0 },
            32,
        )
        .save(&dir.join(&file))?;
        let axes: Vec<String> = dims
            .iter()
            .map(|d| format!("{} [{:.3}, {:.3}]", d.name, d.min, d.max))
            .collect();
        out.push((
            file,
            format!(
                "archive with quality {} (x: {}; colour: {} score, ×100 in cells)",
                names[i],
                axes.join(", y: "),
                names[i]
            ),
        ));
    }
    let recs = &state.qd.history().records;
    for (metric, get) in [
        (
            "qd-score",
            (|m: &swarm_qd::ArchiveMetrics| m.qd_score) as fn(&swarm_qd::ArchiveMetrics) -> f64,
        ),
        ("coverage", |m: &swarm_qd::ArchiveMetrics| m.coverage),
    ] {
        let series: Vec<Vec<f64>> = (0..names.len())
            .map(|i| {
                recs.iter()
                    .map(|r| r.archives.get(i).map_or(0.0, get))
                    .collect()
            })
            .collect();
        let file = format!("{metric}.png");
        line_plot(&series, 640, 320).save(&dir.join(&file))?;
        out.push((
            file,
            format!(
                "{metric} per generation, one line per archive ({})",
                legend(names)
            ),
        ));
    }
    Ok(out)
}

fn legend(names: &[String]) -> String {
    const COLOURS: [&str; 6] = ["blue", "red", "green", "orange", "purple", "brown"];
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}: {}", COLOURS[i % COLOURS.len()]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sum and shares of the stage times over all generations.
pub fn timing_summary(state: &RunState) -> (StageTimes, f64) {
    let mut t = StageTimes::default();
    let mut wall = 0.0;
    for r in &state.progress.records {
        t.add(&r.times);
        wall += r.wall.as_secs_f64();
    }
    (t, wall)
}

/// Writes `report.md` and plots into `dir`.
pub fn write_report(
    plan: &RunPlan,
    state: &RunState,
    rows: &[Row],
    dir: &Path,
    command: &str,
    wall_seconds: f64,
) -> Result<String> {
    let names = plan.skill_names();
    let plots = write_plots(state, &names, dir)?;
    let mut s = String::new();
    let _ = writeln!(s, "# CycleQD run `{}`\n", plan.name);
    let _ = writeln!(s, "Command: `{command}`  ");
    let _ = writeln!(
        s,
        "Config: `{}`, seed {}  ",
        plan.source.display(),
        plan.seed
    );
    let _ = writeln!(
        s,
        "Generations: {}; wall time {:.0} s (expert evaluation {:.0} s).\n",
        state.qd.generations_done(),
        wall_seconds,
        state.progress.expert_eval_seconds
    );
    let _ = writeln!(s, "## Test split\n");
    let _ = writeln!(s, "Scores are mean episode scores on each skill's test episodes (never used during evolution). Merges' λ and density were chosen on the validation split.\n");
    s.push_str(&table_markdown(&names, rows));
    let _ = writeln!(
        s,
        "\n## Experts on the validation split (fitness) and axis ranges\n"
    );
    let _ = writeln!(s, "| expert | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(names.len()));
    for (e, sc) in state
        .progress
        .experts
        .iter()
        .zip(&state.progress.expert_scores)
    {
        let _ = writeln!(
            s,
            "| {e} | {} |",
            sc.iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(
        s,
        "| axis range | {} |",
        state
            .progress
            .ranges
            .iter()
            .map(|(a, b)| format!("[{a:.3}, {b:.3}]"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "\n## Archives\n");
    if let Some(last) = state.qd.history().last() {
        let _ = writeln!(s, "| archive | filled | coverage | QD-score | best |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (n, m) in names.iter().zip(&last.archives) {
            let _ = writeln!(
                s,
                "| {n} | {}/{} | {:.3} | {:.3} | {:.3} |",
                m.filled,
                m.cells,
                m.coverage,
                m.qd_score,
                m.best_quality.unwrap_or(0.0)
            );
        }
    }
    for (file, caption) in &plots {
        let _ = writeln!(s, "\n![{caption}]({file})  \n*{caption}*");
    }
    let (t, wall) = timing_summary(state);
    let total = t.total().as_secs_f64().max(1e-9);
    let n = state.progress.records.len().max(1) as f64;
    let _ = writeln!(
        s,
        "\n## Time per generation (mean over {} generations)\n",
        state.progress.records.len()
    );
    let _ = writeln!(s, "| stage | seconds | share |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (name, d) in [
        ("operators", t.operators),
        ("materialisation (+ model load)", t.materialise),
        ("generation", t.generation),
        ("checks (not hidden by generation)", t.checks),
        ("checkpoint", t.checkpoint),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.3} | {:.1}% |",
            d.as_secs_f64() / n,
            100.0 * d.as_secs_f64() / total
        );
    }
    let _ = writeln!(s, "| wall | {:.3} | |", wall / n);
    let path = dir.join("report.md");
    swarm_model::write_atomic(&path, s.as_bytes())?;
    Ok(s)
}
