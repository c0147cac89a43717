//! Errors and Mooncake's two return-code families.
//!
//! Mooncake's C API returns negative `ERR_*` values from most functions
//! (`include/error.h`) and positive `Status::Code` values from the batch
//! functions (`submitTransfer`, `getTransferStatus`, `freeBatchID`). One
//! `Error` maps onto both, so the FFI layer only picks the family.

/// Negative codes of Mooncake's `include/error.h`.
pub mod err {
    pub const INVALID_ARGUMENT: i32 = -1;
    pub const TOO_MANY_REQUESTS: i32 = -2;
    pub const ADDRESS_NOT_REGISTERED: i32 = -3;
    pub const BATCH_BUSY: i32 = -4;
    pub const DEVICE_NOT_FOUND: i32 = -6;
    pub const ADDRESS_OVERLAPPED: i32 = -7;
    pub const DNS: i32 = -101;
    pub const SOCKET: i32 = -102;
    pub const MALFORMED_JSON: i32 = -103;
    pub const REJECT_HANDSHAKE: i32 = -104;
    pub const METADATA: i32 = -200;
    pub const ENDPOINT: i32 = -201;
    pub const CONTEXT: i32 = -202;
    pub const NUMA: i32 = -300;
    pub const CLOCK: i32 = -301;
    pub const MEMORY: i32 = -302;
    pub const NOT_IMPLEMENTED: i32 = -303;
}

/// Positive `mooncake::Status::Code` values (`status.h`).
pub mod status {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 1;
    pub const TOO_MANY_REQUESTS: i32 = 2;
    pub const ADDRESS_NOT_REGISTERED: i32 = 3;
    pub const BATCH_BUSY: i32 = 4;
    pub const DEVICE_NOT_FOUND: i32 = 6;
    pub const ADDRESS_OVERLAPPED: i32 = 7;
    pub const NOT_SUPPORTED_TRANSPORT: i32 = 8;
    pub const DNS: i32 = 101;
    pub const SOCKET: i32 = 102;
    pub const MALFORMED_JSON: i32 = 103;
    pub const REJECT_HANDSHAKE: i32 = 104;
    pub const METADATA: i32 = 200;
    pub const ENDPOINT: i32 = 201;
    pub const CONTEXT: i32 = 202;
    pub const NUMA: i32 = 300;
    pub const CLOCK: i32 = 301;
    pub const MEMORY: i32 = 302;
    pub const NOT_IMPLEMENTED: i32 = 999;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("address not registered: {0}")]
    AddressNotRegistered(String),
    #[error("batch busy: {0}")]
    BatchBusy(String),
    #[error("device not found: {0}")]
    DeviceNotFound(String),
    #[error("address overlapped: {0}")]
    AddressOverlapped(String),
    #[error("transport not supported: {0}")]
    NotSupportedTransport(String),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("socket: {0}")]
    Socket(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("handshake rejected: {0}")]
    RejectHandshake(String),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("RDMA context: {0}")]
    Context(String),
    #[error("NUMA: {0}")]
    Numa(String),
    #[error("memory: {0}")]
    Memory(String),
    #[error("not supported: {0}")]
    NotImplemented(String),
}

impl Error {
    /// Negative `ERR_*` code, for the "int" functions.
    pub fn err_code(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => err::INVALID_ARGUMENT,
            Error::TooManyRequests(_) => err::TOO_MANY_REQUESTS,
            Error::AddressNotRegistered(_) => err::ADDRESS_NOT_REGISTERED,
            Error::BatchBusy(_) => err::BATCH_BUSY,
            Error::DeviceNotFound(_) => err::DEVICE_NOT_FOUND,
            Error::AddressOverlapped(_) => err::ADDRESS_OVERLAPPED,
            // error.h has no "not supported transport"; Mooncake's int APIs
            // never produce it, invalid argument is the nearest.
            Error::NotSupportedTransport(_) => err::INVALID_ARGUMENT,
            Error::Dns(_) => err::DNS,
            Error::Socket(_) => err::SOCKET,
            Error::MalformedJson(_) => err::MALFORMED_JSON,
            Error::RejectHandshake(_) => err::REJECT_HANDSHAKE,
            Error::Metadata(_) => err::METADATA,
            Error::Endpoint(_) => err::ENDPOINT,
            Error::Context(_) => err::CONTEXT,
            Error::Numa(_) => err::NUMA,
            Error::Memory(_) => err::MEMORY,
            Error::NotImplemented(_) => err::NOT_IMPLEMENTED,
        }
    }

    /// Positive `Status::Code`, for the batch functions.
    pub fn status_code(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => status::INVALID_ARGUMENT,
            Error::TooManyRequests(_) => status::TOO_MANY_REQUESTS,
            Error::AddressNotRegistered(_) => status::ADDRESS_NOT_REGISTERED,
            Error::BatchBusy(_) => status::BATCH_BUSY,
            Error::DeviceNotFound(_) => status::DEVICE_NOT_FOUND,
            Error::AddressOverlapped(_) => status::ADDRESS_OVERLAPPED,
            Error::NotSupportedTransport(_) => status::NOT_SUPPORTED_TRANSPORT,
            Error::Dns(_) => status::DNS,
            Error::Socket(_) => status::SOCKET,
            Error::MalformedJson(_) => status::MALFORMED_JSON,
            Error::RejectHandshake(_) => status::REJECT_HANDSHAKE,
            Error::Metadata(_) => status::METADATA,
            Error::Endpoint(_) => status::ENDPOINT,
            Error::Context(_) => status::CONTEXT,
            Error::Numa(_) => status::NUMA,
            Error::Memory(_) => status::MEMORY,
            Error::NotImplemented(_) => status::NOT_IMPLEMENTED,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Socket(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::MalformedJson(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_differ_where_mooncake_differs() {
        let e = Error::BatchBusy("x".into());
        assert_eq!(e.err_code(), -4);
        assert_eq!(e.status_code(), 4);
        assert_eq!(Error::NotImplemented(String::new()).err_code(), -303);
        assert_eq!(Error::NotImplemented(String::new()).status_code(), 999);
        assert_eq!(Error::NotSupportedTransport(String::new()).status_code(), 8);
    }
}
