//! etcd v3 metadata store, spoken through etcd's JSON gRPC gateway
//! (`POST /v3/kv/range|put|deleterange`, keys and values base64) so no gRPC
//! stack is needed. Same keys and values as Mooncake's Go `clientv3` wrapper:
//! a plain key with the JSON text as value (spec §3.1).
//!
//! Connection strings: `etcd://h1:p1[;h2:p2,...]` or bare `h:p`. Endpoints are
//! tried in order, starting with the last one that answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::MetadataStore;
use crate::error::{Error, Result};

/// Mooncake's etcd wrapper: 5 s dial and operation timeouts.
const TIMEOUT: Duration = Duration::from_secs(5);
/// etcd 3.4+ serves the gateway at `/v3`; 3.3 only at `/v3beta`.
const API_PREFIXES: [&str; 2] = ["/v3", "/v3beta"];

pub struct EtcdStore {
    conn: String,
    /// `http://host:port`, in the order given.
    endpoints: Vec<String>,
    /// The endpoint that answered last; tried first.
    preferred: AtomicUsize,
    /// Index into `API_PREFIXES` that this cluster serves.
    api: Mutex<usize>,
    agent: ureq::Agent,
}

/// Split `etcd://a:1;b:2,c:3` (or `a:1`) into gateway base URLs.
pub fn parse_endpoints(conn: &str) -> Result<Vec<String>> {
    let rest = conn.trim();
    let rest = rest.strip_prefix("etcd://").unwrap_or(rest);
    let mut out = Vec::new();
    for ep in rest
        .split([';', ','])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let ep = ep.trim_end_matches('/');
        if ep.starts_with("https://") {
            return Err(Error::NotImplemented(format!(
                "etcd endpoint {ep} needs TLS, not built"
            )));
        }
        let hostport = ep.strip_prefix("http://").unwrap_or(ep);
        if hostport.is_empty() || hostport.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "bad etcd endpoint '{ep}' in '{conn}' (want host:port)"
            )));
        }
        out.push(format!("http://{hostport}"));
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no etcd endpoint in '{conn}'"
        )));
    }
    Ok(out)
}

enum Attempt {
    Done(Value),
    /// The gateway path does not exist here (older etcd).
    NoSuchApi,
    /// The endpoint could not be reached or is unhealthy: try the next.
    Unreachable(String),
}

impl EtcdStore {
    pub fn new(conn: &str) -> Result<Self> {
        let endpoints = parse_endpoints(conn)?;
        let agent = ureq::AgentBuilder::new()
            .timeout(TIMEOUT)
            .timeout_connect(TIMEOUT)
            // No pooled sockets: a restarted etcd must not cost a failed call
            // (ureq does not retry POSTs on stale connections).
            .max_idle_connections(0)
            .build();
        Ok(EtcdStore {
            conn: conn.trim().to_string(),
            endpoints,
            preferred: AtomicUsize::new(0),
            api: Mutex::new(0),
            agent,
        })
    }

    fn post_once(&self, endpoint: &str, api: usize, op: &str, body: &Value) -> Attempt {
        let url = format!("{endpoint}{}/kv/{op}", API_PREFIXES[api]);
        let resp = match self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) => r,
            Err(ureq::Error::Status(404, _)) => return Attempt::NoSuchApi,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Attempt::Unreachable(format!("{url}: HTTP {code}: {}", text.trim()));
            }
            Err(ureq::Error::Transport(t)) => return Attempt::Unreachable(format!("{url}: {t}")),
        };
        let parsed = resp
            .into_string()
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(v) => Attempt::Done(v),
            Err(e) => Attempt::Unreachable(format!("{url}: bad reply: {e}")),
        }
    }

    /// One gateway call with endpoint failover.
    fn post(&self, op: &str, body: &Value) -> Result<Value> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let api = *self.api.lock();
            let mut attempt = self.post_once(endpoint, api, op, body);
            if matches!(attempt, Attempt::NoSuchApi) {
                // Probe the other gateway prefix once and remember it.
                let other = (api + 1) % API_PREFIXES.len();
                attempt = self.post_once(endpoint, other, op, body);
                if matches!(attempt, Attempt::Done(_)) {
                    log::info!(
                        "etcd {endpoint} serves its gateway at {}",
                        API_PREFIXES[other]
                    );
                    *self.api.lock() = other;
                }
            }
            match attempt {
                Attempt::Done(v) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Attempt::NoSuchApi => {
                    errors.push(format!("{endpoint}: no v3 JSON gateway (HTTP 404)"))
                }
                Attempt::Unreachable(e) => errors.push(e),
            }
            log::warn!(
                "etcd {op} via {endpoint} failed: {}",
                errors.last().map_or("", |s| s)
            );
        }
        Err(Error::Metadata(format!(
            "etcd {op} failed on every endpoint of '{}': {}",
            self.conn,
            errors.join("; ")
        )))
    }
}

/// The value of the first key-value of a range reply, if any.
fn range_value(reply: &Value) -> Result<Option<String>> {
    let Some(kv) = reply
        .get("kvs")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    else {
        return Ok(None);
    };
    // The gateway omits empty fields: no "value" means "".
    let b64 = kv.get("value").and_then(Value::as_str).unwrap_or("");
    let bytes = B64
        .decode(b64)
        .map_err(|e| Error::Metadata(format!("etcd value is not base64: {e}")))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::Metadata("etcd value is not UTF-8 text".into()))
}

impl MetadataStore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<String>> {
        let reply = self.post("range", &json!({ "key": B64.encode(key) }))?;
        range_value(&reply).map_err(|e| Error::Metadata(format!("etcd get {key}: {e}")))
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        self.post(
            "put",
            &json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.post("deleterange", &json!({ "key": B64.encode(key) }))?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.conn.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_lists() {
        assert_eq!(
            parse_endpoints("127.0.0.1:2379").unwrap(),
            vec!["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_endpoints("etcd://a:1;b:2,c:3").unwrap(),
            vec!["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(
            parse_endpoints("etcd://http://a:1/").unwrap(),
            vec!["http://a:1"]
        );
        assert!(parse_endpoints("etcd://").is_err());
        assert!(parse_endpoints(";,").is_err());
        assert!(matches!(
            parse_endpoints("etcd://https://a:1"),
            Err(Error::NotImplemented(_))
        ));
    }

    #[test]
    fn decodes_range_replies() {
        let hit = json!({"header":{}, "kvs":[{"key":"Zm9v","value":"eyJhIjoxfQo="}], "count":"1"});
        assert_eq!(range_value(&hit).unwrap().as_deref(), Some("{\"a\":1}\n"));
        assert_eq!(range_value(&json!({"header":{}})).unwrap(), None);
        let empty = json!({"kvs":[{"key":"Zm9v"}]});
        assert_eq!(range_value(&empty).unwrap().as_deref(), Some(""));
        assert!(range_value(&json!({"kvs":[{"value":"!!"}]})).is_err());
    }
}
