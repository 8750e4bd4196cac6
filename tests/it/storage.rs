//! The tables as Delta Lake tables: exactly once across crashes at the commit (the real binary aborted at its
//! failpoints), queries on the snapshot (not a directory listing), the upgrade of an earlier version's data dir, and
//! another Delta reader (Python `deltalake`, delta-rs's own binding) reading tailscope's tables as they are.

use std::path::Path;
use std::process::Command;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::support::{Server, now_ns, query_while_compacting};

/// No time- or size-triggered flush: a test decides when the one flush happens (at shutdown).
const NO_AUTOMATIC_FLUSH: &str = "[storage]\nflush_interval = \"1h\"\n";

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn spans(first_id: u64, n: u64) -> ExportTraceServiceRequest {
    spans_at(now_ns(), first_id, n)
}

/// `n` spans starting at `t` (ns since the epoch).
pub(crate) fn spans_at(t: u64, first_id: u64, n: u64) -> ExportTraceServiceRequest {
    let spans = (first_id..first_id + n)
        .map(|id| Span {
            trace_id: [&[0xcd; 8][..], &id.to_be_bytes()].concat(),
            span_id: (id + 1).to_be_bytes().to_vec(),
            name: "chat".into(),
            kind: 3,
            start_time_unix_nano: t,
            end_time_unix_nano: t + 1_000_000,
            attributes: vec![kv("gen_ai.provider.name", "openai"), kv("gen_ai.request.model", "gpt-4o")],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", "delta")], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// Sends `n` spans (ids from `first_id`) in requests of 100, each acknowledged.
async fn send(server: &Server, first_id: u64, n: u64) {
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.expect("connect");
    for start in (first_id..first_id + n).step_by(100) {
        client.export(spans(start, 100.min(first_id + n - start))).await.expect("acknowledged");
    }
}

async fn count(server: &Server) -> (i64, i64) {
    let rows = server.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").await;
    (rows[0]["n"].as_i64().unwrap(), rows[0]["d"].as_i64().unwrap())
}

/// The actions of every commit in a table's log, in order: `(version, actions)`.
fn commits(table_dir: &Path) -> Vec<(u64, Vec<serde_json::Value>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(table_dir.join("_delta_log")) else { return out };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(version) = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) else { continue };
        let text = std::fs::read_to_string(&path).unwrap();
        let actions = text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
        out.push((version, actions));
    }
    out.sort_by_key(|(v, _)| *v);
    out
}

/// Rows the log's live `add` actions count (`numRecords`), and the `txn` versions per app id, from the log alone.
pub(crate) fn log_rows_and_txns(table_dir: &Path) -> (u64, Vec<(String, u64)>) {
    let mut live = std::collections::BTreeMap::new();
    let mut txns = std::collections::BTreeMap::new();
    for (_, actions) in commits(table_dir) {
        for action in actions {
            if let Some(add) = action.get("add") {
                let rows = add
                    .get("stats")
                    .and_then(|s| s.as_str())
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                    .and_then(|s| s["numRecords"].as_u64())
                    .unwrap_or(0);
                live.insert(add["path"].as_str().unwrap().to_string(), rows);
            }
            if let Some(remove) = action.get("remove") {
                live.remove(remove["path"].as_str().unwrap());
            }
            if let Some(txn) = action.get("txn") {
                txns.insert(txn["appId"].as_str().unwrap().to_string(), txn["version"].as_u64().unwrap());
            }
        }
    }
    (live.values().sum(), txns.into_iter().collect())
}

/// Stops the server with SIGTERM (its final flush reaches the armed failpoint and aborts), then restarts it without
/// the failpoint.
async fn crash_at(server: &mut Server, point: &str) {
    let status = server.terminate();
    assert!(!status.success(), "the server should have aborted at {point}: {status:?}\n{}", server.log());
    assert!(server.log().contains(&format!("TAILSCOPE_FAILPOINT={point}: aborting")), "{}", server.log());
    server.set_env(&[]);
    server.restart().await;
}

/// The flush commits every table (with the WAL position as its `txn` version), then the process dies before the WAL
/// checkpoint: the WAL still holds the records, but start-up finds them in the table and replays none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_checkpoint_commits_nothing_twice() {
    let mut server = Server::start_with_env(NO_AUTOMATIC_FLUSH, &[("TAILSCOPE_FAILPOINT", "flush-after-commit")]).await;
    send(&server, 0, 700).await;
    crash_at(&mut server, "flush-after-commit").await;
    assert!(server.log().contains("not replayed"), "the restart found nothing committed: {}", server.log());
    assert_eq!(count(&server).await, (700, 700));
    let table = server.data_dir.join("spans");
    let (rows, txns) = log_rows_and_txns(&table);
    assert_eq!(rows, 700, "the log holds each row once");
    assert_eq!(txns.len(), 1, "one writer, one app id: {txns:?}");
    assert!(txns[0].0.starts_with("tailscope-wal-"), "{txns:?}");
    // And after more spans and a clean stop, still each once.
    send(&server, 700, 300).await;
    assert!(server.terminate().success());
    let (rows, _) = log_rows_and_txns(&table);
    assert_eq!(rows, 1000);
}

