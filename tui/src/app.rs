//! The dashboard's state and behaviour, independent of the terminal: which screen, which row, which window,
//! what each panel holds, and which fetches are due. Rendering is in [`crate::ui`], the event loop in
//! [`crate::run`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub use crate::dashboard::TimeWindow;
use crate::dashboard::{Dashboard, Panel, Picked, Widget};
use crate::data::Table;
use crate::source::FetchError;

/// One fetch a panel needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// SQL, placeholders filled in.
    Sql(String),
    /// The live windows.
    Live {
        /// `5m` or `1h`.
        window: &'static str,
        /// Key columns kept apart.
        group: String,
    },
    /// A JSON API path.
    Api {
        /// The path.
        path: String,
        /// Where the rows are in the answer.
        pointer: Option<String>,
    },
}

/// A panel's data and fetch state.
#[derive(Debug, Clone, Default)]
pub struct PanelState {
    /// The last data received for the current epoch.
    pub data: Option<Table>,
    /// The last error, shown in the panel.
    pub error: Option<String>,
    /// A fetch is under way.
    pub in_flight: bool,
    /// When the data last arrived (or the last fetch failed).
    pub fetched_at: Option<Instant>,
    /// A message instead of data (e.g. "pick a session").
    pub idle: Option<String>,
}

/// The server cannot be reached: the banner and the backoff.
#[derive(Debug, Clone)]
pub struct Offline {
    /// What went wrong.
    pub message: String,
    /// When to try again.
    pub retry_at: Instant,
    /// The current backoff.
    pub delay: Duration,
}

/// A fetch result coming back from a background task.
#[derive(Debug)]
pub struct Loaded {
    /// (screen, panel).
    pub key: (usize, usize),
    /// The epoch the request was made in; stale results are dropped.
    pub epoch: u64,
    /// The result.
    pub result: Result<Table, FetchError>,
}

/// What a key press asks the loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep going.
    Continue,
    /// Leave the dashboard.
    Quit,
}

/// The whole dashboard state.
#[derive(Debug)]
pub struct App {
    /// The screens, in tab order.
    pub screens: Vec<Dashboard>,
    /// The screen shown.
    pub current: usize,
    /// Where Esc goes back to after a drill-down.
    pub previous: Option<usize>,
    /// The time window.
    pub window: TimeWindow,
    /// The row filter (case-insensitive substring of any text cell).
    pub filter: String,
    /// The filter being typed after `/`.
    pub input: Option<String>,
    /// The help overlay is open.
    pub help: bool,
    /// The first line of the help overlay shown (it scrolls when the terminal is too small for it).
    pub help_scroll: u16,
    /// How far the help overlay can scroll at the terminal's size, as last drawn.
    pub help_max_scroll: std::cell::Cell<u16>,
    /// The session picked for drill-down.
    pub session: Option<String>,
    /// The values picked in a table with `pick` (the release screen's service and versions).
    pub picked: Picked,
    /// Per (screen, panel) state.
    pub panels: HashMap<(usize, usize), PanelState>,
    /// Selected (visible) row of each screen's focused table.
    pub selected: HashMap<usize, usize>,
    /// Set while the server is unreachable.
    pub offline: Option<Offline>,
    /// Animation counter for the spinner.
    pub tick: u64,
    /// "http://…" or the data dir, for the status bar.
    pub source_label: String,
    /// Live windows and API paths are available.
    pub has_server: bool,
    /// How often panels refresh.
    pub refresh: Duration,
    /// Bumped when the window or session changes: older results are dropped.
    pub epoch: u64,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl App {
    /// A dashboard over `screens`.
    pub fn new(screens: Vec<Dashboard>, source_label: String, has_server: bool, refresh: Duration) -> App {
        App {
            screens,
            current: 0,
            previous: None,
            window: TimeWindow::Hour,
            filter: String::new(),
            input: None,
            help: false,
            help_scroll: 0,
            help_max_scroll: std::cell::Cell::new(0),
            session: None,
            picked: Picked::new(),
            panels: HashMap::new(),
            selected: HashMap::new(),
            offline: None,
            tick: 0,
            source_label,
            has_server,
            refresh,
            epoch: 0,
        }
    }

    /// The panels of a screen, flattened in reading order.
    pub fn screen_panels(&self, screen: usize) -> Vec<&Panel> {
        self.screens.get(screen).map(|d| d.panels().collect()).unwrap_or_default()
    }

    /// The panel Up/Down/Enter act on: the first table with a drill or pick column, else the first table.
    pub fn focused_panel(&self, screen: usize) -> Option<usize> {
        let panels = self.screen_panels(screen);
        panels
            .iter()
            .position(|p| p.widget == Widget::Table && (p.drill.is_some() || p.pick.is_some()))
            .or_else(|| panels.iter().position(|p| p.widget == Widget::Table))
    }

    /// The state of a panel (default when nothing happened yet).
    pub fn panel_state(&self, screen: usize, panel: usize) -> PanelState {
        self.panels.get(&(screen, panel)).cloned().unwrap_or_default()
    }

    /// Puts data into a panel directly (tests, benchmarks).
    pub fn set_data(&mut self, screen: usize, panel: usize, table: Table) {
        let state = self.panels.entry((screen, panel)).or_default();
        state.data = Some(table);
        state.error = None;
        state.idle = None;
        state.fetched_at = Some(Instant::now());
    }

    /// Rows of `table` that pass the filter, as indices.
    pub fn visible_rows(&self, table: &Table) -> Vec<usize> {
        if self.filter.is_empty() {
            return (0..table.rows.len()).collect();
        }
        let needle = self.filter.to_lowercase();
        (0..table.rows.len())
            .filter(|&i| table.rows[i].iter().any(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains(&needle))))
            .collect()
    }

