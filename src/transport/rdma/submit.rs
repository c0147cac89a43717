//! The submit path: cut each request into slices, route every slice to a
//! local context, peer NIC and posting thread, and queue them (one queue
//! lock and one wake-up per posting thread per call).

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::transport::{CarriedSlice, Submission};

use super::fallback::offers_tcp;
use super::names::NameId;
use super::routing::{LocalTier, PeerRoutes};
use super::shared::Shared;
use super::slicing::{cut, CutError, Piece};
use super::worker::{self, Slice};

impl Shared {
    pub(super) fn submit(&self, subs: Vec<Submission<'_>>) -> Result<()> {
        let sh = self;
        // Cut everything first: an unregistered source refuses the call.
        // One read of the memory table for the whole call.
        let mem = sh.memory.read();
        // Request i's pieces are `all[cuts[i].0]`: one buffer per call.
        let mut all: Vec<Piece> = Vec::with_capacity(subs.len());
        let mut cuts = Vec::with_capacity(subs.len());
        {
            // Location ids and first-choice contexts of this call (buffers
            // of a batch share a few locations).
            let mut locations: Vec<(&str, NameId, LocalTier)> = Vec::new();
            for s in &subs {
                let r = s.request;
                let start = all.len();
                // The source's region, found once for the request.
                let region = mem.find(r.source);
                let pieces = cut(
                    sh.cfg.slice,
                    r.source,
                    r.target_offset,
                    r.length,
                    |a| mem.find_near(a, region).map(|m| m.end()),
                    |a| {
                        s.target
                            .buffers
                            .iter()
                            .find(|b| a >= b.addr && a < b.end())
                            .map(|b| b.end())
                    },
                    &mut all,
                )
                .map(|()| start..all.len());
                if pieces.is_err() {
                    all.truncate(start);
                }
                match pieces {
                    Err(CutError::LocalNotRegistered(off)) => {
                        return Err(Error::AddressNotRegistered(format!(
                            "local address {:#x} is in no registered region",
                            r.source.wrapping_add(off)
                        )))
                    }
                    other => {
                        let name = region.map_or("*", |m| m.buf.location.as_str());
                        let li = match locations.iter().position(|(l, _, _)| *l == name) {
                            Some(i) => i,
                            None => {
                                let id = sh.locations.intern(name);
                                locations.push((name, id, LocalTier::new(sh, name)));
                                locations.len() - 1
                            }
                        };
                        let (_, location, tier) = &locations[li];
                        cuts.push((other, *location, sh.pick_local_first(name, tier), region));
                    }
                }
            }
        }
        let nposters = sh
            .workers
            .iter()
            .map(|w| w.posters.len())
            .max()
            .unwrap_or(1);
        let mut per: Vec<Vec<Slice>> = (0..sh.contexts.len() * nposters)
            .map(|_| Vec::new())
            .collect();
        let nbufs = per.len();
        let mut routes: Vec<PeerRoutes> = Vec::new();
        for (s, (pieces, location, local, region)) in subs.into_iter().zip(cuts) {
            let r = s.request;
            let pieces = match pieces {
                Ok(range) => &all[range],
                Err(e) => {
                    log::error!(
                        "request to segment {} [{:#x}, +{}) is outside its buffers: {e:?}",
                        r.target_id,
                        r.target_offset,
                        r.length
                    );
                    s.task.fail_all();
                    continue;
                }
            };
            s.task.set_slices(pieces.len() as u64);
            // Per target: peer NIC paths, rail state and posting thread,
            // looked up once per call instead of once per slice.
            let ri = match routes.iter().position(|p| p.target_id == r.target_id) {
                Some(i) => i,
                None => {
                    routes.push(PeerRoutes::new(sh, r.target_id, s.target));
                    routes.len() - 1
                }
            };
            let pr = &mut routes[ri];
            // The last slice takes the request's reference to its task:
            // one refcount increment and decrement less per request.
            let mut held = Some(s.task);
            let mut carried: Vec<CarriedSlice> = Vec::new();
            for (k, p) in pieces.iter().enumerate() {
                let Some(task) = held.as_ref() else { break };
                let (source, dest) = (r.source + p.offset, r.target_offset + p.offset);
                let piece = || CarriedSlice {
                    task: task.clone(),
                    opcode: r.opcode,
                    source,
                    dest,
                    length: p.len,
                };
                if pr.tcp.is_some() && offers_tcp(s.target, dest, p.len).is_some() {
                    // The target failed over a moment ago: TCP until its
                    // window closes (no RDMA attempt per request).
                    carried.push(piece());
                    continue;
                }
                // Routed before the slice exists; the slice holds ids, not
                // shared strings (no refcounts other threads touch).
                let src = mem.find_near(source, region);
                let Some(to) = sh.route_first((source, dest, p.len), s.target, pr, local, src)
                else {
                    if !sh.carry_or_fail(r.target_id, s.target, piece(), "no RDMA route") {
                        log::error!("no RDMA route to segment {} for {dest:#x}", r.target_id);
                    }
                    continue;
                };
                let task = if k + 1 == pieces.len() {
                    held.take()
                } else {
                    held.clone()
                };
                let Some(task) = task else { break };
                let v = &mut per[to.local * nposters + to.poster];
                if v.capacity() == 0 {
                    // An even share of the call's slices: with one posting
                    // thread (the usual case) the buffer never regrows.
                    v.reserve(all.len().div_ceil(nbufs));
                }
                v.push(Slice {
                    task,
                    opcode: r.opcode,
                    source,
                    length: p.len,
                    dest,
                    target_id: r.target_id,
                    location,
                    retry: 0,
                    resent: 0,
                    refused: false,
                    local: to.local,
                    lkey: to.lkey,
                    path: pr.paths[to.peer],
                    rkey: to.rkey,
                });
            }
            if let (Some((carrier, port)), false) = (&pr.tcp, carried.is_empty()) {
                sh.counters
                    .tcp_fallback
                    .fetch_add(carried.len() as u64, Ordering::Relaxed);
                carrier.carry(&s.target.name, *port, carried);
            }
        }
        drop(mem);
        // One queue lock and at most one wake-up per posting thread per call.
        let me = sh.me.upgrade();
        for (i, v) in per.into_iter().enumerate() {
            let cw = &sh.workers[i / nposters];
            match (&me, v.is_empty()) {
                (_, true) => {}
                (Some(me), false) => worker::submit_to(me, cw, i % nposters, v),
                (None, false) => cw.posters[i % nposters].push_many(v),
            }
        }
        Ok(())
    }
}
