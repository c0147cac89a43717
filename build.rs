//! Give the shared library the SONAME Mooncake's CMake build gives it, so
//! programs linked against it record `libtransfer_engine.so`, and put empty
//! `libbase.a`, `libasio.a` and `libmooncake_common.a` next to the library
//! in the build tree: upstream's link lines name them beside
//! `-ltransfer_engine`, and te-rs has nothing in them. Also collect every
//! `"MC_*"` name in src/ for `settings::is_known` (typo warnings).
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
    write_source_names(&out);
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    for name in COMPANIONS {
        write_if_different(&profile_dir.join(format!("lib{name}.a")), EMPTY_ARCHIVE);
    }
}

/// `pub const SOURCE_NAMES: &[&str]`: the `"MC_..."` string literals of
/// src/ (but settings.rs).
fn write_source_names(out: &Path) {
    println!("cargo:rerun-if-changed=src");
    let mut names = std::collections::BTreeSet::new();
    collect_names(Path::new("src"), &mut names);
    let mut text = String::from("/// Every `\"MC_*\"` literal in src/ (collected by build.rs).\npub const SOURCE_NAMES: &[&str] = &[\n");
    for n in &names {
        text.push_str(&format!("    \"{n}\",\n"));
    }
    text.push_str("];\n");
    write_if_different(&out.join("mc_names.rs"), text.as_bytes());
}

fn collect_names(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_names(&path, out);
            continue;
        }
        // settings.rs lists upstream's names itself, and its tests misspell.
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("settings.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for piece in text.split("\"MC_").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && piece[name.len()..].starts_with('"') {
                out.insert(format!("MC_{name}"));
            }
        }
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
