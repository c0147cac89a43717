//! Failover to TCP: a slice with no RDMA path left (every rail down or
//! paused, the handshake refused or timing out, no route) goes over the
//! tcp transport instead of failing, when the engine handed us a carrier
//! (both transports installed, `MC_TE_RS_TCP_FALLBACK` on) and the peer's
//! descriptor offers TCP (`tcp_fallback_port`: a te-rs peer that runs both
//! transports; a C++ peer's descriptor never does).
//!
//! Only slices whose WRs have ended (failed, flushed, never posted) are
//! handed over: every caller of `give_up` holds a slice no WR of which is
//! in flight, so no RDMA write can land after the TCP copy.
//!
//! New submissions to a peer that just failed over go straight to TCP for
//! a window (`FIRST_WINDOW`, doubled while RDMA keeps failing when tried
//! again, at most `MAX_WINDOW`); after it RDMA is tried again, so traffic
//! returns to RDMA once a rail heals, without retrying RDMA per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::metadata::descriptor::SegmentDesc;
use crate::metadata::SegmentId;
use crate::transport::{CarriedSlice, SliceCarrier};

use super::shared::Shared;
use super::worker::Slice;

/// First time new submissions to a peer skip RDMA after it failed over.
pub const FIRST_WINDOW: Duration = Duration::from_millis(250);
/// Longest such time (RDMA failing again each time it is tried).
pub const MAX_WINDOW: Duration = Duration::from_secs(4);

/// A failover that comes this many windows after the last one ended starts
/// over at `FIRST_WINDOW` (RDMA worked in between).
const QUIET_WINDOWS: u32 = 4;

#[derive(Clone, Copy, Debug)]
struct Window {
    until: Instant,
    length: Duration,
}

/// The carrier, and per peer segment the time new submissions use TCP.
#[derive(Default)]
pub struct Fallback {
    carrier: RwLock<Option<Arc<dyn SliceCarrier>>>,
    windows: Mutex<HashMap<SegmentId, Window>>,
    /// Some window was ever opened: until then submit looks at nothing.
    used: AtomicBool,
}

impl Fallback {
    pub fn set_carrier(&self, c: Option<Arc<dyn SliceCarrier>>) {
        *self.carrier.write() = c;
    }

    /// Slices with no RDMA path left have somewhere to go (both
    /// transports installed, the failover on).
    pub fn has_carrier(&self) -> bool {
        self.carrier.read().is_some()
    }

    fn carrier(&self) -> Option<Arc<dyn SliceCarrier>> {
        self.carrier.read().clone()
    }

    /// A slice to `target` just failed over at `now`: open (or keep) its
    /// window. Returns the window's length when a new one opened.
    fn note(&self, target: SegmentId, now: Instant) -> Option<Duration> {
        self.used.store(true, Ordering::Release);
        let mut g = self.windows.lock();
        let w = g.entry(target).or_insert(Window {
            until: now,
            length: Duration::ZERO,
        });
        if now < w.until {
            return None;
        }
        let quiet = w.until + w.length * QUIET_WINDOWS;
        w.length = if w.length.is_zero() || now > quiet {
            FIRST_WINDOW
        } else {
            (w.length * 2).min(MAX_WINDOW)
        };
        w.until = now + w.length;
        Some(w.length)
    }

    /// New submissions to `target` go over TCP now.
    pub fn in_window(&self, target: SegmentId, now: Instant) -> bool {
        if !self.used.load(Ordering::Acquire) {
            return false;
        }
        self.windows
            .lock()
            .get(&target)
            .is_some_and(|w| now < w.until)
    }
}

/// Whether `desc` lets a piece `[dest, dest+len)` go over TCP: it offers a
/// port, and the buffer is remote-accessible (RDMA would refuse a buffer
/// with no rkeys; TCP must not open it).
pub fn offers_tcp(desc: &SegmentDesc, dest: u64, len: u64) -> Option<u16> {
    let port = desc.tcp_fallback_port.filter(|&p| p != 0)?;
    let (_, b) = desc.find_buffer(dest, len)?;
    b.rkey.as_ref().filter(|k| !k.is_empty())?;
    Some(port)
}

impl Shared {
    /// RDMA has no path left for `s` (none of its WRs is in flight): send
    /// it over TCP if both sides allow, else fail it.
    pub fn give_up(&self, s: Slice, why: &str) {
        if let Some(s) = self.try_carry(s, why) {
            self.fail_slice(s);
        }
    }

