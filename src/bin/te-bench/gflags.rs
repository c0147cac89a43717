//! Command-line syntax of gflags, as transfer_engine_bench parses it:
//! `--flag=v`, `-flag=v`, `--flag v`, `-flag v`; booleans as `--flag`,
//! `--noflag` or `--flag=` t/f/true/false/y/n/yes/no/1/0 (any case, never the
//! next argument); `--flagfile=F` (one flag per line, `#` comments); `--`
//! ends the flags; other positional arguments are ignored. glog's flags are
//! accepted and ignored (te-rs logging reads `MC_LOG_LEVEL`/`MC_LOG_DIR`).

use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Value,
    /// A value after `=` only; alone it means `default` (te-bench's `--json`).
    OptionalValue(&'static str),
}

/// glog's flags (logging.cc, vlog_is_on.cc): name and whether boolean.
const GLOG: &[(&str, bool)] = &[
    ("logtostderr", true),
    ("alsologtostderr", true),
    ("colorlogtostderr", true),
    ("logtostdout", true),
    ("colorlogtostdout", true),
    ("log_prefix", true),
    ("log_year_in_prefix", true),
    ("log_utc_time", true),
    ("stop_logging_if_full_disk", true),
    ("timestamp_in_logfile_name", true),
    ("drop_log_memory", true),
    ("symbolize_stacktrace", true),
    ("stderrthreshold", false),
    ("minloglevel", false),
    ("v", false),
    ("vmodule", false),
    ("log_dir", false),
    ("log_link", false),
    ("logbuflevel", false),
    ("logbufsecs", false),
    ("logfile_mode", false),
    ("max_log_size", false),
    ("logemaillevel", false),
    ("logmailer", false),
    ("log_backtrace_at", false),
];

/// gflags' boolean spellings.
pub fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "n" | "no" => Ok(false),
        _ => Err(format!(
            "illegal value '{v}' specified for bool flag '{name}'"
        )),
    }
}

/// Parsed flags: name -> value text (booleans as "true"/"false"), plus the
/// glog flags that were given and ignored.
#[derive(Default, Debug)]
pub struct Parsed {
    pub values: HashMap<String, String>,
    pub ignored: Vec<String>,
}

pub struct Spec<'a> {
    pub flags: &'a [(&'a str, Kind)],
}

