//! Retention per table and per project, size caps, `tailscope retention [--dry-run]` and `tailscope projects
//! list|delete` (issues 15 and 14): the real binary, spans and logs sent through the official OpenTelemetry SDK
//! (dated in past hours), real Delta tables read back through SQL and their logs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Tracer, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor};
use tailscope_sim::export::OnRuntime;

use crate::support::{Server, tailscope_bin};

const HOUR: Duration = Duration::from_secs(3600);

/// gRPC metadata naming `project` (no keys: a request may name its project).
fn project_metadata(project: &str) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-tailscope-project", project.parse().unwrap());
    metadata
}

/// An SDK tracer provider exporting each span at once over OTLP/gRPC into `project`.
fn tracer(server: &Server, project: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(server.grpc_url())
        .with_metadata(project_metadata(project))
        .build()
        .unwrap();
    SdkTracerProvider::builder()
        .with_span_processor(SimpleSpanProcessor::new(OnRuntime::new(exporter, tokio::runtime::Handle::current())))
        .with_resource(Resource::builder_empty().with_attributes([KeyValue::new("service.name", "retention")]).build())
        .build()
}

/// Sends, into `project`, `n` priced LLM calls (gpt-4o) for each of `ages` (how long before `t0` each batch started).
async fn send(server: &Server, project: &'static str, t0: SystemTime, ages: &[Duration], n: usize) {
    let provider = tracer(server, project);
    let ages = ages.to_vec();
    tokio::task::spawn_blocking(move || {
        let tracer = provider.tracer("it-retention");
        let now = t0;
        for age in ages {
            for i in 0..n {
                let start = now - age + Duration::from_millis(i as u64);
                let attrs = vec![
                    KeyValue::new("gen_ai.provider.name", "openai"),
                    KeyValue::new("gen_ai.operation.name", "chat"),
                    KeyValue::new("gen_ai.request.model", "gpt-4o"),
                    KeyValue::new("gen_ai.usage.input_tokens", 1000 + i as i64),
                    KeyValue::new("gen_ai.usage.output_tokens", 100i64),
                    KeyValue::new("session.id", format!("{project}-{}", age.as_secs() / 3600)),
                ];
                let builder = tracer
                    .span_builder("chat")
                    .with_kind(SpanKind::Client)
                    .with_start_time(start)
                    .with_attributes(attrs);
                // The span ends when dropped (now): its partition is its start's hour.
                drop(builder.start(&tracer));
            }
        }
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();
}

/// One log record with `body` into `project`, over OTLP/gRPC.
async fn send_log(server: &Server, project: &str, body: &'static str) {
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(server.grpc_url())
        .with_metadata(project_metadata(project))
        .build()
        .unwrap();
    crate::support::emit_one_log(exporter, "it-retention", body).await;
}

/// Rows per project and hour (`date hour`), in order.
async fn partitions(server: &Server) -> BTreeMap<(String, String), i64> {
    let rows = server.sql("SELECT project, date || ' ' || hour AS p, count(*) AS n FROM spans GROUP BY 1, 2").await;
    rows.iter()
        .map(|r| {
            (
                (r["project"].as_str().unwrap().to_string(), r["p"].as_str().unwrap().to_string()),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// `date hour` of the UTC hour `age` before `t0`.
fn hour_of(t0: SystemTime, age: Duration) -> String {
    chrono::DateTime::<chrono::Utc>::from(t0 - age).format("%Y-%m-%d %H").to_string()
}

/// The actions of every commit of a table's log, in version order.
fn commits(table: &Path) -> Vec<(u64, Vec<serde_json::Value>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(version) = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) else { continue };
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((
            version,
            text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect(),
        ));
    }
    out.sort_by_key(|(v, _)| *v);
    out
}

/// The `DELETE` commits of a table: the paths each removes (relative to the table).
fn delete_commits(table: &Path) -> Vec<BTreeSet<String>> {
    commits(table)
        .into_iter()
        .filter(|(_, a)| a.iter().any(|a| a.get("commitInfo").is_some_and(|c| c["operation"] == "DELETE")))
        .map(|(_, a)| {
            a.iter().filter_map(|a| a.get("remove")).map(|r| r["path"].as_str().unwrap().to_string()).collect()
        })
        .collect()
}

/// Sizes of the files the log holds now, by partition directory (`project=P/date=D/hour=H`).
fn partition_bytes(table: &Path) -> BTreeMap<String, u64> {
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    for (_, actions) in commits(table) {
        for action in actions {
            if let Some(add) = action.get("add") {
                live.insert(add["path"].as_str().unwrap().to_string(), add["size"].as_u64().unwrap());
            }
            if let Some(remove) = action.get("remove") {
                live.remove(remove["path"].as_str().unwrap());
            }
        }
    }
    let mut by_partition = BTreeMap::new();
    for (path, size) in live {
        let dir = path.rsplit_once('/').unwrap().0.to_string();
        *by_partition.entry(dir).or_default() += size;
    }
    by_partition
}

/// The partition directory of `project`'s hour `age` before `t0`.
fn partition_dir(project: &str, t0: SystemTime, age: Duration) -> String {
    format!("project={project}/{}", chrono::DateTime::<chrono::Utc>::from(t0 - age).format("date=%Y-%m-%d/hour=%H"))
}

/// Every file under a directory, with its size: what a command that must change nothing leaves as it was.
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if !entry.file_name().to_string_lossy().starts_with('.') {
                out.insert(entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned(), meta.len());
            }
        }
    }
    out
}

/// Runs `tailscope ARGS --config (the server's) --data-dir (the server's)`: success, stdout, stderr.
fn tailscope(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tailscope_bin())
        .args(args)
        .arg("--config")
        .arg(server.dir().join("tailscope.toml"))
        .arg("--data-dir")
        .arg(&server.data_dir)
        .env_remove("TAILSCOPE_CONFIG")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `tailscope ARGS --format json`, which must succeed: its JSON.
fn tailscope_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let (ok, out, err) = tailscope(server, &args);
    assert!(ok, "tailscope {args:?} failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The partitions a retention or delete report lists for `table`: `(project, date hour, reason)` and their paths.
fn listed(report: &serde_json::Value, table: &str) -> (Vec<(String, String, String)>, BTreeSet<String>) {
    let t = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == table).unwrap();
    let mut partitions = Vec::new();
    let mut paths = BTreeSet::new();
    for p in t["partitions"].as_array().unwrap() {
        let s = |k: &str| p[k].as_str().unwrap().to_string();
        partitions.push((s("project"), format!("{} {}", s("date"), s("hour")), s("reason")));
        for path in p["paths"].as_array().unwrap() {
            // Relative to the data dir (`spans/project=…`); the log's are relative to the table.
            paths.insert(path.as_str().unwrap().split_once('/').unwrap().1.to_string());
        }
    }
    (partitions, paths)
}

/// Writes the server's config file (used by its next start and by the CLI).
fn set_config(server: &Server, toml: &str) {
    std::fs::write(server.dir().join("tailscope.toml"), toml).unwrap();
}

/// A project's own retention wins over the table's, both ways: with `storage.retention = "5h"`, project `a`
/// (`retention = "2h"`) loses its hours 6 and 3 hours back, `b` (`"forever"`) keeps everything, and `c` (none of its
/// own) loses only the hour 6 hours back; the current hours stay. One `DELETE` commit, counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_project_retention_removes_only_that_projects_old_partitions() {
    let base = "[storage]\nflush_interval = \"1h\"\nretention = \"5h\"\nvacuum_grace = \"2s\"\n[query]\ntimeout = \"1s\"\n\
                [projects.a]\nretention = \"2h\"\n[projects.b]\nretention = \"forever\"\n";
    // No maintenance round before the data is in: an hour between rounds for now.
    let mut server =
        Server::start_with(&base.replace("[storage]\n", "[storage]\nmaintenance_interval = \"1h\"\n")).await;
    let t0 = SystemTime::now();
    let ages = [6 * HOUR, 3 * HOUR, Duration::ZERO];
    for project in ["a", "b", "c"] {
        send(&server, project, t0, &ages, 4).await;
    }
    assert_eq!(partitions(&server).await.len(), 9);
    assert!(server.terminate().success());
    set_config(&server, &base.replace("[storage]\n", "[storage]\nmaintenance_interval = \"300ms\"\n"));
    server.restart().await;
    server
        .scrape_until("retention by age", |s| {
            s.sum("tailscope_retention_partitions_removed_total", &[("table", "spans"), ("reason", "age")]) >= 3.0
        })
        .await;
    let left = partitions(&server).await;
    let want: BTreeMap<(String, String), i64> = [
        ("a", Duration::ZERO),
        ("b", 6 * HOUR),
        ("b", 3 * HOUR),
        ("b", Duration::ZERO),
        ("c", 3 * HOUR),
        ("c", Duration::ZERO),
    ]
    .iter()
    .map(|(p, age)| ((p.to_string(), hour_of(t0, *age)), 4))
    .collect();
    assert_eq!(left, want);
    let table = server.data_dir.join("spans");
    let deletes = delete_commits(&table);
    assert_eq!(deletes.len(), 1, "one DELETE commit for the three partitions: {deletes:?}");
    let dirs: BTreeSet<String> = deletes[0].iter().map(|p| p.rsplit_once('/').unwrap().0.to_string()).collect();
    let expected: BTreeSet<String> =
        [("a", 6 * HOUR), ("a", 3 * HOUR), ("c", 6 * HOUR)].iter().map(|(p, age)| partition_dir(p, t0, *age)).collect();
    assert_eq!(dirs, expected);
    // Vacuum deletes the removed files after the grace.
    server
        .scrape_until("vacuum", |s| s.sum("tailscope_vacuum_files_deleted_total", &[("table", "spans")]) >= 3.0)
        .await;
    for dir in &expected {
        let files: Vec<_> = std::fs::read_dir(table.join(dir)).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(files.iter().all(|f| !f.file_name().to_string_lossy().ends_with(".parquet")), "{dir}: {files:?}");
    }
    server.terminate();
}

