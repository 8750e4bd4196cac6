//! The query layer end to end: spans with known durations go in through the official SDK, and every surface
//! (HTTP JSON/CSV/Arrow, Flight SQL, the CLI against the server and against the files) answers with exact
//! percentiles, clear errors and refusals.

use std::process::Command;
use std::time::{Duration, SystemTime};

use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float64Type;
use futures::TryStreamExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer, TracerProvider};

use crate::support::{Server, Transport, tailscope_bin, tracer_provider};

/// Known durations per (provider, model): a body plus a tail, distinct per provider.
fn durations_ms(provider_index: usize, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let body = 100 + ((i * 7919 + provider_index * 31) % 900) as u64;
            if i % 40 == 0 { body + 4000 + (i as u64) * 3 } else { body }
        })
        .collect()
}

const PROVIDERS: [(&str, &str, &str); 2] =
    [("aws.bedrock", "anthropic.claude-sonnet-4", "us-east-1"), ("azure.ai.openai", "gpt-4.1", "eastus")];
const PER_PROVIDER: usize = 150;

/// Sends the known spans (plus one tool span per session) and returns once the SDK has them acknowledged.
async fn ingest_known_spans(server: &Server) {
    let mut by_region = std::collections::BTreeMap::new();
    for (i, (provider, model, region)) in PROVIDERS.iter().enumerate() {
        by_region.entry(*region).or_insert_with(Vec::new).push((i, *provider, *model));
    }
    let start = SystemTime::now() - Duration::from_secs(600);
    for (region, providers) in by_region {
        let tp = tracer_provider(
            server,
            Transport::Grpc,
            vec![KeyValue::new("service.name", "agent"), KeyValue::new("cloud.region", region)],
        );
        let tracer = tp.tracer("query-it");
        for (index, provider, model) in providers {
            for (i, ms) in durations_ms(index, PER_PROVIDER).into_iter().enumerate() {
                let begin = start + Duration::from_millis(i as u64 * 10);
                let mut span = tracer
                    .span_builder(format!("chat {model}"))
                    .with_kind(SpanKind::Client)
                    .with_start_time(begin)
                    .with_attributes(vec![
                        KeyValue::new("gen_ai.operation.name", "chat"),
                        KeyValue::new("gen_ai.provider.name", provider),
                        KeyValue::new("gen_ai.request.model", model),
                        KeyValue::new("gen_ai.usage.input_tokens", 100i64),
                        KeyValue::new("gen_ai.usage.output_tokens", 20i64),
                        KeyValue::new("session.id", format!("{provider}-{}", i % 5)),
                    ])
                    .start(&tracer);
                if i % 25 == 0 {
                    span.set_status(Status::error("upstream 529"));
                }
                span.end_with_timestamp(begin + Duration::from_millis(ms));
            }
        }
        tp.force_flush().expect("spans acknowledged");
        tp.shutdown().expect("provider shut down");
    }
}

/// numpy's value of quantile `q` per provider, in `PROVIDERS` order.
fn exact(q: f64) -> Vec<f64> {
    (0..PROVIDERS.len())
        .map(|i| {
            let ms: Vec<f64> =
                durations_ms(i, PER_PROVIDER).into_iter().map(|d| (d * 1_000_000) as f64 / 1e6).collect();
            query::fixture::numpy_quantile(&ms, q)
        })
        .collect()
}

