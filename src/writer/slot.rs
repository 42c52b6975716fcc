//! A connection's place in its room's write pass ([`crate::room::fanout`]): the socket's write
//! half, shared by the connection's writer task and the pass, and who may write to it now.
//!
//! The pass takes an offer only when the connection is caught up to exactly the offer's `from`
//! and nobody else is writing: it then writes the whole WebSocket frame with one non-blocking
//! `writev`, and the connection's task is not woken at all. Otherwise it wakes the task, which
//! catches up on its own as it always did. A frame the socket took only part of is handed to the
//! task: the rest goes out first, under `--write-timeout`, before anything else.
//!
//! `state` packs the revision the client holds with two bits: `BUSY` (someone owns the socket:
//! the task for a whole step, or a pass for one non-blocking write) and `HANDED` (a pass left
//! the rest of a frame in `leftover` and gave its ownership to the task). Invariants: only the
//! owner writes, so frames never interleave; the held revision changes only under ownership;
//! a frame is counted as sent to `to` once its first byte is on the socket, and whatever is left
//! of it is the next thing written. Once the writer has finished (close frame), it keeps
//! ownership for good, so no pass writes after the close.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, Payload};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::close::CloseReason;
use crate::ids::{ClientId, Rev};
use crate::metrics::{self as m, FrameKind, PassOutcome};
use crate::room::{Listener, Offer};
use crate::session::Session;

const BUSY: u64 = 1;
const HANDED: u64 = 2;
const SHIFT: u32 = 2;

/// One connection's slot (see the module doc).
pub struct Slot {
    /// `None` for a writer without a socket (tests' in-memory sinks): every offer then wakes.
    io: Option<OwnedWriteHalf>,
    /// The session's client, kept here: the pass reads it for every slot, and a hop through the
    /// session would be a cache miss per slot.
    client: ClientId,
    session: Arc<Session>,
    state: AtomicU64,
    /// Wakes the connection's task: a revision it has to catch up on by itself.
    wake: Notify,
    /// The rest of a frame a pass could write only in part (touched only by the owner).
    leftover: Mutex<Option<Bytes>>,
}

/// What [`Slot::take`] found.
#[derive(Debug)]
pub enum Taken {
    /// The socket is the task's; the client holds this revision.
    Idle(Rev),
    /// The socket is the task's; a pass wrote a frame only in part (this is its rest, to write
    /// first) and the client holds this revision once it is written.
    Handed(Rev, Option<Bytes>),
    /// A pass is writing to the socket on another thread: try again in a moment.
    PassWriting,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("Slot").field("held", &(s >> SHIFT)).field("flags", &(s & 3)).finish()
    }
}

impl Slot {
    /// A slot for `session`'s connection writing to `io`, owned by its writer task (which
    /// releases it once the client has its first frame).
    pub fn new(session: Arc<Session>, io: Option<OwnedWriteHalf>) -> Arc<Slot> {
        Arc::new(Slot {
            io,
            client: session.client,
            session,
            state: AtomicU64::new(BUSY),
            wake: Notify::new(),
            leftover: Mutex::new(None),
        })
    }

    /// Resolves when a pass asks the task to look for itself.
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Takes the socket for the task, if no pass is writing to it right now. The task calls it
    /// only while it does not own the socket; on [`Taken::Handed`] it writes the rest of the
    /// frame ([`Slot::write_rest`]) before anything else.
    pub fn take(&self) -> Taken {
        loop {
            let s = self.state.load(Ordering::Acquire);
            let held = Rev(s >> SHIFT);
            if s & HANDED != 0 {
                // The pass that set it gave its ownership to this task.
                let rest = self.leftover.lock().take();
                self.state.fetch_and(!HANDED, Ordering::AcqRel);
                return Taken::Handed(held, rest);
            }
            if s & BUSY != 0 {
                // A pass mid-`writev` on another thread: a microsecond.
                return Taken::PassWriting;
            }
            if self.state.compare_exchange(s, s | BUSY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Taken::Idle(held);
            }
        }
    }

