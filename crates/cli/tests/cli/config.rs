//! Config files with the real binary: a server's settings come from flags,
//! then `CRYPTUN_*` variables, then its file (found at the default path or
//! given with `--config`), then the defaults; a bad key or value stops it
//! naming the file and line; `cryptun start` opens the tunnels of
//! `client.toml` over one connection, each to its own local service, with
//! one request inspector for all of them (`--inspect`); and `cryptun
//! login` changes the token of that file and nothing else.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::Proc;
use cryptun_testkit::{Origin, TempDir, Visitor};

/// `cryptun ARGS` with `home` as its config directory and no `CRYPTUN_*`
/// variable but those of `env`.
fn cryptun(args: &[&str], home: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
    cmd.args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("RUST_LOG", "info")
        .env("CRYPTUN_INSPECT", "off");
    for (name, _) in std::env::vars() {
        if name.starts_with("CRYPTUN_") && name != "CRYPTUN_INSPECT" {
            cmd.env_remove(name);
        }
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    Proc::start(cmd)
}

/// Writes `text` as `home/cryptun/NAME` and returns its path.
fn write(home: &Path, name: &str, text: &str) -> String {
    let dir = home.join("cryptun");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The address and domain of the server's "listening" line.
fn listening(server: &Proc) -> (SocketAddr, String) {
    let line = server.log_with("listening");
    let word = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    (word("addr").parse().unwrap(), word("domain"))
}

/// Runs a command that must fail at start; returns its stderr.
fn refused(mut proc: Proc) -> String {
    let status = proc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{status:?}");
    proc.finish().join("\n")
}

#[test]
fn flags_win_over_the_environment_over_the_file_over_the_defaults() {
    let home = TempDir::new();
    let home = home.path.as_path();
    // Nothing anywhere: the default domain.
    let server = cryptun(&["server", "--listen", "127.0.0.1:0"], home, &[]);
    assert_eq!(listening(&server).1, "localhost");
    drop(server);

    // The file at the default path, found without --config: its
    // ephemeral port, not the default 4000, and its domain.
    let text = "# a comment\nlisten = \"127.0.0.1:0\"\ndomain = \"file.test\"\nauth = \"off\"\n";
    write(home, "server.toml", text);
    let server = cryptun(&["server"], home, &[]);
    let (addr, domain) = listening(&server);
    assert_ne!(addr.port(), 4000);
    assert_eq!(domain, "file.test");
    drop(server);

    let env = [("CRYPTUN_DOMAIN", "env.test")];
    let server = cryptun(&["server"], home, &env);
    assert_eq!(listening(&server).1, "env.test");
    drop(server);

    let server = cryptun(&["server", "--domain", "flag.test"], home, &env);
    assert_eq!(listening(&server).1, "flag.test");
}

#[test]
fn an_unknown_key_is_refused_with_the_file_and_line() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let path = write(
        home,
        "server.toml",
        "domain = \"a.test\"\n\nrequest_timout = \"5s\"\n",
    );
    let error = refused(cryptun(&["server", "--config", &path], home, &[]));
    assert!(error.contains(&format!("{path}:3")), "{error}");
    assert!(
        error.contains("request_timout") && error.contains("unknown key"),
        "{error}"
    );

    // In a tunnel of the client's file too, and a key with no place in a
    // file at all.
    let client = write(
        home,
        "client.toml",
        "[tunnels.web]\ntarget = \"3000\"\nport = 3\n",
    );
    let error = refused(cryptun(&["start", "--all"], home, &[]));
    assert!(error.contains(&format!("{client}:3")), "{error}");
    assert!(
        error.contains("`port`") && error.contains("[tunnels.web]"),
        "{error}"
    );
    let path = write(home, "other.toml", "config = \"x.toml\"\n");
    let error = refused(cryptun(&["server", "--config", &path], home, &[]));
    assert!(error.contains(&format!("{path}:1")), "{error}");
}

/// A secret's bad value is refused by key, file and line, without the
/// value itself in the message (it may be most of a real password).
#[test]
fn a_bad_secret_is_refused_without_its_value() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let client = write(
        home,
        "client.toml",
        "[tunnels.web]\ntarget = \"3000\"\nbasic_auth = \"annsecretnocolon\"\n",
    );
    let error = refused(cryptun(&["start", "web"], home, &[]));
    assert!(error.contains(&format!("{client}:3")), "{error}");
    assert!(error.contains("`basic_auth`"), "{error}");
    assert!(!error.contains("annsecretnocolon"), "{error}");

    let server = write(home, "server.toml", "admin_token = \"short\"\n");
    let error = refused(cryptun(&["server", "--config", &server], home, &[]));
    assert!(error.contains(&format!("{server}:1")), "{error}");
    assert!(!error.contains("short\""), "{error}");
}

