//! Drawing: one function from [`App`] to a frame. No I/O and no clock here, so frames are reproducible in tests.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Axis, Bar, BarChart, BarGroup, Block, Borders, Cell, Chart, Clear, Dataset, GraphType, LegendPosition, LineGauge,
    Paragraph, Row as TableRow, Sparkline, Table as TableWidget, TableState, Wrap,
};
use serde_json::Value;
use tailscope_core::display::{duration_ms, percent, usd};

use crate::app::App;
use crate::dashboard::{Caps, Panel, Size, Widget};
use crate::data::{Table, as_number};

const SPINNER: [&str; 4] = ["|", "/", "-", "\\"];
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let banner = u16::from(app.offline.is_some());
    let [top, banner_area, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(frame, app, top);
    if let Some(off) = &app.offline {
        let text = format!(
            " server {} unreachable · retrying every {}s (r: now) · {}",
            app.source_label,
            off.delay.as_secs().max(1),
            off.message
        );
        frame.render_widget(Paragraph::new(text).style(Style::new().fg(Color::White).bg(Color::Red)), banner_area);
    }
    draw_screen(frame, app, body);
    draw_status(frame, app, bottom);
    if app.help {
        draw_help(frame, app, area);
    }
}

/// The tab bar: every screen's number and title, and the time window at the right. When the tabs do not all fit
/// beside the window, a run of whole tabs around the selected one is shown, with `<` or `>` where tabs are hidden;
/// a tab is never cut.
fn draw_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let spin = if app.loading() { SPINNER[(app.tick % 4) as usize] } else { " " };
    let right = Line::from(format!("{spin} {} ", app.window.label())).right_aligned().bold();
    let labels: Vec<String> = app.screens.iter().enumerate().map(|(i, d)| format!(" {} {} ", i + 1, d.title)).collect();
    let widths: Vec<usize> = labels.iter().map(|l| Span::raw(l.as_str()).width()).collect();
    // One column apart from the window's label.
    let room = usize::from(area.width).saturating_sub(right.width() + 1);
    let marker = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
    let mut spans = Vec::new();
    if let Some((first, last)) = visible_tabs(&widths, app.current, room) {
        if first > 0 {
            spans.push(Span::styled("<", marker));
        }
        for (i, label) in labels.into_iter().enumerate().take(last + 1).skip(first) {
            spans.push(if i == app.current {
                Span::styled(label, Style::new().fg(Color::Black).bg(Color::Cyan).add_modifier(Modifier::BOLD))
            } else {
                Span::raw(label)
            });
        }
        if last + 1 < widths.len() {
            spans.push(Span::styled(">", marker));
        }
    }
    frame.render_widget(Line::from(spans), area);
    frame.render_widget(right, area);
}

/// Which tabs of these widths to show in `room` columns, as (first, last): all of them when they fit; else a run
/// around `current`, grown by a neighbour on the right, then on the left, in turn while it fits, counting a column
/// for the `<` / `>` at each end that hides tabs. The current tab is always in the run (cut by the terminal only
/// when it alone is wider than the room). `None` when there are no tabs.
pub fn visible_tabs(widths: &[usize], current: usize, room: usize) -> Option<(usize, usize)> {
    let n = widths.len();
    let last = n.checked_sub(1)?;
    let width = |a: usize, b: usize| widths[a..=b].iter().sum::<usize>() + usize::from(a > 0) + usize::from(b < last);
    if width(0, last) <= room {
        return Some((0, last));
    }
    let (mut a, mut b) = (current.min(last), current.min(last));
    loop {
        let mut grew = false;
        if b < last && width(a, b + 1) <= room {
            b += 1;
            grew = true;
        }
        if a > 0 && width(a - 1, b) <= room {
            a -= 1;
            grew = true;
        }
        if !grew {
            return Some((a, b));
        }
    }
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let line = if let Some(input) = &app.input {
        Line::from(vec![Span::styled("/", Style::new().fg(Color::Yellow)), Span::raw(format!("{input}_"))])
    } else {
        let mut spans = vec![Span::styled(
            " 1-9 screen  j/k move  ⏎ drill  / filter  t window  r refresh  ? help  q quit",
            Style::new().fg(Color::DarkGray),
        )];
        if !app.filter.is_empty() {
            spans.insert(
                0,
                Span::styled(format!(" filter: {} (Esc clears) ", app.filter), Style::new().fg(Color::Yellow)),
            );
        }
        // What the source says about the current screen's figures (servers left out of a merged view), first so
        // that a narrow terminal still shows it.
        let mut notices: Vec<&str> = app
            .panels
            .iter()
            .filter(|((screen, _), _)| *screen == app.current)
            .filter_map(|(_, state)| state.data.as_ref()?.notice.as_deref())
            .collect();
        notices.sort_unstable();
        notices.dedup();
        if !notices.is_empty() {
            spans.insert(0, Span::styled(format!(" {} ", notices.join(" · ")), Style::new().fg(Color::Red)));
        }
        if let Some(s) = &app.session {
            spans.push(Span::styled(format!("  session {s}"), Style::new().fg(Color::DarkGray)));
        }
        if let (Some(service), Some(a), Some(b)) =
            (app.picked.get("service"), app.picked.get("version_a"), app.picked.get("version_b"))
        {
            spans.push(Span::styled(format!("  {service}: {b} against {a}"), Style::new().fg(Color::DarkGray)));
        }
        Line::from(spans)
    };
    frame.render_widget(line, area);
}

