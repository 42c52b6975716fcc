//! `presence`: one room of N clients, each moving a cursor (a presence update) F times a second,
//! and how the server's presence lane delivers them: entries and frames per second, entries per
//! frame (its coalescing), update → receive latency, and the server's CPU per delivered entry.
//!
//! Every client both sends and reads, so they all sit in the writers' pool, whose groups tick
//! often enough (at least four times a period, at most every millisecond) to keep to F.

use std::time::Duration;

use anyhow::ensure;

use crate::harness::{Harness, Pool, Stopped, Window};
use crate::report::{self, Run, latency, put};
use crate::role::Role;

/// The flags of `presence`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    #[arg(long, default_value_t = 10.0)]
    pub hz: f64,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    ensure!(a.clients >= 2, "presence needs at least two clients");
    ensure!(a.hz > 0.0 && a.hz <= 1000.0, "--hz must be in (0, 1000]");
    let period = Duration::from_secs_f64(1.0 / a.hz);
    h.set_tick(Pool::Writers, Duration::from_millis(2).min(period / 4).max(Duration::from_millis(1)));
    let room = h.room(0);
    let before = h.edge();
    for _ in 0..a.clients {
        h.add(Pool::Writers, room.clone(), Role::mover(period));
    }
    let connect = h.wait_synced(a.clients as u64).await?;
    let connecting = h.between(&before, &h.edge());
    let w = h.write_and_measure().await;
    let stopped = h.stop().await;
    let mut r = h.base("presence");
    figures(&mut r, &a, &w, &stopped);
    report::connect_figures(&mut r, connect, &stopped.sync, connecting.server_cpu_s);
    h.finish(&mut r, Some(&w));
    Ok(r)
}

/// What the clients sent and received in the window, and what it cost the server.
fn figures(r: &mut Run, a: &Args, w: &Window, stopped: &Stopped) {
    r.insert("clients".into(), a.clients.into());
    r.insert("hz".into(), a.hz.into());
    r.insert("sent_per_s".into(), (w.d.sent as f64 / w.secs).into());
    let entries = w.d.presence_entries as f64;
    r.insert("presence_entries_per_s".into(), (entries / w.secs).into());
    r.insert("frames_per_s".into(), (w.d.frames as f64 / w.secs).into());
    r.insert("entries_per_frame".into(), (entries / w.d.presence_frames.max(1) as f64).into());
    r.insert("mb_per_s".into(), (w.d.bytes as f64 / w.secs / 1e6).into());
    latency(r, "lat", &stopped.lat);
    put(r, "server_cpu_us_per_delivery", w.server_cpu_s.map(|c| c * 1e6 / entries.max(1.0)));
}
