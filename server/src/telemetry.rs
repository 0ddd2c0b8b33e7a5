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

/// Serves Prometheus metrics over HTTP on `addr` (any path).
pub fn serve_metrics(addr: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| Error::FailedPrecondition(format!("--metrics-listen {addr}: {e}")))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
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
                metrics::counter!("grpc_server_handled_total", "method" => method.clone(), "code" => format!("{code:?}"))
                    .increment(1);
                metrics::histogram!("grpc_server_handling_seconds", "method" => method)
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
