//! The C ABI called directly from Rust: handle validation, return families,
//! argument checks and the notification buffer round trip through libc.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;
use std::time::{Duration, Instant};

use transfer_engine::ffi::batch::*;
use transfer_engine::ffi::diagnostics::*;
use transfer_engine::ffi::engine::*;
use transfer_engine::ffi::memory::*;
use transfer_engine::ffi::notify::*;
use transfer_engine::ffi::segment::*;
use transfer_engine::ffi::*;
use transfer_engine::TransferEngine;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn new_engine() -> transfer_engine_t {
    let (conn, name) = (c("P2PHANDSHAKE"), c("127.0.0.1"));
    // SAFETY: valid NUL-terminated strings; NULL ip is ignored.
    let e = unsafe { createTransferEngine(conn.as_ptr(), name.as_ptr(), ptr::null(), 0, 0) };
    assert!(!e.is_null(), "createTransferEngine failed");
    e
}

fn local_name(e: transfer_engine_t) -> String {
    let mut buf = [0 as c_char; 128];
    // SAFETY: buf has 128 writable bytes.
    assert_eq!(
        unsafe { getLocalIpAndPort(e, buf.as_mut_ptr(), buf.len()) },
        0
    );
    // SAFETY: getLocalIpAndPort NUL-terminates.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string()
}

fn notify(name: &CString, msg: &CString) -> notify_msg_t {
    notify_msg_t {
        name: name.as_ptr() as *mut c_char,
        msg: msg.as_ptr() as *mut c_char,
    }
}

/// Every function refuses a handle that is not a live engine.
fn assert_refused(h: transfer_engine_t) {
    let s = c("x");
    let mut buf = [0 as c_char; 32];
    let mut size = 42;
    let mut count = 1usize;
    let mut stats = [nic_load_stat_t {
        device_name: [0; 64],
        inflight_bytes: 0,
        ewma_bandwidth_bps: 0.0,
    }];
    let mut st = transfer_status {
        status: 77,
        transferred_bytes: 77,
    };
    let mut req = transfer_request {
        opcode: OPCODE_WRITE,
        source: ptr::null_mut(),
        target_id: 1,
        target_offset: 0,
        length: 1,
    };
    let mem = [0u8; 64];
    let p = mem.as_ptr() as *mut c_void;
    let n = notify(&s, &s);
    // SAFETY: all pointers are valid for what each function reads/writes.
    unsafe {
        assert_eq!(discoverTopology(h), -1);
        assert_eq!(getLocalIpAndPort(h, buf.as_mut_ptr(), buf.len()), -1);
        assert!(installTransport(h, s.as_ptr(), ptr::null_mut()).is_null());
        assert_eq!(uninstallTransport(h, s.as_ptr()), -1);
        assert_eq!(openSegment(h, s.as_ptr()), -1);
        assert_eq!(openSegmentNoCache(h, s.as_ptr()), -1);
        assert_eq!(closeSegment(h, 1), -1);
        assert_eq!(warmupEfaSegment(h, s.as_ptr()), 0);
        assert_eq!(removeLocalSegment(h, s.as_ptr()), -1);
        assert_eq!(registerLocalMemory(h, p, 64, s.as_ptr(), 1), -1);
        assert_eq!(unregisterLocalMemory(h, p), -1);
        let mut entry = buffer_entry_t {
            addr: p,
            length: 64,
        };
        assert_eq!(registerLocalMemoryBatch(h, &mut entry, 1, s.as_ptr()), -1);
        let mut addrs = [p];
        assert_eq!(unregisterLocalMemoryBatch(h, addrs.as_mut_ptr(), 1), -1);
        assert_eq!(allocateBatchID(h, 1), INVALID_BATCH);
        assert_eq!(submitTransfer(h, 1, &mut req, 1), 1);
        assert_eq!(submitTransferWithNotify(h, 1, &mut req, 1, n), 1);
        assert!(getNotifsFromEngine(h, &mut size).is_null());
        assert_eq!(size, 0);
        assert_eq!(genNotifyInEngine(h, 1, n), -1);
        assert_eq!(getTransferStatus(h, 1, 0, &mut st), 1);
        assert_eq!((st.status, st.transferred_bytes), (77, 77));
        assert_eq!(freeBatchID(h, 1), 1);
        assert_eq!(syncSegmentCache(h), -1);
        assert_eq!(getNicLoadStats(h, stats.as_mut_ptr(), &mut count), -1);
        assert_eq!(showLinks(h, buf.as_mut_ptr(), buf.len(), 1), -1);
    }
    enableGracefulShutdown(h);
    destroyTransferEngine(h);
}

