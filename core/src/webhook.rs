//! The webhooks of `[alerts]`: where alert events are POSTed, in which format (plain JSON, Slack, PagerDuty
//! Events v2), signed with which secret, with which extra headers, and the checks that a webhook can work.
//!
//! An entry of `alerts.webhooks` is a URL, or a table:
//!
//! ```toml
//! [[alerts.webhooks]]
//! name = "relay"                       # names its metrics series and its outbox; default: the URL's host
//! url = "https://relay.internal/tailscope"
//! format = "json"                      # json (default) | slack | pagerduty
//! secret_env = "TAILSCOPE_WEBHOOK_SECRET"  # or secret = "...": signs each POST (X-Tailscope-Signature)
//! headers = { "X-Team" = "platform" }
//! headers_env = { "Authorization" = "RELAY_AUTHORIZATION" }  # header values read from the environment
//!
//! [[alerts.webhooks]]
//! format = "pagerduty"                 # url defaults to PagerDuty's Events API v2
//! routing_key_env = "PAGERDUTY_ROUTING_KEY"
//! ```
//!
//! Secrets (the signing secret, the routing key, header values) are [`Secret`]s: their `Debug` form is redacted, so
//! a config printed to the log shows none of them. Values named by `*_env` are read when the config is validated
//! and again when the collector starts ([`crate::cost::AlertsConfig::webhooks`]); a variable that is not set is
//! an error naming the key and the variable, never its value. Delivery (rendering, signing, retries, the on-disk
//! outbox) is the collector's (`collector::cost::webhook`); `docs/operations.md` shows how a receiver verifies the
//! signature.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ConfigError;

/// Where `format = "pagerduty"` sends when no `url` is given: PagerDuty's Events API v2.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The longest webhook name: it is a directory name and a label value.
pub const MAX_NAME_CHARS: usize = 64;

/// The most extra headers one webhook may send.
const MAX_HEADERS: usize = 64;

/// The longest secret, routing key or header value, in bytes: far above any real one, bounded so that a mistake
/// (a file's content pasted into a variable) is an error at start rather than a header every receiver refuses.
const MAX_VALUE_BYTES: usize = 8 * 1024;

/// A value that must not reach a log: its `Debug` form is `"***"`. Serialised as the value itself (a config written
/// back to a file keeps it).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The body a webhook receives for each alert event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookFormat {
    /// The event's fields, its figures as text in the cap's units, and a Slack-compatible `text`.
    #[default]
    #[serde(rename = "json")]
    Json,
    /// `{"text": "..."}` alone: a Slack (or Mattermost, Teams workflow) incoming webhook.
    #[serde(rename = "slack")]
    Slack,
    /// A PagerDuty Events API v2 event: `trigger` when an alert fires, `resolve` when it resolves, one incident per
    /// alert (`dedup_key`).
    #[serde(rename = "pagerduty")]
    PagerDuty,
}

impl WebhookFormat {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::PagerDuty => "pagerduty",
        }
    }
}

/// One entry of `alerts.webhooks`, as written: a URL alone, or a table. See the module's documentation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook's metrics series (`webhook="..."`) and its outbox directory: letters, digits, `.`, `_`,
    /// `-`, up to 64 characters, starting with a letter or digit. Defaults to the URL's host (with `-N`, N its
    /// position from 1, when two webhooks share a host). Set it to keep a webhook's outbox and series across a
    /// change of its URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http://` or `https://`. Optional for `format = "pagerduty"` (PagerDuty's Events API v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The body: `json` (default), `slack` or `pagerduty`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Signs every POST with HMAC-SHA256 (`X-Tailscope-Signature`, `X-Tailscope-Timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// The signing secret, read from this environment variable instead (keeps it out of the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Extra headers sent with every POST.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Extra headers whose values are read from environment variables: header name -> variable name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_env: BTreeMap<String, String>,
    /// `format = "pagerduty"`: the integration's routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<Secret>,
    /// `format = "pagerduty"`: the routing key, read from this environment variable instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_env: Option<String>,
}

impl WebhookConfig {
    /// A plain JSON webhook at `url`.
    pub fn url(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig { url: Some(url.into()), ..Default::default() }
    }
}

