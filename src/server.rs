//! The server: accept loop, hyper HTTP/1 with upgrades, routing, background sweeps, shutdown.
//!
//! [`run`] takes an already-bound listener (tests bind port 0) and a shutdown future. Every
//! request is routed here: the demo page and client library (embedded in the binary), health and
//! metrics, the WebSocket upgrade (handed to `connection`), the HTTP API (`http_api`) and the
//! admin API (`admin`, which is given the TCP peer address).
//!
//! Limits on plain HTTP: at most `--max-http-connections` open at once (past it a new connection
//! is answered 503 and closed right after accept; an upgraded WebSocket leaves that count for
//! `--max-connections`), request heads of at most [`MAX_HTTP_BUFFER`], and bodies bounded in
//! time, size and bytes in flight by `http_api`. A connection whose last request body was not
//! read to its end (a 413, 408 or 503 answered early) is closed by [`linger`]ing, so that the
//! client can finish writing and read the answer instead of meeting a reset.
//!
//! Shutdown: mark not ready and stop accepting work (new upgrades and API calls get 503 while the
//! listener stays open for probes), ask every HTTP connection to finish gracefully and every
//! WebSocket to close with 1001 at a random moment in the drain window, then return when all are
//! gone or `--shutdown-timeout` has passed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::admin;
use crate::app::{App, HttpSlot};
use crate::close::CloseReason;
use crate::config::Config;
use crate::connection;
use crate::guard::{self, OriginCheck, Peer, RateLimited};
use crate::http_api::{self, Body, RequestBody, json_error, query_pairs};
use crate::ids::{Rev, RoomId};
use crate::metrics::{self as m, Refusal};
use crate::protocol::ErrorCode;
use crate::rooms::{NoNewRoom, Refused};
use crate::session::ResumeFrom;
use crate::web;

/// Binds a listener with a deep accept queue: with the usual 128, a burst of connects overflows
/// it and the kernel retries each dropped SYN only after a second.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves `listener` until `shutdown` resolves, then drains.
///
/// # Errors
/// Never today; the signature leaves room for fatal listener errors.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cluster = crate::cluster::start(&app).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot follow the cluster: rooms other nodes own are not served here");
        None
    });
    tokio::spawn(sweep(app.clone(), cluster));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                serve_or_refuse(&app, stream);
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    app.begin_drain();
    // What was committed before the drain is written now, so its acks go out before the closes.
    let flushing = app.rooms.store().cloned().map(|store| tokio::task::spawn_blocking(move || store.flush()));
    // Keep answering during the drain so load balancers see `/readyz` 503 (and new WebSocket
    // upgrades a clear 503) instead of refused connections; no new work is accepted.
    let deadline = tokio::time::Instant::now() + app.config.shutdown_timeout;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    serve_or_refuse(&app, stream);
                }
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if app.active() == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    if let Some(flushing) = flushing {
        let _ = flushing.await;
    }
    if let Some(store) = app.rooms.store().cloned() {
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
    }
    tracing::info!(remaining = app.active(), "shutdown complete");
    Ok(())
}

