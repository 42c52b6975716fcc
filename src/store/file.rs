//! The file store: one directory per room holding an append-only log of CRC32C-framed rkyv
//! records (in segments) and rkyv snapshots, written by one dedicated thread.
//!
//! Layout: `DIR/LOCK` (an OS lock held while the store lives, with the holder's pid in it),
//! `DIR/wal/` (the write-ahead log, `always` only) and `DIR/rooms/<room>/` per room (see
//! [`dir_name`]), holding `log-<first rev>.rsl` segments and `snap-<rev>.rss` snapshots
//! (revisions as 20 digits, so names sort by revision). Formats are in [`super::codec`].
//!
//! Threads: [`RoomLog::append`] encodes the record on the committing thread (CRC32C frame and
//! all) and copies the frame into the queue's one byte buffer; [`RoomLog::snapshot`] only pushes
//! onto the queue. The writer thread (`ringsync-store`) takes the whole queue (and its bytes)
//! each round, writes each room's frames of the round with one `pwrite`, syncs as [`Fsync`]
//! says, then reports to each room's [`Journal`].
//! Group commit with `always`: the round's records of every room also go, with one write, to the
//! shared write-ahead log (`DIR/wal/`, see [`wal`]), and its one `sync_data` covers every room
//! written in the round; segments are synced at the log's checkpoints, and a start after an
//! unclean stop replays the log into them first. `batch` syncs written segments every interval on
//! its own thread (`ringsync-sync`). Every write, sync, rename and
//! delete happens on that thread; readers ([`Store::load_with`], [`Store::changes`], [`check`])
//! use their own read-only handles and read only whole frames, one segment file at a time. A
//! load hands each record on as it decodes it, so what it holds is one segment's bytes (a
//! segment is closed once past [`MAX_SEGMENT`]), whatever the log's length.
//!
//! Invariants: a room's records are on disk in revision order with no gap inside a segment, and
//! a segment's name is its first record's revision (so a segment's last revision is the next
//! one's first minus one); a record is reported written only after every earlier one of its
//! room, and, with `--fsync always`, only after it is synced; a record whose write fails is cut
//! from the file again (or the room is re-read before its next write), and its generation's later
//! records are dropped. What the room reads back ([`scan_room`], shared by `load_with`, `check`
//! and the writer) is one decision: the newest snapshot that validates, then consecutive records
//! up to the first torn, corrupt or out-of-order one, where `load` cuts and `check` only reports.
//! The store never panics on I/O errors: it logs them (room, file, offset) and counts them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::codec::{self, LOG_MAGIC, WalEntry};
use super::{Journal, LoadSink, Loaded, Record, RoomLog, SnapshotData, Store, StoreError};
use crate::ids::RoomId;

mod wal;

/// A segment that has grown past this many bytes is closed; the next append starts a new one.
pub const MAX_SEGMENT: u64 = 64 << 20;

/// When appended records are synced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every round of writes, before any of them is reported written.
    Always,
    /// At most every [`FileOptions::fsync_interval`]; records are reported written once written.
    Batch,
    /// Only on flush and close; the OS decides the rest.
    Never,
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Batch => "batch",
            Fsync::Never => "never",
        }
    }
}

impl FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            "never" => Ok(Fsync::Never),
            other => Err(format!("fsync must be always, batch or never (not {other:?})")),
        }
    }
}

/// How a [`FileStore`] writes.
#[derive(Debug, Clone)]
pub struct FileOptions {
    pub fsync: Fsync,
    /// How often `Fsync::Batch` syncs what was written.
    pub fsync_interval: Duration,
    /// Records kept before the newest snapshot for the history API (at least the ring's size).
    pub retain: u64,
    /// Most log segments held open at once (0 = no cap). Past it, the least recently written
    /// rooms' segments are closed (synced first where the mode promises it) and reopened on their
    /// next write, so the store's file descriptors stay within a share of the process's limit
    /// however many rooms are active.
    pub max_open: usize,
    /// `Fsync::Always`: the shared write-ahead log is checkpointed (every segment written since
    /// the last checkpoint synced, the log started afresh) once it holds this many bytes. It
    /// bounds both the log on disk and what a start after a crash reads back.
    pub wal_max: u64,
}

impl FileOptions {
    /// What [`FileOptions::default`] caps open segments at.
    pub const DEFAULT_MAX_OPEN: usize = 1024;
    /// [`FileOptions::wal_max`]'s default.
    pub const DEFAULT_WAL_MAX: u64 = 64 << 20;
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            fsync: Fsync::Batch,
            fsync_interval: Duration::from_secs(1),
            retain: 0,
            max_open: Self::DEFAULT_MAX_OPEN,
            wal_max: Self::DEFAULT_WAL_MAX,
        }
    }
}

/// The store's counters (published as metrics by the shell).
#[derive(Debug, Default)]
pub struct Stats {
    appends_written: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    write_failures: AtomicU64,
    fsync_failures: AtomicU64,
    damaged_records: AtomicU64,
    damaged_snapshots: AtomicU64,
    snapshots_written: AtomicU64,
    segments_deleted: AtomicU64,
    segments_parked: AtomicU64,
    checkpoints: AtomicU64,
    wal_replayed: AtomicU64,
    queue_len: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Records written to a segment.
    pub appends_written: u64,
    /// Bytes written to segments and snapshots.
    pub bytes_written: u64,
    pub fsyncs: u64,
    /// Time spent in fsync, in total.
    pub fsync_nanos: u64,
    /// Writes (records or snapshots) that failed.
    pub write_failures: u64,
    pub fsync_failures: u64,
    /// Torn or corrupt records found (and cut) when reading a room back.
    pub damaged_records: u64,
    /// Snapshots that did not validate when reading a room back.
    pub damaged_snapshots: u64,
    pub snapshots_written: u64,
    pub segments_deleted: u64,
    /// Segments closed to stay within `FileOptions::max_open` (reopened on their next write).
    pub segments_parked: u64,
    /// Checkpoints of the shared write-ahead log (`Fsync::Always`).
    pub checkpoints: u64,
    /// Records appended again from the write-ahead log at start (their segments had lost them).
    pub wal_replayed: u64,
    /// Operations queued for the writer thread.
    pub queue_len: u64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            appends_written: get(&self.appends_written),
            bytes_written: get(&self.bytes_written),
            fsyncs: get(&self.fsyncs),
            fsync_nanos: get(&self.fsync_nanos),
            write_failures: get(&self.write_failures),
            fsync_failures: get(&self.fsync_failures),
            damaged_records: get(&self.damaged_records),
            damaged_snapshots: get(&self.damaged_snapshots),
            snapshots_written: get(&self.snapshots_written),
            segments_deleted: get(&self.segments_deleted),
            segments_parked: get(&self.segments_parked),
            checkpoints: get(&self.checkpoints),
            wal_replayed: get(&self.wal_replayed),
            queue_len: get(&self.queue_len),
        }
    }

    /// `sync_data`, counted and timed.
    fn sync(&self, file: &File) -> io::Result<()> {
        let start = Instant::now();
        let result = file.sync_data();
        Stats::add(&self.fsyncs, 1);
        Stats::add(&self.fsync_nanos, u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if result.is_err() {
            Stats::add(&self.fsync_failures, 1);
        }
        result
    }
}

/// A room's directory name: the room id with `:` as `+`, each capital letter as `^` and the
/// letter in lower case, and a leading `.` as `=` (room ids hold none of `+`, `^` and `=`, so the
/// mapping reverses, no name is `.` or `..`, and no two rooms' names differ only in case, which a
/// case-insensitive filesystem such as macOS's or Windows's default would take for one).
pub fn dir_name(room: &RoomId) -> String {
    let mut name = String::with_capacity(room.as_str().len() + 4);
    for (i, c) in room.as_str().chars().enumerate() {
        match c {
            '.' if i == 0 => name.push('='),
            ':' => name.push('+'),
            'A'..='Z' => {
                name.push('^');
                name.push(c.to_ascii_lowercase());
            }
            c => name.push(c),
        }
    }
    name
}

/// The room a directory name stands for (`None` for a name [`dir_name`] does not make).
pub fn room_of_dir(name: &str) -> Option<RoomId> {
    let mut id = String::with_capacity(name.len());
    let mut chars = name.chars().enumerate();
    while let Some((i, c)) = chars.next() {
        match c {
            '=' if i == 0 => id.push('.'),
            '+' => id.push(':'),
            '^' => id.push(chars.next()?.1.to_ascii_uppercase()),
            c => id.push(c),
        }
    }
    RoomId::parse(&id).ok().filter(|room| dir_name(room) == name)
}

/// The room a directory name made before capital letters were escaped (format 1) stands for.
fn room_of_old_dir(name: &str) -> Option<RoomId> {
    let id = name.replace('+', ":");
    let id = match id.strip_prefix('=') {
        Some(rest) => format!(".{rest}"),
        None => id,
    };
    RoomId::parse(&id).ok()
}

/// Marks a rooms directory whose names all escape capital letters (see [`dir_name`]).
const NAMES_V2: &str = ".names-v2";

/// Renames, once per data directory, the room directories named before capital letters were
/// escaped; later starts see the marker and skip the listing (start-up stays independent of the
/// number of rooms).
fn migrate_names(rooms: &Path) -> Result<(), StoreError> {
    let marker = rooms.join(NAMES_V2);
    if marker.exists() {
        return Ok(());
    }
    let entries =
        fs::read_dir(rooms).map_err(|e| StoreError::io(format!("cannot list {}", rooms.display()), &e))?;
    let mut renamed = 0;
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !name.bytes().any(|b| b.is_ascii_uppercase()) {
            continue;
        }
        let Some(room) = room_of_old_dir(&name) else { continue };
        let to = rooms.join(dir_name(&room));
        if to.exists() {
            tracing::error!(dir = %entry.path().display(), "store: cannot rename a room directory to its new name: {} exists", to.display());
            continue;
        }
        fs::rename(entry.path(), &to)
            .map_err(|e| StoreError::io(format!("cannot rename {}", entry.path().display()), &e))?;
        renamed += 1;
    }
    File::create(&marker).map_err(|e| StoreError::io(format!("cannot create {}", marker.display()), &e))?;
    sync_dir(rooms).map_err(|e| StoreError::io(format!("cannot sync {}", rooms.display()), &e))?;
    if renamed > 0 {
        tracing::info!(renamed, "store: room directories renamed to escape capital letters");
    }
    Ok(())
}

