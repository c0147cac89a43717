//! README's settings tables, `src/settings.rs` and the source agree: every
//! upstream `MC_*` name is in both lists with the same verdict, an
//! "honoured" one is read somewhere in src/, one that is not is read nowhere,
//! and every `MC_*` name te-rs reads is documented in one of the tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use transfer_engine::settings::{Support, UPSTREAM};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `| `NAME` | verdict | ... |` rows between the two markers.
fn table(readme: &str, marker: &str) -> BTreeMap<String, String> {
    let start = readme
        .find(&format!("<!-- {marker}:start -->"))
        .unwrap_or_else(|| panic!("README has no {marker} table"));
    let end = readme.find(&format!("<!-- {marker}:end -->")).unwrap();
    readme[start..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cells.get(2).unwrap_or(&"").to_string()))
        })
        .collect()
}

/// `"MC_..."` string literals in src/, except the settings list itself.
fn names_read_in(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names_read_in(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("src/settings.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split("\"MC_").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if piece[name.len()..].starts_with('"') {
                out.insert(format!("MC_{name}"));
            }
        }
    }
}

#[test]
fn readme_table_matches_the_code() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let documented = table(&readme, "settings-table");
    let listed: BTreeMap<String, Support> = UPSTREAM
        .iter()
        .map(|(n, s, _)| (n.to_string(), *s))
        .collect();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        listed.keys().collect::<Vec<_>>(),
        "README settings table and src/settings.rs list different names"
    );
    for (name, support) in &listed {
        let want = match support {
            Support::Honoured => "honoured",
            Support::Differently => "honoured differently",
            Support::NotApplicable => "not applicable",
        };
        assert_eq!(documented[name], want, "{name}");
    }
    let note = |n: &str| UPSTREAM.iter().find(|(m, _, _)| *m == n).unwrap().2;
    for row in readme.lines().filter(|l| l.starts_with("| `MC_")) {
        let name = row.split('`').nth(1).unwrap();
        if let Some((_, s, _)) = UPSTREAM.iter().find(|(m, _, _)| *m == name) {
            if *s != Support::Honoured {
                assert!(
                    row.contains(note(name)),
                    "README's reason for {name} differs from src/settings.rs"
                );
            }
        }
    }
}

#[test]
fn verdicts_match_what_the_source_reads() {
    let mut read = BTreeSet::new();
    names_read_in(&root().join("src"), &mut read);
    for (name, support, _) in UPSTREAM {
        match support {
            Support::Honoured => assert!(
                read.contains(*name),
                "{name} is 'honoured' but src/ never reads it"
            ),
            _ => assert!(
                !read.contains(*name),
                "{name} is read in src/ but marked {support:?}"
            ),
        }
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let own = table(&readme, "own-settings");
    let upstream: BTreeSet<&str> = UPSTREAM.iter().map(|(n, _, _)| *n).collect();
    for name in &read {
        if name.starts_with("MC_TE_RS_TEST_") || upstream.contains(name.as_str()) {
            continue;
        }
        assert!(
            own.contains_key(name),
            "{name} is read in src/ but not in README's own-settings table"
        );
    }
    for name in own.keys() {
        assert!(
            read.contains(name),
            "README documents {name}, which src/ never reads"
        );
        assert!(
            !upstream.contains(name.as_str()),
            "{name} is upstream's, not te-rs's own"
        );
    }
}
