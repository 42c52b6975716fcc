//! The shared write-ahead log that gives `--fsync always` one fsync per round for every room.
//!
//! Without it each room's segment would need its own fsync before its changes are acknowledged.
//! With it, the writer still appends each room's records to the room's segment (page cache
//! only), and also appends the same bytes, tagged with the room, to one shared file; a round ends
//! with one write and one `sync_data` of that file, and every room written in the round is then
//! reported. The rooms' segments are synced later, at a checkpoint (when the log has grown past
//! `FileOptions::wal_max`, at flush, at stop): every segment written since the last checkpoint
//! is synced, then a new log file starts and the older ones are deleted.
//!
//! Layout: `DIR/wal/wal-<seq>.rsw` (20-digit sequence numbers, so names sort), each a header
//! (`RSYNCWAL`, see [`codec`]) and framed [`WalEntry`]s. Opening the store replays every file
//! left (an unclean stop): entries in order, each room's records that its segments lack appended
//! again, deletes done again, stopping at a file's first torn or corrupt entry (a round whose
//! sync never finished, so never reported); then the rooms are synced and the files deleted.
//! Start-up after a crash therefore reads at most one log's worth (`wal_max` plus a round), and
//! nothing after a clean stop.
//!
//! Invariants: a round's entry reaches the log before any of its records is reported written; a
//! log file is deleted only after every segment its entries went to was synced (and never once
//! any fsync has failed in this process: a failed fsync may have dropped pages, so the log stays
//! the durable copy until the next start replays it); a delete is in the log before the room's
//! files go, so a replay does not bring a deleted room back.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{Stats, sync_dir, write_at};
use crate::store::StoreError;
use crate::store::codec::{self, FileHeader, WAL_MAGIC, WalEntry};

/// The largest run of record frames one entry carries (a bigger round is split at frame
/// boundaries, well inside [`codec::MAX_FRAME`]).
const ENTRY_MAX: usize = 16 << 20;

fn file_name(seq: u64) -> String {
    format!("wal-{seq:020}.rsw")
}

