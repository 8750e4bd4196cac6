//! The `alerts` table: budget alert events as the cost engine records them, read afresh by every query.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Reads `tailscope_core::alerts::alerts_table` at each scan, so a query sees alerts raised a moment ago.
#[derive(Debug)]
pub struct AlertsTable {
    data_dir: PathBuf,
    schema: SchemaRef,
}

impl AlertsTable {
    /// The alerts recorded under `data_dir`.
    pub fn new(data_dir: &Path) -> AlertsTable {
        AlertsTable { data_dir: data_dir.to_path_buf(), schema: tailscope_core::alerts::alerts_schema() }
    }
}

#[async_trait::async_trait]
impl TableProvider for AlertsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Only the caller's projects' alerts (see `crate::table::visibility`).
        let visible = crate::table::visibility(state);
        let batch = tailscope_core::alerts::alerts_table(&self.data_dir, &visible)
            .map_err(|e| DataFusionError::Execution(format!("cannot read the alerts: {e}")))?;
        let batch = batch.with_schema(self.schema.clone())?;
        let source =
            MemorySourceConfig::try_new(&[vec![batch]], self.schema.clone(), projection.cloned())?.with_limit(limit);
        Ok(DataSourceExec::from_data_source(source))
    }
}
