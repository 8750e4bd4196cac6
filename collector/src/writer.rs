//! Parquet files in the hive layout `DATA/SIGNAL/date=YYYY-MM-DD/hour=HH/NAME.parquet`.

/// The parts of a Parquet file name tailscope writes: `{wal_seq:020}_{min_ns}_{max_ns}_{nonce}.parquet`.
///
/// `wal_seq` is the last WAL record the file's flush covers: on recovery, files of a flush that never committed
/// carry a sequence above the checkpoint and are removed before the WAL is replayed, so nothing is stored twice.
/// The time range lets queries skip files without opening them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileName {
    /// Last WAL sequence number covered by the flush that wrote the file.
    pub wal_seq: u64,
    /// Smallest time-column value in the file (ns since the epoch).
    pub min_time_ns: i64,
    /// Largest time-column value in the file.
    pub max_time_ns: i64,
    /// Random, so that collectors sharing a directory never collide.
    pub nonce: u32,
}

impl FileName {
    /// Parses a file name (not a path); `None` when it is not one of tailscope's.
    pub fn parse(name: &str) -> Option<FileName> {
        let stem = name.strip_suffix(".parquet")?;
        let mut parts = stem.split('_');
        let name = FileName {
            wal_seq: parts.next()?.parse().ok()?,
            min_time_ns: parts.next()?.parse().ok()?,
            max_time_ns: parts.next()?.parse().ok()?,
            nonce: u32::from_str_radix(parts.next()?, 16).ok()?,
        };
        parts.next().is_none().then_some(name)
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:020}_{}_{}_{:08x}.parquet", self.wal_seq, self.min_time_ns, self.max_time_ns, self.nonce)
    }
}
