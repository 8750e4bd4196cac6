//! Storage faults against the real server: a deleted checkpoint or WAL directory, a flipped bit in a WAL segment,
//! a copied segment, a segment with the largest id, a checkpoint set too high, collectors sharing `spans/`, a
//! Parquet file deleted or damaged while serving, and a WAL that cannot be written. Each test asserts that the
//! server neither aborts nor loses or doubles an acknowledged span (see docs/reliability.md, "Storage and the WAL").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::ingest::walk;
use crate::support::{Server, serve_fails_to_start};

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// `n` spans of `service` with span ids from `first_id` (distinct ids let a test tell a double from a loss).
fn request(service: &str, first_id: u64, n: u64) -> ExportTraceServiceRequest {
    let t = now_ns();
    let spans = (0..n)
        .map(|i| {
            let id = first_id + i;
            Span {
                trace_id: [&[0xcd; 8][..], &id.to_be_bytes()].concat(),
                span_id: (id + 1).to_be_bytes().to_vec(),
                name: "fault".into(),
                start_time_unix_nano: t,
                end_time_unix_nano: t + 1_000_000,
                ..Default::default()
            }
        })
        .collect();
    let service = KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(service.into())) }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![service], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// Sends `requests` requests of `per` spans each over gRPC (one WAL record each); all must be acknowledged.
async fn send(server: &Server, service: &str, first_id: u64, requests: u64, per: u64) {
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.expect("connect gRPC");
    for r in 0..requests {
        client.export(request(service, first_id + r * per, per)).await.expect("acknowledged");
    }
}

/// `(rows, distinct span ids)` of `service` (all services when `None`), through the server's SQL.
async fn counts(server: &Server, service: Option<&str>) -> (i64, i64) {
    let filter = service.map(|s| format!(" WHERE service_name = '{s}'")).unwrap_or_default();
    let rows = server.sql(&format!("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans{filter}")).await;
    (rows[0]["n"].as_i64().unwrap(), rows[0]["d"].as_i64().unwrap())
}

fn parquet_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        walk(&data_dir.join("spans")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    files.sort();
    files
}

/// The WAL segments, largest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(data_dir.join("wal"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "wal")).collect())
        .unwrap_or_else(|_| Vec::new())
        .into_iter()
        .map(|p: PathBuf| (std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p))
        .collect();
    segs.sort_by_key(|s| std::cmp::Reverse(s.0));
    segs.into_iter().map(|(_, p)| p).collect()
}

async fn readyz(server: &Server) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", server.api_url())).await.expect("readyz");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A deleted checkpoint used to make start-up delete every Parquet file above sequence 0: 500 of 750 spans gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_checkpoint_deletes_no_parquet() {
    let mut server = Server::start().await;
    for (i, service) in ["a", "b"].iter().enumerate() {
        send(&server, service, i as u64 * 1000, 5, 50).await;
        assert!(server.terminate().success());
        server.restart().await;
    }
    send(&server, "c", 5000, 5, 50).await;
    server.kill();
    let files = parquet_files(&server.data_dir);
    assert!(files.len() >= 2, "{files:?}");
    std::fs::remove_file(server.data_dir.join("wal/checkpoint")).unwrap();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (750, 750), "log:\n{}", server.log());
    for f in &files {
        assert!(f.exists(), "start-up deleted {}", f.display());
    }

    // Without any WAL at all: the WAL's unflushed spans are gone with it, but no committed file is touched.
    send(&server, "d", 9000, 2, 50).await;
    assert!(server.terminate().success());
    let files = parquet_files(&server.data_dir);
    std::fs::remove_dir_all(server.data_dir.join("wal")).unwrap();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (850, 850));
    assert_eq!(parquet_files(&server.data_dir), files);
}

/// Two collectors whose data dirs share one `spans/` directory must never delete each other's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_sharing_spans_keep_each_others_files() {
    let mut a = Server::start().await;
    send(&a, "a", 0, 1, 100).await;
    assert!(a.terminate().success());
    let b_dir = a.dir().join("b-data");
    std::fs::create_dir_all(&b_dir).unwrap();
    std::os::unix::fs::symlink(a.data_dir.join("spans"), b_dir.join("spans")).unwrap();
    let mut b = Server::start_at(b_dir, "").await;
    send(&b, "b", 1000, 3, 100).await;
    assert!(b.terminate().success());
    b.restart().await;
    a.restart().await;
    assert_eq!(counts(&a, None).await, (400, 400), "log of a:\n{}", a.log());
    assert_eq!(counts(&b, None).await, (400, 400), "log of b:\n{}", b.log());
}

