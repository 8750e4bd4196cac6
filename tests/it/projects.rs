//! Projects (tenants, issue 14): two projects' keys, data sent with each through the official SDK, and every way
//! of reading it back: `/api/v1/query`, Flight SQL (statements, prepared statements with parameters, metadata
//! calls), the CLI's `--token`, views, joins, subqueries, CTEs, `information_schema`, the live windows, the alerts
//! table and API, and the hedging guardrail. Each project's key sees exactly its own rows; an admin key sees all.

use std::process::Command;
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Tracer, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor};
use tonic::transport::Channel;

use tailscope_sim::export::OnRuntime;

use crate::support::{Server, tailscope_bin};

/// The keys of the two projects `a` and `b`: an ingest and a query key each, an ingest key of both, an admin key.
struct Keys {
    ingest_a: String,
    ingest_b: String,
    ingest_ab: String,
    query_a: String,
    query_b: String,
    admin: String,
}

impl Keys {
    fn new() -> Keys {
        let key = collector::auth::new_key;
        Keys { ingest_a: key(), ingest_b: key(), ingest_ab: key(), query_a: key(), query_b: key(), admin: key() }
    }

    fn toml(&self) -> String {
        [
            ("ingest-a", &self.ingest_a, "ingest", "\"a\""),
            ("ingest-b", &self.ingest_b, "ingest", "\"b\""),
            ("ingest-ab", &self.ingest_ab, "ingest", "\"a\", \"b\""),
            ("query-a", &self.query_a, "query", "\"a\""),
            ("query-b", &self.query_b, "query", "\"b\""),
            ("admin", &self.admin, "admin", ""),
        ]
        .iter()
        .map(|(name, key, scope, projects)| {
            format!(
                "[[auth.keys]]\nname = \"{name}\"\nhash = \"{}\"\nscopes = [\"{scope}\"]\nprojects = [{projects}]\n",
                collector::auth::key_hash(key)
            )
        })
        .collect()
    }
}

/// Keys, a fast flush, a fast budget evaluation, and a daily `total` budget of $1 for project `a` only.
fn config(keys: &Keys) -> String {
    format!(
        "{}\n[storage]\nflush_interval = \"300ms\"\n\n[alerts]\nevaluate_interval = \"200ms\"\n\n[[budget]]\nname = \
         \"a-daily\"\nkind = \"total\"\nperiod = \"day\"\ncap_usd = 1.0\nwarn_at = [1.0]\nforecast = false\nproject = \
         \"a\"\n\n[[budget]]\nname = \"b-dup\"\nkind = \"duplicate_inference\"\nperiod = \"day\"\ncap_usd = 1000.0\n\
         forecast = false\nproject = \"b\"\n",
        keys.toml()
    )
}

/// An SDK tracer provider sending through OTLP/gRPC (`grpc`) or OTLP/HTTP with `key`, and `project` in
/// `x-tailscope-project` when given; each span is exported at once.
fn tracer(server: &Server, grpc: bool, key: &str, project: Option<&str>) -> SdkTracerProvider {
    let exporter = if grpc {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {key}").parse().unwrap());
        if let Some(p) = project {
            metadata.insert("x-tailscope-project", p.parse().unwrap());
        }
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(server.grpc_url())
            .with_metadata(metadata)
            .build()
            .unwrap()
    } else {
        let mut headers = std::collections::HashMap::from([("authorization".into(), format!("Bearer {key}"))]);
        if let Some(p) = project {
            headers.insert("x-tailscope-project".into(), p.to_string());
        }
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", server.http_url()))
            .with_headers(headers)
            .build()
            .unwrap()
    };
    SdkTracerProvider::builder()
        .with_span_processor(SimpleSpanProcessor::new(OnRuntime::new(exporter, tokio::runtime::Handle::current())))
        .with_resource(Resource::builder_empty().with_attributes([KeyValue::new("service.name", "proj")]).build())
        .build()
}