fn segment_name(first: u64) -> String {
    format!("log-{first:020}.rsl")
}

fn snapshot_name(rev: u64) -> String {
    format!("snap-{rev:020}.rss")
}

fn parse_rev(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// A room directory's files, by name.
#[derive(Default)]
struct Listing {
    segments: Vec<u64>,
    snapshots: Vec<u64>,
    /// Snapshots whose writing never finished (a crash between write and rename).
    temporary: Vec<PathBuf>,
    bytes: u64,
}

/// `None` when the directory does not exist.
fn list(dir: &Path) -> Result<Option<Listing>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("cannot list {}", dir.display()), &e)),
    };
    let mut listing = Listing::default();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("cannot list {}", dir.display()), &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if let Some(first) = parse_rev(name, "log-", ".rsl") {
            listing.segments.push(first);
        } else if let Some(rev) = parse_rev(name, "snap-", ".rss") {
            listing.snapshots.push(rev);
        } else if parse_rev(name, "snap-", ".tmp").is_some() {
            listing.temporary.push(entry.path());
            continue;
        } else {
            continue;
        }
        listing.bytes += len;
    }
    listing.segments.sort_unstable();
    listing.snapshots.sort_unstable();
    Ok(Some(listing))
}

/// What reading a room is for.
#[derive(Clone, Copy)]
struct ScanOpts {
    /// Cut damage (truncate the segment, rename later segments and bad snapshots `.damaged`):
    /// `load` and the writer. `check` only reports.
    cut: bool,
    /// `Some(keep)`: read the log from `keep` records before the snapshot on (`load`, the
    /// writer); `None`: read every segment and every snapshot (`check`).
    keep: Option<u64>,
}

/// What reading a room found.
#[derive(Default)]
struct Scan {
    epoch: Option<String>,
    snapshot: Option<SnapshotData>,
    /// Snapshots left on disk (by revision), segments left on disk (by first revision).
    snapshots: Vec<u64>,
    segments: Vec<u64>,
    first_rev: Option<u64>,
    last_rev: Option<u64>,
    count: u64,
    /// The newest segment left: its first revision, whole length and next revision.
    tail: Option<(u64, u64, u64)>,
    bytes: u64,
    damage: Vec<String>,
    damaged_records: u64,
    damaged_snapshots: u64,
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    fs::read(path).map_err(|e| StoreError::io(format!("cannot read {}", path.display()), &e))
}

fn quarantine(path: &Path) -> Result<(), StoreError> {
    let mut to = path.as_os_str().to_owned();
    to.push(".damaged");
    fs::rename(path, &to).map_err(|e| StoreError::io(format!("cannot rename {}", path.display()), &e))
}

fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    let done =
        OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(len).and_then(|()| f.sync_all()));
    done.map_err(|e| StoreError::io(format!("cannot truncate {} to {len} bytes", path.display()), &e))
}

/// Syncs a directory so renames and new files in it survive a crash (best effort where the
/// platform cannot open directories).
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all().or_else(|e| if cfg!(unix) { Err(e) } else { Ok(()) }),
        Err(e) if cfg!(unix) => Err(e),
        Err(_) => Ok(()),
    }
}

/// Reads one room's directory: the one place that decides what of it is valid. With a `sink`
/// (`load`), hands it the snapshot found and then each valid record after `keep` before it as
/// it is decoded, under [`LoadSink`]'s contract (the records before a gap the snapshot covers
/// are of no use); `check` and the writer keep only the counts and bounds.
///
/// # Errors
/// When a file cannot be listed or read at all, or damage cannot be cut.
fn scan_room(
    room: &str,
    dir: &Path,
    opts: ScanOpts,
    mut sink: Option<&mut dyn LoadSink>,
) -> Result<Option<Scan>, StoreError> {
    let Some(listing) = list(dir)? else { return Ok(None) };
    if listing.segments.is_empty() && listing.snapshots.is_empty() {
        return Ok(None);
    }
    let mut scan = Scan { bytes: listing.bytes, ..Scan::default() };
    let (verb, verb_rename) = if opts.cut {
        ("truncated", "renamed .damaged")
    } else {
        ("would be truncated", "would be renamed .damaged")
    };
    if opts.cut {
        for tmp in &listing.temporary {
            let _ = fs::remove_file(tmp);
        }
    }

    // The newest snapshot that validates (check verifies every one).
    for &rev in listing.snapshots.iter().rev() {
        if scan.snapshot.is_some() && opts.keep.is_some() {
            scan.snapshots.push(rev);
            continue;
        }
        let path = dir.join(snapshot_name(rev));
        let found = codec::decode_snapshot(&read(&path)?).and_then(|(header, data)| {
            if header.room != room || header.rev != rev {
                Err(format!("header names room {:?} rev {}", header.room, header.rev))
            } else {
                Ok(data)
            }
        });
        match found {
            Ok(data) => {
                scan.snapshots.push(rev);
                scan.snapshot.get_or_insert(data);
            }
            Err(why) => {
                scan.damaged_snapshots += 1;
                scan.damage
                    .push(format!("room {room}: {}: {why} (skipped, {verb_rename})", snapshot_name(rev)));
                if opts.cut {
                    quarantine(&path)?;
                }
            }
        }
    }
    scan.snapshots.sort_unstable();
    if let Some(sink) = sink.as_deref_mut() {
        sink.snapshot(scan.snapshot.as_ref());
    }
    let base = scan.snapshot.as_ref().map_or(0, |s| s.rev);
    let from = match opts.keep {
        Some(keep) if scan.snapshot.is_some() => base.saturating_sub(keep),
        _ => 0,
    };
    let segments = &listing.segments;
    let start = segments.iter().rposition(|&first| first <= from.saturating_add(1)).unwrap_or(0);
    scan.segments = segments[..start].to_vec();

    // The log: consecutive records, stopping at the first damage.
    let mut prev: Option<u64> = None;
    // The first segment to quarantine, and whether its header is the damage.
    let mut cut_at: Option<(usize, bool)> = None;
    for (i, &first) in segments.iter().enumerate().skip(start) {
        let path = dir.join(segment_name(first));
        let name = segment_name(first);
        let buf = read(&path)?;
        let header = codec::decode_header(&buf, LOG_MAGIC).map_err(|e| e.to_string()).and_then(|(h, at)| {
            if h.room != room || h.rev != first {
                Err(format!("header names room {:?} first rev {}", h.room, h.rev))
            } else {
                Ok((h, at))
            }
        });
        let (header, mut offset) = match header {
            Ok(found) => found,
            Err(why) => {
                scan.damaged_records += 1;
                scan.damage.push(format!(
                    "room {room}: {name}: bad header: {why} ({verb_rename}, with every later segment)"
                ));
                cut_at = Some((i, true));
                break;
            }
        };
        scan.epoch.get_or_insert(header.epoch);
        let mut next = first;
        let mut damaged = None;
        loop {
            match codec::decode_frame::<Record>(&buf, offset) {
                Ok(None) => break,
                Ok(Some((record, after))) => {
                    let rev = record.rev;
                    if rev != next {
                        damaged =
                            Some(format!("record rev {rev} at offset {offset} where rev {next} belongs"));
                        break;
                    }
                    if next == first {
                        match prev {
                            // A gap the snapshot covers (the log before it was lost or never
                            // synced): the records before the gap are no use (the sink sees
                            // the jump and drops them).
                            Some(p) if rev > p.saturating_add(1) && rev <= base.saturating_add(1) => {
                                scan.first_rev = Some(rev);
                            }
                            Some(p) if rev != p.saturating_add(1) => {
                                damaged = Some(format!(
                                    "starts at rev {rev} but the log before it ends at rev {p}"
                                ));
                                break;
                            }
                            Some(_) => {}
                            None => {
                                if scan.snapshot.is_some() && rev > base.saturating_add(1) {
                                    scan.damage.push(format!(
                                        "room {room}: {name}: the log starts at rev {rev}, after snapshot rev {base}: revs {}..{} are missing",
                                        base + 1,
                                        rev - 1
                                    ));
                                } else if scan.snapshot.is_none() && start == 0 && rev != 1 {
                                    scan.damage
                                        .push(format!("room {room}: {name}: the log starts at rev {rev} and there is no snapshot"));
                                }
                            }
                        }
                    }
                    // Records before damage found later in this segment are valid: they go
                    // now, and the scan stops at the damage.
                    if rev > from
                        && let Some(sink) = sink.as_deref_mut()
                    {
                        sink.record(record);
                    }
                    scan.first_rev.get_or_insert(rev);
                    scan.last_rev = Some(rev);
                    scan.count += 1;
                    prev = Some(rev);
                    next = rev.saturating_add(1);
                    offset = after;
                }
                Err(d) => {
                    damaged = Some(d.to_string());
                    break;
                }
            }
        }
        match damaged {
            None => {
                scan.segments.push(first);
                scan.tail = Some((first, offset as u64, next));
            }
            Some(why) => {
                scan.damaged_records += 1;
                scan.damage.push(format!("room {room}: {name}: {why} ({verb} at offset {offset})"));
                if opts.cut {
                    truncate(&path, offset as u64)?;
                }
                scan.segments.push(first);
                scan.tail = Some((first, offset as u64, next));
                cut_at = Some((i + 1, false));
                break;
            }
        }
    }
    if let Some((cut, bad_header)) = cut_at {
        for (i, &first) in segments.iter().enumerate().skip(cut) {
            if opts.cut {
                quarantine(&dir.join(segment_name(first)))?;
            }
            if !(bad_header && i == cut) {
                scan.damage
                    .push(format!("room {room}: {}: after the cut ({verb_rename})", segment_name(first)));
            }
        }
        if opts.cut {
            let _ = sync_dir(dir);
        }
    }
    if let Some(s) = &scan.snapshot {
        scan.epoch = Some(s.epoch.clone());
    }
    Ok(Some(scan))
}