fn constraint(size: Size) -> Constraint {
    match size {
        Size::Fixed(n) => Constraint::Length(n),
        Size::Percent(p) => Constraint::Percentage(p),
        Size::Fill => Constraint::Fill(1),
    }
}

fn draw_screen(frame: &mut Frame, app: &App, area: Rect) {
    let Some(dashboard) = app.screens.get(app.current) else { return };
    let rows = Layout::vertical(dashboard.rows.iter().map(|r| constraint(r.height))).split(area);
    let mut index = 0;
    for (row, row_area) in dashboard.rows.iter().zip(rows.iter()) {
        let cols = Layout::horizontal(row.panels.iter().map(|p| constraint(p.get_ref().width))).split(*row_area);
        for (panel, cell) in row.panels.iter().zip(cols.iter()) {
            draw_panel(frame, app, index, panel.get_ref(), *cell);
            index += 1;
        }
    }
}

fn draw_panel(frame: &mut Frame, app: &App, index: usize, panel: &Panel, area: Rect) {
    let focused = app.focused_panel(app.current) == Some(index);
    let state = app.panel_state(app.current, index);
    let mut block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(format!(" {} ", panel.title), Style::new().add_modifier(Modifier::BOLD)));
    if focused {
        block = block.border_style(Style::new().fg(Color::Cyan));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if panel.selected {
        draw_selected_histogram(frame, app, inner);
        return;
    }
    let message = |frame: &mut Frame, text: String, style: Style| {
        frame.render_widget(Paragraph::new(text).style(style).wrap(Wrap { trim: true }), inner);
    };
    if let Some(idle) = &state.idle {
        return message(frame, idle.clone(), Style::new().fg(Color::DarkGray));
    }
    if let Some(error) = &state.error {
        return message(frame, error.clone(), Style::new().fg(Color::Red));
    }
    let Some(table) = &state.data else {
        return message(frame, "loading…".into(), Style::new().fg(Color::DarkGray));
    };
    if table.rows.is_empty() {
        return message(frame, format!("no data in the last {}", app.window.label()), Style::new().fg(Color::DarkGray));
    }
    match panel.widget {
        Widget::Table => draw_table(frame, app, panel, table, focused, inner),
        Widget::Bar => draw_bar(frame, panel, table, inner),
        Widget::Gauge => draw_gauges(frame, panel, table, inner),
        Widget::Sparkline => draw_sparkline(frame, panel, table, inner),
        Widget::Line => draw_line(frame, panel, table, &cap_lines(app, panel), inner),
        Widget::Histogram => {
            let buckets = table_buckets(panel, table);
            draw_histogram(frame, &buckets, inner);
        }
        Widget::Waterfall => draw_waterfall(frame, table, inner),
    }
}

/// A cell as display text, formatted by what the column name says it holds.
pub fn format_cell(column: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Array(items) => sparkline_text(items),
        Value::Object(_) => v.to_string(),
        Value::String(s) => {
            // RFC 3339 timestamps: the date and time are what fits a cell.
            if s.len() >= 19 && s.as_bytes().get(10) == Some(&b'T') && s.as_bytes().get(4) == Some(&b'-') {
                format!("{} {}", &s[5..10], &s[11..19])
            } else if is_money(column) || column.ends_with("_ms") {
                s.parse::<f64>().map(|x| format_number(column, x)).unwrap_or_else(|_| s.clone())
            } else {
                s.clone()
            }
        }
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !is_money(column) && !column.ends_with("_ms") && !is_ratio(column) => i.to_string(),
            (_, Some(x)) => format_number(column, x),
            _ => n.to_string(),
        },
    }
}

/// Columns holding a fraction, shown as a percentage: `*_rate`, `*_share`, `share`, `utilization`.
fn is_ratio(column: &str) -> bool {
    column.ends_with("_rate") || column.ends_with("_share") || column == "share" || column.ends_with("utilization")
}

/// Columns holding dollars: `*_usd` and `usd_per_*`.
fn is_money(column: &str) -> bool {
    column.ends_with("_usd") || column.starts_with("usd_per_")
}

