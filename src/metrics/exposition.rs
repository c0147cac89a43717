//! Prometheus text exposition format (version 0.0.4): families with their
//! `# HELP` / `# TYPE` lines, samples with escaped label values.

use std::fmt::Write;

use super::histogram::Histogram;

/// Help of the families several transports write.
pub mod help {
    pub const CONNECTIONS_OPENED: &str =
        "Data connections (TCP) or endpoints (RDMA handshakes) established.";
    pub const CONNECTION_FAILURES: &str = "TCP connects or RDMA handshakes that failed.";
    pub const ERRORS: &str =
        "Failure events by transport and reason (one event may fail several slices).";
}

/// Text being built for one scrape. Samples go to the family last named;
/// a family named again (several transports write `te_errors_total`)
/// collects its samples in one place, under one header.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
    current: usize,
}

struct Family {
    name: &'static str,
    kind: String,
    help: String,
    text: String,
}

impl Exposition {
    /// Samples that follow belong to family `name` (a `te_` name). The
    /// first non-empty `help` is the one shown.
    pub fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        if let Some(i) = self.families.iter().position(|f| f.name == name) {
            self.current = i;
            if self.families[i].help.is_empty() {
                self.families[i].help = help.replace('\n', " ");
            }
            return;
        }
        self.current = self.families.len();
        self.families.push(Family {
            name,
            kind: kind.to_string(),
            help: help.replace('\n', " "),
            text: String::new(),
        });
    }

    /// One sample of the current family (`name` may carry a histogram's
    /// `_bucket`/`_sum`/`_count` suffix).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let Some(fam) = self.families.get_mut(self.current) else {
            debug_assert!(false, "sample {name} before any family");
            return;
        };
        let text = &mut fam.text;
        text.push_str(name);
        if !labels.is_empty() {
            text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{k}=\"{}\"", escape(v));
            }
            text.push('}');
        }
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(text, " {}", value as i64);
        } else {
            let _ = writeln!(text, " {value}");
        }
    }

    /// A counter or gauge family with one sample.
    pub fn single(&mut self, name: &'static str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The `_bucket`/`_sum`/`_count` samples of `h` (bounds in µs, exposed
    /// in seconds, cumulative, ending with `+Inf`).
    pub fn histogram(&mut self, name: &'static str, labels: &[(&str, &str)], h: &Histogram) {
        let snap = h.snapshot();
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, count) in snap.counts.iter().enumerate() {
            cumulative += count;
            let le = match snap.bounds_us.get(i) {
                Some(b) => format_seconds(*b),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, snap.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.text);
        }
        out
    }
}

/// The samples of exposition `text` as (series, value): the series is the
/// line up to its value (`te_x_total{peer="a"}`), as PromQL writes it.
/// For callers without a Prometheus (the Python package's dict).
pub fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let v = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some((series.to_string(), v))
        })
        .collect()
}

/// `\`, `"` and newlines escaped, as the format asks for label values.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Microseconds as seconds without float noise (`50` → `0.00005`).
fn format_seconds(us: u64) -> String {
    let whole = us / 1_000_000;
    let frac = us % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes() {
        let mut e = Exposition::default();
        e.family("te_x_total", "counter", "X.");
        e.sample("te_x_total", &[("peer", "a\"b\\c\nd")], 3.0);
        e.family("te_y", "gauge", "Y.");
        e.sample("te_y", &[], 1.0);
        e.family("te_x_total", "counter", "");
        e.sample("te_x_total", &[("peer", "b")], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP te_x_total X.\n# TYPE te_x_total counter\n\
             te_x_total{peer=\"a\\\"b\\\\c\\nd\"} 3\nte_x_total{peer=\"b\"} 0.5\n\
             # HELP te_y Y.\n# TYPE te_y gauge\nte_y 1\n"
        );
    }

    #[test]
    fn samples_read_back_what_was_written() {
        let mut e = Exposition::default();
        e.family("te_x_total", "counter", "X.");
        e.sample("te_x_total", &[("peer", "a b")], 3.0);
        e.sample("te_x_total", &[], 0.25);
        assert_eq!(
            samples(&e.finish()),
            vec![
                ("te_x_total{peer=\"a b\"}".to_string(), 3.0),
                ("te_x_total".to_string(), 0.25)
            ]
        );
    }

    #[test]
    fn histogram_is_cumulative_in_seconds() {
        let h = Histogram::new(&[50, 1_000_000]);
        h.observe_us(10);
        h.observe_us(60);
        h.observe_us(2_000_000);
        let mut e = Exposition::default();
        e.family("te_h_seconds", "histogram", "H.");
        e.histogram("te_h_seconds", &[("op", "read")], &h);
        let text = e.finish();
        assert!(
            text.contains("te_h_seconds_bucket{op=\"read\",le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("te_h_seconds_bucket{op=\"read\",le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("te_h_seconds_bucket{op=\"read\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("te_h_seconds_count{op=\"read\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("te_h_seconds_sum{op=\"read\"} 2.00007\n"),
            "{text}"
        );
        assert_eq!(format_seconds(10_000_000), "10");
    }
}
