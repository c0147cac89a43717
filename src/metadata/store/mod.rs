//! Metadata stores: get/set/remove of JSON text by key. `connect` picks the
//! backend from Mooncake's connection string (spec §3.1).

pub mod etcd;
pub mod http;
pub mod redis;

use crate::error::{Error, Result};

pub trait MetadataStore: Send + Sync {
    /// `Ok(None)` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<String>>;
    fn set(&self, key: &str, value: &str) -> Result<()>;
    fn remove(&self, key: &str) -> Result<()>;
    /// The URL, for log lines.
    fn describe(&self) -> String;
    /// Whether values are written JsonCpp `FastWriter`-style with a trailing
    /// `\n` (etcd, Redis) rather than compact without one (HTTP) (spec §3.1).
    fn trailing_newline(&self) -> bool {
        true
    }
}

/// The exact string that selects peer-to-peer metadata.
pub const P2PHANDSHAKE: &str = "P2PHANDSHAKE";

/// Build the store for `conn`; `Ok(None)` for P2PHANDSHAKE. Unknown schemes
/// are an error (Mooncake aborts the process; we refuse).
pub fn connect(conn: &str) -> Result<Option<Box<dyn MetadataStore>>> {
    let conn = conn.trim();
    if conn == P2PHANDSHAKE {
        return Ok(None);
    }
    let (scheme, _) = match conn.find("://") {
        Some(i) => (&conn[..i], &conn[i + 3..]),
        None => ("etcd", conn),
    };
    let store: Box<dyn MetadataStore> = match scheme {
        "http" | "https" => Box::new(http::HttpStore::new(conn)?),
        "etcd" => Box::new(etcd::EtcdStore::new(conn)?),
        "redis" => Box::new(redis::RedisStore::new(conn)?),
        other => {
            return Err(Error::Metadata(format!(
                "unsupported metadata scheme '{other}' in '{conn}' (use P2PHANDSHAKE, http://, etcd://, host:port or redis://)"
            )))
        }
    };
    Ok(Some(store))
}
