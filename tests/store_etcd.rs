//! etcd store against a real etcd (TE_TEST_ETCD, from scripts/services.sh).

#[path = "store_common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::metadata::store::etcd::EtcdStore;
use transfer_engine::metadata::store::{self, MetadataStore};

fn etcd() -> Option<String> {
    common::service_env("TE_TEST_ETCD")
}

#[test]
fn round_trip_missing_and_odd_keys() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.read();
    let s = EtcdStore::new(&addr).unwrap();
    common::round_trip(&s);
    common::missing_key(&s);
    common::odd_keys(&s);
}

#[test]
fn connection_string_forms() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.read();
    for conn in [addr.clone(), format!("etcd://{addr}")] {
        let s = store::connect(&conn).unwrap().expect("a store");
        assert!(s.trailing_newline(), "etcd values are FastWriter text");
        common::round_trip(s.as_ref());
    }
}

#[test]
fn large_value() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.read();
    common::large_value(&EtcdStore::new(&addr).unwrap());
}

#[test]
fn concurrent_use() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.read();
    common::concurrent(Arc::new(EtcdStore::new(&addr).unwrap()));
}

#[test]
fn fails_over_to_a_live_endpoint() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.read();
    let dead = dead_endpoint();
    let s = EtcdStore::new(&format!("etcd://{dead};{addr}")).unwrap();
    common::round_trip(&s);
    let s = EtcdStore::new(&format!("{dead},{addr}")).unwrap();
    common::round_trip(&s);
}

#[test]
fn unreachable_fails_fast() {
    let s = EtcdStore::new(&format!("etcd://{};{}", dead_endpoint(), dead_endpoint())).unwrap();
    common::unreachable(&s, Duration::from_secs(10));
}

#[test]
fn cluster_id_isolation() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.read();
    common::cluster_isolation(&addr, &EtcdStore::new(&addr).unwrap(), true);
}

#[test]
fn survives_an_etcd_restart() {
    let Some(addr) = etcd() else { return };
    let _g = common::SERVICE_LOCK.write();
    let s = EtcdStore::new(&addr).unwrap();
    let key = common::unique("restart");
    s.set(&key, "{\"before\":true}").unwrap();
    common::restart_service("etcd");
    // Same data dir: the key survives, and the same store object works again.
    let got = common::eventually(Duration::from_secs(20), || s.get(&key));
    assert_eq!(got.as_deref(), Some("{\"before\":true}"));
    s.set(&key, "{\"after\":true}").unwrap();
    assert_eq!(s.get(&key).unwrap().as_deref(), Some("{\"after\":true}"));
    s.remove(&key).unwrap();
    let t = Instant::now();
    assert_eq!(s.get(&key).unwrap(), None);
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}
