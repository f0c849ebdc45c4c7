//! The listening socket and its connections: binding (done before any library is copied),
//! the public URL, the descriptor limit, and the accept loop that bounds connections.
//!
//! Every connection must deliver a complete request head within the header timeout, counted
//! from when it opened or finished its previous request: that one timer closes slow-loris
//! clients and idle keep-alive sockets alike. At most `max_connections` are served at once.
//! When the cap is reached, or `accept` runs out of descriptors (EMFILE), the oldest
//! connection with no request in flight is closed, so a new client (a `/health` probe) gets
//! in while idle sockets pile up.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

use crate::runtime::lock;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a connection has to deliver a complete request head (also its idle timeout).
    pub header_timeout: Duration,
}

/// Binds `addr:port`; a failure says how to pick another port.
pub fn bind(addr: &str, port: u16) -> Result<StdListener, String> {
    let listener = StdListener::bind((addr, port)).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; is another host running there? pick another port with --port (0 picks a free one)"
        } else {
            "; pick another address with --host or another port with --port"
        };
        format!("cannot listen on {addr}:{port}: {e}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}:{port}: {e}"))?;
    Ok(listener)
}

/// The URL others reach this host at: `configured`, else `http://<bind>:<port>`, where a
/// wildcard bind stands for the machine's first non-loopback IPv4 address.
pub fn public_url(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(url) = configured {
        return url.trim_end_matches('/').to_string();
    }
    let ip = if bound.ip().is_unspecified() {
        first_ipv4().map_or(bound.ip(), IpAddr::V4)
    } else {
        bound.ip()
    };
    format!("http://{}", SocketAddr::new(ip, bound.port()))
}

/// The host part of a URL, without IPv6 brackets.
pub fn url_host(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// The first non-loopback IPv4 address of an interface that is up.
fn first_ipv4() -> Option<Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` fills `addrs` with a list we free below with `freeifaddrs`.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list `getifaddrs` returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
        // SAFETY: `ifa_addr` is null or points to a sockaddr whose family says its type.
        if !up
            || entry.ifa_addr.is_null()
            || i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET
        {
            continue;
        }
        // SAFETY: an AF_INET address is a `sockaddr_in`.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: `addrs` came from `getifaddrs` and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found
}

/// Raises the soft limit on open descriptors to the hard limit, so many clients do not run
/// the host out of descriptors; returns the soft limit in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit`/`setrlimit` read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // `rlim_t` is `u64` on Linux but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    Some(limit.rlim_cur as u64)
}

/// One served connection, as the accept loop sees it.
struct Connection {
    in_flight: AtomicUsize,
    shed: AtomicBool,
    close: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
}

impl Table {
    fn add(&self) -> (u64, Arc<Connection>) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            in_flight: AtomicUsize::new(0),
            shed: AtomicBool::new(false),
            close: Notify::new(),
        });
        lock(&self.open).insert(seq, conn.clone());
        (seq, conn)
    }

    fn remove(&self, seq: u64) {
        lock(&self.open).remove(&seq);
    }

    /// Closes the oldest connection with no request in flight; false when every one is busy.
    fn shed_oldest_idle(&self) -> bool {
        let open = lock(&self.open);
        let idle = open
            .values()
            .find(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.shed.load(Ordering::Acquire));
        match idle {
            Some(conn) => {
                conn.shed.store(true, Ordering::Release);
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a request in flight on its connection while it lives.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn enter(conn: &Arc<Connection>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether an `accept` error means the process (or system) ran out of descriptors or memory.
fn out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// How often running out of descriptors is logged while it lasts.
const SHORTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` turns true; then stops accepting, lets each
/// connection finish its request in flight, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Table::default());
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut last_warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if out_of_descriptors(&e) => {
                if last_warned.is_none_or(|at| at.elapsed() >= SHORTAGE_LOG_EVERY) {
                    tracing::warn!(
                        "cannot accept a connection: {e}: closing idle connections to make room"
                    );
                    last_warned = Some(Instant::now());
                }
                // The shed connection's task closes its socket: give it a moment.
                let pause = if table.shed_oldest_idle() { 10 } else { 100 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                table.shed_oldest_idle();
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
        };
        let (seq, conn) = table.add();
        let (app, table, stop) = (app.clone(), table.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, limits, &conn, stop).await;
            table.remove(seq);
            drop(permit);
        });
    }
    // Wait for the open connections to finish (the caller bounds how long).
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Serves one connection until it ends, is shed, or the host stops (then its request in
/// flight is finished first).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    conn: &Arc<Connection>,
    mut stop: watch::Receiver<bool>,
) {
    let inner = TowerToHyperService::new(app);
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |request| {
        let in_flight = InFlight::enter(&tracked);
        let answer = inner.call(request);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection closed: {e}");
            }
        }
        // Dropping the connection closes its socket.
        () = conn.close.notified() => {}
        () = stopped(&mut stop) => {
            served.as_mut().graceful_shutdown();
            let _ = served.await;
        }
    }
}
