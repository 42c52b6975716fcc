//! Groups: one tokio task drives many connections.
//!
//! A group owns up to `--group-size` connections. Its task is a single `poll_fn` that, on every
//! wake-up, takes new connections and commands from its channel, runs its ticker (writers and
//! cursor movers send what is due, slow readers pause or read), then reads the sockets that
//! became readable into one shared 64 KiB scratch buffer (`conn`): nothing is allocated per
//! message. Each connection registers its own waker with the runtime, which queues the
//! connection's index and wakes the group, so a wake-up costs the ready connections only, not a
//! scan of all of them.
//!
//! Statistics go to group-local counters and histograms, flushed to the shared [`Ctx`] atomics at
//! the end of each wake-up; the histograms are merged once, when the group is stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{self, Conn, Sink};
use crate::ctx::{Ctx, Local, histogram};
use crate::role::{Role, Tick};

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
pub struct ConnWake {
    idx: usize,
    queued: AtomicBool,
    list: Arc<ReadyList>,
}

impl ConnWake {
    /// Lets the next wake-up queue the connection again (called just before it is polled).
    pub fn unqueue(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.list.idx.lock().expect("not poisoned").push(self.idx);
            if let Some(w) = self.list.task.lock().expect("not poisoned").as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

/// Starts a group task; `tick` drives its writers, movers or slow readers.
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

impl Group {
    /// One wake-up; `Ready` once the group is stopped.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.register(cx);
        let now = Instant::now();
        if self.commands(cx).is_ready() {
            return Poll::Ready(());
        }
        self.run_ticker(cx, now);
        self.poll_ready_conns(now);
        self.local.flush(&self.ctx.c);
        Poll::Pending
    }

    /// Keeps the task's current waker where the connections' wakers find it.
    fn register(&self, cx: &Context<'_>) {
        let mut task = self.ready.task.lock().expect("not poisoned");
        if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *task = Some(cx.waker().clone());
        }
    }

    /// Handles every queued command; `Ready` when the group stops (its channel closed or `Stop`).
    fn commands(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(GroupMsg::Add(c))) => self.push(*c),
                Poll::Ready(Some(GroupMsg::Reconnect { offline })) => self.reconnect(offline),
                Poll::Ready(Some(GroupMsg::Revs(reply))) => {
                    let _ = reply.send(self.conns.iter().filter_map(Conn::reader_rev).collect());
                }
                Poll::Ready(Some(GroupMsg::Stop(reply))) => {
                    let _ = reply.send(self.stop());
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Runs the ticker once if it fired (however many ticks were missed).
    fn run_ticker(&mut self, cx: &mut Context<'_>, now: Instant) {
        let Some(tick) = &mut self.tick else { return };
        let mut due = false;
        while tick.poll_tick(cx).is_ready() {
            due = true;
        }
        if !due {
            return;
        }
        let writing = self.ctx.writing.load(Ordering::Relaxed);
        if writing {
            let mut t = Tick {
                now,
                now_us: self.ctx.now_us(now),
                ctx: &self.ctx,
                local: &mut self.local,
                msg: &mut self.msg,
            };
            for conn in &mut self.conns {
                conn.tick(&mut t);
            }
        }
        for conn in &mut self.conns {
            conn.slow_tick(now, writing);
        }
    }

    /// Gives every connection whose waker fired since the last pass its turn.
    fn poll_ready_conns(&mut self, now: Instant) {
        let mut sink = Sink {
            ctx: &self.ctx,
            local: &mut self.local,
            lat: &mut self.lat,
            sync: &mut self.sync,
            resync: &mut self.resync,
            now,
            now_us: self.ctx.now_us(now),
            measuring: self.ctx.measuring.load(Ordering::Relaxed),
            target_rev: self.ctx.target_rev.load(Ordering::Relaxed),
        };
        std::mem::swap(&mut self.polling, &mut *self.ready.idx.lock().expect("not poisoned"));
        for &i in &self.polling {
            if let Some(conn) = self.conns.get_mut(i) {
                conn.poll_turn(&mut self.scratch, &mut sink);
            }
        }
        self.polling.clear();
    }

    /// Takes a connection into the group; it is polled on the next pass.
    fn push(&mut self, mut conn: Conn) {
        let wake = Arc::new(ConnWake {
            idx: self.conns.len(),
            queued: AtomicBool::new(false),
            list: self.ready.clone(),
        });
        conn.attach(wake);
        self.conns.push(conn);
    }

    /// Drops every reader's socket; each resumes its session after `offline`, into this group.
    fn reconnect(&mut self, offline: Duration) {
        for conn in &mut self.conns {
            let Some((room, resume)) = conn.drop_for_resume() else { continue };
            let (ctx, me) = (self.ctx.clone(), self.me.clone());
            tokio::spawn(async move {
                if !offline.is_zero() {
                    tokio::time::sleep(offline).await;
                }
                conn::open(ctx, room, Role::Reader, Some(resume), me).await;
            });
        }
    }

    /// Flushes the counters and hands over the histograms and the live connections.
    fn stop(&mut self) -> GroupReport {
        self.local.flush(&self.ctx.c);
        GroupReport {
            lat: std::mem::replace(&mut self.lat, histogram()),
            sync: std::mem::replace(&mut self.sync, histogram()),
            resync: std::mem::replace(&mut self.resync, histogram()),
            conns: std::mem::take(&mut self.conns).into_iter().filter(Conn::live).collect(),
        }
    }
}
