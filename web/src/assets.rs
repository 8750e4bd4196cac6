//! The page and its assets, compiled into the binary: nothing to install beside `tailscope`, nothing fetched from
//! another origin.
//!
//! Caching: the page, its script and its styles change with the binary, so they are revalidated on every load
//! (`no-cache` and an `ETag`: a reload costs a 304); a vendored library sits under a path holding its pinned version,
//! so it is cached for a year as immutable. Every answer carries the Content-Security-Policy and the headers that
//! keep the page out of frames and stop content-type sniffing.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The path every asset but the page itself is served under (open without a key: `core::dashboard::is_web_ui_path`).
pub use tailscope_core::dashboard::WEB_UI_PREFIX as PREFIX;

/// Scripts, styles, images and connections from this origin only; no inline script or `eval`; no plugin, no
/// frame, no form posting elsewhere, no `<base>` rewriting. Charts set sizes through the CSSOM (allowed), never
/// through `style` attributes in markup.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'; object-src 'none'";

/// How long a client may keep an asset without asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// Ask every time (the ETag makes that a 304).
    Revalidate,
    /// A versioned path: keep it.
    Immutable,
}

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    caching: Caching,
}

/// Every file the UI serves.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
        caching: Caching::Revalidate,
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
        caching: Caching::Revalidate,
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
        caching: Caching::Revalidate,
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/favicon.svg"),
        caching: Caching::Revalidate,
    },
    Asset {
        path: "/ui/vendor/uplot-1.6.32/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../vendor/uplot-1.6.32/uPlot.iife.min.js"),
        caching: Caching::Immutable,
    },
    Asset {
        path: "/ui/vendor/uplot-1.6.32/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../vendor/uplot-1.6.32/uPlot.min.css"),
        caching: Caching::Immutable,
    },
    Asset {
        path: "/ui/vendor/uplot-1.6.32/LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../vendor/uplot-1.6.32/LICENSE"),
        caching: Caching::Immutable,
    },
];

/// Each asset's entity tag: a strong tag from its bytes, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The routes of every asset, and `/favicon.ico` (browsers ask for it whatever the page says).
pub fn router() -> Router {
    let mut router = Router::new();
    for (i, asset) in ASSETS.iter().enumerate() {
        router = router.route(asset.path, get(move |headers: HeaderMap| async move { serve(i, &headers) }));
    }
    let icon = ASSETS.iter().position(|a| a.path == "/ui/favicon.svg").unwrap_or(0);
    router.route("/favicon.ico", get(move |headers: HeaderMap| async move { serve(icon, &headers) }))
}

/// The headers every answer of the UI carries.
pub fn protect(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

fn serve(index: usize, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.get(index) else { return StatusCode::NOT_FOUND.into_response() };
    let etag = ETAGS[index].clone();
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag.to_str().unwrap_or("")));
    let mut response = if matches { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::ETAG, etag);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match asset.caching {
            Caching::Revalidate => "no-cache",
            Caching::Immutable => "public, max-age=31536000, immutable",
        }),
    );
    protect(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_under_the_prefix_and_the_page_names_only_them() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in &ASSETS[1..] {
            assert!(asset.path.starts_with(PREFIX), "{}", asset.path);
        }
        // Every src/href the page has is one of ours: nothing from another origin.
        let mut refs = 0;
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in page.match_indices(attribute) {
                let rest = &page[at + attribute.len()..];
                let target = &rest[..rest.find('"').unwrap()];
                assert!(ASSETS.iter().any(|a| a.path == target), "the page refers to {target}, not an embedded asset");
                refs += 1;
            }
        }
        assert_eq!(refs, 5, "favicon, two stylesheets, two scripts");
        let js = std::str::from_utf8(ASSETS[1].body).unwrap();
        assert!(!js.contains("innerHTML") && !js.contains("eval("), "data is never parsed as markup or code");
    }

    #[test]
    fn revalidation_answers_304() {
        let first = serve(1, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        let second = serve(1, &again);
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert!(second.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
    }
}
