//! A connection's writer: the only code that writes to an admitted connection's WebSocket
//! (`connection::refuse` writes the single close frame of a refused one).
//!
//! It executes what the room decides and moves bytes; it makes no decision of its own about what
//! a client is sent. Deltas mostly do not pass through it at all: the room's write pass
//! ([`crate::room::fanout`]) writes each newly visible revision's frame straight to every
//! caught-up connection's socket through its [`Slot`], without waking its task. The writer is
//! woken only when the pass could not serve it (it was behind, busy writing, or the socket took a
//! frame only in part); it then takes the socket from the pass, learns the revision the client
//! holds, and asks the session for the one frame that brings the client up to date
//! ([`Session::catch_up`]: a `delta`, or a `snapshot` once the ring has moved on). Presence and
//! broadcasts are pulled the same way. A connection therefore holds O(1) memory however far
//! behind it is. Replies from the reader (rejects, pongs, errors, close requests) arrive on a
//! small bounded channel. A write that does not complete within `--write-timeout` ends the
//! connection.
//!
//! Shutdown: when the server starts draining, the writer picks a random moment within 80 % of
//! `--shutdown-timeout` to close (so clients do not all reconnect at once) and goes on working
//! until then: acks, deltas, rejects and pings keep flowing. At that moment it first sends every
//! revision the room reached and every reply the reader queued, then the 1001 close. Nothing
//! commits once the drain has begun (`App::commit` refuses with `draining`), so that last
//! catch-up holds every change this connection's client will ever be acked.
//!
//! The socket end itself, [`Outbox`] (timed writes, the reader's replies, the final close frame),
//! is shared with the test-only echo endpoint ([`run_echo`]), so the Autobahn TestSuite run
//! against that endpoint exercises the same write code as a room connection.
//!
//! The writer is generic over its [`FrameSink`], so its ordering, coalescing and close handling
//! are tested with an in-memory sink (`tests/writer.rs`).
//!
//! Memory: every connection holds its writer's future for its life, so the writer keeps it
//! small. Its deadlines (ping, presence tick, token expiry, shutdown close, and the idle timeout
//! on what the reader last [`Heard`]) share one timer, the rarer steps (hello, replies,
//! broadcasts, catch-ups, timed work, rollback rejects, the final flush and close) are boxed while
//! they run, and so is the timer of a write that has to wait for the socket. The async fns take
//! what they keep by reference or boxed: an `async fn` holds a by-value argument twice.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use futures_core::Stream as _;
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::close::{CLOSE_GRACE, CloseReason};
use crate::ids::Rev;
use crate::metrics::{self as m, ConnectOutcome, FrameKind as Kind};
use crate::protocol;
use crate::room::{Change, Cursor, Room, UserKey};
use crate::session::{Delivery, ResumeFrom, Session};

mod slot;

pub use slot::{Slot, SlotIo, Taken};

