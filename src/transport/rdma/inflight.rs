//! The posted WRs of one context, by WR id, and the endpoints they hold.
//!
//! DMA safety: an endpoint (its QPs) must outlive every WR posted on it.
//! Each WR names its endpoint by a slot in this table, and the slot holds
//! one `Arc<Endpoint>` with a count of the WRs that name it: posting a chain
//! and completing a poll's worth of WRs cost one count change (under the
//! table's lock, which both sides take anyway), not a refcount bounce
//! between the posting and the polling core per WR.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use crate::id_map::IdMap;

use super::endpoint_driver::Endpoint;
use super::worker::Slice;

/// The slot of an endpoint in its context's in-flight table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpRef(u32);

/// A posted WR: the slice, the endpoint and QP it went out on.
pub struct Inflight {
    pub slice: Slice,
    pub ep: EpRef,
    pub qp: usize,
    pub posted_at: Instant,
    /// Past `MC_SLICE_TIMEOUT`: its QP was moved to ERR, and the slice ends
    /// when this WR's (flush) completion arrives, never before (the NIC may
    /// still be moving its bytes).
    pub timed_out: Option<Instant>,
}

/// In-flight WRs of one context and the endpoints they keep alive.
#[derive(Default)]
pub struct InflightMap {
    pub wrs: IdMap<u64, Inflight>,
    /// Endpoint and the number of entries of `wrs` naming it; `None`: free.
    eps: Vec<Option<(Arc<Endpoint>, usize)>>,
}

impl InflightMap {
    pub fn len(&self) -> usize {
        self.wrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wrs.is_empty()
    }

    /// The slot of `ep`, counting `n` more WRs on it (insert them next).
    pub fn hold(&mut self, ep: &Arc<Endpoint>, n: usize) -> EpRef {
        let held = self
            .eps
            .iter()
            .position(|e| e.as_ref().is_some_and(|(h, _)| Arc::ptr_eq(h, ep)));
        let i = match held {
            Some(i) => i,
            None => {
                let i = match self.eps.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        self.eps.push(None);
                        self.eps.len() - 1
                    }
                };
                self.eps[i] = Some((ep.clone(), 0));
                i
            }
        };
        if let Some((_, c)) = &mut self.eps[i] {
            *c += n;
        }
        EpRef(i as u32)
    }

    /// The endpoint in slot `r` (held while a WR names it).
    pub fn endpoint(&self, r: EpRef) -> Option<&Arc<Endpoint>> {
        self.eps.get(r.0 as usize)?.as_ref().map(|(e, _)| e)
    }

    /// `n` WRs naming `r` left `wrs`. The table's reference when they were
    /// the last: drop it outside the lock (it may destroy the QPs).
    pub fn release(&mut self, r: EpRef, n: usize) -> Option<Arc<Endpoint>> {
        let e = self.eps.get_mut(r.0 as usize)?;
        let (_, c) = e.as_mut()?;
        *c = c.saturating_sub(n);
        if *c == 0 {
            return e.take().map(|(ep, _)| ep);
        }
        None
    }

    /// Remove one WR with its endpoint (for the paths that handle WRs one
    /// at a time: unaccepted posts, timeouts, shutdown).
    pub fn take(&mut self, wr_id: u64) -> Option<(Inflight, Arc<Endpoint>)> {
        let f = self.wrs.remove(&wr_id)?;
        let ep = self.endpoint(f.ep)?.clone();
        // Never the last reference: `ep` is another.
        self.release(f.ep, 1);
        Some((f, ep))
    }

    /// Remove every WR (shutdown); the endpoints' references come along.
    pub fn drain(&mut self) -> (Vec<Inflight>, Vec<Arc<Endpoint>>) {
        let wrs = self.wrs.drain().map(|(_, f)| f).collect();
        let eps = self.eps.drain(..).flatten().map(|(e, _)| e).collect();
        (wrs, eps)
    }
}

/// The in-flight map behind its lock, with its size readable without it:
/// a spinning poller asks "anything in flight?" on every turn, and that
/// read must not bounce the lock's line off the posting core.
#[derive(Default)]
pub struct InflightTable {
    map: Mutex<InflightMap>,
    len: AtomicUsize,
}

/// The locked map; its size is published when the guard drops.
pub struct InflightGuard<'a> {
    map: MutexGuard<'a, InflightMap>,
    len: &'a AtomicUsize,
}

impl InflightTable {
    pub fn lock(&self) -> InflightGuard<'_> {
        InflightGuard {
            map: self.map.lock(),
            len: &self.len,
        }
    }

    /// WRs posted and not yet completed, as of the last unlock.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

impl Deref for InflightGuard<'_> {
    type Target = InflightMap;
    fn deref(&self) -> &InflightMap {
        &self.map
    }
}

impl DerefMut for InflightGuard<'_> {
    fn deref_mut(&mut self) -> &mut InflightMap {
        &mut self.map
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let n = self.map.len();
        // Written only on change: the line stays shared between the
        // threads that read it.
        if self.len.load(Ordering::Relaxed) != n {
            self.len.store(n, Ordering::Release);
        }
    }
}
