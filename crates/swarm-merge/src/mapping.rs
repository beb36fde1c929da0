//! Read-only memory maps of input files, so that a merge reads the page cache without
//! copying it (`pread`'s copy was a quarter of a TIES merge's CPU). Pages are mapped by the
//! faults of the first read (a fault maps 16 pages, or a whole large folio), and leave the
//! process's resident set (`MADV_DONTNEED`) a few MiB behind a pass (see `merge/stream.rs`)
//! and when the tensor is merged, so a merge holds a few MiB of each input mapped, not whole
//! tensors. Windows used to be populated first (`MADV_POPULATE_READ`), but that walks the
//! pages one by one on every call, also where a second pass finds them mapped: on Linux 6.18
//! the faults cost a TIES merge 0.13 s less system time (docs/performance.md).
//!
//! Linux only; elsewhere (or where `mmap` fails) there is no map and readers fall back to
//! positioned reads. An input file must not change while it is mapped: a truncated file
//! makes reads of the lost pages fault (SIGBUS), as with any mapped file.

use std::fs::File;
use std::ops::Range;

/// One file mapped whole, read-only and shared with the page cache.
pub(crate) struct FileMap {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the map is read-only and never moved or remapped while it lives; reading it from
// several threads at once is reading shared immutable memory.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

#[cfg(target_os = "linux")]
const PAGE: usize = 4096;

impl FileMap {
    /// Maps `file` (`len` bytes long), or `None` where that is not possible.
    #[cfg(target_os = "linux")]
    pub(crate) fn new(file: &File, len: u64) -> Option<FileMap> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).ok().filter(|l| *l > 0)?;
        // SAFETY: a fresh read-only shared mapping of an open file; the kernel picks the
        // address. Failure is reported as MAP_FAILED and handled.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(FileMap {
            ptr: ptr.cast::<u8>(),
            len,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new(_file: &File, _len: u64) -> Option<FileMap> {
        None
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives (unmapped only
        // in `drop`); the file is not written while it is merged (see the module docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The pages that hold any of byte range `r`, as an address and a length.
    #[cfg(target_os = "linux")]
    fn pages(&self, r: &Range<usize>) -> (*mut libc::c_void, usize) {
        let start = (r.start / PAGE * PAGE).min(self.len);
        let end = (r.end.div_ceil(PAGE) * PAGE).min(self.len);
        // SAFETY (of the `add`): `start <= self.len`, inside the mapping or one past it.
        (
            unsafe { self.ptr.add(start) }.cast_mut().cast(),
            end.saturating_sub(start),
        )
    }

    /// Drops every page that holds any of byte range `r` from this process's resident set,
    /// once no thread reads it (the pages stay in the page cache; a later read maps them
    /// again, with the same bytes).
    pub(crate) fn release(&self, r: &Range<usize>) {
        #[cfg(target_os = "linux")]
        {
            let (addr, len) = self.pages(r);
            if len == 0 {
                return;
            }
            // SAFETY: as in `populate`; for a shared file mapping, MADV_DONTNEED only unmaps
            // pages, whose contents come back from the file.
            unsafe { libc::madvise(addr, len, libc::MADV_DONTNEED) };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = r;
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: the mapping made in `new`, unmapped once; no borrow of it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast_mut().cast(), self.len);
        }
    }
}

/// Bytes `r` of `map` as f32 values, or `None` when they are not 4-byte aligned
/// or the machine is not little-endian.
pub(crate) fn f32_window(map: &FileMap, r: std::ops::Range<usize>) -> Option<&[f32]> {
    if !cfg!(target_endian = "little") {
        return None;
    }
    let bytes = map.bytes().get(r.clone())?;
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned middle.
    let (head, values, tail) = unsafe { bytes.align_to::<f32>() };
    if !head.is_empty() || !tail.is_empty() {
        return None;
    }
    Some(values)
}