/// Where a writer's frames go: a WebSocket's write half, or an in-memory sink in tests.
pub trait FrameSink {
    /// Writes one frame (completes when the socket has taken it).
    fn write_frame(&mut self, frame: Frame<'_>) -> impl Future<Output = Result<(), WebSocketError>> + Send;
    /// Whether a close frame was already written.
    fn is_closed(&self) -> bool;
}

impl<S: tokio::io::AsyncWrite + Unpin + Send> FrameSink for WebSocketWrite<S> {
    fn write_frame(&mut self, frame: Frame<'_>) -> impl Future<Output = Result<(), WebSocketError>> + Send {
        WebSocketWrite::write_frame(self, frame)
    }
    fn is_closed(&self) -> bool {
        WebSocketWrite::is_closed(self)
    }
}

/// Replies the reader may queue before it waits for the writer.
pub const REPLY_QUEUE: usize = 32;

/// The reader's end of its replies to the writer.
pub type ReplySender = flume::Sender<Box<Outgoing>>;
/// The writer's end of the reader's replies.
pub type ReplyReceiver = flume::Receiver<Box<Outgoing>>;

/// The channel from a connection's reader to its writer: at most [`REPLY_QUEUE`] replies wait,
/// so a client that sends without reading is slowed down by TCP, never buffered without bound.
/// flume's bounded channel allocates its queue on first use; tokio's would allocate a block of
/// 32 slots and a cache-padded header (~800 bytes) for every connection, idle ones included.
/// Replies are boxed to keep the queue's slots small (they are rare next to the frames the
/// writer pulls).
pub fn reply_channel() -> (ReplySender, ReplyReceiver) {
    flume::bounded(REPLY_QUEUE)
}

/// What the reader asks the writer to send.
#[derive(Debug)]
pub enum Outgoing {
    /// A control message (reject, error, pong).
    Text(Bytes),
    /// Reply to a client ping.
    Pong(Vec<u8>),
    /// Echo of the client's close frame; the writer stops after it.
    CloseEcho(Vec<u8>),
    /// Close with our own code; the writer stops after it.
    Close(CloseReason),
    /// A client message sent back as it came (the test-only echo endpoint).
    Echo { binary: bool, payload: Bytes },
    /// A `refreshed` message: the connection's token was replaced, so its expiry moves.
    Refreshed { frame: Bytes, expiry: TokenExpiry },
}

/// When a connection's token runs out: the writer sends `expiring` at `warn_at` (once per
/// token) and closes with 4401 at `close_at` (`exp` plus `--jwt-leeway`) unless a refresh
/// moved them. Connections without a token (open mode) have none and arm no timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiry {
    /// The token's `exp` (seconds since the Unix epoch), as sent in `expiring`.
    pub exp: u64,
    pub warn_at: Instant,
    pub close_at: Instant,
}

impl TokenExpiry {
    /// The expiry of a token with `exp` (Unix seconds): warned about 60 s before `exp`, or a
    /// third of the remaining lifetime when that is shorter; closed `leeway` after `exp`.
    pub fn new(exp: u64, leeway: Duration) -> TokenExpiry {
        let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let left = Duration::from_secs(exp).saturating_sub(now_unix);
        let now = Instant::now();
        let warn_before = Duration::from_secs(60).min(left / 3);
        TokenExpiry { exp, warn_at: now + (left - warn_before), close_at: now + left + leeway }
    }
}

/// What a writer waits for besides messages, all on one timer.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// The next server ping (every `--ping-interval`).
    ping: Instant,
    /// The presence tick to send at, while a presence change waits for it.
    presence: Option<Instant>,
    /// When to close for the shutdown, once the drain has begun.
    close: Option<Instant>,
    /// The token's next deadline: the `expiring` warning, then the 4401 close.
    token: Option<Instant>,
    /// When the client will have sent nothing for `--idle-timeout` (with a [`Heard`]).
    idle: Option<Instant>,
}

impl Deadlines {
    fn earliest(&self) -> Instant {
        [self.presence, self.close, self.token, self.idle].into_iter().flatten().fold(self.ping, Instant::min)
    }
}

/// When the client last sent a whole frame. The reader notes each one; the writer's shared timer
/// closes the connection (1001, idle timeout) once nothing has come for `--idle-timeout`, so an
/// idle connection holds one timer, not one per side.
#[derive(Debug)]
pub struct Heard {
    /// The connection's start; `ms` counts from it.
    start: Instant,
    ms: AtomicU64,
}

impl Default for Heard {
    fn default() -> Self {
        Heard { start: Instant::now(), ms: AtomicU64::new(0) }
    }
}

impl Heard {
    /// A frame came in now.
    pub fn note(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, Ordering::Relaxed);
    }

    /// When the last frame came in (the connection's start before any).
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }
}

/// The writer's timings: defined with `Config` (so `App` can hold the one every writer borrows
/// without importing this module), used here.
pub use crate::config::WriterConfig;

