//! What a connection does besides reading: the roles, and the messages the sending roles build.
//!
//! A writer sends `rate` changes a second on a fixed schedule from its first tick (falling
//! behind is measured as send lag, and a writer whose socket is backed up skips changes instead
//! of queueing them); a mover sends a cursor update every `period`; a slow reader alternates
//! between not reading and reading. Every change and cursor update carries `ts`, the µs since
//! the run started, which readers turn into latency. Messages are written into one reused
//! buffer: nothing is allocated per message.

use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ringsync::ids::{ClientId, Rev};
use ringsync::{patch, protocol};

use crate::ctx::{Ctx, Local};
use crate::ws::{self, OP_TEXT};

/// A writer whose socket has this much unsent data skips changes instead of queueing more.
const MAX_PENDING_OUT: usize = 1 << 20;

/// What a connection does besides reading.
#[derive(Debug, Clone)]
pub enum Role {
    /// Reads and counts.
    Reader,
    /// Sends changes; its own traffic is not counted as received.
    Writer(Writer),
    /// Reads, and sends a presence (cursor) update every period.
    Mover(Mover),
    /// A reader that cannot keep up (counted apart from the others).
    Slow(SlowReader),
}

/// Sends `rate` changes per second carrying a timestamp and `filler` bytes of padding.
#[derive(Debug, Clone)]
pub struct Writer {
    rate: f64,
    filler: usize,
    started: Option<Instant>,
    sent: u64,
    req_id: u64,
}

/// Sends a presence update every `period`, starting at a random point of the first period.
#[derive(Debug, Clone)]
pub struct Mover {
    period: Duration,
    next: Option<Instant>,
    n: u64,
}

/// While writers write it stops reading for `pause`, then reads for `read`, and so on (the first
/// phase starts at a random point of the cycle). `rcvbuf` caps its socket's receive buffer, so
/// the server sees the backlog early.
#[derive(Debug, Clone)]
pub struct SlowReader {
    pause: Duration,
    read: Duration,
    pub rcvbuf: Option<u32>,
    next: Option<Instant>,
    paused: bool,
}

/// What a tick lends the roles: the time, the shared counters and a message buffer.
pub struct Tick<'a> {
    pub now: Instant,
    pub now_us: u64,
    pub ctx: &'a Ctx,
    pub local: &'a mut Local,
    /// Reused for building outgoing messages.
    pub msg: &'a mut Vec<u8>,
}

impl Role {
    pub fn writer(rate: f64, filler: usize) -> Role {
        Role::Writer(Writer { rate, filler, started: None, sent: 0, req_id: 0 })
    }
    pub fn mover(period: Duration) -> Role {
        Role::Mover(Mover { period, next: None, n: 0 })
    }
    pub fn slow(pause: Duration, read: Duration, rcvbuf: Option<u32>) -> Role {
        Role::Slow(SlowReader { pause, read, rcvbuf, next: None, paused: false })
    }
    pub fn counts_reads(&self) -> bool {
        !matches!(self, Role::Writer(_))
    }
    pub fn is_slow(&self) -> bool {
        matches!(self, Role::Slow(_))
    }
    pub fn paused(&self) -> bool {
        matches!(self, Role::Slow(SlowReader { paused: true, .. }))
    }

    /// Appends the frames due at `t.now` to `out`. Returns `false` when the role had nothing to
    /// do this tick (the connection is then left alone until its socket wakes it).
    pub fn send_due(&mut self, out: &mut Vec<u8>, t: &mut Tick<'_>) -> bool {
        match self {
            Role::Reader | Role::Slow(_) => true,
            Role::Writer(w) => w.send_due(out, t),
            Role::Mover(m) => m.send_due(out, t),
        }
    }
}

impl Writer {
    fn send_due(&mut self, out: &mut Vec<u8>, t: &mut Tick<'_>) -> bool {
        let t0 = *self.started.get_or_insert(t.now);
        let due = (t.now.duration_since(t0).as_secs_f64() * self.rate) as u64;
        if due <= self.sent {
            return false;
        }
        let intended = t0 + Duration::from_secs_f64((self.sent + 1) as f64 / self.rate);
        let lag = t.now.saturating_duration_since(intended).as_micros() as u64;
        t.ctx.max_send_lag_us.fetch_max(lag, Relaxed);
        if out.len() > MAX_PENDING_OUT {
            t.local.send_skipped += due - self.sent;
            self.sent = due;
            return false;
        }
        while self.sent < due {
            self.req_id += 1;
            t.msg.clear();
            write_change(t.msg, self.req_id, t.now_us, self.filler);
            ws::encode_frame(out, OP_TEXT, t.msg);
            self.sent += 1;
            t.local.sent += 1;
        }
        true
    }
}

