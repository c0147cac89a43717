//! Logging as Mooncake's glog does it, by default:
//! `I1201 18:52:09.525316 26319 file.rs:42] msg` (severity I/W/E, local
//! month-day and time with microseconds, kernel thread id, file:line).
//! `MC_TE_RS_LOG_FORMAT=env_logger` switches to env_logger's lines.
//!
//! Levels: `MC_LOG_LEVEL` (TRACE, INFO, WARNING, ERROR; TRACE adds the
//! lines upstream prints under `globalConfig().trace`/VLOG), refined by
//! `RUST_LOG` when set. `MC_LOG_DIR`: log files as glog writes them (see
//! `glog_files`); an invalid or unwritable directory keeps stderr, with a
//! warning, as upstream.

mod glog_files;

use std::io::Write;
use std::sync::Once;

pub use glog_files::LogDir;

static INIT: Once = Once::new();

/// Map `MC_LOG_LEVEL` to a `log` filter; unknown values mean INFO, as upstream.
pub fn level_from_mc(value: Option<&str>) -> log::LevelFilter {
    match value.map(|v| v.trim().to_ascii_uppercase()).as_deref() {
        Some("TRACE") => log::LevelFilter::Trace,
        Some("DEBUG") => log::LevelFilter::Debug,
        Some("WARNING") | Some("WARN") => log::LevelFilter::Warn,
        Some("ERROR") => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    }
}

/// glog's severity letter; DEBUG and TRACE are glog's VLOG, printed as INFO.
pub fn severity_letter(level: log::Level) -> char {
    match level {
        log::Level::Error => 'E',
        log::Level::Warn => 'W',
        _ => 'I',
    }
}

/// Kernel thread id, as glog prints it.
fn thread_id() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// Local time broken down, and microseconds.
pub(crate) fn local_now() -> (libc::tm, u32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: an all-zero tm is valid; localtime_r fills it from `secs`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    (tm, now.subsec_micros())
}

/// One glog line (without the trailing newline) for `record`.
pub fn glog_line(record: &log::Record<'_>) -> String {
    let (tm, micros) = local_now();
    let file = record.file().unwrap_or("unknown");
    let base = file.rsplit('/').next().unwrap_or(file);
    format!(
        "{}{:02}{:02} {:02}:{:02}:{:02}.{:06} {:>5} {}:{}] {}",
        severity_letter(record.level()),
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        micros,
        thread_id(),
        base,
        record.line().unwrap_or(0),
        record.args()
    )
}

/// glog-format logger: env_logger's filter decides, we format and write.
struct Glog {
    filter: env_logger::Logger,
    dir: Option<LogDir>,
}

impl log::Log for Glog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let mut line = glog_line(record);
        line.push('\n');
        match &self.dir {
            Some(dir) => dir.write(record.level(), line.as_bytes()),
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Some(dir) = &self.dir {
            dir.flush();
        }
    }
}

/// `MC_LOG_DIR` if set, checked as upstream checks it.
fn log_dir_from_env() -> Option<LogDir> {
    let path = std::env::var_os("MC_LOG_DIR")?;
    match LogDir::open(std::path::Path::new(&path)) {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!(
                "{}",
                glog_line(
                    &log::Record::builder()
                        .level(log::Level::Warn)
                        .file(Some(file!()))
                        .line(Some(line!()))
                        .args(format_args!("{why}"))
                        .build()
                )
            );
            None
        }
    }
}

/// Install the logger once per process. A host program that installed its own
/// `log` logger keeps it.
pub fn init() {
    INIT.call_once(|| {
        let mut b = env_logger::Builder::new();
        b.filter_level(level_from_mc(std::env::var("MC_LOG_LEVEL").ok().as_deref()));
        if let Ok(spec) = std::env::var("RUST_LOG") {
            b.parse_filters(&spec);
        }
        let env_format = std::env::var("MC_TE_RS_LOG_FORMAT")
            .map(|v| v.trim().eq_ignore_ascii_case("env_logger"))
            .unwrap_or(false);
        let dir = log_dir_from_env();
        if env_format {
            b.format_timestamp_micros();
            if let Some(dir) = dir {
                b.target(env_logger::Target::Pipe(Box::new(dir.into_info_writer())));
            }
            let _ = b.try_init();
            return;
        }
        let filter = b.build();
        let max = filter.filter();
        if log::set_boxed_logger(Box::new(Glog { filter, dir })).is_ok() {
            log::set_max_level(max);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mooncake_levels() {
        assert_eq!(level_from_mc(Some("WARNING")), log::LevelFilter::Warn);
        assert_eq!(level_from_mc(Some("trace")), log::LevelFilter::Trace);
        assert_eq!(level_from_mc(Some("ERROR")), log::LevelFilter::Error);
        assert_eq!(level_from_mc(None), log::LevelFilter::Info);
        assert_eq!(level_from_mc(Some("bogus")), log::LevelFilter::Info);
    }

    /// Checks `I1201 18:52:09.525316 26319 file:line] msg` piece by piece.
    pub(crate) fn assert_glog_line(line: &str, letter: char, file: &str, msg: &str) {
        let b = line.as_bytes();
        assert_eq!(b[0] as char, letter, "{line}");
        assert!(b[1..5].iter().all(u8::is_ascii_digit), "{line}");
        assert_eq!(b[5], b' ', "{line}");
        let time = &line[6..21];
        assert_eq!(&time[2..3], ":", "{line}");
        assert_eq!(&time[5..6], ":", "{line}");
        assert_eq!(&time[8..9], ".", "{line}");
        assert!(time[9..].bytes().all(|c| c.is_ascii_digit()), "{line}");
        let rest = &line[21..];
        let (tid, rest) = rest.trim_start().split_once(' ').unwrap();
        assert!(tid.parse::<u32>().is_ok(), "{line}");
        let (loc, text) = rest.split_once("] ").unwrap();
        let (f, l) = loc.split_once(':').unwrap();
        assert_eq!(f, file, "{line}");
        assert!(l.parse::<u32>().is_ok(), "{line}");
        assert_eq!(text, msg, "{line}");
    }

    #[test]
    fn glog_line_format() {
        for (level, letter) in [
            (log::Level::Info, 'I'),
            (log::Level::Warn, 'W'),
            (log::Level::Error, 'E'),
            (log::Level::Trace, 'I'),
        ] {
            let line = glog_line(
                &log::Record::builder()
                    .level(level)
                    .file(Some("src/transport/tcp/mod.rs"))
                    .line(Some(42))
                    .args(format_args!("hello {}", 7))
                    .build(),
            );
            assert_glog_line(&line, letter, "mod.rs", "hello 7");
            assert!(line.contains(" mod.rs:42] hello 7"), "{line}");
        }
    }
}
