//! FAILED means it never lands: 256 WRITEs to a SIGSTOPped te-rs target
//! (a child process) fail at the status timeout; after SIGCONT not one of
//! their bytes reaches the target's memory, even those its kernel had
//! buffered, and retries with new data from the same and from a new
//! initiator are all the memory holds.
//!
//! CI size: 3 runs. The long form: `TE_FENCE_RUNS=20 cargo test
//! --test tcp_failed_never_lands` (about 3 s a run).

mod limits_support;
mod tcp_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use limits_support::*;
use tcp_support::*;
use transfer_engine::task::TaskStatus;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::TcpTransport;
use transfer_engine::transport::Transport;

const BLOCK: usize = 64 << 10;
const BLOCKS: usize = 256;
const LIMIT: Duration = Duration::from_secs(20);

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The target, run as a child process of the test below (ignored on its
/// own). Commands on stdin: `conns` (open data connections), `dump` (a hash
/// per block), `quit`.
#[test]
#[ignore]
fn target_process() {
    if std::env::var_os("TE_FENCE_CHILD").is_none() {
        return;
    }
    let t = transport(TcpConfig::default());
    let buf = Guarded::new(BLOCK * BLOCKS, 0);
    register(&t, buf.addr(), (BLOCK * BLOCKS) as u64);
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {} {}", t.data_port(), buf.addr()).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().trim() {
            "conns" => writeln!(out, "CONNS {}", t.open_data_connections()).unwrap(),
            "dump" => {
                let h: Vec<String> = buf
                    .data()
                    .chunks(BLOCK)
                    .map(|b| fnv(b).to_string())
                    .collect();
                writeln!(out, "DUMP {}", h.join(",")).unwrap();
            }
            _ => break,
        }
        out.flush().unwrap();
    }
    t.shutdown();
}

struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
    addr: u64,
}

impl Target {
    fn spawn() -> Target {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "target_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TE_FENCE_CHILD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let ready = Self::line(&mut stdout, "READY");
        let mut it = ready.split(' ');
        let port = it.next().unwrap().parse().unwrap();
        let addr = it.next().unwrap().parse().unwrap();
        Target {
            child,
            stdin,
            stdout,
            port,
            addr,
        }
    }

    fn line(r: &mut BufReader<ChildStdout>, tag: &str) -> String {
        let mut l = String::new();
        loop {
            l.clear();
            assert!(r.read_line(&mut l).unwrap() > 0, "target exited");
            // libtest's "test target_process ... " may share the line.
            if let Some(i) = l.find(tag) {
                return l[i + tag.len()..].trim().to_string();
            }
        }
    }

    fn ask(&mut self, cmd: &str, tag: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        Self::line(&mut self.stdout, tag)
    }

    fn conns(&mut self) -> usize {
        self.ask("conns", "CONNS").parse().unwrap()
    }

    fn blocks(&mut self) -> Vec<u64> {
        self.ask("dump", "DUMP")
            .split(',')
            .map(|h| h.parse().unwrap())
            .collect()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill() on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Whether every thread of the child is stopped (state `T` in
    /// /proc): SIGSTOP takes effect when each thread next runs.
    fn all_stopped(&self) -> bool {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(dir).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            // "pid (comm) S ...": the state follows the last ')'.
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('T')
        })
    }
}

/// Submit one WRITE per block in `range` of `data` and wait for each.
fn write_blocks(
    init: &TcpTransport,
    tgt: &Target,
    data: &[u8],
    range: std::ops::Range<usize>,
) -> Vec<TaskStatus> {
    let desc = target(tgt.port, 2);
    let tasks: Vec<_> = range
        .map(|i| {
            submit(
                init,
                &desc,
                true,
                data[i * BLOCK..].as_ptr() as u64,
                tgt.addr + (i * BLOCK) as u64,
                BLOCK as u64,
            )
        })
        .collect();
    tasks.iter().map(|t| wait(t, LIMIT)).collect()
}

fn one_run(run: usize) {
    let mut tgt = Target::spawn();
    let cfg = TcpConfig {
        status_timeout: Duration::from_secs(1),
        ..TcpConfig::default()
    };
    let init = transport(cfg.clone());
    let failed_data = pattern(BLOCK * BLOCKS, 1000 + run as u64);
    tgt.signal(libc::SIGSTOP);
    assert!(
        eventually(LIMIT, || tgt.all_stopped()),
        "run {run}: SIGSTOP"
    );
    let st = write_blocks(&init, &tgt, &failed_data, 0..BLOCKS);
    let failed = st.iter().filter(|s| **s == TaskStatus::Failed).count();
    assert_eq!(
        failed, BLOCKS,
        "run {run}: WRITEs to a stopped target: {st:?}"
    );
    tgt.signal(libc::SIGCONT);
    // The target drains what its kernel held: every stalled connection
    // ends (we reset them all), twice in a row with nothing open.
    let mut zero_in_a_row = 0;
    assert!(
        eventually(LIMIT, || {
            zero_in_a_row = if tgt.conns() == 0 {
                zero_in_a_row + 1
            } else {
                0
            };
            zero_in_a_row >= 3
        }),
        "run {run}: the stalled connections never ended"
    );
    let zero = fnv(&vec![0u8; BLOCK]);
    let landed = tgt.blocks().iter().filter(|&&h| h != zero).count();
    assert_eq!(
        landed, 0,
        "run {run}: {landed} blocks changed by WRITEs that were reported FAILED"
    );
    // Retries with new data: the first half from the same initiator, the
    // second from a new one.
    let retry = pattern(BLOCK * BLOCKS, 2000 + run as u64);
    let fresh = transport(cfg);
    let mut st = write_blocks(&init, &tgt, &retry, 0..BLOCKS / 2);
    st.extend(write_blocks(&fresh, &tgt, &retry, BLOCKS / 2..BLOCKS));
    assert!(
        st.iter().all(|s| *s == TaskStatus::Completed),
        "run {run}: retries {st:?}"
    );
    let want: Vec<u64> = retry.chunks(BLOCK).map(fnv).collect();
    let got = tgt.blocks();
    let stale = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert_eq!(stale, 0, "run {run}: {stale} blocks do not hold the retry");
    writeln!(tgt.stdin, "quit").unwrap();
    tgt.stdin.flush().unwrap();
    let _ = tgt.child.wait();
    init.shutdown();
    fresh.shutdown();
}

#[test]
fn writes_reported_failed_to_a_stopped_target_never_land() {
    let _serial = serial();
    capture_logs();
    let runs: usize = std::env::var("TE_FENCE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 0..runs {
        one_run(run);
    }
}
