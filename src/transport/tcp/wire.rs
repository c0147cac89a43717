//! Mooncake TCP data protocol codec (spec §7.3): the 24-byte request header
//! and the 8-byte v2 status frame. Pure; no I/O.

/// Size of the request header on the wire (C struct with natural padding).
pub const HEADER_LEN: usize = 24;
/// Size of a v2 status frame.
pub const STATUS_LEN: usize = 8;

/// Opcode values (low 7 bits).
pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
/// Opcode bit announcing v2 framing (status frames).
pub const V2_FLAG: u8 = 0x80;

/// High 32 bits of every status frame: "MCTV".
pub const STATUS_MAGIC: u32 = 0x4D43_5456;

/// One request header as sent by the initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes to transfer.
    pub size: u64,
    /// Absolute address in the server's memory.
    pub addr: u64,
    /// Raw opcode byte, v2 flag included.
    pub opcode: u8,
}

impl Header {
    pub fn new(is_write: bool, v2: bool, addr: u64, size: u64) -> Header {
        let op = if is_write { OP_WRITE } else { OP_READ };
        Header {
            size,
            addr,
            opcode: op | if v2 { V2_FLAG } else { 0 },
        }
    }

    /// Padding is written as zero (upstream leaves it uninitialised).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16] = self.opcode;
        b
    }

    /// Padding bytes 17..24 are ignored.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[0..8]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[8..16]);
        Header {
            size: u64::from_le_bytes(size),
            addr: u64::from_le_bytes(addr),
            opcode: b[16],
        }
    }

    pub fn is_v2(&self) -> bool {
        self.opcode & V2_FLAG != 0
    }

    /// The server treats every opcode other than WRITE as READ (v1 behaviour).
    pub fn is_write(&self) -> bool {
        self.opcode & !V2_FLAG == OP_WRITE
    }
}

/// A decoded v2 status frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    AddrRejected,
    /// Magic present, code unknown to us: treated as a failure.
    Other(u32),
}

impl Status {
    pub fn code(self) -> u32 {
        match self {
            Status::Ok => 0,
            Status::AddrRejected => 1,
            Status::Other(c) => c,
        }
    }

    pub fn encode(self) -> [u8; STATUS_LEN] {
        (((STATUS_MAGIC as u64) << 32) | self.code() as u64).to_le_bytes()
    }

    /// `None` when the frame lacks the magic (malformed).
    pub fn decode(b: &[u8; STATUS_LEN]) -> Option<Status> {
        let v = u64::from_le_bytes(*b);
        if (v >> 32) as u32 != STATUS_MAGIC {
            return None;
        }
        Some(match v as u32 {
            0 => Status::Ok,
            1 => Status::AddrRejected,
            c => Status::Other(c),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header::new(true, true, 0x7f54_bbe1_a100, 64);
        let b = h.encode();
        assert_eq!(
            b,
            [
                0x40, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xa1, 0xe1, 0xbb, 0x54, 0x7f, 0, 0, 0x81, 0, 0, 0,
                0, 0, 0, 0
            ]
        );
        assert_eq!(Header::decode(&b), h);
        assert!(h.is_v2() && h.is_write());
        let r = Header::new(false, false, 1, 2);
        assert_eq!(r.opcode, 0);
        assert!(!r.is_v2() && !r.is_write());
    }

    #[test]
    fn padding_is_ignored_and_unknown_ops_are_reads() {
        let mut b = Header::new(false, true, 16, 32).encode();
        b[17..].copy_from_slice(b"1\r\nHost");
        let h = Header::decode(&b);
        assert_eq!((h.size, h.addr, h.opcode), (32, 16, 0x80));
        b[16] = 0x87;
        assert!(!Header::decode(&b).is_write());
        b[16] = 0x01;
        assert!(Header::decode(&b).is_write());
    }

    #[test]
    fn status_frames() {
        assert_eq!(Status::Ok.encode(), [0, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]);
        assert_eq!(
            Status::AddrRejected.encode(),
            [1, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]
        );
        assert_eq!(Status::decode(&Status::Ok.encode()), Some(Status::Ok));
        assert_eq!(
            Status::decode(&Status::AddrRejected.encode()),
            Some(Status::AddrRejected)
        );
        assert_eq!(
            Status::decode(&[7, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]),
            Some(Status::Other(7))
        );
        assert_eq!(Status::decode(&[0; 8]), None);
        assert_eq!(Status::decode(&[0, 0, 0, 0, 0x56, 0x54, 0x43, 0x4e]), None);
    }
}