fn f64s(batches: &[RecordBatch], column: &str) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let c = datafusion::arrow::compute::cast(
                b.column_by_name(column).unwrap(),
                &datafusion::arrow::datatypes::DataType::Float64,
            )
            .unwrap();
            c.as_primitive::<Float64Type>().iter().map(|v| v.unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: one dataset asked the same questions over HTTP, Flight SQL and the CLI, their answers
// compared in one place.
async fn every_surface_answers_exact_percentiles_and_clear_errors() {
    let mut server = Server::start().await;
    ingest_known_spans(&server).await;

    // Acknowledged means queryable: no polling, the very next query sees every span.
    let rows = server.sql("SELECT count(*) AS n FROM llm_calls").await;
    assert_eq!(rows[0]["n"].as_i64(), Some((PROVIDERS.len() * PER_PROVIDER) as i64), "{rows:?}");

    // provider_latency over HTTP JSON, against the independent computation.
    let rows = server
        .sql("SELECT gen_ai_provider, cloud_region, request_model, calls, p50_ms, p95_ms, p99_ms, max_ms, error_rate FROM provider_latency ORDER BY gen_ai_provider")
        .await;
    assert_eq!(rows.len(), PROVIDERS.len(), "{rows:?}");
    for (i, (provider, model, region)) in PROVIDERS.iter().enumerate() {
        let row = &rows[i];
        assert_eq!(row["gen_ai_provider"], *provider);
        assert_eq!(row["request_model"], *model);
        assert_eq!(row["cloud_region"], *region);
        assert_eq!(row["calls"].as_i64(), Some(PER_PROVIDER as i64));
        let ms: Vec<f64> = durations_ms(i, PER_PROVIDER).into_iter().map(|d| (d * 1_000_000) as f64 / 1e6).collect();
        for (col, q) in [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
            let got = row[col].as_f64().unwrap();
            let want = query::fixture::numpy_quantile(&ms, q);
            assert!((got - want).abs() < 1e-9, "{provider} {col}: got {got}, want {want}");
        }
        assert_eq!(row["max_ms"].as_f64(), Some(ms.iter().copied().fold(0.0, f64::max)));
        assert!((row["error_rate"].as_f64().unwrap() - 6.0 / 150.0).abs() < 1e-12, "{row}");
    }

    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/query", server.api_url());
    let sql = "SELECT gen_ai_provider, calls FROM provider_latency ORDER BY gen_ai_provider";

    // CSV.
    let r = http.post(&url).header("accept", "text/csv").json(&serde_json::json!({ "sql": sql })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert_eq!(r.text().await.unwrap(), "gen_ai_provider,calls\naws.bedrock,150\nazure.ai.openai,150\n");

    // Arrow IPC stream.
    let r = http
        .post(&url)
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&serde_json::json!({ "sql": "SELECT p99_ms FROM provider_latency ORDER BY gen_ai_provider" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    let p99 = f64s(&batches, "p99_ms");
    // Binary Arrow keeps every bit, so it equals numpy's value exactly (JSON above is compared within 1e-9
    // because serde_json's default float parser may be one ulp off).
    assert_eq!(p99, exact(0.99));

    // Errors: unknown column (400 naming it), writes (400 read-only), bad JSON body (400).
    let (status, body) = server.sql_raw("SELECT p9999_ms FROM provider_latency").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("p9999_ms"), "{body}");
    for write in [
        "DROP VIEW provider_latency",
        "COPY (SELECT 1) TO 'x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let (status, body) = server.sql_raw(write).await;
        assert_eq!(status, 400, "{write}: {body}");
        assert!(body.contains("read-only"), "{write}: {body}");
    }
    let r = http.post(&url).header("content-type", "application/json").body("{\"query\": 1}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("{\"sql\": "), "{body}");
    assert_eq!(body["kind"], "invalid_sql");
    // The view survived the DROP attempt.
    assert_eq!(server.sql("SELECT count(*) AS n FROM provider_latency").await[0]["n"], 2);

    // Flight SQL with the Rust client: a statement, a prepared statement, catalogs and tables.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.flight_addr))
        .unwrap()
        .connect()
        .await
        .expect("flight connects");
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client
        .execute("SELECT gen_ai_provider, p95_ms, p99_ms FROM provider_latency ORDER BY gen_ai_provider".into(), None)
        .await
        .expect("flight execute");
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = client.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    assert_eq!(f64s(&batches, "p99_ms"), p99);
    assert_eq!(f64s(&batches, "p95_ms"), exact(0.95));

    let mut prepared = client.prepare("SELECT count(*) AS n FROM spans".into(), None).await.expect("prepare");
    let info = prepared.execute().await.expect("prepared execute");
    let batches: Vec<RecordBatch> =
        client.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap().try_collect().await.unwrap();
    assert_eq!(f64s(&batches, "n"), vec![(PROVIDERS.len() * PER_PROVIDER) as f64]);
    prepared.close().await.unwrap();

    let info =
        client.get_tables(CommandGetTables { include_schema: true, ..Default::default() }).await.expect("get tables");
    let batches: Vec<RecordBatch> =
        client.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap().try_collect().await.unwrap();
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("table_name").unwrap().as_string::<i32>().clone();
            (0..col.len()).map(move |i| col.value(i).to_string())
        })
        .collect();
    for name in ["spans", "metrics", "logs", "llm_calls", "sessions", "provider_latency"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    let info = client.get_catalogs().await.expect("get catalogs");
    let batches: Vec<RecordBatch> =
        client.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap().try_collect().await.unwrap();
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "tailscope");

    // Errors over Flight carry the same message and a gRPC code.
    let err = client.execute("SELECT nope FROM spans".into(), None).await.unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let err = client.execute("DELETE FROM spans".into(), None).await.unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    // ADBC, the driver DBeaver-style and Python clients use (when `adbc_driver_flightsql` is installed).
    adbc_agrees(&server.flight_addr.to_string(), &p99);

    // The CLI against the server: JSON rows.
    let out = Command::new(tailscope_bin())
        .args(["query", "--server", &server.api_url(), "--format", "json"])
        .arg("SELECT gen_ai_provider, p99_ms FROM provider_latency ORDER BY gen_ai_provider")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (row, want) in cli_rows.iter().zip(&p99) {
        assert!((row["p99_ms"].as_f64().unwrap() - want).abs() < 1e-9, "{row}");
    }
    let out = Command::new(tailscope_bin())
        .args(["query", "--server", &server.api_url(), "SELECT nope FROM spans"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{}", String::from_utf8_lossy(&out.stderr));

    // After a clean stop everything is in Parquet: the CLI reads the files directly and agrees.
    assert!(server.terminate().success());
    let dir = server.data_dir.to_str().unwrap().to_string();
    let out = Command::new(tailscope_bin())
        .args(["query", "--data-dir", &dir, "--format", "csv"])
        .arg("SELECT gen_ai_provider, p99_ms FROM provider_latency ORDER BY gen_ai_provider")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("gen_ai_provider,p99_ms"));
    let from_files: Vec<(String, f64)> = lines
        .map(|l| {
            let (p, v) = l.split_once(',').unwrap();
            (p.to_string(), v.parse().unwrap())
        })
        .collect();
    let want: Vec<(String, f64)> = PROVIDERS.iter().map(|p| p.0.to_string()).zip(exact(0.99)).collect();
    assert_eq!(from_files, want, "CSV prints the shortest repr that round-trips");
    let out = Command::new(tailscope_bin())
        .args([
            "query",
            "--data-dir",
            &dir,
            "--format",
            "table",
            "SELECT count(*) AS n FROM spans WHERE start_time > now() - INTERVAL '1 day'",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 300 |"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new(tailscope_bin())
        .args(["query", "--data-dir", &dir, "INSERT INTO spans SELECT * FROM spans"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));

    // The files are engine-neutral: DuckDB reads the same rows (when the duckdb module is installed).
    duckdb_agrees(&server.data_dir, (PROVIDERS.len() * PER_PROVIDER) as u64);
}

fn duckdb_agrees(data_dir: &std::path::Path, want: u64) {
    let script = format!(
        "import duckdb; print(duckdb.connect().execute(\"SELECT count(*) FROM read_parquet('{}/spans/**/*.parquet', hive_partitioning=true) WHERE gen_ai_operation = 'chat'\").fetchone()[0])",
        data_dir.display()
    );
    let out = Command::new("python3").args(["-c", &script]).output();
    match out {
        Ok(out) if out.status.success() => {
            let n: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(n, want, "DuckDB reads the same rows");
        }
        Ok(out)
            if std::env::var_os("TAILSCOPE_REQUIRE_DUCKDB").is_some()
                || !String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError") =>
        {
            panic!("duckdb required but failed: {}", String::from_utf8_lossy(&out.stderr))
        }
        _ => eprintln!("note: python3 -m pip install duckdb to check that DuckDB reads the files"),
    }
}

/// Python's ADBC Flight SQL driver: browse the catalog (GetObjects) and run the percentile query.
fn adbc_agrees(flight_addr: &str, p99: &[f64]) {
    let script = r#"
import sys
import adbc_driver_flightsql.dbapi as flight_sql
with flight_sql.connect("grpc://" + sys.argv[1]) as conn:
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = sorted(t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"])
    print(",".join(tables))
    with conn.cursor() as cur:
        cur.execute("SELECT gen_ai_provider, p99_ms FROM provider_latency ORDER BY gen_ai_provider")
        for provider, p99 in cur.fetchall():
            print(repr(p99))
"#;
    let out = Command::new("python3").args(["-c", script, flight_addr]).output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let tables = lines.next().unwrap_or_default();
            assert!(tables.contains("provider_latency") && tables.contains("spans"), "ADBC tables: {tables}");
            let got: Vec<f64> = lines.map(|l| l.parse().unwrap()).collect();
            assert_eq!(got, p99, "ADBC returns the exact same percentiles");
        }
        Ok(out)
            if std::env::var_os("TAILSCOPE_REQUIRE_ADBC").is_some()
                || !String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError") =>
        {
            panic!("ADBC query failed: {}", String::from_utf8_lossy(&out.stderr))
        }
        _ => eprintln!("note: python3 -m pip install adbc-driver-flightsql pyarrow to test ADBC"),
    }
}
