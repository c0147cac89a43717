//! Cutting a request into RDMA slices (spec §6.2, pitfall 15). Pure.
//!
//! Blocks of `MC_SLICE_SIZE`; the tail is merged into the last block when it
//! is at most one fragment; every slice is also cut where the local memory
//! region or the remote buffer ends, so one slice never spans two MRs.

use crate::config::{env_str, env_u64};

/// Slice geometry from `MC_SLICE_SIZE` and `MC_FRAGMENT_RATIO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceParams {
    pub slice_size: u64,
    pub fragment_limit: u64,
}

impl Default for SliceParams {
    fn default() -> Self {
        SliceParams {
            slice_size: 65536,
            fragment_limit: 16384,
        }
    }
}

impl SliceParams {
    pub fn from_env() -> SliceParams {
        let slice_size = env_u64("MC_SLICE_SIZE", 65536, 1, u32::MAX as u64);
        // Upstream: a ratio that does not parse to > 0 means "/4".
        let fragment_limit = match env_str("MC_FRAGMENT_RATIO") {
            None => 16384,
            Some(r) => match r.trim().parse::<u64>() {
                Ok(r) if r > 0 => slice_size / r,
                _ => slice_size / 4,
            },
        };
        SliceParams {
            slice_size,
            fragment_limit,
        }
    }
}

/// One slice: `offset` into the request, `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u64,
}

/// Why a request cannot be cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutError {
    /// The local address at this request offset is in no registered region.
    LocalNotRegistered(u64),
    /// The remote address at this request offset is in none of the peer's buffers.
    RemoteOutOfRange(u64),
}

/// Cut `[0, length)` of a request reading/writing `source..` locally and
/// `target..` remotely. `local_end(addr)` / `remote_end(addr)` give the end
/// of the region holding `addr`, or `None` if no region does. The pieces
/// are appended to `out` (one buffer for a whole submit call); on an
/// error, `out` may hold some of this request's pieces.
pub fn cut(
    params: SliceParams,
    source: u64,
    target: u64,
    length: u64,
    local_end: impl Fn(u64) -> Option<u64>,
    remote_end: impl Fn(u64) -> Option<u64>,
    out: &mut Vec<Piece>,
) -> Result<(), CutError> {
    let block = params.slice_size.max(1);
    let mut offset = 0u64;
    while offset < length {
        let remaining = length - offset;
        let mut len = if remaining <= block.saturating_add(params.fragment_limit) {
            remaining
        } else {
            block
        };
        let src = source
            .checked_add(offset)
            .ok_or(CutError::LocalNotRegistered(offset))?;
        let dst = target
            .checked_add(offset)
            .ok_or(CutError::RemoteOutOfRange(offset))?;
        let lend = local_end(src)
            .filter(|e| *e > src)
            .ok_or(CutError::LocalNotRegistered(offset))?;
        let rend = remote_end(dst)
            .filter(|e| *e > dst)
            .ok_or(CutError::RemoteOutOfRange(offset))?;
        len = len.min(lend - src).min(rend - dst);
        out.push(Piece { offset, len });
        offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: SliceParams = SliceParams {
        slice_size: 65536,
        fragment_limit: 16384,
    };

    /// The pieces `cut` produced, or its error.
    fn pieces(
        f: impl FnOnce(&mut Vec<Piece>) -> Result<(), CutError>,
    ) -> Result<Vec<Piece>, CutError> {
        let mut out = Vec::new();
        f(&mut out).map(|()| out)
    }

    fn any(_: u64) -> Option<u64> {
        Some(u64::MAX)
    }

    #[test]
    fn zero_length_gives_no_slices() {
        assert_eq!(pieces(|o| cut(P, 0, 0, 0, any, any, o)).unwrap(), vec![]);
    }

    #[test]
    fn tail_up_to_one_fragment_is_merged() {
        let v = pieces(|o| cut(P, 0x1000, 0x2000, 65536 + 16384, any, any, o)).unwrap();
        assert_eq!(
            v,
            vec![Piece {
                offset: 0,
                len: 81920
            }]
        );
        let v = pieces(|o| cut(P, 0x1000, 0x2000, 65536 + 16385, any, any, o)).unwrap();
        assert_eq!(
            v,
            vec![
                Piece {
                    offset: 0,
                    len: 65536
                },
                Piece {
                    offset: 65536,
                    len: 16385
                }
            ]
        );
        let v = pieces(|o| cut(P, 0, 0, 3 * 65536 + 100, any, any, o)).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].len, 65636);
        assert_eq!(v.iter().map(|p| p.len).sum::<u64>(), 3 * 65536 + 100);
    }

    #[test]
    fn cuts_at_local_and_remote_region_ends() {
        // Local regions [0x10000, 0x18000) and [0x18000, 0x100000); remote one
        // region ending at target + 0x9000.
        let local = |a: u64| {
            if (0x10000..0x18000).contains(&a) {
                Some(0x18000)
            } else if (0x18000..0x100000).contains(&a) {
                Some(0x100000)
            } else {
                None
            }
        };
        let remote = |a: u64| {
            if (0x500000..0x509000).contains(&a) {
                Some(0x509000)
            } else if (0x509000..0x600000).contains(&a) {
                Some(0x600000)
            } else {
                None
            }
        };
        let v = pieces(|o| cut(P, 0x10000, 0x500000, 0x20000, local, remote, o)).unwrap();
        assert_eq!(
            v,
            vec![
                Piece {
                    offset: 0,
                    len: 0x8000
                },
                Piece {
                    offset: 0x8000,
                    len: 0x1000
                },
                Piece {
                    offset: 0x9000,
                    len: 0x10000
                },
                Piece {
                    offset: 0x19000,
                    len: 0x7000
                },
            ]
        );
    }

    #[test]
    fn unregistered_or_out_of_range_is_an_error() {
        let local = |a: u64| (a < 0x2000).then_some(0x2000);
        assert_eq!(
            pieces(|o| cut(P, 0x1000, 0, 0x2000, local, any, o)),
            Err(CutError::LocalNotRegistered(0x1000))
        );
        let remote = |a: u64| (a < 0x100).then_some(0x100);
        assert_eq!(
            pieces(|o| cut(P, 0, 0, 0x200, any, remote, o)),
            Err(CutError::RemoteOutOfRange(0x100))
        );
        assert_eq!(
            pieces(|o| cut(P, 0, u64::MAX, 2, any, any, o)),
            Err(CutError::RemoteOutOfRange(0))
        );
    }

    #[test]
    fn fragment_ratio_from_env() {
        std::env::set_var("MC_FRAGMENT_RATIO", "8");
        let p = SliceParams::from_env();
        std::env::remove_var("MC_FRAGMENT_RATIO");
        assert_eq!(p.fragment_limit, p.slice_size / 8);
    }
}
