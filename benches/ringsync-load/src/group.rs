//! Groups: one tokio task drives many connections.
//!
//! A group owns up to `--group-size` connections. Its task is a single `poll_fn` that, on every
//! wake-up, takes new connections from its channel, runs its ticker (writers and cursor movers
//! send what is due), then reads the sockets that became readable into one shared 64 KiB scratch
//! buffer and scans the frames in place (`scan`): nothing is allocated per message. Each
//! connection registers its own waker with the runtime, which queues the connection's index and
//! wakes the group, so a wake-up costs the ready connections only, not a scan of all of them. A connection holds only
//! its `TcpStream` plus a carry buffer and an output buffer, both empty (unallocated) until a
//! frame straddles two reads or a write does not complete at once.
//!
//! Statistics go to group-local counters and histograms, flushed to the shared [`Ctx`] atomics at
//! the end of each wake-up; the histograms are merged once, when the group is stopped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::scan;
use crate::ws::{self, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// Reads per connection per wake-up before the group moves on (fairness under a flood).
const READS_PER_TURN: usize = 16;
/// A writer whose socket has this much unsent data skips changes instead of queueing more.
const MAX_PENDING_OUT: usize = 1 << 20;
/// Carry buffers above this are freed once empty, so one big snapshot does not pin memory.
const KEEP_CARRY: usize = 64 << 10;

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// What the whole run shares: where to connect, the phase flags, and the counters.
pub struct Ctx {
    pub addr: SocketAddr,
    /// Time zero for the `ts` values writers embed (µs since `base`).
    pub base: Instant,
    /// Latencies are recorded only while this is set (the measurement window).
    pub measuring: AtomicBool,
    /// Writers and cursor movers send only while this is set.
    pub writing: AtomicBool,
    /// Limits concurrent connection attempts (a connect storm past the listen backlog only
    /// measures SYN retransmits).
    pub connect_sem: Semaphore,
    pub c: Counters,
    /// A reader that reaches this revision counts once in `c.converged` (0 = off).
    pub target_rev: AtomicU64,
    /// The newest revision any writer has seen acknowledged.
    pub writer_rev: AtomicU64,
    /// The furthest a writer or mover fell behind its schedule (µs): load-generator stalls.
    pub max_send_lag_us: AtomicU64,
    /// Rare events only (closes, the first error), so a std mutex is plenty.
    pub close_codes: Mutex<BTreeMap<u16, u64>>,
    pub first_error: Mutex<Option<String>>,
}

impl Ctx {
    pub fn new(addr: SocketAddr, connect_concurrency: usize) -> Self {
        Ctx {
            addr,
            base: Instant::now(),
            measuring: AtomicBool::new(false),
            writing: AtomicBool::new(false),
            connect_sem: Semaphore::new(connect_concurrency.max(1)),
            c: Counters::default(),
            target_rev: AtomicU64::new(0),
            writer_rev: AtomicU64::new(0),
            max_send_lag_us: AtomicU64::new(0),
            close_codes: Mutex::new(BTreeMap::new()),
            first_error: Mutex::new(None),
        }
    }

    pub fn error(&self, e: impl std::fmt::Display) {
        self.c.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().expect("not poisoned");
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_micros() as u64
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic totals, read by the driver at the edges of the measurement window.
        #[derive(Default)]
        pub struct Counters { $(pub $name: AtomicU64,)* }
        /// A group's unflushed increments.
        #[derive(Default)]
        struct Local { $($name: u64,)* }
        impl Local {
            fn flush(&mut self, c: &Counters) {
                $(if self.$name != 0 { c.$name.fetch_add(std::mem::take(&mut self.$name), Relaxed); })*
            }
        }
        /// A copy of the counters at one instant.
        #[derive(Debug, Clone, Copy, Default)]
        pub struct Snap { $(pub $name: u64,)* }
        impl Counters {
            pub fn snap(&self) -> Snap { Snap { $($name: self.$name.load(Relaxed),)* } }
        }
        impl std::ops::Sub for Snap {
            type Output = Snap;
            fn sub(self, o: Snap) -> Snap { Snap { $($name: self.$name.wrapping_sub(o.$name),)* } }
        }
    };
}

counters!(
    // Received by readers and cursor movers (writers' own traffic is not counted).
    frames,
    bytes,
    deltas,
    changes,
    snapshots,
    presence_frames,
    presence_entries,
    // Received by slow readers (`Role::Slow`), kept apart from the above.
    slow_frames,
    slow_bytes,
    slow_deltas,
    slow_changes,
    slow_snapshots,
    // Sent by writers (changes) and movers (presence updates).
    sent,
    send_skipped,
    // Connection lifecycle.
    synced,
    connect_errors,
    resumed,
    resume_deltas,
    resume_snapshots,
    converged,
    closes,
    eofs,
    // Protocol problems: a delta whose `from` is not the revision held, reject/error messages.
    gaps,
    errors,
);

/// What a connection does besides reading.
#[derive(Debug, Clone)]
pub enum Role {
    /// Reads and counts.
    Reader,
    /// Sends `rate` changes per second carrying a timestamp and `filler` bytes of padding.
    Writer { rate: f64, filler: usize, started: Option<Instant>, sent: u64, req_id: u64 },
    /// Reads, and sends a presence (cursor) update every `period`.
    Mover { period: Duration, next: Option<Instant>, n: u64 },
    /// A reader that cannot keep up: while writers write it stops reading for `pause`, then
    /// reads for `read`, and so on (the first phase starts at a random point of the cycle).
    /// `rcvbuf` caps its socket's receive buffer, so the server sees the backlog early.
    Slow { pause: Duration, read: Duration, rcvbuf: Option<u32>, next: Option<Instant>, paused: bool },
}

impl Role {
    pub fn writer(rate: f64, filler: usize) -> Role {
        Role::Writer { rate, filler, started: None, sent: 0, req_id: 0 }
    }
    pub fn slow(pause: Duration, read: Duration, rcvbuf: Option<u32>) -> Role {
        Role::Slow { pause, read, rcvbuf, next: None, paused: false }
    }
    fn counts_reads(&self) -> bool {
        !matches!(self, Role::Writer { .. })
    }
    fn is_slow(&self) -> bool {
        matches!(self, Role::Slow { .. })
    }
    fn paused(&self) -> bool {
        matches!(self, Role::Slow { paused: true, .. })
    }
}

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
    pub session: Resume,
}

