//! Connection caps of one server: in total and per source IP. A `Ticket`
//! holds one admitted connection's place and gives it back when dropped.
//!
//! Fair share: when the server is full, a newcomer from an address holding
//! at least two connections fewer than the busiest address is admitted, and
//! the busiest address's oldest connection is marked evicted (its server
//! closes it at its next sweep). So a few addresses cannot keep every slot
//! from the rest, however many connections they open.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::ratelog::RateLimited;

static EVICT_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Marked evicted, not closed yet (they do not count against the cap).
    evicting: usize,
    next_id: u64,
    per_ip: HashMap<IpAddr, PerIp>,
}

#[derive(Default)]
struct PerIp {
    /// Admitted connections, oldest first, with their eviction flags.
    tickets: BTreeMap<u64, Arc<AtomicBool>>,
    evicting: usize,
}

impl PerIp {
    fn live(&self) -> usize {
        self.tickets.len() - self.evicting
    }
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Total(usize),
    PerIp(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(f, "{n} connections open (total cap)"),
            Refusal::PerIp(n) => write!(f, "{n} connections open from this address (per-IP cap)"),
        }
    }
}

pub struct Admission {
    limits: AdmissionLimits,
    counts: Arc<Mutex<Counts>>,
}

pub struct Ticket {
    ip: IpAddr,
    id: u64,
    evicted: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
}

impl Ticket {
    /// Another address's newcomer needs this place: close the connection.
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut c = self.counts.lock();
        let n = c.per_ip.get(&ip).map_or(0, PerIp::live);
        if n >= self.limits.max_per_ip {
            return Err(Refusal::PerIp(n));
        }
        if c.total - c.evicting >= self.limits.max_total {
            let live = c.total - c.evicting;
            let Some((victim, held)) = c
                .per_ip
                .iter()
                .map(|(a, p)| (*a, p.live()))
                .max_by_key(|&(_, held)| held)
                .filter(|&(_, held)| held > n + 1)
            else {
                return Err(Refusal::Total(live));
            };
            let v = c.per_ip.get_mut(&victim).expect("listed above");
            if let Some(flag) = v.tickets.values().find(|f| !f.load(Ordering::Relaxed)) {
                flag.store(true, Ordering::Relaxed);
                v.evicting += 1;
                c.evicting += 1;
                EVICT_LOG.warn(format_args!(
                    "server full ({live} connections): closing the oldest of {victim}'s {held} to admit {ip} (fair share per address)"
                ));
            }
        }
        c.total += 1;
        let id = c.next_id;
        c.next_id += 1;
        let evicted = Arc::new(AtomicBool::new(false));
        c.per_ip
            .entry(ip)
            .or_default()
            .tickets
            .insert(id, evicted.clone());
        Ok(Ticket {
            ip,
            id,
            evicted,
            counts: self.counts.clone(),
        })
    }

    /// Connections currently admitted.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }

    /// Connections marked evicted and not closed yet.
    pub fn evicting(&self) -> usize {
        self.counts.lock().evicting
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total -= 1;
        let evicted = self.evicted();
        if evicted {
            c.evicting -= 1;
        }
        if let Some(p) = c.per_ip.get_mut(&self.ip) {
            p.tickets.remove(&self.id);
            if evicted {
                p.evicting -= 1;
            }
            if p.tickets.is_empty() {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_total_and_tickets_give_back() {
        let a = Admission::new(AdmissionLimits {
            max_total: 3,
            max_per_ip: 2,
        });
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::PerIp(2)));
        let _t3 = a.admit(y).unwrap();
        // Full, and y is within one of x: no eviction.
        assert_eq!(a.admit(y).err(), Some(Refusal::Total(3)));
        assert_eq!(a.evicting(), 0);
        drop(t1);
        assert_eq!(a.open(), 2);
        assert!(a.admit(x).is_ok());
    }

    #[test]
    fn a_full_server_evicts_the_busiest_address_oldest_first() {
        let a = Admission::new(AdmissionLimits {
            max_total: 4,
            max_per_ip: 4,
        });
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let z: IpAddr = "10.0.0.3".parse().unwrap();
        let xs: Vec<Ticket> = (0..4).map(|_| a.admit(x).unwrap()).collect();
        assert_eq!(a.admit(x).err(), Some(Refusal::PerIp(4)));
        let ty = a.admit(y).expect("y is below its fair share");
        assert!(xs[0].evicted(), "x's oldest makes room");
        assert!(xs[1..].iter().all(|t| !t.evicted()));
        assert_eq!((a.open(), a.evicting()), (5, 1));
        let _tz = a.admit(z).unwrap();
        assert!(xs[1].evicted());
        // x now holds 2 live, y and z 1 each: nobody is 2 above a newcomer
        // from y.
        assert_eq!(a.admit(y).err(), Some(Refusal::Total(4)));
        drop(xs);
        assert_eq!((a.open(), a.evicting()), (2, 0));
        drop(ty);
        assert_eq!(a.open(), 1);
    }
}