impl Mover {
    fn send_due(&mut self, out: &mut Vec<u8>, t: &mut Tick<'_>) -> bool {
        let (now, period) = (t.now, self.period);
        let at = *self.next.get_or_insert_with(|| now + period.mul_f64(rand::random::<f64>()));
        if now < at {
            return false;
        }
        self.n += 1;
        t.msg.clear();
        write_presence(t.msg, self.n * 37 % 1920, self.n * 53 % 1080, t.now_us);
        ws::encode_frame(out, OP_TEXT, t.msg);
        t.local.sent += 1;
        let lag = now.duration_since(at).as_micros() as u64;
        t.ctx.max_send_lag_us.fetch_max(lag, Relaxed);
        self.next = Some(if at + period > now { at + period } else { now + period });
        true
    }
}

impl SlowReader {
    /// Moves between the paused and reading phases; once the writers stop, it reads for good (so
    /// it can catch up). Returns `true` when it has just resumed reading.
    pub fn tick(&mut self, now: Instant, writing: bool) -> bool {
        let was_paused = self.paused;
        if writing {
            let cycle = self.pause + self.read;
            let at = *self.next.get_or_insert_with(|| now + cycle.mul_f64(rand::random::<f64>()));
            if now >= at {
                self.paused = !self.paused;
                self.next = Some(now + if self.paused { self.pause } else { self.read });
            }
        } else {
            self.paused = false;
            self.next = None;
        }
        was_paused && !self.paused
    }
}

/// A `change` message: one `add` of `{"ts":ts,"p":"xx…"}` (`filler` bytes of `x`) at `/t`.
pub fn write_change(msg: &mut Vec<u8>, req_id: u64, ts: u64, filler: usize) {
    write!(msg, "{{\"type\":\"change\",\"clientReqId\":{req_id},\"mode\":\"overwrite\",\"ops\":")
        .expect("vec write");
    write_ops(msg, ts, filler);
    msg.push(b'}');
}

/// The ops of a writer's change.
fn write_ops(msg: &mut Vec<u8>, ts: u64, filler: usize) {
    write!(msg, "[{{\"op\":\"add\",\"path\":\"/t\",\"value\":{{\"ts\":{ts},\"p\":\"").expect("vec write");
    msg.resize(msg.len() + filler, b'x');
    msg.extend_from_slice(b"\"}}]");
}

/// A `presence` message: a cursor at (`x`, `y`) with its timestamp.
fn write_presence(msg: &mut Vec<u8>, x: u64, y: u64, ts: u64) {
    write!(msg, "{{\"type\":\"presence\",\"data\":{{\"x\":{x},\"y\":{y},\"ts\":{ts}}}}}").expect("vec write");
}

/// Filler bytes so that a change entry (`{"rev":..,"client":..,"ops":[..]}`) is about `payload`
/// bytes as readers receive it.
pub fn filler_for(payload: usize) -> usize {
    payload.saturating_sub(entry_len(0))
}

/// The size of the entry readers receive for a writer's change with `filler` bytes of padding:
/// the server's own encoding of it (`protocol::change_frame`), at revision 100,000 and a
/// timestamp 100 s into the run.
fn entry_len(filler: usize) -> usize {
    let mut ops = Vec::new();
    write_ops(&mut ops, 10_000_000, filler);
    let ops = serde_json::from_slice(&ops).expect("the writer's ops are JSON");
    let ops = patch::parse_patch(ops).expect("the writer's ops are a valid patch");
    // The server's commit time: 13 digits until 2286.
    let head = protocol::EntryHead::new(Rev(100_000), ClientId(1), None, 1_700_000_000_000);
    let (_, entry) = protocol::change_frame(&head, &protocol::encode_ops(&ops));
    entry.len()
}

#[cfg(test)]
mod tests {
    use ringsync::ids::ClientReqId;
    use ringsync::protocol::{ClientMsg, Mode};

    use super::*;

    #[test]
    fn the_server_decodes_what_writers_and_movers_send() {
        let mut m = Vec::new();
        write_change(&mut m, 7, 123, 5);
        let Ok(ClientMsg::Change(c)) = protocol::decode_client(&m) else { panic!("not a change") };
        assert_eq!((c.client_req_id, c.mode), (ClientReqId(7), Ok(Mode::Overwrite)));
        assert_eq!(c.ops.expect("valid ops").len(), 1);
        assert_eq!(c.refusal, None, "strict decoding accepts it");
        m.clear();
        write_presence(&mut m, 3, 4, 99);
        assert!(matches!(protocol::decode_client(&m), Ok(ClientMsg::Presence { .. })));
    }

    #[test]
    fn filler_makes_entries_of_the_payload_size() {
        assert_eq!(entry_len(filler_for(300)), 300);
        assert_eq!(entry_len(filler_for(1000)), 1000);
        // 111 bytes without filler: the 92 of the hand-written entry this replaced, plus the
        // commit time the server adds (`"ts":` and 13 digits).
        assert_eq!(filler_for(120), 9);
        assert_eq!(filler_for(100), 0);
    }
}
