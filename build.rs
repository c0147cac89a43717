//! Give the shared library the SONAME Mooncake's CMake build gives it, so
//! programs linked against it record `libtransfer_engine.so`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtransfer_engine.so");
    println!("cargo:rerun-if-changed=build.rs");
}
