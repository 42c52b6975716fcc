//! `idle`: N clients that only listen, spread over R rooms, and what they cost the server at
//! rest: its RSS growth per connection, and the time and CPU it took to connect and sync them.
//!
//! The RSS is read once the joins' presence traffic has died down: after a second without a
//! frame, or after `--settle` seconds at most.

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::harness::{Edge, Harness, Pool};
use crate::report::{self, Run, put};
use crate::role::Role;

/// The flags of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Spread the clients over this many rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Longest wait for the server to go quiet before reading its RSS (seconds).
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    ensure!(a.clients >= 1 && a.rooms >= 1, "need at least one client and one room");
    let before = h.edge();
    for i in 0..a.clients {
        let room = h.room(i % a.rooms);
        h.add(Pool::Readers, room, Role::Reader);
    }
    let connect = h.wait_synced(a.clients as u64).await?;
    let connected = h.edge();
    settle(h, a.settle).await;
    let after = h.edge();
    let stopped = h.stop().await;
    let mut r = h.base("idle");
    r.insert("clients".into(), a.clients.into());
    r.insert("rooms".into(), a.rooms.into());
    let connecting = h.between(&before, &connected);
    report::connect_figures(&mut r, connect, &stopped.sync, connecting.server_cpu_s);
    memory_figures(&mut r, &before, &connected, &after);
    h.finish(&mut r, None);
    Ok(r)
}

/// Waits until no frame arrived for a second, or `secs` passed.
async fn settle(h: &Harness, secs: f64) {
    let start = Instant::now();
    let mut last = h.ctx.c.snap().frames;
    let mut quiet_since = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = h.ctx.c.snap().frames;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(1000) {
            break;
        }
    }
}

/// The server's RSS before and after, per connection, and what arrived while it settled.
fn memory_figures(r: &mut Run, before: &Edge, connected: &Edge, after: &Edge) {
    let (b, a) = (before.server, after.server);
    put(r, "rss_before_mb", b.map(|s| s.rss_kb as f64 / 1024.0));
    put(r, "rss_after_mb", a.map(|s| s.rss_kb as f64 / 1024.0));
    let synced = (after.c.synced - before.c.synced).max(1);
    put(r, "kib_per_conn", b.zip(a).map(|(b, a)| (a.rss_kb as f64 - b.rss_kb as f64) / synced as f64));
    put(r, "server_cpu_settle_s", connected.server.zip(a).map(|(c, a)| a.cpu_s - c.cpu_s));
    r.insert("frames_received".into(), (after.c.frames - before.c.frames).into());
    r.insert("bytes_received".into(), (after.c.bytes - before.c.bytes).into());
}