/// A webhook ready to send with: its name and URL decided, its secrets read, every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub format: WebhookFormat,
    /// The HMAC-SHA256 key, when deliveries are signed.
    pub secret: Option<Secret>,
    /// Extra headers, names as configured (checked to be valid header names), values checked to be valid.
    pub headers: Vec<(String, Secret)>,
    /// PagerDuty's routing key (`format = "pagerduty"` only).
    pub routing_key: Option<Secret>,
}

/// Reads `alerts.webhooks` entries written as a URL alone or as a table (whose unknown keys are refused by name).
pub(crate) fn deserialize_webhooks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<WebhookConfig>, D::Error> {
    struct Entry(WebhookConfig);
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
            struct Either;
            impl<'de> Visitor<'de> for Either {
                type Value = WebhookConfig;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a webhook URL, or a table with url, name, format, secret_env, headers, ...")
                }
                fn visit_str<E: de::Error>(self, url: &str) -> Result<WebhookConfig, E> {
                    Ok(WebhookConfig::url(url))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WebhookConfig, A::Error> {
                    WebhookConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                }
            }
            d.deserialize_any(Either).map(Entry)
        }
    }
    Ok(Vec::<Entry>::deserialize(d)?.into_iter().map(|e| e.0).collect())
}

/// Decides every webhook's name and URL, reads its secrets and checks its values. `field` prefixes the errors'
/// keys (`alerts.webhooks`).
pub(crate) fn resolve(configs: &[WebhookConfig], field: &str) -> Result<Vec<Webhook>, ConfigError> {
    let mut out: Vec<Webhook> = Vec::with_capacity(configs.len());
    let explicit: Vec<&str> = configs.iter().filter_map(|c| c.name.as_deref()).collect();
    for (i, c) in configs.iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}] ({name})");
        let url = match (&c.url, c.format) {
            (Some(url), _) => url.clone(),
            (None, WebhookFormat::PagerDuty) => PAGERDUTY_EVENTS_URL.to_string(),
            (None, _) => return Err(invalid(&format!("{field}[{i}]"), "needs a url".into())),
        };
        let parsed = url::Url::parse(&url)
            .map_err(|e| invalid(&format!("{field}[{i}].url"), format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            let reason = format!("{url:?}: unsupported scheme {:?} (http or https)", parsed.scheme());
            return Err(invalid(&format!("{field}[{i}].url"), reason));
        }
        let name = match &c.name {
            Some(name) => {
                check_name(name).map_err(|reason| invalid(&format!("{field}[{i}].name"), reason))?;
                name.clone()
            }
            None => {
                let host = default_name(parsed.host_str().unwrap_or(""), i);
                let taken = |n: &str| explicit.contains(&n) || out.iter().any(|w| w.name == n);
                if taken(&host) { format!("{host}-{}", i + 1) } else { host }
            }
        };
        if let Some(other) = out.iter().position(|w| w.name == name) {
            let reason = format!(
                "the name {name:?} is used by {field}[{other}] too; names identify a webhook's outbox and metrics \
                 series and must be unique (set `name` on each)"
            );
            return Err(invalid(&format!("{field}[{i}].name"), reason));
        }
        let at = at(&name);
        let secret = either(&at, "secret", &c.secret, &c.secret_env)?;
        let routing_key = either(&at, "routing_key", &c.routing_key, &c.routing_key_env)?;
        match (c.format, &routing_key) {
            (WebhookFormat::PagerDuty, None) => {
                let reason = "format = \"pagerduty\" needs routing_key or routing_key_env (the integration key)";
                return Err(invalid(&at, reason.into()));
            }
            (WebhookFormat::PagerDuty, Some(_)) | (_, None) => {}
            (format, Some(_)) => {
                let reason = format!("routing_key applies to format = \"pagerduty\" only, not {:?}", format.as_str());
                return Err(invalid(&at, reason));
            }
        }
        let mut headers = Vec::new();
        for (header, value) in &c.headers {
            headers.push((header.clone(), value.clone()));
        }
        for (header, var) in &c.headers_env {
            headers.push((header.clone(), from_env(&format!("{at}.headers_env.{header:?}"), var)?));
        }
        if headers.len() > MAX_HEADERS {
            return Err(invalid(&format!("{at}.headers"), format!("at most {MAX_HEADERS} headers")));
        }
        for (n, (header, value)) in headers.iter().enumerate() {
            let key = format!("{at}.headers.{header:?}");
            check_header(header, value.expose()).map_err(|reason| invalid(&key, reason))?;
            if headers[..n].iter().any(|(h, _)| h.eq_ignore_ascii_case(header)) {
                return Err(invalid(&key, "is set twice (header names are case-insensitive)".into()));
            }
        }
        out.push(Webhook { name, url, format: c.format, secret, headers, routing_key });
    }
    Ok(out)
}

