//! Memory for large outputs (gradients), kept for reuse.
//!
//! A gradient is as large as the logits, and a training loop asks for one every step. Fresh
//! memory from the system costs a page fault per 4 KiB on first touch: measured on the reference
//! machine, writing a fresh 64 MiB buffer took 30 ms, where loss-cpu's whole fused pass over a
//! 4096×4096 problem takes 8 — so a new tensor per call would spend most of the call faulting
//! pages in. Neither glibc (it unmaps freed chunks above 32 MiB) nor PyTorch's CPU allocator keeps
//! such memory. So the package hands out large outputs from this pool: a [`Block`] is a region
//! the Python layer wraps as a NumPy array or a torch tensor (through `__array_interface__`, the
//! array holding the block), and when the last array or tensor over it is freed the region comes
//! back here, to serve the next call of the same size without a fault. Regions are mapped with
//! transparent huge pages requested, so even a first use faults once per 2 MiB.
//!
//! The pool keeps at most [`IDLE_BYTES`] of idle memory (regions beyond it are unmapped when
//! they come back) and reuses only exact sizes (a training loop repeats its shapes).

use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Idle memory the pool keeps at most.
pub const IDLE_BYTES: usize = 1 << 30;

/// Outputs smaller than this come from the Python allocators (their faults are few, and a
/// block's wrapping costs a few microseconds).
pub const MIN_BYTES: usize = 1 << 22;

/// A mapped region of `bytes` bytes.
struct Region {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: a region is plain memory owned by whoever holds the `Region` (the pool, or one block);
// nothing in it is tied to a thread.
unsafe impl Send for Region {}
// SAFETY: as above; shared access only reads the address.
unsafe impl Sync for Region {}

impl Region {
    fn map(bytes: usize) -> PyResult<Region> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: an anonymous private mapping of `bytes` bytes, nothing else touched.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(pyo3::exceptions::PyMemoryError::new_err(format!(
                    "cannot map {bytes} bytes"
                )));
            }
            // Huge pages where the kernel allows them (a hint: ignored where unsupported).
            // SAFETY: the range was just mapped.
            unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
            Ok(Region {
                ptr: ptr.cast(),
                bytes,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let layout = std::alloc::Layout::from_size_align(bytes, 64)
                .map_err(|e| pyo3::exceptions::PyMemoryError::new_err(e.to_string()))?;
            // SAFETY: a non-zero size (MIN_BYTES at least).
            let ptr = unsafe { std::alloc::alloc(layout) };
            if ptr.is_null() {
                return Err(pyo3::exceptions::PyMemoryError::new_err(format!(
                    "cannot allocate {bytes} bytes"
                )));
            }
            Ok(Region { ptr, bytes })
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: the region was mapped by `Region::map` with this length and is unused now.
        unsafe {
            libc::munmap(self.ptr.cast(), self.bytes);
        }
        #[cfg(not(target_os = "linux"))]
        // SAFETY: allocated by `Region::map` with this layout.
        unsafe {
            std::alloc::dealloc(
                self.ptr,
                std::alloc::Layout::from_size_align_unchecked(self.bytes, 64),
            );
        }
    }
}

/// The idle regions, most recently returned last.
static IDLE: Mutex<Vec<Region>> = Mutex::new(Vec::new());

fn take(bytes: usize) -> PyResult<Region> {
    let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
    match idle.iter().rposition(|r| r.bytes == bytes) {
        Some(i) => Ok(idle.swap_remove(i)),
        None => {
            drop(idle);
            Region::map(bytes)
        }
    }
}

fn give_back(region: Region) {
    let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
    let held: usize = idle.iter().map(|r| r.bytes).sum();
    if held + region.bytes <= IDLE_BYTES {
        idle.push(region);
    }
    // (Otherwise `region` is unmapped here, as it drops.)
}

/// A block of pooled memory: `bytes` bytes that NumPy (and through it torch) can wrap without a
/// copy (`__array_interface__`: a flat `uint8` array). It returns to the pool when the last array
/// over it is gone. Its contents are whatever the last user left: the caller writes every byte.
#[pyclass(module = "xent._xent", frozen)]
pub struct Block {
    region: Option<Region>,
}

#[pymethods]
impl Block {
    /// A block of `bytes` bytes, from the pool when it has one of that size.
    #[new]
    fn new(bytes: usize) -> PyResult<Self> {
        if bytes == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a block of 0 bytes",
            ));
        }
        Ok(Block {
            region: Some(take(bytes)?),
        })
    }

    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self
            .region
            .as_ref()
            .expect("a block holds its region until dropped");
        let d = PyDict::new(py);
        d.set_item("shape", (r.bytes,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (r.ptr as usize, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(r) = self.region.take() {
            give_back(r);
        }
    }
}

/// The idle memory the pool holds, bytes.
#[pyfunction]
pub fn pooled_bytes() -> usize {
    IDLE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|r| r.bytes)
        .sum()
}

/// Unmaps every idle region.
#[pyfunction]
pub fn release_pool() {
    IDLE.lock().unwrap_or_else(PoisonError::into_inner).clear();
}
