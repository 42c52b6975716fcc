//! One WebSocket connection: a reader loop and a writer loop, in one task.
//!
//! The reader decodes each message (`protocol`), and hands changes to the room (`Room::commit`),
//! presence and broadcasts to the room's lane; its replies (rejects, pongs, errors, close codes)
//! go to the writer through a small bounded channel, so a client that sends without reading is
//! slowed down by TCP, never buffered without bound.
//!
//! The writer (`writer.rs`) pulls from the room and sends; see its module doc.
//!
//! `read_frame` is not cancel-safe, so it is never raced in a `select!` loop: the reader and
//! writer are two futures polled side by side; when one ends, the other gets a bounded time to
//! finish its close handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::ids::{ClientReqId, Rev};
use crate::metrics as m;
use crate::protocol::{self, ClientMsg, Reject, RejectCode};
use crate::room::{Change, ChangeRequest, Lease, Room};
use crate::server::App;
use crate::session::{Attached, Session};
use crate::writer::{Outgoing, Writer};

/// The socket's read side, after any bytes hyper had already read past the handshake.
pub(crate) type ReadIo = tokio::io::Chain<std::io::Cursor<Bytes>, tokio::net::tcp::OwnedReadHalf>;
/// The socket's write side.
pub(crate) type WriteIo = tokio::net::tcp::OwnedWriteHalf;

/// Replies queued per connection before the reader waits for the writer.
const CONTROL_QUEUE: usize = 32;
/// Time given to the other half to finish once one half has ended.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// WebSocket close codes ringsync sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: the client closed, we echo.
    Normal,
    /// 1001: idle timeout.
    Idle,
    /// 1001: server shutting down.
    Shutdown,
    /// 1002: WebSocket protocol violation.
    Protocol,
    /// 1007: invalid UTF-8 in a text message.
    BadUtf8,
    /// 1009: message over `--max-message-bytes`.
    TooBig,
    /// 4001: another connection took the session over.
    TakenOver,
    /// 4005: `--max-room-clients` reached.
    RoomFull,
    /// 4006: `--max-rooms` reached and this room does not exist.
    TooManyRooms,
    /// The socket did not accept a write within `--write-timeout` (no close frame can be sent).
    SlowClient,
    /// The socket failed (reset, closed under us).
    Gone,
}

impl CloseReason {
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Normal,
        CloseReason::Idle,
        CloseReason::Shutdown,
        CloseReason::Protocol,
        CloseReason::BadUtf8,
        CloseReason::TooBig,
        CloseReason::TakenOver,
        CloseReason::RoomFull,
        CloseReason::TooManyRooms,
        CloseReason::SlowClient,
        CloseReason::Gone,
    ];

    pub fn close_code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Idle | CloseReason::Shutdown => 1001,
            CloseReason::Protocol => 1002,
            CloseReason::BadUtf8 => 1007,
            CloseReason::TooBig => 1009,
            CloseReason::TakenOver => 4001,
            CloseReason::RoomFull => 4005,
            CloseReason::TooManyRooms => 4006,
            CloseReason::SlowClient | CloseReason::Gone => 1006,
        }
    }
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::Idle => "idle timeout",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Protocol => "protocol error",
            CloseReason::BadUtf8 => "invalid UTF-8",
            CloseReason::TooBig => "message too big",
            CloseReason::TakenOver => "session taken over",
            CloseReason::RoomFull => "room full",
            CloseReason::TooManyRooms => "too many rooms",
            CloseReason::SlowClient => "write timeout",
            CloseReason::Gone => "connection lost",
        }
    }
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "client_close",
            CloseReason::Idle => "idle_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Protocol => "protocol_error",
            CloseReason::BadUtf8 => "bad_utf8",
            CloseReason::TooBig => "too_big",
            CloseReason::TakenOver => "taken_over",
            CloseReason::RoomFull => "room_full",
            CloseReason::TooManyRooms => "too_many_rooms",
            CloseReason::SlowClient => "write_timeout",
            CloseReason::Gone => "connection_lost",
        }
    }
}