/// `storage.max_bytes_spans` under the table's bytes: the oldest whole partitions go first, in one commit, until it
/// fits, never the current hour's, while queries loop: no query fails and the count never goes up. Counted on
/// `/metrics` (`reason = "table_size"`, `tailscope_table_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_cap_removes_the_oldest_partitions_first_while_queries_run() {
    let base = "[storage]\nflush_interval = \"1h\"\nmaintenance_interval = \"1h\"\n";
    let mut server = Server::start_with(base).await;
    let t0 = SystemTime::now();
    let ages: Vec<Duration> = (0..7).rev().map(|h| h * HOUR).collect();
    send(&server, "default", t0, &ages, 20).await;
    assert!(server.terminate().success());
    let table = server.data_dir.join("spans");
    let sizes = partition_bytes(&table);
    assert_eq!(sizes.len(), 7, "{sizes:?}");
    // Room for the three newest hours (2 hours back, 1, and the current one): the four oldest must go.
    let newest: u64 = [2 * HOUR, HOUR, Duration::ZERO].iter().map(|a| sizes[&partition_dir("default", t0, *a)]).sum();
    let cap = newest + 1;
    set_config(
        &server,
        &format!(
            "[storage]\nflush_interval = \"1h\"\nmaintenance_interval = \"1s\"\nmax_bytes_spans = {cap}\n\
             vacuum_grace = \"2s\"\n[query]\ntimeout = \"1s\"\n"
        ),
    );
    server.restart().await;
    let sql = "SELECT count(*) AS n FROM spans";
    let mut last = i64::MAX;
    let mut queries = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.sql_raw(sql).await;
        assert!(status.is_success(), "a query failed while retention ran: {status} {body}");
        let n = serde_json::from_str::<serde_json::Value>(&body).unwrap()[0]["n"].as_i64().unwrap();
        assert!(n <= last, "the count went up from {last} to {n}");
        last = n;
        queries += 1;
        if n == 60 && server.metric("tailscope_vacuum_files_deleted_total").await >= 4.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cap was not applied: {n} rows; log:\n{}", server.log());
    }
    let left: BTreeSet<String> = partitions(&server).await.into_keys().map(|(_, hour)| hour).collect();
    let want: BTreeSet<String> = [2 * HOUR, HOUR, Duration::ZERO].iter().map(|a| hour_of(t0, *a)).collect();
    assert_eq!(left, want, "the newest hours stay");
    let scrape = server.scrape().await;
    let removed = scrape.sum("tailscope_retention_partitions_removed_total", &[("reason", "table_size")]);
    assert_eq!(removed, 4.0);
    let bytes = scrape.value("tailscope_table_bytes", &[("table", "spans")]).unwrap();
    assert_eq!(bytes as u64, newest, "the table's committed bytes are on /metrics");
    let deletes = delete_commits(&table);
    assert_eq!(deletes.len(), 1, "one commit: {deletes:?}");
    assert_eq!(deletes[0].len(), 4);
    eprintln!("size cap: {} -> {newest} bytes (cap {cap}); {queries} queries during it", sizes.values().sum::<u64>());
    server.terminate();
}

