//! Metadata: the local segment descriptor, the cache of peers' descriptors
//! (name ↔ id), RPC addresses, notifications, and the handshake daemon.
//!
//! P2PHANDSHAKE has no store: peers' descriptors come over the Metadata RPC.
//! Store modes (HTTP, etcd, Redis) publish under Mooncake's keys (spec §3.3).

pub mod descriptor;
pub mod handshake;
pub mod http_rules;
pub mod http_server;
pub mod json;
mod keeper;
pub mod name;
pub mod notify_queue;
pub mod store;

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::threads::ThreadCount;
use descriptor::{RpcMeta, SegmentDesc};
use handshake::{HandShakeDesc, HandshakeHandler, HandshakeServer, HandshakeServerConfig, MsgType};
use store::MetadataStore;

/// `segment_id_t` of the C API. 0 is the local segment; peers count from 1.
pub type SegmentId = i32;
pub const LOCAL_SEGMENT_ID: SegmentId = 0;

/// How long engine creation tries the RPC port of the engine that holds
/// its name before taking the name over.
const HOLDER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers Connection handshakes on behalf of the installed transport.
pub type ConnectionHandler = Arc<dyn Fn(&HandShakeDesc) -> HandShakeDesc + Send + Sync>;

#[derive(Default)]
struct SegmentCache {
    by_name: HashMap<String, SegmentId>,
    by_id: HashMap<SegmentId, (String, Arc<SegmentDesc>)>,
    next_id: SegmentId,
}

pub struct Metadata {
    store: Option<Box<dyn MetadataStore>>,
    conn_string: String,
    /// `mooncake/` or `mooncake/<cluster id>/`.
    prefix: String,
    local_name: RwLock<String>,
    local_desc: RwLock<Option<Arc<SegmentDesc>>>,
    segments: RwLock<SegmentCache>,
    rpc_cache: Mutex<HashMap<String, RpcMeta>>,
    notifies: notify_queue::NotifyQueue,
    /// Notifications we sent: accepted by the peer, failed.
    notifies_sent: [std::sync::atomic::AtomicU64; 2],
    connection_handler: RwLock<Option<ConnectionHandler>>,
    server: Mutex<Option<HandshakeServer>>,
    cache_disabled: bool,
    /// What we published, so the keeper can put it back if the store lost it.
    published_rpc: Mutex<Option<RpcMeta>>,
    keeper: Mutex<Option<keeper::Keeper>>,
    /// The handshake daemon's threads and the keeper's.
    threads: ThreadCount,
}

impl Metadata {
    /// Connect to the store named by `conn` (spec §3.1).
    pub fn new(conn: &str, local_name: &str) -> Result<Arc<Metadata>> {
        Self::with_threads(conn, local_name, ThreadCount::default())
    }

    /// `new`, with the daemon's and keeper's threads counted in `threads`
    /// (a child of the engine's count).
    pub fn with_threads(
        conn: &str,
        local_name: &str,
        threads: ThreadCount,
    ) -> Result<Arc<Metadata>> {
        let store = store::connect(conn)?;
        let mut prefix = String::from("mooncake/");
        if let Some(id) = crate::config::env_str("MC_METADATA_CLUSTER_ID").filter(|s| !s.is_empty())
        {
            prefix.push_str(&id);
            if !id.ends_with('/') {
                prefix.push('/');
            }
        }
        Ok(Arc::new(Metadata {
            store,
            conn_string: conn.to_string(),
            prefix,
            local_name: RwLock::new(local_name.to_string()),
            local_desc: RwLock::new(None),
            segments: RwLock::new(SegmentCache {
                next_id: 1,
                ..Default::default()
            }),
            rpc_cache: Mutex::new(HashMap::new()),
            notifies: notify_queue::NotifyQueue::new(notify_queue::NotifyLimits::from_env()),
            notifies_sent: Default::default(),
            connection_handler: RwLock::new(None),
            server: Mutex::new(None),
            cache_disabled: crate::config::env_is_set("MC_DISABLE_METACACHE"),
            published_rpc: Mutex::new(None),
            keeper: Mutex::new(None),
            threads,
        }))
    }

