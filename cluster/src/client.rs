//! The Ballista client a [`query::Engine`] runs its statements through (`tailscope query --cluster`,
//! `[query] cluster`).

use std::sync::Arc;

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use ballista_core::planner::BallistaQueryPlanner;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::LogicalPlanNode;
use query::{Cluster, session_config};
use tailscope_core::projects::Visibility;

use crate::ClusterError;
use crate::codec::{OperatorsCodec, TablesCodec};

/// A Ballista scheduler at `df://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct BallistaClient {
    url: String,
}

impl BallistaClient {
    /// The client of the scheduler at `url` (`df://HOST:PORT`).
    pub fn new(url: &str) -> Result<Arc<BallistaClient>, ClusterError> {
        let url = url.trim();
        let address = url.strip_prefix("df://").unwrap_or_default();
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(ClusterError::Ballista {
                    what: "the cluster's address",
                    detail: format!("{url:?} is not df://HOST:PORT (the address of `tailscope scheduler`)"),
                });
            }
        }
        Ok(Arc::new(BallistaClient { url: url.to_string() }))
    }
}

impl Cluster for BallistaClient {
    fn session_config(&self) -> SessionConfig {
        // Adaptive planning would replace the scheduler's physical rules, and with them the bound on `unnest`; the
        // scheduler turns it off for every job too (`crate::scheduler`).
        cluster_settings(session_config(SessionConfig::new_with_ballista()))
            .with_ballista_adaptive_query_planner(false)
            .with_ballista_physical_extension_codec(Arc::new(OperatorsCodec::default()))
    }

    fn upgrade(&self, state: SessionState) -> datafusion::common::Result<SessionState> {
        state.upgrade_for_ballista(self.url.clone())
    }

    fn planner(&self, config: &SessionConfig, visible: &Visibility) -> Arc<dyn QueryPlanner + Send + Sync> {
        Arc::new(BallistaQueryPlanner::<LogicalPlanNode>::with_extension(
            self.url.clone(),
            config.ballista_config(),
            Arc::new(TablesCodec::client(visible.clone())),
        ))
    }
}

/// The settings where a cluster plans as one node does, whatever Ballista's defaults: hash joins, as one node
/// prefers. Ballista's default (sort-merge joins) answered `... IN (subquery) ORDER BY k LIMIT n` with too few rows,
/// often none (a `TopK` pushed below the join); `tests/it/cluster.rs` holds such statements.
pub fn cluster_settings(config: SessionConfig) -> SessionConfig {
    config.set_bool("datafusion.optimizer.prefer_hash_join", true)
}
