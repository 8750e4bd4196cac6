//! Span rows built by hand and written in the collector's on-disk layout, for tests and benchmarks.
//!
//! These are rows of the stored `spans` table, not agent spans: a test that asserts an exact figure (a quantile,
//! a sum, which file a row is in) states each row's values itself here. Agent spans as services send them come from
//! the simulator (`tailscope_sim`) and become rows only through the collector's normaliser.
//!
//! Files get tailscope's own names (`WALSEQ_MINNS_MAXNS_NONCE.parquet` under `spans/date=…/hour=…/`), so the
//! catalog knows their time range exactly as it does for files the collector writes, and are encoded with the
//! collector's writer properties.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, MapBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampNanosecondArray, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::parquet::arrow::ArrowWriter;

use tailscope_core::catalog::ParquetFile;
use tailscope_core::layout::FileName;
use tailscope_core::schema::{MAP_ENTRIES, MAP_KEYS, MAP_VALUES, ResourceColumn, Signal, SpanColumn};

/// One span with the columns queries care about; every other column is NULL (or an empty map).
#[derive(Debug, Clone, Default)]
pub struct SpanRow {
    /// 32 hex characters.
    pub trace_id: String,
    /// 16 hex characters.
    pub span_id: String,
    /// Span name.
    pub name: String,
    /// Start, ns since the epoch.
    pub start_ns: i64,
    /// Duration in ns.
    pub duration_ns: i64,
    /// `error` when true, else `ok`.
    pub error: bool,
    /// `service.name`.
    pub service_name: String,
    /// The caller's cloud provider.
    pub cloud_provider: Option<String>,
    /// The caller's cloud region.
    pub cloud_region: Option<String>,
    /// `gen_ai.provider.name`.
    pub gen_ai_provider: Option<String>,
    /// `gen_ai.operation.name`.
    pub gen_ai_operation: Option<String>,
    /// `gen_ai.request.model`.
    pub request_model: Option<String>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// `session.id`.
    pub session_id: Option<String>,
    /// Tool name for `execute_tool` spans.
    pub tool_name: Option<String>,
    /// Cost of the tokens in USD.
    pub token_cost_usd: Option<f64>,
    /// Total cost in USD.
    pub cost_usd: Option<f64>,
    /// The hedged request the span is a copy of.
    pub hedge_id: Option<String>,
    /// Whether this copy's answer was used.
    pub hedge_winner: Option<bool>,
}

