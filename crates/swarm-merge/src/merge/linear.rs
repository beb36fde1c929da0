//! Linear merge (model soups, arXiv:2203.05482): `Σ w_i θ_i`, divided by `Σ w_i` when
//! `normalize` (mergekit's default). Every listed model counts, the base too if listed.

use crate::error::{MergeError, Result};

/// The factor applied to `Σ w_i x_i`: `1 / Σ w_i` when `normalize`, else 1.
pub(crate) fn linear_scale(name: &str, weights: &[f64], normalize: bool) -> Result<f64> {
    let total: f64 = weights.iter().sum();
    if !normalize {
        return Ok(1.0);
    }
    if total.abs() < 1e-12 {
        return Err(MergeError::tensor(
            name,
            format!("linear: weights sum to {total}, cannot normalize"),
        ));
    }
    Ok(1.0 / total)
}

/// `acc += w · x` elementwise, in f64.
pub(crate) fn accumulate(acc: &mut [f64], x: &[f32], w: f64) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += w * *v as f64;
    }
}

/// `out = acc · scale`, rounded to f32.
pub(crate) fn finish(out: &mut [f32], acc: &[f64], scale: f64) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (*a * scale) as f32;
    }
}

/// `Σ w_i x_i (/ Σ w_i)` elementwise, accumulated in f64.
pub fn linear(
    name: &str,
    tensors: &[Vec<f32>],
    weights: &[f64],
    normalize: bool,
) -> Result<Vec<f32>> {
    let scale = linear_scale(name, weights, normalize)?;
    let n = tensors.first().map_or(0, |t| t.len());
    if let Some(t) = tensors.iter().find(|t| t.len() != n) {
        return Err(MergeError::tensor(
            name,
            format!("linear: inputs of {} and {n} entries", t.len()),
        ));
    }
    let mut acc = vec![0f64; n];
    for (t, w) in tensors.iter().zip(weights) {
        accumulate(&mut acc, t, *w);
    }
    let mut out = vec![0f32; n];
    finish(&mut out, &acc, scale);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_average() {
        let out = linear("x", &[vec![1.0, 2.0], vec![3.0, 6.0]], &[1.0, 3.0], true).unwrap();
        assert_eq!(out, vec![2.5, 5.0]);
        let raw = linear("x", &[vec![1.0, 2.0], vec![3.0, 6.0]], &[1.0, 3.0], false).unwrap();
        assert_eq!(raw, vec![10.0, 20.0]);
        assert!(linear("x", &[vec![1.0]], &[0.0], true).is_err());
    }
}
