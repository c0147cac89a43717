//! The metrics a user scrapes: a real Prometheus (Debian's `prometheus`,
//! installed by `scripts/deps.sh --test`; the test fails without it)
//! scrapes an initiator and a target engine on loopback during a verified
//! TCP workload with provoked failures; its HTTP API must report the bytes
//! the workload moved, the failures it provoked and one latency observation
//! per task. `promtool check metrics` accepts the exposition. A thousand
//! peers make at most `MC_TE_METRIC_MAX_PEERS` series.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use transfer_engine::metrics::exposition::Exposition;
use transfer_engine::metrics::peers::PeerTable;
use transfer_engine::metrics::tasks::{Ending, TaskMetrics};
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

const T: Duration = Duration::from_secs(30);
/// How long Prometheus may take to start and to scrape the final values
/// (it scrapes every 100 ms; this is for a loaded machine).
const PROM_WAIT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An engine whose `/metrics` is served on a free port.
fn metered_engine() -> Arc<TransferEngine> {
    // Process-wide, and the same for every engine this test binary makes.
    std::env::set_var("MC_TE_METRIC_HTTP_PORT", "0");
    let e = p2p_engine();
    assert!(
        e.metrics_port().is_some(),
        "MC_TE_METRIC_HTTP_PORT=0 serves"
    );
    e
}

