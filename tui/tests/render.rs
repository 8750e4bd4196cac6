//! Every default screen rendered with fixed data into ratatui's `TestBackend`, at 80x24 and 160x48, checked
//! against insta snapshots. After an intended change, `INSTA_UPDATE=always cargo test --test render` rewrites them
//! (or `cargo insta review`, where cargo-insta is installed); read each diff before committing it.

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tui::App;
use tui::data::Table;

fn t(json: &str) -> Table {
    Table::from_json_rows(json).unwrap()
}

const LIVE: &str = r#"[
 {"provider":"openai","region":"us-east-1","model":"*","operation":"*","count":5400,"rate":18.0,"errors":54,"error_rate":0.01,
  "p50_ms":812.0,"p95_ms":2210.0,"p99_ms":6120.0,"p999_ms":9010.0,"max_ms":11200.0,"mean_ms":950.2,
  "p99_series_ms":[4100.0,4500.0,null,5200.0,6120.0,5900.0,6300.0,6000.0,5800.0,6120.0],
  "buckets":[{"le_ms":1.0,"count":0},{"le_ms":256.0,"count":300},{"le_ms":512.0,"count":1200},{"le_ms":1024.0,"count":2500},
             {"le_ms":2048.0,"count":1000},{"le_ms":4096.0,"count":300},{"le_ms":8192.0,"count":90},{"le_ms":16384.0,"count":10}]},
 {"provider":"aws.bedrock","region":"eu-west-1","model":"*","operation":"*","count":2100,"rate":7.0,"errors":0,"error_rate":0.0,
  "p50_ms":640.5,"p95_ms":1500.0,"p99_ms":2300.0,"p999_ms":3100.0,"max_ms":3900.0,"mean_ms":700.0,
  "p99_series_ms":[2000.0,2100.0,2200.0,2300.0,2250.0,2310.0,2290.0,2300.0,2280.0,2300.0],
  "buckets":[{"le_ms":512.0,"count":800},{"le_ms":1024.0,"count":1000},{"le_ms":2048.0,"count":280},{"le_ms":4096.0,"count":20}]},
 {"provider":"gcp.vertex_ai","region":"us-central1","model":"*","operation":"*","count":900,"rate":3.0,"errors":27,"error_rate":0.03,
  "p50_ms":45.2,"p95_ms":120.0,"p99_ms":310.0,"p999_ms":480.0,"max_ms":512.0,"mean_ms":60.0,
  "p99_series_ms":[300.0,310.0,290.0,305.0,320.0,310.0,300.0,315.0,310.0,310.0],"buckets":[{"le_ms":64.0,"count":700},{"le_ms":512.0,"count":200}]}
]"#;

