//! A real headless Chromium driven over the DevTools protocol, for the web UI's tests (tests/it/web.rs).
//!
//! Chromium is started with `--remote-debugging-pipe`: it reads protocol messages on fd 3 and writes on fd 4, each
//! a JSON object ended by a NUL byte. That needs no WebSocket client and no port (nothing else on the machine can
//! attach to it). One page target is created and attached in flat mode; every command after that carries its
//! session id. Console errors, uncaught exceptions and CSP violations are collected as they arrive, so a test can
//! assert a page loaded cleanly.
//!
//! Chromium is Debian's `chromium` package (`/usr/bin/chromium`, or `$CHROMIUM`); `.ci/run` installs it. When it is
//! missing, [`Browser::launch`] fails the test saying how to install it: these tests never skip silently.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with one page.
pub struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Console errors, exceptions and log entries at level error, as text.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Where screenshots are written: `target/web-screenshots/` (CI keeps it as an artefact).
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("web-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own; each is then owned once.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens a blank page of `width` x `height` pixels.
    pub fn launch(width: u32, height: u32) -> Browser {
        let path = chromium_path();
        assert!(
            path.is_file(),
            "Chromium is needed for the web UI tests and is not at {}: install it with `apt-get install -y chromium` \
             (as .ci/run does) or point $CHROMIUM at a Chromium binary",
            path.display()
        );
        let profile = tempfile::tempdir().expect("profile dir");
        // fd 3: what Chromium reads (we write); fd 4: what it writes (we read).
        let (commands_read, commands_write) = pipe();
        let (events_read, events_write) = pipe();
        let (child_in, child_out) =
            (std::os::fd::AsRawFd::as_raw_fd(&commands_read), std::os::fd::AsRawFd::as_raw_fd(&events_write));
        let mut command = Command::new(&path);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only dup2 is called (async-signal-safe); it puts the pipe ends on the
        // descriptors Chromium's pipe transport expects. dup2 clears close-on-exec on the new descriptors.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(child_in, 3) < 0 || libc::dup2(child_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        drop(commands_read);
        drop(events_write);
        let (tx, rx) = channel();
        let reader = std::fs::File::from(events_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: std::fs::File::from(commands_write),
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            errors: Vec::new(),
            _profile: profile,
        };
        let target = browser.command(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached =
            browser.command(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        browser.session = attached["sessionId"].as_str().expect("sessionId").to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_command(session, method, params).unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// A command, with the protocol's error as an Err (e.g. a page navigating away while evaluating).
    fn try_command(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap_or_else(|e| panic!("Chromium closed its pipe ({method}): {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(answer) if answer["id"] == json!(id) => {
                    return match answer.get("error") {
                        Some(error) => Err(error.clone()),
                        None => Ok(answer["result"].clone()),
                    };
                }
                Ok(event) => self.note(&event),
                Err(RecvTimeoutError::Timeout) => panic!("Chromium did not answer {method} within {COMMAND_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("Chromium exited while answering {method}"),
            }
        }
    }

    /// Keeps what a page reports as an error.
    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                self.errors.push(format!("exception: {}", params["exceptionDetails"]));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors.push(format!("console.error: {}", params["args"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", params["entry"]["text"]));
            }
            _ => {}
        }
    }

    /// A command on the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params)
    }

    /// Opens `url` and waits until its document has loaded.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_js("document.readyState === 'complete'", Duration::from_secs(20));
    }

    /// Evaluates a JavaScript expression in the page and returns its value (JSON).
    pub fn js(&mut self, expression: &str) -> Value {
        let answer = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        if let Some(e) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        answer["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; panics with the page's text when it never is. While the page
    /// is (re)loading, an evaluation that fails (no body yet, the context replaced) counts as false.
    pub fn wait_js(&mut self, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let session = self.session.clone();
            let probe = json!({ "expression": format!("!!({expression})"), "returnByValue": true });
            let answer = self.try_command(Some(&session), "Runtime.evaluate", probe);
            if answer.is_ok_and(|a| a["result"]["value"] == json!(true)) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.js("document.body ? document.body.innerText : ''");
                panic!("the page never had {expression} within {within:?}; it shows:\n{}", text.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the page's text holds every one of `want`, and returns that text.
    pub fn wait_text(&mut self, want: &[&str]) -> String {
        let probe = serde_json::to_string(want).expect("json");
        self.wait_js(
            &format!("document.body && {probe}.every(w => document.body.innerText.includes(w))"),
            Duration::from_secs(30),
        );
        self.text()
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.js("document.body.innerText").as_str().unwrap_or("").to_string()
    }

    /// Waits until no panel of the screen is loading, then returns the text of every panel by title.
    pub fn settled(&mut self) {
        self.wait_js(
            "document.querySelectorAll('.panel').length > 0 && \
             !document.querySelector('.panel[data-state=\"loading\"]') && \
             !document.querySelector('.panel:not([data-state])')",
            Duration::from_secs(30),
        );
    }

    /// Writes a PNG of the page to `target/web-screenshots/NAME.png`.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("data")).expect("png");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Collects the events that arrived since the last command (console errors in particular).
    pub fn drain_events(&mut self) {
        while let Ok(event) = self.from_browser.try_recv() {
            self.note(&event);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
