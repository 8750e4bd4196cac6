//! One webhook's outbox: the alert events it has not received yet, one file each, under
//! `DATA/alerts/outbox/NAME/`.
//!
//! An event is written here before its first delivery attempt and deleted once the webhook answered 2xx, so an
//! event survives any number of failed attempts and restarts: nothing is given up after `alerts.max_attempts`.
//! Each file is `<seq, 20 digits>.json`, the event as the alert log holds it, written whole (temporary file, fsync,
//! rename, fsync of the directory). The outbox is bounded per webhook by `alerts.outbox_max_events` and
//! `alerts.outbox_max_bytes`: past them a new event is not queued for that webhook, which the log says and
//! `tailscope_webhook_events_dropped_total` counts (the event stays in the alert log and the `alerts` table).
//!
//! Files are read as hostile: a file too large, unreadable, not an event, or not named as one is moved to
//! `corrupt/` inside the outbox and counted, never a panic and never a reason to stop the others. An event that
//! cannot be written (disk full) is kept in memory and delivered all the same; the webhook's delivery progress is
//! not advanced past it, so after a crash it is taken from the alert log again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tailscope_core::alerts::AlertEvent;
use tailscope_core::cost::{AlertsConfig, MAX_OUTBOX_EVENT_BYTES};
use thiserror::Error;

use super::webhook::{WebhookMetrics, write_atomically};

/// Where unreadable files are set aside, inside an outbox.
pub const CORRUPT_DIR: &str = "corrupt";

/// Why an event was not queued, or not stored on disk.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The outbox holds as many events or bytes as it may.
    #[error(
        "the outbox {dir} is full ({events} events, {bytes} bytes; alerts.outbox_max_events = {max_events}, \
         alerts.outbox_max_bytes = {max_bytes}): the event is not queued for this webhook"
    )]
    Full { dir: PathBuf, events: usize, bytes: u64, max_events: usize, max_bytes: u64 },
    /// The event alone is larger than an outbox file may be.
    #[error("the event is {bytes} bytes, more than an outbox file may hold ({MAX_OUTBOX_EVENT_BYTES}): not queued")]
    TooLarge { bytes: usize },
    /// The file could not be written; the event is kept in memory and delivered all the same.
    #[error("cannot write {path} ({source}); the event is kept in memory until delivered")]
    Write { path: PathBuf, source: std::io::Error },
    /// The outbox directory cannot be created or listed.
    #[error("cannot open the webhook outbox {dir}: {source}")]
    Open { dir: PathBuf, source: std::io::Error },
}

