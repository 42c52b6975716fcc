//! A connection's read side, shared by room connections and the test-only echo endpoint: frames
//! in, whole messages out.
//!
//! It holds the client to RFC 6455's framing rules that fastwebsockets leaves to us: every client
//! frame is masked (§5.1); control frames carry at most 125 bytes (§5.5; fastwebsockets checks
//! only pings, and that control frames are not fragmented); a close frame has no one-byte payload,
//! a code an endpoint may send and a UTF-8 reason (§7.4, §5.5.1). It answers pings and close
//! frames itself, after those checks: fastwebsockets' automatic pong and close echo are off,
//! because they would answer a frame before it could be refused (an unmasked ping ponged, a
//! 126-byte close echoed). Data frames go through [`Reassembler`] (fragments, the message cap,
//! fail-fast UTF-8). Every violation queues the close it deserves for the writer and ends the
//! read side.
//!
//! An idle connection holds no read buffer. fastwebsockets' reader allocates an 8 KiB buffer
//! when it is made and has no way to give it back, so [`Inbound`] makes one only when the socket
//! has bytes to read, and drops it again (with its buffer) as soon as it has returned every byte
//! it was handed: the [`Socket`] counts the bytes it hands over, [`Inbound`] the bytes of the
//! frames it got back (header and payload), and a reader whose two counts agree holds nothing.
//! (A client that encodes a length in more bytes than needed makes the second count fall short,
//! which only keeps that connection's reader, and buffer, alive.)
//!
//! `read_frame` is not cancel-safe: [`Inbound::next`] is only ever awaited to completion (the
//! connection's futures run side by side, never raced in a `select!` that drops the loser). The
//! one exception ends the read side: the echo endpoint's idle timeout drops a `next` that has
//! waited `--idle-timeout`, and the connection closes (1001) without reading again. A room
//! connection's idle timeout is the writer's, on what [`Heard`] noted.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

use super::End;
use crate::close::{self, CloseReason};
use crate::config::Config;
use crate::metrics as m;
use crate::reassembly::Reassembler;
use crate::room::Room;
use crate::writer::{Heard, Outgoing, ReplySender};

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame as fastwebsockets read it, owning its (unmasked) payload.
struct RawFrame {
    fin: bool,
    opcode: OpCode,
    masked: bool,
    payload: Bytes,
}

/// A whole message from the client.
pub(super) struct Received {
    pub binary: bool,
    pub payload: Bytes,
}

/// The socket's read half, owned by the connection's task and lent to each short-lived
/// fastwebsockets reader in turn (which cannot hand its stream back).
pub(crate) struct Socket {
    /// Locked only inside a `poll_read`, never across an `.await`.
    inner: Mutex<SocketInner>,
    /// When the last whole frame came in: the idle timeout is the writer's (room connections)
    /// or the echo loop's.
    pub(crate) heard: Heard,
    /// A room connection's room: its write pass runs whenever reading would wait, so changes
    /// read together go out together (see [`Socket::deliver_before_waiting`]).
    room: Option<Arc<Room>>,
    /// Messages read since the read last waited (or since the last pass it forced).
    unpassed: AtomicU32,
}

/// Most messages a room connection reads without the write pass running. It runs whenever a read
/// would wait, which coalesces a burst into one frame; a client that keeps its socket full would
/// otherwise hold everyone's deliveries back until it paused. High enough that a saturated server's
/// bursts still coalesce (16 doubled fan-out N=1000 M=1000's p99 by splitting them).
const MESSAGES_PER_PASS: u32 = 128;

struct SocketInner {
    /// Bytes hyper had read past the handshake (usually none): read first.
    early: Bytes,
    read: OwnedReadHalf,
    /// Bytes handed to fastwebsockets so far.
    fed: u64,
}

impl Socket {
    pub(crate) fn new(early: Bytes, read: OwnedReadHalf) -> Self {
        Socket {
            inner: Mutex::new(SocketInner { early, read, fed: 0 }),
            heard: Heard::default(),
            room: None,
            unpassed: AtomicU32::new(0),
        }
    }

    /// Runs `room`'s write pass ([`Room::deliver`]) whenever a read would wait: everything this
    /// connection committed from the bytes at hand then goes out in one pass, so a burst of
    /// changes is one frame per connection, and under load passes coalesce by themselves. It
    /// runs outside the socket's lock.
    pub(crate) fn deliver_before_waiting(&mut self, room: Arc<Room>) {
        self.room = Some(room);
    }

    /// About to wait for the socket.
    fn waiting(&self) {
        if let Some(room) = &self.room {
            self.unpassed.store(0, Ordering::Relaxed);
            room.deliver();
        }
    }