/// Serves only `GET /metrics` on a separate listener (`--metrics-listen`).
pub async fn run_metrics(listener: TcpListener, app: Arc<App>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = if req.uri().path() == "/metrics" {
                    metrics_response(&app)
                } else {
                    json_error(ErrorCode::NotFound, "this listener serves /metrics only")
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

/// The largest request head accepted (hyper answers 431 beyond it) and the most each HTTP
/// connection buffers (hyper's default is ~400 KB), so that `--max-http-connections` bounds what
/// connections hold besides the bodies counted by `--max-body-bytes-in-flight`.
pub const MAX_HTTP_BUFFER: usize = 64 * 1024;

/// A lingering close stops after this long without a byte from the client (nginx's
/// `lingering_timeout`), or after `--body-timeout` in all.
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// A lingering close discards at most this many times `--max-message-bytes` (32 MiB by default:
/// enough for a client that sends a 16 MiB body to a 1 MiB limit to read its 413).
const LINGER_BYTES_PER_MESSAGE_BYTE: u64 = 32;

/// The answer to a connection over `--max-http-connections`.
static TOO_MANY_HTTP: LazyLock<Vec<u8>> = LazyLock::new(|| {
    http_api::raw_json_error(
        ErrorCode::TooManyConnections,
        "the server has --max-http-connections open; retry later",
    )
});

/// Serves a newly accepted connection, or refuses it past `--max-http-connections`: the refusal
/// is written only if the socket takes it at once, and the socket is closed without reading, so
/// a refused connection costs no task (a client that had already sent its request may see a
/// reset instead of the 503).
fn serve_or_refuse(app: &Arc<App>, stream: TcpStream) {
    let Some(slot) = app.http_slot() else {
        Refusal::MaxHttpConnections.count();
        let _ = stream.try_write(&TOO_MANY_HTTP);
        return;
    };
    let _ = stream.set_nodelay(true);
    tokio::spawn(serve_http(app.clone(), stream, slot));
}

/// Serves one HTTP/1 connection (which may upgrade to a WebSocket), holding its place under
/// `--max-http-connections` until it closes, or until it upgrades (this returns then).
async fn serve_http(app: Arc<App>, stream: TcpStream, _slot: HttpSlot) {
    let _active = app.hold_active();
    let mut shutdown = app.shutdown_signal();
    // The TCP peer: for the admin API's loopback rule, and (as `Peer`, a request extension) for
    // the per-IP limits of `guard`. Never a forwarded header; never logged.
    let addr = stream.peer_addr().ok();
    let peer = addr.map(|a| Peer(a.ip()));
    // Whether to close by lingering: the latest request's body was left unread (hyper then closes
    // the connection after the response). Each request starts clear, as hyper reads the next
    // request only once the previous body is done; an upgrade clears it, as the socket then
    // belongs to the WebSocket.
    let unread = Arc::new(AtomicBool::new(false));
    // Signalled as each request begins (a stored permit once one has): see the shutdown arm below.
    let begun = Arc::new(Notify::new());
    // A second handle on the socket, to linger on once hyper has closed its own. (The socket
    // itself must go to hyper: `connection` takes the upgraded `TcpStream` back from it.)
    let spare = second_handle(&stream);
    {
        let svc_app = app.clone();
        let svc_unread = unread.clone();
        let svc_begun = begun.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            svc_begun.notify_one();
            svc_unread.store(false, Ordering::Release);
            let mut req = req.map(|body| RequestBody::new(body, svc_unread.clone()));
            if let Some(peer) = peer {
                req.extensions_mut().insert(peer);
            }
            let (app, unread) = (svc_app.clone(), svc_unread.clone());
            async move {
                let mut resp = route(app.clone(), req, addr).await?;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    unread.store(false, Ordering::Release);
                } else if app.is_draining() {
                    // Say so, so the client does not reuse a connection about to close.
                    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(app.config.handshake_timeout)
            .max_header_size(MAX_HTTP_BUFFER)
            .max_buf_size(MAX_HTTP_BUFFER)
            // While draining, answer one request per connection and close it.
            .keep_alive(!app.is_draining())
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let ended = |r: Result<(), hyper::Error>| {
            if let Err(e) = r {
                if e.is_timeout() {
                    // A client that did not finish its request headers within --handshake-timeout.
                    Refusal::HandshakeTimeout.count();
                }
                tracing::debug!(error = %e, "http connection ended");
            }
        };
        tokio::select! {
            r = conn.as_mut() => ended(r),
            _ = shutdown.changed() => {
                // hyper's graceful shutdown closes a connection that has not begun a request as
                // idle. One accepted just before the drain may have its first request on the way:
                // wait for it to begin (--handshake-timeout bounds that), so it is answered with
                // `Connection: close` instead of dropped. A keep-alive connection that has served
                // a request holds a permit and closes at once when idle, as before.
                let finish = async {
                    tokio::select! {
                        r = conn.as_mut() => return ended(r),
                        () = begun.notified() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(app.config.shutdown_timeout, conn.as_mut()).await;
                };
                let _ = tokio::time::timeout(app.config.shutdown_timeout, finish).await;
            }
        }
    }
    // hyper is done with the connection. Unless it was upgraded (the WebSocket then owns the
    // socket, and dropping `spare` here leaves it open), the socket closes when `spare` drops.
    if unread.load(Ordering::Acquire)
        && let Some(spare) = spare
        && let Ok(stream) = TcpStream::from_std(spare)
    {
        linger(stream, &app.config).await;
    }
}

/// A second handle on `stream`'s socket (a duplicated descriptor): the socket stays open until
/// both are closed. `None` when the descriptor cannot be duplicated (then there is no lingering).
#[cfg(unix)]
fn second_handle(stream: &TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    stream.as_fd().try_clone_to_owned().ok().map(std::net::TcpStream::from)
}

#[cfg(not(unix))]
fn second_handle(_: &TcpStream) -> Option<std::net::TcpStream> {
    None
}

/// A lingering close (as nginx does): the response has been sent; shut the write side (the
/// client reads the response, then end-of-stream), then read and discard whatever the client is
/// still sending, so that it can finish writing its request and read the response, until it
/// closes, or for at most `--body-timeout` (and [`LINGER_IDLE`] without a byte), or
/// [`LINGER_BYTES_PER_MESSAGE_BYTE`] × `--max-message-bytes`. Only then is the socket closed.
async fn linger(mut stream: TcpStream, config: &Config) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + config.body_timeout;
    let idle = LINGER_IDLE.min(config.body_timeout);
    let mut left = config.max_message_bytes.saturating_mul(LINGER_BYTES_PER_MESSAGE_BYTE);
    let mut buf = vec![0; 8 * 1024];
    while left > 0 {
        let wake = deadline.min(tokio::time::Instant::now() + idle);
        match tokio::time::timeout_at(wake, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
            // The client closed, the socket failed, or time is up.
            _ => break,
        }
    }
}

async fn route(
    app: Arc<App>,
    req: Request<RequestBody>,
    peer: Option<std::net::SocketAddr>,
) -> Result<Response<Body>, Infallible> {
    // The Origin decides before anything else: a refused one touches no room.
    let path = req.uri().path();
    let admin = path.starts_with("/v1/admin/");
    let origin = if admin {
        app.guard.check_admin_origin(req.headers())
    } else {
        app.guard.check_origin(req.headers())
    };
    let mut resp = if guard::is_preflight(req.method(), req.headers()) {
        preflight(&origin)
    } else if origin == OriginCheck::Refused && (admin || path.starts_with("/v1/rooms/")) {
        json_error(ErrorCode::OriginNotAllowed, "this Origin is not in the server's --allowed-origins")
    } else {
        dispatch(app, req, peer).await
    };
    if let OriginCheck::Allowed(origin) = origin
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        guard::add_cors(resp.headers_mut(), origin);
    }
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(m::HTTP_REQUESTS, "status" => class).increment(1);
    Ok(resp)
}

/// The answer to a CORS preflight: 204 with the CORS headers for an allowed origin, else 403.
fn preflight(origin: &OriginCheck) -> Response<Body> {
    match origin {
        OriginCheck::Allowed(origin) => {
            let mut resp = Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .expect("static response");
            guard::add_preflight(resp.headers_mut(), origin.clone());
            resp
        }
        _ => json_error(ErrorCode::OriginNotAllowed, "this Origin is not in the server's --allowed-origins"),
    }
}

/// A 429 with `Retry-After` (whole seconds) and the JSON error body.
fn rate_limited(r: &RateLimited) -> Response<Body> {
    let mut resp = json_error(ErrorCode::RateLimited, &r.message());
    resp.headers_mut().insert(header::RETRY_AFTER, r.retry_after_secs().into());
    resp
}

/// `resp`, closing the connection after it when the request's body is left unread.
fn closing_if_body(resp: Response<Body>, has_body: bool) -> Response<Body> {
    let mut resp = resp;
    if has_body {
        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    resp
}

async fn dispatch(
    app: Arc<App>,
    mut req: Request<RequestBody>,
    peer: Option<std::net::SocketAddr>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, p) if web::find(p).is_some() => asset(web::find(p).expect("matched")),
        (Method::GET, "/healthz") => http_api::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::GET, "/readyz") if app.is_draining() => {
            json_error(ErrorCode::Draining, "the server is shutting down")
        }
        (Method::GET, "/readyz") => http_api::json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        (Method::GET, "/metrics") => metrics_response(&app),
        (Method::GET, "/test/echo") if app.config.test_echo_endpoint => match connection::echo(app, &mut req)
        {
            Ok(resp) => resp.map(|_| Full::new(Bytes::new())),
            Err(e) => json_error(ErrorCode::BadUpgrade, &e.to_string()),
        },
        (_, p) if p.starts_with("/v1/admin/") => {
            admin::handle(&app, req, peer, &p["/v1/admin".len()..]).await
        }
        _ => match path.strip_prefix("/v1/rooms/") {
            Some(rest) => room_route(app, req, rest, peer).await,
            None => json_error(ErrorCode::NotFound, &format!("no route for {method} {path}")),
        },
    }
}

