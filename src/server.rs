//! The service: HTTP routes, start-up (store, senders, listener), reload, signals and an
//! orderly shutdown. It must not parse bodies, plan or send: it wires the stages together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::app::{AppState, warn_about_auth};
use crate::chat::{ChatClient, ChatClientError};
use crate::config::{Auth, Target};
use crate::delivery::{Delivery, Shared};
use crate::ingest::{self, ApiError};
use crate::listener::{self, WebhookGuard};
use crate::metrics::Metrics;
use crate::runtime::{LoadError, Runtime};
use crate::store::{self, Store, StoreError, now_ms};

/// How often old episode state and duplicate digests are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long /readyz waits for its probe write.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Chat(#[from] ChatClientError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Tls(#[from] listener::TlsError),
    /// The store's writer thread died: nothing can be queued any more, so serve stops
    /// and the process exits non-zero for its supervisor to restart it.
    #[error("the store's writer thread died; stopping so that kabar can be restarted")]
    WriterDied,
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
}

/// A running kabar: its address and the means to reload and stop it.
pub struct Service {
    addr: SocketAddr,
    app: Arc<AppState>,
    /// The routes the listener serves, kept so a caller can hand them requests without a
    /// socket (the HTTP-level tests do, with `tower::ServiceExt::oneshot`).
    router: Router,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    pruner: JoinHandle<()>,
}

impl Service {
    /// Opens the store, starts the senders and listens. `config_path` enables reload.
    pub async fn start(
        runtime: Runtime,
        config_path: Option<PathBuf>,
    ) -> Result<Service, ServeError> {
        let config = &runtime.config;
        // Before anything starts: a bad certificate or key stops start-up cleanly.
        let tls = config
            .server
            .tls
            .as_ref()
            .map(listener::tls_acceptor)
            .transpose()?;
        let store = store::open(config).await?;
        let metrics = Arc::new(Metrics::new(crate::VERSION, crate::REVISION));
        metrics.init_reject_reasons();
        let app_spaces: Vec<&str> = config
            .spaces
            .iter()
            .filter(|(_, space)| matches!(space.target, crate::config::Target::App { .. }))
            .map(|(name, _)| name.as_str())
            .collect();
        if !app_spaces.is_empty() {
            metrics.init_app_events(&app_spaces);
        }
        metrics.store_backend(store.backend());
        for name in config.spaces.keys() {
            metrics.init_space(name);
        }
        metrics.config_loaded();
        let chat = ChatClient::with_proxy(
            config.delivery.request_timeout,
            config.delivery.proxy_url.as_ref(),
        )?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Http)?;
        warn_about_auth(&runtime);

        let shared = Arc::new(Shared {
            runtime: RwLock::new(Arc::new(runtime)),
            store: store.clone(),
            metrics,
            chat,
            chat_app: crate::chat_app::ChatApp::default(),
        });
        let delivery = Arc::new(Delivery::new(Arc::clone(&shared)));
        delivery.start();
        delivery.sync_spaces(&shared.runtime().config);
        let app = Arc::new(AppState {
            shared,
            delivery,
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            events: crate::chat_app::actions::Events::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let http_stopped = stopped.clone();
        let server_settings = app.runtime().config.server.clone();
        let guard = WebhookGuard::new(&server_settings, Arc::clone(&app.shared.metrics));
        let router = router(Arc::clone(&app), guard);
        let http = tokio::spawn(listener::serve(
            listener,
            router.clone(),
            server_settings.read_timeout,
            tls,
            http_stopped,
        ));
        let pruner = tokio::spawn(prune_periodically(store, stopped));
        let queued = app
            .shared
            .store
            .queue_stats()
            .await
            .map(|stats| stats.iter().map(|s| s.messages).sum::<i64>())
            .unwrap_or(0);
        info!(
            %addr,
            tls = server_settings.tls.is_some(),
            version = crate::VERSION,
            revision = crate::REVISION,
            spaces = app.runtime().config.spaces.len(),
            queued,
            "kabar is listening"
        );
        Ok(Service {
            addr,
            app,
            router,
            stop,
            http,
            pruner,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service's routes with everything in front of them (auth, limits, the webhook
    /// guard) but without the listener: the same answers as over a connection.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    pub async fn reload(&self) -> Result<(), String> {
        self.app.reload().await
    }

    /// Stops taking requests, lets requests in progress finish, lets each sender finish
    /// its request in flight, and closes the store. Queued messages stay on disk.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        info!("shutting down: no new requests; finishing what is in flight");
        let _ = self.stop.send(true);
        let http_result = self.http.await;
        let grace = self.app.runtime().config.delivery.request_timeout + Duration::from_secs(1);
        self.app.delivery.shutdown(grace).await;
        let _ = self.pruner.await;
        let store = self.app.shared.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        info!("stopped");
        match http_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Http(e)),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e.to_string()))),
        }
    }
}