/// What a writer is told from outside its connection.
#[derive(Debug)]
pub struct Signals {
    /// Replies from the reader.
    pub replies: ReplyReceiver,
    /// Fires, with the close reason, when another connection takes the session over (4001) or an
    /// operator closes this connection (admin API: 4009, 4010, 4011).
    pub kicked: oneshot::Receiver<CloseReason>,
    /// Turns true once, when the server starts shutting down. The writer looks at it whenever it
    /// wakes, so whoever sets it then wakes the room's listeners ([`Room::wake_listeners`]), as
    /// `App::begin_drain` does.
    pub shutdown: watch::Receiver<bool>,
    /// When the connection's token expires (`None` without a token).
    pub expiry: Option<TokenExpiry>,
}

/// A connection's socket end: writes frames (each under `--write-timeout`), carries out the
/// reader's replies, and writes the final close frame. Every writer goes through one.
pub struct Outbox<S> {
    ws: S,
    write_timeout: Duration,
}

pub struct Writer<'a, S> {
    out: Outbox<S>,
    /// Shared by every connection (the server's is in `App`).
    config: &'a WriterConfig,
    room: &'a Room,
    session: &'a Session,
    /// The connection's place in the room's write pass: while the task does not own it, a pass
    /// may write a delta itself and move the revision the client holds.
    slot: Arc<Slot>,
    /// Whether the task owns the socket (it does from the start until the first catch-up).
    owned: bool,
    /// The revision the client holds (while `owned`; otherwise the slot knows).
    last_sent: Rev,
    presence_seq: u64,
    broadcast_seq: u64,
    /// Reused between catch-ups (allocated on first need).
    changes: Vec<Arc<Change>>,
    /// The newest rollback reject this connection has looked at (see `room::durable`).
    rejections_seen: u64,
    /// What the reader heard last, for the idle timeout (none: no idle timeout here).
    heard: Option<&'a Heard>,
}

/// Why the writer stopped on its own.
type WriteResult = Result<(), CloseReason>;

/// What woke the writer with something to write.
enum Event {
    /// A reply from the reader (`None`: the reader has gone).
    Reply(Option<Box<Outgoing>>),
    /// The room's write pass could not serve this connection: it catches up by itself.
    Revisions,
    Broadcasts,
    /// The shared timer (ping, presence tick, token, shutdown close).
    Timer,
}

impl<'a, S: FrameSink> Writer<'a, S> {
    /// A writer whose deltas all go through its own task (no socket the pass could write to:
    /// in-memory sinks).
    pub fn new(ws: S, config: &'a WriterConfig, session: &'a Arc<Session>) -> Self {
        Self::with_slot(ws, config, session, Slot::new(session.clone(), None))
    }

    /// A writer sharing its socket with the room's write pass through `slot` (made by
    /// [`Slot::new`] with the same socket's write half, and not released yet).
    pub fn with_slot(ws: S, config: &'a WriterConfig, session: &'a Session, slot: Arc<Slot>) -> Self {
        Writer {
            out: Outbox { ws, write_timeout: config.write_timeout },
            config,
            room: &session.room,
            session,
            slot,
            owned: true,
            last_sent: Rev(0),
            presence_seq: 0,
            broadcast_seq: 0,
            changes: Vec::new(),
            rejections_seen: session.room.rejection_seq(),
            heard: None,
        }
    }

    /// Closes the connection (1001, idle timeout) once `heard` has heard nothing for
    /// `idle_timeout`.
    #[must_use]
    pub fn heard(mut self, heard: &'a Heard) -> Self {
        self.heard = Some(heard);
        self
    }

