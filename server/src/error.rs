//! The domain error: what went wrong, in terms a caller can act on.
//!
//! Tonic-free on purpose; `api::status` maps each variant to a gRPC code in
//! one exhaustive `match`.

use std::fmt;

/// One invalid request field and what is allowed instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name in the request message, e.g. `custom_filename`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// The violations found in a request's fields, gathered so that every bad
/// field is reported at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// The value of a checked field, or `None` with its violation kept.
    pub fn check<T>(&mut self, checked: Result<T, FieldViolation>) -> Option<T> {
        checked.map_err(|v| self.0.push(v)).ok()
    }

    pub fn push(&mut self, violation: FieldViolation) {
        self.0.push(violation);
    }

    /// INVALID_ARGUMENT naming every violation, if there is any.
    pub fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

impl From<FieldViolation> for Error {
    fn from(violation: FieldViolation) -> Self {
        Self::InvalidArgument(vec![violation])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller stopped waiting (a deadline, a dropped connection) and the
    /// work was called off.
    #[error("{0}")]
    Cancelled(String),
    /// A backup's bytes are not what was written: its size, digest or
    /// integrity check says so. It is never restored nor served as whole.
    #[error("{0}")]
    DataLoss(String),
    /// A dependency (the state store) is briefly unavailable; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A database stayed locked by another connection past its busy
    /// timeout, as its driver's error code says; retrying may help.
    #[error("{what} is busy: {detail}")]
    Busy {
        /// What is busy, as the caller may be told.
        what: &'static str,
        /// The driver's message, for the log.
        detail: String,
    },
    #[error("state store error: {0}")]
    Store(sea_orm::DbErr),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("SQLite error: {0}")]
    Sqlite(rusqlite::Error),
    /// A bug or an impossible state; details go to the log, not the caller.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLite's primary result codes for "another connection holds the lock":
/// SQLITE_BUSY and SQLITE_LOCKED (extended codes keep them in the low byte).
const SQLITE_BUSY_CODES: [i32; 2] = [5, 6];

/// PostgreSQL's SQLSTATEs for a transaction that lost to another or waited
/// too long for a lock (serialization_failure, deadlock_detected,
/// lock_not_available): retrying may succeed.
const POSTGRES_BUSY_CODES: [&str; 3] = ["40001", "40P01", "55P03"];

/// PostgreSQL's SQLSTATEs for a server going away or not taking
/// connections yet: class 08 (connection exceptions) and admin_shutdown,
/// crash_shutdown, cannot_connect_now.
fn postgres_gone(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// What a state-store error means for the caller, judged by the driver's
/// error code (never its text).
enum StoreFailure {
    /// Another connection or transaction is in the way: retry.
    Busy,
    /// The store cannot be reached: retry later.
    Unreachable,
    /// Anything else.
    Other,
}

fn store_failure(error: &sea_orm::sqlx::Error) -> StoreFailure {
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::sqlx::postgres::PgDatabaseError;
    use sea_orm::sqlx::sqlite::SqliteError;
    match error {
        Sqlx::Database(db) => {
            if db.try_downcast_ref::<SqliteError>().is_some() {
                let code = db.code().and_then(|c| c.parse::<i32>().ok());
                if code.is_some_and(|c| SQLITE_BUSY_CODES.contains(&(c & 0xff))) {
                    return StoreFailure::Busy;
                }
            } else if let Some(postgres) = db.try_downcast_ref::<PgDatabaseError>() {
                let code = postgres.code();
                if POSTGRES_BUSY_CODES.contains(&code) {
                    return StoreFailure::Busy;
                }
                if postgres_gone(code) {
                    return StoreFailure::Unreachable;
                }
            }
            StoreFailure::Other
        }
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => {
            StoreFailure::Unreachable
        }
        _ => StoreFailure::Other,
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(error: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, RuntimeErr};
        let failure = match &error {
            DbErr::Conn(RuntimeErr::SqlxError(e))
            | DbErr::Exec(RuntimeErr::SqlxError(e))
            | DbErr::Query(RuntimeErr::SqlxError(e)) => store_failure(e),
            DbErr::ConnectionAcquire(_) => StoreFailure::Unreachable,
            _ => StoreFailure::Other,
        };
        match failure {
            StoreFailure::Busy => Self::Busy {
                what: "the state store",
                detail: error.to_string(),
            },
            StoreFailure::Unreachable => {
                tracing::warn!(%error, "the state store cannot be reached");
                Self::Unavailable("the state store cannot be reached; retry shortly".into())
            }
            StoreFailure::Other => Self::Store(error),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Self::Busy {
                    what: "the database",
                    detail: error.to_string(),
                }
            }
            _ => Self::Sqlite(error),
        }
    }
}

/// The most characters of a client-sent value an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// A value the client sent, quoted for an error message: `"abc"` as
/// `{:?}` writes it, or, when longer than [`QUOTE_CHARS`] characters, its
/// first 64 and the cut marked, `"abcd…" (10240 bytes)`. Every message that
/// repeats request input goes through here, so no status outgrows a
/// client's metadata limit (grpcio's is 8 KiB).
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => {
            let head = format!("{:?}", &value[..cut]);
            let open = head.strip_suffix('"').unwrap_or(&head);
            format!("{open}…\" ({} bytes)", value.len())
        }
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The same error with `note` added to what the caller is told (for
    /// errors whose message the caller sees).
    pub fn with_note(self, note: &str) -> Self {
        let noted = |message: String| format!("{message}; {note}");
        match self {
            Self::NotFound(m) => Self::NotFound(noted(m)),
            Self::FailedPrecondition(m) => Self::FailedPrecondition(noted(m)),
            Self::ResourceExhausted(m) => Self::ResourceExhausted(noted(m)),
            Self::Cancelled(m) => Self::Cancelled(noted(m)),
            Self::DataLoss(m) => Self::DataLoss(noted(m)),
            Self::Unavailable(m) => Self::Unavailable(noted(m)),
            other => other,
        }
    }

    /// The message a caller may see: internal details (paths, SQL) stay in
    /// the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Busy { what, .. } => format!("{what} is busy; retry shortly"),
            Self::Store(_) | Self::Io(_) | Self::Sqlite(_) | Self::Internal(_) => {
                if self.is_storage_full() {
                    "not enough disk space for the backup".into()
                } else {
                    "internal error; see the server log".into()
                }
            }
            other => other.to_string(),
        }
    }

    /// Whether the error means the disk (or database) is full.
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            Self::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            Self::ResourceExhausted(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real lock, held by another connection, reaches both drivers as
    /// SQLITE_BUSY: it must become `Busy` from the code, whatever the text.
    #[tokio::test]
    async fn a_locked_database_is_busy_by_its_error_code() {
        use sea_orm::{ConnectOptions, ConnectionTrait, Database};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.db");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder.execute_batch("CREATE TABLE t (x);").unwrap();
        let mut options = ConnectOptions::new(format!("sqlite://{}", path.display()));
        options
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| o.busy_timeout(std::time::Duration::ZERO));
        let db = Database::connect(options).await.unwrap();
        holder
            .execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();

        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        let error = Error::from(other.execute("INSERT INTO t VALUES (2)", []).unwrap_err());
        assert!(
            matches!(
                error,
                Error::Busy {
                    what: "the database",
                    ..
                }
            ),
            "{error:?}"
        );

        let error = Error::from(
            db.execute_unprepared("INSERT INTO t VALUES (3)")
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(
                error,
                Error::Busy {
                    what: "the state store",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.public_message(),
            "the state store is busy; retry shortly"
        );

        // Other store errors stay what they are.
        let error = Error::from(
            db.execute_unprepared("SELECT * FROM nowhere")
                .await
                .unwrap_err(),
        );
        assert!(matches!(error, Error::Store(_)), "{error:?}");
    }

    /// PostgreSQL's errors are judged by their SQLSTATE: each raised for
    /// real by the test command's cluster, and a real lock waited out.
    #[tokio::test]
    async fn postgres_errors_are_busy_or_unavailable_by_their_sqlstate() {
        use crate::store::tests::{Backend, fresh_store};
        use sea_orm::ConnectionTrait;
        let db = fresh_store(Backend::Postgres).await;
        let raised = |code: &str| {
            format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$")
        };
        for (code, expected) in [
            ("40001", "busy"),
            ("40P01", "busy"),
            ("55P03", "busy"),
            ("08006", "unavailable"),
            ("57P01", "unavailable"),
            ("22012", "store"),
            ("23505", "store"),
        ] {
            let error = Error::from(
                db.reads()
                    .execute_unprepared(&raised(code))
                    .await
                    .unwrap_err(),
            );
            let judged = match error {
                Error::Busy { .. } => "busy",
                Error::Unavailable(_) => "unavailable",
                Error::Store(_) => "store",
                _ => "other",
            };
            assert_eq!(judged, expected, "SQLSTATE {code}: {error:?}");
        }

        db.reads()
            .execute_unprepared("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let holder = db.begin_write().await.unwrap();
        holder
            .execute_unprepared("UPDATE t SET x = 2")
            .await
            .unwrap();
        let waiter = db.begin_write().await.unwrap();
        waiter
            .execute_unprepared("SET LOCAL lock_timeout = '50ms'")
            .await
            .unwrap();
        let error = Error::from(
            waiter
                .execute_unprepared("UPDATE t SET x = 3")
                .await
                .unwrap_err(),
        );
        assert!(matches!(error, Error::Busy { .. }), "{error:?}");
        drop(waiter);
        holder.commit().await.unwrap();

        // Nothing listening: unreachable, not an internal error.
        let mut options = sea_orm::ConnectOptions::new("postgres://postgres@127.0.0.1:1/none");
        options
            .sqlx_logging(false)
            .connect_timeout(std::time::Duration::from_secs(2));
        let error = Error::from(sea_orm::Database::connect(options).await.unwrap_err());
        assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    }

    #[test]
    fn quotes_short_values_whole_and_cuts_long_ones_at_a_char_boundary() {
        assert_eq!(quote("Europe/London"), "\"Europe/London\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        let exactly = "x".repeat(QUOTE_CHARS);
        assert_eq!(quote(&exactly), format!("{exactly:?}"));
        let long = "y".repeat(10_240);
        assert_eq!(
            quote(&long),
            format!("\"{}…\" (10240 bytes)", "y".repeat(QUOTE_CHARS))
        );
        // Multi-byte characters are never split: 64 of them, whole.
        let wide = "é".repeat(100);
        assert_eq!(
            quote(&wide),
            format!("\"{}…\" (200 bytes)", "é".repeat(QUOTE_CHARS))
        );
    }
}
