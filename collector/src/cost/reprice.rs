//! Re-pricing stored spans with the current price table (`tailscope reprice`): after a price file update or a
//! correction, the cost columns of spans already written are computed again from the facts each row keeps (its
//! provider, models, token counts, service tier and cache lifetime from `attributes`, clouds and egress bytes) by
//! the same [`Pricer`] the normaliser uses, and each file is replaced whole (written aside, synced, renamed over).
//!
//! Re-pricing is idempotent: the facts it reads are not among the columns it writes, so a run cut short by a crash
//! is finished by running it again, and a second run over the same table changes nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, Int64Builder, MapArray, RecordBatch,
    StringArray, StringBuilder,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::errors::ParquetError;
/// The writer settings [`reprice_file`] takes (`tailscope_core::layout::ParquetOptions::properties`).
pub use datafusion::parquet::file::properties::WriterProperties;
use tailscope_core::keys::span as span_keys;
use tailscope_core::layout::FileName;
use tailscope_core::schema::{ResourceColumn, SpanColumn};
use thiserror::Error;

use super::{Pricer, SpanFacts};

/// Rows read and re-priced at a time: bounds the memory of re-pricing a file of any size.
const BATCH_ROWS: usize = 8192;

/// What re-pricing could not do.
#[derive(Debug, Error)]
pub enum RepriceError {
    #[error("{path}: {context}: {source}")]
    Io { path: PathBuf, context: &'static str, source: std::io::Error },
    #[error("{path}: not a readable Parquet file of spans: {source}")]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("{path}: column `{column}` is {found}, not {expected}: not a tailscope spans file")]
    ColumnType { path: PathBuf, column: &'static str, found: DataType, expected: &'static str },
    #[error("{path}: re-priced rows do not fit the file's schema: {source}")]
    Arrow { path: PathBuf, source: ArrowError },
}

/// The cost columns of a batch before and after re-pricing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepriceTotals {
    pub rows: u64,
    /// Rows whose `token_cost_usd`, `egress_cost_usd`, `cost_usd` or `price_source` changed.
    pub changed_rows: u64,
    /// `sum(cost_usd)` before and after.
    pub cost_before_usd: f64,
    pub cost_after_usd: f64,
    /// Rows no entry prices (`price_source = 'unknown'`) after re-pricing.
    pub unpriced_rows: u64,
}

impl RepriceTotals {
    pub fn add(&mut self, other: &RepriceTotals) {
        self.rows += other.rows;
        self.changed_rows += other.changed_rows;
        self.cost_before_usd += other.cost_before_usd;
        self.cost_after_usd += other.cost_after_usd;
        self.unpriced_rows += other.unpriced_rows;
    }
}

/// One column of a batch read back from a file, typed; `None` where an older file lacks it.
fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    column: SpanColumn,
    path: &Path,
    expected: &'static str,
) -> Result<Option<&'a T>, RepriceError> {
    let Some(array) = column.of(batch) else { return Ok(None) };
    array.as_any().downcast_ref::<T>().map(Some).ok_or_else(|| RepriceError::ColumnType {
        path: path.to_path_buf(),
        column: column.name(),
        found: array.data_type().clone(),
        expected,
    })
}

fn strings<'a>(batch: &'a RecordBatch, c: SpanColumn, path: &Path) -> Result<Option<&'a StringArray>, RepriceError> {
    column::<StringArray>(batch, c, path, "Utf8")
}

fn ints<'a>(batch: &'a RecordBatch, c: SpanColumn, path: &Path) -> Result<Option<&'a Int64Array>, RepriceError> {
    column::<Int64Array>(batch, c, path, "Int64")
}

fn floats<'a>(batch: &'a RecordBatch, c: SpanColumn, path: &Path) -> Result<Option<&'a Float64Array>, RepriceError> {
    column::<Float64Array>(batch, c, path, "Float64")
}

fn str_at(array: Option<&StringArray>, row: usize) -> Option<&str> {
    array.filter(|a| a.is_valid(row)).map(|a| a.value(row))
}

fn i64_at(array: Option<&Int64Array>, row: usize) -> Option<i64> {
    array.filter(|a| a.is_valid(row)).map(|a| a.value(row))
}

fn f64_at(array: Option<&Float64Array>, row: usize) -> Option<f64> {
    array.filter(|a| a.is_valid(row)).map(|a| a.value(row))
}

/// The value of `key` in row `row` of an attributes map (`Map<Utf8, Utf8>`).
fn attribute<'a>(attributes: Option<&'a MapArray>, row: usize, key: &str) -> Option<&'a str> {
    let map = attributes.filter(|m| m.is_valid(row))?;
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string_opt::<i32>()?;
    let values = map.values().as_string_opt::<i32>()?;
    (start..end).find(|&i| keys.value(i) == key).and_then(|i| values.is_valid(i).then(|| values.value(i)))
}

