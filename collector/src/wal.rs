//! The write-ahead log: every accepted batch is appended here, and fsynced, before its request is acknowledged.
//!
//! Layout: `DATA/wal/{segment:020}.wal` files of records, `DATA/wal/checkpoint` holding the highest sequence number
//! whose rows are safely in committed Parquet files, `DATA/wal/flush.pending` while a flush is writing files (see
//! [`crate::writer::FlushManifest`]), and `DATA/wal/corrupt/` where damaged bytes are kept aside. A record is
//!
//! ```text
//! [magic: 4 bytes][payload len: u32 LE][seq: u64 LE][kind tag: u8][crc32 of payload: u32 LE]
//! [crc32 of the 21 bytes before: u32 LE][payload]
//! ```
//!
//! The magic word and the header's own crc let recovery resynchronise after damage: a record that fails a check is
//! skipped by scanning for the next magic word that starts a record passing both crcs, so one flipped bit costs
//! one record, not the rest of the segment. The length is trusted only once the header crc holds, and never beyond
//! the bytes left in the file or the configured largest record. Segments written before this format (records
//! `[len][crc32][seq][tag][payload]`, no magic) are still read; in them damage cannot be skipped, so everything
//! from the damage on is kept aside.
//!
//! The payload is either a signal's normalised rows as an Arrow IPC stream (metrics, logs), or, for traces, the
//! OTLP `ExportTraceServiceRequest` protobuf exactly as it was acknowledged ([`RecordKind`]). Keeping the request
//! rather than the rows costs nothing to encode (the bytes are already in hand; the Arrow IPC encoding it
//! replaced was 7 % of ingest CPU). Replay normalises it again with the same code and price table, so the
//! replayed rows are the acknowledged ones (a price table edited between a crash and the restart prices the
//! replayed spans with the new prices).
//!
//! Concurrent requests share one fsync (group commit): a single writer thread takes everything queued, writes
//! it in one go, syncs once and then acknowledges each request. A write that fails (disk full, read-only file
//! system) is cut back off the segment so that no unacknowledged record could be replayed later, and every
//! request of the group gets a retryable error. A segment that was unlinked under the writer (`rm -rf DATA/wal`)
//! is noticed after each write ([`StorageError::WalVanished`]); the writer then rewrites every acknowledged,
//! unflushed record into a fresh segment ([`Wal::replace_lost_segment`]) before acknowledging anything more.
//!
//! Recovery ([`Wal::recover`]) reads every segment, keeps aside (never deletes) bytes that are not valid records,
//! replays each sequence number once (a segment copied under a second name is not replayed twice) and skips the
//! records at or below the checkpoint, unless the checkpoint is above every record in the WAL: no flush can have
//! written that, so it is reported and ignored rather than trusted to skip data.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use tailscope_core::projects::Project;
use tailscope_core::schema::Signal;

use crate::error::StorageError;

const SEGMENT_SUFFIX: &str = ".wal";
/// Digits of a segment id in its file name; only names of exactly this form are segments.
const SEGMENT_DIGITS: usize = 20;

/// First bytes of every record. Read as the length of an old-format record it would be over 3 GB, more than any
/// old record, so the two formats cannot be mistaken for each other.
pub const MAGIC: [u8; 4] = [b'T', b'S', b'W', 0xC2];

/// Bytes of a record before its payload: magic, length, sequence number, tag, payload crc, header crc.
pub const RECORD_HEADER: usize = 4 + 4 + 8 + 1 + 4 + 4;

/// Header bytes of an old-format record: `[len: u32][crc32: u32]`, then `seq` and `tag` inside the crc.
const OLD_HEADER: usize = 8;

/// Encodes a batch as one WAL payload (an Arrow IPC stream: schema + one batch).
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>, StorageError> {
    let arrow = |source| StorageError::Arrow { context: "encoding a WAL record".into(), source };
    // The builders' capacity bounds the encoded size: one allocation, no regrowth copies.
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 16 * 1024);
    let mut writer = StreamWriter::try_new(&mut buf, batch.schema_ref()).map_err(arrow)?;
    writer.write(batch).map_err(arrow)?;
    writer.finish().map_err(arrow)?;
    drop(writer);
    Ok(buf)
}

fn decode_batch(payload: &[u8]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let mut reader = StreamReader::try_new(payload, None)?;
    match reader.next() {
        Some(batch) => batch,
        None => Err(datafusion::arrow::error::ArrowError::IpcError("WAL record holds no batch".into())),
    }
}

/// What a record's payload holds; stored in the record's tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A signal's normalised rows, as an Arrow IPC stream.
    Rows(Signal),
    /// An OTLP `ExportTraceServiceRequest` in protobuf, as acknowledged; replay normalises it again.
    OtlpTraces,
}

/// Tag of [`RecordKind::OtlpTraces`]; the high bit keeps it apart from signal tags (the tags of `Rows`).
const OTLP_TRACES_TAG: u8 = 0x81;

/// Set in a record's tag when its rows belong to a project other than `default`: the payload then begins with
/// the project's name (one length byte, then the name, see [`project_payload`]). Records without it (all records
/// written before projects existed) are the `default` project's, so old WALs replay as they were.
const PROJECT_FLAG: u8 = 0x40;

/// The tag and payload of a record of `kind` holding `payload` for `project`: as they are for `default`, else
/// flagged and prefixed with the project's name. The prefix costs one copy of the payload, for other projects only.
pub fn project_payload(kind: RecordKind, project: &Project, payload: bytes::Bytes) -> (u8, bytes::Bytes) {
    if project.as_str() == tailscope_core::projects::DEFAULT_PROJECT {
        return (kind.tag(), payload);
    }
    let name = project.as_str().as_bytes();
    // Project names are at most 64 bytes (`Project::parse`), so the length fits its byte.
    let mut out = Vec::with_capacity(1 + name.len() + payload.len());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    (kind.tag() | PROJECT_FLAG, bytes::Bytes::from(out))
}

