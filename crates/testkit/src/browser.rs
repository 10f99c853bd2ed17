//! Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools
//! Protocol: load a page, evaluate JavaScript in it, wait for the DOM to
//! reach a state, click, take a screenshot. A test of a page is only real
//! in a real browser, so a missing Chromium fails the test with the line
//! that installs it; it never passes silently.
//!
//! Waits are event-driven: [`Browser::wait_until`] resolves inside the page
//! from a `MutationObserver`, and every wait is bounded by [`LIMIT`].

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{LIMIT, within};

/// How to get the browser on Debian (and in `.ci/run`).
pub const INSTALL: &str = "apt-get update && apt-get install -y chromium";

/// A headless Chromium with one page open; killed (with every process it
/// started) and its profile removed when dropped.
pub struct Browser {
    child: Child,
    /// Removed when the browser drops, after `drop` has ended Chromium.
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: Option<String>,
    next_id: u64,
    /// Events read while waiting for something else, oldest first.
    events: Vec<Value>,
}

/// Installs Debian's Chromium when it is missing and we may (as root, as on
/// a fresh machine of this project's kind), once per test process, so that
/// `cargo test` runs the browser tests on a fresh machine as it runs the
/// rest. Anything else is left to the panic in [`Browser::launch`].
fn install_if_missing() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let found = Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        if !found && root {
            eprintln!("installing Chromium with apt-get (for the browser tests)");
            let _ = Command::new("sh")
                .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"])
                .stdout(Stdio::null())
                .status();
        }
    });
}

impl Browser {
    /// Starts Chromium (`$CHROMIUM`, or `chromium` on the PATH) with a
    /// fresh profile, and opens a blank page. Panics, saying how to
    /// install it, if it cannot be started.
    pub async fn launch() -> Browser {
        Self::launch_with(&[], None).await
    }

    /// [`launch`](Self::launch) with more command-line `args` (e.g.
    /// `--host-resolver-rules=...`) and, if given, `home` as its HOME: its
    /// certificate store is the NSS database `home/.pki/nssdb`, which
    /// [`trust_root`] fills.
    pub async fn launch_with(args: &[String], home: Option<&Path>) -> Browser {
        let program = std::env::var("CHROMIUM").unwrap_or_else(|_| {
            install_if_missing();
            "chromium".into()
        });
        let profile = tempfile::Builder::new()
            .prefix("cryptun-chromium-")
            .tempdir()
            .expect("a temporary profile directory");
        let mut command = Command::new(&program);
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
                "--window-size=1280,800",
                "--remote-debugging-port=0",
            ])
            .args(args)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(home) = home {
            command.env("HOME", home);
        }
        // Its own process group, so dropping it ends its helpers too.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().unwrap_or_else(|err| {
            panic!(
                "could not start {program:?} ({err}). This test needs Chromium: \
                 install it with `{INSTALL}`, or set CHROMIUM to its path"
            )
        });
        let url = devtools_url(&mut child);
        let Some(url) = url else {
            let _ = child.kill();
            panic!("{program} started but never said where DevTools listens");
        };
        let (ws, _) = within(
            "the DevTools connection",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("DevTools accepts a WebSocket");
        let mut browser = Browser {
            child,
            _profile: profile,
            ws,
            session: None,
            next_id: 0,
            events: Vec::new(),
        };
        let target = browser
            .command("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .command(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().map(str::to_owned);
        browser.command("Page.enable", json!({})).await;
        browser
    }

    /// Loads `url` and waits for its `load` event.
    pub async fn navigate(&mut self, url: &str) {
        self.events.clear();
        let result = self.command("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = result.get("errorText") {
            panic!("could not load {url}: {error}");
        }
        within(&format!("{url} to load"), async {
            while !self
                .events
                .iter()
                .any(|e| e["method"] == "Page.loadEventFired")
            {
                let event = self.read().await;
                self.events.push(event);
            }
        })
        .await;
    }

    /// Evaluates `expression` in the page (awaiting it if it is a promise)
    /// and returns its value; panics if it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({
            "expression": expression,
            "returnByValue": true,
            "awaitPromise": true,
        });
        let result = self.command("Runtime.evaluate", params).await;
        if let Some(details) = result.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("an exception");
            panic!("{expression}\nthrew: {text}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until the JavaScript `condition` is truthy, re-evaluating it in
    /// the page on every DOM change; returns its value. Bounded by [`LIMIT`].
    pub async fn wait_until(&mut self, what: &str, condition: &str) -> Value {
        let expression = format!(
            "new Promise((resolve) => {{
               const check = () => {{
                 let value;
                 try {{ value = ({condition}); }} catch (_) {{ return false; }}
                 if (value) {{ resolve(value); return true; }}
                 return false;
               }};
               if (check()) return;
               const observer = new MutationObserver(() => {{ if (check()) observer.disconnect(); }});
               observer.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
             }})"
        );
        let limit = LIMIT;
        tokio::time::timeout(limit, self.eval(&expression))
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {limit:?} (waiting for {condition})"))
    }

    /// Clicks the element `selector` finds (a CSS selector); panics if none.
    pub async fn click(&mut self, selector: &str) {
        let selector = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const el = document.querySelector({selector});
                if (!el) throw new Error('nothing matches ' + {selector});
                el.click(); return true; }})()"
        ))
        .await;
    }

    /// Saves a PNG of the page at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .command("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::write(path, data).expect("the screenshot is written");
    }

    /// Sends a DevTools command to the page and returns its result.
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        within(method, self.ws.send(Message::text(message.to_string())))
            .await
            .expect("DevTools takes the command");
        within(method, async {
            loop {
                let reply = self.read().await;
                if reply["id"] == id {
                    if let Some(error) = reply.get("error") {
                        panic!("{method} failed: {error}");
                    }
                    return reply["result"].clone();
                }
                self.events.push(reply);
            }
        })
        .await
    }

    /// The next JSON message from DevTools.
    async fn read(&mut self) -> Value {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("DevTools speaks JSON");
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("the DevTools connection failed: {err}"),
                None => panic!("the browser closed the DevTools connection"),
            }
        }
    }
}

/// Reads Chromium's stderr until it prints `DevTools listening on ws://...`,
/// then keeps draining it on a thread so the browser never blocks on it.
fn devtools_url(child: &mut Child) -> Option<String> {
    let stderr = child.stderr.take()?;
    let (found, url) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                if let Some(found) = found.take() {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        }
    });
    url.recv_timeout(LIMIT).ok()
}

impl Drop for Browser {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            // The group Chromium leads: its zygote, renderers and GPU helper.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `home/.pki/nssdb` (Chromium's certificate store on Linux, NSS)
/// trust `root` (PEM) for websites, with `certutil` (libnss3-tools).
pub fn trust_root(home: &Path, root: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .expect("certutil runs (libnss3-tools: .ci/run installs it)");
        assert!(out.status.success(), "certutil {args:?}: {out:?}");
    };
    run(&["-N", "-d", &db, "--empty-password"]);
    let root = root.to_str().unwrap();
    run(&["-A", "-d", &db, "-t", "C,,", "-n", "test root", "-i", root]);
}
