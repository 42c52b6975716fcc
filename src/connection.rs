//! One WebSocket connection: a reader loop and a writer loop, in one task. Each client message is
//! handled in [`handle_message`].
//!
//! The read side is `inbound::Inbound` (in `connection/inbound.rs`): frames in, whole messages
//! out, RFC 6455's framing rules enforced, pings and close frames answered. The room connection's
//! loop decodes each message ([`crate::protocol`]) and hands changes to the room through the one
//! commit path ([`App::commit`]), presence and broadcasts to the room's two lanes; its replies
//! (rejects, pongs, errors, close requests) go to the writer ([`crate::writer`]) through a small
//! bounded channel, so a client that sends without reading is slowed down by TCP, never buffered
//! without bound. The test-only echo endpoint ([`echo`]) reads through the same `Inbound` and
//! writes through the same writer code, so the Autobahn TestSuite run against it tests this path.
//!
//! `read_frame` is not cancel-safe, so it is never raced in a `select!` loop: the reader and
//! writer are two futures polled side by side; when one ends, the other gets a bounded time
//! ([`CLOSE_GRACE`]) to finish its close handshake. Once the writer has sent our close frame, the
//! reader drops whatever messages still arrive (a change read then is never applied, since its ack
//! could not be sent) until the client's close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, Role, WebSocket, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::app::{self, App};
use crate::auth::{Identity, Permission};
use crate::close::{CLOSE_GRACE, CloseReason};
use crate::guard::{ConnLimits, RateLimited};
use crate::ids::ClientReqId;
use crate::metrics::{self as m, Refusal};
use crate::protocol::{self, ClientMsg, ErrorCode, Reject};
use crate::room::{ChangeRequest, Extras, Room};
use crate::rooms::Lease;
use crate::session::{AttachError, Attached, ResumeFrom, Session, SessionState};
use crate::writer::{self, Outgoing, Signals, Slot, SlotIo, TokenExpiry, Writer};

mod inbound;

use inbound::{Inbound, Received, Socket};

/// The socket's write side.
type WriteIo = tokio::net::tcp::OwnedWriteHalf;

/// How the connection ended, as far as presence is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client sent a (valid) close frame: leave at once.
    Clean,
    /// Dropped, timed out, or closed by us: leave after the grace period.
    Abrupt,
    /// Taken over by another connection: not a leave.
    TakenOver,
}

/// Takes the TCP stream back from hyper and splits it into owned halves, so reading and writing
/// share no lock (`tokio::io::split` would put one on every read and write). The read half gets
/// no fastwebsockets reader (and so no read buffer) until it has something to read: see
/// `inbound`. A room connection's write half goes to its [`Slot`], which the room's write pass
/// writes through too.
fn into_halves(ws: WebSocket<TokioIo<Upgraded>>) -> Option<(Socket, WriteIo)> {
    let parts = ws.into_inner().into_inner().downcast::<TokioIo<TcpStream>>().ok()?;
    let (read, write) = parts.io.into_inner().into_split();
    // `read_buf` is a view into hyper's whole read buffer; keeping it would pin that buffer for
    // the connection's life. Copy out the (usually empty) rest instead.
    let early =
        if parts.read_buf.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&parts.read_buf) };
    Some((Socket::new(early, read), write))
}

/// The WebSocket write side over `io`. Every frame with a payload goes out as one `writev` of
/// its header and payload, so the writer keeps no copy buffer (fastwebsockets would copy frames
/// of up to 1 KiB into one it keeps for the connection's life).
fn ws_write<S: tokio::io::AsyncWrite + Unpin>(io: S) -> WebSocketWrite<S> {
    let (_, mut write) = fastwebsockets::after_handshake_split(tokio::io::empty(), io, Role::Server);
    write.set_writev_threshold(0);
    write
}