/// What [`check`] found for one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomReport {
    /// The room id (the directory's name when it maps to none).
    pub room: String,
    pub epoch: String,
    /// The newest snapshot that validates.
    pub snapshot_rev: Option<u64>,
    /// The first and last record of the consecutive log.
    pub first_rev: Option<u64>,
    pub last_rev: Option<u64>,
    pub records: u64,
    /// Segments and snapshots, in bytes.
    pub bytes: u64,
    pub damage: Vec<String>,
}

/// Verifies a data directory offline (`ringsync check-data DIR`): reads every room, modifies
/// nothing and takes no lock.
///
/// # Errors
/// When `DIR/rooms` cannot be listed or a room's files cannot be read.
pub fn check(dir: &Path) -> Result<Vec<RoomReport>, StoreError> {
    let rooms = dir.join("rooms");
    let entries =
        fs::read_dir(&rooms).map_err(|e| StoreError::io(format!("cannot list {}", rooms.display()), &e))?;
    let mut reports = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("cannot list {}", rooms.display()), &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == NAMES_V2 {
            continue;
        }
        // A directory not yet renamed (the server has not started on it since capitals were
        // escaped) is read under its old name; the next start renames it.
        let old_name = || (!rooms.join(NAMES_V2).exists()).then(|| room_of_old_dir(&name)).flatten();
        let Some(room) = room_of_dir(&name).or_else(old_name) else {
            reports.push(RoomReport {
                room: name.clone(),
                epoch: String::new(),
                snapshot_rev: None,
                first_rev: None,
                last_rev: None,
                records: 0,
                bytes: 0,
                damage: vec![format!("{name}: not a room directory name")],
            });
            continue;
        };
        let opts = ScanOpts { cut: false, keep: None };
        let Some(scan) = scan_room(room.as_str(), &entry.path(), opts, None)? else { continue };
        reports.push(RoomReport {
            room: room.to_string(),
            epoch: scan.epoch.unwrap_or_default(),
            snapshot_rev: scan.snapshot.map(|s| s.rev),
            first_rev: scan.first_rev,
            last_rev: scan.last_rev,
            records: scan.count,
            bytes: scan.bytes,
            damage: scan.damage,
        });
    }
    reports.sort_by(|a, b| a.room.cmp(&b.room));
    Ok(reports)
}

/// What [`check_wal`] found in a data directory's write-ahead log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalReport {
    pub files: usize,
    /// Whole entries (rounds of one room, or deletes) not yet checkpointed.
    pub entries: u64,
    pub bytes: u64,
    /// Where a file stops early (a round whose write never finished: replay ignores it).
    pub damage: Vec<String>,
}

/// Reads a data directory's write-ahead log (`--fsync always`) without changing anything:
/// what the next start will replay into the rooms' segments.
///
/// # Errors
/// When the log directory cannot be listed or a file read.
pub fn check_wal(dir: &Path) -> Result<WalReport, StoreError> {
    let mut report = WalReport::default();
    for (_, path) in wal::files(&dir.join("wal"))? {
        report.files += 1;
        report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let read = wal::read(&path, |_| {})?;
        report.entries += read.entries;
        if let Some(damage) = read.damage {
            report.damage.push(format!("{}: {damage}", path.display()));
        }
    }
    Ok(report)
}

/// Work for the writer thread.
enum Op {
    Open {
        room: RoomId,
        epoch: String,
        journal: Weak<dyn Journal>,
    },
    /// A whole record: only one the committing thread could not encode, so the rare variant
    /// pays the box and every other op stays small.
    Append {
        room: RoomId,
        generation: u64,
        record: Box<Record>,
    },
    /// A record already encoded as a frame by the committing thread: `at` in the queue's bytes.
    Frame {
        room: RoomId,
        generation: u64,
        rev: u64,
        at: std::ops::Range<usize>,
    },
    Snapshot {
        room: RoomId,
        data: Box<SnapshotData>,
    },
    Flush {
        done: mpsc::SyncSender<()>,
    },
    Close {
        room: RoomId,
        done: mpsc::SyncSender<()>,
    },
    Delete {
        room: RoomId,
        done: mpsc::SyncSender<Result<(), StoreError>>,
    },
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// The frames of the queued [`Op::Frame`]s, back to back. The writer swaps it for its
    /// previous round's (emptied) buffer, so no frame is an allocation of its own.
    bytes: Vec<u8>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Stats,
}

/// Rooms stored as files under one directory (see the module doc).
pub struct FileStore {
    rooms: PathBuf,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Holds the directory's OS lock while the store lives.
    _lock: File,
}

impl FileStore {
    /// Opens (creating it if needed) and locks a data directory, and starts the writer thread.
    ///
    /// # Errors
    /// When the directory cannot be created or locked (another process holds it: the message
    /// names the directory and that process's pid), or the thread cannot start.
    pub fn open_dir(dir: &Path, opts: FileOptions) -> Result<Arc<FileStore>, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), &e))?;
        let lock = lock_dir(dir)?;
        let rooms = dir.join("rooms");
        fs::create_dir_all(&rooms)
            .map_err(|e| StoreError::io(format!("cannot create {}", rooms.display()), &e))?;
        migrate_names(&rooms)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Stats::default(),
        });
        let syncer = match opts.fsync {
            Fsync::Batch => Some(Syncer::start(shared.clone())?),
            _ => None,
        };
        let mut writer = Writer::new(rooms.clone(), dir.join("wal"), opts, shared.clone(), syncer)?;
        let thread = std::thread::Builder::new()
            .name("ringsync-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io("cannot start the store's writer thread", &e))?;
        Ok(Arc::new(FileStore { rooms, shared, thread: Mutex::new(Some(thread)), _lock: lock }))
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    fn room_dir(&self, room: &RoomId) -> PathBuf {
        self.rooms.join(dir_name(room))
    }

    fn push(&self, op: Op) {
        let mut queue = self.shared.queue.lock();
        queue.ops.push(op);
        self.shared.stats.queue_len.store(queue.ops.len() as u64, Ordering::Relaxed);
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Queues record `rev`'s encoded frame (copied into the queue's bytes).
    fn push_frame(&self, room: &RoomId, generation: u64, rev: u64, frame: &[u8]) {
        let mut queue = self.shared.queue.lock();
        let start = queue.bytes.len();
        queue.bytes.extend_from_slice(frame);
        let at = start..queue.bytes.len();
        queue.ops.push(Op::Frame { room: room.clone(), generation, rev, at });
        self.shared.stats.queue_len.store(queue.ops.len() as u64, Ordering::Relaxed);
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Queues `op` (made with the reply's sender) and waits for the writer's reply.
    fn call<T>(&self, op: impl FnOnce(mpsc::SyncSender<T>) -> Op) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(op(tx));
        rx.recv().ok()
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_one();
        // The last handle may go on the writer thread itself (a room dropped by a journal
        // callback): it then stops after this round, unjoined.
        if let Some(thread) = self.thread.lock().take()
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("store: the writer thread panicked");
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io(format!("cannot open {}", path.display()), &e))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = format!("{}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| file.write_all(pid.as_bytes()))
                .and_then(|()| file.sync_data())
                .map_err(|e| StoreError::io(format!("cannot write {}", path.display()), &e))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "unknown" } else { holder };
            Err(StoreError(format!(
                "data directory {} is in use by another ringsync (pid {holder}); stop it or use another --data-dir",
                dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::io(format!("cannot lock {}", path.display()), &e))
        }
    }
}

/// A room's log as handed to the room.
struct Log {
    store: Arc<FileStore>,
    room: RoomId,
}

impl RoomLog for Log {
    /// Encodes the record here, on the committing thread, while the change is still in its
    /// cache, and hands the writer only the frame's bytes (copied into the queue's shared
    /// buffer): the record's strings are allocated and freed by one thread, and the writer
    /// touches neither the change nor the allocator per record. Measured on one core at 100
    /// writers in 100 rooms (docs/BENCHMARKS.md, "Durable rooms"): building the record on the
    /// writer instead read the change's memory cold and paid malloc's cross-thread paths.
    fn append(&self, generation: u64, record: Record) {
        thread_local! {
            static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAME.with(|frame| {
            let mut frame = frame.borrow_mut();
            frame.clear();
            match codec::encode_record(&record, &mut frame) {
                Ok(()) => self.store.push_frame(&self.room, generation, record.rev, &frame),
                // Not encodable (over the frame limit): the writer meets the same error and
                // reports it in revision order.
                Err(_) => self.store.push(Op::Append {
                    room: self.room.clone(),
                    generation,
                    record: Box::new(record),
                }),
            }
            if frame.capacity() > 1 << 20 {
                *frame = Vec::new();
            }
        });
    }

    fn snapshot(&self, data: SnapshotData) {
        self.store.push(Op::Snapshot { room: self.room.clone(), data: Box::new(data) });
    }
}

impl Store for Arc<FileStore> {
    /// Reads a room back, cutting damage, on the caller's thread, one segment file in memory
    /// at a time. Call it for a room that is not open (its log closed).
    fn load_with(
        &self,
        room: &RoomId,
        keep: usize,
        sink: &mut dyn LoadSink,
    ) -> Result<Option<Loaded>, StoreError> {
        let dir = self.room_dir(room);
        let opts = ScanOpts { cut: true, keep: Some(keep as u64) };
        let Some(scan) = scan_room(room.as_str(), &dir, opts, Some(sink))? else { return Ok(None) };
        let stats = &self.shared.stats;
        Stats::add(&stats.damaged_records, scan.damaged_records);
        Stats::add(&stats.damaged_snapshots, scan.damaged_snapshots);
        for damage in &scan.damage {
            tracing::warn!(room = %room, "store: {damage}");
        }
        let epoch = scan.epoch.unwrap_or_default();
        Ok(Some(Loaded {
            epoch,
            snapshot: scan.snapshot,
            records: Vec::new(),
            damage: scan.damage,
            owner: None,
        }))
    }

    fn open(&self, room: &RoomId, epoch: &str, journal: Weak<dyn Journal>) -> Arc<dyn RoomLog> {
        self.push(Op::Open { room: room.clone(), epoch: epoch.to_string(), journal });
        Arc::new(Log { store: self.clone(), room: room.clone() })
    }

    fn changes(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut out: Vec<Record> = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let dir = self.room_dir(room);
        let Some(listing) = list(&dir)? else { return Ok(out) };
        let start = listing.segments.iter().rposition(|&first| first <= after.saturating_add(1)).unwrap_or(0);
        for &first in &listing.segments[start..] {
            let path = dir.join(segment_name(first));
            let file = match File::open(&path) {
                Ok(file) => file,
                // Deleted since the listing (it held older records than what is left).
                Err(e) if e.kind() == io::ErrorKind::NotFound && out.is_empty() => continue,
                Err(e) => return Err(StoreError::io(format!("cannot read {}", path.display()), &e)),
            };
            let whole = read_segment_after(file, first, after, limit, &mut out)
                .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), &e))?;
            if !whole || out.len() >= limit {
                return Ok(out);
            }
        }
        Ok(out)
    }

    fn oldest(&self, room: &RoomId) -> Option<u64> {
        list(&self.room_dir(room)).ok().flatten().and_then(|l| l.segments.first().copied())
    }

    fn rooms_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let entries = fs::read_dir(&self.rooms)
            .map_err(|e| StoreError::io(format!("cannot list {}", self.rooms.display()), &e))?;
        // A directory a room was deleted from mid-listing, or one whose name maps to no room,
        // is skipped.
        let names = entries.filter_map(|e| room_of_dir(e.ok()?.file_name().to_str()?));
        Ok(super::smallest_after(names, RoomId::as_str, after, limit))
    }

    fn delete(&self, room: &RoomId) -> Result<(), StoreError> {
        self.shared.queue.lock().ops.retain(|op| match op {
            Op::Append { room: r, .. } | Op::Frame { room: r, .. } | Op::Snapshot { room: r, .. } => {
                r != room
            }
            _ => true,
        });
        self.call(|done| Op::Delete { room: room.clone(), done })
            .unwrap_or_else(|| Err(StoreError("the store's writer thread is gone".into())))
    }

    fn close(&self, room: &RoomId) {
        self.call(|done| Op::Close { room: room.clone(), done });
    }

    fn flush(&self) {
        self.call(|done| Op::Flush { done });
    }
}