fn app() -> App {
    let screens = tui::dashboard::defaults().unwrap();
    let mut app = App::new(screens, "http://127.0.0.1:4319".into(), true, Duration::from_secs(1));
    let mut live = t(LIVE);
    live.slo = Some(5000.0);
    app.set_data(0, 0, live);
    app.set_data(1, 0, t(r#"[{"provider":"openai","cost_usd":412.5},{"provider":"aws.bedrock","cost_usd":233.1},{"provider":"gcp.vertex_ai","cost_usd":58.02}]"#));
    app.set_data(1, 1, t(r#"[{"provider":"openai","model":"gpt-4o","calls":3100,"token_usd":380.2,"usd_per_1m_tokens":6.25},
        {"provider":"aws.bedrock","model":"anthropic.claude-sonnet-4","calls":2000,"token_usd":221.9,"usd_per_1m_tokens":7.1},
        {"provider":"gcp.vertex_ai","model":"gemini-2.5-flash","calls":900,"token_usd":51.0,"usd_per_1m_tokens":0.72}]"#));
    let sessions = r#"[{"session_id":"sess-7f3a","steps":42,"tokens":183000,"cost_usd":4.12},
        {"session_id":"sess-19bc","steps":17,"tokens":52000,"cost_usd":1.05},
        {"session_id":"sess-0042","steps":5,"tokens":1200,"cost_usd":0.0031}]"#;
    app.set_data(1, 2, t(sessions));
    // As /api/v1/alerts gives the budgets: figures, and the same as text in the unit of each cap.
    app.set_data(1, 3, t(r#"[{"name":"egress-monthly","spend_usd":410.0,"cap_usd":500.0,"utilization":0.82,"projected_usd":640.0,"used":"$410.00","cap":"$500.00","projected":"$640.00"},
        {"name":"dup-inference","spend_usd":12.5,"cap_usd":100.0,"utilization":0.125,"used":"$12.50","cap":"$100.00","projected":null},
        {"name":"total","spend_usd":1210.0,"cap_usd":1000.0,"utilization":1.21,"used":"$1,210.00","cap":"$1,000.00","projected":null}]"#));
    app.set_data(2, 0, t(r#"[{"hedged_requests":310,"llm_calls":6000,"hedge_rate":0.103,"duplicate_usd":38.4,"inference_usd":703.6}]"#));
    app.set_data(
        2,
        1,
        t(r#"[{"provider":"openai","copies":320,"win_rate":0.41,"duplicate_usd":22.1,"cancel_p95_ms":180.5},
        {"provider":"aws.bedrock","copies":300,"win_rate":0.59,"duplicate_usd":16.3,"cancel_p95_ms":95.0}]"#),
    );
    app.set_data(2, 2, t(r#"[{"provider":"aws.bedrock","win_pct":59.0},{"provider":"openai","win_pct":41.0}]"#));
    app.set_data(3, 0, t(r#"[{"time":"2026-11-21T09:14:03.120Z","budget":"egress-monthly","state":"firing","severity":"warning","spend_usd":410.0,"cap_usd":500.0,"projected_usd":640.0,"message":"egress-monthly projected to reach $640.00 (128%) by 30 Nov; $410.00 of $500.00 (82%) spent so far this month","used":"$410.00","cap":"$500.00","projected":"$640.00"},
        {"time":"2026-11-20T18:02:11Z","budget":"total","state":"firing","severity":"critical","spend_usd":1210.0,"cap_usd":1000.0,"projected_usd":null,"message":"BREACH total: $1,210.00 of $1,000.00 (121%) spent this month (2026-11); crossed the 100% threshold","used":"$1,210.00","cap":"$1,000.00","projected":null}]"#));
    app.set_data(4, 0, t(r#"[{"session_id":"sess-7f3a","started":"2026-11-21T09:10:00Z","wall_ms":48200.0,"steps":6,"errors":1,"cost_usd":4.12}]"#));
    app.set_data(4, 1, t(r#"[
        {"name":"invoke_agent","kind":"other","offset_ms":0.0,"duration_ms":48200.0,"provider":null,"tokens":0,"cost_usd":null,"status_code":"ok"},
        {"name":"vector.search","kind":"memory","offset_ms":120.0,"duration_ms":850.0,"provider":null,"tokens":0,"cost_usd":null,"status_code":"ok"},
        {"name":"chat gpt-4o","kind":"llm","offset_ms":1000.0,"duration_ms":21000.0,"provider":"openai","tokens":120000,"cost_usd":3.1,"status_code":"ok"},
        {"name":"web_fetch","kind":"tool","offset_ms":22100.0,"duration_ms":9000.0,"provider":null,"tokens":0,"cost_usd":null,"status_code":"error"},
        {"name":"chat claude","kind":"llm","offset_ms":31200.0,"duration_ms":16500.0,"provider":"aws.bedrock","tokens":63000,"cost_usd":1.02,"status_code":"ok"}]"#));
    app.session = Some("sess-7f3a".into());
    set_release(&mut app);
    set_trends(&mut app);
    app
}

/// The screen named `name` (its index in the tab order).
fn screen(app: &App, name: &str) -> usize {
    app.screens.iter().position(|d| d.name() == name).unwrap()
}

/// Release: checkout-agent 4.2.0 (B) against 4.1.0 (A), as `tailscope simulate --scenario release` sends them: B is
/// 1.8 times as slow on gpt-4o and sends fewer tokens to gpt-4o-mini; those rows are beyond noise, the rest not.
fn set_release(app: &mut App) {
    let s = screen(app, "release");
    app.set_data(s, 0, t(r#"[
        {"service":"checkout-agent","version_a":"4.1.0","version_b":"4.2.0","sessions_a":412,"sessions_b":398,"b_last_seen":"2026-11-21T09:14:03.120Z"},
        {"service":"checkout-agent","version_a":"4.2.0","version_b":"4.1.0","sessions_a":398,"sessions_b":412,"b_last_seen":"2026-11-21T09:13:58.004Z"}]"#));
    app.picked = [("service", "checkout-agent"), ("version_a", "4.1.0"), ("version_b", "4.2.0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    app.set_data(s, 1, t(r#"[
        {"step":"model call","model":"gpt-4o","metric":"p50_ms","n_a":1650,"n_b":1592,"a_ms":812.0,"b_ms":1461.6,"change_ms":649.6,"change_share":0.8,"beyond_noise":true},
        {"step":"model call","model":"gpt-4o","metric":"p95_ms","n_a":1650,"n_b":1592,"a_ms":2210.0,"b_ms":3978.0,"change_ms":1768.0,"change_share":0.8,"beyond_noise":true},
        {"step":"model call","model":"gpt-4o","metric":"p99_ms","n_a":1650,"n_b":1592,"a_ms":3120.0,"b_ms":5616.0,"change_ms":2496.0,"change_share":0.8,"beyond_noise":true},
        {"step":"model call","model":"gpt-4o-mini","metric":"p50_ms","n_a":824,"n_b":796,"a_ms":402.0,"b_ms":396.5,"change_ms":-5.5,"change_share":-0.0137,"beyond_noise":false},
        {"step":"model call","model":"gpt-4o-mini","metric":"p95_ms","n_a":824,"n_b":796,"a_ms":980.0,"b_ms":1004.0,"change_ms":24.0,"change_share":0.0245,"beyond_noise":false},
        {"step":"model call","model":"gpt-4o-mini","metric":"p99_ms","n_a":824,"n_b":796,"a_ms":1410.0,"b_ms":1380.0,"change_ms":-30.0,"change_share":-0.0213,"beyond_noise":false},
        {"step":"tool","model":"-","metric":"p50_ms","n_a":1236,"n_b":1194,"a_ms":45.2,"b_ms":44.8,"change_ms":-0.4,"change_share":-0.0088,"beyond_noise":false},
        {"step":"tool","model":"-","metric":"p95_ms","n_a":1236,"n_b":1194,"a_ms":120.0,"b_ms":118.0,"change_ms":-2.0,"change_share":-0.0167,"beyond_noise":false}]"#));
    app.set_data(s, 2, t(r#"[
        {"step":"model call","model":"gpt-4o","sessions_a":412,"sessions_b":398,"a_usd":0.0412,"b_usd":0.0415,"cost_change_share":0.0073,"a_tokens":8210.0,"b_tokens":8190.0,"tokens_change_share":-0.0024,"beyond_noise":false},
        {"step":"model call","model":"gpt-4o-mini","sessions_a":412,"sessions_b":398,"a_usd":0.0061,"b_usd":0.0025,"cost_change_share":-0.59,"a_tokens":10120.0,"b_tokens":4150.0,"tokens_change_share":-0.59,"beyond_noise":true},
        {"step":"tool","model":"-","sessions_a":412,"sessions_b":398,"a_usd":0.0,"b_usd":0.0,"cost_change_share":null,"a_tokens":0.0,"b_tokens":0.0,"tokens_change_share":null,"beyond_noise":false}]"#));
    app.set_data(s, 3, t(r#"[
        {"step":"model call","model":"gpt-4o","metric":"error_rate","n_a":1650,"n_b":1592,"a_rate":0.012,"b_rate":0.0132,"beyond_noise":false},
        {"step":"model call","model":"gpt-4o","metric":"hedge_rate","n_a":1650,"n_b":1592,"a_rate":0.1,"b_rate":0.104,"beyond_noise":false},
        {"step":"tool","model":"-","metric":"error_rate","n_a":1236,"n_b":1194,"a_rate":0.031,"b_rate":0.029,"beyond_noise":false}]"#));
}

/// The start of the fixture's hour (the Trends charts' x axis, seconds since the epoch).
const T0: i64 = 1_795_770_000;

/// Trends: the live windows' p99 series per provider, spend accumulating over the hour to the Cost screen's totals,
/// and the budgets of the Cost screen (whose dollar caps are drawn across the spend chart).
fn set_trends(app: &mut App) {
    let s = screen(app, "trends");
    app.set_data(s, 0, t(LIVE));
    // Five-minute buckets; each provider's spend reaches its total of the hour at the end, in rising steps.
    let mut rows = Vec::new();
    let finals = [("total", 703.62), ("aws.bedrock", 233.1), ("gcp.vertex_ai", 58.02), ("openai", 412.5)];
    for (provider, total) in finals {
        for k in 1..=12_i64 {
            let share = (k * k) as f64 / 144.0;
            rows.push(serde_json::json!({"provider": provider, "t_s": T0 + (k - 1) * 300, "spend_usd": total * share}));
        }
    }
    app.set_data(s, 1, t(&serde_json::Value::Array(rows).to_string()));
    let budgets = app.panel_state(1, 3).data.unwrap();
    app.set_data(s, 2, budgets);
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| tui::ui::draw(f, app)).unwrap();
    format!("{}", terminal.backend())
}

#[test]
fn every_default_screen_at_two_sizes() {
    let mut app = app();
    let names = ["overview", "cost", "hedging", "alerts", "session", "release", "trends"];
    for name in names {
        app.current = screen(&app, name);
        for (w, h) in [(80u16, 24u16), (160, 48)] {
            let screen = render(&app, w, h);
            insta::assert_snapshot!(format!("{name}_{w}x{h}"), screen);
        }
    }
}

#[test]
fn overview_marks_slo_breach_and_follows_selection() {
    let mut app = app();
    let screen = render(&app, 80, 24);
    assert!(screen.contains("openai") && screen.contains("6.12 s"), "{screen}");
    // Every latency cell carries its unit, milliseconds and seconds alike.
    assert!(screen.contains("45.2 ms") && screen.contains("812 ms") && screen.contains("11.2 s"), "{screen}");
    // The histogram follows the selected row.
    assert!(screen.contains("openai / us-east-1"), "{screen}");
    app.selected.insert(0, 1);
    let screen = render(&app, 80, 24);
    assert!(screen.contains("aws.bedrock / eu-west-1"), "{screen}");
    // The breaching row (p99 6120 ms > SLO 5000 ms) is red.
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| tui::ui::draw(f, &app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let row =
        (0..24).find(|&y| (0..80).map(|x| buf[(x, y)].symbol()).collect::<String>().contains("us-east-1")).unwrap();
    assert_eq!(buf[(3, row)].fg, ratatui::style::Color::Red);
}

#[test]
fn banner_help_and_filter() {
    let mut app = app();
    app.offline = Some(tui::app::Offline {
        message: "cannot connect: Connection refused (os error 111)".into(),
        retry_at: std::time::Instant::now(),
        delay: Duration::from_secs(4),
    });
    app.filter = "bedrock".into();
    let screen = render(&app, 80, 24);
    assert!(screen.contains("unreachable · retrying every 4s"), "{screen}");
    assert!(!screen.contains("gcp.vertex_ai") && screen.contains("aws.bedrock"), "{screen}");
    app.help = true;
    let screen = render(&app, 80, 24);
    assert!(screen.contains("time window"), "{screen}");
    // Tiny terminals do not panic.
    for (w, h) in [(1, 1), (20, 5), (40, 10)] {
        render(&app, w, h);
    }
}

/// A merged live view (`tailscope tui --server A,B,C`) that left a server out says so in the status bar, in red,
/// on the screen whose figures lack it only.
#[test]
fn a_notice_from_the_source_shows_in_the_status_bar() {
    let mut app = app();
    let mut live = t(LIVE);
    live.notice = Some("merged without http://10.0.0.3:4319: cannot connect: Connection refused".into());
    app.set_data(0, 0, live);
    let mut terminal = Terminal::new(TestBackend::new(120, 24)).unwrap();
    terminal.draw(|f| tui::ui::draw(f, &app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let bottom: String = (0..120).map(|x| buf[(x, 23)].symbol()).collect();
    assert!(bottom.starts_with(" merged without http://10.0.0.3:4319: cannot connect"), "{bottom}");
    assert_eq!(buf[(2, 23)].fg, ratatui::style::Color::Red);
    app.current = screen(&app, "cost");
    let screen = render(&app, 120, 24);
    assert!(!screen.contains("merged without"), "{screen}");
}

/// A `duplicate_inference` budget capped at 3% of inference spend (no dollar cap) and a `total` budget capped at
/// $0.001, as `/api/v1/alerts` gives them: the budget figures (`BudgetStatus`) and the alerts' events with their
/// figures as text ([`AlertView`]).
fn budget_app() -> App {
    use tailscope_core::alerts::{AlertEvent, AlertView};
    use tailscope_core::cost::{BudgetFigures, BudgetKind};
    let share = BudgetFigures {
        spend_usd: 0.69,
        share: Some(0.041),
        cap_share: Some(0.03),
        utilization: BudgetFigures::utilization_of(0.69, Some(0.041), None, Some(0.03)),
        ..Default::default()
    };
    let tiny = BudgetFigures {
        spend_usd: 4.994,
        cap_usd: Some(0.001),
        utilization: BudgetFigures::utilization_of(4.994, None, Some(0.001), None),
        projected_usd: Some(5.2),
        ..Default::default()
    };
    let status = |name: &str, kind: &str, f: &BudgetFigures| {
        serde_json::json!({"name": name, "kind": kind, "period": "1h", "spend_usd": f.spend_usd, "cap_usd": f.cap_usd,
            "share": f.share, "cap_share": f.cap_share, "utilization": f.utilization, "projected_usd": f.projected_usd,
            "used": f.used(), "cap": f.cap(), "projected": f.projected()})
    };
    let budgets =
        serde_json::json!([status("hedge-duplicates", "duplicate_inference", &share), status("tiny", "total", &tiny)]);
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-21T09:14:03Z").unwrap().to_utc();
    let event = |budget: &str, kind: BudgetKind, f: &BudgetFigures| AlertEvent {
        seq: 1,
        time: t0,
        alert_id: format!("{budget}/rolling"),
        budget: budget.into(),
        kind,
        scope: None,
        period: "1h".into(),
        period_key: "rolling".into(),
        period_start: t0,
        period_end: None,
        state: "firing".into(),
        severity: "critical".into(),
        event: "threshold".into(),
        threshold: Some(1.0),
        figures: BudgetFigures { projected_share: None, ..*f },
        message: format!("BREACH {budget}: {} this 1h; crossed the 100% threshold", f.summary()),
        project: None,
    };
    let events =
        [event("hedge-duplicates", BudgetKind::DuplicateInference, &share), event("tiny", BudgetKind::Total, &tiny)];
    let views: Vec<AlertView> = events.iter().map(AlertView::from).collect();
    let mut app = app();
    app.set_data(1, 3, t(&budgets.to_string()));
    app.set_data(3, 0, t(&serde_json::to_string(&views).unwrap()));
    app
}

#[test]
fn budget_caps_read_in_their_unit_at_140_columns() {
    let mut app = budget_app();
    app.current = 1;
    let cost = render(&app, 140, 30);
    // The share cap: the share used against the share cap, and the gauge at the utilization (137%), never
    // "$0.69 / $0.00" at 0%.
    assert!(cost.contains("hedge-duplicates  4.1% / 3% of inference"), "{cost}");
    assert!(cost.contains(" 137% "), "{cost}");
    // The small cap keeps its digits; the bar is full, the percentage is the true one.
    assert!(cost.contains("tiny  $4.99 / $0.001  → $5.20"), "{cost}");
    assert!(cost.contains("499,400%"), "{cost}");
    assert!(!cost.contains("/ $0.00 "), "{cost}");
    insta::assert_snapshot!("budgets_cost_140x30", cost);

    app.current = 3;
    let alerts = render(&app, 140, 12);
    let row = alerts.lines().find(|l| l.contains("hedge-duplicates")).unwrap();
    assert!(row.contains("4.1%") && row.contains("3% of inference"), "{alerts}");
    let row = alerts.lines().find(|l| l.contains("tiny")).unwrap();
    assert!(row.contains("$4.99") && row.contains("$0.001") && row.contains("$5.20"), "{alerts}");
    // The message gets the width the other columns leave, wrapped: all of it is on screen.
    assert!(alerts.contains("BREACH hedge-duplicates: 4.1%") && alerts.contains("threshold"), "{alerts}");
    assert!(!alerts.contains('…'), "{alerts}");
    insta::assert_snapshot!("budgets_alerts_140x12", alerts);
}

/// The help overlay's last line (the last screen's description) is on screen at 80x24 and 120x32; on a smaller
/// terminal the overlay scrolls to it, and says so.
#[test]
fn help_overlay_shows_its_last_line_or_scrolls_to_it() {
    let mut app = app();
    app.help = true;
    let last = "their caps.";
    for (w, h) in [(80u16, 24u16), (120, 32)] {
        let screen = render(&app, w, h);
        // Eight screens' descriptions fit at 120x32; at 80x24 the overlay says there is more below.
        let whole = screen.contains(last) && screen.contains("8 Trends:");
        assert!(if w == 80 { !whole && screen.contains("↓ more") } else { whole }, "{w}x{h}:\n{screen}");
        assert!(screen.contains("scroll; any other key closes it"), "{w}x{h}:\n{screen}");
        insta::assert_snapshot!(format!("help_{w}x{h}"), screen);
    }
    let now = std::time::Instant::now();
    let key = |c| crossterm::event::KeyEvent::new(c, crossterm::event::KeyModifiers::NONE);
    let screen = render(&app, 60, 14);
    assert!(!screen.contains(last) && screen.contains("↓ more"), "{screen}");
    for _ in 0..40 {
        app.on_key(key(crossterm::event::KeyCode::Char('j')), now);
        render(&app, 60, 14);
    }
    assert!(app.help, "scrolling keeps the overlay open");
    let screen = render(&app, 60, 14);
    assert!(screen.contains(last) && !screen.contains("↓ more"), "{screen}");
    insta::assert_snapshot!("help_60x14_scrolled", screen);
    // Scrolling stops at the end: one step up shows the line before again.
    app.on_key(key(crossterm::event::KeyCode::Char('k')), now);
    assert!(!render(&app, 60, 14).contains(last));
    app.on_key(key(crossterm::event::KeyCode::Char('x')), now);
    assert!(!app.help && app.help_scroll == 0);
}

/// The cells of the buffer's row `y` with the colour of each, as (symbol, fg).
fn row_cells(app: &App, w: u16, h: u16, y: u16) -> Vec<(String, ratatui::style::Color)> {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| tui::ui::draw(f, app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    (0..w).map(|x| (buf[(x, y)].symbol().to_string(), buf[(x, y)].fg)).collect()
}

/// The rendered lines without the quotes `TestBackend` writes around each.
fn lines(screen: &str) -> Vec<String> {
    screen.lines().map(|l| l.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or(l).to_string()).collect()
}

/// The column (in cells) where `needle` last starts in `line`.
fn column_of(line: &str, needle: &str) -> Option<usize> {
    line.rfind(needle).map(|b| line[..b].chars().count())
}

/// The release comparison shows both versions' figures and marks exactly the rows beyond noise: gpt-4o's latency
/// (B 1.8 times as slow) and gpt-4o-mini's cost and tokens (B cheaper).
#[test]
fn release_shows_the_pair_and_marks_only_what_is_beyond_noise() {
    use ratatui::style::Color;
    let mut app = app();
    app.current = screen(&app, "release");
    let screen = render(&app, 160, 48);
    assert!(screen.contains("checkout-agent: 4.2.0 against 4.1.0"), "{screen}");
    assert!(screen.contains("812 ms") && screen.contains("1.46 s") && screen.contains("80%"), "{screen}");
    assert!(screen.contains("$0.0061") && screen.contains("$0.0025") && screen.contains("-59%"), "{screen}");
    let text = lines(&screen);
    // Whether each line matching `needle` is drawn marked (magenta), read at its step cell.
    let marked = |needle: &dyn Fn(&str) -> bool| -> Vec<bool> {
        text.iter()
            .enumerate()
            .filter(|(_, l)| needle(l))
            .map(|(y, l)| {
                let x = l.chars().position(char::is_alphabetic).unwrap();
                row_cells(&app, 160, 48, y as u16)[x].1 == Color::Magenta
            })
            .collect()
    };
    let latency = |model: &'static str| move |l: &str| l.contains(&format!(" {model} ")) && l.contains(" p9");
    assert_eq!(marked(&latency("gpt-4o")), [true, true], "gpt-4o p95, p99\n{screen}");
    assert_eq!(marked(&latency("gpt-4o-mini")), [false, false], "{screen}");
    assert_eq!(marked(&|l| l.contains("gpt-4o-mini") && l.contains("$0.0061")), [true], "{screen}");
    assert_eq!(marked(&|l| l.contains("gpt-4o ") && l.contains("$0.041 ")), [false], "{screen}");
    assert_eq!(marked(&|l| l.contains("tool") && l.contains("error_rate")), [false], "{screen}");
}

/// Each budget's dollar cap is a horizontal line on the spend chart itself, named at its right end, and the gauges
/// beside the chart still show spend against cap and the projection.
#[test]
fn spend_chart_draws_each_budget_cap_across_it() {
    let mut app = app();
    app.current = screen(&app, "trends");
    for (w, h) in [(160u16, 48u16), (80, 24)] {
        let screen = render(&app, w, h);
        let text = lines(&screen);
        // The spend chart is the lower left panel: its box starts at the line with its title.
        let top = text.iter().position(|l| l.contains("Spend over the window")).unwrap();
        let row_of = |needle: &str| text.iter().skip(top).position(|l| l.contains(needle)).map(|y| y + top);
        for label in ["total $1,000.00", "egress-monthly $500.00", "dup-inference $100.00"] {
            let y = row_of(label).unwrap_or_else(|| panic!("{label} at {w}x{h}:\n{screen}"));
            let start = column_of(&text[y], label).unwrap();
            let cells = row_cells(&app, w, h, y as u16);
            // The line runs up to its label (past the space before it), in the caps' colour, on the label's row.
            let before: Vec<_> = cells[start - 7..start - 1].iter().collect();
            assert!(
                before.iter().all(|(s, c)| s == "•" && *c == ratatui::style::Color::Red),
                "{label} at {w}x{h}: {before:?}\n{screen}"
            );
        }
        // Higher caps are higher up; the total spend ($703.62) is between the total cap and the egress cap.
        assert!(row_of("total $1,000.00") < row_of("egress-monthly $500.00"), "{screen}");
        assert!(row_of("egress-monthly $500.00") < row_of("dup-inference $100.00"), "{screen}");
        if w == 160 {
            assert!(screen.contains("egress-monthly  $410.00 / $500.00  → $640.00"), "the gauges stay: {screen}");
        }
        // The screen's snapshots are `trends_{w}x{h}` (every_default_screen_at_two_sizes).
    }
    // A cap on each session's cost is not drawn against spend summed over sessions; a share cap has no dollar line.
    let trends = app.current;
    app.set_data(trends, 2, t(r#"[{"name":"per-session","kind":"session_cost","cap_usd":600.0,"used":"$4.12","cap":"$600.00","utilization":0.0069},
        {"name":"hedge-duplicates","kind":"duplicate_inference","cap_usd":null,"cap_share":0.03,"used":"4.1%","cap":"3% of inference","utilization":1.37},
        {"name":"monthly","kind":"total","cap_usd":800.0,"used":"$703.62","cap":"$800.00","utilization":0.88}]"#));
    let screen = render(&app, 160, 48);
    assert!(screen.contains("monthly $800.00") && !screen.contains("per-session $600.00"), "{screen}");
    assert!(!screen.contains("hedge-duplicates $") && screen.contains("per-session  $4.12 / $600.00"), "{screen}");
    // Without the budgets' figures the chart has no cap lines (and no labels).
    app.panels.remove(&(trends, 2));
    let screen = render(&app, 160, 48);
    assert!(!screen.contains("monthly $800.00"), "{screen}");
}

/// With eight screens the tab bar does not fit in 80 columns beside the window: it shows whole tabs around the
/// selected one and `<` / `>` where others are hidden, never a label cut short ("8" for "8 Trends").
#[test]
fn tab_bar_keeps_every_shown_tab_whole_at_80_columns() {
    let mut app = app();
    let titles: Vec<String> = app.screens.iter().enumerate().map(|(i, d)| format!("{} {}", i + 1, d.title)).collect();
    for _ in 0..4 {
        for current in 0..app.screens.len() {
            app.current = current;
            let screen = render(&app, 80, 24);
            let bar = lines(&screen).remove(0);
            assert!(bar.contains(&format!(" {} ", titles[current])), "{bar}");
            let mut hidden = false;
            for title in &titles {
                let number = title.split(' ').next().unwrap();
                let whole = bar.contains(&format!(" {title} "));
                let any = bar.split_whitespace().any(|w| w == number);
                assert!(whole || !any, "tab {title:?} cut: {bar:?}");
                hidden |= !whole;
            }
            assert!(hidden, "eight tabs do not fit in 80 columns: {bar:?}");
            assert!(bar.contains('<') || bar.contains('>'), "{bar:?}");
            assert!(bar.trim_end().ends_with(app.window.label()), "{bar:?}");
        }
        app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('t')), std::time::Instant::now());
    }
    app.current = screen(&app, "trends");
    let bar = render(&app, 80, 24).lines().next().unwrap().to_string();
    assert!(bar.contains("< 2 Cost ") && bar.contains(" 8 Trends "), "{bar}");
    // At 160 columns every tab is there, without markers.
    let bar = render(&app, 160, 48).lines().next().unwrap().to_string();
    assert!(titles.iter().all(|t| bar.contains(t.as_str())) && !bar.contains('<') && !bar.contains('>'), "{bar}");
}