/// The flush wrote its files but committed nothing: they are not part of the table (a reader of the log never sees
/// them), start-up removes them (the pending-flush manifest lists them), and the WAL's records are committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_loses_nothing() {
    let mut server =
        Server::start_with_env(NO_AUTOMATIC_FLUSH, &[("TAILSCOPE_FAILPOINT", "flush-before-commit")]).await;
    send(&server, 0, 500).await;
    crash_at(&mut server, "flush-before-commit").await;
    assert!(
        server.log().contains("removed the files of this collector's own flush that never committed"),
        "{}",
        server.log()
    );
    assert_eq!(count(&server).await, (500, 500));
    let (rows, _) = log_rows_and_txns(&server.data_dir.join("spans"));
    assert_eq!(rows, 500, "the replayed records committed once");
}

/// Every `.parquet` file under a table's partition directories (not the log's own checkpoints).
fn data_files(table_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![table_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "_delta_log") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Queries read the table's snapshot: a Parquet file that no commit added (copied in by hand) is not counted, and a
/// committed file deleted by hand is skipped with a warning instead of failing the query or being counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_read_the_snapshot_not_the_directory() {
    let mut server = Server::start_with(NO_AUTOMATIC_FLUSH).await;
    send(&server, 0, 300).await;
    assert!(server.terminate().success());
    send_after_restart(&mut server, 300, 200).await;
    assert!(server.terminate().success());
    server.restart().await;
    assert_eq!(count(&server).await, (500, 500));
    let table = server.data_dir.join("spans");
    let files = data_files(&table);
    assert_eq!(files.len(), 2, "one file per flush: {files:?}");
    // A stray copy of a committed file, under another name: not in the log, not in the table.
    let stray = files[0].with_file_name("copied-by-hand.parquet");
    std::fs::copy(&files[0], &stray).unwrap();
    assert_eq!(count(&server).await, (500, 500), "a file no commit added was read");
    // A committed file deleted by hand: its rows are gone, the others answer, nothing fails.
    std::fs::remove_file(&files[1]).unwrap();
    let (n, d) = count(&server).await;
    assert_eq!(n, d);
    assert!(n == 300 || n == 200, "the remaining file's rows only: {n}");
    assert!(server.log().contains("vanished from disk"), "{}", server.log());
}

async fn send_after_restart(server: &mut Server, first_id: u64, n: u64) {
    server.restart().await;
    send(server, first_id, n).await;
}

