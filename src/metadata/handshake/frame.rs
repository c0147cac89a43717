//! Handshake frame codec: `u64 length (native endian, counts the type byte)
//! ‖ u8 type ‖ JSON`, or legacy `u64 length ‖ JSON` (spec §4.1).
//!
//! The length is checked against `MC_HANDSHAKE_MAX_LENGTH` before anything is
//! allocated, and the payload is read incrementally, so a peer announcing a
//! huge frame and sending nothing costs us nothing.

use std::io::{Read, Write};
use std::sync::OnceLock;

use crate::error::{Error, Result};

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    Connection = 0,
    Metadata = 1,
    Notify = 2,
    Probe = 3,
}

impl MsgType {
    pub fn from_u8(b: u8) -> Option<MsgType> {
        match b {
            0 => Some(MsgType::Connection),
            1 => Some(MsgType::Metadata),
            2 => Some(MsgType::Notify),
            3 => Some(MsgType::Probe),
            _ => None,
        }
    }
}

/// How a frame was framed; a reply uses the request's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Typed(MsgType),
    /// No type byte; always a Connection request.
    Legacy,
}

impl Framing {
    pub fn msg_type(self) -> MsgType {
        match self {
            Framing::Typed(t) => t,
            Framing::Legacy => MsgType::Connection,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub framing: Framing,
    pub json: Vec<u8>,
}

impl Frame {
    /// The JSON text (validated as UTF-8 JSON when the frame was read).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.json).unwrap_or("")
    }
}

pub const HEADER_LEN: usize = 8;
const DEFAULT_MAX_LEN: u64 = 1 << 20;
const MAX_MAX_LEN: u64 = 128 << 20;

/// `MC_HANDSHAKE_MAX_LENGTH` (bytes, 1 MiB..128 MiB, default 1 MiB), read once
/// like upstream.
pub fn max_frame_len() -> u64 {
    static MAX: OnceLock<u64> = OnceLock::new();
    *MAX.get_or_init(|| {
        crate::config::env_u64(
            "MC_HANDSHAKE_MAX_LENGTH",
            DEFAULT_MAX_LEN,
            DEFAULT_MAX_LEN,
            MAX_MAX_LEN,
        )
    })
}

/// Encode one frame.
pub fn encode(framing: Framing, json: &str) -> Vec<u8> {
    let type_len = match framing {
        Framing::Typed(_) => 1,
        Framing::Legacy => 0,
    };
    let length = (json.len() + type_len) as u64;
    let mut out = Vec::with_capacity(HEADER_LEN + json.len() + type_len);
    out.extend_from_slice(&length.to_ne_bytes());
    if let Framing::Typed(t) = framing {
        out.push(t as u8);
    }
    out.extend_from_slice(json.as_bytes());
    out
}

/// Write one frame with a single `write_all` (one segment when it fits).
pub fn write_frame<W: Write>(w: &mut W, framing: Framing, json: &str) -> Result<()> {
    w.write_all(&encode(framing, json))?;
    w.flush()?;
    Ok(())
}

/// Decode one whole frame held in `buf` (no bytes may follow it).
pub fn decode(buf: &[u8], max_len: u64) -> Result<Frame> {
    let mut cursor = buf;
    let frame = read_frame(&mut cursor, max_len)?;
    if !cursor.is_empty() {
        return Err(Error::Socket(format!(
            "{} unexpected bytes after the handshake frame",
            cursor.len()
        )));
    }
    Ok(frame)
}

/// Read one frame from `r`: header, bounded payload, type classification and
/// JSON validation.
pub fn read_frame<R: Read>(r: &mut R, max_len: u64) -> Result<Frame> {
    let mut header = [0u8; HEADER_LEN];
    read_header(r, &mut header)?;
    let length = u64::from_ne_bytes(header);
    if length == 0 || length > max_len {
        let what = if length == 0 {
            "zero length".to_string()
        } else {
            format!("length {length} exceeds the maximum {max_len}")
        };
        return Err(Error::Socket(match probe_kind(&header) {
            Some(kind) => format!("not a handshake frame ({kind}): {what}"),
            None => format!("invalid handshake frame: {what}"),
        }));
    }

    // `length <= max_len`, but grow with the data actually received.
    let mut payload = Vec::with_capacity(length.min(64 * 1024) as usize);
    let got = Read::take(&mut *r, length).read_to_end(&mut payload)?;
    if (got as u64) < length {
        return Err(Error::Socket(format!(
            "truncated handshake frame: got {got} of {length} payload bytes"
        )));
    }

    // Upstream compares the first byte as a (signed) char with Probe (3).
    let first = payload[0];
    let (framing, json) = if (first as i8) <= MsgType::Probe as i8 {
        match MsgType::from_u8(first) {
            Some(t) => (Framing::Typed(t), payload.split_off(1)),
            None => {
                return Err(Error::Socket(format!(
                    "unknown handshake message type {first:#04x}"
                )))
            }
        }
    } else {
        (Framing::Legacy, payload)
    };

    // jsoncpp's reader passes bytes that are not UTF-8 through inside
    // strings, and older jsoncpp writers send them raw (1.9.x writes U+FFFD
    // for them): take them as U+FFFD rather than refuse the request.
    let text = match String::from_utf8(json) {
        Ok(text) => text,
        Err(e) => {
            log::debug!(
                "handshake payload is not UTF-8 ({}); invalid bytes read as U+FFFD",
                e.utf8_error()
            );
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    };
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| Error::MalformedJson(format!("handshake payload is not JSON: {e}")))?;
    Ok(Frame {
        framing,
        json: text.into_bytes(),
    })
}

fn read_header<R: Read>(r: &mut R, header: &mut [u8; HEADER_LEN]) -> Result<()> {
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => {
                return Err(Error::Socket(
                    "connection closed before a handshake frame".into(),
                ))
            }
            Ok(0) => {
                return Err(Error::Socket(format!(
                    "truncated handshake frame header: {filled} of {HEADER_LEN} bytes"
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Socket(format!("reading handshake frame: {e}"))),
        }
    }
    Ok(())
}

/// Name common non-handshake clients hitting the port, for the log.
fn probe_kind(header: &[u8; HEADER_LEN]) -> Option<&'static str> {
    const HTTP: [&[u8]; 9] = [
        b"GET ", b"PUT ", b"POST", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ",
    ];
    if header[0] == 0x16 && header[1] == 0x03 {
        Some("TLS handshake")
    } else if HTTP.iter().any(|m| header.starts_with(m)) {
        Some("HTTP request")
    } else if header.starts_with(b"SSH-") {
        Some("SSH client")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    #[test]
    fn typed_round_trip() {
        let bytes = encode(Framing::Typed(MsgType::Probe), "{}\n");
        assert_eq!(bytes, b"\x04\0\0\0\0\0\0\0\x03{}\n");
        let f = decode(&bytes, MAX).unwrap();
        assert_eq!(f.framing, Framing::Typed(MsgType::Probe));
        assert_eq!(f.text(), "{}\n");
    }

    #[test]
    fn legacy_round_trip() {
        let bytes = encode(Framing::Legacy, "{\"a\":1}\n");
        assert_eq!(&bytes[..8], &8u64.to_ne_bytes());
        let f = decode(&bytes, MAX).unwrap();
        assert_eq!(f.framing, Framing::Legacy);
        assert_eq!(f.framing.msg_type(), MsgType::Connection);
        assert_eq!(f.text(), "{\"a\":1}\n");
    }

    #[test]
    fn rejects_bad_frames() {
        let zero = [0u8; 8];
        assert!(matches!(decode(&zero, MAX), Err(Error::Socket(_))));
        let mut huge = (MAX + 1).to_ne_bytes().to_vec();
        huge.push(3);
        assert!(matches!(decode(&huge, MAX), Err(Error::Socket(_))));
        // Type 0x80 counts as typed (signed char) and is unknown.
        let mut t = 3u64.to_ne_bytes().to_vec();
        t.extend_from_slice(&[0x80, b'{', b'}']);
        assert!(matches!(decode(&t, MAX), Err(Error::Socket(_))));
        // Typed frame with only a type byte: empty JSON.
        let mut e = 1u64.to_ne_bytes().to_vec();
        e.push(2);
        assert!(matches!(decode(&e, MAX), Err(Error::MalformedJson(_))));
        let garbage = encode(Framing::Typed(MsgType::Notify), "{not json");
        assert!(matches!(
            decode(&garbage, MAX),
            Err(Error::MalformedJson(_))
        ));
        let mut bad_utf8 = 3u64.to_ne_bytes().to_vec();
        bad_utf8.extend_from_slice(&[2, 0xff, 0xfe]);
        assert!(matches!(
            decode(&bad_utf8, MAX),
            Err(Error::MalformedJson(_))
        ));
        // Not UTF-8 inside a string (an older jsoncpp writer sends the bytes
        // raw): read, the bytes as U+FFFD.
        let raw = b"{\"name\":\"n\xff\",\"notify_msg\":\"m\xc3\"}";
        let mut frame = ((raw.len() + 1) as u64).to_ne_bytes().to_vec();
        frame.push(2);
        frame.extend_from_slice(raw);
        let f = decode(&frame, MAX).unwrap();
        assert_eq!(
            f.text(),
            "{\"name\":\"n\u{fffd}\",\"notify_msg\":\"m\u{fffd}\"}"
        );
        let full = encode(Framing::Typed(MsgType::Probe), "{}\n");
        assert!(decode(&full[..full.len() - 1], MAX).is_err());
        assert!(decode(&full[..5], MAX).is_err());
        let mut extra = full.clone();
        extra.push(b' ');
        assert!(decode(&extra, MAX).is_err());
    }

    #[test]
    fn probes_are_named() {
        let e = decode(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", MAX).unwrap_err();
        assert!(e.to_string().contains("HTTP"), "{e}");
        let tls = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        let e = decode(&tls, MAX).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
    }

    #[test]
    fn default_max_is_one_mib() {
        if std::env::var_os("MC_HANDSHAKE_MAX_LENGTH").is_none() {
            assert_eq!(max_frame_len(), 1 << 20);
        }
    }
}
