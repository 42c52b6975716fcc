//! `redis-fanout`: `fanout`'s shape against a Redis pub/sub server instead of ringsync, so that
//! ringsync's server CPU per delivered change can be set against Redis's on the same machine, by
//! the same load generator, in the same windows. N subscriber connections `SUBSCRIBE` to one
//! channel (the run's room name) and count as synced once their confirmation arrives; then one
//! publisher connection sends `PUBLISH channel payload` at M messages a second on `fanout`'s
//! writer schedule (a due message is skipped, not queued, while more than 1 MiB is unsent). A
//! payload is `SEQ TS ` padded with `x` to `--payload` bytes: subscribers take send → receive
//! latency from `TS` (µs since the run started, the clock `fanout` uses) and count every sequence
//! number they never saw as a gap (one per missing message per subscriber); one that goes
//! backwards is an error. Each message is its own frame, so `frames_per_s` is `delivered_per_s`
//! and `changes_per_frame` is 1. The figures are `fanout`'s (`fanout::figures`, the harness's
//! window and CPU readings), plus `publish_receivers_min`, the fewest subscribers Redis reported
//! for one `PUBLISH` in the window.
//!
//! The few bits of RESP it needs are written by hand: commands as arrays of bulk strings, pushes
//! (`*3` of `$message`, `$channel`, `$payload`, or `$subscribe`, `$channel`, `:count`) and the
//! publisher's `:N` / `-ERR` replies parsed in place from a per-connection buffer that carries a
//! partial frame over to the next read. Redis is started by the caller (`--addr`, `--server-pid`);
//! loopback only, like every scenario. Each subscriber is a task of its own; the tasks of one
//! `--group-size` group share a histogram and counters behind a mutex, so 5,000 subscribers do not
//! hold 5,000 latency histograms.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::ctx::{Ctx, Local, histogram};
use crate::fanout::{self, Shape};
use crate::harness::Harness;
use crate::report::{self, Run};

/// The publisher skips messages instead of queueing more while this much is unsent (as writers do).
const MAX_PENDING_OUT: usize = 1 << 20;
/// The longest bulk string accepted from the server (a payload is at most 1 MiB).
const MAX_BULK: usize = (1 << 20) + 64;
/// Room made in a connection's buffer before each read.
const READ_CHUNK: usize = 4 << 10;

