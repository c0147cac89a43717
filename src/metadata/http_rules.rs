//! What te-metadata-server answers, free of I/O so each rule is unit-tested.
//!
//! `Flavor::Master` (default) answers as the HTTP metadata server built into
//! `mooncake_master` (mooncake-store `http_metadata_server.cpp`): routes
//! `/metadata` and `/health` only, 400 for a missing or empty key, 404 for a
//! DELETE of a missing key, and an `rpc_meta` key that already holds a
//! different value refuses a PUT with 400 (the same value is 200
//! `metadata unchanged`). `Flavor::GoExample` answers as upstream's Go
//! example server (`example/http-metadata-server`, gin): GET/PUT/DELETE on
//! `/metadata` only, anything else 404 `404 page not found` (gin's default,
//! methods included); a missing key is the empty key; GET of an unset key
//! 404, any PUT overwrites (200), DELETE always 200.

use super::http_server::{MetadataMap, PutOutcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Flavor {
    #[default]
    Master,
    GoExample,
}

/// Status, body, and whether the body is the stored JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub json: bool,
}

impl Reply {
    pub(crate) fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            json: false,
        }
    }
}

fn persist_failed(what: &str, key: &str, e: crate::error::Error) -> Reply {
    log::error!("{what} {key}: {e}");
    Reply::text(500, "metadata not persisted")
}

/// Handle one request. `body` is `None` when it could not be read.
pub fn handle(
    map: &MetadataMap,
    flavor: Flavor,
    method: &str,
    url: &str,
    body: Option<String>,
) -> Reply {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let key = query_param(query, "key");
    match flavor {
        Flavor::Master => master(map, method, path, key, body),
        Flavor::GoExample => go_example(map, method, path, key, body),
    }
}

fn master(
    map: &MetadataMap,
    method: &str,
    path: &str,
    key: Option<String>,
    body: Option<String>,
) -> Reply {
    match (method, path) {
        ("GET", "/health") => return Reply::text(200, "OK"),
        ("GET" | "PUT" | "DELETE", "/metadata") => {}
        // coro_http answers an unrouted method/path with 404.
        _ => return Reply::text(404, "not found"),
    }
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Reply::text(400, "Missing key parameter");
    };
    match method {
        "GET" => match map.get(&key) {
            Some(v) => Reply {
                status: 200,
                body: v,
                json: true,
            },
            None => Reply::text(404, "metadata not found"),
        },
        "PUT" => {
            let Some(body) = body else {
                return Reply::text(400, "invalid request");
            };
            if !key.contains("rpc_meta") {
                return match map.put(&key, body) {
                    Ok(()) => Reply::text(200, "metadata updated"),
                    Err(e) => persist_failed("PUT", &key, e),
                };
            }
            match map.put_exclusive(&key, body) {
                Ok(PutOutcome::Stored) => Reply::text(200, "metadata updated"),
                Ok(PutOutcome::Unchanged) => Reply::text(200, "metadata unchanged"),
                Ok(PutOutcome::Conflict) => {
                    log::warn!("PUT {key}: refused, another value is registered");
                    Reply::text(400, "Duplicate rpc_meta key not allowed")
                }
                Err(e) => persist_failed("PUT", &key, e),
            }
        }
        _ => match map.delete(&key) {
            Ok(true) => Reply::text(200, "metadata deleted"),
            Ok(false) => Reply::text(404, "metadata not found"),
            Err(e) => persist_failed("DELETE", &key, e),
        },
    }
}