fn asset(a: &'static web::Asset) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, a.content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(a.body.as_bytes())))
        .expect("static response")
}

/// Renders `/metrics` (the gauges are kept current by the sweep and by RAII guards).
pub fn metrics_response(app: &App) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(app.metrics.render())))
        .expect("static response")
}

async fn room_route(
    app: Arc<App>,
    req: Request<RequestBody>,
    rest: &str,
    socket_peer: Option<std::net::SocketAddr>,
) -> Response<Body> {
    if app.is_draining() {
        return json_error(ErrorCode::Draining, "the server is shutting down");
    }
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(room_id) = RoomId::parse(name) else {
        return json_error(ErrorCode::BadRoom, "room name must be 1-128 characters of A-Z a-z 0-9 . _ - :");
    };
    match (req.method().clone(), tail) {
        (Method::GET, "ws") => {
            // A room that cannot be loaded (unreadable, or another node's) is refused with 4012
            // after the upgrade, without being looked up again on this async worker.
            let loaded = if fastwebsockets::upgrade::is_upgrade_request(&req) {
                app.load_stored(&room_id).await
            } else {
                Ok(())
            };
            websocket(app, req, room_id, loaded)
        }
        (_, "ws") => json_error(ErrorCode::MethodNotAllowed, "use GET with a WebSocket upgrade"),
        // Deleting a room (its stored data too) is the admin API's delete, with its checks.
        (Method::DELETE, "") => admin::handle(&app, req, socket_peer, &format!("/rooms/{room_id}")).await,
        _ => {
            let has_body = guard::has_body(req.method(), req.headers());
            let peer = req.extensions().get::<Peer>().map(|p| p.0);
            if let Err(r) = app.guard.check_http(req.headers(), peer) {
                return closing_if_body(rate_limited(&r), has_body);
            }
            // Only JSON bodies: a cross-site form or `text/plain` POST (sent without a CORS
            // preflight) cannot write.
            if has_body && !guard::is_json(req.headers()) {
                let message = "request bodies must be Content-Type: application/json";
                return closing_if_body(json_error(ErrorCode::UnsupportedMediaType, message), true);
            }
            if let Err(e) = app.load_stored(&room_id).await {
                return closing_if_body(json_error(e.code(), &e.to_string()), has_body);
            }
            http_api::handle(&app, req, &room_id, tail).await
        }
    }
}

