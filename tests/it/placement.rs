//! Placement (residency) rules: one collector, two buckets of one moto S3 server started by the test, EU regions
//! sent to the EU bucket by a `[[storage.placement]]` rule, the rest to the default store (`storage.url`, the US
//! bucket). Each bucket is listed and its Parquet read back: a row is only ever in the bucket its rule names, and
//! one SQL query sees both.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray as _};
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt as _};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use futures::TryStreamExt as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::object_store::Moto;
use crate::support::{
    CRASH_BATCH, Server, Transport, kill_9_under_load, string_kv, tailscope_bin, trace_export, tracer_provider,
};

/// The config of a collector with the US bucket as its default store and a rule that sends EU regions to the EU
/// bucket.
fn config(extra: &str) -> String {
    format!(
        "[storage]\nurl = \"s3://tailscope-us/prod\"\n{extra}\n\
         [[storage.placement]]\nname = \"eu\"\nurl = \"s3://tailscope-eu/prod\"\n\
         match = {{ cloud_region = [\"eu-*\", \"europe-*\"] }}\n"
    )
}

/// Each committed Parquet object of the spans table in `store` (under `prefix`), as its Delta log lists it, with
/// the rows' `cloud_region` and `span_id`; and the Parquet objects no commit names.
async fn committed_spans(store: &dyn ObjectStore, prefix: &str) -> (Vec<(Option<String>, String)>, Vec<String>) {
    let table = format!("{prefix}/spans");
    let listed: Vec<String> = store
        .list(Some(&ObjectPath::from(table.as_str())))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    let mut committed = std::collections::BTreeSet::new();
    let mut logs: Vec<&String> = listed.iter().filter(|p| p.contains("/_delta_log/") && p.ends_with(".json")).collect();
    logs.sort();
    for entry in logs {
        let text = store.get(&ObjectPath::from(entry.as_str())).await.unwrap().bytes().await.unwrap();
        for line in String::from_utf8_lossy(&text).lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                committed.insert(format!("{table}/{path}"));
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                committed.remove(&format!("{table}/{path}"));
            }
        }
    }
    let mut rows = Vec::new();
    for path in &committed {
        let bytes = store.get(&ObjectPath::from(path.as_str())).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let regions = batch.column_by_name("cloud_region").unwrap().as_string::<i32>().clone();
            let ids = batch.column_by_name("span_id").unwrap().as_string::<i32>().clone();
            for i in 0..batch.num_rows() {
                rows.push((regions.is_valid(i).then(|| regions.value(i).to_string()), ids.value(i).to_string()));
            }
        }
    }
    let orphans =
        listed.into_iter().filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/") && !committed.contains(p));
    (rows, orphans.collect())
}

/// Rows per region, as `SELECT cloud_region, count(*)` answers (`null` for no region).
fn by_region(rows: &[(Option<String>, String)]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (region, _) in rows {
        *out.entry(region.clone().unwrap_or_else(|| "null".into())).or_insert(0) += 1;
    }
    out
}

fn is_eu(region: &Option<String>) -> bool {
    region.as_deref().is_some_and(|r| r.starts_with("eu-") || r.starts_with("europe-"))
}

/// `SELECT cloud_region, count(*)` rows as a map (`null` for no region).
fn region_counts(rows: &[serde_json::Value]) -> BTreeMap<String, i64> {
    rows.iter().map(|r| (r["cloud_region"].as_str().unwrap_or("null").to_string(), r["n"].as_i64().unwrap())).collect()
}

const BY_REGION: &str = "SELECT cloud_region, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1";

