//! The file store against real files in temporary directories: round trips through a restart,
//! streaming loads (and a gap the snapshot covers), torn tails at every offset, a flipped byte, a
//! damaged snapshot, rotation and retention, generations, fsync modes, the directory lock and the
//! offline check.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use ringsync::ids::RoomId;
use ringsync::store::codec::{self, LOG_MAGIC};
use ringsync::store::file::{self, FileOptions, FileStore, Fsync};
use ringsync::store::{Journal, LoadSink, Record, RoomLog, SnapshotData, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Written(u64),
    Failed(u64, u64),
}

/// Records what the store reports, and the store's fsync count at each `written`.
#[derive(Default)]
struct TestJournal {
    events: Mutex<Vec<Ev>>,
    fsyncs_at_written: Mutex<Vec<u64>>,
    store: Mutex<Option<Weak<FileStore>>>,
    cv: Condvar,
}

impl Journal for TestJournal {
    fn written(&self, rev: u64) {
        if let Some(store) = self.store.lock().as_ref().and_then(Weak::upgrade) {
            self.fsyncs_at_written.lock().push(store.stats().fsyncs);
        }
        self.events.lock().push(Ev::Written(rev));
        self.cv.notify_all();
    }
    fn failed(&self, generation: u64, rev: u64, _error: &StoreError) {
        self.events.lock().push(Ev::Failed(generation, rev));
        self.cv.notify_all();
    }
}

impl TestJournal {
    /// Waits (10 s at most) until `rev` is reported written.
    fn wait_written(&self, rev: u64) {
        let mut events = self.events.lock();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !events.iter().any(|e| matches!(e, Ev::Written(r) if *r >= rev)) {
            assert!(
                !self.cv.wait_until(&mut events, deadline).timed_out(),
                "rev {rev} never written: {events:?}"
            );
        }
    }
    fn events(&self) -> Vec<Ev> {
        self.events.lock().clone()
    }
    /// The events with each run of `Written` reduced to its last: what was reported, whatever
    /// rounds the writer split the appends into.
    fn reported(&self) -> Vec<Ev> {
        let mut out: Vec<Ev> = Vec::new();
        for e in self.events() {
            if let Ev::Written(rev) = e
                && let Some(Ev::Written(last)) = out.last_mut()
            {
                *last = rev;
                continue;
            }
            out.push(e);
        }
        out
    }
}

fn record(rev: u64) -> Record {
    common::store::record(rev, 3, &format!("sess-{}", rev % 3))
}

fn snapshot(rev: u64) -> SnapshotData {
    common::store::snapshot(rev)
}

fn options(fsync: Fsync, retain: u64) -> FileOptions {
    FileOptions {
        fsync,
        fsync_interval: Duration::from_millis(50),
        retain,
        max_open: 0,
        ..FileOptions::default()
    }
}

fn room() -> RoomId {
    RoomId::parse("game:1").unwrap()
}

fn room_dir(dir: &Path) -> PathBuf {
    dir.join("rooms").join("game+1")
}

fn segment(dir: &Path, first: u64) -> PathBuf {
    room_dir(dir).join(format!("log-{first:020}.rsl"))
}

fn snapshot_file(dir: &Path, rev: u64) -> PathBuf {
    room_dir(dir).join(format!("snap-{rev:020}.rss"))
}

/// Opens the room's log, reporting to a fresh journal.
fn open(store: &Arc<FileStore>) -> (Arc<TestJournal>, Arc<dyn RoomLog>) {
    let journal = Arc::new(TestJournal::default());
    *journal.store.lock() = Some(Arc::downgrade(store));
    let weak: Weak<dyn Journal> = Arc::downgrade(&(journal.clone() as Arc<dyn Journal>));
    let log = store.open(&room(), "ep-1", weak);
    (journal, log)
}

fn append(log: &Arc<dyn RoomLog>, generation: u64, revs: std::ops::RangeInclusive<u64>) {
    for rev in revs {
        log.append(generation, record(rev));
    }
}

fn revs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.rev).collect()
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

