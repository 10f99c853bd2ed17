//! Keys and login as a person uses them, with the real binary: `cryptun
//! keys` manages a data directory in a temp folder; a server on a real
//! domain requires a key by default; `cryptun http` finds it in
//! `CRYPTUN_TOKEN` or in what `cryptun login` saved (mode 0600), says what
//! to do when it has none; and the key shows up in no log line, even at
//! debug level. `transfer`: moving them to a cluster's store and back
//! (`keys export|import`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod transfer;

use crate::common::Proc;
use cryptun_testkit::{TempDir, Visitor};

fn cryptun(args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
    cmd.args(args)
        .env_remove("CRYPTUN_TOKEN")
        .env_remove("CRYPTUN_DATA_DIR")
        .env_remove("CRYPTUN_AUTH")
        .env_remove("CRYPTUN_CLUSTER_URL")
        .env_remove("CRYPTUN_SERVER")
        .env("RUST_LOG", "debug");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// Runs a command to completion, feeding it `stdin`.
fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn listening_addr(lines: &[String]) -> SocketAddr {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("addr="))
        .expect("the listening line names the address")
        .parse()
        .unwrap()
}

#[test]
fn keys_create_list_reserve_revoke() {
    let data = TempDir::new();
    let env = [("CRYPTUN_DATA_DIR", data.path.as_path())];
    let created = stdout(&run(
        cryptun(&["keys", "create", "--name", "ci", "--json"], &env),
        "",
    ));
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with(&format!("ck_{id}_")), "{token}");

    let plain = stdout(&run(
        cryptun(&["keys", "create", "--name", "laptop"], &env),
        "",
    ));
    assert!(plain.contains("shown only this once"), "{plain}");

    stdout(&run(cryptun(&["keys", "reserve", id, "myapp"], &env), ""));
    let list = stdout(&run(cryptun(&["keys", "list"], &env), ""));
    assert!(!list.contains(token), "list shows no token");
    let row = list.lines().find(|l| l.starts_with(id)).unwrap();
    assert!(
        row.contains("ci") && row.contains("active") && row.contains("myapp"),
        "{row}"
    );

    stdout(&run(cryptun(&["keys", "revoke", id], &env), ""));
    let list = stdout(&run(cryptun(&["keys", "list", "--json"], &env), ""));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let ci = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert!(ci["revoked_at"].is_string(), "{ci}");

    let failed = run(cryptun(&["keys", "revoke", "nosuchid"], &env), "");
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no key with id"));
}

#[tokio::test]
async fn a_server_on_a_real_domain_requires_a_key_that_login_saves() {
    let (data, config) = (TempDir::new(), TempDir::new());
    let env = [
        ("CRYPTUN_DATA_DIR", data.path.as_path()),
        ("XDG_CONFIG_HOME", config.path.as_path()),
    ];
    let created = stdout(&run(
        cryptun(&["keys", "create", "--name", "t", "--json"], &env),
        "",
    ));
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let secret_part = token.rsplit('_').next().unwrap().to_owned();

    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--domain",
        "tunnels.example.test",
    ];
    let server = Proc::start(cryptun(&args, &env));
    let startup = server.log_until("key database");
    assert!(
        startup.iter().any(|l| l.contains("auth=required")),
        "{startup:#?}"
    );
    let addr = listening_addr(&startup);
    let server_url = format!("http://{addr}");

    // Without a key: refused, with a hint.
    let http = ["http", "--hello", "--json", "--server", &server_url];
    let refused = run(cryptun(&http, &env), "");
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("requires an API key") && error.contains("cryptun login"),
        "{error}"
    );

    // `cryptun login` reads the key from stdin and saves it privately.
    // It checks the key with the server first.
    let login = ["login", "--server", server_url.as_str()];
    let saved = stdout(&run(cryptun(&login, &env), &format!("{token}\n")));
    let path = config.path.join("cryptun").join("client.toml");
    assert!(saved.contains(&path.display().to_string()), "{saved}");
    assert!(!saved.contains(&secret_part));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    let client = Proc::start(cryptun(&http, &env));
    let first = client.line();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let url = first["public_url"].as_str().unwrap();
    assert!(url.contains(".tunnels.example.test:"), "{url}");
    let host = url.strip_prefix("http://").unwrap();
    let reply = Visitor::new(addr).get(host, "/").await;
    assert_eq!(reply.status, 200);

    // CRYPTUN_TOKEN works too, and a bad one is refused with its own hint.
    let empty = TempDir::new();
    let mut by_env = cryptun(&http, &[("XDG_CONFIG_HOME", empty.path.as_path())]);
    by_env.env("CRYPTUN_TOKEN", &token);
    let by_env = Proc::start(by_env);
    let line = by_env.line();
    assert!(line.contains("tunnel_created"), "{line}");
    let mut bad = cryptun(&http, &[("XDG_CONFIG_HOME", empty.path.as_path())]);
    bad.env("CRYPTUN_TOKEN", "ck_aaaaaaaa_wrong");
    let bad = run(bad, "");
    let error = String::from_utf8_lossy(&bad.stderr);
    assert!(
        error.contains("unknown or revoked") && error.contains("check the key"),
        "{error}"
    );

    // No log line of any process shows the key.
    let mut logs = startup;
    logs.extend(server.finish());
    logs.extend(client.finish());
    logs.extend(by_env.finish());
    logs.push(String::from_utf8_lossy(&refused.stderr).into_owned());
    assert!(
        logs.iter().any(|l| l.contains("authenticated")),
        "{logs:#?}"
    );
    for line in &logs {
        assert!(
            !line.contains(&secret_part),
            "the key leaked into a log: {line}"
        );
    }
}

