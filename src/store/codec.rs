//! The on-disk format of the file store: CRC32C-framed rkyv records and the header every file
//! starts with. The only code that turns store data into bytes and back.
//!
//! A frame is `[u32 LE payload length][u32 LE crc32c(payload)][payload]`, the payload an rkyv
//! archive. A file is an 8-byte magic (`RSYNCLOG` for a log segment, `RSYNCSNP` for a snapshot,
//! `RSYNCWAL` for the shared write-ahead log), a u32 LE format version, then one framed
//! [`FileHeader`]; a segment continues with framed [`Record`]s, a snapshot with one framed
//! [`SnapshotData`], the write-ahead log with framed [`WalEntry`]s (its header's `rev` is the
//! file's sequence number, `room` and `epoch` empty).
//!
//! Invariants: bytes read back are never trusted. A frame is accepted only when its length is
//! within [`MAX_FRAME`] and the buffer, its CRC matches, and rkyv's checked `access` (bytecheck)
//! validates the payload, which is first copied into an aligned buffer so a frame may start at
//! any offset. Decoding never panics; it tells a clean end from a torn frame (the file ends
//! inside it, as a crash mid-write leaves it) from a corrupt one (length, CRC or archive wrong).
//! Encoding refuses what decoding would reject, so nothing is written that cannot be read.

use std::fmt;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::{Record, SnapshotData, StoreError};

/// The magic a log segment starts with.
pub const LOG_MAGIC: &[u8; 8] = b"RSYNCLOG";
/// The magic a snapshot file starts with.
pub const SNAP_MAGIC: &[u8; 8] = b"RSYNCSNP";
/// The magic a write-ahead log file (`--fsync always`'s shared log) starts with.
pub const WAL_MAGIC: &[u8; 8] = b"RSYNCWAL";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest payload a frame may carry (256 MiB); a longer length field is corruption.
pub const MAX_FRAME: usize = 256 << 20;
/// The bytes a frame adds before its payload (length and CRC).
pub const FRAME_OVERHEAD: usize = 8;
/// Magic plus version.
const PREAMBLE: usize = 12;

/// What every file says about itself after magic and version.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FileHeader {
    /// The room id, as [`crate::ids::RoomId::as_str`].
    pub room: String,
    pub epoch: String,
    /// A segment's first revision; a snapshot's revision.
    pub rev: u64,
}

/// One entry of the shared write-ahead log (`--fsync always`): what one round of the writer
/// did to one room, in the order it did it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum WalEntry {
    /// Records appended to a room's log: its framed [`Record`]s exactly as written to its
    /// segment (consecutive revisions), and the room's epoch (for a segment replay must create).
    Records { room: String, epoch: String, frames: Vec<u8> },
    /// The room's data was deleted: records before this entry must not bring it back.
    Delete { room: String },
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The buffer ends inside the frame at `offset` (a write cut short).
    Torn { offset: usize },
    /// The frame at `offset` is wrong: `why` says how.
    Corrupt { offset: usize, why: String },
}

impl Damage {
    pub fn offset(&self) -> usize {
        match self {
            Damage::Torn { offset } | Damage::Corrupt { offset, .. } => *offset,
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Torn { offset } => write!(f, "torn record at offset {offset}"),
            Damage::Corrupt { offset, why } => write!(f, "corrupt record at offset {offset}: {why}"),
        }
    }
}

/// Why a file's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a ringsync {expected} file (magic {found:?})")]
    Magic { expected: &'static str, found: String },
    #[error("format version {found}, this build reads {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("header: {0}")]
    Frame(Damage),
}

/// Appends `value` as one frame to `out` (nothing is appended on error).
///
/// # Errors
/// When rkyv cannot serialize it or the payload would exceed [`MAX_FRAME`].
pub fn encode_frame<T>(value: &T, out: &mut Vec<u8>) -> Result<(), StoreError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    // One scratch buffer per thread (the store's writer encodes every record): no allocation
    // per record. A buffer grown past `KEEP_SCRATCH` (a large snapshot) is not kept.
    const KEEP_SCRATCH: usize = 1 << 20;
    thread_local! {
        static SCRATCH: std::cell::RefCell<AlignedVec> = std::cell::RefCell::new(AlignedVec::new());
    }
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    scratch.clear();
    let payload = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, scratch)
        .map_err(|e| StoreError(format!("cannot encode: {e}")))?;
    let keep = |payload: AlignedVec| {
        if payload.capacity() <= KEEP_SCRATCH {
            SCRATCH.with(|s| *s.borrow_mut() = payload);
        }
    };
    if payload.len() > MAX_FRAME {
        let error = format!("record of {} bytes is over the {MAX_FRAME}-byte limit", payload.len());
        return Err(StoreError(error));
    }
    let Ok(len) = u32::try_from(payload.len()) else { return Err(StoreError("record too large".into())) };
    out.reserve(FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    keep(payload);
    Ok(())
}