/// Offsets where each record of a segment file starts, and its length.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let (_, mut at) = codec::decode_header(bytes, LOG_MAGIC).unwrap();
    let mut out = Vec::new();
    while let Some((_, next)) = codec::decode_frame::<Record>(bytes, at).unwrap() {
        out.push(at);
        at = next;
    }
    out.push(at);
    out
}

#[test]
fn records_and_snapshots_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
        assert_eq!(store.load(&room(), 10).unwrap(), None, "nothing stored yet");
        let (journal, log) = open(&store);
        append(&log, 0, 1..=10);
        log.snapshot(snapshot(10));
        append(&log, 0, 11..=20);
        journal.wait_written(20);
        assert!(journal.events().iter().all(|e| matches!(e, Ev::Written(_))));
    }
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
    let loaded = store.load(&room(), 3).unwrap().unwrap();
    assert_eq!(loaded.epoch, "ep-1");
    assert_eq!(loaded.snapshot, Some(snapshot(10)));
    assert_eq!(loaded.records, (8..=20).map(record).collect::<Vec<_>>(), "3 before the snapshot, all after");
    assert!(loaded.damage.is_empty(), "{:?}", loaded.damage);
    assert_eq!(revs(&store.load(&room(), 100).unwrap().unwrap().records), range(1, 20));
    // The log goes on where it stopped.
    let (journal, log) = open(&store);
    append(&log, 0, 21..=21);
    journal.wait_written(21);
    assert_eq!(revs(&store.changes(&room(), 19, 10).unwrap()), vec![20, 21]);
}

/// What a streaming load handed over, in order.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    snapshot: Option<Option<u64>>,
    revs: Vec<u64>,
    /// Records handed over before the snapshot (the contract says none).
    early: usize,
}

impl LoadSink for Seen {
    fn snapshot(&mut self, snapshot: Option<&SnapshotData>) {
        self.snapshot = Some(snapshot.map(|s| s.rev));
    }
    fn record(&mut self, record: Record) {
        self.early += usize::from(self.snapshot.is_none());
        self.revs.push(record.rev);
    }
}

#[test]
fn load_with_streams_the_snapshot_then_the_records_and_load_collects_them() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=10);
        log.snapshot(snapshot(10));
        append(&log, 0, 11..=20);
        journal.wait_written(20);
    }
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
    let mut seen = Seen::default();
    let loaded = store.load_with(&room(), 3, &mut seen).unwrap().unwrap();
    assert_eq!(seen, Seen { snapshot: Some(Some(10)), revs: range(8, 20), early: 0 });
    assert!(loaded.records.is_empty(), "the stream kept none");
    assert_eq!((loaded.epoch.as_str(), loaded.snapshot), ("ep-1", Some(snapshot(10))));
    assert_eq!(revs(&store.load(&room(), 3).unwrap().unwrap().records), range(8, 20));
    let mut none = Seen::default();
    let other = RoomId::parse("never-stored").unwrap();
    assert_eq!(store.load_with(&other, 3, &mut none).unwrap(), None);
    assert_eq!(none, Seen::default(), "nothing stored: the sink is not called");
}

#[test]
fn a_gap_the_snapshot_covers_makes_the_records_before_it_of_no_use() {
    let tmp = tempfile::tempdir().unwrap();
    {
        // Retention keeps every segment; the middle one is then lost.
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 100)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=5);
        log.snapshot(snapshot(5));
        append(&log, 0, 6..=9);
        log.snapshot(snapshot(9));
        append(&log, 0, 10..=12);
        journal.wait_written(12);
    }
    std::fs::remove_file(segment(tmp.path(), 6)).unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 100)).unwrap();
    let mut seen = Seen::default();
    let loaded = store.load_with(&room(), 100, &mut seen).unwrap().unwrap();
    let mut streamed = range(1, 5);
    streamed.extend(range(10, 12));
    assert_eq!(
        seen,
        Seen { snapshot: Some(Some(9)), revs: streamed, early: 0 },
        "the jump is the sink's cue"
    );
    assert!(loaded.damage.is_empty(), "{:?}", loaded.damage);
    assert_eq!(
        revs(&store.load(&room(), 100).unwrap().unwrap().records),
        range(10, 12),
        "collected: dropped"
    );
}