    pub fn is_p2p(&self) -> bool {
        self.store.is_none()
    }

    pub fn conn_string(&self) -> &str {
        &self.conn_string
    }

    pub fn local_name(&self) -> String {
        self.local_name.read().clone()
    }

    pub fn set_local_name(&self, name: &str) {
        *self.local_name.write() = name.to_string();
    }

    fn ram_key(&self, name: &str) -> String {
        if name.contains('/') {
            format!("{}{}", self.prefix, name)
        } else {
            format!("{}ram/{}", self.prefix, name)
        }
    }

    fn rpc_meta_key(&self, name: &str) -> String {
        format!("{}rpc_meta/{}", self.prefix, name)
    }

    /// Start the handshake daemon on an already bound listener.
    pub fn start_daemon(self: &Arc<Self>, listener: TcpListener) -> Result<()> {
        let mut slot = self.server.lock();
        if slot.is_some() {
            return Ok(());
        }
        let handler = Arc::new(DaemonHandler(Arc::downgrade(self)));
        *slot = Some(HandshakeServer::start_counted(
            listener,
            handler,
            HandshakeServerConfig::from_env(),
            self.threads.clone(),
        )?);
        Ok(())
    }

    pub fn daemon_running(&self) -> bool {
        self.server.lock().is_some()
    }

    pub fn set_connection_handler(&self, h: Option<ConnectionHandler>) {
        *self.connection_handler.write() = h;
    }

    // ---- store publishing -------------------------------------------------

    fn store_set(&self, key: &str, value: &str) -> Result<()> {
        match &self.store {
            Some(s) => s
                .set(key, value)
                .map_err(|e| Error::Metadata(format!("publishing {key} to {}: {e}", s.describe()))),
            None => Ok(()),
        }
    }

    /// A value as Mooncake writes it to this store (spec §3.1).
    fn store_text<T: serde::Serialize>(&self, value: &T) -> String {
        match &self.store {
            Some(s) if s.trailing_newline() => json::to_fast_writer(value),
            _ => json::to_compact(value),
        }
    }

    pub fn publish_rpc_meta(self: &Arc<Self>, meta: &RpcMeta) -> Result<()> {
        let key = self.rpc_meta_key(&self.local_name());
        self.refuse_live_holder(&key, meta)?;
        self.store_set(&key, &self.store_text(meta))?;
        *self.published_rpc.lock() = Some(meta.clone());
        let mut k = self.keeper.lock();
        if k.is_none() && self.store.is_some() {
            *k = Some(keeper::Keeper::start(
                Arc::downgrade(self),
                self.threads.clone(),
            ));
        }
        Ok(())
    }

    /// Refuse to take a name another live engine holds (upstream's engine is
    /// refused by the master's metadata server the same way, and fails
    /// `init` with ERR_METADATA): the first engine keeps its key. A holder
    /// whose RPC port accepts no connection is a crashed predecessor, and its
    /// key is taken over.
    fn refuse_live_holder(&self, key: &str, ours: &RpcMeta) -> Result<()> {
        let Some(s) = &self.store else {
            return Ok(());
        };
        let Some(text) = s.get(key)? else {
            return Ok(());
        };
        let Ok(holder) = serde_json::from_str::<RpcMeta>(&text) else {
            return Ok(()); // not an engine's entry: overwrite it, as upstream
        };
        if holder == *ours {
            return Ok(());
        }
        let live = (holder.ip_or_host_name.as_str(), holder.rpc_port)
            .to_socket_addrs()
            .ok()
            .into_iter()
            .flatten()
            .any(|a| TcpStream::connect_timeout(&a, HOLDER_CONNECT_TIMEOUT).is_ok());
        if !live {
            log::warn!(
                "{key} in {} names {}:{}, which accepts no connection (a crashed engine): taking the name over",
                s.describe(),
                holder.ip_or_host_name,
                holder.rpc_port
            );
            return Ok(());
        }
        let msg = format!(
            "Failed to set location of {}: the name is held by a live engine at {}:{} (in {}); choose another name or destroy that engine first",
            self.local_name(),
            holder.ip_or_host_name,
            holder.rpc_port,
            s.describe()
        );
        log::error!("{msg}");
        Err(Error::Metadata(msg))
    }

