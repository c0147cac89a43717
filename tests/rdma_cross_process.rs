//! No false success across processes on the soft fabric: it is
//! in-process, so a transfer to a segment of another process must FAIL even
//! when the initiator has its own registered buffer at the very address of
//! the target's buffer (same device names, same QP numbers and keys).
//!
//! The test re-invokes its own binary as the target process (env
//! `TE_RS_TEST_XPROC_TARGET`); both map their buffer at one fixed address.

mod rdma_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rdma_support::*;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

const ROLE: &str = "TE_RS_TEST_XPROC_TARGET";
const TEST: &str = "transfer_to_another_process_fails_even_at_colliding_addresses";
/// Fixed in both processes, far from the heap and the libraries.
const ADDR: u64 = 0x5a5a_0000_0000;
const LEN: usize = 64 << 10;

/// `LEN` bytes mapped at exactly `ADDR`, filled with `fill`.
fn map_fixed(fill: &[u8]) -> &'static mut [u8] {
    // SAFETY: an anonymous private mapping; MAP_FIXED_NOREPLACE never
    // replaces an existing mapping, and the result is checked below.
    let p = unsafe {
        libc::mmap(
            ADDR as *mut libc::c_void,
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(
        p as u64,
        ADDR,
        "cannot map {ADDR:#x} in pid {}",
        std::process::id()
    );
    // SAFETY: the mapping above is LEN bytes, readable and writable, and is
    // never unmapped (the process ends with the test).
    let buf = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, LEN) };
    buf.copy_from_slice(fill);
    buf
}

fn engine() -> std::sync::Arc<TransferEngine> {
    soft_env();
    // A short local ACK timeout keeps the expected failures fast.
    std::env::set_var("MC_IB_TIMEOUT", "10");
    std::env::set_var("MC_RETRY_CNT", "2");
    rdma_engine(&["soft0"])
}

/// The target process: publish a buffer at `ADDR`, then report whether its
/// bytes are unchanged when the initiator asks.
fn target_role() {
    let want = pattern(0x71, LEN);
    let buf = map_fixed(&want);
    let e = engine();
    e.register_local_memory(ADDR, LEN as u64, "cpu:0", true)
        .expect("register");
    println!("XPROC READY {}", e.local_server_name());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    println!("XPROC UNCHANGED {}", buf[..] == want[..]);
    e.shutdown();
}

/// Kills the target if the initiator's checks panic.
struct Target(Child);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The target's stdout, line by line, read on a thread so that waiting for
/// it is bounded.
fn lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn line_with(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the target process said nothing for 60 s, or exited");
        // libtest may print "test NAME ... " before it on the same line.
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].trim_end().to_string();
        }
    }
}

#[test]
fn transfer_to_another_process_fails_even_at_colliding_addresses() {
    if std::env::var_os(ROLE).is_some() {
        return target_role();
    }
    let mut child = Target(
        Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the target process"),
    );
    let out = lines(child.0.stdout.take().unwrap());
    let name = line_with(&out, "XPROC READY ");

    // The initiator's own buffer at the target's address, registered first
    // so that its key matches the target's too.
    let mine = pattern(0x33, LEN);
    let colliding = map_fixed(&mine);
    let a = engine();
    a.register_local_memory(ADDR, LEN as u64, "cpu:0", true)
        .unwrap();
    let src = Buf(pattern(0x55, LEN));
    let dst = Buf::new(LEN, 0);
    register(&a, &src);
    register(&a, &dst);
    let seg = a.open_segment(&name).expect("open the target's segment");

    let w = run_batch(
        &a,
        &[req(Opcode::Write, src.addr(), seg, ADDR, LEN as u64)],
        Duration::from_secs(60),
    );
    assert_eq!(w[0].status, TaskStatus::Failed, "WRITE to another process");
    let r = run_batch(
        &a,
        &[req(Opcode::Read, dst.addr(), seg, ADDR, LEN as u64)],
        Duration::from_secs(60),
    );
    assert_eq!(r[0].status, TaskStatus::Failed, "READ from another process");
    assert!(dst.0.iter().all(|&b| b == 0), "READ wrote local bytes");
    assert!(colliding[..] == mine[..], "WRITE landed in the initiator");
    assert!(counter(&a, "error_completions") > 0);

    let stdin = child.0.stdin.as_mut().unwrap();
    stdin.write_all(b"CHECK\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(line_with(&out, "XPROC UNCHANGED "), "true");
    assert!(child.0.wait().unwrap().success(), "target process failed");
    a.shutdown();
}
