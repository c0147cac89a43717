//! Environment variables, read with Mooncake's names, defaults and ranges.
//!
//! Each subsystem keeps its own config struct built from these helpers, so a
//! module owns the variables it honours (see `../shared/reference` §8).

use std::time::Duration;

/// Raw value of an environment variable, if set and valid UTF-8.
pub fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// True when the variable is set at all (Mooncake's `getenv(...) != nullptr`).
pub fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// A flag like `MC_PATH_ROUNDROBIN`: `1`, `true`, `yes`, `on` (any case).
pub fn env_flag(name: &str) -> bool {
    matches!(
        env_str(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

/// Integer in `[min, max]`, else `default` (Mooncake parses with atoi and
/// keeps the default for out-of-range values).
pub fn env_i64(name: &str, default: i64, min: i64, max: i64) -> i64 {
    match env_str(name).and_then(|v| v.trim().parse::<i64>().ok()) {
        Some(v) if (min..=max).contains(&v) => v,
        Some(v) => {
            log::warn!("{name}={v} is outside [{min}, {max}], using {default}");
            default
        }
        None => default,
    }
}

pub fn env_u64(name: &str, default: u64, min: u64, max: u64) -> u64 {
    env_i64(name, default as i64, min as i64, max as i64) as u64
}

pub fn env_secs(name: &str, default: u64, min: u64, max: u64) -> Duration {
    Duration::from_secs(env_u64(name, default, min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_keeps_default() {
        std::env::set_var("TE_RS_TEST_CFG_RANGE", "70000");
        assert_eq!(env_i64("TE_RS_TEST_CFG_RANGE", 5, 1, 65535), 5);
        std::env::set_var("TE_RS_TEST_CFG_RANGE", "12");
        assert_eq!(env_i64("TE_RS_TEST_CFG_RANGE", 5, 1, 65535), 12);
        std::env::set_var("TE_RS_TEST_CFG_RANGE", "junk");
        assert_eq!(env_i64("TE_RS_TEST_CFG_RANGE", 5, 1, 65535), 5);
    }
}
