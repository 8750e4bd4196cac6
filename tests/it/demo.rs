//! `tailscope demo` and `tailscope simulate`, end to end through the real binary.
//!
//! The demo's summary must be SQL over what it stored: each figure is recomputed here, independently, with
//! `tailscope query --data-dir` after the demo has exited, and p99 once more from the raw durations with numpy's
//! interpolation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::{self, Server};

/// Runs `tailscope query --data-dir DIR --format json SQL`.
fn query(dir: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = Command::new(support::tailscope_bin())
        .args(["query", "--format", "json", "--data-dir"])
        .arg(dir)
        .arg(sql)
        .output()
        .expect("run tailscope query");
    assert!(out.status.success(), "query failed: {}\nSQL: {sql}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// numpy.quantile(values, q), method "linear".
fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let h = (values.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let g = h - lo as f64;
    let (a, b) = (values[lo], values[(lo + 1).min(values.len() - 1)]);
    if g >= 0.5 { b - (b - a) * (1.0 - g) } else { a + (b - a) * g }
}

/// The value after `label` on the summary line that starts with it.
fn figure<'a>(summary: &'a str, label: &str) -> &'a str {
    summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label} in the summary:\n{summary}"))
}

#[test]
// Long by design: one demo run whose printed summary is checked figure by figure against SQL over its data.
fn demo_summary_is_sql_over_the_stored_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = Command::new(support::tailscope_bin())
        .args(["demo", "--no-tui", "--duration", "8s", "--rate", "300", "--report-every", "2s", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tailscope demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    // The web UI's address is printed beside the dashboard's.
    assert!(stderr.contains("web UI: http://127.0.0.1:"), "{stderr}");
    // Headless progress lines came before the summary.
    assert!(stdout.lines().filter(|l| l.starts_with('[') && l.contains("sent ")).count() >= 2, "{stdout}");
    let summary = &stdout[stdout.find("summary (SQL").unwrap_or_else(|| panic!("no summary:\n{stdout}"))..];

    let spans: u64 = figure(summary, "spans ").parse().unwrap();
    let sessions: u64 = figure(summary, "sessions ").parse().unwrap();
    let cost: f64 = figure(summary, "cost_usd ").parse().unwrap();
    let alerts: u64 = figure(summary, "alerts_fired ").parse().unwrap();
    let fleet = summary.lines().find(|l| l.starts_with("fleet: ")).expect("fleet line");
    let sent: u64 = fleet["fleet: ".len()..].split_whitespace().next().unwrap().parse().unwrap();
    // ~8 s at 300 spans/s: everything sent was stored, once.
    assert!(spans > 1500, "{summary}");
    assert_eq!(spans, sent, "{summary}");

    let totals =
        &query(&data, "SELECT count(*) AS n, count(DISTINCT session_id) AS s, sum(cost_usd) AS c FROM spans")[0];
    assert_eq!(totals["n"].as_u64(), Some(spans));
    assert_eq!(totals["s"].as_u64(), Some(sessions));
    assert!(sessions > 20, "{summary}");
    let stored_cost = totals["c"].as_f64().unwrap();
    assert!(cost > 0.0 && (stored_cost - cost).abs() < 1e-6 + stored_cost * 1e-9, "summary {cost}, SQL {stored_cost}");

    let fired = &query(&data, "SELECT count(*) AS n FROM alerts WHERE state = 'firing'")[0];
    assert_eq!(fired["n"].as_u64(), Some(alerts));

    // p99 by provider: the summary's figures against raw durations.
    let rows = query(
        &data,
        "SELECT gen_ai_provider AS p, duration_ns AS d FROM spans WHERE gen_ai_operation = 'chat' AND gen_ai_provider IS NOT NULL",
    );
    let mut by_provider: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows {
        by_provider.entry(r["p"].as_str().unwrap().to_string()).or_default().push(r["d"].as_f64().unwrap());
    }
    let providers: Vec<&str> = by_provider.keys().map(String::as_str).collect();
    assert_eq!(providers, ["anthropic", "aws.bedrock", "azure.ai.openai", "gcp.vertex_ai", "openai"]);
    let lines: Vec<&str> = summary.lines().filter(|l| l.trim_start().starts_with("p99_ms")).collect();
    assert_eq!(lines.len(), by_provider.len(), "{summary}");
    for line in lines {
        let mut words = line.split_whitespace().skip(1);
        let provider = words.next().unwrap();
        let p99: f64 = words.next().unwrap().parse().unwrap();
        let durations = by_provider[provider].clone();
        let calls = durations.len();
        assert!(line.contains(&format!("({calls} chat calls)")), "{line}");
        let want = quantile(durations, 0.99) / 1e6;
        assert!((p99 - want).abs() < 0.001, "{provider}: summary {p99} ms, raw durations give {want} ms");
    }

    // What the fleet sent is what the product needs: four clouds, both generations of GenAI names normalised
    // (the services on the deprecated names run in swedencentral and us-west-01),
    // hedged pairs, priced and unpriced models, sessions, and all three signals.
    let shape = &query(
        &data,
        "SELECT count(DISTINCT cloud_provider) AS clouds, \
         count(*) FILTER (WHERE cloud_region IN ('swedencentral', 'us-west-01') AND gen_ai_operation = 'chat' \
             AND status_code <> 'error') AS legacy_chats, \
         count(*) FILTER (WHERE cloud_region IN ('swedencentral', 'us-west-01') AND gen_ai_operation = 'chat' \
             AND status_code <> 'error' AND gen_ai_provider IS NOT NULL AND input_tokens IS NOT NULL \
             AND output_tokens IS NOT NULL AND session_id IS NOT NULL) AS legacy_chats_normalised, \
         count(*) FILTER (WHERE hedge_winner = false) AS hedge_losers, \
         count(*) FILTER (WHERE hedge_winner = true) AS hedge_winners, \
         count(*) FILTER (WHERE price_source = 'unknown') AS unpriced, \
         count(*) FILTER (WHERE cache_read_tokens > 0) AS cached, \
         count(*) FILTER (WHERE peer_cloud_region IS NOT NULL AND egress_bytes > 0) AS egress, \
         count(*) FILTER (WHERE status_code = 'error') AS errors \
         FROM spans",
    )[0];
    assert_eq!(shape["clouds"].as_u64(), Some(4), "{shape}");
    // The services in those two regions use gen_ai.system, gen_ai.usage.prompt/completion_tokens, session.id.
    assert_eq!(shape["legacy_chats"], shape["legacy_chats_normalised"], "{shape}");
    for key in ["legacy_chats", "hedge_losers", "unpriced", "cached", "egress", "errors"] {
        assert!(shape[key].as_u64().unwrap() > 0, "no {key}: {shape}");
    }
    assert_eq!(shape["hedge_losers"], shape["hedge_winners"], "{shape}");
    // The simulator cancels a losing copy 3-40 ms after the winner's first token; the hedging view must give
    // those delays back (it once measured from the winner's end: -1,259 to -2,403 ms).
    let hedging = query(
        &data,
        "SELECT gen_ai_provider AS p, cancel_latency_p50_ms AS p50, cancel_latency_p95_ms AS p95 FROM hedging \
         WHERE cancel_latency_p50_ms IS NOT NULL",
    );
    assert!(!hedging.is_empty(), "no provider has a cancel latency");
    for row in &hedging {
        for key in ["p50", "p95"] {
            let ms = row[key].as_f64().unwrap_or_else(|| panic!("{row}"));
            assert!((2.99..=40.01).contains(&ms), "cancel latency {key} outside the simulator's 3-40 ms: {row}");
        }
    }
    for table in ["metrics", "logs"] {
        let n = query(&data, &format!("SELECT count(*) AS n FROM {table}"))[0]["n"].as_u64().unwrap();
        assert!(n > 0, "no rows in {table}");
    }
}

#[tokio::test]
async fn simulate_loads_any_endpoint_over_otlp_http() {
    let server = Server::start().await;
    let out = tokio::process::Command::new(support::tailscope_bin())
        .args(["simulate", "--protocol", "http", "--duration", "2s", "--rate", "400", "--seed", "7", "--endpoint"])
        .arg(server.http_url())
        .output()
        .await
        .expect("run tailscope simulate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed:\n{stderr}");
    let done = stderr.lines().find(|l| l.starts_with("done: ")).unwrap_or_else(|| panic!("{stderr}"));
    let sent: i64 = done["done: ".len()..].split_whitespace().next().unwrap().parse().unwrap();
    assert!(sent > 500, "{done}");
    // Acknowledged means queryable.
    server.wait_count("SELECT count(*) AS n FROM spans", sent).await;
    let rows = server
        .sql("SELECT count(DISTINCT service_name) AS services, count(DISTINCT session_id) AS sessions FROM spans")
        .await;
    assert!(rows[0]["services"].as_u64().unwrap() >= 6, "{rows:?}");
    assert!(rows[0]["sessions"].as_u64().unwrap() > 5, "{rows:?}");

    // A dead endpoint is an error that says so, not a silent success.
    let dead = support::free_addr();
    let out = tokio::process::Command::new(support::tailscope_bin())
        .args(["simulate", "--duration", "1s", "--rate", "100", "--endpoint"])
        .arg(format!("http://{dead}"))
        .output()
        .await
        .expect("run tailscope simulate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "simulate against nothing succeeded:\n{stderr}");
    assert!(stderr.contains("not acknowledged") || stderr.contains("not delivered"), "{stderr}");
}

/// What reached a fake OTLP/HTTP endpoint: each request's path and headers.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap)>>>;

/// A fake OTLP/HTTP endpoint that acknowledges every export (200 and an empty `Export*ServiceResponse`: nothing
/// rejected) and records what came. Returns its base URL.
async fn fake_otlp_http() -> (String, Seen) {
    use axum::http::{HeaderMap, Uri, header};
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, _body: axum::body::Bytes| {
        record.lock().unwrap().push((uri.path().to_string(), headers));
        async { ([(header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new()) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

/// The OTLP exporter variables of the OpenTelemetry specification, which a test sets itself.
const OTEL_VARS: [&str; 8] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
];

/// Runs `tailscope simulate --protocol http` for a second with `args` and only the OTLP variables in `env`.
async fn simulate_http(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(support::tailscope_bin());
    command.args(["simulate", "--protocol", "http", "--duration", "1s", "--rate", "100", "--report-every", "1h"]);
    command.args(args);
    for var in OTEL_VARS {
        command.env_remove(var);
    }
    command.envs(env.iter().copied()).output().await.expect("run tailscope simulate")
}

/// `tailscope simulate --protocol http` sends OTLP/HTTP to :4318 by default and follows the OpenTelemetry
/// environment as any SDK would: the generic endpoint is a base URL (`/v1/traces` etc. appended), a
/// signal-specific one is used as it is, the headers (`k=v,k2=v2`, URL-encoded) go with every export; a flag
/// wins over the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_over_http_follows_the_otel_environment() {
    let (generic, at_generic) = fake_otlp_http().await;
    let (traces, at_traces) = fake_otlp_http().await;
    let traces_url = format!("{traces}/custom/traces");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", generic.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=agents,authorization=Bearer%20t0k%3D"),
    ];
    let out = simulate_http(&[], &env).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed:\n{stderr}");
    let paths = |seen: &Seen| {
        let mut p: Vec<String> = seen.lock().unwrap().iter().map(|(path, _)| path.clone()).collect();
        p.sort();
        p.dedup();
        p
    };
    assert_eq!(paths(&at_traces), ["/custom/traces"], "{stderr}");
    assert_eq!(paths(&at_generic), ["/v1/logs", "/v1/metrics"], "{stderr}");
    for (path, headers) in at_traces.lock().unwrap().iter().chain(at_generic.lock().unwrap().iter()) {
        assert_eq!(headers.get("x-team").and_then(|v| v.to_str().ok()), Some("agents"), "{path}");
        assert_eq!(headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer t0k="), "{path}");
    }

    // --endpoint wins over both variables: every signal goes to its base URL.
    let (flagged, at_flagged) = fake_otlp_http().await;
    at_generic.lock().unwrap().clear();
    at_traces.lock().unwrap().clear();
    let out = simulate_http(&["--endpoint", &flagged], &env).await;
    assert!(out.status.success(), "simulate failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(paths(&at_flagged), ["/v1/logs", "/v1/metrics", "/v1/traces"]);
    assert!(at_generic.lock().unwrap().is_empty() && at_traces.lock().unwrap().is_empty());

    // Neither: OTLP/HTTP's own port. Its first line says where the spans go; whatever listens there (most likely
    // nothing), the run is not waited for.
    let mut command = tokio::process::Command::new(support::tailscope_bin());
    command.args(["simulate", "--protocol", "http", "--duration", "1s", "--rate", "10"]);
    for var in OTEL_VARS {
        command.env_remove(var);
    }
    let mut child = command.stderr(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut first = String::new();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut first).await.unwrap();
    assert!(first.trim_end().ends_with("over OTLP/HTTP to http://127.0.0.1:4318/v1/traces (seed 42)"), "{first}");
    child.kill().await.unwrap();
}

/// `demo --topology multi-cloud`: three collectors, each cloud's rows in its own store, a Ballista cluster answering
/// the summary, and the fleet's budget alerts fired once, by the coordinator only.
#[test]
fn multi_cloud_demo_fires_each_alert_once_for_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::tailscope_bin())
        .args(["demo", "--topology", "multi-cloud", "--no-tui", "--duration", "22s", "--rate", "400"])
        .args(["--report-every", "3s", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run tailscope demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("summary (SQL over the cluster at df://"), "{stdout}");
    let spans: u64 = figure(&stdout, "spans ").parse().unwrap();

    // Each cloud's rows in its own store, CoreWeave's in `other`; together, every span of the summary.
    let mut stored = 0;
    for (store, clouds) in [("aws", "aws"), ("azure", "azure"), ("gcp", "gcp"), ("other", "coreweave")] {
        let rows = query(
            &dir.path().join("stores").join(store),
            "SELECT cloud_provider AS c, count(*) AS n FROM spans GROUP BY 1",
        );
        assert_eq!(rows.len(), 1, "{store}: {rows:?}");
        assert_eq!(rows[0]["c"], clouds, "{store}: {rows:?}");
        stored += rows[0]["n"].as_u64().unwrap();
    }
    assert_eq!(stored, spans, "the stores hold every span the summary counted");

    // The hedged-duplicates share budget breaches within seconds: the coordinator fires it, each threshold once,
    // and the members fire nothing.
    let collectors = dir.path().join("collectors");
    let fired = query(
        &collectors.join("aws"),
        "SELECT budget, threshold, count(*) AS n FROM alerts WHERE state = 'firing' GROUP BY 1, 2",
    );
    assert!(fired.iter().any(|r| r["budget"] == "hedge-duplicates"), "{fired:?}\n{stdout}");
    assert!(fired.iter().all(|r| r["n"] == 1), "an alert fired more than once: {fired:?}");
    assert!(stdout.contains(&format!("alerts fired by the aws collector: {}", fired.len())), "{stdout}");
    for member in ["azure", "gcp"] {
        let n = &query(&collectors.join(member), "SELECT count(*) AS n FROM alerts")[0];
        assert_eq!(n["n"], 0, "the {member} member fired an alert itself");
        assert!(stdout.contains(&format!("alerts fired by the {member} collector: 0")), "{stdout}");
    }
}