    /// The row index (into the table) selected on a screen, if its focused table has rows.
    pub fn selected_row(&self, screen: usize) -> Option<(usize, usize)> {
        let panel = self.focused_panel(screen)?;
        let state = self.panels.get(&(screen, panel))?;
        let table = state.data.as_ref()?;
        let visible = self.visible_rows(table);
        let sel = (*self.selected.get(&screen).unwrap_or(&0)).min(visible.len().checked_sub(1)?);
        Some((panel, visible[sel]))
    }

    /// What a panel should fetch now, or why it cannot.
    pub fn request_for(&self, panel: &Panel) -> Result<Request, String> {
        if let Some(group) = &panel.live
            && self.has_server
            && let Some(window) = self.window.live()
        {
            return Ok(Request::Live { window, group: group.clone() });
        }
        if let Some(path) = &panel.api
            && self.has_server
        {
            return Ok(Request::Api { path: path.clone(), pointer: panel.pointer.clone() });
        }
        if let Some(sql) = &panel.sql {
            if panel.needs_session() && self.session.is_none() {
                return Err("pick a session: Enter on a session row (here or on Cost)".into());
            }
            if panel.needs_pick() && self.picked.is_empty() {
                return Err("pick what to compare: Enter on a row of the table above".into());
            }
            return Ok(Request::Sql(self.fill(sql)));
        }
        if panel.selected {
            return Err(String::new());
        }
        Err(if panel.api.is_some() { "needs a server (--server)" } else { "no data source" }.into())
    }

    /// SQL with its placeholders filled in.
    pub fn fill(&self, sql: &str) -> String {
        crate::dashboard::fill_picked(sql, self.window, self.session.as_deref(), &self.picked)
    }