#[test]
fn login_without_server_checks_the_key_with_the_server_of_client_toml() {
    let (data, config) = (TempDir::new(), TempDir::new());
    let env = [
        ("CRYPTUN_DATA_DIR", data.path.as_path()),
        ("XDG_CONFIG_HOME", config.path.as_path()),
    ];
    let created = stdout(&run(
        cryptun(&["keys", "create", "--name", "desk", "--json"], &env),
        "",
    ));
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let token = created["token"].as_str().unwrap();
    let args = ["server", "--listen", "127.0.0.1:0", "--auth", "required"];
    let server = Proc::start(cryptun(&args, &env));
    let addr = listening_addr(&server.log_until("key database"));
    let url = format!("http://{addr}");
    let path = config.path.join("cryptun").join("client.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let before = format!("server = \"{url}\"  # mine\n");
    std::fs::write(&path, &before).unwrap();

    // No --server: the file's server checks the key (here the only one
    // that knows it), and the file keeps its own server line.
    let said = stdout(&run(cryptun(&["login", token], &env), ""));
    assert!(said.contains(&format!("works with {url}")), "{said}");
    assert!(!said.contains("Saved http"), "{said}");
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(after, format!("{before}token = \"{token}\"\n"));

    // And a key that server refuses is refused by it, not by a default.
    let refused = run(cryptun(&["login", "ck_abcdefgh_wrong"], &env), "");
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("does not accept this key"), "{error}");
}

#[test]
fn on_loopback_with_domain_localhost_auth_is_off_and_the_database_is_kept_all_the_same() {
    let data = TempDir::new();
    let server = Proc::start(cryptun(
        &["server", "--listen", "127.0.0.1:0"],
        &[("CRYPTUN_DATA_DIR", data.path.as_path())],
    ));
    let startup = server.log_until("no API keys");
    assert!(
        startup.iter().any(|l| l.contains("auth=off")),
        "{startup:#?}"
    );
    // Its own records (names held across a restart) are kept whatever the
    // auth mode; keys and reservations are not looked at.
    assert!(data.path.join("cryptun.db").is_file());
}

#[tokio::test]
async fn keys_revoke_closes_the_live_tunnels_of_a_running_server() {
    let data = TempDir::new();
    let env = [("CRYPTUN_DATA_DIR", data.path.as_path())];
    let created = stdout(&run(
        cryptun(&["keys", "create", "--name", "leaked", "--json"], &env),
        "",
    ));
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "required",
        "--revocation-poll",
        "200ms",
    ];
    let server = Proc::start(cryptun(&args, &env));
    let addr = listening_addr(&server.log_until("key database"));
    let server_url = format!("http://{addr}");
    let mut http = cryptun(&["http", "--hello", "--json", "--server", &server_url], &[]);
    http.env("CRYPTUN_TOKEN", token);
    let mut client = Proc::start(http);
    let first: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    let host = first["public_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .to_owned();
    let visitor = Visitor::new(addr);
    assert_eq!(visitor.get(&host, "/").await.status, 200);

    let revoked = stdout(&run(cryptun(&["keys", "revoke", id], &env), ""));
    assert!(revoked.contains("closes its live ones"), "{revoked}");

    // The client stops by itself, with the reason, and does not reconnect.
    let status = client.wait_exit(std::time::Duration::from_secs(10));
    assert!(!status.success());
    let logs = client.finish();
    assert!(logs.iter().any(|l| l.contains("was revoked")), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("reconnect")), "{logs:#?}");
    let tunnels = visitor.tunnels().await;
    assert!(tunnels.is_empty(), "{tunnels:?}");
    assert_eq!(visitor.get(&host, "/").await.status, 404);
    let server_logs = server.finish();
    assert!(
        server_logs.iter().any(|l| l.contains("key revoked")),
        "{server_logs:#?}"
    );
}

#[test]
fn keys_in_a_clusters_store() {
    let redis = cryptun_testkit::TestRedis::start();
    let url = redis.url();
    let keys = |args: &[&str]| {
        let mut all = vec!["keys", "--cluster", url.as_str()];
        all.extend_from_slice(args);
        stdout(&run(cryptun(&all, &[]), ""))
    };
    let created: serde_json::Value =
        serde_json::from_str(keys(&["create", "--name", "ci", "--json"]).trim()).unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(created["token"].as_str().unwrap().starts_with("ck_"));
    keys(&["reserve", id, "myapp"]);
    let listed: serde_json::Value = serde_json::from_str(keys(&["list", "--json"]).trim()).unwrap();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["reserved"][0], "myapp");
    // In Redis, not in any data directory.
    let stored = redis.command(&["SISMEMBER", "cryptun:1:keys", id]);
    assert!(stored.starts_with(":1"), "{stored}");
    keys(&["revoke", id]);
    let listed: serde_json::Value = serde_json::from_str(keys(&["list", "--json"]).trim()).unwrap();
    assert!(listed[0]["revoked_at"].is_string(), "{listed}");
    // Both stores named (a flag and the other's variable): refused, not
    // a silent choice.
    let dir = tempfile::tempdir().unwrap();
    let both = run(
        cryptun(
            &["keys", "--cluster", &url, "list"],
            &[("CRYPTUN_DATA_DIR", dir.path())],
        ),
        "",
    );
    assert!(!both.status.success());
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(err.contains("name one store"), "{err}");
    // Unreachable: a clear error, not a hang.
    drop(redis);
    let out = run(cryptun(&["keys", "--cluster", &url, "list"], &[]), "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster"), "{err}");
}
