//! In-process cost of tailscope's ingest work per span, against raw protobuf decoding of the same requests.
//!
//! ```text
//! cargo run --profile bench -p tailscope-benches --bin normalize -- --rounds 20
//! ```
//!
//! Stages, each timed over the same corpus (single thread): prost decode (the baseline every OTLP server pays),
//! tailscope's normalise + price straight from the protobuf bytes (Arrow batch), the same through prost structs
//! (the OTLP/JSON path's shape), + WAL encoding (Arrow IPC), and the Parquet encoding a flush does.

// Shared with the ingest benchmark, which also uses the stamping helpers.
#[path = "../ingest/corpus.rs"]
#[allow(dead_code)]
mod corpus;

use std::time::Instant;

use clap::Parser;
use collector::cost::Pricer;
use collector::normalize::{normalize_traces, normalize_traces_protobuf};
use datafusion::arrow::compute::concat_batches;
use datafusion::parquet::arrow::ArrowWriter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailscope_core::cost::PricingConfig;
use tailscope_core::layout::ParquetOptions;
use tailscope_core::schema::{MAP_ENTRIES, MAP_KEYS, MAP_VALUES, ResourceColumn, Signal, SpanColumn};

/// Per-span cost of each ingest stage.
#[derive(Debug, Parser)]
struct Args {
    /// Passes over the corpus per stage.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Distinct requests in the corpus.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 200)]
    spans_per_request: usize,
}