    /// A message was read and handled: after [`MESSAGES_PER_PASS`] of them without a wait, the
    /// write pass runs anyway.
    pub(crate) fn message_handled(&self) {
        if let Some(room) = &self.room
            && self.unpassed.fetch_add(1, Ordering::Relaxed) + 1 >= MESSAGES_PER_PASS
        {
            self.unpassed.store(0, Ordering::Relaxed);
            room.deliver();
        }
    }

    /// Bytes handed to fastwebsockets so far.
    fn fed(&self) -> u64 {
        self.inner.lock().fed
    }

    /// Ready once there is something to read (or the socket has failed or closed).
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let g = self.inner.lock();
        if !g.early.is_empty() {
            return Poll::Ready(());
        }
        let polled = g.read.as_ref().poll_read_ready(cx).map(|_| ());
        drop(g);
        if polled.is_pending() {
            self.waiting();
        }
        polled
    }
}

/// A borrowed [`Socket`] as fastwebsockets' stream.
struct SocketRef<'s>(&'s Socket);

impl AsyncRead for SocketRef<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut g = self.0.inner.lock();
        let before = buf.filled().len();
        let polled = if g.early.is_empty() {
            Pin::new(&mut g.read).poll_read(cx, buf)
        } else {
            let n = g.early.len().min(buf.remaining());
            buf.put_slice(&g.early[..n]);
            g.early.advance(n);
            Poll::Ready(Ok(()))
        };
        g.fed += (buf.filled().len() - before) as u64;
        drop(g);
        if polled.is_pending() {
            self.0.waiting();
        }
        polled
    }
}

/// A connection's read side: frames in, whole messages out. Control frames are answered here
/// (pongs and close echoes go to the writer); every violation of the framing rules queues the
/// close it deserves and ends the read side. Once the writer has gone (it sent our close frame),
/// messages are read and dropped unprocessed while the client's close is awaited (RFC 6455
/// §1.4): a change read then is never applied, since its ack could not be sent.
pub(super) struct Inbound<'s> {
    socket: &'s Socket,
    /// fastwebsockets' reader, only while it may hold bytes not yet returned (see the module doc).
    /// Boxed: inline, an idle connection's task would keep room for it.
    read: Option<Box<WebSocketRead<SocketRef<'s>>>>,
    /// Bytes of the frames returned so far: header and payload.
    consumed: u64,
    /// fastwebsockets refuses a frame whose length is at least this.
    max_frame: usize,
    messages: Reassembler,
    replies: Replies,
}

/// The reader's way to the writer.
struct Replies(ReplySender);

impl Replies {
    /// Queues a reply for the writer; `Err` when the writer has gone. Every wait of the reader on
    /// the writer comes through here, and it is boxed: those waits are rare (a reject, a pong, a
    /// close), and inline the largest would size the future every idle connection holds.
    fn send(&self, out: Outgoing) -> Pin<Box<dyn Future<Output = Result<(), ()>> + Send + '_>> {
        Box::pin(async move { self.0.send_async(Box::new(out)).await.map_err(|_| ()) })
    }

    /// Queues the close `reason` deserves; the read side ends.
    async fn fail(&self, reason: CloseReason) -> End {
        let _ = self.send(Outgoing::Close(reason)).await;
        End::Abrupt
    }

    /// Answers the client's close frame: an echo when it is valid (RFC 6455 §5.5.1), else the
    /// error it deserves (§7.4: a one-byte payload or a code no endpoint may send is a protocol
    /// error, a reason that is not UTF-8 is 1007).
    async fn close_frame(&self, payload: &[u8]) -> End {
        let refused = match payload {
            [] => None,
            [_] => Some(CloseReason::Protocol),
            [hi, lo, reason @ ..] => {
                if !close::may_be_sent(u16::from_be_bytes([*hi, *lo])) {
                    Some(CloseReason::Protocol)
                } else if std::str::from_utf8(reason).is_err() {
                    Some(CloseReason::BadUtf8)
                } else {
                    None
                }
            }
        };
        match refused {
            Some(reason) => self.fail(reason).await,
            None => {
                let _ = self.send(Outgoing::CloseEcho(payload.to_vec())).await;
                End::Clean
            }
        }
    }
}

impl<'s> Inbound<'s> {
    pub(super) fn new(socket: &'s Socket, config: &Config, replies: ReplySender) -> Self {
        let max = config.max_message_bytes as usize;
        Inbound {
            socket,
            read: None,
            consumed: 0,
            // We allow exactly the limit.
            max_frame: max + 1,
            messages: Reassembler::new(max),
            replies: Replies(replies),
        }
    }