/// Closes an upgraded WebSocket at once with `reason` (a limit the upgrade request hit), so
/// browser clients, which cannot see an HTTP status, learn why.
pub async fn refuse(ws: WebSocket<TokioIo<Upgraded>>, reason: CloseReason) {
    match into_halves(ws) {
        Some((_, write)) => close_now(ws_write(write), reason).await,
        None => metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1),
    }
}

/// Writes the close frame of a connection refused before it started, and counts it.
async fn close_now(mut write: WebSocketWrite<WriteIo>, reason: CloseReason) {
    let frame = Frame::close(reason.close_code(), reason.text().as_bytes());
    let _ = tokio::time::timeout(CLOSE_GRACE, write.write_frame(frame)).await;
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
}

/// Serves an upgraded WebSocket until it closes. `lease` is its admission to the room;
/// `identity` is who the request's token names (at least `read` in this room, checked by the
/// caller; [`Identity::open`] in open mode). `held` is what must stay held while the connection
/// lives (its places under the connection limits, its count in [`App::active`]).
///
/// Once admitted, the connection runs in a task of its own ([`Open::run`]), which holds only
/// what it needs: its future is the largest thing every idle connection keeps, and this task's
/// (the upgrade, the admission, the refusals' close frames) would add to it for its whole life.
pub async fn serve<H: Send + 'static>(
    ws: WebSocket<TokioIo<Upgraded>>,
    app: Arc<App>,
    lease: Lease,
    from: ResumeFrom,
    identity: Identity,
    held: H,
) {
    let gauge = OpenGauge::new();
    let Some((read, write)) = into_halves(ws) else {
        tracing::error!("upgraded connection is not a TCP stream");
        return;
    };
    match Open::new(read, write, app, lease, from, identity) {
        Ok(open) => drop(tokio::spawn(open.run(held, gauge))),
        Err((write, reason)) => close_now(ws_write(write), reason).await,
    }
}

/// An admitted connection, attached to its session and present in its room, before its reader
/// and writer start.
struct Open {
    app: Arc<App>,
    lease: Lease,
    session: Arc<Session>,
    /// This connection's number within its session.
    conn: u64,
    resumed: bool,
    read: Socket,
    write: WriteIo,
    from: ResumeFrom,
    signals: Signals,
    replies: writer::ReplySender,
    permission: Permission,
}

impl Open {
    /// Attaches the session and joins the room's presence, or says why the connection must be
    /// closed at once (with its write half, to send the close frame on).
    fn new(
        read: Socket,
        write: WriteIo,
        app: Arc<App>,
        lease: Lease,
        from: ResumeFrom,
        identity: Identity,
    ) -> Result<Open, (WriteIo, CloseReason)> {
        let room = lease.room();
        let user: Option<Arc<str>> = identity.user.as_deref().map(Arc::from);
        let attached = match app.sessions.attach(room, from.session.as_deref(), user.as_ref()) {
            Ok(attached) => attached,
            // Over --max-sessions with every session connected: nothing can make room for this one.
            Err(AttachError::Full(_)) => {
                Refusal::MaxSessions.count();
                return Err((write, CloseReason::TooManySessions));
            }
            Err(AttachError::OtherUser) => return Err((write, CloseReason::OtherUser)),
        };
        // An admin delete may have retired the room since this connection was admitted. The
        // delete retires the room before it closes the room's sessions, and this check follows
        // the attach, so a connection is either found by the delete or sees the room retired
        // here: none is left in a room nobody sees.
        if room.is_retired() {
            app.sessions.kick(&attached.session, CloseReason::RoomDeleted, true);
            return Err((write, CloseReason::RoomDeleted));
        }
        let Attached { session, conn, resumed, kicked } = attached;
        app.attach_room(room);
        room.presence.join_as(session.client, session.user.clone());
        let (replies, rx) = writer::reply_channel();
        let expiry = identity.exp.map(|exp| TokenExpiry::new(exp, app.auth.leeway()));
        let signals = Signals { replies: rx, kicked, shutdown: app.shutdown_signal(), expiry };
        let permission = identity.permission(room.id()).unwrap_or(Permission::Read);
        Ok(Open { app, lease, session, conn, resumed, read, write, from, signals, replies, permission })
    }

