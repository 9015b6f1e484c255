//! Accepting and serving connections, with the limits that keep slow or idle clients
//! from stalling the server (issue 26): a connection cap, a header timeout, an idle
//! timeout, a stalled-write timeout, and a grace period at shutdown.
//!
//! Each connection is served by hyper's HTTP/1.1 on a task of its own, watched by a
//! small watchdog that knows, from the bytes read and written and from the requests
//! begun and answered, whether the connection waits for a request head, sits idle
//! between requests, or has a request in flight:
//!
//! - a new connection must deliver its first request's head within the header
//!   timeout; after an answer, the next request may wait up to the idle timeout, and
//!   once its first byte came, its head must be whole within the header timeout;
//! - while a request is in flight, only a write that the client does not read for the
//!   idle timeout ends the connection (a request waiting for the generation thread is
//!   never cut off; a stalled body is the router's business: a 408);
//! - at most `max_connections` are served at once. The next connection is accepted
//!   and waits, the ones after it wait in the kernel's backlog; the wait asks one
//!   connection idle for a moment (no request begun) to close and make room, so idle
//!   keep-alive connections never lock new clients out, and connections stuck on a
//!   half-sent head free their slot at the header timeout;
//! - when the shutdown future completes, the listener closes, connections with no
//!   request in flight (idle, or a head half-sent) close at once, the others finish
//!   their response and close; whatever is still open after the grace period is
//!   closed, and `serve` returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::{Closed, Metrics};
use crate::middleware::Guarded;

/// The limits of [`serve`], from [`crate::ServerOptions`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) shutdown_grace: Duration,
}

/// An idle connection closes to make room only after it has been idle this long: a
/// client that has just connected is about to send its request.
const IDLE_BEFORE_MAKING_ROOM: Duration = Duration::from_millis(200);

/// What the accept loop and the connections share.
struct Shared {
    limits: Limits,
    metrics: Arc<Metrics>,
    /// How many idle connections should close to make room for waiting ones (0 or 1).
    make_room: AtomicUsize,
    /// Wakes the connections when room is wanted.
    room_wanted: Notify,
}

