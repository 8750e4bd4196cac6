//! Dashboards as files: a screen is a TOML file of rows of panels, each panel a title, a data source (SQL, the
//! live latency windows or a JSON API path) and a widget.
//!
//! The default screens live in the repository's `dashboards/` directory and are compiled into the binary, so
//! `tailscope tui` works from any directory. A file is checked completely before the dashboard starts: a typo is
//! an error naming the file, line and column, never a half-drawn screen.
//!
//! ```toml
//! title = "Overview"
//! [[rows]]
//! height = "60%"                 # lines ("12"), a share ("60%") or "fill" (the default)
//! [[rows.panels]]
//! title = "Tail latency"
//! widget = "table"               # table | sparkline | bar | gauge | line | histogram | waterfall
//! live = "provider,region"       # /api/v1/live grouped by these columns (needs a server)
//! sql = "SELECT … WHERE start_time >= {since}"   # used without a server, or for windows over 1h
//! ```
//!
//! A line panel may draw reference lines from another panel of its screen, named by that panel's `id`:
//! `caps = { panel = "budgets", label = "name", value = "cap_usd" }` draws each budget's cap across the spend
//! chart ([`Caps`]).
//!
//! SQL placeholders: `{since}` (start of the selected time window, a timestamp expression), `{window}` (its
//! label, e.g. `'1h'`), `{window_seconds}` (its length), `{session_id}` (the session picked with Enter, as a quoted
//! literal), and the [`PICKED`] ones (`{service}`, `{version_a}`, `{version_b}`), set from the row picked in a table
//! with `pick` (the release screen's pair of versions), as quoted literals.
//!
//! The model lives here, below both renderers: the terminal dashboard (`tailscope-tui`) and the web UI
//! (`tailscope-web`) read the same files, the same [`TimeWindow`]s and fill placeholders by the same [`fill`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default screens, in order: (file name, contents).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("overview.toml", include_str!("../../dashboards/overview.toml")),
    ("cost.toml", include_str!("../../dashboards/cost.toml")),
    ("hedging.toml", include_str!("../../dashboards/hedging.toml")),
    ("alerts.toml", include_str!("../../dashboards/alerts.toml")),
    ("session.toml", include_str!("../../dashboards/session.toml")),
    ("health.toml", include_str!("../../dashboards/health.toml")),
    ("release.toml", include_str!("../../dashboards/release.toml")),
    ("trends.toml", include_str!("../../dashboards/trends.toml")),
];

/// The placeholders a panel's SQL may use.
pub const PLACEHOLDERS: &[&str] =
    &["since", "window", "window_seconds", "session_id", "service", "version_a", "version_b"];

/// The placeholders a row picked in a table with `pick` sets (each from the row's column of that name). Deep
/// links carry them under the same names.
pub const PICKED: &[&str] = &["service", "version_a", "version_b"];

/// The history a screen covers; the renderers cycle through them (`t` in the terminal, a selector on the web).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeWindow {
    /// Last five minutes.
    FiveMinutes,
    /// Last hour.
    Hour,
    /// Last day.
    Day,
    /// Last week.
    Week,
}

impl TimeWindow {
    /// Every window, shortest first.
    pub const ALL: [TimeWindow; 4] = [TimeWindow::FiveMinutes, TimeWindow::Hour, TimeWindow::Day, TimeWindow::Week];

    /// Short label (`5m`, `1h`, `24h`, `7d`), as deep links and `{window}` write it.
    pub fn label(self) -> &'static str {
        match self {
            TimeWindow::FiveMinutes => "5m",
            TimeWindow::Hour => "1h",
            TimeWindow::Day => "24h",
            TimeWindow::Week => "7d",
        }
    }

    /// The window a label names.
    pub fn parse(label: &str) -> Option<TimeWindow> {
        TimeWindow::ALL.into_iter().find(|w| w.label() == label)
    }

    /// The next longer window, wrapping around.
    pub fn next(self) -> TimeWindow {
        match self {
            TimeWindow::FiveMinutes => TimeWindow::Hour,
            TimeWindow::Hour => TimeWindow::Day,
            TimeWindow::Day => TimeWindow::Week,
            TimeWindow::Week => TimeWindow::FiveMinutes,
        }
    }

    /// Length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            TimeWindow::FiveMinutes => 300,
            TimeWindow::Hour => 3600,
            TimeWindow::Day => 86_400,
            TimeWindow::Week => 604_800,
        }
    }

    /// The SQL interval literal's text.
    pub fn interval(self) -> &'static str {
        match self {
            TimeWindow::FiveMinutes => "5 minutes",
            TimeWindow::Hour => "1 hour",
            TimeWindow::Day => "1 day",
            TimeWindow::Week => "7 days",
        }
    }

    /// The live window that covers this one, when the collector keeps one that long.
    pub fn live(self) -> Option<&'static str> {
        match self {
            TimeWindow::FiveMinutes => Some("5m"),
            TimeWindow::Hour => Some("1h"),
            TimeWindow::Day | TimeWindow::Week => None,
        }
    }

    /// What each SQL placeholder but `{session_id}` stands for in this window: (placeholder, SQL text).
    pub fn substitutions(self) -> [(&'static str, String); 3] {
        [
            ("since", format!("(now() - INTERVAL '{}')", self.interval())),
            ("window_seconds", format!("{}.0", self.seconds())),
            ("window", format!("'{}'", self.label())),
        ]
    }
}

