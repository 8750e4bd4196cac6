//! Every dashboard file in `dashboards/` is loaded, and every panel's SQL runs against a small Parquet fixture
//! in the collector's hive layout (the same code path as `tailscope tui --data-dir`).

use datafusion::arrow::json::ReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use tui::app::Request;
use tui::{App, Dashboard, DataSource, LocalSource};

fn span(i: usize, now_ns: i64) -> String {
    let session = format!("sess-{}", i % 3);
    let start = now_ns - 600_000_000_000 + (i as i64) * 1_000_000_000;
    let dur = 50_000_000 + (i as i64 % 7) * 100_000_000;
    let (provider, region, op, tool, hedge, winner) = match i % 4 {
        0 => (r#""openai""#, "us-east-1", r#""chat""#, "null", format!(r#""h{}""#, i / 8), "true"),
        1 => (r#""aws.bedrock""#, "eu-west-1", r#""chat""#, "null", format!(r#""h{}""#, i / 8), "false"),
        2 => ("null", "us-east-1", r#""execute_tool""#, r#""web_fetch""#, "null".into(), "null"),
        _ => ("null", "us-east-1", "null", "null", "null".into(), "null"),
    };
    let ts = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    format!(
        r#"{{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"{i:016x}","name":"step {i}","kind":"client",
        "start_time":"{}","end_time":"{}","duration_ns":{dur},"status_code":"{}","service_name":"agent",
        "cloud_provider":"aws","cloud_region":"{region}","resource_attributes":{{}},"attributes":{{"k":"v"}},
        "gen_ai_provider":{provider},"gen_ai_operation":{op},"request_model":"m{}","input_tokens":{},"output_tokens":20,
        "session_id":"{session}","tool_name":{tool},"token_cost_usd":0.01,"cost_usd":0.012,"hedge_id":{hedge},"hedge_winner":{winner}}}"#,
        ts(start),
        ts(start + dur),
        if i % 10 == 9 { "error" } else { "ok" },
        i % 2,
        100 + i
    )
    .replace('\n', " ")
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let lines: Vec<String> = (0..40).map(|i| span(i, now)).collect();
    let schema = tailscope_core::schema::spans_schema();
    let reader = ReaderBuilder::new(schema.clone()).build(std::io::Cursor::new(lines.join("\n"))).unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let part = chrono::Utc::now() - chrono::Duration::minutes(10);
    let sub = dir.path().join(format!("spans/date={}/hour={}", part.format("%Y-%m-%d"), part.format("%H")));
    std::fs::create_dir_all(&sub).unwrap();
    let file = std::fs::File::create(sub.join("fixture.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    for b in &batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    write_alerts(dir.path());
    dir
}

/// The alert log of a collector with two budgets: `hedge-duplicates` capped at 3% of inference spend (no dollar
/// cap) and `tiny` capped at $0.001; each has fired once.
fn write_alerts(dir: &std::path::Path) {
    use tailscope_core::alerts::{ALERTS_DIR, AlertEvent, EVENTS_FILE};
    use tailscope_core::cost::{BudgetFigures, BudgetKind};
    let t = chrono::Utc::now();
    let event = |seq: u64, budget: &str, kind: BudgetKind| AlertEvent {
        seq,
        time: t,
        alert_id: format!("{budget}/rolling"),
        budget: budget.into(),
        kind,
        scope: None,
        period: "1h".into(),
        period_key: "rolling".into(),
        period_start: t,
        period_end: None,
        state: "firing".into(),
        severity: "critical".into(),
        event: "threshold".into(),
        threshold: Some(1.0),
        figures: BudgetFigures::default(),
        message: format!("BREACH {budget}"),
    };
    let share_figures = BudgetFigures {
        spend_usd: 0.69,
        cap_share: Some(0.03),
        share: Some(0.041),
        utilization: 0.041 / 0.03,
        ..BudgetFigures::default()
    };
    let share = AlertEvent { figures: share_figures, ..event(1, "hedge-duplicates", BudgetKind::DuplicateInference) };
    let tiny_figures =
        BudgetFigures { spend_usd: 4.994, cap_usd: Some(0.001), utilization: 4994.0, ..BudgetFigures::default() };
    let tiny = AlertEvent { figures: tiny_figures, ..event(2, "tiny", BudgetKind::Total) };
    std::fs::create_dir_all(dir.join(ALERTS_DIR)).unwrap();
    let lines: String = [share, tiny].iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
    std::fs::write(dir.join(ALERTS_DIR).join(EVENTS_FILE), lines).unwrap();
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| tui::ui::draw(f, app)).unwrap();
    format!("{}", terminal.backend())
}

/// Without a server the Budgets gauges and the Alerts screen read the `alerts` table: a share cap and a $0.001 cap
/// read in their units there too.
#[tokio::test]
async fn budgets_and_alerts_over_sql_read_caps_in_their_unit() {
    let dir = fixture();
    let source = LocalSource::new(dir.path().to_path_buf()).await.unwrap();
    let mut app =
        App::new(tui::dashboard::defaults().unwrap(), "fixture".into(), false, std::time::Duration::from_secs(1));
    for (screen, panel) in [(1usize, 3usize), (3, 0)] {
        let p = app.screen_panels(screen)[panel].clone();
        let Ok(Request::Sql(sql)) = app.request_for(&p) else { panic!("{}", p.title) };
        let table = source.sql(sql).await.unwrap();
        assert_eq!(table.rows.len(), 2, "{}: {table:?}", p.title);
        let cap = table.column("cap").unwrap();
        let used = table.column("used").unwrap();
        let row = (0..2).find(|&r| table.rows[r].iter().any(|v| v == "hedge-duplicates")).unwrap();
        assert_eq!(
            (table.rows[row][used].as_str(), table.rows[row][cap].as_str()),
            (Some("4.1%"), Some("3% of inference"))
        );
        assert_eq!(table.rows[1 - row][cap].as_str(), Some("$0.001"));
        app.set_data(screen, panel, table);
    }
    app.current = 1;
    let cost = render(&app, 140, 30);
    assert!(cost.contains("hedge-duplicates  4.1% / 3% of inference") && cost.contains(" 137% "), "{cost}");
    assert!(cost.contains("tiny  $4.99 / $0.001") && cost.contains("499,400%"), "{cost}");
    app.current = 3;
    let alerts = render(&app, 140, 12);
    assert!(alerts.contains("3% of inference") && alerts.contains("$0.001"), "{alerts}");
}

/// Spans without a provider are one "(no provider)" row after the providers', never a provider called "none".
#[tokio::test]
async fn spans_without_a_provider_are_listed_apart() {
    let dir = fixture();
    let source = LocalSource::new(dir.path().to_path_buf()).await.unwrap();
    let app = App::new(tui::dashboard::defaults().unwrap(), "fixture".into(), false, std::time::Duration::from_secs(1));
    for (screen, panel) in [(0usize, 0usize), (1, 0), (1, 1)] {
        let p = app.screen_panels(screen)[panel].clone();
        let Ok(Request::Sql(sql)) = app.request_for(&p) else { panic!("{}", p.title) };
        let table = source.sql(sql).await.unwrap();
        let c = table.column("provider").unwrap();
        let providers: Vec<&str> = table.rows.iter().map(|r| r[c].as_str().unwrap()).collect();
        assert!(!providers.contains(&"none"), "{}: {providers:?}", p.title);
        let first_apart = providers
            .iter()
            .position(|p| *p == "(no provider)")
            .unwrap_or_else(|| panic!("{}: {providers:?}", p.title));
        assert!(
            first_apart > 0 && providers[first_apart..].iter().all(|p| *p == "(no provider)"),
            "{}: {providers:?}",
            p.title
        );
    }
}

#[tokio::test]
async fn every_dashboard_sql_runs_on_a_fixture() {
    let dir = fixture();
    let source = LocalSource::new(dir.path().to_path_buf()).await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let mut ran = 0;
    for file in files {
        let dash = Dashboard::load(&file).unwrap();
        let mut app = App::new(vec![dash.clone()], "fixture".into(), false, std::time::Duration::from_secs(1));
        app.session = Some("sess-1".into());
        for panel in dash.panels() {
            let Ok(Request::Sql(sql)) = app.request_for(panel) else { continue };
            let table = source
                .sql(sql.clone())
                .await
                .unwrap_or_else(|e| panic!("{} panel {:?}: {e}\n{sql}", file.display(), panel.title));
            ran += 1;
            let uses_spans = sql.contains("FROM spans") || sql.contains("FROM spans\n");
            if uses_spans && !panel.title.starts_with("Hedge rate") {
                assert!(!table.rows.is_empty(), "{} panel {:?} gave no rows", file.display(), panel.title);
            }
            if let Some(cols) = &panel.columns {
                // The sparkline series exists only in the live windows.
                for c in cols.iter().filter(|c| !(panel.live.is_some() && *c == "p99_series_ms")) {
                    assert!(table.column(c).is_some() || table.rows.is_empty(), "{}: no column {c}", panel.title);
                }
            }
        }
    }
    assert!(ran >= 10, "only {ran} panels ran");
}

#[tokio::test]
async fn overview_sql_matches_an_independent_computation() {
    let dir = fixture();
    let source = LocalSource::new(dir.path().to_path_buf()).await.unwrap();
    let dash = tui::dashboard::resolve(Some("overview")).unwrap().remove(0);
    let app = App::new(vec![dash.clone()], "f".into(), false, std::time::Duration::from_secs(1));
    let Ok(Request::Sql(sql)) = app.request_for(dash.panels().next().unwrap()) else { panic!() };
    let table = source.sql(sql).await.unwrap();
    let row = (0..table.rows.len()).find(|&r| table.rows[r][0] == "openai").unwrap();
    let count = table.number(row, table.column("count").unwrap()).unwrap();
    assert_eq!(count, 10.0);
    // openai spans are i = 0, 4, ..., 36: durations 50 ms + (i % 7) * 100 ms.
    let mut d: Vec<f64> = (0..40).step_by(4).map(|i| 50.0 + (i % 7) as f64 * 100.0).collect();
    d.sort_by(f64::total_cmp);
    let max = table.number(row, table.column("max_ms").unwrap()).unwrap();
    assert_eq!(max, *d.last().unwrap());
    let p50 = table.number(row, table.column("p50_ms").unwrap()).unwrap();
    let h = (d.len() - 1) as f64 * 0.5;
    let want = d[h.floor() as usize] + (d[h.ceil() as usize] - d[h.floor() as usize]) * h.fract();
    assert!((p50 - want).abs() < 1e-9, "p50 {p50} want {want}");
}