    /// Runs the reader and the writer side by side until the connection ends, then leaves the
    /// session (and so the room's presence). Not an `async fn`: one would keep `self` twice in
    /// its future (as the argument and as the local it moves into); the block below uses its
    /// fields in place.
    fn run<H: Send + 'static>(self, held: H, gauge: OpenGauge) -> impl Future<Output = ()> + Send + 'static {
        let mut open = self;
        let slot = Slot::new(open.session.clone(), Some(open.write));
        let from = Box::new(open.from);
        // Whenever the read side would wait, the write pass takes what this connection committed.
        open.read.deliver_before_waiting(open.lease.room().clone());
        async move {
            // Held (captured) until the connection ends.
            let _held = (&held, &gauge);
            let room = open.lease.room();
            let mut writer = Writer::with_slot(
                ws_write(SlotIo(slot.clone())),
                &open.app.writer_config,
                &open.session,
                slot,
            )
            .heard(&open.read.heard);
            let writer_fut = std::pin::pin!(writer.run(from, open.resumed, &mut open.signals));
            let mut reader = Reader {
                app: &open.app,
                room,
                session: &open.session,
                conn: open.conn,
                permission: open.permission,
                limits: ConnLimits::new(&open.app.config),
            };
            let mut inbound = Inbound::new(&open.read, &open.app.config, open.replies);
            let reader_fut = std::pin::pin!(read_loop(&mut inbound, &mut reader));
            let (end, reason) = side_by_side(reader_fut, writer_fut).await;
            let end = match reason {
                CloseReason::TakenOver => End::TakenOver,
                // Closed by the writer for the idle timeout: whatever the client answers, it had
                // gone quiet (a leave after the grace period, as for a drop).
                CloseReason::Idle => End::Abrupt,
                _ => end,
            };
            let label = if end == End::Clean { CloseReason::Normal.label() } else { reason.label() };
            metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => label).increment(1);
            if end != End::TakenOver {
                open.app.sessions.detach(&open.session, open.conn, end == End::Clean);
            }
        }
    }
}

/// Upgrades a request to the test-only echo endpoint (`GET /test/echo`, served only with
/// `--test-echo-endpoint`, for the Autobahn TestSuite run in scripts/test.sh) and serves it in its
/// own task; returns the 101 response.
///
/// # Errors
/// fastwebsockets' error for a request that is not a valid WebSocket upgrade.
pub fn echo<B>(app: Arc<App>, req: &mut hyper::Request<B>) -> Result<hyper::Response<Empty>, WebSocketError> {
    let (resp, upgrade) = fastwebsockets::upgrade::upgrade(req)?;
    tokio::spawn(async move {
        let _active = app.hold_active();
        if let Ok(Ok(ws)) = tokio::time::timeout(app.config.handshake_timeout, upgrade).await {
            serve_echo(ws, app.clone()).await;
        }
    });
    Ok(resp)
}

/// The body of the upgrade response.
pub type Empty = http_body_util::Empty<Bytes>;

/// Serves the echo endpoint: every message is read through the same [`Inbound`] as a room
/// connection's and written back through the same writer code. No room, no session, no welcome.
async fn serve_echo(ws: WebSocket<TokioIo<Upgraded>>, app: Arc<App>) {
    let _open = OpenGauge::new();
    let Some((read, write)) = into_halves(ws) else {
        tracing::error!("upgraded connection is not a TCP stream");
        return;
    };
    let (tx, rx) = writer::reply_channel();
    let writer_fut = std::pin::pin!(writer::run_echo(
        ws_write(write),
        app.config.write_timeout,
        rx,
        app.shutdown_signal()
    ));
    let reader_fut = std::pin::pin!(echo_loop(Inbound::new(&read, &app.config, tx), app.config.idle_timeout));
    let (end, reason) = side_by_side(reader_fut, writer_fut).await;
    let label = if end == End::Clean { CloseReason::Normal.label() } else { reason.label() };
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => label).increment(1);
}

