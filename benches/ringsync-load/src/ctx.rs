//! What the whole run shares: where to connect, the phase flags the driver flips (`writing`,
//! `measuring`), and the counters every group adds to.
//!
//! Counters are monotonic totals: a group counts into its own [`Local`] and flushes it into the
//! shared [`Counters`] atomics at the end of each wake-up, and the driver reads a [`Snap`] at the
//! edges of a window and subtracts. Latency histograms stay in the groups until they are stopped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// What the whole run shares: where to connect, the phase flags, and the counters.
pub struct Ctx {
    pub addr: SocketAddr,
    /// Where readers connect (`--reader-addr`; `addr` without it).
    pub reader_addr: SocketAddr,
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
    pub fn new(addr: SocketAddr, reader_addr: Option<SocketAddr>, connect_concurrency: usize) -> Self {
        Ctx {
            addr,
            reader_addr: reader_addr.unwrap_or(addr),
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

    /// Counts an error and keeps its text if it is the first.
    pub fn error(&self, e: impl std::fmt::Display) {
        self.c.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().expect("not poisoned");
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    /// The first error's text, or a placeholder.
    pub fn first_error(&self) -> String {
        self.first_error.lock().expect("not poisoned").clone().unwrap_or_else(|| "no error recorded".into())
    }

    /// Microseconds from `base` to `now`: the clock of the `ts` values.
    pub fn now_us(&self, now: Instant) -> u64 {
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
        pub struct Local { $(pub $name: u64,)* }
        impl Local {
            pub fn flush(&mut self, c: &Counters) {
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
    // Acknowledged to `commit`'s writers (their own changes' `clientReqId` entries).
    acked,
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