#[test]
fn null_garbage_and_destroyed_handles_are_refused() {
    assert_refused(ptr::null_mut());
    assert_refused(0x1234 as transfer_engine_t);
    assert_refused(usize::MAX as transfer_engine_t);
    let e = new_engine();
    destroyTransferEngine(e);
    assert_refused(e);
}

#[test]
fn bad_strings_and_unknown_scheme_return_null() {
    let bad = [0xffu8, 0xfe, 0];
    let bad = bad.as_ptr() as *const c_char;
    let (p2p, host) = (c("P2PHANDSHAKE"), c("127.0.0.1"));
    let bogus = c("bogus://127.0.0.1:1");
    // SAFETY: NUL-terminated strings or NULL.
    unsafe {
        assert!(createTransferEngine(ptr::null(), host.as_ptr(), ptr::null(), 0, 0).is_null());
        assert!(createTransferEngine(p2p.as_ptr(), ptr::null(), ptr::null(), 0, 0).is_null());
        assert!(createTransferEngine(bad, host.as_ptr(), ptr::null(), 0, 0).is_null());
        assert!(createTransferEngine(bogus.as_ptr(), host.as_ptr(), ptr::null(), 0, 0).is_null());
    }
    let e = new_engine();
    let proto = c("no-such-protocol");
    // SAFETY: as above; `e` is live.
    unsafe {
        assert!(installTransport(e, proto.as_ptr(), ptr::null_mut()).is_null());
        assert!(installTransport(e, bad, ptr::null_mut()).is_null());
        let mut args = [c"not json".as_ptr() as *mut c_void, ptr::null_mut()];
        let tcp = c("tcp");
        assert!(installTransport(e, tcp.as_ptr(), args.as_mut_ptr()).is_null());
        assert_eq!(openSegment(e, bad), -1);
        assert_eq!(openSegment(e, ptr::null()), -1);
        assert_eq!(removeLocalSegment(e, c"".as_ptr()), -1);
        assert_eq!(removeLocalSegment(e, c"never-opened".as_ptr()), 0);
    }
    destroyTransferEngine(e);
}

#[test]
fn register_and_batch_codes_follow_mooncake_families() {
    let e = new_engine();
    let mut mem = vec![0u8; 8192];
    let p = mem.as_mut_ptr() as *mut c_void;
    let loc = c("cpu:0");
    // SAFETY: `mem` outlives the registration; strings are NUL-terminated.
    unsafe {
        assert_eq!(registerLocalMemory(e, p, 0, loc.as_ptr(), 1), -1);
        assert_eq!(registerLocalMemory(e, p, 8192, loc.as_ptr(), 1), 0);
        assert_eq!(registerLocalMemory(e, p.add(10), 10, loc.as_ptr(), 1), -7);
        assert_eq!(unregisterLocalMemory(e, p.add(1)), -3);
        assert_eq!(unregisterLocalMemory(e, p), 0);
        assert_eq!(unregisterLocalMemory(e, p), -3);

        let b = allocateBatchID(e, 1);
        assert_ne!(b, INVALID_BATCH);
        let r = transfer_request {
            opcode: OPCODE_READ,
            source: p,
            target_id: 12345,
            target_offset: 0,
            length: 8,
        };
        let mut two = [r, r];
        assert_eq!(
            submitTransfer(e, b, two.as_mut_ptr(), 2),
            2,
            "too many requests"
        );
        assert_eq!(
            submitTransfer(e, b, two.as_mut_ptr(), 1),
            1,
            "unknown segment"
        );
        two[0].target_id = -1;
        assert_eq!(
            submitTransfer(e, b, two.as_mut_ptr(), 1),
            1,
            "negative segment"
        );
        assert_eq!(submitTransfer(e, b, ptr::null_mut(), 1), 1, "NULL entries");
        let mut st = transfer_status {
            status: 9,
            transferred_bytes: 9,
        };
        assert_eq!(getTransferStatus(e, b, 0, &mut st), 1, "no task 0");
        assert_eq!(st.status, 9, "status untouched on error");
        assert_eq!(getTransferStatus(e, b, 0, ptr::null_mut()), 1);
        assert_eq!(freeBatchID(e, b), 0);
        assert_eq!(freeBatchID(e, b), 1, "freed batch id is unknown");
        assert_eq!(freeBatchID(e, 0xdead_beef), 1);
    }
    destroyTransferEngine(e);
}

