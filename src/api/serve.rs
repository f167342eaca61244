//! The listener: every connection served by hyper within warden's limits, so that no
//! client can hold what the others need. A request's head must arrive within
//! `server.header_read_timeout_ms` (slowloris), a connection without a request in
//! progress is closed after `server.idle_timeout_ms`, and at most
//! `server.max_connections` are open at once: a connection past that closes the one idle
//! longest, and with none idle is answered 503 at once, so idle or half-open
//! connections, which need no key, can never lock out a request that has one. The
//! body's own limits (size, read time) are the router's (`super::extract`).
//!
//! axum's own `serve` has none of these knobs, so the accept loop is ours; hyper does
//! the HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::api::error::ApiError;
use crate::config::ServerConfig;
use crate::metrics::ConnectionMetrics;

/// File descriptors kept for everything but client connections: the audit log, the
/// model, provider connections, the metrics listener.
const RESERVED_DESCRIPTORS: usize = 256;
/// How long after an accept error (out of file descriptors) before trying again: long
/// enough not to spin, short enough that the listener recovers at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The most a refused connection may take to be told so.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the listener enforces on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    pub fn of(server: &ServerConfig) -> Self {
        Self {
            max_connections: server.max_connections,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
        }
    }

    /// Lowered to what the process's file descriptors allow, after raising their soft
    /// limit as far as the system lets it.
    pub fn within_descriptors(mut self) -> Self {
        let available = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
            Err(error) => {
                tracing::warn!(%error, "cannot read the file descriptor limit");
                return self;
            }
        };
        let room = available.saturating_sub(RESERVED_DESCRIPTORS).max(1);
        if room < self.max_connections {
            tracing::warn!(
                configured = self.max_connections,
                allowed = room,
                "`server.max_connections` is above what the file descriptor limit allows; lowered"
            );
            self.max_connections = room;
        }
        self
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets the
/// requests in progress finish, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Connections::new(limits, metrics));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::error!(%error, "accept failed; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(tracked) = connections.open() else {
            connections.count_closed("full");
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            tracked,
            connections: connections.clone(),
            app: app.clone(),
            stopping: stopping.clone(),
        };
        tokio::spawn(connection.run(stream));
    }
    let _ = stop.send(true);
    connections.all_closed().await;
}