    /// Sends `welcome` and the first catch-up, then everything the room and the reader produce,
    /// until the connection ends; returns why (after writing its close frame when it can).
    ///
    /// `signals` is borrowed and `from` boxed: an `async fn` keeps what it is given by value
    /// twice in its future (as the argument and as the local it moves into), and every
    /// connection holds this future for its life.
    pub async fn run(&mut self, from: Box<ResumeFrom>, resumed: bool, signals: &mut Signals) -> CloseReason {
        let Signals { replies: rx, kicked, shutdown, expiry } = signals;
        // One stream for the connection's life: its waker stays registered between wake-ups
        // instead of being registered anew by every `select!`.
        let mut replies = rx.stream();
        // The next token deadline: `expiring` to send, then the 4401 close.
        let mut warned = false;
        let mut presence = self.room.presence.subscribe();
        let mut broadcasts = self.room.broadcasts.subscribe();
        presence.mark_unchanged();
        broadcasts.mark_unchanged();
        // Registered before the first catch-up, so no revision falls between the two: a pass
        // meanwhile finds the slot owned and wakes this task.
        let slot = self.slot.clone();
        let room = self.room;
        let _listening = room.listen(slot.clone());
        // The rarer steps' futures are boxed: inline, the largest of them would size this future
        // (which every connection holds for its life) however seldom it runs.
        if let Err(reason) = Box::pin(self.hello(&from, resumed)).await {
            return reason;
        }
        // Boxed, and dropped once used: its strings would otherwise stay for the connection's life.
        drop(from);
        self.release();
        let mut kick_gone = false;
        // Every deadline (ping, presence tick, token, shutdown close, idle timeout) shares one
        // timer, armed for the earliest: an idle connection's task holds one `Sleep`, not five.
        let mut due = Deadlines {
            ping: Instant::now() + self.config.ping_interval,
            presence: None,
            // A drain that began before this connection subscribed counts too.
            close: shutdown.borrow_and_update().then(|| self.close_moment()),
            token: None,
            idle: None,
        };
        let timer = tokio::time::sleep_until(due.ping);
        tokio::pin!(timer);
        let result: WriteResult = loop {
            // The drain wakes every room's listeners (`App::begin_drain`), so a wake-up is when to
            // look: no `changed()` future waits on the flag (each connection would hold one).
            // Only the moment is chosen here: the writer keeps working until it comes.
            if due.close.is_none() && *shutdown.borrow() {
                due.close = Some(self.close_moment());
            }
            // The next token deadline: `expiring` to send, then the 4401 close.
            due.token = expiry.map(|e| if warned { e.close_at } else { e.warn_at });
            due.idle = self.heard.map(|h| h.last() + self.config.idle_timeout);
            {
                // Scoped: nothing but the `select!` lives across its wait.
                let next = due.earliest();
                if timer.deadline() != next {
                    timer.as_mut().reset(next);
                }
            }
            // Not `biased`: under a constant stream of commits the revision arm is always ready,
            // and a fixed order would starve pings, presence and broadcasts behind it.
            let event = tokio::select! {
                out = std::future::poll_fn(|cx| std::pin::Pin::new(&mut replies).poll_next(cx)) => {
                    if let Some(Outgoing::Refreshed { expiry: renewed, .. }) = out.as_deref() {
                        *expiry = Some(*renewed);
                        warned = false;
                    }
                    Event::Reply(out)
                }
                // A kick sender dropped without sending is not a kick: stop listening.
                r = &mut *kicked, if !kick_gone => match r {
                    Ok(reason) => break Err(reason),
                    Err(_) => {
                        kick_gone = true;
                        continue;
                    }
                },
                () = slot.woken() => Event::Revisions,
                _ = broadcasts.changed() => Event::Broadcasts,
                _ = presence.changed(), if due.presence.is_none() => {
                    due.presence = Some(PresenceClock::next_boundary(self.config.presence_interval));
                    continue;
                }
                () = timer.as_mut() => Event::Timer,
            };
            // Every write below is the task's own: it takes the socket from the passes first.
            if let Err(reason) = self.claim().await {
                break Err(reason);
            }
            let step = match event {
                Event::Reply(out) => Box::pin(self.out.reply(out)).await,
                // Boxed too: the room's write pass serves a caught-up connection, so this task
                // catches up only when it fell behind or its socket would block.
                Event::Revisions => Box::pin(self.wake_up()).await,
                Event::Broadcasts => Box::pin(self.send_broadcasts()).await,
                Event::Timer => Box::pin(self.on_time(&mut due, *expiry, &mut warned)).await,
            };
            if let Err(reason) = step {
                break Err(reason);
            }
            self.release();
        };
        let reason = result.err().unwrap_or(CloseReason::Protocol);
        // The socket stays the task's from here on: no pass writes after the close.
        let claimed = self.claim().await;
        if reason == CloseReason::Shutdown && claimed.is_ok() {
            // A write error here ends the connection all the same; the close below is skipped
            // when the socket is gone.
            let _ = Box::pin(self.flush(rx)).await;
        }
        Box::pin(self.out.finish(reason)).await;
        reason
    }

