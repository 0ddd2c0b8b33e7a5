//! Logs, metrics and request ids.
//!
//! Every RPC runs in a tracing span carrying its method and a request id
//! (the caller's `x-request-id`, or a new one, echoed in the response), and
//! is counted by method and status code. Domain modules record their own
//! figures through the `metrics` facade; the Prometheus exporter serves
//! them on `--metrics-listen` when given.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::model::backup::BackupKind;

// Every series the service defines, in one place; each carries the
// `backup_` prefix (Prometheus naming: one namespace per exporter).

/// Counter: RPCs answered, by `method` (the HTTP/2 path) and `code`.
pub const GRPC_HANDLED_TOTAL: &str = "backup_grpc_server_handled_total";
/// Histogram: seconds per RPC, by `method`.
pub const GRPC_HANDLING_SECONDS: &str = "backup_grpc_server_handling_seconds";
/// Counter: backups taken, by `kind` and `outcome` (`completed`, `failed`).
pub const BACKUPS_TOTAL: &str = "backup_backups_total";
/// Histogram: seconds per completed backup, by `kind`.
pub const BACKUP_DURATION_SECONDS: &str = "backup_duration_seconds";
/// Histogram: bytes per completed backup, by `kind`.
pub const BACKUP_SIZE_BYTES: &str = "backup_size_bytes";
/// Counter: backups deleted by retention and maintenance.
pub const RETENTION_DELETED_TOTAL: &str = "backup_retention_deleted_total";
/// Gauge: live SubscribeAuditEvents streams.
pub const AUDIT_SUBSCRIBERS: &str = "backup_audit_subscribers";
/// Gauge: 1 while this process holds the scheduler lease.
pub const SCHEDULER_LEASE_HELD: &str = "backup_scheduler_lease_held";
/// Gauge: the earliest next run, Unix seconds; 0 until the loop knows one.
pub const SCHEDULER_NEXT_DUE: &str = "backup_scheduler_next_due_timestamp_seconds";
/// Counter: times the scheduler loop panicked and was started again.
pub const SCHEDULER_RESTARTS_TOTAL: &str = "backup_scheduler_restarts_total";
/// Gauge: backups currently marked damaged.
pub const DAMAGED: &str = "backup_damaged";
/// Counter: backup verifications, by `outcome` (`intact`, `damaged`).
pub const VERIFICATIONS_TOTAL: &str = "backup_verifications_total";
/// Stored bytes new backups added (after deduplication and compression).
pub const STORED_BYTES_ADDED_TOTAL: &str = "backup_stored_bytes_added_total";
/// Stored bytes prunes removed.
pub const PRUNED_BYTES_TOTAL: &str = "backup_pruned_bytes_total";
/// What the backup storage holds, and what full copies would take, as of
/// the last prune or GetRepositoryStats.
pub const STORAGE_STORED_BYTES: &str = "backup_storage_stored_bytes";
pub const STORAGE_LOGICAL_BYTES: &str = "backup_storage_logical_bytes";