/// A number as its column name says: latencies (`*_ms`), money, shares, rates (`rate`, per second) and
/// percentages (`*_pct`) through the one formatting function of each (`tailscope_core::display`).
fn format_number(column: &str, x: f64) -> String {
    if column.ends_with("_ms") {
        duration_ms(x)
    } else if is_money(column) {
        usd(x)
    } else if is_ratio(column) {
        percent(x)
    } else if column == "rate" {
        format!("{x:.1}/s")
    } else if column.ends_with("_pct") {
        percent(x / 100.0)
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn header(column: &str) -> String {
    match column {
        "error_rate" => "err%".into(),
        "p99_series_ms" => "p99 trend".into(),
        "usd_per_1m_tokens" => "per 1M tok".into(),
        c => c.trim_end_matches("_ms").replace("_usd", " $").replace('_', " "),
    }
}

/// Numbers as block glyphs scaled to their own maximum (NULL = blank).
pub fn sparkline_text(items: &[Value]) -> String {
    let nums: Vec<Option<f64>> = items.iter().map(as_number).collect();
    let max = nums.iter().flatten().cloned().fold(0.0_f64, f64::max);
    nums.iter()
        .map(|n| match n {
            None => ' ',
            Some(_) if max <= 0.0 => BARS[0],
            Some(x) => BARS[((x / max) * 7.0).round().clamp(0.0, 7.0) as usize],
        })
        .collect()
}

fn table_columns(panel: &Panel, table: &Table) -> Vec<usize> {
    match &panel.columns {
        Some(names) => names.iter().filter_map(|n| table.column(n)).collect(),
        None => (0..table.columns.len())
            .filter(|&c| !table.rows.iter().any(|r| matches!(r[c], Value::Object(_))) && table.columns[c] != "buckets")
            .collect(),
    }
}

fn draw_table(frame: &mut Frame, app: &App, panel: &Panel, table: &Table, focused: bool, area: Rect) {
    let cols = table_columns(panel, table);
    let visible = app.visible_rows(table);
    let slo = panel.slo.or(table.slo).filter(|s| *s > 0.0);
    let slo_col = panel.slo_column.as_deref().and_then(|c| table.column(c));
    let mark_col = panel.mark.as_deref().and_then(|c| table.column(c));
    let text: Vec<Vec<String>> = visible
        .iter()
        .map(|&r| cols.iter().map(|&c| format_cell(&table.columns[c], &table.rows[r][c])).collect())
        .collect();
    let headers: Vec<String> = cols.iter().map(|&c| header(&table.columns[c])).collect();
    let numeric: Vec<bool> =
        cols.iter().map(|&c| visible.iter().take(50).any(|&r| matches!(table.rows[r][c], Value::Number(_)))).collect();
    // A text column at the end (the Alerts screen's message) takes the width the others leave, and wraps.
    let last = cols.len().saturating_sub(1);
    let flexible = cols.last().is_some_and(|&c| {
        !numeric[last] && visible.iter().take(50).any(|&r| matches!(table.rows[r][c], Value::String(_)))
    });
    let mut lengths: Vec<u16> = (0..cols.len())
        .map(|i| {
            let w = text.iter().take(500).map(|r| r[i].chars().count()).max().unwrap_or(0).max(headers[i].len());
            let cap = if flexible && i == last { usize::from(u16::MAX) } else { MAX_COLUMN_WIDTH };
            w.min(cap) as u16
        })
        .collect();
    let available = area.width.saturating_sub(cols.len().saturating_sub(1) as u16);
    if flexible {
        let others: u32 = lengths[..last].iter().map(|w| u32::from(*w)).sum();
        let natural = lengths[last];
        let left = u16::try_from(u32::from(available).saturating_sub(others)).unwrap_or(u16::MAX);
        lengths[last] = left.max(natural.min(available / 3)).min(natural);
        let rest = available.saturating_sub(lengths[last]);
        fit_widths(&mut lengths[..last], rest);
    } else {
        fit_widths(&mut lengths, available);
    }
    let widths: Vec<Constraint> = lengths.iter().copied().map(Constraint::Length).collect();
    let align = |i: usize, s: String| -> Cell<'static> {
        if numeric[i] { Cell::from(Line::from(s).right_aligned()) } else { Cell::from(s) }
    };
    let rows: Vec<TableRow> = visible
        .iter()
        .zip(text)
        .map(|(&r, cells)| {
            let breach = match (slo, slo_col) {
                (Some(slo), Some(c)) => table.number(r, c).is_some_and(|v| v > slo),
                _ => false,
            };
            let mut height = 1;
            let cells: Vec<Cell> = cells
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let width = usize::from(lengths[i]);
                    if flexible && i == last {
                        let lines = wrap(&s, width, MAX_CELL_LINES);
                        height = lines.len().max(1) as u16;
                        Cell::from(Text::from(lines.into_iter().map(Line::from).collect::<Vec<_>>()))
                    } else {
                        align(i, ellipsize(&s, width))
                    }
                })
                .collect();
            let row = TableRow::new(cells).height(height);
            let marked = mark_col.is_some_and(|c| table.rows[r][c] == Value::Bool(true));
            if breach {
                row.style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
            } else if marked {
                row.style(Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD))
            } else {
                row
            }
        })
        .collect();
    let head = TableRow::new(headers.into_iter().enumerate().map(|(i, s)| align(i, s)))
        .style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD));
    let widget = TableWidget::new(rows, widths)
        .header(head)
        .column_spacing(1)
        .row_highlight_style(Style::new().bg(Color::DarkGray).add_modifier(Modifier::BOLD));
    let mut state = TableState::default();
    if focused && !visible.is_empty() {
        state.select(Some((*app.selected.get(&app.current).unwrap_or(&0)).min(visible.len() - 1)));
    }
    frame.render_stateful_widget(widget, area, &mut state);
}

