//! `include/transfer_engine_ext.h` is cbindgen's rendering of
//! `src/ffi_ext.rs` (`cbindgen_ext.toml`), byte for byte, so the shipped
//! extension header and the library's exports cannot drift. After changing
//! `src/ffi_ext.rs`: `TE_BLESS_HEADERS=1 cargo test --test header_ext`.

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn rendered() -> String {
    let cfg = cbindgen::Config::from_file(format!("{MANIFEST}/cbindgen_ext.toml"))
        .expect("read cbindgen_ext.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(cfg)
        .with_src(format!("{MANIFEST}/src/ffi_ext.rs"))
        .generate()
        .expect("cbindgen failed on src/ffi_ext.rs");
    let mut v = Vec::new();
    bindings.write(&mut v);
    String::from_utf8(v).expect("cbindgen output is UTF-8")
}

#[test]
fn extension_header_is_the_rendering_of_ffi_ext() {
    let path = format!("{MANIFEST}/include/transfer_engine_ext.h");
    let want = rendered();
    if std::env::var_os("TE_BLESS_HEADERS").is_some() {
        std::fs::write(&path, &want).expect("write the extension header");
    }
    let have = std::fs::read_to_string(&path).expect("read include/transfer_engine_ext.h");
    assert!(
        have == want,
        "include/transfer_engine_ext.h differs from cbindgen's rendering of src/ffi_ext.rs; \
         run TE_BLESS_HEADERS=1 cargo test --test header_ext and review the diff"
    );
    for f in [
        "teCancelBatch",
        "teCancelTransfer",
        "teSubmitTransferWithDeadline",
        "teSetBatchDeadline",
        "teReleaseBatchID",
        "teWaitBatch",
        "teBatchCounts",
    ] {
        assert!(
            have.contains(&format!(" {f}(")),
            "{f} missing from the header"
        );
    }
    assert!(have.contains("#include \"transfer_engine_c.h\""));
}
