//! The gRPC listener's accept loop, with the limits that keep it healthy:
//!
//! - **A connection cap** below the file-descriptor limit: at most `max_connections` accepted
//!   connections are open at once (0: the `RLIMIT_NOFILE` soft limit minus `fd_reserve`), so
//!   descriptors stay in reserve for the state directory, model bundles and the metrics
//!   endpoint. Clients over the cap wait in the kernel's backlog until a connection closes.
//! - **Backoff on accept errors** (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...): 5 ms doubling to 1 s,
//!   instead of retrying at once and spinning a core.
//! - **An idle timeout**: a connection with no request in flight (and no response still
//!   streaming) for `connection_idle_timeout_secs` is closed, like grpc-go's
//!   `MaxConnectionIdle`. A client reconnects on its next call.
//!
//! Hitting the cap or an accept error is logged once (a warning), then counted in
//! `tiering_refused_total{reason="connections"|"accept_error"}`.
//!
//! - **TLS** (when configured, see [`super::tls`]): each accepted connection's handshake runs in
//!   its own task under a timeout, so a slow or silent client never holds the accept loop; the
//!   handshaking connection already counts against the cap.
//!
//! Requests find their connection's [`ConnInfo`] in their extensions; [`ConnInfo::busy`] marks
//! the connection busy while the returned guard lives (the admission layer keeps it in the
//! response body).