impl Spec<'_> {
    fn kind(&self, name: &str) -> Option<Kind> {
        self.flags.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    fn glog(name: &str) -> Option<bool> {
        GLOG.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    /// Parse `argv` (without the program name). `Err("")` asks for help.
    pub fn parse(&self, argv: &[String]) -> Result<Parsed, String> {
        let mut out = Parsed::default();
        self.parse_into(argv, &mut out, 0)?;
        Ok(out)
    }

    fn parse_into(&self, argv: &[String], out: &mut Parsed, depth: usize) -> Result<(), String> {
        let mut i = 0;
        while i < argv.len() {
            let arg = &argv[i];
            i += 1;
            if arg == "--" {
                break;
            }
            let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                continue; // positional: transfer_engine_bench ignores them
            };
            if body.is_empty() {
                continue;
            }
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if matches!(name, "h" | "help" | "helpfull" | "helpshort") {
                return Err(String::new());
            }
            let mut next = || -> Result<String, String> {
                let v = argv
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("flag '{name}' is missing its argument"))?;
                i += 1;
                Ok(v)
            };
            if name == "flagfile" {
                let path = match inline {
                    Some(v) => v,
                    None => next()?,
                };
                self.flagfile(&path, out, depth)?;
                continue;
            }
            if let Some(kind) = self.kind(name) {
                let value = match (kind, inline) {
                    (Kind::Bool, None) => "true".to_string(),
                    (Kind::Bool, Some(v)) => parse_bool(name, &v)?.to_string(),
                    (Kind::OptionalValue(d), None) => d.to_string(),
                    (_, Some(v)) => v,
                    (Kind::Value, None) => next()?,
                };
                out.values.insert(name.to_string(), value);
                continue;
            }
            if let Some(stem) = name.strip_prefix("no") {
                if inline.is_none() && self.kind(stem) == Some(Kind::Bool) {
                    out.values.insert(stem.to_string(), "false".to_string());
                    continue;
                }
                if inline.is_none() && Self::glog(stem) == Some(true) {
                    out.ignored.push(name.to_string());
                    continue;
                }
            }
            if let Some(is_bool) = Self::glog(name) {
                match (is_bool, inline) {
                    (true, Some(v)) => {
                        parse_bool(name, &v)?;
                    }
                    (false, None) => {
                        next()?;
                    }
                    _ => {}
                }
                out.ignored.push(name.to_string());
                continue;
            }
            return Err(format!("unknown command line flag '{name}'"));
        }
        Ok(())
    }

    fn flagfile(&self, path: &str, out: &mut Parsed, depth: usize) -> Result<(), String> {
        if depth > 8 {
            return Err(format!("--flagfile nesting too deep at {path}"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("--flagfile {path}: {e}"))?;
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        // gflags reads one flag per line; a value cannot be on the next line.
        for line in &lines {
            if !line.starts_with('-') {
                return Err(format!("--flagfile {path}: '{line}' is not a flag"));
            }
            self.parse_into(std::slice::from_ref(line), out, depth + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[(&str, Kind)] = &[
        ("check", Kind::Bool),
        ("threads", Kind::Value),
        ("mode", Kind::Value),
        ("json", Kind::OptionalValue("-")),
    ];

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Spec { flags: FLAGS }.parse(&v)
    }

    fn get(p: &Parsed, k: &str) -> Option<String> {
        p.values.get(k).cloned()
    }

    #[test]
    fn gflags_spellings() {
        let p = parse(&["--threads=3", "-mode", "target", "positional", "--check"]).unwrap();
        assert_eq!(get(&p, "threads").as_deref(), Some("3"));
        assert_eq!(get(&p, "mode").as_deref(), Some("target"));
        assert_eq!(get(&p, "check").as_deref(), Some("true"));
        for (spelling, want) in [
            ("t", "true"),
            ("f", "false"),
            ("true", "true"),
            ("FALSE", "false"),
            ("1", "true"),
            ("0", "false"),
            ("yes", "true"),
            ("no", "false"),
            ("y", "true"),
            ("n", "false"),
        ] {
            let p = parse(&[&format!("--check={spelling}")]).unwrap();
            assert_eq!(get(&p, "check").as_deref(), Some(want), "{spelling}");
        }
        assert!(parse(&["--check=maybe"]).is_err());
        assert_eq!(
            get(&parse(&["--check", "--nocheck"]).unwrap(), "check").as_deref(),
            Some("false")
        );
        // A bool never takes the next argument.
        let p = parse(&["--check", "false"]).unwrap();
        assert_eq!(get(&p, "check").as_deref(), Some("true"));
        // `--` ends the flags; last one wins.
        let p = parse(&["--threads", "2", "--threads=5", "--", "--bogus"]).unwrap();
        assert_eq!(get(&p, "threads").as_deref(), Some("5"));
        assert!(parse(&["--bogus=1"])
            .unwrap_err()
            .contains("unknown command line flag 'bogus'"));
        assert!(parse(&["--threads"])
            .unwrap_err()
            .contains("missing its argument"));
        assert_eq!(parse(&["--help"]).unwrap_err(), "");
        assert_eq!(
            get(&parse(&["--json"]).unwrap(), "json").as_deref(),
            Some("-")
        );
        assert_eq!(
            get(&parse(&["--json=x"]).unwrap(), "json").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn glog_flags_are_accepted_and_ignored() {
        let p = parse(&[
            "--logtostderr",
            "--v=2",
            "-minloglevel",
            "1",
            "--nocolorlogtostderr",
            "--log_dir=/tmp",
            "--threads=4",
        ])
        .unwrap();
        assert_eq!(get(&p, "threads").as_deref(), Some("4"));
        assert_eq!(
            p.ignored,
            [
                "logtostderr",
                "v",
                "minloglevel",
                "nocolorlogtostderr",
                "log_dir"
            ]
        );
        assert!(parse(&["--logtostderr=perhaps"]).is_err());
    }

    #[test]
    fn flagfile() {
        let path = std::env::temp_dir().join(format!("te-bench-flagfile-{}", std::process::id()));
        std::fs::write(
            &path,
            "# comment\n--threads=7\n\n  -nocheck\n--mode=target\n",
        )
        .unwrap();
        let p = parse(&[
            "--check",
            &format!("--flagfile={}", path.display()),
            "--threads=9",
        ])
        .unwrap();
        assert_eq!(get(&p, "threads").as_deref(), Some("9"));
        assert_eq!(get(&p, "check").as_deref(), Some("false"));
        assert_eq!(get(&p, "mode").as_deref(), Some("target"));
        std::fs::write(&path, "--threads\n7\n").unwrap();
        assert!(parse(&["--flagfile", &path.display().to_string()]).is_err());
        let _ = std::fs::remove_file(&path);
        assert!(parse(&["--flagfile=/nonexistent/te-rs"]).is_err());
    }
}