    /// Put our keys back if the store lost them (e.g. a metadata server
    /// restarted without persistence). Returns whether anything was restored.
    pub fn restore_lost_keys(&self) -> Result<bool> {
        let Some(s) = &self.store else {
            return Ok(false);
        };
        let Some(meta) = self.published_rpc.lock().clone() else {
            return Ok(false);
        };
        let name = self.local_name();
        let mut restored = false;
        if s.get(&self.rpc_meta_key(&name))?.is_none() {
            s.set(&self.rpc_meta_key(&name), &self.store_text(&meta))?;
            restored = true;
        }
        if let Some(desc) = self.local_desc() {
            if s.get(&self.ram_key(&name))?.is_none() {
                s.set(&self.ram_key(&name), &self.store_text(&*desc))?;
                restored = true;
            }
        }
        if restored {
            log::warn!(
                "metadata store {} had lost the keys of '{name}'; published them again",
                s.describe()
            );
        }
        Ok(restored)
    }

    pub fn remove_rpc_meta(&self) {
        let was_published = self.published_rpc.lock().take().is_some();
        if let Some(k) = self.keeper.lock().take() {
            k.stop();
        }
        if !was_published {
            return;
        }
        if let Some(s) = &self.store {
            let key = self.rpc_meta_key(&self.local_name());
            if let Err(e) = s.remove(&key) {
                log::warn!("removing {key} from {}: {e}", s.describe());
            }
        }
    }

    /// Replace the local descriptor (segment id 0) and publish it.
    pub fn set_local_desc(&self, desc: SegmentDesc) -> Result<()> {
        let desc = Arc::new(desc);
        *self.local_desc.write() = Some(desc.clone());
        if self.store.is_none() {
            // P2P: peers fetch it over the handshake; no text to make now.
            return Ok(());
        }
        let key = self.ram_key(&desc.name);
        self.store_set(&key, &self.store_text(&*desc))
    }

    pub fn local_desc(&self) -> Option<Arc<SegmentDesc>> {
        self.local_desc.read().clone()
    }

    /// What a store holds under our own segment key (stale-descriptor checks).
    pub fn stored_local_desc(&self) -> Result<Option<String>> {
        match &self.store {
            Some(s) => s.get(&self.ram_key(&self.local_name())),
            None => Ok(None),
        }
    }

    pub fn remove_local_desc(&self) {
        *self.local_desc.write() = None;
        if let Some(s) = &self.store {
            let key = self.ram_key(&self.local_name());
            if let Err(e) = s.remove(&key) {
                log::warn!("removing {key} from {}: {e}", s.describe());
            }
        }
    }

    // ---- peers' descriptors -----------------------------------------------

    fn normalize(name: &str) -> Result<&str> {
        let n = name.trim_start_matches('/');
        if n.is_empty() {
            Err(Error::InvalidArgument(format!(
                "empty segment name '{name}'"
            )))
        } else {
            Ok(n)
        }
    }

    /// Fetch a peer's descriptor from the store or over the Metadata RPC.
    fn fetch_desc(&self, name: &str) -> Result<SegmentDesc> {
        self.fetch_desc_while(name, &|| {})
    }

