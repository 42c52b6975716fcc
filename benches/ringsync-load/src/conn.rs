//! One WebSocket connection as its group drives it: opening (with a resume point), its turn when
//! its waker fired, reading into the group's scratch buffer, cutting the bytes into frames, and
//! writing its queued frames. What each server message then does is `receive`'s.
//!
//! A connection holds only its `TcpStream` plus a carry buffer and an output buffer, both empty
//! (unallocated) until a frame straddles two reads or a write does not complete at once. Frames
//! are scanned in place (`scan`), never parsed into a tree. `session.rev` is always the revision
//! of the last `delta` or `snapshot` received; a `delta` whose `from` is not it counts as a gap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::ctx::{Ctx, Local};
use crate::group::{ConnWake, GroupTx};
use crate::role::{Role, Tick};
use crate::ws::{self, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

mod receive;

/// Reads per connection per wake-up before the group moves on (fairness under a flood).
const READS_PER_TURN: usize = 16;
/// Carry buffers above this are freed once empty, so one big snapshot does not pin memory.
const KEEP_CARRY: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `welcome`.
    Welcome,
    /// Waiting for the `delta` or `snapshot` that follows it.
    Sync,
    Live,
}

/// Where a connection's session stands, for a resume.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub session: String,
    pub epoch: String,
    pub rev: u64,
}

/// One WebSocket connection.
pub struct Conn {
    stream: Option<TcpStream>,
    /// A partial frame left over from the previous read.
    carry: Vec<u8>,
    /// Bytes queued for the socket.
    out: Vec<u8>,
    room: Arc<str>,
    role: Role,
    phase: Phase,
    /// When the connection attempt started (for connect-and-sync times).
    started: Instant,
    /// This connection is a resume attempt.
    resuming: bool,
    /// Not yet seen by its group (its carry holds what came with the upgrade response).
    fresh: bool,
    /// Queues this connection on its group's ready list (set when the group takes it).
    waker: Option<(Arc<ConnWake>, Waker)>,
    converged: bool,
    session: Resume,
}

/// The parts of a group a connection needs while it handles its frames.
pub struct Sink<'a> {
    pub ctx: &'a Ctx,
    pub local: &'a mut Local,
    pub lat: &'a mut Histogram<u64>,
    pub sync: &'a mut Histogram<u64>,
    pub resync: &'a mut Histogram<u64>,
    pub now: Instant,
    pub now_us: u64,
    pub measuring: bool,
    pub target_rev: u64,
}

/// Opens a connection (waiting for a connect slot) and hands it to `group`.
pub async fn open(ctx: Arc<Ctx>, room: Arc<str>, role: Role, resume: Option<Resume>, group: GroupTx) {
    let Ok(_permit) = ctx.connect_sem.acquire().await else { return };
    let started = Instant::now();
    let path = match &resume {
        Some(r) => format!("/v1/rooms/{room}/ws?session={}&epoch={}&since={}", r.session, r.epoch, r.rev),
        None => format!("/v1/rooms/{room}/ws"),
    };
    let rcvbuf = match &role {
        Role::Slow(s) => s.rcvbuf,
        _ => None,
    };
    let addr = if matches!(role, Role::Writer(_)) { ctx.addr } else { ctx.reader_addr };
    match ws::connect(addr, &path, rcvbuf).await {
        Ok((stream, leftover)) => {
            let conn = Conn {
                stream: Some(stream),
                carry: leftover,
                out: Vec::new(),
                room,
                role,
                phase: Phase::Welcome,
                started,
                resuming: resume.is_some(),
                fresh: true,
                waker: None,
                converged: false,
                session: resume.unwrap_or_default(),
            };
            let _ = group.send(crate::group::GroupMsg::Add(Box::new(conn)));
        }
        Err(e) => {
            ctx.c.connect_errors.fetch_add(1, Relaxed);
            ctx.error(format!("connect: {e}"));
        }
    }
}

// What the group asks of a connection.
impl Conn {
    pub fn live(&self) -> bool {
        self.stream.is_some()
    }