impl Conn {
    fn live(&self) -> bool {
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
}

/// Opens a connection (waiting for a connect slot) and hands it to `group`.
pub async fn open(
    ctx: Arc<Ctx>,
    room: Arc<str>,
    role: Role,
    resume: Option<Resume>,
    group: mpsc::UnboundedSender<GroupMsg>,
) {
    let Ok(_permit) = ctx.connect_sem.acquire().await else { return };
    let started = Instant::now();
    let path = match &resume {
        Some(r) => format!("/v1/rooms/{room}/ws?session={}&epoch={}&since={}", r.session, r.epoch, r.rev),
        None => format!("/v1/rooms/{room}/ws"),
    };
    let rcvbuf = match role {
        Role::Slow { rcvbuf, .. } => rcvbuf,
        _ => None,
    };
    match ws::connect(ctx.addr, &path, rcvbuf).await {
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
            let _ = group.send(GroupMsg::Add(Box::new(conn)));
        }
        Err(e) => {
            ctx.c.connect_errors.fetch_add(1, Relaxed);
            ctx.error(format!("connect: {e}"));
        }
    }
}

/// Commands to a group.
pub enum GroupMsg {
    Add(Box<Conn>),
    /// Drop every reader's socket and resume its session after `offline`.
    Reconnect {
        offline: Duration,
    },
    /// The revision every reader (not writer) holds; `None` for a dropped one.
    Revs(oneshot::Sender<Vec<Option<u64>>>),
    Stop(oneshot::Sender<GroupReport>),
}

/// What a stopped group hands back.
pub struct GroupReport {
    /// Commit → receive latency (µs) of changes and presence entries in the window.
    pub lat: Histogram<u64>,
    /// Connect start → first `delta`/`snapshot` (µs), fresh connections.
    pub sync: Histogram<u64>,
    /// The same for resumed connections.
    pub resync: Histogram<u64>,
    pub conns: Vec<Conn>,
}

/// The handle a driver keeps for each group.
pub type GroupTx = mpsc::UnboundedSender<GroupMsg>;

/// The connections of one group whose sockets became ready, and the group task's waker.
#[derive(Default)]
struct ReadyList {
    idx: Mutex<Vec<usize>>,
    task: Mutex<Option<Waker>>,
}

/// A connection's waker: queues its index (once until polled) and wakes the group task.
struct ConnWake {
    idx: usize,
    queued: AtomicBool,
    list: Arc<ReadyList>,
}

impl Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.list.idx.lock().expect("not poisoned").push(self.idx);
            if let Some(w) = self.list.task.lock().expect("not poisoned").as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

