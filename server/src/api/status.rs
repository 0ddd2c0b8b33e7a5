//! The one mapping from domain errors to gRPC status codes. Exhaustive on
//! purpose: a new error variant cannot silently become INTERNAL.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.public_message();
        let code = match &error {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(&v.field, &v.description);
                }
                return Status::with_error_details(Code::InvalidArgument, message, details);
            }
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Cancelled(_) => Code::Cancelled,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Busy { .. } => {
                tracing::warn!(error = %error, "request failed");
                Code::Unavailable
            }
            Error::Store(_) | Error::Io(_) | Error::Sqlite(_) | Error::Internal(_) => {
                tracing::error!(error = %error, "request failed");
                if error.is_storage_full() {
                    Code::ResourceExhausted
                } else {
                    Code::Internal
                }
            }
        };
        Status::new(code, message)
    }
}