// Long by design: the stages of the path timed one after another, each printed as it is measured.
fn main() {
    let args = Args::parse();
    let corpus = corpus::build(args.requests, args.spans_per_request, 42);
    let spans = (corpus.spans() * args.rounds) as f64;
    let pricer = Pricer::from_config(&PricingConfig::default()).expect("default prices");
    println!(
        "corpus: {} requests, {} spans, {:.0} bytes/span",
        corpus.requests.len(),
        corpus.spans(),
        corpus.bytes() as f64 / corpus.spans() as f64
    );

    let time = |label: &str, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..args.rounds {
            f();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{label:<42} {:>10.0} spans/s  {:>7.2} µs/span", spans / secs, secs * 1e6 / spans);
        spans / secs
    };
    let decode = time("decode (prost)", &mut || {
        for r in &corpus.requests {
            std::hint::black_box(ExportTraceServiceRequest::decode(&r.bytes[..]).unwrap());
        }
    });
    let normalise = time("normalise + price from protobuf bytes", &mut || {
        for r in &corpus.requests {
            std::hint::black_box(normalize_traces_protobuf(&r.bytes, &pricer).unwrap());
        }
    });
    time("(prost decode, then the same normaliser)", &mut || {
        for r in &corpus.requests {
            let req = ExportTraceServiceRequest::decode(&r.bytes[..]).unwrap();
            std::hint::black_box(normalize_traces(&req, &pricer).unwrap());
        }
    });
    // The WAL keeps a trace request as received: framing it is a copy and a crc.
    let mut framed = Vec::new();
    let wal = time("normalise + price + WAL record", &mut || {
        for r in &corpus.requests {
            let n = normalize_traces_protobuf(&r.bytes, &pricer).unwrap();
            framed.clear();
            collector::wal::frame_record(&mut framed, 1, collector::wal::RecordKind::OtlpTraces, &r.bytes);
            std::hint::black_box((&n, &framed));
        }
    });
    let batches: Vec<_> =
        corpus.requests.iter().map(|r| normalize_traces_protobuf(&r.bytes, &pricer).unwrap().batch).collect();
    let all = concat_batches(&Signal::Spans.schema(), &batches).unwrap();
    // What the memory budget reserves per request byte (collector::receiver::NORMALISED_BYTES_PER_BODY_BYTE).
    let arrow: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    println!(
        "arrow: {:.0} bytes/span in request batches, {:.2} bytes per protobuf byte; concatenated {:.0} bytes/span",
        arrow as f64 / corpus.spans() as f64,
        arrow as f64 / corpus.bytes() as f64,
        all.get_array_memory_size() as f64 / corpus.spans() as f64
    );
    let zstd_level = tailscope_core::config::StorageConfig::default().zstd_level;
    let props = ParquetOptions { row_group_rows: 1 << 20, zstd_level }.properties(Signal::Spans).unwrap();
    let mut parquet_bytes = 0;
    let parquet = time(&format!("Parquet encode (zstd {zstd_level}, flush)"), &mut || {
        let mut w = ArrowWriter::try_new(Vec::new(), all.schema(), Some(props.clone())).unwrap();
        w.write(&all).unwrap();
        parquet_bytes = w.into_inner().unwrap().len();
    });
    println!(
        "parquet: {:.1} bytes/span; the same requests as OTLP protobuf + zstd 3: {:.1} bytes/span",
        parquet_bytes as f64 / corpus.spans() as f64,
        corpus.zstd_bytes_per_span(3).unwrap()
    );
    if std::env::var("TAILSCOPE_PARQUET_VARIANTS").is_ok() {
        use datafusion::parquet::basic::{Compression, ZstdLevel};
        use datafusion::parquet::file::properties::WriterProperties;
        use datafusion::parquet::schema::types::ColumnPath;
        let variant = |label: &str, props: WriterProperties| {
            let mut bytes = 0;
            time(label, &mut || {
                let mut w = ArrowWriter::try_new(Vec::new(), all.schema(), Some(props.clone())).unwrap();
                w.write(&all).unwrap();
                bytes = w.into_inner().unwrap().len();
            });
            println!("    -> {:.1} bytes/span", bytes as f64 / corpus.spans() as f64);
        };
        use datafusion::parquet::file::properties::EnabledStatistics;
        let base = || props.clone().into_builder();
        let no_dict_ids = |mut b: datafusion::parquet::file::properties::WriterPropertiesBuilder| {
            for c in [SpanColumn::TraceId, SpanColumn::SpanId, SpanColumn::ParentSpanId].map(SpanColumn::name) {
                b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
            }
            b
        };
        let chunk_stats = |mut b: datafusion::parquet::file::properties::WriterPropertiesBuilder| {
            b = b.set_statistics_enabled(EnabledStatistics::Chunk);
            for c in [SpanColumn::StartTime.name(), SpanColumn::EndTime.name()] {
                b = b.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::Page);
            }
            b
        };
        let maps =
            [SpanColumn::Attributes, SpanColumn::Resource(ResourceColumn::ResourceAttributes)].map(SpanColumn::name);
        let sorted = {
            use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
            let start = SpanColumn::StartTime.of(&all).unwrap().clone();
            let idx = lexsort_to_indices(&[SortColumn { values: start, options: None }], None).unwrap();
            take_record_batch(&all, &idx).unwrap()
        };
        for (label, props) in [
            ("tailscope props", base().build()),
            ("+ chunk statistics (page for times)", chunk_stats(base()).build()),
            ("+ ids without dictionary", no_dict_ids(base()).build()),
            ("+ both", no_dict_ids(chunk_stats(base())).build()),
            (
                "+ both, no bloom filter",
                no_dict_ids(chunk_stats(base()))
                    .set_column_bloom_filter_enabled(ColumnPath::from(SpanColumn::TraceId.name()), false)
                    .build(),
            ),
            (
                "+ both, zstd 3",
                no_dict_ids(chunk_stats(base()))
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
                    .build(),
            ),
            ("+ both, no dictionary on attribute maps", {
                let mut b = no_dict_ids(chunk_stats(base()));
                for m in maps {
                    for leaf in [MAP_KEYS, MAP_VALUES] {
                        b = b.set_column_dictionary_enabled(
                            ColumnPath::new(vec![m.into(), MAP_ENTRIES.into(), leaf.into()]),
                            false,
                        );
                    }
                }
                b.build()
            }),
            ("+ both, no dictionary on attribute values", {
                let mut b = no_dict_ids(chunk_stats(base()));
                for m in maps {
                    b = b.set_column_dictionary_enabled(
                        ColumnPath::new(vec![m.into(), MAP_ENTRIES.into(), MAP_VALUES.into()]),
                        false,
                    );
                }
                b.build()
            }),
            ("+ both, no dictionaries at all", no_dict_ids(chunk_stats(base())).set_dictionary_enabled(false).build()),
            (
                "+ both, no statistics at all but times",
                no_dict_ids(chunk_stats(base()).set_statistics_enabled(EnabledStatistics::None))
                    .set_column_statistics_enabled(
                        ColumnPath::from(SpanColumn::StartTime.name()),
                        EnabledStatistics::Page,
                    )
                    .build(),
            ),
        ] {
            let mut bytes = 0;
            time(&format!("time-sorted: {label}"), &mut || {
                let mut w = ArrowWriter::try_new(Vec::new(), sorted.schema(), Some(props.clone())).unwrap();
                w.write(&sorted).unwrap();
                bytes = w.into_inner().unwrap().len();
            });
            println!("    -> {:.1} bytes/span", bytes as f64 / corpus.spans() as f64);
        }
        let _ = (variant, WriterProperties::builder);
    }
    let end_to_end = 1.0 / (1.0 / wal + 1.0 / parquet);
    println!(
        "in-process ingest work: {:.0} spans/s per core = {:.2}x the decode-only rate ({:.2}x normalise alone)",
        end_to_end,
        end_to_end / decode,
        normalise / decode
    );
}
