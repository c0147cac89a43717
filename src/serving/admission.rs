//! Connection caps of one server: in total and per source IP. A `Ticket`
//! holds one admitted connection's place and gives it back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
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
    counts: Arc<Mutex<Counts>>,
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
        if c.total >= self.limits.max_total {
            return Err(Refusal::Total(c.total));
        }
        let n = c.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= self.limits.max_per_ip {
            return Err(Refusal::PerIp(n));
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Ticket {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Connections currently admitted.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
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
        let z: IpAddr = "10.0.0.3".parse().unwrap();
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::PerIp(2)));
        let _t3 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).err(), Some(Refusal::Total(3)));
        drop(t1);
        assert_eq!(a.open(), 2);
        assert!(a.admit(x).is_ok());
    }
}