    /// Takes the socket from the room's write pass (a no-op when the task owns it), and with it
    /// the revision the client holds now.
    async fn claim(&mut self) -> WriteResult {
        while !self.owned {
            match self.slot.take() {
                Taken::Idle(held) => self.last_sent = held,
                Taken::Handed(held, rest) => {
                    // Owned from here even if the rest fails: no pass writes after it.
                    self.owned = true;
                    if let Some(rest) = rest {
                        // Boxed: rare, and its timer would size every connection's future.
                        Box::pin(self.slot.write_rest(&rest, self.config.write_timeout)).await?;
                    }
                    self.last_sent = held;
                }
                Taken::PassWriting => {
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            self.owned = true;
        }
        Ok(())
    }

    /// Hands the socket back to the room's write pass.
    fn release(&mut self) {
        if self.owned {
            self.owned = false;
            self.slot.release(self.last_sent);
        }
    }

    /// Does whatever has come due on the shared timer: the shutdown close, the token's warning or
    /// close, the presence tick, the ping.
    async fn on_time(
        &mut self,
        due: &mut Deadlines,
        expiry: Option<TokenExpiry>,
        warned: &mut bool,
    ) -> WriteResult {
        let now = Instant::now();
        if due.close.is_some_and(|at| at <= now) {
            return Err(CloseReason::Shutdown);
        }
        // Read afresh: a frame may have come in since the deadline was set.
        if self.heard.is_some_and(|h| h.last() + self.config.idle_timeout <= now) {
            return Err(CloseReason::Idle);
        }
        if let (Some(at), Some(e)) = (due.token, expiry)
            && at <= now
        {
            if *warned {
                return Err(CloseReason::Unauthorized);
            }
            *warned = true;
            self.out.send(&protocol::expiring_msg(e.exp), Kind::Control).await?;
        }
        if due.presence.is_some_and(|at| at <= now) {
            due.presence = None;
            self.send_presence(PresenceClock::tick(self.config.presence_interval)).await?;
        }
        if due.ping <= now {
            due.ping = now + self.config.ping_interval;
            self.out.write(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await?;
        }
        Ok(())
    }

    /// A random moment within 80 % of the drain window, so clients do not all reconnect at the
    /// same instant.
    fn close_moment(&self) -> Instant {
        let window = self.config.shutdown_timeout.mul_f64(0.8);
        Instant::now() + window.mul_f64(rand::rng().random::<f64>())
    }

    /// Before the shutdown close: everything the room committed, then every reply the reader
    /// had queued (rejects among them), so no change this client sent is left unanswered by
    /// anything the server already decided.
    async fn flush(&mut self, rx: &ReplyReceiver) -> WriteResult {
        self.wake_up().await?;
        while let Ok(out) = rx.try_recv() {
            self.out.reply(Some(out)).await?;
        }
        Ok(())
    }

    /// `welcome`, then exactly one `delta` or `snapshot` bringing the client to `welcome.rev`.
    async fn hello(&mut self, from: &ResumeFrom, resumed: bool) -> WriteResult {
        let room = self.room;
        self.broadcast_seq = room.broadcasts.seq();
        let presence = room.presence.welcome();
        self.presence_seq = presence.seq;
        let delivery = self.session.catch_up(from.cursor(resumed), &mut self.changes);
        let Some(Delivery { frame, to, snapshot, last_req, .. }) = delivery else {
            unreachable!("a join or resume is always sent a frame")
        };
        let outcome = match (resumed, snapshot) {
            (false, _) => ConnectOutcome::New,
            (true, None) => ConnectOutcome::Delta,
            (true, Some(_)) => ConnectOutcome::Snapshot,
        };
        metrics::counter!(m::SESSION_CONNECTS, "outcome" => outcome.label()).increment(1);
        let welcome = protocol::Welcome {
            client: self.session.client,
            user: self.session.user.as_deref(),
            session: &self.session.token,
            epoch: room.epoch().as_str(),
            rev: to,
            resumed,
            last_client_req_id: last_req,
            presence_json: &presence.peers,
            presence_count: presence.count,
            stacks: room.history_flags(UserKey::of(self.session.user.as_ref(), self.session.client).as_ref()),
        }
        .encode();
        self.out.send(&welcome, Kind::Control).await?;
        // Noted as the frame is handed to the socket, so a client that has read it never sees an
        // older figure in the admin API (and a failed write ends the connection anyway).
        self.session.note_sent(to);
        self.deliver(&frame, snapshot).await?;
        self.last_sent = to;
        Ok(())
    }

    /// Sends everything after `last_sent` in one frame.
    async fn wake_up(&mut self) -> WriteResult {
        if self.room.rejection_seq() > self.rejections_seen {
            // Rare: boxed so this hot step's future stays small.
            Box::pin(self.send_rollbacks()).await?;
        }
        let Some(d) = self.session.catch_up(Cursor::Holds(self.last_sent), &mut self.changes) else {
            return Ok(());
        };
        m::hot().catchup_lag.record(d.to.0.saturating_sub(self.last_sent.0) as f64);
        self.session.note_sent(d.to);
        self.deliver(&d.frame, d.snapshot).await?;
        if let Some(at) = d.newest_committed_at {
            m::hot().delivery_lag.record(at.elapsed().as_secs_f64());
        }
        self.last_sent = d.to;
        Ok(())
    }

    /// Rejects for this client's changes that the store could not write and that were rolled
    /// back.
    async fn send_rollbacks(&mut self) -> WriteResult {
        for r in self.room.rejections_for(self.session.client, &mut self.rejections_seen) {
            crate::app::count_reject(&r.reject);
            self.out.send(&protocol::reject_msg(r.client_req_id, &r.reject), Kind::Control).await?;
        }
        Ok(())
    }

    /// Sends a catch-up frame, counting a snapshot by its reason.
    async fn deliver(&mut self, frame: &Bytes, snapshot: Option<crate::room::SnapshotReason>) -> WriteResult {
        match snapshot {
            Some(reason) => {
                metrics::counter!(m::SNAPSHOTS_SENT, "reason" => reason.as_str()).increment(1);
                self.out.send(frame, Kind::Snapshot).await
            }
            None => self.out.send(frame, Kind::Delta).await,
        }
    }

    async fn send_presence(&mut self, tick: Option<u64>) -> WriteResult {
        let Some((to, frame)) = self.room.presence.changes_since(self.presence_seq, tick) else {
            return Ok(());
        };
        let skipped = to - self.presence_seq;
        self.presence_seq = to;
        if frame.is_empty() {
            return Ok(());
        }
        if skipped > 1 {
            metrics::counter!(m::PRESENCE_COALESCED).increment(skipped - 1);
        }
        self.out.send(&frame, Kind::Presence).await
    }

    async fn send_broadcasts(&mut self) -> WriteResult {
        let mut seq = self.broadcast_seq;
        let batch = self.room.broadcasts.after(&mut seq, self.session.client);
        self.broadcast_seq = seq;
        if batch.dropped > 0 {
            metrics::counter!(m::BROADCASTS_DROPPED).increment(batch.dropped);
            self.out.send(&protocol::dropped_msg(batch.dropped), Kind::Control).await?;
        }
        for frame in &batch.frames {
            self.out.send(frame, Kind::Broadcast).await?;
        }
        Ok(())
    }
}

impl<S: FrameSink> Outbox<S> {
    /// Carries out one reply from the reader (`None`: the reader has gone).
    async fn reply(&mut self, out: Option<Box<Outgoing>>) -> WriteResult {
        match out.map(|b| *b) {
            Some(Outgoing::Text(b) | Outgoing::Refreshed { frame: b, .. }) => {
                self.send(&b, Kind::Control).await
            }
            Some(Outgoing::Echo { binary, payload }) => {
                let frame = if binary { Frame::binary } else { Frame::text }(Payload::Borrowed(&payload));
                self.write(frame).await?;
                m::hot().sent(Kind::Control, payload.len());
                Ok(())
            }
            Some(Outgoing::Pong(p)) => self.write(Frame::pong(Payload::Owned(p))).await,
            Some(Outgoing::CloseEcho(p)) => {
                let _ = self.write(Frame::close_raw(Payload::Owned(p))).await;
                Err(CloseReason::Normal)
            }
            Some(Outgoing::Close(reason)) => Err(reason),
            None => Err(CloseReason::Gone),
        }
    }

    /// Writes the close frame for `reason`, when one can still be written.
    async fn finish(&mut self, reason: CloseReason) {
        if reason.sends_frame() && !self.ws.is_closed() {
            let frame = Frame::close(reason.close_code(), reason.text().as_bytes());
            let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.write_frame(frame)).await;
        }
    }

    async fn send(&mut self, bytes: &Bytes, kind: Kind) -> WriteResult {
        self.write(Frame::text(Payload::Borrowed(bytes))).await?;
        m::hot().sent(kind, bytes.len());
        Ok(())
    }

    /// Writes one frame. Most writes complete at once, so the `--write-timeout` timer is only
    /// armed for a write that has to wait for the socket.
    async fn write(&mut self, frame: Frame<'_>) -> WriteResult {
        use std::task::Poll;
        let write_timeout = self.write_timeout;
        let mut fut = std::pin::pin!(self.ws.write_frame(frame));
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(r) => r,
            // Boxed: only a write that waits needs the timer.
            Poll::Pending => match Box::pin(tokio::time::timeout(write_timeout, fut)).await {
                Ok(r) => r,
                Err(_) => {
                    metrics::counter!(m::SLOW_CLIENT_CLOSES).increment(1);
                    return Err(CloseReason::SlowClient);
                }
            },
        };
        result.map_err(|_| CloseReason::Gone)
    }
}

/// The writer of the test-only echo endpoint (`--test-echo-endpoint`): the reader's replies
/// (echoed messages, pongs, close frames) through the same [`Outbox`] as a room connection's, until
/// the connection ends or the server shuts down. No welcome, no server pings: the Autobahn
/// TestSuite counts every frame it did not ask for.
pub async fn run_echo<S: FrameSink>(
    ws: S,
    write_timeout: Duration,
    replies: ReplyReceiver,
    mut shutdown: watch::Receiver<bool>,
) -> CloseReason {
    let mut out = Outbox { ws, write_timeout };
    let mut replies = replies.stream();
    let reason = loop {
        let step = tokio::select! {
            r = std::future::poll_fn(|cx| std::pin::Pin::new(&mut replies).poll_next(cx)) => out.reply(r).await,
            _ = shutdown.changed() => Err(CloseReason::Shutdown),
        };
        if let Err(reason) = step {
            break reason;
        }
    };
    out.finish(reason).await;
    reason
}

/// The grid presence messages are sent on: boundaries every `--presence-interval` from one
/// process-wide origin. Connections that wake on the same boundary ask for the same range and
/// share one encoded frame (see `presence`). An interval of 0 means "immediately", with no grid.
struct PresenceClock;

impl PresenceClock {
    fn origin() -> Instant {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        Instant::from_std(*ORIGIN.get_or_init(std::time::Instant::now))
    }

    /// The slot number now, or `None` without a grid.
    fn tick(interval: Duration) -> Option<u64> {
        if interval.is_zero() {
            return None;
        }
        let elapsed = Instant::now().saturating_duration_since(Self::origin());
        Some((elapsed.as_nanos() / interval.as_nanos()) as u64)
    }

    /// The next boundary after now (now itself without a grid).
    fn next_boundary(interval: Duration) -> Instant {
        match Self::tick(interval) {
            Some(t) => {
                let nanos = interval.as_nanos().saturating_mul(u128::from(t) + 1);
                Self::origin() + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            None => Instant::now(),
        }
    }
}