/// A flipped bit in the middle of a segment costs the one record it hits: every later record is recovered, and
/// the damaged bytes are kept aside and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_mid_segment_loses_only_its_record() {
    let mut server = Server::start().await;
    send(&server, "bits", 0, 10, 100).await;
    server.kill();
    let segment = segments(&server.data_dir).remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (900, 900), "log:\n{}", server.log());
    assert_eq!(server.metric("tailscope_wal_corrupt_records_total").await, 1.0);
    assert!(server.metric("tailscope_wal_corrupt_bytes_total").await > 0.0);
    let aside = walk(&server.data_dir.join("wal/corrupt"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(std::fs::metadata(&aside[0]).unwrap().len() > 0);
    assert!(server.log().contains("corrupt"), "log:\n{}", server.log());
    // Nothing doubles on the next start either.
    server.kill();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (900, 900));
}

/// A segment copied under another name (here the largest id there is) is replayed once, and start-up goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_segment_is_replayed_once_even_with_the_largest_id() {
    let mut server = Server::start().await;
    send(&server, "copy", 0, 3, 100).await;
    server.kill();
    let segment = segments(&server.data_dir).remove(0);
    std::fs::copy(&segment, server.data_dir.join("wal/00000000000000000999.wal")).unwrap();
    std::fs::copy(&segment, server.data_dir.join(format!("wal/{:020}.wal", u64::MAX))).unwrap();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (300, 300), "log:\n{}", server.log());
    send(&server, "copy", 1000, 2, 100).await;
    server.kill();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (500, 500), "log:\n{}", server.log());
}

/// A checkpoint above every record in the WAL cannot be the WAL's own: it is reported and skips nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_set_too_high_is_reported_and_skips_nothing() {
    let mut server = Server::start().await;
    send(&server, "high", 0, 3, 100).await;
    server.kill();
    std::fs::write(server.data_dir.join("wal/checkpoint"), "1000000").unwrap();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (300, 300), "log:\n{}", server.log());
    assert!(server.log().contains("checkpoint 1000000 is above every record"), "log:\n{}", server.log());
    send(&server, "high", 1000, 1, 100).await;
    server.kill();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (400, 400), "log:\n{}", server.log());
}

/// `rm -rf DATA/wal` while serving: the collector notices, writes the unflushed acknowledged rows to a new WAL
/// before acknowledging anything more, and after a crash nothing acknowledged is lost and no Parquet is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_wal_dir_while_serving_loses_nothing_acknowledged() {
    let mut server = Server::start().await;
    send(&server, "w", 0, 3, 100).await;
    assert!(server.terminate().success());
    server.restart().await;
    let files = parquet_files(&server.data_dir);
    send(&server, "w", 1000, 2, 100).await;
    std::fs::remove_dir_all(server.data_dir.join("wal")).unwrap();
    send(&server, "w", 2000, 2, 100).await;
    assert_eq!(readyz(&server).await.0, 200);
    assert_eq!(server.metric("tailscope_wal_segments_lost_total").await, 1.0);
    assert!(server.data_dir.join("wal").is_dir());
    server.kill();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (700, 700), "log:\n{}", server.log());
    for f in &files {
        assert!(f.exists(), "start-up deleted {}", f.display());
    }
}

/// A Parquet file deleted while serving is dropped from the table: queries go on with what is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_file_deleted_while_serving_is_dropped_from_queries() {
    let mut server = Server::start().await;
    send(&server, "gone", 0, 2, 100).await;
    assert!(server.terminate().success());
    let gone = parquet_files(&server.data_dir);
    server.restart().await;
    send(&server, "kept", 1000, 3, 100).await;
    assert!(server.terminate().success());
    server.restart().await;
    assert_eq!(counts(&server, None).await, (500, 500));
    for f in &gone {
        std::fs::remove_file(f).unwrap();
    }
    for _ in 0..2 {
        let (status, body) = server.sql_raw("SELECT count(*) AS n FROM spans").await;
        assert!(status.is_success(), "{status}: {body}");
        assert_eq!(counts(&server, None).await, (300, 300));
        assert_eq!(counts(&server, Some("gone")).await, (0, 0));
        let (status, body) = server.sql_raw("SELECT service_name, count(*) FROM spans GROUP BY 1").await;
        assert!(status.is_success(), "{status}: {body}");
    }
    assert!(server.log().contains("vanished"), "log:\n{}", server.log());
}