/// Runs a connection's reader and writer side by side; when one ends, the other gets
/// [`CLOSE_GRACE`] to finish its part of the close. Neither future is dropped before then, so
/// the reader's `read_frame` is never cancelled mid-frame while the connection lives. The grace
/// timers are boxed: they run once per connection, and inline they would add to the future every
/// connection holds for its life.
async fn side_by_side(
    mut reader: Pin<&mut impl Future<Output = End>>,
    mut writer: Pin<&mut impl Future<Output = CloseReason>>,
) -> (End, CloseReason) {
    tokio::select! {
        end = reader.as_mut() => {
            // Let the writer send whatever close the reader queued.
            let reason = Box::pin(tokio::time::timeout(CLOSE_GRACE, writer)).await.ok();
            (end, reason.unwrap_or(CloseReason::Gone))
        }
        reason = writer.as_mut() => {
            // Give the client a moment to answer our close frame.
            let end = Box::pin(tokio::time::timeout(CLOSE_GRACE, reader)).await.unwrap_or(End::Abrupt);
            (end, reason)
        }
    }
}

/// Counts the connection in the open-connections gauge while it lives.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!(m::CONNECTIONS_OPEN).increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// The room connection's reader: every message to [`handle_message`], its reply to the writer.
/// `permission` is what the connection's token grants in this room (a `refresh` may change it).
/// The connection's rate limits are checked here, before anything is decoded or committed; past
/// its error budget the connection is closed with 4429.
/// Borrows its state: by value, an `async fn` keeps it twice in its future.
async fn read_loop(inbound: &mut Inbound<'_>, reader: &mut Reader<'_>) -> End {
    let room = reader.room;
    // Whatever this connection committed reaches the others even if the loop ends right after.
    let _deliver = DeliverOnExit(room);
    loop {
        // The message and its reply live in this block only, so the wait for the writer below
        // keeps neither (an idle connection's future has room for what lives across a wait).
        let sending = {
            let message = match inbound.next().await {
                Ok(message) => message,
                Err(end) => return end,
            };
            let over_bytes = reader.limits.inbound(message.payload.len()).err();
            let reply = if message.binary {
                let code = ErrorCode::BadMessage;
                metrics::counter!(m::DECODE_ERRORS, "code" => code.as_str()).increment(1);
                Some(Outgoing::Text(protocol::error_msg(
                    code,
                    "binary frames are not supported; send JSON text",
                    None,
                )))
            } else {
                match handle_message(&message.payload, reader, over_bytes) {
                    Ok(reply) => reply,
                    // Taken over: this connection must not act for the session any more.
                    Err(Superseded) => return End::TakenOver,
                }
            };
            // A client that sends without pause never lets a read wait: its changes still go out.
            inbound.message_handled();
            reply.map(|reply| {
                // The reply may wait for the writer (a full queue): what was committed must not.
                room.deliver();
                inbound.reply(reply)
            })
        };
        if let Some(sending) = sending {
            // Fails only when the writer has gone; `next` then awaits the client's close.
            let _ = sending.await;
        }
        if reader.limits.over_budget() {
            let _ = inbound.reply(Outgoing::Close(CloseReason::RateLimited)).await;
            return End::Abrupt;
        }
    }
}

/// Runs the write pass when the read loop ends, for what it committed last.
struct DeliverOnExit<'a>(&'a Room);

impl Drop for DeliverOnExit<'_> {
    fn drop(&mut self) {
        self.0.deliver();
    }
}

/// The echo endpoint's reader: every message back as it came. It has no pings and no writer
/// timer, so it keeps the idle timeout itself.
async fn echo_loop(mut inbound: Inbound<'_>, idle_timeout: Duration) -> End {
    loop {
        let Received { binary, payload } = match tokio::time::timeout(idle_timeout, inbound.next()).await {
            Ok(Ok(message)) => message,
            Ok(Err(end)) => return end,
            Err(_) => return inbound.idle().await,
        };
        let _ = inbound.reply(Outgoing::Echo { binary, payload }).await;
    }
}