/// Appends to `out` the records of the segment `file` (whose first record is `first`) after
/// revision `after`, until `out` holds `limit`: streamed, so a history page holds one page of
/// records and a read buffer, not the segment. Frames before `after` are skipped by their length
/// alone (a segment's records are consecutive, so the k-th is `first + k`); the ones returned are
/// checked and decoded. `Ok(false)` when the segment ends early (a frame being written, damage,
/// a revision out of place): what follows is not served.
fn read_segment_after(
    file: File,
    first: u64,
    after: u64,
    limit: usize,
    out: &mut Vec<Record>,
) -> io::Result<bool> {
    /// Reads one frame (length, CRC, payload) into `frame`: `false` at a clean end.
    fn next(reader: &mut impl Read, frame: &mut Vec<u8>, keep: bool) -> io::Result<bool> {
        let mut head = [0u8; codec::FRAME_OVERHEAD];
        match reader.read_exact(&mut head[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            r => r?,
        }
        reader.read_exact(&mut head[1..])?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > codec::MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame length over the limit"));
        }
        frame.clear();
        if keep {
            frame.extend_from_slice(&head);
            frame.resize(codec::FRAME_OVERHEAD + len, 0);
            reader.read_exact(&mut frame[codec::FRAME_OVERHEAD..])?;
        } else if io::copy(&mut reader.take(len as u64), &mut io::sink())? < len as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(true)
    }
    let ended_early = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => Ok(false),
        _ => Err(e),
    };
    let mut reader = io::BufReader::with_capacity(256 << 10, file);
    let mut frame = Vec::new();
    // The header: magic and version, then one frame.
    let mut preamble = [0u8; 12];
    if let Err(e) = reader.read_exact(&mut preamble) {
        return ended_early(e);
    }
    match next(&mut reader, &mut frame, true) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) => return ended_early(e),
    }
    let mut header = preamble.to_vec();
    header.extend_from_slice(&frame);
    if codec::decode_header(&header, LOG_MAGIC).is_err() {
        return Ok(false);
    }
    let mut rev = first;
    loop {
        let keep = rev > after;
        match next(&mut reader, &mut frame, keep) {
            Ok(true) => {}
            Ok(false) => return Ok(true),
            Err(e) => return ended_early(e),
        }
        if keep {
            let Ok(Some((record, _))) = codec::decode_frame::<Record>(&frame, 0) else { return Ok(false) };
            if record.rev != rev || out.last().is_some_and(|last| last.rev.saturating_add(1) != record.rev) {
                return Ok(false);
            }
            out.push(record);
            if out.len() >= limit {
                return Ok(true);
            }
        }
        rev = rev.saturating_add(1);
    }
}

/// The segment a room appends to.
struct Segment {
    first: u64,
    file: File,
    path: PathBuf,
    /// Bytes of whole frames in it (where the next write goes).
    len: u64,
    /// The revision its next record must have.
    next: u64,
}

/// What the writer knows of a room's files (`None` in [`RoomState::files`] until read).
struct Files {
    last_rev: Option<u64>,
    snap_rev: Option<u64>,
    snapshots: Vec<u64>,
    segments: Vec<u64>,
    seg: Option<Segment>,
    /// The segment appends continue while its handle is closed (the open-file cap, or not yet
    /// reopened after reading the room): reopened by the next write that continues it.
    parked: Option<Parked>,
}

/// A [`Segment`] without its handle.
struct Parked {
    first: u64,
    path: PathBuf,
    len: u64,
    next: u64,
}

impl Segment {
    fn park(self) -> Parked {
        Parked { first: self.first, path: self.path, len: self.len, next: self.next }
    }
}

impl Files {
    /// The revision the room's next record must have.
    fn next_rev(&self) -> u64 {
        self.last_rev.map_or(1, |l| l.saturating_add(1)).max(self.snap_rev.map_or(1, |s| s.saturating_add(1)))
    }
}

struct RoomState {
    dir: PathBuf,
    epoch: String,
    journal: Weak<dyn Journal>,
    /// The generation whose append failed: its later records are dropped.
    failed_gen: Option<u64>,
    files: Option<Files>,
    /// Written but not yet synced (`Fsync::Batch`).
    dirty: bool,
    /// A failed write that could not be cut: retried before the room's files are read again.
    pending_truncate: Option<(PathBuf, u64)>,
    /// The writer's round that last wrote to it (which segments the open-file cap closes first).
    last_write: u64,
}

struct NoJournal;
impl Journal for NoJournal {
    fn written(&self, _rev: u64) {}
    fn failed(&self, _generation: u64, _rev: u64, _error: &StoreError) {}
}

/// Puts the calling thread (the writer, in `batch` and `never` modes) in Linux's `SCHED_BATCH`
/// class: waking it does not preempt the thread that queued the work, so on a core shared with
/// the async workers the writer runs when they have nothing left to do, and takes every append
/// queued meanwhile in one round instead of one round (two context switches) per change.
/// Measured on one core: +40-60 % throughput in `batch`; in `always` no gain and a longer ack
/// p99, so `always` keeps the normal class. Elsewhere a no-op.
fn batch_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads `param` and affects only this thread (pid 0).
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "store: cannot set SCHED_BATCH");
        }
    }
}

/// Syncs each `Some` file, up to [`SYNC_THREADS`] at once (scoped threads, when more than one
/// needs it): the result for each index that had a file.
fn sync_side_by_side(stats: &Stats, files: &[Option<&File>]) -> Vec<Option<io::Result<()>>> {
    let todo: Vec<(usize, &File)> = files.iter().enumerate().filter_map(|(i, f)| Some((i, (*f)?))).collect();
    let mut out: Vec<Option<io::Result<()>>> = files.iter().map(|_| None).collect();
    if todo.len() <= 1 {
        for (i, file) in todo {
            out[i] = Some(stats.sync(file));
        }
        return out;
    }
    let per = todo.len().div_ceil(SYNC_THREADS);
    let results: Vec<(usize, io::Result<()>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || chunk.iter().map(|&(i, f)| (i, stats.sync(f))).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| Vec::new())).collect()
    });
    for (i, r) in results {
        out[i] = Some(r);
    }
    // A sync thread that panicked left its files without a result: treat them as failed.
    for &(i, _) in &todo {
        if out[i].is_none() {
            out[i] = Some(Err(io::Error::other("fsync thread failed")));
        }
    }
    out
}

/// Most segment fsyncs a write-ahead log checkpoint issues at once.
const SYNC_THREADS: usize = 8;

/// Writes `buf` at `offset`: one `pwrite` where the platform has it.
fn write_at(file: &mut File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(offset)).and_then(|_| file.write_all(buf))
    }
}

/// A room's part of one round, to report once synced.
struct Written {
    last: u64,
    /// Each generation in the batch with its first revision.
    gens: Vec<(u64, u64)>,
    old_len: u64,
    old_last: Option<u64>,
    created: bool,
}

