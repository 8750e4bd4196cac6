//! Rendering a result: a terminal table, CSV, JSON (an array of row objects), Arrow IPC or Parquet.
//!
//! The CLI and the HTTP API share these, so `tailscope query --format csv` and `Accept: text/csv` print the same
//! bytes.

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::engine::QueryOutput;

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM_MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table, for terminals.
    Table,
    /// RFC 4180 CSV with a header line; nested values (attribute maps, lists) rendered as text.
    Csv,
    /// A JSON array of row objects; every column present in every object (NULL as `null`).
    Json,
    /// Newline-delimited JSON: one row object per line.
    JsonLines,
    /// An Arrow IPC stream.
    Arrow,
    /// A Parquet file (zstd).
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "table" => Format::Table,
            "csv" => Format::Csv,
            "json" => Format::Json,
            "ndjson" | "jsonl" => Format::JsonLines,
            "arrow" => Format::Arrow,
            "parquet" => Format::Parquet,
            other => {
                return Err(format!("unknown format {other:?}: use table, csv, json, ndjson, arrow or parquet"));
            }
        })
    }
}

impl Format {
    /// The HTTP `Content-Type` of this format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::JsonLines => "application/x-ndjson",
            Format::Arrow => ARROW_STREAM_MEDIA_TYPE,
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The format an HTTP `Accept` header asks for (JSON when it names none we know).
    pub fn from_accept(accept: &str) -> Format {
        for part in accept.split(',') {
            let media = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            match media.as_str() {
                "text/csv" => return Format::Csv,
                ARROW_STREAM_MEDIA_TYPE => return Format::Arrow,
                "application/x-ndjson" | "application/jsonl" => return Format::JsonLines,
                "application/vnd.apache.parquet" => return Format::Parquet,
                "application/json" => return Format::Json,
                "text/plain" => return Format::Table,
                _ => {}
            }
        }
        Format::Json
    }
}

/// Writes `output` in `format` to `out`.
pub fn write(format: Format, output: &QueryOutput, out: &mut (dyn Write + Send)) -> Result<(), ArrowError> {
    match format {
        Format::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(
                output.schema.clone(),
                &output.batches,
            )?;
            writeln!(out, "{table}")?;
            let n = output.num_rows();
            writeln!(out, "{n} row{}", if n == 1 { "" } else { "s" })?;
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            let (schema, batches) = flatten_nested(output)?;
            if batches.is_empty() {
                // The header alone still tells a reader the columns.
                writer.write(&RecordBatch::new_empty(schema))?;
            }
            for batch in &batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            if output.num_rows() == 0 {
                out.write_all(b"[]")?;
                return Ok(());
            }
            let mut writer = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut *out);
            for batch in &output.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::JsonLines => {
            let mut writer = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut *out);
            for batch in &output.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Arrow => {
            let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut *out, &output.schema)?;
            for batch in &output.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Parquet => {
            use datafusion::parquet::arrow::ArrowWriter;
            use datafusion::parquet::basic::{Compression, ZstdLevel};
            use datafusion::parquet::file::properties::WriterProperties;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(parquet_error)?))
                .build();
            let mut writer =
                ArrowWriter::try_new(&mut *out, output.schema.clone(), Some(props)).map_err(parquet_error)?;
            for batch in &output.batches {
                writer.write(batch).map_err(parquet_error)?;
            }
            writer.close().map_err(parquet_error)?;
        }
    }
    Ok(())
}

/// Renders `output` in `format` into a buffer.
pub fn to_bytes(format: Format, output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::new();
    write(format, output, &mut buf)?;
    Ok(buf)
}

/// Reads an Arrow IPC stream (what `Accept: application/vnd.apache.arrow.stream` returns).
pub fn read_arrow_stream(bytes: &[u8]) -> Result<QueryOutput, ArrowError> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(QueryOutput { schema, batches })
}

fn parquet_error(e: datafusion::parquet::errors::ParquetError) -> ArrowError {
    ArrowError::ExternalError(Box::new(e))
}

/// CSV has no nested values: maps, lists and structs become their text rendering (`{k: v}`, `[a, b]`).
fn flatten_nested(output: &QueryOutput) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let nested = |t: &DataType| t.is_nested() || matches!(t, DataType::Map(..));
    if !output.schema.fields().iter().any(|f| nested(f.data_type())) {
        return Ok((output.schema.clone(), output.batches.clone()));
    }
    let schema: SchemaRef =
        Arc::new(Schema::new(
            output
                .schema
                .fields()
                .iter()
                .map(|f| {
                    if nested(f.data_type()) { Arc::new(Field::new(f.name(), DataType::Utf8, true)) } else { f.clone() }
                })
                .collect::<Vec<_>>(),
        ));
    let options = FormatOptions::default();
    let batches = output
        .batches
        .iter()
        .map(|batch| {
            let columns = batch
                .columns()
                .iter()
                .map(|column| {
                    if !nested(column.data_type()) {
                        return Ok(column.clone());
                    }
                    let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
                    let mut text = StringBuilder::with_capacity(column.len(), column.len() * 16);
                    for i in 0..column.len() {
                        if column.is_null(i) {
                            text.append_null();
                        } else {
                            text.append_value(formatter.value(i).to_string());
                        }
                    }
                    Ok(Arc::new(text.finish()) as ArrayRef)
                })
                .collect::<Result<Vec<_>, ArrowError>>()?;
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, MapBuilder, StringBuilder};

    fn output() -> QueryOutput {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        map.keys().append_value("http.method");
        map.values().append_value("POST");
        map.append(true).unwrap();
        map.append(true).unwrap();
        let batch = RecordBatch::try_from_iter([
            ("p95_ms", Arc::new(Float64Array::from(vec![Some(977.7499999999999), None])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("attributes", Arc::new(map.finish()) as ArrayRef),
        ])
        .unwrap();
        QueryOutput { schema: batch.schema(), batches: vec![batch] }
    }

    #[test]
    fn json_keeps_every_digit_and_every_column() {
        let json = String::from_utf8(to_bytes(Format::Json, &output()).unwrap()).unwrap();
        assert!(json.contains("977.7499999999999"), "{json}");
        assert!(json.contains("\"p95_ms\":null"), "{json}");
        assert!(json.contains("\"http.method\":\"POST\""), "{json}");
        let empty = QueryOutput { schema: output().schema, batches: vec![] };
        assert_eq!(to_bytes(Format::Json, &empty).unwrap(), b"[]");
    }

    #[test]
    fn csv_renders_nested_values_as_text() {
        let csv = String::from_utf8(to_bytes(Format::Csv, &output()).unwrap()).unwrap();
        assert_eq!(csv, "p95_ms,n,attributes\n977.7499999999999,1,{http.method: POST}\n,2,{}\n");
    }

    #[test]
    fn arrow_round_trips_and_accept_picks_the_format() {
        let bytes = to_bytes(Format::Arrow, &output()).unwrap();
        let back = read_arrow_stream(&bytes).unwrap();
        assert_eq!(back.batches, output().batches);
        assert_eq!(Format::from_accept("text/csv; charset=utf-8"), Format::Csv);
        assert_eq!(Format::from_accept(ARROW_STREAM_MEDIA_TYPE), Format::Arrow);
        assert_eq!(Format::from_accept("*/*"), Format::Json);
    }
}