/// A string as a SQL literal (`'it''s'`), or `NULL`.
pub fn sql_literal(value: Option<&str>) -> String {
    value.map(|s| format!("'{}'", s.replace('\'', "''"))).unwrap_or_else(|| "NULL".into())
}

/// A panel's SQL with its placeholders filled in for `window` and the picked `session`.
pub fn fill(sql: &str, window: TimeWindow, session: Option<&str>) -> String {
    fill_picked(sql, window, session, &Picked::default())
}

/// The values of the [`PICKED`] placeholders: placeholder name -> value.
pub type Picked = std::collections::BTreeMap<String, String>;

/// [`fill`] with the [`PICKED`] placeholders too (`NULL` for one not picked).
pub fn fill_picked(sql: &str, window: TimeWindow, session: Option<&str>, picked: &Picked) -> String {
    let mut out = sql.to_string();
    for (name, value) in window.substitutions() {
        out = out.replace(&format!("{{{name}}}"), &value);
    }
    for name in PICKED {
        out = out.replace(&format!("{{{name}}}"), &sql_literal(picked.get(*name).map(String::as_str)));
    }
    out.replace("{session_id}", &sql_literal(session))
}

/// The path prefix of the web UI's assets on the API listener (`/ui/app.js`, ...).
pub const WEB_UI_PREFIX: &str = "/ui/";

/// Whether an API path is the web UI's page or one of its assets: served without a key, as they hold no data (the
/// page asks for a key when the API answers 401). Every data path keeps its scope.
pub fn is_web_ui_path(path: &str) -> bool {
    path == "/" || path == "/favicon.ico" || path.starts_with(WEB_UI_PREFIX)
}

/// A dashboard file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The file could not be read.
    #[error("cannot read dashboard {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not follow the dashboard format.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `--dashboard NAME` names neither a default nor a file.
    #[error("no dashboard named {name:?}: use one of {known} or a path to a .toml file")]
    Unknown {
        /// What was asked for.
        name: String,
        /// The default names.
        known: String,
    },
}

/// The widget a panel draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Widget {
    /// Rows and columns; Up/Down select a row, Enter drills in.
    Table,
    /// A sparkline of one numeric column.
    Sparkline,
    /// A bar chart: one bar per row (label column, value column).
    Bar,
    /// One gauge per row: value against max, coloured by state.
    Gauge,
    /// A line chart: x column against one or more y columns.
    Line,
    /// A histogram: bucket bounds and counts (or the selected live row's buckets).
    Histogram,
    /// A session's steps on a time axis.
    Waterfall,
}

/// A size along one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// Exactly this many lines / columns.
    Fixed(u16),
    /// This share of the space.
    Percent(u16),
    /// What is left, shared with other fills.
    #[default]
    Fill,
}

impl Serialize for Size {
    /// As the file writes it: `12`, `"40%"`, `"fill"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Size::Fixed(n) => s.serialize_u16(*n),
            Size::Percent(p) => s.serialize_str(&format!("{p}%")),
            Size::Fill => s.serialize_str("fill"),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u16),
            S(String),
        }
        let bad = || serde::de::Error::custom("a size is a number of cells (12), a share (\"40%\") or \"fill\"");
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size::Fixed(n)),
            Raw::S(s) if s == "fill" => Ok(Size::Fill),
            Raw::S(s) => match s.strip_suffix('%').map(|p| p.trim().parse::<u16>()) {
                Some(Ok(p)) if (1..=100).contains(&p) => Ok(Size::Percent(p)),
                _ => s.trim().parse::<u16>().map(Size::Fixed).map_err(|_| bad()),
            },
        }
    }
}

