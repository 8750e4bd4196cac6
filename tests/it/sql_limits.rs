//! Hostile SQL against the real server and CLI: statements nested thousands deep, expression bombs and results too
//! large to hold must get a clear error (or a streamed answer), never abort the process or balloon its memory.

use std::process::Command;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt;

use crate::support::{Server, tailscope_bin};

/// `SELECT 1 + 1 + ... + 1` with `terms` terms: a left-deep chain as deep as it is long.
fn plus_chain(terms: usize) -> String {
    format!("SELECT {}1", "1 + ".repeat(terms - 1))
}

/// `SELECT count(*) FROM spans WHERE duration_ns = 0 OR duration_ns = 1 OR ...` with `terms` terms.
fn or_chain(terms: usize) -> String {
    let terms: Vec<String> = (0..terms).map(|i| format!("duration_ns = {i}")).collect();
    format!("SELECT count(*) AS n FROM spans WHERE {}", terms.join(" OR "))
}

/// Peak resident memory of a process so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    kib / 1024
}

/// Current resident memory (VmRSS), in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib / 1024
}

async fn assert_serving(server: &Server) {
    let rows = server.sql("SELECT 41 + 1 AS answer").await;
    assert_eq!(rows[0]["answer"], 42, "the server still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_sql_gets_a_clear_error_on_every_surface() {
    let mut server = Server::start().await;
    let deep = [plus_chain(1_000), or_chain(20_000)];

    // HTTP: a 400 naming the limit, and the server lives on.
    for sql in &deep {
        let (status, body) = server.sql_raw(sql).await;
        assert_eq!(status, 400, "{body}\n{}", server.log());
        assert!(body.contains("max_expr_depth"), "{body}");
        assert!(body.contains("limit_exceeded"), "{body}");
    }
    assert_serving(&server).await;

    // Flight SQL: INVALID_ARGUMENT with the same message, for the statement and a prepared statement.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.flight_addr))
        .unwrap()
        .connect()
        .await
        .expect("flight connects");
    let mut client = FlightSqlServiceClient::new(channel);
    for sql in &deep {
        let err = client.execute(sql.clone(), None).await.unwrap_err();
        assert!(err.to_string().contains("max_expr_depth"), "{err}");
        let err = client.prepare(sql.clone(), None).await.unwrap_err();
        assert!(err.to_string().contains("max_expr_depth"), "{err}");
    }
    assert_serving(&server).await;

    // The CLI against the server, then over the files (the 20,000-term chain is longer than an argument may be:
    // both go through stdin; the short one as an argument too).
    let cli = |args: &[&str], sql: &str| {
        let mut child = Command::new(tailscope_bin())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(sql.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("max_expr_depth"), "{stderr}");
    };
    let api = server.api_url();
    for sql in &deep {
        cli(&["query", "--server", &api, "-"], sql);
    }
    cli(&["query", "--server", &api, &deep[0]], "");
    assert_serving(&server).await;

    assert!(server.terminate().success());
    let dir = server.data_dir.to_str().unwrap().to_string();
    for sql in &deep {
        cli(&["query", "--data-dir", &dir, "-"], sql);
    }
    cli(&["query", "--data-dir", &dir, &deep[0]], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_bombs_fail_fast_and_bounded() {
    let server = Server::start_with("[query]\ntimeout = \"8s\"\n").await;
    let before = peak_rss_mib(server.pid());
    for sql in [
        "SELECT length(repeat('x', 1000000000)) AS n",
        "SELECT length(repeat(repeat('x', 100000000), 10)) AS n",
        "SELECT cardinality(range(10000000000)) AS n",
        "SELECT cardinality(generate_series(1, 10000000000)) AS n",
        "SELECT cardinality(range(DATE '1970-01-01', DATE '9999-01-01', INTERVAL '1 second')) AS n",
        "SELECT length(lpad('x', 2000000000)) AS n",
        "SELECT cardinality(array_repeat(1, 1000000000)) AS n",
        "SELECT length(replace(repeat('x', 1000000), 'x', repeat('y', 1000))) AS n",
        "SELECT sum(length(repeat('x', value))) AS n FROM range(100000)",
    ] {
        let started = Instant::now();
        let (status, body) = server.sql_raw(sql).await;
        let took = started.elapsed();
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(body.contains("max_function_output_mb"), "{sql}: {body}");
        assert!(took < Duration::from_secs(4), "{sql} took {took:?}");
    }
    let after = peak_rss_mib(server.pid());
    eprintln!("expression bombs: server peak RSS {before} MiB before, {after} MiB after");
    assert!(after < before + 600, "peak RSS grew from {before} to {after} MiB");
    // Within the limit the functions still work.
    let rows = server
        .sql("SELECT length(repeat('ab', 1000)) AS r, cardinality(range(5)) AS c, length(lpad('x', 10)) AS p")
        .await;
    assert_eq!((rows[0]["r"].as_i64(), rows[0]["c"].as_i64(), rows[0]["p"].as_i64()), (Some(2000), Some(5), Some(10)));
    // A long-running range is cancelled by the timeout in the middle of its operator.
    let started = Instant::now();
    let (status, body) = server.sql_raw("SELECT sum(value) AS s FROM range(1000000000000)").await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
    assert_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_under_a_bounded_memory() {
    let server = Server::start_with("[query]\ntimeout = \"60s\"\nmax_concurrent = 1\n").await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/query", server.api_url());
    assert_serving(&server).await;
    let pid = server.pid();
    let before = rss_mib(pid);

    // About 160 MB of JSON: counted as it arrives, never held by the test.
    let sql = "SELECT value, repeat('x', 100) AS pad FROM range(1000000)";
    let mut response = http.post(&url).json(&serde_json::json!({ "sql": sql })).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut bytes = 0usize;
    let mut chunks = 0usize;
    let mut max_rss = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len();
        chunks += 1;
        if chunks.is_multiple_of(50) {
            max_rss = max_rss.max(rss_mib(pid));
        }
    }
    eprintln!(
        "streamed {bytes} bytes in {chunks} chunks; server RSS {before} MiB before, at most {max_rss} MiB during"
    );
    assert!(bytes > 100_000_000, "{bytes}");
    assert!(chunks > 10, "the body came in {chunks} chunks");
    assert!(max_rss < before + 120, "server RSS went from {before} to {max_rss} MiB while sending {bytes} bytes");

    // A result that could never be held: the first rows arrive at once; a client that stops reading holds the
    // query (backpressure) without the server buffering; hanging up cancels it and frees the only slot.
    for accept in ["application/json", "text/csv", "application/vnd.apache.arrow.stream"] {
        let started = Instant::now();
        let mut response = http
            .post(&url)
            .header("accept", accept)
            .json(&serde_json::json!({ "sql": "SELECT value FROM range(1000000000000)" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{accept}");
        let first = response.chunk().await.unwrap().expect("a first chunk");
        assert!(!first.is_empty());
        assert!(started.elapsed() < Duration::from_secs(10), "{accept}: first chunk after {:?}", started.elapsed());
        let rss_paused = rss_mib(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rss_mib(pid) < rss_paused + 64, "{accept}: the server buffers while the client does not read");
        drop(response);
        let started = Instant::now();
        assert_serving(&server).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{accept}: the slot was not freed");
    }

    // Flight SQL streams too: the first batch of an endless result arrives.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.flight_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client.execute("SELECT value FROM range(1000000000000)".into(), None).await.unwrap();
    let mut batches = client.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), batches.next())
        .await
        .expect("a first batch in time")
        .expect("a batch")
        .expect("no error");
    assert!(first.num_rows() > 0);
    drop(batches);
    drop(client);
    assert_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_ends_a_streaming_answer() {
    let server = Server::start_with("[query]\ntimeout = \"2s\"\n").await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/query", server.api_url()))
        .header("accept", "text/csv")
        .json(&serde_json::json!({ "sql": "SELECT value FROM range(1000000000000)" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The body is cut short: reading it fails instead of completing.
    let body = response.bytes().await;
    assert!(body.is_err(), "an endless result ended normally");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(server.log().contains("timeout"), "{}", server.log());
    assert_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_example_works_verbatim() {
    let server = Server::start().await;
    let url = format!("{}/api/v1/query", server.api_url());
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("curl ") && l.contains("/api/v1/query"))
        .expect("the README has a curl example");
    // The README's own arguments, with the server's address.
    let data = line.split("-d '").nth(1).and_then(|rest| rest.strip_suffix('\'')).expect("-d '...'");
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}", &url, "-d", data]).output();
    let (status, body) = match out {
        Ok(out) => {
            let text = String::from_utf8(out.stdout).unwrap();
            let (body, code) = text.rsplit_once('\n').unwrap();
            (code.parse::<u16>().unwrap(), body.to_string())
        }
        // No curl: the same request as curl sends it.
        Err(_) => {
            let r = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "*/*")
                .body(data.to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(status, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(rows.is_empty(), "no sessions yet: {rows:?}");

    // Plain SQL and a form field work with curl's content type too.
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", "SELECT 1 AS one"),
        ("application/x-www-form-urlencoded", "sql=SELECT+1+AS+one"),
        ("text/plain", "SELECT 1 AS one"),
        ("application/json", "{\"sql\": \"SELECT 1 AS one\"}"),
    ] {
        let r = reqwest::Client::new().post(&url).header("content-type", content_type).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{content_type} {body}");
        let rows: Vec<serde_json::Value> = r.json().await.unwrap();
        assert_eq!(rows[0]["one"], 1, "{content_type} {body}");
    }
}