    /// Gives the socket back to the passes, the client holding `held`.
    pub fn release(&self, held: Rev) {
        self.state.store(held.0 << SHIFT, Ordering::Release);
    }

    /// Writes all of `bytes` (raw: the rest of a frame), waiting at most `timeout` for the
    /// socket. Only the owner calls it.
    ///
    /// # Errors
    /// `SlowClient` when the socket did not take it in time, `Gone` when the socket failed.
    pub async fn write_rest(&self, mut bytes: &[u8], timeout: Duration) -> Result<(), CloseReason> {
        let Some(io) = &self.io else { return Ok(()) };
        let stream: &TcpStream = io.as_ref();
        let deadline = tokio::time::Instant::now() + timeout;
        while !bytes.is_empty() {
            match stream.try_write(bytes) {
                Ok(0) => return Err(CloseReason::Gone),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout_at(deadline, stream.writable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(CloseReason::Gone),
                        Err(_) => {
                            metrics::counter!(m::SLOW_CLIENT_CLOSES).increment(1);
                            return Err(CloseReason::SlowClient);
                        }
                    }
                }
                Err(_) => return Err(CloseReason::Gone),
            }
        }
        Ok(())
    }
}

impl Listener for Slot {
    fn client(&self) -> ClientId {
        self.client
    }

    fn offer(&self, offer: &Offer<'_>) {
        let hot = m::hot();
        let idle = offer.from.0 << SHIFT;
        let Some(io) = &self.io else { return self.hand_over(hot) };
        if self.state.compare_exchange(idle, idle | BUSY, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            // Behind, ahead, or its task is writing: it catches up by itself.
            return self.hand_over(hot);
        }
        let frame = offer.frame;
        let mut head = [0u8; 10];
        let n = Frame::text(Payload::Borrowed(frame)).fmt_head(&mut head);
        let bufs = [IoSlice::new(&head[..n]), IoSlice::new(frame)];
        let stream: &TcpStream = io.as_ref();
        let wrote = match stream.try_write_vectored(&bufs) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                // The task's next write meets the same error and ends the connection.
                self.state.store(idle, Ordering::Release);
                return self.hand_over(hot);
            }
        };
        let to = offer.to.0 << SHIFT;
        if wrote == n + frame.len() {
            self.session.note_sent(offer.to);
            self.state.store(to, Ordering::Release);
            hot.pass[PassOutcome::Written as usize].increment(1);
        } else {
            // The socket took part of it (or none): the task writes the rest before anything
            // else, under the write timeout.
            let mut rest = BytesMut::with_capacity(n + frame.len() - wrote);
            if wrote < n {
                rest.extend_from_slice(&head[wrote..n]);
            }
            rest.extend_from_slice(&frame[wrote.saturating_sub(n)..]);
            *self.leftover.lock() = Some(rest.freeze());
            self.session.note_sent(offer.to);
            self.state.store(to | BUSY | HANDED, Ordering::Release);
            self.wake.notify_one();
            hot.pass[PassOutcome::Partial as usize].increment(1);
        }
        hot.sent(FrameKind::Delta, frame.len());
        hot.catchup_lag.record(offer.to.0.saturating_sub(offer.from.0) as f64);
        hot.delivery_lag.record(offer.committed_at.elapsed().as_secs_f64());
    }

    fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Slot {
    /// Leaves an offer to the connection's task.
    fn hand_over(&self, hot: &m::Hot) {
        hot.pass[PassOutcome::Woken as usize].increment(1);
        self.wake.notify_one();
    }
}

/// The socket's write side as the connection's `WebSocketWrite` uses it: writes through the
/// slot's write half (which the pass writes through too, never at the same time).
pub struct SlotIo(pub Arc<Slot>);

impl SlotIo {
    fn stream(&self) -> io::Result<&TcpStream> {
        match &self.0.io {
            Some(io) => Ok(io.as_ref()),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "a slot without a socket")),
        }
    }
}

impl tokio::io::AsyncWrite for SlotIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let stream = self.stream()?;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = self.stream()?;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The write half shuts down when the slot is dropped (after the connection ends).
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
