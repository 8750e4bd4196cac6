//! The release comparison end to end: the simulator's release scenario (`checkout-agent` 4.1.0 and 4.2.0, the
//! release slower on gpt-4o and cheaper on gpt-4o-mini, the same otherwise) sent through the official SDK to the
//! real server; then `release_compare` over HTTP, the Release screen in the real `tailscope tui` (tmux) and in a
//! real headless Chromium must show both changes and mark nothing else as beyond noise.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tailscope_sim::Scenario;
use tailscope_sim::fleet::{RELEASE_AFTER, RELEASE_BEFORE, RELEASE_LEANER, RELEASE_SERVICE, RELEASE_SLOWER};

use crate::browser::Browser;
use crate::support::{Server, simulate, tailscope_bin};
use crate::tui::Tmux;

/// Six seconds of the release scenario at 2,500 spans/s (about 15,000 spans, 1,000 turns, 250 sessions), every
/// span stored before it returns.
async fn release_traffic(server: &Server) {
    let spans = simulate(server, Scenario::Release, 18, 2500.0, 6).await;
    server.wait_count("SELECT COUNT(*) AS n FROM spans", spans as i64).await;
}

/// What the release changed, as (step type, model, metric) rows that may be marked: the slower model's latencies
/// (its calls, and the agent turns planned with it) and the leaner model's tokens and cost per session.
fn allowed(step: &str, model: &str, metric: &str) -> bool {
    let latency = ["p50_ms", "p95_ms", "p99_ms"].contains(&metric);
    let spend = ["tokens_per_session", "cost_per_session_usd"].contains(&metric);
    (model == RELEASE_SLOWER.0 && latency && ["model call", "agent"].contains(&step))
        || (model == RELEASE_LEANER.0 && spend && step == "model call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_comparison_marks_only_what_the_release_changed() {
    let server = Server::start().await;
    release_traffic(&server).await;

    // The view: the two changes are beyond noise, nothing else is.
    let rows = server
        .sql(&format!(
            "SELECT step_type, model, metric, n_a, n_b, a, b, change_rate, beyond_noise \
             FROM release_compare('{RELEASE_SERVICE}', '{RELEASE_BEFORE}', '{RELEASE_AFTER}', now() - INTERVAL '1 hour')"
        ))
        .await;
    assert!(rows.len() > 20, "step types x models x 7 figures: {rows:#?}");
    let marked: BTreeSet<(String, String, String)> = rows
        .iter()
        .filter(|r| r["beyond_noise"] == json!(true))
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            (text("step_type"), text("model"), text("metric"))
        })
        .collect();
    for (step, model, metric) in &marked {
        assert!(allowed(step, model, metric), "{step} / {model} / {metric} marked, but the release did not change it");
    }
    let find = |step: &str, model: &str, metric: &str| -> &Value {
        rows.iter()
            .find(|r| r["step_type"] == json!(step) && r["model"] == json!(model) && r["metric"] == json!(metric))
            .unwrap_or_else(|| panic!("no {step} / {model} / {metric} row"))
    };
    let slower = find("model call", RELEASE_SLOWER.0, "p50_ms");
    assert_eq!(slower["beyond_noise"], json!(true), "{slower}");
    let ratio = slower["change_rate"].as_f64().unwrap() + 1.0;
    assert!((1.5..2.1).contains(&ratio), "p50 of {} x{ratio}, simulated x{}", RELEASE_SLOWER.0, RELEASE_SLOWER.1);
    let cheaper = find("model call", RELEASE_LEANER.0, "cost_per_session_usd");
    assert_eq!(cheaper["beyond_noise"], json!(true), "{cheaper}");
    assert!(cheaper["change_rate"].as_f64().unwrap() < -0.3, "{cheaper}");
    // The other model's latency and cost did not move.
    for (model, metric) in [(RELEASE_LEANER.0, "p50_ms"), (RELEASE_SLOWER.0, "cost_per_session_usd")] {
        let row = find("model call", model, metric);
        assert_eq!(row["beyond_noise"], json!(false), "{row}");
    }
    eprintln!("marked beyond noise: {marked:?}");

    terminal(&server).await;
    browser(&server, &marked).await;
}

