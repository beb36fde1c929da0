//! mergekit's YAML, in two stages: the raw file (`serde_yaml::Value`, checked field by field so
//! that anything we do not support is named) resolved into a [`MergePlan`] with no defaults
//! left to apply.
//!
//! Supported: `merge_method` (linear, task_arithmetic, ties, dare_linear, dare_ties, slerp),
//! `base_model`, `models[].model`, `models[].parameters.{weight,density}`, global
//! `parameters` (`normalize`, `lambda`, `rescale`, `int8_mask`, `t`, and `weight`/`density`
//! as defaults for every model), `dtype`, `out_dtype`, `tokenizer_source: base`. Parameters
//! are plain numbers or booleans: mergekit's gradients and per-filter lists are refused.

use candle_core::DType;
use serde_yaml::Value;

use crate::error::{MergeError, Result};
use crate::merge::task_arithmetic::{Consensus, GtaParams, Sparsify};
use crate::writer::parse_dtype;

/// The merge methods we implement, named as in mergekit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMethod {
    Linear,
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
    Slerp,
}

impl MergeMethod {
    pub const ALL: [MergeMethod; 6] = [
        MergeMethod::Linear,
        MergeMethod::TaskArithmetic,
        MergeMethod::Ties,
        MergeMethod::DareLinear,
        MergeMethod::DareTies,
        MergeMethod::Slerp,
    ];

    /// mergekit's name.
    pub fn name(self) -> &'static str {
        match self {
            MergeMethod::Linear => "linear",
            MergeMethod::TaskArithmetic => "task_arithmetic",
            MergeMethod::Ties => "ties",
            MergeMethod::DareLinear => "dare_linear",
            MergeMethod::DareTies => "dare_ties",
            MergeMethod::Slerp => "slerp",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                MergeError::Config(format!(
                    "merge_method `{name}` is not supported; supported: {}",
                    Self::ALL.map(|m| m.name()).join(", ")
                ))
            })
    }

    /// The generalized-task-arithmetic switches and mergekit's defaults for `normalize` and
    /// `rescale`; `None` for linear and slerp.
    fn gta(self) -> Option<(Option<Sparsify>, Option<Consensus>, bool, bool)> {
        Some(match self {
            MergeMethod::TaskArithmetic => (None, None, false, false),
            MergeMethod::Ties => (Some(Sparsify::Magnitude), Some(Consensus::Sum), true, false),
            MergeMethod::DareLinear => (Some(Sparsify::Random), None, false, true),
            MergeMethod::DareTies => (Some(Sparsify::Random), Some(Consensus::Sum), false, true),
            MergeMethod::Linear | MergeMethod::Slerp => return None,
        })
    }
}

/// One input model and its per-model parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanModel {
    /// An HF dir, a GGUF file or a hub id, as written in the YAML.
    pub reference: String,
    pub weight: f64,
    pub density: f64,
}

/// What to compute per tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanKind {
    /// `Σ w_i θ_i` over `models` (the base only if listed), `/ Σ w_i` when `normalize`.
    Linear { normalize: bool },
    /// Task vectors of `models` against the base, mixed by [`GtaParams`].
    TaskArithmetic(GtaParams),
    /// `slerp(t, base, models[0])`.
    Slerp { t: f64 },
}

/// A resolved merge: every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct MergePlan {
    pub method: MergeMethod,
    pub kind: PlanKind,
    /// Required for every method but linear; the source of config and tokenizer files.
    pub base_model: Option<String>,
    /// Inputs besides the base (for linear: every listed model, the base included if listed).
    pub models: Vec<PlanModel>,
    /// dtype the inputs are rounded to before merging (mergekit's `dtype`); the arithmetic
    /// itself is done in f32/f64.
    pub dtype: Option<DType>,
    /// dtype of the output; `None`: `dtype`, else the base's `torch_dtype`.
    pub out_dtype: Option<DType>,
    /// Seed of DARE's random drops.
    pub seed: u64,
}