/// Garbage over the footer of the Parquet file at `path`, its length and magic bytes left as they were.
fn damage_footer(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    bytes[n - 8 - footer..n - 8].fill(0xff);
    std::fs::write(path, &bytes).unwrap();
}

/// Parquet files damaged under a serving collector (a garbage footer, a truncated copy, damaged pages) used to fail
/// every query on `spans` until removed. Now the first two are skipped by every query, the third fails the one query
/// that reads it with a 503 naming it and is skipped afterwards; each is logged once, counted on `/metrics`, and
/// kept on disk, while ingest and queries go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_parquet_files_are_skipped_named_and_counted() {
    let mut server = Server::start().await;
    // One flush per service, so each service's spans are in files of their own.
    let mut files_of = Vec::new();
    for (i, service) in ["footer", "truncated", "page", "kept"].iter().enumerate() {
        let before = parquet_files(&server.data_dir);
        send(&server, service, i as u64 * 1000, 2, 50).await;
        assert!(server.terminate().success());
        let new: Vec<PathBuf> = parquet_files(&server.data_dir).into_iter().filter(|f| !before.contains(f)).collect();
        assert!(!new.is_empty(), "the flush of {service} wrote no file");
        files_of.push(new);
        server.restart().await;
    }
    assert_eq!(counts(&server, None).await, (400, 400));

    for f in &files_of[0] {
        damage_footer(f);
    }
    for f in &files_of[1] {
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        file.set_len(file.metadata().unwrap().len() / 2).unwrap();
    }
    for f in &files_of[2] {
        query::fixture::damage_pages(f).unwrap();
    }
    let damaged: Vec<(PathBuf, u64)> =
        files_of[..3].iter().flatten().map(|f| (f.clone(), std::fs::metadata(f).unwrap().len())).collect();

    // The query that reads the damaged pages fails, naming the file and what to do; 503, so a retry answers.
    let sql = "SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans";
    let (status, body) = server.sql_raw(sql).await;
    assert_eq!(status.as_u16(), 503, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["kind"], "unreadable_file", "{body}");
    let error = answer["error"].as_str().unwrap();
    assert!(files_of[2].iter().any(|f| error.contains(&f.display().to_string())), "{error}");
    assert!(error.contains("restore it from a backup"), "{error}");

    // From then on every query answers from the intact files; the damaged ones are not read again.
    for _ in 0..3 {
        assert_eq!(counts(&server, None).await, (100, 100));
        let rows = server.sql("SELECT service_name, count(*) AS n FROM spans GROUP BY 1").await;
        assert_eq!(rows, vec![serde_json::json!({"service_name": "kept", "n": 100})]);
    }
    let expected = damaged.len() as f64;
    assert_eq!(server.metric("tailscope_parquet_unreadable_files_total").await, expected);
    assert_eq!(server.metric("tailscope_parquet_skipped_files").await, expected);
    let log = server.log();
    for (f, _) in &damaged {
        let name = f.display().to_string();
        let warnings = log.lines().filter(|l| l.contains("Parquet file cannot be read") && l.contains(&name)).count();
        assert_eq!(warnings, 1, "{name} is logged once, with what to do; log:\n{log}");
    }
    assert!(log.contains("move it out of the data dir"), "log:\n{log}");

    // The collector keeps serving: ingest, readiness, queries over old and new data.
    send(&server, "after", 9000, 1, 50).await;
    assert_eq!(counts(&server, None).await, (150, 150));
    assert_eq!(readyz(&server).await.0, 200);

    // Nothing was deleted or changed, by the queries or by a shutdown.
    assert!(server.terminate().success());
    for (f, size) in &damaged {
        assert_eq!(std::fs::metadata(f).map(|m| m.len()).ok(), Some(*size), "{} changed", f.display());
    }
    for f in &files_of[3] {
        assert!(f.exists());
    }
}