use super::metrics::Metrics;
use super::tls::Tls;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Listener settings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Close a connection idle this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive probes on accepted sockets after this much silence; `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// Longest TLS handshake (each runs in its connection's task).
    pub tls_handshake_timeout: Duration,
}

/// The connection cap for `configured` (0: automatic) and descriptor limit `nofile` (the
/// `RLIMIT_NOFILE` soft limit; `None` when unknown): automatic is `nofile − reserve`, at least
/// 16; an explicit cap above that is lowered to it.
pub(crate) fn connection_cap(configured: usize, nofile: Option<u64>, reserve: u64) -> usize {
    let ceiling =
        nofile.map(|n| usize::try_from(n.saturating_sub(reserve).max(16)).unwrap_or(usize::MAX));
    match (configured, ceiling) {
        (0, Some(c)) => c,
        (0, None) => 1024,
        (n, Some(c)) => n.min(c),
        (n, None) => n,
    }
}

/// The soft `RLIMIT_NOFILE`, when the platform tells it.
pub(crate) fn nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
        // rlim_t is u64 on Linux but not on every unix.
        #[allow(clippy::unnecessary_cast)]
        (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// One connection's activity: requests in flight, and since when there were none.
#[derive(Debug)]
struct Activity {
    busy: AtomicUsize,
    /// Milliseconds after `born` when the connection last became idle.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born.elapsed().saturating_sub(since))
    }
}

/// What a request knows of its connection (in its extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// With mutual TLS: the verified client certificate's DNS SANs and subject CN.
    pub peer_names: Option<Arc<[String]>>,
    activity: Arc<Activity>,
}

/// Marks a connection busy while it lives.
#[derive(Debug)]
pub(crate) struct BusyGuard(Arc<Activity>);

impl ConnInfo {
    pub(crate) fn busy(&self) -> BusyGuard {
        self.activity.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self.activity.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection: counts against the cap until dropped, and reads EOF once idle too
/// long (which makes the HTTP/2 server close it).
pub struct Conn {
    stream: TcpStream,
    info: ConnInfo,
    idle_timeout: Option<Duration>,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.connections(-1);
    }
}

impl Conn {
    /// A freshly accepted connection, idle since now, holding its slot under the cap.
    fn accepted(
        stream: TcpStream,
        remote: std::net::SocketAddr,
        idle_timeout: Option<Duration>,
        metrics: Arc<Metrics>,
        permit: OwnedSemaphorePermit,
    ) -> Conn {
        Conn {
            stream,
            info: ConnInfo {
                remote: Some(remote),
                peer_names: None,
                activity: Arc::new(Activity {
                    busy: AtomicUsize::new(0),
                    idle_since_ms: AtomicU64::new(0),
                    born: Instant::now(),
                }),
            },
            idle_timeout,
            idle_timer: None,
            metrics,
            _permit: permit,
        }
    }

    /// `Ready(true)` once the connection has been idle for the timeout; otherwise arms the timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        loop {
            let left = match self.info.activity.idle_for() {
                Some(idle) if idle >= timeout => return true,
                Some(idle) => timeout - idle,
                None => timeout,
            };
            let deadline = tokio::time::Instant::now() + left;
            let timer = self
                .idle_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

use std::future::Future;

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if this.poll_idle(cx) => {
                tracing::debug!(remote = ?this.info.remote, "closing an idle connection");
                // End of stream: the HTTP/2 server closes the connection.
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// A connection as served: plain, or TLS over the tracked connection (the TLS layer reads
/// through [`Conn`], so the cap and the idle timeout apply alike).
pub enum Accepted {
    Plain(Conn),
    Tls(Box<tokio_rustls::server::TlsStream<Conn>>),
}

impl Accepted {
    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn AsyncReadWrite> {
        match self.get_mut() {
            Accepted::Plain(c) => Pin::new(c),
            Accepted::Tls(t) => Pin::new(t.as_mut()),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    /// `false`, although both streams could write vectors: told so, the HTTP/2 layer (h2)
    /// copies DATA payloads up to 1 KiB into its write buffer instead of chaining those over
    /// 256 bytes. A typical answer (a 350-500-byte `UserTier`) then leaves in one write with
    /// its headers and trailers, and over TLS as one record; chained, every answer took two
    /// `writev` calls (the trailers could not join the chained payload) and the caller two
    /// wake-ups. Measured under a GetUserTier load (BENCHMARKS.md, "Request path"): one send
    /// per answer instead of two, about 40% less server CPU per request. Large answers
    /// (batches, pages) are still written from their own buffers, a `write` per piece.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Accepted::Plain(c) => c.info.clone(),
            Accepted::Tls(t) => t.get_ref().0.info.clone(),
        }
    }
}

/// The TLS handshake of one connection, in its own task (the accept loop never waits for it),
/// within `timeout`; the verified client certificate's names go into its [`ConnInfo`].
fn spawn_handshake(
    conn: Conn,
    tls: Arc<Tls>,
    timeout: Duration,
    tx: mpsc::Sender<io::Result<Accepted>>,
) {
    tokio::spawn(async move {
        let acceptor = tls.grpc_acceptor();
        let mut stream = match tokio::time::timeout(timeout, acceptor.accept(conn)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tls.handshake_failed(&e),
            Err(_) => return tls.handshake_failed(&"timed out"),
        };
        let (conn, session) = stream.get_mut();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            conn.info.peer_names = Some(Arc::from(super::tls::cert_names(cert.as_ref())));
        }
        let _ = tx.send(Ok(Accepted::Tls(Box::new(stream)))).await;
    });
}

/// Logs a condition once per process, then only counts it.
struct Once(AtomicBool);

impl Once {
    fn first(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// The accepted connections, as the stream tonic serves; the accept loop runs in a task that
/// stops when the stream is dropped (tonic drops it on shutdown, closing the listener).
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    tls: Option<Arc<Tls>>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Accepted>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, limits, metrics, tls, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    tls: Option<Arc<Tls>>,
    tx: mpsc::Sender<io::Result<Accepted>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (cap_logged, error_logged) = (Once(AtomicBool::new(false)), Once(AtomicBool::new(false)));
    let mut backoff = Duration::ZERO;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.refused("connections");
                if cap_logged.first() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached: new clients wait until a connection closes (logged once; see tiering_refused_total)"
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = tx.closed() => return,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = tx.closed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                metrics.refused("accept_error");
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if error_logged.first() {
                    tracing::warn!(error = %e, "accepting connections failed; backing off up to 1 s between tries (logged once; see tiering_refused_total)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        backoff = Duration::ZERO;
        let _ = stream.set_nodelay(true);
        if let Some(idle) = limits.tcp_keepalive {
            let ka = socket2::TcpKeepalive::new().with_time(idle);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        }
        metrics.connections(1);
        let conn = Conn::accepted(stream, remote, limits.idle_timeout, metrics.clone(), permit);
        match &tls {
            Some(tls) => {
                spawn_handshake(conn, tls.clone(), limits.tls_handshake_timeout, tx.clone())
            }
            None => {
                if tx.send(Ok(Accepted::Plain(conn))).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(connection_cap(0, Some(1024), 64), 960);
        assert_eq!(connection_cap(5000, Some(1024), 64), 960);
        assert_eq!(connection_cap(100, Some(1024), 64), 100);
        assert_eq!(connection_cap(0, Some(32), 64), 16);
        assert_eq!(connection_cap(0, None, 64), 1024);
        assert_eq!(connection_cap(7, None, 64), 7);
    }

    #[tokio::test]
    async fn served_connections_ask_http2_to_coalesce_small_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, remote) = listener.accept().await.unwrap();
        assert!(
            stream.is_write_vectored(),
            "the socket itself writes vectors"
        );
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let conn = Conn::accepted(
            stream,
            remote,
            None,
            Arc::new(Metrics::new().unwrap()),
            permit,
        );
        // h2 picks its chaining threshold (256 bytes vectored, 1 KiB not) from this answer.
        assert!(!Accepted::Plain(conn).is_write_vectored());
        drop(client);
    }
}
