//! Error text that names the verb, the step and errno.

use crate::error::Error;

/// Symbolic name of an errno value (`ETIMEDOUT`), or `errno N`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// "`verb`: `step`: `ERRNO` (`detail`)" as an [`Error::Context`] (device,
/// port, PD, MR, CQ failures).
pub fn verb_error(verb: &str, step: &str, errno: i32, detail: &str) -> Error {
    Error::Context(verb_message(verb, step, errno, detail))
}

/// The same text as an [`Error::Endpoint`] (QP transitions and posting).
pub fn qp_error(verb: &str, step: &str, errno: i32, detail: &str) -> Error {
    Error::Endpoint(verb_message(verb, step, errno, detail))
}

fn verb_message(verb: &str, step: &str, errno: i32, detail: &str) -> String {
    let mut s = format!("{verb}: {step}: {}", errno_name(errno));
    if !detail.is_empty() {
        s.push_str(" (");
        s.push_str(detail);
        s.push(')');
    }
    s
}

/// The calling thread's errno after a failed libc/libibverbs call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_verb_step_and_errno() {
        let e = qp_error(
            "ibv_modify_qp",
            "init→rtr",
            libc::ETIMEDOUT,
            "local GID a, peer GID b, MTU 4096",
        );
        assert_eq!(
            e,
            Error::Endpoint(
                "ibv_modify_qp: init→rtr: ETIMEDOUT (local GID a, peer GID b, MTU 4096)".into()
            )
        );
        assert_eq!(errno_name(4242), "errno 4242");
        assert_eq!(
            verb_error("ibv_alloc_pd", "open", libc::ENOMEM, ""),
            Error::Context("ibv_alloc_pd: open: ENOMEM".into())
        );
    }
}
