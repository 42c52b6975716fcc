//! What each server message does to a connection and to the run's figures: `welcome` gives the
//! session to resume, the first `delta` or `snapshot` after it completes the sync, and every
//! later one moves `session.rev` and is counted (slow readers apart from the others, writers not
//! at all: a writer's own deltas are its acknowledgements and advance `writer_rev` instead).
//! Latency is taken from every `"ts":N` in a `delta` or `presence` frame, in the window only.

use std::sync::atomic::Ordering::Relaxed;

use super::{Conn, Phase, Resume, Sink};
use crate::scan;

impl Conn {
    /// Handles one complete text frame from the server.
    pub(super) fn on_text(&mut self, p: &[u8], sink: &mut Sink<'_>) {
        if self.role.is_slow() {
            sink.local.slow_frames += 1;
            sink.local.slow_bytes += p.len() as u64;
        } else if self.role.counts_reads() {
            sink.local.frames += 1;
            sink.local.bytes += p.len() as u64;
        }
        let head = scan::head(p);
        match scan::msg_type(p) {
            b"delta" => self.on_delta(p, head, sink),
            b"snapshot" => self.on_snapshot(head, sink),
            b"presence" => self.on_presence(p, sink),
            b"welcome" => self.on_welcome(p, sink),
            b"broadcast" | b"dropped" | b"pong" => {}
            b"reject" | b"error" => sink.ctx.error(String::from_utf8_lossy(&p[..p.len().min(300)])),
            _ => sink.ctx.error(format!("unexpected message {}", String::from_utf8_lossy(head))),
        }
    }

    fn on_delta(&mut self, p: &[u8], head: &[u8], sink: &mut Sink<'_>) {
        let (Some(from), Some(to)) = (scan::num_after(head, b"\"from\":"), scan::num_after(head, b"\"to\":"))
        else {
            return sink.ctx.error("delta without from/to");
        };
        if self.phase == Phase::Sync {
            self.synced(sink, true);
        } else if from != self.session.rev {
            sink.local.gaps += 1;
        }
        self.session.rev = to;
        let (counted, slow) = (self.role.counts_reads(), self.role.is_slow());
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
                scan::each_value_ts(p, |ts| lat.saturating_record(now_us.saturating_sub(ts).max(1)));
            }
        } else {
            sink.ctx.writer_rev.fetch_max(to, Relaxed);
        }
        self.check_converged(sink);
    }

    fn on_snapshot(&mut self, head: &[u8], sink: &mut Sink<'_>) {
        let Some(rev) = scan::num_after(head, b"\"rev\":") else {
            return sink.ctx.error("snapshot without rev");
        };
        let counted = self.role.counts_reads();
        if self.phase == Phase::Sync {
            self.synced(sink, false);
        } else if self.role.is_slow() {
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

    fn on_presence(&mut self, p: &[u8], sink: &mut Sink<'_>) {
        if !self.role.counts_reads() {
            return;
        }
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

    fn on_welcome(&mut self, p: &[u8], sink: &mut Sink<'_>) {
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
