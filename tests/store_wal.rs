//! `--fsync always`'s shared write-ahead log against real files: what an OS crash can lose (every
//! segment byte written since the last checkpoint) comes back from the log at the next start, a
//! deleted room stays deleted, a torn log tail is cut, and a clean stop leaves nothing to replay.
//!
//! An OS crash is simulated on a copy of a live store's directory: the segments' unsynced part
//! (what the remaining log entries cover) is cut, zeroed or emptied the ways a filesystem can
//! leave it, then a store opened on the copy must serve every record that was reported written.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use common::store::Written;
use ringsync::ids::RoomId;
use ringsync::store::codec::{self, LOG_MAGIC, WAL_MAGIC, WalEntry};
use ringsync::store::file::{self, FileOptions, FileStore, Fsync};
use ringsync::store::{Journal, Record, RoomLog, Store};

fn record(room: usize, rev: u64) -> Record {
    common::store::record(rev, room as u64, &format!("s{room}"))
}

fn room(i: usize) -> RoomId {
    RoomId::parse(&format!("game:{i}")).unwrap()
}

fn options(fsync: Fsync, wal_max: u64) -> FileOptions {
    FileOptions { fsync, wal_max, max_open: 0, ..FileOptions::default() }
}

struct Open {
    journal: Arc<Written>,
    log: Arc<dyn RoomLog>,
}