#[test]
fn a_torn_tail_at_any_offset_recovers_the_whole_records() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=5);
        journal.wait_written(5);
    }
    let path = segment(tmp.path(), 1);
    let original = std::fs::read(&path).unwrap();
    let offsets = frame_offsets(&original);
    assert_eq!(offsets.len(), 6);
    for cut in offsets[3]..original.len() {
        std::fs::write(&path, &original[..cut]).unwrap();
        let whole = offsets.iter().filter(|&&o| o <= cut).count() as u64 - 1;
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
        let loaded = store.load(&room(), 0).unwrap().unwrap();
        assert_eq!(revs(&loaded.records), range(1, whole), "cut at {cut}");
        if offsets.contains(&cut) {
            assert!(loaded.damage.is_empty(), "cut at a record boundary {cut}: {:?}", loaded.damage);
        } else {
            assert_eq!(loaded.damage.len(), 1, "cut at {cut}: {:?}", loaded.damage);
            assert!(
                loaded.damage[0].contains("torn record at offset") && loaded.damage[0].contains("truncated")
            );
            assert_eq!(store.stats().damaged_records, 1);
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            offsets[whole as usize] as u64,
            "cut back to whole records"
        );
        let (journal, log) = open(&store);
        append(&log, 0, whole + 1..=whole + 1);
        journal.wait_written(whole + 1);
        assert_eq!(journal.events(), vec![Ev::Written(whole + 1)]);
        drop(log);
        drop(store);
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
        let again = store.load(&room(), 0).unwrap().unwrap();
        assert_eq!(revs(&again.records), range(1, whole + 1), "cut at {cut}, after the next append");
        assert!(again.damage.is_empty());
    }
}

#[test]
fn a_flipped_byte_mid_log_cuts_there_and_sets_later_segments_aside() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=5);
        log.snapshot(snapshot(5)); // rotates: 6.. go to a second segment
        append(&log, 0, 6..=9);
        journal.wait_written(9);
    }
    let first = segment(tmp.path(), 1);
    assert!(segment(tmp.path(), 6).exists());
    let mut bytes = std::fs::read(&first).unwrap();
    let offsets = frame_offsets(&bytes);
    let third = offsets[2];
    bytes[third + 20] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();

    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
    let loaded = store.load(&room(), 100).unwrap().unwrap();
    assert_eq!(revs(&loaded.records), vec![1, 2], "up to the record before the flipped byte");
    assert_eq!(loaded.snapshot.map(|s| s.rev), Some(5));
    let damage = loaded.damage.join("\n");
    assert!(damage.contains("crc mismatch") && damage.contains(&format!("offset {third}")), "{damage}");
    assert!(damage.contains("log-00000000000000000006.rsl"), "{damage}");
    assert!(!segment(tmp.path(), 6).exists());
    assert!(room_dir(tmp.path()).join("log-00000000000000000006.rsl.damaged").exists());
    assert_eq!(std::fs::metadata(&first).unwrap().len(), third as u64);
    // The room resumes after its snapshot.
    let (journal, log) = open(&store);
    append(&log, 0, 6..=6);
    journal.wait_written(6);
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Always, 0)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=4);
        log.snapshot(snapshot(4));
        append(&log, 0, 5..=8);
        log.snapshot(snapshot(8));
        append(&log, 0, 9..=10);
        journal.wait_written(10);
    }
    let newest = snapshot_file(tmp.path(), 8);
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&newest, &bytes).unwrap();

    let store = FileStore::open_dir(tmp.path(), options(Fsync::Always, 0)).unwrap();
    let loaded = store.load(&room(), 0).unwrap().unwrap();
    assert_eq!(loaded.snapshot, Some(snapshot(4)));
    assert_eq!(revs(&loaded.records), range(5, 10), "the log still covers the older snapshot");
    assert!(loaded.damage.iter().any(|d| d.contains("snap-00000000000000000008.rss")), "{:?}", loaded.damage);
    assert_eq!(store.stats().damaged_snapshots, 1);
}