/// The flags of `redis-fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Messages per second from the publisher.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Size of one message's payload (bytes; at least its `SEQ TS ` header).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// What the subscribers of one group share: their latencies, connect times and counters.
struct Group {
    lat: Histogram<u64>,
    sync: Histogram<u64>,
    local: Local,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    ensure!(a.clients >= 1, "need at least one client");
    ensure!(a.rate > 0.0 && a.rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
    ensure!(a.payload <= 1 << 20, "--payload must be at most 1 MiB");
    let ctx = h.ctx.clone();
    let channel: Arc<str> = h.room(0);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    // The publisher connects first, as `fanout`'s writer syncs before any reader connects.
    let receivers_min = Arc::new(AtomicU64::new(u64::MAX));
    let publisher = Publisher { rate: a.rate, payload: a.payload, channel: channel.clone() };
    tasks.push(tokio::spawn(publish(ctx.clone(), publisher, receivers_min.clone())));
    h.wait_synced(1).await?;
    let before = h.edge();
    let groups: Vec<Arc<Mutex<Group>>> = (0..a.clients.div_ceil(h.o.group_size))
        .map(|_| Arc::new(Mutex::new(Group { lat: histogram(), sync: histogram(), local: Local::default() })))
        .collect();
    for i in 0..a.clients {
        let group = groups[i / h.o.group_size].clone();
        tasks.push(tokio::spawn(subscribe(ctx.clone(), channel.clone(), group)));
    }
    let connect = h.wait_synced(a.clients as u64 + 1).await?;
    let connecting = h.between(&before, &h.edge());
    let w = h.write_and_measure().await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let (mut lat, mut sync) = (histogram(), histogram());
    for g in &groups {
        let mut g = g.lock().expect("not poisoned");
        g.local.flush(&ctx.c);
        let _ = lat.add(&g.lat);
        let _ = sync.add(&g.sync);
    }
    let mut r = h.base("redis-fanout");
    let shape = Shape { rooms: 1, clients: a.clients, rate: a.rate, payload: a.payload };
    fanout::figures(&mut r, &shape, &w, &lat);
    let min = receivers_min.load(Relaxed);
    r.insert("publish_receivers_min".into(), if min == u64::MAX { None } else { Some(min) }.into());
    report::connect_figures(&mut r, connect, &sync, connecting.server_cpu_s);
    h.finish(&mut r, Some(&w));
    Ok(r)
}

/// Connects to the server (waiting for a connect slot, which the caller holds until it drops it).
async fn connect(ctx: &Ctx) -> anyhow::Result<(TcpStream, tokio::sync::SemaphorePermit<'_>)> {
    let permit = ctx.connect_sem.acquire().await.context("connect semaphore closed")?;
    let stream = TcpStream::connect(ctx.addr).await.with_context(|| format!("connect {}", ctx.addr))?;
    stream.set_nodelay(true)?;
    Ok((stream, permit))
}

/// What the publisher sends.
struct Publisher {
    rate: f64,
    payload: usize,
    channel: Arc<str>,
}

/// The publisher: connects (counting as synced), then while the run is writing sends the
/// messages due every millisecond; a task of its own reads the replies.
async fn publish(ctx: Arc<Ctx>, p: Publisher, receivers_min: Arc<AtomicU64>) {
    let stream = match connect(&ctx).await {
        Ok((s, _permit)) => s,
        Err(e) => {
            ctx.c.connect_errors.fetch_add(1, Relaxed);
            ctx.error(format!("publisher: {e:#}"));
            return;
        }
    };
    ctx.c.synced.fetch_add(1, Relaxed);
    let (rd, wr) = stream.into_split();
    // Ends with this task, which the driver aborts after the window: the reply reader must not
    // see the connection close and count an EOF.
    let _replies = AbortOnDrop(tokio::spawn(read_replies(ctx.clone(), rd, receivers_min)));
    if let Err(e) = send_loop(&ctx, &p, &wr).await {
        ctx.error(format!("publisher: {e:#}"));
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `fanout`'s writer schedule: `rate` messages a second from the first tick while writing,
/// falling behind measured as send lag, and skipping (not queueing) while the socket is backed up.
async fn send_loop(ctx: &Ctx, p: &Publisher, wr: &tokio::net::tcp::OwnedWriteHalf) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut out, mut msg) = (Vec::new(), Vec::new());
    let mut started: Option<Instant> = None;
    let mut sent = 0u64;
    loop {
        tick.tick().await;
        if !ctx.writing.load(Relaxed) {
            continue;
        }
        let now = Instant::now();
        let t0 = *started.get_or_insert(now);
        let due = (now.duration_since(t0).as_secs_f64() * p.rate) as u64;
        if due > sent {
            let intended = t0 + Duration::from_secs_f64((sent + 1) as f64 / p.rate);
            ctx.max_send_lag_us
                .fetch_max(now.saturating_duration_since(intended).as_micros() as u64, Relaxed);
            if out.len() > MAX_PENDING_OUT {
                ctx.c.send_skipped.fetch_add(due - sent, Relaxed);
                sent = due;
            }
            let ts = ctx.now_us(now);
            while sent < due {
                sent += 1;
                msg.clear();
                write_payload(&mut msg, sent, ts, p.payload);
                write_command(&mut out, &[b"PUBLISH", p.channel.as_bytes(), &msg]);
                ctx.c.sent.fetch_add(1, Relaxed);
            }
        }
        while !out.is_empty() {
            match wr.try_write(&out) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => drop(out.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Reads the publisher's replies: `:N` (N subscribers got the message; the smallest while
/// measuring goes to `receivers_min`) or an error.
async fn read_replies(ctx: Arc<Ctx>, mut rd: tokio::net::tcp::OwnedReadHalf, receivers_min: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                ctx.c.eofs.fetch_add(1, Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => return ctx.error(format!("publisher read: {e}")),
        }
        let mut at = 0;
        while let Some((line, next)) = line(&buf, at) {
            at = next;
            match (line.first(), parse_int(&line[1.min(line.len())..])) {
                (Some(b':'), Some(n)) => {
                    if ctx.measuring.load(Relaxed) {
                        receivers_min.fetch_min(n as u64, Relaxed);
                    }
                }
                _ => ctx.error(format!("PUBLISH reply: {}", String::from_utf8_lossy(line))),
            }
        }
        buf.drain(..at);
    }
}

/// A subscriber: connects, subscribes to `channel`, then reads messages until aborted.
async fn subscribe(ctx: Arc<Ctx>, channel: Arc<str>, group: Arc<Mutex<Group>>) {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut stream = match subscribed(&ctx, &channel, &mut buf).await {
        Ok(s) => s,
        Err(e) => {
            ctx.c.connect_errors.fetch_add(1, Relaxed);
            return ctx.error(format!("subscriber: {e:#}"));
        }
    };
    {
        let mut g = group.lock().expect("not poisoned");
        g.sync.saturating_record((started.elapsed().as_micros() as u64).max(1));
        g.local.synced += 1;
        g.local.flush(&ctx.c);
    }
    let mut sub = Subscriber { channel, next: 1 };
    let mut read = 0;
    loop {
        // What came with the confirmation (nothing, in practice), then each read's bytes.
        {
            let mut g = group.lock().expect("not poisoned");
            let g = &mut *g;
            g.local.bytes += read as u64;
            let res = sub.take(&mut buf, g, ctx.now_us(Instant::now()), ctx.measuring.load(Relaxed));
            g.local.flush(&ctx.c);
            if let Err(e) = res {
                return ctx.error(format!("subscriber: {e:#}"));
            }
        }
        buf.reserve(READ_CHUNK);
        read = match stream.read_buf(&mut buf).await {
            Ok(0) => {
                ctx.c.eofs.fetch_add(1, Relaxed);
                return;
            }
            Ok(n) => n,
            Err(e) => return ctx.error(format!("subscriber read: {e}")),
        };
    }
}

/// Connects, sends `SUBSCRIBE channel` and reads up to its confirmation (what follows it stays
/// in `buf`).
async fn subscribed(ctx: &Ctx, channel: &str, buf: &mut Vec<u8>) -> anyhow::Result<TcpStream> {
    let (mut stream, _permit) = connect(ctx).await?;
    let mut cmd = Vec::new();
    write_command(&mut cmd, &[b"SUBSCRIBE", channel.as_bytes()]);
    stream.write_all(&cmd).await?;
    loop {
        if let Some((push, len)) = parse_push(buf)? {
            match push {
                [Elem::Bulk(b"subscribe"), Elem::Bulk(c), Elem::Int(1)] if c == channel.as_bytes() => {
                    buf.drain(..len);
                    return Ok(stream);
                }
                _ => bail!("expected the subscribe confirmation, got {push:?}"),
            }
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            bail!("the server closed the connection before confirming the subscription");
        }
    }
}

/// One subscriber's place in the message stream.
struct Subscriber {
    channel: Arc<str>,
    /// The next sequence number it expects.
    next: u64,
}

impl Subscriber {
    /// Counts every whole message at the start of `buf` into `g` and removes them, leaving a
    /// partial one for the next read.
    fn take(&mut self, buf: &mut Vec<u8>, g: &mut Group, now_us: u64, measuring: bool) -> anyhow::Result<()> {
        let mut at = 0;
        let res = loop {
            let (seq, ts) = match parse_push(&buf[at..]) {
                Ok(Some((push, len))) => {
                    at += len;
                    match message(&push, &self.channel) {
                        Ok(m) => m,
                        Err(e) => break Err(e),
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if seq < self.next {
                break Err(anyhow::anyhow!("message {seq} after {}", self.next - 1));
            }
            g.local.gaps += seq - self.next;
            self.next = seq + 1;
            g.local.frames += 1;
            g.local.deltas += 1;
            g.local.changes += 1;
            if measuring {
                g.lat.saturating_record(now_us.saturating_sub(ts).max(1));
            }
        };
        buf.drain(..at);
        res
    }
}

/// The sequence number and timestamp of a `message` push on `channel`.
fn message(push: &[Elem<'_>; 3], channel: &str) -> anyhow::Result<(u64, u64)> {
    let [Elem::Bulk(b"message"), Elem::Bulk(c), Elem::Bulk(payload)] = push else {
        bail!("expected a message, got {push:?}");
    };
    ensure!(*c == channel.as_bytes(), "a message on another channel");
    let mut fields = payload.splitn(3, |&b| b == b' ');
    let mut next = || fields.next().and_then(parse_int).map(|n| n as u64);
    match (next(), next()) {
        (Some(seq), Some(ts)) => Ok((seq, ts)),
        _ => bail!(
            "a payload without `SEQ TS `: {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(40)])
        ),
    }
}

/// A message's payload: `SEQ TS ` then `x` up to `size` bytes.
fn write_payload(msg: &mut Vec<u8>, seq: u64, ts: u64, size: usize) {
    write!(msg, "{seq} {ts} ").expect("vec write");
    if msg.len() < size {
        msg.resize(size, b'x');
    }
}

/// A command as RESP: an array of bulk strings.
fn write_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    write!(out, "*{}\r\n", args.len()).expect("vec write");
    for a in args {
        write!(out, "${}\r\n", a.len()).expect("vec write");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One element of a push: a bulk string or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem<'a> {
    Bulk(&'a [u8]),
    Int(i64),
}

/// The three-element push at the start of `buf` (`message` or `subscribe`) and its length in
/// bytes; `None` while it is not all there. Anything else is an error.
fn parse_push(buf: &[u8]) -> anyhow::Result<Option<([Elem<'_>; 3], usize)>> {
    let Some((head, mut at)) = line(buf, 0) else { return Ok(None) };
    ensure!(head == b"*3", "expected a push of 3 elements, got {:?}", String::from_utf8_lossy(head));
    let mut elems = [Elem::Int(0); 3];
    for e in &mut elems {
        let Some((l, next)) = line(buf, at) else { return Ok(None) };
        let n = parse_int(l.get(1..).unwrap_or_default());
        match (l.first(), n) {
            (Some(b':'), Some(n)) => {
                *e = Elem::Int(n);
                at = next;
            }
            (Some(b'$'), Some(n)) if (0..=MAX_BULK as i64).contains(&n) => {
                let end = next + n as usize;
                let Some(tail) = buf.get(end..end + 2) else { return Ok(None) };
                ensure!(tail == b"\r\n", "a bulk string not followed by CRLF");
                *e = Elem::Bulk(&buf[next..end]);
                at = end + 2;
            }
            _ => bail!("unexpected RESP element {:?}", String::from_utf8_lossy(l)),
        }
    }
    Ok(Some((elems, at)))
}

/// The line starting at `at` (without its CRLF) and where the next one starts; `None` until the
/// CRLF has arrived.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], at + i + 2))
}

/// A decimal integer (RESP lengths and counts, the payload's fields).
fn parse_int(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut v =
            format!("*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n", channel.len(), payload.len())
                .into_bytes();
        v.extend_from_slice(payload);
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn commands_and_payloads() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"PUBLISH", b"ch", b"1 2 x"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\n1 2 x\r\n");
        let mut msg = Vec::new();
        write_payload(&mut msg, 12, 3456, 100);
        assert_eq!(msg.len(), 100);
        assert!(msg.starts_with(b"12 3456 xx"));
        msg.clear();
        write_payload(&mut msg, 12, 3456, 3);
        assert_eq!(msg, b"12 3456 ", "never shorter than its header");
    }

    #[test]
    fn pushes_parse_across_any_split() {
        let mut all = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n".to_vec();
        let confirm = all.len();
        all.extend(push("ch", b"1 10 xx\r\nx"));
        all.extend(push("ch", b"2 20 "));
        let (p, len) = parse_push(&all).expect("valid").expect("whole");
        assert_eq!((p, len), ([Elem::Bulk(b"subscribe"), Elem::Bulk(b"ch"), Elem::Int(1)], confirm));
        // Every prefix of the messages is either incomplete or yields whole messages only.
        for cut in 0..all.len() - confirm {
            let mut buf = all[confirm..confirm + cut].to_vec();
            let mut g = Group { lat: histogram(), sync: histogram(), local: Local::default() };
            let mut sub = Subscriber { channel: "ch".into(), next: 1 };
            sub.take(&mut buf, &mut g, 100, true).expect("valid so far");
            buf.extend_from_slice(&all[confirm + cut..]);
            sub.take(&mut buf, &mut g, 100, true).expect("valid");
            assert!(buf.is_empty(), "cut at {cut}");
            assert_eq!((g.local.changes, g.local.gaps, sub.next), (2, 0, 3), "cut at {cut}");
            assert_eq!((g.lat.min(), g.lat.max()), (80, 90));
        }
    }

    #[test]
    fn gaps_and_errors() {
        let mut g = Group { lat: histogram(), sync: histogram(), local: Local::default() };
        let mut sub = Subscriber { channel: "ch".into(), next: 1 };
        let mut buf = [push("ch", b"1 0 "), push("ch", b"4 0 ")].concat();
        sub.take(&mut buf, &mut g, 5, false).expect("valid");
        assert_eq!((g.local.changes, g.local.gaps, g.lat.len()), (2, 2, 0), "2 and 3 missing; not measuring");
        let mut buf = push("ch", b"4 0 ");
        assert!(sub.take(&mut buf, &mut g, 5, false).is_err(), "a repeat is an error");
        assert!(sub.take(&mut push("other", b"5 0 "), &mut g, 5, false).is_err());
        assert!(sub.take(&mut push("ch", b"nope"), &mut g, 5, false).is_err());
        assert!(parse_push(b"-ERR wrong\r\n").is_err());
        assert!(parse_push(b"*3\r\n$99999999999\r\n").is_err());
        assert_eq!(parse_push(b"*3\r\n$7\r\nmess").expect("valid so far"), None);
    }
}