/// The writer thread's state.
struct Writer {
    rooms_dir: PathBuf,
    wal_dir: PathBuf,
    opts: FileOptions,
    shared: Arc<Shared>,
    rooms: HashMap<RoomId, RoomState>,
    /// A round's bytes for one room, kept between rounds.
    buf: Vec<u8>,
    /// The round's encoded frames (see [`Queue::bytes`]).
    frames: Vec<u8>,
    /// Rooms with unsynced writes (`Fsync::Batch`).
    dirty: Vec<RoomId>,
    last_sync: Instant,
    /// `Fsync::Batch`'s background syncs.
    syncer: Option<Syncer>,
    /// `Fsync::Always`'s shared write-ahead log (see [`wal`]).
    wal: Option<wal::Wal>,
    /// Rounds so far (the clock of `RoomState::last_write`).
    rounds: u64,
    /// Segments opened since the last count (at least the number open).
    opened: usize,
}

/// One segment for the syncer: a duplicate of the writer's handle.
struct SyncJob {
    room: RoomId,
    file: File,
    path: PathBuf,
    len: u64,
}

/// The thread that runs `Fsync::Batch`'s periodic syncs, so a slow fsync does not hold up the
/// writer (and with it every ack). It stops when the writer (holding `jobs`) goes.
struct Syncer {
    jobs: mpsc::Sender<Vec<SyncJob>>,
    /// A sync is queued or running.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// Rooms whose sync failed, for the writer.
    failed: Arc<Mutex<Vec<RoomId>>>,
}

impl Syncer {
    fn start(shared: Arc<Shared>) -> Result<Syncer, StoreError> {
        let (jobs, rx) = mpsc::channel::<Vec<SyncJob>>();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (busy2, failed2) = (busy.clone(), failed.clone());
        std::thread::Builder::new()
            .name("ringsync-sync".into())
            .spawn(move || {
                for round in rx {
                    for job in round {
                        if let Err(e) = shared.stats.sync(&job.file) {
                            // Acknowledged records may not be on disk; the writer reads the
                            // room's files again before its next write.
                            tracing::error!(room = %job.room, file = %job.path.display(), offset = job.len, error = %e, "store: fsync failed");
                            failed2.lock().push(job.room);
                        }
                    }
                    busy2.store(false, Ordering::Release);
                }
            })
            .map_err(|e| StoreError::io("cannot start the store's sync thread", &e))?;
        Ok(Syncer { jobs, busy, failed })
    }
}

type Batch = Vec<(u64, Entry)>;

/// A record for the writer: whole (replay, or one the committing thread could not encode) or
/// already encoded ([`Op::Frame`], in the round's `frames`).
enum Entry {
    Record(Box<Record>),
    Frame { rev: u64, at: std::ops::Range<usize> },
}

impl Entry {
    fn rev(&self) -> u64 {
        match self {
            Entry::Record(record) => record.rev,
            Entry::Frame { rev, .. } => *rev,
        }
    }
}

impl Writer {
    /// The writer of a store whose directory holds `rooms_dir` and `wal_dir`: first replays
    /// what an unclean stop left in the write-ahead log (before anything reads a room), then,
    /// with `Fsync::Always`, starts the log's next file.
    fn new(
        rooms_dir: PathBuf,
        wal_dir: PathBuf,
        opts: FileOptions,
        shared: Arc<Shared>,
        syncer: Option<Syncer>,
    ) -> Result<Writer, StoreError> {
        let always = opts.fsync == Fsync::Always;
        let mut writer = Writer {
            rooms_dir,
            wal_dir,
            opts,
            shared,
            rooms: HashMap::new(),
            buf: Vec::new(),
            frames: Vec::new(),
            dirty: Vec::new(),
            last_sync: Instant::now(),
            syncer,
            wal: None,
            rounds: 0,
            opened: 0,
        };
        let next_seq = writer.replay()?;
        if always {
            writer.wal = Some(wal::Wal::create(&writer.wal_dir, next_seq, &writer.shared.stats)?);
        }
        Ok(writer)
    }

    fn run(&mut self) {
        // `always` waits for the disk each round: there the report after the fsync is on every
        // ack's path, and a writer that does not preempt would add to it.
        if self.opts.fsync != Fsync::Always {
            batch_priority();
        }
        loop {
            let (ops, stop) = {
                let mut queue = self.shared.queue.lock();
                while queue.ops.is_empty() && !queue.stop {
                    if self.opts.fsync == Fsync::Batch && !self.dirty.is_empty() {
                        let deadline = self.last_sync + self.opts.fsync_interval;
                        if Instant::now() >= deadline {
                            break;
                        }
                        self.shared.wake.wait_until(&mut queue, deadline);
                    } else {
                        self.shared.wake.wait(&mut queue);
                    }
                }
                self.shared.stats.queue_len.store(0, Ordering::Relaxed);
                // The round's frames; the queue gets the last round's buffer back, emptied.
                self.frames.clear();
                if self.frames.capacity() > 4 << 20 {
                    self.frames = Vec::new();
                }
                std::mem::swap(&mut queue.bytes, &mut self.frames);
                (std::mem::take(&mut queue.ops), queue.stop)
            };
            self.take_sync_failures();
            self.round(ops);
            if self.opts.fsync == Fsync::Batch && self.last_sync.elapsed() >= self.opts.fsync_interval {
                self.sync_dirty();
            }
            if stop {
                self.sync_all();
                self.rotate_wal();
                return;
            }
        }
    }

    fn round(&mut self, ops: Vec<Op>) {
        self.rounds += 1;
        let mut pending: Vec<(RoomId, Batch)> = Vec::new();
        let add =
            |pending: &mut Vec<(RoomId, Batch)>, room: RoomId, generation: u64, entry: Entry| match pending
                .iter_mut()
                .find(|(r, _)| *r == room)
            {
                Some((_, batch)) => batch.push((generation, entry)),
                None => pending.push((room, vec![(generation, entry)])),
            };
        for op in ops {
            match op {
                Op::Append { room, generation, record } => {
                    add(&mut pending, room, generation, Entry::Record(record))
                }
                Op::Frame { room, generation, rev, at } => {
                    add(&mut pending, room, generation, Entry::Frame { rev, at })
                }
                Op::Open { room, epoch, journal } => {
                    self.commit(take_room(&mut pending, &room));
                    let state = self.state(&room);
                    state.epoch = epoch;
                    state.journal = journal;
                    state.failed_gen = None;
                }
                Op::Snapshot { room, data } => {
                    self.commit(take_room(&mut pending, &room));
                    self.write_snapshot(&room, &data);
                }
                Op::Flush { done } => {
                    self.commit(std::mem::take(&mut pending));
                    self.sync_all();
                    self.rotate_wal();
                    let _ = done.send(());
                }
                Op::Close { room, done } => {
                    self.commit(take_room(&mut pending, &room));
                    if let Some(state) = self.rooms.get_mut(&room) {
                        sync_room(&self.shared.stats, &room, state);
                        state.files = None;
                    }
                    let _ = done.send(());
                }
                Op::Delete { room, done } => {
                    drop(take_room(&mut pending, &room));
                    let _ = done.send(self.delete_room(&room));
                }
            }
        }
        self.commit(pending);
        self.cap_open_segments();
        if self.wal.as_ref().is_some_and(|w| w.len() >= self.opts.wal_max) {
            self.checkpoint();
        }
    }

