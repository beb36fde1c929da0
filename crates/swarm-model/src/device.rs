//! Device selection: `cpu`, `cuda` and `cuda:N` as the CLI and config files spell them.
//!
//! The CPU is the default everywhere. CUDA needs the crate's `cuda` cargo feature (which needs
//! nvcc at build time); without it `cuda:0` is a clear error rather than a silent fallback.

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};

/// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N` into a candle [`Device`].
pub fn parse_device(spec: &str) -> Result<Device> {
    let trimmed = spec.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = if lower == "cuda" {
        0
    } else if let Some(n) = lower.strip_prefix("cuda:") {
        n.parse::<usize>().map_err(|_| {
            ModelError::Device(
                spec.to_string(),
                format!("`{n}` is not a GPU ordinal; expected `cuda:N` with N = 0, 1, ..."),
            )
        })?
    } else {
        return Err(ModelError::Device(
            spec.to_string(),
            "unknown device; expected `cpu`, `cuda` or `cuda:N`".to_string(),
        ));
    };
    cuda_device(spec, ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(spec: &str, ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| ModelError::Device(spec.to_string(), e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str, _ordinal: usize) -> Result<Device> {
    Err(ModelError::Device(
        spec.to_string(),
        "this binary was built without CUDA support; rebuild with `--features cuda` \
         (needs nvcc) or use `--device cpu`"
            .to_string(),
    ))
}

/// The activation dtype a device runs best: f32 on the CPU (candle has no bf16 matmul there
/// and this CPU has no native bf16), bf16 on CUDA.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// A short name of the device for logs and benchmark tables.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The environment variable candle reads once, on first use, to size its CPU worker pool for
/// element-wise ops on large tensors and for quantised matrix products.
pub const CANDLE_THREADS_ENV: &str = "CANDLE_NUM_THREADS";

/// Gives candle's element-wise worker pool one thread unless the user chose a number with
/// `CANDLE_NUM_THREADS`; matrix products keep rayon's threads (`RAYON_NUM_THREADS`).
///
/// Why: candle 0.11 runs element-wise ops of 64K+ elements on a pool whose workers spin on a
/// barrier. When the process does not own every core (a laptop with a browser open, a CI
/// runner, two engineers on one machine), a descheduled worker makes every op wait for it:
/// on this project's 2-core machine a toy-world training step took 0.78 s with the default
/// pool and 0.25 s with one thread (docs/performance.md). Call it first thing in `main`,
/// before any tensor exists: the pool is sized once and never resized.
///
/// Returns the value in effect.
pub fn configure_cpu_threads() -> String {
    match std::env::var(CANDLE_THREADS_ENV) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => {
            // Safe here: called before any other thread exists (documented contract above).
            std::env::set_var(CANDLE_THREADS_ENV, "1");
            "1".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert!(matches!(parse_device(" CPU ").unwrap(), Device::Cpu));
    }

    #[test]
    fn junk_is_refused_with_the_accepted_forms() {
        let err = parse_device("gpu0").unwrap_err().to_string();
        assert!(err.contains("gpu0") && err.contains("cuda:N"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("ordinal"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_so() {
        for spec in ["cuda", "cuda:0", "cuda:3"] {
            let err = parse_device(spec).unwrap_err().to_string();
            assert!(err.contains("built without CUDA"), "{err}");
        }
    }
}
