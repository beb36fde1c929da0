//! A vector register of f32 lanes, as the hand-written kernels ([`f32_kernel`](crate::f32_kernel)
//! and [`attention`](crate::attention)) use it: one generic kernel body, compiled once for
//! AVX-512 ([`Zmm`], 16 lanes) and once for AVX2 ([`Ymm`], 8 lanes).

use half::f16;

/// A vector of f32 lanes with the few operations the kernels need.
///
/// # Safety
/// Only to be called where the CPU has the instructions (inside `target_feature` functions
/// that enable them: `avx512f,avx512vl` for [`Zmm`], `avx2,fma` for [`Ymm`], and `f16c` too
/// for [`Ymm::load_f16`]), with pointers to `LANES` readable (or, for stores, `lanes`
/// writable) values.
pub(crate) trait Lanes: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn splat(p: *const f32) -> Self;
    /// `a * b + self`, fused.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    /// Stores the first `lanes` lanes (at most `LANES`).
    unsafe fn store_first(self, p: *mut f32, lanes: usize);
    /// `LANES` f16 values, widened.
    unsafe fn load_f16(p: *const f16) -> Self;
    /// Stores all lanes.
    unsafe fn store(self, p: *mut f32);
    /// The sum of the lanes.
    unsafe fn sum(self) -> f32;
    /// The sums of four vectors' lanes, into `out[0..4]`: cheaper than four [`Lanes::sum`]s,
    /// the four reductions share their shuffles.
    unsafe fn sums4(v: [Self; 4], out: *mut f32);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Ymm, Zmm};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use half::f16;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Zmm(__m512);

    impl Lanes for Zmm {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Zmm(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Zmm(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            Zmm(unsafe { _mm512_set1_ps(*p) })
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Zmm(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, lanes: usize) {
            let mask = ((1u32 << lanes) - 1) as __mmask16;
            unsafe { _mm512_mask_storeu_ps(p, mask, self.0) }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self {
            Zmm(unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn sums4(v: [Self; 4], out: *mut f32) {
            // Each half-fold keeps the lanes' sum: then four 8-lane vectors.
            let fold = |z: Zmm| unsafe {
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z.0), 1));
                Ymm(_mm256_add_ps(_mm512_castps512_ps256(z.0), high))
            };
            unsafe { Ymm::sums4([fold(v[0]), fold(v[1]), fold(v[2]), fold(v[3])], out) }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Ymm(__m256);

    impl Lanes for Ymm {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Ymm(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Ymm(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            Ymm(unsafe { _mm256_set1_ps(*p) })
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Ymm(unsafe { _mm256_fmadd_ps(a.0, b.0, self.0) })
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, lanes: usize) {
            if lanes == 8 {
                return unsafe { _mm256_storeu_ps(p, self.0) };
            }
            // Lane i is stored where its mask lane has the top bit set: i < lanes.
            let mask = unsafe {
                _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(lanes as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                )
            };
            unsafe { _mm256_maskstore_ps(p, mask, self.0) }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self {
            Ymm(unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn sums4(v: [Self; 4], out: *mut f32) {
            unsafe {
                // Pairwise sums of neighbours, twice: lane i of each 128-bit half of `quads`
                // holds that half's sum for vector i.
                let quads = _mm256_hadd_ps(
                    _mm256_hadd_ps(v[0].0, v[1].0),
                    _mm256_hadd_ps(v[2].0, v[3].0),
                );
                let sums = _mm_add_ps(
                    _mm256_castps256_ps128(quads),
                    _mm256_extractf128_ps(quads, 1),
                );
                _mm_storeu_ps(out, sums)
            }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe {
                let quad = _mm_add_ps(
                    _mm256_castps256_ps128(self.0),
                    _mm256_extractf128_ps(self.0, 1),
                );
                let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
                _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
            }
        }
    }
}
