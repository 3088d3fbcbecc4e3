//! Accepting clients: one HTTP/1.1 connection per task, with a header read timeout (a client
//! that sends half a request, or nothing, is cut), a bound on open connections (the listener
//! stops accepting at the bound; the kernel's backlog holds the rest), an optional access log
//! naming the peer, and a graceful shutdown that the caller bounds in time.

use super::security::Peer;
use super::server::PeerInfo;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

/// How long a client may take to send a request's headers (also: how long an idle keep-alive
/// connection is kept).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections the agent keeps open at once, over all listeners.
pub const MAX_CONNECTIONS: usize = 4096;

/// A listener that tells who connected.
pub trait PeerListener: Send + 'static {
    /// The connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next client and what the transport says about it.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl PeerListener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        let cred = stream.peer_cred().ok();
        let peer = Peer {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            tcp: false,
            local_port: None,
        };
        Ok((stream, peer))
    }
}

impl PeerListener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        let peer = Peer {
            uid: None,
            gid: None,
            tcp: true,
            local_port: stream.local_addr().ok().map(|a| a.port()),
        };
        Ok((stream, peer))
    }
}

/// What every listener of one agent shares.
#[derive(Clone)]
pub struct Serving {
    /// The routes.
    pub app: Router,
    /// Open connections, over all listeners.
    pub slots: Arc<Semaphore>,
    /// One line per request on stderr (peer uid/gid, method, path, status, time; never a token).
    pub access_log: bool,
}

/// Serves `listener` until `stop` turns true, then lets the open connections finish their
/// requests (the caller bounds how long; dropping this future closes them all).
pub async fn serve(listener: impl PeerListener, serving: Serving, mut stop: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = serving.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next() => continue,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (io, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a moment rather than spin.
                eprintln!("connector agent: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service_for(&serving, peer);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    // Connections end as their requests finish; the caller cuts the rest after its grace
    // (dropping this future drops the set, which aborts them).
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}

/// The routes for one connection, with its peer for `ConnectInfo` and the access log.
fn service_for(
    serving: &Serving,
    peer: Peer,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future + Send,
> + Clone
+ Send
+ 'static {
    let app = serving.app.clone();
    let log = serving.access_log;
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(PeerInfo(peer)));
        let app = app.clone();
        async move {
            let started = Instant::now();
            let method = request.method().clone();
            // The path only: a query holds nothing secret today, but need not be logged.
            let path = request.uri().path().to_owned();
            let response =
                tower::ServiceExt::oneshot(app, request.map(axum::body::Body::new)).await;
            if log && let Ok(r) = &response {
                log_line(&peer, &method, &path, r.status(), started.elapsed());
            }
            response
        }
    })
}

fn log_line(
    peer: &Peer,
    method: &hyper::Method,
    path: &str,
    status: hyper::StatusCode,
    took: Duration,
) {
    let who = match (peer.tcp, peer.uid, peer.gid) {
        (true, _, _) => "tcp".to_owned(),
        (false, Some(uid), Some(gid)) => format!("uid={uid} gid={gid}"),
        _ => "uid=? gid=?".to_owned(),
    };
    eprintln!(
        "access {who} {method} {path} {} {:.1}ms",
        status.as_u16(),
        took.as_secs_f64() * 1000.0
    );
}

/// Raises this process's open-file limit to its hard limit, so the connection bound, not the
/// descriptor table, decides how many clients wait.
pub fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
