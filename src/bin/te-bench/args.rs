//! Flags of Mooncake's transfer_engine_bench, in gflags syntax (see
//! `gflags`), plus te-bench's own; defaults per `Flavor`.

use crate::gflags::{Kind, Spec};

#[derive(Clone, Debug)]
pub struct Args {
    pub mode: String,
    pub metadata_server: String,
    pub local_server_name: String,
    pub protocol: String,
    pub operations: Vec<String>,
    pub block_sizes: Vec<u64>,
    pub batch_size: usize,
    pub threads: usize,
    pub duration: f64,
    pub segment_id: String,
    pub buffer_size: u64,
    pub device_name: String,
    pub nic_priority_matrix: String,
    pub auto_discovery: bool,
    pub report_unit: String,
    pub report_precision: usize,
    pub check: bool,
    pub runs: usize,
    pub json: Option<String>,
    pub progress: bool,
    pub baseline: bool,
    pub latency: bool,
    pub flavor: Flavor,
}

pub const USAGE: &str = "\
te-bench: transfer benchmark for te-rs (flags as Mooncake's transfer_engine_bench)

  --mode=loopback|target|initiator   loopback (default) runs a target and an initiator itself
  --metadata_server=P2PHANDSHAKE     or http://host:port/metadata, etcd://host:port, redis://host:port
  --local_server_name=127.0.0.1      this engine's name (P2P: host; the port is chosen)
  --protocol=tcp|rdma                transport (rdma: set MC_RDMA_PROVIDER=soft without NICs)
  --operation=write[,read]           one or a comma list (loopback runs each)
  --block_size=65536[,4096,...]      bytes per request; a comma list in loopback mode
  --batch_size=32 --threads=4 --duration=8
  --segment_id=HOST:PORT             initiator: the target's segment name
  --buffer_size=BYTES                per-engine buffer (raised to block*batch*threads)
  --device_name=soft0,soft1          rdma: devices for the priority matrix
  --nic_priority_matrix=FILE         rdma: priority matrix JSON file
  --auto_discovery                   let the engine discover and install a transport
  --report_unit=GB --report_precision=2
  --check                            verify every byte of every batch
  --runs=1                           repeat each case, report the median
  --json[=FILE]                      machine-readable summary (stdout or FILE)
  --progress                         one progress line per second
  --nobaseline (or --no_baseline)    skip the raw TCP stream baseline
  --latency                          one request at a time: per run a fresh initiator engine,
                                     create→openSegment→first completion, then p50/p99 of warm
                                     requests (allocate→submit→COMPLETED) for --duration per case
  gflags syntax: --flag=v, --flag v, -flag, --noflag, --flagfile=FILE; glog flags ignored.

Installed as transfer_engine_bench it takes upstream's defaults (initiator, rdma, read,
threads 12, batch 128, 10 s, 1 GiB buffer) and flags only, and prints upstream's
`Test completed: duration ..., batch count ..., throughput ...` log line.
";

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.to_ascii_lowercase() {
        t if t.ends_with("kib") || t.ends_with('k') => (
            t.trim_end_matches("kib").trim_end_matches('k').to_string(),
            1024,
        ),
        t if t.ends_with("mib") || t.ends_with('m') => (
            t.trim_end_matches("mib").trim_end_matches('m').to_string(),
            1 << 20,
        ),
        t if t.ends_with("gib") || t.ends_with('g') => (
            t.trim_end_matches("gib").trim_end_matches('g').to_string(),
            1 << 30,
        ),
        t => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad size '{s}'"))
}

/// Which program the user ran: `te-bench`, or te-bench installed as
/// `transfer_engine_bench` (upstream's defaults, output and flags only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    TeBench,
    Upstream,
}

const FLAGS: &[(&str, Kind)] = &[
    ("mode", Kind::Value),
    ("metadata_server", Kind::Value),
    ("local_server_name", Kind::Value),
    ("protocol", Kind::Value),
    ("operation", Kind::Value),
    ("block_size", Kind::Value),
    ("batch_size", Kind::Value),
    ("threads", Kind::Value),
    ("duration", Kind::Value),
    ("segment_id", Kind::Value),
    ("buffer_size", Kind::Value),
    ("device_name", Kind::Value),
    ("nic_priority_matrix", Kind::Value),
    ("auto_discovery", Kind::Bool),
    ("report_unit", Kind::Value),
    ("report_precision", Kind::Value),
    ("backend", Kind::Value),
    ("check", Kind::Bool),
    ("runs", Kind::Value),
    ("json", Kind::OptionalValue("-")),
    ("progress", Kind::Bool),
    ("baseline", Kind::Bool),
    ("loopback", Kind::Bool),
    ("no_baseline", Kind::Bool),
    ("latency", Kind::Bool),
];

