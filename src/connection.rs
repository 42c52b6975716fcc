//! One WebSocket connection: a reader loop and a writer loop, in one task. Each client message is
//! handled in [`handle_message`].
//!
//! The reader reads frames, reassembles messages ([`crate::reassembly`]), decodes them
//! ([`crate::protocol`]) and hands changes to the room through the one commit path
//! ([`App::commit`]), presence and broadcasts to the room's two lanes; its replies (rejects, pongs,
//! errors, close requests) go to the writer ([`crate::writer`]) through a small bounded channel,
//! so a client that sends without reading is slowed down by TCP, never buffered without bound.
//!
//! `read_frame` is not cancel-safe, so it is never raced in a `select!` loop: the reader and
//! writer are two futures polled side by side; when one ends, the other gets a bounded time
//! ([`CLOSE_GRACE`]) to finish its close handshake.

use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::app::{self, App};
use crate::close::{CLOSE_GRACE, CloseReason};
use crate::ids::ClientReqId;
use crate::metrics as m;
use crate::protocol::{self, ClientMsg, ErrorCode, Reject};
use crate::reassembly::Reassembler;
use crate::room::{ChangeRequest, Room};
use crate::rooms::Lease;
use crate::session::{Attached, ResumeFrom, Session, SessionState};
use crate::writer::{Outgoing, Signals, Writer, WriterConfig};

/// The socket's read side, after any bytes hyper had already read past the handshake.
type ReadIo = tokio::io::Chain<std::io::Cursor<Bytes>, tokio::net::tcp::OwnedReadHalf>;
/// The socket's write side.
type WriteIo = tokio::net::tcp::OwnedWriteHalf;

/// Replies queued per connection before the reader waits for the writer.
const CONTROL_QUEUE: usize = 32;

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
        let frame = Frame::close(reason.close_code(), reason.text().as_bytes());
        let _ = tokio::time::timeout(CLOSE_GRACE, write.write_frame(frame)).await;
    }
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
}

/// Serves an upgraded WebSocket until it closes. `lease` is its admission to the room.
pub async fn serve(ws: WebSocket<TokioIo<Upgraded>>, app: Arc<App>, lease: Lease, from: ResumeFrom) {
    let room = lease.room().clone();
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
    let signals = Signals { replies: rx, kicked, shutdown: app.shutdown_signal() };

    let mut writer = Writer::new(write, WriterConfig::from(&app.config), &session);
    let writer_fut = writer.run(from, resumed, signals);
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
    let label = if end == End::Clean { CloseReason::Normal.label() } else { reason.label() };
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => label).increment(1);
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

async fn read_loop(
    mut read: WebSocketRead<ReadIo>,
    app: &App,
    room: &Room,
    session: &Session,
    conn: u64,
    tx: mpsc::Sender<Box<Outgoing>>,
) -> End {
    let mut messages = Reassembler::new(app.config.max_message_bytes as usize);
    let obligated = tx.clone();
    let mut send_fn = move |f: Frame<'_>| {
        let out = match f.opcode {
            OpCode::Close => Outgoing::CloseEcho(f.payload.to_vec()),
            _ => Outgoing::Pong(f.payload.to_vec()),
        };
        let tx = obligated.clone();
        async move { tx.send(Box::new(out)).await.map_err(|_| std::io::Error::other("writer gone")) }
    };
    let close = |reason| {
        let tx = tx.clone();
        async move { tx.send(Box::new(Outgoing::Close(reason))).await }
    };
    loop {
        let frame = match tokio::time::timeout(app.config.idle_timeout, read.read_frame(&mut send_fn)).await {
            Err(_) => {
                let _ = close(CloseReason::Idle).await;
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
                    let _ = close(r).await;
                }
                return End::Abrupt;
            }
            Ok(Ok(frame)) => frame,
        };
        let (opcode, payload) = match frame.opcode {
            OpCode::Close => return End::Clean,
            OpCode::Ping | OpCode::Pong => continue,
            _ => match messages.push(frame.opcode, frame.fin, &frame.payload) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(reason) => {
                    let _ = close(reason).await;
                    return End::Abrupt;
                }
            },
        };
        metrics::counter!(m::BYTES_RECEIVED).increment(payload.len() as u64);
        let reply = if opcode == OpCode::Binary {
            let code = ErrorCode::BadMessage;
            metrics::counter!(m::DECODE_ERRORS, "code" => code.as_str()).increment(1);
            Some(protocol::error_msg(code, "binary frames are not supported; send JSON text", None))
        } else {
            match handle_message(&payload, app, room, session, conn) {
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

/// Handles one text message from a client; returns the reply for the sender, if any.
/// Synchronous: locks taken here are released before the caller awaits.
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
            metrics::counter!(m::DECODE_ERRORS, "code" => e.code().as_str()).increment(1);
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
    mut st: parking_lot::MutexGuard<'_, SessionState>,
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
                    return Some(refuse_change(room, c.client_req_id, ErrorCode::Invalid, message));
                }
                (_, Err(e)) => {
                    return Some(refuse_change(room, c.client_req_id, e.clone().into(), e.to_string()));
                }
            };
            // The session lock is held across the commit so a snapshot never reports a
            // lastClientReqId its revision does not contain yet.
            let result = app.commit(room, req);
            drop(st);
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
        ClientMsg::Broadcast { data } => {
            drop(st);
            metrics::counter!(m::BROADCASTS).increment(1);
            room.broadcasts.send(session.client, &data);
            None
        }
    }
}

/// A `reject` for a change refused before it reached the room (counted like the room's own).
fn refuse_change(room: &Room, id: ClientReqId, code: ErrorCode, message: String) -> Bytes {
    let r = Reject::new(code, message, room.rev().0);
    app::count_reject(&r);
    protocol::reject_msg(id, &r)
}
