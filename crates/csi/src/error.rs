use s3vol_store::{ErrorKind, StoreError};
use tonic::{Code, Status};

/// Every failure the driver reports, each with exactly one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A request field or parameter is missing or wrong; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or what it points at) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume with this name exists with other parameters.
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on the same volume is in flight.
    #[error("{0}")]
    Aborted(String),
    /// The store refused our credentials; the message carries the store's code.
    #[error("{0}")]
    PermissionDenied(String),
    /// The store cannot be reached or is throttling; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The request is valid but the world is not in the state it needs.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The capacity asked for cannot be given.
    #[error("{0}")]
    OutOfRange(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    /// Shorthand for a bad request field.
    pub fn invalid(msg: impl Into<String>) -> Self {
        CsiError::InvalidArgument(msg.into())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::PermissionDenied(_) => Code::PermissionDenied,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<StoreError> for CsiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e.kind {
            ErrorKind::NotFound => CsiError::NotFound(msg),
            ErrorKind::NoSuchBucket => CsiError::FailedPrecondition(msg),
            ErrorKind::AccessDenied => CsiError::PermissionDenied(msg),
            ErrorKind::Throttled | ErrorKind::Unavailable => CsiError::Unavailable(msg),
            ErrorKind::InvalidArgument => CsiError::InvalidArgument(msg),
            ErrorKind::Conflict => CsiError::AlreadyExists(msg),
            ErrorKind::NotImplemented | ErrorKind::Other => CsiError::Internal(msg),
        }
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// Result alias for driver internals.
pub type CsiResult<T> = Result<T, CsiError>;
