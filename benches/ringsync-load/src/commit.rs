//! `commit`: write throughput and ack latency of the commit path itself (issue 16's durable
//! rooms): W writers spread over R rooms (writer `i` in room `i % R`), no readers, each writer
//! keeping K changes in flight. A change is a small `incr` plus an `add` (about 100 bytes of
//! ops); each acknowledgement (the `clientReqId` entry of the author's own delta) lets the writer
//! send the next one, so the server is offered as much as it can commit with K outstanding per
//! writer, and group commit (`--fsync always`) has K × W changes to batch at most.
//!
//! Figures: committed changes/s (acks received in the window), send → ack latency (µs, in the
//! window only: the author's clock at both ends), the server's CPU per committed change, and,
//! read from the server's `/metrics` at the window's edges, its fsyncs per second, changes per
//! fsync and mean fsync time (empty with `--memory-only`).
//!
//! With `--changes N` each writer instead stops after N acknowledged changes and the window is
//! the whole run (no warm-up, `--duration` is then only a cap): this fills a data directory for
//! the recovery benchmark. `--exact-rooms` names the rooms `PREFIX-i`, without the random
//! suffix, so a later start can look for them.
//!
//! Each writer is one task with its own socket read loop (at most a few hundred writers, so the
//! group machinery of the fan-out scenarios is not needed); a writer whose change is rejected
//! counts an error and carries on.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::ctx::{Ctx, histogram};
use crate::harness::{Harness, Window};
use crate::report::{Run, latency, put};
use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use crate::{http, scan};

/// Padding in each change's `add` value, so the ops are about 100 bytes.
const FILLER: usize = 24;

/// The flags of `commit`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// WebSocket writers (writer i writes in room i % rooms).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Changes each writer keeps in flight (sent, not yet acknowledged).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Stop each writer after this many acknowledged changes; the window is then the whole run
    /// and `--duration` only its cap (0 = write through the warm-up and the window).
    #[arg(long, default_value_t = 0)]
    pub changes: u64,
    /// Name the rooms `PREFIX-0`, `PREFIX-1`... exactly (no random suffix).
    #[arg(long)]
    pub exact_rooms: bool,
}

/// What every writer shares.
struct Shared {
    ctx: Arc<Ctx>,
    window: usize,
    changes: u64,
    /// Set after the window: finish what is in flight, then close.
    stop: AtomicBool,
    timeout: Duration,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    ensure!(a.writers >= 1 && a.rooms >= 1 && a.rooms <= a.writers, "need 1 <= --rooms <= --writers");
    ensure!((1..=10_000).contains(&a.window), "--window must be in 1..=10000");
    let shared = Arc::new(Shared {
        ctx: h.ctx.clone(),
        window: a.window,
        changes: a.changes,
        stop: AtomicBool::new(false),
        timeout: Duration::from_secs_f64(h.o.timeout),
    });
    let mut tasks = JoinSet::new();
    for i in 0..a.writers {
        let room: Arc<str> = if a.exact_rooms {
            format!("{}-{}", h.o.room_prefix, i % a.rooms).into()
        } else {
            h.room(i % a.rooms)
        };
        tasks.spawn(writer(shared.clone(), room));
    }
    let connect = h.wait_synced(a.writers as u64).await?;
    let addr = h.o.addr;
    let mut done = Vec::new();
    let (m0, w) = if a.changes > 0 {
        let m0 = store_metrics(addr).await;
        h.ctx.measuring.store(true, Relaxed);
        h.ctx.writing.store(true, Relaxed);
        let start = h.edge();
        let cap = Duration::from_secs_f64(h.o.duration);
        let target = a.changes * a.writers as u64;
        while h.ctx.c.acked.load(Relaxed) < target && start.at.elapsed() < cap && !tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            while let Some(res) = tasks.try_join_next() {
                done.push(res);
            }
        }
        let w = h.between(&start, &h.edge());
        (m0, w)
    } else {
        h.ctx.writing.store(true, Relaxed);
        h.warm_up().await;
        let m0 = store_metrics(addr).await;
        let w = h.window().await;
        (m0, w)
    };
    let m1 = store_metrics(addr).await;
    h.ctx.writing.store(false, Relaxed);
    shared.stop.store(true, Relaxed);
    let mut ack = histogram();
    while let Some(res) = tasks.join_next().await {
        done.push(res);
    }
    for res in done {
        match res {
            Ok(Ok(hist)) => {
                let _ = ack.add(&hist);
            }
            Ok(Err(e)) => h.ctx.error(format!("writer: {e:#}")),
            Err(e) => h.ctx.error(format!("writer task: {e}")),
        }
    }
    let mut r = h.base("commit");
    figures(&mut r, &a, &w, &ack, m0.zip(m1));
    r.insert("connect_s".into(), connect.as_secs_f64().into());
    h.finish(&mut r, Some(&w));
    Ok(r)
}

