//! Property tests for every parser of text an operator or a client hands tailscope: the config TOML, dashboard
//! TOML, LiteLLM price files, egress price files and OTLP/JSON request bodies.
//!
//! Each parser gets the shipped, valid documents and byte-level mutations of them (flips, cuts, repeats,
//! splices of grammar tokens, deep nesting). What must hold for every input: no panic, an answer in bounded time,
//! and an error that names what was wrong. The counts are bounded so that `cargo test` stays fast; `PARSER_CASES`
//! raises them for a longer run (docs/reliability.md has the command).

use std::path::Path;
use std::time::{Duration, Instant};

use collector::cost::EgressTable;
use collector::cost::prices::PriceTable;
use collector::otlp_http::{Encoding, decode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailscope_core::config::Config;

/// Mutated documents tried per seed document (overridable for longer runs).
fn cases() -> usize {
    std::env::var("PARSER_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// The most one parse of a document of a few KiB may take, even on a loaded 2-core CI machine: a parser that
/// backtracks or recurses without bound on the mutations below takes orders of magnitude longer.
const PER_CASE: Duration = Duration::from_secs(2);

/// Tokens of the grammars under test, spliced into documents so that mutations reach past the first syntax error.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "[[",
    "]]",
    "=",
    ",",
    ":",
    "\"",
    "'",
    "\"\"\"",
    "\n",
    "#",
    ".",
    "-",
    "1e308",
    "-0",
    "nan",
    "inf",
    "true",
    "null",
    "18446744073709551616",
    "-9223372036854775809",
    "\\u0000",
    "\\uD800",
    "\u{feff}",
    "é",
    "\"a\" = 1",
    "{\"a\":",
    "[1,",
    "0x10",
    "1979-05-27T07:32:00Z",
    "*",
    "**",
    "\"stringValue\"",
    "\"kvlistValue\"",
];

/// One random mutation of `doc`.
fn mutate(rng: &mut StdRng, doc: &[u8]) -> Vec<u8> {
    let mut out = doc.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if out.is_empty() { 0 } else { rng.random_range(0..out.len()) };
        match rng.random_range(0..6) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.random_range(0..8),
            1 => {
                let end = (at + rng.random_range(0..64)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + rng.random_range(1..64)).min(out.len());
                let piece = out[at..end].to_vec();
                let times = rng.random_range(1..8);
                for _ in 0..times {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            3 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                out.splice(at..at, token.bytes());
            }
            4 => out.truncate(at),
            _ => out.insert(at, rng.random()),
        }
    }
    out
}

/// Runs `parse` on every seed document and on `cases()` mutations of each, timing each call.
fn check<T, E: std::fmt::Display>(name: &str, seeds: &[&[u8]], parse: impl Fn(&[u8]) -> Result<T, E>) {
    let mut rng = StdRng::seed_from_u64(0x7a11_5c09e);
    let (mut ok, mut refused) = (0usize, 0usize);
    let mut inputs: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    for seed in seeds {
        inputs.extend((0..cases()).map(|_| mutate(&mut rng, seed)));
    }
    for input in &inputs {
        let started = Instant::now();
        match parse(input) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().trim().is_empty(), "{name}: an error with no message for {input:?}");
                refused += 1;
            }
        }
        let took = started.elapsed();
        assert!(took < PER_CASE, "{name}: one parse took {took:?} on {} bytes", input.len());
    }
    assert!(ok >= seeds.len(), "{name}: a shipped document no longer parses");
    assert!(refused > 0, "{name}: no mutation was refused: the mutations do not reach the parser");
}

/// Deeply nested JSON arrays and objects, as a hostile client or file would send.
fn nested_json(depth: usize, open: &str, close: &str, leaf: &str) -> Vec<u8> {
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + leaf.len());
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(leaf);
    for _ in 0..depth {
        s.push_str(close);
    }
    s.into_bytes()
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

fn repo_file(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn config_toml_never_panics() {
    let example = repo_file("tailscope.example.toml");
    let deep_table = format!("a = {}", "[".repeat(100_000)).into_bytes();
    let deep_inline = format!("a = {}1{}", "{b = ".repeat(20_000), "}".repeat(20_000)).into_bytes();
    check("config", &[&example, b"", b"[server]\n"], |bytes| {
        Config::from_toml(text(bytes)?, Path::new("fuzz.toml")).map_err(|e| e.to_string())
    });
    for hostile in [&deep_table, &deep_inline] {
        let err = Config::from_toml(text(hostile).unwrap(), Path::new("deep.toml")).unwrap_err();
        assert!(err.to_string().contains("deep.toml"), "the error names the file: {err}");
    }
}

#[test]
fn dashboard_toml_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            seeds.push(std::fs::read(&path).unwrap());
        }
    }
    assert!(seeds.len() >= 5, "the shipped dashboards are the seeds");
    let seed_refs: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    check("dashboard", &seed_refs, |bytes| {
        tui::Dashboard::parse(text(bytes)?, Path::new("fuzz.toml")).map_err(|e| e.to_string())
    });
    let deep = format!("title = {}", "[".repeat(100_000));
    assert!(tui::Dashboard::parse(&deep, Path::new("deep.toml")).is_err());
}