impl Shared {
    /// Whether this connection, idle, should close to make room (it takes the place).
    fn makes_room(&self, activity: &Activity) -> bool {
        activity
            .idle_for()
            .is_some_and(|idle| idle >= IDLE_BEFORE_MAKING_ROOM)
            && self
                .make_room
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then for at most the
/// shutdown grace period (module documentation). Returns once every connection is
/// closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        limits,
        metrics: metrics.clone(),
        make_room: AtomicUsize::new(0),
        room_wanted: Notify::new(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    'accepting: loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reaps finished connections (none: this branch is off for the round).
            Some(_) = tasks.join_next() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::debug!(
                    "{} connections open, the most served at once: {peer} waits",
                    limits.max_connections
                );
                shared.make_room.store(1, Ordering::SeqCst);
                shared.room_wanted.notify_waiters();
                let permit = loop {
                    tokio::select! {
                        () = &mut shutdown => break 'accepting,
                        Some(_) = tasks.join_next() => continue,
                        permit = slots.clone().acquire_owned() => {
                            break permit.expect("the semaphore is never closed");
                        }
                    }
                };
                shared.make_room.store(0, Ordering::SeqCst);
                permit
            }
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            peer,
            router.clone(),
            shared.clone(),
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let grace = limits.shutdown_grace;
    let open = tasks.len();
    if open > 0 {
        tracing::info!(
            "finishing the responses in flight on {open} connection(s), for {:.1} s at most",
            grace.as_secs_f64()
        );
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let left = tasks.len();
        tracing::warn!(
            "{left} connection(s) still open after the shutdown grace period ({:.1} s): closed",
            grace.as_secs_f64()
        );
        for _ in 0..left {
            metrics.closed(Closed::ShutdownGrace);
        }
        tasks.shutdown().await;
    }
}

/// Counts a connection open while it lives.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.connections.fetch_add(1, Ordering::SeqCst);
        Self(metrics.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one connection until it ends, the watchdog closes it, or shutdown does.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _open = Open::new(&shared.metrics);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let watched = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        // The head is parsed: a request is in flight until its response is sent.
        let in_flight = watched.request_started();
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: in_flight,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below times heads itself: hyper's timeout would also run while a
    // kept-alive connection waits for its next request.
    builder.header_read_timeout(None);
    let mut served = pin!(builder.serve_connection(io, service));
    let limits = shared.limits;
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = ticks.tick() => {
                if let Some(why) = activity.expired(&limits) {
                    tracing::debug!(%peer, reason = why.as_str(), "closing the connection");
                    shared.metrics.closed(why);
                    return;
                }
                if shared.makes_room(&activity) {
                    tracing::debug!(%peer, "closing an idle connection to make room");
                    shared.metrics.closed(Closed::MadeRoom);
                    return;
                }
            }
            () = shared.room_wanted.notified() => {
                if shared.makes_room(&activity) {
                    tracing::debug!(%peer, "closing an idle connection to make room");
                    shared.metrics.closed(Closed::MadeRoom);
                    return;
                }
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                // Idle, or a head half-sent: nothing to finish.
                if activity.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                // Finish the response, then close.
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

/// "Not yet", in [`Activity`]'s times.
const NEVER: u64 = u64::MAX;

/// What the watchdog knows of a connection. Times are microseconds since `start`.
struct Activity {
    start: Instant,
    /// Requests whose response is not sent yet.
    in_flight: AtomicUsize,
    /// Whether a request was answered on this connection.
    served: AtomicBool,
    /// Since when no request is in flight (accepted, or the last response sent).
    idle_since: AtomicU64,
    /// When the first byte of the next request came, or NEVER.
    head_since: AtomicU64,
    /// Since when a write waits for the client to read, or NEVER.
    write_blocked_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NEVER),
            write_blocked_since: AtomicU64::new(NEVER),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NEVER, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Bytes came from the client.
    fn read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ = self.head_since.compare_exchange(
                NEVER,
                self.now(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// A write went through (false) or must wait for the client to read (true).
    fn write_blocked(&self, blocked: bool) {
        if blocked {
            let _ = self.write_blocked_since.compare_exchange(
                NEVER,
                self.now(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        } else {
            self.write_blocked_since.store(NEVER, Ordering::SeqCst);
        }
    }

    /// How long the connection has been idle (no request in flight, none begun).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0
            || self.head_since.load(Ordering::SeqCst) != NEVER
        {
            return None;
        }
        let since = self.idle_since.load(Ordering::SeqCst);
        Some(Duration::from_micros(self.now().saturating_sub(since)))
    }

    /// Why the connection must be closed now, if it must.
    fn expired(&self, limits: &Limits) -> Option<Closed> {
        let now = self.now();
        let over = |since: u64, limit: Duration| {
            since != NEVER && u128::from(now.saturating_sub(since)) > limit.as_micros()
        };
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            let blocked = self.write_blocked_since.load(Ordering::SeqCst);
            return over(blocked, limits.idle_timeout).then_some(Closed::WriteStalled);
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head != NEVER {
            return over(head, limits.header_timeout).then_some(Closed::HeaderTimeout);
        }
        let idle = self.idle_since.load(Ordering::SeqCst);
        if self.served.load(Ordering::SeqCst) {
            over(idle, limits.idle_timeout).then_some(Closed::IdleTimeout)
        } else {
            // A new connection owes its first request's head from the start.
            over(idle, limits.header_timeout).then_some(Closed::HeaderTimeout)
        }
    }
}

/// A request in flight on a connection, until its response body is dropped (sent
/// whole, or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.served.store(true, Ordering::SeqCst);
        activity.head_since.store(NEVER, Ordering::SeqCst);
        activity.idle_since.store(activity.now(), Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's socket, telling its [`Activity`] of the bytes read and of writes
/// that wait.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn wrote<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.write_blocked(result.is_pending());
        result
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The most connections the open-files limit leaves room for (`requested` when it
/// does, or when it is not known), keeping some descriptors for everything else.
pub(crate) fn connection_cap(requested: usize) -> usize {
    /// Descriptors kept for the listener, the model's files, the log, the runtime.
    const RESERVED: u64 = 64;
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given a pointer to.
        let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        if known && limit.rlim_cur != libc::RLIM_INFINITY {
            // rlim_t is u64 on Linux, not everywhere.
            #[allow(clippy::unnecessary_cast)]
            let usable = (limit.rlim_cur as u64).saturating_sub(RESERVED).max(1);
            if (requested as u64) > usable {
                tracing::warn!(
                    "at most {usable} connections at once, not {requested}: the open-files limit is {} (ulimit -n)",
                    limit.rlim_cur
                );
                return usable as usize;
            }
        }
    }
    requested
}
