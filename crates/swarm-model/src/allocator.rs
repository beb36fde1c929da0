//! How the process's memory allocator treats the large, short-lived buffers of tensor code.

/// Above this size glibc serves an allocation with its own `mmap` (and returns it on free).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap is handed back to the kernel only beyond this much.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Makes glibc's `malloc` keep freed tensor buffers for reuse instead of handing them back to
/// the kernel and faulting fresh zeroed pages in on the next step.
///
/// Why: a candle training or decoding step allocates and frees the same few-MiB buffers over
/// and over. glibc maps buffers above a threshold (128 KiB at first, raised as it sees frees)
/// with `mmap` and trims the heap's free top past 128 KiB, so each step paid page faults and
/// the kernel's zeroing for memory it had just released: on the 2-core machine a toy-world
/// training step ran 22% faster with the limits here (docs/performance.md). The cost: up to
/// 1 GiB of freed memory may stay resident after a peak.
///
/// Call it first thing in `main`, as [`crate::configure_cpu_threads`]. Elsewhere than
/// Linux with glibc it does nothing.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning parameters; any values are valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
