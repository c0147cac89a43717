//! Device async events on their own thread per context (never read on a
//! hot path). The thread blocks on the device's async fd and applies:
//! port error → the context stops taking slices and its endpoints retire
//! (QPs to ERR, every WR flushes, slices move or fail); port active → the
//! context takes slices again, no restart; device fatal → down for good;
//! QP fatal → that one endpoint retires; GID change → the GID table is read
//! again (and selected as at open); if the selection changed, the context's
//! endpoints retire and new ones advertise and use the new GID.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::device::DeviceEvent;
use super::worker::ContextWorkers;
use super::Shared;

/// How long one wait for events may block before the stop flag is checked.
const WAIT: Duration = Duration::from_millis(100);

pub fn run_events(shared: Weak<Shared>, cw: Arc<ContextWorkers>) {
    let Some(dev) = cw.ctx.device.clone() else {
        return;
    };
    let mut events = Vec::new();
    while !cw.stop.load(Ordering::Acquire) {
        events.clear();
        dev.wait_events(WAIT, &mut events);
        if events.is_empty() {
            continue;
        }
        let Some(sh) = shared.upgrade() else { return };
        for ev in events.drain(..) {
            apply(&sh, &cw, ev);
        }
        cw.wake_all();
    }
}

fn apply(sh: &Shared, cw: &ContextWorkers, ev: DeviceEvent) {
    let ctx = &cw.ctx;
    match ev {
        DeviceEvent::PortDown => {
            ctx.deactivate("port error");
            sh.retire_context_endpoints(ctx, "port error");
        }
        DeviceEvent::PortUp => {
            // An address may have come back with the link.
            if let Some(dev) = &ctx.device {
                if dev.refresh_gid() {
                    sh.retire_context_endpoints(ctx, "GID changed");
                }
            }
            ctx.reactivate("port active")
        }
        DeviceEvent::GidChange => {
            if let Some(dev) = &ctx.device {
                if dev.refresh_gid() {
                    sh.retire_context_endpoints(ctx, "GID changed");
                }
            }
        }
        DeviceEvent::Fatal => {
            ctx.set_fatal("device fatal");
            sh.retire_context_endpoints(ctx, "device fatal");
        }
        DeviceEvent::QpFatal(qpn) => {
            let hit = ctx
                .endpoints
                .lock()
                .iter()
                .find(|(_, ep)| ep.qp_nums().contains(&qpn))
                .map(|(p, ep)| (p.clone(), ep.clone()));
            if let Some((path, ep)) = hit {
                log::warn!(
                    "RDMA {}: QP {qpn} fatal, endpoint to {path} retired",
                    ctx.name
                );
                ep.retire("QP fatal");
                ctx.forget_endpoint(&path, &ep);
            }
        }
    }
}