/// A line panel's reference lines (`caps = { panel = "budgets", label = "name", value = "cap_usd" }`): one
/// horizontal line across the chart per row of another panel of the same screen, at that row's `value`, named by
/// its `label`. The spend chart draws each budget's cap this way from the budgets panel beside it, so the caps are
/// fetched once and the chart and the gauges cannot disagree.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// The `id` of the panel whose rows give the lines.
    pub panel: String,
    /// The column naming each line (a budget's name).
    pub label: String,
    /// The column holding each line's height, in the chart's unit (a budget's `cap_usd`). A row where it is not a
    /// number (a cap that is a share of inference spend, not dollars) draws no line.
    pub value: String,
    /// Rows left out: column -> the values that leave a row out (`except = { kind = ["session_cost"] }`: a cap on
    /// each session's cost is no line on a chart of spend summed over sessions).
    #[serde(default)]
    pub except: std::collections::BTreeMap<String, Vec<String>>,
}

impl Caps {
    /// Whether a row is left out, given its text cells by column name.
    pub fn leaves_out<'a>(&self, cell: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.except.iter().any(|(column, values)| cell(column).is_some_and(|v| values.iter().any(|x| x == v)))
    }
}

/// One panel: a title, where its data comes from, and how it is drawn.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    /// Shown in the panel's border.
    pub title: String,
    /// A name other panels of the screen refer to it by (a line panel's `caps`).
    pub id: Option<String>,
    /// How the data is drawn.
    pub widget: Widget,
    /// SQL over the telemetry (placeholders: `{since}`, `{window}`, `{session_id}`).
    pub sql: Option<String>,
    /// Read the live latency windows grouped by these key columns (`provider,region,model,operation`).
    pub live: Option<String>,
    /// Read this API path (GET, JSON) of the server, e.g. `/api/v1/alerts`.
    pub api: Option<String>,
    /// JSON pointer to the array of rows inside the API's answer (e.g. `/budgets`); the whole answer by default.
    pub pointer: Option<String>,
    /// Width within its row.
    #[serde(default)]
    pub width: Size,
    /// Table: the columns to show, in order (all scalar columns by default).
    pub columns: Option<Vec<String>>,
    /// The label column (bar, gauge, line x axis, histogram bucket bound).
    pub label: Option<String>,
    /// The value column (bar, gauge, sparkline, histogram count); line: the y columns, comma-separated.
    pub value: Option<String>,
    /// Line: a horizontal reference line per row of another panel of the screen (budget caps), see [`Caps`].
    pub caps: Option<Caps>,
    /// Line: one line per value of this column (e.g. `provider`), its points from the rows of that value (x from
    /// `label`), or from an array in the first `value` column (the live windows' `p99_series_ms`).
    pub series: Option<String>,
    /// Gauge: the column holding the maximum (the cap).
    pub max: Option<String>,
    /// Gauge: a column holding the filled share directly (a budget's `utilization`, computed in the unit of its
    /// cap); without it the gauge shows `value / max`.
    pub ratio: Option<String>,
    /// Gauge: a column with a state (`ok`, `warning`, `firing`/`breach`, …) that picks the colour.
    pub state: Option<String>,
    /// Table: Enter on a row opens the session screen for this column's value.
    pub drill: Option<String>,
    /// Table: Enter (a click on the web) on a row sets the [`PICKED`] placeholders named here (comma-separated,
    /// e.g. `"service,version_a,version_b"`) to the row's values in the columns of the same names.
    pub pick: Option<String>,
    /// Table: highlight the rows where this column is true (the release screen's `beyond_noise`).
    pub mark: Option<String>,
    /// Table: colour a row when this column exceeds the SLO (live panels: the server's `slo_p99_ms`).
    pub slo_column: Option<String>,
    /// Table: the SLO for `slo_column` when the source does not provide one.
    pub slo: Option<f64>,
    /// Histogram: draw the buckets of the row selected in this screen's table instead of own data.
    #[serde(default)]
    pub selected: bool,
}

impl Panel {
    /// Whether the SQL needs a session to have been picked.
    pub fn needs_session(&self) -> bool {
        self.sql.as_deref().is_some_and(|s| s.contains("{session_id}"))
    }

