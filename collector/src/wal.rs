//! The write-ahead log: every accepted batch is appended here, and fsynced, before its request is acknowledged.
//!
//! Layout: `DATA/wal/{segment:020}.wal` files of records, plus `DATA/wal/checkpoint` holding the highest
//! sequence number whose rows are safely in committed Parquet files. A record is
//!
//! ```text
//! [len: u32 LE][crc32 of the rest: u32 LE][seq: u64 LE][kind tag: u8][payload]
//! ```
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
//! request of the group gets a retryable error.
//!
//! Recovery ([`Wal::recover`]) reads the segments after the checkpoint and stops at a torn tail (a record cut
//! short or failing its crc, which can only be one never acknowledged).

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::path::{Path, PathBuf};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::StorageError;
use crate::schema::Signal;

const HEADER: usize = 8;
const SEGMENT_SUFFIX: &str = ".wal";

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

/// Bytes of a record before its payload: length, crc, sequence number and tag.
pub const RECORD_HEADER: usize = HEADER + 8 + 1;

/// The bytes of a record that come before `payload` (the record is these, then the payload itself).
pub fn record_header(seq: u64, kind: RecordKind, payload: &[u8]) -> [u8; RECORD_HEADER] {
    let body_len = 8 + 1 + payload.len();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&[kind.tag()]);
    hasher.update(payload);
    let mut header = [0u8; RECORD_HEADER];
    header[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    header[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16] = kind.tag();
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
    fsync: bool,
}

/// What [`Wal::recover`] found.
#[derive(Debug)]
pub struct Recovered {
    /// Records after the checkpoint, in order.
    pub records: Vec<WalRecord>,
    /// The checkpoint: rows of every record up to it are in committed Parquet files.
    pub checkpoint: u64,
    /// Bytes still in the segments.
    pub pending_bytes: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

/// The segment ids in `dir`, ascending.
fn segment_ids(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StorageError::io("listing WAL directory", dir))? {
        let entry = entry.map_err(StorageError::io("listing WAL directory", dir))?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)).and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// Reads the checkpoint (0 when there is none).
pub fn read_checkpoint(dir: &Path) -> Result<u64, StorageError> {
    let path = checkpoint_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| StorageError::CorruptWal {
            path: path.clone(),
            offset: 0,
            detail: format!("checkpoint is not a number: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StorageError::Io { action: "reading", path, source: e }),
    }
}

/// Durably records that every record up to `seq` is in committed Parquet files.
pub fn write_checkpoint(dir: &Path, seq: u64) -> Result<(), StorageError> {
    let path = checkpoint_path(dir);
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp).map_err(StorageError::io("creating", &tmp))?;
    f.write_all(seq.to_string().as_bytes()).map_err(StorageError::io("writing", &tmp))?;
    f.sync_all().map_err(StorageError::io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(StorageError::io("renaming", &tmp))?;
    sync_dir(dir)
}

/// fsyncs a directory, so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StorageError::io("syncing directory", dir))
}

impl Wal {
    /// Reads every record after the checkpoint from `dir` (created if missing), cutting off a torn tail.
    pub fn recover(dir: &Path) -> Result<Recovered, StorageError> {
        std::fs::create_dir_all(dir).map_err(StorageError::io("creating WAL directory", dir))?;
        let checkpoint = read_checkpoint(dir)?;
        let mut records = Vec::new();
        let mut pending_bytes = 0;
        for id in segment_ids(dir)? {
            let path = segment_path(dir, id);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(StorageError::io("reading WAL segment", &path))?;
            let mut offset = 0usize;
            while offset < data.len() {
                let Some(record) = parse_record(&data[offset..]) else {
                    tracing::warn!(
                        segment = %path.display(), offset, dropped_bytes = data.len() - offset,
                        "WAL segment ends in a torn record (never acknowledged); cutting it off"
                    );
                    let f = OpenOptions::new().write(true).open(&path).map_err(StorageError::io("opening", &path))?;
                    f.set_len(offset as u64).map_err(StorageError::io("truncating torn WAL tail", &path))?;
                    f.sync_all().map_err(StorageError::io("syncing", &path))?;
                    break;
                };
                let (seq, tag, payload, len) = record;
                offset += len;
                if seq <= checkpoint {
                    continue;
                }
                let kind = RecordKind::from_tag(tag).ok_or_else(|| StorageError::CorruptWal {
                    path: path.clone(),
                    offset: offset as u64,
                    detail: format!("unknown record tag {tag}"),
                })?;
                let data = match kind {
                    RecordKind::OtlpTraces => RecordData::OtlpTraces(payload.to_vec()),
                    RecordKind::Rows(signal) => {
                        let batch = decode_batch(payload).map_err(|e| StorageError::CorruptWal {
                            path: path.clone(),
                            offset: offset as u64,
                            detail: e.to_string(),
                        })?;
                        RecordData::Rows(signal, batch)
                    }
                };
                records.push(WalRecord { seq, data });
            }
            pending_bytes += offset as u64;
        }
        Ok(Recovered { records, checkpoint, pending_bytes })
    }

