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
    let mut encoder = Encoder::new(format, output.schema.clone())?;
    for batch in &output.batches {
        out.write_all(&encoder.write(batch)?)?;
    }
    out.write_all(&encoder.finish()?)?;
    Ok(())
}

/// Renders `output` in `format` into a buffer.
pub fn to_bytes(format: Format, output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::new();
    write(format, output, &mut buf)?;
    Ok(buf)
}

/// The bytes an encoder wrote since they were last taken. Shared between the encoder's writer and the
/// [`Encoder`], which hands them out batch by batch.
#[derive(Debug, Clone, Default)]
struct Chunk(Arc<parking_lot::Mutex<Vec<u8>>>);

impl Chunk {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl Write for Chunk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Rows per block of the table format: each block is printed, with its own column widths, as soon as its rows
/// are in (as psql does with `FETCH_COUNT`), so the table format holds one block, not the result.
pub const TABLE_BLOCK_ROWS: usize = 1000;

/// The table format's rows not yet printed: fewer than a block (slices of the batches they came in).
#[derive(Default)]
struct TableBlocks {
    rows: usize,
    pending: Vec<RecordBatch>,
}

impl TableBlocks {
    /// Takes `batch` and renders every block it completes into `out`.
    fn push(&mut self, schema: &SchemaRef, batch: &RecordBatch, out: &mut Chunk) -> Result<(), ArrowError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (TABLE_BLOCK_ROWS - self.rows).min(batch.num_rows() - offset);
            self.pending.push(batch.slice(offset, take));
            self.rows += take;
            offset += take;
            if self.rows == TABLE_BLOCK_ROWS {
                self.render(schema, out)?;
            }
        }
        Ok(())
    }

    /// Renders the rows held as one aligned table (the header alone when there are none) and lets them go.
    fn render(&mut self, schema: &SchemaRef, out: &mut Chunk) -> Result<(), ArrowError> {
        let batches = std::mem::take(&mut self.pending);
        self.rows = 0;
        let table = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), &batches)?;
        writeln!(out, "{table}")?;
        Ok(())
    }
}

enum Writer {
    /// Printed a block of [`TABLE_BLOCK_ROWS`] rows at a time, each block sized for its own rows.
    Table(TableBlocks),
    /// Nested columns are rendered as text when the schema has any.
    Csv(Box<datafusion::arrow::csv::Writer<Chunk>>, Option<SchemaRef>),
    Json(Box<datafusion::arrow::json::Writer<Chunk, datafusion::arrow::json::writer::JsonArray>>),
    JsonLines(Box<datafusion::arrow::json::Writer<Chunk, datafusion::arrow::json::writer::LineDelimited>>),
    Arrow(Box<datafusion::arrow::ipc::writer::StreamWriter<Chunk>>),
    Parquet(Box<datafusion::parquet::arrow::ArrowWriter<Chunk>>),
}

/// Encodes a result batch by batch: each [`Encoder::write`] returns the bytes that batch adds, so a result is
/// sent (HTTP, files, stdout) as it is produced and never held whole. Concatenated, the chunks are exactly what
/// [`write`] produces for the whole result.
pub struct Encoder {
    schema: SchemaRef,
    chunk: Chunk,
    writer: Writer,
    rows: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("rows", &self.rows).finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder of results with `schema` in `format`.
    pub fn new(format: Format, schema: SchemaRef) -> Result<Encoder, ArrowError> {
        let chunk = Chunk::default();
        let json = || datafusion::arrow::json::WriterBuilder::new().with_explicit_nulls(true);
        let writer = match format {
            Format::Table => Writer::Table(TableBlocks::default()),
            Format::Csv => Writer::Csv(
                Box::new(datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(chunk.clone())),
                flat_schema(&schema),
            ),
            Format::Json => Writer::Json(Box::new(json().build(chunk.clone()))),
            Format::JsonLines => Writer::JsonLines(Box::new(json().build(chunk.clone()))),
            Format::Arrow => {
                Writer::Arrow(Box::new(datafusion::arrow::ipc::writer::StreamWriter::try_new(chunk.clone(), &schema)?))
            }
            Format::Parquet => {
                use datafusion::parquet::basic::{Compression, ZstdLevel};
                use datafusion::parquet::file::properties::WriterProperties;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(parquet_error)?))
                    .build();
                Writer::Parquet(Box::new(
                    datafusion::parquet::arrow::ArrowWriter::try_new(chunk.clone(), schema.clone(), Some(props))
                        .map_err(parquet_error)?,
                ))
            }
        };
        Ok(Encoder { schema, chunk, writer, rows: 0 })
    }

    /// Encodes one batch; returns the bytes to send now (possibly none: Parquet buffers a row group).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        self.rows += batch.num_rows();
        match &mut self.writer {
            Writer::Table(blocks) => blocks.push(&self.schema, batch, &mut self.chunk)?,
            Writer::Csv(writer, flat) => match flat {
                Some(flat) => writer.write(&flatten_batch(batch, flat)?)?,
                None => writer.write(batch)?,
            },
            Writer::Json(writer) => writer.write(batch)?,
            Writer::JsonLines(writer) => writer.write(batch)?,
            Writer::Arrow(writer) => writer.write(batch)?,
            Writer::Parquet(writer) => writer.write(batch).map_err(parquet_error)?,
        }
        Ok(self.chunk.take())
    }

    /// Ends the result; returns the last bytes.
    pub fn finish(self) -> Result<Vec<u8>, ArrowError> {
        let Encoder { schema, chunk, writer, rows } = self;
        match writer {
            Writer::Table(mut blocks) => {
                let mut out = chunk.clone();
                // The last, partial block; or the header alone for a result without rows.
                if blocks.rows > 0 || rows == 0 {
                    blocks.render(&schema, &mut out)?;
                }
                writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" })?;
            }
            Writer::Csv(mut writer, flat) => {
                if rows == 0 {
                    // The header alone still tells a reader the columns.
                    writer.write(&RecordBatch::new_empty(flat.unwrap_or(schema)))?;
                }
            }
            Writer::Json(mut writer) => writer.finish()?,
            Writer::JsonLines(mut writer) => writer.finish()?,
            Writer::Arrow(mut writer) => writer.finish()?,
            Writer::Parquet(writer) => {
                writer.close().map_err(parquet_error)?;
            }
        }
        Ok(chunk.take())
    }
}

