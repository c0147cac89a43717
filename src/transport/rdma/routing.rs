//! Where a slice goes: local context and peer NIC for its attempt, and
//! what happens when an attempt fails (retry on another route or fail).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::metadata::descriptor::SegmentDesc;
use crate::metadata::name;
use crate::metadata::SegmentId;
use crate::transport::SliceCarrier;

use super::memory::Region;
use super::names::NameId;
use super::selection::{
    first_pick, first_tier, select_device, select_peer_device, FirstPeer, SelectionPolicy,
};
use super::shared::Shared;
use super::worker::Slice;

impl Shared {
    /// Whether a rail of the peer other than `path` is usable now.
    pub fn has_alternative_rail(&self, target_id: SegmentId, path: &str) -> bool {
        let Some(desc) = self.tctx.metadata.segment_desc(target_id) else {
            return false;
        };
        let server = desc.rdma_server_name.as_deref().unwrap_or(&desc.name);
        desc.devices.as_deref().unwrap_or(&[]).iter().any(|d| {
            let p = name::nic_path(server, &d.name);
            p != path && self.rails.usable(&p)
        })
    }

    /// Route (or re-route) a slice: local context and peer rail for its
    /// current retry count. `None` if no route exists.
    pub(super) fn route(&self, s: &mut Slice) -> bool {
        let Some(desc) = self.tctx.metadata.segment_desc(s.target_id) else {
            return false;
        };
        let Some((bi, _)) = desc.find_buffer(s.dest, s.length) else {
            return false;
        };
        let retry = u32::from(s.retry);
        let Some(local) = self.pick_local(&self.locations.get(s.location), retry) else {
            return false;
        };
        let lkey = match self.memory.read().find(s.source) {
            Some(r) => r.lkeys.get(local).copied().unwrap_or(0),
            None => return false,
        };
        let server = desc.rdma_server_name.as_deref().unwrap_or(&desc.name);
        let devices = desc.devices.as_deref().unwrap_or(&[]);
        let local_name = &self.contexts[local].name;
        let peer = select_peer_device(&desc, bi, retry, local_name, self.cfg.policy, |i| {
            self.rails.usable(&name::nic_path(server, &devices[i].name))
        });
        let Some(pi) = peer else { return false };
        let rkey = desc.buffers[bi]
            .rkey
            .as_ref()
            .and_then(|k| k.get(pi).copied());
        let Some(rkey) = rkey else { return false };
        s.local = local;
        s.lkey = lkey;
        s.rkey = rkey;
        s.path = self
            .paths
            .intern(&name::nic_path(server, &devices[pi].name));
        log::trace!(
            "route: retry {retry} of a {} B slice to segment {}: local {} -> peer NIC {} \
             (retry order over the topology tiers; paused rails skipped)",
            s.length,
            desc.name,
            self.contexts[local].name,
            devices[pi].name
        );
        true
    }

