//! Zeroed bytes that Linux backs with 2 MiB pages (transparent huge pages) where it can:
//! the memory of packed weights.
//!
//! Decoding reads every weight once per step, as one long stream per core. With 4 KiB
//! pages that stream needs a page walk every 4 KiB (two nested ones inside a virtual
//! machine); with 2 MiB pages, one every 2 MiB. Measured on the 2-core Xeon of
//! docs/serving.md, two threads streaming 1.2 GB: 23 GB/s on 4 KiB pages, 34 GB/s on
//! 2 MiB pages; the products of bf16 weights on AMX for 8 tokens 16-17 against 19-20
//! GB/s. Most Linux systems (this one too) give huge pages only to memory a program asks
//! for with `madvise(MADV_HUGEPAGE)`, and only on 2 MiB boundaries, before the memory is
//! first touched. `ember` happened to get them from its allocator (mimalloc's arenas);
//! a program that embeds these crates with the system allocator did not. So the weights
//! ask for them themselves: buffers of 2 MiB or more are mapped from the kernel on a
//! 2 MiB boundary and advised before they are first written. Elsewhere (other systems,
//! small buffers) they are the allocator's zeroed memory.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;

/// A huge page's size on x86-64 and arm64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Alignment of smaller buffers: a cache line, for the kernels' vector loads.
const LINE: usize = 64;

/// `len` zeroed bytes, on huge pages when `len` is at least one.
pub(crate) struct HugePageBytes {
    ptr: NonNull<u8>,
    len: usize,
    /// Mapped by [`map_huge`] (unmapped on drop) rather than from the allocator.
    mapped: bool,
}

// SAFETY: the bytes are owned by this value alone, as a `Vec<u8>`'s are.
unsafe impl Send for HugePageBytes {}
// SAFETY: shared access only reads.
unsafe impl Sync for HugePageBytes {}

impl HugePageBytes {
    /// `len` zeroed bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len,
                mapped: false,
            };
        }
        if len >= HUGE_PAGE
            && let Some(ptr) = map_huge(len)
        {
            return Self {
                ptr,
                len,
                mapped: true,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size.
        let Some(ptr) = NonNull::new(unsafe { alloc_zeroed(layout) }) else {
            handle_alloc_error(layout)
        };
        Self {
            ptr,
            len,
            mapped: false,
        }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, LINE).expect("a buffer's size fits an isize")
    }
}

/// `len` bytes mapped from the kernel (zeroed, as anonymous memory is), starting on a
/// 2 MiB boundary and advised to be backed by huge pages; `None` if mapping fails.
/// Mapped directly rather than through the allocator, which could only align them by
/// allocating (and, for some allocators, committing) up to 2 MiB more per buffer.
#[cfg(target_os = "linux")]
fn map_huge(len: usize) -> Option<NonNull<u8>> {
    let span = len.checked_add(HUGE_PAGE)?;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let (base, end) = (base as usize, base as usize + span);
    let start = base.next_multiple_of(HUGE_PAGE);
    // The pages before `start` and after the last page of the buffer go back.
    let kept_end = (start + len).next_multiple_of(page_size());
    // SAFETY: both ranges are whole pages of the fresh mapping, outside the buffer.
    unsafe {
        if start > base {
            libc::munmap(base as *mut libc::c_void, start - base);
        }
        if end > kept_end {
            libc::munmap(kept_end as *mut libc::c_void, end - kept_end);
        }
        // Refused (huge pages disabled): the memory is then what it would have been.
        let _ = libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    NonNull::new(start as *mut u8)
}

#[cfg(not(target_os = "linux"))]
fn map_huge(_len: usize) -> Option<NonNull<u8>> {
    None
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    // SAFETY: reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

impl Drop for HugePageBytes {
    fn drop(&mut self) {
        if self.mapped {
            #[cfg(target_os = "linux")]
            // SAFETY: mapped by `map_huge`, `len` bytes rounded up to whole pages.
            unsafe {
                libc::munmap(
                    self.ptr.as_ptr().cast(),
                    self.len.next_multiple_of(page_size()),
                );
            }
        } else if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
        }
    }
}

impl std::ops::Deref for HugePageBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized bytes (or none, from a dangling pointer).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for HugePageBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for HugePageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_writable_and_aligned() {
        for len in [0, 1, 100, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 12345] {
            let mut bytes = HugePageBytes::zeroed(len);
            assert_eq!(bytes.len(), len);
            assert!(bytes.iter().all(|&b| b == 0), "{len} bytes zeroed");
            let align = match len {
                0 => 1, // nothing allocated
                _ if len >= HUGE_PAGE => HUGE_PAGE,
                _ => LINE,
            };
            assert_eq!(bytes.as_ptr() as usize % align, 0, "{len} bytes aligned");
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = i as u8;
            }
            assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
        }
    }

    /// Where Linux has transparent huge pages (`madvise` or `always` mode), a large
    /// buffer lies in a mapping with the advice recorded (`hg` among its flags in
    /// /proc/self/smaps). Whether the kernel then finds free 2 MiB pages depends on the
    /// machine's memory, so that is not asserted.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_are_advised_for_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(mode.contains("[madvise]") || mode.contains("[always]")) {
            eprintln!("skipped: transparent huge pages are off here ({mode:?})");
            return;
        }
        let bytes = HugePageBytes::zeroed(4 * HUGE_PAGE);
        let start = bytes.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        // The mapping holding the buffer: its range, then its VmFlags line.
        let mut range = None;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((span, _)) = line.split_once(' ')
                && let Some((from, to)) = span.split_once('-')
                && let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                )
            {
                if range.is_some() {
                    break;
                }
                if (from..to).contains(&start) {
                    range = Some((from, to));
                }
                continue;
            }
            if range.is_some()
                && let Some(f) = line.strip_prefix("VmFlags:")
            {
                flags = Some(f.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
            }
        }
        let (from, to) = range.expect("the buffer's mapping in /proc/self/smaps");
        // (Adjacent buffers advised alike may share one mapping.)
        assert!(
            from <= start && start + 4 * HUGE_PAGE <= to,
            "{from:x}-{to:x}"
        );
        let flags = flags.expect("the mapping's VmFlags");
        assert!(flags.iter().any(|f| f == "hg"), "advised: {flags:?}");
    }
}