fn invalid(field: &str, reason: String) -> ConfigError {
    ConfigError::Invalid { field: field.to_string(), reason }
}

/// The value of `key` given inline or through `key_env`, checked; not both.
fn either(at: &str, key: &str, inline: &Option<Secret>, env: &Option<String>) -> Result<Option<Secret>, ConfigError> {
    let value = match (inline, env) {
        (Some(_), Some(_)) => return Err(invalid(at, format!("set {key} or {key}_env, not both"))),
        (Some(v), None) => v.clone(),
        (None, Some(var)) => from_env(&format!("{at}.{key}_env"), var)?,
        (None, None) => return Ok(None),
    };
    check_value(value.expose()).map_err(|reason| invalid(&format!("{at}.{key}"), reason))?;
    Ok(Some(value))
}

/// The value of the environment variable `var`, which `field` names. The error names both, never the value.
fn from_env(field: &str, var: &str) -> Result<Secret, ConfigError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret(v)),
        Ok(_) => Err(invalid(field, format!("the environment variable {var:?} is empty"))),
        Err(std::env::VarError::NotPresent) => {
            Err(invalid(field, format!("the environment variable {var:?} is not set")))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(invalid(field, format!("the environment variable {var:?} is not UTF-8")))
        }
    }
}

fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("is {} bytes, more than {MAX_VALUE_BYTES}", value.len()));
    }
    Ok(())
}

/// A character a webhook's name may hold (it is a directory name and a label value).
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("{name:?} must be 1 to {MAX_NAME_CHARS} characters"));
    }
    if !name.chars().all(name_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{name:?} may hold letters, digits, '.', '_' and '-', and starts with a letter or digit"));
    }
    Ok(())
}

/// A name from a URL's host: its characters outside a name's kept as `_`; `webhook-N` when nothing usable is left.
fn default_name(host: &str, i: usize) -> String {
    let name: String = host.chars().map(|c| if name_char(c) { c } else { '_' }).take(MAX_NAME_CHARS - 4).collect();
    if check_name(&name).is_ok() { name } else { format!("webhook-{}", i + 1) }
}

/// Header names tailscope sets itself: a configured one would conflict with the body, the connection or the
/// signature.
fn reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    matches!(lower.as_str(), "content-type" | "content-length" | "host" | "transfer-encoding" | "connection")
        || lower.starts_with("x-tailscope-")
}

/// A header a POST can carry: not one tailscope sets itself, a valid name and a valid value.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    check_header_name(name)?;
    if reserved(name) {
        return Err("is set by tailscope itself (Content-Type, Content-Length, Host, Connection, X-Tailscope-*)".into());
    }
    check_value(value)?;
    check_header_value(value)
}

/// A header name is a token (RFC 9110 §5.1): letters, digits and `!#$%&'*+-.^_`|~`. The rule of the `http` crate,
/// which sends it (a collector test compares the two byte by byte).
pub fn check_header_name(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err("is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)".into());
    }
    Ok(())
}

