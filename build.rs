//! Give the shared library the SONAME Mooncake's CMake build gives it, so
//! programs linked against it record `libtransfer_engine.so`, and put empty
//! `libbase.a`, `libasio.a` and `libmooncake_common.a` next to the library
//! in the build tree: upstream's link lines name them beside
//! `-ltransfer_engine`, and te-rs has nothing in them.
use std::path::{Path, PathBuf};

/// Libraries upstream link lines name that te-rs folds into the engine.
const COMPANIONS: [&str; 3] = ["base", "asio", "mooncake_common"];
/// An `ar` archive with no members: valid for `-lNAME` and `-Wl,-Bstatic`.
const EMPTY_ARCHIVE: &[u8] = b"!<arch>\n";

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtransfer_engine.so");
    println!("cargo:rerun-if-changed=build.rs");
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    for name in COMPANIONS {
        write_if_different(&profile_dir.join(format!("lib{name}.a")), EMPTY_ARCHIVE);
    }
}

fn write_if_different(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return;
    }
    if let Err(e) = std::fs::write(path, bytes) {
        println!("cargo:warning=cannot write {}: {e}", path.display());
    }
}
