//! A connection's writer: the only code that writes to a WebSocket.
//!
//! It is pull-based: it remembers `last_sent` (the revision the client holds) and, when the room's
//! revision moves, sends everything after it in one `delta` frame (a single change to a caught-up
//! non-author is the frame the room encoded once for everyone), or a `snapshot` when the ring no
//! longer holds what the client is missing. Presence and broadcasts are pulled the same way. A
//! connection therefore holds O(1) memory however far behind it is. Replies from the reader
//! (rejects, pongs, errors, close requests) arrive on a small bounded channel and go first. A
//! write that does not complete within `--write-timeout` ends the connection.

use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use rand::Rng;
use tokio::sync::mpsc;

use crate::connection::{CLOSE_GRACE, CloseReason, ResumeFrom, WriteIo};
use crate::ids::Rev;
use crate::metrics::{self as m, FrameKind as Kind};
use crate::protocol;
use crate::room::{Change, Room};
use crate::server::App;
use crate::session::Session;

/// What the reader asks the writer to send.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A control message (reject, error, pong).
    Text(Bytes),
    /// Reply to a client ping.
    Pong(Vec<u8>),
    /// Echo of the client's close frame; the writer stops after it.
    CloseEcho(Vec<u8>),
    /// Close with our own code; the writer stops after it.
    Close(CloseReason),
}

pub(crate) struct Writer<'a> {
    ws: WebSocketWrite<WriteIo>,
    app: &'a App,
    room: &'a Room,
    session: &'a Session,
    /// The revision the client holds.
    last_sent: Rev,
    presence_seq: u64,
    broadcast_seq: u64,
    /// Reused between catch-ups (allocated on first need).
    changes: Vec<Arc<Change>>,
}

/// Why the writer stopped on its own.
type WriteResult = Result<(), CloseReason>;

impl<'a> Writer<'a> {
    pub(crate) fn new(
        ws: WebSocketWrite<WriteIo>,
        app: &'a App,
        room: &'a Room,
        session: &'a Session,
    ) -> Self {
        Writer {
            ws,
            app,
            room,
            session,
            last_sent: Rev(0),
            presence_seq: 0,
            broadcast_seq: 0,
            changes: Vec::new(),
        }
    }

    pub(crate) async fn run(
        &mut self,
        from: ResumeFrom,
        resumed: bool,
        mut rx: mpsc::Receiver<Box<Outgoing>>,
        mut kicked: tokio::sync::oneshot::Receiver<()>,
    ) -> CloseReason {
        let mut revs = self.room.subscribe();
        let mut presence = self.room.presence.subscribe();
        let mut broadcasts = self.room.broadcasts.subscribe();
        let mut shutdown = self.app.shutdown_signal();
        revs.mark_unchanged();
        presence.mark_unchanged();
        broadcasts.mark_unchanged();
        if let Err(reason) = self.hello(from, resumed).await {
            return reason;
        }
        let interval = self.app.config.presence_interval;
        let mut next_presence = tokio::time::Instant::now();
        let mut presence_pending = false;
        let mut ping = tokio::time::interval(self.app.config.ping_interval);
        ping.reset();
        let result: WriteResult = loop {
            // Not `biased`: under a constant stream of commits the revision arm is always ready,
            // and a fixed order would starve pings, presence and broadcasts behind it.
            let step = tokio::select! {
                out = rx.recv() => match out.map(|b| *b) {
                    Some(Outgoing::Text(b)) => self.send(&b, Kind::Control).await,
                    Some(Outgoing::Pong(p)) => self.write(Frame::pong(Payload::Owned(p))).await,
                    Some(Outgoing::CloseEcho(p)) => {
                        let _ = self.write(Frame::close_raw(Payload::Owned(p))).await;
                        Err(CloseReason::Normal)
                    }
                    Some(Outgoing::Close(reason)) => Err(reason),
                    None => Err(CloseReason::Gone),
                },
                _ = &mut kicked => Err(CloseReason::TakenOver),
                _ = shutdown.changed() => {
                    // Spread closes over most of the drain window so clients do not all
                    // reconnect at the same instant.
                    let window = self.app.config.shutdown_timeout.mul_f64(0.8);
                    let delay = window.mul_f64(rand::rng().random::<f64>());
                    tokio::time::sleep(delay).await;
                    Err(CloseReason::Shutdown)
                }
                r = revs.changed() => match r {
                    Ok(()) => self.catch_up().await,
                    Err(_) => Err(CloseReason::Shutdown),
                },
                _ = broadcasts.changed() => self.send_broadcasts().await,
                _ = presence.changed(), if !presence_pending => {
                    presence_pending = true;
                    next_presence = PresenceClock::next_boundary(interval);
                    Ok(())
                }
                _ = tokio::time::sleep_until(next_presence), if presence_pending => {
                    presence_pending = false;
                    self.send_presence(PresenceClock::tick(interval)).await
                }
                _ = ping.tick() => self.write(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await,
            };
            if let Err(reason) = step {
                break Err(reason);
            }
        };
        let reason = result.err().unwrap_or(CloseReason::Protocol);
        let can_close = !matches!(reason, CloseReason::Normal | CloseReason::SlowClient | CloseReason::Gone);
        if can_close && !self.ws.is_closed() {
            let frame = Frame::close(reason.close_code(), reason.text().as_bytes());
            let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.write_frame(frame)).await;
        }
        reason
    }