/// Where a resuming client says it is.
#[derive(Debug, Default, Clone)]
pub struct ResumeFrom {
    pub session: Option<String>,
    pub epoch: Option<String>,
    pub since: Option<Rev>,
}

/// How the connection ended, as far as presence is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame: leave at once.
    Clean,
    /// Dropped, timed out, or closed by us: leave after the grace period.
    Abrupt,
    /// Taken over by another connection: not a leave.
    TakenOver,
}

/// Takes the TCP stream back from hyper and splits it into owned halves, so reading and writing
/// share no lock (`tokio::io::split` would put one on every read and write).
fn into_halves(ws: WebSocket<TokioIo<Upgraded>>) -> Option<(WebSocketRead<ReadIo>, WebSocketWrite<WriteIo>)> {
    let parts = ws.into_inner().into_inner().downcast::<TokioIo<TcpStream>>().ok()?;
    let (read, write) = parts.io.into_inner().into_split();
    // `read_buf` is a view into hyper's whole read buffer; keeping it would pin that buffer for
    // the connection's life. Copy out the (usually empty) rest instead.
    let early =
        if parts.read_buf.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&parts.read_buf) };
    let read = std::io::Cursor::new(early).chain(read);
    Some(fastwebsockets::after_handshake_split(read, write, Role::Server))
}

/// Closes an upgraded WebSocket at once with `reason` (a limit the upgrade request hit), so
/// browser clients, which cannot see an HTTP status, learn why.
pub async fn refuse(ws: WebSocket<TokioIo<Upgraded>>, reason: CloseReason) {
    if let Some((_, mut write)) = into_halves(ws) {
        close_now(&mut write, reason).await;
    }
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
}

