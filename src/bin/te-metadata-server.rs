//! te-metadata-server: Mooncake's HTTP metadata server, answering as the one
//! built into `mooncake_master` (or, with `--go-compat`, as upstream's Go
//! example server), optionally persisted to a file.
//!
//!     te-metadata-server [--host 0.0.0.0] [--port 8080] [--persist FILE] [--workers 4] [--go-compat]
//!
//! Clients use `http://<host>:<port>/metadata` as the metadata connection
//! string. SIGTERM/SIGINT stop it cleanly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use transfer_engine::metadata::http_server::{Flavor, MetadataServer};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    host: String,
    port: u16,
    persist: Option<PathBuf>,
    workers: usize,
    flavor: Flavor,
}

const USAGE: &str = "usage: te-metadata-server [--host ADDR] [--port N] [--persist FILE] [--workers N] [--go-compat]
  default: answers as mooncake_master's metadata server (/metadata, /health; 400 for an empty
  key or a changed rpc_meta key, 404 for DELETE of a missing key)
  --go-compat: the Go example server's rules (/metadata only, else 404; DELETE always 200; PUT overwrites)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "0.0.0.0".into(),
        port: 8080,
        persist: None,
        workers: 4,
        flavor: Flavor::Master,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if name == "--go-compat" && inline.is_none() {
            args.flavor = Flavor::GoExample;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--host" => args.host = value,
            "--port" => args.port = value.parse().map_err(|_| format!("bad port '{value}'"))?,
            "--persist" => args.persist = Some(PathBuf::from(value)),
            "--workers" => {
                args.workers = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("bad worker count '{value}'"))?
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(args)
}

fn main() {
    transfer_engine::logging::init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("te-metadata-server: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // SAFETY: `on_signal` only performs an atomic store, which is
    // async-signal-safe; the handler stays valid for the whole process.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let host = if args.host.contains(':') && !args.host.starts_with('[') {
        format!("[{}]", args.host)
    } else {
        args.host.clone()
    };
    let addr = format!("{host}:{}", args.port);
    let server =
        match MetadataServer::start_with(&addr, args.persist.clone(), args.workers, args.flavor) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("te-metadata-server: {e}");
                std::process::exit(1);
            }
        };
    println!(
        "te-metadata-server listening on {} ({} rules, {} keys{})",
        server.url(),
        if args.flavor == Flavor::Master {
            "mooncake_master"
        } else {
            "Go example"
        },
        server.map().len(),
        args.persist
            .as_ref()
            .map(|p| format!(", persisted to {}", p.display()))
            .unwrap_or_default()
    );
    server.run_until(&STOP);
    eprintln!("te-metadata-server: stopped");
}