/// Sends `n` LLM calls named `name` of session `session` through `provider`, each costing $0.35 (gpt-4o, 100k
/// tokens in, 10k out).
async fn send(provider: SdkTracerProvider, name: &'static str, session: &'static str, n: usize) {
    tokio::task::spawn_blocking(move || {
        let tracer = provider.tracer("it-projects");
        for _ in 0..n {
            let attrs = vec![
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", "gpt-4o"),
                KeyValue::new("gen_ai.usage.input_tokens", 100_000i64),
                KeyValue::new("gen_ai.usage.output_tokens", 10_000i64),
                KeyValue::new("session.id", session),
            ];
            drop(tracer.span_builder(name).with_kind(SpanKind::Client).with_attributes(attrs).start(&tracer));
        }
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();
}

/// One log record with `body` through OTLP/HTTP with `key`.
async fn send_log(server: &Server, key: &str, body: &'static str) {
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/logs", server.http_url()))
        .with_headers(std::collections::HashMap::from([("authorization".into(), format!("Bearer {key}"))]))
        .build()
        .unwrap();
    crate::support::emit_one_log(exporter, "it-projects", body).await;
}

/// `POST /api/v1/query` with `key`: the status and the body.
async fn query(server: &Server, key: &str, sql: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/query", server.api_url()))
        .bearer_auth(key)
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The rows of `sql` run with `key`; panics when it fails.
async fn rows(server: &Server, key: &str, sql: &str) -> Vec<serde_json::Value> {
    let (status, body) = query(server, key, sql).await;
    assert_eq!(status, 200, "{sql}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The single number `sql` answers (column `n`) for `key`.
async fn n(server: &Server, key: &str, sql: &str) -> i64 {
    rows(server, key, sql).await[0]["n"].as_i64().unwrap_or_else(|| panic!("{sql}: no n"))
}

/// `GET path` on the API with `key`, as JSON.
async fn get(server: &Server, key: &str, path: &str) -> serde_json::Value {
    let response =
        reqwest::Client::new().get(format!("{}{path}", server.api_url())).bearer_auth(key).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// The JSON of the first `data:` line of a Server-Sent Events stream.
async fn first_stream_event(server: &Server, key: &str, path: &str) -> serde_json::Value {
    let mut response =
        reqwest::Client::new().get(format!("{}{path}", server.api_url())).bearer_auth(key).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let Some(chunk) = response.chunk().await.unwrap() else { break };
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(line) = text.lines().find(|l| l.starts_with("data:")).filter(|_| text.contains("\n\n")) {
            return serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
        }
    }
    panic!("no event from {path}: {text:?}")
}

/// Waits until the admin key sees `want` rows of `sql` (column `n`).
async fn wait_n(server: &Server, admin: &str, sql: &str, want: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = n(server, admin, sql).await;
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{sql}: {got}, want {want}\nlog:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn flight(server: &Server, key: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.flight_addr)).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake("analyst", key).await.expect("handshake");
    client
}

fn first_i64(batches: &[RecordBatch]) -> i64 {
    let column = batches[0].column(0);
    column.as_primitive::<Int64Type>().value(0)
}

async fn flight_n(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> i64 {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = client.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    first_i64(&batches)
}

/// Every string in a Flight answer's batches.
async fn flight_strings(client: &mut FlightSqlServiceClient<Channel>, info: arrow_flight::FlightInfo) -> String {
    let mut out = String::new();
    for endpoint in info.endpoint {
        let batches: Vec<RecordBatch> =
            client.do_get(endpoint.ticket.unwrap()).await.unwrap().try_collect().await.unwrap();
        for batch in batches {
            out.push_str(&format!("{batch:?}"));
        }
    }
    out
}

fn cli(server: &Server, token: &str, sql: &str) -> String {
    let out = Command::new(tailscope_bin())
        .args(["query", "--format", "csv", "--server", &server.api_url(), "--token", token, sql])
        .env_remove("TAILSCOPE_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_project_sees_exactly_its_own_rows_through_every_surface() {
    let keys = Keys::new();
    let mut server = Server::start_with(&config(&keys)).await;

    // Project a over gRPC, project b over HTTP, then the two-project key with and without its header.
    send(tracer(&server, true, &keys.ingest_a, None), "a-call", "session-a", 3).await;
    send(tracer(&server, false, &keys.ingest_b, None), "b-call", "session-b", 2).await;
    send(tracer(&server, false, &keys.ingest_ab, Some("b")), "b-call", "session-b", 1).await;
    send(tracer(&server, true, &keys.ingest_ab, None), "a-call", "session-a", 1).await;
    // A project the key does not belong to, and a name that is no project: refused, nothing stored.
    for (project, grpc) in [("c", true), ("c", false), ("../b", false)] {
        send(tracer(&server, grpc, &keys.ingest_ab, Some(project)), "refused", "session-c", 1).await;
    }
    send_log(&server, &keys.ingest_a, "log-of-a").await;
    send_log(&server, &keys.ingest_b, "log-of-b").await;
    wait_n(&server, &keys.admin, "SELECT count(*) AS n FROM spans", 7).await;
    wait_n(&server, &keys.admin, "SELECT count(*) AS n FROM logs", 2).await;
    let by_project = rows(&server, &keys.admin, "SELECT project, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1").await;
    assert_eq!(
        serde_json::Value::from(by_project),
        serde_json::json!([{"project": "a", "n": 4}, {"project": "b", "n": 3}])
    );
    assert_eq!(n(&server, &keys.admin, "SELECT count(*) AS n FROM spans WHERE name = 'refused'").await, 0);
    // The refusals are counted on /metrics, by listener and reason (the exporter may retry one, never fewer).
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.api_url()))
        .bearer_auth(&keys.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = crate::support::Scrape::parse(&metrics);
    for listener in ["otlp_grpc", "otlp_http"] {
        let refused = scrape.sum("tailscope_auth_refusals_total", &[("listener", listener), ("reason", "project")]);
        assert!(refused >= 1.0, "{listener}: {refused}\n{metrics}");
    }

    for (key, own, other, count) in [(&keys.query_a, "a", "b", 4), (&keys.query_b, "b", "a", 3)] {
        let own_call = format!("{own}-call");
        let sees = |sql: &'static str| {
            let key = key.clone();
            let server = &server;
            async move { n(server, &key, sql).await }
        };
        // Tables, by project and by name.
        assert_eq!(sees("SELECT count(*) AS n FROM spans").await, count);
        let names = rows(&server, key, "SELECT DISTINCT name, project FROM spans").await;
        assert_eq!(serde_json::Value::from(names), serde_json::json!([{"name": own_call, "project": own}]));
        assert_eq!(n(&server, key, &format!("SELECT count(*) AS n FROM spans WHERE project = '{other}'")).await, 0);
        let logs = rows(&server, key, "SELECT body, project FROM logs").await;
        assert_eq!(
            serde_json::Value::from(logs),
            serde_json::json!([{"body": format!("log-of-{own}"), "project": own}])
        );
        // Views, joins, subqueries, CTEs, unions, table functions of our own.
        assert_eq!(sees("SELECT count(*) AS n FROM sessions").await, 1);
        let session = rows(&server, key, "SELECT session_id FROM session_cost").await;
        assert_eq!(serde_json::Value::from(session), serde_json::json!([{"session_id": format!("session-{own}")}]));
        assert_eq!(sees("SELECT count(*) AS n FROM llm_calls").await, count);
        assert_eq!(sees("SELECT count(*) AS n FROM spans s JOIN spans t ON s.span_id = t.span_id").await, count);
        assert_eq!(sees("SELECT (SELECT count(*) FROM spans) AS n").await, count);
        assert_eq!(sees("SELECT count(*) AS n FROM spans WHERE trace_id NOT IN (SELECT trace_id FROM spans)").await, 0);
        assert_eq!(
            sees(
                "WITH everything AS (SELECT name FROM spans UNION ALL SELECT name FROM spans WHERE project <> \
                 'nothing' UNION ALL SELECT body FROM logs) SELECT count(*) AS n FROM everything"
            )
            .await,
            2 * count + 1
        );
        assert_eq!(sees("SELECT count(*) AS n FROM sessions_since(now() - INTERVAL '1 day')").await, 1);
        // information_schema lists the tables and their columns, never rows.
        let columns = rows(
            &server,
            key,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'spans' AND column_name = 'project'",
        )
        .await;
        assert_eq!(columns.len(), 1);
        let everything = query(&server, key, "SELECT * FROM information_schema.tables").await.1;
        assert!(!everything.contains(&format!("{other}-call")), "{everything}");
        // Escapes: files read directly, other catalogs, writes: all refused, none answers another project's rows.
        for escape in [
            format!("SELECT * FROM '{}/spans/project={other}'", server.data_dir.display()),
            format!("SELECT * FROM read_parquet('{}/spans')", server.data_dir.display()),
            format!("SELECT * FROM parquet_metadata('{}/spans')", server.data_dir.display()),
            format!("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '{}/spans'", server.data_dir.display()),
            "SELECT * FROM datafusion.public.spans WHERE project <> ''".to_string(),
            "SET datafusion.execution.target_partitions = 1".to_string(),
        ] {
            let (status, body) = query(&server, key, &escape).await;
            assert!(!body.contains(&format!("{other}-call")), "{escape}: {body}");
            if status == 200 {
                let answered: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
                assert!(answered.iter().all(|r| r["project"].as_str().is_none_or(|p| p == own)), "{escape}: {body}");
            }
        }

        // Flight SQL: a statement, a prepared statement with a parameter, and the metadata calls.
        let mut client = flight(&server, key).await;
        assert_eq!(flight_n(&mut client, "SELECT count(*) AS n FROM spans").await, count);
        assert_eq!(flight_n(&mut client, "SELECT count(*) AS n FROM sessions").await, 1);
        let mut prepared =
            client.prepare("SELECT count(*) AS n FROM spans WHERE project = ?".to_string(), None).await.unwrap();
        for (project, want) in [(other, 0), (own, count)] {
            let value = datafusion::arrow::array::StringArray::from(vec![project]);
            let parameters = RecordBatch::try_from_iter([("$1", std::sync::Arc::new(value) as _)]).unwrap();
            prepared.set_parameters(parameters).unwrap();
            let info = prepared.execute().await.unwrap();
            let batches: Vec<RecordBatch> =
                client.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap().try_collect().await.unwrap();
            assert_eq!(first_i64(&batches), want, "prepared, project = {project}");
        }
        let tables = client
            .get_tables(arrow_flight::sql::CommandGetTables { include_schema: true, ..Default::default() })
            .await
            .unwrap();
        let listed = flight_strings(&mut client, tables).await;
        assert!(listed.contains("spans") && !listed.contains(&format!("{other}-call")));
        let catalogs = client.get_catalogs().await.unwrap();
        assert!(!flight_strings(&mut client, catalogs).await.contains(&format!("{other}-call")));

        // The CLI with --token.
        assert_eq!(cli(&server, key, "SELECT count(*) AS n FROM spans"), format!("n\n{count}\n"));

        // Live windows: only the project's routes.
        let live = get(&server, key, "/api/v1/live?window=1h").await;
        let live_rows = live["rows"].as_array().unwrap();
        assert!(!live_rows.is_empty(), "{live}");
        assert!(live_rows.iter().all(|r| r["project"] == own), "{live}");
        assert_eq!(live_rows.iter().map(|r| r["count"].as_i64().unwrap()).sum::<i64>(), count);
        // The web UI's pushed stream is scoped the same way: its first event holds the same rows.
        let pushed = first_stream_event(&server, key, "/api/v1/live/stream?window=1h").await;
        let pushed_rows = pushed["rows"].as_array().unwrap();
        assert!(pushed_rows.iter().all(|r| r["project"] == own), "{pushed}");
        assert_eq!(pushed_rows.iter().map(|r| r["count"].as_i64().unwrap()).sum::<i64>(), count);
        // And the histograms other collectors' live views merge (issue #16): the project's routes only, whose
        // histograms count its spans.
        let hist = get(&server, key, "/api/v1/live/histograms?window=1h").await;
        let hist_rows = hist["rows"].as_array().unwrap();
        assert!(!hist_rows.is_empty() && hist_rows.iter().all(|r| r["project"] == own), "{hist}");
        let merged =
            collector::live::merge::merge_answers(vec![(own.to_string(), hist.to_string().into_bytes())], false);
        let merged_rows = merged.0.expect("merged").rows;
        assert_eq!(merged_rows.iter().map(|r| r.count as i64).sum::<i64>(), count);

        // The guardrail consults the project's own duplicate budget only.
        let guard = get(&server, key, "/api/v1/guardrails/hedging?provider=openai").await;
        let budgets: Vec<&str> =
            guard["budgets"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
        assert_eq!(budgets, if own == "b" { vec!["b-dup"] } else { Vec::<&str>::new() }, "{guard}");
    }
    // The admin key sees everything, live too.
    assert_eq!(n(&server, &keys.admin, "SELECT count(DISTINCT project) AS n FROM spans").await, 2);
    let live = get(&server, &keys.admin, "/api/v1/live?window=1h").await;
    assert_eq!(live["rows"].as_array().unwrap().iter().map(|r| r["count"].as_i64().unwrap()).sum::<i64>(), 7);

    // Storage: one directory per project, so a project is pruned, kept or deleted on its own.
    wait_n(&server, &keys.admin, "SELECT count(*) AS n FROM spans", 7).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Each table flushes on its own, so the logs directory may appear after the spans ones: wait for all three.
    let project_dirs = ["spans/project=a", "spans/project=b", "logs/project=b"];
    while !project_dirs.iter().all(|dir| server.data_dir.join(dir).is_dir()) {
        assert!(std::time::Instant::now() < deadline, "no project directories; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleting project b's directories deletes b's data and nothing else (after a restart, which lists afresh);
    // a file in the layout from before projects (no project level) reads as project `default`.
    server.terminate();
    for table in ["spans", "logs", "metrics"] {
        let dir = server.data_dir.join(table).join("project=b");
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
    server.restart().await;
    // The Delta log still lists b's files; they are gone, so every query skips them (docs/storage.md) and a's rows
    // are untouched. (Data from before projects reads as `default`: `storage::an_earlier_versions_data_dir_…`.)
    let by_project = rows(&server, &keys.admin, "SELECT project, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1").await;
    assert_eq!(by_project, vec![serde_json::json!({"project": "a", "n": 4})], "project b is gone: {by_project:?}");
    assert_eq!(n(&server, &keys.query_b, "SELECT count(*) AS n FROM spans").await, 0);
    assert_eq!(n(&server, &keys.query_a, "SELECT count(*) AS n FROM spans").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_budget_fires_on_its_own_spend_only_and_only_its_keys_see_it() {
    let keys = Keys::new();
    let server = Server::start_with(&config(&keys)).await;
    // Project b spends $3.50, three times a's cap: a's budget stays quiet.
    send(tracer(&server, true, &keys.ingest_b, None), "b-call", "session-b", 10).await;
    wait_n(&server, &keys.admin, "SELECT count(*) AS n FROM spans", 10).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let alerts = get(&server, &keys.admin, "/api/v1/alerts").await;
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 0, "{alerts}");
    let a_budget = alerts["budgets"].as_array().unwrap().iter().find(|b| b["name"] == "a-daily").cloned().unwrap();
    assert_eq!(a_budget["spend_usd"].as_f64(), Some(0.0), "{a_budget}");
    assert_eq!(a_budget["project"], "a");

    // Project a spends $1.05: its budget breaches, and the alert carries the project.
    send(tracer(&server, false, &keys.ingest_a, None), "a-call", "session-a", 3).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let alerts = get(&server, &keys.admin, "/api/v1/alerts").await;
        if let Some(a) = alerts["alerts"].as_array().unwrap().first() {
            break a.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no alert; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((alert["budget"].as_str(), alert["project"].as_str()), (Some("a-daily"), Some("a")), "{alert}");
    assert!((alert["spend_usd"].as_f64().unwrap() - 1.05).abs() < 1e-6, "{alert}");

    // Project a's key sees the alert and its budget; b's key sees neither, in the API and in SQL.
    let seen_by_a = get(&server, &keys.query_a, "/api/v1/alerts").await;
    assert_eq!(seen_by_a["alerts"].as_array().unwrap().len(), 1, "{seen_by_a}");
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["budgets"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&seen_by_a), ["a-daily"]);
    let seen_by_b = get(&server, &keys.query_b, "/api/v1/alerts").await;
    assert_eq!(seen_by_b["alerts"].as_array().unwrap().len(), 0, "{seen_by_b}");
    assert_eq!(names(&seen_by_b), ["b-dup"]);
    assert_eq!(n(&server, &keys.query_a, "SELECT count(*) AS n FROM alerts WHERE project = 'a'").await, 1);
    assert_eq!(n(&server, &keys.query_b, "SELECT count(*) AS n FROM alerts").await, 0);
    assert_eq!(n(&server, &keys.admin, "SELECT count(*) AS n FROM alerts").await, 1);
}

/// `EXPLAIN` names the files a scan reads: relative to the data dir (`spans/project=a/…`), never the server's
/// absolute paths, through the HTTP API and Flight SQL alike; and a project's key sees only its projects' files in a
/// plan, as in the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_files_relative_to_their_table_and_only_the_callers_projects() {
    let keys = Keys::new();
    let server = Server::start_with(&config(&keys)).await;
    send(tracer(&server, true, &keys.ingest_a, None), "a-call", "session-a", 1).await;
    send(tracer(&server, false, &keys.ingest_b, None), "b-call", "session-b", 1).await;
    let plan =
        |rows: Vec<serde_json::Value>| rows.iter().map(|r| r["plan"].as_str().unwrap_or_default()).collect::<String>();
    // Both projects' spans flushed to Parquet (the plan names their files).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = plan(rows(&server, &keys.admin, "EXPLAIN SELECT count(*) FROM spans").await);
        if all.contains("spans/project=a/") && all.contains("spans/project=b/") {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "no files in the plan:\n{all}\nlog:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The server's directory, as object-store paths (no leading `/`) and as file paths.
    let dir = server.dir().to_string_lossy().into_owned();
    let hidden = |what: &str, text: &str| {
        assert!(!text.contains(dir.trim_start_matches('/')), "{what} shows the server's directory {dir}:\n{text}");
        assert!(text.contains(".parquet"), "{what} names no file:\n{text}");
    };
    hidden("the admin's plan", &all);
    assert!(all.contains("[spans/project=") || all.contains(" spans/project="), "{all}");

    for (key, own, other) in [(&keys.query_a, "a", "b"), (&keys.query_b, "b", "a")] {
        for sql in ["EXPLAIN SELECT count(*) FROM spans", "EXPLAIN ANALYZE SELECT count(*) FROM spans"] {
            let text = plan(rows(&server, key, sql).await);
            hidden(&format!("{own}'s {sql}"), &text);
            assert!(text.contains(&format!("spans/project={own}/")), "{own}'s {sql}:\n{text}");
            assert!(!text.contains(&format!("project={other}")), "{own}'s {sql} names {other}'s files:\n{text}");
        }
    }

    // Flight SQL answers the same plans.
    let mut client = flight(&server, &keys.query_a).await;
    let info = client.execute("EXPLAIN SELECT * FROM spans".to_string(), None).await.unwrap();
    let text = flight_strings(&mut client, info).await;
    hidden("a's plan over Flight SQL", &text);
    assert!(text.contains("spans/project=a/") && !text.contains("project=b"), "{text}");
}
