//! NIC choice (spec §3.4 `selectDevice`, §6.3, §6.4). Pure apart from the
//! random/round-robin source for first attempts.

use std::cell::Cell;

use crate::metadata::descriptor::{PriorityMatrix, SegmentDesc};

/// How first attempts spread over equal candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SelectionPolicy {
    /// `MC_PATH_ROUNDROBIN`: thread-local round robin instead of random.
    pub round_robin: bool,
    /// `MC_ENABLE_DEST_DEVICE_AFFINITY`: prefer the peer NIC named like ours.
    pub dest_affinity: bool,
}

impl SelectionPolicy {
    pub fn from_env() -> Self {
        SelectionPolicy {
            round_robin: crate::config::env_flag("MC_PATH_ROUNDROBIN"),
            dest_affinity: crate::config::env_flag("MC_ENABLE_DEST_DEVICE_AFFINITY"),
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
    static RR: Cell<usize> = const { Cell::new(0) };
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9);
    let id = std::thread::current().id();
    let h = format!("{id:?}").bytes().fold(t, |a, b| {
        a.rotate_left(5) ^ b as u64 ^ 0x9e37_79b9_7f4a_7c15
    });
    h | 1
}

/// Index in `0..n` for a first attempt (n > 0).
pub(super) fn first_pick(n: usize, round_robin: bool) -> usize {
    if round_robin {
        RR.with(|c| {
            let v = c.get();
            c.set(v.wrapping_add(1));
            v % n
        })
    } else {
        RNG.with(|c| {
            // xorshift64*
            let mut x = c.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            c.set(x);
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        })
    }
}

/// `selectDevice(location, retry)`: a device name from the matrix entry for
/// `location` (falling back to `"*"`). Retry 0: random (or round-robin)
/// preferred, else available; retry r > 0: `(r-1) mod (|pref|+|avail|)`
/// over preferred then available.
pub fn select_device<'a>(
    matrix: &'a PriorityMatrix,
    location: &str,
    retry: u32,
    round_robin: bool,
) -> Option<&'a str> {
    if retry == 0 {
        let tier = first_tier(matrix, location)?;
        if tier.is_empty() {
            return None;
        }
        return Some(tier[first_pick(tier.len(), round_robin)].as_str());
    }
    let (pref, avail) = matrix.get(location).or_else(|| matrix.get("*"))?;
    let n = pref.len() + avail.len();
    if n == 0 {
        return None;
    }
    let i = (retry as usize - 1) % n;
    pref.iter().chain(avail.iter()).nth(i).map(String::as_str)
}

/// The devices a first attempt for `location` picks among: the preferred
/// ones, or the available ones when none is preferred.
pub fn first_tier<'a>(matrix: &'a PriorityMatrix, location: &str) -> Option<&'a [String]> {
    let (pref, avail) = matrix.get(location).or_else(|| matrix.get("*"))?;
    Some(if pref.is_empty() { avail } else { pref })
}

/// The peer device index (into `devices[]`, and the same index into the
/// buffer's `rkey[]`) for a slice landing in `peer.buffers[buffer]`.
/// `usable(i)` says whether rail `i` may be used now (not paused); a
/// paused choice falls back to the first other usable device with a key.
pub fn select_peer_device(
    peer: &SegmentDesc,
    buffer: usize,
    retry: u32,
    local_device: &str,
    policy: SelectionPolicy,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let devices = peer.devices.as_deref().unwrap_or(&[]);
    let buf = peer.buffers.get(buffer)?;
    let nkeys = buf.rkey.as_ref().map_or(0, Vec::len).min(devices.len());
    if nkeys == 0 {
        return None;
    }
    let index_of = |name: &str| devices[..nkeys].iter().position(|d| d.name == name);
    let mut choice = None;
    if policy.dest_affinity && retry == 0 {
        choice = index_of(local_device);
    }
    if choice.is_none() {
        choice = match peer.priority_matrix.as_ref().and_then(|m| m.as_ref()) {
            Some(m) if !m.is_empty() => {
                select_device(m, &buf.name, retry, policy.round_robin).and_then(index_of)
            }
            // No matrix published: every keyed device is a candidate.
            _ => Some(if retry == 0 {
                first_pick(nkeys, policy.round_robin)
            } else {
                (retry as usize - 1) % nkeys
            }),
        };
    }
    settle(choice, nkeys, usable)
}

/// A paused choice falls back to the first other usable keyed device.
fn settle(choice: Option<usize>, nkeys: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    match choice {
        Some(i) if usable(i) => Some(i),
        Some(i) => (0..nkeys).find(|&j| j != i && usable(j)),
        None => None,
    }
}

/// `select_peer_device` for first attempts into one peer buffer without
/// destination affinity, with the peer matrix lookup and the device-name
/// compares done once (a submit call cuts many slices into few buffers).
pub struct FirstPeer {
    nkeys: usize,
    /// The matrix tier as device indices (`None`: a name with no keyed
    /// device); no tier at all when the peer published no matrix.
    tier: Option<Vec<Option<usize>>>,
}

impl FirstPeer {
    pub fn new(peer: &SegmentDesc, buffer: usize) -> FirstPeer {
        let devices = peer.devices.as_deref().unwrap_or(&[]);
        let Some(buf) = peer.buffers.get(buffer) else {
            return FirstPeer {
                nkeys: 0,
                tier: None,
            };
        };
        let nkeys = buf.rkey.as_ref().map_or(0, Vec::len).min(devices.len());
        let tier = match peer.priority_matrix.as_ref().and_then(|m| m.as_ref()) {
            Some(m) if !m.is_empty() => Some(
                first_tier(m, &buf.name)
                    .unwrap_or(&[])
                    .iter()
                    .map(|n| devices[..nkeys].iter().position(|d| d.name == *n))
                    .collect(),
            ),
            _ => None,
        };
        FirstPeer { nkeys, tier }
    }

