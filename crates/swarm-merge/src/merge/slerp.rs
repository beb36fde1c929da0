//! Spherical linear interpolation between the base and one other model, per tensor, as
//! mergekit does it: the angle is taken between the two tensors flattened and normalised;
//! nearly colinear tensors (|cos| > 0.9995) are interpolated linearly.

/// The sums a slerp needs over a whole tensor pair, gathered chunk by chunk.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlerpSums {
    sq0: f64,
    sq1: f64,
    dot: f64,
}

impl SlerpSums {
    /// Adds one chunk of both tensors.
    pub(crate) fn add(&mut self, v0: &[f32], v1: &[f32]) {
        for (a, b) in v0.iter().zip(v1) {
            let (a, b) = (*a as f64, *b as f64);
            self.sq0 += a * a;
            self.sq1 += b * b;
            self.dot += a * b;
        }
    }

    /// The coefficients `(c0, c1)` of `c0 · v0 + c1 · v1` at `t`.
    pub(crate) fn coefficients(&self, t: f64) -> (f64, f64) {
        const DOT_THRESHOLD: f64 = 0.9995;
        const EPS: f64 = 1e-8;
        let (n0, n1) = (self.sq0.sqrt(), self.sq1.sqrt());
        // mergekit normalises only vectors whose norm exceeds eps.
        let s0 = if n0 > EPS { 1.0 / n0 } else { 1.0 };
        let s1 = if n1 > EPS { 1.0 / n1 } else { 1.0 };
        let dot = self.dot * s0 * s1;
        if dot.abs() > DOT_THRESHOLD {
            (1.0 - t, t)
        } else {
            let theta0 = dot.acos();
            let sin0 = theta0.sin();
            let theta_t = theta0 * t;
            ((theta0 - theta_t).sin() / sin0, theta_t.sin() / sin0)
        }
    }
}

/// `out = c0 · v0 + c1 · v1` elementwise.
pub(crate) fn combine(out: &mut [f32], v0: &[f32], v1: &[f32], (c0, c1): (f64, f64)) {
    for ((o, a), b) in out.iter_mut().zip(v0).zip(v1) {
        *o = (c0 * *a as f64 + c1 * *b as f64) as f32;
    }
}

/// `slerp(t, v0, v1)`; `t = 0` gives `v0` (the base), `t = 1` gives `v1`.
pub fn slerp(t: f64, v0: &[f32], v1: &[f32]) -> Vec<f32> {
    let mut sums = SlerpSums::default();
    sums.add(v0, v1);
    let mut out = vec![0f32; v0.len().min(v1.len())];
    combine(&mut out, v0, v1, sums.coefficients(t));
    out
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
