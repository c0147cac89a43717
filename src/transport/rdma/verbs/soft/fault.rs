//! Fault injection on the soft fabric, for tests of timeouts and failover.
//!
//! Faults are scoped to one device by name or to all devices; tests should
//! use their own device names (see `SoftProvider::with_devices`) so that
//! parallel tests do not see each other's faults.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fabric::fabric;
use crate::error::{Error, Result};
use crate::transport::rdma::verbs::types::{AsyncEvent, AsyncEventKind, QpState};

/// Where a fault applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    Device(&'a str),
    All,
}

/// Faults pending on a device (or on all devices).
#[derive(Debug, Default, Clone)]
pub(crate) struct FaultSet {
    pub rtr_delay: Option<Duration>,
    pub rts_delay: Option<Duration>,
    pub drop_next: u64,
    pub fail_next_modify: Option<i32>,
    pub silent_read_errors: u64,
}

fn with_faults<R>(scope: Scope<'_>, f: impl FnOnce(&mut FaultSet) -> R) -> Result<R> {
    let fabric = fabric();
    match scope {
        Scope::All => Ok(f(&mut fabric.all_faults.lock())),
        Scope::Device(name) => {
            let dev = fabric
                .device(name)
                .ok_or_else(|| Error::DeviceNotFound(format!("soft device {name}")))?;
            let r = f(&mut dev.faults.lock());
            Ok(r)
        }
    }
}

/// Every `modify_to_rtr` (`to == Rtr`) or `modify_to_rts` (`to == Rts`) of a
/// QP in `scope` sleeps `delay` first (`None` clears). Other states are
/// refused.
pub fn delay_transition(scope: Scope<'_>, to: QpState, delay: Option<Duration>) -> Result<()> {
    match to {
        QpState::Rtr => with_faults(scope, |f| f.rtr_delay = delay),
        QpState::Rts => with_faults(scope, |f| f.rts_delay = delay),
        other => Err(Error::InvalidArgument(format!(
            "only rtr and rts transitions can be delayed, not {other}"
        ))),
    }
}

/// The next `n` packets (transmissions of WRs) sent from or to a device in
/// `scope` are lost. A lost WR is retransmitted, so it ends `RetryExceeded`
/// only when all `retry_cnt + 1` of its transmissions are lost.
pub fn drop_next_packets(scope: Scope<'_>, n: u64) -> Result<()> {
    with_faults(scope, |f| f.drop_next = n)
}

/// The next `n` RDMA READs sent from a device in `scope` end as Linux
/// rxe's completer (kernel 6.1) ends a READ whose retried response it
/// takes out of sequence: none of its bytes land, the WR ends with status
/// success (a completion only when it was signaled) and its QP goes to ERR,
/// so the WRs after it flush. The transport must not report such a READ
/// as done.
pub fn silent_read_errors(scope: Scope<'_>, n: u64) -> Result<()> {
    with_faults(scope, |f| f.silent_read_errors = n)
}

/// The next `modify_qp` of a QP in `scope` fails with `errno` and leaves the
/// QP's state unchanged.
pub fn fail_next_modify(scope: Scope<'_>, errno: i32) -> Result<()> {
    with_faults(scope, |f| f.fail_next_modify = Some(errno))
}

/// Clear all pending faults in `scope` (ports are left as they are).
pub fn clear(scope: Scope<'_>) -> Result<()> {
    with_faults(scope, |f| *f = FaultSet::default())
}

/// Take the port of `device` down: WRs from or to it are lost, and its
/// contexts get `PORT_ERR` (or `DEVICE_FATAL` when `fatal`).
pub fn port_down(device: &str, fatal: bool) -> Result<()> {
    let dev = fabric()
        .device(device)
        .ok_or_else(|| Error::DeviceNotFound(format!("soft device {device}")))?;
    {
        let mut p = dev.port.lock();
        p.down = true;
        p.fatal |= fatal;
    }
    dev.raise(AsyncEvent {
        kind: if fatal {
            AsyncEventKind::DeviceFatal
        } else {
            AsyncEventKind::PortErr
        },
        port: 1,
        qp_num: None,
    });
    Ok(())
}