const TOP_LEVEL: &[&str] = &[
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
];
const MERGEKIT_UNSUPPORTED: &[&str] = &["slices", "modules", "tokenizer", "chat_template"];

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn as_mapping<'a>(v: &'a Value, what: &str) -> Result<&'a serde_yaml::Mapping> {
    v.as_mapping()
        .ok_or_else(|| MergeError::Config(format!("`{what}` must be a mapping")))
}

fn as_string(v: &Value, what: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Mapping(m) if m.contains_key("model") => Err(MergeError::Config(format!(
            "`{what}`: model references with LoRA or overrides are not supported; give a path \
             or hub id"
        ))),
        _ => Err(MergeError::Config(format!("`{what}` must be a string"))),
    }
}

fn number(v: &Value, what: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| MergeError::Config(format!("`{what}` must be a finite number"))),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::Sequence(_) | Value::Mapping(_) => Err(MergeError::Config(format!(
            "`{what}`: gradients and filtered parameter lists are not supported; give one number"
        ))),
        _ => Err(MergeError::Config(format!("`{what}` must be a number"))),
    }
}

fn boolean(v: &Value, what: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|x| x != 0.0)),
        Value::Sequence(_) | Value::Mapping(_) => Err(MergeError::Config(format!(
            "`{what}`: gradients and filtered parameter lists are not supported; give a boolean"
        ))),
        _ => Err(MergeError::Config(format!("`{what}` must be a boolean"))),
    }
}

/// Parameters given in a `parameters:` mapping, with the names that are allowed.
struct Params<'a> {
    what: String,
    map: Vec<(String, &'a Value)>,
}

impl<'a> Params<'a> {
    fn new(
        v: Option<&'a Value>,
        what: &str,
        allowed: &[&str],
        method: MergeMethod,
    ) -> Result<Self> {
        let mut map = Vec::new();
        if let Some(v) = v {
            if v.is_null() {
                return Ok(Self {
                    what: what.to_string(),
                    map,
                });
            }
            for (k, v) in as_mapping(v, what)? {
                let k = key_name(k);
                if !allowed.contains(&k.as_str()) {
                    return Err(MergeError::Config(format!(
                        "`{what}.{k}` is not supported for merge_method {}{}",
                        method.name(),
                        if allowed.is_empty() {
                            String::new()
                        } else {
                            format!(" (supported: {})", allowed.join(", "))
                        }
                    )));
                }
                map.push((k, v));
            }
        }
        Ok(Self {
            what: what.to_string(),
            map,
        })
    }
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
    fn number(&self, name: &str) -> Result<Option<f64>> {
        self.get(name)
            .map(|v| number(v, &format!("{}.{name}", self.what)))
            .transpose()
    }
    fn boolean(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| boolean(v, &format!("{}.{name}", self.what)))
            .transpose()
    }
}

