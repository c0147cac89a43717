//! The posted WRs of one context, as chains, and the endpoints they hold.
//!
//! Selective signaling: the WRs of one post on one QP go out in chains of
//! at most `chain_len`, and only a chain's last WR asks for a completion.
//! An RC send queue completes in order, so that one completion says every
//! WR of the chain landed; a WR that fails completes (in error) whether
//! signaled or not, and so does every WR flushed after it (IB spec
//! 10.8.6; rxe and mlx5 do the same). So a completion for WR `k` of a chain
//! also ends its WRs before `k` that no completion named: they succeeded.
//! The poller handles one completion per chain instead of one per WR.
//!
//! What a completion proves: a success, that its WR and every WR before it
//! on the QP landed. An error, that the WRs before it landed (a failing WR
//! completes whether signaled or not). A flush proves nothing about the
//! WR before it: Linux rxe (6.1) ends a READ whose retried response it
//! takes out of sequence with status success and no bytes, posts a
//! completion only if it was signaled, and moves the QP to ERR; the WRs
//! after it flush. So the slices a flush ends are done again (`poll.rs`),
//! and on devices that can do this (`Device::confirms_reads`) a chain that
//! ends in a READ carries one more WR, a zero-length WRITE, which alone is
//! signaled: its success is what says the READs landed.
//!
//! DMA safety: an endpoint (its QPs) must outlive every WR posted on it.
//! Each chain names its endpoint by a slot in this table, and the slot
//! holds one `Arc<Endpoint>` with a count of the chains that name it.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use crate::id_map::IdMap;

use super::endpoint_driver::Endpoint;
use super::worker::Slice;

/// Most slices a chain may hold (one WR index is kept for the
/// confirming WR).
const CHAIN_LIMIT: usize = (1 << INDEX_BITS) - 1;

/// Low bits of a WR id: the WR's index in its chain.
const INDEX_BITS: u32 = 10;

/// WRs per chain on QPs of `max_wr` slots: half of them, so that a QP
/// always has a chain's worth of slots to post into while another chain
/// is moving (a chain's slots come back only with its completion).
pub fn chain_len(max_wr: u32) -> usize {
    (max_wr as usize / 2).clamp(1, CHAIN_LIMIT)
}

/// The id of WR `index` of chain `chain`.
pub fn wr_id(chain: u64, index: usize) -> u64 {
    (chain << INDEX_BITS) | index as u64
}

/// Chain and index of a WR id.
pub fn split(wr_id: u64) -> (u64, usize) {
    (
        wr_id >> INDEX_BITS,
        (wr_id & ((1 << INDEX_BITS) - 1)) as usize,
    )
}

/// The slot of an endpoint in its context's in-flight table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpRef(u32);

/// The WRs of one chain still waiting for their end.
pub struct Chain {
    /// Slices not ended yet, in post order; `slices[0]` went out as WR
    /// index `first` of the chain.
    pub slices: Vec<Slice>,
    pub first: usize,
    pub ep: EpRef,
    pub qp: usize,
    pub posted_at: Instant,
    /// A zero-length WRITE follows the slices' WRs (index `first +
    /// slices.len()`) and is the chain's signaled WR.
    pub confirm: bool,
    /// When its QP was moved to ERR with these WRs on it (past
    /// `MC_SLICE_TIMEOUT`, or a post the QP took only part of): the slices
    /// end when their completions (flushes) arrive, never before (the NIC
    /// may still be moving their bytes), or after `flush_grace`.
    pub timed_out: Option<Instant>,
}

/// What one completion ended: `slices` in post order, each WR before the
/// completed one (which is the last slice's, or the confirming WR when
/// `by_confirm`).
pub struct Ended {
    pub slices: Vec<Slice>,
    /// The completion named the chain's confirming WR: every slice in
    /// `slices` went out before it.
    pub by_confirm: bool,
    /// WRs ended (the slices, and the confirming WR if it was named): the
    /// QP slots they give back.
    pub wrs: usize,
    pub ep: EpRef,
    pub qp: usize,
    pub timed_out: bool,
    /// The chain is gone from the table (release its endpoint hold).
    pub chain_done: bool,
}

