//! The ibverbs provider on a host without RDMA devices or kernel support.

use transfer_engine::transport::rdma::verbs::{provider_of, OpenOptions, ProviderKind};

#[test]
fn ibverbs_reports_no_devices_cleanly() {
    let p = provider_of(ProviderKind::Ibverbs);
    assert_eq!(p.name(), "ibverbs");
    let devices = p.devices().expect("no device must not be an error");
    // This build box has no RDMA NIC; on a host with one the list is real.
    if std::path::Path::new("/sys/class/infiniband")
        .read_dir()
        .map_or(true, |mut d| d.next().is_none())
    {
        assert!(devices.is_empty(), "unexpected devices: {devices:?}");
        let err = p
            .open("mlx5_0", &OpenOptions::default())
            .err()
            .expect("opening a missing device must fail");
        assert_eq!(err.err_code(), -6, "{err}");
    }
}