/// Starts a group task; `tick` drives its writers or movers.
pub fn spawn_group(ctx: Arc<Ctx>, tick: Option<Duration>) -> GroupTx {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut g = Group {
        ctx,
        rx,
        me: tx.clone(),
        conns: Vec::new(),
        ready: Arc::new(ReadyList::default()),
        polling: Vec::new(),
        scratch: vec![0; 64 << 10].into_boxed_slice(),
        msg: Vec::with_capacity(256),
        lat: histogram(),
        sync: histogram(),
        resync: histogram(),
        local: Local::default(),
        tick: tick.map(|d| {
            let mut i = tokio::time::interval(d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            i
        }),
    };
    tokio::spawn(async move { std::future::poll_fn(|cx| g.poll(cx)).await });
    tx
}

struct Group {
    ctx: Arc<Ctx>,
    rx: mpsc::UnboundedReceiver<GroupMsg>,
    /// For resumed connections to come back to this group.
    me: GroupTx,
    /// Indexed by `ConnWake::idx`; a dropped connection stays as a dead slot (no socket).
    conns: Vec<Conn>,
    ready: Arc<ReadyList>,
    /// The ready list being worked through (swapped with `ready.idx`, so no allocation).
    polling: Vec<usize>,
    scratch: Box<[u8]>,
    /// Reused for building outgoing messages.
    msg: Vec<u8>,
    lat: Histogram<u64>,
    sync: Histogram<u64>,
    resync: Histogram<u64>,
    local: Local,
    tick: Option<tokio::time::Interval>,
}

/// The parts of a group a connection needs while it handles its frames.
struct Sink<'a> {
    ctx: &'a Ctx,
    local: &'a mut Local,
    lat: &'a mut Histogram<u64>,
    sync: &'a mut Histogram<u64>,
    resync: &'a mut Histogram<u64>,
    now: Instant,
    now_us: u64,
    measuring: bool,
    target_rev: u64,
}