impl MergePlan {
    /// Parses and resolves mergekit YAML. `seed` drives DARE's random drops.
    pub fn from_yaml(text: &str) -> Result<MergePlan> {
        let root: Value = serde_yaml::from_str(text)
            .map_err(|e| MergeError::Config(format!("invalid YAML: {e}")))?;
        let root = as_mapping(&root, "the config")?;
        for k in root.keys() {
            let k = key_name(k);
            if MERGEKIT_UNSUPPORTED.contains(&k.as_str()) {
                return Err(MergeError::Config(format!(
                    "field `{k}` is not supported by swarm merge (supported: {})",
                    TOP_LEVEL.join(", ")
                )));
            }
            if !TOP_LEVEL.contains(&k.as_str()) {
                return Err(MergeError::Config(format!(
                    "unknown field `{k}` (supported: {})",
                    TOP_LEVEL.join(", ")
                )));
            }
        }
        let get = |k: &str| root.get(k).filter(|v| !v.is_null());
        let method = MergeMethod::parse(&as_string(
            get("merge_method")
                .ok_or_else(|| MergeError::Config("missing `merge_method`".into()))?,
            "merge_method",
        )?)?;
        let base_model = get("base_model")
            .map(|v| as_string(v, "base_model"))
            .transpose()?;
        if let Some(src) = get("tokenizer_source") {
            let src = as_string(src, "tokenizer_source")?;
            if src != "base" {
                return Err(MergeError::Config(format!(
                    "`tokenizer_source: {src}` is not supported; the output takes the base \
                     model's tokenizer (`tokenizer_source: base`)"
                )));
            }
        }
        let dtype_of = |k: &str| -> Result<Option<DType>> {
            get(k)
                .map(|v| {
                    let s = as_string(v, k)?;
                    parse_dtype(&s).ok_or_else(|| {
                        MergeError::Config(format!(
                            "`{k}: {s}` is not a dtype we write (float32, bfloat16, float16)"
                        ))
                    })
                })
                .transpose()
        };
        let (dtype, out_dtype) = (dtype_of("dtype")?, dtype_of("out_dtype")?);

        let global_allowed: &[&str] = match method {
            MergeMethod::Linear => &["normalize", "weight"],
            MergeMethod::Slerp => &["t"],
            _ => &[
                "normalize",
                "lambda",
                "rescale",
                "int8_mask",
                "weight",
                "density",
            ],
        };
        let model_allowed: &[&str] = match method {
            MergeMethod::Linear => &["weight"],
            MergeMethod::Slerp => &[],
            _ => &["weight", "density"],
        };
        let global = Params::new(get("parameters"), "parameters", global_allowed, method)?;

        let models_v = get("models")
            .ok_or_else(|| MergeError::Config("missing `models` (a list of models)".into()))?;
        let list = models_v
            .as_sequence()
            .ok_or_else(|| MergeError::Config("`models` must be a list".into()))?;
        let mut models = Vec::new();
        let mut base_listed = false;
        for (i, m) in list.iter().enumerate() {
            let what = format!("models[{i}]");
            let map = as_mapping(m, &what)?;
            for k in map.keys() {
                let k = key_name(k);
                if k != "model" && k != "parameters" {
                    return Err(MergeError::Config(format!(
                        "`{what}.{k}` is not supported (supported: model, parameters)"
                    )));
                }
            }
            let reference = as_string(
                map.get("model")
                    .ok_or_else(|| MergeError::Config(format!("`{what}.model` is missing")))?,
                &format!("{what}.model"),
            )?;
            let is_base = base_model.as_deref() == Some(reference.as_str());
            let params = Params::new(
                map.get("parameters"),
                &format!("{what}.parameters"),
                model_allowed,
                method,
            )?;
            if is_base {
                base_listed = true;
                if method != MergeMethod::Linear {
                    // mergekit ignores the base's own weight/density for these methods.
                    continue;
                }
            }
            if models.iter().any(|m: &PlanModel| m.reference == reference) {
                return Err(MergeError::Config(format!(
                    "`{what}`: {reference} is listed twice"
                )));
            }
            let weight = match params.number("weight")?.or(global.number("weight")?) {
                Some(w) => w,
                None if method == MergeMethod::Slerp => 1.0,
                None => {
                    return Err(MergeError::Config(format!(
                        "`{what}.parameters.weight` is required for merge_method {}",
                        method.name()
                    )))
                }
            };
            let density = params
                .number("density")?
                .or(global.number("density")?)
                .unwrap_or(1.0);
            if !(0.0..=1.0).contains(&density) {
                return Err(MergeError::Config(format!(
                    "`{what}`: density {density} is outside [0, 1]"
                )));
            }
            models.push(PlanModel {
                reference,
                weight,
                density,
            });
        }

        let kind = match method {
            MergeMethod::Linear => {
                if let Some(base) = &base_model {
                    if !base_listed {
                        return Err(MergeError::Config(format!(
                            "linear: base_model {base} is not among `models`; list it with a \
                             weight (mergekit needs one too) or drop `base_model`"
                        )));
                    }
                }
                PlanKind::Linear {
                    normalize: global.boolean("normalize")?.unwrap_or(true),
                }
            }
            MergeMethod::Slerp => {
                let t = global
                    .number("t")?
                    .ok_or_else(|| MergeError::Config("slerp needs `parameters.t`".to_string()))?;
                if base_model.is_none() {
                    return Err(MergeError::Config("slerp needs `base_model`".into()));
                }
                if models.len() != 1 {
                    return Err(MergeError::Config(format!(
                        "slerp merges exactly two models, the base and one other; {} others given",
                        models.len()
                    )));
                }
                PlanKind::Slerp { t }
            }
            _ => {
                let Some((sparsify, consensus, normalize, rescale)) = method.gta() else {
                    return Err(MergeError::Config(format!(
                        "{} has no parameters",
                        method.name()
                    )));
                };
                if base_model.is_none() {
                    return Err(MergeError::Config(format!(
                        "merge_method {} needs `base_model`",
                        method.name()
                    )));
                }
                if models.is_empty() {
                    return Err(MergeError::Config("no models besides the base".into()));
                }
                // int8_mask only changes the dtype of mergekit's sign mask, not the result.
                global.boolean("int8_mask")?;
                PlanKind::TaskArithmetic(GtaParams {
                    sparsify,
                    consensus,
                    normalize: global.boolean("normalize")?.unwrap_or(normalize),
                    rescale: global.boolean("rescale")?.unwrap_or(rescale),
                    lambda: global.number("lambda")?.unwrap_or(1.0),
                })
            }
        };
        if models.is_empty() {
            return Err(MergeError::Config("`models` is empty".into()));
        }
        Ok(MergePlan {
            method,
            kind,
            base_model,
            models,
            dtype,
            out_dtype,
            seed: 0,
        })
    }

