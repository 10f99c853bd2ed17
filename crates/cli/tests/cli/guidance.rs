//! Errors that say what to do, with the real binary: no server at the
//! address, the wrong scheme for a port (both ways), `cryptun tcp`, a
//! server on a public address with domain `localhost`, `cryptun login`
//! checking the key before saving it, and a tunnel to a port nothing
//! listens on (a warning at start, a short request line).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{Proc, cryptun, data_home, listening_addr};
use cryptun_testkit::{TempDir, Visitor};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `cryptun ARGS` run to its end, with `config` as its config directory.
fn run(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryptun"))
        .args(args)
        .env("CRYPTUN_INSPECT", "off")
        .env_remove("CRYPTUN_SERVER")
        .env_remove("CRYPTUN_TOKEN")
        .env("XDG_CONFIG_HOME", config)
        .env("XDG_DATA_HOME", data_home())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_server_there_suggests_starting_one() {
    let server = format!("http://127.0.0.1:{}", closed_port());
    let out = run(
        &["http", "3000", "--server", &server],
        Path::new("/nonexistent"),
    );
    assert!(!out.status.success());
    let error = stderr(&out);
    for hint in ["cryptun server", "--server URL", "cryptun demo"] {
        assert!(error.contains(hint), "{error}");
    }
}

/// The address a server logged for its `scheme` listener.
fn listening(proc: &Proc, scheme: &str) -> SocketAddr {
    let needle = format!("scheme={scheme} ");
    loop {
        let line = proc.log_with("listening");
        if line.contains(&needle) {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="));
            return addr.unwrap().parse().unwrap();
        }
    }
}

#[test]
fn the_wrong_scheme_for_a_port_is_named_with_the_right_one() {
    let server = cryptun(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--tls-listen",
        "127.0.0.1:0",
    ]);
    let plain = listening(&server, "http");
    let tls = listening(&server, "https");
    let nowhere = Path::new("/nonexistent");
    let http_to_tls = run(
        &["http", "3000", "--server", &format!("http://{tls}")],
        nowhere,
    );
    let error = stderr(&http_to_tls);
    assert!(!http_to_tls.status.success());
    assert!(
        error.contains(&format!("--server https://{tls}")),
        "{error}"
    );
    assert!(!error.contains("httparse"), "{error}");
    let https_to_plain = run(
        &["http", "3000", "--server", &format!("https://{plain}")],
        nowhere,
    );
    let error = stderr(&https_to_plain);
    assert!(!https_to_plain.status.success());
    assert!(
        error.contains(&format!("--server http://{plain}")),
        "{error}"
    );
    assert!(!error.contains("InvalidContentType"), "{error}");
}

#[test]
fn a_public_address_with_domain_localhost_is_warned_about() {
    let server = cryptun(&["server", "--listen", "0.0.0.0:0"]);
    let warning = server.log_with("will not resolve");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("--domain"), "{warning}");
    let quiet = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let startup = quiet.log_until("listening");
    assert!(
        !startup.iter().any(|l| l.contains("will not resolve")),
        "{startup:#?}"
    );
}

#[test]
fn login_checks_the_key_with_the_server_and_keeps_the_good_one() {
    let (data, config) = (TempDir::new(), TempDir::new());
    let data_dir = data.path.display().to_string();
    let keys = [
        "keys",
        "--data-dir",
        &data_dir,
        "create",
        "--name",
        "laptop",
        "--json",
    ];
    let created = run(&keys, &config.path);
    assert!(created.status.success(), "{}", stderr(&created));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["token"].as_str().unwrap();
    let server = cryptun(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "required",
        "--data-dir",
        &data_dir,
    ]);
    let url = format!("http://{}", listening_addr(&server));
    let saved = config.path.join("cryptun").join("client.toml");

    let bad = run(
        &["login", "--server", &url, "ck_abcdefgh_wrong"],
        &config.path,
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("does not accept this key"),
        "{}",
        stderr(&bad)
    );
    assert!(!saved.exists(), "a refused key is not saved");

    let good = run(&["login", "--server", &url, token], &config.path);
    assert!(good.status.success(), "{}", stderr(&good));
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(
        said.contains("laptop") && said.contains(created["id"].as_str().unwrap()),
        "{said}"
    );
    let file = std::fs::read_to_string(&saved).unwrap();
    assert!(file.contains(token), "{file}");
    assert!(file.contains(&format!("servers = [\"{url}\"]")), "{file}");

    let again = run(
        &["login", "--server", &url, "ck_abcdefgh_wrong"],
        &config.path,
    );
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        file,
        "the good key is kept"
    );

    // A client without a key is refused in words, not in protocol.
    let http = Command::new(env!("CARGO_BIN_EXE_cryptun"))
        .args(["http", "--hello", "--json", "--server", &url])
        .env("CRYPTUN_INSPECT", "off")
        .env_remove("CRYPTUN_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    let error = stderr(&http);
    assert!(error.contains("requires an API key"), "{error}");
    assert!(
        !error.contains("create_tunnel") && !error.contains("field"),
        "{error}"
    );
}

#[tokio::test]
async fn a_tunnel_to_a_closed_port_warns_at_start_and_keeps_its_lines_short() {
    let server = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let addr = listening_addr(&server);
    let port = closed_port();
    let client = cryptun(&[
        "http",
        &port.to_string(),
        "--server",
        &format!("http://{addr}"),
    ]);
    let warning = client.log_with("nothing listens");
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    assert!(warning.chars().count() <= 80, "{warning}");
    let url = loop {
        let line = client.line();
        if let Some(url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://tunnel-"))
        {
            break url.to_owned();
        }
    };
    let host = url.strip_prefix("http://").unwrap();
    let reply = Visitor::new(addr).get(host, "/").await;
    assert_eq!(reply.status, 502);
    let line = loop {
        let line = client.line();
        if line.starts_with("GET") {
            break line;
        }
    };
    assert!(line.contains(&format!(":{port} refused")), "{line}");
    assert!(
        line.chars().count() <= 80,
        "{} columns: {line}",
        line.chars().count()
    );
}