#[test]
fn snapshots_rotate_segments_and_old_ones_go_except_what_retain_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 3)).unwrap();
    let (journal, log) = open(&store);
    for chunk in 0..4 {
        let first = chunk * 5 + 1;
        append(&log, 0, first..=first + 4);
        log.snapshot(snapshot(first + 4));
    }
    append(&log, 0, 21..=22);
    journal.wait_written(22);
    store.flush();
    // Snapshots 15 and 20 are kept; the log from min(15, 20 - 3) on.
    let mut names: Vec<String> = std::fs::read_dir(room_dir(tmp.path()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let expected: Vec<String> = vec![
        "log-00000000000000000016.rsl".into(),
        "log-00000000000000000021.rsl".into(),
        "snap-00000000000000000015.rss".into(),
        "snap-00000000000000000020.rss".into(),
    ];
    assert_eq!(names, expected);
    assert_eq!(store.stats().segments_deleted, 3);
    assert_eq!(store.stats().snapshots_written, 4);
    assert_eq!(store.oldest(&room()), Some(16));
    assert_eq!(revs(&store.changes(&room(), 0, 100).unwrap()), range(16, 22));
    assert_eq!(revs(&store.changes(&room(), 17, 2).unwrap()), vec![18, 19]);
    assert_eq!(revs(&store.changes(&room(), 19, 100).unwrap()), vec![20, 21, 22]);
    assert!(store.changes(&room(), 22, 100).unwrap().is_empty());
    let loaded = store.load(&room(), 2).unwrap();
    assert_eq!(revs(&loaded.unwrap().records), range(19, 22));
}

#[test]
fn an_unexpected_rev_fails_its_generation_once_and_the_next_generation_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
    let (journal, log) = open(&store);
    append(&log, 0, 1..=2);
    journal.wait_written(2);
    log.append(0, record(5)); // a gap
    log.append(0, record(3)); // same generation: dropped
    log.append(0, record(4));
    store.flush();
    assert_eq!(journal.reported(), vec![Ev::Written(2), Ev::Failed(0, 5)]);
    append(&log, 1, 3..=4);
    journal.wait_written(4);
    assert_eq!(journal.reported(), vec![Ev::Written(2), Ev::Failed(0, 5), Ev::Written(4)]);
    // A snapshot ahead of the log (its records failed) is dropped.
    log.snapshot(snapshot(9));
    store.flush();
    assert!(!snapshot_file(tmp.path(), 9).exists());
    assert_eq!(revs(&store.changes(&room(), 0, 10).unwrap()), range(1, 4));
}

#[test]
fn fsync_always_syncs_before_written_and_never_only_on_flush() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Always, 0)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=3);
        journal.wait_written(3);
        let at_written = journal.fsyncs_at_written.lock().clone();
        assert!(!at_written.is_empty() && at_written.iter().all(|&n| n >= 1), "{at_written:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
    let (journal, log) = open(&store);
    append(&log, 0, 1..=3);
    journal.wait_written(3);
    assert_eq!(store.stats().fsyncs, 0);
    assert_eq!(store.stats().appends_written, 3);
    store.flush();
    assert!(store.stats().fsyncs >= 1);
}

#[test]
fn fsync_batch_syncs_within_its_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
    let (journal, log) = open(&store);
    append(&log, 0, 1..=3);
    journal.wait_written(3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.stats().fsyncs == 0 {
        assert!(std::time::Instant::now() < deadline, "the batch sync never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The sync thread takes the next interval's writes too (it is free again).
    let first = store.stats().fsyncs;
    append(&log, 0, 4..=6);
    journal.wait_written(6);
    while store.stats().fsyncs == first {
        assert!(std::time::Instant::now() < deadline, "the second batch sync never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.stats().fsync_failures, 0);
}

#[test]
fn a_second_store_on_the_same_directory_is_refused_naming_it_and_us() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
    let Err(e) = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)) else {
        panic!("a second store opened")
    };
    let message = e.to_string();
    assert!(message.contains(&tmp.path().display().to_string()), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
    drop(_first);
    assert!(
        FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).is_ok(),
        "the lock goes with the store"
    );
}

#[test]
fn close_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
    let (journal, log) = open(&store);
    append(&log, 0, 1..=3);
    store.close(&room());
    assert!(journal.events().contains(&Ev::Written(3)));
    assert!(store.stats().fsyncs >= 1, "close syncs");
    // Appends after a close reopen the segment and go on.
    append(&log, 0, 4..=4);
    journal.wait_written(4);
    assert_eq!(revs(&store.changes(&room(), 0, 10).unwrap()), range(1, 4));
    store.delete(&room()).unwrap();
    assert!(!room_dir(tmp.path()).exists());
    assert_eq!(store.load(&room(), 0).unwrap(), None);
    assert_eq!(store.oldest(&room()), None);
}

fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn check_reports_damage_and_modifies_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Batch, 0)).unwrap();
        let (journal, log) = open(&store);
        append(&log, 0, 1..=3);
        log.snapshot(snapshot(3));
        append(&log, 0, 4..=6);
        journal.wait_written(6);
    }
    let seg = segment(tmp.path(), 4);
    let len = std::fs::metadata(&seg).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let before = all_files(tmp.path());
    let reports = file::check(tmp.path()).unwrap();
    assert_eq!(all_files(tmp.path()), before, "check is read-only");
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!((r.room.as_str(), r.epoch.as_str()), ("game:1", "ep-1"));
    assert_eq!((r.snapshot_rev, r.first_rev, r.last_rev, r.records), (Some(3), Some(1), Some(5), 5));
    assert!(r.bytes > 0);
    assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
    assert!(
        r.damage[0].contains("torn record") && r.damage[0].contains("would be truncated"),
        "{:?}",
        r.damage
    );
}

#[test]
fn past_the_open_file_cap_segments_are_parked_and_reopened_not_multiplied() {
    let tmp = tempfile::tempdir().unwrap();
    let rooms: Vec<RoomId> = (0..6).map(|i| RoomId::parse(&format!("cap:{i}")).unwrap()).collect();
    let opts = FileOptions { max_open: 2, ..options(Fsync::Batch, 0) };
    {
        let store = FileStore::open_dir(tmp.path(), opts.clone()).unwrap();
        let mut logs = Vec::new();
        for room in &rooms {
            let journal = Arc::new(TestJournal::default());
            let weak: Weak<dyn Journal> = Arc::downgrade(&(journal.clone() as Arc<dyn Journal>));
            logs.push((journal, store.open(room, "ep-cap", weak)));
        }
        // Rooms take turns, each write its own round (waited for), so every round past the
        // second opens a segment over the cap.
        for rev in 1..=20 {
            for (journal, log) in &logs {
                log.append(0, record(rev));
                journal.wait_written(rev);
            }
        }
        assert!(store.stats().segments_parked > 0, "{:?}", store.stats());
        store.flush();
    }
    for room in &rooms {
        let dir = tmp.path().join("rooms").join(file::dir_name(room));
        let segments = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("log-"))
            .count();
        assert_eq!(segments, 1, "{room}: a parked segment is reopened, not replaced by a new one");
    }
    let store = FileStore::open_dir(tmp.path(), opts).unwrap();
    for room in &rooms {
        let loaded = store.load(room, 100).unwrap().unwrap();
        assert_eq!(revs(&loaded.records), range(1, 20), "{room}");
        assert!(loaded.damage.is_empty(), "{room}: {:?}", loaded.damage);
    }
}

#[test]
fn history_pages_match_the_log_across_segments_and_stop_at_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 1000)).unwrap();
    let (journal, log) = open(&store);
    // Segments starting at 1, 101 and 201 (each snapshot rotates), every record retained.
    for chunk in 0..2u64 {
        append(&log, 0, chunk * 100 + 1..=chunk * 100 + 100);
        log.snapshot(snapshot(chunk * 100 + 100));
    }
    append(&log, 0, 201..=250);
    journal.wait_written(250);
    store.flush();
    for after in [0, 1, 57, 99, 100, 101, 150, 199, 200, 201, 248, 249, 250, 300] {
        for limit in [1, 7, 100, 1000] {
            let want: Vec<u64> = (after + 1..=250).take(limit).collect();
            assert_eq!(
                revs(&store.changes(&room(), after, limit).unwrap()),
                want,
                "after {after} limit {limit}"
            );
        }
    }
    // Half a record at the end (a write in progress): the whole ones before it are served.
    let last = segment(tmp.path(), 201);
    let mut bytes = std::fs::read(&last).unwrap();
    let offsets = frame_offsets(&bytes);
    let whole = bytes.clone();
    bytes.extend_from_slice(&whole[offsets[3]..offsets[3] + 20]);
    std::fs::write(&last, &bytes).unwrap();
    assert_eq!(revs(&store.changes(&room(), 240, 100).unwrap()), range(241, 250));
    // A flipped byte in a record that is returned ends the page before it.
    let mut bytes = whole;
    bytes[offsets[10] + 12] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    assert_eq!(revs(&store.changes(&room(), 205, 100).unwrap()), range(206, 210));
    assert_eq!(revs(&store.changes(&room(), 150, 60).unwrap()), range(151, 210));
}