/// Bring the port of `device` back (`PORT_ACTIVE`).
pub fn port_up(device: &str) -> Result<()> {
    let dev = fabric()
        .device(device)
        .ok_or_else(|| Error::DeviceNotFound(format!("soft device {device}")))?;
    *dev.port.lock() = Default::default();
    dev.raise(AsyncEvent {
        kind: AsyncEventKind::PortActive,
        port: 1,
        qp_num: None,
    });
    Ok(())
}

/// Test knob: every QP's local ACK timeout (the wait before each
/// retransmission) is `timeout` instead of 4.096 µs × 2^`timeout` attribute;
/// `None` restores the attribute. Prefer lowering the attribute itself
/// (`MC_IB_TIMEOUT` for engines): that is what a NIC does too.
pub fn set_ack_timeout(timeout: Option<Duration>) {
    *fabric().ack_timeout_override.lock() = timeout;
}

/// `set_ack_timeout(Some(timeout))`, kept for older tests.
pub fn set_retry_timeout(timeout: Duration) {
    set_ack_timeout(Some(timeout));
}

/// The local ACK timeout a QP with RTS attribute `timeout` uses (`None`:
/// infinite, attribute 0).
pub fn ack_timeout(timeout: u8) -> Option<Duration> {
    fabric().ack_timeout(timeout)
}

/// Emulate Linux rxe (or not): with it, a QP whose `retry_cnt` is 7 (Mooncake's
/// value) retransmits a lost WR forever instead of failing it after 7
/// retransmissions. Applies to WRs lost from now on; also set by
/// `MC_SOFT_RDMA_RXE_RETRY7=1`.
pub fn emulate_rxe_retry7(on: bool) {
    fabric()
        .rxe_retry7
        .store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Retransmissions of WRs sent from `device` so far.
pub fn retransmits(device: &str) -> Result<u64> {
    let dev = fabric()
        .device(device)
        .ok_or_else(|| Error::DeviceNotFound(format!("soft device {device}")))?;
    Ok(dev.retransmits.load(Ordering::Relaxed))
}

/// Consume one dropped-packet credit of `dev` or of the fabric.
pub(crate) fn take_drop(dev_faults: &mut FaultSet) -> bool {
    take_credit(dev_faults, |f| &mut f.drop_next)
}

/// Consume one silent-READ-error credit of `dev` or of the fabric.
pub(crate) fn take_silent_read_error(dev_faults: &mut FaultSet) -> bool {
    take_credit(dev_faults, |f| &mut f.silent_read_errors)
}

/// Consume one credit of the counter `field` selects: the device's
/// first, else the fabric-wide one.
fn take_credit(dev_faults: &mut FaultSet, field: fn(&mut FaultSet) -> &mut u64) -> bool {
    let take = |credits: &mut u64| {
        let had = *credits > 0;
        *credits = credits.saturating_sub(1);
        had
    };
    take(field(dev_faults)) || take(field(&mut fabric().all_faults.lock()))
}

/// A `QP_FATAL` on QP `qpn`, as a NIC raises it: the QP goes to ERR (its
/// queued WRs flush) and its device's contexts get the event.
pub fn qp_fatal(qpn: u32) -> Result<()> {
    let fabric = fabric();
    let qp = fabric
        .qps
        .lock()
        .get(&qpn)
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| Error::InvalidArgument(format!("no soft QP {qpn}")))?;
    qp.core.lock().state = QpState::Err;
    fabric.schedule(qp.clone());
    qp.device.raise(AsyncEvent {
        kind: AsyncEventKind::QpFatal,
        port: 0,
        qp_num: Some(qpn),
    });
    Ok(())
}
