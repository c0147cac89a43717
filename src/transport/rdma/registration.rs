//! Memory registration as peers see it: MRs on every context, and the
//! segment descriptor that publishes devices, GIDs and rkeys.

use crate::error::Result;
use crate::metadata::descriptor::{DeviceDesc, SegmentDesc};
use crate::transport::LocalBuffer;

use super::limits;
use super::memory::{self, Region};
use super::shared::Shared;

impl Shared {
    pub(super) fn register_memory(&self, buf: &LocalBuffer) -> Result<()> {
        let sh = self;
        let regions = memory::register(&sh.contexts, buf, sh.cfg.max_mr_size)?;
        let mut mem = sh.memory.write();
        for r in regions {
            mem.insert(r);
        }
        Ok(())
    }

    pub(super) fn unregister_memory(&self, addr: u64) -> Result<()> {
        let sh = self;
        let gone = sh.memory.write().remove_registration(addr);
        memory::release(&sh.contexts, &gone);
        Ok(())
    }

    pub(super) fn describe(&self, desc: &mut SegmentDesc, buffers: &[LocalBuffer]) {
        let sh = self;
        desc.protocol = "rdma".into();
        let rdma_name = limits::rdma_server_name(&sh.tctx.local_server_name);
        if rdma_name != sh.tctx.local_server_name {
            desc.rdma_server_name = Some(rdma_name);
        }
        desc.tcp_data_port = 0;
        desc.tcp_proto_version = 1;
        desc.devices = Some(
            sh.contexts
                .iter()
                .map(|c| DeviceDesc {
                    gid: c.gid_string(),
                    lid: c.lid(),
                    name: c.name.clone(),
                })
                .collect(),
        );
        desc.priority_matrix = Some(if sh.matrix.is_empty() {
            None
        } else {
            Some(sh.matrix.clone())
        });
        let mem = sh.memory.read();
        desc.buffers = buffers
            .iter()
            .flat_map(|b| mem.chunks_of(b.addr).map(Region::describe))
            .collect();
    }
}