#[test]
fn room_directories_named_before_capitals_were_escaped_are_renamed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = RoomId::parse("Game:One").unwrap();
    {
        let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
        let journal = Arc::new(TestJournal::default());
        let weak: Weak<dyn Journal> = Arc::downgrade(&(journal.clone() as Arc<dyn Journal>));
        let log = store.open(&upper, "ep-1", weak);
        append(&log, 0, 1..=3);
        journal.wait_written(3);
        store.flush();
    }
    let rooms = tmp.path().join("rooms");
    assert!(rooms.join("^game+^one").is_dir(), "capitals escaped");
    // As an older version left it: the old name, no marker.
    std::fs::rename(rooms.join("^game+^one"), rooms.join("Game+One")).unwrap();
    std::fs::remove_file(rooms.join(".names-v2")).unwrap();
    let reports = file::check(tmp.path()).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].room.as_str(), reports[0].last_rev), ("Game:One", Some(3)), "{reports:?}");
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
    assert!(rooms.join("^game+^one").is_dir() && !rooms.join("Game+One").exists());
    assert_eq!(revs(&store.load(&upper, 0).unwrap().unwrap().records), range(1, 3));
    assert!(rooms.join(".names-v2").exists());
    assert!(file::check(tmp.path()).unwrap().iter().all(|r| r.damage.is_empty()));
}

#[test]
fn records_encoded_by_the_committing_threads_land_whole_and_in_order_in_each_room() {
    // `append` encodes on the caller's thread and queues only the frame, back to back with
    // other rooms' frames in the queue's one buffer. Two rooms written from two threads at once
    // (so rounds mix them), records of different sizes: each room reads back exactly what it was
    // given, in revision order, before and after a restart.
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
    let (journal, log) = open(&store);
    let other = RoomId::parse("other-room").unwrap();
    let other_journal = Arc::new(TestJournal::default());
    let weak: Weak<dyn Journal> = Arc::downgrade(&(other_journal.clone() as Arc<dyn Journal>));
    let other_log = store.open(&other, "ep-2", weak);
    let given = |user: &str| -> Vec<Record> {
        (1..=300u64)
            .map(|rev| {
                let mut r = record(rev);
                r.user = Some(format!("{user}-{rev}"));
                r.ops = format!(
                    "[{{\"op\":\"add\",\"path\":\"/k\",\"value\":\"{}\"}}]",
                    "x".repeat(rev as usize % 97)
                );
                r
            })
            .collect()
    };
    let (mine, theirs) = (given("a"), given("b"));
    std::thread::scope(|scope| {
        for (log, records) in [(&log, &mine), (&other_log, &theirs)] {
            scope.spawn(move || {
                for r in records {
                    log.append(0, r.clone());
                }
            });
        }
    });
    journal.wait_written(300);
    other_journal.wait_written(300);
    store.flush();
    for j in [&journal, &other_journal] {
        assert!(j.events().iter().all(|e| matches!(e, Ev::Written(_))), "{:?}", j.events());
    }
    assert_eq!(store.changes(&room(), 0, 1000).unwrap(), mine);
    assert_eq!(store.changes(&other, 0, 1000).unwrap(), theirs);
    drop((log, other_log));
    drop(store);
    let store = FileStore::open_dir(tmp.path(), options(Fsync::Never, 0)).unwrap();
    assert_eq!(store.load(&room(), 1000).unwrap().unwrap().records, mine);
    assert_eq!(store.load(&other, 1000).unwrap().unwrap().records, theirs);
}