/// The kind, project and payload proper of a record with `tag` and `payload`; `None` when the tag is unknown or the
/// project prefix is not a project name.
fn split_project(tag: u8, payload: &[u8]) -> Option<(RecordKind, Project, &[u8])> {
    if tag & PROJECT_FLAG == 0 {
        return Some((RecordKind::from_tag(tag)?, Project::default_project(), payload));
    }
    let kind = RecordKind::from_tag(tag & !PROJECT_FLAG)?;
    let (&len, rest) = payload.split_first()?;
    let name = rest.get(..usize::from(len))?;
    let project = Project::parse(std::str::from_utf8(name).ok()?).ok()?;
    Some((kind, project, &rest[usize::from(len)..]))
}

impl RecordKind {
    fn tag(self) -> u8 {
        match self {
            RecordKind::Rows(signal) => signal.tag(),
            RecordKind::OtlpTraces => OTLP_TRACES_TAG,
        }
    }

    fn from_tag(tag: u8) -> Option<RecordKind> {
        match tag {
            OTLP_TRACES_TAG => Some(RecordKind::OtlpTraces),
            tag => Signal::from_tag(tag).map(RecordKind::Rows),
        }
    }

    /// The table the record's rows belong to.
    pub fn signal(self) -> Signal {
        match self {
            RecordKind::Rows(signal) => signal,
            RecordKind::OtlpTraces => Signal::Spans,
        }
    }
}

/// The bytes of a record that come before `payload` (the record is these, then the payload itself).
pub fn record_header(seq: u64, kind: RecordKind, payload: &[u8]) -> [u8; RECORD_HEADER] {
    record_header_tagged(seq, kind.tag(), payload)
}

/// [`record_header`] with the tag as [`project_payload`] made it.
pub fn record_header_tagged(seq: u64, tag: u8, payload: &[u8]) -> [u8; RECORD_HEADER] {
    let mut header = [0u8; RECORD_HEADER];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16] = tag;
    header[17..21].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&header[..21]);
    header[21..25].copy_from_slice(&header_crc.to_le_bytes());
    header
}

/// Appends one framed record for `payload` to `out`.
pub fn frame_record(out: &mut Vec<u8>, seq: u64, kind: RecordKind, payload: &[u8]) {
    out.reserve(RECORD_HEADER + payload.len());
    out.extend_from_slice(&record_header(seq, kind, payload));
    out.extend_from_slice(payload);
}

/// A record read back from the WAL.
#[derive(Debug)]
pub struct WalRecord {
    /// Its sequence number.
    pub seq: u64,
    /// The project its rows belong to.
    pub project: Project,
    /// Its contents.
    pub data: RecordData,
}

/// A recovered record's contents.
#[derive(Debug)]
pub enum RecordData {
    /// Normalised rows of a table.
    Rows(Signal, RecordBatch),
    /// An OTLP trace export request in protobuf, still to be normalised.
    OtlpTraces(Vec<u8>),
}

/// The appending side of the WAL. Owned by one thread (the group-commit writer).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_id: u64,
    file: File,
    /// Bytes in the current segment that are known good.
    len: u64,
    /// The next sequence number to assign.
    next_seq: u64,
    /// The highest sequence number written and synced (0 when none yet): what a flush started now covers.
    last_written: u64,
    /// Closed segments: every record in them is at or below `last_written` as of their closing, so a flush that
    /// rotates later covers all of them.
    closed: Vec<u64>,
    fsync: bool,
}

/// What [`Wal::recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records to replay (after the checkpoint), in sequence order, each sequence number once.
    pub records: Vec<WalRecord>,
    /// The checkpoint as read (0 when missing or unreadable).
    pub checkpoint: u64,
    /// Whether the checkpoint may be trusted: present, readable, and not above every record in the WAL. Only a
    /// trusted checkpoint says that a pending flush committed (see `writer::settle_pending_flush`).
    pub checkpoint_trusted: bool,
    /// The sequence number the next record gets: above every record and the checkpoint.
    pub next_seq: u64,
    /// The segments read; once a flush covers the replayed records, they may all be removed.
    pub segments: Vec<u64>,
    /// Bytes in the segments.
    pub pending_bytes: u64,
    /// Damaged stretches inside segments (each skipped, with the records after it recovered), and their bytes.
    pub corrupt_records: u64,
    /// Bytes of the damaged stretches, kept aside in `wal/corrupt/`.
    pub corrupt_bytes: u64,
    /// Bytes of torn tails (a last write cut short), kept aside and cut off.
    pub torn_bytes: u64,
    /// Records whose sequence number was already read from another segment (a copied segment).
    pub duplicate_records: u64,
}

/// One record as parsed from a segment.
struct Parsed<'a> {
    seq: u64,
    tag: u8,
    payload: &'a [u8],
    len: usize,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_DIGITS))
}

