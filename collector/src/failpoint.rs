//! Crash points for the exactly-once tests: `TAILSCOPE_FAILPOINT=NAME` makes the process abort (as `kill -9` would:
//! no destructor, no flush, no checkpoint) the first time it reaches the point called `NAME`. Compiled into every
//! build so that the tests crash the real release or debug binary; without the variable each point is one relaxed
//! load of a value read once. Documented in `docs/storage.md`; never set it in production.
//!
//! Points: `flush-before-commit` (a flush's files are written, no table committed), `flush-after-commit` (every
//! table committed, the WAL checkpoint not written), `flush-between-store-commits` (with placement rules: one store's
//! table committed, the next store's commit of the flush not made).

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV: &str = "TAILSCOPE_FAILPOINT";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty())).as_deref()
}

/// Aborts the process when `TAILSCOPE_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    if armed() == Some(point) {
        eprintln!("{ENV}={point}: aborting here, as a crash would");
        std::process::abort();
    }
}
