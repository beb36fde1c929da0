//! Loops compiled for AVX-512 or AVX2 where the CPU has them. The workspace builds for
//! baseline x86-64 (SSE2), where the f64 loops of a merge are 2 lanes wide and per-lane shifts
//! and unsigned compares are emulated; under AVX2 they are 4 and 8 lanes wide, under AVX-512
//! 8 and 16 (on Zen 4, whose AVX-512 units are 256 bits wide, that still halves the
//! instructions: TIES's CPU time fell from 1.28 to 1.02 s, see docs/performance.md). IEEE
//! adds, multiplies and divides round the same at any width, and Rust never fuses a multiply
//! and an add on its own, so the results are the same bits either way (the merge tests and
//! `cmp` of outputs check it).

/// A loop to run through [`fast`]. Its `run` must be `#[inline(always)]`, and so must the
/// helpers it calls: only code inlined into [`fast`]'s AVX-512 and AVX2 functions is compiled
/// for them. (A closure was used before; LLVM inlines a closure at its discretion, and once
/// the merge code grew it stopped doing so for the mix, which then ran as SSE2 code.)
pub(crate) trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `k`, compiled for AVX-512 or AVX2 when the CPU has it.
#[inline(always)]
pub(crate) fn fast<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU has these, checked just above.
            return unsafe { avx512(k) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(k) };
        }
    }
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
unsafe fn avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}