    /// Sends a close frame if the socket takes it at once, then drops the socket.
    pub fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let mut f = Vec::with_capacity(8);
            ws::encode_frame(&mut f, OP_CLOSE, &1000u16.to_be_bytes());
            let _ = s.try_write(&f);
        }
    }

    /// Sets the waker that queues this connection on its group, and queues it once.
    pub fn attach(&mut self, wake: Arc<ConnWake>) {
        let waker = Waker::from(wake.clone());
        waker.wake_by_ref();
        self.waker = Some((wake, waker));
    }

    /// The revision a reader holds (`Some(None)`: its connection is gone); `None` for a writer.
    pub fn reader_rev(&self) -> Option<Option<u64>> {
        self.role.counts_reads().then(|| self.live().then_some(self.session.rev))
    }

    /// Drops a live reader's socket abruptly (no close frame, as when a network path or a proxy
    /// drops) and hands back where to resume it. The slot stays (dead), so the group's other
    /// connections keep their indices.
    pub fn drop_for_resume(&mut self) -> Option<(Arc<str>, Resume)> {
        if !matches!(self.role, Role::Reader) || !self.live() {
            return None;
        }
        drop(self.stream.take());
        Some((self.room.clone(), std::mem::take(&mut self.session)))
    }

    /// Sends what the role has due, and writes it out at once if the socket takes it.
    pub fn tick(&mut self, t: &mut Tick<'_>) {
        if !self.live() || self.phase != Phase::Live {
            return;
        }
        if self.role.send_due(&mut self.out, t)
            && !self.out.is_empty()
            && let Some((_, waker)) = self.waker.clone()
        {
            self.flush(&mut Context::from_waker(&waker), t.ctx);
        }
    }

    /// Moves a slow reader between pausing and reading.
    pub fn slow_tick(&mut self, now: Instant, writing: bool) {
        if !self.live() || self.phase != Phase::Live {
            return;
        }
        let Role::Slow(slow) = &mut self.role else { return };
        if slow.tick(now, writing)
            && let Some((_, waker)) = &self.waker
        {
            // Its socket woke the group while paused and was skipped: queue it again.
            waker.wake_by_ref();
        }
    }

    /// One turn after its waker fired: what came with the upgrade, then the socket (unless
    /// paused), then pending output.
    pub fn poll_turn(&mut self, scratch: &mut [u8], sink: &mut Sink<'_>) {
        let Some((wake, waker)) = self.waker.clone() else { return };
        // Cleared before polling: a readiness change from here on queues it again.
        wake.unqueue();
        if !self.live() {
            return;
        }
        let mut cx = Context::from_waker(&waker);
        if self.fresh {
            self.fresh = false;
            let first = std::mem::take(&mut self.carry);
            self.ingest(&first, sink);
        }
        if !self.role.paused() {
            self.read_ready(&mut cx, scratch, sink);
        }
        self.flush(&mut cx, sink.ctx);
    }
}

// Bytes in and out.
impl Conn {
    fn read_ready(&mut self, cx: &mut Context<'_>, scratch: &mut [u8], sink: &mut Sink<'_>) {
        for _ in 0..READS_PER_TURN {
            let Some(stream) = self.stream.as_mut() else { return };
            let mut rb = ReadBuf::new(scratch);
            match Pin::new(stream).poll_read(cx, &mut rb) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    sink.local.eofs += 1;
                    self.stream = None;
                    return;
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    sink.now = Instant::now();
                    sink.now_us = sink.ctx.now_us(sink.now);
                    self.ingest(&scratch[..n], sink);
                }
                Poll::Ready(Err(e)) => {
                    sink.ctx.error(format!("read: {e}"));
                    self.stream = None;
                    return;
                }
            }
        }
        // More may be waiting; come back after the other connections had their turn.
        cx.waker().wake_by_ref();
    }

    fn flush(&mut self, cx: &mut Context<'_>, ctx: &Ctx) {
        while !self.out.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                self.out.clear();
                return;
            };
            match Pin::new(stream).poll_write(cx, &self.out) {
                Poll::Ready(Ok(n)) if n == self.out.len() => self.out.clear(),
                Poll::Ready(Ok(0)) => {
                    ctx.error("write: socket accepted nothing");
                    self.stream = None;
                }
                Poll::Ready(Ok(n)) => {
                    self.out.drain(..n);
                }
                Poll::Ready(Err(e)) => {
                    ctx.error(format!("write: {e}"));
                    self.stream = None;
                }
                Poll::Pending => return,
            }
        }
    }

    /// Handles freshly read bytes: whole frames straight from `data`, the rest carried over.
    fn ingest(&mut self, data: &[u8], sink: &mut Sink<'_>) {
        if self.carry.is_empty() {
            let used = self.consume(data, sink);
            if used < data.len() && self.live() {
                let rest = &data[used..];
                self.carry.reserve(ws::frame_total(rest).unwrap_or(rest.len()).max(rest.len()));
                self.carry.extend_from_slice(rest);
            }
            return;
        }
        let mut carry = std::mem::take(&mut self.carry);
        carry.extend_from_slice(data);
        let used = self.consume(&carry, sink);
        carry.drain(..used);
        if carry.is_empty() && carry.capacity() > KEEP_CARRY {
            carry = Vec::new();
        } else if let Some(total) = ws::frame_total(&carry) {
            carry.reserve(total.saturating_sub(carry.len()));
        }
        if self.live() {
            self.carry = carry;
        }
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    fn consume(&mut self, buf: &[u8], sink: &mut Sink<'_>) -> usize {
        let mut used = 0;
        while self.live() {
            match ws::parse_frame(&buf[used..]) {
                Ok(Some(f)) => {
                    used += f.len;
                    self.on_frame(f.fin, f.opcode, f.payload, sink);
                }
                Ok(None) => break,
                Err(e) => {
                    sink.ctx.error(format!("bad frame from the server: {e:?}"));
                    self.stream = None;
                }
            }
        }
        used
    }

    fn on_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], sink: &mut Sink<'_>) {
        match opcode {
            OP_TEXT if fin => self.on_text(payload, sink),
            OP_PING => ws::encode_frame(&mut self.out, OP_PONG, payload),
            OP_PONG => {}
            OP_CLOSE => {
                let code =
                    if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                sink.local.closes += 1;
                *sink.ctx.close_codes.lock().expect("not poisoned").entry(code).or_default() += 1;
                self.close();
            }
            OP_TEXT | OP_BINARY | OP_CONT => sink.ctx.error("unexpected binary or fragmented frame"),
            other => sink.ctx.error(format!("unknown opcode {other}")),
        }
    }
}