/// Appends one record as a frame.
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), StoreError> {
    encode_frame(record, out)
}

/// Reads the frame at `offset`: `Ok(None)` at a clean end (`offset` is the buffer's end),
/// else the value and the offset after it.
///
/// # Errors
/// [`Damage::Torn`] when the buffer ends inside the frame (or only zeros follow, as a file
/// extended but never written leaves it), [`Damage::Corrupt`] for a length over [`MAX_FRAME`],
/// a CRC mismatch or a payload that does not validate.
pub fn decode_frame<T>(buf: &[u8], offset: usize) -> Result<Option<(T, usize)>, Damage>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let rest = match buf.get(offset..) {
        Some([]) => return Ok(None),
        Some(rest) => rest,
        None => return Err(Damage::Torn { offset }),
    };
    let torn = || if rest.iter().all(|b| *b == 0) { Some(Damage::Torn { offset }) } else { None };
    if rest.len() < FRAME_OVERHEAD {
        return Err(Damage::Torn { offset });
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_FRAME {
        return Err(Damage::Corrupt { offset, why: format!("length {len} over the limit") });
    }
    let Some(payload) = rest.get(FRAME_OVERHEAD..FRAME_OVERHEAD + len) else {
        return Err(Damage::Torn { offset });
    };
    if crc32c::crc32c(payload) != crc {
        return Err(torn().unwrap_or(Damage::Corrupt { offset, why: "crc mismatch".into() }));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(payload);
    let value = rkyv::access::<T::Archived, rancor::Error>(&aligned)
        .and_then(rkyv::deserialize::<T, rancor::Error>)
        .map_err(|e| torn().unwrap_or(Damage::Corrupt { offset, why: format!("invalid archive: {e}") }))?;
    Ok(Some((value, offset + FRAME_OVERHEAD + len)))
}

/// Appends a file's header: magic, version, the framed [`FileHeader`].
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_header(magic: &[u8; 8], header: &FileHeader, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    encode_frame(header, out).inspect_err(|_| out.truncate(start))
}

/// Reads a file's header: the header and the offset of what follows it.
///
/// # Errors
/// A wrong magic or version, or a torn or corrupt header frame.
pub fn decode_header(buf: &[u8], magic: &[u8; 8]) -> Result<(FileHeader, usize), HeaderError> {
    let expected = match magic {
        LOG_MAGIC => "log segment",
        WAL_MAGIC => "write-ahead log",
        _ => "snapshot",
    };
    if buf.len() < PREAMBLE {
        if magic.starts_with(buf) {
            return Err(HeaderError::Frame(Damage::Torn { offset: 0 }));
        }
        return Err(HeaderError::Magic { expected, found: String::from_utf8_lossy(buf).into_owned() });
    }
    if &buf[..8] != magic {
        return Err(HeaderError::Magic { expected, found: String::from_utf8_lossy(&buf[..8]).into_owned() });
    }
    let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version { found: version });
    }
    match decode_frame::<FileHeader>(buf, PREAMBLE) {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(HeaderError::Frame(Damage::Torn { offset: PREAMBLE })),
        Err(d) => Err(HeaderError::Frame(d)),
    }
}

/// A whole snapshot file.
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_snapshot(room: &str, data: &SnapshotData, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let header = FileHeader { room: room.to_string(), epoch: data.epoch.clone(), rev: data.rev };
    encode_header(SNAP_MAGIC, &header, out)?;
    encode_frame(data, out)
}