/// `tailscope retention --dry-run` changes nothing (not a byte under the data dir) and lists per table, project and
/// partition what goes and why (age, a project's size cap); `tailscope retention` refuses while a collector holds the
/// data dir, and on the stopped one removes exactly the listed files in one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_dry_run_lists_exactly_what_the_run_then_removes() {
    let base = "[storage]\nflush_interval = \"1h\"\nmaintenance_interval = \"1h\"\n";
    let mut server = Server::start_with(base).await;
    let t0 = SystemTime::now();
    send(&server, "a", t0, &[6 * HOUR, 4 * HOUR, 3 * HOUR, Duration::ZERO], 10).await;
    send(&server, "b", t0, &[6 * HOUR, HOUR], 10).await;
    send_log(&server, "b", "kept").await;
    assert!(server.terminate().success());
    let table = server.data_dir.join("spans");
    let sizes = partition_bytes(&table);
    // Project a may keep its two newest hours: its hour 4 hours back goes for size, 6 hours back for age.
    let a_cap = sizes[&partition_dir("a", t0, 3 * HOUR)] + sizes[&partition_dir("a", t0, Duration::ZERO)] + 1;
    set_config(&server, &format!("{base}retention = \"5h\"\n[projects.a]\nmax_bytes = {a_cap}\n"));

    let before = tree(&server.data_dir);
    let dry = tailscope_json(&server, &["retention", "--dry-run"]);
    assert_eq!(tree(&server.data_dir), before, "a dry run changed the data dir");
    assert_eq!(dry["dry_run"], true);
    let (listed_spans, paths) = listed(&dry, "spans");
    // Oldest first: a's and b's hour 6 hours back (age), then a's 4 hours back (a's own cap).
    let want: Vec<(String, String, String)> = vec![
        ("a".into(), hour_of(t0, 6 * HOUR), "age".into()),
        ("b".into(), hour_of(t0, 6 * HOUR), "age".into()),
        ("a".into(), hour_of(t0, 4 * HOUR), "project_size".into()),
    ];
    assert_eq!(listed_spans, want, "{dry}");
    let spans_json = dry["tables"].as_array().unwrap().iter().find(|t| t["table"] == "spans").unwrap();
    for p in spans_json["partitions"].as_array().unwrap() {
        assert_eq!(p["rows"], 10, "{p}");
        assert!(p["bytes"].as_u64().unwrap() > 0 && p["why"].as_str().unwrap().len() > 5, "{p}");
    }
    assert!(listed(&dry, "logs").0.is_empty(), "the log of the current hour stays");
    let (ok, text, _) = tailscope(&server, &["retention", "--dry-run"]);
    assert!(ok && text.contains("spans: would remove 3 partition(s)"), "{text}");
    eprintln!("tailscope retention --dry-run:\n{text}");
    assert!(text.contains("size: the project is over its cap"), "{text}");

    // Refused while a collector holds the data dir.
    server.restart().await;
    let (ok, _, err) = tailscope(&server, &["retention"]);
    assert!(!ok && err.contains("in use"), "{err}");
    assert!(server.terminate().success());
    let before = tree(&server.data_dir);

    let run = tailscope_json(&server, &["retention"]);
    assert_eq!(run["dry_run"], false);
    assert_eq!(listed(&run, "spans"), (listed_spans.clone(), paths.clone()), "the run removed what the dry run listed");
    let deletes = delete_commits(&table);
    assert_eq!(deletes, vec![paths.clone()], "one DELETE commit removing exactly the listed files");
    // Nothing but the log grew: the files stay on disk until vacuum.
    let after = tree(&server.data_dir);
    assert!(
        before.iter().all(|(f, size)| after.get(f) == Some(size) || f.ends_with("_last_checkpoint")),
        "a file changed"
    );

    server.restart().await;
    let left: BTreeSet<(String, String)> = partitions(&server).await.into_keys().collect();
    let want: BTreeSet<(String, String)> = [("a", 3 * HOUR), ("a", Duration::ZERO), ("b", HOUR)]
        .iter()
        .map(|(p, a)| (p.to_string(), hour_of(t0, *a)))
        .collect();
    assert_eq!(left, want);
    assert!(server.terminate().success());
    // A second dry run finds nothing more to do.
    let again = tailscope_json(&server, &["retention", "--dry-run"]);
    assert!(listed(&again, "spans").0.is_empty(), "{again}");
}

