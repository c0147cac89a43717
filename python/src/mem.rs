//! Anonymous memory for managed buffers.

/// Map `len` bytes of zeroed, lazily committed memory.
pub fn map(len: u64) -> Option<u64> {
    let size = usize::try_from(len).ok()?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        log::error!(
            "mmap of {len} bytes for a managed buffer: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    Some(p as u64)
}

/// Unmap a region `map` returned.
pub fn unmap(addr: u64, len: u64) {
    // SAFETY: `addr`/`len` describe a mapping made by `map` and not yet
    // unmapped (the pool hands each region back exactly once).
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}
