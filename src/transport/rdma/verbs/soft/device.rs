//! Soft devices, contexts opened on them, and their protection domains.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::cq::{CqShared, SoftCq};
use super::fabric::{fabric, FabricId, MrEntry};
use super::fault::FaultSet;
use super::mr::SoftMr;
use super::qp::SoftQp;
use crate::error::{Error, Result};
use crate::transport::rdma::verbs::errno::verb_error;
use crate::transport::rdma::verbs::gid::{select_gid, GidCandidate, GidType};
use crate::transport::rdma::verbs::types::*;
use crate::transport::rdma::verbs::{Context, Cq, Mr, Pd, Qp};

/// Async events queued for one context.
pub(crate) type EventQueue = Mutex<VecDeque<AsyncEvent>>;

#[derive(Debug, Default)]
pub(crate) struct PortState {
    pub down: bool,
    pub fatal: bool,
}

pub(crate) struct SoftDevice {
    pub id: u32,
    pub name: String,
    /// Index 0: link-local (as RoCE devices have); index 1: a unique-local
    /// GID bound to `lo`, which the automatic ranking prefers. Both name
    /// this process's fabric (see `fabric::FabricId`).
    pub gids: Vec<GidCandidate>,
    pub port: Mutex<PortState>,
    pub faults: Mutex<FaultSet>,
    /// Retransmissions of WRs sent from this device.
    pub retransmits: AtomicU64,
    listeners: Mutex<Vec<Weak<EventQueue>>>,
}

pub(crate) const SOFT_MTU: u32 = 4096;

impl SoftDevice {
    pub fn new(id: u32, name: &str, fabric: &FabricId) -> SoftDevice {
        let link_local = fabric.link_local_gid(id);
        let routable = fabric.routable_gid(id);
        SoftDevice {
            id,
            name: name.to_string(),
            gids: vec![
                GidCandidate {
                    index: 0,
                    gid: link_local,
                    gid_type: GidType::RoceV2,
                    netdev: None,
                },
                GidCandidate {
                    index: 1,
                    gid: routable,
                    gid_type: GidType::RoceV2,
                    netdev: Some("lo".into()),
                },
            ],
            port: Mutex::new(PortState::default()),
            faults: Mutex::new(FaultSet::default()),
            retransmits: AtomicU64::new(0),
            listeners: Mutex::new(Vec::new()),
        }
    }

    pub fn routable_gid(&self) -> Gid {
        self.gids[1].gid
    }

    pub fn is_up(&self) -> bool {
        let p = self.port.lock();
        !p.down && !p.fatal
    }

    pub fn info(&self) -> DeviceInfo {
        let index = select_gid(&self.gids).unwrap_or(0);
        DeviceInfo {
            name: self.name.clone(),
            port_active: self.is_up(),
            gid: self.gids[index as usize].gid,
            gid_index: index,
            lid: 0,
            active_mtu: SOFT_MTU,
            numa_node: -1,
        }
    }

    /// Queue `event` on every open context of this device.
    pub fn raise(&self, event: AsyncEvent) {
        let mut listeners = self.listeners.lock();
        listeners.retain(|w| w.strong_count() > 0);
        for q in listeners.iter().filter_map(Weak::upgrade) {
            q.lock().push_back(event);
        }
        log::warn!("soft RDMA device {}: async event {:?}", self.name, event);
    }

    fn listen(&self, q: &Arc<EventQueue>) {
        self.listeners.lock().push(Arc::downgrade(q));
    }
}

pub(crate) struct SoftContext {
    pub device: Arc<SoftDevice>,
    port: PortInfo,
    events: Arc<EventQueue>,
}

