//! A real write fault for the file store: the process's file-size limit (RLIMIT_FSIZE) makes a
//! write fail part-way, as a full disk does. The limit is process-wide, so this file holds one
//! test and no other test shares its process.

#![cfg(target_os = "linux")]

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use ringsync::ids::RoomId;
use ringsync::store::file::{FileOptions, FileStore, Fsync};
use ringsync::store::{Journal, Record, Store, StoreError};

#[derive(Default)]
struct Events {
    list: Mutex<Vec<(&'static str, u64, u64)>>,
    cv: Condvar,
}

impl Journal for Events {
    fn written(&self, rev: u64) {
        self.list.lock().push(("written", 0, rev));
        self.cv.notify_all();
    }
    fn failed(&self, generation: u64, rev: u64, _error: &StoreError) {
        self.list.lock().push(("failed", generation, rev));
        self.cv.notify_all();
    }
}

impl Events {
    fn wait_for(&self, event: (&'static str, u64, u64)) {
        let mut list = self.list.lock();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !list.contains(&event) {
            assert!(!self.cv.wait_until(&mut list, deadline).timed_out(), "no {event:?} in {list:?}");
        }
    }
}

fn record(rev: u64) -> Record {
    Record {
        rev,
        ts: rev,
        author: 1,
        session: None,
        user: None,
        client_req_id: None,
        kind: 0,
        reverts: None,
        ops: format!(r#"[{{"op":"add","path":"/k{rev}","value":"{}"}}]"#, "x".repeat(100)),
        inverse: format!(r#"[{{"op":"remove","path":"/k{rev}"}}]"#),
        touched: vec![],
        list_touched: vec![],
        meta: None,
        idempotency: None,
    }
}

/// Sets the soft file-size limit (the hard one stays).
fn set_file_size_limit(bytes: libc::rlim_t) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass; lowering or restoring the
    // soft limit up to the hard one needs no privilege.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[test]
fn a_failed_write_is_cut_back_fails_its_generation_and_the_next_one_goes_on() {
    // SAFETY: ignoring SIGXFSZ makes a write past the limit fail with EFBIG instead of killing
    // the process; no other code in this process handles that signal.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let tmp = tempfile::tempdir().unwrap();
    let room = RoomId::parse("disk").unwrap();
    let opts = FileOptions {
        fsync: Fsync::Always,
        fsync_interval: Duration::from_secs(1),
        retain: 0,
        max_open: 0,
        ..FileOptions::default()
    };
    let store = FileStore::open_dir(tmp.path(), opts.clone()).unwrap();
    let events = Arc::new(Events::default());
    let weak: Weak<dyn Journal> = Arc::downgrade(&(events.clone() as Arc<dyn Journal>));
    let log = store.open(&room, "ep", weak);
    for rev in 1..=3 {
        log.append(0, record(rev));
    }
    events.wait_for(("written", 0, 3));
    let segment = tmp.path().join("rooms/disk/log-00000000000000000001.rsl");
    let len = std::fs::metadata(&segment).unwrap().len();

    // Room for part of one more record: the round's write fails part-way.
    set_file_size_limit(len + 50);
    for rev in 4..=6 {
        log.append(0, record(rev));
    }
    events.wait_for(("failed", 0, 4));
    log.append(0, record(7)); // the failed generation's later records are dropped
    store.flush();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len, "the partial write is cut back");
    assert_eq!(events.list.lock().iter().filter(|e| e.0 == "failed").count(), 1, "failed once");
    assert!(store.stats().write_failures >= 1);

    // Space returns: the next generation reuses the revisions.
    set_file_size_limit(libc::RLIM_INFINITY);
    for rev in 4..=5 {
        log.append(1, record(rev));
    }
    events.wait_for(("written", 0, 5));
    drop(log);
    drop(store);
    let store = FileStore::open_dir(tmp.path(), opts).unwrap();
    let loaded = store.load(&room, 0).unwrap().unwrap();
    assert_eq!(loaded.records, (1..=5).map(record).collect::<Vec<_>>());
    assert!(loaded.damage.is_empty(), "{:?}", loaded.damage);
}
