//! Device discovery (`ibv_get_device_list`) and the ibverbs `Provider`.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::context::IbvContext;
use crate::error::{Error, Result};
use crate::transport::rdma::verbs::errno::{errno_name, last_errno};
use crate::transport::rdma::verbs::types::{DeviceInfo, OpenOptions};
use crate::transport::rdma::verbs::{Context, Provider};

/// The list returned by `ibv_get_device_list`, freed on drop.
pub(super) struct DeviceList {
    list: NonNull<*mut ffi::ibv_device>,
    len: usize,
}

impl DeviceList {
    /// `None` when libibverbs reports no devices or no kernel support.
    pub fn get() -> Option<DeviceList> {
        let mut n: libc::c_int = 0;
        // SAFETY: `n` is a valid out-pointer; the returned list (or NULL) is
        // owned by us and freed in Drop.
        let raw = unsafe { ffi::ibv_get_device_list(&mut n) };
        let Some(list) = NonNull::new(raw) else {
            let errno = last_errno();
            log::info!(
                "ibv_get_device_list: discover: {} (no RDMA devices or no kernel RDMA support)",
                errno_name(errno)
            );
            return None;
        };
        Some(DeviceList {
            list,
            len: n.max(0) as usize,
        })
    }

    /// Device handles with their names.
    pub fn devices(&self) -> Vec<(String, *mut ffi::ibv_device)> {
        (0..self.len)
            .filter_map(|i| {
                // SAFETY: the list holds `len` valid entries (NULL-terminated
                // after them); `i < len`.
                let dev = unsafe { *self.list.as_ptr().add(i) };
                if dev.is_null() {
                    return None;
                }
                // SAFETY: `dev` is a live device of this list; the name is a
                // NUL-terminated string owned by libibverbs.
                let name = unsafe { ffi::ibv_get_device_name(dev) };
                if name.is_null() {
                    return None;
                }
                // SAFETY: checked non-NULL above; valid C string.
                let name = unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned();
                Some((name, dev))
            })
            .collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from ibv_get_device_list and is freed once.
        unsafe { ffi::ibv_free_device_list(self.list.as_ptr()) }
    }
}

/// NUMA node of an RDMA device from sysfs (-1 when unknown).
pub(super) fn numa_node(device: &str) -> i32 {
    std::fs::read_to_string(format!("/sys/class/infiniband/{device}/device/numa_node"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

/// libibverbs through rdma-sys.
#[derive(Default)]
pub struct IbvProvider;

impl IbvProvider {
    pub fn new() -> IbvProvider {
        IbvProvider
    }
}

impl Provider for IbvProvider {
    fn name(&self) -> &'static str {
        "ibverbs"
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let Some(list) = DeviceList::get() else {
            return Ok(Vec::new());
        };
        let opts = OpenOptions::from_env();
        let mut out = Vec::new();
        for (name, dev) in list.devices() {
            match IbvContext::open_raw(&name, dev, &opts) {
                Ok(ctx) => {
                    let p = ctx.port_info();
                    out.push(DeviceInfo {
                        name: name.clone(),
                        port_active: p.active,
                        gid: p.gid,
                        gid_index: p.gid_index,
                        lid: p.lid,
                        active_mtu: p.active_mtu,
                        numa_node: numa_node(&name),
                    });
                }
                Err(e) => log::warn!("RDMA device {name} is not usable: {e}"),
            }
        }
        if out.is_empty() {
            log::info!("ibverbs: no usable RDMA device");
        }
        Ok(out)
    }

    fn open(&self, device: &str, opts: &OpenOptions) -> Result<Arc<dyn Context>> {
        let list = DeviceList::get().ok_or_else(|| {
            Error::DeviceNotFound(format!(
                "ibv_get_device_list: open {device}: no RDMA devices on this host"
            ))
        })?;
        let Some((_, dev)) = list.devices().into_iter().find(|(n, _)| n == device) else {
            return Err(Error::DeviceNotFound(format!(
                "ibv_open_device: open: ENODEV (no RDMA device named {device})"
            )));
        };
        Ok(Arc::new(IbvContext::open_raw(device, dev, opts)?))
    }
}
