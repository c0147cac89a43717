//! HTTP metadata store (spec §3.5): Mooncake's REST protocol as spoken by its
//! libcurl client. The whole connection string is the base URL and the key
//! goes into `?key=<curl_easy_escape(key)>`. Only status 200 is success.

use std::io::Read;
use std::time::Duration;

use super::MetadataStore;
use crate::error::{Error, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Mooncake's libcurl timeouts (transfer_metadata_plugin.cpp).
const TOTAL_TIMEOUT: Duration = Duration::from_millis(3000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Refuse absurd bodies instead of buffering them (ureq's own `into_string`
/// stops at 10 MiB, which is below what a large descriptor may need).
const MAX_BODY: u64 = 256 << 20;

pub struct HttpStore {
    base: String,
    agent: ureq::Agent,
}

impl HttpStore {
    pub fn new(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.starts_with("https://") {
            return Err(Error::NotImplemented(format!(
                "https metadata needs TLS, not built: {url}"
            )));
        }
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            return Err(Error::InvalidArgument(format!(
                "not an http metadata URL: '{url}'"
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(TOTAL_TIMEOUT)
            .timeout_connect(CONNECT_TIMEOUT)
            // A fresh connection per call: a restarted metadata server never
            // meets a stale pooled socket (PUT bodies are not retried by ureq).
            .max_idle_connections(0)
            .build();
        Ok(HttpStore {
            base: url.to_string(),
            agent,
        })
    }

    /// `<base>?key=<escaped>` (or `&key=` if the base already has a query),
    /// exactly as Mooncake builds it.
    pub fn key_url(&self, key: &str) -> String {
        key_url(&self.base, key)
    }

    fn call(&self, method: &str, key: &str, body: Option<&str>) -> Result<(u16, String)> {
        let url = self.key_url(key);
        let req = self.agent.request(method, &url);
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_bytes(b.as_bytes()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                log::warn!("metadata {method} {url}: {t}");
                return Err(Error::Metadata(format!("{method} {url}: {t}")));
            }
        };
        let status = resp.status();
        log::trace!("metadata {method} {url} -> HTTP {status}");
        let mut text = String::new();
        resp.into_reader()
            .take(MAX_BODY)
            .read_to_string(&mut text)
            .map_err(|e| Error::Metadata(format!("{method} {url}: reading the body: {e}")))?;
        Ok((status, text))
    }
}

/// What `curl_easy_escape` (Mooncake's HTTP client) escapes: every byte but
/// RFC 3986's unreserved `A-Za-z0-9-._~`, as uppercase `%XX`.
const CURL_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn key_url(base: &str, key: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}key={}", utf8_percent_encode(key, CURL_ESCAPED))
}

impl MetadataStore for HttpStore {
    fn get(&self, key: &str) -> Result<Option<String>> {
        let (status, body) = self.call("GET", key, None)?;
        match status {
            200 => {
                // Mooncake parses the body and fails the lookup if it is not JSON.
                serde_json::from_str::<serde_json::Value>(&body).map_err(|e| {
                    Error::Metadata(format!("GET {}: body is not JSON: {e}", self.key_url(key)))
                })?;
                Ok(Some(body))
            }
            404 => Ok(None),
            s => Err(Error::Metadata(format!(
                "GET {}: HTTP {s}: {}",
                self.key_url(key),
                body.trim()
            ))),
        }
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        let (mut status, mut body) = self.call("PUT", key, Some(value))?;
        if status == 400 && body.contains("Duplicate rpc_meta") {
            // mooncake_master's server keeps the first rpc_meta of a name (a
            // crashed predecessor's, typically). Take it over, as the etcd
            // and Redis stores overwrite.
            log::warn!(
                "PUT {}: the server holds another rpc_meta for this name; replacing it",
                self.key_url(key)
            );
            self.remove(key)?;
            (status, body) = self.call("PUT", key, Some(value))?;
        }
        if status == 200 {
            Ok(())
        } else {
            Err(Error::Metadata(format!(
                "PUT {}: HTTP {status}: {}",
                self.key_url(key),
                body.trim()
            )))
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        let (status, body) = self.call("DELETE", key, None)?;
        match status {
            200 => Ok(()),
            // The Python bootstrap server answers 404 for a missing key; the
            // key is gone either way.
            404 => {
                log::info!("DELETE {}: already absent (HTTP 404)", self.key_url(key));
                Ok(())
            }
            s => Err(Error::Metadata(format!(
                "DELETE {}: HTTP {s}: {}",
                self.key_url(key),
                body.trim()
            ))),
        }
    }

    fn describe(&self) -> String {
        self.base.clone()
    }

    fn trailing_newline(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_mooncake_key_urls() {
        assert_eq!(
            key_url(
                "http://127.0.0.1:18080/metadata",
                "mooncake/rpc_meta/127.0.0.1:22067"
            ),
            "http://127.0.0.1:18080/metadata?key=mooncake%2Frpc_meta%2F127.0.0.1%3A22067"
        );
        assert_eq!(
            key_url("http://h:1/m?x=1", "a b"),
            "http://h:1/m?x=1&key=a%20b"
        );
    }

    #[test]
    fn https_is_refused_clearly() {
        match HttpStore::new("https://example.invalid/metadata") {
            Err(Error::NotImplemented(m)) => assert!(m.contains("TLS"), "{m}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("https must be refused"),
        }
        assert!(HttpStore::new("http://").is_err());
    }
}

#[cfg(test)]
mod key_tests {
    use super::key_url;

    #[test]
    fn keys_are_escaped_like_curl() {
        let q = |k| {
            key_url("http://h/m", k)
                .split_once("key=")
                .unwrap()
                .1
                .to_string()
        };
        assert_eq!(
            q("mooncake/rpc_meta/127.0.0.1:22067"),
            "mooncake%2Frpc_meta%2F127.0.0.1%3A22067"
        );
        assert_eq!(q("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(q("a b+c"), "a%20b%2Bc");
        assert_eq!(q("é"), "%C3%A9");
        assert_eq!(key_url("http://h/m?x=1", "k"), "http://h/m?x=1&key=k");
    }
}