/// `tailscope query` (the CLI, no collector) with the collector's config, over `data_dir` (where the default store is
/// when `storage.url` is unset): the union of every store.
fn cli_by_region(
    server: &Server,
    toml: &str,
    data_dir: &std::path::Path,
    env: &[(&'static str, String)],
) -> BTreeMap<String, i64> {
    let config = server.dir().join("cli.toml");
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(tailscope_bin())
        .args(["query", "--format", "json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .arg(BY_REGION)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tailscope query failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    region_counts(&serde_json::from_str::<Vec<serde_json::Value>>(stdout.trim()).unwrap())
}

/// Spans of EU and US regions (and of none) from the official SDK through one collector: each bucket holds only
/// its own rows (listed and read back), and one SQL query, through the collector and through `tailscope query`,
/// sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eu_and_us_spans_land_only_in_their_own_buckets_and_one_query_sees_both() {
    let Some(moto) = Moto::start().await else { return };
    let (us, eu) = (moto.target("tailscope-us", "prod").await, moto.target("tailscope-eu", "prod").await);
    let toml = config("flush_interval = \"200ms\"\nflush_max_bytes = 200000");
    let env: Vec<(&str, &str)> = us.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start_with_env(&toml, &env).await;
    let sent = [("eu-west-1", 30), ("europe-west4", 20), ("us-east-1", 25), ("", 10)];
    for (region, n) in sent {
        let mut resource = vec![KeyValue::new("service.name", "residency-agent")];
        if !region.is_empty() {
            resource.push(KeyValue::new("cloud.region", region));
        }
        let provider = tracer_provider(&server, Transport::Grpc, resource);
        let tracer = provider.tracer("it");
        for i in 0..n {
            let mut span = tracer.start(format!("step-{i}"));
            opentelemetry::trace::Span::end(&mut span);
        }
        provider.force_flush().unwrap();
    }
    server.wait_count("SELECT count(*) AS n FROM spans", 85).await;
    let want_eu = BTreeMap::from([("eu-west-1".to_string(), 30), ("europe-west4".to_string(), 20)]);
    let want_us = BTreeMap::from([("us-east-1".to_string(), 25), ("null".to_string(), 10)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (eu_rows, us_rows) = loop {
        let (eu_rows, eu_orphans) = committed_spans(eu.store.as_ref(), &eu.prefix).await;
        let (us_rows, us_orphans) = committed_spans(us.store.as_ref(), &us.prefix).await;
        // A row is never in the other bucket, even before every flush committed.
        assert!(eu_rows.iter().all(|(r, _)| is_eu(r)), "a non-EU row in the EU bucket: {:?}", by_region(&eu_rows));
        assert!(us_rows.iter().all(|(r, _)| !is_eu(r)), "an EU row in the US bucket: {:?}", by_region(&us_rows));
        if by_region(&eu_rows) == want_eu && by_region(&us_rows) == want_us {
            assert!(eu_orphans.is_empty() && us_orphans.is_empty(), "{eu_orphans:?} {us_orphans:?}");
            break (eu_rows, us_rows);
        }
        assert!(
            Instant::now() < deadline,
            "not committed within 30 s: eu {:?}, us {:?}\nlog:\n{}",
            by_region(&eu_rows),
            by_region(&us_rows),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: std::collections::BTreeSet<&String> = eu_rows.iter().chain(&us_rows).map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 85, "a span in both buckets, or twice in one");
    // One query sees both stores: through the collector (files of both, nothing left buffered) ...
    let mut want = want_eu.clone();
    want.extend(want_us.clone());
    assert_eq!(region_counts(&server.sql(BY_REGION).await), want);
    // ... per store on /metrics ...
    let scrape = server
        .scrape_until("both stores' commits", |s| {
            s.sum("tailscope_store_commits_total", &[("store", eu.url.as_str())]) >= 1.0
                && s.sum("tailscope_store_commits_total", &[("store", us.url.as_str())]) >= 1.0
        })
        .await;
    assert!(scrape.sum("tailscope_store_uploaded_bytes_total", &[("store", eu.url.as_str())]) > 0.0);
    // ... after a restart (the catalog read from both stores' logs, nothing replayed twice), and through
    // `tailscope query` with the same config (no collector).
    let status = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", server.log());
    server.restart().await;
    assert_eq!(region_counts(&server.sql(BY_REGION).await), want);
    let status = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", server.log());
    assert_eq!(cli_by_region(&server, &toml, &server.dir().join("cli-data"), &us.env), want);
}

/// `kill -9` mid-load, three times, with flushes committing to two stores all along (a crash may fall between the
/// two stores' commits): every acknowledged span is stored exactly once, and only in its own store, counted per
/// store from the buckets' Delta logs and Parquet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_kill_9_with_two_stores_exactly_once_each_in_its_own() {
    let Some(moto) = Moto::start().await else { return };
    let (us, eu) = (moto.target("tailscope-us", "prod").await, moto.target("tailscope-eu", "prod").await);
    let toml = config("flush_interval = \"200ms\"\nflush_max_bytes = 200000");
    let env: Vec<(&str, &str)> = us.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start_with_env(&toml, &env).await;
    let regions = ["eu-central-1", "us-west-2"];
    let pause = |round| Duration::from_millis(700 + 300 * round);
    let acked = kill_9_under_load(&mut server, regions.len(), 3, pause, move |sender, first| {
        let mut request = trace_export("crash", first, CRASH_BATCH, &[]);
        if let Some(resource) = request.resource_spans[0].resource.as_mut() {
            resource.attributes.push(string_kv("cloud.region", regions[sender]));
        }
        request
    })
    .await;
    // A clean stop commits everything, once, to each store.
    let status = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", server.log());
    let (eu_rows, eu_orphans) = committed_spans(eu.store.as_ref(), &eu.prefix).await;
    let (us_rows, us_orphans) = committed_spans(us.store.as_ref(), &us.prefix).await;
    assert!(eu_rows.iter().all(|(r, _)| r.as_deref() == Some("eu-central-1")), "{:?}", by_region(&eu_rows));
    assert!(us_rows.iter().all(|(r, _)| r.as_deref() == Some("us-west-2")), "{:?}", by_region(&us_rows));
    assert!(eu_orphans.is_empty() && us_orphans.is_empty(), "objects no commit names: {eu_orphans:?} {us_orphans:?}");
    for (store, rows) in [("eu", &eu_rows), ("us", &us_rows)] {
        let distinct: std::collections::BTreeSet<&String> = rows.iter().map(|(_, id)| id).collect();
        assert_eq!(distinct.len(), rows.len(), "a span stored twice in the {store} store");
    }
    let n = (eu_rows.len() + us_rows.len()) as i64;
    assert!(n >= acked, "lost acknowledged spans: stored {n}, acknowledged {acked}");
    // Each kill can catch each of the 2 senders with one request of 50 spans in flight.
    assert!(n <= acked + 3 * 2 * 50, "stored {n} but only {acked} acknowledged plus 6 requests in flight");
    eprintln!("stored {} in eu, {} in us; acknowledged {acked}", eu_rows.len(), us_rows.len());
    assert_eq!(cli_by_region(&server, &toml, &server.dir().join("cli-data"), &us.env).values().sum::<i64>(), n);
}

/// A crash between two stores' commits of one flush (the `flush-between-store-commits` failpoint, at the flush of
/// a clean stop): the default store (the data dir) committed its spans, the rule's store (a local path) did not.
/// The restart replays the WAL: the default store leaves out the records its `txn` covers, the rule's store gets its
/// rows once; each row is in its own store exactly once, and a query sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_two_stores_commits_stores_each_row_once_in_its_own_store() {
    let elsewhere = tempfile::tempdir().unwrap();
    let eu_dir = elsewhere.path().join("eu");
    let toml = format!(
        "[storage]\nflush_interval = \"1h\"\n[[storage.placement]]\nname = \"eu\"\nurl = \"{}\"\n\
         match = {{ cloud_region = [\"eu-*\"] }}\n",
        eu_dir.display()
    );
    let mut server = Server::start_with_env(&toml, &[("TAILSCOPE_FAILPOINT", "flush-between-store-commits")]).await;
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    let sent = [(0, "eu-west-1"), (100, "us-east-1"), (200, "eu-west-1"), (300, "us-east-1"), (400, "us-east-1")];
    for (first, region) in sent {
        let mut request = trace_export("crash", first, 100, &[]);
        request.resource_spans[0].resource.as_mut().unwrap().attributes.push(string_kv("cloud.region", region));
        client.export(request).await.unwrap();
    }
    let status = server.terminate();
    let aborted = server.log().contains("TAILSCOPE_FAILPOINT=flush-between-store-commits: aborting");
    assert!(!status.success() && aborted, "{status:?}\n{}", server.log());
    let rows_of = |server: &Server| {
        let (us, _) = crate::storage::log_rows_and_txns(&server.data_dir.join("spans"));
        let (eu, _) = crate::storage::log_rows_and_txns(&eu_dir.join("spans"));
        (us, eu)
    };
    assert_eq!(rows_of(&server), (300, 0), "the default store committed first, the EU store not yet");
    server.set_env(&[]);
    server.restart().await;
    let want = BTreeMap::from([("eu-west-1".to_string(), 200), ("us-east-1".to_string(), 300)]);
    assert_eq!(rows_of(&server), (300, 200), "each row once, in its own store");
    assert_eq!(region_counts(&server.sql(BY_REGION).await), want);
    let distinct = server.sql("SELECT count(DISTINCT span_id) AS d FROM spans").await;
    assert_eq!(distinct[0]["d"], 500);
    assert_eq!(rows_of(&server), (300, 200), "each row once, in its own store");
    assert!(server.terminate().success());
    assert_eq!(rows_of(&server), (300, 200));
    assert_eq!(cli_by_region(&server, &toml, &server.data_dir, &[]), want);
}

/// A crash after the flush committed, before the checkpoint, with a rule's store that never received a row (its
/// `txn` says nothing): the restart replays the WAL (one store lacks the records), every record's rows are found held
/// by their own store, nothing is committed again, and the replayed rows leave the buffer: each span counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_records_every_store_holds_are_committed_nowhere_and_counted_once() {
    let elsewhere = tempfile::tempdir().unwrap();
    let eu_dir = elsewhere.path().join("eu");
    let toml = format!(
        "[storage]\nflush_interval = \"1h\"\n[[storage.placement]]\nname = \"eu\"\nurl = \"{}\"\n\
         match = {{ cloud_region = [\"eu-*\"] }}\n",
        eu_dir.display()
    );
    let mut server = Server::start_with_env(&toml, &[("TAILSCOPE_FAILPOINT", "flush-after-commit")]).await;
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    for first in [0, 100, 200] {
        let mut request = trace_export("crash", first, 100, &[]);
        request.resource_spans[0].resource.as_mut().unwrap().attributes.push(string_kv("cloud.region", "us-east-1"));
        client.export(request).await.unwrap();
    }
    let status = server.terminate();
    assert!(!status.success() && server.log().contains("flush-after-commit: aborting"), "{}", server.log());
    server.set_env(&[]);
    server.restart().await;
    let rows = server.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").await;
    assert_eq!((rows[0]["n"].as_i64(), rows[0]["d"].as_i64()), (Some(300), Some(300)), "{}", server.log());
    let (us, _) = crate::storage::log_rows_and_txns(&server.data_dir.join("spans"));
    let (eu, _) = crate::storage::log_rows_and_txns(&eu_dir.join("spans"));
    assert_eq!((us, eu), (300, 0));
    // Nothing stays buffered: the replayed rows retired with the restart's flush.
    let scrape = server.scrape_until("an empty buffer", |s| s.sum("tailscope_buffered_bytes", &[]) == 0.0).await;
    assert_eq!(scrape.sum("tailscope_buffered_bytes", &[]), 0.0);
    assert!(server.terminate().success());
    assert_eq!(crate::storage::log_rows_and_txns(&server.data_dir.join("spans")).0, 300);
}