    /// Whether the SQL uses a [`PICKED`] placeholder, so it waits for a row to be picked.
    pub fn needs_pick(&self) -> bool {
        self.sql.as_deref().is_some_and(|s| PICKED.iter().any(|p| s.contains(&format!("{{{p}}}"))))
    }

    /// The placeholders a row of this table sets when picked (`pick`).
    pub fn picks(&self) -> Vec<&str> {
        self.pick
            .as_deref()
            .map(|p| p.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// A row of panels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Height within the screen.
    #[serde(default)]
    pub height: Size,
    /// The panels, left to right.
    pub panels: Vec<toml::Spanned<Panel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DashboardFile {
    title: String,
    #[serde(default)]
    description: String,
    rows: Vec<Row>,
}

/// A loaded, checked dashboard (one screen).
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// Where it came from (`dashboards/overview.toml` for a default).
    pub origin: PathBuf,
    /// The screen's name in the tab bar.
    pub title: String,
    /// A sentence for the help screen.
    pub description: String,
    /// The rows of panels, top to bottom.
    pub rows: Vec<Row>,
}

impl Dashboard {
    /// Parses and checks one dashboard; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Dashboard, DashboardError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_col(text, span.map(|s| s.start).unwrap_or(0));
            DashboardError::Invalid { path: origin.to_path_buf(), line, column, message }
        };
        let file: DashboardFile =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().trim().to_string()))?;
        if file.rows.is_empty() {
            return Err(invalid(None, "a dashboard needs at least one [[rows]] table".into()));
        }
        for row in &file.rows {
            if row.panels.is_empty() {
                return Err(invalid(None, "every [[rows]] needs at least one [[rows.panels]] table".into()));
            }
            for spanned in &row.panels {
                check_panel(spanned.get_ref()).map_err(|m| invalid(Some(spanned.span()), m))?;
            }
        }
        check_references(&file.rows).map_err(|(span, m)| invalid(Some(span), m))?;
        Ok(Dashboard {
            origin: origin.to_path_buf(),
            title: file.title,
            description: file.description,
            rows: file.rows,
        })
    }

    /// Reads and checks a dashboard file.
    pub fn load(path: &Path) -> Result<Dashboard, DashboardError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DashboardError::Read { path: path.to_path_buf(), source })?;
        Dashboard::parse(&text, path)
    }

    /// The short name deep links and `--dashboard` use: the file name without `.toml` (`overview`).
    pub fn name(&self) -> String {
        self.origin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| self.title.to_lowercase())
    }

    /// The panels of the dashboard in reading order.
    pub fn panels(&self) -> impl Iterator<Item = &Panel> {
        self.rows.iter().flat_map(|r| r.panels.iter().map(|p| p.get_ref()))
    }

    /// The index (in reading order) of the panel with this `id`.
    pub fn panel_index(&self, id: &str) -> Option<usize> {
        self.panels().position(|p| p.id.as_deref() == Some(id))
    }
}

fn check_panel(p: &Panel) -> Result<(), String> {
    let title = &p.title;
    if p.sql.is_none() && p.live.is_none() && p.api.is_none() && !(p.widget == Widget::Histogram && p.selected) {
        return Err(format!("panel {title:?} has no data: give it `sql`, `live` or `api`"));
    }
    if let Some(group) = &p.live {
        for part in group.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !["provider", "region", "model", "operation"].contains(&part) {
                return Err(format!(
                    "panel {title:?}: live = {group:?} names {part:?}; use provider, region, model, operation"
                ));
            }
        }
    }
    if let Some(api) = &p.api
        && !api.starts_with('/')
    {
        return Err(format!("panel {title:?}: api = {api:?} must be a path starting with '/'"));
    }
    if let Some(sql) = &p.sql {
        let mut rest = sql.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let name = &after[..close];
            let looks_like_placeholder =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if looks_like_placeholder && !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "panel {title:?}: unknown placeholder {{{name}}} in sql; use one of {{{}}}",
                    PLACEHOLDERS.join("}, {")
                ));
            }
            rest = &after[close + 1..];
        }
    }
    if matches!(p.widget, Widget::Gauge) && p.value.is_none() {
        return Err(format!("panel {title:?}: a gauge needs `value` (and usually `max`) column names"));
    }
    for name in p.picks() {
        if !PICKED.contains(&name) {
            return Err(format!(
                "panel {title:?}: pick = {:?} names {name:?}; use {}",
                p.pick.as_deref().unwrap_or(""),
                PICKED.join(", ")
            ));
        }
    }
    if p.series.is_some() && p.widget != Widget::Line {
        return Err(format!("panel {title:?}: `series` only applies to widget = \"line\""));
    }
    if p.caps.is_some() && p.widget != Widget::Line {
        return Err(format!("panel {title:?}: `caps` only applies to widget = \"line\""));
    }
    if (p.pick.is_some() || p.mark.is_some()) && p.widget != Widget::Table {
        return Err(format!("panel {title:?}: `pick` and `mark` only apply to widget = \"table\""));
    }
    if p.selected && p.widget != Widget::Histogram {
        return Err(format!("panel {title:?}: `selected = true` only applies to widget = \"histogram\""));
    }
    Ok(())
}

