//! MC_MAX_EP_PER_CTX: past the cap, idle endpoints are evicted (retired);
//! an endpoint with WRs in flight never is, and no transfer is lost.
//! Own test binary: the cap is read from the process environment at install.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(30);

#[test]
fn endpoints_past_the_cap_are_evicted_only_when_idle() {
    std::env::set_var("MC_MAX_EP_PER_CTX", "1");
    let a = rdma_engine(&["load0"]);
    let b = rdma_engine(&["load1"]);
    let c = rdma_engine(&["race0"]);
    let len = 256usize << 10;
    let src = Buf(pattern(5, len));
    let to_b = Buf::new(len, 0);
    let to_c = Buf::new(len, 0);
    register(&a, &src);
    register(&b, &to_b);
    register(&c, &to_c);
    let (sb, sc) = (open(&a, &b), open(&a, &c));

    // Alternate peers: each switch must evict the other (idle) endpoint.
    for round in 0..4u64 {
        let (seg, dst) = if round % 2 == 0 {
            (sb, &to_b)
        } else {
            (sc, &to_c)
        };
        let st = run_batch(
            &a,
            &[req(Opcode::Write, src.addr(), seg, dst.addr(), len as u64)],
            T,
        );
        assert_eq!(st[0].status, TaskStatus::Completed, "round {round}");
        let eps = links(&a)["endpoints"].as_array().unwrap().len();
        assert!(
            eps <= 1,
            "round {round}: {eps} endpoints on a context capped at 1"
        );
    }
    assert!(counter(&a, "evictions") >= 3, "links: {}", links(&a));
    assert_eq!(&to_b.0[..], &src.0[..]);
    assert_eq!(&to_c.0[..], &src.0[..]);

    // Both peers in one batch: the busy endpoint is never evicted, the cap
    // is exceeded for a while instead, and every byte still lands.
    let big = Buf(pattern(9, len));
    register(&a, &big);
    let reqs: Vec<_> = (0..8u64)
        .map(|i| {
            let (seg, dst) = if i % 2 == 0 { (sb, &to_b) } else { (sc, &to_c) };
            let o = (i / 2) * (len as u64 / 4);
            req(
                Opcode::Write,
                big.addr() + o,
                seg,
                dst.addr() + o,
                len as u64 / 4,
            )
        })
        .collect();
    let st = run_batch(&a, &reqs, T);
    assert!(
        st.iter().all(|s| s.status == TaskStatus::Completed),
        "{st:?}"
    );
    assert_eq!(&to_b.0[..], &big.0[..]);
    assert_eq!(&to_c.0[..], &big.0[..]);
    assert_eq!(counter(&a, "failed_slices"), 0);
}