/// Serves an upgraded WebSocket until it closes. `lease` is its admission to `room`.
pub async fn serve(
    ws: WebSocket<TokioIo<Upgraded>>,
    app: Arc<App>,
    room: Arc<Room>,
    lease: Lease,
    from: ResumeFrom,
) {
    let _lease = lease;
    let _open = OpenGauge::new();
    let Some((mut read, write)) = into_halves(ws) else {
        tracing::error!("upgraded connection is not a TCP stream");
        return;
    };
    // fastwebsockets refuses a frame whose length is >= this; we allow exactly the limit.
    read.set_max_message_size(app.config.max_message_bytes as usize + 1);
    read.set_auto_close(true);
    read.set_auto_pong(true);

    let attached = app.sessions.attach(&room, from.session.as_deref());
    let Attached { session, conn, resumed, kicked } = attached;
    room.presence.join(session.client);
    // Boxed messages keep the channel's first block (CONTROL_QUEUE slots, allocated up front)
    // small: replies are rare next to the frames the writer pulls.
    let (tx, rx) = mpsc::channel::<Box<Outgoing>>(CONTROL_QUEUE);

    let mut writer = Writer::new(write, &app, &room, &session);
    let writer_fut = writer.run(from, resumed, rx, kicked);
    let reader_fut = read_loop(read, &app, &room, &session, conn, tx);
    tokio::pin!(writer_fut, reader_fut);
    let (end, reason) = tokio::select! {
        end = &mut reader_fut => {
            // Let the writer send whatever close the reader queued.
            let reason = tokio::time::timeout(CLOSE_GRACE, &mut writer_fut).await.ok();
            (end, reason.unwrap_or(CloseReason::Gone))
        }
        reason = &mut writer_fut => {
            // Give the client a moment to answer our close frame.
            let end = tokio::time::timeout(CLOSE_GRACE, &mut reader_fut).await.unwrap_or(End::Abrupt);
            (if reason == CloseReason::TakenOver { End::TakenOver } else { end }, reason)
        }
    };
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => if end == End::Clean { "client_close" } else { reason.label() })
        .increment(1);
    if end != End::TakenOver && app.sessions.detach(&session, conn, end == End::Clean) {
        let cfg = &app.config;
        tokio::spawn(app.sessions.clone().expire_later(
            session.clone(),
            conn,
            end == End::Clean,
            cfg.presence_grace,
            cfg.session_ttl,
        ));
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

async fn close_now(write: &mut WebSocketWrite<WriteIo>, reason: CloseReason) {
    let frame = Frame::close(reason.close_code(), reason.text().as_bytes());
    let _ = tokio::time::timeout(CLOSE_GRACE, write.write_frame(frame)).await;
}

// ---------------------------------------------------------------------------------------------
// Reader

async fn read_loop(
    mut read: WebSocketRead<ReadIo>,
    app: &App,
    room: &Room,
    session: &Session,
    conn: u64,
    tx: mpsc::Sender<Box<Outgoing>>,
) -> End {
    let max = app.config.max_message_bytes as usize;
    let mut fragments: Option<(OpCode, Vec<u8>)> = None;
    let obligated = tx.clone();
    let mut send_fn = move |f: Frame<'_>| {
        let out = match f.opcode {
            OpCode::Close => Outgoing::CloseEcho(f.payload.to_vec()),
            _ => Outgoing::Pong(f.payload.to_vec()),
        };
        let tx = obligated.clone();
        async move { tx.send(Box::new(out)).await.map_err(|_| std::io::Error::other("writer gone")) }
    };
    loop {
        let frame = match tokio::time::timeout(app.config.idle_timeout, read.read_frame(&mut send_fn)).await {
            Err(_) => {
                let _ = tx.send(Box::new(Outgoing::Close(CloseReason::Idle))).await;
                return End::Abrupt;
            }
            Ok(Err(e)) => {
                let reason = match e {
                    WebSocketError::FrameTooLarge => Some(CloseReason::TooBig),
                    WebSocketError::InvalidUTF8 => Some(CloseReason::BadUtf8),
                    WebSocketError::UnexpectedEOF
                    | WebSocketError::IoError(_)
                    | WebSocketError::SendError(_) => None,
                    _ => Some(CloseReason::Protocol),
                };
                if let Some(r) = reason {
                    let _ = tx.send(Box::new(Outgoing::Close(r))).await;
                }
                return End::Abrupt;
            }
            Ok(Ok(frame)) => frame,
        };
        let message: Vec<u8>;
        let (opcode, payload): (OpCode, &[u8]) = match frame.opcode {
            OpCode::Close => return End::Clean,
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary if frame.fin => {
                if fragments.is_some() {
                    let _ = tx.send(Box::new(Outgoing::Close(CloseReason::Protocol))).await;
                    return End::Abrupt;
                }
                (frame.opcode, &frame.payload)
            }
            OpCode::Text | OpCode::Binary => {
                if fragments.is_some() {
                    let _ = tx.send(Box::new(Outgoing::Close(CloseReason::Protocol))).await;
                    return End::Abrupt;
                }
                fragments = Some((frame.opcode, frame.payload.to_vec()));
                continue;
            }
            OpCode::Continuation => {
                let Some((op, buf)) = fragments.as_mut() else {
                    let _ = tx.send(Box::new(Outgoing::Close(CloseReason::Protocol))).await;
                    return End::Abrupt;
                };
                buf.extend_from_slice(&frame.payload);
                if buf.len() > max {
                    let _ = tx.send(Box::new(Outgoing::Close(CloseReason::TooBig))).await;
                    return End::Abrupt;
                }
                if !frame.fin {
                    continue;
                }
                let op = *op;
                message = fragments.take().map(|(_, b)| b).unwrap_or_default();
                if op == OpCode::Text && std::str::from_utf8(&message).is_err() {
                    let _ = tx.send(Box::new(Outgoing::Close(CloseReason::BadUtf8))).await;
                    return End::Abrupt;
                }
                (op, &message)
            }
        };
        metrics::counter!(m::BYTES_RECEIVED).increment(payload.len() as u64);
        let reply = if opcode == OpCode::Binary {
            metrics::counter!(m::DECODE_ERRORS, "code" => "bad_message").increment(1);
            Some(protocol::error_msg("bad_message", "binary frames are not supported; send JSON text", None))
        } else {
            match handle_message(payload, app, room, session, conn) {
                Ok(reply) => reply,
                // Taken over: this connection must not act for the session any more.
                Err(Superseded) => return End::TakenOver,
            }
        };
        if let Some(reply) = reply
            && tx.send(Box::new(Outgoing::Text(reply))).await.is_err()
        {
            return End::Abrupt;
        }
    }
}