/// Panel ids are unique in a screen, and a line's `caps` names one of them: a panel that is not itself a chart with
/// caps (so that redrawing one never asks for the other again).
fn check_references(rows: &[Row]) -> Result<(), (Range<usize>, String)> {
    let panels: Vec<&toml::Spanned<Panel>> = rows.iter().flat_map(|r| r.panels.iter()).collect();
    for (i, spanned) in panels.iter().enumerate() {
        let p = spanned.get_ref();
        if let Some(id) = &p.id
            && panels[..i].iter().any(|q| q.get_ref().id.as_deref() == Some(id))
        {
            return Err((
                spanned.span(),
                format!("panel {:?}: id = {id:?} is used by another panel of the screen", p.title),
            ));
        }
        let Some(caps) = &p.caps else { continue };
        let target = panels.iter().map(|q| q.get_ref()).find(|q| q.id.as_deref() == Some(caps.panel.as_str()));
        match target {
            None => {
                return Err((
                    spanned.span(),
                    format!(
                        "panel {:?}: caps.panel = {:?} names no panel of this screen; give that panel `id = {:?}`",
                        p.title, caps.panel, caps.panel
                    ),
                ));
            }
            Some(q) if q.caps.is_some() => {
                return Err((
                    spanned.span(),
                    format!(
                        "panel {:?}: caps.panel = {:?} has caps of its own; name a panel of data",
                        p.title, caps.panel
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// The default screens, parsed (they are checked by tests, so this cannot fail in a released binary).
pub fn defaults() -> Result<Vec<Dashboard>, DashboardError> {
    DEFAULTS.iter().map(|(name, text)| Dashboard::parse(text, &Path::new("dashboards").join(name))).collect()
}

/// The screens for `--dashboard`: `None` = every default; a default's name (`overview`, `cost`, …) = that one;
/// anything else is read as a file (a directory loads every `.toml` in it, by file name).
pub fn resolve(choice: Option<&str>) -> Result<Vec<Dashboard>, DashboardError> {
    let Some(choice) = choice else { return defaults() };
    if let Some((name, text)) = DEFAULTS.iter().find(|(n, _)| n.trim_end_matches(".toml") == choice) {
        return Ok(vec![Dashboard::parse(text, &Path::new("dashboards").join(name))?]);
    }
    let path = Path::new(choice);
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| DashboardError::Read { path: path.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        return files.iter().map(|f| Dashboard::load(f)).collect();
    }
    if path.exists() || choice.ends_with(".toml") || choice.contains('/') {
        return Ok(vec![Dashboard::load(path)?]);
    }
    Err(DashboardError::Unknown {
        name: choice.to_string(),
        known: DEFAULTS.iter().map(|(n, _)| n.trim_end_matches(".toml")).collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_the_same_for_every_renderer() {
        let sql = "SELECT {window}, {window_seconds} FROM t WHERE ts >= {since} AND s = {session_id}";
        assert_eq!(
            fill(sql, TimeWindow::Day, Some("it's")),
            "SELECT '24h', 86400.0 FROM t WHERE ts >= (now() - INTERVAL '1 day') AND s = 'it''s'"
        );
        assert!(fill(sql, TimeWindow::Hour, None).ends_with("s = NULL"));
        let picked: Picked =
            [("service".to_string(), "shop".to_string()), ("version_a".to_string(), "1'0".to_string())].into();
        assert_eq!(
            fill_picked("f({service}, {version_a}, {version_b})", TimeWindow::Hour, None, &picked),
            "f('shop', '1''0', NULL)"
        );
        assert_eq!(TimeWindow::parse("7d"), Some(TimeWindow::Week));
        assert_eq!(TimeWindow::parse("2h"), None);
        assert_eq!(defaults().unwrap()[0].name(), "overview");
    }

    #[test]
    fn defaults_parse() {
        let all = defaults().unwrap();
        assert_eq!(
            all.iter().map(|d| d.title.as_str()).collect::<Vec<_>>(),
            ["Overview", "Cost", "Hedging", "Alerts", "Session", "Health", "Release", "Trends"]
        );
    }

    fn err(text: &str) -> String {
        Dashboard::parse(text, Path::new("my.toml")).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_name_file_line_and_problem() {
        let e = err("title = \"x\"\n[[rows]]\n[[rows.panels]]\ntitle = \"a\"\nwidget = \"pie\"\nsql = \"select 1\"\n");
        assert!(e.starts_with("my.toml:5:"), "{e}");
        assert!(e.contains("pie"), "{e}");
        let e = err("title = \"x\"\n[[rows]]\n[[rows.panels]]\ntitle = \"a\"\nwidht = 3\nwidget = \"table\"\n");
        assert!(e.starts_with("my.toml:5:1: unknown field `widht`"), "{e}");
        let e = err("title = \"x\"\n[[rows]]\n\n[[rows.panels]]\ntitle = \"a\"\nwidget = \"table\"\n");
        assert!(e.starts_with("my.toml:4:") && e.contains("has no data"), "{e}");
        let e = err(
            "title = \"x\"\n[[rows]]\n[[rows.panels]]\ntitle = \"a\"\nwidget = \"table\"\nsql = \"select {sinse}\"\n",
        );
        assert!(e.contains("unknown placeholder {sinse}"), "{e}");
        let e = err("title = \"x\"\nrows = [\n");
        assert!(e.starts_with("my.toml:"), "{e}");
        let e = err(
            "title = \"x\"\n[[rows]]\nheight = \"lots\"\n[[rows.panels]]\ntitle = \"a\"\nwidget = \"table\"\nsql = \"s\"\n",
        );
        assert!(e.starts_with("my.toml:3:") && e.contains("size"), "{e}");
        assert!(resolve(Some("nope")).unwrap_err().to_string().contains("overview"));
    }

    #[test]
    fn caps_name_a_panel_of_the_screen() {
        let line = "[[rows.panels]]\ntitle = \"spend\"\nwidget = \"line\"\nsql = \"s\"\n\
                    caps = { panel = \"budgets\", label = \"name\", value = \"cap_usd\" }\n";
        let gauge =
            "[[rows.panels]]\nid = \"budgets\"\ntitle = \"b\"\nwidget = \"gauge\"\nvalue = \"used\"\nsql = \"s\"\n";
        let ok = format!("title = \"x\"\n[[rows]]\n{line}{gauge}");
        let d = Dashboard::parse(&ok, Path::new("my.toml")).unwrap();
        assert_eq!(d.panel_index("budgets"), Some(1));
        assert_eq!(d.panels().next().unwrap().caps.as_ref().unwrap().value, "cap_usd");
        let e = err(&format!("title = \"x\"\n[[rows]]\n{line}"));
        assert!(e.starts_with("my.toml:3:") && e.contains("names no panel") && e.contains("id = \"budgets\""), "{e}");
        let e = err(&format!("title = \"x\"\n[[rows]]\n{line}{gauge}{gauge}"));
        assert!(e.contains("is used by another panel"), "{e}");
        let e = err(&ok.replace("widget = \"line\"", "widget = \"table\""));
        assert!(e.contains("`caps` only applies"), "{e}");
        let e = err(&format!(
            "title = \"x\"\n[[rows]]\n{}",
            line.replace("title = \"spend\"", "id = \"budgets\"\ntitle = \"s\"")
        ));
        assert!(e.contains("has caps of its own"), "{e}");
        // The default Trends screen's spend chart takes its caps from the budgets beside it.
        let trends = defaults().unwrap().into_iter().find(|d| d.name() == "trends").unwrap();
        let caps = trends.panels().find_map(|p| p.caps.clone()).unwrap();
        let budgets = trends.panels().nth(trends.panel_index(&caps.panel).unwrap()).unwrap();
        assert_eq!((budgets.widget, caps.value.as_str()), (Widget::Gauge, "cap_usd"));
        let kind = |k: &'static str| move |c: &str| (c == "kind").then_some(k);
        assert!(caps.leaves_out(kind("session_cost")) && !caps.leaves_out(kind("total")));
    }
}