fn websocket(
    app: Arc<App>,
    mut req: Request<RequestBody>,
    room_id: RoomId,
    loaded: Result<(), NoNewRoom>,
) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json_error(
            ErrorCode::UpgradeRequired,
            "this endpoint speaks WebSocket: send an Upgrade request",
        );
    }
    let mut from = ResumeFrom::default();
    let mut token = None;
    for (k, v) in query_pairs(&req) {
        match k.as_str() {
            // Never logged: it is a credential.
            "token" => token = Some(v),
            "session" => from.session = Some(v),
            "epoch" => from.epoch = Some(v),
            "since" => match v.parse() {
                Ok(n) => from.since = Some(Rev(n)),
                Err(_) => return json_error(ErrorCode::BadSince, "since must be a revision number"),
            },
            _ => {}
        }
    }
    // The per-IP place is taken like the server-wide slot below, and released when the connection
    // (or the failed upgrade) ends.
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let ip_slot = match app.guard.admit_ip(peer) {
        Ok(slot) => slot,
        Err(r) => return rate_limited(&r),
    };
    // The slot is taken here and moved into the connection's task, so concurrent upgrades can
    // never overshoot --max-connections.
    let Some(slot) = app.websocket_slot() else {
        Refusal::MaxConnections.count();
        return json_error(ErrorCode::TooManyConnections, "the server is at --max-connections");
    };
    // Who is connecting, checked before admission so a refused client creates no room: a
    // missing or invalid token is closed with 4401, a room it grants nothing in with 4403.
    let identity = match app.auth.from_request(req.headers(), token.as_deref()) {
        Ok(identity) if identity.permission(&room_id).is_some() => Ok(identity),
        Ok(_) => Err(CloseReason::Forbidden),
        Err(e) => {
            tracing::debug!(room = %room_id, error = %e, "websocket token refused");
            Err(CloseReason::Unauthorized)
        }
    };
    drop(token);
    // A refused connection still upgrades and is closed with a code saying why (4005, 4006,
    // 4401, 4403): browsers cannot read an HTTP status from a failed WebSocket handshake.
    let admission = identity.and_then(|identity| {
        if loaded.is_err() {
            return Err(CloseReason::RoomUnreadable);
        }
        let lease = app.rooms.admit(&room_id, app.config.max_room_clients).map_err(|refused| match refused {
            Refused::RoomFull => {
                Refusal::MaxRoomClients.count();
                CloseReason::RoomFull
            }
            Refused::NoNewRoom(NoNewRoom::TooManyRooms) => {
                Refusal::MaxRooms.count();
                CloseReason::TooManyRooms
            }
            Refused::NoNewRoom(NoNewRoom::MemoryFull) => {
                Refusal::MaxMemory.count();
                m::MemoryRefusal::Room.count();
                CloseReason::MemoryFull
            }
            Refused::NoNewRoom(NoNewRoom::Unreadable) => CloseReason::RoomUnreadable,
        });
        lease.map(|lease| (lease, identity))
    });
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return json_error(ErrorCode::BadUpgrade, &e.to_string()),
    };
    tokio::spawn(async move {
        let held = (slot, ip_slot, app.hold_active());
        match tokio::time::timeout(app.config.handshake_timeout, upgrade).await {
            Ok(Ok(ws)) => match admission {
                Ok((lease, identity)) => {
                    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
                    connection::serve(ws, app.clone(), lease, from, identity, held).await;
                }
                Err(reason) => connection::refuse(ws, reason).await,
            },
            Ok(Err(e)) => tracing::debug!(error = %e, "websocket upgrade failed"),
            Err(_) => {
                Refusal::HandshakeTimeout.count();
                tracing::debug!("websocket upgrade timed out");
            }
        }
    });
    resp.map(|_| Full::new(Bytes::new()))
}

