//! Memory calls of `Session`: registration (host memory only), managed
//! buffers, and the raw byte copies of `write/read_bytes_to/from_buffer`,
//! which only touch memory registered with the engine.

use transfer_engine::error::err;

use crate::ranges::Ranges;
use crate::ratelog::log_error;
use crate::session::Session;

/// Locations of accelerator memory, which te-rs cannot move.
fn is_device_location(location: &str) -> bool {
    ["cuda", "musa", "npu", "hip"]
        .iter()
        .any(|p| location.starts_with(p))
}

/// 0, or the engine's negative code (logged).
pub fn code(r: transfer_engine::Result<()>, what: &str) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            log_error!("{what}: {e}");
            e.err_code()
        }
    }
}

impl Session {
    /// `register_memory` / `batch_register_memory`.
    pub fn register(&self, addrs: &[u64], capacities: &[u64], location: &str) -> i32 {
        if addrs.len() != capacities.len() {
            log_error!(
                "batch_register_memory: {} addresses but {} capacities",
                addrs.len(),
                capacities.len()
            );
            return err::INVALID_ARGUMENT;
        }
        if is_device_location(location) {
            log_error!(
                "register_memory: location '{location}' is accelerator memory; te-rs moves host memory only"
            );
            return err::NOT_IMPLEMENTED;
        }
        let regions: Vec<(u64, u64)> = addrs
            .iter()
            .copied()
            .zip(capacities.iter().copied())
            .collect();
        let r = match regions.as_slice() {
            [(addr, len)] => self
                .engine
                .register_local_memory(*addr, *len, location, true),
            _ => self.engine.register_local_memory_batch(&regions, location),
        };
        code(r, "register_memory")
    }

    pub fn unregister(&self, addrs: &[u64]) -> i32 {
        code(
            self.engine.unregister_local_memory_batch(addrs),
            "unregister_memory",
        )
    }

    /// Whether `[addr, addr + len)` lies in memory registered here.
    pub fn is_registered(&self, addr: u64, len: u64) -> bool {
        Ranges::new(&self.engine.registered_buffers()).contains(addr, len)
    }

    /// Copy `src` to `dest` (registered memory).
    pub fn copy_in(&self, dest: u64, src: &[u8]) -> Result<(), String> {
        if src.is_empty() {
            return Ok(());
        }
        if !self.is_registered(dest, src.len() as u64) {
            return Err(format!(
                "[{dest:#x}, +{}) is not inside memory registered with this engine",
                src.len()
            ));
        }
        // SAFETY: the destination range lies in a region registered with the
        // engine (checked above); `src` is a separate Rust slice.
        unsafe { std::ptr::copy(src.as_ptr(), dest as *mut u8, src.len()) };
        Ok(())
    }

    /// Copy `out.len()` bytes from `source` (registered memory) into `out`.
    pub fn copy_out(&self, source: u64, out: &mut [u8]) -> Result<(), String> {
        if out.is_empty() {
            return Ok(());
        }
        if !self.is_registered(source, out.len() as u64) {
            return Err(format!(
                "[{source:#x}, +{}) is not inside memory registered with this engine",
                out.len()
            ));
        }
        // SAFETY: the source range lies in registered memory (checked above).
        unsafe { std::ptr::copy(source as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    pub fn allocate_managed(&self, len: u64) -> u64 {
        let engine = &self.engine;
        let map = |size: u64| -> Option<u64> {
            let addr = crate::mem::map(size)?;
            match engine.register_local_memory(addr, size, "*", true) {
                Ok(()) => Some(addr),
                Err(e) => {
                    log_error!("allocate_managed_buffer: registering {size} bytes: {e}");
                    crate::mem::unmap(addr, size);
                    None
                }
            }
        };
        self.pool.lock().allocate(len, map).unwrap_or(0)
    }

    pub fn free_managed(&self, addr: u64) -> i32 {
        match self.pool.lock().free(addr) {
            Ok(None) => 0,
            Ok(Some((addr, len))) => {
                let _ = self.engine.unregister_local_memory(addr);
                crate::mem::unmap(addr, len);
                0
            }
            Err(e) => {
                log_error!("free_managed_buffer: {e}");
                -1
            }
        }
    }
}