    /// The fetches due now on the current screen; marks them in flight.
    pub fn due(&mut self, now: Instant) -> Vec<((usize, usize), u64, Request)> {
        if let Some(off) = &self.offline
            && now < off.retry_at
        {
            return Vec::new();
        }
        let screen = self.current;
        let panels: Vec<Panel> = self.screen_panels(screen).into_iter().cloned().collect();
        let mut out = Vec::new();
        for (i, panel) in panels.iter().enumerate() {
            let request = self.request_for(panel);
            let state = self.panels.entry((screen, i)).or_default();
            match request {
                Err(message) => {
                    state.idle = Some(message);
                    state.data = None;
                }
                Ok(request) => {
                    state.idle = None;
                    let stale = state.fetched_at.is_none_or(|t| now.duration_since(t) >= self.refresh);
                    if !state.in_flight && stale {
                        state.in_flight = true;
                        out.push(((screen, i), self.epoch, request));
                    }
                }
            }
        }
        out
    }

    /// Takes a fetch result in.
    pub fn loaded(&mut self, msg: Loaded, now: Instant) {
        let fresh = msg.epoch == self.epoch;
        let state = self.panels.entry(msg.key).or_default();
        state.in_flight = false;
        if !fresh {
            return;
        }
        state.fetched_at = Some(now);
        match msg.result {
            Ok(table) => {
                state.data = Some(table);
                state.error = None;
                self.offline = None;
            }
            Err(FetchError::Failed(e)) => {
                state.error = Some(e);
                self.offline = None;
            }
            Err(FetchError::Unreachable(e)) => {
                let delay = self.offline.as_ref().map_or(Duration::from_secs(1), |o| (o.delay * 2).min(MAX_BACKOFF));
                self.offline = Some(Offline { message: e, retry_at: now + delay, delay });
                // Everything is retried together once the backoff expires.
                for s in self.panels.values_mut() {
                    s.fetched_at = None;
                }
            }
        }
    }

    fn invalidate(&mut self) {
        self.epoch += 1;
        for s in self.panels.values_mut() {
            s.data = None;
            s.error = None;
            s.fetched_at = None;
        }
    }

    fn go(&mut self, screen: usize) {
        if screen < self.screens.len() {
            self.current = screen;
            self.previous = None;
        }
    }

    fn session_screen(&self) -> Option<usize> {
        self.screens.iter().position(|d| d.panels().any(|p| p.needs_session()))
    }