/// Reads an Arrow IPC stream (what `Accept: application/vnd.apache.arrow.stream` returns).
pub fn read_arrow_stream(bytes: &[u8]) -> Result<QueryOutput, ArrowError> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(QueryOutput { schema, batches })
}

/// Decodes an Arrow IPC stream as its bytes arrive (the CLI reading a server's answer): each [`Self::feed`]
/// returns the batches the bytes completed.
#[derive(Debug, Default)]
pub struct ArrowStreamDecoder {
    decoder: datafusion::arrow::ipc::reader::StreamDecoder,
}

impl ArrowStreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> ArrowStreamDecoder {
        ArrowStreamDecoder::default()
    }

    /// Decodes `bytes`; returns the batches they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut buffer = datafusion::arrow::buffer::Buffer::from(bytes);
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            match self.decoder.decode(&mut buffer)? {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
        Ok(batches)
    }

    /// The schema, once the stream's first message was decoded.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.decoder.schema()
    }

    /// Checks that the stream ended where a message ends.
    pub fn finish(&mut self) -> Result<(), ArrowError> {
        self.decoder.finish()
    }
}

fn parquet_error(e: datafusion::parquet::errors::ParquetError) -> ArrowError {
    ArrowError::ExternalError(Box::new(e))
}

fn is_nested(t: &DataType) -> bool {
    t.is_nested() || matches!(t, DataType::Map(..))
}

/// CSV has no nested values: maps, lists and structs become their text rendering (`{k: v}`, `[a, b]`). The schema
/// CSV writes, when it differs from `schema`.
fn flat_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    if !schema.fields().iter().any(|f| is_nested(f.data_type())) {
        return None;
    }
    Some(Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                if is_nested(f.data_type()) { Arc::new(Field::new(f.name(), DataType::Utf8, true)) } else { f.clone() }
            })
            .collect::<Vec<_>>(),
    )))
}

fn flatten_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let options = FormatOptions::default();
    let columns = batch
        .columns()
        .iter()
        .map(|column| {
            if !is_nested(column.data_type()) {
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

    /// The table format prints each block of [`TABLE_BLOCK_ROWS`] rows as soon as its rows are in: it never waits
    /// for (or holds) the rest of the result. It used to collect every batch and print at the end.
    #[test]
    fn a_table_is_printed_a_block_at_a_time_and_holds_one_block_at_most() {
        let batch = |first: i64, n: i64| {
            RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from_iter_values(first..first + n)) as ArrayRef)])
                .unwrap()
        };
        // Data rows of a rendered table: `| 42 |` lines, less the header.
        let data_rows = |text: &str| text.lines().filter(|l| l.starts_with("| ") && !l.contains(" n ")).count();
        let mut encoder = Encoder::new(Format::Table, batch(0, 1).schema()).unwrap();
        let (mut fed, mut printed, mut pulled_before_first_block) = (0usize, 0usize, None);
        // 25 batches of 100 rows, then one of 2,500 (two and a half blocks), then 7 rows.
        let batches: Vec<RecordBatch> =
            (0..25).map(|i| batch(i * 100, 100)).chain([batch(2500, 2500), batch(5000, 7)]).collect();
        for (i, b) in batches.iter().enumerate() {
            let out = String::from_utf8(encoder.write(b).unwrap()).unwrap();
            fed += b.num_rows();
            let rows = data_rows(&out);
            if rows > 0 && pulled_before_first_block.is_none() {
                pulled_before_first_block = Some(i + 1);
            }
            assert_eq!(rows % TABLE_BLOCK_ROWS, 0, "whole blocks only: {rows} rows after batch {i}");
            // Each block is a table of its own, with its header.
            assert_eq!(out.matches("| n ").count(), rows / TABLE_BLOCK_ROWS, "{out}");
            printed += rows;
            assert!(fed - printed < TABLE_BLOCK_ROWS, "{} rows held after batch {i}", fed - printed);
        }
        assert_eq!(pulled_before_first_block, Some(TABLE_BLOCK_ROWS / 100), "the first block is printed at once");
        let last = String::from_utf8(encoder.finish().unwrap()).unwrap();
        assert_eq!(data_rows(&last), 7, "{last}");
        assert!(last.ends_with("5007 rows\n"), "{last}");
        printed += 7;
        assert_eq!(printed, 5007);

        // A result without rows prints its header; concatenated, the chunks are `write`'s output.
        let empty = String::from_utf8(
            to_bytes(Format::Table, &QueryOutput { schema: batch(0, 1).schema(), batches: vec![] }).unwrap(),
        )
        .unwrap();
        assert!(empty.contains("| n |") && empty.ends_with("0 rows\n"), "{empty}");
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