    /// Removes a room's files (its delete first made durable in the write-ahead log, so a
    /// replay does not bring the room back).
    fn delete_room(&mut self, room: &RoomId) -> Result<(), StoreError> {
        if let Some(wal) = self.wal.as_mut() {
            wal.add_delete(room.as_str())?;
            wal.commit(&self.shared.stats)
                .map_err(|e| StoreError::io(format!("cannot write {}", wal.path().display()), &e))?;
        }
        self.rooms.remove(room);
        self.dirty.retain(|r| r != room);
        let dir = self.rooms_dir.join(dir_name(room));
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io(format!("cannot remove {}", dir.display()), &e))
            }
            _ => Ok(()),
        }
    }

    /// Replays the write-ahead log files an unclean stop left (see [`wal`]): each room's
    /// records its segments lack are appended again, deletes done again; then every room is
    /// synced and the files go. The sequence number the next log file takes.
    ///
    /// # Errors
    /// When the log directory cannot be listed or a log file read.
    fn replay(&mut self) -> Result<u64, StoreError> {
        let logs = wal::files(&self.wal_dir)?;
        let next_seq = logs.last().map_or(1, |(seq, _)| seq + 1);
        if logs.is_empty() {
            return Ok(next_seq);
        }
        let started = Instant::now();
        let (mut entries, mut records) = (0u64, 0u64);
        for (_, path) in &logs {
            let read = wal::read(path, |entry| match entry {
                WalEntry::Records { room, epoch, frames } => {
                    records += self.replay_records(&room, epoch, &frames)
                }
                WalEntry::Delete { room } => match RoomId::parse(&room) {
                    Ok(room) => {
                        if let Err(e) = self.delete_room(&room) {
                            tracing::error!(room = %room, error = %e, "store: replaying a delete failed");
                        }
                    }
                    Err(_) => tracing::warn!(room, "store: write-ahead log names no valid room; skipped"),
                },
            })?;
            entries += read.entries;
            if let Some(damage) = read.damage {
                // A round whose write or sync never finished: none of it was reported written.
                tracing::warn!(file = %path.display(), entries = read.entries, "store: write-ahead log ends early: {damage}");
            }
        }
        self.sync_all();
        Stats::add(&self.shared.stats.wal_replayed, records);
        if self.shared.stats.fsync_failures.load(Ordering::Relaxed) == 0 {
            for (_, path) in &logs {
                if let Err(e) = fs::remove_file(path) {
                    tracing::warn!(file = %path.display(), error = %e, "store: cannot delete a replayed write-ahead log");
                }
            }
            let _ = sync_dir(&self.wal_dir);
        }
        tracing::info!(
            files = logs.len(),
            entries,
            records,
            ms = started.elapsed().as_millis() as u64,
            "store: replayed the write-ahead log of an unclean stop"
        );
        Ok(next_seq)
    }

    /// One replayed [`WalEntry::Records`]: the records at or after the room's next revision go
    /// to its segment. How many did.
    fn replay_records(&mut self, room: &str, epoch: String, frames: &[u8]) -> u64 {
        let Ok(room) = RoomId::parse(room) else {
            tracing::warn!(room, "store: write-ahead log names no valid room; skipped");
            return 0;
        };
        let shared = self.shared.clone();
        let state = self.state(&room);
        state.epoch = epoch;
        if let Err(e) = ensure_files(&room, state, &shared.stats) {
            tracing::error!(room = %room, error = %e, "store: cannot read the room's files to replay the write-ahead log");
            return 0;
        }
        let next = state.files.as_ref().map_or(1, Files::next_rev);
        let mut batch: Batch = Vec::new();
        let mut offset = 0;
        loop {
            match codec::decode_frame::<Record>(frames, offset) {
                Ok(Some((record, after))) => {
                    if record.rev >= next {
                        batch.push((0, Entry::Record(Box::new(record))));
                    }
                    offset = after;
                }
                Ok(None) => break,
                Err(d) => {
                    tracing::warn!(room = %room, "store: write-ahead log entry damaged: {d}");
                    break;
                }
            }
        }
        match batch.first() {
            None => return 0,
            Some((_, first)) if first.rev() != next => {
                tracing::error!(room = %room, rev = first.rev(), expected = next, "store: the write-ahead log cannot fill the room's log (a gap); its entry is skipped");
                return 0;
            }
            Some(_) => {}
        }
        let n = batch.len() as u64;
        let (written, failures) = self.write_room(&room, batch);
        for (_, rev, e) in &failures {
            tracing::error!(room = %room, rev, error = %e, "store: replaying the write-ahead log failed");
        }
        if written.is_some() { n - failures.len().min(n as usize) as u64 } else { 0 }
    }

    /// `Fsync::Always`'s checkpoint: every segment written since the last one is synced (side
    /// by side), then the write-ahead log starts a new file and the older ones go.
    fn checkpoint(&mut self) {
        let shared = self.shared.clone();
        let rooms = std::mem::take(&mut self.dirty);
        let files: Vec<Option<&File>> = rooms
            .iter()
            .map(|room| {
                let state = self.rooms.get(room).filter(|s| s.dirty)?;
                Some(&state.files.as_ref()?.seg.as_ref()?.file)
            })
            .collect();
        let results = sync_side_by_side(&shared.stats, &files);
        for (room, result) in rooms.iter().zip(results) {
            let Some(state) = self.rooms.get_mut(room) else { continue };
            state.dirty = false;
            if let Some(Err(e)) = result {
                // The log keeps these records (old files are kept once any fsync failed).
                tracing::error!(room = %room, error = %e, "store: fsync failed at a checkpoint");
                state.files = None;
            }
        }
        self.rotate_wal();
    }

    /// Starts the write-ahead log's next file, deleting the older ones unless an fsync has
    /// failed in this process (then they stay until the next start replays them). Call it only
    /// once every segment written since the last rotation is synced.
    fn rotate_wal(&mut self) {
        let stats = &self.shared.stats;
        let Some(wal) = self.wal.as_mut() else { return };
        if wal.is_empty() {
            return;
        }
        let delete_old = stats.fsync_failures.load(Ordering::Relaxed) == 0;
        if !delete_old {
            tracing::error!(file = %wal.path().display(), "store: an fsync failed earlier: the write-ahead log is kept for the next start to replay");
        }
        match wal.rotate(stats, delete_old) {
            Ok(()) => Stats::add(&stats.checkpoints, 1),
            Err(e) => tracing::error!(error = %e, "store: cannot start a new write-ahead log file"),
        }
    }

    /// Keeps open segments within `max_open`: past it, the least recently written rooms'
    /// segments are parked (synced first in `batch` mode, whose periodic sync needs the handle;
    /// `always` synced them when written) down to nine tenths of the cap, so the count is
    /// redone only every tenth of the cap's opens.
    fn cap_open_segments(&mut self) {
        let cap = self.opts.max_open;
        if cap == 0 || self.opened <= cap {
            return;
        }
        let mut open: Vec<(u64, RoomId)> = self
            .rooms
            .iter()
            .filter(|(_, s)| s.files.as_ref().is_some_and(|f| f.seg.is_some()))
            .map(|(room, s)| (s.last_write, room.clone()))
            .collect();
        self.opened = open.len();
        if open.len() <= cap {
            return;
        }
        let target = cap - cap / 10;
        open.sort_unstable_by_key(|(at, _)| *at);
        for (_, room) in open.into_iter().take(self.opened - target) {
            let Some(state) = self.rooms.get_mut(&room) else { continue };
            if state.dirty {
                sync_room(&self.shared.stats, &room, state);
                self.dirty.retain(|r| *r != room);
            }
            if let Some(files) = state.files.as_mut()
                && let Some(seg) = files.seg.take()
            {
                files.parked = Some(seg.park());
                self.opened -= 1;
                Stats::add(&self.shared.stats.segments_parked, 1);
            }
        }
    }

    fn state(&mut self, room: &RoomId) -> &mut RoomState {
        let dir = self.rooms_dir.join(dir_name(room));
        self.rooms.entry(room.clone()).or_insert_with(|| RoomState {
            dir,
            epoch: String::new(),
            journal: Weak::<NoJournal>::new(),
            failed_gen: None,
            files: None,
            dirty: false,
            pending_truncate: None,
            last_write: 0,
        })
    }

    /// Writes each room's batch, syncs as the policy says, then reports.
    fn commit(&mut self, batches: Vec<(RoomId, Batch)>) {
        let mut reports = Vec::with_capacity(batches.len());
        for (room, batch) in batches {
            let (written, failures) = self.write_room(&room, batch);
            reports.push((room, written, failures));
        }
        // `always`: the round's entries in the shared write-ahead log are written and synced
        // (one fsync for every room) before any room is reported.
        let synced: Result<(), (PathBuf, u64, io::Error)> = match self.wal.as_mut() {
            Some(wal) if self.opts.fsync == Fsync::Always => {
                let at = wal.len();
                wal.commit(&self.shared.stats).map_err(|e| (wal.path().to_path_buf(), at, e))
            }
            _ => Ok(()),
        };
        for (room, written, mut failures) in reports {
            let Some(state) = self.rooms.get_mut(&room) else { continue };
            let mut done = None;
            if let Some(w) = written {
                let synced = synced
                    .as_ref()
                    .map_err(|(path, at, e)| (path, *at, io::Error::new(e.kind(), e.to_string())));
                match synced {
                    Ok(()) => done = Some(w.last),
                    Err((path, at, e)) => {
                        tracing::error!(room = %room, file = %path.display(), offset = at, error = %e, "store: fsync failed");
                        let error =
                            StoreError::io(format!("room {room}: cannot sync {}", path.display()), &e);
                        give_back(state, &w, &error, &mut failures);
                    }
                }
            }
            let Some(journal) = state.journal.upgrade() else { continue };
            if let Some(last) = done {
                journal.written(last);
            }
            for (generation, rev, error) in failures {
                journal.failed(generation, rev, &error);
            }
        }
    }

    /// Writes one room's records of the round with one `write_all`: what was written (to report
    /// once synced) and the failures to report after it.
    fn write_room(&mut self, room: &RoomId, batch: Batch) -> (Option<Written>, Vec<(u64, u64, StoreError)>) {
        // One buffer reused round after round (unless a huge round grew it).
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let done = self.write_room_with(room, batch, &mut buf);
        if buf.capacity() <= 4 << 20 {
            self.buf = buf;
        }
        done
    }

    fn write_room_with(
        &mut self,
        room: &RoomId,
        batch: Batch,
        buf: &mut Vec<u8>,
    ) -> (Option<Written>, Vec<(u64, u64, StoreError)>) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let fsync = self.opts.fsync;
        let rooms_dir = self.rooms_dir.clone();
        self.state(room);
        let Some(state) = self.rooms.get_mut(room) else { return (None, Vec::new()) };
        let mut failures = Vec::new();
        if let Err(e) = ensure_files(room, state, stats) {
            tracing::error!(room = %room, error = %e, "store: cannot read the room's files");
            fail_all(state, &batch, &e, &mut failures);
            return (None, failures);
        }
        let Some(files) = state.files.as_mut() else { return (None, failures) };
        let mut expected = files.next_rev();
        let mut gens: Vec<(u64, u64)> = Vec::new();
        let mut last = None;
        for (generation, entry) in batch {
            if state.failed_gen == Some(generation) {
                continue;
            }
            let rev = entry.rev();
            if rev != expected {
                let e = StoreError(format!("room {room}: record {rev} out of order (expected {expected})"));
                failures.push((generation, rev, e));
                state.failed_gen = Some(generation);
                continue;
            }
            let encoded = match entry {
                Entry::Record(record) => codec::encode_record(&record, buf),
                Entry::Frame { at, .. } => match self.frames.get(at) {
                    Some(frame) => {
                        buf.extend_from_slice(frame);
                        Ok(())
                    }
                    None => Err(StoreError(format!("room {room}: record {rev}'s frame is missing"))),
                },
            };
            if let Err(e) = encoded {
                failures.push((generation, rev, e));
                state.failed_gen = Some(generation);
                continue;
            }
            if gens.last().is_none_or(|&(g, _)| g != generation) {
                gens.push((generation, rev));
            }
            expected = expected.saturating_add(1);
            last = Some(rev);
        }
        let (Some(last), Some(&(_, first_rev))) = (last, gens.first()) else { return (None, failures) };
        let count = last - first_rev + 1;

        // A parked segment that this write continues is reopened.
        if files.seg.is_none()
            && let Some(p) = files.parked.take_if(|p| p.next == first_rev && p.len < MAX_SEGMENT)
        {
            match OpenOptions::new().write(true).open(&p.path) {
                Ok(file) => {
                    files.seg =
                        Some(Segment { first: p.first, file, path: p.path, len: p.len, next: p.next });
                    self.opened += 1;
                }
                Err(e) => {
                    tracing::warn!(room = %room, file = %p.path.display(), error = %e, "store: cannot reopen a log segment; starting a new one");
                }
            }
        }
        files.parked = None;
        // The segment: the open one when it continues, else a new one named by the first rev.
        let mut created = false;
        if files.seg.as_ref().is_none_or(|s| s.next != first_rev || s.len >= MAX_SEGMENT) {
            if let Some(old) = files.seg.take()
                && state.dirty
                && fsync != Fsync::Never
                && let Err(e) = stats.sync(&old.file)
            {
                tracing::error!(room = %room, file = %old.path.display(), error = %e, "store: fsync failed");
            }
            match create_segment(&rooms_dir, &state.dir, room, &state.epoch, first_rev, fsync, stats) {
                Ok(seg) => {
                    files.segments.push(first_rev);
                    files.seg = Some(seg);
                    created = true;
                    self.opened += 1;
                }
                Err(e) => {
                    Stats::add(&stats.write_failures, 1);
                    tracing::error!(room = %room, error = %e, "store: cannot create a log segment");
                    fail_gens(state, &gens, &e, &mut failures);
                    return (None, failures);
                }
            }
        }
        let Some(seg) = files.seg.as_mut() else { return (None, failures) };
        let old_len = seg.len;
        let wrote = write_at(&mut seg.file, buf, old_len);
        let w = Written { last, gens, old_len, old_last: files.last_rev, created };
        if let Err(e) = wrote {
            Stats::add(&stats.write_failures, 1);
            tracing::error!(room = %room, file = %seg.path.display(), offset = old_len, error = %e, "store: write failed");
            let error = StoreError::io(format!("room {room}: cannot write {}", seg.path.display()), &e);
            give_back(state, &w, &error, &mut failures);
            return (None, failures);
        }
        seg.len += buf.len() as u64;
        seg.next = last.saturating_add(1);
        state.last_write = self.rounds;
        files.last_rev = Some(last);
        Stats::add(&stats.appends_written, count);
        Stats::add(&stats.bytes_written, buf.len() as u64);
        // `always` logs the same bytes in the shared write-ahead log, synced once for the round.
        if let Some(wal) = self.wal.as_mut()
            && let Err(e) = wal.add_records(room.as_str(), &state.epoch, buf)
        {
            Stats::add(&stats.write_failures, 1);
            tracing::error!(room = %room, error = %e, "store: cannot log a round in the write-ahead log");
            give_back(state, &w, &e, &mut failures);
            return (None, failures);
        }
        // Segments written and not yet synced: `batch` syncs them every interval, `always` at
        // the write-ahead log's next checkpoint.
        if fsync != Fsync::Never && !state.dirty {
            state.dirty = true;
            self.dirty.push(room.clone());
        }
        (Some(w), failures)
    }

    fn write_snapshot(&mut self, room: &RoomId, data: &SnapshotData) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let fsync = self.opts.fsync;
        let retain = self.opts.retain;
        let rooms_dir = self.rooms_dir.clone();
        self.state(room);
        let Some(state) = self.rooms.get_mut(room) else { return };
        if let Err(e) = ensure_files(room, state, stats) {
            tracing::error!(room = %room, error = %e, "store: cannot read the room's files; snapshot not written");
            return;
        }
        let Some(files) = state.files.as_ref() else { return };
        if files.last_rev.is_some_and(|last| last < data.rev) {
            // The records it covers failed: the room rolled them back.
            tracing::debug!(room = %room, rev = data.rev, "store: snapshot ahead of the log dropped");
            return;
        }
        // The records it covers reach the disk before it does.
        if fsync != Fsync::Never {
            sync_room(stats, room, state);
        }
        let rev = data.rev;
        let tmp = state.dir.join(format!("snap-{rev:020}.tmp"));
        let path = state.dir.join(snapshot_name(rev));
        let written = (|| {
            let mut buf = Vec::new();
            codec::encode_snapshot(room.as_str(), data, &mut buf)?;
            let io =
                |what: &str, e: io::Error| StoreError::io(format!("cannot {what} {}", tmp.display()), &e);
            make_room_dir(&rooms_dir, &state.dir, fsync)?;
            let mut file = File::create(&tmp).map_err(|e| io("create", e))?;
            file.write_all(&buf).map_err(|e| io("write", e))?;
            if fsync != Fsync::Never {
                stats.sync(&file).map_err(|e| io("sync", e))?;
            }
            fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
            if fsync != Fsync::Never {
                sync_dir(&state.dir).map_err(|e| io("sync the directory of", e))?;
            }
            Ok::<u64, StoreError>(buf.len() as u64)
        })();
        match written {
            Ok(bytes) => {
                Stats::add(&stats.snapshots_written, 1);
                Stats::add(&stats.bytes_written, bytes);
            }
            Err(e) => {
                Stats::add(&stats.write_failures, 1);
                tracing::error!(room = %room, file = %tmp.display(), error = %e, "store: snapshot not written");
                let _ = fs::remove_file(&tmp);
                return;
            }
        }
        let Some(files) = state.files.as_mut() else { return };
        if !files.snapshots.contains(&rev) {
            files.snapshots.push(rev);
            files.snapshots.sort_unstable();
        }
        files.snap_rev = files.snap_rev.max(Some(rev));
        // Rotate: the next append starts a new segment, so whole segments fall behind snapshots.
        files.seg = None;
        files.parked = None;
        state.dirty = false;

        // Keep the two newest snapshots and the log from the older one (and `retain` records
        // before the newest) on.
        let n = files.snapshots.len();
        if n < 2 {
            return;
        }
        for old in files.snapshots.drain(..n - 2) {
            let path = state.dir.join(snapshot_name(old));
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(room = %room, file = %path.display(), error = %e, "store: cannot delete an old snapshot");
            }
        }
        let (older, newest) = (files.snapshots[0], files.snapshots[1]);
        let bound = older.min(newest.saturating_sub(retain));
        while files.segments.len() >= 2 && files.segments[1] - 1 <= bound {
            let path = state.dir.join(segment_name(files.segments[0]));
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(room = %room, file = %path.display(), error = %e, "store: cannot delete an old segment");
                break;
            }
            files.segments.remove(0);
            Stats::add(&stats.segments_deleted, 1);
        }
    }

    /// `Fsync::Batch`'s periodic sync: the dirty segments go to the syncer thread (duplicated
    /// handles), so appends go on while the disk syncs. While the previous sync still runs,
    /// this one waits for the next interval.
    fn sync_dirty(&mut self) {
        self.last_sync = Instant::now();
        let Some(syncer) = &self.syncer else {
            for room in std::mem::take(&mut self.dirty) {
                if let Some(state) = self.rooms.get_mut(&room) {
                    sync_room(&self.shared.stats, &room, state);
                }
            }
            return;
        };
        if syncer.busy.load(Ordering::Acquire) {
            return;
        }
        let mut jobs = Vec::with_capacity(self.dirty.len());
        for room in std::mem::take(&mut self.dirty) {
            let Some(state) = self.rooms.get_mut(&room) else { continue };
            let Some(seg) = state.files.as_ref().and_then(|f| f.seg.as_ref()) else { continue };
            match seg.file.try_clone() {
                Ok(file) => {
                    jobs.push(SyncJob { room, file, path: seg.path.clone(), len: seg.len });
                    state.dirty = false;
                }
                Err(_) => sync_room(&self.shared.stats, &room, state),
            }
        }
        if !jobs.is_empty() {
            syncer.busy.store(true, Ordering::Release);
            if let Err(mpsc::SendError(jobs)) = syncer.jobs.send(jobs) {
                syncer.busy.store(false, Ordering::Release);
                for job in jobs {
                    if let Err(e) = self.shared.stats.sync(&job.file) {
                        tracing::error!(room = %job.room, file = %job.path.display(), error = %e, "store: fsync failed");
                    }
                }
            }
        }
    }

    /// Rooms whose background sync failed: their files are read again before the next write
    /// (as after a failed inline sync).
    fn take_sync_failures(&mut self) {
        let Some(syncer) = &self.syncer else { return };
        let failed = std::mem::take(&mut *syncer.failed.lock());
        for room in failed {
            if let Some(state) = self.rooms.get_mut(&room) {
                state.files = None;
            }
        }
    }

    /// Syncs every room's open segment (flush and stop, in every mode).
    fn sync_all(&mut self) {
        for (room, state) in &mut self.rooms {
            sync_room(&self.shared.stats, room, state);
        }
        self.dirty.clear();
        self.last_sync = Instant::now();
    }
}

