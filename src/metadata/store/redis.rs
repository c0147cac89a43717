//! Redis metadata store: `GET`/`SET`/`DEL` of the JSON text, like Mooncake's
//! hiredis plugin. `redis://host:port[/db]`; `MC_REDIS_USERNAME`,
//! `MC_REDIS_PASSWORD` (AUTH) and `MC_REDIS_DB_INDEX` 0-255 (SELECT).
//!
//! One connection behind a mutex. A broken connection (Redis restarted,
//! timeout) is dropped and re-established once per call, so a restart never
//! breaks the store for good.

use std::time::Duration;

use parking_lot::Mutex;
use redis::{ConnectionAddr, ConnectionInfo, ConnectionLike, ProtocolVersion, RedisConnectionInfo};

use super::MetadataStore;
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_PORT: u16 = 6379;

pub struct RedisStore {
    url: String,
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
}

/// Host, port and database of `redis://host:port[/db]`.
pub fn parse_url(url: &str) -> Result<(String, u16, Option<i64>)> {
    let bad = |why: &str| Error::InvalidArgument(format!("bad redis URL '{url}': {why}"));
    let rest = url
        .trim()
        .strip_prefix("redis://")
        .ok_or_else(|| bad("want redis://host:port"))?;
    let (hostport, db) = match rest.split_once('/') {
        Some((hp, "")) => (hp, None),
        Some((hp, db)) => (
            hp,
            Some(
                db.parse::<i64>()
                    .map_err(|_| bad("database is not a number"))?,
            ),
        ),
        None => (rest, None),
    };
    if hostport.contains('@') {
        return Err(bad(
            "credentials in the URL are not supported; use MC_REDIS_USERNAME/MC_REDIS_PASSWORD",
        ));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match tail.strip_prefix(':') {
            Some(p) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None if tail.is_empty() => (h, DEFAULT_PORT),
            None => return Err(bad("junk after ']'")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (hostport, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    Ok((host.to_string(), port, db))
}

/// `MC_REDIS_DB_INDEX` if valid (Mooncake warns and uses 0 otherwise).
fn env_db_index() -> Option<i64> {
    let raw = crate::config::env_str("MC_REDIS_DB_INDEX")?;
    match raw.trim().parse::<i64>() {
        Ok(v) if (0..=255).contains(&v) => Some(v),
        _ => {
            log::warn!("invalid MC_REDIS_DB_INDEX '{raw}', using database 0");
            Some(0)
        }
    }
}

fn nonempty_env(name: &str) -> Option<String> {
    crate::config::env_str(name).filter(|s| !s.is_empty())
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl RedisStore {
    pub fn new(url: &str) -> Result<Self> {
        let (host, port, url_db) = parse_url(url)?;
        let db = env_db_index().or(url_db).unwrap_or(0);
        let password = nonempty_env("MC_REDIS_PASSWORD");
        // Like Mooncake, a username is only used together with a password.
        let username = password.as_ref().and(nonempty_env("MC_REDIS_USERNAME"));
        let info = ConnectionInfo {
            addr: ConnectionAddr::Tcp(host, port),
            redis: RedisConnectionInfo {
                db,
                username,
                password,
                protocol: ProtocolVersion::RESP2,
            },
        };
        let client =
            redis::Client::open(info).map_err(|e| Error::Metadata(format!("redis {url}: {e}")))?;
        Ok(RedisStore {
            url: url.trim().to_string(),
            client,
            conn: Mutex::new(None),
        })
    }

    fn connect(&self) -> Result<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| Error::Metadata(format!("redis {}: connect: {e}", self.url)))?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|_| conn.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| Error::Metadata(format!("redis {}: timeouts: {e}", self.url)))?;
        Ok(conn)
    }

    /// Run `cmd` on the shared connection; on a connection-level failure
    /// reconnect and run it once more (GET/SET/DEL are idempotent).
    fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut slot = self.conn.lock();
        let mut reconnected = false;
        loop {
            if slot.is_none() {
                *slot = Some(self.connect()?);
                reconnected = true;
            }
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            match cmd.query::<T>(conn) {
                Ok(v) => return Ok(v),
                Err(e) if is_connection_error(&e) || !conn.is_open() => {
                    *slot = None;
                    if reconnected {
                        return Err(Error::Metadata(format!("redis {}: {e}", self.url)));
                    }
                    log::warn!("redis {}: connection lost ({e}); reconnecting", self.url);
                }
                Err(e) => return Err(Error::Metadata(format!("redis {}: {e}", self.url))),
            }
        }
    }
}

impl MetadataStore for RedisStore {
    fn get(&self, key: &str) -> Result<Option<String>> {
        self.run(redis::cmd("GET").arg(key))
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        self.run(redis::cmd("SET").arg(key).arg(value))
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.run::<i64>(redis::cmd("DEL").arg(key)).map(|_| ())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:26379").unwrap(),
            ("127.0.0.1".into(), 26379, None)
        );
        assert_eq!(
            parse_url("redis://h:1/3").unwrap(),
            ("h".into(), 1, Some(3))
        );
        assert_eq!(parse_url("redis://h").unwrap(), ("h".into(), 6379, None));
        assert_eq!(
            parse_url("redis://[::1]:7/").unwrap(),
            ("::1".into(), 7, None)
        );
        for bad in [
            "redis://",
            "redis://h:x",
            "redis://h:1/x",
            "http://h:1",
            "redis://u:p@h:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
