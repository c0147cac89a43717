//! Percent-encoding of metadata keys in HTTP query strings.
//!
//! Mooncake's HTTP client escapes keys with `curl_easy_escape`: only the RFC
//! 3986 unreserved characters (`A-Za-z0-9-._~`) are kept, every other byte
//! becomes `%XX` with uppercase hex (so `/` → `%2F`, `:` → `%3A`).

/// `curl_easy_escape` of `s`.
pub fn escape(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
    }
    out
}

/// Decode a query component: `%XX` (any case) and `+` as space, as form
/// decoders (Go's `url.ParseQuery`, Python's `parse_qs`) do. A malformed
/// `%` sequence is kept literally; invalid UTF-8 is an error.
pub fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The decoded value of parameter `name` in a raw query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if unescape(k).as_deref() == Some(name) {
            unescape(v)
        } else {
            None
        }
    })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_curl() {
        assert_eq!(
            escape("mooncake/rpc_meta/127.0.0.1:22067"),
            "mooncake%2Frpc_meta%2F127.0.0.1%3A22067"
        );
        assert_eq!(escape("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(escape("a b+c"), "a%20b%2Bc");
        assert_eq!(escape("é"), "%C3%A9");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn unescape_round_trips() {
        for s in ["mooncake/ram/x:1", "a b+c%", "é€/?&=#", ""] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
        }
        assert_eq!(unescape("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(unescape("a+b").as_deref(), Some("a b"));
        assert_eq!(unescape("100%").as_deref(), Some("100%"));
        assert_eq!(unescape("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(unescape("%ff"), None);
    }

    #[test]
    fn finds_query_param() {
        assert_eq!(
            query_param("x=1&key=mooncake%2Fram%2Fa", "key").as_deref(),
            Some("mooncake/ram/a")
        );
        assert_eq!(query_param("x=1", "key"), None);
        assert_eq!(query_param("key=", "key").as_deref(), Some(""));
        assert_eq!(query_param("key", "key").as_deref(), Some(""));
    }
}
