//! Every dashboard file in `dashboards/` is loaded, and every panel's SQL runs against a small Parquet fixture
//! in the collector's hive layout (the same code path as `tailscope tui --data-dir`).

use query::fixture::{SpanRow, spans_batch, write_parquet};
use tailscope_core::schema::Signal;
use tui::app::Request;
use tui::{App, Dashboard, DataSource, LocalSource};

/// Row `i` of the fixture, ending in the last ten minutes. The rows are hand-built rather than simulated: the tests
/// below recompute figures (a count, a median) from these exact values. A quarter each are openai and aws.bedrock
/// chat calls (copies of hedged requests, the openai ones winning), tool calls, and spans of no GenAI operation.
fn span(i: usize, now_ns: i64) -> SpanRow {
    let (provider, region, op, tool, winner) = match i % 4 {
        0 => (Some("openai"), "us-east-1", Some("chat"), None, Some(true)),
        1 => (Some("aws.bedrock"), "eu-west-1", Some("chat"), None, Some(false)),
        2 => (None, "us-east-1", Some("execute_tool"), Some("web_fetch"), None),
        _ => (None, "us-east-1", None, None, None),
    };
    SpanRow {
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        span_id: format!("{i:016x}"),
        name: format!("step {i}"),
        start_ns: now_ns - 600_000_000_000 + (i as i64) * 1_000_000_000,
        duration_ns: 50_000_000 + (i as i64 % 7) * 100_000_000,
        error: i % 10 == 9,
        service_name: "agent".into(),
        cloud_provider: Some("aws".into()),
        cloud_region: Some(region.into()),
        gen_ai_provider: provider.map(Into::into),
        gen_ai_operation: op.map(Into::into),
        request_model: Some(format!("m{}", i % 2)),
        input_tokens: Some(100 + i as i64),
        output_tokens: Some(20),
        session_id: Some(format!("sess-{}", i % 3)),
        tool_name: tool.map(Into::into),
        token_cost_usd: Some(0.01),
        cost_usd: Some(0.012),
        hedge_id: winner.map(|_| format!("h{}", i / 8)),
        hedge_winner: winner,
    }
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let rows: Vec<SpanRow> = (0..40).map(|i| span(i, now)).collect();
    // A file holds one hour: the 40 seconds of rows can straddle one.
    const HOUR: i64 = 3_600_000_000_000;
    let mut hours: Vec<i64> = rows.iter().map(|r| r.start_ns.div_euclid(HOUR)).collect();
    hours.dedup();
    for (seq, hour) in hours.into_iter().enumerate() {
        let part: Vec<SpanRow> = rows.iter().filter(|r| r.start_ns.div_euclid(HOUR) == hour).cloned().collect();
        write_parquet(dir.path(), Signal::Spans, &spans_batch(&part), seq as u64 + 1).unwrap();
    }
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
        project: None,
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
    // Trends: the spend chart's cap lines come from the same alert log: `tiny`'s $0.001 is a line, the share cap none.
    let trends = app.screens.iter().position(|d| d.name() == "trends").unwrap();
    for panel in [1usize, 2] {
        let p = app.screen_panels(trends)[panel].clone();
        let Ok(Request::Sql(sql)) = app.request_for(&p) else { panic!("{}", p.title) };
        app.set_data(trends, panel, source.sql(sql).await.unwrap());
    }
    app.current = trends;
    let screen = render(&app, 160, 48);
    assert!(screen.contains("tiny $0.001") && !screen.contains("hedge-duplicates $"), "{screen}");
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
        // The release panels run too (on versions the fixture does not have: they answer no rows; the simulator's
        // release scenario fills them in tests/it/release.rs).
        app.picked = [("service", "agent"), ("version_a", "1.0"), ("version_b", "1.1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for panel in dash.panels() {
            let Ok(Request::Sql(sql)) = app.request_for(panel) else { continue };
            let table = source
                .sql(sql.clone())
                .await
                .unwrap_or_else(|e| panic!("{} panel {:?}: {e}\n{sql}", file.display(), panel.title));
            ran += 1;
            let uses_spans = sql.contains("FROM spans") || sql.contains("FROM spans\n");
            // The fixture's spans carry no service_version: the release screen's pair table has nothing to pair.
            if uses_spans && !panel.title.starts_with("Hedge rate") && panel.pick.is_none() {
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