/// Answers a connection there is no room for, in OpenAI's error shape, and closes it.
/// No HTTP server runs on it, so the response the error table gives is written out here.
async fn refuse(mut stream: TcpStream) {
    let (parts, body) = ApiError::NoRoomForConnection.into_response().into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return;
    };
    let mut response = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    for (name, value) in &parts.headers {
        response.extend_from_slice(name.as_str().as_bytes());
        response.extend_from_slice(b": ");
        response.extend_from_slice(value.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    let length = format!(
        "connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    response.extend_from_slice(length.as_bytes());
    response.extend_from_slice(&body);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// No request in progress; a count above it is the requests in progress.
const IDLE: u64 = 0;
/// Being closed for want of room or for idling: takes no more requests.
const CLOSING: u64 = u64::MAX;

/// One open connection, as the listener keeps track of it.
struct Tracked {
    id: u64,
    /// `IDLE`, the requests in progress, or `CLOSING`.
    state: AtomicU64,
    /// Milliseconds since the listener started at which it last became idle.
    idle_since_ms: AtomicU64,
    /// Told to close now (it was idle and its room is needed).
    close: Notify,
}

/// Every open connection.
struct Connections {
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
    emptied: Notify,
}

impl Connections {
    fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        Self {
            limits,
            metrics,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            emptied: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection, closing the one idle longest when there is no room;
    /// `None` when there is none to close.
    fn open(&self) -> Option<Arc<Tracked>> {
        let mut open = self.lock();
        if open.len() >= self.limits.max_connections {
            // A scan, but only when full, and the map holds at most the limit.
            let evicted = loop {
                let oldest = open
                    .values()
                    .filter(|tracked| tracked.state.load(Ordering::Acquire) == IDLE)
                    .min_by_key(|tracked| tracked.idle_since_ms.load(Ordering::Relaxed))?;
                // It may have taken a request since: then it is busy, look again.
                if oldest.try_close() {
                    break oldest.clone();
                }
            };
            evicted.close.notify_one();
            open.remove(&evicted.id);
            self.count_closed("evicted_idle");
        }
        let tracked = Arc::new(Tracked {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            state: AtomicU64::new(IDLE),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        open.insert(tracked.id, tracked.clone());
        self.metrics.open.set(open.len() as i64);
        Some(tracked)
    }

    fn closed(&self, tracked: &Tracked) {
        let mut open = self.lock();
        open.remove(&tracked.id);
        self.metrics.open.set(open.len() as i64);
        if open.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn count_closed(&self, reason: &str) {
        self.metrics.closed.with_label_values(&[reason]).inc();
    }

    async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.lock().is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

impl Tracked {
    /// Idle → closing; `false` if a request came first.
    fn try_close(&self) -> bool {
        self.state
            .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// One more request in progress; `false` once the connection is closing.
    fn begin_request(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state != CLOSING).then(|| state + 1)
            })
            .is_ok()
    }
}

/// Ends a request's hold on its connection when its response body is done or dropped.
struct InProgress {
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.tracked
            .idle_since_ms
            .store(self.connections.now_ms(), Ordering::Relaxed);
        self.tracked.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it ends.
struct TrackedBody {
    inner: Body,
    _in_progress: InProgress,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Connection {
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
    app: Router,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let limits = self.connections.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let service = {
            let (tracked, connections, app) = (
                self.tracked.clone(),
                self.connections.clone(),
                self.app.clone(),
            );
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (tracked, connections, app) =
                    (tracked.clone(), connections.clone(), app.clone());
                async move { Ok::<_, Infallible>(respond(tracked, connections, app, request).await) }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            let idle_check = tokio::time::sleep(self.until_idle_check(limits.idle_timeout));
            tokio::select! {
                _ = connection.as_mut() => break,
                () = self.tracked.close.notified() => {
                    // Idle, and its room given to a newer connection: drop it.
                    self.connections.closed(&self.tracked);
                    return;
                }
                () = idle_check, if !draining => {
                    if self.idle_too_long(limits.idle_timeout) && self.tracked.try_close() {
                        self.connections.count_closed("idle_timeout");
                        break;
                    }
                }
                changed = self.stopping.changed(), if !draining => {
                    if changed.is_err() || *self.stopping.borrow() {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        self.connections.closed(&self.tracked);
    }

    /// How long until the connection could have idled past `timeout`.
    fn until_idle_check(&self, timeout: Duration) -> Duration {
        if self.tracked.state.load(Ordering::Acquire) != IDLE {
            return timeout;
        }
        let idle_since = self.tracked.idle_since_ms.load(Ordering::Relaxed);
        let idle_for = self.connections.now_ms().saturating_sub(idle_since);
        timeout.saturating_sub(Duration::from_millis(idle_for)) + Duration::from_millis(1)
    }

    fn idle_too_long(&self, timeout: Duration) -> bool {
        let idle_since = self.tracked.idle_since_ms.load(Ordering::Relaxed);
        self.tracked.state.load(Ordering::Acquire) == IDLE
            && Duration::from_millis(self.connections.now_ms().saturating_sub(idle_since))
                >= timeout
    }
}

/// One request on a tracked connection: counted as in progress until its response body
/// ends, so the connection is neither idle-closed nor evicted under it.
async fn respond(
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
    app: Router,
    request: hyper::Request<Incoming>,
) -> Response {
    if !tracked.begin_request() {
        // The connection was chosen for closing as this request arrived.
        let mut response = Response::new(Body::empty());
        *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return response;
    }
    let in_progress = InProgress {
        tracked,
        connections,
    };
    let request: Request = request.map(Body::new);
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    response.map(|inner| {
        Body::new(TrackedBody {
            inner,
            _in_progress: in_progress,
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn connections(max_connections: usize) -> Connections {
        let metrics = ConnectionMetrics {
            open: prometheus::IntGauge::new("open", "open").unwrap(),
            closed: prometheus::IntCounterVec::new(
                prometheus::Opts::new("closed", "closed"),
                &["reason"],
            )
            .unwrap(),
        };
        let limits = ConnectionLimits {
            max_connections,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        Connections::new(limits, metrics)
    }

    #[test]
    fn when_full_the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let connections = connections(2);
        let first = connections.open().unwrap();
        let second = connections.open().unwrap();
        first.idle_since_ms.store(5, Ordering::Relaxed);
        second.idle_since_ms.store(1, Ordering::Relaxed);
        let third = connections.open().unwrap();
        // The second had been idle longer: it is told to close, and takes no request.
        assert_eq!(second.state.load(Ordering::Acquire), CLOSING);
        assert!(!second.begin_request());
        assert!(first.begin_request() && third.begin_request());
        // Both open connections are busy now: a new one is refused.
        assert!(connections.open().is_none());
        assert_eq!(
            connections
                .metrics
                .closed
                .with_label_values(&["evicted_idle"])
                .get(),
            1
        );
    }

    #[test]
    fn a_request_ends_its_hold_when_its_response_is_done() {
        let connections = Arc::new(connections(1));
        let tracked = connections.open().unwrap();
        assert!(tracked.begin_request());
        let in_progress = InProgress {
            tracked: tracked.clone(),
            connections: connections.clone(),
        };
        assert!(
            connections.open().is_none(),
            "a busy connection was evicted"
        );
        drop(in_progress);
        assert_eq!(tracked.state.load(Ordering::Acquire), IDLE);
        assert!(connections.open().is_some());
    }
}