/// transfer_engine_bench's own flags (the rest are te-bench extras).
const UPSTREAM_FLAGS: usize = 17;

/// Defaults: upstream's (transfer_engine_bench.cpp) and te-bench's.
fn default(flavor: Flavor, name: &str) -> String {
    let up = flavor == Flavor::Upstream;
    match name {
        "mode" if up => "initiator",
        "mode" => "loopback",
        "metadata_server" if up => "192.168.3.77:2379",
        "metadata_server" => "P2PHANDSHAKE",
        "local_server_name" if up => return hostname(),
        "local_server_name" => "127.0.0.1",
        "protocol" if up => "rdma",
        "protocol" => "tcp",
        "operation" if up => "read",
        "operation" => "write",
        "block_size" => "65536",
        "batch_size" if up => "128",
        "batch_size" => "32",
        "threads" if up => "12",
        "threads" => "4",
        "duration" if up => "10",
        "duration" => "8",
        "segment_id" if up => "192.168.3.76",
        "buffer_size" if up => "1073741824",
        "buffer_size" => "0",
        "device_name" if up => "mlx5_2",
        "report_unit" => "GB",
        "report_precision" => "2",
        "backend" => "classic",
        "runs" => "1",
        "baseline" if !up => "true",
        "auto_discovery" | "check" | "progress" | "baseline" | "loopback" | "no_baseline"
        | "latency" => "false",
        _ => "",
    }
    .to_string()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.to_string(),
        _ => "localhost".to_string(),
    }
}