/// The id of a segment file name; `None` for anything else (such files are left alone).
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment ids in `dir`, ascending. Files ending in `.wal` whose names are not segment names are reported
/// and left alone.
fn segment_ids(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StorageError::io("listing WAL directory", dir))? {
        let entry = entry.map_err(StorageError::io("listing WAL directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(id) => ids.push(id),
            None if name.ends_with(SEGMENT_SUFFIX) => {
                tracing::warn!(file = %entry.path().display(), "not a WAL segment name ({SEGMENT_DIGITS} digits + .wal); ignored");
            }
            None => {}
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Bytes in the WAL segments of `dir`: zero after a collector stopped cleanly (its last flush covered every record
/// and removed their segments), more when records may still be replayed into the tables at the next start (after
/// a crash). Commands that change the tables of a stopped collector (`tailscope projects delete`) read it: rows
/// they remove could otherwise come back from the WAL. A missing directory holds nothing.
pub fn segment_bytes(dir: &Path) -> Result<u64, StorageError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut total = 0u64;
    for id in segment_ids(dir)? {
        let path = segment_path(dir, id);
        total = total
            .saturating_add(std::fs::metadata(&path).map_err(StorageError::io("reading WAL segment", &path))?.len());
    }
    Ok(total)
}

/// An unused segment id after `after`: the next one up, or, past `u64::MAX` (a segment can only be named that by
/// hand), the smallest free one. Recovery orders records by sequence number, not by segment id, so ids only need
/// to be unique.
fn free_segment_id(existing: &BTreeSet<u64>, after: u64) -> u64 {
    let mut id = after;
    while let Some(next) = id.checked_add(1) {
        if !existing.contains(&next) {
            return next;
        }
        id = next;
    }
    // At most `existing.len() + 1` candidates: one of them is free.
    (1..).find(|id| !existing.contains(id)).unwrap_or(1)
}

/// Creates a fresh segment after `after` in `dir`; returns its id and file.
fn create_segment(dir: &Path, after: u64) -> Result<(u64, File), StorageError> {
    let existing: BTreeSet<u64> = segment_ids(dir)?.into_iter().collect();
    let id = free_segment_id(&existing, after);
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(StorageError::io("creating WAL segment", &path))?;
    sync_dir(dir)?;
    Ok((id, file))
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// Reads the checkpoint: `None` when there is none.
pub fn read_checkpoint(dir: &Path) -> Result<Option<u64>, StorageError> {
    let path = checkpoint_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|e| StorageError::CorruptWal {
            path: path.clone(),
            offset: 0,
            detail: format!("checkpoint is not a number: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Io { action: "reading", path, source: e }),
    }
}

/// Durably records that every record up to `seq` is in committed Parquet files.
pub fn write_checkpoint(dir: &Path, seq: u64) -> Result<(), StorageError> {
    write_atomically(dir, "checkpoint", seq.to_string().as_bytes())
}

/// Writes `dir/name` through a synced temporary file and a rename, then syncs `dir`: after a crash the file holds
/// either the old or the new contents.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StorageError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(StorageError::io("creating", &tmp))?;
    f.write_all(contents).map_err(StorageError::io("writing", &tmp))?;
    f.sync_all().map_err(StorageError::io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(StorageError::io("renaming", &tmp))?;
    sync_dir(dir)
}

/// fsyncs a directory, so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StorageError::io("syncing directory", dir))
}

/// The directory damaged WAL bytes are kept in.
pub fn corrupt_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join("corrupt")
}

/// Copies `bytes` to `wal/corrupt/NAME.bin`, synced. Never overwrites a different file of the same name with
/// other bytes: the same damage found again (a restart before the segment was removed) rewrites the same bytes.
pub fn keep_aside(wal_dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, StorageError> {
    let dir = corrupt_dir(wal_dir);
    std::fs::create_dir_all(&dir).map_err(StorageError::io("creating", &dir))?;
    write_atomically(&dir, &format!("{name}.bin"), bytes)?;
    Ok(dir.join(format!("{name}.bin")))
}

/// How one segment's bytes divide into records and damage.
struct SegmentScan<'a> {
    records: Vec<(usize, Parsed<'a>)>,
    /// Damaged stretches `(offset, len)` followed by a valid record.
    corrupt: Vec<(usize, usize)>,
    /// Where the torn tail starts, if the segment does not end on a record boundary.
    tail: Option<usize>,
}

/// Reads one segment into `records`, setting aside what is damaged; returns whether the segment may be removed once
/// its records are flushed (not when something damaged in it could not be kept aside).
fn recover_segment(
    dir: &Path,
    id: u64,
    max_record_bytes: usize,
    out: &mut Recovered,
    records: &mut Vec<WalRecord>,
) -> Result<bool, StorageError> {
    let path = segment_path(dir, id);
    let data = std::fs::read(&path).map_err(StorageError::io("reading WAL segment", &path))?;
    out.pending_bytes += data.len() as u64;
    let stem = format!("{id:0width$}", width = SEGMENT_DIGITS);
    let scan = scan_segment(&data, max_record_bytes);
    let mut keep_segment = set_aside_damage(dir, &path, &stem, &data, &scan, out)?;
    for (offset, p) in scan.records {
        let decoded = match split_project(p.tag, p.payload) {
            Some((RecordKind::OtlpTraces, project, payload)) => Ok((project, RecordData::OtlpTraces(payload.to_vec()))),
            Some((RecordKind::Rows(signal), project, payload)) => {
                decode_batch(payload).map(|b| (project, RecordData::Rows(signal, b))).map_err(|e| e.to_string())
            }
            None => Err(format!("unknown record tag {} or project prefix (written by a newer tailscope?)", p.tag)),
        };
        match decoded {
            Ok((project, data)) => records.push(WalRecord { seq: p.seq, project, data }),
            Err(detail) => {
                out.corrupt_records += 1;
                out.corrupt_bytes += p.len as u64;
                let kept = keep_aside(dir, &format!("{stem}-{offset}"), &data[offset..offset + p.len]);
                keep_segment |= kept.is_err();
                tracing::warn!(
                    segment = %path.display(), offset, seq = p.seq, %detail, kept_aside = kept.is_ok(),
                    "WAL record passes its crc but cannot be read; skipped"
                );
            }
        }
    }
    Ok(!keep_segment)
}

/// Keeps a segment's damaged records and torn tail aside (counted in `out`) and cuts the tail off; returns whether
/// something could not be kept aside (then the segment itself is kept as is).
fn set_aside_damage(
    dir: &Path,
    path: &Path,
    stem: &str,
    data: &[u8],
    scan: &SegmentScan<'_>,
    out: &mut Recovered,
) -> Result<bool, StorageError> {
    let mut keep_segment = false;
    for &(offset, len) in &scan.corrupt {
        out.corrupt_records += 1;
        out.corrupt_bytes += len as u64;
        match keep_aside(dir, &format!("{stem}-{offset}"), &data[offset..offset + len]) {
            Ok(aside) => tracing::warn!(
                segment = %path.display(), offset, bytes = len, kept_at = %aside.display(),
                "corrupt WAL record skipped; the records after it are recovered"
            ),
            Err(e) => {
                keep_segment = true;
                tracing::error!(
                    segment = %path.display(), offset, bytes = len, error = %e,
                    "corrupt WAL record skipped, and it could not be kept aside: the segment is kept as is"
                );
            }
        }
    }
    if let Some(tail) = scan.tail {
        let bytes = &data[tail..];
        out.torn_bytes += bytes.len() as u64;
        match keep_aside(dir, &format!("{stem}-{tail}-tail"), bytes) {
            Ok(aside) => {
                tracing::warn!(
                    segment = %path.display(), offset = tail, bytes = bytes.len(), kept_at = %aside.display(),
                    "WAL segment ends in a torn or damaged record (a write cut short is never acknowledged); \
                     its bytes are kept aside and cut off"
                );
                let f = OpenOptions::new().write(true).open(path).map_err(StorageError::io("opening", path))?;
                f.set_len(tail as u64).map_err(StorageError::io("truncating torn WAL tail", path))?;
                f.sync_all().map_err(StorageError::io("syncing", path))?;
            }
            Err(e) => {
                keep_segment = true;
                tracing::error!(segment = %path.display(), offset = tail, error = %e, "cannot keep a torn WAL tail aside; leaving the segment as is");
            }
        }
    }
    Ok(keep_segment)
}

/// Splits a segment into records, damaged stretches and a torn tail, trusting nothing in it.
fn scan_segment(data: &[u8], max_record_bytes: usize) -> SegmentScan<'_> {
    let mut scan = SegmentScan { records: Vec::new(), corrupt: Vec::new(), tail: None };
    let mut new_format = false;
    let mut offset = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        let parsed = match parse_record(rest, max_record_bytes) {
            Some(p) => {
                new_format = true;
                Some(p)
            }
            // Old segments hold only old records; once a new record was seen, none can follow.
            None if !new_format => parse_old_record(rest, max_record_bytes),
            None => None,
        };
        if let Some(p) = parsed {
            offset += p.len;
            scan.records.push((offset - p.len, p));
            continue;
        }
        match next_record_start(data, offset + 1, max_record_bytes) {
            Some(next) => {
                scan.corrupt.push((offset, next - offset));
                offset = next;
            }
            None => {
                scan.tail = Some(offset);
                break;
            }
        }
    }
    scan
}

/// The first offset at or after `from` where a new-format record passing both crcs starts.
fn next_record_start(data: &[u8], from: usize, max_record_bytes: usize) -> Option<usize> {
    let mut at = from;
    while at + MAGIC.len() <= data.len() {
        let found = data[at..].windows(MAGIC.len()).position(|w| w == MAGIC)?;
        at += found;
        if parse_record(&data[at..], max_record_bytes).is_some() {
            return Some(at);
        }
        at += 1;
    }
    None
}

impl Wal {
    /// Reads every segment in `dir` (created if missing), keeping aside what is not a valid record.
    /// `max_record_bytes` bounds a record's length (besides the bytes left in its file).
    pub fn recover(dir: &Path, max_record_bytes: usize) -> Result<Recovered, StorageError> {
        std::fs::create_dir_all(dir).map_err(StorageError::io("creating WAL directory", dir))?;
        let (checkpoint, readable) = match read_checkpoint(dir) {
            Ok(c) => (c, true),
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint unreadable; replaying every record in the WAL");
                (None, false)
            }
        };
        let mut out = Recovered::default();
        let mut records = Vec::new();
        for id in segment_ids(dir)? {
            if recover_segment(dir, id, max_record_bytes, &mut out, &mut records)? {
                out.segments.push(id);
            }
        }
        // One record per sequence number: segments were read in id order and the sort is stable, so the first
        // copy read is kept.
        records.sort_by_key(|r| r.seq);
        let before = records.len();
        records.dedup_by_key(|r| r.seq);
        out.duplicate_records = (before - records.len()) as u64;
        if out.duplicate_records > 0 {
            tracing::warn!(
                records = out.duplicate_records,
                "WAL holds records with the same sequence number in several segments (a copied segment?); each is replayed once"
            );
        }
        if out.corrupt_records > 0 {
            tracing::warn!(
                corrupt_records = out.corrupt_records, corrupt_bytes = out.corrupt_bytes, kept_in = %corrupt_dir(dir).display(),
                "WAL recovery skipped corrupt records"
            );
        }
        let highest = records.last().map(|r| r.seq);
        let checkpoint_value = checkpoint.unwrap_or(0);
        let too_high = highest.is_some_and(|h| checkpoint_value > h);
        out.checkpoint_trusted = readable && checkpoint.is_some() && !too_high;
        if let Some(highest) = highest
            && too_high
        {
            // A flush's checkpoint is the last record it covers, and the segments it covers are removed only after
            // it is written: a checkpoint above every remaining record cannot come from this WAL.
            tracing::warn!(
                "WAL checkpoint {checkpoint_value} is above every record in the WAL (highest {highest}): it was not \
                 written by this WAL (edited, or restored from another data dir); replaying all {} records instead of \
                 skipping them",
                records.len()
            );
        } else {
            records.retain(|r| r.seq > checkpoint_value);
        }
        if checkpoint.is_none() && !records.is_empty() {
            tracing::info!(records = records.len(), "no WAL checkpoint: replaying every record in the WAL");
        }
        out.next_seq = checkpoint_value.max(highest.unwrap_or(0)).saturating_add(1);
        out.checkpoint = checkpoint_value;
        out.records = records;
        Ok(out)
    }

    /// Opens a fresh segment for appending after recovery. `next_seq` continues after everything seen; `closed`
    /// are the segments recovery read (removed by the first flush that covers them).
    pub fn open(dir: &Path, next_seq: u64, closed: Vec<u64>, fsync: bool) -> Result<Wal, StorageError> {
        let after = segment_ids(dir)?.last().copied().unwrap_or(0);
        let (segment_id, file) = create_segment(dir, after)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_id,
            file,
            len: 0,
            next_seq,
            last_written: next_seq.saturating_sub(1),
            closed,
            fsync,
        })
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence number written and synced: a flush started now covers the records up to it.
    pub fn last_written(&self) -> u64 {
        self.last_written
    }

    /// Reserves `n` sequence numbers, returning the first.
    pub fn reserve(&mut self, n: u64) -> u64 {
        let first = self.next_seq;
        self.next_seq += n;
        first
    }

    /// Writes framed records (see [`frame_record`]) and syncs them. On failure the segment is cut back to its
    /// previous length, so the records can never reappear, and the error is returned.
    pub fn append(&mut self, framed: &[u8]) -> Result<(), StorageError> {
        self.append_parts(&mut [IoSlice::new(framed)], 0)
    }

    /// [`Wal::append`] for records given as pieces, written in order with vectored writes: each record's
    /// [`record_header`] and its payload where it already lies, so a request's bytes are not copied into a
    /// framing buffer first (they are most of what ingest moves). `last_seq` is the highest sequence number among
    /// them. Fails with [`StorageError::WalVanished`] when the segment was unlinked (the records are then not
    /// durable: see [`Wal::replace_lost_segment`]).
    pub fn append_parts(&mut self, parts: &mut [IoSlice<'_>], last_seq: u64) -> Result<(), StorageError> {
        let path = segment_path(&self.dir, self.segment_id);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let result = write_all_vectored(&mut self.file, parts)
            .and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.len += len as u64;
                // One fstat per group: an unlinked segment accepts writes and syncs, but nothing of it survives.
                if self.file.metadata().is_ok_and(|m| m.nlink() == 0) {
                    return Err(StorageError::WalVanished { path });
                }
                self.last_written = self.last_written.max(last_seq);
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    // Should the cut fail too, move on to a new segment: the damaged tail fails its crc and is
                    // dropped at recovery, and no later record follows it in that segment.
                    tracing::error!(segment = %path.display(), error = %cut, "cannot cut failed WAL write; rotating");
                    self.rotate()?;
                }
                Err(StorageError::Io { action: "appending to WAL segment", path, source: e })
            }
        }
    }

    /// Whether the current segment is gone (unlinked, e.g. by `rm -rf DATA/wal`).
    pub fn segment_lost(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.nlink() == 0) || !self.dir.is_dir()
    }

    /// Recreates the WAL directory and a fresh segment after the current one was lost, and writes `records`
    /// (every acknowledged record not yet in committed Parquet, as rows) into it, synced. Until this succeeds
    /// nothing more may be acknowledged: acknowledged rows would otherwise live only in memory.
    pub fn replace_lost_segment(
        &mut self,
        records: &[(u64, Signal, Project, RecordBatch)],
    ) -> Result<(), StorageError> {
        std::fs::create_dir_all(&self.dir).map_err(StorageError::io("recreating WAL directory", &self.dir))?;
        let (segment_id, file) = create_segment(&self.dir, self.segment_id)?;
        let lost = std::mem::replace(&mut self.file, file);
        drop(lost);
        self.closed.push(self.segment_id);
        self.segment_id = segment_id;
        self.len = 0;
        let mut framed = Vec::new();
        let mut last = 0;
        for (seq, signal, project, batch) in records {
            let rows = bytes::Bytes::from(encode_batch(batch)?);
            let (tag, payload) = project_payload(RecordKind::Rows(*signal), project, rows);
            framed.reserve(RECORD_HEADER + payload.len());
            framed.extend_from_slice(&record_header_tagged(*seq, tag, &payload));
            framed.extend_from_slice(&payload);
            last = last.max(*seq);
        }
        if !framed.is_empty() {
            self.append(&framed)?;
        }
        self.last_written = self.last_written.max(last);
        Ok(())
    }

    /// Closes the current segment and starts the next one. Returns every closed segment (the one just closed
    /// included): a flush covering everything written so far may remove them once it committed.
    pub fn rotate(&mut self) -> Result<Vec<u64>, StorageError> {
        let (next, file) = create_segment(&self.dir, self.segment_id)?;
        self.closed.push(self.segment_id);
        self.file = file;
        self.segment_id = next;
        self.len = 0;
        // Forget the closed segments already removed by earlier flushes.
        let dir = self.dir.clone();
        self.closed.retain(|id| segment_path(&dir, *id).exists());
        Ok(self.closed.clone())
    }

    /// Deletes the given closed segments (their records are all at or below the checkpoint). Returns the bytes
    /// freed. A segment already gone is not an error.
    pub fn remove_segments(dir: &Path, ids: &[u64]) -> Result<u64, StorageError> {
        let mut freed = 0;
        for &id in ids {
            let path = segment_path(dir, id);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(&path) {
                Ok(()) => freed += size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::Io { action: "removing flushed WAL segment", path, source: e }),
            }
        }
        Ok(freed)
    }

    /// The current segment's id.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `Write::write_all` for vectored writes (the standard library's is not stable yet).
