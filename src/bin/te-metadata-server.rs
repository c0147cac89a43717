//! te-metadata-server: Mooncake's HTTP metadata protocol (placeholder).
fn main() {
    eprintln!("te-metadata-server: not built yet");
    std::process::exit(2);
}