/// The widest a table column is drawn, but a text column at the end, which takes what the others leave.
const MAX_COLUMN_WIDTH: usize = 28;
/// The most lines a wrapped cell takes; what does not fit ends in `…`.
const MAX_CELL_LINES: usize = 3;

/// `text` cut to `width` characters, ending in `…` when something was cut.
fn ellipsize(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `text` broken into lines of at most `width` characters at spaces (a longer word is split; runs of spaces inside
/// a line are kept), at most `max_lines` of them; the last ends in `…` when text was left over.
pub fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    if width == 0 || max_lines == 0 {
        return Vec::new();
    }
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    let mut started = false;
    // Splitting at single spaces keeps runs of them as empty words, so joining with one space restores them.
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        if started && len + 1 + word.len() <= width {
            line.push(' ');
            line.extend(&word);
            len += 1 + word.len();
            continue;
        }
        if started {
            lines.push(std::mem::take(&mut line));
            started = false;
        }
        if word.is_empty() {
            continue; // a wrapped line does not start with spaces
        }
        while word.len() > width {
            let rest = word.split_off(width);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        line.extend(&word);
        len = word.len();
        started = true;
    }
    if started || lines.is_empty() {
        lines.push(line);
    }
    if lines.len() > max_lines {
        let rest = lines.split_off(max_lines - 1).join(" ");
        lines.push(ellipsize(&rest, width));
    }
    lines
}

/// Shrinks the widest columns one cell at a time until they fit `available`. Leaving an over-full set of
/// lengths to the layout solver would let it pick which column to cut, and its choice is not stable between runs.
fn fit_widths(lengths: &mut [u16], available: u16) {
    let mut total: u32 = lengths.iter().map(|w| u32::from(*w)).sum();
    while total > u32::from(available) {
        let Some(widest) = lengths.iter().enumerate().max_by_key(|(i, w)| (**w, std::cmp::Reverse(*i))).map(|(i, _)| i)
        else {
            return;
        };
        if lengths[widest] <= 1 {
            return;
        }
        lengths[widest] -= 1;
        total -= 1;
    }
}

fn column_or(table: &Table, name: Option<&str>, want_number: bool) -> Option<usize> {
    if let Some(n) = name {
        return table.column(n);
    }
    (0..table.columns.len()).find(|&c| {
        table.rows.first().is_some_and(|r| matches!(r[c], Value::Number(_)) == want_number && !r[c].is_null())
    })
}

fn draw_bar(frame: &mut Frame, panel: &Panel, table: &Table, area: Rect) {
    let (Some(lc), Some(vc)) =
        (column_or(table, panel.label.as_deref(), false), column_or(table, panel.value.as_deref(), true))
    else {
        return frame.render_widget(Paragraph::new("bar: needs a label and a value column").red(), area);
    };
    let value_name = table.columns[vc].clone();
    let max = (0..table.rows.len()).filter_map(|r| table.number(r, vc)).fold(0.0_f64, f64::max);
    let label_width = (area.width / 3).max(4) as usize;
    let bars: Vec<Bar> = (0..table.rows.len().min(area.height as usize))
        .map(|r| {
            let v = table.number(r, vc).unwrap_or(0.0);
            let label: String = format_cell(&table.columns[lc], &table.rows[r][lc]).chars().take(label_width).collect();
            Bar::default()
                .value(if max > 0.0 { (v / max * 1000.0).round() as u64 } else { 0 })
                .label(Line::from(format!("{label:<label_width$}")))
                .text_value(format_number(&value_name, v))
                .style(Style::new().fg(Color::Cyan))
                .value_style(Style::new().fg(Color::Black).bg(Color::Cyan))
        })
        .collect();
    let chart = BarChart::default()
        .direction(Direction::Horizontal)
        .bar_width(1)
        .bar_gap(0)
        .max(1000)
        .data(BarGroup::default().bars(&bars));
    frame.render_widget(chart, area);
}

fn state_color(state: Option<&str>, ratio: f64) -> Color {
    match state.map(str::to_ascii_lowercase).as_deref() {
        Some("firing" | "breach" | "breached" | "exceeded" | "critical") => Color::Red,
        Some("warning" | "warn" | "projected") => Color::Yellow,
        Some("ok" | "resolved") => Color::Green,
        _ if ratio >= 1.0 => Color::Red,
        _ if ratio >= 0.8 => Color::Yellow,
        _ => Color::Green,
    }
}

/// One gauge per row: `label  value / max  → projected  [state]` over a bar. The bar's fill and percentage are the
/// `ratio` column when the panel names one (a budget's `utilization`, in the unit of its cap), else value / max;
/// the bar stops at full, the percentage does not.
fn draw_gauges(frame: &mut Frame, panel: &Panel, table: &Table, area: Rect) {
    let lc = column_or(table, panel.label.as_deref(), false);
    let vc = panel.value.as_deref().and_then(|v| table.column(v));
    let mc = panel.max.as_deref().and_then(|m| table.column(m));
    let sc = panel.state.as_deref().and_then(|s| table.column(s));
    let rc = panel.ratio.as_deref().and_then(|r| table.column(r));
    let proj = table.column("projected").or_else(|| table.column("projected_usd"));
    let Some(vc) = vc else {
        let name = panel.value.as_deref().unwrap_or("value");
        return frame.render_widget(Paragraph::new(format!("gauge: no column {name:?} in the data")).red(), area);
    };
    if let (Some(name), None) = (panel.ratio.as_deref(), rc) {
        return frame.render_widget(Paragraph::new(format!("gauge: no column {name:?} in the data")).red(), area);
    }
    let per = 2u16;
    let n = ((area.height / per) as usize).min(table.rows.len());
    let areas = Layout::vertical(vec![Constraint::Length(per); n]).split(area);
    let cell = |r: usize, c: usize| format_cell(&table.columns[c], &table.rows[r][c]);
    for (r, a) in areas.iter().enumerate() {
        let ratio = match rc {
            Some(c) => table.number(r, c).unwrap_or(0.0),
            None => {
                let value = table.number(r, vc).unwrap_or(0.0);
                let max = mc.and_then(|c| table.number(r, c)).unwrap_or(0.0);
                if max > 0.0 { value / max } else { 0.0 }
            }
        };
        let state = sc.and_then(|c| table.rows[r][c].as_str());
        let color = state_color(state, ratio);
        let label = lc.map(|c| cell(r, c)).unwrap_or_default();
        let mut text = format!("{label}  {}", cell(r, vc));
        if let Some(c) = mc {
            text.push_str(&format!(" / {}", cell(r, c)));
        }
        if let Some(c) = proj.filter(|&c| !table.rows[r][c].is_null()) {
            text.push_str(&format!("  → {}", cell(r, c)));
        }
        if let Some(s) = state {
            text.push_str(&format!("  [{s}]"));
        }
        let [l1, l2] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(*a);
        frame.render_widget(Line::from(text).fg(color), l1);
        let ratio = if ratio.is_finite() { ratio } else { 0.0 };
        let gauge = LineGauge::default()
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!("{:>5}", percent(ratio)))
            .filled_style(Style::new().fg(color))
            .unfilled_style(Style::new().fg(Color::DarkGray));
        frame.render_widget(gauge, l2);
    }
}

