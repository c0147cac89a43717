//! Shared helpers for the TCP transport integration tests: transports
//! driven directly (no engine), fake target descriptors, guarded buffers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::metadata::descriptor::SegmentDesc;
use transfer_engine::metadata::Metadata;
use transfer_engine::task::{Opcode, Task, TaskStatus, TransferRequest};
use transfer_engine::threads::ThreadCount;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::TcpTransport;
use transfer_engine::transport::{LocalBuffer, Submission, Transport, TransportContext};

/// The fake target's segment name: in P2P mode rpc_meta takes the host from it.
pub const TARGET_NAME: &str = "127.0.0.1:1234";

pub fn ctx(name: &str) -> TransportContext {
    transfer_engine::logging::init();
    TransportContext {
        local_server_name: name.to_string(),
        metadata: Metadata::new("P2PHANDSHAKE", name).expect("metadata"),
        threads: ThreadCount::default(),
    }
}

pub fn transport(cfg: TcpConfig) -> Arc<TcpTransport> {
    TcpTransport::install_with_config(ctx("127.0.0.1:1"), cfg).expect("install tcp")
}

pub fn target(port: u16, version: u32) -> Arc<SegmentDesc> {
    Arc::new(SegmentDesc {
        name: TARGET_NAME.into(),
        protocol: "tcp".into(),
        tcp_data_port: port,
        tcp_proto_version: version,
        ..Default::default()
    })
}

pub fn register(t: &TcpTransport, addr: u64, length: u64) {
    t.register_memory(&LocalBuffer {
        addr,
        length,
        location: "cpu:0".into(),
        remote_accessible: true,
    })
    .expect("register");
}

/// Submit one request and return its task.
pub fn submit(
    t: &TcpTransport,
    target: &Arc<SegmentDesc>,
    write: bool,
    source: u64,
    remote: u64,
    length: u64,
) -> Arc<Task> {
    let mut tasks = submit_all(t, target, &[(write, source, remote, length)]);
    tasks.pop().expect("one task")
}

/// Submit `(write, local, remote, len)` requests in one call (one run to the
/// peer, so several may be pipelined on one connection); their tasks.
pub fn submit_all(
    t: &TcpTransport,
    target: &Arc<SegmentDesc>,
    reqs: &[(bool, u64, u64, u64)],
) -> Vec<Arc<Task>> {
    let mut subs = Vec::new();
    let mut tasks = Vec::new();
    for &(write, source, remote, length) in reqs {
        let request = TransferRequest {
            opcode: if write { Opcode::Write } else { Opcode::Read },
            source,
            target_id: 1,
            target_offset: remote,
            length,
        };
        let task = Arc::new(Task::new(request));
        tasks.push(task.clone());
        subs.push(Submission {
            request,
            task,
            target,
        });
    }
    t.submit(subs).expect("submit");
    tasks
}

/// Poll until terminal; panics (fails the test) after `limit`.
pub fn wait(task: &Task, limit: Duration) -> TaskStatus {
    let deadline = Instant::now() + limit;
    loop {
        let s = task.status();
        if s != TaskStatus::Waiting {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "task still WAITING after {limit:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub const GUARD: usize = 4096;
pub const GUARD_BYTE: u8 = 0xEE;

/// A heap region with guard bytes on both sides of the usable part.
pub struct Guarded {
    buf: Vec<u8>,
    pub len: usize,
}

impl Guarded {
    pub fn new(len: usize, fill: u8) -> Guarded {
        let mut buf = vec![GUARD_BYTE; len + 2 * GUARD];
        buf[GUARD..GUARD + len].fill(fill);
        Guarded { buf, len }
    }

    pub fn addr(&self) -> u64 {
        self.buf[GUARD..].as_ptr() as u64
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[GUARD..GUARD + self.len]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.buf[GUARD..GUARD + len]
    }

    pub fn guards_intact(&self) -> bool {
        self.buf[..GUARD].iter().all(|&b| b == GUARD_BYTE)
            && self.buf[GUARD + self.len..]
                .iter()
                .all(|&b| b == GUARD_BYTE)
    }
}

/// Deterministic, position-dependent bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}
