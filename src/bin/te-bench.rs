//! te-bench: Mooncake's transfer_engine_bench, rebuilt (placeholder).
fn main() {
    eprintln!("te-bench: not built yet");
    std::process::exit(2);
}