fn take_room(pending: &mut Vec<(RoomId, Batch)>, room: &RoomId) -> Vec<(RoomId, Batch)> {
    match pending.iter().position(|(r, _)| r == room) {
        Some(i) => vec![pending.remove(i)],
        None => Vec::new(),
    }
}

/// Syncs the room's open segment if anything was written to it since its last sync.
fn sync_room(stats: &Stats, room: &RoomId, state: &mut RoomState) {
    let Some(seg) = state.files.as_ref().and_then(|f| f.seg.as_ref()) else { return };
    if let Err(e) = stats.sync(&seg.file) {
        // Acknowledged records may not be on disk; the next read of the room decides.
        tracing::error!(room = %room, file = %seg.path.display(), offset = seg.len, error = %e, "store: fsync failed");
        state.files = None;
    }
    state.dirty = false;
}

/// Reads the room's files once (after opening or a failure).
fn ensure_files(room: &RoomId, state: &mut RoomState, stats: &Stats) -> Result<(), StoreError> {
    if state.files.is_some() {
        return Ok(());
    }
    if let Some((path, len)) = state.pending_truncate.take()
        && let Err(e) = truncate(&path, len)
    {
        state.pending_truncate = Some((path, len));
        return Err(e);
    }
    let opts = ScanOpts { cut: true, keep: Some(0) };
    let files = match scan_room(room.as_str(), &state.dir, opts, None)? {
        None => Files {
            last_rev: None,
            snap_rev: None,
            snapshots: Vec::new(),
            segments: Vec::new(),
            seg: None,
            parked: None,
        },
        Some(scan) => {
            Stats::add(&stats.damaged_records, scan.damaged_records);
            Stats::add(&stats.damaged_snapshots, scan.damaged_snapshots);
            for damage in &scan.damage {
                tracing::warn!(room = %room, "store: {damage}");
            }
            // The tail is opened by the first write that continues it.
            let parked = match scan.tail {
                Some((first, len, next)) if scan.segments.last() == Some(&first) => {
                    Some(Parked { first, path: state.dir.join(segment_name(first)), len, next })
                }
                _ => None,
            };
            Files {
                last_rev: scan.last_rev,
                snap_rev: scan.snapshot.map(|s| s.rev),
                snapshots: scan.snapshots,
                segments: scan.segments,
                seg: None,
                parked,
            }
        }
    };
    state.files = Some(files);
    Ok(())
}

