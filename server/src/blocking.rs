//! Running blocking file or SQLite work off the async threads.

use crate::error::{Error, Result};

/// Runs `work` on tokio's blocking pool and returns its result; a panic in
/// it is INTERNAL.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
