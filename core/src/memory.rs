//! The process-wide memory ceiling: one budget that ingest (requests in flight and the unflushed buffer), Parquet
//! flushes and queries draw from, like the OpenTelemetry Collector's `memory_limiter`, but by accounting instead
//! of by sampling RSS.
//!
//! Every large, data-sized allocation is reserved here before it is made (or, where the size is only known
//! afterwards, right after, by bounded amounts): a request body as its bytes arrive and while it inflates, the
//! normalised batch, the buffer until its rows are in Parquet, a flush's working set, every DataFusion
//! operator's memory (the query engine's pool is built over this budget, see `query::engine::memory_pool`), and
//! the caches: the price-resolution cache and DataFusion's Parquet metadata cache hold their byte bound from start
//! (`pricing.cache_bytes`, `query.metadata_cache_mb`), the live windows their current size in steps
//! ([`Reservation::follow`]). When a
//! reservation would pass the limit it is refused, and the caller answers with a retryable refusal (ingest: HTTP 503 +
//! `Retry-After` / gRPC UNAVAILABLE + `RetryInfo`; or, when the holder needs more than the whole limit
//! ([`MemoryError::can_never_fit`]), HTTP 413 / RESOURCE_EXHAUSTED, which clients do not retry) or a clear error (queries: DataFusion's resources-exhausted
//! error, which lets spilling operators spill first). So whichever of ingest and queries comes second waits or
//! fails cleanly, and the process does not grow past `memory.limit_mb` plus what is not data-sized (the binary,
//! thread stacks, connection buffers, the allocator's slack): see docs/reliability.md, "Memory ceiling".
//!
//! Accounting is lock-free (one atomic add per reservation change), so it costs nothing measurable per request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use thiserror::Error;

/// A reservation was refused: granting it would pass the process-wide memory limit.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "the process memory limit is reached: {requested} more bytes were needed for {purpose}, but {used} of \
     {limit} bytes (memory.limit_mb) are reserved"
)]
pub struct MemoryError {
    /// Bytes asked for.
    pub requested: usize,
    /// What they were for (`"a request body"`, `"the write buffer"`, a DataFusion consumer, ...).
    pub purpose: String,
    /// Bytes reserved when the request was refused.
    pub used: usize,
    /// The configured limit.
    pub limit: usize,
    /// Bytes the refused holder held already (a reservation that asked to grow): with `requested`, what it needs
    /// in all.
    pub held: usize,
    /// The most any one holder could ever get: the limit less what is held for the life of the process (the
    /// caches' bounds, [`MemoryBudget::try_reserve_lasting`]).
    pub room: usize,
}

impl MemoryError {
    /// Whether the holder needs more than the whole budget: then no amount of waiting makes room, and the
    /// request must be refused for good rather than retried (see `collector::error::IngestError::NeverFits`).
    pub fn can_never_fit(&self) -> bool {
        self.held.saturating_add(self.requested) > self.room
    }
}

/// The shared budget. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// Of `used`, what is held for the life of the process (the caches' bounds): never there for anyone else.
    lasting: AtomicUsize,
    /// Reservations refused so far.
    refusals: AtomicU64,
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget").field("limit", &self.limit()).field("used", &self.used()).finish()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
                lasting: AtomicUsize::new(0),
                refusals: AtomicU64::new(0),
            }),
        }
    }

    /// A budget that never refuses (a CLI query over a data dir, where no collector shares the process). Usage is
    /// still counted.
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::new(usize::MAX)
    }

    /// The configured limit in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The most one holder could ever reserve: the limit less the lasting reservations. A request needing more
    /// than this is refused for good, not told to retry.
    pub fn room(&self) -> usize {
        self.limit().saturating_sub(self.inner.lasting.load(Ordering::Acquire))
    }

    /// Bytes that can still be reserved.
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Reservations refused since start.
    pub fn refusals(&self) -> u64 {
        self.inner.refusals.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as data arrives.
    pub fn empty(&self) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0, lasting: 0 }
    }

    /// Reserves `bytes`, or refuses when that would pass the limit.
    pub fn try_reserve(&self, bytes: usize, purpose: &dyn fmt::Display) -> Result<Reservation, MemoryError> {
        self.try_add(bytes, purpose)?;
        Ok(Reservation { budget: self.clone(), bytes, lasting: 0 })
    }

    /// Reserves `bytes` for the life of the process (a cache's bound, reserved at start), or refuses. While held
    /// they are not part of [`Self::room`], so a request that needs more than what is left beside them is refused
    /// for good rather than retried.
    pub fn try_reserve_lasting(&self, bytes: usize, purpose: &dyn fmt::Display) -> Result<Reservation, MemoryError> {
        self.try_add(bytes, purpose)?;
        self.inner.lasting.fetch_add(bytes, Ordering::AcqRel);
        Ok(Reservation { budget: self.clone(), bytes, lasting: bytes })
    }

    /// Reserves `bytes` even past the limit: for memory that is already allocated, or whose allocation frees more
    /// (a flush). Later reservations are refused until it is released.
    pub fn force_reserve(&self, bytes: usize) -> Reservation {
        self.force_add(bytes);
        Reservation { budget: self.clone(), bytes, lasting: 0 }
    }

    /// Counts `bytes` as reserved if that stays within the limit. The caller must [`Self::release`] them.
    pub fn try_add(&self, bytes: usize, purpose: &dyn fmt::Display) -> Result<(), MemoryError> {
        let limit = self.inner.limit;
        let mut used = self.inner.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(bytes);
            if next > limit {
                self.inner.refusals.fetch_add(1, Ordering::Relaxed);
                let room = self.room();
                return Err(MemoryError { requested: bytes, purpose: purpose.to_string(), used, limit, held: 0, room });
            }
            match self.inner.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Counts `bytes` as reserved regardless of the limit. The caller must [`Self::release`] them.
    pub fn force_add(&self, bytes: usize) {
        self.inner.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Returns `bytes` counted by [`Self::try_add`] or [`Self::force_add`] (or detached from a reservation).
    pub fn release(&self, bytes: usize) {
        // Saturating: a release larger than what is held is a bug, but must not wrap the counter to "full".
        let mut used = self.inner.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_sub(bytes);
            match self.inner.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => used = actual,
            }
        }
    }
}