/// The store's counters from `/metrics`: appends, fsyncs, fsync seconds.
async fn store_metrics(addr: std::net::SocketAddr) -> Option<[f64; 3]> {
    let (status, body) = http::get(addr, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let m = |name| http::metric(&body, name).unwrap_or(0.0);
    Some([
        m(ringsync::metrics::STORE_APPENDS),
        m(ringsync::metrics::STORE_FSYNCS),
        m(ringsync::metrics::STORE_FSYNC_SECONDS),
    ])
}

fn figures(r: &mut Run, a: &Args, w: &Window, ack: &Histogram<u64>, m: Option<([f64; 3], [f64; 3])>) {
    r.insert("writers".into(), a.writers.into());
    r.insert("rooms".into(), a.rooms.into());
    r.insert("window".into(), a.window.into());
    let mut msg = Vec::new();
    write_change(&mut msg, 1);
    r.insert("change_bytes".into(), msg.len().into());
    let committed = w.d.acked as f64;
    r.insert("committed".into(), w.d.acked.into());
    r.insert("committed_per_s".into(), (committed / w.secs).into());
    r.insert("sent_per_s".into(), (w.d.sent as f64 / w.secs).into());
    latency(r, "ack", ack);
    put(r, "server_cpu_us_per_change", w.server_cpu_s.map(|c| c * 1e6 / committed.max(1.0)));
    let d = m.map(|(a, b)| [b[0] - a[0], b[1] - a[1], b[2] - a[2]]);
    put(r, "appends_per_s", d.map(|d| d[0] / w.secs));
    put(r, "fsyncs_per_s", d.map(|d| d[1] / w.secs));
    put(r, "changes_per_fsync", d.filter(|d| d[1] > 0.0).map(|d| d[0] / d[1]));
    put(r, "fsync_ms_mean", d.filter(|d| d[1] > 0.0).map(|d| d[2] * 1000.0 / d[1]));
    put(r, "fsync_busy", d.map(|d| d[2] / w.secs));
}

/// A change: `incr` of `/n` and an `add` of a short string at `/t`.
fn write_change(msg: &mut Vec<u8>, req_id: u64) {
    write!(
        msg,
        "{{\"type\":\"change\",\"clientReqId\":{req_id},\"mode\":\"overwrite\",\"ops\":[\
         {{\"op\":\"incr\",\"path\":\"/n\",\"value\":1}},{{\"op\":\"add\",\"path\":\"/t\",\"value\":\"{}\"}}]}}",
        "x".repeat(FILLER)
    )
    .expect("vec write");
}

/// The first change of a writer: creates `/n` (which `incr` needs), outside the window.
fn write_init(msg: &mut Vec<u8>, req_id: u64) {
    write!(
        msg,
        "{{\"type\":\"change\",\"clientReqId\":{req_id},\"mode\":\"overwrite\",\"ops\":[\
         {{\"op\":\"add\",\"path\":\"/n\",\"value\":0}}]}}"
    )
    .expect("vec write");
}

/// One writer: connect, sync, create `/n`, then keep `window` changes in flight while writing.
/// Returns its send → ack histogram (µs, window only).
async fn writer(s: Arc<Shared>, room: Arc<str>) -> anyhow::Result<Histogram<u64>> {
    let ctx = &s.ctx;
    let (stream, carry) = {
        let _permit = ctx.connect_sem.acquire().await?;
        match ws::connect(ctx.addr, &format!("/v1/rooms/{room}/ws"), None).await {
            Ok(x) => x,
            Err(e) => {
                ctx.c.connect_errors.fetch_add(1, Relaxed);
                bail!("connect: {e}");
            }
        }
    };
    let mut w = Wire { stream, carry, out: Vec::new(), msg: Vec::new() };
    // `welcome`, then the first `delta` or `snapshot`.
    w.until(s.timeout, |p| matches!(scan::msg_type(p), b"delta" | b"snapshot")).await?;
    ctx.c.synced.fetch_add(1, Relaxed);
    w.msg.clear();
    write_init(&mut w.msg, 1);
    ws::encode_frame(&mut w.out, OP_TEXT, &w.msg);
    w.flush().await?;
    w.until(s.timeout, |p| scan::msg_type(p) == b"delta" && scan::find(p, b"\"clientReqId\":1").is_some())
        .await?;

    let mut hist = histogram();
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(s.window);
    let (mut next_req, mut sent, mut acked) = (2u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let limit = s.changes > 0 && sent >= s.changes;
        if ctx.writing.load(Relaxed) && !s.stop.load(Relaxed) && !limit {
            let now = Instant::now();
            let mut n = 0;
            while in_flight.len() < s.window && !(s.changes > 0 && sent >= s.changes) {
                w.msg.clear();
                write_change(&mut w.msg, next_req);
                ws::encode_frame(&mut w.out, OP_TEXT, &w.msg);
                in_flight.push_back((next_req, now));
                next_req += 1;
                sent += 1;
                n += 1;
            }
            ctx.c.sent.fetch_add(n, Relaxed);
            w.flush().await?;
        }
        if in_flight.is_empty() {
            if s.stop.load(Relaxed) || (s.changes > 0 && acked >= s.changes) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let n = match tokio::time::timeout(s.timeout, w.stream.read(&mut buf)).await {
            Ok(Ok(0)) => bail!("the server closed the connection"),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => bail!("read: {e}"),
            Err(_) => bail!("no acknowledgement within --timeout ({} in flight)", in_flight.len()),
        };
        w.carry.extend_from_slice(&buf[..n]);
        let now = Instant::now();
        let measuring = ctx.measuring.load(Relaxed);
        let mut got = 0;
        let used = w.frames(|p| {
            match scan::msg_type(p) {
                b"delta" => {
                    let mut from = 0;
                    while let Some(i) = scan::find(&p[from..], b"\"clientReqId\":") {
                        from += i + 14;
                        let Some((id, _)) = scan::parse_u64(&p[from..]) else { continue };
                        while in_flight.front().is_some_and(|&(req, _)| req <= id) {
                            let (_, at) = in_flight.pop_front().expect("just checked");
                            got += 1;
                            if measuring {
                                let us = now.duration_since(at).as_micros() as u64;
                                hist.saturating_record(us.max(1));
                            }
                        }
                    }
                }
                b"reject" | b"error" => {
                    ctx.error(String::from_utf8_lossy(&p[..p.len().min(300)]));
                    if let Some(id) = scan::num_after(p, b"\"clientReqId\":") {
                        in_flight.retain(|&(req, _)| req != id);
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        w.carry.drain(..used);
        acked += got;
        ctx.c.acked.fetch_add(got, Relaxed);
        w.flush().await?;
    }
    w.out.clear();
    ws::encode_frame(&mut w.out, OP_CLOSE, &1000u16.to_be_bytes());
    let _ = w.stream.write_all(&w.out).await;
    Ok(hist)
}

/// A writer's socket and buffers.
struct Wire {
    stream: TcpStream,
    /// Bytes read but not yet cut into frames.
    carry: Vec<u8>,
    out: Vec<u8>,
    msg: Vec<u8>,
}

impl Wire {
    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.context("write")?;
            self.out.clear();
        }
        Ok(())
    }

    /// Calls `f` with every complete text frame in `carry` (answering pings, failing on a close);
    /// returns the bytes used.
    fn frames(&mut self, mut f: impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<usize> {
        let mut used = 0;
        loop {
            let frame = match ws::parse_frame(&self.carry[used..]) {
                Ok(Some(fr)) => fr,
                Ok(None) => return Ok(used),
                Err(e) => bail!("bad frame from the server: {e:?}"),
            };
            used += frame.len;
            match frame.opcode {
                OP_TEXT => f(frame.payload)?,
                OP_PING => ws::encode_frame(&mut self.out, OP_PONG, frame.payload),
                OP_CLOSE => bail!("closed by the server: {}", String::from_utf8_lossy(frame.payload)),
                _ => {}
            }
        }
    }

    /// Reads until a text frame satisfies `done` (frames before it are dropped, a `reject` or
    /// `error` fails).
    async fn until(&mut self, timeout: Duration, mut done: impl FnMut(&[u8]) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 16 << 10];
        loop {
            let mut found = false;
            let used = self.frames(|p| {
                if matches!(scan::msg_type(p), b"reject" | b"error") {
                    bail!("{}", String::from_utf8_lossy(&p[..p.len().min(300)]));
                }
                found |= done(p);
                Ok(())
            })?;
            self.carry.drain(..used);
            self.flush().await?;
            if found {
                return Ok(());
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(r) => r.context("read")?,
                Err(_) => bail!("no answer within --timeout"),
            };
            ensure!(n > 0, "the server closed the connection");
            self.carry.extend_from_slice(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use ringsync::protocol::{self, ClientMsg};

    use super::*;

    #[test]
    fn the_server_decodes_the_changes() {
        for (m, ops) in [
            (
                {
                    let mut m = Vec::new();
                    write_change(&mut m, 7);
                    m
                },
                2,
            ),
            (
                {
                    let mut m = Vec::new();
                    write_init(&mut m, 1);
                    m
                },
                1,
            ),
        ] {
            let Ok(ClientMsg::Change(c)) = protocol::decode_client(&m) else { panic!("not a change") };
            assert_eq!(c.ops.expect("valid ops").len(), ops);
        }
        let mut m = Vec::new();
        write_change(&mut m, 7);
        assert!((120..200).contains(&m.len()), "{}", m.len());
    }
}