/// The columns of a stored batch that price a span, and the cost columns as they were.
struct StoredColumns<'a> {
    provider: Option<&'a StringArray>,
    operation: Option<&'a StringArray>,
    request_model: Option<&'a StringArray>,
    response_model: Option<&'a StringArray>,
    input: Option<&'a Int64Array>,
    output: Option<&'a Int64Array>,
    cache_read: Option<&'a Int64Array>,
    cache_creation: Option<&'a Int64Array>,
    reasoning: Option<&'a Int64Array>,
    cloud_provider: Option<&'a StringArray>,
    cloud_region: Option<&'a StringArray>,
    peer_provider: Option<&'a StringArray>,
    peer_region: Option<&'a StringArray>,
    attributes: Option<&'a MapArray>,
    old_token: Option<&'a Float64Array>,
    old_egress: Option<&'a Float64Array>,
    old_cost: Option<&'a Float64Array>,
    old_source: Option<&'a StringArray>,
}

impl<'a> StoredColumns<'a> {
    fn of(batch: &'a RecordBatch, path: &Path) -> Result<StoredColumns<'a>, RepriceError> {
        use SpanColumn as C;
        Ok(StoredColumns {
            provider: strings(batch, C::GenAiProvider, path)?,
            operation: strings(batch, C::GenAiOperation, path)?,
            request_model: strings(batch, C::RequestModel, path)?,
            response_model: strings(batch, C::ResponseModel, path)?,
            input: ints(batch, C::InputTokens, path)?,
            output: ints(batch, C::OutputTokens, path)?,
            cache_read: ints(batch, C::CacheReadTokens, path)?,
            cache_creation: ints(batch, C::CacheCreationTokens, path)?,
            reasoning: ints(batch, C::ReasoningTokens, path)?,
            cloud_provider: strings(batch, C::Resource(ResourceColumn::CloudProvider), path)?,
            cloud_region: strings(batch, C::Resource(ResourceColumn::CloudRegion), path)?,
            peer_provider: strings(batch, C::PeerCloudProvider, path)?,
            peer_region: strings(batch, C::PeerCloudRegion, path)?,
            attributes: column::<MapArray>(batch, C::Attributes, path, "Map<Utf8, Utf8>")?,
            old_token: floats(batch, C::TokenCostUsd, path)?,
            old_egress: floats(batch, C::EgressCostUsd, path)?,
            old_cost: floats(batch, C::CostUsd, path)?,
            old_source: strings(batch, C::PriceSource, path)?,
        })
    }

    /// What the pricer needs to know about row `row`, as the normaliser told it at ingest.
    fn facts(&self, row: usize) -> SpanFacts<'a> {
        SpanFacts {
            gen_ai_provider: str_at(self.provider, row),
            gen_ai_operation: str_at(self.operation, row),
            request_model: str_at(self.request_model, row),
            response_model: str_at(self.response_model, row),
            input_tokens: i64_at(self.input, row),
            output_tokens: i64_at(self.output, row),
            cache_read_tokens: i64_at(self.cache_read, row),
            cache_creation_tokens: i64_at(self.cache_creation, row),
            cache_creation_1h_tokens: attribute(self.attributes, row, span_keys::CACHE_CREATION_1H)
                .and_then(|v| v.parse().ok()),
            reasoning_tokens: i64_at(self.reasoning, row),
            service_tier: span_keys::SERVICE_TIER.iter().find_map(|k| attribute(self.attributes, row, k)),
            cloud_provider: str_at(self.cloud_provider, row),
            cloud_region: str_at(self.cloud_region, row),
            peer_cloud_provider: str_at(self.peer_provider, row),
            peer_cloud_region: str_at(self.peer_region, row),
            // The inputs the normaliser priced egress from, kept in `attributes`: the stored `egress_bytes` column
            // is a result (every byte), while the price may count only one direction's.
            request_bytes: self.attribute_i64(row, span_keys::REQUEST_BODY_SIZE),
            response_bytes: self.attribute_i64(row, span_keys::RESPONSE_BODY_SIZE),
            egress_bytes: self.attribute_i64(row, span_keys::EGRESS_BYTES),
        }
    }

    /// An integer attribute of row `row` (attributes are stored as text).
    fn attribute_i64(&self, row: usize, key: &str) -> Option<i64> {
        attribute(self.attributes, row, key).and_then(|v| v.parse().ok())
    }

    /// Whether `priced` differs from row `row`'s stored cost columns.
    fn changed(&self, row: usize, priced: &super::SpanCost) -> bool {
        priced.token_cost_usd != f64_at(self.old_token, row)
            || priced.egress_cost_usd != f64_at(self.old_egress, row)
            || priced.cost_usd != f64_at(self.old_cost, row)
            || priced.price_source.as_deref() != str_at(self.old_source, row)
    }
}