/// A data dir of an earlier version (the same hive directories, no Delta log) becomes Delta tables in place at the
/// first start: nothing copied, nothing lost or doubled; the CLI reads it before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_data_dir_is_converted_in_place() {
    let mut server = Server::start_with(NO_AUTOMATIC_FLUSH).await;
    send(&server, 0, 400).await;
    assert!(server.terminate().success());
    for table in ["spans", "metrics", "logs"] {
        let _ = std::fs::remove_dir_all(server.data_dir.join(table).join("_delta_log"));
    }
    let before = data_files(&server.data_dir.join("spans"));
    // A reader does not convert: the CLI lists the directories as before.
    let out = Command::new(crate::support::tailscope_bin())
        .args(["query", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--format", "csv", "SELECT count(*) AS n FROM spans"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("400"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!server.data_dir.join("spans/_delta_log").exists(), "the CLI wrote to the data dir");
    server.restart().await;
    assert!(server.log().contains("converted the table of an earlier version"), "{}", server.log());
    assert_eq!(count(&server).await, (400, 400));
    assert_eq!(data_files(&server.data_dir.join("spans")), before, "files were moved or copied");
    let (rows, _) = log_rows_and_txns(&server.data_dir.join("spans"));
    // Converted files carry no row count (their footers are not read at conversion).
    assert_eq!(rows, 0);
    assert_eq!(commits(&server.data_dir.join("spans"))[0].1.iter().filter(|a| a.get("add").is_some()).count(), 1);
}

/// delta-rs's Python binding (`pip install deltalake`) reads tailscope's `spans` table as it is and finds the same
/// rows as `tailscope query`: count, distinct span ids, the partition values and the time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deltalake_reads_the_tables_as_they_are() {
    let mut server = Server::start_with(NO_AUTOMATIC_FLUSH).await;
    send(&server, 0, 250).await;
    assert!(server.terminate().success());
    send_after_restart(&mut server, 250, 150).await;
    // Two flushes, two commits; every row committed.
    assert!(server.terminate().success());
    server.restart().await;
    let ours = server
        .sql(
            "SELECT count(*) AS n, count(DISTINCT span_id) AS d, min(date) AS date, \
             CAST(to_unixtime(min(start_time)) AS BIGINT) AS t FROM spans",
        )
        .await;
    // delta-rs's own SQL engine over the table (pyarrow's dataset scan refuses to cast the files' nanosecond
    // timestamps to the declared microseconds, see docs/storage.md).
    let script = r#"
import sys, json
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
t = DeltaTable(sys.argv[1])
q = QueryBuilder().register("spans", t)
r = pa.table(q.execute("SELECT count(*) AS n, count(DISTINCT span_id) AS d, min(date) AS date, "
                       "CAST(to_unixtime(min(start_time)) AS BIGINT) AS t FROM spans").read_all()).to_pylist()[0]
r["partitions"] = t.metadata().partition_columns
r["version"] = t.version()
print(json.dumps(r))
"#;
    let table = server.data_dir.join("spans");
    let out = Command::new("python3").arg("-c").arg(script).arg(&table).output().unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("ModuleNotFoundError") && std::env::var_os("TAILSCOPE_REQUIRE_DELTALAKE").is_none() {
            eprintln!(
                "note: python3 -m pip install deltalake to check that delta-rs's Python binding reads the tables"
            );
            return;
        }
        panic!("deltalake failed to read {}: {stderr}", table.display());
    }
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["n"], ours[0]["n"], "{theirs} vs {ours:?}");
    assert_eq!(theirs["n"], 400);
    assert_eq!(theirs["d"], ours[0]["d"]);
    assert_eq!(theirs["date"], ours[0]["date"]);
    assert_eq!(theirs["t"], ours[0]["t"]);
    assert_eq!(theirs["partitions"], serde_json::json!(["date", "hour", "project"]));
}

const HOUR_NS: u64 = 3_600_000_000_000;

/// Spans of an hour that ended hours ago, flushed every 100 ms in small requests: many small files in one closed
/// partition. Compaction rewrites them into one file in one commit (`dataChange = false`) while queries loop: no
/// query fails, the count never changes; vacuum deletes the small files after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_a_closed_hours_small_files_while_queries_run() {
    let config = "[storage]\nflush_interval = \"50ms\"\ncompaction_min_files = 4\ncompaction_after = \"0s\"\n\
                  maintenance_interval = \"1h\"\nvacuum_grace = \"3s\"\n[query]\ntimeout = \"2s\"\n";
    let mut server = Server::start_with(config).await;
    let hour = (now_ns() / HOUR_NS - 3) * HOUR_NS;
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.expect("connect");
    // More for the benchmark in docs/benchmarks.md (TAILSCOPE_COMPACTION_REQUESTS=300).
    let requests: u64 =
        std::env::var("TAILSCOPE_COMPACTION_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(30).clamp(10, 3000);
    for i in 0..requests {
        client.export(spans_at(hour + i * 1_000_000, i * 100, 100)).await.expect("acknowledged");
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }
    let sql = "SELECT count(*) AS n, count(DISTINCT span_id) AS d, sum(duration_ns) AS s FROM spans";
    let query_before = median_time(&server, sql).await;
    // Everything flushed (the restart replays nothing and shows the committed files).
    assert!(server.terminate().success());
    let table = server.data_dir.join("spans");
    let small = data_files(&table).len();
    assert!(small >= 10, "expected many small files, found {small}");
    let (first, queries) = query_while_compacting(&mut server, config, sql, small).await;
    assert_eq!(first[0]["n"], requests * 100);
    assert!(server.metric("tailscope_compactions").await >= 1.0);
    let files = data_files(&table);
    assert_eq!(files.len(), 1, "one file after compaction and vacuum: {files:?}");
    let removed_flag = commits(&table)
        .iter()
        .flat_map(|(_, a)| a.iter())
        .filter_map(|a| a.get("remove"))
        .all(|r| r["dataChange"] == false);
    assert!(removed_flag, "compaction's removes must say dataChange=false");
    assert_eq!(server.sql(sql).await, first);
    let query_after = median_time(&server, sql).await;
    let (rows, _) = log_rows_and_txns(&table);
    assert_eq!(rows, requests * 100);
    eprintln!(
        "compaction: {small} files -> {} file; `{sql}` {:.1} ms -> {:.1} ms (median of 7); {queries} queries during it",
        files.len(),
        query_before.as_secs_f64() * 1e3,
        query_after.as_secs_f64() * 1e3
    );
    server.terminate();
}