impl Args {
    #[cfg(test)]
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        Self::parse_as(Flavor::TeBench, argv)
    }

    pub fn parse_as(flavor: Flavor, argv: &[String]) -> Result<Args, String> {
        let flags = match flavor {
            Flavor::TeBench => FLAGS,
            Flavor::Upstream => &FLAGS[..UPSTREAM_FLAGS],
        };
        let parsed = Spec { flags }.parse(argv)?;
        for name in &parsed.ignored {
            log::debug!("glog flag --{name} ignored (te-rs logs per MC_LOG_LEVEL/MC_LOG_DIR)");
        }
        let mut kv = parsed.values;
        let mut take = |k: &str| kv.remove(k).unwrap_or_else(|| default(flavor, k));
        let flag = |v: String| v == "true";
        let mut mode = take("mode");
        if flag(take("loopback")) {
            mode = "loopback".into();
        }
        let json = match take("json") {
            s if s.is_empty() => None,
            s => Some(s),
        };
        let backend = take("backend");
        if backend != "classic" {
            return Err(format!(
                "--backend={backend}: te-rs has one engine; only 'classic' is supported"
            ));
        }
        let args = Args {
            mode,
            metadata_server: take("metadata_server"),
            local_server_name: take("local_server_name"),
            protocol: take("protocol"),
            operations: take("operation")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            block_sizes: take("block_size")
                .split(',')
                .map(parse_size)
                .collect::<Result<_, _>>()?,
            batch_size: take("batch_size").parse().map_err(|_| "bad --batch_size")?,
            threads: take("threads").parse().map_err(|_| "bad --threads")?,
            duration: take("duration").parse().map_err(|_| "bad --duration")?,
            segment_id: take("segment_id"),
            buffer_size: parse_size(&take("buffer_size"))?,
            device_name: take("device_name"),
            nic_priority_matrix: take("nic_priority_matrix"),
            auto_discovery: flag(take("auto_discovery")),
            report_unit: take("report_unit"),
            report_precision: take("report_precision")
                .parse()
                .map_err(|_| "bad --report_precision")?,
            check: flag(take("check")),
            runs: take("runs").parse().map_err(|_| "bad --runs")?,
            json,
            progress: flag(take("progress")),
            baseline: flag(take("baseline")) && !flag(take("no_baseline")),
            latency: flag(take("latency")),
            flavor,
        };
        for op in &args.operations {
            if op != "read" && op != "write" {
                return Err(format!("--operation must be read or write, not '{op}'"));
            }
        }
        if args.threads == 0 || args.batch_size == 0 || args.runs == 0 {
            return Err("--threads, --batch_size and --runs must be > 0".into());
        }
        if args.block_sizes.contains(&0) {
            return Err("--block_size must be > 0".into());
        }
        if !["loopback", "target", "initiator"].contains(&args.mode.as_str()) {
            return Err(format!(
                "--mode must be loopback, target or initiator, not '{}'",
                args.mode
            ));
        }
        if args.mode == "initiator" && args.segment_id.is_empty() {
            return Err("--mode=initiator needs --segment_id=<target segment name>".into());
        }
        // With a metadata store, an initiator publishing under the target's
        // name would overwrite the target's segment (upstream lets it).
        if args.mode == "initiator"
            && args.metadata_server != "P2PHANDSHAKE"
            && args.local_server_name == args.segment_id
        {
            return Err(format!(
                "--local_server_name={} is the target's --segment_id: with --metadata_server={} \
                 the initiator would publish over the target's segment; give it its own name",
                args.local_server_name, args.metadata_server
            ));
        }
        Ok(args)
    }

    /// `calculateRate` of transfer_engine_bench: "<rate> <unit>/s" with
    /// `report_precision` decimals; an unknown unit falls back to GB.
    pub fn rate_text(&self, bytes: u64, secs: f64) -> String {
        let known = ["GB", "GiB", "Gb", "MB", "MiB", "Mb", "KB", "KiB", "Kb"];
        let unit = if known.contains(&self.report_unit.as_str()) {
            self.report_unit.as_str()
        } else {
            log::warn!(
                "Invalid flag: report_unit only support GB|GiB|Gb|MB|MiB|Mb|KB|KiB|Kb, not support {} . Now use GB(default) as report_unit",
                self.report_unit
            );
            "GB"
        };
        let rate = if secs.abs() < 1e-10 {
            0.0
        } else {
            bytes as f64 / secs / self.unit_bytes()
        };
        format!("{rate:.p$} {unit}/s", p = self.report_precision)
    }

    /// Bytes per `report_unit` (1 GB = 1e9 B, as upstream).
    pub fn unit_bytes(&self) -> f64 {
        match self.report_unit.as_str() {
            "GiB" => (1u64 << 30) as f64,
            "Gb" => 1e9 / 8.0,
            "MB" => 1e6,
            "MiB" => (1u64 << 20) as f64,
            "Mb" => 1e6 / 8.0,
            "KB" => 1e3,
            "KiB" => 1024.0,
            "Kb" => 1e3 / 8.0,
            _ => 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn mooncake_style_flags() {
        let a = Args::parse(&v(&[
            "--mode=initiator",
            "--segment_id",
            "127.0.0.1:15001",
            "--block_size=4k,1m",
            "--check=t",
            "--no_baseline",
        ]))
        .unwrap();
        assert_eq!(a.mode, "initiator");
        assert_eq!(a.segment_id, "127.0.0.1:15001");
        assert_eq!(a.block_sizes, vec![4096, 1 << 20]);
        assert!(a.check);
        assert!(!a.baseline);
        assert!(!Args::parse(&v(&["--nobaseline"])).unwrap().baseline);
        assert!(Args::parse(&v(&["--bogus=1"])).is_err());
        assert!(Args::parse(&v(&["--operation=copy"])).is_err());
        assert!(Args::parse(&v(&["--mode=initiator"])).is_err());
        assert!(Args::parse(&v(&["--backend=tent"])).is_err());
    }

    #[test]
    fn te_bench_and_upstream_defaults() {
        let t = Args::parse(&[]).unwrap();
        assert_eq!(
            (
                t.mode.as_str(),
                t.protocol.as_str(),
                t.threads,
                t.batch_size,
                t.duration
            ),
            ("loopback", "tcp", 4, 32, 8.0)
        );
        assert!(t.baseline);
        let u = Args::parse_as(Flavor::Upstream, &[]).unwrap();
        assert_eq!(u.mode, "initiator");
        assert_eq!(u.metadata_server, "192.168.3.77:2379");
        assert_eq!(u.protocol, "rdma");
        assert_eq!(u.operations, ["read"]);
        assert_eq!(u.device_name, "mlx5_2");
        assert_eq!(u.segment_id, "192.168.3.76");
        assert_eq!((u.threads, u.batch_size, u.duration), (12, 128, 10.0));
        assert_eq!((u.buffer_size, u.block_sizes[0]), (1 << 30, 65536));
        assert_eq!((u.report_unit.as_str(), u.report_precision), ("GB", 2));
        assert_eq!(u.local_server_name, hostname());
        assert!(!u.baseline && !u.check && !u.auto_discovery);
        // te-bench's extras are not transfer_engine_bench flags.
        assert!(Args::parse_as(Flavor::Upstream, &v(&["--check"])).is_err());
        let u = Args::parse_as(
            Flavor::Upstream,
            &v(&["-auto_discovery", "--logtostderr", "-v", "1"]),
        )
        .unwrap();
        assert!(u.auto_discovery);
    }
}
