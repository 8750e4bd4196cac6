//! The dashboard end to end: the real `tailscope tui` in a tmux pseudo-terminal against a real server fed by the
//! official SDK; keys are sent and the screen text is checked.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer, TracerProvider};

use crate::support::{Server, Transport, free_addr, tailscope_bin, tracer_provider};

/// One tmux server of our own (its own socket), killed on drop.
pub(crate) struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        Tmux::start_sized(command, 100, 30)
    }

    /// A pane of `width` x `height` cells running `command`.
    pub(crate) fn start_sized(command: &str, width: u16, height: u16) -> Tmux {
        let socket = format!("tailscope-it-{}-{}", std::process::id(), free_addr().port());
        let ok = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .arg(format!("{command}; echo EXITED $?; sleep 30"))
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux is installed (apt-get install -y tmux)");
        assert!(ok.success());
        Tmux { socket }
    }

    pub(crate) fn screen(&self) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "t"]).args(keys).status().unwrap();
        assert!(ok.success());
    }

    pub(crate) async fn wait_for(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if want.iter().all(|w| screen.contains(w)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "screen never showed {want:?}:\n{screen}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_drives_against_a_live_server() {
    let server = Server::start().await;
    let provider = tracer_provider(
        &server,
        Transport::Grpc,
        vec![KeyValue::new("service.name", "planner"), KeyValue::new("cloud.region", "us-east-1")],
    );
    let tracer = provider.tracer("it-tui");
    let t0 = SystemTime::now() - Duration::from_secs(5);
    for i in 0..20u64 {
        let mut span = tracer
            .span_builder("chat gpt-4o")
            .with_kind(SpanKind::Client)
            .with_start_time(t0)
            .with_attributes(vec![
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", "gpt-4o"),
                KeyValue::new("gen_ai.conversation.id", "sess-e2e"),
                KeyValue::new("gen_ai.usage.input_tokens", 1000),
                KeyValue::new("gen_ai.usage.output_tokens", 100),
            ])
            .start(&tracer);
        span.end_with_timestamp(t0 + Duration::from_millis(100 + 10 * i));
    }
    provider.force_flush().expect("flush");
    server.wait_count("SELECT COUNT(*) AS n FROM spans", 20).await;

    let bin = tailscope_bin();
    let tmux = Tmux::start(&format!("{} tui --server {} --refresh 300ms", bin.display(), server.api_url()));
    // Overview from the live windows: the provider row with its p99 (100..290 ms -> p99 290 ms).
    let screen = tmux.wait_for(&["1 Overview", "openai", "us-east-1", "290"]).await;
    assert!(screen.contains("openai / us-east-1"), "histogram of the selected row:\n{screen}");
    // Cost screen over SQL, then Enter drills into the session's waterfall.
    tmux.keys(&["2"]);
    tmux.wait_for(&["Top sessions by cost", "sess-e2e"]).await;
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["Waterfall", "20 steps", "chat gpt-4o", "llm"]).await;
    tmux.keys(&["Escape"]);
    tmux.wait_for(&["Top sessions by cost"]).await;
    // Filter and help.
    tmux.keys(&["1", "/", "z", "z", "z", "Enter"]);
    tmux.wait_for(&["filter: zzz"]).await;
    let screen = tmux.screen();
    assert!(!screen.contains("us-east-1"), "the filter hides the row:\n{screen}");
    tmux.keys(&["Escape", "?"]);
    tmux.wait_for(&["time window", "help"]).await;
    tmux.keys(&["Escape", "q"]);
    let screen = tmux.wait_for(&["EXITED 0"]).await;
    assert!(!screen.contains("1 Overview"), "the terminal is restored on exit:\n{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_shows_a_banner_and_bad_dashboard_refuses_to_start() {
    let nobody = free_addr();
    let tmux = Tmux::start(&format!("{} tui --server http://{nobody}", tailscope_bin().display()));
    tmux.wait_for(&["unreachable", "retrying"]).await;
    tmux.keys(&["q"]);
    tmux.wait_for(&["EXITED 0"]).await;

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("mine.toml");
    std::fs::write(
        &bad,
        "title = \"x\"\n[[rows]]\n[[rows.panels]]\ntitle = \"a\"\nwidget = \"pie\"\nsql = \"select 1\"\n",
    )
    .unwrap();
    let out = Command::new(tailscope_bin()).args(["tui", "--dashboard"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mine.toml:5:") && err.contains("pie"), "{err}");
}
