//! Flags, spelled as Mooncake's transfer_engine_bench spells them
//! (`--flag=value` or `--flag value`), plus te-bench's own.

use std::collections::HashMap;

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
  --no_baseline                      skip the raw TCP stream baseline
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

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut kv: HashMap<String, String> = HashMap::new();
        let mut i = 0;
        while i < argv.len() {
            let a = &argv[i];
            if a == "-h" || a == "--help" {
                return Err(String::new());
            }
            let body = a
                .strip_prefix("--")
                .or_else(|| a.strip_prefix('-'))
                .ok_or_else(|| format!("unexpected argument '{a}'"))?;
            if let Some((k, v)) = body.split_once('=') {
                kv.insert(k.to_string(), v.to_string());
            } else if matches!(
                body,
                "check" | "progress" | "auto_discovery" | "no_baseline" | "json" | "loopback"
            ) && argv.get(i + 1).is_none_or(|n| n.starts_with('-'))
            {
                kv.insert(body.to_string(), "true".to_string());
            } else {
                let v = argv
                    .get(i + 1)
                    .ok_or_else(|| format!("--{body} needs a value"))?;
                kv.insert(body.to_string(), v.clone());
                i += 1;
            }
            i += 1;
        }
        let mut take = |k: &str, d: &str| kv.remove(k).unwrap_or_else(|| d.to_string());
        let flag = |v: String| matches!(v.as_str(), "true" | "1" | "yes");
        let mut mode = take("mode", "loopback");
        if flag(take("loopback", "false")) {
            mode = "loopback".into();
        }
        let json = match take("json", "") {
            s if s.is_empty() || s == "false" => None,
            s if s == "true" => Some("-".to_string()),
            s => Some(s),
        };
        let args = Args {
            mode,
            metadata_server: take("metadata_server", "P2PHANDSHAKE"),
            local_server_name: take("local_server_name", "127.0.0.1"),
            protocol: take("protocol", "tcp"),
            operations: take("operation", "write")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            block_sizes: take("block_size", "65536")
                .split(',')
                .map(parse_size)
                .collect::<Result<_, _>>()?,
            batch_size: take("batch_size", "32")
                .parse()
                .map_err(|_| "bad --batch_size")?,
            threads: take("threads", "4").parse().map_err(|_| "bad --threads")?,
            duration: take("duration", "8")
                .parse()
                .map_err(|_| "bad --duration")?,
            segment_id: take("segment_id", ""),
            buffer_size: parse_size(&take("buffer_size", "0"))?,
            device_name: take("device_name", ""),
            nic_priority_matrix: take("nic_priority_matrix", ""),
            auto_discovery: flag(take("auto_discovery", "false")),
            report_unit: take("report_unit", "GB"),
            report_precision: take("report_precision", "2")
                .parse()
                .map_err(|_| "bad --report_precision")?,
            check: flag(take("check", "false")),
            runs: take("runs", "1").parse().map_err(|_| "bad --runs")?,
            json,
            progress: flag(take("progress", "false")),
            baseline: !flag(take("no_baseline", "false")),
        };
        if let Some(k) = kv.keys().next() {
            return Err(format!("unknown flag --{k}"));
        }
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
        Ok(args)
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
            "--check",
        ]))
        .unwrap();
        assert_eq!(a.mode, "initiator");
        assert_eq!(a.segment_id, "127.0.0.1:15001");
        assert_eq!(a.block_sizes, vec![4096, 1 << 20]);
        assert!(a.check);
        assert!(Args::parse(&v(&["--bogus=1"])).is_err());
        assert!(Args::parse(&v(&["--operation=copy"])).is_err());
        assert!(Args::parse(&v(&["--mode=initiator"])).is_err());
    }
}