/// Retention removes whole partitions past the table's maximum age with one Delta commit, the rows of younger
/// partitions stay, and vacuum deletes the removed files after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_partitions_then_vacuum_deletes_them() {
    let config = "[storage]\nflush_interval = \"1h\"\nretention_spans = \"2h\"\nmaintenance_interval = \"500ms\"\n\
                  vacuum_grace = \"2s\"\n[query]\ntimeout = \"1s\"\n";
    let mut server = Server::start_with(config).await;
    let now = now_ns();
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.expect("connect");
    client.export(spans_at(now - 5 * HOUR_NS, 0, 200)).await.unwrap();
    client.export(spans_at(now - 4 * HOUR_NS, 200, 100)).await.unwrap();
    client.export(spans_at(now, 300, 50)).await.unwrap();
    assert!(server.terminate().success());
    let table = server.data_dir.join("spans");
    assert_eq!(data_files(&table).len(), 3);
    server.restart().await;
    server
        .scrape_until("retention and vacuum", |s| {
            s.sum("tailscope_retention_files_removed_total", &[("table", "spans")]) >= 2.0
                && s.sum("tailscope_vacuum_files_deleted_total", &[("table", "spans")]) >= 2.0
        })
        .await;
    assert_eq!(count(&server).await, (50, 50));
    assert_eq!(data_files(&table).len(), 1, "the old partitions' files were not deleted");
    let deletes: Vec<_> = commits(&table)
        .into_iter()
        .filter(|(_, a)| a.iter().any(|a| a.get("commitInfo").is_some_and(|c| c["operation"] == "DELETE")))
        .collect();
    assert_eq!(deletes.len(), 1, "one remove commit for both partitions");
}

/// The median time of 7 runs of `sql`.
async fn median_time(server: &Server, sql: &str) -> std::time::Duration {
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = std::time::Instant::now();
        server.sql(sql).await;
        times.push(start.elapsed());
    }
    times.sort();
    times[3]
}

/// Sends `n` spans in requests of 100, 40 ms apart (several flushes at a 50 ms flush interval).
async fn send_paced(server: &Server, first_id: u64, n: u64) {
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.expect("connect");
    for start in (first_id..first_id + n).step_by(100) {
        client.export(spans(start, 100)).await.expect("acknowledged");
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
}

/// Two collectors, each with its own WAL, flushing into one `spans` table at the same time (a shared directory on
/// the local disk): each commit lands (delta-rs takes the next version when another writer took one; the local log
/// store creates a commit file only if absent), each under its own transaction id, and no row is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_commit_to_one_table_at_once() {
    let config = "[storage]\nflush_interval = \"50ms\"\n";
    let mut a = Server::start_with(config).await;
    let b_dir = a.dir().join("b-data");
    std::fs::create_dir_all(&b_dir).unwrap();
    std::os::unix::fs::symlink(a.data_dir.join("spans"), b_dir.join("spans")).unwrap();
    let mut b = Server::start_at(b_dir, config).await;
    tokio::join!(send_paced(&a, 0, 2000), send_paced(&b, 1_000_000, 2000));
    assert!(a.terminate().success(), "{}", a.log());
    assert!(b.terminate().success(), "{}", b.log());
    let table = a.data_dir.join("spans");
    let (rows, txns) = log_rows_and_txns(&table);
    assert_eq!(rows, 4000, "the log holds every row once");
    assert_eq!(txns.len(), 2, "one transaction id per collector: {txns:?}");
    let flush_commits = commits(&table)
        .iter()
        .filter(|(_, a)| a.iter().any(|a| a.get("commitInfo").is_some_and(|c| c["operation"] == "WRITE")))
        .count();
    assert!(flush_commits >= 4, "expected interleaved flushes, got {flush_commits} commits");
    a.restart().await;
    assert_eq!(count(&a).await, (4000, 4000));
}