fn draw_sparkline(frame: &mut Frame, panel: &Panel, table: &Table, area: Rect) {
    let Some(vc) = column_or(table, panel.value.as_deref(), true) else { return };
    let vals: Vec<f64> = (0..table.rows.len()).map(|r| table.number(r, vc).unwrap_or(0.0)).collect();
    let max = vals.iter().cloned().fold(0.0_f64, f64::max);
    let data: Vec<u64> = vals.iter().map(|v| if max > 0.0 { (v / max * 100.0) as u64 } else { 0 }).collect();
    let [label, spark] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let last = vals.last().copied().unwrap_or(0.0);
    let name = &table.columns[vc];
    frame.render_widget(
        Line::from(format!("last {}  max {}", format_number(name, last), format_number(name, max))),
        label,
    );
    frame.render_widget(Sparkline::default().data(&data).max(100).style(Style::new().fg(Color::Cyan)), spark);
}

/// At most this many lines in one chart (the first in the data's order): more cannot be told apart.
const MAX_LINES: usize = 8;

/// The lines of a line panel, named: one per `value` column, or with `series` one per value of that column, its
/// points from the rows of that value (x from `label`, else their order) or from an array cell (the live windows'
/// `p99_series_ms`, one point per time bucket).
fn line_series(panel: &Panel, table: &Table, xc: Option<usize>, ys: &[usize]) -> Vec<(String, Vec<(f64, f64)>)> {
    let Some((sc, &yc)) = panel.series.as_deref().and_then(|s| table.column(s)).zip(ys.first()) else {
        return ys
            .iter()
            .map(|&c| {
                let pts = (0..table.rows.len())
                    .filter_map(|r| {
                        let x = xc.and_then(|x| table.number(r, x)).unwrap_or(r as f64);
                        table.number(r, c).map(|y| (x, y))
                    })
                    .collect();
                (header(&table.columns[c]), pts)
            })
            .collect();
    };
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in 0..table.rows.len() {
        let name = match &table.rows[r][sc] {
            Value::String(s) => s.clone(),
            other => format_cell(&table.columns[sc], other),
        };
        let i = match lines.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None if lines.len() < MAX_LINES => {
                lines.push((name, Vec::new()));
                lines.len() - 1
            }
            None => continue,
        };
        let points = &mut lines[i].1;
        match &table.rows[r][yc] {
            Value::Array(items) => {
                points.extend(items.iter().enumerate().filter_map(|(k, v)| Some((k as f64, as_number(v)?))));
            }
            _ => {
                let x = xc.and_then(|x| table.number(r, x)).unwrap_or(points.len() as f64);
                points.extend(table.number(r, yc).map(|y| (x, y)));
            }
        }
    }
    lines
}

/// The colour of reference lines (budget caps): one colour for all, apart from the lines of data.
const CAP_COLOR: Color = Color::Red;