    /// `fetch_desc`, running `while_waiting` while the store or the peer
    /// works on the request.
    fn fetch_desc_while(&self, name: &str, while_waiting: &dyn Fn()) -> Result<SegmentDesc> {
        let text = match &self.store {
            Some(s) => {
                while_waiting();
                s.get(&self.ram_key(name))?.ok_or_else(|| {
                    Error::Metadata(format!("segment '{name}' not found in {}", s.describe()))
                })?
            }
            None => {
                let own = self.local_desc().ok_or_else(|| {
                    Error::Metadata(format!(
                        "cannot open '{name}' before a transport is installed (P2P sends our own descriptor)"
                    ))
                })?;
                let (host, port) = name::parse_host_port(name, name::default_handshake_port());
                handshake::client::call_while(
                    &host,
                    port,
                    MsgType::Metadata,
                    &json::to_fast_writer(&*own),
                    while_waiting,
                )?
            }
        };
        let desc: SegmentDesc = serde_json::from_str(&text)
            .map_err(|e| Error::Metadata(format!("descriptor of '{name}' is corrupt: {e}")))?;
        desc.validate()
            .map_err(|e| Error::Metadata(format!("descriptor of '{name}' is corrupt: {e}")))?;
        if self.is_p2p() {
            if let Some(rdma_name) = desc.rdma_server_name.as_ref().filter(|n| **n != desc.name) {
                let (host, port) = name::parse_host_port(name, name::default_handshake_port());
                self.rpc_cache.lock().insert(
                    rdma_name.clone(),
                    RpcMeta {
                        ip_or_host_name: host,
                        rpc_port: port,
                    },
                );
            }
        }
        Ok(desc)
    }

    /// `openSegment`: the id of `name`, fetching its descriptor on first use.
    pub fn open_segment(&self, name: &str) -> Result<SegmentId> {
        self.open_segment_while(name, &|| {})
    }

    /// `open_segment`, running `while_waiting` while a descriptor fetch
    /// waits on the store or the peer (not at all when none is needed).
    pub fn open_segment_while(&self, name: &str, while_waiting: &dyn Fn()) -> Result<SegmentId> {
        let name = Self::normalize(name)?;
        if name == self.local_name() {
            return Ok(LOCAL_SEGMENT_ID);
        }
        if let Some(id) = self.segments.read().by_name.get(name).copied() {
            if self.cache_disabled {
                let desc = Arc::new(self.fetch_desc_while(name, while_waiting)?);
                self.segments
                    .write()
                    .by_id
                    .insert(id, (name.to_string(), desc));
            }
            return Ok(id);
        }
        let desc = Arc::new(self.fetch_desc_while(name, while_waiting)?);
        let mut cache = self.segments.write();
        if let Some(id) = cache.by_name.get(name).copied() {
            return Ok(id); // another thread won the race
        }
        let id = cache.next_id;
        cache.next_id += 1;
        cache.by_name.insert(name.to_string(), id);
        cache.by_id.insert(id, (name.to_string(), desc));
        Ok(id)
    }

    /// The descriptor of segment `id` (0 = local), if known.
    pub fn segment_desc(&self, id: SegmentId) -> Option<Arc<SegmentDesc>> {
        if id == LOCAL_SEGMENT_ID {
            return self.local_desc();
        }
        self.segments.read().by_id.get(&id).map(|(_, d)| d.clone())
    }

    pub fn segment_name(&self, id: SegmentId) -> Option<String> {
        if id == LOCAL_SEGMENT_ID {
            return Some(self.local_name());
        }
        self.segments.read().by_id.get(&id).map(|(n, _)| n.clone())
    }

    /// Re-fetch segment `id` now; keeps the old descriptor if the fetch fails.
    pub fn refresh_segment(&self, id: SegmentId) -> Option<Arc<SegmentDesc>> {
        if id == LOCAL_SEGMENT_ID {
            return self.local_desc();
        }
        let name = self.segment_name(id)?;
        match self.fetch_desc(&name) {
            Ok(desc) => {
                let desc = Arc::new(desc);
                let mut cache = self.segments.write();
                if let Some(entry) = cache.by_id.get_mut(&id) {
                    if !entry.1.same_content(&desc) {
                        entry.1 = desc;
                    }
                    return Some(entry.1.clone());
                }
                None
            }
            Err(e) => {
                log::warn!("refreshing segment '{name}': {e}");
                self.segment_desc(id)
            }
        }
    }

    /// Re-read `name`'s descriptor now, bypassing the cache, and keep it in
    /// the cache when `name` is cached (a TCP data connection checks its
    /// owner's incarnation so; later submits then see the new owner).
    pub fn reread_desc(&self, name: &str) -> Result<Arc<SegmentDesc>> {
        let desc = Arc::new(self.fetch_desc(name)?);
        let mut cache = self.segments.write();
        if let Some(id) = cache.by_name.get(name).copied() {
            if let Some(entry) = cache.by_id.get_mut(&id) {
                if !entry.1.same_content(&desc) {
                    entry.1 = desc.clone();
                }
            }
        }
        Ok(desc)
    }

