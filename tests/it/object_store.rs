//! Tables on an object store (`storage.url`), against real servers on loopback, each started by the test on its
//! own port: moto's server mode for S3 (`pip install 'moto[server]'`) and Azurite for Azure Blob
//! (`npm install -g azurite`). Without one a test says so and passes, unless `TAILSCOPE_REQUIRE_EMULATORS=1` (set by
//! `.ci/run`, which installs them), which makes it fail instead.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::azure::MicrosoftAzureBuilder;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use futures::TryStreamExt as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::{
    CRASH_BATCH, Server, Transport, free_addr, kill_9_under_load, query_while_compacting, tailscope_bin, trace_export,
    tracer_provider,
};

/// Where a test's tables are: the `storage.url`, the environment that reaches the store, and the bucket (or
/// container) as an object store with the URL's prefix, for the test's own listings.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) env: Vec<(&'static str, String)>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: String,
}

/// Says that `program` cannot run, and skips (or fails, when the emulators are required).
fn missing(program: &str, error: std::io::Error, install: &str) {
    let note = format!("{program} cannot start ({error}): {install} to test the tables on it");
    assert!(std::env::var("TAILSCOPE_REQUIRE_EMULATORS").as_deref() != Ok("1"), "{note}");
    eprintln!("note: skipped: {note}");
}

