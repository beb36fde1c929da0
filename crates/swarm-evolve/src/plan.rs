//! `--dry-run`: what a run would do and how much memory it needs, without loading weights.

use std::fmt::{self, Write as _};
use std::path::Path;

use swarm_model::{HfConfig, LlamaConfig, ModelFiles, ModelRef, Precision};

use crate::config::RunPlan;
use crate::error::Result;

/// Meta-Llama-3-8B-Instruct's `config.json` (the base of Sakana's CycleQD experts), for dry
/// runs on machines that do not hold the 16 GB of weights.
const LLAMA3_8B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 8192,
  "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": 128009,
  "torch_dtype": "bfloat16", "hidden_act": "silu"
}"#;

/// A built-in architecture by name.
pub fn builtin_architecture(name: &str) -> Option<&'static str> {
    match name {
        "llama3-8b" | "llama-3-8b" => Some(LLAMA3_8B),
        _ => None,
    }
}

/// Where the architecture of the dry run came from.
#[derive(Debug, Clone)]
pub enum ArchSource {
    /// Read from the model's own files (config.json or GGUF header).
    Files(String),
    /// The built-in table named in `base.architecture`.
    Builtin(String),
    /// Not available: the model is not on disk and no architecture was named.
    Missing(String),
}

/// The printed plan of a run.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub plan: RunPlan,
    pub arch: ArchSource,
    pub config: Option<LlamaConfig>,
}

/// Reads the architecture of a model reference without loading its weights.
fn read_config(reference: &str) -> std::result::Result<(LlamaConfig, String), String> {
    let r = ModelRef::parse(reference).map_err(|e| e.to_string())?;
    match r.resolve().map_err(|e| e.to_string())? {
        ModelFiles::HfDir(dir) => {
            let path = dir.join("config.json");
            let c = LlamaConfig::from_file(&path).map_err(|e| e.to_string())?;
            Ok((c, path.display().to_string()))
        }
        ModelFiles::Gguf(path) => {
            let g = swarm_model::GgufFile::open(&path).map_err(|e| e.to_string())?;
            Ok((
                g.config().map_err(|e| e.to_string())?,
                path.display().to_string(),
            ))
        }
    }
}

impl DryRun {
    /// Resolves the architecture of `plan`'s base.
    pub fn new(plan: RunPlan) -> Result<DryRun> {
        let (arch, config) = match read_config(&plan.base.reference) {
            Ok((c, from)) => (ArchSource::Files(from), Some(c)),
            Err(why) => match plan
                .base
                .architecture
                .as_deref()
                .and_then(|a| builtin_architecture(a).map(|json| (a, json)))
            {
                Some((name, json)) => {
                    let hf: HfConfig = serde_json::from_str(json)?;
                    let c = hf.resolve(Path::new(name))?;
                    (ArchSource::Builtin(name.to_string()), Some(c))
                }
                None => (ArchSource::Missing(why), None),
            },
        };
        Ok(DryRun { plan, arch, config })
    }
}

/// Sizes derived from an architecture and a factor rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Parameters of one model.
    pub params: usize,
    /// Matrices and 1-D tensors.
    pub matrices: usize,
    pub vectors: usize,
    /// Coefficients of one genome (all experts).
    pub genome_len: usize,
    /// Bytes of the factors of all experts (f32).
    pub factor_bytes: usize,
    /// Bytes of one model in the run's precision.
    pub model_bytes: usize,
    /// Bytes of the KV cache of one generation batch.
    pub kv_bytes: usize,
    /// Peak estimate of the evaluator: base (f32) + factors + one materialised model (f32)
    /// + the model in the run's precision + KV cache.
    pub peak_bytes: usize,
}

/// Sizes of a run of `plan` on architecture `c`.
pub fn sizes(plan: &RunPlan, c: &LlamaConfig, prompt_tokens: usize) -> Sizes {
    let experts = plan.experts.len();
    let (mut params, mut matrices, mut vectors, mut per_expert, mut factor_floats) =
        (0, 0, 0, 0, 0);
    for (_, shape) in c.tensor_shapes() {
        let n: usize = shape.iter().product();
        params += n;
        if shape.len() == 2 {
            matrices += 1;
            let r = plan.model.rank.kept(shape[0], shape[1]);
            per_expert += r;
            factor_floats += r * (shape[0] + shape[1] + 1);
        } else {
            vectors += 1;
            per_expert += 1;
            factor_floats += n;
        }
    }
    let precision = plan
        .model
        .precision
        .unwrap_or(if plan.model.device.starts_with("cuda") {
            Precision::BF16
        } else {
            Precision::F32
        });
    let bytes_per = match precision {
        Precision::F32 => 4.0,
        Precision::F16 | Precision::BF16 => 2.0,
        Precision::Q8_0 => 34.0 / 32.0,
    };
    let model_bytes = (params as f64 * bytes_per) as usize;
    let act = if matches!(precision, Precision::F16 | Precision::BF16) {
        2
    } else {
        4
    };
    let kv_bytes = plan.model.batch_size
        * (prompt_tokens + plan.model.max_new_tokens)
        * c.num_hidden_layers
        * 2
        * c.num_key_value_heads
        * c.head_dim
        * act;
    let factor_bytes = factor_floats * 4 * experts;
    Sizes {
        params,
        matrices,
        vectors,
        genome_len: per_expert * experts,
        factor_bytes,
        model_bytes,
        kv_bytes,
        peak_bytes: params * 4 * 2 + factor_bytes + model_bytes + kv_bytes,
    }
}