async fn prune_periodically(store: Arc<dyn Store>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let now = now_ms();
        match store.prune(now).await {
            Ok((episodes, _)) if episodes > 0 => info!(episodes, "forgot old alert episodes"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot prune old state"),
        }
    }
}

/// Loads the config at `path`, runs until SIGTERM or SIGINT, reloads on SIGHUP. If the
/// store's writer thread dies, it stops and returns an error (the process exits non-zero
/// for its supervisor to restart it) rather than live on unable to queue anything.
pub async fn run(path: PathBuf) -> Result<(), ServeError> {
    let runtime = Runtime::load(&path)?;
    // Held until kabar exits: a second kabar on this state_dir refuses to start. Replicas
    // on PostgreSQL share their store by design and leave state_dir alone.
    let _lock = match runtime.config.store.postgres {
        None => Some(crate::state_dir::StateDirLock::acquire(
            &runtime.config.state_dir,
        )?),
        Some(_) => None,
    };
    let service = Service::start(runtime, Some(path)).await?;
    let waited = until_stopped(&service, wait_for_signals(&service)).await;
    let stopped = service.shutdown().await;
    waited.and(stopped)
}

/// Waits for `stop` (the signals) or for the store's writer to die, whichever is first.
async fn until_stopped(
    service: &Service,
    stop: impl std::future::Future<Output = Result<(), ServeError>>,
) -> Result<(), ServeError> {
    tokio::select! {
        waited = stop => waited,
        _ = service.app.shared.store.until_broken() => Err(ServeError::WriterDied),
    }
}

#[cfg(unix)]
async fn wait_for_signals(service: &Service) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                let _ = service.reload().await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_service: &Service) -> Result<(), ServeError> {
    tokio::signal::ctrl_c().await.map_err(ServeError::Signals)
}

fn router(app: Arc<AppState>, guard: WebhookGuard) -> Router {
    Router::new()
        .route("/alerts", post(ingest::receive))
        .route("/alerts/{space}", post(ingest::receive_for_space))
        .route_layer(axum::middleware::from_fn_with_state(
            guard,
            listener::guard_webhook,
        ))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .route("/", get(landing))
        .fallback(events_or_not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(app)
}

/// Chat's events come to `chat_app.events_path`, which a reload may change: looked up per
/// request rather than routed once. Anything else here is not kabar's.
async fn events_or_not_found(
    State(app): State<Arc<AppState>>,
    request: axum::extract::Request,
) -> Response {
    if request.method() == axum::http::Method::POST
        && crate::chat_app::actions::is_events_path(&app, request.uri().path())
    {
        return match crate::chat_app::actions::receive(&app, request).await {
            Ok(answer) => axum::Json(answer).into_response(),
            Err(e) => e.into_response(),
        };
    }
    ApiError::NotFound.into_response()
}

async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    health(app.shared.store.as_ref())
}

/// Alive: the process answers and its store's writer thread runs (without it nothing
/// can be queued, and only a restart helps).
fn health(store: &dyn Store) -> Response {
    if store.broken() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the store's writer thread died; restart kabar\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let store = &app.shared.store;
    let probe = tokio::time::timeout(READY_PROBE_TIMEOUT, store.probe()).await;
    if probe.is_err() {
        store.mark_unresponsive();
    }
    // The probe is a write, so the store now knows whether it commits.
    app.shared.metrics.store_writability(store.writable());
    match probe {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            app.shared.metrics.store_error(e.kind());
            warn!(error = %e, "not ready: the store cannot take writes");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store cannot take writes: {e}\n"),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store did not answer in time\n",
        )
            .into_response(),
    }
}

/// `POST /-/reload`. With auth configured it takes the webhook's credentials, checked the
/// same way, and only an authenticated caller learns why a reload failed. Without auth
/// anyone may reload (as SIGHUP), but the reason, which quotes the file, goes only to the
/// log.
async fn reload(State(app): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let runtime = app.runtime();
    if let Err(refused) = ingest::authorize(runtime.config.auth.as_ref(), &headers) {
        return refused.into_response();
    }
    let authenticated = runtime.config.auth.is_some();
    // The credentials of the configuration in effect, in case the reason quotes one.
    let secrets = crate::secret::config_secrets(&runtime.config);
    drop(runtime);
    match app.reload().await {
        Ok(()) => axum::Json(json!({"status": "reloaded"})).into_response(),
        Err(message) if authenticated => {
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            ApiError::ReloadFailed(crate::secret::scrub(&message, &secrets)).into_response()
        }
        Err(_) => ApiError::ReloadFailed(
            "the reason is in kabar's log (with auth configured, an authenticated caller sees it here)"
                .to_owned(),
        )
        .into_response(),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    refresh_queue_gauges(&app).await;
    app.shared
        .metrics
        .store_writability(app.shared.store.writable());
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        app.shared.metrics.encode(),
    )
        .into_response()
}