/// Bytes held from a [`MemoryBudget`]; released when dropped.
#[must_use = "a reservation is released when dropped"]
pub struct Reservation {
    budget: MemoryBudget,
    bytes: usize,
    /// Of `bytes`, what counts as lasting (see [`MemoryBudget::try_reserve_lasting`]) until dropped.
    lasting: usize,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").field("bytes", &self.bytes).finish()
    }
}

impl Reservation {
    /// Bytes held.
    pub fn size(&self) -> usize {
        self.bytes
    }

    /// The budget this draws from.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Holds `more` bytes more, or refuses (holding what it held).
    pub fn try_grow(&mut self, more: usize, purpose: &dyn fmt::Display) -> Result<(), MemoryError> {
        self.budget.try_add(more, purpose).map_err(|e| MemoryError { held: self.bytes, ..e })?;
        self.bytes += more;
        Ok(())
    }

    /// Holds at least `bytes` in all (growing, possibly refused) or exactly `bytes` (shrinking, never refused).
    pub fn try_resize(&mut self, bytes: usize, purpose: &dyn fmt::Display) -> Result<(), MemoryError> {
        if bytes > self.bytes {
            self.try_grow(bytes - self.bytes, purpose)
        } else {
            self.shrink(self.bytes - bytes);
            Ok(())
        }
    }

    /// Holds `bytes` in all, past the limit if need be (the memory exists already).
    pub fn force_resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget.force_add(bytes - self.bytes);
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    /// Releases `less` bytes (at most what is held).
    pub fn shrink(&mut self, less: usize) {
        let less = less.min(self.bytes);
        self.budget.release(less);
        self.bytes -= less;
    }

    /// Holds `bytes` rounded up to a whole number of `step`s, for a cache whose size is known after it changed:
    /// grows past the limit if need be (the memory is held already; later reservations are refused until it is
    /// released), and shrinks only once more than a step is spare, so a size hovering at a step boundary does not
    /// touch the budget on every change; an empty cache gives back everything.
    pub fn follow(&mut self, bytes: usize, step: usize) {
        let want = round_up(bytes, step);
        if want > self.bytes || self.bytes - want > step || bytes == 0 {
            self.force_resize(want);
        }
    }

    /// Holds at least `bytes` rounded up to a whole number of `step`s, or refuses (holding what it held): for
    /// memory about to be allocated by a cache that can do without it.
    pub fn try_follow(&mut self, bytes: usize, step: usize, purpose: &dyn fmt::Display) -> Result<(), MemoryError> {
        let want = round_up(bytes, step);
        if want > self.bytes { self.try_grow(want - self.bytes, purpose) } else { Ok(()) }
    }

    /// Stops tracking up to `bytes` of this reservation without releasing them: the caller now owns them and
    /// must [`MemoryBudget::release`] them (the write buffer keeps its share as a counter). Returns the bytes
    /// detached.
    pub fn detach(&mut self, bytes: usize) -> usize {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        bytes
    }
}