    /// `welcome`, then exactly one `delta` or `snapshot` bringing the client to `welcome.rev`.
    async fn hello(&mut self, from: ResumeFrom, resumed: bool) -> WriteResult {
        let room = self.room;
        self.broadcast_seq = room.broadcasts.seq();
        let (presence_seq, peers_json) = room.presence.online_json();
        self.presence_seq = presence_seq;
        let usable_since = match (from.since, from.epoch.as_deref()) {
            (Some(since), Some(epoch)) if epoch == room.epoch().as_str() => Some(since),
            _ => None,
        };
        // One hold of the session lock covers the catch-up and the lastClientReqId the welcome
        // reports, so both describe the same moment (no commit of this session is half-way).
        let (frame, kind, to, outcome, last_req) = {
            let st = self.session.state.lock();
            let last_req = st.last_req;
            let mut delta_from = None;
            if let Some(since) = usable_since
                && room.changes_after(since, &mut self.changes)
            {
                delta_from = Some(since);
            }
            let (frame, kind, to, outcome) = match delta_from {
                Some(since) => {
                    let to = self.changes.last().map_or(since, |c| c.rev);
                    (self.delta_frame(since, to), Kind::Delta, to, "delta")
                }
                None => {
                    let reason = match (from.since, from.epoch.as_deref()) {
                        (Some(_), Some(e)) if e != room.epoch().as_str() => "epoch",
                        (Some(_), _) => "behind_ring",
                        (None, _) if resumed => "resume",
                        _ => "join",
                    };
                    let snap = room.snapshot();
                    metrics::counter!(m::SNAPSHOTS_SENT, "reason" => reason).increment(1);
                    (
                        protocol::snapshot_frame(snap.rev, last_req, &snap.state),
                        Kind::Snapshot,
                        snap.rev,
                        "snapshot",
                    )
                }
            };
            (frame, kind, to, outcome, last_req)
        };
        metrics::counter!(m::SESSION_CONNECTS, "outcome" => if resumed { outcome } else { "new" })
            .increment(1);
        let welcome = protocol::Welcome {
            client: self.session.client,
            session: &self.session.token,
            epoch: room.epoch().as_str(),
            rev: to,
            resumed,
            last_client_req_id: last_req,
            presence_json: &peers_json,
        }
        .encode();
        self.send(&welcome, Kind::Control).await?;
        self.send(&frame, kind).await?;
        self.last_sent = to;
        self.changes.clear();
        Ok(())
    }

    /// Sends everything after `last_sent` in one frame.
    async fn catch_up(&mut self) -> WriteResult {
        let head = self.room.rev();
        if head <= self.last_sent {
            return Ok(());
        }
        m::hot().catchup_lag.record((head.0 - self.last_sent.0) as f64);
        if !self.room.changes_after(self.last_sent, &mut self.changes) {
            let (frame, rev) = self.snapshot_frame();
            metrics::counter!(m::SNAPSHOTS_SENT, "reason" => "behind_ring").increment(1);
            self.send(&frame, Kind::Snapshot).await?;
            self.last_sent = rev;
            return Ok(());
        }
        let Some(newest) = self.changes.last() else { return Ok(()) };
        let (to, committed_at) = (newest.rev, newest.committed_at);
        let frame = self.delta_frame(self.last_sent, to);
        self.changes.clear();
        self.send(&frame, Kind::Delta).await?;
        m::hot().delivery_lag.record(committed_at.elapsed().as_secs_f64());
        self.last_sent = to;
        Ok(())
    }

    /// The delta frame for `self.changes` (which run from `from+1` to `to`).
    fn delta_frame(&self, from: Rev, to: Rev) -> Bytes {
        self.room.delta_frame(&self.changes, from, to, self.session.client)
    }

    /// A snapshot frame at the current revision with this session's `lastClientReqId` as of that
    /// revision (the session lock is taken first, so no commit of ours is half-way).
    fn snapshot_frame(&self) -> (Bytes, Rev) {
        let st = self.session.state.lock();
        let snap = self.room.snapshot();
        let frame = protocol::snapshot_frame(snap.rev, st.last_req, &snap.state);
        (frame, snap.rev)
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
        self.send(&frame, Kind::Presence).await
    }

    async fn send_broadcasts(&mut self) -> WriteResult {
        let mut seq = self.broadcast_seq;
        let batch = self.room.broadcasts.after(&mut seq, self.session.client);
        self.broadcast_seq = seq;
        if batch.dropped > 0 {
            metrics::counter!(m::BROADCASTS_DROPPED).increment(batch.dropped);
            self.send(&protocol::dropped_msg(batch.dropped), Kind::Control).await?;
        }
        for frame in &batch.frames {
            self.send(frame, Kind::Broadcast).await?;
        }
        Ok(())
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
        let mut fut = std::pin::pin!(self.ws.write_frame(frame));
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => match tokio::time::timeout(self.app.config.write_timeout, fut).await {
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

/// The grid presence messages are sent on: boundaries every `--presence-interval` from one
/// process-wide origin. Connections that wake on the same boundary ask for the same range and
/// share one encoded frame (see `presence`). An interval of 0 means "immediately", with no grid.
struct PresenceClock;

impl PresenceClock {
    fn origin() -> tokio::time::Instant {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        tokio::time::Instant::from_std(*ORIGIN.get_or_init(std::time::Instant::now))
    }

    /// The slot number now, or `None` without a grid.
    fn tick(interval: std::time::Duration) -> Option<u64> {
        if interval.is_zero() {
            return None;
        }
        let elapsed = tokio::time::Instant::now().saturating_duration_since(Self::origin());
        Some((elapsed.as_nanos() / interval.as_nanos()) as u64)
    }

    /// The next boundary after now (now itself without a grid).
    fn next_boundary(interval: std::time::Duration) -> tokio::time::Instant {
        match Self::tick(interval) {
            Some(t) => {
                let nanos = interval.as_nanos().saturating_mul(u128::from(t) + 1);
                Self::origin() + std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            None => tokio::time::Instant::now(),
        }
    }
}
