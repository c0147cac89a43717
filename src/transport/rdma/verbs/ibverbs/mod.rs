//! The ibverbs provider: libibverbs through `rdma-sys`. One file per verbs
//! object; handles are `NonNull` and released on drop.

mod context;
mod cq;
mod device;
mod gid;
mod mr;
mod pd;
mod qp;

pub use device::IbvProvider;