    /// Destination affinity chose peer device `pi` for local context
    /// `local`: count whether it is the same-named NIC; warn (rate-limited)
    /// when it is not.
    fn note_affinity(&self, desc: &SegmentDesc, local: usize, pi: usize) {
        let local_name = &self.contexts[local].name;
        let peer_name = desc
            .devices
            .as_deref()
            .and_then(|d| d.get(pi))
            .map_or("", |d| d.name.as_str());
        if peer_name == local_name {
            self.counters.affinity_hits.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters
            .affinity_misses
            .fetch_add(1, Ordering::Relaxed);
        AFFINITY_LOG.warn(format_args!(
            "rdma: MC_ENABLE_DEST_DEVICE_AFFINITY missed: segment {} has no usable NIC named \
             {local_name} (absent or its rail paused); slices from {local_name} go to its \
             {peer_name} by its topology matrix instead",
            desc.name
        ));
    }

    /// `route` for a first attempt, with the per-target lookups in `pr`, the
    /// local context chosen per request and `src`, the region holding the
    /// piece's source. Returns the posting thread.
    pub(super) fn route_first(
        &self,
        piece: (u64, u64, u64),
        desc: &SegmentDesc,
        pr: &mut PeerRoutes,
        local: Option<usize>,
        src: Option<&Region>,
    ) -> Option<FirstRoute> {
        let (_, dest, length) = piece;
        let local = local?;
        let (bi, _) = desc.find_buffer(dest, length)?;
        let lkey = src?.lkeys.get(local).copied().unwrap_or(0);
        let policy = self.cfg.policy;
        let cached = pr.first_peer(desc, bi, policy);
        let pr = &*pr;
        let usable = |i: usize| pr.usable.get(i).copied().unwrap_or(false);
        let pi = match cached {
            Some(k) => pr.firsts[k].1.pick(policy.round_robin, usable),
            None => {
                let local_name = &self.contexts[local].name;
                select_peer_device(desc, bi, 0, local_name, policy, usable)
            }
        }?;
        let rkey = desc.buffers[bi].rkey.as_ref()?.get(pi).copied()?;
        pr.paths.get(pi)?;
        if policy.dest_affinity {
            self.note_affinity(desc, local, pi);
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!(
                "route: {length} B to segment {} at {dest:#x}: local {} -> peer NIC {} ({})",
                desc.name,
                self.contexts[local].name,
                self.paths.get(pr.paths[pi]),
                if policy.dest_affinity {
                    "destination affinity"
                } else {
                    "peer topology tier"
                }
            );
        }
        let posters = self.workers[local].posters.len() as u64;
        Some(FirstRoute {
            local,
            lkey,
            rkey,
            peer: pi,
            poster: (pr.hashes[pi] % posters) as usize,
        })
    }

    /// An active local context for `location` at attempt `retry`.
    pub(super) fn pick_local(&self, location: &str, retry: u32) -> Option<usize> {
        select_device(&self.matrix, location, retry, self.cfg.policy.round_robin)
            .and_then(|n| self.active_context(n))
            .or_else(|| self.pick_local_walk(location, retry))
    }

    /// `pick_local(location, 0)` with the matrix lookup and the contexts'
    /// state read once per location in `tier` (same random pick, no name
    /// compares per request).
    pub(super) fn pick_local_first(&self, location: &str, tier: &LocalTier) -> Option<usize> {
        let first = match tier.contexts.len() {
            0 => None,
            n => tier.contexts[first_pick(n, self.cfg.policy.round_robin)],
        };
        first.or_else(|| self.pick_local_walk(location, 0))
    }

    fn active_context(&self, name: &str) -> Option<usize> {
        self.contexts
            .iter()
            .position(|c| c.name == name)
            .filter(|&i| self.contexts[i].is_active())
    }

    /// When the first choice for `location` is not usable: walk the
    /// matrix's devices in retry order, then any active context.
    fn pick_local_walk(&self, location: &str, retry: u32) -> Option<usize> {
        let by_name = |n: &str| self.active_context(n);
        let n = self.contexts.len() as u32;
        (1..=n.max(1) + retry)
            .filter_map(|r| select_device(&self.matrix, location, retry + r, false))
            .find_map(by_name)
            .or_else(|| self.contexts.iter().position(|c| c.is_active()))
    }

    pub(super) fn enqueue(&self, s: Slice) {
        let cw = &self.workers[s.local];
        cw.worker_for(self.paths.hash(s.path)).push(s);
    }

    /// Consume one attempt; route again or fail when the budget is spent.
    pub fn retry_or_fail(&self, mut s: Slice, why: &str) {
        s.retry = s.retry.saturating_add(1);
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        if u32::from(s.retry) >= self.cfg.retry_cnt {
            crate::warn_limited!(
                "slice to {} ended RDMA after {} attempts ({why})",
                self.paths.get(s.path),
                s.retry
            );
            return self.give_up(s, why);
        }
        self.route_again(s, why);
    }

    /// Send a slice again whose QP died under it (its WR flushed, or ended
    /// unconfirmed): the slice was not at fault, so no attempt is consumed,
    /// up to `MC_RETRY_CNT` such times (then each costs one).
    pub fn resend(&self, mut s: Slice, why: &str) {
        if u32::from(s.resent) >= self.cfg.retry_cnt {
            return self.retry_or_fail(s, why);
        }
        s.resent += 1;
        self.counters.resent.fetch_add(1, Ordering::Relaxed);
        self.route_again(s, why);
    }

    /// Queue a slice on a fresh route, or give it up when none is left.
    fn route_again(&self, mut s: Slice, why: &str) {
        if self.route(&mut s) {
            self.enqueue(s);
        } else {
            crate::warn_limited!(
                "slice to {}: no RDMA route left ({why})",
                self.paths.get(s.path)
            );
            self.give_up(s, why);
        }
    }

    /// Move a slice off an inactive context without consuming an attempt.
    pub fn reroute(&self, mut s: Slice) {
        if self.route(&mut s) && self.contexts[s.local].is_active() {
            self.enqueue(s);
        } else {
            self.retry_or_fail(s, "local device down");
        }
    }
}

/// The local contexts a first attempt for one location picks among, in
/// matrix order, as of one submit call (`None`: a device name no context of
/// ours has, or an inactive one; a context going down later in the call is
/// caught by its posting thread, which moves the slices).
pub(super) struct LocalTier {
    contexts: Vec<Option<usize>>,
}

impl LocalTier {
    pub(super) fn new(sh: &Shared, location: &str) -> LocalTier {
        let names = first_tier(&sh.matrix, location).unwrap_or(&[]);
        LocalTier {
            contexts: names
                .iter()
                .map(|n| sh.contexts.iter().position(|c| c.name == *n))
                .map(|i| i.filter(|&i| sh.contexts[i].is_active()))
                .collect(),
        }
    }
}

/// Where a first attempt goes: local context and key, peer NIC (index into
/// `PeerRoutes::paths`) and key, posting thread.
pub(super) struct FirstRoute {
    pub local: usize,
    pub lkey: u32,
    pub rkey: u32,
    pub peer: usize,
    pub poster: usize,
}

/// Peer NIC paths of one target segment, computed once per submit call.
pub(super) struct PeerRoutes {
    pub(super) target_id: SegmentId,
    pub(super) paths: Vec<NameId>,
    pub(super) hashes: Vec<u64>,
    pub(super) usable: Vec<bool>,
    /// First-attempt peer choice per buffer index, filled as slices need it.
    firsts: Vec<(usize, FirstPeer)>,
    /// The target's failover window is open: new slices go over TCP.
    pub(super) tcp: Option<(Arc<dyn SliceCarrier>, u16)>,
}

/// Buffers of one target whose first-attempt choice a call keeps (a call
/// into more distinct buffers chooses the rest without the cache).
const FIRST_PEERS_KEPT: usize = 16;

static AFFINITY_LOG: crate::serving::RateLimited =
    crate::serving::RateLimited::new(module_path!(), std::time::Duration::from_secs(30));

impl PeerRoutes {
    pub(super) fn new(sh: &Shared, target_id: SegmentId, desc: &SegmentDesc) -> Self {
        let server = desc.rdma_server_name.as_deref().unwrap_or(&desc.name);
        let names: Vec<String> = desc
            .devices
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|d| name::nic_path(server, &d.name))
            .collect();
        let paths: Vec<NameId> = names.iter().map(|p| sh.paths.intern(p)).collect();
        let routes = PeerRoutes {
            target_id,
            hashes: paths.iter().map(|&p| sh.paths.hash(p)).collect(),
            usable: names.iter().map(|p| sh.rails.usable(p)).collect(),
            paths,
            firsts: Vec::new(),
            tcp: sh.tcp_now(target_id, desc),
        };
        if log::log_enabled!(log::Level::Trace) {
            let paused: Vec<&String> = names
                .iter()
                .zip(&routes.usable)
                .filter(|(_, &u)| !u)
                .map(|(n, _)| n)
                .collect();
            log::trace!(
                "route: segment {}: {} peer NICs, paused rails {paused:?} (skipped){}",
                desc.name,
                names.len(),
                if routes.tcp.is_some() {
                    "; failover window open: new slices go over TCP"
                } else {
                    ""
                }
            );
        }
        routes
    }

    /// Where in `firsts` the first-attempt choice for buffer `bi` is (none
    /// with destination affinity: that depends on the local device).
    fn first_peer(
        &mut self,
        desc: &SegmentDesc,
        bi: usize,
        policy: SelectionPolicy,
    ) -> Option<usize> {
        if policy.dest_affinity {
            return None;
        }
        let i = match self.firsts.iter().position(|(b, _)| *b == bi) {
            Some(i) => i,
            None if self.firsts.len() < FIRST_PEERS_KEPT => {
                self.firsts.push((bi, FirstPeer::new(desc, bi)));
                self.firsts.len() - 1
            }
            None => return None,
        };
        Some(i)
    }
}