#[test]
fn diagnostics_truncate_and_reject_null() {
    let e = new_engine();
    let mut small = [0x55 as c_char; 4];
    let mut count = 8usize;
    let mut stats = [nic_load_stat_t {
        device_name: [0; 64],
        inflight_bytes: 0,
        ewma_bandwidth_bps: 0.0,
    }; 2];
    // SAFETY: buffers are valid for the lengths given.
    unsafe {
        assert_eq!(showLinks(e, ptr::null_mut(), 10, 0), -1);
        assert_eq!(showLinks(e, small.as_mut_ptr(), 0, 0), -1);
        assert_eq!(showLinks(e, small.as_mut_ptr(), small.len(), 1), 0);
        assert_eq!(CStr::from_ptr(small.as_ptr()).to_bytes().len(), 3);
        assert_eq!(getLocalIpAndPort(e, small.as_mut_ptr(), small.len()), 0);
        assert_eq!(
            CStr::from_ptr(small.as_ptr()).to_bytes(),
            &local_name(e).as_bytes()[..3]
        );
        assert_eq!(getNicLoadStats(e, ptr::null_mut(), &mut count), -1);
        assert_eq!(getNicLoadStats(e, stats.as_mut_ptr(), ptr::null_mut()), -1);
        assert_eq!(getNicLoadStats(e, stats.as_mut_ptr(), &mut count), 0);
        assert_eq!(count, 0, "no NICs without an RDMA transport");
    }
    destroyTransferEngine(e);
}

#[test]
fn notifications_round_trip_through_malloc_buffers() {
    let e = new_engine();
    let target = local_name(e);
    let sender = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).unwrap();
    let msgs = [("alpha", "first message"), ("beta", ""), ("γ", "ünïcode ✓")];
    for (n, m) in msgs {
        sender.metadata().send_notify(&target, n, m).unwrap();
    }
    let mut size = -5;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut collected = Vec::new();
    while collected.len() < msgs.len() && Instant::now() < deadline {
        // SAFETY: `size` is a valid int.
        let got = unsafe { getNotifsFromEngine(e, &mut size) };
        if got.is_null() {
            assert_eq!(size, 0);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        assert!(size > 0);
        // SAFETY: `got` holds `size` entries with NUL-terminated strings.
        unsafe {
            for i in 0..size as usize {
                let m = *got.add(i);
                collected.push((
                    CStr::from_ptr(m.name).to_str().unwrap().to_string(),
                    CStr::from_ptr(m.msg).to_str().unwrap().to_string(),
                ));
            }
            assert_eq!(freeNotifsMsgBuf(got, size), 0);
        }
    }
    let want: Vec<(String, String)> = msgs
        .iter()
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect();
    assert_eq!(collected, want, "arrival order, exact bytes");
    // Drained: the next call returns NULL and size 0.
    // SAFETY: as above.
    unsafe {
        assert!(getNotifsFromEngine(e, &mut size).is_null());
        assert_eq!(size, 0);
        // A buffer the caller allocated with malloc is freed the same way.
        let arr = libc::calloc(2, std::mem::size_of::<notify_msg_t>()) as *mut notify_msg_t;
        (*arr).name = libc::strdup(c"n".as_ptr());
        assert_eq!(freeNotifsMsgBuf(arr, 2), 0);
        assert_eq!(freeNotifsMsgBuf(ptr::null_mut(), 3), 0);
    }
    sender.shutdown();
    destroyTransferEngine(e);
}

/// Drain `e`'s notifications until `want` arrived (bounded), as raw bytes.
fn collect_notifies(e: transfer_engine_t, want: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut size = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        // SAFETY: `size` is a valid int.
        let got = unsafe { getNotifsFromEngine(e, &mut size) };
        if got.is_null() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        // SAFETY: `got` holds `size` entries with NUL-terminated strings.
        unsafe {
            for i in 0..size as usize {
                let m = *got.add(i);
                out.push((
                    CStr::from_ptr(m.name).to_bytes().to_vec(),
                    CStr::from_ptr(m.msg).to_bytes().to_vec(),
                ));
            }
            assert_eq!(freeNotifsMsgBuf(got, size), 0);
        }
    }
    out
}