/// Creates the room's directory (and syncs its parent) when it is missing.
fn make_room_dir(rooms_dir: &Path, dir: &Path, fsync: Fsync) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), &e))?;
    if fsync != Fsync::Never {
        sync_dir(rooms_dir)
            .map_err(|e| StoreError::io(format!("cannot sync {}", rooms_dir.display()), &e))?;
    }
    Ok(())
}

/// A new segment, its header written (and its directory entry synced unless `Never`).
fn create_segment(
    rooms_dir: &Path,
    dir: &Path,
    room: &RoomId,
    epoch: &str,
    first: u64,
    fsync: Fsync,
    stats: &Stats,
) -> Result<Segment, StoreError> {
    make_room_dir(rooms_dir, dir, fsync)?;
    let path = dir.join(segment_name(first));
    let mut header = Vec::new();
    let header_rec = codec::FileHeader { room: room.to_string(), epoch: epoch.to_string(), rev: first };
    codec::encode_header(LOG_MAGIC, &header_rec, &mut header)?;
    let made = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        file.write_all(&header)?;
        if fsync != Fsync::Never {
            sync_dir(dir)?;
        }
        Ok::<File, io::Error>(file)
    })();
    match made {
        Ok(file) => {
            Stats::add(&stats.bytes_written, header.len() as u64);
            Ok(Segment { first, file, path, len: header.len() as u64, next: first })
        }
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(StoreError::io(format!("cannot create {}", path.display()), &e))
        }
    }
}

/// Takes back a write that failed (or whose sync failed): the new segment is removed, or the
/// segment cut back to its length before; when even that fails the room's files are read
/// again (after retrying the cut) before its next write.
fn undo(state: &mut RoomState, w: &Written) {
    let Some(files) = state.files.as_mut() else { return };
    files.last_rev = w.old_last;
    let Some(seg) = files.seg.take() else { return };
    if w.created {
        drop(seg.file);
        files.segments.retain(|&s| s != seg.first);
        if let Err(e) = fs::remove_file(&seg.path) {
            tracing::error!(file = %seg.path.display(), error = %e, "store: cannot remove a failed segment");
            state.pending_truncate = Some((seg.path, 0));
            state.files = None;
        }
        return;
    }
    match seg.file.set_len(w.old_len) {
        Ok(()) => {
            let next = w.gens.first().map_or(seg.next, |&(_, rev)| rev);
            files.seg = Some(Segment { next, len: w.old_len, ..seg });
        }
        Err(e) => {
            tracing::error!(file = %seg.path.display(), offset = w.old_len, error = %e, "store: cannot cut a failed write");
            state.pending_truncate = Some((seg.path, w.old_len));
            state.files = None;
        }
    }
}

/// A write (or its sync) that failed: taken back from the files and failed to its generations.
fn give_back(
    state: &mut RoomState,
    w: &Written,
    error: &StoreError,
    failures: &mut Vec<(u64, u64, StoreError)>,
) {
    undo(state, w);
    fail_gens(state, &w.gens, error, failures);
}

fn fail_gens(
    state: &mut RoomState,
    gens: &[(u64, u64)],
    error: &StoreError,
    failures: &mut Vec<(u64, u64, StoreError)>,
) {
    failures.retain(|(g, _, _)| !gens.iter().any(|(wg, _)| wg == g));
    let mut all: Vec<_> = gens.iter().map(|&(g, rev)| (g, rev, error.clone())).collect();
    all.append(failures);
    *failures = all;
    if let Some(&(g, _)) = gens.last() {
        state.failed_gen = Some(g);
    }
}

/// Every generation in `batch` fails at its first record (the room's files cannot be read).
fn fail_all(
    state: &mut RoomState,
    batch: &Batch,
    error: &StoreError,
    failures: &mut Vec<(u64, u64, StoreError)>,
) {
    let mut gens: Vec<(u64, u64)> = Vec::new();
    for (generation, entry) in batch {
        if state.failed_gen != Some(*generation) && gens.last().is_none_or(|&(g, _)| g != *generation) {
            gens.push((*generation, entry.rev()));
        }
    }
    fail_gens(state, &gens, error, failures);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_directory_names_reverse_and_stay_inside() {
        for id in ["lobby", ".", "..", ".hidden", "a:b:c", ":x", "A-z_0.9", "..:..", "Game:ONE", ".X"] {
            let room = RoomId::parse(id).unwrap();
            let name = dir_name(&room);
            assert!(
                name != "." && name != ".." && !name.starts_with('.') && !name.contains('/'),
                "{id} -> {name}"
            );
            assert_eq!(room_of_dir(&name), Some(room), "{id} -> {name}");
        }
        assert_eq!(room_of_dir("a:b"), None, "not a name dir_name makes");
        assert_eq!(room_of_dir("a=b"), None);
        assert_eq!(room_of_dir("Game"), None, "capitals are escaped");
        assert_eq!(room_of_dir("a^"), None);
        // Rooms that differ only in case get names that differ in more than case.
        let names: Vec<String> = ["Game", "game", "GAME", "gAmE", ".Lobby", ".lobby"]
            .iter()
            .map(|id| dir_name(&RoomId::parse(id).unwrap()).to_lowercase())
            .collect();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(parse_rev(&segment_name(42), "log-", ".rsl"), Some(42));
        assert_eq!(parse_rev("log-42.rsl", "log-", ".rsl"), None);
    }

    /// Reports of one room, for [`one_round_syncs_once_for_every_room`].
    #[derive(Default)]
    struct Seen(Mutex<Vec<u64>>);
    impl Journal for Seen {
        fn written(&self, rev: u64) {
            self.0.lock().push(rev);
        }
        fn failed(&self, _generation: u64, rev: u64, error: &StoreError) {
            panic!("rev {rev} failed: {error}");
        }
    }

    fn test_record(rev: u64) -> Record {
        Record {
            rev,
            ts: rev,
            author: 1,
            session: None,
            user: None,
            client_req_id: Some(rev),
            kind: 0,
            reverts: None,
            ops: format!(r#"[{{"op":"add","path":"/n","value":{rev}}}]"#),
            inverse: "[]".into(),
            touched: vec!["/n".into()],
            list_touched: vec![],
            meta: None,
            idempotency: None,
        }
    }

    #[test]
    fn one_round_syncs_once_for_every_room() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Stats::default(),
        });
        let opts = FileOptions { fsync: Fsync::Always, max_open: 0, ..FileOptions::default() };
        let rooms_dir = tmp.path().join("rooms");
        let mut writer = Writer::new(rooms_dir, tmp.path().join("wal"), opts, shared.clone(), None).unwrap();
        let journals: Vec<Arc<Seen>> = (0..20).map(|_| Arc::new(Seen::default())).collect();
        let room = |i: usize| RoomId::parse(&format!("r{i}")).unwrap();
        let mut ops = Vec::new();
        for (i, journal) in journals.iter().enumerate() {
            let journal: Weak<dyn Journal> = Arc::downgrade(&(journal.clone() as Arc<dyn Journal>));
            ops.push(Op::Open { room: room(i), epoch: "ep".into(), journal });
        }
        writer.round(ops);
        for round in 0..3u64 {
            let before = shared.stats.snapshot().fsyncs;
            let mut ops = Vec::new();
            for i in 0..journals.len() {
                for rev in round * 2 + 1..=round * 2 + 2 {
                    ops.push(Op::Append { room: room(i), generation: 0, record: Box::new(test_record(rev)) });
                }
            }
            writer.round(ops);
            assert_eq!(shared.stats.snapshot().fsyncs - before, 1, "round {round}: one fsync for 20 rooms");
            for journal in &journals {
                assert_eq!(journal.0.lock().last(), Some(&(round * 2 + 2)));
            }
        }
        // The segments were not synced yet; a checkpoint syncs each once and starts a new log.
        let before = shared.stats.snapshot().fsyncs;
        writer.checkpoint();
        let stats = shared.stats.snapshot();
        assert_eq!(stats.checkpoints, 1);
        assert_eq!(stats.fsyncs - before, 20 + 1, "20 segments and the new log file");
        assert_eq!(wal::files(&tmp.path().join("wal")).unwrap().len(), 1, "the old log file went");
    }

    #[test]
    fn fsync_names() {
        for f in [Fsync::Always, Fsync::Batch, Fsync::Never] {
            assert_eq!(f.as_str().parse::<Fsync>(), Ok(f));
        }
        assert!("sometimes".parse::<Fsync>().is_err());
    }
}
