//! `#[repr(C)]` types and constants of `transfer_engine_c.h` (spec §1.1).
//! Names follow the C header exactly, hence the lowercase type names.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

pub type transfer_engine_t = *mut c_void;
pub type transport_t = *mut c_void;
/// `#define segment_id_t int32_t` in the header.
pub type segment_id_t = i32;
/// `#define batch_id_t uint64_t` in the header.
pub type batch_id_t = u64;

pub const LOCAL_SEGMENT: i32 = 0;
pub const INVALID_BATCH: u64 = u64::MAX;
pub const OPCODE_READ: i32 = 0;
pub const OPCODE_WRITE: i32 = 1;
pub const STATUS_WAITING: i32 = 0;
pub const STATUS_PENDING: i32 = 1;
pub const STATUS_INVALID: i32 = 2;
pub const STATUS_CANCELED: i32 = 3;
pub const STATUS_COMPLETED: i32 = 4;
pub const STATUS_TIMEOUT: i32 = 5;
pub const STATUS_FAILED: i32 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct transfer_request {
    pub opcode: c_int,
    pub source: *mut c_void,
    pub target_id: segment_id_t,
    pub target_offset: u64,
    pub length: u64,
}

pub type transfer_request_t = transfer_request;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct notify_msg {
    pub name: *mut c_char,
    pub msg: *mut c_char,
}

pub type notify_msg_t = notify_msg;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct transfer_status {
    pub status: c_int,
    pub transferred_bytes: u64,
}

pub type transfer_status_t = transfer_status;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct buffer_entry {
    pub addr: *mut c_void,
    pub length: usize,
}

pub type buffer_entry_t = buffer_entry;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct nic_load_stat {
    pub device_name: [c_char; 64],
    pub inflight_bytes: u64,
    pub ewma_bandwidth_bps: f64,
}

pub type nic_load_stat_t = nic_load_stat;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_spec() {
        assert_eq!(size_of::<transfer_request>(), 40);
        assert_eq!(align_of::<transfer_request>(), 8);
        assert_eq!(offset_of!(transfer_request, source), 8);
        assert_eq!(offset_of!(transfer_request, target_id), 16);
        assert_eq!(offset_of!(transfer_request, target_offset), 24);
        assert_eq!(offset_of!(transfer_request, length), 32);
        assert_eq!(size_of::<notify_msg>(), 16);
        assert_eq!(size_of::<transfer_status>(), 16);
        assert_eq!(offset_of!(transfer_status, transferred_bytes), 8);
        assert_eq!(size_of::<buffer_entry>(), 16);
        assert_eq!(size_of::<nic_load_stat>(), 80);
        assert_eq!(offset_of!(nic_load_stat, inflight_bytes), 64);
        assert_eq!(offset_of!(nic_load_stat, ewma_bandwidth_bps), 72);
    }
}
