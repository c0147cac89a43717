//! Redis store against a real redis-server (TE_TEST_REDIS, from
//! scripts/services.sh).

#[path = "store_common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use transfer_engine::metadata::store::redis::RedisStore;
use transfer_engine::metadata::store::{self, MetadataStore};

fn redis_url() -> Option<String> {
    common::service_env("TE_TEST_REDIS")
}

/// A store built with exactly these MC_REDIS_* variables set.
fn store_with_env(url: &str, vars: &[(&str, &str)]) -> RedisStore {
    let _g = common::ENV_LOCK.lock();
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let s = RedisStore::new(url);
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    s.expect("redis store")
}

fn plain(url: &str) -> RedisStore {
    store_with_env(url, &[])
}

#[test]
fn round_trip_missing_and_odd_keys() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    let s = plain(&url);
    common::round_trip(&s);
    common::missing_key(&s);
    common::odd_keys(&s);
}

#[test]
fn connect_through_connection_string() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    let s = {
        let _e = common::ENV_LOCK.lock();
        store::connect(&url).unwrap().expect("a store")
    };
    assert!(s.trailing_newline(), "redis values are FastWriter text");
    common::round_trip(s.as_ref());
}

#[test]
fn large_value() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    common::large_value(&plain(&url));
}

#[test]
fn concurrent_use() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    common::concurrent(Arc::new(plain(&url)));
}

#[test]
fn db_index_selects_a_database() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    let db5 = store_with_env(&url, &[("MC_REDIS_DB_INDEX", "5")]);
    let db0 = plain(&url);
    let key = common::unique("db");
    db5.set(&key, "{\"db\":5}").unwrap();
    assert_eq!(db5.get(&key).unwrap().as_deref(), Some("{\"db\":5}"));
    assert_eq!(db0.get(&key).unwrap(), None, "db 0 must not see db 5");
    // The URL's /db form reaches the same database.
    let url5 = plain(&format!("{}/5", url.trim_end_matches('/')));
    assert_eq!(url5.get(&key).unwrap().as_deref(), Some("{\"db\":5}"));
    db5.remove(&key).unwrap();
    // Out of range: Mooncake warns and uses 0.
    let bad = store_with_env(&url, &[("MC_REDIS_DB_INDEX", "300")]);
    bad.set(&key, "{}").unwrap();
    assert_eq!(db0.get(&key).unwrap().as_deref(), Some("{}"));
    db0.remove(&key).unwrap();
}

#[test]
fn password_is_sent_as_auth() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    // The test server has no password, so an AUTH must be refused: proves we
    // send it, and that a refused AUTH is a clear error rather than a hang.
    let s = store_with_env(&url, &[("MC_REDIS_PASSWORD", "wrong")]);
    let e = s
        .get("k")
        .expect_err("AUTH against a password-less server fails");
    assert!(
        e.to_string().to_ascii_lowercase().contains("auth") || e.to_string().contains("password"),
        "{e}"
    );
}

#[test]
fn unreachable_fails_fast() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let s = plain(&format!("redis://127.0.0.1:{port}"));
    common::unreachable(&s, Duration::from_secs(10));
}

#[test]
fn cluster_id_isolation() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.read();
    common::cluster_isolation(&url, &plain(&url), true);
}

#[test]
fn survives_a_redis_restart() {
    let Some(url) = redis_url() else { return };
    let _g = common::SERVICE_LOCK.write();
    let s = plain(&url);
    let key = common::unique("restart");
    s.set(&key, "{\"before\":true}").unwrap();
    common::restart_service("redis");
    // No persistence: the key is gone, but the same store reconnects.
    let got = common::eventually(Duration::from_secs(20), || s.get(&key));
    assert_eq!(got, None);
    s.set(&key, "{\"after\":true}").unwrap();
    assert_eq!(s.get(&key).unwrap().as_deref(), Some("{\"after\":true}"));
    s.remove(&key).unwrap();
}