/// The rules between TLS settings that clap checks for flags hold for
/// values from a file too.
#[test]
fn tls_settings_from_a_file_follow_the_flags_rules() {
    let home = TempDir::new();
    let home = home.path.as_path();
    for (text, needs) in [
        ("tls_cert = \"c.pem\"\n", "tls_cert needs tls_key"),
        ("tls_key = \"k.pem\"\n", "tls_key needs tls_cert"),
        (
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_self_signed = true\n",
            "exclude each other",
        ),
        (
            "redirect_http = true\n",
            "redirect_http needs a certificate",
        ),
        (
            "acme_dns_server = \"127.0.0.1:53\"\ntls_self_signed = true\n",
            "acme_dns_server excludes",
        ),
        (
            "acme_dns_server = \"127.0.0.1:53\"\n",
            "needs --acme-agree-tos",
        ),
        (
            "acme_dns_server = \"127.0.0.1:53\"\nacme_agree_tos = true\n",
            "need a TSIG key",
        ),
    ] {
        let path = write(
            home,
            "server.toml",
            &format!("listen = \"127.0.0.1:0\"\n{text}"),
        );
        let mut server = cryptun(&["server", "--config", &path], home, &[]);
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "{text}: {status:?}");
        let output = server.finish().join("\n");
        assert!(output.contains(needs), "{text}: {output}");
    }
}

#[test]
fn a_bad_value_is_refused_with_the_key_file_and_line() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let path = write(
        home,
        "server.toml",
        "listen = \"127.0.0.1:0\"\nmax_streams = \"many\"\n",
    );
    let error = refused(cryptun(&["server", "--config", &path], home, &[]));
    assert!(error.contains(&format!("{path}:2")), "{error}");
    assert!(
        error.contains("`max_streams`") && error.contains("many"),
        "{error}"
    );

    let client = write(
        home,
        "client.toml",
        "[tunnels.web]\ntarget = \"3000\"\n\n[tunnels.api]\ntarget = \"3001\"\nrequest_timeout = \"soon\"\n",
    );
    let error = refused(cryptun(&["start", "api"], home, &[]));
    assert!(error.contains(&format!("{client}:6")), "{error}");
    assert!(error.contains("`request_timeout`"), "{error}");
    write(
        home,
        "client.toml",
        "[tunnels.web]\ntarget = \"3000\"\nallow_ips = [\"10.0.0.0/8\", \"10.1/33\"]\n",
    );
    let error = refused(cryptun(&["start", "web"], home, &[]));
    assert!(error.contains(&format!("{client}:3")), "{error}");
    assert!(
        error.contains("`allow_ips`") && error.contains("10.1/33"),
        "{error}"
    );
    // The flag itself, and the key at the top of the file, alike: refused
    // before connecting, not by the server once connected.
    let error = refused(cryptun(
        &["http", "3000", "--deny-ip", "10.1/33"],
        home,
        &[],
    ));
    assert!(
        error.contains("--deny-ip") && error.contains("10.1/33"),
        "{error}"
    );
    write(home, "client.toml", "allow_ips = [\"10.1/33\"]\n");
    let error = refused(cryptun(&["http", "3000"], home, &[]));
    assert!(error.contains(&format!("{client}:1")), "{error}");

    // A --config that is not there is an error; a default file that is
    // not there is not (the first test).
    let missing = home.join("missing.toml");
    let error = refused(cryptun(
        &["server", "--config", missing.to_str().unwrap()],
        home,
        &[],
    ));
    assert!(error.contains("missing.toml"), "{error}");
}

/// A server on an ephemeral port, with no config file.
fn server(home: &Path) -> (Proc, SocketAddr) {
    let server = cryptun(&["server", "--listen", "127.0.0.1:0"], home, &[]);
    let (addr, _) = listening(&server);
    (server, addr)
}