/// The connection no longer owns its session.
struct Superseded;

/// What the read loop knows of its connection, for [`handle_message`].
struct Reader<'a> {
    app: &'a App,
    room: &'a Room,
    session: &'a Session,
    /// This connection's number within its session (see `SessionState::owned_by`).
    conn: u64,
    /// What the token grants in this room; a `refresh` replaces it.
    permission: Permission,
    limits: ConnLimits<'a>,
}

/// Handles one text message from a client; returns the reply for the sender, if any.
/// `over_bytes` says the message went over `--rate-inbound-bytes`: it is then only answered. A
/// change or broadcast is checked against `--rate-changes` before it reaches the room.
/// Synchronous: locks taken here are released before the caller awaits.
fn handle_message(
    text: &[u8],
    reader: &mut Reader<'_>,
    over_bytes: Option<RateLimited>,
) -> Result<Option<Outgoing>, Superseded> {
    let Reader { app, room, session, conn, ref mut permission, ref limits } = *reader;
    let msg = match protocol::decode_client(text) {
        Ok(msg) => msg,
        Err(e) => {
            metrics::counter!(m::DECODE_ERRORS, "code" => e.code().as_str()).increment(1);
            return Ok(Some(Outgoing::Text(protocol::error_msg(e.code(), &e.message, None))));
        }
    };
    let limited = match &msg {
        ClientMsg::Change(_) | ClientMsg::Broadcast { .. } => over_bytes.or_else(|| limits.change().err()),
        _ => over_bytes,
    };
    if let Some(limited) = limited {
        // Not processed: a change keeps its clientReqId unused, to be sent again.
        let id = if let ClientMsg::Change(c) = &msg { Some(c.client_req_id) } else { None };
        let ms = limited.retry_after_ms();
        return Ok(Some(Outgoing::Text(protocol::rate_limited_msg(
            id,
            &limited.message(),
            room.rev().0,
            ms,
        ))));
    }
    let st = session.state.lock();
    if !st.owned_by(conn) {
        return Err(Superseded);
    }
    if let ClientMsg::Refresh { token } = msg {
        drop(st);
        return Ok(Some(refresh(&token, app, room, session, permission)));
    }
    Ok(handle_owned(msg, app, room, session, st, *permission).map(Outgoing::Text))
}

/// A `refresh`: the new token must verify and name the same user; its permissions apply at once.
/// A bad token gets an `error` (the connection carries on until its current token expires);
/// another user's token, or one without read in this room, closes the connection with 4403.
fn refresh(token: &str, app: &App, room: &Room, session: &Session, permission: &mut Permission) -> Outgoing {
    if !app.auth.tokens_required() {
        let message = "this server runs without tokens (open mode): there is nothing to refresh";
        return Outgoing::Text(protocol::error_msg(ErrorCode::BadMessage, message, None));
    }
    let identity = match app.auth.verify(token) {
        Ok(identity) => identity,
        Err(e) => {
            let message = format!("refresh refused: {e}; the current token still holds until it expires");
            return Outgoing::Text(protocol::error_msg(ErrorCode::Unauthorized, &message, None));
        }
    };
    if identity.user.as_deref() != session.user.as_deref() {
        return Outgoing::Close(CloseReason::OtherUser);
    }
    let (Some(granted), Some(exp)) = (identity.permission(room.id()), identity.exp) else {
        return Outgoing::Close(CloseReason::Forbidden);
    };
    *permission = granted;
    let expiry = TokenExpiry::new(exp, app.auth.leeway());
    Outgoing::Refreshed { frame: protocol::refreshed_msg(exp), expiry }
}