impl OutboxError {
    /// The `reason` label of `tailscope_webhook_events_dropped_total` for an event not queued; `None` when the event
    /// is queued all the same (in memory).
    pub fn dropped_reason(&self) -> Option<&'static str> {
        match self {
            OutboxError::Full { .. } => Some("outbox_full"),
            OutboxError::TooLarge { .. } => Some("too_large"),
            OutboxError::Write { .. } | OutboxError::Open { .. } => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    /// Not before this: an event the webhook refused waits `alerts.outbox_max_backoff`.
    retry_at: Option<Instant>,
    /// The event, when its file could not be written.
    memory: Option<Arc<AlertEvent>>,
}

/// One webhook's outbox. Its methods do blocking file I/O: call them off the async runtime's threads.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    max_events: usize,
    max_bytes: u64,
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
    /// The highest sequence number taken in (queued or not).
    highest: u64,
    /// Entries held in memory only.
    unstored: BTreeSet<u64>,
    metrics: WebhookMetrics,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

/// The sequence number of a file named as an outbox entry.
fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads an event file, bounded: `Err` says what is wrong with it.
fn read_event(path: &Path, seq: u64) -> Result<AlertEvent, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_OUTBOX_EVENT_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_OUTBOX_EVENT_BYTES {
        return Err(format!("larger than {MAX_OUTBOX_EVENT_BYTES} bytes"));
    }
    let event: AlertEvent = serde_json::from_slice(&bytes).map_err(|e| format!("not an alert event: {e}"))?;
    if event.seq != seq {
        return Err(format!("holds event {} under the name of event {seq}", event.seq));
    }
    Ok(event)
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir` and takes in the events its files hold; files that are not events
    /// are set aside and counted, leftovers of an interrupted write removed.
    pub fn open(dir: PathBuf, config: &AlertsConfig, metrics: WebhookMetrics) -> Result<Outbox, OutboxError> {
        let open_err = |source| OutboxError::Open { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(open_err)?;
        let mut outbox = Outbox {
            max_events: config.outbox_max_events,
            max_bytes: config.outbox_max_bytes as u64,
            entries: BTreeMap::new(),
            bytes: 0,
            highest: 0,
            unstored: BTreeSet::new(),
            metrics,
            dir: dir.clone(),
        };
        for entry in std::fs::read_dir(&dir).map_err(open_err)? {
            let entry = entry.map_err(open_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // The file's own type: a symbolic link is not followed.
            let file_type = entry.file_type().map_err(open_err)?;
            if file_type.is_dir() && name == CORRUPT_DIR {
                continue;
            }
            if file_type.is_file() && name.ends_with(".tmp") {
                // A write interrupted before its rename: the event is still in the alert log.
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), "cannot remove an unfinished outbox file: {e}");
                }
                continue;
            }
            let Some(seq) = seq_of(&name).filter(|_| file_type.is_file()) else {
                outbox.set_aside(&path, "not an outbox file (named <20 digits>.json)");
                continue;
            };
            match read_event(&path, seq) {
                Ok(_) => {
                    let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    outbox.insert(seq, Entry { bytes, retry_at: None, memory: None });
                }
                Err(why) => outbox.set_aside(&path, &why),
            }
        }
        if outbox.entries.len() > outbox.max_events || outbox.bytes > outbox.max_bytes {
            tracing::warn!(
                dir = %dir.display(), events = outbox.entries.len(), bytes = outbox.bytes,
                "the webhook outbox holds more than alerts.outbox_max_events / outbox_max_bytes allow; every event \
                 is kept and sent, new ones are not queued until it is below them"
            );
        }
        Ok(outbox)
    }

    fn insert(&mut self, seq: u64, entry: Entry) {
        self.bytes += entry.bytes;
        self.highest = self.highest.max(seq);
        if let Some(old) = self.entries.insert(seq, entry) {
            self.bytes -= old.bytes;
        }
        self.publish();
    }

    fn publish(&self) {
        self.metrics.outbox_events.set(i64::try_from(self.entries.len()).unwrap_or(i64::MAX));
        self.metrics.outbox_bytes.set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }

    /// Moves `path` into `corrupt/`, counted; removes it if it cannot be moved.
    fn set_aside(&self, path: &Path, why: &str) {
        self.metrics.outbox_corrupt.inc();
        let aside = self.dir.join(CORRUPT_DIR);
        let target = aside.join(path.file_name().unwrap_or_default());
        let moved = std::fs::create_dir_all(&aside).and_then(|()| std::fs::rename(path, &target));
        match moved {
            Ok(()) => tracing::error!(
                path = %path.display(), kept = %target.display(), "an outbox file cannot be read ({why}); set aside"
            ),
            Err(e) => {
                let removed = std::fs::remove_file(path);
                tracing::error!(
                    path = %path.display(),
                    "an outbox file cannot be read ({why}) nor set aside ({e}); removed: {}", removed.is_ok()
                );
            }
        }
    }

    /// Queues `event`: written to its file, or kept in memory when the write fails (`Err(Write)`, the event is
    /// queued all the same). `Err(Full | TooLarge)`: not queued. An event already queued is left as it is.
    pub fn push(&mut self, event: &Arc<AlertEvent>) -> Result<(), OutboxError> {
        let seq = event.seq;
        if self.entries.contains_key(&seq) {
            return Ok(());
        }
        self.highest = self.highest.max(seq);
        let bytes = serde_json::to_vec(event.as_ref()).unwrap_or_default();
        if bytes.is_empty() || bytes.len() > MAX_OUTBOX_EVENT_BYTES {
            return Err(OutboxError::TooLarge { bytes: bytes.len() });
        }
        let size = bytes.len() as u64;
        if self.entries.len() >= self.max_events || self.bytes + size > self.max_bytes {
            return Err(OutboxError::Full {
                dir: self.dir.clone(),
                events: self.entries.len(),
                bytes: self.bytes,
                max_events: self.max_events,
                max_bytes: self.max_bytes,
            });
        }
        let path = self.dir.join(file_name(seq));
        match write_atomically(&path, &bytes) {
            Ok(()) => {
                self.insert(seq, Entry { bytes: size, retry_at: None, memory: None });
                Ok(())
            }
            Err(source) => {
                self.insert(seq, Entry { bytes: size, retry_at: None, memory: Some(event.clone()) });
                self.unstored.insert(seq);
                Err(OutboxError::Write { path, source })
            }
        }
    }

    /// The oldest event to send now: the queue's head, skipping events refused until later.
    pub fn next(&self, now: Instant) -> Option<u64> {
        self.entries.iter().find(|(_, e)| e.retry_at.is_none_or(|t| t <= now)).map(|(seq, _)| *seq)
    }

    /// When the next refused event may be tried again, if one waits.
    pub fn next_retry(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.retry_at).min()
    }

    /// The event `seq`, read from its file (bounded). A file that is not that event is set aside and counted, and a
    /// file removed by hand gives the event up; either way it leaves the outbox and `None` is returned.
    pub fn read(&mut self, seq: u64) -> Option<Arc<AlertEvent>> {
        let entry = self.entries.get(&seq)?;
        if let Some(event) = &entry.memory {
            return Some(event.clone());
        }
        let path = self.dir.join(file_name(seq));
        let result = read_event(&path, seq);
        match result {
            Ok(event) => Some(Arc::new(event)),
            Err(why) => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    self.set_aside(&path, &why);
                } else {
                    tracing::warn!(path = %path.display(), "an outbox file was removed: the event is not sent");
                }
                self.forget(seq);
                None
            }
        }
    }

    fn forget(&mut self, seq: u64) {
        if let Some(old) = self.entries.remove(&seq) {
            self.bytes -= old.bytes;
        }
        self.unstored.remove(&seq);
        self.publish();
    }

    /// Removes the delivered event `seq`.
    pub fn remove(&mut self, seq: u64) {
        let stored = self.entries.get(&seq).is_some_and(|e| e.memory.is_none());
        self.forget(seq);
        if stored {
            let path = self.dir.join(file_name(seq));
            if let Err(e) = std::fs::remove_file(&path) {
                // It would be sent again after a restart: at least once, as the receiver is told.
                tracing::warn!(path = %path.display(), "cannot remove a delivered event from the outbox: {e}");
            }
        }
    }

    /// Holds `seq` back until `until` (the webhook refused it).
    pub fn refuse(&mut self, seq: u64, until: Instant) {
        if let Some(e) = self.entries.get_mut(&seq) {
            e.retry_at = Some(until);
        }
    }

    /// The highest sequence number below which every event taken in is on disk, delivered or deliberately not
    /// queued: how far the webhook's delivery progress may go.
    pub fn progress(&self) -> u64 {
        match self.unstored.first() {
            Some(first) => first - 1,
            None => self.highest,
        }
    }

    /// Events queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cost::webhook::tests::event;

    fn config(max_events: usize, max_bytes: usize) -> AlertsConfig {
        AlertsConfig { outbox_max_events: max_events, outbox_max_bytes: max_bytes, ..Default::default() }
    }

    fn open(dir: &Path, c: &AlertsConfig) -> (Outbox, WebhookMetrics) {
        let metrics = WebhookMetrics::default();
        (Outbox::open(dir.join("relay"), c, metrics.clone()).unwrap(), metrics)
    }

    #[test]
    fn events_survive_a_reopen_in_order_and_leave_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(100, 1 << 20);
        let (mut outbox, metrics) = open(dir.path(), &c);
        for seq in [3, 1, 2] {
            outbox.push(&Arc::new(event(seq))).unwrap();
        }
        outbox.push(&Arc::new(event(2))).unwrap();
        assert_eq!((outbox.len(), metrics.outbox_events.get(), outbox.progress()), (3, 3, 3));
        let bytes = metrics.outbox_bytes.get();
        assert!(bytes > 300, "{bytes}");
        outbox.remove(1);
        drop(outbox);

        let (mut outbox, metrics) = open(dir.path(), &c);
        assert_eq!((outbox.len(), metrics.outbox_events.get()), (2, 2));
        let now = Instant::now();
        assert_eq!(outbox.next(now), Some(2));
        // A refused event waits; the next one goes first.
        outbox.refuse(2, now + Duration::from_secs(60));
        assert_eq!(outbox.next(now), Some(3));
        assert_eq!(outbox.next_retry(), Some(now + Duration::from_secs(60)));
        assert_eq!(outbox.read(3).unwrap().as_ref(), &event(3));
        outbox.remove(3);
        outbox.remove(2);
        assert!(outbox.is_empty());
        assert_eq!((metrics.outbox_events.get(), metrics.outbox_bytes.get()), (0, 0));
        assert_eq!(std::fs::read_dir(outbox.dir()).unwrap().count(), 0, "every file removed");
    }

    #[test]
    fn a_full_outbox_refuses_new_events_by_count_and_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, _) = open(dir.path(), &config(2, 1 << 20));
        outbox.push(&Arc::new(event(1))).unwrap();
        outbox.push(&Arc::new(event(2))).unwrap();
        let err = outbox.push(&Arc::new(event(3))).unwrap_err();
        assert_eq!(err.dropped_reason(), Some("outbox_full"), "{err}");
        assert!(err.to_string().contains("outbox_max_events = 2"), "{err}");
        assert_eq!((outbox.len(), outbox.progress()), (2, 3), "the refused event is not waited for");

        let one = serde_json::to_vec(&event(1)).unwrap().len();
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, _) = open(dir.path(), &config(100, one * 2 + 10));
        outbox.push(&Arc::new(event(1))).unwrap();
        outbox.push(&Arc::new(event(2))).unwrap();
        assert_eq!(outbox.push(&Arc::new(event(3))).unwrap_err().dropped_reason(), Some("outbox_full"));
        let mut huge = event(4);
        huge.message = "x".repeat(MAX_OUTBOX_EVENT_BYTES);
        let err = outbox.push(&Arc::new(huge)).unwrap_err();
        assert_eq!(err.dropped_reason(), Some("too_large"), "{err}");
    }

    /// Whatever is found in an outbox directory: each bad file is set aside and counted, the good ones are kept,
    /// nothing panics.
    #[test]
    fn hostile_files_are_set_aside_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(100, 1 << 20);
        let (mut outbox, _) = open(dir.path(), &c);
        outbox.push(&Arc::new(event(7))).unwrap();
        let root = outbox.dir().to_path_buf();
        drop(outbox);
        let write = |name: &str, bytes: &[u8]| std::fs::write(root.join(name), bytes).unwrap();
        write(&file_name(1), b"{\"seq\": 1, \"not\": \"an event\"}");
        write(&file_name(2), &[0xff; 100]);
        write(&file_name(3), &serde_json::to_vec(&event(4)).unwrap()); // another event's content
        write(&file_name(5), &vec![b' '; MAX_OUTBOX_EVENT_BYTES + 10]);
        write("notes.txt", b"hello");
        write(&format!("{}.tmp", file_name(8)), b"{\"seq\": 8, \"half");
        std::fs::create_dir(root.join(file_name(9))).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join(file_name(10))).unwrap();

        let (mut outbox, metrics) = open(dir.path(), &c);
        assert_eq!(outbox.len(), 1, "only the real event is kept");
        assert_eq!(metrics.outbox_corrupt.get(), 7, "each bad file counted once");
        let aside = std::fs::read_dir(root.join(CORRUPT_DIR)).unwrap().count();
        assert_eq!(aside, 7);
        assert!(!root.join(format!("{}.tmp", file_name(8))).exists(), "an unfinished write is removed");
        assert_eq!(outbox.read(7).unwrap().seq, 7);

        // A file damaged after it was queued: found when it is read.
        std::fs::write(root.join(file_name(7)), b"garbage").unwrap();
        assert!(outbox.read(7).is_none());
        assert_eq!((outbox.len(), metrics.outbox_corrupt.get()), (0, 8));
        // Reopening finds nothing more to complain about.
        let (outbox, metrics) = open(dir.path(), &c);
        assert_eq!((outbox.len(), metrics.outbox_corrupt.get()), (0, 0));
    }

    #[test]
    fn an_event_that_cannot_be_written_is_kept_in_memory_and_holds_progress_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, metrics) = open(dir.path(), &config(100, 1 << 20));
        outbox.push(&Arc::new(event(1))).unwrap();
        // The directory is gone (deleted by hand, a volume unmounted): the write fails.
        std::fs::remove_dir_all(outbox.dir()).unwrap();
        let err = outbox.push(&Arc::new(event(2))).unwrap_err();
        assert!(matches!(err, OutboxError::Write { .. }) && err.dropped_reason().is_none(), "{err}");
        assert_eq!((outbox.len(), metrics.outbox_events.get()), (2, 2));
        assert_eq!(outbox.progress(), 1, "progress stops before the event held in memory");
        assert_eq!(outbox.read(2).unwrap().seq, 2, "delivered from memory");
        outbox.remove(2);
        assert_eq!(outbox.progress(), 2);
    }
}
