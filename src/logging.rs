//! Logging through `env_logger`, honouring Mooncake's `MC_LOG_LEVEL`
//! (TRACE, INFO, WARNING, ERROR) and `RUST_LOG` when set.

use std::sync::Once;

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

/// Install the logger once per process. A host program that installed its own
/// `log` logger keeps it.
pub fn init() {
    INIT.call_once(|| {
        let mut b = env_logger::Builder::new();
        b.filter_level(level_from_mc(std::env::var("MC_LOG_LEVEL").ok().as_deref()));
        if let Ok(spec) = std::env::var("RUST_LOG") {
            b.parse_filters(&spec);
        }
        b.format_timestamp_micros();
        let _ = b.try_init();
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
}
