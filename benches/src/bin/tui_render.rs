//! Time to render one frame of the Overview screen with 100 provider x region rows (with p99 sparklines and the
//! selected row's histogram) into ratatui's `TestBackend`, the way the dashboard draws it every 200 ms.
//!
//! `cargo run --profile bench -p tailscope-benches --bin tui_render [-- ITERATIONS]`

use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use tui::App;
use tui::data::Table;

fn overview_rows(n: usize) -> Table {
    let rows: Vec<Vec<(String, serde_json::Value)>> = (0..n)
        .map(|i| {
            let p99 = 200.0 + (i * 37 % 5000) as f64;
            let series: Vec<serde_json::Value> = (0..10).map(|s| json!(p99 * (0.8 + 0.04 * s as f64))).collect();
            let buckets: Vec<serde_json::Value> =
                (0..14).map(|b| json!({"le_ms": f64::from(1u32 << b), "count": (i + 1) * (b + 1)})).collect();
            vec![
                ("provider".into(), json!(format!("provider-{}", i % 12))),
                ("region".into(), json!(format!("region-{i}"))),
                ("model".into(), json!("*")),
                ("operation".into(), json!("*")),
                ("count".into(), json!(1000 + i)),
                ("rate".into(), json!(3.3 + i as f64)),
                ("errors".into(), json!(i % 5)),
                ("error_rate".into(), json!((i % 5) as f64 / 1000.0)),
                ("p50_ms".into(), json!(p99 / 4.0)),
                ("p95_ms".into(), json!(p99 / 1.5)),
                ("p99_ms".into(), json!(p99)),
                ("p999_ms".into(), json!(p99 * 1.2)),
                ("max_ms".into(), json!(p99 * 1.5)),
                ("mean_ms".into(), json!(p99 / 3.0)),
                ("p99_series_ms".into(), json!(series)),
                ("buckets".into(), json!(buckets)),
            ]
        })
        .collect();
    let mut t = Table::from_objects(rows);
    t.slo = Some(3000.0);
    t
}

fn main() {
    let iterations: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let screens = tui::dashboard::defaults().expect("default dashboards");
    let mut app = App::new(screens, "bench".into(), true, Duration::from_secs(1));
    app.set_data(0, 0, overview_rows(100));
    println!("TUI rendering: Overview, 100 rows, TestBackend, {iterations} frames per size");
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test backend");
        // Warm up, and move the selection so the histogram and highlight are drawn like in use.
        for i in 0..200 {
            app.selected.insert(0, i % 100);
            terminal.draw(|f| tui::ui::draw(f, &app)).expect("draw");
        }
        let mut times = Vec::with_capacity(iterations);
        for i in 0..iterations {
            app.selected.insert(0, i % 100);
            let start = Instant::now();
            terminal.draw(|f| tui::ui::draw(f, &app)).expect("draw");
            times.push(start.elapsed());
        }
        times.sort();
        let mean = times.iter().sum::<Duration>() / iterations as u32;
        let pct = |q: f64| times[((iterations as f64 * q) as usize).min(iterations - 1)];
        println!(
            "{w}x{h}: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (target: < 5000 µs)",
            mean.as_secs_f64() * 1e6,
            pct(0.5).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            times[iterations - 1].as_secs_f64() * 1e6
        );
    }
}
