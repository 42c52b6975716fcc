//! Fan-out: R rooms × N readers, one writer per room sending M changes a second, and what the
//! readers received in the window: changes and frames per second, changes per frame (the
//! server's coalescing), commit → receive latency, and the server's CPU per delivered change.
//! `fanout` is this with one room; `rooms` (its own file) is the same with R of them.
//!
//! Every writer syncs before any reader connects, so a reader's connect-and-sync time is measured
//! against rooms that already exist; writing starts only once every reader has synced.

use anyhow::ensure;
use hdrhistogram::Histogram;

use crate::harness::{Harness, Pool, Window};
use crate::report::{self, Run, latency, put};
use crate::role::{self, Role};

/// The flags of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Changes per second from the writer.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Size of one change entry as readers receive it (bytes, at least ~90).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// What `fanout` and `rooms` vary.
pub struct Shape {
    pub rooms: usize,
    /// Readers per room.
    pub clients: usize,
    /// Changes per second per room.
    pub rate: f64,
    pub payload: usize,
}

/// `fanout`: one room.
pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    let shape = Shape { rooms: 1, clients: a.clients, rate: a.rate, payload: a.payload };
    measure(h, "fanout", &shape).await
}

/// Connects, measures one window of writing, and reports it as `scenario`.
pub async fn measure(h: &mut Harness, scenario: &str, s: &Shape) -> anyhow::Result<Run> {
    ensure!(s.rooms >= 1 && s.clients >= 1, "need at least one room and one client");
    ensure!(s.rate > 0.0 && s.rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
    ensure!(s.payload <= 1 << 20, "--payload must be at most 1 MiB");
    let filler = role::filler_for(s.payload);
    for i in 0..s.rooms {
        let room = h.room(i);
        h.add(Pool::Writers, room, Role::writer(s.rate, filler));
    }
    h.wait_synced(s.rooms as u64).await?;
    let before = h.edge();
    for i in 0..s.rooms * s.clients {
        let room = h.room(i % s.rooms);
        h.add(Pool::Readers, room, Role::Reader);
    }
    let connect = h.wait_synced((s.rooms * (s.clients + 1)) as u64).await?;
    let connecting = h.between(&before, &h.edge());
    let w = h.write_and_measure().await;
    let stopped = h.stop().await;
    let mut r = h.base(scenario);
    figures(&mut r, s, &w, &stopped.lat);
    report::connect_figures(&mut r, connect, &stopped.sync, connecting.server_cpu_s);
    h.finish(&mut r, Some(&w));
    Ok(r)
}

/// What the readers received in the window (`lat`: their latencies in it), and what it cost the
/// server. `redis-fanout` reports the same figures.
pub fn figures(r: &mut Run, s: &Shape, w: &Window, lat: &Histogram<u64>) {
    let readers = s.rooms * s.clients;
    r.insert("clients".into(), readers.into());
    r.insert("rooms".into(), s.rooms.into());
    r.insert("rate".into(), s.rate.into());
    r.insert("payload".into(), s.payload.into());
    r.insert("offered_per_s".into(), (s.rate * readers as f64).into());
    r.insert("sent_per_s".into(), (w.d.sent as f64 / w.secs).into());
    let delivered = w.d.changes as f64;
    r.insert("delivered_per_s".into(), (delivered / w.secs).into());
    r.insert("frames_per_s".into(), (w.d.frames as f64 / w.secs).into());
    r.insert("changes_per_frame".into(), (delivered / w.d.deltas.max(1) as f64).into());
    r.insert("mb_per_s".into(), (w.d.bytes as f64 / w.secs / 1e6).into());
    latency(r, "lat", lat);
    put(r, "server_cpu_us_per_delivery", w.server_cpu_s.map(|c| c * 1e6 / delivered.max(1.0)));
    r.insert("snapshots".into(), w.d.snapshots.into());
}