    /// The same plan with DARE's seed set.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_config_resolves_with_mergekit_defaults() {
        let plan = MergePlan::from_yaml(
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: base\n  - model: a\n    \
             parameters: {weight: 0.7, density: 0.5}\n  - model: b\n    parameters:\n      \
             weight: 0.3\nparameters:\n  int8_mask: true\ndtype: bfloat16\n",
        )
        .unwrap();
        assert_eq!(plan.models.len(), 2);
        assert_eq!(plan.models[0].density, 0.5);
        assert_eq!(plan.models[1].density, 1.0);
        assert_eq!(plan.dtype, Some(DType::BF16));
        match plan.kind {
            PlanKind::TaskArithmetic(p) => {
                assert!(p.normalize && !p.rescale);
                assert_eq!(p.lambda, 1.0);
                assert_eq!(p.consensus, Some(Consensus::Sum));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsupported_fields_are_named() {
        let cases = [
            ("merge_method: ties\nslices: []\n", "`slices`"),
            ("merge_method: nuslerp\nmodels: []\n", "nuslerp"),
            ("merge_method: linear\nfoo: 1\nmodels: []\n", "`foo`"),
            (
                "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n",
                "density",
            ),
            (
                "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 1]\n",
                "`parameters.t`",
            ),
            ("merge_method: ties\nbase_model: a\nmodels:\n  - model: b\n", "weight"),
            ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\ntokenizer_source: union\n", "union"),
            ("merge_method: linear\nbase_model: z\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", "base_model"),
        ];
        for (yaml, needle) in cases {
            let err = MergePlan::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn slerp_and_linear_resolve() {
        let plan = MergePlan::from_yaml(
            "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters:\n  t: 0.3\n",
        )
        .unwrap();
        assert_eq!(plan.kind, PlanKind::Slerp { t: 0.3 });
        assert_eq!(plan.models[0].reference, "b");
        let plan = MergePlan::from_yaml(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 3}\nparameters: {normalize: false}\n",
        )
        .unwrap();
        assert_eq!(plan.kind, PlanKind::Linear { normalize: false });
        assert_eq!(plan.models.len(), 2);
    }
}