/// A header value holds no control character other than tab (RFC 9110 §5.5); the `http` crate's rule too.
pub fn check_header_value(value: &str) -> Result<(), String> {
    if !value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
        return Err("has a value with control characters (a line break?), which no header may hold".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(toml: &str) -> Result<Config, String> {
        Config::from_toml(toml, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_url_alone_and_tables_both_read_and_resolve() {
        let c = parse(
            "[alerts]\nwebhooks = [\"https://hooks.slack.com/services/T/B/x\", \
             { url = \"https://hooks.slack.com/services/T/B/y\", format = \"slack\" }, \
             { name = \"pd\", format = \"pagerduty\", routing_key = \"R0UT1NG\" }]\n",
        )
        .unwrap();
        let hooks = c.alerts.webhooks().unwrap();
        let names: Vec<&str> = hooks.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["hooks.slack.com", "hooks.slack.com-2", "pd"]);
        assert_eq!(hooks[1].format, WebhookFormat::Slack);
        assert_eq!((hooks[2].url.as_str(), hooks[2].format), (PAGERDUTY_EVENTS_URL, WebhookFormat::PagerDuty));
        assert_eq!(hooks[2].routing_key.as_ref().map(Secret::expose), Some("R0UT1NG"));
        // The array-of-tables form is the same key.
        let c = parse("[[alerts.webhooks]]\nurl = \"http://[::1]:9/x\"\nheaders = { \"X-Team\" = \"a\" }\n").unwrap();
        let hooks = c.alerts.webhooks().unwrap();
        assert_eq!(hooks[0].name, "webhook-1", "an IPv6 host makes no name");
        assert_eq!(hooks[0].headers, [("X-Team".to_string(), Secret::new("a"))]);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = parse(
            "[[alerts.webhooks]]\nurl = \"http://h/x\"\nsecret = \"s3cr3t-value\"\nheaders = { \"Authorization\" = \
             \"Bearer t0ken-value\" }\n",
        )
        .unwrap();
        let shown = format!("{c:?} {:?}", c.alerts.webhooks().unwrap());
        assert!(!shown.contains("s3cr3t-value") && !shown.contains("t0ken-value"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn invalid_webhooks_are_refused_naming_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("webhooks = [{ format = \"json\" }]", "alerts.webhooks[0]", "needs a url"),
            ("webhooks = [\"ftp://h/x\"]", "alerts.webhooks[0].url", "unsupported scheme"),
            ("webhooks = [\"not a url\"]", "alerts.webhooks[0].url", "not a URL"),
            (
                "webhooks = [{ url = \"http://h/x\", headers = { \"Bad Name\" = \"v\" } }]",
                "alerts.webhooks[0] (h).headers.\"Bad Name\"",
                "not a valid header name",
            ),
            (
                "webhooks = [{ url = \"http://h/x\", headers = { \"X-Ok\" = \"line\\nbreak\" } }]",
                "alerts.webhooks[0] (h).headers.\"X-Ok\"",
                "control characters",
            ),
            (
                "webhooks = [{ url = \"http://h/x\", headers = { \"content-type\" = \"text/plain\" } }]",
                "alerts.webhooks[0] (h).headers.\"content-type\"",
                "set by tailscope",
            ),
            (
                "webhooks = [{ url = \"http://h/x\", headers = { \"X-Tailscope-Signature\" = \"forged\" } }]",
                "X-Tailscope-Signature",
                "set by tailscope",
            ),
            (
                "webhooks = [{ url = \"http://h/x\", secret_env = \"TAILSCOPE_TEST_UNSET_SECRET_VAR\" }]",
                "alerts.webhooks[0] (h).secret_env",
                "\"TAILSCOPE_TEST_UNSET_SECRET_VAR\" is not set",
            ),
            (
                "webhooks = [{ url = \"http://h/x\", secret = \"a\", secret_env = \"B\" }]",
                "alerts.webhooks[0] (h)",
                "not both",
            ),
            ("webhooks = [{ url = \"http://h/x\", secret = \"\" }]", "alerts.webhooks[0] (h).secret", "empty"),
            ("webhooks = [{ format = \"pagerduty\" }]", "alerts.webhooks[0] (events.pagerduty.com)", "routing_key"),
            (
                "webhooks = [{ url = \"http://h/x\", routing_key = \"k\" }]",
                "alerts.webhooks[0] (h)",
                "pagerduty\" only",
            ),
            ("webhooks = [{ url = \"http://h/x\", name = \"../up\" }]", "alerts.webhooks[0].name", "letters"),
            (
                "webhooks = [{ url = \"http://h/x\", name = \"a\" }, { url = \"http://g/x\", name = \"a\" }]",
                "alerts.webhooks[1].name",
                "unique",
            ),
            ("webhooks = [{ url = \"http://h/x\", formatt = \"json\" }]", "formatt", "unknown field"),
            ("webhooks = [{ url = \"http://h/x\", format = \"teams\" }]", "teams", "unknown variant"),
        ];
        for (alerts, key, reason) in cases {
            let err = parse(&format!("[alerts]\n{alerts}\n")).expect_err(alerts);
            assert!(err.contains(key), "{alerts}: the key {key} is named: {err}");
            assert!(err.contains(reason), "{alerts}: the reason {reason:?} is given: {err}");
        }
    }
}