    /// The next frame: waits for the socket to be readable (holding no buffer meanwhile), then
    /// reads through a fastwebsockets reader made for the occasion, which is dropped again once
    /// it holds no byte we have not been given.
    async fn read_frame(&mut self) -> Result<RawFrame, WebSocketError> {
        if self.read.is_none() {
            std::future::poll_fn(|cx| self.socket.poll_ready(cx)).await;
        }
        let max_frame = self.max_frame;
        let read = self.read.get_or_insert_with(|| {
            // The write half is a stand-in: this reader never writes.
            let (mut read, _) = fastwebsockets::after_handshake_split(
                SocketRef(self.socket),
                tokio::io::sink(),
                Role::Server,
            );
            read.set_max_message_size(max_frame);
            // Its automatic pong and close echo would answer before the checks in `next` run (an
            // unmasked ping ponged, a 126-byte close echoed); control frames are answered there.
            read.set_auto_close(false);
            read.set_auto_pong(false);
            Box::new(read)
        });
        // With automatic replies off, fastwebsockets never asks us to send anything.
        let mut no_auto_replies =
            |_: Frame<'_>| std::future::ready(Err::<(), _>(std::io::Error::other("no automatic replies")));
        // Boxed while it runs, so the idle connection's future does not keep room for it.
        let mut frame = Box::pin(read.read_frame(&mut no_auto_replies)).await?;
        let (masked, head_len) = head_of(&mut frame);
        let frame =
            RawFrame { fin: frame.fin, opcode: frame.opcode, masked, payload: into_bytes(frame.payload) };
        self.consumed += (head_len + frame.payload.len()) as u64;
        self.socket.heard.note();
        if self.consumed == self.socket.fed() {
            self.read = None;
        }
        Ok(frame)
    }

    /// A message was handled (see [`Socket::message_handled`]).
    pub(super) fn message_handled(&self) {
        self.socket.message_handled();
    }

    /// Queues a reply for the writer; `Err` when the writer has gone.
    pub(super) fn reply(&self, out: Outgoing) -> Pin<Box<dyn Future<Output = Result<(), ()>> + Send + '_>> {
        self.replies.send(out)
    }

    /// The read side ends for the idle timeout: queues its close.
    pub(super) async fn idle(&self) -> End {
        self.replies.fail(CloseReason::Idle).await
    }

    /// The next whole message, or how the read side ended (its close already queued). No idle
    /// timeout here: a room connection's writer keeps it (see [`Heard`]), the echo loop its own.
    pub(super) async fn next(&mut self) -> Result<Received, End> {
        loop {
            let frame = match self.read_frame().await {
                Err(e) => {
                    return Err(match e {
                        WebSocketError::FrameTooLarge => self.replies.fail(CloseReason::TooBig).await,
                        WebSocketError::InvalidUTF8 => self.replies.fail(CloseReason::BadUtf8).await,
                        WebSocketError::UnexpectedEOF
                        | WebSocketError::IoError(_)
                        | WebSocketError::SendError(_) => End::Abrupt,
                        _ => self.replies.fail(CloseReason::Protocol).await,
                    });
                }
                Ok(frame) => frame,
            };
            if !frame.masked {
                return Err(self.replies.fail(CloseReason::Protocol).await);
            }
            match frame.opcode {
                OpCode::Close | OpCode::Ping | OpCode::Pong if frame.payload.len() > MAX_CONTROL_PAYLOAD => {
                    return Err(self.replies.fail(CloseReason::Protocol).await);
                }
                OpCode::Close => return Err(self.replies.close_frame(&frame.payload).await),
                OpCode::Ping => {
                    // Unanswerable once the writer has gone; the client's close is still awaited.
                    let _ = self.replies.send(Outgoing::Pong(frame.payload.to_vec())).await;
                }
                OpCode::Pong => {}
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    let done = match self.messages.push(frame.opcode, frame.fin, &frame.payload) {
                        Ok(None) => continue,
                        Ok(Some((op, Cow::Borrowed(_)))) => (op, None),
                        Ok(Some((op, Cow::Owned(buf)))) => (op, Some(buf)),
                        Err(reason) => return Err(self.replies.fail(reason).await),
                    };
                    if self.replies.0.is_disconnected() {
                        continue;
                    }
                    let payload = match done.1 {
                        Some(buf) => Bytes::from(buf),
                        None => frame.payload,
                    };
                    metrics::counter!(m::BYTES_RECEIVED).increment(payload.len() as u64);
                    return Ok(Received { binary: done.0 == OpCode::Binary, payload });
                }
            }
        }
    }
}

/// Whether the client masked the frame (RFC 6455 §5.1: it must), and the length of its header
/// in the shortest encoding. fastwebsockets keeps a frame's masking key private but writes it
/// into the header it formats for the frame, mask bit and all (it unmasks the payload without
/// forgetting the key).
fn head_of(frame: &mut Frame<'_>) -> (bool, usize) {
    let mut head = [0u8; 14];
    let len = frame.fmt_head(&mut head);
    (head[1] & 0x80 != 0, len)
}

/// A frame's payload as `Bytes`, without a copy when fastwebsockets read it into its buffer.
fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        other => Bytes::from(Vec::from(other)),
    }
}
