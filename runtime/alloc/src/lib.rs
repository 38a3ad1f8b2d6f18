//! The process allocator for binaries that run isolates: mimalloc, asked
//! for plain blocks whenever a plain block is aligned enough.
//!
//! The `mimalloc` crate passes every Rust allocation to
//! `mi_malloc_aligned`. In mimalloc 3 that takes the plain path only for a
//! block of at most 1 KiB whose free list happens to start aligned; any
//! other (hyper's 8 KiB-and-more read buffers, a `HeaderMap`'s entries, the
//! blocks a free list has not aligned) goes through its generic aligned
//! path and, unless its size is a power of two, over-allocates by the
//! alignment and records an interior pointer. The nine allocations of an
//! `isola-edge dev` hello request took 594 instructions that way and take
//! 339 through `mi_malloc` (`bench/instructions.py`). `mi_malloc` already
//! returns 16-byte aligned blocks (8 for blocks under 16 bytes), so only
//! larger alignments need the aligned entry points.

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every `mi_malloc` block of at least this size has
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator:
/// `#[global_allocator] static A: isola_alloc::Allocator = isola_alloc::Allocator;`
pub struct Allocator;

/// Whether a plain block of `layout`'s size is aligned enough for it: a
/// block is aligned to its size up to [`PLAIN_ALIGN`].
fn plain(layout: &Layout) -> bool {
  layout.align() <= PLAIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every block comes from mimalloc with at least the alignment its
// layout asks for (`plain`), and every block goes back to `mi_free`, which
// takes blocks of every entry point.
unsafe impl GlobalAlloc for Allocator {
  #[inline]
  unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
    // SAFETY: mimalloc's entry points take any size and (the aligned
    // ones) a power-of-two alignment, which `Layout` guarantees.
    unsafe {
      if plain(&layout) {
        mi::mi_malloc(layout.size()).cast()
      } else {
        mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
      }
    }
  }

  #[inline]
  unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
    // SAFETY: as in `alloc`.
    unsafe {
      if plain(&layout) {
        mi::mi_zalloc(layout.size()).cast()
      } else {
        mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
      }
    }
  }

  #[inline]
  unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
    // SAFETY: `ptr` came from one of the functions above.
    unsafe { mi::mi_free(ptr.cast::<c_void>()) }
  }

  #[inline]
  unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: `ptr` came from one of the functions above, with `layout`;
    // the new block keeps its alignment.
    unsafe {
      let new = Layout::from_size_align_unchecked(new_size, layout.align());
      if plain(&new) {
        mi::mi_realloc(ptr.cast(), new_size).cast()
      } else {
        mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Blocks of every size class and alignment come back aligned, keep
  /// their contents through `realloc`, and go back (valgrind-clean).
  #[test]
  fn every_block_is_aligned_as_asked() {
    let a = Allocator;
    for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
      for size in [1, 3, 8, 15, 16, 17, 100, 1000, 1025, 8200, 70_000] {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero size; each block is freed once, with its
        // layout.
        unsafe {
          let p = a.alloc(layout);
          assert!(!p.is_null());
          assert_eq!(p as usize % align, 0, "size {size} align {align}");
          p.write_bytes(0xab, size);
          let q = a.realloc(p, layout, size * 3);
          assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
          assert_eq!(*q.add(size - 1), 0xab);
          a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
          let z = a.alloc_zeroed(layout);
          assert_eq!(z as usize % align, 0);
          assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
          a.dealloc(z, layout);
        }
      }
    }
  }
}
