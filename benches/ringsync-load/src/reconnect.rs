//! `reconnect`: a reconnect storm. One room, N readers and a writer; after the warm-up every
//! reader drops its socket at once (no close frame) and resumes its session with
//! `?session&epoch&since` after `offline-ms`, while the writer keeps writing.
//!
//! Reported: the share that resumed their session, the share brought up to date by a delta rather
//! than a snapshot, resume-to-sync latency, and the time until every reader holds the revision
//! the writer had when they dropped (the target).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::harness::{Edge, Harness, Pool, Stopped, Window};
use crate::report::{Run, latency, put};
use crate::role::{self, Role};

/// The flags of `reconnect`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// How long the readers stay away before resuming (milliseconds).
    #[arg(long, default_value_t = 0)]
    pub offline_ms: u64,
}

/// The moment every reader dropped.
struct Storm {
    /// Readers that were connected.
    live: u64,
    /// The writer's revision then.
    target: u64,
    at: Edge,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    ensure!(a.clients >= 1, "need at least one client");
    ensure!(a.rate > 0.0 && a.rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
    ensure!(a.offline_ms <= 600_000, "--offline-ms must be at most 600000");
    let connect = connect(h, &a).await?;
    h.ctx.writing.store(true, Relaxed);
    h.warm_up().await;
    let storm = drop_all(h, a.clients, Duration::from_millis(a.offline_ms));
    let converged = wait_converged(h, &storm).await;
    let end = h.edge();
    h.ctx.writing.store(false, Relaxed);
    let stopped = h.stop().await;
    let w = h.between(&storm.at, &end);
    let mut r = h.base("reconnect");
    figures(&mut r, &a, &storm, &w, converged, &stopped);
    r.insert("connect_s".into(), connect.as_secs_f64().into());
    h.finish(&mut r, None);
    if converged.is_none() {
        eprintln!("warning: only {} of {} readers converged", w.d.converged, storm.live);
    }
    Ok(r)
}

/// The writer first, then the readers; returns how long the readers took to sync.
async fn connect(h: &mut Harness, a: &Args) -> anyhow::Result<Duration> {
    let room = h.room(0);
    h.add(Pool::Writers, room.clone(), Role::writer(a.rate, role::filler_for(a.payload)));
    h.wait_synced(1).await?;
    for _ in 0..a.clients {
        h.add(Pool::Readers, room.clone(), Role::Reader);
    }
    h.wait_synced(a.clients as u64 + 1).await
}

/// Sets the target revision and drops every reader at once.
fn drop_all(h: &Harness, clients: usize, offline: Duration) -> Storm {
    let live = clients as u64 - h.ctx.c.connect_errors.load(Relaxed);
    let target = h.ctx.writer_rev.load(Relaxed).max(1);
    h.ctx.target_rev.store(target, Relaxed);
    let at = h.edge();
    h.reconnect_readers(offline);
    Storm { live, target, at }
}

/// Until every live reader reached the target (`Some(time taken)`), or the rest are gone or
/// `--timeout` passed (`None`).
async fn wait_converged(h: &Harness, storm: &Storm) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let c = h.ctx.c.snap();
        if c.converged >= storm.live {
            return Some(start.elapsed());
        }
        if c.converged + c.connect_errors >= storm.live + storm.at.c.connect_errors
            || start.elapsed().as_secs_f64() > h.o.timeout
        {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How the resume went, from the drop to convergence.
fn figures(r: &mut Run, a: &Args, storm: &Storm, w: &Window, converged: Option<Duration>, s: &Stopped) {
    r.insert("clients".into(), a.clients.into());
    r.insert("rate".into(), a.rate.into());
    r.insert("offline_ms".into(), a.offline_ms.into());
    r.insert("target_rev".into(), storm.target.into());
    let (deltas, snaps) = (w.d.resume_deltas as f64, w.d.resume_snapshots as f64);
    r.insert("resumed_share".into(), (w.d.resumed as f64 / storm.live.max(1) as f64).into());
    r.insert("delta_share".into(), (deltas / (deltas + snaps).max(1.0)).into());
    r.insert("resume_snapshots".into(), w.d.resume_snapshots.into());
    put(r, "converge_ms", converged.map(|d| d.as_secs_f64() * 1000.0));
    r.insert("converged".into(), w.d.converged.into());
    latency(r, "resync", &s.resync);
    put(r, "server_cpu_s", w.server_cpu_s);
    put(r, "server_rss_mb", w.server_rss_kb.map(|kb| kb as f64 / 1024.0));
    put(r, "other_cpu_util", w.other_cpu_s.map(|s| s / w.secs));
}