/// Serves Prometheus metrics over HTTP on `addr` (any path), with every
/// counter and gauge present from the start at 0, so `rate()` and alerts
/// work before the first event.
pub fn serve_metrics(addr: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| Error::FailedPrecondition(format!("--metrics-listen {addr}: {e}")))?;
    describe_at_zero();
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// Describes every series and registers the counters and gauges at 0
/// (histograms appear with their first sample).
fn describe_at_zero() {
    use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
    describe_counter!(
        GRPC_HANDLED_TOTAL,
        "RPCs answered, by method and status code"
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "Time per RPC, by method"
    );
    describe_counter!(BACKUPS_TOTAL, "Backups taken, by kind and outcome");
    describe_histogram!(
        BACKUP_DURATION_SECONDS,
        Unit::Seconds,
        "Time per completed backup"
    );
    describe_histogram!(
        BACKUP_SIZE_BYTES,
        Unit::Bytes,
        "Size of each completed backup"
    );
    describe_counter!(
        RETENTION_DELETED_TOTAL,
        "Backups deleted by retention and maintenance"
    );
    describe_gauge!(AUDIT_SUBSCRIBERS, "Live SubscribeAuditEvents streams");
    describe_gauge!(
        SCHEDULER_LEASE_HELD,
        "1 while this process holds the scheduler lease"
    );
    describe_gauge!(
        SCHEDULER_NEXT_DUE,
        "The earliest next scheduled run, Unix seconds; 0 until known"
    );
    describe_counter!(
        SCHEDULER_RESTARTS_TOTAL,
        "Times the scheduler loop panicked and was started again"
    );
    describe_gauge!(DAMAGED, "Backups currently marked damaged");
    describe_counter!(VERIFICATIONS_TOTAL, "Backup verifications, by outcome");
    describe_counter!(
        STORED_BYTES_ADDED_TOTAL,
        "Stored bytes new backups added, after deduplication and compression"
    );
    describe_counter!(PRUNED_BYTES_TOTAL, "Stored bytes prunes removed");
    describe_gauge!(
        STORAGE_STORED_BYTES,
        "Bytes the backup storage holds, as of the last prune or GetRepositoryStats"
    );
    describe_gauge!(
        STORAGE_LOGICAL_BYTES,
        "What full copies of every backup would take, as of the last GetRepositoryStats"
    );

    let ok = format!("{:?}", tonic::Code::Ok);
    for method in backup_proto::rpc_paths() {
        counter!(GRPC_HANDLED_TOTAL, "method" => method, "code" => ok.clone()).absolute(0);
    }
    // The kinds taken through `Backups`, which counts them (pre-migration
    // snapshots are taken by the store's migration step, uncounted).
    for kind in [BackupKind::Auto, BackupKind::Manual, BackupKind::PreRestore] {
        for outcome in ["completed", "failed"] {
            counter!(BACKUPS_TOTAL, "kind" => kind.as_str(), "outcome" => outcome).absolute(0);
        }
    }
    counter!(RETENTION_DELETED_TOTAL).absolute(0);
    counter!(STORED_BYTES_ADDED_TOTAL).absolute(0);
    counter!(PRUNED_BYTES_TOTAL).absolute(0);
    gauge!(STORAGE_STORED_BYTES).set(0.0);
    gauge!(STORAGE_LOGICAL_BYTES).set(0.0);
    counter!(SCHEDULER_RESTARTS_TOTAL).absolute(0);
    for outcome in ["intact", "damaged"] {
        counter!(VERIFICATIONS_TOTAL, "outcome" => outcome).absolute(0);
    }
    for name in [
        AUDIT_SUBSCRIBERS,
        SCHEDULER_LEASE_HELD,
        SCHEDULER_NEXT_DUE,
        DAMAGED,
    ] {
        gauge!(name).set(0.0);
    }
}

/// A tower layer giving each RPC a span, a request id and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcLayer;

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for RpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned);
        let span = tracing::info_span!("rpc", %method, %request_id);
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let started = Instant::now();
                let mut result = inner.call(request).await;
                // Errors are trailers-only responses: the status is a header.
                // A streaming success reports OK when its headers are sent.
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from),
                    Err(_) => tonic::Code::Unknown,
                };
                let elapsed = started.elapsed();
                tracing::debug!(code = ?code, elapsed_ms = elapsed.as_millis() as u64, "rpc done");
                metrics::counter!(GRPC_HANDLED_TOTAL, "method" => method.clone(), "code" => format!("{code:?}"))
                    .increment(1);
                metrics::histogram!(GRPC_HANDLING_SECONDS, "method" => method)
                    .record(elapsed.as_secs_f64());
                if let (Ok(response), Ok(id)) = (&mut result, HeaderValue::from_str(&request_id)) {
                    response.headers_mut().insert("x-request-id", id);
                }
                result
            }
            .instrument(span),
        )
    }
}