    /// The segment name whose descriptor names RDMA server `server` (NIC
    /// paths carry the RDMA server name; in store modes it is not the
    /// segment's name). `server` itself when no cached segment names it.
    pub fn segment_name_of_rdma_server(&self, server: &str) -> String {
        let cache = self.segments.read();
        cache
            .by_id
            .values()
            .find(|(_, d)| d.name == server || d.rdma_server_name.as_deref() == Some(server))
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| server.to_string())
    }

    /// `syncSegmentCache`: re-fetch `name` if cached, or every cached segment.
    pub fn sync_segment_cache(&self, name: Option<&str>) {
        let ids: Vec<SegmentId> = {
            let cache = self.segments.read();
            match name {
                Some(n) => cache
                    .by_name
                    .get(n.trim_start_matches('/'))
                    .copied()
                    .into_iter()
                    .collect(),
                None => cache.by_id.keys().copied().collect(),
            }
        };
        for id in ids {
            self.refresh_segment(id);
        }
    }

    /// `removeLocalSegment`: drop `name` from the caches (not from the store).
    pub fn remove_segment(&self, name: &str) -> Result<()> {
        let name = Self::normalize(name)?;
        let mut cache = self.segments.write();
        if let Some(id) = cache.by_name.remove(name) {
            cache.by_id.remove(&id);
        }
        self.rpc_cache.lock().remove(name);
        Ok(())
    }

    // ---- RPC addresses, handshakes, notifications -------------------------

    /// Where `server_name`'s handshake daemon listens (cached).
    pub fn rpc_meta(&self, server_name: &str) -> Result<RpcMeta> {
        if let Some(m) = self.rpc_cache.lock().get(server_name) {
            return Ok(m.clone());
        }
        let meta = match &self.store {
            None => {
                let (host, port) =
                    name::parse_host_port(server_name, name::default_handshake_port());
                RpcMeta {
                    ip_or_host_name: host,
                    rpc_port: port,
                }
            }
            Some(s) => {
                let text = s.get(&self.rpc_meta_key(server_name))?.ok_or_else(|| {
                    Error::Metadata(format!(
                        "no rpc_meta for '{server_name}' in {}",
                        s.describe()
                    ))
                })?;
                serde_json::from_str(&text)
                    .map_err(|e| Error::Metadata(format!("rpc_meta of '{server_name}': {e}")))?
            }
        };
        self.rpc_cache
            .lock()
            .insert(server_name.to_string(), meta.clone());
        Ok(meta)
    }

    /// `rpc_meta` when it needs no store lookup (cached, or read off the
    /// name under P2PHANDSHAKE): for callers that must not block.
    pub fn rpc_meta_cached(&self, server_name: &str) -> Option<RpcMeta> {
        if let Some(m) = self.rpc_cache.lock().get(server_name) {
            return Some(m.clone());
        }
        if self.store.is_none() {
            return self.rpc_meta(server_name).ok();
        }
        None
    }

    /// Send a Connection handshake to the daemon of `server_name`.
    pub fn send_handshake(&self, server_name: &str, req: &HandShakeDesc) -> Result<HandShakeDesc> {
        let meta = self.rpc_meta(server_name)?;
        handshake::client::connection(&meta.ip_or_host_name, meta.rpc_port, req)
    }

    /// Send one notification to the owner of segment `server_name`.
    pub fn send_notify(&self, server_name: &str, name: &str, msg: &str) -> Result<()> {
        let r = self.send_notify_once(server_name, name, msg);
        let i = usize::from(r.is_err());
        self.notifies_sent[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r
    }

    fn send_notify_once(&self, server_name: &str, name: &str, msg: &str) -> Result<()> {
        let meta = self.rpc_meta(server_name)?;
        let body = serde_json::json!({ "name": name, "notify_msg": msg });
        let reply = handshake::client::call(
            &meta.ip_or_host_name,
            meta.rpc_port,
            MsgType::Notify,
            &json::to_fast_writer(&body),
        )?;
        let v: serde_json::Value = serde_json::from_str(&reply)?;
        match v.get("notify_msg").and_then(|m| m.as_str()) {
            Some(m) if !m.is_empty() => Ok(()),
            _ => Err(Error::Metadata(format!(
                "peer '{server_name}' refused the notification: {reply}"
            ))),
        }
    }

    /// Drain received notifications in arrival order.
    pub fn take_notifies(&self) -> Vec<(String, String)> {
        self.notifies.take_all()
    }

    /// Notifications refused because the queue was full.
    pub fn refused_notifies(&self) -> u64 {
        self.notifies.refused()
    }

    /// Notification counters and queue depth, in Prometheus text.
    pub fn write_metrics(&self, e: &mut crate::metrics::exposition::Exposition) {
        let g =
            |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let name = "te_notifications_sent_total";
        e.family(
            name,
            "counter",
            "Notifications sent, by outcome (failed: unreachable peer or refused by it).",
        );
        e.sample(name, &[("outcome", "ok")], g(&self.notifies_sent[0]));
        e.sample(name, &[("outcome", "failed")], g(&self.notifies_sent[1]));
        let name = "te_notifications_received_total";
        e.family(
            name,
            "counter",
            "Notifications received, by outcome (refused: queue full, MC_NOTIFY_QUEUE_MAX / _MB).",
        );
        e.sample(
            name,
            &[("outcome", "queued")],
            self.notifies.received() as f64,
        );
        e.sample(
            name,
            &[("outcome", "refused")],
            self.notifies.refused() as f64,
        );
        e.single(
            "te_notification_queue_depth",
            "gauge",
            "Notifications waiting for getNotifies.",
            self.notifies.depth() as f64,
        );
    }

    /// Threads running for this metadata: the handshake daemon's and the
    /// keeper's.
    pub fn threads(&self) -> usize {
        self.threads.running()
    }

    /// Stop the daemon; called once on engine destroy.
    pub fn shutdown(&self) {
        if let Some(k) = self.keeper.lock().take() {
            k.stop();
        }
        if let Some(server) = self.server.lock().take() {
            server.stop();
        }
    }
}