#[test]
fn notifications_that_are_not_utf8_go_through_as_the_cpp_engine_sends_them() {
    // The C++ engine's JSON writer puts U+FFFD on the wire for each invalid
    // sequence and delivers the notification with its transfer (checked
    // against the PyPI wheel); te-rs refused the call and posted nothing.
    let (target, initiator) = (new_engine(), new_engine());
    let tcp = c("tcp");
    let loc = c("cpu:0");
    let mut dst = vec![0u8; 4096];
    let src = vec![0x5au8; 4096];
    // SAFETY: live engines, NUL-terminated strings, buffers outlive use.
    unsafe {
        assert!(!installTransport(target, tcp.as_ptr(), ptr::null_mut()).is_null());
        assert!(!installTransport(initiator, tcp.as_ptr(), ptr::null_mut()).is_null());
        let (d, s) = (dst.as_mut_ptr() as *mut c_void, src.as_ptr() as *mut c_void);
        assert_eq!(registerLocalMemory(target, d, 4096, loc.as_ptr(), 1), 0);
        assert_eq!(registerLocalMemory(initiator, s, 4096, loc.as_ptr(), 1), 0);
    }
    let seg_name = c(&local_name(target));
    // SAFETY: as above.
    let seg = unsafe { openSegment(initiator, seg_name.as_ptr()) };
    assert!(seg >= 0);

    let name = CString::new(b"n\xff\xfe-ok".to_vec()).unwrap();
    let msg = CString::new(b"m\xc3(\x80 done".to_vec()).unwrap();
    let mut req = [transfer_request {
        opcode: OPCODE_WRITE,
        source: src.as_ptr() as *mut c_void,
        target_id: seg,
        target_offset: dst.as_ptr() as u64,
        length: 4096,
    }];
    // SAFETY: as above.
    unsafe {
        let b = allocateBatchID(initiator, 1);
        assert_eq!(
            submitTransferWithNotify(initiator, b, req.as_mut_ptr(), 1, notify(&name, &msg)),
            0
        );
        let mut st = transfer_status {
            status: STATUS_WAITING,
            transferred_bytes: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while st.status != STATUS_COMPLETED && Instant::now() < deadline {
            assert_eq!(getTransferStatus(initiator, b, 0, &mut st), 0);
            assert!(st.status != STATUS_FAILED, "transfer failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(st.status, STATUS_COMPLETED);
        assert_eq!(freeBatchID(initiator, b), 0);
        assert_eq!(
            genNotifyInEngine(initiator, seg as u64, notify(&msg, &name)),
            0
        );
    }
    assert!(dst.iter().all(|&b| b == 0x5a), "the transfer landed");
    let (n, m) = ("n\u{fffd}\u{fffd}-ok", "m\u{fffd}(\u{fffd} done");
    let want = vec![
        (n.as_bytes().to_vec(), m.as_bytes().to_vec()),
        (m.as_bytes().to_vec(), n.as_bytes().to_vec()),
    ];
    assert_eq!(collect_notifies(target, 2), want);

    // An older C++ engine's writer sends the bytes raw: the request is
    // answered "success" and delivered with U+FFFD for them.
    let port: u16 = local_name(target)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let json = b"{\"name\":\"raw\xff\",\"notify_msg\":\"x\x80y\"}\n";
    let mut frame = ((json.len() + 1) as u64).to_ne_bytes().to_vec();
    frame.push(2); // Notify
    frame.extend_from_slice(json);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    use std::io::{Read, Write};
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 8];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u64::from_ne_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[1..]).to_string();
    assert!(reply.contains("\"notify_msg\":\"success\""), "{reply}");
    assert_eq!(
        collect_notifies(target, 1),
        vec![(
            "raw\u{fffd}".as_bytes().to_vec(),
            "x\u{fffd}y".as_bytes().to_vec()
        )]
    );
    destroyTransferEngine(initiator);
    destroyTransferEngine(target);
}