/// Reads a whole snapshot file, checking that its header agrees with its data and that nothing
/// follows it.
///
/// # Errors
/// A message saying what is wrong.
pub fn decode_snapshot(buf: &[u8]) -> Result<(FileHeader, SnapshotData), String> {
    let (header, at) = decode_header(buf, SNAP_MAGIC).map_err(|e| e.to_string())?;
    let (data, end) = match decode_frame::<SnapshotData>(buf, at) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(format!("torn: no data after the header at offset {at}")),
        Err(d) => return Err(d.to_string()),
    };
    if end != buf.len() {
        return Err(format!("{} stray bytes at offset {end}", buf.len() - end));
    }
    if header.rev != data.rev || header.epoch != data.epoch {
        return Err(format!("header (rev {}) disagrees with its data (rev {})", header.rev, data.rev));
    }
    Ok((header, data))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::IdempotencyKey;

    fn record(rev: u64) -> Record {
        Record {
            rev,
            ts: 1_700_000_000_000 + rev,
            author: 7,
            session: Some("s-tok".into()),
            user: Some("alice".into()),
            client_req_id: Some(rev * 2),
            kind: 0,
            reverts: None,
            ops: r#"[{"op":"add","path":"/a","value":1}]"#.into(),
            inverse: r#"[{"op":"remove","path":"/a"}]"#.into(),
            touched: vec!["/a".into()],
            list_touched: vec![],
            meta: Some("{}".into()),
            idempotency: Some(IdempotencyKey { key: "k".into(), fingerprint: 9 }),
        }
    }

    #[test]
    fn frames_round_trip_from_an_odd_offset() {
        let mut buf = vec![0xAB]; // one byte in front: every frame starts misaligned
        encode_record(&record(1), &mut buf).unwrap();
        encode_record(&record(2), &mut buf).unwrap();
        let (a, next) = decode_frame::<Record>(&buf, 1).unwrap().unwrap();
        assert_eq!(a, record(1));
        assert_eq!(next % 2, 1, "the second frame starts at an odd offset too");
        let (b, end) = decode_frame::<Record>(&buf, next).unwrap().unwrap();
        assert_eq!(b, record(2));
        assert_eq!(end, buf.len());
        assert_eq!(decode_frame::<Record>(&buf, end), Ok(None));
    }

    #[test]
    fn torn_and_corrupt_frames_are_told_apart() {
        let mut buf = Vec::new();
        encode_record(&record(1), &mut buf).unwrap();
        for cut in 1..buf.len() {
            assert_eq!(
                decode_frame::<Record>(&buf[..cut], 0),
                Err(Damage::Torn { offset: 0 }),
                "cut at {cut}"
            );
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode_frame::<Record>(&bad, 0).is_err(), "flipped byte {i} went unnoticed");
        }
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(matches!(decode_frame::<Record>(&bad, 0), Err(Damage::Corrupt { offset: 0, .. })));
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_frame::<Record>(&huge, 0), Err(Damage::Corrupt { .. })));
        // A zero-filled tail (a file extended but never written) is torn, not corrupt.
        assert_eq!(decode_frame::<Record>(&[0; 64], 0), Err(Damage::Torn { offset: 0 }));
        // A valid CRC over bytes that are not a record is corrupt.
        let payload = [1u8, 2, 3];
        let mut fake = (payload.len() as u32).to_le_bytes().to_vec();
        fake.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        fake.extend_from_slice(&payload);
        assert!(matches!(decode_frame::<Record>(&fake, 0), Err(Damage::Corrupt { .. })));
    }

    #[test]
    fn headers_name_magic_and_version() {
        let h = FileHeader { room: "r:1".into(), epoch: "e".into(), rev: 5 };
        let mut buf = vec![];
        encode_header(LOG_MAGIC, &h, &mut buf).unwrap();
        assert_eq!(decode_header(&buf, LOG_MAGIC), Ok((h.clone(), buf.len())));
        assert!(matches!(decode_header(&buf, SNAP_MAGIC), Err(HeaderError::Magic { .. })));
        let mut v2 = buf.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = decode_header(&v2, LOG_MAGIC).unwrap_err();
        assert_eq!(e.to_string(), "format version 2, this build reads 1");
        assert!(matches!(decode_header(&buf[..5], LOG_MAGIC), Err(HeaderError::Frame(Damage::Torn { .. }))));
        assert!(matches!(decode_header(&buf[..buf.len() - 1], LOG_MAGIC), Err(HeaderError::Frame(_))));
    }

    #[test]
    fn snapshots_round_trip_and_check_their_header() {
        let data = SnapshotData {
            epoch: "ep".into(),
            rev: 3,
            ts: 1,
            state: r#"{"a":1}"#.into(),
            sessions: vec![],
            idempotency: vec![],
            max_client: 4,
        };
        let mut buf = vec![];
        encode_snapshot("room", &data, &mut buf).unwrap();
        let (h, d) = decode_snapshot(&buf).unwrap();
        assert_eq!((h.room.as_str(), h.rev, d), ("room", 3, data.clone()));
        assert!(decode_snapshot(&buf[..buf.len() - 1]).is_err());
        buf.push(0);
        assert!(decode_snapshot(&buf).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), offset in 0usize..600) {
            let _ = decode_frame::<Record>(&bytes, offset);
            let _ = decode_frame::<SnapshotData>(&bytes, offset);
            let _ = decode_header(&bytes, LOG_MAGIC);
            let _ = decode_snapshot(&bytes);
        }

        #[test]
        fn garbage_behind_a_valid_length_and_crc_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = vec![7u8];
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            let _ = decode_frame::<Record>(&buf, 1);
            let _ = decode_frame::<SnapshotData>(&buf, 1);
        }
    }
}
