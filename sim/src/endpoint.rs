//! Where the fleet exports: one OTLP endpoint per signal, from `--endpoint` or from the environment variables of
//! the OpenTelemetry specification, read as any SDK reads them (the OTLP exporter specification's "Endpoint URLs
//! for OTLP/HTTP"). Headers need nothing here: the SDK's exporters read `OTEL_EXPORTER_OTLP_HEADERS` and the
//! signal-specific `OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_HEADERS` themselves (`k=v,k2=v2`, URL-decoded).

use std::fmt;

use crate::Transport;

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL of every signal.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// A signal's own endpoint variable, and its path under a base URL for OTLP/HTTP.
const SIGNALS: [(&str, &str); 3] = [
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "/v1/metrics"),
    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "/v1/logs"),
];

/// The OTLP endpoint of each signal, as the exporters are given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Where spans go.
    pub traces: String,
    /// Where metrics go.
    pub metrics: String,
    /// Where log records go.
    pub logs: String,
}

impl Endpoints {
    /// Every signal to one base URL: for gRPC the server URL itself, for OTLP/HTTP the base to which
    /// `/v1/traces`, `/v1/metrics` and `/v1/logs` are appended.
    pub fn from_base(base: &str, transport: Transport) -> Endpoints {
        let [traces, metrics, logs] = SIGNALS.map(|(_, path)| signal_url(base, path, transport));
        Endpoints { traces, metrics, logs }
    }

    /// `flag` (`--endpoint`, a base URL as for [`Endpoints::from_base`]) when given: a flag wins over the
    /// environment. Otherwise, per signal: its own variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_METRICS_…`,
    /// `…_LOGS_…`), a URL used as it is; else `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL; else the transport's
    /// port on loopback, `http://127.0.0.1:4317` for gRPC and `http://127.0.0.1:4318` for OTLP/HTTP (where
    /// `tailscope serve` listens; the specification's default host is `localhost`). An empty variable counts as
    /// unset. `var` reads a variable: `std::env::var` in the binary, a map in tests.
    pub fn resolve(flag: Option<&str>, transport: Transport, var: impl Fn(&str) -> Option<String>) -> Endpoints {
        if let Some(base) = flag {
            return Endpoints::from_base(base, transport);
        }
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let default = match transport {
            Transport::Grpc => "http://127.0.0.1:4317",
            Transport::Http => "http://127.0.0.1:4318",
        };
        let base = var(ENDPOINT_VAR).unwrap_or_else(|| default.to_string());
        let [traces, metrics, logs] =
            SIGNALS.map(|(own, path)| var(own).unwrap_or_else(|| signal_url(&base, path, transport)));
        Endpoints { traces, metrics, logs }
    }
}

/// Where spans go: what `simulate` reports, as spans are what it counts.
impl fmt::Display for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traces)
    }
}

/// A signal's URL under `base`: gRPC has no paths (the service names the signal), OTLP/HTTP has one per signal.
fn signal_url(base: &str, path: &str, transport: Transport) -> String {
    match transport {
        Transport::Grpc => base.to_string(),
        Transport::Http => format!("{}{path}", base.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn each_transport_has_its_own_port_by_default() {
        let grpc = Endpoints::resolve(None, Transport::Grpc, env(&[]));
        assert_eq!(grpc, Endpoints::from_base("http://127.0.0.1:4317", Transport::Grpc));
        assert_eq!(grpc.logs, "http://127.0.0.1:4317");
        let http = Endpoints::resolve(None, Transport::Http, env(&[]));
        assert_eq!(http.traces, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(http.metrics, "http://127.0.0.1:4318/v1/metrics");
        assert_eq!(http.logs, "http://127.0.0.1:4318/v1/logs");
    }

    #[test]
    fn the_generic_variable_is_a_base_and_a_signal_variable_is_used_as_it_is() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/otlp/"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://logs.example/ingest"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", " "),
        ]);
        let http = Endpoints::resolve(None, Transport::Http, &vars);
        assert_eq!(http.traces, "https://collector:4318/otlp/v1/traces");
        assert_eq!(http.metrics, "https://collector:4318/otlp/v1/metrics", "an empty variable counts as unset");
        assert_eq!(http.logs, "https://logs.example/ingest");
        let grpc = Endpoints::resolve(None, Transport::Grpc, &vars);
        assert_eq!(grpc.traces, "https://collector:4318/otlp/");
        assert_eq!(grpc.logs, "https://logs.example/ingest");
    }

    #[test]
    fn a_flag_wins_over_the_environment() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/v1/traces"),
        ]);
        let http = Endpoints::resolve(Some("http://flag:9000"), Transport::Http, vars);
        assert_eq!(http, Endpoints::from_base("http://flag:9000", Transport::Http));
        assert_eq!(http.traces, "http://flag:9000/v1/traces");
        assert_eq!(http.to_string(), "http://flag:9000/v1/traces");
    }
}