/// Once a second: room gauges, ring occupancy, memory, idle-room eviction, and the cluster's
/// roll calls of presence.
async fn sweep(app: Arc<App>, cluster: Option<Arc<crate::cluster::Cluster>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = app.shutdown_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Stored rooms are evicted (and reloaded on demand); memory-only ones dropped.
        let ttl = if app.rooms.store().is_some() { app.config.evict_idle } else { app.config.room_idle_ttl };
        if !ttl.is_zero() {
            // Evicting closes the rooms' files (a flush): off the async workers.
            let a = app.clone();
            let dropped = tokio::task::spawn_blocking(move || a.rooms.evict_idle(ttl)).await.unwrap_or(0);
            if dropped > 0 {
                metrics::counter!(m::ROOMS_EVICTED).increment(dropped as u64);
            }
        }
        app.unload_moved();
        if let Some(cluster) = &cluster {
            cluster.sweep();
        }
        let (mut entries, mut capacity, mut full) = (0usize, 0usize, 0usize);
        for room in app.rooms.all() {
            // Counts of peers that come and go unlisted, at most a second old (see `presence`).
            room.presence.publish_count();
            let (len, cap) = room.ring_occupancy();
            entries += len;
            capacity += cap;
            full += usize::from(len == cap);
        }
        metrics::gauge!(m::ROOMS).set(app.rooms.len() as f64);
        metrics::gauge!(m::RING_ENTRIES).set(entries as f64);
        metrics::gauge!(m::RING_CAPACITY).set(capacity as f64);
        metrics::gauge!(m::RING_FULL_ROOMS).set(full as f64);
        app.sweep_memory();
        app.guard.sweep();
    }
}