    /// Opens a fresh segment for appending after recovery. `next_seq` continues after everything seen.
    pub fn open(dir: &Path, next_seq: u64, fsync: bool) -> Result<Wal, StorageError> {
        let segment_id = segment_ids(dir)?.last().map_or(1, |id| id + 1);
        let path = segment_path(dir, segment_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(StorageError::io("creating WAL segment", &path))?;
        sync_dir(dir)?;
        Ok(Wal { dir: dir.to_path_buf(), segment_id, file, len: 0, next_seq, fsync })
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
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
        self.append_parts(&mut [IoSlice::new(framed)])
    }

    /// [`Wal::append`] for records given as pieces, written in order with vectored writes: each record's
    /// [`record_header`] and its payload where it already lies, so a request's bytes are not copied into a
    /// framing buffer first (they are most of what ingest moves).
    pub fn append_parts(&mut self, parts: &mut [IoSlice<'_>]) -> Result<(), StorageError> {
        let path = segment_path(&self.dir, self.segment_id);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let result = write_all_vectored(&mut self.file, parts)
            .and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.len += len as u64;
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

    /// Closes the current segment and starts the next one. Returns the closed segment's id.
    pub fn rotate(&mut self) -> Result<u64, StorageError> {
        let closed = self.segment_id;
        let next = closed + 1;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(StorageError::io("creating WAL segment", &path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.segment_id = next;
        self.len = 0;
        Ok(closed)
    }

    /// Deletes every segment before the current one (their records are all at or below the checkpoint).
    /// Returns the bytes freed.
    pub fn remove_closed_segments(dir: &Path, current: u64) -> Result<u64, StorageError> {
        let mut freed = 0;
        for id in segment_ids(dir)? {
            if id >= current {
                continue;
            }
            let path = segment_path(dir, id);
            freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(StorageError::io("removing flushed WAL segment", &path))?;
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

/// Parses one record at the start of `data`: `(seq, tag, payload, total length)`, or `None` when it is torn.
fn parse_record(data: &[u8]) -> Option<(u64, u8, &[u8], usize)> {
    if data.len() < HEADER {
        return None;
    }
    let body_len = u32::from_le_bytes(data[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().ok()?);
    if body_len < 9 || data.len() < HEADER + body_len {
        return None;
    }
    let body = &data[HEADER..HEADER + body_len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    Some((seq, body[8], &body[9..], HEADER + body_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    #[test]
    fn appends_recover_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let rec = Wal::recover(&wal_dir).unwrap();
        assert!(rec.records.is_empty());
        let mut wal = Wal::open(&wal_dir, 1, true).unwrap();
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

        let rec = Wal::recover(&wal_dir).unwrap();
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
        let rec2 = Wal::recover(&wal_dir).unwrap();
        assert_eq!(rec2.records.len(), 4);
        assert_eq!(rec2.pending_bytes, buf.len() as u64);

        write_checkpoint(&wal_dir, 3).unwrap();
        let rec3 = Wal::recover(&wal_dir).unwrap();
        assert_eq!(rec3.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(rec3.checkpoint, 3);
    }

    /// Records written as header and payload pieces read back like framed ones, across more pieces than one
    /// `writev` takes (IOV_MAX is 1024 on Linux).
    #[test]
    fn vectored_appends_recover() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        Wal::recover(&wal_dir).unwrap();
        let mut wal = Wal::open(&wal_dir, 1, true).unwrap();
        let payloads: Vec<Vec<u8>> = (0..1500u32).map(|i| i.to_le_bytes().repeat(i as usize % 7 + 1)).collect();
        let headers: Vec<_> =
            payloads.iter().map(|p| record_header(wal.reserve(1), RecordKind::OtlpTraces, p)).collect();
        let mut parts: Vec<IoSlice<'_>> =
            headers.iter().zip(&payloads).flat_map(|(h, p)| [IoSlice::new(h), IoSlice::new(p)]).collect();
        wal.append_parts(&mut parts).unwrap();
        drop(wal);
        let rec = Wal::recover(&wal_dir).unwrap();
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
        assert!(parse_record(&buf).is_some());
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(parse_record(&buf).is_none());
    }
}
