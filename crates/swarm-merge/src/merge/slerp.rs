//! Spherical linear interpolation between the base and one other model, per tensor, as
//! mergekit does it: the angle is taken between the two tensors flattened and normalised;
//! nearly colinear tensors (|cos| > 0.9995) are interpolated linearly.

/// `slerp(t, v0, v1)`; `t = 0` gives `v0` (the base), `t = 1` gives `v1`.
pub fn slerp(t: f64, v0: &[f32], v1: &[f32]) -> Vec<f32> {
    const DOT_THRESHOLD: f64 = 0.9995;
    const EPS: f64 = 1e-8;
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let (n0, n1) = (norm(v0), norm(v1));
    // mergekit normalises only vectors whose norm exceeds eps.
    let (s0n, s1n) = (
        if n0 > EPS { 1.0 / n0 } else { 1.0 },
        if n1 > EPS { 1.0 / n1 } else { 1.0 },
    );
    let dot: f64 = v0
        .iter()
        .zip(v1)
        .map(|(a, b)| (*a as f64 * s0n) * (*b as f64 * s1n))
        .sum();
    let (c0, c1) = if dot.abs() > DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta0 = dot.acos();
        let sin0 = theta0.sin();
        let theta_t = theta0 * t;
        ((theta0 - theta_t).sin() / sin0, theta_t.sin() / sin0)
    };
    v0.iter()
        .zip(v1)
        .map(|(a, b)| (c0 * *a as f64 + c1 * *b as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_orthogonal_midpoint() {
        let (a, b) = (vec![1.0f32, 0.0], vec![0.0f32, 1.0]);
        assert_eq!(slerp(0.0, &a, &b), a);
        let end = slerp(1.0, &a, &b);
        assert!((end[0]).abs() < 1e-7 && (end[1] - 1.0).abs() < 1e-7);
        let mid = slerp(0.5, &a, &b);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((mid[0] - h).abs() < 1e-6 && (mid[1] - h).abs() < 1e-6);
        // Colinear: plain lerp.
        assert_eq!(slerp(0.25, &[2.0, 0.0], &[4.0, 0.0]), vec![2.5, 0.0]);
    }
}
