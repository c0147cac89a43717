//! The shipped header `include/transfer_engine_c.h` is the contract. This
//! test renders the Rust exports of `src/ffi` as C with cbindgen and checks
//! that both declare the same functions (names, return and parameter types),
//! the same structs (field order, types, array sizes), the same constants
//! and the same typedef names. Spellings are normalised (`struct` keyword,
//! typedefs and `#define` type aliases such as `segment_id_t` -> `int32_t`).

use std::collections::{BTreeMap, BTreeSet};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Structs the header keeps for layout compatibility though no function uses them.
const HEADER_ONLY_STRUCTS: &[&str] = &["segment_desc"];
const HEADER_ONLY_TYPEDEFS: &[&str] = &["segment_desc_t"];
/// `#define` type aliases of the header, which Rust spells as typedefs.
const HEADER_ONLY_TYPE_MACROS: &[&str] = &["segment_handle_t"];

#[derive(Debug, Default)]
struct Api {
    functions: BTreeMap<String, (String, Vec<String>)>,
    structs: BTreeMap<String, Vec<String>>,
    constants: BTreeMap<String, String>,
    typedefs: BTreeSet<String>,
    aliases: BTreeMap<String, String>,
}

fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            i = src[i + 2..].find("*/").map_or(b.len(), |j| i + 2 + j + 2);
            out.push(' ');
        } else if b[i..].starts_with(b"//") {
            i = src[i..].find('\n').map_or(b.len(), |j| i + j);
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Split a declaration into tokens: identifiers, numbers and punctuation.
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Resolve a type to a canonical spelling using the alias table.
fn norm_type(ty: &str, aliases: &BTreeMap<String, String>, depth: usize) -> String {
    let mut out: Vec<String> = Vec::new();
    for t in tokens(ty) {
        if t == "struct" || t == "union" {
            continue;
        }
        match aliases.get(&t) {
            Some(a) if depth < 8 => out.extend(tokens(&norm_type(a, aliases, depth + 1))),
            _ => out.push(t),
        }
    }
    out.join(" ")
}

/// `type name` or `type name[N]` -> (type, name, array suffix).
fn split_decl(decl: &str) -> (String, String, String) {
    let decl = decl.trim();
    let (decl, array) = match decl.find('[') {
        Some(i) => (&decl[..i], collapse(&decl[i..])),
        None => (decl, String::new()),
    };
    let toks = tokens(decl);
    let name = toks.last().cloned().unwrap_or_default();
    let ty = toks[..toks.len().saturating_sub(1)].join(" ");
    (ty, name, array)
}

fn parse(src: &str) -> Api {
    let src = strip_comments(src);
    let mut api = Api::default();
    let mut body = String::new();
    let mut in_cpp_guard = false;
    for line in src.lines() {
        let l = line.trim();
        if let Some(d) = l.strip_prefix('#') {
            let d = d.trim();
            if d.starts_with("ifdef __cplusplus") {
                in_cpp_guard = true;
            } else if d.starts_with("endif") {
                in_cpp_guard = false;
            } else if let Some(rest) = d.strip_prefix("define ") {
                let mut it = rest.trim().splitn(2, char::is_whitespace);
                let name = it.next().unwrap_or_default().to_string();
                let value = it.next().unwrap_or_default().trim().to_string();
                if value.is_empty() {
                    continue; // include guard
                }
                if name.chars().any(|c| c.is_ascii_lowercase()) {
                    api.aliases.insert(name.clone(), value);
                    api.typedefs.insert(name);
                } else {
                    let v: String = value.chars().filter(|c| !"() ".contains(*c)).collect();
                    api.constants.insert(name, v);
                }
            }
            continue;
        }
        if !in_cpp_guard {
            body.push_str(line);
            body.push('\n');
        }
    }
    // Top-level statements end at ';' outside braces.
    let mut stmts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ';' && depth == 0 {
            stmts.push(collapse(&cur));
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    let mut raw_functions = Vec::new();
    let mut raw_structs = Vec::new();
    for s in stmts.into_iter().filter(|s| !s.is_empty()) {
        if let Some(rest) = s.strip_prefix("typedef ") {
            let (ty, name, _) = split_decl(rest);
            api.aliases.insert(name.clone(), ty);
            api.typedefs.insert(name);
        } else if s.starts_with("struct ") && s.contains('{') {
            let open = s.find('{').unwrap();
            let name = s["struct ".len()..open].trim().to_string();
            let inner = &s[open + 1..s.rfind('}').unwrap()];
            raw_structs.push((name, inner.to_string()));
        } else if s.contains('(') {
            raw_functions.push(s);
        } else {
            panic!("unrecognised declaration: {s}");
        }
    }
    for (name, inner) in raw_structs {
        let fields = if inner.contains('{') {
            // Nested aggregates (segment_desc): compare the raw text.
            vec![collapse(&inner)]
        } else {
            inner
                .split(';')
                .filter(|f| !f.trim().is_empty())
                .map(|f| {
                    let (ty, n, arr) = split_decl(f);
                    format!("{} {n}{arr}", norm_type(&ty, &api.aliases, 0))
                })
                .collect()
        };
        api.structs.insert(name, fields);
    }
    for f in raw_functions {
        let open = f.find('(').unwrap();
        let (ret, name, _) = split_decl(&f[..open]);
        let params_src = &f[open + 1..f.rfind(')').unwrap()];
        let params: Vec<String> = if params_src.trim() == "void" || params_src.trim().is_empty() {
            Vec::new()
        } else {
            params_src
                .split(',')
                .map(|p| norm_type(&split_decl(p).0, &api.aliases, 0))
                .collect()
        };
        api.functions
            .insert(name, (norm_type(&ret, &api.aliases, 0), params));
    }
    api
}

/// Every difference between the shipped header and the Rust exports.
fn drift(header: &Api, rust: &Api) -> Vec<String> {
    let mut out = Vec::new();
    for (name, sig) in &header.functions {
        match rust.functions.get(name) {
            None => out.push(format!(
                "function {name} is in the header but not exported by Rust"
            )),
            Some(r) if r != sig => {
                out.push(format!("function {name}: header {sig:?} vs Rust {r:?}"))
            }
            _ => {}
        }
    }
    for name in rust.functions.keys() {
        if !header.functions.contains_key(name) {
            out.push(format!(
                "function {name} is exported by Rust but not in the header"
            ));
        }
    }
    for (name, fields) in &header.structs {
        match rust.structs.get(name) {
            None if HEADER_ONLY_STRUCTS.contains(&name.as_str()) => {}
            None => out.push(format!("struct {name} is in the header but not in Rust")),
            Some(r) if r != fields => {
                out.push(format!("struct {name}: header {fields:?} vs Rust {r:?}"))
            }
            _ => {}
        }
    }
    for name in rust.structs.keys() {
        if !header.structs.contains_key(name) {
            out.push(format!("struct {name} is in Rust but not in the header"));
        }
    }
    if header.constants != rust.constants {
        out.push(format!(
            "constants differ: header {:?} vs Rust {:?}",
            header.constants, rust.constants
        ));
    }
    for t in &header.typedefs {
        let optional = HEADER_ONLY_TYPEDEFS.contains(&t.as_str())
            || HEADER_ONLY_TYPE_MACROS.contains(&t.as_str());
        if !optional && !rust.typedefs.contains(t) {
            out.push(format!("type name {t} is in the header but not in Rust"));
        }
    }
    for t in &rust.typedefs {
        if !header.typedefs.contains(t) {
            out.push(format!("type name {t} is in Rust but not in the header"));
        }
    }
    out
}

fn header_text() -> String {
    std::fs::read_to_string(format!("{MANIFEST}/include/transfer_engine_c.h"))
        .expect("read include/transfer_engine_c.h")
}

fn rust_text() -> String {
    let cfg = cbindgen::Config::from_file(format!("{MANIFEST}/cbindgen.toml"))
        .expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(cfg)
        .with_src(format!("{MANIFEST}/src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen failed on src/ffi");
    let mut v = Vec::new();
    bindings.write(&mut v);
    String::from_utf8(v).expect("cbindgen output is UTF-8")
}

#[test]
fn header_matches_rust_exports() {
    let header = parse(&header_text());
    let rust = parse(&rust_text());
    assert_eq!(header.functions.len(), 27, "{:?}", header.functions.keys());
    let d = drift(&header, &rust);
    assert!(d.is_empty(), "header drift:\n{}", d.join("\n"));
}

#[test]
fn normalisation_resolves_aliases() {
    let header = parse(&header_text());
    let (ret, params) = &header.functions["openSegment"];
    assert_eq!(ret, "int32_t");
    assert_eq!(params, &["void *", "const char *"]);
    let (_, params) = &header.functions["genNotifyInEngine"];
    assert_eq!(params, &["void *", "uint64_t", "notify_msg"]);
    assert_eq!(
        header.structs["nic_load_stat"],
        [
            "char device_name[64]",
            "uint64_t inflight_bytes",
            "double ewma_bandwidth_bps"
        ]
    );
    assert_eq!(header.constants["INVALID_BATCH"], "UINT64_MAX");
}

/// Each kind of drift must be reported (guards the checker itself).
#[test]
fn detects_every_kind_of_drift() {
    let good = header_text();
    let rust = parse(&rust_text());
    let mutations: &[(&str, &str)] = &[
        ("int freeBatchID(", "int freeBatchId("),
        ("size_t task_id,", "uint64_t task_id,"),
        (
            "int closeSegment(transfer_engine_t engine, segment_id_t segment_id);",
            "",
        ),
        (
            "int syncSegmentCache(transfer_engine_t engine);",
            "int syncSegmentCache(transfer_engine_t engine);\nint extraFunction(void);",
        ),
        (
            "    uint64_t inflight_bytes;",
            "    uint32_t inflight_bytes;",
        ),
        ("    char device_name[64];", "    char device_name[32];"),
        (
            "    void *addr;\n    size_t length;",
            "    size_t length;\n    void *addr;",
        ),
        ("#define STATUS_FAILED (6)", "#define STATUS_FAILED (7)"),
        (
            "#define segment_id_t int32_t",
            "#define segment_id_t int64_t",
        ),
        (
            "void enableGracefulShutdown(transfer_engine_t engine);",
            "int enableGracefulShutdown(transfer_engine_t engine);",
        ),
    ];
    for (from, to) in mutations {
        assert!(good.contains(from), "mutation source not found: {from}");
        let bad = parse(&good.replacen(from, to, 1));
        assert!(
            !drift(&bad, &rust).is_empty(),
            "drift not detected for mutation {from:?} -> {to:?}"
        );
    }
}