/// `bytes` rounded up to a multiple of `step` (saturating; a zero step rounds nothing).
fn round_up(bytes: usize, step: usize) -> usize {
    if step == 0 {
        return bytes;
    }
    bytes.div_ceil(step).saturating_mul(step)
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
        if self.lasting > 0 {
            self.budget.inner.lasting.fetch_sub(self.lasting, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_released_when_dropped() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60, &"a").unwrap();
        let err = budget.try_reserve(41, &"b").unwrap_err();
        assert_eq!((err.requested, err.used, err.limit), (41, 60, 100));
        assert!(err.to_string().contains("memory.limit_mb"), "{err}");
        let mut b = budget.try_reserve(40, &"b").unwrap();
        assert_eq!(budget.used(), 100);
        assert!(b.try_grow(1, &"b").is_err());
        assert_eq!(b.size(), 40, "a refused growth keeps what was held");
        drop(a);
        b.try_resize(90, &"b").unwrap();
        assert_eq!(budget.used(), 90);
        b.try_resize(10, &"b").unwrap();
        assert_eq!(budget.used(), 10);
        let detached = b.detach(4);
        assert_eq!((detached, b.size()), (4, 6));
        drop(b);
        assert_eq!(budget.used(), 4, "detached bytes stay reserved until released by their owner");
        budget.release(4);
        assert_eq!(budget.used(), 0);
        let forced = budget.force_reserve(150);
        assert_eq!(budget.available(), 0);
        assert!(budget.try_reserve(1, &"c").is_err(), "nothing more while a forced reservation passes the limit");
        drop(forced);
        assert_eq!((budget.used(), budget.refusals()), (0, 3));
    }

    #[test]
    fn a_refusal_says_whether_the_holder_could_ever_fit() {
        let budget = MemoryBudget::new(100);
        let other = budget.try_reserve(50, &"other").unwrap();
        let mut r = budget.try_reserve(30, &"r").unwrap();
        let err = r.try_grow(40, &"r").unwrap_err();
        assert!(!err.can_never_fit(), "30 + 40 fit once the other holder is gone: {err:?}");
        let err = r.try_grow(71, &"r").unwrap_err();
        assert!(err.can_never_fit(), "30 + 71 pass the limit whatever others hold: {err:?}");
        assert_eq!(err.held, 30);
        assert!(budget.try_reserve(101, &"x").unwrap_err().can_never_fit());
        drop(other);
        r.try_grow(40, &"r").unwrap();
        drop(r);
        // What caches hold for the life of the process is no one else's: 60 + 50 pass the 100 less the 50 kept.
        let cache = budget.try_reserve_lasting(50, &"a cache").unwrap();
        assert_eq!(budget.room(), 50);
        let mut r = budget.try_reserve(40, &"r").unwrap();
        assert!(r.try_grow(20, &"r").unwrap_err().can_never_fit());
        drop(cache);
        assert_eq!(budget.room(), 100);
        r.try_grow(20, &"r").unwrap();
    }

    /// A cache's reservation follows its size in whole steps: it grows at once (past the limit if need be: the
    /// memory is held already), shrinks only once more than a step is spare, and `try_follow` refuses memory a
    /// cache has not allocated yet.
    #[test]
    fn reservations_follow_a_size_in_steps() {
        let budget = MemoryBudget::new(100);
        let mut cache = budget.empty();
        cache.follow(1, 10);
        assert_eq!(budget.used(), 10);
        cache.follow(10, 10);
        assert_eq!(budget.used(), 10, "within the step: the budget is not touched");
        cache.follow(31, 10);
        assert_eq!(budget.used(), 40);
        cache.follow(25, 10);
        assert_eq!(budget.used(), 40, "one step spare is kept");
        cache.follow(15, 10);
        assert_eq!(budget.used(), 20, "more than a step spare is given back");
        cache.follow(150, 10);
        assert_eq!((budget.used(), budget.available()), (150, 0), "memory already held is counted past the limit");
        cache.follow(0, 10);
        assert_eq!(budget.used(), 0);
        cache.follow(5, 10);
        cache.follow(0, 10);
        assert_eq!(budget.used(), 0, "an empty cache holds nothing");
        let other = budget.try_reserve(95, &"ingest").unwrap();
        assert!(cache.try_follow(1, 10, &"a cache").is_err(), "a step that does not fit is refused");
        assert_eq!(cache.size(), 0);
        drop(other);
        cache.try_follow(1, 10, &"a cache").unwrap();
        assert_eq!(cache.size(), 10);
        drop(cache);
        assert_eq!(budget.used(), 0);
    }
}