/// In-flight chains of one context and the endpoints they keep alive
/// (generic only so that tests need no device).
pub struct InflightMap<E = Endpoint> {
    pub chains: IdMap<u64, Chain>,
    /// WRs in `chains` (what a CQ may still have to report).
    wrs: usize,
    /// Endpoint and the number of chains naming it; `None`: free.
    eps: Vec<Option<(Arc<E>, usize)>>,
}

impl<E> Default for InflightMap<E> {
    fn default() -> Self {
        InflightMap {
            chains: IdMap::default(),
            wrs: 0,
            eps: Vec::new(),
        }
    }
}

impl<E> InflightMap<E> {
    /// WRs posted and not yet ended.
    pub fn len(&self) -> usize {
        self.wrs
    }

    pub fn is_empty(&self) -> bool {
        self.wrs == 0
    }

    /// Record chain `id`; its endpoint was held for it (`hold`).
    pub fn insert(&mut self, id: u64, chain: Chain) {
        self.wrs += chain.slices.len() + usize::from(chain.confirm);
        self.chains.insert(id, chain);
    }

    /// The slot of `ep`, counting one more chain on it.
    pub fn hold(&mut self, ep: &Arc<E>) -> EpRef {
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
            *c += 1;
        }
        EpRef(i as u32)
    }

    /// The endpoint in slot `r` (held while a chain names it).
    pub fn endpoint(&self, r: EpRef) -> Option<&Arc<E>> {
        self.eps.get(r.0 as usize)?.as_ref().map(|(e, _)| e)
    }

    /// A chain naming `r` left the table. The table's reference when it
    /// was the last: drop it outside the lock (it may destroy the QPs).
    pub fn release(&mut self, r: EpRef) -> Option<Arc<E>> {
        let e = self.eps.get_mut(r.0 as usize)?;
        let (_, c) = e.as_mut()?;
        *c = c.saturating_sub(1);
        if *c == 0 {
            return e.take().map(|(ep, _)| ep);
        }
        None
    }

    /// A completion named `wr_id`: end its WR and the WRs of its chain
    /// before it. `None` for an id this table does not hold (a WR ended
    /// already, by a timeout's grace or at shutdown).
    pub fn resolve(&mut self, wr_id: u64) -> Option<Ended> {
        let (id, index) = split(wr_id);
        let ch = self.chains.get_mut(&id)?;
        let k = index.checked_sub(ch.first)? + 1;
        let by_confirm = ch.confirm && k == ch.slices.len() + 1;
        if k > ch.slices.len() && !by_confirm {
            return None;
        }
        let chain_done = by_confirm || (k == ch.slices.len() && !ch.confirm);
        let (ep, qp, timed_out) = (ch.ep, ch.qp, ch.timed_out.is_some());
        let slices = if chain_done {
            self.chains.remove(&id)?.slices
        } else {
            ch.first = index + 1;
            ch.slices.drain(..k).collect()
        };
        let wrs = slices.len() + usize::from(by_confirm);
        self.wrs -= wrs;
        Some(Ended {
            slices,
            by_confirm,
            wrs,
            ep,
            qp,
            timed_out,
            chain_done,
        })
    }

    /// Remove a whole chain with its endpoint (unaccepted posts, a
    /// timeout's grace, shutdown).
    pub fn take(&mut self, id: u64) -> Option<(Chain, Arc<E>)> {
        let ch = self.chains.remove(&id)?;
        self.wrs -= ch.slices.len() + usize::from(ch.confirm);
        let ep = self.endpoint(ch.ep)?.clone();
        // Never the last reference: `ep` is another.
        self.release(ch.ep);
        Some((ch, ep))
    }

    /// Take back the slices of chain `id` from index `at` of its post on
    /// (the QP did not accept them), and its confirming WR, which came
    /// after them.
    pub fn split_off(&mut self, id: u64, at: usize) -> Vec<Slice> {
        let Some(ch) = self.chains.get_mut(&id) else {
            return Vec::new();
        };
        let keep = at.saturating_sub(ch.first).min(ch.slices.len());
        let back = ch.slices.split_off(keep);
        self.wrs -= back.len() + usize::from(ch.confirm);
        ch.confirm = false;
        back
    }

    /// Remove every chain (shutdown); the endpoints' references come along.
    pub fn drain(&mut self) -> (Vec<Slice>, Vec<Arc<E>>) {
        let slices = self.chains.drain().flat_map(|(_, c)| c.slices).collect();
        self.wrs = 0;
        let eps = self.eps.drain(..).flatten().map(|(e, _)| e).collect();
        (slices, eps)
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

    /// WRs posted and not yet ended, as of the last unlock.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Opcode, Task, TaskStatus, TransferRequest};
    use crate::transport::rdma::names::Names;

    /// Chain `id` of `n` one-slice tasks on `ep`, as `post_slices` records
    /// it; returns the tasks.
    fn post(m: &mut InflightMap<()>, ep: &Arc<()>, id: u64, n: usize) -> Vec<Arc<Task>> {
        let path = Names::default().intern("peer@dev");
        let tasks: Vec<Arc<Task>> = (0..n)
            .map(|i| {
                let t = Arc::new(Task::new(TransferRequest {
                    opcode: Opcode::Write,
                    source: i as u64 * 8,
                    target_id: 1,
                    target_offset: 0,
                    length: 8,
                }));
                t.set_slices(1);
                t
            })
            .collect();
        let slices = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| Slice {
                task: t.clone(),
                opcode: Opcode::Write,
                source: i as u64 * 8,
                length: 8,
                dest: 0,
                target_id: 1,
                location: path,
                retry: 0,
                resent: 0,
                refused: false,
                local: 0,
                lkey: 0,
                path,
                rkey: 0,
            })
            .collect();
        let held = m.hold(ep);
        m.insert(
            id,
            Chain {
                slices,
                first: 0,
                ep: held,
                qp: 0,
                posted_at: Instant::now(),
                confirm: false,
                timed_out: None,
            },
        );
        tasks
    }

    /// The sources of the slices a completion ended, in order.
    fn sources(e: &Ended) -> Vec<u64> {
        e.slices.iter().map(|s| s.source).collect()
    }

    #[test]
    fn a_chains_one_completion_ends_all_its_wrs() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post(&mut m, &ep, 7, 3);
        assert_eq!(m.len(), 3);
        let e = m.resolve(wr_id(7, 2)).expect("the signaled WR");
        assert_eq!(sources(&e), [0, 8, 16]);
        assert!(e.chain_done);
        assert!(m.is_empty() && m.chains.is_empty());
        // The table's hold is the endpoint's last but ours.
        assert_eq!(m.release(e.ep).map(|a| Arc::ptr_eq(&a, &ep)), Some(true));
        assert!(m.resolve(wr_id(7, 2)).is_none(), "ended once");
    }

    #[test]
    fn an_error_mid_chain_ends_the_wrs_before_it_and_flushes_end_the_rest() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post(&mut m, &ep, 3, 4);
        // WR 1 failed: WR 0 landed silently before it.
        let e = m.resolve(wr_id(3, 1)).unwrap();
        assert_eq!(sources(&e), [0, 8]);
        assert!(!e.chain_done);
        assert_eq!(m.len(), 2);
        // Each later WR's flush ends it alone; the last ends the chain.
        let e = m.resolve(wr_id(3, 2)).unwrap();
        assert_eq!(sources(&e), [16]);
        assert!(m.resolve(wr_id(3, 1)).is_none(), "an index already ended");
        let e = m.resolve(wr_id(3, 3)).unwrap();
        assert_eq!(sources(&e), [24]);
        assert!(e.chain_done && m.is_empty());
    }

    #[test]
    fn unknown_and_out_of_range_ids_end_nothing() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post(&mut m, &ep, 1, 2);
        assert!(m.resolve(wr_id(2, 0)).is_none());
        assert!(m.resolve(wr_id(1, 2)).is_none());
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_post_taken_in_part_gives_back_the_tail_and_take_the_rest() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        let tasks = post(&mut m, &ep, 5, 4);
        let back = m.split_off(5, 1);
        assert_eq!(
            back.iter().map(|s| s.source).collect::<Vec<_>>(),
            [8, 16, 24]
        );
        assert_eq!(m.len(), 1);
        let (ch, held) = m.take(5).unwrap();
        assert_eq!(ch.slices.len(), 1);
        assert!(Arc::ptr_eq(&held, &ep));
        assert!(m.is_empty() && m.endpoint(ch.ep).is_none(), "hold released");
        drop((ch, back));
        // Nothing ended a task: the caller decides their fate.
        assert!(tasks.iter().all(|t| t.status() == TaskStatus::Waiting));
    }

    #[test]
    fn chains_share_their_endpoints_slot_until_the_last_ends() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post(&mut m, &ep, 1, 1);
        post(&mut m, &ep, 2, 1);
        let a = m.resolve(wr_id(1, 0)).unwrap();
        assert!(m.release(a.ep).is_none(), "chain 2 still holds it");
        let b = m.resolve(wr_id(2, 0)).unwrap();
        assert_eq!(a.ep, b.ep);
        assert!(m.release(b.ep).is_some());
        let (slices, eps) = m.drain();
        assert!(slices.is_empty() && eps.is_empty());
    }

    #[test]
    fn chain_length_is_half_the_queue_within_the_id_bits() {
        assert_eq!(chain_len(256), 128);
        assert_eq!(chain_len(1), 1);
        assert_eq!(chain_len(65535), CHAIN_LIMIT);
        // The longest chain's confirming WR still has an index.
        let id = wr_id(0x1234, CHAIN_LIMIT);
        assert_eq!(split(id), (0x1234, CHAIN_LIMIT));
    }

    /// `post`, with a confirming WR after the slices.
    fn post_confirmed(m: &mut InflightMap<()>, ep: &Arc<()>, id: u64, n: usize) {
        post(m, ep, id, n);
        m.chains.get_mut(&id).unwrap().confirm = true;
        m.wrs += 1;
    }

    #[test]
    fn a_confirmed_chain_ends_at_its_confirming_wr() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post_confirmed(&mut m, &ep, 4, 3);
        assert_eq!(m.len(), 4, "three READs and their confirmation");
        let e = m.resolve(wr_id(4, 3)).expect("the confirming WR");
        assert!(e.by_confirm && e.chain_done);
        assert_eq!((sources(&e), e.wrs), (vec![0, 8, 16], 4));
        assert!(m.is_empty() && m.chains.is_empty());
    }

    #[test]
    fn a_flushed_confirmed_chain_ends_its_slices_then_its_confirmation() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post_confirmed(&mut m, &ep, 6, 2);
        // The QP died: each WR flushes, the confirming WR last.
        let e = m.resolve(wr_id(6, 0)).unwrap();
        assert!(!e.by_confirm && !e.chain_done && e.wrs == 1);
        let e = m.resolve(wr_id(6, 1)).unwrap();
        assert!(
            !e.by_confirm && !e.chain_done,
            "the confirmation is still out"
        );
        let e = m.resolve(wr_id(6, 2)).unwrap();
        assert!(e.by_confirm && e.chain_done && e.slices.is_empty() && e.wrs == 1);
        assert!(m.is_empty() && m.chains.is_empty());
    }

    #[test]
    fn a_post_cut_before_the_confirmation_takes_it_back() {
        let mut m = InflightMap::<()>::default();
        let ep = Arc::new(());
        post_confirmed(&mut m, &ep, 8, 4);
        // The QP took the four READs but not the confirming WR.
        assert!(m.split_off(8, 4).is_empty());
        assert_eq!(m.len(), 4);
        assert!(m.resolve(wr_id(8, 4)).is_none(), "no confirmation went out");
        let e = m.resolve(wr_id(8, 3)).unwrap();
        assert!(e.chain_done && e.wrs == 4);
    }
}