static CTRL_LOG: crate::serving::RateLimited =
    crate::serving::RateLimited::new(module_path!(), std::time::Duration::from_secs(60));

/// The daemon's view of the metadata: weak, so the daemon never keeps a
/// destroyed engine alive.
struct DaemonHandler(Weak<Metadata>);

impl HandshakeHandler for DaemonHandler {
    fn on_connection(&self, req: HandShakeDesc) -> HandShakeDesc {
        let Some(md) = self.0.upgrade() else {
            return HandShakeDesc::rejected("engine is shutting down");
        };
        if req.is_ctrl_channel() {
            // A C++ rdma_twosided peer: refused, it falls back to sending
            // notifications over the handshake RPC (its OOB path).
            CTRL_LOG.info(format_args!(
                "refused an rdma_twosided control-channel handshake from {}: te-rs takes notifications over the handshake RPC",
                req.local_nic_path
            ));
            return HandShakeDesc::rejected(
                "rdma_twosided control channel not supported by te-rs; send notifications over the handshake RPC",
            );
        }
        let handler = md.connection_handler.read().clone();
        match handler {
            Some(h) => h(&req),
            None => HandShakeDesc::default(),
        }
    }

    fn on_metadata(&self, _requester_json: &str) -> String {
        match self.0.upgrade().and_then(|md| md.local_desc()) {
            Some(desc) => json::to_fast_writer(&*desc),
            None => "null\n".to_string(),
        }
    }

    fn on_notify(&self, name: String, msg: String) {
        let _ = self.try_notify(name, msg);
    }

    fn try_notify(&self, name: String, msg: String) -> std::result::Result<(), String> {
        match self.0.upgrade() {
            Some(md) => md.notifies.push(name, msg),
            None => Err("engine is shutting down".into()),
        }
    }
}
