//! JSON text as the C++ engine writes it (JsonCpp 1.9 `FastWriter` /
//! `StreamWriterBuilder` with empty indentation), byte for byte.
//!
//! * Keys sorted: our serde types declare fields in byte-sorted order and
//!   `serde_json::Value` maps are BTreeMaps (JsonCpp objects are `std::map`s).
//! * Strings: `"` `\\` and `\b \f \n \r \t` get short escapes, other control
//!   characters `\u00XX`, every non-ASCII character `\uXXXX` (UTF-16, surrogate
//!   pairs above U+FFFF), hex digits lowercase; `/` is left alone.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// JsonCpp `FastWriter`: compact with a trailing newline (handshake frames,
/// etcd and Redis values).
pub fn to_fast_writer<T: Serialize + ?Sized>(value: &T) -> String {
    let mut s = to_compact(value);
    s.push('\n');
    s
}

/// JsonCpp `StreamWriterBuilder` with empty indentation: compact, no newline
/// (HTTP metadata bodies).
pub fn to_compact<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = Serializer::with_formatter(&mut out, JsonCppFormatter);
    if let Err(e) = value.serialize(&mut ser) {
        // Only non-string map keys or failing custom impls get here; none of
        // our wire types do that.
        log::error!("JSON serialization failed: {e}");
        return "null".to_string();
    }
    // The formatter writes ASCII only (everything else is \u-escaped).
    String::from_utf8(out).unwrap_or_else(|_| "null".to_string())
}

/// Compact formatter with JsonCpp's string escaping.
struct JsonCppFormatter;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_u16_escape<W: ?Sized + io::Write>(w: &mut W, unit: u16) -> io::Result<()> {
    let buf = [
        b'\\',
        b'u',
        HEX[(unit >> 12) as usize & 0xf],
        HEX[(unit >> 8) as usize & 0xf],
        HEX[(unit >> 4) as usize & 0xf],
        HEX[unit as usize & 0xf],
    ];
    w.write_all(&buf)
}

impl Formatter for JsonCppFormatter {
    /// serde_json hands us runs of characters that need no JSON escape; ASCII
    /// goes out as is, the rest as UTF-16 `\u` escapes like JsonCpp.
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write_u16_escape(writer, *unit)?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write_u16_escape(writer, b as u16),
        };
        writer.write_all(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sorted_and_compact() {
        let v = json!({"b": 1, "a": [true, null, "x"], "B": {}});
        assert_eq!(to_compact(&v), r#"{"B":{},"a":[true,null,"x"],"b":1}"#);
        assert_eq!(
            to_fast_writer(&v),
            "{\"B\":{},\"a\":[true,null,\"x\"],\"b\":1}\n"
        );
    }

    #[test]
    fn escapes_like_jsoncpp() {
        let s = "q\" b\\ s/ \u{8}\u{c}\n\r\t \u{1}\u{1f}\u{7f} é€ 😀";
        assert_eq!(
            to_compact(&s),
            r#""q\" b\\ s/ \b\f\n\r\t \u0001\u001f"#.to_string()
                + "\u{7f}"
                + r#" \u00e9\u20ac \ud83d\ude00""#
        );
    }

    #[test]
    fn escaped_text_parses_back() {
        let s = "a\u{0}b\u{10ffff}c\"\\/é";
        let back: String = serde_json::from_str(&to_compact(&s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn integers_plain() {
        assert_eq!(
            to_compact(&json!([0, u64::MAX, -5])),
            "[0,18446744073709551615,-5]"
        );
    }
}
