//! The HTTP listener's defences: read timeouts (no slowloris) and a cap on requests in
//! flight (503 with Retry-After beyond it). It must not route or look at bodies.
//!
//! axum's own `serve` has no read timeouts, so connections are served here with hyper,
//! whose header-read timeout also closes idle keep-alive connections. With `server.tls`
//! each connection first completes a TLS handshake, within the same read timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info, warn};

use crate::config;
use crate::metrics::Metrics;

/// Seconds an overloaded kabar asks the client to wait.
const OVERLOADED_RETRY_AFTER: &str = "5";
/// How long to pause accepting after the OS refused a connection (e.g. out of file
/// descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bounds webhook requests in progress and gives their bodies a deadline.
#[derive(Clone)]
pub(crate) struct WebhookGuard {
    permits: Arc<Semaphore>,
    limit: usize,
    read_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl WebhookGuard {
    pub(crate) fn new(settings: &config::Server, metrics: Arc<Metrics>) -> WebhookGuard {
        WebhookGuard {
            permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            limit: settings.max_concurrent_requests,
            read_timeout: settings.read_timeout,
            metrics,
        }
    }
}

/// Middleware for the webhook routes: refuses at once when `max_concurrent_requests` are
/// already in progress, and cuts off a body that is not complete within `read_timeout`.
pub(crate) async fn guard_webhook(
    State(guard): State<WebhookGuard>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = Arc::clone(&guard.permits).try_acquire_owned() else {
        guard.metrics.overloaded(guard.limit);
        return overloaded(guard.limit);
    };
    let deadline = Instant::now() + guard.read_timeout;
    let timeout = guard.read_timeout;
    let request = request.map(|body| Body::new(DeadlineBody::new(body, deadline, timeout)));
    next.run(request).await
}

fn overloaded(limit: usize) -> Response {
    let body = axum::Json(json!({
        "error": format!("kabar is busy: {limit} webhook requests are in progress (server.max_concurrent_requests)"),
        "hint": "retry later (Alertmanager retries 5xx by itself); if this persists, raise server.max_concurrent_requests or look for a slow disk",
    }));
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(OVERLOADED_RETRY_AFTER),
    );
    response
}

/// The body did not arrive within `server.read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within server.read_timeout ({0})")]
pub(crate) struct BodyTimeout(String);

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant, timeout: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let timeout = config::format_duration(self.timeout);
                Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert_file {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("server.tls.key_file {path}: {message}")]
    Key { path: String, message: String },
    #[error("server.tls: the certificate and key do not make a TLS server: {0}")]
    Config(String),
}

/// Reads the PEM certificate chain and private key named by `server.tls`. They are read
/// once, at start-up; a renewed certificate takes effect at the next restart.
pub(crate) fn tls_acceptor(files: &config::TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_path = files.cert_file.display().to_string();
    let key_path = files.key_file.display().to_string();
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_path,
            message: "no PEM CERTIFICATE in the file".to_owned(),
        });
    }
    // The key's own parse errors never quote key material; they name the problem.
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| TlsError::Key {
        path: key_path,
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Serves HTTP/1.1 (over TLS when `tls` is given) on `listener` until `stopped` turns true,
/// then lets requests in progress finish (idle connections close at once) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    read_timeout: Duration,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let conn_stopped = stopped.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, router, read_timeout, conn_stopped).await,
                Some(acceptor) => {
                    match tokio::time::timeout(read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, router, read_timeout, conn_stopped).await
                        }
                        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake not completed within server.read_timeout"),
                    }
                }
            }
        });
    }
    drop(listener);
    if !connections.is_empty() {
        info!(
            connections = connections.len(),
            "waiting for open connections to finish"
        );
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One HTTP/1.1 connection until it ends, or until `stopped` asks it to finish its
/// request in progress and close.
async fn serve_connection<I>(
    io: I,
    router: Router,
    read_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        stop = stopped.wait_for(|stop| *stop) => {
            drop(stop);
            None
        }
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that hang up are routine at the edge.
        debug!(error = %e, "connection ended with an error");
    }
}