#[test]
fn price_files_never_panic() {
    let litellm = br#"{
        "sample_spec": {"input_cost_per_token": 0},
        "gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5, "cache_read_input_token_cost": 1.25e-6,
                   "litellm_provider": "openai", "mode": "chat"},
        "bedrock/us.anthropic.claude-3-5-sonnet-20241022-v2:0": {"input_cost_per_token": 3e-6,
                   "output_cost_per_token": 1.5e-5, "input_cost_per_token_above_200k_tokens": 6e-6,
                   "litellm_provider": "bedrock", "mode": "chat"},
        "text-embedding-3-small": {"input_cost_per_token": 2e-8, "mode": "embedding"}
    }"#;
    let shipped = repo_file("collector/prices/models.json");
    check("price file", &[litellm, &shipped], |bytes| {
        PriceTable::from_litellm_json(text(bytes)?, "fuzz.json").map_err(|e| e.to_string())
    });
    for deep in [nested_json(100_000, "[", "]", "1"), nested_json(50_000, "{\"a\":", "}", "1")] {
        let err = PriceTable::from_litellm_json(text(&deep).unwrap(), "deep.json").unwrap_err();
        assert!(err.to_string().contains("deep.json"), "the error names the file: {err}");
    }
}

#[test]
fn egress_files_never_panic() {
    let egress = repo_file("collector/prices/egress.json");
    check("egress file", &[&egress], |bytes| {
        EgressTable::from_json(text(bytes)?, "fuzz.json").map_err(|e| e.to_string())
    });
    let deep = nested_json(100_000, "{\"aws\":", "}", "1");
    assert!(EgressTable::from_json(text(&deep).unwrap(), "deep.json").is_err());
}

#[test]
fn otlp_json_bodies_never_panic() {
    let traces =
        br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"agent"}},
        {"key":"cloud.provider","value":{"stringValue":"aws"}}]},"scopeSpans":[{"scope":{"name":"s"},"spans":[
        {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"chat gpt-4o","kind":3,
         "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
         "attributes":[{"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}},
                       {"key":"gen_ai.usage.input_tokens","value":{"intValue":"12"}},
                       {"key":"list","value":{"arrayValue":{"values":[{"doubleValue":1.5},{"boolValue":true}]}}},
                       {"key":"map","value":{"kvlistValue":{"values":[{"key":"k","value":{"bytesValue":"AAE="}}]}}}],
         "events":[{"timeUnixNano":"1544712660500000000","name":"e"}],"status":{"code":2,"message":"boom"}}]}]}]}"#;
    let metrics = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"m","sum":{"dataPoints":[
        {"asDouble":1.5,"timeUnixNano":"1544712660000000000","startTimeUnixNano":"18446744073709551615"}],
        "aggregationTemporality":1,"isMonotonic":true}}]}]}]}"#;
    let logs = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"1544712660000000000",
        "severityNumber":9,"body":{"stringValue":"hello"}}]}]}]}"#;
    check("OTLP/JSON traces", &[traces], |b| decode::<ExportTraceServiceRequest>(Encoding::Json, b));
    check("OTLP/JSON metrics", &[metrics], |b| decode::<ExportMetricsServiceRequest>(Encoding::Json, b));
    check("OTLP/JSON logs", &[logs], |b| decode::<ExportLogsServiceRequest>(Encoding::Json, b));
    // AnyValue nests without bound in the protocol; the decoder must refuse deep nesting, not recurse into it.
    let mut deep = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":"#.to_vec();
    deep.extend(nested_json(100_000, r#"{"arrayValue":{"values":["#, "]}}", r#"{"intValue":"1"}"#));
    deep.extend(br#"}]}}]}"#);
    assert!(decode::<ExportTraceServiceRequest>(Encoding::Json, &deep).is_err());
}

/// An absurd size or duration in the config file stops `tailscope serve` at start: exit code 1 with the key, the
/// value and the allowed range on stderr, before anything is created or sized from it (no abort, no panic). With
/// `memory.limit_mb = 99999999999` the server used to start (the product saturated to a budget of 16 EiB); with a
/// timeout of a hundred years its first query overflowed a deadline.
#[test]
fn absurd_config_values_stop_start_up_with_the_key_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for (toml, key, value, range) in [
        ("[memory]\nlimit_mb = 99999999999\n", "memory.limit_mb", "99999999999", "1..=1048576 MiB"),
        ("[query]\ntimeout = \"100years\"\n", "query.timeout", "100years", "1ms..=1day"),
        ("[ingest]\nretry_after = \"10years\"\n", "ingest.retry_after", "10years", "1ms..=1h"),
    ] {
        let config = dir.path().join("tailscope.toml");
        std::fs::write(&config, toml).unwrap();
        let stderr = crate::support::serve_fails_to_start(Some(config.as_path()), &data_dir);
        assert!(stderr.contains(key) && stderr.contains(value) && stderr.contains(range), "{toml}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!data_dir.exists(), "nothing is created before the config is checked");
    }
}