/// A line panel's reference lines, from the rows of the panel its `caps` names on the current screen: (name, height,
/// the column the height came from). Rows whose value is not a finite number (a share cap) draw none.
fn cap_lines(app: &App, panel: &Panel) -> Vec<(String, f64, String)> {
    let Some(caps @ Caps { panel: id, label, value, .. }) = &panel.caps else { return Vec::new() };
    let Some(index) = app.screens.get(app.current).and_then(|d| d.panel_index(id)) else { return Vec::new() };
    let Some(table) = app.panels.get(&(app.current, index)).and_then(|s| s.data.as_ref()) else { return Vec::new() };
    let (Some(lc), Some(vc)) = (table.column(label), table.column(value)) else { return Vec::new() };
    (0..table.rows.len())
        .filter(|&r| !caps.leaves_out(|c| table.column(c).and_then(|c| table.rows[r][c].as_str())))
        .filter_map(|r| {
            let y = table.number(r, vc).filter(|y| y.is_finite())?;
            Some((format_cell(label, &table.rows[r][lc]), y, value.clone()))
        })
        .collect()
}

fn draw_line(frame: &mut Frame, panel: &Panel, table: &Table, caps: &[(String, f64, String)], area: Rect) {
    let xc = panel.label.as_deref().and_then(|l| table.column(l));
    let ys: Vec<usize> = match &panel.value {
        Some(v) => v.split(',').filter_map(|n| table.column(n.trim())).collect(),
        None => (0..table.columns.len()).filter(|&c| Some(c) != xc && table.number(0, c).is_some()).collect(),
    };
    let colors =
        [Color::Cyan, Color::Magenta, Color::Yellow, Color::Green, Color::Blue, Color::White, Color::LightCyan];
    let named = line_series(panel, table, xc, &ys);
    let all = named.iter().flat_map(|(_, pts)| pts);
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0_f64);
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    // The caps are on the chart even when spend is far below them: how far is what the chart is for.
    for (_, cap, _) in caps {
        y1 = y1.max(*cap);
    }
    let cap_points: Vec<[(f64, f64); 2]> = caps.iter().map(|(_, cap, _)| [(x0, *cap), (x1, *cap)]).collect();
    let mut datasets: Vec<Dataset> = named
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| {
            Dataset::default()
                .name(name.clone())
                .graph_type(GraphType::Line)
                .style(Style::new().fg(colors[i % colors.len()]))
                .data(pts)
        })
        .collect();
    // Unnamed: `label_caps` names each on its line, which the legend could only do by colour.
    datasets.extend(cap_points.iter().map(|pts| {
        Dataset::default()
            .marker(ratatui::symbols::Marker::Dot)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(CAP_COLOR))
            .data(pts)
    }));
    let name = ys.first().map(|&c| table.columns[c].clone()).unwrap_or_default();
    let top = y1 * 1.1 + f64::EPSILON;
    // The legend names the lines where it takes at most a third of the width and half the height; with caps it
    // stays at the left, clear of their labels at the right end.
    let legend = if caps.is_empty() { LegendPosition::TopRight } else { LegendPosition::TopLeft };
    let chart = Chart::new(datasets)
        .x_axis(Axis::default().bounds([x0, x1]))
        .y_axis(Axis::default().bounds([0.0, top]).labels(vec![Line::from("0"), Line::from(format_number(&name, y1))]))
        .legend_position(Some(legend))
        .hidden_legend_constraints((Constraint::Ratio(1, 3), Constraint::Ratio(1, 2)));
    frame.render_widget(chart, area);
    label_caps(frame, caps, top, area);
}

/// Writes each cap's name and figure at the right end of its line (the legend is hidden in small panels, and
/// names the lines only by colour). The chart's plot has the panel's full height, as the x axis has no labels, and
/// a dot-marker line at height y is on the row ratatui's canvas puts it: `round((top - y) * (rows - 1) / top)`
/// from the top. Caps on the same row share one label.
fn label_caps(frame: &mut Frame, caps: &[(String, f64, String)], top: f64, area: Rect) {
    if area.height == 0 || area.width < 4 || top <= 0.0 {
        return;
    }
    let mut rows: Vec<(u16, Vec<String>)> = Vec::new();
    for (name, cap, column) in caps {
        let offset = ((top - cap) * f64::from(area.height - 1) / top).round().clamp(0.0, f64::from(area.height - 1));
        let y = area.y + offset as u16;
        let text = format!("{name} {}", format_number(column, *cap));
        match rows.iter_mut().find(|(r, _)| *r == y) {
            Some((_, names)) => names.push(text),
            None => rows.push((y, vec![text])),
        }
    }
    for (y, names) in rows {
        // At most two thirds of the width, so that the line itself shows left of its label.
        let text = ellipsize(&format!(" {} ", names.join(" · ")), usize::from(area.width) * 2 / 3);
        let width = u16::try_from(text.chars().count()).unwrap_or(area.width).min(area.width);
        let at = Rect { x: area.right() - width, y, width, height: 1 };
        frame.render_widget(Line::from(text).style(Style::new().fg(CAP_COLOR).add_modifier(Modifier::BOLD)), at);
    }
}

