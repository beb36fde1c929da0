//! Sparsification of task vectors, as mergekit does it: magnitude trimming for TIES (keep
//! the `density` fraction of largest |δ| per tensor) and random drops for DARE (keep each
//! entry with probability `density`). With `rescale`, the kept entries are scaled so the
//! tensor's L1 norm is unchanged (mergekit's `rescale`, on by default for DARE), which in
//! expectation is DARE's `1/density`.

use rand::Rng;

use crate::error::{MergeError, Result};

/// Scales `masked` so that its L1 norm equals `before` (the unmasked tensor's), unless either
/// norm is below 1e-7.
fn rescale_l1(masked: &mut [f32], before: f64) {
    let after: f64 = masked.iter().map(|v| v.abs() as f64).sum();
    if before < 1e-7 || after < 1e-7 {
        return;
    }
    let s = (before / after) as f32;
    masked.iter_mut().for_each(|v| *v *= s);
}

/// TIES trimming: keeps the `k = ⌊density · n⌋` entries of largest magnitude, zeroes the rest.
pub fn magnitude(name: &str, delta: &mut [f32], density: f64, rescale: bool) -> Result<()> {
    if density >= 1.0 {
        return Ok(());
    }
    let n = delta.len();
    let k = (density * n as f64) as usize;
    if k == 0 {
        return Err(MergeError::tensor(
            name,
            format!("density {density} keeps none of its {n} entries"),
        ));
    }
    let before: f64 = delta.iter().map(|v| v.abs() as f64).sum();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.select_nth_unstable_by(k - 1, |a, b| {
        delta[*b as usize]
            .abs()
            .total_cmp(&delta[*a as usize].abs())
    });
    let mut keep = vec![false; n];
    for i in &order[..k] {
        keep[*i as usize] = true;
    }
    for (v, k) in delta.iter_mut().zip(&keep) {
        if !k {
            *v = 0.0;
        }
    }
    if rescale {
        rescale_l1(delta, before);
    }
    Ok(())
}

/// DARE: drops each entry with probability `1 − density`.
pub fn bernoulli(delta: &mut [f32], density: f64, rescale: bool, rng: &mut impl Rng) {
    if density >= 1.0 {
        return;
    }
    let before: f64 = delta.iter().map(|v| v.abs() as f64).sum();
    for v in delta.iter_mut() {
        if !rng.gen_bool(density.clamp(0.0, 1.0)) {
            *v = 0.0;
        }
    }
    if rescale {
        rescale_l1(delta, before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn magnitude_keeps_the_largest() {
        let mut d = vec![0.1, -5.0, 0.3, 2.0, -0.2];
        magnitude("t", &mut d, 0.4, false).unwrap();
        assert_eq!(d, vec![0.0, -5.0, 0.0, 2.0, 0.0]);
        let mut d = vec![0.1, -5.0];
        assert!(magnitude("t", &mut d, 0.1, false)
            .unwrap_err()
            .to_string()
            .contains("`t`"));
    }

    #[test]
    fn dare_keeps_density_and_rescales() {
        let n = 200_000;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let orig: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        for density in [0.1, 0.5, 0.9] {
            let mut d = orig.clone();
            bernoulli(&mut d, density, true, &mut rng);
            let kept = d.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
            // Binomial standard deviation sqrt(p(1-p)/n) <= 0.0012; allow 5 of them.
            assert!((kept - density).abs() < 0.006, "{density}: kept {kept}");
            // L1 preserved exactly, and each kept entry scaled by ~1/density.
            let l1 = |x: &[f32]| x.iter().map(|v| v.abs() as f64).sum::<f64>();
            assert!((l1(&d) / l1(&orig) - 1.0).abs() < 1e-5);
            let (i, v) = d.iter().enumerate().find(|(_, v)| **v != 0.0).unwrap();
            let scale = *v as f64 / orig[i] as f64;
            assert!(
                (scale * density - 1.0).abs() < 0.02,
                "{density}: scale {scale}"
            );
        }
    }
}
