//! The conventions operators expect of a collector (issue #14), each against the real binary: addresses by host
//! name, settings from the environment and secrets from files, sizes and durations as people write them, zstd and
//! deflate bodies, CORS for browser exporters, answers without `partialSuccess` when everything was accepted, logs
//! without colour codes in files, and Flight SQL prepared statements with parameters and the metadata JDBC asks for.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, ProstMessageExt, XdbcDataType,
};
use arrow_flight::{FlightDescriptor, FlightInfo};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use futures::TryStreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::support::{
    Custom, Server, free_addr, now_ns, proc_mib, rpc_status, serve_fails_to_start, string_kv as kv, tailscope_bin,
    trace_export, write_nested_string,
};

/// `n` chat spans with ids from `first`.
fn spans(first: u64, n: u64) -> ExportTraceServiceRequest {
    trace_export("conventions", first, n, &[kv("gen_ai.provider.name", "openai"), kv("gen_ai.request.model", "gpt-4o")])
}

/// POSTs `body` to OTLP/HTTP `/v1/traces` at `base` with the given headers; the status, headers and body.
async fn post_traces(
    base: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().post(format!("{base}/v1/traces")).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap_or_else(|e| panic!("POST {base}/v1/traces: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// A temp dir and four free loopback ports, for servers launched by hand.
fn launch_parts() -> (tempfile::TempDir, [std::net::SocketAddr; 4]) {
    (tempfile::tempdir().unwrap(), [free_addr(), free_addr(), free_addr(), free_addr()])
}

fn path_arg(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_take_host_names_in_flags_and_the_config() {
    let (tmp, [grpc, http, api, flight]) = launch_parts();
    let config = tmp.path().join("tailscope.toml");
    // `0.0.0.0` and `[::]` (every interface) in the file, `localhost` in the flags. Serving every interface without
    // TLS and keys takes `insecure` (docs/security.md); this test is about how addresses are written.
    let toml =
        format!("[server]\napi = \"0.0.0.0:{}\"\nflight = \"[::]:{}\"\ninsecure = true\n", api.port(), flight.port());
    std::fs::write(&config, toml).unwrap();
    let data_dir = tmp.path().join("data");
    let args = vec![
        "--config".into(),
        path_arg(&config),
        "--data-dir".into(),
        path_arg(&data_dir),
        "--otlp-grpc".into(),
        format!("localhost:{}", grpc.port()),
        "--otlp-http".into(),
        format!("localhost:{}", http.port()),
    ];
    let flight_v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, flight.port()));
    let server =
        Server::start_custom(Custom { tmp, args, env: Vec::new(), data_dir, addrs: [grpc, http, api, flight_v6] })
            .await;

    // Each listener answers where its name says.
    let (status, _, body) = post_traces(
        &format!("http://localhost:{}", http.port()),
        &[("content-type", "application/x-protobuf")],
        spans(1, 2).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(format!(
            "http://localhost:{}",
            grpc.port()
        ))
        .await
        .expect("OTLP/gRPC on localhost");
    client.export(spans(10, 3)).await.expect("a gRPC export");
    server.wait_count("SELECT count(*) AS n FROM spans", 5).await;
    let mut flight_client = flight_client(&format!("http://[::1]:{}", flight.port())).await;
    let info = flight_client.execute("SELECT count(*) AS n FROM spans".into(), None).await.expect("Flight SQL on [::]");
    assert_eq!(int64s(&fetch(&mut flight_client, &info).await, "n"), [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serve_flag_can_come_from_a_tailscope_environment_variable() {
    // `--help` names each variable (checked first: an old binary would bind the default ports instead).
    let help = Command::new(tailscope_bin()).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let vars = [
        "TAILSCOPE_CONFIG",
        "TAILSCOPE_DATA_DIR",
        "TAILSCOPE_OTLP_GRPC",
        "TAILSCOPE_OTLP_HTTP",
        "TAILSCOPE_API",
        "TAILSCOPE_FLIGHT",
    ];
    for var in vars {
        assert!(help.contains(var), "serve --help does not name {var}:\n{help}");
    }

    let (tmp, [grpc, http, api, flight]) = launch_parts();
    let config = tmp.path().join("from-env.toml");
    std::fs::write(&config, "[ingest]\nmax_body_bytes = 2048\n").unwrap();
    let data_dir = tmp.path().join("data-from-env");
    let values = [
        path_arg(&config),
        path_arg(&data_dir),
        grpc.to_string(),
        format!("localhost:{}", http.port()),
        api.to_string(),
        flight.to_string(),
    ];
    let env = vars.iter().map(|v| v.to_string()).zip(values).collect();
    let server = Server::start_custom(Custom {
        tmp,
        args: Vec::new(),
        env,
        data_dir: data_dir.clone(),
        addrs: [grpc, http, api, flight],
    })
    .await;
    assert!(data_dir.join("wal").is_dir(), "the data dir is the one TAILSCOPE_DATA_DIR names");
    // The config file TAILSCOPE_CONFIG names applies: its 2 KiB body limit refuses a 4 KiB body.
    let (status, headers, body) =
        post_traces(&server.http_url(), &[("content-type", "application/json")], vec![b' '; 4096]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    assert!(rpc_status(ct, &body).message.contains("2048"), "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_come_from_environment_variables_and_files() {
    let (tmp, [grpc, http, api, flight]) = launch_parts();
    // A data dir whose name holds a quote, a space and `$${...}`: substituted into a value, it cannot break the TOML.
    // (Not a backslash: delta-rs reads one in a table's path as a separator, and tailscope refuses such a data dir.)
    let data_parent = tmp.path().join("dirs");
    std::fs::create_dir(&data_parent).unwrap();
    let hook_file = tmp.path().join("hook-url");
    std::fs::write(&hook_file, "http://127.0.0.1:9/hook-from-a-file\n").unwrap();
    let config = tmp.path().join("tailscope.toml");
    std::fs::write(
        &config,
        "data_dir = \"${env:TS_IT_DATA_PARENT}/da\\\"ta $${not_substituted}\"\n\
         [alerts]\nwebhooks = [\"${file:hook-url}\", \"${env:TS_IT_HOOK}\"]\n",
    )
    .unwrap();
    let data_dir = data_parent.join("da\"ta ${not_substituted}");
    let args = vec![
        "--config".into(),
        path_arg(&config),
        "--otlp-grpc".into(),
        grpc.to_string(),
        "--otlp-http".into(),
        http.to_string(),
        "--api".into(),
        api.to_string(),
        "--flight".into(),
        flight.to_string(),
    ];
    let env = vec![
        ("TS_IT_DATA_PARENT".to_string(), path_arg(&data_parent)),
        ("TS_IT_HOOK".to_string(), "http://127.0.0.1:9/hook\"from-the-env".to_string()),
    ];
    let server =
        Server::start_custom(Custom { tmp, args, env, data_dir: data_dir.clone(), addrs: [grpc, http, api, flight] })
            .await;
    assert!(data_dir.join("wal").is_dir(), "the data dir is {data_dir:?}: {:?}", std::fs::read_dir(&data_parent));
    drop(server);

    // What cannot be substituted stops start-up, naming the key and the variable or file.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big-secret");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    let cases = [
        ("data_dir = \"${env:TS_IT_SURELY_UNSET}\"\n".to_string(), vec!["data_dir", "TS_IT_SURELY_UNSET"]),
        ("[alerts]\nwebhooks = [\"${file:no-such-file}\"]\n".to_string(), vec!["alerts.webhooks[0]", "no-such-file"]),
        (
            format!("[alerts]\nwebhooks = [\"${{file:{}}}\"]\n", big.display()),
            vec!["alerts.webhooks[0]", "big-secret", "1 MiB"],
        ),
        ("[[budget]]\nname = \"${vault:x}\"\n".to_string(), vec!["budget[0].name", "vault"]),
    ];
    for (toml, says) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &toml).unwrap();
        let stderr = serve_fails_to_start(Some(&path), &dir.path().join("data"));
        for word in says {
            assert!(stderr.contains(word), "{toml}: the error does not name {word:?}: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_and_durations_are_written_as_people_write_them() {
    let server = Server::start_with(
        "[ingest]\nmax_body_bytes = \"1KiB\"\nmax_buffer_bytes = \"64 MiB\"\nretry_after = \"2s\"\n\
         [storage]\nflush_max_bytes = \"32MiB\"\nflush_interval = \"10m\"\n\
         [memory]\nlimit_mb = \"256MiB\"\n[query]\nmemory_limit_mb = \"0.125GiB\"\nmetadata_cache_mb = \"8MiB\"\n\
         [pricing]\ncache_bytes = \"1MB\"\n[live]\nslo_p99_ms = \"250ms\"\n",
    )
    .await;
    let (status, headers, body) =
        post_traces(&server.http_url(), &[("content-type", "application/json")], vec![b' '; 2048]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    assert!(rpc_status(ct, &body).message.contains("1024-byte limit"), "{}", String::from_utf8_lossy(&body));
    let live: serde_json::Value =
        reqwest::get(format!("{}/api/v1/live", server.api_url())).await.unwrap().json().await.unwrap();
    assert_eq!(live["slo_p99_ms"], 250.0, "{live}");
}

fn zstd_bytes(body: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(body, 3).unwrap()
}

fn zlib_bytes(body: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).unwrap();
    z.finish().unwrap()
}

fn raw_deflate_bytes(body: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).unwrap();
    z.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_takes_zstd_and_deflate_and_refuses_their_bombs_after_decompression() {
    let server = Server::start_with("[ingest]\nmax_body_bytes = 4194304\n").await;
    let base = server.http_url();
    type Compress = fn(&[u8]) -> Vec<u8>;
    let cases: [(&str, Compress); 3] = [("zstd", zstd_bytes), ("deflate", zlib_bytes), ("deflate", raw_deflate_bytes)];
    for (i, (encoding, compress)) in cases.iter().enumerate() {
        let body = compress(&spans(100 * i as u64, 4).encode_to_vec());
        let headers = [("content-type", "application/x-protobuf"), ("content-encoding", *encoding)];
        let (status, _, answer) = post_traces(&base, &headers, body).await;
        assert_eq!(status, 200, "{encoding} #{i}: {}", String::from_utf8_lossy(&answer));
    }
    server.wait_count("SELECT count(*) AS n FROM spans", 12).await;

    // Past the 4 MiB limit once inflated: 413, decided while inflating (1 GiB would not fit the process).
    // An `ExportTraceServiceRequest` whose one span's name is 1 GiB (zstd) or 256 MiB (deflate) of 'a':
    // resource_spans (1) > scope_spans (2) > spans (2) > name (5).
    let name = [1, 2, 2, 5];
    let mut zstd_bomb = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    write_nested_string(&name, 1 << 30, &mut zstd_bomb);
    let zstd_bomb = zstd_bomb.finish().unwrap();
    let mut deflate_bomb = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    write_nested_string(&name, 256 << 20, &mut deflate_bomb);
    let deflate_bomb = deflate_bomb.finish().unwrap();
    assert!(zstd_bomb.len() < 1 << 20 && deflate_bomb.len() < 4 << 20);
    for (encoding, bomb) in [("zstd", zstd_bomb), ("deflate", deflate_bomb)] {
        let headers = [("content-type", "application/x-protobuf"), ("content-encoding", encoding)];
        let (status, headers, body) = post_traces(&base, &headers, bomb).await;
        assert_eq!(status, 413, "{encoding}: {}", String::from_utf8_lossy(&body));
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
        assert!(rpc_status(ct, &body).message.contains("4194304-byte limit"), "{encoding}");
    }
    let peak = proc_mib(server.pid(), "VmHWM");
    assert!(peak < 512, "the bombs were inflated: peak RSS {peak} MiB");
    // Still serving.
    let body = zstd_bytes(&spans(1000, 1).encode_to_vec());
    let headers = [("content-type", "application/x-protobuf"), ("content-encoding", "zstd")];
    assert_eq!(post_traces(&base, &headers, body).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_exporters_may_send_from_the_configured_origins() {
    let server = Server::start_with("[server.cors]\nallowed_origins = [\"https://app.example.com\"]\n").await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", server.http_url());
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,content-encoding")
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).map(|v| v.to_str().unwrap().to_ascii_lowercase()).unwrap_or_default()
    };

    let r = preflight("https://app.example.com").await.unwrap();
    assert!(r.status().is_success(), "preflight: {}", r.status());
    assert_eq!(header(&r, "access-control-allow-origin"), "https://app.example.com");
    assert!(header(&r, "access-control-allow-methods").contains("post"), "{:?}", r.headers());
    let allowed = header(&r, "access-control-allow-headers");
    assert!(allowed.contains("content-type") && allowed.contains("content-encoding"), "{:?}", r.headers());

    let export = serde_json::json!({"resourceSpans": []}).to_string().into_bytes();
    let (status, headers, _) = post_traces(
        &server.http_url(),
        &[("content-type", "application/json"), ("origin", "https://app.example.com")],
        export.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "https://app.example.com");
    // A refusal is readable by the page too, with its Retry-After when it has one.
    let (status, headers, _) = post_traces(
        &server.http_url(),
        &[("content-type", "text/plain"), ("origin", "https://app.example.com")],
        export.clone(),
    )
    .await;
    assert_eq!(status, 415);
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "https://app.example.com");

    // Another origin is not allowed.
    let r = preflight("https://evil.example.net").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());
    let (_, headers, _) = post_traces(
        &server.http_url(),
        &[("content-type", "application/json"), ("origin", "https://evil.example.net")],
        export,
    )
    .await;
    assert!(headers.get("access-control-allow-origin").is_none(), "{headers:?}");

    // Without configured origins there is no CORS at all.
    let plain = Server::start().await;
    let r = client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/traces", plain.http_url()))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().keys().all(|k| !k.as_str().starts_with("access-control-")), "{:?}", r.headers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fully_accepted_export_answers_without_partial_success() {
    let server = Server::start().await;
    let json = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "conventions"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat",
            "startTimeUnixNano": now_ns().to_string(), "endTimeUnixNano": (now_ns() + 1_000_000).to_string()
        }]}]
    }]});
    let (status, _, body) =
        post_traces(&server.http_url(), &[("content-type", "application/json")], json.to_string().into_bytes()).await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer, serde_json::json!({}), "no partialSuccess, not even null");
    let (status, _, body) =
        post_traces(&server.http_url(), &[("content-type", "application/x-protobuf")], spans(1, 1).encode_to_vec())
            .await;
    assert_eq!(status, 200);
    assert!(body.is_empty(), "protobuf: no partial_success field: {body:?}");
    // A span rejected still says so.
    let mut bad = json.clone();
    bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "00000000000000000000000000000000".into();
    let (_, _, body) =
        post_traces(&server.http_url(), &[("content-type", "application/json")], bad.to_string().into_bytes()).await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let rejected = &answer["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let server = Server::start().await;
    // The line is written just after the listeners start, so `/readyz` may answer a moment before it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.log().contains("tailscope is serving") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = server.log();
    assert!(log.contains("tailscope is serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file: {log:?}");
}

async fn flight_client(url: &str) -> FlightSqlServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("Flight SQL at {url}: {e}"));
    FlightSqlServiceClient::new(channel)
}

