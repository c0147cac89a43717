//! te-bench as `transfer_engine_bench`: upstream's flags and result line,
//! read the way upstream's scripts read them; glog log lines, `MC_LOG_DIR`
//! files and the env_logger option, seen from outside the process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const TE_BENCH: &str = env!("CARGO_BIN_EXE_te-bench");

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("te-bench-compat-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// te-bench under upstream's name, as scripts/install.sh installs it.
fn transfer_engine_bench(dir: &Path) -> PathBuf {
    let link = dir.join("transfer_engine_bench");
    if !link.exists() {
        std::os::unix::fs::symlink(TE_BENCH, &link).unwrap();
    }
    link
}

/// The numbers of upstream's `Test completed` line, if `line` is one, after
/// checking the glog prefix `I1201 18:52:09.525316 26319 file:line] `.
fn completed(line: &str) -> Option<(f64, u64, f64, String)> {
    let (prefix, msg) = line.split_once("] Test completed: ")?;
    let b = prefix.as_bytes();
    assert!(
        b[0] == b'I' && b[1..5].iter().all(u8::is_ascii_digit),
        "{line}"
    );
    let fields: Vec<&str> = prefix[6..].split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert_eq!(fields[0].len(), 15, "{line}");
    assert!(fields[1].parse::<u32>().is_ok(), "{line}");
    assert!(fields[2].contains(".rs:"), "{line}");
    // "duration 1.00, batch count 123, throughput 0.45 GB/s"
    let rest = msg.strip_prefix("duration ")?;
    let (dur, rest) = rest.split_once(", batch count ")?;
    let (count, rest) = rest.split_once(", throughput ")?;
    let (rate, unit) = rest.split_once(' ')?;
    Some((
        dur.parse().ok()?,
        count.parse().ok()?,
        rate.parse().ok()?,
        unit.to_string(),
    ))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn te-bench");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const SMALL: &[&str] = &[
    "--threads=1",
    "--batch_size=2",
    "--block_size=4096",
    "--duration=0.3",
    "--nobaseline",
];

#[test]
fn te_bench_prints_the_result_line_as_a_glog_line() {
    // Six decimals: on a busy machine this small run's rate prints as
    // 0.00 GB/s with the default two.
    let out = run(Command::new(TE_BENCH)
        .args(SMALL)
        .arg("--report_precision=6")
        .env_remove("MC_LOG_DIR"));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter_map(completed).collect();
    assert_eq!(lines.len(), 1, "{err}");
    let (dur, count, rate, unit) = &lines[0];
    assert!(*dur >= 0.3 && *count > 0 && *rate > 0.0, "{err}");
    assert_eq!(unit, "GB/s");
    // te-bench keeps its table.
    assert!(String::from_utf8_lossy(&out.stdout).contains("| op    | block"));
}

struct Target(Child);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a te-bench target; its segment name and buffer address.
fn start_target() -> (Target, String, u64) {
    let mut child = Command::new(TE_BENCH)
        .args(["--mode=target", "--protocol=tcp", "--buffer_size=4m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let target = Target(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // "te-bench target ready: segment 127.0.0.1:PORT buffer 0x7f.. length N"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        ["te-bench", "target", "ready:", "segment"],
        "{line}"
    );
    assert_eq!((words[5], words[7]), ("buffer", "length"), "{line}");
    let addr = u64::from_str_radix(words[6].trim_start_matches("0x"), 16).unwrap();
    assert!(
        addr != 0 && words[8].parse::<u64>().unwrap() >= 4 << 20,
        "{line}"
    );
    (target, words[4].to_string(), addr)
}

#[test]
fn transfer_engine_bench_with_upstream_flags_against_a_target() {
    let (_target, segment, _) = start_target();
    let dir = temp_dir("upstream");
    let flagfile = dir.join("flags");
    std::fs::write(
        &flagfile,
        "# as a user would keep them\n--protocol=tcp\n-metadata_server=P2PHANDSHAKE\n--threads=2\n",
    )
    .unwrap();
    let out = run(Command::new(transfer_engine_bench(&dir))
        .arg(format!("--flagfile={}", flagfile.display()))
        .args(["--mode", "initiator", "-segment_id", &segment])
        .args([
            "--local_server_name=127.0.0.1",
            "--batch_size=4",
            "--block_size=4096",
        ])
        .args(["--buffer_size=1048576", "--duration=1", "--operation=write"])
        .args([
            "--noauto_discovery",
            "--report_unit=MB",
            "--report_precision=3",
        ])
        .args(["--logtostderr", "--v=1", "-minloglevel", "0"]));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("Test completed"))
        .unwrap_or_else(|| panic!("no result line: {err}"));
    let (dur, count, rate, unit) = completed(line).unwrap();
    assert!(
        (1.0..10.0).contains(&dur) && count > 0 && rate > 0.0,
        "{line}"
    );
    assert_eq!(unit, "MB/s");
    // Upstream's precision: "duration" always 2 decimals, rate per flag.
    let msg = line.split_once("] ").unwrap().1;
    let dur_text = msg.split(", ").next().unwrap();
    assert_eq!(dur_text.split_once('.').unwrap().1.len(), 2, "{line}");
    let rate_text = msg.rsplit(' ').nth(1).unwrap();
    assert_eq!(rate_text.split_once('.').unwrap().1.len(), 3, "{line}");
    // Nothing but logs: no te-bench table on stdout.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn transfer_engine_bench_refuses_te_bench_extras_and_unknown_flags() {
    let dir = temp_dir("refuse");
    for flag in ["--check", "--bogus=1", "--check=maybe"] {
        let out = Command::new(transfer_engine_bench(&dir).as_os_str())
            .arg(flag)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(dir.join("transfer_engine_bench"));
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unknown command line flag") || err.contains("illegal value"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mc_log_dir_writes_glog_files_and_keeps_stderr_for_errors() {
    let dir = temp_dir("logdir");
    let out = run(Command::new(TE_BENCH).args(SMALL).env("MC_LOG_DIR", &dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Test completed"),
        "INFO went to stderr: {err}"
    );
    let info = std::fs::read_to_string(dir.join("mooncake-transfer-engine.INFO")).unwrap();
    assert!(info.starts_with("Log file created at: "), "{info}");
    assert_eq!(info.lines().filter_map(completed).count(), 1, "{info}");
    let _ = std::fs::remove_dir_all(&dir);

    // Not a directory: upstream's warning, logs stay on stderr.
    let out = run(Command::new(TE_BENCH)
        .args(SMALL)
        .env("MC_LOG_DIR", "/nonexistent/te-rs"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("W")
            && err.contains("is not a valid directory path. Still logging to stderr."),
        "{err}"
    );
    assert_eq!(err.lines().filter_map(completed).count(), 1, "{err}");
}

#[test]
fn env_logger_format_on_request_and_trace_level() {
    let out = run(Command::new(TE_BENCH)
        .args(SMALL)
        .env("MC_TE_RS_LOG_FORMAT", "env_logger")
        .env("MC_LOG_LEVEL", "TRACE"));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("Test completed")).unwrap();
    assert!(line.starts_with('[') && line.contains("Z INFO "), "{line}");
    assert!(
        err.lines().any(|l| l.contains("Z TRACE ")),
        "MC_LOG_LEVEL=TRACE printed no trace line:\n{err}"
    );
}

#[test]
fn mc_te_metric_reports_each_interval() {
    let out = run(Command::new(TE_BENCH)
        .args([
            "--threads=1",
            "--batch_size=2",
            "--block_size=4096",
            "--duration=2.5",
            "--nobaseline",
        ])
        .env("MC_TE_METRIC", "1")
        .env("MC_TE_METRIC_INTERVAL_SECONDS", "1"));
    let err = String::from_utf8_lossy(&out.stderr);
    let reports: Vec<&str> = err
        .lines()
        .filter_map(|l| {
            l.split_once("] [Metrics] Transfer Engine Stats (over last 1s): ")
                .map(|(_, r)| r)
        })
        .collect();
    assert!(reports.len() >= 2, "{err}");
    for r in &reports {
        // "Throughput: 12.34 MB/s | Latency Distribution (count=N): 20-50μs:97.0%, ..."
        let (tput, lat) = r.split_once(" | Latency Distribution (count=").expect(r);
        let mbps: f64 = tput
            .strip_prefix("Throughput: ")
            .unwrap()
            .strip_suffix(" MB/s")
            .unwrap()
            .parse()
            .unwrap();
        assert!(mbps > 0.0, "{r}");
        let (count, buckets) = lat.split_once("): ").unwrap();
        assert!(count.parse::<u64>().unwrap() > 0, "{r}");
        let pct: f64 = buckets
            .split(", ")
            .map(|b| {
                b.rsplit_once(':')
                    .unwrap()
                    .1
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .unwrap()
            })
            .sum();
        assert!((pct - 100.0).abs() < 1.0, "{r}");
    }
}

#[test]
fn a_set_unread_setting_is_logged_once() {
    // Loopback creates two engines; the warning comes once.
    let out = run(Command::new(TE_BENCH)
        .args(SMALL)
        .env("MC_USE_TENT", "1")
        .env("MC_TCP_ENABLE_CONNECTION_POOL", "1"));
    let err = String::from_utf8_lossy(&out.stderr);
    let tent: Vec<_> = err
        .lines()
        .filter(|l| l.contains("MC_USE_TENT is set but not applicable to te-rs"))
        .collect();
    assert_eq!(tent.len(), 1, "{err}");
    assert!(tent[0].starts_with('W'), "{}", tent[0]);
    let pool = err.lines().filter(|l| l.contains("MC_TCP_ENABLE_CONNECTION_POOL is set but not read by te-rs: connections are always pooled")).count();
    assert_eq!(pool, 1, "{err}");
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// te-metadata-server on a port of its own choosing; its URL.
fn metadata_server() -> (Reaped, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_te-metadata-server"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "te-metadata-server listening on http://127.0.0.1:PORT/metadata (...)"
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (Reaped(child), url)
}

/// Upstream's transfer_engine_bench (te-bench under its name) as a target
/// with `args`; returns once it printed its ready line, with its stderr
/// lines so far (the engine logs before the ready line).
fn upstream_target(dir: &Path, args: &[&str]) -> (Reaped, String, Vec<String>) {
    let mut child = Command::new(transfer_engine_bench(dir))
        .args(["--mode=target", "--protocol=tcp", "--buffer_size=4194304"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let target = Reaped(child);
    // The engine logs on stderr before the ready line reaches stdout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drains to the end, so the target never blocks on a full pipe.
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut ready = String::new();
    BufReader::new(stdout).read_line(&mut ready).unwrap();
    assert!(
        ready.starts_with("te-bench target ready: segment "),
        "{ready}"
    );
    let segment = ready.split_whitespace().nth(4).unwrap().to_string();
    let mut log = Vec::new();
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        let done = l.contains("listening on");
        log.push(l);
        if done {
            break;
        }
    }
    (target, segment, log)
}

/// Upstream's initiator flags against `segment`; the run must move bytes.
fn upstream_initiator(dir: &Path, metadata: &str, name: &str, segment: &str) {
    let out = run(Command::new(transfer_engine_bench(dir))
        .args(["--mode=initiator", "--protocol=tcp", "--operation=write"])
        .arg(format!("--metadata_server={metadata}"))
        .arg(format!("--local_server_name={name}"))
        .arg(format!("--segment_id={segment}"))
        .args(["--threads=1", "--batch_size=2", "--block_size=4096"])
        .args([
            "--buffer_size=1048576",
            "--duration=1",
            "--noauto_discovery",
            // KB: on a busy machine a few MB/s print as 0.00 GB/s.
            "--report_unit=KB",
        ]));
    let err = String::from_utf8_lossy(&out.stderr);
    let (_, count, rate, _) = err
        .lines()
        .find_map(completed)
        .unwrap_or_else(|| panic!("no result line: {err}"));
    assert!(count > 0 && rate > 0.0, "{err}");
}

#[test]
fn store_mode_target_is_found_by_its_local_server_name() {
    // Upstream's documented store-mode usage: the target publishes
    // --local_server_name as its segment, the initiator names it.
    let (_meta, url) = metadata_server();
    let dir = temp_dir("store");
    let (_target, segment, _) = upstream_target(
        &dir,
        &[
            &format!("--metadata_server={url}"),
            "--local_server_name=bench-target",
        ],
    );
    assert_eq!(segment, "bench-target");
    upstream_initiator(&dir, &url, "bench-initiator", "bench-target");
    // A second initiator under another name finds it the same way.
    upstream_initiator(&dir, &url, "bench-initiator-2", "bench-target");

    // An initiator that would publish over the target's name is refused
    // with the reason, before it touches the store.
    let out = Command::new(transfer_engine_bench(&dir))
        .args(["--mode=initiator", "--protocol=tcp"])
        .arg(format!("--metadata_server={url}"))
        .args([
            "--local_server_name=bench-target",
            "--segment_id=bench-target",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("would publish over the target's segment"),
        "{err}"
    );
    upstream_initiator(&dir, &url, "bench-initiator", "bench-target");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn p2p_target_logs_upstreams_listening_line_that_scripts_read() {
    // real_rdma_link_failover.sh: awk '/Transfer Engine RPC using P2P
    // handshake, listening on / { print $NF }' on the target's log, then
    // --segment_id=<that>.
    let dir = temp_dir("listening");
    let (_target, segment, log) = upstream_target(
        &dir,
        &[
            "--metadata_server=P2PHANDSHAKE",
            "--local_server_name=127.0.0.1",
        ],
    );
    let line = log
        .iter()
        .find(|l| l.contains("Transfer Engine RPC using P2P handshake, listening on "))
        .unwrap_or_else(|| panic!("no listening line in {log:#?}"));
    assert!(line.starts_with('I'), "not an INFO line: {line}");
    let last = line.split_whitespace().last().unwrap();
    assert_eq!(last, segment, "{line}");
    assert!(last.starts_with("127.0.0.1:"), "{line}");
    upstream_initiator(&dir, "P2PHANDSHAKE", "127.0.0.1", last);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_misspelt_setting_is_named_once_with_the_nearest_known_name() {
    // Loopback creates two engines; each warning comes once. Names of other
    // Mooncake parts (Store) and correct names stay silent.
    let out = run(Command::new(TE_BENCH)
        .args(SMALL)
        .env("MC_SLICE_SIZ", "65536")
        .env("MC_TCP_BIND_ADRESS", "127.0.0.1")
        .env("MC_STORE_MEMCPY", "1")
        .env("MC_SLICE_SIZE", "65536"));
    let err = String::from_utf8_lossy(&out.stderr);
    for (typo, near) in [
        ("MC_SLICE_SIZ", "MC_SLICE_SIZE"),
        ("MC_TCP_BIND_ADRESS", "MC_TCP_BIND_ADDRESS"),
    ] {
        let lines: Vec<_> = err
            .lines()
            .filter(|l| l.contains(&format!("] {typo} is set but no setting")))
            .collect();
        assert_eq!(lines.len(), 1, "{typo}: {err}");
        assert!(lines[0].starts_with('W'), "{}", lines[0]);
        assert!(
            lines[0].ends_with(&format!("did you mean {near}?")),
            "{}",
            lines[0]
        );
    }
    assert!(!err.contains("MC_STORE_MEMCPY"), "{err}");
    assert!(!err.contains("MC_SLICE_SIZE is set"), "{err}");
}
