//! Helpers for tests of the storage seam: a journal that remembers the newest revision written.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use ringsync::store::{Journal, Record, SnapshotData, StoreError};

/// The newest revision the store reported written; a failure panics (these tests expect none).
#[derive(Default)]
pub struct Written {
    rev: Mutex<u64>,
    cv: Condvar,
}

impl Journal for Written {
    fn written(&self, rev: u64) {
        *self.rev.lock() = rev;
        self.cv.notify_all();
    }
    fn failed(&self, generation: u64, rev: u64, error: &StoreError) {
        panic!("generation {generation} rev {rev} failed: {error}");
    }
}

impl Written {
    /// Waits (60 s at most) until `rev` is reported written.
    pub fn wait(&self, rev: u64) {
        let mut at = self.rev.lock();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while *at < rev {
            assert!(
                !self.cv.wait_until(&mut at, deadline).timed_out(),
                "rev {rev} never written (at {})",
                *at
            );
        }
    }
}

/// A record as a room would append it: revision `rev` of a counter at `/n`, by `author` in
/// `session`.
pub fn record(rev: u64, author: u64, session: &str) -> Record {
    Record {
        rev,
        ts: 1_700_000_000_000 + rev,
        author,
        session: Some(session.to_string()),
        user: None,
        client_req_id: Some(rev),
        kind: 0,
        reverts: None,
        ops: format!(r#"[{{"op":"replace","path":"/n","value":{rev}}}]"#),
        inverse: format!(r#"[{{"op":"replace","path":"/n","value":{}}}]"#, rev - 1),
        touched: vec!["/n".into()],
        list_touched: vec![],
        meta: None,
        idempotency: None,
    }
}

/// A snapshot of that counter at `rev` (epoch `ep-1`).
pub fn snapshot(rev: u64) -> SnapshotData {
    SnapshotData {
        epoch: "ep-1".into(),
        rev,
        ts: 1,
        state: format!(r#"{{"n":{rev}}}"#),
        sessions: vec![],
        idempotency: vec![],
        max_client: 3,
    }
}