/// Outbox depth, oldest age and dead letters come from the store at scrape time, so they
/// are right even after a restart.
async fn refresh_queue_gauges(app: &AppState) {
    let store = &app.shared.store;
    let stats = match store.queue_stats().await {
        Ok(queues) => store.dead_letter_counts().await.map(|dead| (queues, dead)),
        Err(e) => Err(e),
    };
    let (queues, dead) = match stats {
        Ok(stats) => stats,
        Err(e) => {
            warn!(error = %e, "cannot read queue statistics for /metrics");
            return;
        }
    };
    let metrics = &app.shared.metrics;
    let now = now_ms();
    for name in app.runtime().config.spaces.keys() {
        let queue = queues.iter().find(|q| &q.space == name);
        let age_ms = queue
            .and_then(|q| q.oldest_received_ms)
            .map_or(0, |oldest| (now - oldest).max(0));
        let dead_count = dead
            .iter()
            .find(|(space, _)| space == name)
            .map_or(0, |(_, n)| *n);
        metrics.queue_depth(
            name,
            queue.map_or(0, |q| q.messages),
            Duration::from_millis(age_ms as u64),
            dead_count,
        );
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn landing(State(app): State<Arc<AppState>>) -> Html<String> {
    let runtime = app.runtime();
    let mut rows = String::new();
    for space in runtime.config.spaces.values() {
        let target = match &space.target {
            Target::DryRun => "dry run (prints, never posts)".to_owned(),
            target @ (Target::Webhook(_) | Target::App { .. }) => target.describe(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(&space.name),
            escape_html(&target),
            escape_html(&space.receivers.join(", ")),
            space.options.format.as_str(),
            space.options.threading.as_str(),
        ));
    }
    let auth = match runtime.config.auth {
        Some(Auth::Bearer(_)) => "bearer token",
        Some(Auth::Basic { .. }) => "basic",
        None => "none (warning: anyone can post)",
    };
    let events = runtime
        .config
        .chat_app
        .as_ref()
        .and_then(|c| c.events.as_ref())
        .map(|e| {
            format!(
                "<p>Chat app events: <code>POST {}</code> (Google Chat's signed events only).</p>",
                escape_html(&e.path)
            )
        })
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kabar</title></head><body>\
         <h1>kabar {version}</h1><p>Prometheus Alertmanager receiver for Google Chat. Revision {revision}.</p>\
         <p>Webhook: <code>POST /alerts</code> (by receiver) or <code>POST /alerts/{{space}}</code>. Auth: {auth}.</p>{events}\
         <table border=\"1\" cellpadding=\"4\"><tr><th>space</th><th>target</th><th>receivers</th><th>format</th><th>threading</th></tr>{rows}</table>\
         <p><a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a> · <code>POST /-/reload</code></p>\
         </body></html>",
        version = crate::VERSION,
        revision = crate::REVISION,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_fails_once_the_store_writer_died() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::SqliteStore::open(dir.path()).expect("open");
        assert_eq!(health(&store).status(), StatusCode::OK);
        store.kill_writer_for_test();
        tokio::time::timeout(Duration::from_secs(10), store.writer_death())
            .await
            .expect("the death is signalled");
        let response = health(&store);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert!(
            String::from_utf8_lossy(&body).contains("writer thread died"),
            "{body:?}"
        );
        store.close();
    }

    #[tokio::test]
    async fn serve_stops_with_an_error_when_the_store_writer_dies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "listen: 127.0.0.1:0\nstate_dir: {}\nspaces:\n  demo:\n    dry_run: true\n",
            dir.path().display()
        );
        let config = crate::config::Config::parse(&yaml, dir.path(), &|_| None).expect("config");
        let runtime = Runtime::new(config).expect("runtime");
        let service = Service::start(runtime, None).await.expect("start");
        service.app.shared.store.break_for_test();
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            until_stopped(&service, std::future::pending()),
        )
        .await
        .expect("serve stops by itself, with no signal");
        assert!(
            matches!(outcome, Err(ServeError::WriterDied)),
            "{outcome:?}"
        );
        service.shutdown().await.expect("shutdown");
    }
}
