//! The transaction (`txn`) versions of a few writers, followed from one snapshot to the next by reading only the
//! commits in between.
//!
//! delta-rs answers one writer's version with a replay of the log from its last checkpoint (up to a hundred commit
//! files) per call. A fleet's coordinator asks for every member's version in every store, twice per exchange
//! interval: with 64 members that was more than half a core (docs/benchmarks.md). A writer's version changes only in
//! a commit that carries its `txn` action, so once read, it is kept and moved forward by the commits since.

use std::collections::HashMap;

use deltalake_core::kernel::Transaction;
use deltalake_core::logstore::LogStore;
use deltalake_core::table::state::DeltaTableState;
use deltalake_core::{DeltaResult, DeltaTableError};
use serde::Deserialize;

use crate::AppId;

/// Past this many commits since the versions were last read, they are read again from the snapshot instead: a
/// replay from the checkpoint reads at most about a hundred commits (delta-rs checkpoints every 100).
pub(crate) const MAX_COMMITS_FOLLOWED: u64 = 100;

/// The versions of the writers last asked about, as of one table version.
#[derive(Debug, Default)]
pub(crate) struct AppVersions {
    /// The table version the versions are as of; `None`: nothing read yet.
    as_of: Option<u64>,
    /// Each writer's last `txn` version (`None`: it never committed), for the writers of the last call only.
    versions: HashMap<String, Option<i64>>,
}

impl AppVersions {
    /// The `txn` version of each of `apps` in `snapshot`, in order: what [`DeltaTableState::transaction_version`]
    /// answers for each (tailscope's tables set no `txn` retention, so no version expires).
    pub(crate) async fn read(
        &mut self,
        snapshot: &DeltaTableState,
        log_store: &dyn LogStore,
        apps: &[AppId],
    ) -> DeltaResult<Vec<Option<i64>>> {
        let target = snapshot.version();
        let followed = match self.as_of {
            // A commit that cannot be read or parsed here is left to delta-rs, which reads the versions from the
            // snapshot: its answer is the reference, and a commit this reader trips on must not stop the sum.
            Some(from) if from <= target && target - from <= MAX_COMMITS_FOLLOWED => {
                match self.follow(log_store, from, target).await {
                    Ok(followed) => followed,
                    Err(e) => {
                        tracing::debug!("reading the writers' versions from the snapshot instead: {e}");
                        false
                    }
                }
            }
            _ => false,
        };
        if !followed {
            self.versions.clear();
        }
        self.versions.retain(|app, _| apps.iter().any(|a| &a.0 == app));
        for app in apps {
            if !self.versions.contains_key(&app.0) {
                let version = snapshot.transaction_version(log_store, &app.0).await?;
                self.versions.insert(app.0.clone(), version);
            }
        }
        self.as_of = Some(target);
        Ok(apps.iter().map(|app| self.versions.get(&app.0).copied().flatten()).collect())
    }

    /// Moves the versions from table version `from` to `to` by the `txn` actions of the commits in between. `false`
    /// when a commit is no longer in the log (cleaned up past a checkpoint): the caller reads them again.
    async fn follow(&mut self, log_store: &dyn LogStore, from: u64, to: u64) -> DeltaResult<bool> {
        for version in from + 1..=to {
            let Some(commit) = log_store.read_commit_entry(version).await? else {
                return Ok(false);
            };
            // One action per line; only `txn` is read, every other action (and field) is skipped unparsed.
            for line in serde_json::Deserializer::from_slice(&commit).into_iter::<CommitLine>() {
                let line = line.map_err(|e| DeltaTableError::Generic(format!("commit {version}: {e}")))?;
                if let Some(txn) = line.txn
                    && let Some(known) = self.versions.get_mut(&txn.app_id)
                {
                    *known = Some(txn.version);
                }
            }
        }
        Ok(true)
    }
}

/// A line of a commit file, for its `txn` action only.
#[derive(Deserialize)]
struct CommitLine {
    txn: Option<Transaction>,
}