fn table_buckets(panel: &Panel, table: &Table) -> Vec<(f64, u64)> {
    let lc = column_or(table, panel.label.as_deref(), true);
    let vc = panel.value.as_deref().and_then(|v| table.column(v)).or_else(|| table.column("count"));
    match (lc, vc) {
        (Some(l), Some(v)) => {
            (0..table.rows.len()).filter_map(|r| Some((table.number(r, l)?, table.number(r, v)? as u64))).collect()
        }
        _ => Vec::new(),
    }
}

fn draw_selected_histogram(frame: &mut Frame, app: &App, area: Rect) {
    let screen = app.current;
    let found = app.selected_row(screen).and_then(|(panel, row)| {
        let state = app.panels.get(&(screen, panel))?;
        let table = state.data.as_ref()?;
        let c = table.column("buckets")?;
        let name = ["provider", "region", "model"]
            .iter()
            .filter_map(|k| table.column(k).and_then(|c| table.rows[row][c].as_str()))
            .filter(|s| *s != "*")
            .collect::<Vec<_>>()
            .join(" / ");
        let buckets: Vec<(f64, u64)> = table.rows[row][c]
            .as_array()?
            .iter()
            .filter_map(|b| Some((as_number(b.get("le_ms")?)?, as_number(b.get("count")?)? as u64)))
            .collect();
        Some((name, buckets))
    });
    match found {
        Some((name, buckets)) if !buckets.is_empty() => {
            let [title, chart] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
            frame.render_widget(
                Line::from(format!("{name}: count per latency bucket (upper bound)")).dark_gray(),
                title,
            );
            draw_histogram(frame, &buckets, chart);
        }
        _ => frame.render_widget(
            Paragraph::new("select a row with live figures (needs a server and a window of 5m or 1h)").dark_gray(),
            area,
        ),
    }
}

fn draw_histogram(frame: &mut Frame, buckets: &[(f64, u64)], area: Rect) {
    if buckets.is_empty() || area.width == 0 {
        return;
    }
    let n = buckets.len() as u16;
    // Wide enough for a bound with its unit (`256 ms`, `16.4 s`) when the area allows.
    let width = ((area.width.saturating_sub(n)) / n).clamp(1, 7);
    let bars: Vec<Bar> = buckets
        .iter()
        .map(|(le, count)| {
            Bar::default()
                .value(*count)
                .label(Line::from(duration_ms(*le)))
                .text_value(count.to_string())
                .style(Style::new().fg(Color::Magenta))
        })
        .collect();
    let chart = BarChart::default().bar_width(width).bar_gap(1).data(BarGroup::default().bars(&bars));
    frame.render_widget(chart, area);
}

fn kind_color(kind: &str) -> Color {
    match kind {
        "llm" => Color::Magenta,
        "tool" => Color::Yellow,
        "memory" => Color::Cyan,
        _ => Color::Gray,
    }
}

