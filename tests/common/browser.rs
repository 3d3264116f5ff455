//! A real headless Chromium (Debian package `chromium`, installed by scripts/install-chromium.sh)
//! driven over the DevTools protocol: open a page, evaluate JavaScript in it, poll the DOM until a
//! condition holds, take PNG screenshots. One browser stays on the page, so what a test sees is
//! what the page's live streams have drawn — no reload between looks.

#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary, when installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

/// A headless Chromium with one page, killed when dropped.
pub struct Browser {
    child: Child,
    page: Socket,
    next_id: u64,
    /// Chromium's stderr (for failure messages).
    pub log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (headless, no sandbox: tests run as root in containers) with a fresh
    /// profile and connects to its first page. None when Chromium is not installed.
    pub async fn launch() -> Option<Browser> {
        let binary = chromium()?;
        let profile = tempfile::tempdir().expect("profile dir");
        let log = profile.path().join("chromium.log");
        let mut command = Command::new(binary);
        // Its own process group: the renderer and helper processes die with it (see Drop).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1400,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…" once
        // its endpoint is up; the rest of its stderr goes to the log.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&log_path).expect("chromium log");
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
            }
        });
        let endpoint =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
                .await
                .expect("join")
                .unwrap_or_else(|_| {
                    panic!(
                        "chromium did not open its DevTools endpoint:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
        let host = endpoint
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_string();
        let targets: serde_json::Value = reqwest::get(format!("http://{host}/json/list"))
            .await
            .expect("GET /json/list")
            .json()
            .await
            .expect("targets JSON");
        let page_url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_string();
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str())
            .await
            .expect("connect to the page's DevTools socket");
        let mut browser = Browser {
            child,
            page,
            next_id: 0,
            log: profile.path().join("chromium.log"),
            _profile: profile,
        };
        browser.call("Page.enable", serde_json::json!({})).await;
        browser.call("Runtime.enable", serde_json::json!({})).await;
        Some(browser)
    }

    /// Sends one DevTools command and returns its `result` (panics on a protocol error).
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = serde_json::json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::Text(command.to_string().into()))
            .await
            .expect("send a DevTools command");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 60 s"))
                .unwrap_or_else(|| panic!("DevTools socket closed during {method}"))
                .expect("DevTools socket");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(&text).expect("DevTools JSON");
            if reply["id"] != id {
                continue; // an event, or an earlier command's answer
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Navigates to `url`.
    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }))
            .await;
    }

    /// The value of JavaScript `expression` in the page (JSON-serialisable values only).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            return serde_json::json!({ "exception": exception });
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`, up to `timeout`; panics with `what`, the value of
    /// `show` (e.g. the relevant part of the DOM) and a screenshot path otherwise.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration, what: &str, show: &str) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.eval(expression).await == serde_json::Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let shown = self.eval(show).await;
                let shot = screenshot_dir().join("timeout.png");
                self.screenshot(&shot).await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{show} = {shown}\nscreenshot: {}",
                    shot.display()
                );
            }
            // The page's state is read by evaluating `expression`; the DevTools protocol has no
            // event for "this expression became true", so this is the poll period of that wait.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG of the page (full height) to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("PNG data"))
            .expect("base64 PNG");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("screenshot dir");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// Where screenshots are kept: `target/dashboard-screenshots/` (artifacts of the test run).
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("dashboard-screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
