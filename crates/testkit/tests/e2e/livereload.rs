//! A real dev server's live-reload socket through a tunnel: Python's
//! `livereload` (installed with pip into a virtual environment under the
//! target folder the first time) serves a folder and pushes
//! `reload` over a WebSocket when a file changes. Through the tunnel, the
//! page loads, the socket handshakes, and the reload arrives.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptun_testkit::wsecho;
use cryptun_testkit::{TestClient, TestServer, Visitor};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The `livereload` command, from a virtual environment under the target
/// folder, made and filled with pip (from PyPI) the first time: nothing is
/// installed into the system's Python.
fn livereload_command() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let command = venv.join("bin").join("livereload");
    let works = |cmd: &PathBuf| {
        Command::new(cmd)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works(&command) {
        eprintln!(
            "installing Python's livereload into {} (for the live-reload test)",
            venv.display()
        );
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            made,
            "this test needs python3 with venv (apt-get install python3-venv)"
        );
        let installed = Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "livereload",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "pip could not install livereload into {}",
            venv.display()
        );
    }
    assert!(works(&command), "{} does not run", command.display());
    command
}

/// The dev server and its folder, both gone when dropped.
struct DevServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_dev_server() -> DevServer {
    let command = livereload_command();
    let dir = std::env::temp_dir().join(format!(
        "cryptun-livereload-{}",
        cryptun_proto::random_id(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<html><body>version 1</body></html>",
    )
    .unwrap();
    // livereload takes a fixed port: find a free one, then hand it over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(command)
        .args([
            "--host",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-w",
            "0",
            "-t",
        ])
        .arg(&dir)
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("livereload starts");
    let server = DevServer { child, dir, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "livereload never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_servers_live_reload_works_through_a_tunnel() {
    let dev = start_dev_server().await;
    let server = TestServer::start().await;
    let client = TestClient::start(&server, &dev.port.to_string()).await;

    let page = Visitor::new(server.addr).get(&client.host, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("version 1"), "{}", page.text());

    let mut ws = wsecho::connect(server.addr, &client.host, "/livereload")
        .await
        .unwrap();
    let hello = r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#;
    ws.send(Message::text(hello)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the dev server answers hello")
        .unwrap()
        .unwrap();
    assert!(
        answer.to_text().unwrap().contains(r#""command": "hello""#),
        "{answer}"
    );
    ws.send(Message::text(
        r#"{"command":"info","url":"/","plugins":{}}"#,
    ))
    .await
    .unwrap();

    // livereload ignores changes in its first seconds; keep editing until
    // the reload comes (each edit is a real change of the served page).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut version = 1;
    let reload = loop {
        assert!(Instant::now() < deadline, "no reload through the tunnel");
        version += 1;
        let html = format!("<html><body>version {version}</body></html>");
        std::fs::write(dev.dir.join("index.html"), html).unwrap();
        match tokio::time::timeout(Duration::from_millis(1500), ws.next()).await {
            Ok(Some(Ok(msg))) if msg.to_text().unwrap_or("").contains("reload") => break msg,
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(other) => panic!("the live-reload socket ended: {other:?}"),
        }
    };
    assert!(
        reload.to_text().unwrap().contains(r#""command": "reload""#),
        "{reload}"
    );
    let page = Visitor::new(server.addr).get(&client.host, "/").await;
    assert!(
        page.text().contains(&format!("version {version}")),
        "{}",
        page.text()
    );
}