/// The log files under `dir` by sequence number (none when it does not exist).
///
/// # Errors
/// When the directory exists but cannot be listed.
pub(super) fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("cannot list {}", dir.display()), &e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("cannot list {}", dir.display()), &e))?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(|n| super::parse_rev(n, "wal-", ".rsw")) {
            out.push((seq, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What reading one log file found.
pub(super) struct Read {
    pub entries: u64,
    /// Where and why it stopped early, if it did.
    pub damage: Option<String>,
}

/// Hands each valid entry of the file at `path` to `each`, in order, up to the first torn or
/// corrupt one.
///
/// # Errors
/// When the file cannot be read.
pub(super) fn read(path: &Path, mut each: impl FnMut(WalEntry)) -> Result<Read, StoreError> {
    let buf = fs::read(path).map_err(|e| StoreError::io(format!("cannot read {}", path.display()), &e))?;
    let mut offset = match codec::decode_header(&buf, WAL_MAGIC) {
        Ok((_, at)) => at,
        Err(e) => return Ok(Read { entries: 0, damage: Some(format!("bad header: {e}")) }),
    };
    let mut entries = 0;
    loop {
        match codec::decode_frame::<WalEntry>(&buf, offset) {
            Ok(None) => return Ok(Read { entries, damage: None }),
            Ok(Some((entry, next))) => {
                each(entry);
                entries += 1;
                offset = next;
            }
            Err(d) => return Ok(Read { entries, damage: Some(d.to_string()) }),
        }
    }
}

/// Splits concatenated record frames into runs of at most [`ENTRY_MAX`] bytes (a single frame
/// bigger than that is a run of its own).
fn runs(frames: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at + codec::FRAME_OVERHEAD <= frames.len() {
        let len = u32::from_le_bytes([frames[at], frames[at + 1], frames[at + 2], frames[at + 3]]) as usize;
        let end = (at + codec::FRAME_OVERHEAD + len).min(frames.len());
        if end - start > ENTRY_MAX && at > start {
            out.push(&frames[start..at]);
            start = at;
        }
        at = end;
    }
    if start < frames.len() {
        out.push(&frames[start..]);
    }
    out
}

/// The open log file the writer appends to.
pub(super) struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    seq: u64,
    /// Bytes of whole entries in the file (where the next write goes).
    len: u64,
    header_len: u64,
    /// This round's entries, written with one write by [`Wal::commit`].
    buf: Vec<u8>,
}

impl Wal {
    /// Starts log file `seq` under `dir` (created if needed), its header and directory entry
    /// synced.
    ///
    /// # Errors
    /// When the directory or file cannot be created, written or synced.
    pub(super) fn create(dir: &Path, seq: u64, stats: &Stats) -> Result<Wal, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), &e))?;
        let path = dir.join(file_name(seq));
        let mut header = Vec::new();
        codec::encode_header(
            WAL_MAGIC,
            &FileHeader { room: String::new(), epoch: String::new(), rev: seq },
            &mut header,
        )?;
        let made = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
            write_at(&mut file, &header, 0)?;
            stats.sync(&file)?;
            sync_dir(dir)?;
            Ok::<File, io::Error>(file)
        })();
        match made {
            Ok(file) => {
                let len = header.len() as u64;
                Ok(Wal { dir: dir.to_path_buf(), file, path, seq, len, header_len: len, buf: Vec::new() })
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(StoreError::io(format!("cannot create {}", path.display()), &e))
            }
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the current file.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current file holds no entry yet.
    pub(super) fn is_empty(&self) -> bool {
        self.len <= self.header_len
    }

    /// Queues a room's records of this round (its segment's bytes as written).
    ///
    /// # Errors
    /// When the entry cannot be encoded (nothing of it is queued).
    pub(super) fn add_records(&mut self, room: &str, epoch: &str, frames: &[u8]) -> Result<(), StoreError> {
        let start = self.buf.len();
        for run in runs(frames) {
            let entry =
                WalEntry::Records { room: room.to_string(), epoch: epoch.to_string(), frames: run.to_vec() };
            if let Err(e) = codec::encode_frame(&entry, &mut self.buf) {
                self.buf.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Queues a room's delete.
    ///
    /// # Errors
    /// When the entry cannot be encoded.
    pub(super) fn add_delete(&mut self, room: &str) -> Result<(), StoreError> {
        codec::encode_frame(&WalEntry::Delete { room: room.to_string() }, &mut self.buf)
    }

    /// Writes the queued entries with one write and syncs the file: the round's group commit.
    /// On failure the file is cut back to where it was (what was queued is dropped either way).
    ///
    /// # Errors
    /// The write's or the sync's error.
    pub(super) fn commit(&mut self, stats: &Stats) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let done = write_at(&mut self.file, &self.buf, self.len).and_then(|()| stats.sync(&self.file));
        match &done {
            Ok(()) => self.len += self.buf.len() as u64,
            Err(_) => {
                let _ = self.file.set_len(self.len);
            }
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        done
    }

    /// Starts the next file; with `delete_old`, removes every earlier one (the caller synced
    /// every segment they cover).
    ///
    /// # Errors
    /// When the next file cannot be created (this one stays in use).
    pub(super) fn rotate(&mut self, stats: &Stats, delete_old: bool) -> Result<(), StoreError> {
        let next = Wal::create(&self.dir, self.seq + 1, stats)?;
        *self = next;
        if delete_old {
            for (seq, path) in files(&self.dir)? {
                if seq < self.seq
                    && let Err(e) = fs::remove_file(&path)
                {
                    tracing::warn!(file = %path.display(), error = %e, "store: cannot delete an old write-ahead log");
                }
            }
            let _ = sync_dir(&self.dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&[0; 4]);
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn runs_split_at_frame_boundaries_only() {
        let small: Vec<u8> = (0..3).flat_map(|_| frame(10)).collect();
        assert_eq!(runs(&small), vec![&small[..]]);
        let big = frame(ENTRY_MAX / 2 + 1);
        let three: Vec<u8> = [big.clone(), big.clone(), big.clone()].concat();
        let got = runs(&three);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|r| *r == &big[..]));
        let huge = frame(ENTRY_MAX + 5);
        let mixed: Vec<u8> = [frame(3), huge.clone(), frame(3)].concat();
        let got = runs(&mixed);
        assert_eq!(got.concat(), mixed);
        assert!(got.contains(&&huge[..]));
    }
}