fn gib(b: usize) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.plan;
        let mut s = String::new();
        let _ = writeln!(s, "run `{}` from {}", p.name, p.source.display());
        let _ = writeln!(
            s,
            "  run dir {}, swarm exported to {}",
            p.run_dir.display(),
            p.output.display()
        );
        let _ = writeln!(s, "models");
        let _ = writeln!(s, "  base      {}", p.base.reference);
        for e in &p.experts {
            let _ = writeln!(
                s,
                "  expert    {:<10} {} (skill {})",
                e.name,
                e.reference,
                p.skills[e.skill].name()
            );
        }
        let _ = writeln!(
            s,
            "skills (fitness on the first suite, final report on the second)"
        );
        for sk in &p.skills {
            let lim = |l: Option<usize>| l.map_or("all".to_string(), |n| n.to_string());
            let range = sk.range.map_or(
                "85% of weakest expert .. 115% of strongest (measured)".to_string(),
                |(a, b)| format!("[{a}, {b}]"),
            );
            let _ = writeln!(
                s,
                "  {:<9} fitness {}/{} ({} episodes, seed {}), test {}/{} ({} episodes); axis {} bins over {}",
                sk.name(),
                sk.fitness.suite,
                sk.fitness.split,
                lim(sk.fitness.limit),
                sk.fitness.seed,
                sk.test.suite,
                sk.test.split,
                lim(sk.test.limit),
                sk.bins,
                range
            );
        }
        let k = p.skills.len();
        let _ = writeln!(s, "archives");
        for (i, sk) in p.skills.iter().enumerate() {
            let dims: Vec<String> = p
                .skills
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, d)| format!("{}[{}]", d.name(), d.bins))
                .collect();
            let cells: usize = p
                .skills
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, d)| d.bins)
                .product();
            let _ = writeln!(
                s,
                "  quality {:<9} cells {} = {} cells",
                sk.name(),
                dims.join(" x "),
                cells
            );
        }
        let q = &p.qd;
        let _ = writeln!(
            s,
            "cycleqd: {} generations, {}, sampler {}, crossover w ~ N({}, {}^2), mutation {}, {} worker(s), seed {}",
            q.generations,
            if q.fixed_quality {
                format!("fixed quality {}", p.skills[0].name())
            } else {
                format!("quality cycles over {k} skills every {} generation(s)", q.quality_interval)
            },
            q.sampler_name,
            q.crossover_mean,
            q.crossover_std,
            match q.mutation {
                crate::config::Mutation::None => "none".to_string(),
                crate::config::Mutation::Svd { w_max } => format!("svd (w_max {w_max})"),
            },
            q.workers,
            p.seed
        );
        let _ = writeln!(
            s,
            "model: device {}, precision {}, factor rank {}, batch {}, {} new tokens (greedy)",
            p.model.device,
            p.model
                .precision
                .map_or("device default".to_string(), |x| x.to_string()),
            p.model.rank_name,
            p.model.batch_size,
            p.model.max_new_tokens
        );
        match (&self.arch, &self.config) {
            (src, Some(c)) => {
                let from = match src {
                    ArchSource::Files(f) => format!("from {f}"),
                    ArchSource::Builtin(n) => {
                        format!("built-in `{n}` (weights not on this machine)")
                    }
                    ArchSource::Missing(_) => String::new(),
                };
                let z = sizes(p, c, 512);
                let _ = writeln!(
                    s,
                    "architecture {from}: {} layers, hidden {}, ffn {}, heads {}/{} (kv), vocab {}",
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.intermediate_size,
                    c.num_attention_heads,
                    c.num_key_value_heads,
                    c.vocab_size
                );
                let _ = writeln!(
                    s,
                    "sizes: {:.2}B parameters ({} matrices, {} vectors); genome {} coefficients ({}), {:.3}% of a model",
                    z.params as f64 / 1e9,
                    z.matrices,
                    z.vectors,
                    z.genome_len,
                    gib(z.genome_len * 4),
                    100.0 * z.genome_len as f64 / z.params as f64
                );
                let _ = writeln!(
                    s,
                    "memory estimate: factors {}, model {} in run precision, KV cache {} (batch {}, 512-token prompts); peak ~{} (base and one materialised model in f32 included)",
                    gib(z.factor_bytes),
                    gib(z.model_bytes),
                    gib(z.kv_bytes),
                    p.model.batch_size,
                    gib(z.peak_bytes)
                );
            }
            (ArchSource::Missing(why), None) => {
                let _ = writeln!(
                    s,
                    "architecture: unknown ({why}); set base.architecture for an estimate"
                );
            }
            _ => {}
        }
        f.write_str(&s)
    }
}
