//! Mooncake's HTTP metadata server (spec §3.5): threads, listener and
//! persistence. What each request gets back lives in `http_rules`
//! (`mooncake_master`'s rules by default, the Go example's on request).
//! Optional persistence: the whole map is rewritten atomically (temp file +
//! rename) on every change and loaded at start.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tiny_http::{Header, Method, Request, Response, Server};

pub use super::http_rules::{handle, Flavor, Reply};
use crate::error::{Error, Result};
use crate::threads::ThreadCount;

/// Largest accepted PUT body; larger ones get 413.
pub const MAX_BODY: usize = 16 << 20;
const POLL: Duration = Duration::from_millis(100);

/// What `MetadataMap::put_exclusive` did.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    Unchanged,
    Conflict,
}

/// The key-value map, optionally mirrored to a file.
pub struct MetadataMap {
    map: RwLock<BTreeMap<String, String>>,
    persist: Option<PathBuf>,
    /// Serialises file writes so the file always holds the latest map.
    write_lock: Mutex<()>,
}

impl MetadataMap {
    /// Load `persist` if it exists (a missing file is an empty map).
    pub fn open(persist: Option<PathBuf>) -> Result<Self> {
        let mut map = BTreeMap::new();
        if let Some(path) = &persist {
            match std::fs::read(path) {
                Ok(bytes) => {
                    map = serde_json::from_slice(&bytes).map_err(|e| {
                        Error::Metadata(format!("persist file {}: {e}", path.display()))
                    })?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Metadata(format!(
                        "persist file {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        Ok(MetadataMap {
            map: RwLock::new(map),
            persist,
            write_lock: Mutex::new(()),
        })
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.map.read().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn put(&self, key: &str, value: String) -> Result<()> {
        let _w = self.write_lock.lock();
        self.map.write().insert(key.to_string(), value);
        self.save()
    }

    /// Store `value` only if `key` is absent; an identical value already
    /// there is `Unchanged`, a different one `Conflict` (nothing written).
    pub fn put_exclusive(&self, key: &str, value: String) -> Result<PutOutcome> {
        let _w = self.write_lock.lock();
        {
            let mut map = self.map.write();
            match map.get(key) {
                Some(old) if *old == value => return Ok(PutOutcome::Unchanged),
                Some(_) => return Ok(PutOutcome::Conflict),
                None => {
                    map.insert(key.to_string(), value);
                }
            }
        }
        self.save()?;
        Ok(PutOutcome::Stored)
    }

    /// True if the key existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let _w = self.write_lock.lock();
        let existed = self.map.write().remove(key).is_some();
        if existed {
            self.save()?;
        }
        Ok(existed)
    }

    /// Write the map to `<file>.tmp`, fsync, rename over `<file>`.
    fn save(&self) -> Result<()> {
        let Some(path) = &self.persist else {
            return Ok(());
        };
        let text = serde_json::to_vec(&*self.map.read())?;
        write_atomically(path, &text)
            .map_err(|e| Error::Metadata(format!("persisting to {}: {e}", path.display())))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// A running server: worker threads sharing one tiny_http listener.
pub struct MetadataServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    threads: ThreadCount,
    map: Arc<MetadataMap>,
}

impl MetadataServer {
    /// Bind `addr` (port 0 = any free port) and serve with `workers` threads,
    /// answering as `mooncake_master`'s metadata server does.
    pub fn start(addr: &str, persist: Option<PathBuf>, workers: usize) -> Result<MetadataServer> {
        Self::start_with(addr, persist, workers, Flavor::Master)
    }

    /// As `start`, with the given answering rules.
    pub fn start_with(
        addr: &str,
        persist: Option<PathBuf>,
        workers: usize,
        flavor: Flavor,
    ) -> Result<MetadataServer> {
        let map = Arc::new(MetadataMap::open(persist)?);
        let server = Server::http(addr)
            .map_err(|e| Error::Socket(format!("metadata server cannot bind {addr}: {e}")))?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::Socket(format!("{addr} is not an IP address")))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let threads = ThreadCount::default();
        for i in 0..workers.max(1) {
            let (server, stop, map) = (server.clone(), stop.clone(), map.clone());
            let h = threads
                .spawn(format!("te-md-http-{i}"), move || {
                    serve(&server, &stop, &map, flavor)
                })
                .map_err(|e| Error::Socket(format!("spawning a metadata worker: {e}")))?;
            handles.push(h);
        }
        Ok(MetadataServer {
            addr: local,
            stop,
            workers: handles,
            threads,
            map,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Worker threads running (tiny_http's own acceptor not counted).
    pub fn threads(&self) -> usize {
        self.threads.running()
    }

    /// `http://<addr>/metadata`, the connection string clients use.
    pub fn url(&self) -> String {
        format!("http://{}/metadata", self.addr)
    }

    pub fn map(&self) -> &MetadataMap {
        &self.map
    }

    /// Stop accepting, finish in-flight requests, close the listener.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Wait until `flag` becomes true (e.g. set by a signal), then stop.
    pub fn run_until(self, flag: &AtomicBool) {
        while !flag.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
        }
        self.stop();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        // The last Arc<Server> went with the workers: the listener is closed.
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(server: &Server, stop: &AtomicBool, map: &MetadataMap, flavor: Flavor) {
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(POLL) {
            Ok(Some(req)) => respond(map, flavor, req),
            Ok(None) => {}
            Err(e) => {
                log::warn!("metadata server: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn respond(map: &MetadataMap, flavor: Flavor, mut req: Request) {
    let method = match req.method() {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        _ => "OTHER",
    };
    let url = req.url().to_string();
    let reply = if method == "PUT" && req.body_length().is_some_and(|n| n > MAX_BODY) {
        Reply::text(413, "metadata too large")
    } else {
        let body = if method == "PUT" {
            read_body(&mut req)
        } else {
            Ok(None)
        };
        match body {
            Err(r) => r,
            Ok(body) => handle(map, flavor, method, &url, body),
        }
    };
    log::trace!("{method} {url} -> {}", reply.status);
    let ctype = if reply.json {
        "application/json; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = Response::from_string(reply.body).with_status_code(reply.status);
    if let Ok(h) = Header::from_bytes("Content-Type", ctype) {
        resp = resp.with_header(h);
    }
    if let Err(e) = req.respond(resp) {
        log::debug!("metadata server: replying to {method} {url}: {e}");
    }
}

/// The PUT body: `Ok(None)` if unreadable or not UTF-8 (→ 400), `Err(413)`
/// if it exceeds `MAX_BODY` (chunked bodies have no length up front).
fn read_body(req: &mut Request) -> std::result::Result<Option<String>, Reply> {
    let mut buf = Vec::new();
    let limit = MAX_BODY as u64 + 1;
    if req.as_reader().take(limit).read_to_end(&mut buf).is_err() {
        return Ok(None);
    }
    if buf.len() > MAX_BODY {
        return Err(Reply::text(413, "metadata too large"));
    }
    Ok(String::from_utf8(buf).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "te-md-{tag}-{}-{:?}.json",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn persistence_survives_reopen() {
        let path = temp_path("persist");
        let _ = std::fs::remove_file(&path);
        {
            let m = MetadataMap::open(Some(path.clone())).unwrap();
            m.put("k/1", "{\"a\":\"é\\n\"}\n".into()).unwrap();
            m.put("k:2", "2".into()).unwrap();
            assert!(m.delete("k:2").unwrap());
            assert!(!m.delete("k:2").unwrap());
        }
        let m = MetadataMap::open(Some(path.clone())).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("k/1").as_deref(), Some("{\"a\":\"é\\n\"}\n"));
        std::fs::write(&path, b"not json").unwrap();
        assert!(MetadataMap::open(Some(path.clone())).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
