//! SQL over tailscope's telemetry. (Placeholder.)