fn need(tool: &str) -> String {
    let found = ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{tool}"))
        .find(|p| std::path::Path::new(p).exists());
    found.unwrap_or_else(|| {
        panic!("{tool} not found: install Debian's `prometheus` package (scripts/deps.sh --test)")
    })
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    /// Started on loopback, scraping `targets` (job name, port) every 100 ms.
    fn start(targets: &[(&str, u16)]) -> Prometheus {
        let bin = need("prometheus");
        let dir =
            std::env::temp_dir().join(format!("te-prom-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = String::from(
            "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\nscrape_configs:\n",
        );
        for (job, port) in targets {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            port,
            _dir: TempDir(dir),
        };
        let deadline = Instant::now() + PROM_WAIT;
        loop {
            let ready = ureq::get(&format!("http://127.0.0.1:{port}/-/ready"))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return p;
            }
            assert!(Instant::now() < deadline, "prometheus not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of an instant query returning one series (`None`: empty).
    fn query(&self, q: &str) -> Option<f64> {
        let r = ureq::get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", q)
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.into_string().ok()?).ok()?;
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{q}: more than one series: {v}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Wait until `q` reads `want` (Prometheus lags the engine by a scrape).
    fn expect(&self, q: &str, want: f64) {
        let deadline = Instant::now() + PROM_WAIT;
        loop {
            let got = self.query(q);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{q}: Prometheus reports {got:?}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn promtool_accepts(text: &str) {
    let mut child = Command::new(need("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_sees_the_bytes_failures_and_tasks_of_a_workload() {
    let target = metered_engine();
    let init = metered_engine();
    let victim = metered_engine();
    let size = 1usize << 20;
    let mut remote = Guarded::new(size);
    let mut local = Guarded::new(size);
    target
        .register_local_memory(remote.addr(), size as u64, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), size as u64, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let victim_id = init.open_segment(&victim.local_server_name()).unwrap();

    // Verified writes of every size class below 1 MiB and back, then reads.
    let sizes = [512usize, 4096, 65536, 300_000, size];
    let mut moved = 0u64;
    let mut tasks = 0u64;
    let mut written = 0u64;
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(i as u8 + 7, n);
        local.data_mut()[..n].copy_from_slice(&data);
        let w = req(Opcode::Write, local.addr(), id, remote.addr(), n as u64);
        let st = run_batch(&init, &[w], T);
        assert_eq!(st[0].status, TaskStatus::Completed);
        assert!(remote.data()[..n] == data[..], "write of {n} landed wrong");
        remote.data_mut()[n..].fill(0);
        local.data_mut()[..n].fill(0);
        let r = req(Opcode::Read, local.addr(), id, remote.addr(), n as u64);
        let st = run_batch(&init, &[r], T);
        assert_eq!(st[0].status, TaskStatus::Completed);
        assert!(local.data()[..n] == data[..], "read of {n} came back wrong");
        moved += 2 * n as u64;
        written += n as u64;
        tasks += 2;
    }
    // Provoked failures: one request past the registered range (the target
    // refuses it) and one to a peer whose process is gone.
    let past = req(
        Opcode::Write,
        local.addr(),
        id,
        remote.addr() + size as u64,
        64,
    );
    assert_eq!(run_batch(&init, &[past], T)[0].status, TaskStatus::Failed);
    victim.shutdown();
    let gone = req(Opcode::Write, local.addr(), victim_id, 0x1000, 64);
    assert_eq!(run_batch(&init, &[gone], T)[0].status, TaskStatus::Failed);
    tasks += 2;
    init.send_notify(id, "metrics", "hello").unwrap();

    let (ip, tp) = (init.metrics_port().unwrap(), target.metrics_port().unwrap());
    let prom = Prometheus::start(&[("initiator", ip), ("target", tp)]);
    prom.expect(r#"up{job="initiator"}"#, 1.0);
    prom.expect(r#"up{job="target"}"#, 1.0);
    let i = r#"job="initiator""#;
    prom.expect(
        &format!(r#"sum(te_bytes_total{{{i},transport="tcp",outcome="completed"}})"#),
        moved as f64,
    );
    prom.expect(
        &format!(r#"sum(te_bytes_total{{{i},op="write"}})"#),
        written as f64,
    );
    prom.expect(
        &format!(r#"sum(te_tasks_total{{{i},transport="tcp",outcome="completed"}})"#),
        (tasks - 2) as f64,
    );
    prom.expect(
        &format!(r#"sum(te_tasks_total{{{i},outcome="failed"}})"#),
        2.0,
    );
    prom.expect(
        &format!(r#"sum(te_slices_total{{{i},outcome="failed"}})"#),
        2.0,
    );
    prom.expect(
        &format!(r#"sum(te_task_latency_seconds_count{{{i}}})"#),
        tasks as f64,
    );
    prom.expect(
        &format!(r#"sum(te_task_latency_seconds_count{{{i},size="le_4KiB"}})"#),
        6.0,
    );
    prom.expect(
        &format!(r#"te_errors_total{{{i},transport="tcp",reason="refused"}}"#),
        1.0,
    );
    prom.expect(
        &format!(r#"te_errors_total{{{i},transport="tcp",reason="connect"}}"#),
        1.0,
    );
    let peer = target.local_server_name();
    prom.expect(
        &format!(r#"sum(te_peer_bytes_total{{{i},peer="{peer}"}})"#),
        moved as f64,
    );
    prom.expect(
        &format!(r#"te_peer_tasks_failed_total{{{i},peer="{peer}"}}"#),
        1.0,
    );
    let gone_peer = victim.local_server_name();
    prom.expect(
        &format!(r#"te_peer_tasks_failed_total{{{i},peer="{gone_peer}"}}"#),
        1.0,
    );
    prom.expect(
        &format!(r#"te_notifications_sent_total{{{i},outcome="ok"}}"#),
        1.0,
    );
    prom.expect(
        r#"te_notifications_received_total{job="target",outcome="queued"}"#,
        1.0,
    );
    prom.expect(r#"te_notification_queue_depth{job="target"}"#, 1.0);
    assert_eq!(target.take_notifies().len(), 1);
    prom.expect(r#"te_notification_queue_depth{job="target"}"#, 0.0);

    // What was scraped is valid exposition text; /health answers.
    let body = ureq::get(&format!("http://127.0.0.1:{ip}/metrics"))
        .call()
        .unwrap();
    assert!(body
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    promtool_accepts(&body.into_string().unwrap());
    let health = ureq::get(&format!("http://127.0.0.1:{tp}/health"))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.into_string().unwrap().contains("ok"));
    assert!(remote.guards_intact() && local.guards_intact());

    // The endpoint's thread is the engine's: destroy joins it.
    init.shutdown();
    assert_eq!(init.threads(), 0);
    assert!(ureq::get(&format!("http://127.0.0.1:{ip}/metrics"))
        .timeout(Duration::from_secs(2))
        .call()
        .is_err());
}

#[test]
fn a_thousand_peers_make_at_most_the_configured_series() {
    let cap = 50;
    let m = TaskMetrics::new(PeerTable::new(cap));
    for peer in 0..1000i32 {
        let meter = m.meter(
            peer + 1,
            &format!("10.0.{}.{}:1234", peer / 256, peer % 256),
            "tcp",
        );
        meter.unwrap().task_ended(Ending {
            op: Opcode::Write,
            length: 100,
            slices_succeeded: 1,
            slices_failed: 0,
            bytes: 100,
            latency: Duration::from_micros(50),
        });
    }
    let mut e = Exposition::default();
    m.write(&mut e);
    let text = e.finish();
    let series = text
        .lines()
        .filter(|l| l.starts_with("te_peer_tasks_total{"))
        .count();
    assert_eq!(series, cap + 1, "{cap} peers and the overflow series");
    assert!(text.contains("te_peer_tasks_total{peer=\"_overflow\"} 950\n"));
    assert!(text.contains("te_peer_series_overflow_total 950\n"));
    // Every task is still counted in the totals.
    assert!(text
        .contains("te_tasks_total{transport=\"tcp\",op=\"write\",outcome=\"completed\"} 1000\n"));
    promtool_accepts(&text);
}
