//! Linear merge (model soups, arXiv:2203.05482): `Σ w_i θ_i`, divided by `Σ w_i` when
//! `normalize` (mergekit's default). Every listed model counts, the base too if listed.

use rayon::prelude::*;

use crate::error::{MergeError, Result};

/// `Σ w_i x_i (/ Σ w_i)` elementwise, accumulated in f64.
pub fn linear(
    name: &str,
    tensors: &[Vec<f32>],
    weights: &[f64],
    normalize: bool,
) -> Result<Vec<f32>> {
    let total: f64 = weights.iter().sum();
    let scale = if normalize {
        if total.abs() < 1e-12 {
            return Err(MergeError::tensor(
                name,
                format!("linear: weights sum to {total}, cannot normalize"),
            ));
        }
        1.0 / total
    } else {
        1.0
    };
    let n = tensors.first().map_or(0, |t| t.len());
    let mut out = vec![0.0f32; n];
    out.par_iter_mut().enumerate().for_each(|(i, o)| {
        let mut acc = 0.0f64;
        for (t, w) in tensors.iter().zip(weights) {
            acc += *w * t[i] as f64;
        }
        *o = (acc * scale) as f32;
    });
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