/// The connection no longer owns its session.
struct Superseded;

/// Handles one decoded text message; returns the reply for the sender, if any. Synchronous:
/// locks taken here are released before the caller awaits.
fn handle_message(
    text: &[u8],
    app: &App,
    room: &Room,
    session: &Session,
    conn: u64,
) -> Result<Option<Bytes>, Superseded> {
    let msg = match protocol::decode_client(text) {
        Ok(msg) => msg,
        Err(e) => {
            metrics::counter!(m::DECODE_ERRORS, "code" => e.code()).increment(1);
            return Ok(Some(protocol::error_msg(e.code(), &e.message, None)));
        }
    };
    let st = session.state.lock();
    if !st.owned_by(conn) {
        return Err(Superseded);
    }
    Ok(handle_owned(msg, app, room, session, st))
}

/// [`handle_message`] for a connection that owns its session (`st` is its locked state; it is
/// held across a commit so a snapshot never reports a lastClientReqId its revision lacks).
fn handle_owned(
    msg: ClientMsg,
    app: &App,
    room: &Room,
    session: &Session,
    mut st: parking_lot::MutexGuard<'_, crate::session::SessionState>,
) -> Option<Bytes> {
    match msg {
        ClientMsg::Ping { t } => Some(protocol::pong_msg(&t)),
        ClientMsg::Change(c) => {
            if c.client_req_id <= st.last_req {
                let msg = format!(
                    "clientReqId {} was already processed (lastClientReqId {}); not applied again",
                    c.client_req_id.0, st.last_req.0
                );
                return Some(protocol::error_msg("duplicate", &msg, Some(c.client_req_id)));
            }
            st.last_req = c.client_req_id;
            let req = match (c.mode, c.ops) {
                (Ok(mode), Ok(ops)) => ChangeRequest {
                    author: session.client,
                    client_req_id: Some(c.client_req_id),
                    base_rev: c.base_rev,
                    mode,
                    ops,
                },
                (Err(message), _) => {
                    return Some(reject(room, c.client_req_id, RejectCode::Invalid, message));
                }
                (_, Err(e)) => return Some(reject(room, c.client_req_id, e.clone().into(), e.to_string())),
            };
            // The session lock is held across the commit so a snapshot never reports a
            // lastClientReqId its revision does not contain yet.
            let result = commit(room, req);
            drop(st);
            result.err().map(|r| protocol::reject_msg(c.client_req_id, &r))
        }
        ClientMsg::Presence { data } => {
            drop(st);
            metrics::counter!(m::PRESENCE_UPDATES).increment(1);
            let serde_json::Value::Object(patch) = data else { unreachable!("decoder checks") };
            match room.presence.update(session.client, patch, app.config.max_presence_bytes) {
                Ok(()) => None,
                Err(e) => Some(protocol::error_msg("too_large", &e.to_string(), None)),
            }
        }
        ClientMsg::Broadcast { data } => {
            drop(st);
            metrics::counter!(m::BROADCASTS).increment(1);
            room.broadcasts.send(session.client, &data);
            None
        }
    }
}

fn reject(room: &Room, id: ClientReqId, code: RejectCode, message: String) -> Bytes {
    metrics::counter!(m::CHANGES_REJECTED, "code" => code.as_str()).increment(1);
    protocol::reject_msg(id, &Reject { code, message, rev: room.rev().0, conflicts: Vec::new() })
}

/// Commits with metrics; shared by the WebSocket reader and the HTTP API.
pub fn commit(room: &Room, req: ChangeRequest) -> Result<Arc<Change>, Reject> {
    let started = Instant::now();
    let result = room.commit(req);
    match &result {
        Ok(change) => {
            metrics::histogram!(m::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::CHANGES_COMMITTED).increment(1);
            for op in &change.ops {
                metrics::counter!(m::OPS_APPLIED, "op" => op.kind().as_str()).increment(1);
            }
        }
        Err(r) => metrics::counter!(m::CHANGES_REJECTED, "code" => r.code.as_str()).increment(1),
    }
    result
}