    fn move_selection(&mut self, delta: isize) {
        let screen = self.current;
        let len = self
            .focused_panel(screen)
            .and_then(|p| self.panels.get(&(screen, p)))
            .and_then(|s| s.data.as_ref())
            .map_or(0, |t| self.visible_rows(t).len());
        let cur = *self.selected.get(&screen).unwrap_or(&0) as isize;
        let next = (cur + delta).clamp(0, len.saturating_sub(1) as isize) as usize;
        self.selected.insert(screen, next);
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent, now: Instant) -> Action {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if let Some(input) = &mut self.input {
            match key.code {
                KeyCode::Enter => {
                    self.filter = input.trim().to_string();
                    self.input = None;
                    self.selected.clear();
                }
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    input.pop();
                }
                KeyCode::Char(c) => input.push(c),
                _ => {}
            }
            return Action::Continue;
        }
        if self.help {
            let max = self.help_max_scroll.get();
            let scroll = |by: i32| (i32::from(self.help_scroll) + by).clamp(0, i32::from(max)) as u16;
            match key.code {
                KeyCode::Char('q') => return Action::Quit,
                KeyCode::Down | KeyCode::Char('j') => self.help_scroll = scroll(1),
                KeyCode::Up | KeyCode::Char('k') => self.help_scroll = scroll(-1),
                KeyCode::PageDown => self.help_scroll = scroll(10),
                KeyCode::PageUp => self.help_scroll = scroll(-10),
                KeyCode::Home | KeyCode::Char('g') => self.help_scroll = 0,
                KeyCode::End | KeyCode::Char('G') => self.help_scroll = max,
                _ => {
                    self.help = false;
                    self.help_scroll = 0;
                }
            }
            return Action::Continue;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char(c @ '1'..='9') => self.go(c as usize - '1' as usize),
            KeyCode::Tab => self.go((self.current + 1) % self.screens.len()),
            KeyCode::BackTab => self.go((self.current + self.screens.len() - 1) % self.screens.len()),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            KeyCode::Char('/') => self.input = Some(self.filter.clone()),
            KeyCode::Char('t') => {
                self.window = self.window.next();
                self.invalidate();
            }
            KeyCode::Char('r') => {
                for s in self.panels.values_mut() {
                    s.fetched_at = None;
                }
                if let Some(off) = &mut self.offline {
                    off.retry_at = now;
                }
            }
            KeyCode::Enter => self.drill(),
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                } else if let Some(prev) = self.previous.take() {
                    self.current = prev;
                }
            }
            _ => {}
        }
        Action::Continue
    }

    /// Enter on a row of a table with `pick`: its values become the picked placeholders, and the panels that
    /// read them load again.
    fn pick(&mut self, screen: usize, panel: usize, row: usize) {
        let names: Vec<String> = self.screen_panels(screen)[panel].picks().into_iter().map(str::to_string).collect();
        let Some(table) = self.panels.get(&(screen, panel)).and_then(|s| s.data.as_ref()) else { return };
        let mut picked = Picked::new();
        for name in names {
            let Some(value) = table.column(&name).and_then(|c| table.rows[row][c].as_str().map(str::to_string)) else {
                return;
            };
            picked.insert(name, value);
        }
        if picked == self.picked {
            return;
        }
        self.picked = picked;
        self.epoch += 1;
        let keys: Vec<_> = self.panels.keys().copied().collect();
        for key in keys {
            let uses = self.screen_panels(key.0).get(key.1).is_some_and(|p| p.needs_pick());
            if let Some(s) = self.panels.get_mut(&key) {
                if uses {
                    s.data = None;
                    s.error = None;
                }
                if uses || s.in_flight {
                    s.fetched_at = None;
                }
            }
        }
    }

    fn drill(&mut self) {
        let screen = self.current;
        let Some((panel, row)) = self.selected_row(screen) else { return };
        if self.screen_panels(screen)[panel].pick.is_some() {
            self.pick(screen, panel, row);
            return;
        }
        let Some(column) = self.screen_panels(screen)[panel].drill.clone() else { return };
        let Some(table) = self.panels.get(&(screen, panel)).and_then(|s| s.data.as_ref()) else { return };
        let Some(value) = table.column(&column).and_then(|c| table.rows[row][c].as_str().map(str::to_string)) else {
            return;
        };
        let Some(target) = self.session_screen() else { return };
        if self.session.as_deref() != Some(value.as_str()) {
            self.session = Some(value);
            // Only the session's panels change; keep the others' data.
            self.epoch += 1;
            let keys: Vec<_> = self.panels.keys().copied().collect();
            for key in keys {
                if self.screen_panels(key.0).get(key.1).is_some_and(|p| p.needs_session())
                    && let Some(s) = self.panels.get_mut(&key)
                {
                    s.data = None;
                    s.error = None;
                    s.fetched_at = None;
                }
            }
            // Results in flight for other panels are still valid: let them land under the new epoch.
            for s in self.panels.values_mut() {
                if s.in_flight {
                    s.fetched_at = None;
                }
            }
        }
        if target != screen {
            self.previous = Some(screen);
            self.current = target;
        }
    }

    /// Whether anything on the current screen is loading.
    pub fn loading(&self) -> bool {
        self.panels.iter().any(|((s, _), st)| *s == self.current && st.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::defaults;
    use crossterm::event::KeyEvent;
    use serde_json::json;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn drill_window_filter_and_backoff() {
        let now = Instant::now();
        let mut app = App::new(defaults().unwrap(), "test".into(), true, Duration::from_secs(1));
        let due = app.due(now);
        assert!(matches!(due[0].2, Request::Live { window: "1h", .. }), "{due:?}");
        app.on_key(key(KeyCode::Char('t')), now);
        assert_eq!(app.window, TimeWindow::Day);
        // The 1h fetch still in flight lands in the old epoch and is dropped.
        app.loaded(Loaded { key: due[0].0, epoch: due[0].1, result: Ok(Table::default()) }, now);
        assert!(app.panel_state(0, 0).data.is_none());
        // No live window covers a day: the overview falls back to SQL.
        let due = app.due(now);
        let Request::Sql(sql) = &due[0].2 else { panic!("{due:?}") };
        assert!(sql.contains("INTERVAL '1 day'") && sql.contains("86400.0"), "{sql}");
        // Cost screen: Enter on a session opens the session screen with it.
        app.on_key(key(KeyCode::Char('2')), now);
        let focus = app.focused_panel(1).unwrap();
        let mut t = Table::from_objects(vec![
            vec![("session_id".into(), json!("s-1")), ("cost_usd".into(), json!(1.5))],
            vec![("session_id".into(), json!("s-'2")), ("cost_usd".into(), json!(0.5))],
        ]);
        t.slo = None;
        app.set_data(1, focus, t);
        app.on_key(key(KeyCode::Char('j')), now);
        app.on_key(key(KeyCode::Enter), now);
        assert_eq!((app.current, app.session.as_deref()), (4, Some("s-'2")));
        let due = app.due(now);
        assert!(due.iter().any(|(_, _, r)| matches!(r, Request::Sql(s) if s.contains("session_id = 's-''2'"))));
        app.on_key(key(KeyCode::Esc), now);
        assert_eq!(app.current, 1);
        // Filter.
        for c in "/S-1".chars() {
            app.on_key(key(KeyCode::Char(c)), now);
        }
        app.on_key(key(KeyCode::Enter), now);
        assert_eq!(app.filter, "S-1");
        let data = app.panel_state(1, focus).data.unwrap();
        assert_eq!(app.visible_rows(&data), vec![0]);
        // Unreachable: backoff doubles, success clears.
        let msg = |r| Loaded { key: (1, 0), epoch: app.epoch, result: r };
        let m = msg(Err(FetchError::Unreachable("refused".into())));
        app.loaded(m, now);
        assert!(app.due(now).is_empty());
        let m = Loaded { key: (1, 0), epoch: app.epoch, result: Err(FetchError::Unreachable("refused".into())) };
        app.loaded(m, now);
        assert_eq!(app.offline.as_ref().unwrap().delay, Duration::from_secs(2));
        assert!(!app.due(now + Duration::from_secs(3)).is_empty());
        let m = Loaded { key: (1, 0), epoch: app.epoch, result: Ok(Table::default()) };
        app.loaded(m, now);
        assert!(app.offline.is_none());
        assert_eq!(app.on_key(key(KeyCode::Char('q')), now), Action::Quit);
    }

    #[test]
    fn a_picked_pair_of_versions_fills_the_release_panels() {
        let now = Instant::now();
        let mut app = App::new(defaults().unwrap(), "test".into(), true, Duration::from_secs(1));
        let release = app.screens.iter().position(|d| d.name() == "release").unwrap();
        app.on_key(key(KeyCode::Char(char::from(b'1' + release as u8))), now);
        let due = app.due(now);
        assert_eq!(due.len(), 1, "only the versions table loads before a pick: {due:?}");
        assert!(app.panel_state(release, 1).idle.unwrap().contains("pick"));
        let focus = app.focused_panel(release).unwrap();
        app.set_data(
            release,
            focus,
            Table::from_objects(vec![vec![
                ("service".into(), json!("shop")),
                ("version_a".into(), json!("1.0")),
                ("version_b".into(), json!("1.1")),
            ]]),
        );
        app.on_key(key(KeyCode::Enter), now);
        assert_eq!(app.picked.get("version_b").map(String::as_str), Some("1.1"));
        let due = app.due(now);
        assert!(
            due.iter()
                .any(|(_, _, r)| matches!(r, Request::Sql(s) if s.contains("release_compare('shop', '1.0', '1.1'"))),
            "{due:?}"
        );
    }
}
