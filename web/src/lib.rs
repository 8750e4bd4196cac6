//! tailscope's web UI: the same `dashboards/*.toml` screens the terminal dashboard draws, drawn by a page in the
//! browser. One definition, two renderers: the screens, the time windows and what each SQL placeholder stands for
//! come from [`tailscope_core::dashboard`], served as JSON by `GET /api/v1/dashboards`; the page fetches every
//! figure from the API the terminal uses (`/api/v1/query`, `/api/v1/live`, `/api/v1/alerts`), with the key the
//! person signed in with. There is no second query path.
//!
//! The page, its script, its styles and the one vendored library (uPlot, charts) are compiled into the binary
//! ([`assets`]) and served with a strict Content-Security-Policy: scripts and styles from this origin only, no
//! inline script, no `eval`, no other origin to connect to or frame the page.

pub mod assets;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::sync::Arc;
use tailscope_core::dashboard::{Dashboard, Row, TimeWindow};

/// The web UI's routes, to merge into the API server: `/` (the page), `/ui/...` (its assets) and
/// `GET /api/v1/dashboards` (the screens it draws).
pub fn router(screens: Vec<Dashboard>) -> Router {
    let catalog = Arc::new(ScreensAnswer::new(&screens));
    Router::new().route("/api/v1/dashboards", get(dashboards)).with_state(catalog).merge(assets::router())
}

/// The API path prefix whose answers carry data.
const API_PREFIX: &str = "/api/";

/// `router` with every answer under `/api/` marked `Cache-Control: no-store` (figures and key-scoped data must not
/// linger in a browser's or a proxy's cache, where the next user of the machine or a shared cache would find them)
/// and `X-Content-Type-Options: nosniff` (a JSON or CSV answer holding telemetry text is never sniffed into HTML).
/// A route that set its own `Cache-Control` keeps it.
pub fn api_answers_not_stored(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            let api = request.uri().path().starts_with(API_PREFIX);
            let mut response = next.run(request).await;
            if api {
                let headers = response.headers_mut();
                if !headers.contains_key(http::header::CACHE_CONTROL) {
                    headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
                }
                headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
            }
            response
        },
    ))
}

/// `GET /api/v1/dashboards`: the screens and the time windows, as the page needs them.
#[derive(Debug, Serialize)]
struct ScreensAnswer {
    /// The time windows, shortest first, with what each placeholder stands for in each.
    windows: Vec<WindowAnswer>,
    /// The screens, in tab order.
    screens: Vec<ScreenAnswer>,
    /// The placeholders a table's `pick` sets, as deep links name them (`service`, `version_a`, `version_b`).
    picked: &'static [&'static str],
}

#[derive(Debug, Serialize)]
struct WindowAnswer {
    label: &'static str,
    seconds: u64,
    /// The live window (`/api/v1/live?window=`) that covers it, or null: then panels with `live` use their SQL.
    live: Option<&'static str>,
    /// Placeholder name (without braces) -> SQL text; `{session_id}` is the picked session as a SQL literal.
    substitutions: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct ScreenAnswer {
    /// Deep links name a screen by this (`overview`).
    name: String,
    title: String,
    description: String,
    rows: Vec<Row>,
}

impl ScreensAnswer {
    fn new(screens: &[Dashboard]) -> ScreensAnswer {
        let windows = TimeWindow::ALL
            .into_iter()
            .map(|w| WindowAnswer {
                label: w.label(),
                seconds: w.seconds(),
                live: w.live(),
                substitutions: w
                    .substitutions()
                    .into_iter()
                    .map(|(name, text)| (name.to_string(), serde_json::Value::String(text)))
                    .collect(),
            })
            .collect();
        let screens = screens
            .iter()
            .map(|d| ScreenAnswer {
                name: d.name(),
                title: d.title.clone(),
                description: d.description.clone(),
                rows: d.rows.clone(),
            })
            .collect();
        ScreensAnswer { windows, screens, picked: tailscope_core::dashboard::PICKED }
    }
}

async fn dashboards(State(answer): State<Arc<ScreensAnswer>>) -> Response {
    let mut response = Json(answer.as_ref()).into_response();
    // The screens change only with a restart, but a key may lose access at any time: never cached.
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_answer_carries_windows_and_every_default() {
        let answer = ScreensAnswer::new(&tailscope_core::dashboard::defaults().unwrap());
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["windows"][1]["label"], "1h");
        assert_eq!(json["windows"][1]["substitutions"]["since"], "(now() - INTERVAL '1 hour')");
        assert_eq!(json["windows"][2]["live"], serde_json::Value::Null);
        assert_eq!(json["screens"][0]["name"], "overview");
        assert_eq!(json["screens"][0]["rows"][0]["panels"][0]["live"], "provider,region");
        assert_eq!(json["screens"][0]["rows"][1]["height"], 9);
        use tailscope_core::dashboard::is_web_ui_path;
        assert!(is_web_ui_path("/") && is_web_ui_path("/ui/app.js") && !is_web_ui_path("/api/v1/dashboards"));
    }
}