/// Polls `url` until it answers at all (any HTTP status), for 30 s.
async fn wait_listening(url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(url).await.is_err() {
        assert!(Instant::now() < deadline, "{what} did not answer at {url} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A moto S3 server on a loopback port, killed when dropped.
pub(crate) struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto, or `None` (with a note) when it is not installed and the emulators are not required.
    pub(crate) async fn start() -> Option<Moto> {
        let port = free_addr().port();
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                missing("moto_server", e, "python3 -m pip install 'moto[server]'");
                return None;
            }
        };
        let moto = Moto { child, port };
        wait_listening(&moto.endpoint(), "moto_server").await;
        Some(moto)
    }

    /// A new bucket, and the tables at `s3://bucket/prefix`.
    pub(crate) async fn target(&self, bucket: &str, prefix: &str) -> Target {
        self.bucket(bucket).await;
        Target {
            url: format!("s3://{bucket}/{prefix}"),
            env: self.env(),
            store: self.store(bucket),
            prefix: prefix.to_string(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (moto takes an unsigned request).
    async fn bucket(&self, bucket: &str) {
        let r = reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint())).send().await.unwrap();
        assert!(r.status().is_success(), "creating bucket {bucket}: {}", r.status());
    }

    /// The environment a collector (or the CLI) needs to reach this server: object_store's standard `AWS_*`
    /// variables, credentials moto accepts.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "tailscope-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "tailscope-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The bucket as an object store, for the test's own listings.
    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(bucket)
                .with_access_key_id("tailscope-test")
                .with_secret_access_key("tailscope-test")
                .with_region("us-east-1")
                .build()
                .unwrap(),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's well-known development account (its documentation's, not a secret).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite Blob server on a loopback port, its data in a temp dir; killed when dropped.
struct Azurite {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite, or `None` (with a note) when it is not installed and the emulators are not required.
    async fn start() -> Option<Azurite> {
        let port = free_addr().port();
        let data = tempfile::tempdir().unwrap();
        let spawned = Command::new("azurite-blob")
            .args(["--loose", "--skipApiVersionCheck", "--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                missing("azurite-blob", e, "npm install -g azurite");
                return None;
            }
        };
        let azurite = Azurite { child, port, _data: data };
        wait_listening(&azurite.endpoint(), "azurite-blob").await;
        Some(azurite)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `container`: a request signed with the account's shared key (Azurite checks it), as the Blob
    /// service defines the signature.
    async fn container(&self, container: &str) {
        use base64::Engine as _;
        use hmac::Mac as _;
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let r = reqwest::Client::new()
            .put(format!("{}/{AZURITE_ACCOUNT}/{container}?restype=container", self.endpoint()))
            .header("x-ms-date", &date)
            .header("x-ms-version", version)
            .header("authorization", format!("SharedKey {AZURITE_ACCOUNT}:{signature}"))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_success(), "creating container {container}: {status} {}", r.text().await.unwrap_or_default());
    }

    /// A new container, and the tables at `az://container/prefix`, reached with object_store's standard `AZURE_*`
    /// variables in emulator mode.
    async fn target(&self, container: &str, prefix: &str) -> Target {
        self.container(container).await;
        let store = MicrosoftAzureBuilder::new()
            .with_account(AZURITE_ACCOUNT)
            .with_access_key(AZURITE_KEY)
            .with_endpoint(format!("{}/{AZURITE_ACCOUNT}", self.endpoint()))
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .unwrap();
        Target {
            url: format!("az://{container}/{prefix}"),
            env: vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                ("AZURITE_BLOB_STORAGE_URL", self.endpoint()),
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
            ],
            store: Arc::new(store),
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every object under `prefix` in `store`, by path.
async fn objects(store: &dyn ObjectStore, prefix: &str) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = store
        .list(Some(&ObjectPath::from(prefix)))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    all.sort();
    all
}

/// A collector whose tables are at `target`, with small, frequent flushes.
async fn collector(target: &Target) -> Server {
    let env: Vec<(&str, &str)> = target.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let toml = format!("[storage]\nurl = \"{}\"\nflush_interval = \"200ms\"\nflush_max_bytes = 200000\n", target.url);
    Server::start_with_env(&toml, &env).await
}

/// `tailscope query` (the CLI, no collector) over the tables at `target`: the first row's `n`.
fn cli_count(target: &Target, dir: &std::path::Path, sql: &str) -> i64 {
    let config = dir.join("cli.toml");
    std::fs::write(&config, format!("[storage]\nurl = \"{}\"\n", target.url)).unwrap();
    let out = Command::new(tailscope_bin())
        .args(["query", "--format", "json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("cli-data"))
        .arg(sql)
        .envs(target.env.iter().cloned())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tailscope query failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    rows[0]["n"].as_i64().unwrap_or_else(|| panic!("no n in {stdout}"))
}

/// What the S3 server must do for several writers to share a table: of writers racing to create one log entry
/// with `PutMode::Create` (an S3 conditional write, `If-None-Match: *`), exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_server_lets_one_of_racing_conditional_creates_win() {
    let Some(moto) = Moto::start().await else { return };
    moto.bucket("race").await;
    let store = moto.store("race");
    for round in 0..5 {
        let path = ObjectPath::from(format!("t/_delta_log/{round:020}.json"));
        let racers = (0..8).map(|i| {
            let (store, path) = (store.clone(), path.clone());
            tokio::spawn(async move {
                let options = PutOptions { mode: PutMode::Create, ..Default::default() };
                store.put_opts(&path, PutPayload::from(format!("writer {i}")), options).await
            })
        });
        let results = futures::future::join_all(racers).await;
        let won: Vec<_> = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).collect();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(datafusion::object_store::Error::AlreadyExists { .. }))))
            .count();
        assert_eq!((won.len(), refused), (1, 7), "round {round}: {results:?}");
    }
}

