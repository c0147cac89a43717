//! Return families (spec §1.3): each C function belongs to one, and the
//! family alone decides what a refused argument, an engine error or a
//! caught panic returns. Bodies say *why* they refuse, never *what* to
//! return for it.

use std::collections::HashMap;
use std::ffi::c_int;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;

use super::INVALID_BATCH;
use crate::error::{err, status, Error};
use crate::serving::ratelog::RateLimited;

/// Why a C call did not do its work.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A bad argument (NULL, stale handle, bad string); already logged.
    Argument,
    /// The engine failed; logged by the boundary, with what it was about.
    Engine { err: Error, about: Option<String> },
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        Refusal::Engine { err, about: None }
    }
}

/// Name what an engine error was about in its log line (`'segment': ...`).
pub(crate) trait About<T> {
    fn about(self, what: &str) -> Result<T, Refusal>;
}

impl<T> About<T> for Result<T, Error> {
    fn about(self, what: &str) -> Result<T, Refusal> {
        self.map_err(|err| Refusal::Engine {
            err,
            about: Some(what.to_owned()),
        })
    }
}

/// What an `ffi_fn!` body returns: the value for C, or why it has none.
pub(crate) type Outcome<F> = Result<<F as ReturnFamily>::Ret, Refusal>;

/// Log why an argument is refused and return the refusal. At most one line
/// a second per C function, the next one saying how many were held back: a
/// thread polling a destroyed handle must not fill the disk.
pub(crate) fn refuse(func: &str, why: fmt::Arguments<'_>) -> Refusal {
    static LIMITS: LazyLock<Mutex<HashMap<String, Arc<RateLimited>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let limit = {
        let mut limits = LIMITS.lock();
        match limits.get(func) {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(RateLimited::new(module_path!(), Duration::from_secs(1)));
                limits.insert(func.to_owned(), l.clone());
                l
            }
        }
    };
    limit.error(format_args!("{func}: {why}"));
    Refusal::Argument
}

/// The value C sees for `refusal`, logging an engine error.
pub(crate) fn refused<F: ReturnFamily>(func: &str, refusal: Refusal) -> F::Ret {
    match refusal {
        Refusal::Argument => F::invalid(),
        Refusal::Engine { err, about } => {
            match about {
                Some(what) => log::error!("{func}: '{what}': {err}"),
                None => log::error!("{func}: {err}"),
            }
            F::engine_error(&err)
        }
    }
}

/// What a family returns when the call cannot do its work.
pub(crate) trait ReturnFamily {
    type Ret;
    /// A refused argument, or a panic caught at the boundary.
    fn invalid() -> Self::Ret;
    /// An engine error; by default the same as `invalid`.
    fn engine_error(_e: &Error) -> Self::Ret {
        Self::invalid()
    }
}

/// `int`: 0 or a negative `ERR_*` (`ERR_INVALID_ARGUMENT` is -1).
pub(crate) struct ErrCode;
impl ReturnFamily for ErrCode {
    type Ret = c_int;
    fn invalid() -> c_int {
        err::INVALID_ARGUMENT
    }
    fn engine_error(e: &Error) -> c_int {
        e.err_code()
    }
}

/// `segment_id_t`: an id, or -1 for any failure (`openSegment`).
pub(crate) struct SegmentHandle;
impl ReturnFamily for SegmentHandle {
    type Ret = i32;
    fn invalid() -> i32 {
        -1
    }
}

/// The batch functions' positive `Status::Code`.
pub(crate) struct StatusCode;
impl ReturnFamily for StatusCode {
    type Ret = c_int;
    fn invalid() -> c_int {
        status::INVALID_ARGUMENT
    }
    fn engine_error(e: &Error) -> c_int {
        e.status_code()
    }
}

/// `batch_id_t`: an id, or `INVALID_BATCH`.
pub(crate) struct BatchHandle;
impl ReturnFamily for BatchHandle {
    type Ret = u64;
    fn invalid() -> u64 {
        INVALID_BATCH
    }
}

/// A pointer (engine, transport, notification array), or NULL.
pub(crate) struct Handle<T>(PhantomData<T>);
impl<T> ReturnFamily for Handle<T> {
    type Ret = *mut T;
    fn invalid() -> *mut T {
        std::ptr::null_mut()
    }
}

/// `void`: failures are only logged.
pub(crate) struct NoValue;
impl ReturnFamily for NoValue {
    type Ret = ();
    fn invalid() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ffi_fn;

    fn panics<F: ReturnFamily>() -> F::Ret {
        ffi_fn!(f = "panics", F, {
            let _ = f;
            panic!("boom")
        })
    }

    fn fails<F: ReturnFamily>(e: Error) -> F::Ret {
        ffi_fn!(f = "fails", F, {
            let _ = f;
            Err(e.into())
        })
    }

    #[test]
    fn a_panic_returns_the_familys_invalid_value() {
        assert_eq!(panics::<ErrCode>(), -1);
        assert_eq!(panics::<SegmentHandle>(), -1);
        assert_eq!(panics::<StatusCode>(), status::INVALID_ARGUMENT);
        assert_eq!(panics::<BatchHandle>(), INVALID_BATCH);
        assert!(panics::<Handle<u8>>().is_null());
        panics::<NoValue>();
    }

    #[test]
    fn engine_errors_map_by_family() {
        let busy = || Error::BatchBusy("b".into());
        assert_eq!(fails::<ErrCode>(busy()), err::BATCH_BUSY);
        assert_eq!(fails::<StatusCode>(busy()), status::BATCH_BUSY);
        assert_eq!(fails::<SegmentHandle>(busy()), -1);
        assert_eq!(fails::<BatchHandle>(busy()), INVALID_BATCH);
        assert!(fails::<Handle<u8>>(busy()).is_null());
    }

    #[test]
    fn ensure_refuses_with_the_invalid_value() {
        fn check(ok: bool) -> c_int {
            ffi_fn!(f = "check", ErrCode, {
                crate::ffi::ensure!(f, ok, "not ok");
                Ok(0)
            })
        }
        assert_eq!(check(true), 0);
        assert_eq!(check(false), err::INVALID_ARGUMENT);
    }
}
