//! `MC_TE_METRIC_HTTP_PORT`: one thread serving `GET /metrics` (Prometheus
//! text) and `GET /health` on `MC_TE_METRIC_HTTP_HOST` (default
//! 127.0.0.1). A scrape reads relaxed counters and takes no lock the data
//! path takes (the per-peer table's read lock is shared with submit).

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tiny_http::{Header, Method, Response, Server};

use crate::error::{Error, Result};
use crate::threads::ThreadCount;

/// What the server asks its owner for each request: `render(true)` the
/// exposition text, `render(false)` only whether it is alive (any `Some`);
/// `None` once the owner is gone.
pub type Render = Arc<dyn Fn(bool) -> Option<String> + Send + Sync>;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct MetricsServer {
    server: Arc<Server>,
    port: u16,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MetricsServer {
    /// The server if `MC_TE_METRIC_HTTP_PORT` names a port (0: any free
    /// one). A bad value or a port in use (a second engine in the process)
    /// costs the endpoint, never the engine: logged as a warning.
    pub fn from_env(render: Render, threads: &ThreadCount) -> Option<MetricsServer> {
        let value = crate::config::env_str("MC_TE_METRIC_HTTP_PORT")?;
        let Ok(port) = value.trim().parse::<u16>() else {
            log::warn!(
                "MC_TE_METRIC_HTTP_PORT={value}: not a port number (0..65535); no metrics endpoint"
            );
            return None;
        };
        let host =
            crate::config::env_str("MC_TE_METRIC_HTTP_HOST").unwrap_or_else(|| "127.0.0.1".into());
        match Self::start(&host, port, render, threads.child()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("{e}; this engine serves no metrics (its counters still work)");
                None
            }
        }
    }

    pub fn start(host: &str, port: u16, render: Render, threads: ThreadCount) -> Result<Self> {
        let addr = crate::metadata::name::join_host_port(host, port);
        let server = Server::http(&addr).map_err(|e| {
            Error::Socket(format!(
                "metrics endpoint on {addr} (MC_TE_METRIC_HTTP_HOST/PORT): {e}"
            ))
        })?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .unwrap_or(port);
        let server = Arc::new(server);
        let s = server.clone();
        let thread = threads
            .spawn("te-metrics-http", move || serve(&s, &render))
            .map_err(|e| Error::Socket(format!("spawning the metrics endpoint thread: {e}")))?;
        let bound = crate::metadata::name::join_host_port(host, port);
        log::info!("metrics endpoint: http://{bound}/metrics (and /health)");
        Ok(MetricsServer {
            server,
            port,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The bound port (useful when 0 was asked).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop serving and join the thread. Idempotent.
    pub fn stop(&self) {
        self.server.unblock();
        if let Some(t) = self.thread.lock().take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(server: &Server, render: &Render) {
    // `recv` returns an error once `unblock` was called.
    while let Ok(req) = server.recv() {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let get = matches!(req.method(), Method::Get | Method::Head);
        let (status, ctype, body) = match (get, path.as_str()) {
            (false, _) => (405, "text/plain", "only GET\n".to_string()),
            (true, "/metrics") => match render(true) {
                Some(text) => (200, CONTENT_TYPE, text),
                None => (503, "text/plain", "engine destroyed\n".into()),
            },
            (true, "/health") => match render(false).is_some() {
                true => (200, "application/json", "{\"status\":\"ok\"}\n".into()),
                false => (
                    503,
                    "application/json",
                    "{\"status\":\"destroyed\"}\n".into(),
                ),
            },
            (true, _) => (404, "text/plain", "try /metrics or /health\n".into()),
        };
        let header = Header::from_bytes("Content-Type", ctype).expect("static header");
        let _ = req.respond(
            Response::from_string(body)
                .with_status_code(status)
                .with_header(header),
        );
    }
}