/// Reads `n` tunnel_created lines of `cryptun start --json`: name → Host.
fn created(client: &Proc, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let line: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
            assert_eq!(line["type"], "tunnel_created", "{line}");
            let url = line["public_url"].as_str().unwrap();
            let host = url.strip_prefix("http://").unwrap().to_owned();
            (line["name"].as_str().unwrap().to_owned(), host)
        })
        .collect()
}

/// An HTTP tunnel and a TCP tunnel (`proto = "tcp"`) over one connection:
/// each carries its own traffic, and each says what it is.
#[tokio::test(flavor = "multi_thread")]
async fn start_opens_an_http_and_a_tcp_tunnel_side_by_side() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let home = TempDir::new();
    let home = home.path.as_path();
    let (_server, addr) = server(home);
    let web = Origin::start().await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let text = format!(
        "server = \"http://{addr}\"\njson = true\n\n[tunnels.web]\ntarget = \"{}\"\n\n[tunnels.echo]\nproto = \"tcp\"\ntarget = \"{echo_addr}\"\n",
        web.target()
    );
    write(home, "client.toml", &text);
    let client = cryptun(&["start", "--all"], home, &[]);
    let lines: Vec<serde_json::Value> = (0..2)
        .map(|_| serde_json::from_str(&client.line()).unwrap())
        .collect();
    assert_eq!(lines[0]["name"], "web");
    assert_eq!(lines[0].get("protocol"), None, "{}", lines[0]);
    assert_eq!(lines[1]["name"], "echo");
    assert_eq!(lines[1]["protocol"], "tcp");
    let port = lines[1]["remote_port"].as_u64().unwrap() as u16;

    let host = lines[0]["public_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap();
    let reply = Visitor::new(addr).get(host, "/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(b"side by side").await.unwrap();
    let mut back = [0; 12];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"side by side");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_all_serves_two_tunnels_to_two_origins_over_one_connection() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let (_server, addr) = server(home);
    let (one, two) = (Origin::start().await, Origin::start().await);
    let text = format!(
        "server = \"http://{addr}\"\njson = true\n\n[tunnels.one]\ntarget = \"{}\"\n\n[tunnels.two]\ntarget = \"{}\"\nsubdomain = \"second\"\n",
        one.target(),
        two.target()
    );
    write(home, "client.toml", &text);
    let client = cryptun(&["start", "--all"], home, &[]);
    let tunnels = created(&client, 2);
    assert_eq!(tunnels[0].0, "one");
    assert_eq!(tunnels[1].0, "two");
    assert!(tunnels[1].1.starts_with("second."), "{tunnels:?}");

    let visitor = Visitor::new(addr);
    let reply = visitor.get(&tunnels[0].1, "/echo?to=one").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((one.requests(), two.requests()), (1, 0));
    let reply = visitor.get(&tunnels[1].1, "/echo?to=two").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo?to=two");
    assert_eq!((one.requests(), two.requests()), (1, 1));

    // One client connection carries both.
    let live = visitor.tunnels().await;
    assert_eq!(live.len(), 2, "{live:?}");
    assert_eq!(live[0]["client_addr"], live[1]["client_addr"], "{live:?}");
    let metrics = visitor.metrics().await;
    assert_eq!(
        cryptun_testkit::visitor::sample(&metrics, "cryptun_sessions"),
        1.0
    );
    // Each request line names its tunnel.
    let request: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(
        (&request["type"], &request["tunnel"]),
        (&"request".into(), &"one".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_name_opens_only_that_tunnel_and_an_unknown_name_lists_the_others() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let (_server, addr) = server(home);
    let origin = Origin::start().await;
    let text = format!(
        "server = \"http://{addr}\"\n[tunnels.web]\ntarget = \"{0}\"\n[tunnels.api]\ntarget = \"{0}\"\n",
        origin.target()
    );
    let path = write(home, "elsewhere.toml", &text);
    let client = cryptun(&["start", "api", "--json", "--config", &path], home, &[]);
    let tunnels = created(&client, 1);
    assert_eq!(tunnels[0].0, "api");
    let visitor = Visitor::new(addr);
    let reply = visitor.get(&tunnels[0].1, "/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(visitor.tunnels().await.len(), 1);

    let mut typo = cryptun(&["start", "web", "ap", "--config", &path], home, &[]);
    let status = typo.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let error = typo.finish().join("\n");
    assert!(
        error.contains("no tunnel ap") && error.contains("web, api"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_inspect_shows_every_tunnel_and_replays_to_each_origin() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let (_server, addr) = server(home);
    let (one, two) = (Origin::start().await, Origin::start().await);
    let text = format!(
        "server = \"http://{addr}\"\n[tunnels.one]\ntarget = \"{}\"\n[tunnels.two]\ntarget = \"{}\"\n",
        one.target(),
        two.target()
    );
    write(home, "client.toml", &text);
    let args = ["start", "--all", "--json", "--inspect=127.0.0.1:0"];
    let client = cryptun(&args, home, &[]);
    let tunnels = created(&client, 2);
    let line: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(line["type"], "inspector", "{line}");
    let url = line["url"].as_str().unwrap();
    let inspector: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let inspect = Visitor::new(inspector);
    let host = inspector.to_string();

    let visitor = Visitor::new(addr);
    for (name, tunnel_host) in &tunnels {
        let reply = visitor.get(tunnel_host, &format!("/echo/{name}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // A request line is printed once the inspector has recorded its end.
    for _ in 0..2 {
        let line: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
        assert_eq!(line["type"], "request", "{line}");
    }
    let list = inspect.get(&host, "/api/requests").await.json();
    let listed: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["tunnel"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("/echo/two", "two"), ("/echo/one", "one")]);
    let status = inspect.get(&host, "/api/status").await.json();
    let names: Vec<&str> = status["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        status["tunnels"][1]["public_url"],
        format!("http://{}", tunnels[1].1)
    );

    // Replaying the second tunnel's request reaches the second origin only.
    let path = format!("/api/requests/{}/replay", list[0]["id"]);
    let replayed = inspect.call("POST", &host, &path, "").await;
    assert_eq!(replayed.status, 202, "{}", replayed.text());
    cryptun_testkit::raw::eventually(Duration::from_secs(5), "the replay", || async {
        two.requests() == 2
    })
    .await;
    assert_eq!(one.requests(), 1);

    // --inspect takes what `cryptun http --inspect` takes, and nothing else.
    let error = refused(cryptun(&["start", "--all", "--inspect=nowhere"], home, &[]));
    assert!(
        error.contains("expected an address such as 127.0.0.1:4040, or off"),
        "{error}"
    );
}

#[test]
fn login_changes_only_the_token_of_client_toml() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let before = "# my tunnels\nserver = \"http://127.0.0.1:4000\"  # the server\ntoken = \"ck_old\"\n\n[tunnels.web]\ntarget = \"3000\"  # dev server\n";
    let path = write(home, "client.toml", before);
    // Login checks the key with the server first (this one checks none).
    let server = cryptun(&["server", "--listen", "127.0.0.1:0"], home, &[]);
    let url = format!("http://{}", crate::common::listening_addr(&server));
    let env = [("CRYPTUN_SERVER", url.as_str())];
    let mut login = cryptun(&["login", "ck_new_key"], home, &env);
    assert!(login.wait_exit(Duration::from_secs(10)).success());
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(after, before.replace("ck_old", "ck_new_key"));

    // A file without a token gets one, the rest as it was.
    let before = "# only tunnels\n[tunnels.web]\ntarget = \"3000\"\n";
    std::fs::write(&path, before).unwrap();
    let mut login = cryptun(&["login", "ck_other"], home, &env);
    assert!(login.wait_exit(Duration::from_secs(10)).success());
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.contains("token = \"ck_other\""), "{after}");
    assert!(
        after.contains("# only tunnels\n") && after.contains("[tunnels.web]\ntarget = \"3000\"\n"),
        "{after}"
    );
}

#[test]
fn behind_a_proxy_terminating_tls_public_urls_say_https() {
    let home = TempDir::new();
    let home = home.path.as_path();
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--public-scheme",
        "https",
        "--public-port",
        "443",
    ];
    let server = cryptun(&args, home, &[]);
    let (addr, _) = listening(&server);
    let client = cryptun(
        &[
            "http",
            "--hello",
            "--json",
            "--server",
            &format!("http://{addr}"),
        ],
        home,
        &[],
    );
    let line: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    let url = line["public_url"].as_str().unwrap();
    assert!(url.starts_with("https://tunnel-"), "{line}");
    assert!(url.ends_with(".localhost"), "no port: {line}");

    let bad = cryptun(&["server", "--public-scheme", "ftp"], home, &[]);
    assert!(refused(bad).contains("ftp"));
}