/// [`handle_message`] for a connection that owns its session (`st` is its locked state; it is
/// held across a commit so a snapshot never reports a lastClientReqId its revision lacks).
fn handle_owned(
    msg: ClientMsg,
    app: &App,
    room: &Room,
    session: &Session,
    mut st: parking_lot::MutexGuard<'_, SessionState>,
    permission: Permission,
) -> Option<Bytes> {
    match msg {
        ClientMsg::Ping { t } => Some(protocol::pong_msg(&t)),
        ClientMsg::Change(c) => {
            if c.client_req_id <= st.last_req {
                let msg = format!(
                    "clientReqId {} was already processed (lastClientReqId {}); not applied again",
                    c.client_req_id.0, st.last_req.0
                );
                return Some(protocol::error_msg(ErrorCode::Duplicate, &msg, Some(c.client_req_id)));
            }
            let processed = std::mem::replace(&mut st.last_req, c.client_req_id);
            if permission < Permission::Write {
                let message = "your token grants only read in this room: the change was not applied";
                return Some(refuse_change(room, c.client_req_id, ErrorCode::Forbidden, message.into()));
            }
            if let Some((code, message)) = c.refusal {
                return Some(refuse_change(room, c.client_req_id, code, message));
            }
            let req = match (c.mode, c.ops) {
                (Ok(mode), Ok(ops)) => ChangeRequest {
                    author: session.client,
                    user: session.user.clone(),
                    client_req_id: Some(c.client_req_id),
                    base_rev: c.base_rev,
                    mode,
                    ops,
                    // Anyone's change may be reverted only with a token granting admin (in open mode
                    // everyone holds admin, so there it is one's own changes only).
                    extras: Extras {
                        kind: c.kind,
                        meta: c.meta,
                        may_revert_any: session.user.is_some() && permission >= Permission::Admin,
                        session: Some(session.token.clone()),
                        idempotency: None,
                    },
                },
                (Err(message), _) => {
                    return Some(refuse_change(room, c.client_req_id, ErrorCode::Invalid, message));
                }
                (_, Err(e)) => {
                    return Some(refuse_change(room, c.client_req_id, e.clone().into(), e.to_string()));
                }
            };
            // The session lock is held across the commit so a snapshot never reports a
            // lastClientReqId its revision does not contain yet.
            let result = app.submit(&session.room, req);
            if matches!(&result, Err(r) if r.code == ErrorCode::Draining) {
                // Not processed: the client sends it again after reconnecting, with this id.
                st.last_req = processed;
            }
            drop(st);
            // The write pass runs once the socket has nothing more to read (see `inbound`).
            result.err().map(|r| protocol::reject_msg(c.client_req_id, &r))
        }
        ClientMsg::Presence { data } => {
            drop(st);
            metrics::counter!(m::PRESENCE_UPDATES).increment(1);
            let serde_json::Value::Object(patch) = data else { unreachable!("decoder checks") };
            match room.presence.update(session.client, patch, app.config.max_presence_bytes) {
                Ok(()) => None,
                Err(e) => Some(protocol::error_msg(ErrorCode::TooLarge, &e.to_string(), None)),
            }
        }
        ClientMsg::Broadcast { .. } if permission < Permission::Write => {
            drop(st);
            let message = "your token grants only read in this room: the broadcast was not sent";
            Some(protocol::error_msg(ErrorCode::Forbidden, message, None))
        }
        ClientMsg::Broadcast { data } => {
            drop(st);
            metrics::counter!(m::BROADCASTS).increment(1);
            room.broadcasts.send(session.client, &data);
            None
        }
        // Answered by `handle_message` before the session lock is kept.
        ClientMsg::Refresh { .. } => None,
    }
}

/// A `reject` for a change refused before it reached the room (counted like the room's own).
fn refuse_change(room: &Room, id: ClientReqId, code: ErrorCode, message: String) -> Bytes {
    let r = Reject::new(code, message, room.rev().0);
    app::count_reject(&r);
    protocol::reject_msg(id, &r)
}