/// Spans from the official SDK -> flush -> files uploaded and committed on the store: the collector and
/// `tailscope query` (reading the store, not the data dir) count them, the objects are in the bucket, `/metrics`
/// counts the uploads and commits of the store, and no Parquet file stays in the data dir.
async fn sdk_spans_reach_the_store(target: &Target) {
    let mut server = collector(target).await;
    let provider = tracer_provider(&server, Transport::Grpc, vec![KeyValue::new("service.name", "store-agent")]);
    let tracer = provider.tracer("it");
    for i in 0..40 {
        let mut span = tracer.start(format!("step-{i}"));
        opentelemetry::trace::Span::end(&mut span);
    }
    provider.force_flush().unwrap();
    let count = "SELECT count(*) AS n FROM spans WHERE service_name = 'store-agent'";
    server.wait_count(count, 40).await;
    let table = format!("{}/spans", target.prefix);
    let deadline = Instant::now() + Duration::from_secs(20);
    let parquet = loop {
        let all = objects(target.store.as_ref(), &table).await;
        let parquet: Vec<_> = all.iter().filter(|(p, _)| p.ends_with(".parquet")).cloned().collect();
        if !parquet.is_empty() && all.iter().any(|(p, _)| p.contains("_delta_log/00000000000000000001.json")) {
            break parquet;
        }
        assert!(Instant::now() < deadline, "no commit on the store after 20 s: {all:?}\nlog:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let partitions = format!("{table}/project=default/date=");
    assert!(parquet.iter().all(|(p, size)| p.starts_with(&partitions) && *size > 0), "{parquet:?}");
    // A plan names the files relative to the store's root and prefix, not by the store's URL or the bucket's layout.
    let plan: String =
        server.sql("EXPLAIN SELECT count(*) FROM spans").await.iter().map(|r| r["plan"].to_string()).collect();
    assert!(plan.contains("[spans/project=default/date="), "{plan}");
    assert!(!plan.contains(&format!("{}/", target.prefix)) && !plan.contains("://"), "{plan}");
    // `/metrics` per store: commits and uploaded bytes (as much as the bucket holds in Parquet files), upload times.
    let store = [("store", target.url.as_str())];
    let scrape =
        server.scrape_until("an upload counted", |s| s.sum("tailscope_store_uploaded_bytes_total", &store) > 0.0).await;
    assert!(scrape.sum("tailscope_store_commits_total", &store) >= 1.0, "{}", scrape.text);
    assert!(scrape.sum("tailscope_store_upload_duration_seconds_count", &store) >= 1.0, "{}", scrape.text);
    let uploaded: u64 = parquet.iter().map(|(_, size)| size).sum();
    assert!(scrape.sum("tailscope_store_uploaded_bytes_total", &store) >= uploaded as f64, "{}", scrape.text);
    assert_eq!(cli_count(target, server.dir(), count), 40);
    // The local copies went once committed; the WAL stays local.
    let local: Vec<_> = walk(&server.data_dir.join("spans")).into_iter().filter(|p| p.ends_with(".parquet")).collect();
    assert!(local.is_empty(), "Parquet files left in the data dir: {local:?}");
    assert!(server.data_dir.join("wal").is_dir());
    // A restart reads the tables from the store: nothing replayed twice, nothing lost.
    assert!(server.terminate().success());
    server.restart().await;
    server.wait_count(count, 40).await;
    assert_eq!(cli_count(target, server.dir(), count), 40);
}

/// `kill -9` mid-load, three times, with flushes uploading and committing all along: every acknowledged span is
/// stored exactly once, as the collector and `tailscope query` over the store both count, and no uploaded object
/// is left that no commit names.
async fn acknowledged_spans_survive_kill_9_exactly_once(target: &Target) {
    let mut server = collector(target).await;
    let pause = |round| Duration::from_millis(700 + 300 * round);
    let acked =
        kill_9_under_load(&mut server, 2, 3, pause, |_, first| trace_export("crash", first, CRASH_BATCH, &[])).await;
    let rows = server.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").await;
    let (n, d) = (rows[0]["n"].as_i64().unwrap(), rows[0]["d"].as_i64().unwrap());
    assert_eq!(n, d, "a span was stored twice");
    assert!(n >= acked, "lost acknowledged spans: stored {n}, acknowledged {acked}");
    // Each kill can catch each of the 2 senders with one request of 50 spans in flight.
    assert!(n <= acked + 3 * 2 * 50, "stored {n} but only {acked} acknowledged plus 6 requests in flight");
    // After a clean stop everything is committed on the store, once.
    assert!(server.terminate().success());
    let sql = "SELECT count(*) AS n FROM (SELECT DISTINCT span_id FROM spans)";
    assert_eq!(cli_count(target, server.dir(), sql), n);
    assert_eq!(cli_count(target, server.dir(), "SELECT count(*) AS n FROM spans"), n);
    assert_every_object_committed(target).await;
}

/// Every Parquet object of the spans table is one a commit added: a crashed flush's uploads were deleted.
async fn assert_every_object_committed(target: &Target) {
    let table = format!("{}/spans", target.prefix);
    let mut committed = std::collections::BTreeSet::new();
    for (entry, _) in objects(target.store.as_ref(), &format!("{table}/_delta_log")).await {
        if !entry.ends_with(".json") {
            continue;
        }
        let text = target.store.get(&ObjectPath::from(entry.as_str())).await.unwrap().bytes().await.unwrap();
        for line in String::from_utf8_lossy(&text).lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                committed.insert(format!("{table}/{path}"));
            }
        }
    }
    let parquet: Vec<String> = objects(target.store.as_ref(), &table)
        .await
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/"))
        .collect();
    assert!(!parquet.is_empty());
    let orphans: Vec<_> = parquet.iter().filter(|p| !committed.contains(*p)).collect();
    assert!(orphans.is_empty(), "objects no commit names: {orphans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_are_committed_to_s3_and_queried_from_there() {
    let Some(moto) = Moto::start().await else { return };
    sdk_spans_reach_the_store(&moto.target("traces", "team/prod").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_kill_9_on_s3_exactly_once() {
    let Some(moto) = Moto::start().await else { return };
    acknowledged_spans_survive_kill_9_exactly_once(&moto.target("crash", "t").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_are_committed_to_azure_blob_and_queried_from_there() {
    let Some(azurite) = Azurite::start().await else { return };
    sdk_spans_reach_the_store(&azurite.target("traces", "team/prod").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_kill_9_on_azure_blob_exactly_once() {
    let Some(azurite) = Azurite::start().await else { return };
    acknowledged_spans_survive_kill_9_exactly_once(&azurite.target("crash", "t").await).await;
}

/// Two collectors, each with its own WAL, commit to one table on S3 at once: the store's conditional writes let
/// each commit land (one retries on the next version), so both collectors' spans are there, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_commit_to_one_s3_table_at_once() {
    let Some(moto) = Moto::start().await else { return };
    let target = moto.target("shared", "tables").await;
    let a = collector(&target).await;
    let b = collector(&target).await;
    let mut sent = Vec::new();
    for (server, service) in [(&a, "writer-a"), (&b, "writer-b")] {
        let grpc = server.grpc_url();
        sent.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(grpc).await.unwrap();
            let base = if service == "writer-a" { 0 } else { 1 << 32 };
            for i in 0..30u64 {
                client.export(trace_export(service, base + i * 20, 20, &[])).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for s in sent {
        s.await.unwrap();
    }
    let (mut a, mut b) = (a, b);
    assert!(a.terminate().success() && b.terminate().success());
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT count(*) AS n FROM spans";
    assert_eq!(cli_count(&target, dir.path(), sql), 1200);
    assert_eq!(cli_count(&target, dir.path(), "SELECT count(DISTINCT span_id) AS n FROM spans"), 1200);
    for service in ["writer-a", "writer-b"] {
        let sql = format!("SELECT count(*) AS n FROM spans WHERE service_name = '{service}'");
        assert_eq!(cli_count(&target, dir.path(), &sql), 600, "{service}");
    }
}

/// Three collectors, each with its own WAL, load one S3 table at once, and each is killed with `kill -9` three times
/// mid-load (a flush may be between upload and commit, or between commit and WAL checkpoint, in any of them):
/// every acknowledged span is stored exactly once, and no uploaded object is left that no commit names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_killed_mid_load_on_one_s3_table_store_each_span_once() {
    let Some(moto) = Moto::start().await else { return };
    let target = moto.target("fleet", "tables").await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(collector(&target).await);
    }
    let acked = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    const ROUNDS: u64 = 3;
    const REQUEST: u64 = 40;
    for round in 0..ROUNDS {
        let mut senders = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let grpc = server.grpc_url();
            let (acked, next_id) = (acked.clone(), next_id.clone());
            let service = format!("writer-{i}");
            senders.push(tokio::spawn(async move {
                let Ok(mut client) = TraceServiceClient::connect(grpc).await else { return };
                loop {
                    let first = next_id.fetch_add(REQUEST, Ordering::SeqCst);
                    match client.export(trace_export(&service, first, REQUEST, &[])).await {
                        Ok(_) => acked.fetch_add(REQUEST, Ordering::SeqCst),
                        Err(_) => return,
                    };
                }
            }));
        }
        // Staggered, so that the kills fall on different moments of each collector's flush cycle.
        for (i, server) in servers.iter_mut().enumerate() {
            tokio::time::sleep(Duration::from_millis(400 + 150 * (round + i as u64))).await;
            server.kill();
        }
        for s in senders {
            let _ = s.await;
        }
        for server in &mut servers {
            server.restart().await;
        }
    }
    for server in &mut servers {
        assert!(server.terminate().success());
    }
    let acked = acked.load(Ordering::SeqCst) as i64;
    assert!(acked > 0);
    let dir = tempfile::tempdir().unwrap();
    let n = cli_count(&target, dir.path(), "SELECT count(*) AS n FROM spans");
    let distinct = cli_count(&target, dir.path(), "SELECT count(DISTINCT span_id) AS n FROM spans");
    assert_eq!(n, distinct, "a span was stored twice");
    assert!(n >= acked, "lost acknowledged spans: stored {n}, acknowledged {acked}");
    // Each kill can catch its collector's sender with one request in flight (stored, never acknowledged).
    let in_flight = (ROUNDS * 3 * REQUEST) as i64;
    assert!(n <= acked + in_flight, "stored {n} but only {acked} acknowledged plus {in_flight} in flight");
    for i in 0..3 {
        let sql = format!("SELECT count(*) AS n FROM spans WHERE service_name = 'writer-{i}'");
        assert!(cli_count(&target, dir.path(), &sql) > 0, "writer-{i} stored nothing");
    }
    assert_every_object_committed(&target).await;
}

/// Compaction on S3 while queries loop: a closed hour's small objects are downloaded, rewritten into one and
/// uploaded, in one commit that removes the small ones with `dataChange = false`; no query fails and the answer never
/// changes; vacuum then deletes the small objects, and the bucket holds the one file the log names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_a_closed_hours_small_objects_on_s3_while_queries_run() {
    let Some(moto) = Moto::start().await else { return };
    let target = moto.target("compact", "t").await;
    let env: Vec<(&str, &str)> = target.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = format!(
        "[storage]\nurl = \"{}\"\nflush_interval = \"50ms\"\ncompaction_min_files = 4\ncompaction_after = \"0s\"\n\
         maintenance_interval = \"1h\"\nvacuum_grace = \"3s\"\n[query]\ntimeout = \"2s\"\n",
        target.url
    );
    let mut server = Server::start_with_env(&config, &env).await;
    const HOUR_NS: u64 = 3_600_000_000_000;
    let hour = (crate::support::now_ns() / HOUR_NS - 3) * HOUR_NS;
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    for i in 0..20u64 {
        client.export(crate::storage::spans_at(hour + i * 1_000_000, i * 100, 100)).await.unwrap();
        // A flush to S3 (upload, then commit) takes a few hundred ms: pause longer than one, for many objects.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(server.terminate().success());
    let table = format!("{}/spans", target.prefix);
    let parquet = |all: Vec<(String, u64)>| -> Vec<String> {
        all.into_iter().map(|(p, _)| p).filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/")).collect()
    };
    let small = parquet(objects(target.store.as_ref(), &table).await).len();
    assert!(small >= 6, "expected many small objects, found {small}");
    let sql = "SELECT count(*) AS n, count(DISTINCT span_id) AS d, sum(duration_ns) AS s FROM spans";
    let (first, queries) = query_while_compacting(&mut server, &config, sql, small).await;
    assert_eq!(first[0]["n"], 2000);
    assert!(server.metric("tailscope_compactions").await >= 1.0);
    let left = parquet(objects(target.store.as_ref(), &table).await);
    assert_eq!(left.len(), 1, "one object after compaction and vacuum: {left:?}");
    assert_every_object_committed(&target).await;
    // The compaction commit's removes say the rows did not change.
    let mut removes = 0;
    for (entry, _) in objects(target.store.as_ref(), &format!("{table}/_delta_log")).await {
        if entry.ends_with(".json") {
            let text = target.store.get(&ObjectPath::from(entry.as_str())).await.unwrap().bytes().await.unwrap();
            for line in String::from_utf8_lossy(&text).lines() {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(remove) = action.get("remove") {
                    assert_eq!(remove["dataChange"], false, "{line}");
                    removes += 1;
                }
            }
        }
    }
    assert_eq!(removes, small, "one remove per small object");
    // No local copy stays behind in the data dir.
    let local: Vec<_> = walk(&server.data_dir).into_iter().filter(|p| p.ends_with(".parquet")).collect();
    assert!(local.is_empty(), "local copies left: {local:?}");
    assert_eq!(server.sql(sql).await, first);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli_count(&target, dir.path(), "SELECT count(*) AS n FROM spans"), 2000);
    eprintln!("compaction on S3: {small} objects -> 1; {queries} queries during it");
}

/// A TCP proxy in front of the S3 server, to take the store away and bring it back without losing what it holds
/// (moto keeps everything in memory): while down, new connections are closed at once and open ones are cut.
struct Outage {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    async fn in_front_of(moto: &Moto) -> Outage {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let target = format!("127.0.0.1:{}", moto.port);
        let flag = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                let (target, flag) = (target.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    let down = async {
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down => {}
                    }
                });
            }
        });
        Outage { port, up, task }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The environment of a collector that reaches the store through this proxy.
    fn env(&self, moto: &Moto) -> Vec<(&'static str, String)> {
        let mut env = moto.env();
        env.retain(|(k, _)| *k != "AWS_ENDPOINT");
        env.push(("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)));
        env
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The store goes away: ingest keeps acknowledging into the WAL up to `storage.wal_max_bytes`, then refuses with
/// 503 / UNAVAILABLE and a retry hint; once the store is back every acknowledged span is committed there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_backs_off_then_loses_nothing() {
    use prost::Message as _;
    let Some(moto) = Moto::start().await else { return };
    let target = moto.target("outage", "t").await;
    let outage = Outage::in_front_of(&moto).await;
    let env = outage.env(&moto);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let toml = format!(
        "[ingest]\nretry_after = \"3s\"\n[storage]\nurl = \"{}\"\nflush_interval = \"200ms\"\n\
         wal_max_bytes = \"64KiB\"\n",
        target.url
    );
    let server = Server::start_with_env(&toml, &env).await;
    let mut client = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    client.export(trace_export("outage", 0, 20, &[])).await.unwrap();
    let mut acked = 20i64;
    let dir = tempfile::tempdir().unwrap();
    let committed = "SELECT count(*) AS n FROM spans WHERE service_name = 'outage'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while cli_count(&target, dir.path(), committed) != acked {
        assert!(Instant::now() < deadline, "the first spans never reached S3; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    outage.set_up(false);
    let mut next = 1000u64;
    let refusal = loop {
        match client.export(trace_export("outage", next, 50, &[])).await {
            Ok(_) => acked += 50,
            Err(status) => break status,
        }
        next += 50;
        assert!(next < 1_000_000, "ingest never refused while the store was down");
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("storage.wal_max_bytes"), "{}", refusal.message());
    assert!(acked > 20, "nothing was acknowledged into the WAL while the store was down");
    let http = reqwest::Client::new()
        .post(format!("{}/v1/traces", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(trace_export("outage", 1 << 40, 5, &[]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 503);
    assert_eq!(http.headers()["retry-after"], "3");

    outage.set_up(true);
    // object_store retries with backoff (up to 15 s apart), then the flusher does: give it a minute.
    let deadline = Instant::now() + Duration::from_secs(90);
    while cli_count(&target, dir.path(), committed) != acked {
        assert!(
            Instant::now() < deadline,
            "acknowledged spans did not reach S3 after the outage; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let distinct = "SELECT count(DISTINCT span_id) AS n FROM spans WHERE service_name = 'outage'";
    assert_eq!(cli_count(&target, dir.path(), distinct), acked);
    // Ingest accepts again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.export(trace_export("outage", 1 << 41, 5, &[])).await.is_err() {
        assert!(Instant::now() < deadline, "ingest did not resume after the outage");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}