/// The Release screen in the terminal: Enter on the pair (B = the release) fills the comparison; every row that
/// says `yes` (beyond noise) is one the release changed.
async fn terminal(server: &Server) {
    let tmux = Tmux::start_sized(
        &format!("{} tui --server {} --refresh 500ms", tailscope_bin().display(), server.api_url()),
        200,
        150,
    );
    // Keys sent before the TUI holds the terminal may be lost.
    tmux.wait_for(&["1 Overview"]).await;
    tmux.keys(&["7"]);
    let screen = tmux.wait_for(&["Versions seen in the window", RELEASE_BEFORE, RELEASE_AFTER]).await;
    // Two rows, both ways round: select the one with the release as B.
    let pair = |line: &&str| line.contains(RELEASE_SERVICE);
    let order: Vec<&str> = screen.lines().filter(pair).collect();
    assert_eq!(order.len(), 2, "{screen}");
    if order[0].find(RELEASE_AFTER) < order[0].find(RELEASE_BEFORE) {
        tmux.keys(&["j"]);
    }
    tmux.keys(&["Enter"]);
    let against = format!("{RELEASE_SERVICE}: {RELEASE_AFTER} against {RELEASE_BEFORE}");
    tmux.wait_for(&[&against, "p50_ms", "hedge_rate", "yes"]).await;
    // The panels refresh on their own (every 500 ms, each its own query): read the screen until both marked rows
    // are on it, checking every marked row each time.
    let want = [
        (RELEASE_SLOWER.0.to_string(), "p50_ms".to_string()),
        (RELEASE_LEANER.0.to_string(), "per session".to_string()),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (screen, seen) = loop {
        let screen = tmux.screen();
        let mut seen = BTreeSet::new();
        for line in screen.lines().filter(|l| l.split_whitespace().any(|w| w == "yes")) {
            let words: Vec<&str> =
                line.split(|c: char| c.is_whitespace() || c == '│').filter(|w| !w.is_empty()).collect();
            let model = words.iter().find(|w| w.starts_with("gpt-")).copied().unwrap_or("-");
            let step = if words.contains(&"agent") { "agent" } else { "model call" };
            let metric = words.iter().find(|w| w.ends_with("_ms") || w.ends_with("_rate")).copied();
            let ok = match metric {
                Some(m) => allowed(step, model, m),
                // The cost and tokens table has no metric column.
                None => allowed(step, model, "cost_per_session_usd"),
            };
            assert!(ok, "marked in the terminal but not changed by the release: {line}\n{screen}");
            seen.insert((model.to_string(), metric.unwrap_or("per session").to_string()));
        }
        if want.iter().all(|w| seen.contains(w)) || std::time::Instant::now() > deadline {
            break (screen, seen);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(seen.contains(&(RELEASE_SLOWER.0.to_string(), "p50_ms".to_string())), "{seen:?}\n{screen}");
    assert!(seen.contains(&(RELEASE_LEANER.0.to_string(), "per session".to_string())), "{seen:?}\n{screen}");
    tmux.keys(&["q"]);
}

/// The Release screen in the browser: a click on the pair, then a deep link to the same comparison; the marked
/// rows are the view's, and a figure equals the SQL's.
async fn browser(server: &Server, marked: &BTreeSet<(String, String, String)>) {
    let base = server.api_url();
    let mut browser = Browser::launch(1400, 1600);
    browser.open(&format!("{base}/?screen=release&window=1h"));
    browser.wait_text(&["Versions seen in the window", RELEASE_AFTER]);
    browser.wait_text(&["pick what to compare"]);
    browser.js(&format!(
        "[...document.querySelectorAll('tbody tr')].find(tr => {{ const c = [...tr.cells].map(td => td.textContent); \
         return c[1] === {a} && c[2] === {b}; }}).click()",
        a = json!(RELEASE_BEFORE),
        b = json!(RELEASE_AFTER),
    ));
    browser.wait_js(
        &format!("location.search.includes('version_b={RELEASE_AFTER}') && location.search.includes('service={RELEASE_SERVICE}')"),
        Duration::from_secs(10),
    );
    let deep_link = browser.js("location.href").as_str().unwrap().to_string();
    for pass in ["clicked", "deep link"] {
        if pass == "deep link" {
            browser.open(&deep_link);
        }
        browser.wait_js("document.querySelectorAll('tr.marked').length > 0", Duration::from_secs(60));
        browser.settled();
        let latency = page_marks(&mut browser, "Latency, B against A (marked: beyond noise)");
        let want: BTreeSet<(String, String, String)> =
            marked.iter().filter(|(_, _, m)| m.ends_with("_ms")).cloned().collect();
        assert_eq!(latency, want, "{pass}: the latency rows marked on the page are the view's");
        let spend = page_marks(&mut browser, "Cost and tokens per session (marked: beyond noise)");
        let want: BTreeSet<(String, String)> = marked
            .iter()
            .filter(|(_, _, m)| m.ends_with("_session") || m.ends_with("_usd"))
            .map(|(s, m, _)| (s.clone(), m.clone()))
            .collect();
        assert_eq!(spend.iter().map(|(s, m, _)| (s.clone(), m.clone())).collect::<BTreeSet<_>>(), want, "{pass}");
        assert!(page_marks(&mut browser, "Error and hedge rates (marked: beyond noise)").is_empty(), "{pass}");
    }
    // A figure on the page equals the SQL's, formatted as the terminal formats it.
    let sql = server
        .sql(&format!(
            "SELECT b FROM release_compare('{RELEASE_SERVICE}', '{RELEASE_BEFORE}', '{RELEASE_AFTER}', \
             now() - INTERVAL '1 hour') WHERE step_type = 'model call' AND model = '{}' AND metric = 'p50_ms'",
            RELEASE_SLOWER.0
        ))
        .await;
    let want = tailscope_core::display::duration_ms(sql[0]["b"].as_f64().unwrap());
    let shown = browser.js(&format!(
        "(() => {{
            const panel = [...document.querySelectorAll('.panel')].find(p => p.querySelector('h2').textContent.startsWith('Latency'));
            const heads = [...panel.querySelectorAll('th')].map(th => th.textContent);
            const row = [...panel.querySelectorAll('tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))
                .find(c => c[0] === 'model call' && c[1] === {} && c[2] === 'p50_ms');
            return row[heads.indexOf('b')];
        }})()",
        json!(RELEASE_SLOWER.0)
    ));
    assert_eq!(shown, json!(want), "B's p50 of {} on the page and in SQL", RELEASE_SLOWER.0);
    browser.drain_events();
    assert!(browser.errors.is_empty(), "the page logged errors: {:#?}", browser.errors);
    browser.screenshot("release");
}

/// The (step, model, metric) of each marked row of a panel (metric "-" where the panel has none).
fn page_marks(browser: &mut Browser, title: &str) -> BTreeSet<(String, String, String)> {
    let rows = browser.js(&format!(
        "(() => {{
            const panel = [...document.querySelectorAll('.panel')].find(p => p.querySelector('h2').textContent === {});
            const heads = [...panel.querySelectorAll('th')].map(th => th.textContent);
            return [...panel.querySelectorAll('tbody tr.marked')].map(tr => {{
                const c = Object.fromEntries(heads.map((h, i) => [h, tr.cells[i].textContent]));
                return [c.step, c.model, c.metric || '-'];
            }});
        }})()",
        json!(title)
    ));
    rows.as_array()
        .unwrap_or_else(|| panic!("no panel {title}: {rows}"))
        .iter()
        .map(|r| (r[0].as_str().unwrap().into(), r[1].as_str().unwrap().into(), r[2].as_str().unwrap().into()))
        .collect()
}