fn open(store: &Arc<FileStore>, i: usize) -> Open {
    let journal = Arc::new(Written::default());
    let weak: Weak<dyn Journal> = Arc::downgrade(&(journal.clone() as Arc<dyn Journal>));
    let log = store.open(&room(i), "ep-1", weak);
    Open { journal, log }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir.join("wal")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Each room's lowest revision in the log entries left on disk: from there on its segments may
/// have been lost in an OS crash (everything before was synced by a checkpoint).
fn unsynced_from(dir: &Path) -> HashMap<String, u64> {
    let mut from: HashMap<String, u64> = HashMap::new();
    for path in wal_files(dir) {
        let buf = fs::read(&path).unwrap();
        let (_, mut offset) = codec::decode_header(&buf, WAL_MAGIC).unwrap();
        while let Ok(Some((entry, next))) = codec::decode_frame::<WalEntry>(&buf, offset) {
            offset = next;
            let WalEntry::Records { room, frames, .. } = entry else { continue };
            if let Ok(Some((first, _))) = codec::decode_frame::<Record>(&frames, 0) {
                let at = from.entry(room).or_insert(first.rev);
                *at = (*at).min(first.rev);
            }
        }
    }
    from
}

/// (first rev, offset) of every record frame in a segment.
fn frames(buf: &[u8]) -> Vec<(u64, usize)> {
    let (_, mut offset) = codec::decode_header(buf, LOG_MAGIC).unwrap();
    let mut out = Vec::new();
    while let Ok(Some((record, next))) = codec::decode_frame::<Record>(buf, offset) {
        out.push((record.rev, offset));
        offset = next;
    }
    out
}

/// A small deterministic generator (the test must not depend on a seed it cannot print).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Loses, in every room directory under `dir`, what an OS crash may lose: the part of each
/// segment from the room's first unsynced revision on is cut (sometimes mid-record), zeroed (the
/// size reached the disk, the data did not) or, for a segment that starts there, emptied. How
/// many records were lost.
fn crash(dir: &Path, rng: &mut Rng) -> u64 {
    let from = unsynced_from(dir);
    let mut lost = 0;
    for (room_id, first_unsynced) in from {
        let room_dir = dir.join("rooms").join(room_id.replace(':', "+"));
        let mut segments: Vec<PathBuf> = fs::read_dir(&room_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rsl"))
            .collect();
        segments.sort();
        for path in segments {
            let buf = fs::read(&path).unwrap();
            let frames = frames(&buf);
            let Some(i) = frames.iter().position(|&(rev, _)| rev >= first_unsynced) else { continue };
            lost += (frames.len() - i) as u64;
            let cut = frames[i].1;
            match rng.below(3) {
                0 if i == 0 => fs::write(&path, b"").unwrap(),
                0 | 1 => {
                    // Cut, perhaps inside the record.
                    let len = cut + rng.below(12) as usize;
                    fs::write(&path, &buf[..len.min(buf.len())]).unwrap();
                }
                _ => {
                    let mut zeroed = buf.clone();
                    zeroed[cut..].fill(0);
                    fs::write(&path, zeroed).unwrap();
                }
            }
        }
    }
    lost
}

#[test]
fn what_an_os_crash_takes_from_the_segments_comes_back_from_the_log() {
    const ROOMS: usize = 6;
    const REVS: u64 = 300;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for wal_max in [1 << 30, 16 << 10] {
        let live = tempfile::tempdir().unwrap();
        let store = FileStore::open_dir(live.path(), options(Fsync::Always, wal_max)).unwrap();
        let rooms: Vec<Open> = (0..ROOMS).map(|i| open(&store, i)).collect();
        // Rooms written unevenly, in rounds of a few records each.
        let mut next = [1u64; ROOMS];
        while next.iter().any(|&n| n <= REVS) {
            for (i, r) in rooms.iter().enumerate() {
                let n = 1 + rng.below(7 + i as u64 * 3);
                for _ in 0..n {
                    if next[i] <= REVS {
                        r.log.append(0, record(i, next[i]));
                        next[i] += 1;
                    }
                }
            }
            if rng.below(4) == 0 {
                rooms[0].journal.wait(next[0] - 1);
            }
        }
        for r in &rooms {
            r.journal.wait(REVS);
        }
        let stats = store.stats();
        if wal_max < 1 << 20 {
            assert!(stats.checkpoints >= 2, "a small log is checkpointed: {stats:?}");
            assert!(wal_files(live.path()).len() <= 2, "old log files go: {:?}", wal_files(live.path()));
        }

        // The crash: a copy of the directory as the disk may hold it.
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(live.path(), crashed.path());
        let lost = crash(crashed.path(), &mut rng);
        assert!(lost > 0, "the simulation lost nothing (wal_max {wal_max})");

        // Either mode replays what it finds.
        let back = FileStore::open_dir(crashed.path(), options(Fsync::Batch, wal_max)).unwrap();
        assert_eq!(back.stats().wal_replayed, lost, "wal_max {wal_max}");
        assert!(wal_files(crashed.path()).is_empty(), "replayed logs are deleted (batch starts none)");
        for i in 0..ROOMS {
            let loaded = back.load(&room(i), 0).unwrap().unwrap();
            let want: Vec<Record> = (1..=REVS).map(|rev| record(i, rev)).collect();
            assert!(
                loaded.records == want,
                "room {i}: got revs {:?}",
                loaded.records.iter().map(|r| r.rev).collect::<Vec<_>>()
            );
            assert_eq!(loaded.epoch, "ep-1");
        }
        drop(back);
        // Once replayed, the copy opens with nothing left to replay.
        let again = FileStore::open_dir(crashed.path(), options(Fsync::Always, wal_max)).unwrap();
        assert_eq!(again.stats().wal_replayed, 0);
        drop(rooms);
        drop(store);
    }
}

#[test]
fn a_deleted_room_stays_deleted_and_a_torn_log_tail_is_cut() {
    let live = tempfile::tempdir().unwrap();
    let store = FileStore::open_dir(live.path(), options(Fsync::Always, 1 << 30)).unwrap();
    let (a, b) = (open(&store, 1), open(&store, 2));
    for rev in 1..=5 {
        a.log.append(0, record(1, rev));
    }
    a.journal.wait(5);
    store.delete(&room(1)).unwrap();
    for rev in 1..=3 {
        b.log.append(0, record(2, rev));
    }
    b.journal.wait(3);

    let crashed = tempfile::tempdir().unwrap();
    copy_dir(live.path(), crashed.path());
    // A round whose write never finished: half an entry at the log's end.
    let log = wal_files(crashed.path()).pop().unwrap();
    let mut bytes = fs::read(&log).unwrap();
    let whole = bytes.len();
    let mut half = Vec::new();
    codec::encode_frame(&WalEntry::Delete { room: "game:2".into() }, &mut half).unwrap();
    bytes.extend_from_slice(&half[..half.len() / 2]);
    fs::write(&log, &bytes).unwrap();
    // Room 2's segment lost its last record; room 1's directory came back empty-handed.
    let seg = crashed.path().join("rooms/game+2/log-00000000000000000001.rsl");
    let buf = fs::read(&seg).unwrap();
    fs::write(&seg, &buf[..frames(&buf)[2].1]).unwrap();

    // The offline check sees what the next start will replay, and the torn end.
    let report = file::check_wal(crashed.path()).unwrap();
    // Room 1's rounds (one or more), its delete, room 2's rounds.
    assert!(report.files == 1 && report.entries >= 3 && report.damage.len() == 1, "{report:?}");

    let back = FileStore::open_dir(crashed.path(), options(Fsync::Always, 1 << 30)).unwrap();
    assert!(file::check_wal(crashed.path()).unwrap().entries == 0, "replayed and checkpointed");
    assert_eq!(back.load(&room(1), 0).unwrap(), None, "the delete was replayed after room 1's records");
    assert!(!crashed.path().join("rooms/game+1").exists());
    let loaded = back.load(&room(2), 0).unwrap().unwrap();
    assert_eq!(
        loaded.records,
        (1..=3).map(|rev| record(2, rev)).collect::<Vec<_>>(),
        "the torn half-entry did nothing"
    );
    // Room 1's five records were appended again (its directory was gone) before its delete
    // removed them; room 2 got back its lost one.
    assert_eq!(back.stats().wal_replayed, 5 + 1);
    assert!(whole > 0);
    drop((a, b));
}

#[test]
fn a_clean_stop_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open_dir(dir.path(), options(Fsync::Always, 1 << 30)).unwrap();
        let a = open(&store, 1);
        for rev in 1..=10 {
            a.log.append(0, record(1, rev));
        }
        a.journal.wait(10);
    }
    let files = wal_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let buf = fs::read(&files[0]).unwrap();
    let (_, at) = codec::decode_header(&buf, WAL_MAGIC).unwrap();
    assert_eq!(at, buf.len(), "the stop's checkpoint left an empty log");
    let store = FileStore::open_dir(dir.path(), options(Fsync::Always, 1 << 30)).unwrap();
    assert_eq!(store.stats().wal_replayed, 0);
    assert_eq!(store.load(&room(1), 0).unwrap().unwrap().records.len(), 10);
}