/// `tailscope projects delete a` removes project a from every table (spans and logs) in one commit per table, and
/// leaves project b's rows identical (count, ids and cost); a dry run changes nothing; it refuses while a collector
/// runs or while the WAL holds unflushed rows (after `kill -9`); `projects list` shows the projects before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_project_leaves_the_other_projects_rows_identical() {
    let base = "[storage]\nflush_interval = \"1h\"\nmaintenance_interval = \"1h\"\n";
    let mut server = Server::start_with(base).await;
    let t0 = SystemTime::now();
    send(&server, "a", t0, &[3 * HOUR, Duration::ZERO], 5).await;
    send(&server, "b", t0, &[3 * HOUR, Duration::ZERO], 7).await;
    send_log(&server, "a", "log-of-a").await;
    send_log(&server, "b", "log-of-b").await;
    server.wait_count("SELECT count(*) AS n FROM logs", 2).await;
    let b_rows_sql = "SELECT span_id, cost_usd, start_time FROM spans WHERE project = 'b' ORDER BY span_id";
    let b_before = server.sql(b_rows_sql).await;
    let b_cost = server.sql("SELECT count(*) AS n, sum(cost_usd) AS c FROM spans WHERE project = 'b'").await;
    assert_eq!(b_cost[0]["n"], 14);
    assert!(b_cost[0]["c"].as_f64().unwrap() > 0.0);
    assert!(server.terminate().success());

    let list = tailscope_json(&server, &["projects", "list"]);
    let names: Vec<&str> =
        list["projects"].as_array().unwrap().iter().map(|p| p["project"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"], "{list}");
    assert_eq!(list["projects"][0]["tables"]["spans"]["rows"], 10, "{list}");
    assert_eq!(list["projects"][0]["tables"]["logs"]["rows"], 1, "{list}");
    let (ok, text, _) = tailscope(&server, &["projects", "list"]);
    assert!(ok && text.lines().count() >= 5, "{text}");

    // A dry run lists a's partitions of both tables and changes nothing.
    let before = tree(&server.data_dir);
    let dry = tailscope_json(&server, &["projects", "delete", "a", "--dry-run"]);
    assert_eq!(tree(&server.data_dir), before, "a dry run changed the data dir");
    let (spans_listed, spans_paths) = listed(&dry, "spans");
    assert_eq!(spans_listed.len(), 2, "{dry}");
    assert!(spans_listed.iter().all(|(p, _, why)| p == "a" && why == "project_deleted"), "{dry}");
    assert_eq!(listed(&dry, "logs").0.len(), 1, "{dry}");

    // Refused while a collector holds the data dir; refused after a kill -9 left rows in the WAL.
    server.restart().await;
    let (ok, _, err) = tailscope(&server, &["projects", "delete", "a"]);
    assert!(!ok && err.contains("in use"), "{err}");
    send(&server, "a", t0, &[Duration::ZERO], 1).await;
    server.kill();
    let (ok, _, err) = tailscope(&server, &["projects", "delete", "a"]);
    assert!(!ok && err.contains("WAL") && err.contains("nothing was changed"), "{err}");
    assert_eq!(tree(&server.data_dir).keys().filter(|f| f.contains("_delta_log")).count(), {
        before.keys().filter(|f| f.contains("_delta_log")).count()
    });
    // A clean start and stop flushes the WAL (the killed span is a's, in the current hour).
    server.restart().await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}: {}", server.log());

    let (ok, text, err) = tailscope(&server, &["projects", "delete", "a"]);
    assert!(ok, "{err}\n{text}");
    assert!(text.contains("spans: removed 2 partition(s)") && text.contains("logs: removed 1 partition(s)"), "{text}");
    for (table, want) in [("spans", spans_paths.len() + 1), ("logs", 1)] {
        let deletes = delete_commits(&server.data_dir.join(table));
        assert_eq!(deletes.len(), 1, "{table}: one DELETE commit: {deletes:?}");
        assert!(deletes[0].iter().all(|p| p.starts_with("project=a/")), "{table}: {deletes:?}");
        assert_eq!(deletes[0].len(), want, "{table}: {deletes:?}");
    }
    let (ok, _, err) = tailscope(&server, &["projects", "delete", "a"]);
    assert!(!ok && err.contains("no table") && err.contains("project a"), "deleting it again: {err}");

    server.restart().await;
    assert_eq!(server.sql("SELECT count(*) AS n FROM spans WHERE project = 'a'").await[0]["n"], 0);
    assert_eq!(server.sql("SELECT body FROM logs").await, vec![serde_json::json!({"body": "log-of-b"})]);
    assert_eq!(server.sql(b_rows_sql).await, b_before, "project b's rows changed");
    // Every row's cost is identical (above); the sum of floats may differ in its last bit with the order the files
    // are summed in (before, some rows were in the buffer).
    let after = server.sql("SELECT count(*) AS n, sum(cost_usd) AS c FROM spans WHERE project = 'b'").await;
    assert_eq!(after[0]["n"], b_cost[0]["n"]);
    let (c_after, c_before) = (after[0]["c"].as_f64().unwrap(), b_cost[0]["c"].as_f64().unwrap());
    assert!((c_after - c_before).abs() <= 1e-12 * c_before, "{c_after} vs {c_before}");
    assert!(server.terminate().success());
    let list = tailscope_json(&server, &["projects", "list"]);
    let names: Vec<&str> =
        list["projects"].as_array().unwrap().iter().map(|p| p["project"].as_str().unwrap()).collect();
    assert_eq!(names, ["b"], "{list}");
}