fn draw_waterfall(frame: &mut Frame, table: &Table, area: Rect) {
    let col = |n: &str| table.column(n);
    let (Some(oc), Some(dc)) = (col("offset_ms"), col("duration_ms")) else {
        return frame.render_widget(Paragraph::new("waterfall: needs offset_ms and duration_ms columns").red(), area);
    };
    let text = |r: usize, name: &str| -> String {
        col(name).map(|c| format_cell(name, &table.rows[r][c])).unwrap_or_else(|| "-".into())
    };
    let total = (0..table.rows.len())
        .filter_map(|r| Some(table.number(r, oc)? + table.number(r, dc)?))
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let wide = area.width >= 90;
    let fixed: u16 = if wide { 14 + 7 + 8 + 3 + 14 + 7 + 8 + 3 } else { 14 + 7 + 8 + 2 };
    let bar_w = area.width.saturating_sub(fixed).max(8) as usize;
    let slowest = (0..table.rows.len())
        .max_by(|&a, &b| table.number(a, dc).unwrap_or(0.0).total_cmp(&table.number(b, dc).unwrap_or(0.0)));
    let mut lines = Vec::new();
    let summary = match slowest {
        Some(s) => format!(
            "{} steps over {} · slowest: {} ({}) {}",
            table.rows.len(),
            format_number("x_ms", total),
            text(s, "name"),
            text(s, "kind"),
            text(s, "duration_ms")
        ),
        None => String::new(),
    };
    lines.push(Line::from(summary).bold());
    let axis =
        format!("{:<14} {:<6} {:>8} 0{:>w$}", "step", "kind", "took", format_number("x_ms", total), w = bar_w - 1);
    lines.push(Line::from(axis).dark_gray());
    for r in 0..table.rows.len().min(area.height.saturating_sub(2) as usize) {
        let kind = text(r, "kind");
        let off = table.number(r, oc).unwrap_or(0.0);
        let dur = table.number(r, dc).unwrap_or(0.0);
        let start = ((off / total) * bar_w as f64).floor() as usize;
        let len = (((dur / total) * bar_w as f64).round() as usize).max(1).min(bar_w - start.min(bar_w - 1));
        let start = start.min(bar_w - 1);
        let name: String = text(r, "name").chars().take(14).collect();
        let failed = col("status_code").and_then(|c| table.rows[r][c].as_str()) == Some("error");
        let name_style = if failed { Style::new().fg(Color::Red) } else { Style::new() };
        let mut spans = vec![
            Span::styled(format!("{name:<14} "), name_style),
            Span::styled(format!("{kind:<6} "), Style::new().fg(kind_color(&kind))),
            Span::raw(format!("{:>8} ", text(r, "duration_ms"))),
            Span::raw(" ".repeat(start)),
            Span::styled("█".repeat(len), Style::new().fg(kind_color(&kind))),
            Span::raw(" ".repeat(bar_w - start - len)),
        ];
        if wide {
            let provider: String = text(r, "provider").chars().take(14).collect();
            spans.push(Span::raw(format!(" {provider:<14} {:>7} {:>8}", text(r, "tokens"), text(r, "cost_usd"))));
        }
        lines.push(Line::from(spans));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// The help overlay: keys, the source and each screen's description, wrapped to the overlay's width. When it is
/// taller than the terminal allows it scrolls (↑↓ j k, PgUp PgDn, g G); the bottom border says where one is.
fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let w = area.width.saturating_sub(4).min(100).max(area.width.min(24));
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let plain = Style::new();
    let dim = Style::new().fg(Color::DarkGray);
    let mut logical: Vec<(String, Style)> = vec![
        ("1-9, Tab     switch screen".into(), bold),
        ("↑↓ / j k     move the selection (PgUp PgDn g G)".into(), plain),
        ("Enter        drill into the selected session (Release: compare the selected pair)".into(), plain),
        ("Esc          back / clear the filter".into(), plain),
        ("/            filter rows (provider, region, model, …)".into(), plain),
        (format!("t            time window (now {}: 5m, 1h, 24h, 7d)", app.window.label()), plain),
        ("r            refresh now        q  quit".into(), plain),
        ("in this help ↑↓ j k PgUp PgDn g G scroll; any other key closes it".into(), plain),
        (String::new(), plain),
        (format!("source: {}", app.source_label), dim),
    ];
    for (i, d) in app.screens.iter().enumerate() {
        logical.push((format!("{} {}: {}", i + 1, d.title, d.description), dim));
    }
    let inner_width = usize::from(w.saturating_sub(2));
    let lines: Vec<Line> = logical
        .iter()
        .flat_map(|(text, style)| wrap(text, inner_width, usize::MAX).into_iter().map(move |l| Line::styled(l, *style)))
        .collect();
    let most = area.height.saturating_sub(2).max(area.height.min(5));
    let h = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX).min(most);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let visible = usize::from(h.saturating_sub(2));
    let max_scroll = lines.len().saturating_sub(visible);
    app.help_max_scroll.set(u16::try_from(max_scroll).unwrap_or(u16::MAX));
    let top = usize::from(app.help_scroll).min(max_scroll);
    let mut block = Block::default().borders(Borders::ALL).title(" help · any other key closes ");
    if max_scroll > 0 {
        let shown = format!(
            " lines {}-{} of {}{} ",
            top + 1,
            (top + visible).min(lines.len()),
            lines.len(),
            if top < max_scroll { " · ↓ more" } else { "" }
        );
        block = block.title_bottom(Line::from(shown).right_aligned());
    }
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines.into_iter().skip(top).take(visible).collect::<Vec<_>>())
            .alignment(Alignment::Left)
            .block(block),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_spaces_keeps_inner_runs_and_ellipsizes_the_last_line() {
        assert_eq!(wrap("1-9, Tab     switch screen", 40, 9), ["1-9, Tab     switch screen"]);
        assert_eq!(wrap("aaa bbb ccc", 7, 9), ["aaa bbb", "ccc"]);
        assert_eq!(wrap("abcdefgh", 3, 9), ["abc", "def", "gh"]);
        assert_eq!(wrap("aaa bbb ccc ddd eee", 7, 2), ["aaa bbb", "ccc dd…"]);
        assert_eq!(wrap("aaa bbb ccc ddd", 7, 1), ["aaa bb…"]);
        assert_eq!(wrap("", 5, 3), [""]);
        assert_eq!(ellipsize("$1,210.00", 6), "$1,21…");
    }

    #[test]
    fn tabs_that_do_not_fit_scroll_around_the_selected_one() {
        let w = [12, 8, 11, 10, 11, 10, 11, 10];
        assert_eq!(visible_tabs(&w, 3, 200), Some((0, 7)));
        assert_eq!(visible_tabs(&w, 3, 83), Some((0, 7)), "exactly the room: no markers");
        // The last tab: its left neighbours, and one column for `<`.
        assert_eq!(visible_tabs(&w, 7, 74), Some((1, 7)));
        // The first: its right neighbours and `>`.
        assert_eq!(visible_tabs(&w, 0, 74), Some((0, 6)));
        // In the middle both markers count.
        assert_eq!(visible_tabs(&w, 4, 40), Some((3, 5)));
        // Too narrow for its neighbours: the current one alone.
        assert_eq!(visible_tabs(&w, 2, 5), Some((2, 2)));
        assert_eq!(visible_tabs(&[], 0, 80), None);
        assert_eq!(visible_tabs(&w, 99, 12), Some((7, 7)), "an index past the end is the last tab");
    }
}