impl SoftContext {
    pub fn open(device: Arc<SoftDevice>, opts: &OpenOptions) -> Result<SoftContext> {
        if opts.port != 1 {
            return Err(verb_error(
                "ibv_query_port",
                "open",
                libc::EINVAL,
                &format!(
                    "soft device {} has only port 1, asked {}",
                    device.name, opts.port
                ),
            ));
        }
        let gid_index = match opts.gid_index {
            Some(i) if (i as usize) < device.gids.len() => i,
            Some(i) => {
                return Err(verb_error(
                    "ibv_query_gid",
                    "open",
                    libc::EINVAL,
                    &format!(
                        "soft device {} has GID indices 0..{}, asked {i}",
                        device.name,
                        device.gids.len()
                    ),
                ))
            }
            None => select_gid(&device.gids).unwrap_or(0),
        };
        let port = PortInfo {
            port: 1,
            active: device.is_up(),
            lid: 0,
            gid: device.gids[gid_index as usize].gid,
            gid_index,
            active_mtu: SOFT_MTU,
        };
        let events = Arc::new(EventQueue::default());
        device.listen(&events);
        Ok(SoftContext {
            device,
            port,
            events,
        })
    }
}

impl Context for SoftContext {
    fn device_name(&self) -> &str {
        &self.device.name
    }

    fn port_info(&self) -> &PortInfo {
        &self.port
    }

    fn software_roce(&self) -> bool {
        true
    }

    fn query_port(&self) -> Result<PortInfo> {
        Ok(PortInfo {
            active: self.device.is_up(),
            ..self.port.clone()
        })
    }

    fn alloc_pd(&self) -> Result<Arc<dyn Pd>> {
        Ok(Arc::new(SoftPd {
            device: self.device.clone(),
        }))
    }

    fn create_cq(&self, depth: usize) -> Result<Arc<dyn Cq>> {
        if depth == 0 || depth > 4 * 1024 * 1024 {
            return Err(verb_error(
                "ibv_create_cq",
                "create",
                libc::EINVAL,
                &format!("depth {depth} on {}", self.device.name),
            ));
        }
        Ok(Arc::new(SoftCq {
            shared: Arc::new(CqShared::new(depth, self.device.clone())),
        }))
    }

    fn poll_async_event(&self) -> Result<Option<AsyncEvent>> {
        Ok(self.events.lock().pop_front())
    }

    fn async_fd(&self) -> Option<i32> {
        None
    }
}

pub(crate) struct SoftPd {
    pub device: Arc<SoftDevice>,
}

impl Pd for SoftPd {
    unsafe fn reg_mr(&self, addr: u64, len: usize, access: Access) -> Result<Box<dyn Mr>> {
        if addr == 0 || len == 0 || addr.checked_add(len as u64).is_none() {
            return Err(verb_error(
                "ibv_reg_mr",
                "register",
                libc::EINVAL,
                &format!("addr {addr:#x} len {len} on {}", self.device.name),
            ));
        }
        let fabric = fabric();
        let key = fabric.alloc_key();
        fabric.mrs.write().insert(
            key,
            MrEntry {
                device_id: self.device.id,
                addr,
                len: len as u64,
                access,
            },
        );
        Ok(Box::new(SoftMr {
            key,
            addr,
            len,
            released: false,
        }))
    }

    fn create_qp(&self, cq: &Arc<dyn Cq>, caps: &QpCaps) -> Result<Arc<dyn Qp>> {
        let Some(soft_cq) = cq.as_any().downcast_ref::<SoftCq>() else {
            return Err(Error::InvalidArgument(
                "ibv_create_qp: create: the CQ does not belong to the soft provider".into(),
            ));
        };
        if caps.max_send_wr == 0 || caps.max_send_wr > 65536 {
            return Err(verb_error(
                "ibv_create_qp",
                "create",
                libc::EINVAL,
                &format!("max_send_wr {} on {}", caps.max_send_wr, self.device.name),
            ));
        }
        Ok(Arc::new(SoftQp::create(
            self.device.clone(),
            soft_cq.shared.clone(),
            *caps,
        )))
    }
}
