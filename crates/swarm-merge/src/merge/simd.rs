//! Loops compiled for AVX2 where the CPU has it. The workspace builds for baseline x86-64
//! (SSE2), where the f64 loops of a merge are 2 lanes wide and per-lane shifts and unsigned
//! compares are emulated; under AVX2 they are 4 and 8 lanes wide. IEEE adds, multiplies and
//! divides round the same at any width, and Rust never fuses a multiply and an add on its
//! own, so the results are the same bits either way (the merge tests and `cmp` of outputs
//! check it).

/// Runs `f`, compiled for AVX2 when the CPU has it. What `f` calls is compiled that way only
/// where it is inlined into `f`: mark the hot helpers `#[inline(always)]`.
#[inline(always)]
pub(crate) fn fast<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