/// `batch` (rows of `spans`, as read back from `path`) with its cost columns computed again by `pricer`.
pub fn reprice_batch(
    pricer: &Pricer,
    batch: &RecordBatch,
    path: &Path,
) -> Result<(RecordBatch, RepriceTotals), RepriceError> {
    use SpanColumn as C;
    let stored = StoredColumns::of(batch, path)?;
    let rows = batch.num_rows();
    let mut token = Float64Builder::with_capacity(rows);
    let mut egress = Float64Builder::with_capacity(rows);
    let mut cost = Float64Builder::with_capacity(rows);
    let mut source = StringBuilder::with_capacity(rows, rows * 16);
    let mut bytes = Int64Builder::with_capacity(rows);
    let mut totals = RepriceTotals { rows: rows as u64, ..RepriceTotals::default() };
    for row in 0..rows {
        let priced = pricer.price(&stored.facts(row));
        totals.changed_rows += u64::from(stored.changed(row, &priced));
        totals.cost_before_usd += f64_at(stored.old_cost, row).unwrap_or(0.0);
        totals.cost_after_usd += priced.cost_usd.unwrap_or(0.0);
        totals.unpriced_rows += u64::from(priced.price_source.as_deref() == Some(tailscope_core::rules::UNPRICED));
        token.append_option(priced.token_cost_usd);
        egress.append_option(priced.egress_cost_usd);
        cost.append_option(priced.cost_usd);
        source.append_option(priced.price_source.as_deref());
        bytes.append_option(priced.egress_bytes);
    }
    let mut replaced: Vec<(SpanColumn, ArrayRef)> = vec![
        (C::TokenCostUsd, Arc::new(token.finish())),
        (C::EgressCostUsd, Arc::new(egress.finish())),
        (C::CostUsd, Arc::new(cost.finish())),
        (C::PriceSource, Arc::new(source.finish())),
        (C::EgressBytes, Arc::new(bytes.finish())),
    ];
    let schema = batch.schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| match replaced.iter().position(|(c, _)| c.name() == field.name()) {
            Some(i) => replaced.swap_remove(i).1,
            None => Arc::clone(array),
        })
        .collect();
    let out = RecordBatch::try_new(schema, columns)
        .map_err(|source| RepriceError::Arrow { path: path.to_path_buf(), source })?;
    Ok((out, totals))
}

/// A file re-priced: what changed, and the new file holding the re-priced rows when any row changed.
#[derive(Debug)]
pub struct RepricedFile {
    pub totals: RepriceTotals,
    /// Beside the old file, under a new name (a new nonce): the table commits the swap
    /// (`store::Tables::commit_rewrite`), so readers see the old file or the new one, and a crash before the
    /// commit leaves a file no commit added, which no reader sees and vacuum ignores.
    pub new_file: Option<PathBuf>,
}

/// Re-prices one spans file: the rows are read [`BATCH_ROWS`] at a time, re-priced and written to a new file beside
/// it with `props`, synced; when no row changed, the new file is dropped. With `dry_run` nothing is written. The
/// old file is never touched.
pub fn reprice_file(
    pricer: &Pricer,
    path: &Path,
    props: &WriterProperties,
    dry_run: bool,
) -> Result<RepricedFile, RepriceError> {
    let io = |context: &'static str| {
        let path = path.to_path_buf();
        move |source| RepriceError::Io { path, context, source }
    };
    let parquet = |source| RepriceError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io("opening"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?.with_batch_size(BATCH_ROWS);
    let schema = Arc::clone(reader.schema());
    let reader = reader.build().map_err(parquet)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The same flush and time range, a new nonce; a file not named by tailscope gets a tailscope name too.
    let new_name = match FileName::parse(&name) {
        Some(n) => FileName { nonce: rand_nonce(n.nonce), ..n },
        None => FileName { wal_seq: 0, min_time_ns: 0, max_time_ns: 0, nonce: rand_nonce(0) },
    };
    let new_path = path.with_file_name(new_name.to_string());
    let mut writer = if dry_run {
        None
    } else {
        let out = File::create_new(&new_path).map_err(io("creating the re-priced file"))?;
        Some(ArrowWriter::try_new(out, schema, Some(props.clone())).map_err(parquet)?)
    };
    let mut totals = RepriceTotals::default();
    let result = (|| {
        for batch in reader {
            let batch = batch.map_err(|e| parquet(ParquetError::ArrowError(e.to_string())))?;
            let (repriced, t) = reprice_batch(pricer, &batch, path)?;
            totals.add(&t);
            if let Some(w) = writer.as_mut() {
                w.write(&repriced).map_err(parquet)?;
            }
        }
        let Some(w) = writer.take() else { return Ok(false) };
        let out = w.into_inner().map_err(parquet)?;
        if totals.changed_rows == 0 {
            return Ok(false);
        }
        out.sync_all().map_err(io("syncing the re-priced file"))?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing the directory"))?;
        }
        Ok(true)
    })();
    match result {
        Ok(true) => Ok(RepricedFile { totals, new_file: Some(new_path) }),
        Ok(false) => {
            if !dry_run {
                let _ = std::fs::remove_file(&new_path);
            }
            Ok(RepricedFile { totals, new_file: None })
        }
        Err(e) => {
            if !dry_run {
                let _ = std::fs::remove_file(&new_path);
            }
            Err(e)
        }
    }
}

/// A nonce other than `old`, so the new file never takes the old one's name.
fn rand_nonce(old: u32) -> u32 {
    let mut nonce = rand::random::<u32>();
    while nonce == old {
        nonce = rand::random();
    }
    nonce
}
