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
//! `read_frame` is not cancel-safe: [`Inbound::next`] is only ever awaited to completion (the
//! connection's futures run side by side, never raced in a `select!` that drops the loser).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead};
use tokio::sync::mpsc;

use super::{End, ReadIo};
use crate::close::{self, CloseReason};
use crate::config::Config;
use crate::metrics as m;
use crate::reassembly::Reassembler;
use crate::writer::Outgoing;

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A whole message from the client.
pub(super) struct Received {
    pub binary: bool,
    pub payload: Bytes,
}

/// A connection's read side: frames in, whole messages out. Control frames are answered here
/// (pongs and close echoes go to the writer); every violation of the framing rules queues the
/// close it deserves and ends the read side. Once the writer has gone (it sent our close frame),
/// messages are read and dropped unprocessed while the client's close is awaited (RFC 6455
/// §1.4): a change read then is never applied, since its ack could not be sent.
pub(super) struct Inbound {
    read: WebSocketRead<ReadIo>,
    messages: Reassembler,
    idle_timeout: Duration,
    replies: Replies,
}

/// The reader's way to the writer.
struct Replies(mpsc::Sender<Box<Outgoing>>);

impl Replies {
    /// Queues a reply for the writer; `Err` when the writer has gone.
    async fn send(&self, out: Outgoing) -> Result<(), ()> {
        self.0.send(Box::new(out)).await.map_err(|_| ())
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

impl Inbound {
    pub(super) fn new(
        mut read: WebSocketRead<ReadIo>,
        config: &Config,
        replies: mpsc::Sender<Box<Outgoing>>,
    ) -> Self {
        // fastwebsockets refuses a frame whose length is >= this; we allow exactly the limit.
        read.set_max_message_size(config.max_message_bytes as usize + 1);
        // Its automatic pong and close echo would answer before the checks in `next` run (an
        // unmasked ping ponged, a 126-byte close echoed); control frames are answered there.
        read.set_auto_close(false);
        read.set_auto_pong(false);
        let max = config.max_message_bytes as usize;
        let replies = Replies(replies);
        Inbound { read, messages: Reassembler::new(max), idle_timeout: config.idle_timeout, replies }
    }

    /// Queues a reply for the writer; `Err` when the writer has gone.
    pub(super) async fn reply(&self, out: Outgoing) -> Result<(), ()> {
        self.replies.send(out).await
    }

    /// The next whole message, or how the read side ended (its close already queued).
    pub(super) async fn next(&mut self) -> Result<Received, End> {
        // With automatic replies off, fastwebsockets never asks us to send anything.
        let mut no_auto_replies =
            |_: Frame<'_>| std::future::ready(Err::<(), _>(std::io::Error::other("no automatic replies")));
        loop {
            let read = tokio::time::timeout(self.idle_timeout, self.read.read_frame(&mut no_auto_replies));
            let mut frame = match read.await {
                Err(_) => return Err(self.replies.fail(CloseReason::Idle).await),
                Ok(Err(e)) => {
                    return Err(match e {
                        WebSocketError::FrameTooLarge => self.replies.fail(CloseReason::TooBig).await,
                        WebSocketError::InvalidUTF8 => self.replies.fail(CloseReason::BadUtf8).await,
                        WebSocketError::UnexpectedEOF
                        | WebSocketError::IoError(_)
                        | WebSocketError::SendError(_) => End::Abrupt,
                        _ => self.replies.fail(CloseReason::Protocol).await,
                    });
                }
                Ok(Ok(frame)) => frame,
            };
            if !is_masked(&mut frame) {
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
                    if self.replies.0.is_closed() {
                        continue;
                    }
                    let payload = match done.1 {
                        Some(buf) => Bytes::from(buf),
                        None => into_bytes(frame.payload),
                    };
                    metrics::counter!(m::BYTES_RECEIVED).increment(payload.len() as u64);
                    return Ok(Received { binary: done.0 == OpCode::Binary, payload });
                }
            }
        }
    }
}

/// Whether the client masked the frame (RFC 6455 §5.1: it must). fastwebsockets keeps a frame's
/// masking key private but writes it into the header it formats for the frame, mask bit and all
/// (it unmasks the payload without forgetting the key).
fn is_masked(frame: &mut Frame<'_>) -> bool {
    let mut head = [0u8; 14];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

/// A frame's payload as `Bytes`, without a copy when fastwebsockets read it into its buffer.
fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        other => Bytes::from(Vec::from(other)),
    }
}