impl Group {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut task = self.ready.task.lock().expect("not poisoned");
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let now = Instant::now();
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(GroupMsg::Add(c))) => self.push(*c),
                Poll::Ready(Some(GroupMsg::Reconnect { offline })) => self.reconnect(offline),
                Poll::Ready(Some(GroupMsg::Revs(reply))) => {
                    let revs = self
                        .conns
                        .iter()
                        .filter(|c| c.role.counts_reads())
                        .map(|c| c.live().then_some(c.session.rev))
                        .collect();
                    let _ = reply.send(revs);
                }
                Poll::Ready(Some(GroupMsg::Stop(reply))) => {
                    self.local.flush(&self.ctx.c);
                    let _ = reply.send(GroupReport {
                        lat: std::mem::replace(&mut self.lat, histogram()),
                        sync: std::mem::replace(&mut self.sync, histogram()),
                        resync: std::mem::replace(&mut self.resync, histogram()),
                        conns: std::mem::take(&mut self.conns).into_iter().filter(Conn::live).collect(),
                    });
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        if let Some(tick) = &mut self.tick {
            let mut due = false;
            while tick.poll_tick(cx).is_ready() {
                due = true;
            }
            let writing = self.ctx.writing.load(Relaxed);
            if due && writing {
                self.on_tick(now);
            }
            if due {
                self.slow_tick(now, writing);
            }
        }
        let mut sink = Sink {
            ctx: &self.ctx,
            local: &mut self.local,
            lat: &mut self.lat,
            sync: &mut self.sync,
            resync: &mut self.resync,
            now,
            now_us: self.ctx.now_us(now),
            measuring: self.ctx.measuring.load(Relaxed),
            target_rev: self.ctx.target_rev.load(Relaxed),
        };
        std::mem::swap(&mut self.polling, &mut *self.ready.idx.lock().expect("not poisoned"));
        for &i in &self.polling {
            let Some(conn) = self.conns.get_mut(i) else { continue };
            let Some((wake, waker)) = conn.waker.clone() else { continue };
            // Cleared before polling: a readiness change from here on queues it again.
            wake.queued.store(false, std::sync::atomic::Ordering::Release);
            if !conn.live() {
                continue;
            }
            let mut cx = Context::from_waker(&waker);
            if conn.fresh {
                // Bytes read with the upgrade response.
                conn.fresh = false;
                let first = std::mem::take(&mut conn.carry);
                conn.ingest(&first, &mut sink);
            }
            if !conn.role.paused() {
                conn.read_ready(&mut cx, &mut self.scratch, &mut sink);
            }
            conn.flush(&mut cx, sink.ctx);
        }
        self.polling.clear();
        self.local.flush(&self.ctx.c);
        Poll::Pending
    }

    /// Takes a connection into the group; it is polled on the next pass.
    fn push(&mut self, mut conn: Conn) {
        let wake = Arc::new(ConnWake {
            idx: self.conns.len(),
            queued: AtomicBool::new(false),
            list: self.ready.clone(),
        });
        let waker = Waker::from(wake.clone());
        waker.wake_by_ref();
        conn.waker = Some((wake, waker));
        self.conns.push(conn);
    }

    fn on_tick(&mut self, now: Instant) {
        let now_us = self.ctx.now_us(now);
        for conn in &mut self.conns {
            if !conn.live() || conn.phase != Phase::Live {
                continue;
            }
            match &mut conn.role {
                Role::Reader | Role::Slow { .. } => {}
                Role::Writer { rate, filler, started, sent, req_id } => {
                    let t0 = *started.get_or_insert(now);
                    let due = (now.duration_since(t0).as_secs_f64() * *rate) as u64;
                    if due <= *sent {
                        continue;
                    }
                    let intended = t0 + Duration::from_secs_f64((*sent + 1) as f64 / *rate);
                    let lag = now.saturating_duration_since(intended).as_micros() as u64;
                    self.ctx.max_send_lag_us.fetch_max(lag, Relaxed);
                    if conn.out.len() > MAX_PENDING_OUT {
                        self.local.send_skipped += due - *sent;
                        *sent = due;
                        continue;
                    }
                    while *sent < due {
                        *req_id += 1;
                        self.msg.clear();
                        write!(
                            self.msg,
                            "{{\"type\":\"change\",\"clientReqId\":{req_id},\"mode\":\"overwrite\",\"ops\":[\
                             {{\"op\":\"add\",\"path\":\"/t\",\"value\":{{\"ts\":{now_us},\"p\":\""
                        )
                        .expect("vec write");
                        self.msg.resize(self.msg.len() + *filler, b'x');
                        self.msg.extend_from_slice(b"\"}}]}");
                        ws::encode_frame(&mut conn.out, OP_TEXT, &self.msg);
                        *sent += 1;
                        self.local.sent += 1;
                    }
                }
                Role::Mover { period, next, n } => {
                    let at = *next.get_or_insert_with(|| now + period.mul_f64(rand::random::<f64>()));
                    if now < at {
                        continue;
                    }
                    *n += 1;
                    let (x, y) = (*n * 37 % 1920, *n * 53 % 1080);
                    self.msg.clear();
                    write!(
                        self.msg,
                        "{{\"type\":\"presence\",\"data\":{{\"x\":{x},\"y\":{y},\"ts\":{now_us}}}}}"
                    )
                    .expect("vec write");
                    ws::encode_frame(&mut conn.out, OP_TEXT, &self.msg);
                    self.local.sent += 1;
                    let lag = now.duration_since(at).as_micros() as u64;
                    self.ctx.max_send_lag_us.fetch_max(lag, Relaxed);
                    *next = Some(if at + *period > now { at + *period } else { now + *period });
                }
            }
            if !conn.out.is_empty()
                && let Some((_, waker)) = conn.waker.clone()
            {
                conn.flush(&mut Context::from_waker(&waker), &self.ctx);
            }
        }
    }

    /// Moves slow readers between their paused and reading phases; once the writers stop,
    /// every slow reader reads for good (so it can catch up).
    fn slow_tick(&mut self, now: Instant, writing: bool) {
        for conn in &mut self.conns {
            if !conn.live() || conn.phase != Phase::Live {
                continue;
            }
            let Role::Slow { pause, read, next, paused, .. } = &mut conn.role else { continue };
            let was_paused = *paused;
            if writing {
                let cycle = *pause + *read;
                let at = *next.get_or_insert_with(|| now + cycle.mul_f64(rand::random::<f64>()));
                if now >= at {
                    *paused = !*paused;
                    *next = Some(now + if *paused { *pause } else { *read });
                }
            } else {
                *paused = false;
                *next = None;
            }
            if was_paused
                && !*paused
                && let Some((_, waker)) = &conn.waker
            {
                // Its socket woke the group while paused and was skipped: queue it again.
                waker.wake_by_ref();
            }
        }
    }

    fn reconnect(&mut self, offline: Duration) {
        for conn in &mut self.conns {
            if !matches!(conn.role, Role::Reader) || !conn.live() {
                continue;
            }
            // Abrupt: no close frame, as when a network path or a proxy drops. The slot stays
            // (dead), so the other connections keep their indices.
            drop(conn.stream.take());
            let (ctx, me, room) = (self.ctx.clone(), self.me.clone(), conn.room.clone());
            let resume = std::mem::take(&mut conn.session);
            tokio::spawn(async move {
                if !offline.is_zero() {
                    tokio::time::sleep(offline).await;
                }
                open(ctx, room, Role::Reader, Some(resume), me).await;
            });
        }
    }
}

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

    fn on_text(&mut self, p: &[u8], sink: &mut Sink<'_>) {
        let counted = self.role.counts_reads();
        let slow = self.role.is_slow();
        if slow {
            sink.local.slow_frames += 1;
            sink.local.slow_bytes += p.len() as u64;
        } else if counted {
            sink.local.frames += 1;
            sink.local.bytes += p.len() as u64;
        }
        let head = scan::head(p);
        match scan::msg_type(p) {
            b"delta" => {
                let (Some(from), Some(to)) =
                    (scan::num_after(head, b"\"from\":"), scan::num_after(head, b"\"to\":"))
                else {
                    return sink.ctx.error("delta without from/to");
                };
                if self.phase == Phase::Sync {
                    self.synced(sink, true);
                } else if from != self.session.rev {
                    sink.local.gaps += 1;
                }
                self.session.rev = to;
                if slow {
                    sink.local.slow_deltas += 1;
                    sink.local.slow_changes += to.saturating_sub(from);
                }
                if counted {
                    if !slow {
                        sink.local.deltas += 1;
                        sink.local.changes += to.saturating_sub(from);
                    }
                    if sink.measuring {
                        let (lat, now_us) = (&mut *sink.lat, sink.now_us);
                        scan::each_ts(p, |ts| lat.saturating_record(now_us.saturating_sub(ts).max(1)));
                    }
                } else {
                    sink.ctx.writer_rev.fetch_max(to, Relaxed);
                }
                self.check_converged(sink);
            }
            b"snapshot" => {
                let Some(rev) = scan::num_after(head, b"\"rev\":") else {
                    return sink.ctx.error("snapshot without rev");
                };
                if self.phase == Phase::Sync {
                    self.synced(sink, false);
                } else if slow {
                    sink.local.slow_snapshots += 1;
                } else if counted {
                    sink.local.snapshots += 1;
                }
                self.session.rev = rev;
                if !counted {
                    sink.ctx.writer_rev.fetch_max(rev, Relaxed);
                }
                self.check_converged(sink);
            }
            b"presence" => {
                if counted {
                    sink.local.presence_frames += 1;
                    let (lat, now_us, measuring) = (&mut *sink.lat, sink.now_us, sink.measuring);
                    let mut n = 0;
                    scan::each_ts(p, |ts| {
                        n += 1;
                        if measuring {
                            lat.saturating_record(now_us.saturating_sub(ts).max(1));
                        }
                    });
                    sink.local.presence_entries += n;
                }
            }
            b"welcome" => {
                let s = |k: &[u8]| scan::str_after(p, k).map(|v| String::from_utf8_lossy(v).into_owned());
                match (s(b"\"session\":\""), s(b"\"epoch\":\""), scan::num_after(p, b"\"rev\":")) {
                    (Some(session), Some(epoch), Some(rev)) => self.session = Resume { session, epoch, rev },
                    _ => return sink.ctx.error("welcome without session/epoch/rev"),
                }
                if scan::find(p, b"\"resumed\":true").is_some() {
                    sink.local.resumed += 1;
                }
                self.phase = Phase::Sync;
            }
            b"broadcast" | b"dropped" | b"pong" => {}
            b"reject" | b"error" => sink.ctx.error(String::from_utf8_lossy(&p[..p.len().min(300)])),
            _ => sink.ctx.error(format!("unexpected message {}", String::from_utf8_lossy(head))),
        }
    }

    fn synced(&mut self, sink: &mut Sink<'_>, delta: bool) {
        self.phase = Phase::Live;
        sink.local.synced += 1;
        let us = sink.now.saturating_duration_since(self.started).as_micros() as u64;
        if self.resuming {
            sink.resync.saturating_record(us.max(1));
            if delta {
                sink.local.resume_deltas += 1;
            } else {
                sink.local.resume_snapshots += 1;
            }
        } else {
            sink.sync.saturating_record(us.max(1));
        }
    }

    fn check_converged(&mut self, sink: &mut Sink<'_>) {
        if self.resuming && !self.converged && sink.target_rev > 0 && self.session.rev >= sink.target_rev {
            self.converged = true;
            sink.local.converged += 1;
        }
    }
}