/// A small tmpfs of the test's own (root only), unmounted when dropped: the way to make a real file system fill up
/// or turn read-only under the collector.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Mounts one of `size` (`mount -o size=`), or says the test is skipped and returns `None` where mounting is
    /// impossible (not root, no tmpfs).
    fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here (not root?)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// `mount -o remount,MODE` (`ro` or `rw`).
    fn remount(&self, mode: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A WAL that cannot be written (a full disk) makes `/readyz` say so with the reason, requests get retryable
/// refusals, and both recover by themselves when room comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_when_the_wal_cannot_be_written() {
    let Some(mount) = Tmpfs::mount("4m", "readyz_tells_when_the_wal_cannot_be_written") else { return };
    let mut server = Server::start_at(mount.path().join("data"), "").await;
    send(&server, "full", 0, 1, 100).await;
    // Fill the file system to the last byte.
    let filler = mount.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte[..]).is_ok() {
            byte[0] = 0;
        }
    }
    // Requests of 1,000 spans need pages the file system no longer has.
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    let err = client.export(request("full", 1000, 1000)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("WAL"), "{body}");
    // Probes are open to anyone: the error's text (the data dir's path, the OS error) stays in the log.
    assert!(!body.contains(&server.data_dir.display().to_string()) && !body.contains("space"), "{body}");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&request("full", 2000, 1000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while readyz(&server).await.0 != 200 {
        assert!(Instant::now() < deadline, "not ready again after the disk got room: {:?}", readyz(&server).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(&server, "full", 3000, 1, 100).await;
    server.kill();
    server.restart().await;
    assert_eq!(counts(&server, None).await, (200, 200), "log:\n{}", server.log());
}

/// A data dir on a file system mounted read-only (after an I/O error, ext4's `errors=remount-ro`, or a volume
/// attached read-only): start-up refuses with an error that names the directory and the cause, exits 1 (no
/// abort), and touches nothing; once the file system is writable again, the collector starts with every span it
/// had. (A file system cannot be remounted read-only under a serving collector: the open WAL segment keeps it busy;
/// the disk-full test covers writes failing while serving.) As root, permissions refuse nothing, so a read-only
/// mount is the way to make writes fail with EROFS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_refuses_to_start_clearly_and_loses_nothing() {
    let Some(mount) = Tmpfs::mount("64m", "a_read_only_data_dir_refuses_to_start_clearly_and_loses_nothing") else {
        return;
    };
    let data_dir = mount.path().join("data");
    let mut server = Server::start_at(data_dir.clone(), "").await;
    send(&server, "ro", 0, 2, 100).await;
    // One batch flushed to Parquet, one only in the WAL.
    server.terminate();
    server.restart().await;
    send(&server, "ro", 1000, 1, 100).await;
    server.kill();

    mount.remount("ro");
    let stderr = serve_fails_to_start(None, &data_dir);
    assert!(stderr.contains("Read-only file system") && stderr.contains(&*data_dir.to_string_lossy()), "{stderr}");

    mount.remount("rw");
    server.restart().await;
    assert_eq!(counts(&server, Some("ro")).await, (300, 300), "log:\n{}", server.log());
}

/// SIGTERM while the collector is still starting (here: flushing the WAL it replayed, before it serves) is a clean
/// shutdown once start-up is done: exit 0, every acknowledged span stored once. It used to kill the process with the
/// signal's default action, because the handler was installed only when the collector began to serve (a
/// orchestrator stopping a pod that is still starting; found as a flaky test killed by signal 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_shuts_down_cleanly() {
    let mut server = Server::start_with("[storage]\nflush_interval = \"1h\"\n").await;
    send(&server, "starting", 0, 40, 250).await;
    server.kill();
    server.restart_until_logged("replayed WAL; flushing it to Parquet").await;
    let status = server.terminate();
    assert!(status.success(), "SIGTERM during start-up: {status}; log:\n{}", server.log());
    assert!(server.log().contains("flushed; bye"), "no clean shutdown; log:\n{}", server.log());
    server.restart().await;
    assert_eq!(counts(&server, Some("starting")).await, (10_000, 10_000));
}
