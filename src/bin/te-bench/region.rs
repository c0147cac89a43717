//! Page-aligned, pre-faulted anonymous memory for benchmark buffers.

pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; concurrent access
// is coordinated by the benchmark (disjoint chunks per thread).
unsafe impl Send for Region {}
// SAFETY: as above; shared references only hand out raw addresses.
unsafe impl Sync for Region {}

impl Region {
    pub fn new(len: usize) -> Result<Region, String> {
        // SAFETY: anonymous private mapping; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Region {
            ptr: ptr as *mut u8,
            len,
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The bytes `[off, off+len)`. The caller keeps transfers off this range
    /// while the slice is alive.
    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len, "range outside the region");
        // SAFETY: in bounds (checked above); the benchmark gives each thread
        // disjoint chunks and touches them only between transfers.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from the mmap in `new`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Content of byte `off` of a pattern identified by `seed`.
pub fn pattern_byte(seed: u64, off: u64) -> u8 {
    let x = off
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(seed.wrapping_mul(0x85eb_ca6b));
    (x ^ (x >> 13) ^ (x >> 29)) as u8
}

pub fn fill(buf: &mut [u8], seed: u64, base: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, base + i as u64);
    }
}

/// Index of the first byte that differs from the pattern, if any.
pub fn first_mismatch(buf: &[u8], seed: u64, base: u64) -> Option<usize> {
    buf.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern_byte(seed, base + *i as u64))
        .map(|(i, _)| i)
}
