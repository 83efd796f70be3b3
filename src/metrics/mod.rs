//! The optional `metrics:` endpoint: Prometheus `/metrics` and a `/healthz` that gives the same
//! verdict as the systemd watchdog, served over HTTP/1.1 on a configured (normally loopback) address.

mod collect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use collect::Sources;

/// `metrics:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `ADDR:PORT` for `/metrics` and `/healthz`; loopback unless a scraper elsewhere needs it (the
    /// endpoint has no authentication).
    pub bind: String,
}

impl MetricsSettings {
    pub fn addr(&self) -> Result<SocketAddr, String> {
        self.bind.parse().map_err(|_| format!("`{}` is not ADDR:PORT, e.g. `127.0.0.1:9464`", self.bind))
    }
}

/// The health verdict, as the watchdog gets it: `Err` says why not healthy.
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Scrapers and probes are few; more connections at once than this are refused by closing them, so a
/// client that opens sockets in a loop costs the gateway a bounded amount.
const MAX_CONNECTIONS: usize = 16;

/// A scrape is one short request; a connection that takes longer (a stalled or hostile client) is
/// closed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `cancel`.
pub async fn serve(listener: TcpListener, sources: Sources, health: HealthCheck, cancel: CancellationToken) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(sources));
    let registry = Arc::new(registry);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    // Out of descriptors: wait instead of spinning on the same error.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (registry, health) = (registry.clone(), health.clone());
        let service = hyper::service::service_fn(move |req| respond(req, registry.clone(), health.clone()));
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            }
            drop(slot);
        });
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    registry: Arc<prometheus_client::registry::Registry>,
    health: HealthCheck,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics or /healthz\n".into()));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        "/healthz" => match health().await {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("unhealthy: {why}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "GET /metrics or /healthz\n".into()),
    })
}