fn go_example(
    map: &MetadataMap,
    method: &str,
    path: &str,
    key: Option<String>,
    body: Option<String>,
) -> Reply {
    if path != "/metadata" {
        return Reply::text(404, "404 page not found");
    }
    // Go's `URL.Query().Get("key")` is "" when the key is absent.
    let key = Some(key.unwrap_or_default());
    match method {
        "GET" => match key.and_then(|k| map.get(&k)) {
            Some(v) => Reply {
                status: 200,
                body: v,
                json: true,
            },
            None => Reply::text(404, "metadata not found"),
        },
        "PUT" => {
            let (Some(key), Some(body)) = (key, body) else {
                return Reply::text(400, "invalid request");
            };
            match map.put(&key, body) {
                Ok(()) => Reply::text(200, "metadata updated"),
                Err(e) => persist_failed("PUT", &key, e),
            }
        }
        "DELETE" => {
            // The Go server answers 200 even for a missing key.
            if let Some(key) = key {
                if let Err(e) = map.delete(&key) {
                    return persist_failed("DELETE", &key, e);
                }
            }
            Reply::text(200, "metadata deleted")
        }
        // gin answers an unrouted method like an unknown path.
        _ => Reply::text(404, "404 page not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPC: &str = "/metadata?key=mooncake%2Frpc_meta%2Fa%3A1";
    const RAM: &str = "/metadata?key=mooncake%2Fram%2Fa%3A1";

    fn call(
        m: &MetadataMap,
        f: Flavor,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let r = handle(m, f, method, url, body.map(str::to_string));
        (r.status, r.body)
    }

    #[test]
    fn master_status_codes() {
        use Flavor::Master as F;
        let m = MetadataMap::open(None).unwrap();
        let s = |v: &str| v.to_string();
        assert_eq!(call(&m, F, "GET", "/health", None), (200, s("OK")));
        assert_eq!(
            call(&m, F, "GET", RAM, None),
            (404, s("metadata not found"))
        );
        assert_eq!(
            call(&m, F, "PUT", RAM, Some("{}")),
            (200, s("metadata updated"))
        );
        // A non-rpc_meta key may be overwritten.
        assert_eq!(
            call(&m, F, "PUT", RAM, Some("{\"b\":1}")),
            (200, s("metadata updated"))
        );
        let r = handle(&m, F, "GET", RAM, None);
        assert_eq!(
            (r.status, r.body.as_str(), r.json),
            (200, "{\"b\":1}", true)
        );
        assert_eq!(
            call(&m, F, "PUT", RPC, Some("{\"p\":1}")),
            (200, s("metadata updated"))
        );
        assert_eq!(
            call(&m, F, "PUT", RPC, Some("{\"p\":1}")),
            (200, s("metadata unchanged"))
        );
        assert_eq!(
            call(&m, F, "PUT", RPC, Some("{\"p\":2}")),
            (400, s("Duplicate rpc_meta key not allowed"))
        );
        assert_eq!(m.get("mooncake/rpc_meta/a:1").as_deref(), Some("{\"p\":1}"));
        for method in ["GET", "PUT", "DELETE"] {
            for url in ["/metadata", "/metadata?key=", "/metadata?other=1"] {
                assert_eq!(
                    call(&m, F, method, url, Some("{}")),
                    (400, s("Missing key parameter")),
                    "{method} {url}"
                );
            }
        }
        assert_eq!(
            call(&m, F, "DELETE", RPC, None),
            (200, s("metadata deleted"))
        );
        assert_eq!(
            call(&m, F, "DELETE", RPC, None),
            (404, s("metadata not found"))
        );
        // After a DELETE the rpc_meta key takes a new value.
        assert_eq!(
            call(&m, F, "PUT", RPC, Some("{\"p\":2}")),
            (200, s("metadata updated"))
        );
        assert_eq!(call(&m, F, "PUT", RAM, None), (400, s("invalid request")));
        assert_eq!(call(&m, F, "GET", "/other?key=a", None).0, 404);
        assert_eq!(call(&m, F, "OTHER", RAM, None).0, 404);
        assert_eq!(call(&m, F, "PUT", "/health", Some("{}")).0, 404);
    }

    #[test]
    fn go_example_semantics() {
        use Flavor::GoExample as F;
        let m = MetadataMap::open(None).unwrap();
        assert_eq!(
            call(&m, F, "GET", RPC, None),
            (404, "metadata not found".into())
        );
        assert_eq!(
            call(&m, F, "PUT", RPC, Some("{\"x\":1}")),
            (200, "metadata updated".into())
        );
        assert_eq!(call(&m, F, "PUT", RPC, Some("{\"x\":2}")).0, 200); // overwrites
        assert_eq!(call(&m, F, "GET", RPC, None), (200, "{\"x\":2}".into()));
        // Only /metadata is routed; other paths and methods: gin's 404.
        assert_eq!(
            call(&m, F, "PUT", "/x?key=mooncake/rpc_meta/a:1", Some("{}")),
            (404, "404 page not found".into())
        );
        assert_eq!(
            call(&m, F, "POST", RPC, Some("{}")),
            (404, "404 page not found".into())
        );
        assert_eq!(call(&m, F, "GET", "/health", None).0, 404);
        assert_eq!(
            call(&m, F, "DELETE", RPC, None),
            (200, "metadata deleted".into())
        );
        assert_eq!(call(&m, F, "DELETE", RPC, None).0, 200);
        assert_eq!(call(&m, F, "PUT", RPC, None).0, 400); // unreadable body
                                                          // No key is the empty key, as Go's Query().Get("key").
        assert_eq!(call(&m, F, "GET", "/metadata", None).0, 404);
        assert_eq!(call(&m, F, "PUT", "/metadata", Some("{}")).0, 200);
        assert_eq!(
            call(&m, F, "GET", "/metadata?key=", None),
            (200, "{}".into())
        );
    }
}

/// The decoded value of parameter `name` in a raw query string, decoded as
/// form decoders (Go's `url.ParseQuery`, Python's `parse_qs`) do.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod query_tests {
    use super::query_param;

    #[test]
    fn finds_and_decodes_the_key() {
        assert_eq!(
            query_param("x=1&key=mooncake%2Fram%2Fa", "key").as_deref(),
            Some("mooncake/ram/a")
        );
        assert_eq!(query_param("key=a+b%2fc", "key").as_deref(), Some("a b/c"));
        assert_eq!(query_param("x=1", "key"), None);
        assert_eq!(query_param("key=", "key").as_deref(), Some(""));
        assert_eq!(query_param("key", "key").as_deref(), Some(""));
    }
}