async fn fetch(client: &mut FlightSqlServiceClient<tonic::transport::Channel>, info: &FlightInfo) -> Vec<RecordBatch> {
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    client.do_get(ticket).await.expect("do_get").try_collect().await.expect("the batches")
}

fn int64s(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column_by_name(column).unwrap().as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name(column).unwrap().as_string::<i32>().clone();
            (0..col.len()).map(move |i| col.value(i).to_string())
        })
        .collect()
}

fn params(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_prepared_statements_bind_parameters() {
    let server = Server::start().await;
    let mut client = flight_client(&format!("http://{}", server.flight_addr)).await;

    let sql = "SELECT value FROM range(10) WHERE value >= ? AND value < ? ORDER BY value";
    let mut prepared = client.prepare(sql.into(), None).await.expect("prepare");
    let schema = prepared.parameter_schema().unwrap().clone();
    assert_eq!(schema.fields().len(), 2, "{schema:?}");
    assert!(schema.fields().iter().all(|f| f.data_type() == &DataType::Int64), "{schema:?}");
    prepared
        .set_parameters(params(vec![
            ("a", Arc::new(Int64Array::from(vec![3]))),
            ("b", Arc::new(Int64Array::from(vec![6]))),
        ]))
        .unwrap();
    let info = prepared.execute().await.expect("execute with parameters");
    assert_eq!(int64s(&fetch(&mut client, &info).await, "value"), [3, 4, 5]);
    // Bound again on the same statement, with narrower integers (as JDBC's setInt sends them): cast to the type.
    prepared
        .set_parameters(params(vec![
            ("a", Arc::new(Int32Array::from(vec![7]))),
            ("b", Arc::new(Int32Array::from(vec![9]))),
        ]))
        .unwrap();
    let info = prepared.execute().await.expect("execute again");
    assert_eq!(int64s(&fetch(&mut client, &info).await, "value"), [7, 8]);
    // Too few parameters: refused, saying how many the statement takes.
    prepared.set_parameters(params(vec![("a", Arc::new(Int64Array::from(vec![1])))])).unwrap();
    let err = prepared.execute().await.unwrap_err().to_string();
    assert!(err.contains('2') && err.contains("parameter"), "{err}");
    prepared.close().await.unwrap();

    // Strings, and a value that is data, never SQL.
    let mut prepared = client
        .prepare("SELECT upper(name) AS up FROM (VALUES ('a'), ('b')) AS t(name) WHERE name = ?".into(), None)
        .await
        .unwrap();
    prepared.set_parameters(params(vec![("n", Arc::new(StringArray::from(vec!["b"])))])).unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(strings(&fetch(&mut client, &info).await, "up"), ["B"]);
    prepared.set_parameters(params(vec![("n", Arc::new(StringArray::from(vec!["b' OR '1'='1"])))])).unwrap();
    let info = prepared.execute().await.unwrap();
    assert!(fetch(&mut client, &info).await.iter().all(|b| b.num_rows() == 0));
    prepared.close().await.unwrap();

    // The read-only rules and limits of plain statements hold for prepared ones.
    let err = client.prepare("DELETE FROM spans WHERE trace_id = ?".into(), None).await.unwrap_err().to_string();
    assert!(err.contains("read-only"), "{err}");
    let deep = format!("SELECT {}? AS n", "1 + ".repeat(4_999));
    let err = client.prepare(deep, None).await.unwrap_err().to_string();
    assert!(err.contains("max_expr_depth"), "{err}");
    // A handle the server never gave (or closed, or expired) is refused.
    let cmd = CommandPreparedStatementQuery { prepared_statement_handle: b"no such handle".to_vec().into() };
    let err =
        client.inner_mut().get_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // ADBC (Python), as DBeaver-style and notebook clients bind `?`, when the driver is installed.
    let script = r#"
import sys
import adbc_driver_flightsql.dbapi as flight_sql
with flight_sql.connect("grpc://" + sys.argv[1]) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT value FROM range(10) WHERE value >= ? AND value < ? ORDER BY value", parameters=(2, 5))
        print(",".join(str(r[0]) for r in cur.fetchall()))
"#;
    match Command::new("python3").args(["-c", script, &server.flight_addr.to_string()]).output() {
        Ok(out) if out.status.success() => assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2,3,4"),
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError") => {
            panic!("ADBC with parameters failed: {}", String::from_utf8_lossy(&out.stderr))
        }
        _ => eprintln!("note: python3 -m pip install adbc-driver-flightsql pyarrow to test ADBC parameters"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_answers_the_metadata_jdbc_asks_for() {
    let server = Server::start().await;
    let mut client = flight_client(&format!("http://{}", server.flight_addr)).await;

    let info = client.get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None }).await.expect("GetXdbcTypeInfo");
    let batches = fetch(&mut client, &info).await;
    let names = strings(&batches, "type_name");
    for name in ["BIGINT", "DOUBLE", "VARCHAR", "BOOLEAN", "TIMESTAMP"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    let varchar = XdbcDataType::XdbcVarchar as i32;
    let info = client.get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: Some(varchar) }).await.unwrap();
    let batches = fetch(&mut client, &info).await;
    assert_eq!(strings(&batches, "type_name"), ["VARCHAR"]);

    let info = client
        .get_primary_keys(CommandGetPrimaryKeys { catalog: None, db_schema: None, table: "spans".into() })
        .await
        .expect("GetPrimaryKeys");
    let batches = fetch(&mut client, &info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0, "no primary keys");
    let schema = info.try_decode_schema().unwrap();
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(columns, ["catalog_name", "db_schema_name", "table_name", "column_name", "key_name", "key_sequence"]);
    // Foreign keys, which DBeaver asks for when it opens a table: none either.
    let imported = client
        .get_imported_keys(CommandGetImportedKeys { catalog: None, db_schema: None, table: "spans".into() })
        .await
        .expect("GetImportedKeys");
    let exported = client
        .get_exported_keys(CommandGetExportedKeys { catalog: None, db_schema: None, table: "spans".into() })
        .await
        .expect("GetExportedKeys");
    for info in [imported, exported] {
        let batches = fetch(&mut client, &info).await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0, "no foreign keys");
        assert_eq!(info.try_decode_schema().unwrap().field(0).name(), "pk_catalog_name");
    }
}
