//! tailscope's live terminal dashboard: tail latency per provider and region, cost, hedging, budget alerts and a
//! session waterfall, drawn from screens defined as TOML files ([`dashboard`]).
//!
//! Built like ratatui's async example: one `tokio::select!` loop over a redraw tick, the terminal's event stream
//! and the results of background fetches. Fetches run on their own tasks (at most one per panel at a time), so a
//! slow query shows a spinner instead of freezing the screen; an unreachable server shows a banner and is retried
//! with exponential backoff. `ratatui::init` installs a panic hook that restores the terminal.

pub mod app;
/// The dashboard files' model, shared with the web UI (it lives in `tailscope-core`).
pub use tailscope_core::dashboard;
pub mod data;
pub mod source;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::StreamExt;
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

pub use app::App;
pub use dashboard::{Dashboard, DashboardError};
pub use source::{DataSource, FetchError, LocalSource};

/// How often the screen is redrawn (spinner, banner countdown); data refreshes at its own interval.
const FRAME: Duration = Duration::from_millis(200);

/// Runs the dashboard until the user quits. Takes over the terminal and always gives it back.
pub async fn run(screens: Vec<Dashboard>, source: Arc<dyn DataSource>, refresh: Duration) -> std::io::Result<()> {
    let mut app = App::new(screens, source.describe(), source.has_server(), refresh);
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &mut app, source).await;
    ratatui::restore();
    result
}

async fn event_loop(terminal: &mut DefaultTerminal, app: &mut App, source: Arc<dyn DataSource>) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut events = EventStream::new();
    let mut ticker = tokio::time::interval(FRAME);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        for (key, epoch, request) in app.due(Instant::now()) {
            let fetch = match request {
                app::Request::Sql(sql) => source.sql(sql),
                app::Request::Live { window, group } => source.live(window, group),
                app::Request::Api { path, pointer } => source.api(path, pointer),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = fetch.await;
                let _ = tx.send(app::Loaded { key, epoch, result });
            });
        }
        terminal.draw(|frame| ui::draw(frame, app))?;
        tokio::select! {
            _ = ticker.tick() => app.tick = app.tick.wrapping_add(1),
            Some(msg) = rx.recv() => app.loaded(msg, Instant::now()),
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                    if app.on_key(key, Instant::now()) == app::Action::Quit {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {} // resize and the rest: the next draw adapts
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
}