fn write_all_vectored(file: &mut File, mut parts: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match file.write_vectored(parts) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "failed to write whole WAL group")),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Parses one record at the start of `data`, or `None` when it is not a complete, intact record. The length is
/// used only after the header's crc holds, and only within `data` and `max_record_bytes`.
fn parse_record(data: &[u8], max_record_bytes: usize) -> Option<Parsed<'_>> {
    if data.len() < RECORD_HEADER || data[0..4] != MAGIC {
        return None;
    }
    if crc32fast::hash(&data[..21]) != le_u32(&data[21..25]) {
        return None;
    }
    let payload_len = le_u32(&data[4..8]) as usize;
    if payload_len > max_record_bytes || payload_len > data.len() - RECORD_HEADER {
        return None;
    }
    let payload = &data[RECORD_HEADER..RECORD_HEADER + payload_len];
    if crc32fast::hash(payload) != le_u32(&data[17..21]) {
        return None;
    }
    Some(Parsed { seq: le_u64(&data[8..16]), tag: data[16], payload, len: RECORD_HEADER + payload_len })
}

/// Parses one old-format record (`[len][crc][seq][tag][payload]`, written before the magic word).
fn parse_old_record(data: &[u8], max_record_bytes: usize) -> Option<Parsed<'_>> {
    if data.len() < OLD_HEADER {
        return None;
    }
    let body_len = le_u32(&data[0..4]) as usize;
    if body_len < 9 || body_len - 9 > max_record_bytes || body_len > data.len() - OLD_HEADER {
        return None;
    }
    let body = &data[OLD_HEADER..OLD_HEADER + body_len];
    if crc32fast::hash(body) != le_u32(&data[4..8]) {
        return None;
    }
    Some(Parsed { seq: le_u64(&body[0..8]), tag: body[8], payload: &body[9..], len: OLD_HEADER + body_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_other_than_default_rides_in_the_record_and_default_records_are_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let team = Project::parse("team-a").unwrap();
        let mut buf = Vec::new();
        for (seq, project) in [(1, Project::default_project()), (2, team.clone())] {
            let (tag, payload) =
                project_payload(RecordKind::OtlpTraces, &project, bytes::Bytes::from_static(b"\x0a\x00"));
            buf.extend_from_slice(&record_header_tagged(seq, tag, &payload));
            buf.extend_from_slice(&payload);
        }
        let (tag, _) = project_payload(RecordKind::OtlpTraces, &Project::default_project(), bytes::Bytes::new());
        assert_eq!(tag, OTLP_TRACES_TAG, "default records keep the tag they always had");
        std::fs::write(segment_path(dir.path(), 1), &buf).unwrap();
        let rec = Wal::recover(dir.path(), 1 << 20).unwrap();
        let got: Vec<(&str, bool)> = rec
            .records
            .iter()
            .map(|r| (r.project.as_str(), matches!(&r.data, RecordData::OtlpTraces(b) if b == b"\x0a\x00")))
            .collect();
        assert_eq!(got, [("default", true), ("team-a", true)]);
        // A prefix that is no project name is damage, not a directory to write to.
        assert!(split_project(OTLP_TRACES_TAG | PROJECT_FLAG, b"\x02..rest").is_none());
    }
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    const MAX: usize = 64 * 1024 * 1024;

    fn batch(v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    #[test]
    fn appends_recover_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert!(rec.records.is_empty());
        let mut wal = Wal::open(&wal_dir, 1, Vec::new(), true).unwrap();
        let mut buf = Vec::new();
        for v in 1..=3 {
            let seq = wal.reserve(1);
            frame_record(&mut buf, seq, RecordKind::Rows(Signal::Spans), &encode_batch(&batch(v)).unwrap());
        }
        let seq = wal.reserve(1);
        frame_record(&mut buf, seq, RecordKind::OtlpTraces, b"\x0a\x00");
        wal.append(&buf).unwrap();
        // A torn record: half of a fourth one.
        let mut torn = Vec::new();
        frame_record(&mut torn, 5, RecordKind::Rows(Signal::Logs), &encode_batch(&batch(5)).unwrap());
        wal.append(&torn[..torn.len() / 2]).unwrap();
        drop(wal);

        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(rec.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        match &rec.records[1].data {
            RecordData::Rows(Signal::Spans, b) => assert_eq!(b, &batch(2)),
            other => panic!("record 2 came back as {other:?}"),
        }
        match &rec.records[3].data {
            RecordData::OtlpTraces(bytes) => assert_eq!(bytes, b"\x0a\x00"),
            other => panic!("record 4 came back as {other:?}"),
        }
        // The torn tail was cut: recovering again sees the same and the segment ends cleanly.
        let rec2 = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(rec2.records.len(), 4);
        assert_eq!(rec2.pending_bytes, buf.len() as u64);

        write_checkpoint(&wal_dir, 3).unwrap();
        let rec3 = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(rec3.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(rec3.checkpoint, 3);
    }

    /// Records written as header and payload pieces read back like framed ones, across more pieces than one
    /// `writev` takes (IOV_MAX is 1024 on Linux).
    #[test]
    fn vectored_appends_recover() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        Wal::recover(&wal_dir, MAX).unwrap();
        let mut wal = Wal::open(&wal_dir, 1, Vec::new(), true).unwrap();
        let payloads: Vec<Vec<u8>> = (0..1500u32).map(|i| i.to_le_bytes().repeat(i as usize % 7 + 1)).collect();
        let headers: Vec<_> =
            payloads.iter().map(|p| record_header(wal.reserve(1), RecordKind::OtlpTraces, p)).collect();
        let mut parts: Vec<IoSlice<'_>> =
            headers.iter().zip(&payloads).flat_map(|(h, p)| [IoSlice::new(h), IoSlice::new(p)]).collect();
        wal.append_parts(&mut parts, payloads.len() as u64).unwrap();
        drop(wal);
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(rec.records.len(), payloads.len());
        for (i, (record, payload)) in rec.records.iter().zip(&payloads).enumerate() {
            assert_eq!(record.seq, i as u64 + 1);
            match &record.data {
                RecordData::OtlpTraces(bytes) => assert_eq!(bytes, payload),
                other => panic!("record {} came back as {other:?}", record.seq),
            }
        }
    }

    #[test]
    fn corrupted_byte_fails_crc() {
        let mut buf = Vec::new();
        frame_record(&mut buf, 7, RecordKind::Rows(Signal::Metrics), b"payload");
        assert!(parse_record(&buf, MAX).is_some());
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(parse_record(&buf, MAX).is_none());
    }

    /// Writes `n` span-row records (seq 1..=n) in one segment and returns the WAL dir, the segment path and the
    /// offset at which each record starts.
    fn segment_of(dir: &Path, n: i64) -> (PathBuf, PathBuf, Vec<usize>) {
        let wal_dir = dir.join("wal");
        Wal::recover(&wal_dir, MAX).unwrap();
        let mut wal = Wal::open(&wal_dir, 1, Vec::new(), true).unwrap();
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for v in 1..=n {
            starts.push(buf.len());
            let seq = wal.reserve(1);
            frame_record(&mut buf, seq, RecordKind::Rows(Signal::Spans), &encode_batch(&batch(v)).unwrap());
        }
        wal.append(&buf).unwrap();
        let path = segment_path(&wal_dir, wal.segment_id());
        (wal_dir, path, starts)
    }

    fn seqs(rec: &Recovered) -> Vec<u64> {
        rec.records.iter().map(|r| r.seq).collect()
    }

    fn aside_files(wal_dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corrupt_dir(wal_dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// A flipped bit in the payload, in the length field, or in the magic word of a record in the middle of a
    /// segment loses that record only; its bytes are kept aside and the segment is not cut.
    #[test]
    fn a_corrupt_record_mid_segment_is_skipped_and_kept_aside() {
        for (what, at) in [("payload", RECORD_HEADER + 30), ("length", 5), ("magic", 1), ("header crc", 22)] {
            let dir = tempfile::tempdir().unwrap();
            let (wal_dir, path, starts) = segment_of(dir.path(), 10);
            let mut bytes = std::fs::read(&path).unwrap();
            let original = bytes.clone();
            bytes[starts[4] + at] ^= 0x04;
            std::fs::write(&path, &bytes).unwrap();
            let rec = Wal::recover(&wal_dir, MAX).unwrap();
            assert_eq!(seqs(&rec), vec![1, 2, 3, 4, 6, 7, 8, 9, 10], "{what}");
            assert_eq!((rec.corrupt_records, rec.corrupt_bytes), (1, (starts[5] - starts[4]) as u64), "{what}");
            assert_eq!(rec.torn_bytes, 0);
            match &rec.records[4].data {
                RecordData::Rows(Signal::Spans, b) => assert_eq!(b, &batch(6)),
                other => panic!("{other:?}"),
            }
            let aside = aside_files(&wal_dir);
            assert_eq!(aside.len(), 1, "{what}: {aside:?}");
            assert_eq!(std::fs::read(&aside[0]).unwrap(), &bytes[starts[4]..starts[5]], "{what}");
            assert_eq!(std::fs::read(&path).unwrap().len(), original.len(), "{what}: the segment was cut");
        }
    }

    /// Property: whatever damage a segment takes (bit flips, overwritten runs, bytes cut out or spliced in, a cut
    /// tail), recovery never panics, every record whose bytes were left untouched comes back with its rows, and no
    /// record whose bytes changed is replayed. `WAL_PROPTEST_CASES` raises the count for longer runs.
    #[test]
    fn random_damage_loses_only_the_damaged_records() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let cases: usize = std::env::var("WAL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
        let mut rng = StdRng::seed_from_u64(0x3a1_5e9);
        for case in 0..cases {
            let dir = tempfile::tempdir().unwrap();
            let (wal_dir, path, mut starts) = segment_of(dir.path(), 12);
            let original = std::fs::read(&path).unwrap();
            starts.push(original.len());
            let mut bytes = original.clone();
            // Damage is applied at offsets of the original, last first, so that offsets of earlier records hold.
            let mut damaged = [false; 12];
            let mut spots: Vec<usize> =
                (0..rng.random_range(1..4)).map(|_| rng.random_range(0..original.len())).collect();
            spots.sort_unstable_by(|a, b| b.cmp(a));
            let mut truncated_at = None;
            for at in spots {
                if at >= bytes.len() {
                    continue; // cut off by a truncation at the same offset
                }
                let record = starts.partition_point(|&s| s <= at) - 1;
                match rng.random_range(0..5) {
                    0 => bytes[at] ^= 1 << rng.random_range(0..8),
                    1 => {
                        let end = (at + rng.random_range(1..64)).min(starts[record + 1]).min(bytes.len());
                        bytes[at..end].iter_mut().for_each(|b| *b ^= rng.random_range(1..=255u8));
                    }
                    2 => {
                        let end = (at + rng.random_range(1..32)).min(starts[record + 1]).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    3 => {
                        let junk: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                        bytes.splice(at..at, junk);
                        if at == starts[record] {
                            continue; // junk between two records: both are intact
                        }
                    }
                    _ => {
                        bytes.truncate(at);
                        truncated_at = Some(truncated_at.map_or(at, |t: usize| t.min(at)));
                    }
                }
                damaged[record] = true;
            }
            if let Some(at) = truncated_at {
                let first = starts.partition_point(|&s| s <= at) - 1;
                damaged[first..].iter_mut().for_each(|d| *d = true);
            }
            std::fs::write(&path, &bytes).unwrap();
            let rec = Wal::recover(&wal_dir, MAX).unwrap();
            let intact: Vec<u64> = (0..12).filter(|&i| !damaged[i]).map(|i| i as u64 + 1).collect();
            let got = seqs(&rec);
            for seq in &intact {
                assert!(got.contains(seq), "case {case}: intact record {seq} lost; recovered {got:?}");
            }
            for r in &rec.records {
                assert!(!damaged[r.seq as usize - 1], "case {case}: damaged record {} replayed", r.seq);
                match &r.data {
                    RecordData::Rows(Signal::Spans, b) => assert_eq!(b, &batch(r.seq as i64), "case {case}"),
                    other => panic!("case {case}: {other:?}"),
                }
            }
        }
    }

    /// Garbage between records (bytes that happen to contain the magic word) is skipped the same way.
    #[test]
    fn garbage_between_records_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, path, starts) = segment_of(dir.path(), 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let garbage: Vec<u8> = [&MAGIC[..], &[0xff; 40][..], &MAGIC[..], &[1, 2, 3]].concat();
        bytes.splice(starts[1]..starts[1], garbage.iter().copied());
        std::fs::write(&path, &bytes).unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(seqs(&rec), vec![1, 2, 3]);
        assert_eq!((rec.corrupt_records, rec.corrupt_bytes), (1, garbage.len() as u64));
    }

    /// A torn tail is cut, but its bytes are kept aside first.
    #[test]
    fn a_torn_tail_is_kept_aside_then_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, path, starts) = segment_of(dir.path(), 4);
        let bytes = std::fs::read(&path).unwrap();
        let cut = starts[3] + (bytes.len() - starts[3]) / 2;
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(seqs(&rec), vec![1, 2, 3]);
        assert_eq!((rec.corrupt_records, rec.torn_bytes), (0, (cut - starts[3]) as u64));
        assert_eq!(std::fs::read(&path).unwrap(), &bytes[..starts[3]]);
        let aside = aside_files(&wal_dir);
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(&aside[0]).unwrap(), &bytes[starts[3]..cut]);
    }

    /// A length field is never trusted past the bytes at hand or the largest record: a header claiming 4 GiB is
    /// damage, not an allocation.
    #[test]
    fn lengths_are_bounded_by_the_file_and_the_largest_record() {
        let mut buf = Vec::new();
        frame_record(&mut buf, 1, RecordKind::OtlpTraces, &[7u8; 100]);
        assert!(parse_record(&buf, 100).is_some());
        assert!(parse_record(&buf, 99).is_none(), "a record above the limit is not a record");
        assert!(parse_record(&buf[..buf.len() - 1], MAX).is_none());
        // A forged header with a valid crc and a huge length.
        let mut forged = record_header(2, RecordKind::OtlpTraces, b"");
        forged[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&forged[..21]);
        forged[21..25].copy_from_slice(&crc.to_le_bytes());
        assert!(parse_record(&forged, usize::MAX).is_none());
        let mut old = vec![0xffu8, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        old.extend_from_slice(&[0; 16]);
        assert!(parse_old_record(&old, MAX).is_none());
    }

    /// Segments written before the magic word are still read.
    #[test]
    fn old_format_segments_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let mut buf = Vec::new();
        for (seq, payload) in [(1u64, encode_batch(&batch(1)).unwrap()), (2, b"\x0a\x00".to_vec())] {
            let tag = if seq == 1 { Signal::Logs.tag() } else { OTLP_TRACES_TAG };
            let mut body = seq.to_le_bytes().to_vec();
            body.push(tag);
            body.extend_from_slice(&payload);
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        std::fs::write(segment_path(&wal_dir, 3), &buf).unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(seqs(&rec), vec![1, 2]);
        assert!(matches!(&rec.records[0].data, RecordData::Rows(Signal::Logs, b) if b == &batch(1)));
        assert!(matches!(&rec.records[1].data, RecordData::OtlpTraces(b) if b == b"\x0a\x00"));
        assert_eq!((rec.next_seq, rec.segments.clone()), (3, vec![3]));
    }

    /// A segment copied under other names, the largest id among them, is replayed once, and a WAL opened after it
    /// still finds a free segment name.
    #[test]
    fn copied_segments_are_replayed_once_and_the_largest_id_does_not_stop_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, path, _) = segment_of(dir.path(), 3);
        std::fs::copy(&path, segment_path(&wal_dir, 999)).unwrap();
        std::fs::copy(&path, segment_path(&wal_dir, u64::MAX)).unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(seqs(&rec), vec![1, 2, 3]);
        assert_eq!(rec.duplicate_records, 6);
        let mut wal = Wal::open(&wal_dir, rec.next_seq, rec.segments.clone(), true).unwrap();
        assert!(![1, 999, u64::MAX].contains(&wal.segment_id()));
        let mut buf = Vec::new();
        frame_record(&mut buf, wal.reserve(1), RecordKind::OtlpTraces, b"x");
        wal.append(&buf).unwrap();
        let closed = wal.rotate().unwrap();
        assert_eq!(closed.len(), 4, "{closed:?}");
        drop(wal);
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(seqs(&rec), vec![1, 2, 3, 4]);
        Wal::remove_segments(&wal_dir, &closed).unwrap();
        assert_eq!(seqs(&Wal::recover(&wal_dir, MAX).unwrap()), Vec::<u64>::new());
    }

    /// A checkpoint above every record cannot be this WAL's: it is not trusted to skip them.
    #[test]
    fn a_checkpoint_above_every_record_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, _, _) = segment_of(dir.path(), 3);
        write_checkpoint(&wal_dir, 1_000_000).unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!(seqs(&rec), vec![1, 2, 3]);
        assert!(!rec.checkpoint_trusted);
        assert_eq!(rec.next_seq, 1_000_001);
        write_checkpoint(&wal_dir, 2).unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!((seqs(&rec), rec.checkpoint_trusted, rec.next_seq), (vec![3], true, 4));
        std::fs::write(wal_dir.join("checkpoint"), "garbage").unwrap();
        let rec = Wal::recover(&wal_dir, MAX).unwrap();
        assert_eq!((seqs(&rec), rec.checkpoint_trusted), (vec![1, 2, 3], false));
    }

    /// An unlinked segment is noticed after the write, and the lost records are written again to a new one.
    #[test]
    fn a_deleted_wal_dir_is_noticed_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, _, _) = segment_of(dir.path(), 2);
        let mut wal = Wal::open(&wal_dir, 3, Vec::new(), true).unwrap();
        std::fs::remove_dir_all(&wal_dir).unwrap();
        assert!(wal.segment_lost());
        let mut buf = Vec::new();
        frame_record(&mut buf, wal.reserve(1), RecordKind::Rows(Signal::Spans), &encode_batch(&batch(3)).unwrap());
        assert!(matches!(wal.append(&buf), Err(StorageError::WalVanished { .. })));
        let lost: Vec<(u64, Signal, Project, RecordBatch)> =
            (1..=3).map(|v| (v as u64, Signal::Spans, Project::default(), batch(v))).collect();
        wal.replace_lost_segment(&lost).unwrap();
        assert!(!wal.segment_lost());
        assert_eq!(wal.last_written(), 3);
        drop(wal);
        assert_eq!(seqs(&Wal::recover(&wal_dir, MAX).unwrap()), vec![1, 2, 3]);
    }
}
