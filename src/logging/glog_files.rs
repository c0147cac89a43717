//! `MC_LOG_DIR`: log files named, headed and split by severity as glog
//! writes them once upstream sets `FLAGS_log_dir` (config.cpp, program name
//! `mooncake-transfer-engine`):
//! `<dir>/mooncake-transfer-engine.<host>.<user>.log.<SEVERITY>.<yyyymmdd-hhmmss>.<pid>`,
//! a `mooncake-transfer-engine.<SEVERITY>` symlink to the newest, the INFO
//! file holding every line, WARNING warnings and errors, ERROR errors; stderr
//! keeps errors only (glog's default `stderrthreshold`). Files open on their
//! first line.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

const PROGRAM: &str = "mooncake-transfer-engine";
const SEVERITIES: [&str; 3] = ["INFO", "WARNING", "ERROR"];

#[derive(Debug)]
pub struct LogDir {
    dir: PathBuf,
    files: Mutex<[Option<File>; 3]>,
}

fn rank(level: log::Level) -> usize {
    match level {
        log::Level::Error => 2,
        log::Level::Warn => 1,
        _ => 0,
    }
}

fn user() -> String {
    // SAFETY: getpwuid returns NULL or a pointer to static storage that
    // stays valid until the next call; we copy the name out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            if let Ok(s) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return s.to_string();
            }
        }
    }
    "invalid-user".to_string()
}

fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.to_string(),
        _ => "(unknown)".to_string(),
    }
}

impl LogDir {
    /// Upstream's checks: a directory, writable by us; else the reason.
    pub fn open(dir: &Path) -> Result<LogDir, String> {
        let shown = dir.display();
        if !dir.is_dir() {
            return Err(format!(
                "Path [{shown}] is not a valid directory path. Still logging to stderr."
            ));
        }
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("Path [{shown}] contains a NUL byte. Still logging to stderr."))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
            return Err(format!(
                "Path [{shown}] is not a permitted directory path for the current user. Still logging to stderr."
            ));
        }
        Ok(LogDir {
            dir: dir.to_path_buf(),
            files: Mutex::new([None, None, None]),
        })
    }

    fn create(&self, sev: usize) -> Option<File> {
        let (tm, _) = super::local_now();
        let stamp = format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        );
        let name = format!(
            "{PROGRAM}.{}.{}.log.{}.{stamp}.{}",
            host(),
            user(),
            SEVERITIES[sev],
            std::process::id()
        );
        let mut f = match File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(&name))
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "te-rs: cannot create log file {name} in {}: {e}",
                    self.dir.display()
                );
                return None;
            }
        };
        let header = format!(
            "Log file created at: {:04}/{:02}/{:02} {:02}:{:02}:{:02}\n\
             Running on machine: {}\n\
             Running duration (h:mm:ss): 0:00:00\n\
             Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            host()
        );
        let _ = f.write_all(header.as_bytes());
        let link = self.dir.join(format!("{PROGRAM}.{}", SEVERITIES[sev]));
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink(&name, &link);
        Some(f)
    }

    /// One formatted line at `level`: into its file and the lower ones.
    pub fn write(&self, level: log::Level, line: &[u8]) {
        let top = rank(level);
        {
            let mut files = self.files.lock();
            for sev in 0..=top {
                if files[sev].is_none() {
                    files[sev] = self.create(sev);
                }
                if let Some(f) = files[sev].as_mut() {
                    let _ = f.write_all(line);
                }
            }
        }
        if top == 2 {
            let _ = std::io::stderr().lock().write_all(line);
        }
    }

    pub fn flush(&self) {
        for f in self.files.lock().iter_mut().flatten() {
            let _ = f.flush();
        }
    }

    /// A writer into the INFO file (env_logger format: one file, all lines).
    pub fn into_info_writer(self) -> InfoWriter {
        InfoWriter(self)
    }
}

pub struct InfoWriter(LogDir);

impl Write for InfoWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(log::Level::Info, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_by_severity_with_glog_names() {
        let dir = std::env::temp_dir().join(format!("te-logdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = LogDir::open(&dir).unwrap();
        d.write(log::Level::Info, b"I-line\n");
        d.write(log::Level::Warn, b"W-line\n");
        d.write(log::Level::Trace, b"T-line\n");
        d.flush();
        let read =
            |sev: &str| std::fs::read_to_string(dir.join(format!("{PROGRAM}.{sev}"))).unwrap();
        let info = read("INFO");
        assert!(info.starts_with("Log file created at: "), "{info}");
        assert!(
            info.contains("Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
        );
        assert!(info.ends_with("I-line\nW-line\nT-line\n"), "{info}");
        assert!(read("WARNING").ends_with("Running duration (h:mm:ss): 0:00:00\nLog line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\nW-line\n"));
        assert!(!dir.join(format!("{PROGRAM}.ERROR")).exists());
        let target = std::fs::read_link(dir.join(format!("{PROGRAM}.INFO"))).unwrap();
        let name = target.to_string_lossy().to_string();
        let want = format!("{PROGRAM}.{}.{}.log.INFO.", host(), user());
        assert!(name.starts_with(&want), "{name}");
        assert!(
            name.ends_with(&format!(".{}", std::process::id())),
            "{name}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(LogDir::open(&dir)
            .unwrap_err()
            .contains("is not a valid directory path"));
    }
}