    /// The same choice `select_peer_device(peer, buffer, 0, _, policy, usable)`
    /// makes when `policy.dest_affinity` is off.
    pub fn pick(&self, round_robin: bool, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.nkeys == 0 {
            return None;
        }
        let choice = match &self.tier {
            Some(t) if t.is_empty() => None,
            Some(t) => t[first_pick(t.len(), round_robin)],
            None => Some(first_pick(self.nkeys, round_robin)),
        };
        settle(choice, self.nkeys, usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::descriptor::{BufferDesc, DeviceDesc};

    fn matrix(json: &str) -> PriorityMatrix {
        crate::topology::parse_matrix(json).unwrap()
    }

    #[test]
    fn first_attempt_uses_preferred_then_available() {
        let m = matrix(r#"{"cpu:0":[["a","b"],["c"]],"cpu:1":[[],["c"]],"*":[["z"],[]]}"#);
        for _ in 0..50 {
            let d = select_device(&m, "cpu:0", 0, false).unwrap();
            assert!(d == "a" || d == "b");
        }
        assert_eq!(select_device(&m, "cpu:1", 0, false), Some("c"));
        assert_eq!(
            select_device(&m, "cuda:3", 0, false),
            Some("z"),
            "'*' fallback"
        );
        let none = matrix(r#"{"cpu:0":[["a"],[]]}"#);
        assert_eq!(select_device(&none, "cpu:9", 0, false), None);
    }

    #[test]
    fn retries_walk_deterministically() {
        let m = matrix(r#"{"cpu:0":[["a","b"],["c"]]}"#);
        let got: Vec<_> = (1..=5)
            .map(|r| select_device(&m, "cpu:0", r, false).unwrap())
            .collect();
        assert_eq!(got, vec!["a", "b", "c", "a", "b"]);
    }

    #[test]
    fn round_robin_alternates() {
        let m = matrix(r#"{"cpu:0":[["a","b"],[]]}"#);
        let a = select_device(&m, "cpu:0", 0, true).unwrap();
        let b = select_device(&m, "cpu:0", 0, true).unwrap();
        assert_ne!(a, b);
    }

    fn peer() -> SegmentDesc {
        let dev = |n: &str| DeviceDesc {
            gid: "00".into(),
            lid: 0,
            name: n.into(),
        };
        SegmentDesc {
            name: "peer:1".into(),
            protocol: "rdma".into(),
            devices: Some(vec![dev("p0"), dev("p1")]),
            priority_matrix: Some(Some(matrix(r#"{"cpu:0":[["p1"],["p0"]]}"#))),
            buffers: vec![BufferDesc {
                addr: 0x1000,
                length: 0x1000,
                name: "cpu:0".into(),
                rkey: Some(vec![10, 11]),
                lkey: Some(vec![20, 21]),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn peer_device_follows_peer_matrix_by_name() {
        let p = peer();
        let pol = SelectionPolicy::default();
        assert_eq!(select_peer_device(&p, 0, 0, "x", pol, |_| true), Some(1));
        assert_eq!(select_peer_device(&p, 0, 2, "x", pol, |_| true), Some(0));
        // Paused preferred rail → the other one.
        assert_eq!(select_peer_device(&p, 0, 0, "x", pol, |i| i != 1), Some(0));
        assert_eq!(select_peer_device(&p, 0, 0, "x", pol, |_| false), None);
        let aff = SelectionPolicy {
            dest_affinity: true,
            ..pol
        };
        assert_eq!(select_peer_device(&p, 0, 0, "p0", aff, |_| true), Some(0));
    }

    #[test]
    fn first_peer_chooses_like_select_peer_device() {
        let pol = SelectionPolicy::default();
        let mut p = peer();
        let f = FirstPeer::new(&p, 0);
        assert_eq!(f.pick(false, |_| true), Some(1));
        assert_eq!(f.pick(false, |i| i != 1), Some(0));
        assert_eq!(f.pick(false, |_| false), None);
        assert_eq!(FirstPeer::new(&p, 7).pick(false, |_| true), None);
        // A tier naming a device we have no key for: no choice, as before.
        p.priority_matrix = Some(Some(matrix(r#"{"cpu:0":[["zz"],[]]}"#)));
        assert_eq!(FirstPeer::new(&p, 0).pick(false, |_| true), None);
        assert_eq!(select_peer_device(&p, 0, 0, "x", pol, |_| true), None);
        // No matrix: any keyed device.
        p.priority_matrix = Some(None);
        let f = FirstPeer::new(&p, 0);
        for _ in 0..20 {
            assert!(matches!(f.pick(false, |_| true), Some(0 | 1)));
        }
        p.buffers[0].rkey = Some(vec![]);
        assert_eq!(FirstPeer::new(&p, 0).pick(false, |_| true), None);
    }

    #[test]
    fn peer_without_keys_or_matrix() {
        let mut p = peer();
        p.priority_matrix = Some(None);
        for _ in 0..20 {
            let i = select_peer_device(&p, 0, 0, "x", SelectionPolicy::default(), |_| true);
            assert!(matches!(i, Some(0 | 1)));
        }
        p.buffers[0].rkey = Some(vec![]);
        assert_eq!(
            select_peer_device(&p, 0, 0, "x", SelectionPolicy::default(), |_| true),
            None
        );
        assert_eq!(
            select_peer_device(&p, 7, 0, "x", SelectionPolicy::default(), |_| true),
            None
        );
    }
}