    /// `give_up` for a slice that could also go on waiting for RDMA: it
    /// goes over TCP if both sides allow, else it comes back.
    pub fn try_carry(&self, s: Slice, why: &str) -> Option<Slice> {
        if !self.fallback.has_carrier() {
            return Some(s);
        }
        let Some(desc) = self.tctx.metadata.segment_desc(s.target_id) else {
            return Some(s);
        };
        if offers_tcp(&desc, s.dest, s.length).is_none() {
            return Some(s);
        }
        let target = s.target_id;
        let slice = CarriedSlice {
            task: s.task,
            opcode: s.opcode,
            source: s.source,
            dest: s.dest,
            length: s.length,
        };
        self.carry_or_fail(target, &desc, slice, why);
        None
    }

    /// `give_up` for a piece that never became a slice (no first route).
    /// Returns whether it went over TCP (else it failed).
    pub(super) fn carry_or_fail(
        &self,
        target: SegmentId,
        desc: &SegmentDesc,
        slice: CarriedSlice,
        why: &str,
    ) -> bool {
        let carrier = self.fallback.carrier();
        let port = offers_tcp(desc, slice.dest, slice.length);
        let (Some(carrier), Some(port)) = (carrier, port) else {
            self.counters.failed_slices.fetch_add(1, Ordering::Relaxed);
            slice.task.slice_failed();
            return false;
        };
        if let Some(w) = self.fallback.note(target, Instant::now()) {
            self.counters
                .tcp_fallback_windows
                .fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(
                "segment '{}': no RDMA path left ({why}); its slices go over TCP, new requests try RDMA again in {w:?}",
                desc.name
            );
        }
        self.counters.tcp_fallback.fetch_add(1, Ordering::Relaxed);
        carrier.carry(&desc.name, port, vec![slice]);
        true
    }

    /// The carrier and port for new submissions to `target`, while its
    /// failover window is open (`desc` is its descriptor).
    pub(super) fn tcp_now(
        &self,
        target: SegmentId,
        desc: &SegmentDesc,
    ) -> Option<(Arc<dyn SliceCarrier>, u16)> {
        let port = desc.tcp_fallback_port.filter(|&p| p != 0)?;
        if !self.fallback.in_window(target, Instant::now()) {
            return None;
        }
        Some((self.fallback.carrier()?, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_double_while_rdma_keeps_failing_and_reset_after_quiet() {
        let f = Fallback::default();
        let t0 = Instant::now();
        assert!(!f.in_window(1, t0));
        assert_eq!(f.note(1, t0), Some(FIRST_WINDOW));
        assert!(f.in_window(1, t0));
        assert!(!f.in_window(2, t0));
        // More failovers inside the window open nothing new.
        assert_eq!(f.note(1, t0 + FIRST_WINDOW / 2), None);
        // RDMA tried again after the window and failed again: doubled.
        let t1 = t0 + FIRST_WINDOW + Duration::from_millis(1);
        assert!(!f.in_window(1, t1));
        assert_eq!(f.note(1, t1), Some(FIRST_WINDOW * 2));
        let mut t = t1;
        let mut w = FIRST_WINDOW * 2;
        for _ in 0..10 {
            t += w + Duration::from_millis(1);
            w = f.note(1, t).unwrap();
        }
        assert_eq!(w, MAX_WINDOW);
        // RDMA worked for a while: the next failover starts small again.
        let later = t + w + MAX_WINDOW * (QUIET_WINDOWS + 1);
        assert_eq!(f.note(1, later), Some(FIRST_WINDOW));
    }

    #[test]
    fn tcp_is_offered_only_for_remote_accessible_buffers_with_a_port() {
        use crate::metadata::descriptor::BufferDesc;
        let mut d = SegmentDesc {
            protocol: "rdma".into(),
            buffers: vec![
                BufferDesc {
                    addr: 0x1000,
                    length: 0x1000,
                    name: "cpu:0".into(),
                    rkey: Some(vec![7]),
                    lkey: Some(vec![8]),
                },
                BufferDesc {
                    addr: 0x4000,
                    length: 0x1000,
                    name: "cpu:0".into(),
                    rkey: Some(vec![]),
                    lkey: Some(vec![]),
                },
            ],
            ..Default::default()
        };
        assert_eq!(offers_tcp(&d, 0x1000, 16), None, "no port advertised");
        d.tcp_fallback_port = Some(15001);
        assert_eq!(offers_tcp(&d, 0x1000, 16), Some(15001));
        assert_eq!(offers_tcp(&d, 0x4000, 16), None, "not remote-accessible");
        assert_eq!(offers_tcp(&d, 0x1ff0, 0x20), None, "outside one buffer");
    }
}