/// A `spans` batch in the stored schema.
pub fn spans_batch(rows: &[SpanRow]) -> RecordBatch {
    let schema = Signal::Spans.schema();
    let n = rows.len();
    let text = |f: fn(&SpanRow) -> Option<&str>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<StringArray>()) };
    let int = |f: fn(&SpanRow) -> Option<i64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Int64Array>()) };
    let ts = |f: fn(&SpanRow) -> i64| -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from(rows.iter().map(f).collect::<Vec<_>>()).with_timezone("UTC"))
    };
    let null = |c: SpanColumn| -> ArrayRef {
        let field = c.field();
        match field.data_type() {
            DataType::Map(..) => empty_maps(n),
            other => new_null_array(other, n),
        }
    };
    let columns: Vec<ArrayRef> = SpanColumn::ALL
        .iter()
        .map(|&c| match c {
            SpanColumn::TraceId => text(|r| Some(&r.trace_id)),
            SpanColumn::SpanId => text(|r| Some(&r.span_id)),
            SpanColumn::Name => text(|r| Some(&r.name)),
            SpanColumn::Kind => text(|r| Some(if r.gen_ai_provider.is_some() { "client" } else { "internal" })),
            SpanColumn::StartTime => ts(|r| r.start_ns),
            SpanColumn::EndTime => ts(|r| r.start_ns + r.duration_ns),
            SpanColumn::DurationNs => int(|r| Some(r.duration_ns)),
            SpanColumn::StatusCode => text(|r| Some(if r.error { "error" } else { "ok" })),
            SpanColumn::Resource(ResourceColumn::ServiceName) => text(|r| Some(&r.service_name)),
            SpanColumn::Resource(ResourceColumn::CloudProvider) => text(|r| r.cloud_provider.as_deref()),
            SpanColumn::Resource(ResourceColumn::CloudRegion) => text(|r| r.cloud_region.as_deref()),
            SpanColumn::GenAiProvider => text(|r| r.gen_ai_provider.as_deref()),
            SpanColumn::GenAiOperation => text(|r| r.gen_ai_operation.as_deref()),
            SpanColumn::RequestModel => text(|r| r.request_model.as_deref()),
            SpanColumn::InputTokens => int(|r| r.input_tokens),
            SpanColumn::OutputTokens => int(|r| r.output_tokens),
            SpanColumn::SessionId => text(|r| r.session_id.as_deref()),
            SpanColumn::ToolName => text(|r| r.tool_name.as_deref()),
            SpanColumn::TokenCostUsd => Arc::new(rows.iter().map(|r| r.token_cost_usd).collect::<Float64Array>()),
            SpanColumn::CostUsd => Arc::new(rows.iter().map(|r| r.cost_usd).collect::<Float64Array>()),
            SpanColumn::ErrorType => text(|r| r.error.then_some("timeout")),
            SpanColumn::HedgeId => text(|r| r.hedge_id.as_deref()),
            SpanColumn::HedgeWinner => Arc::new(rows.iter().map(|r| r.hedge_winner).collect::<BooleanArray>()),
            other => null(other),
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("fixture columns follow the stored schema")
}

fn empty_maps(n: usize) -> ArrayRef {
    let names = datafusion::arrow::array::MapFieldNames {
        entry: MAP_ENTRIES.into(),
        key: MAP_KEYS.into(),
        value: MAP_VALUES.into(),
    };
    let mut builder = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
        .with_values_field(Arc::new(Field::new(MAP_VALUES, DataType::Utf8, true)));
    for _ in 0..n {
        builder.append(true).expect("empty map");
    }
    Arc::new(builder.finish())
}

/// Writes `batch` (one signal's rows, all in one hour) as a file in the collector's layout under `data_dir`, and
/// returns its catalog entry.
pub fn write_parquet(
    data_dir: &Path,
    signal: Signal,
    batch: &RecordBatch,
    wal_seq: u64,
) -> std::io::Result<ParquetFile> {
    let time = batch
        .column_by_name(signal.time_column())
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .ok_or_else(|| std::io::Error::other("batch has no time column"))?;
    let min = time.iter().flatten().min().ok_or_else(|| std::io::Error::other("empty batch"))?;
    let max = time.iter().flatten().max().unwrap_or(min);
    let start = chrono::DateTime::from_timestamp_nanos(min);
    if chrono::DateTime::from_timestamp_nanos(max).format("%Y-%m-%d %H").to_string()
        != start.format("%Y-%m-%d %H").to_string()
    {
        return Err(std::io::Error::other("a file holds one hour of rows"));
    }
    let name =
        FileName { wal_seq, min_time_ns: min, max_time_ns: max, nonce: (wal_seq as u32).wrapping_mul(2654435761) };
    let relative = Path::new(signal.table_name())
        .join(format!("date={}", start.format("%Y-%m-%d")))
        .join(format!("hour={}", start.format("%H")))
        .join(name.to_string());
    let path = data_dir.join(&relative);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let file = std::fs::File::create(&path)?;
    // The collector's own writer settings at their defaults (row groups, zstd level, dictionaries, statistics,
    // encodings), so tests and benchmarks read files like the ones `tailscope serve` writes.
    let storage = tailscope_core::config::StorageConfig::default();
    let props = tailscope_core::layout::ParquetOptions {
        row_group_rows: storage.row_group_rows,
        zstd_level: storage.zstd_level,
    }
    .properties(signal)
    .map_err(std::io::Error::other)?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(std::io::Error::other)?;
    writer.write(batch).map_err(std::io::Error::other)?;
    writer.close().map_err(std::io::Error::other)?;
    let size = std::fs::metadata(&path)?.len();
    ParquetFile::from_relative_path(&relative, size).ok_or_else(|| std::io::Error::other("not in the layout"))
}

/// Overwrites every column chunk of the Parquet file at `path` with `0xff` (page headers and data alike), leaving
/// its footer and page index intact: what a damaged disk block inside the data does.
pub fn damage_pages(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let metadata = datafusion::parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(std::io::Error::other)?;
    for row_group in metadata.row_groups() {
        for column in row_group.columns() {
            let (start, len) = column.byte_range();
            file.write_all_at(&vec![0xff; len as usize], start)?;
        }
    }
    Ok(())
}

/// numpy's `quantile(values, q)` (linear interpolation) by a full sort: the reference tests check
/// `quantile_exact`'s selection algorithm against, independent of it.
pub fn numpy_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let h = (v.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let g = h - lo as f64;
    let d = v[hi] - v[lo];
    if g >= 0.5 { v[hi] - d * (1.0 - g) } else { v[lo] + d * g }
}
