//! The example files of `examples/` go through the real loader, as they
//! are and with every commented-out key switched on, and show every key
//! the loader accepts: a flag added without its line in the example fails
//! here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;

use super::{ConfigFile, file_arg, parse_from, tunnels};
use crate::{Cli, Command};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("cryptun")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

/// `text` with each `# key = value` line made live.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_key_line(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_key_line(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// The keys of `text` (live or commented out), in the top-level table.
fn keys_shown(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|line| !line.starts_with('['))
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .filter(|line| is_key_line(line))
        .filter_map(|line| line.split_once(" = ").map(|(k, _)| k.to_owned()))
        .collect()
}

fn file_keys(subcommand: &str) -> Vec<String> {
    let cli = Cli::command();
    let cmd = cli.find_subcommand(subcommand).unwrap();
    cmd.get_arguments()
        .filter(|arg| file_arg(cmd, arg.get_id().as_str()).is_some())
        .map(|arg| arg.get_id().to_string())
        .collect()
}

fn temp_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn the_server_example_loads_and_shows_every_key() {
    let path = example("server.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shown = keys_shown(&text);
    for key in file_keys("server") {
        assert!(shown.contains(&key), "examples/server.toml lacks {key}");
    }
    let (cli, file) = parse_from(&argv(&["server", "--config", path.to_str().unwrap()])).unwrap();
    assert!(file.is_some());
    let Command::Server(args) = cli.command else {
        panic!("not server")
    };
    assert_eq!(args.listen, "127.0.0.1:4000".parse().unwrap());
    assert_eq!(args.request_timeout, Duration::from_secs(60));
    assert!(args.public_port.is_none());

    let (_dir, all) = temp_file(&uncommented(&text));
    let (cli, _) = parse_from(&argv(&["server", "--config", all.to_str().unwrap()])).unwrap();
    let Command::Server(args) = cli.command else {
        panic!("not server")
    };
    assert_eq!(args.public_port, Some(80));
    assert_eq!(args.max_body_size, Some(10 << 20));
    assert!(args.admin_token.is_some() && args.rate_limit_tunnel.is_some());
    assert_eq!(args.auth, Some(cryptun_server::AuthMode::Required));
    assert_eq!(args.trusted_proxies.len(), 2);
}

#[test]
fn the_client_example_loads_and_shows_every_key() {
    let path = example("client.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shown = keys_shown(&text);
    for key in file_keys("start") {
        assert!(shown.contains(&key), "examples/client.toml lacks {key}");
    }
    for key in tunnels::TUNNEL_KEYS {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "examples/client.toml's tunnels lack {key}"
        );
    }
    for text in [text.clone(), uncommented(&text)] {
        let (_dir, path) = temp_file(&text);
        let args = argv(&["start", "--all", "--config", path.to_str().unwrap()]);
        let (cli, file) = parse_from(&args).unwrap();
        assert!(matches!(cli.command, Command::Start(_)));
        let file: ConfigFile = file.unwrap();
        let declared = tunnels::declared(&file).unwrap();
        let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["web", "api", "dev", "ssh"]);
        let ssh = &declared[3].config;
        assert_eq!(ssh.protocol, cryptun_client::TunnelProtocol::Tcp);
        assert_eq!(ssh.remote_port, Some(20022));
        assert_eq!(
            ssh.local_proxy_protocol,
            Some(cryptun_client::LocalProxyProtocol::V2)
        );
        assert_eq!(ssh.shown_target(), "127.0.0.1:22");
        let web = &declared[0].config;
        assert_eq!(
            web.target.host_header(),
            &cryptun_client::HostHeader::Rewrite
        );
        assert!(declared[0].sets_host_header && !declared[1].sets_host_header);
        assert!(declared[1].config.pool && !declared[0].config.pool);
        let dev = &declared[2].config.target;
        assert_eq!(dev.to_string(), "https://localhost:8443");
        let ca = dev.local_tls().and_then(|tls| tls.ca.as_deref());
        assert_eq!(
            ca,
            Some(Path::new("/home/me/.local/share/mkcert/rootCA.pem"))
        );
        assert_eq!(web.subdomain.as_deref(), Some("myapp"));
        assert_eq!(web.allow_ips, ["203.0.113.0/24"]);
        assert_eq!(web.max_body_size, Some(10 << 20));
        assert_eq!(web.basic_auth.as_ref().unwrap().username, "ann");
        // `cryptun http` reads the same file's top-level keys.
        let args = argv(&["http", "3000", "--config", path.to_str().unwrap()]);
        assert!(matches!(
            parse_from(&args).unwrap().0.command,
            Command::Http(_)
        ));
    }
}

#[test]
fn a_flag_wins_over_the_file() {
    let (_dir, path) = temp_file("domain = \"file.test\"\nmax_streams = 7\n");
    let path = path.to_str().unwrap();
    let (cli, _) = parse_from(&argv(&[
        "server",
        "--config",
        path,
        "--domain",
        "flag.test",
    ]))
    .unwrap();
    let Command::Server(args) = cli.command else {
        panic!("not server")
    };
    assert_eq!(args.domain, "flag.test");
    assert_eq!(args.max_streams, 7);
}

#[test]
fn trusted_proxies_come_from_the_file_as_a_list_and_bad_ones_are_refused() {
    let (_dir, path) = temp_file("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n");
    let (cli, _) = parse_from(&argv(&["server", "--config", path.to_str().unwrap()])).unwrap();
    let Command::Server(args) = cli.command else {
        panic!("not server")
    };
    let proxies: Vec<String> = args.trusted_proxies.iter().map(|c| c.to_string()).collect();
    assert_eq!(proxies, ["127.0.0.1/32", "10.0.0.0/8"]);

    let (_dir, path) = temp_file("trusted_proxies = [\"10.0.0.0/33\"]\n");
    let err = parse_from(&argv(&["server", "--config", path.to_str().unwrap()])).unwrap_err();
    assert!(
        format!("{err:#}").contains("not an IP address or CIDR block"),
        "{err:#}"
    );
}

#[test]
fn tunnels_are_no_key_of_the_server_file() {
    let (_dir, path) = temp_file("[tunnels.web]\ntarget = \"3000\"\n");
    let err = parse_from(&argv(&["server", "--config", path.to_str().unwrap()])).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("config.toml:1") && err.contains("`tunnels`: unknown key"),
        "{err}"
    );
}

#[test]
fn a_trusted_proxy_of_every_address_is_refused() {
    for all in ["0.0.0.0/0", "::/0"] {
        let err = parse_from(&argv(&["server", "--trusted-proxy", all])).unwrap_err();
        assert!(
            format!("{err:#}").contains("trusts every address"),
            "{err:#}"
        );
    }
}

#[test]
fn a_cluster_tls_name_no_certificate_can_carry_is_refused_by_its_flag() {
    let files = [
        "server",
        "--cluster-tls-cert",
        "c.pem",
        "--cluster-tls-key",
        "k.pem",
        "--cluster-tls-ca",
        "ca.pem",
        "--cluster-tls-name",
    ];
    let bad = [&files[..], &["bad name!"]].concat();
    let err = parse_from(&argv(&bad)).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("--cluster-tls-name"), "{err}");
    assert!(!err.contains("ca.pem"), "{err}");
    let good = [&files[..], &["nodes.internal"]].concat();
    assert!(parse_from(&argv(&good)).is_ok());
}

#[test]
fn the_proxy_protocol_is_a_switch_of_the_file_and_the_command_line() {
    let server_args = |argv_: &[&str]| match parse_from(&argv(argv_)).unwrap().0.command {
        Command::Server(args) => args,
        _ => panic!("not server"),
    };
    assert!(!server_args(&["server"]).proxy_protocol);
    assert!(
        server_args(&["server", "--proxy-protocol", "--trusted-proxy", "10.0.0.1"]).proxy_protocol
    );
    let (_dir, path) = temp_file("proxy_protocol = true\ntrusted_proxies = [\"10.0.0.1\"]\n");
    assert!(server_args(&["server", "--config", path.to_str().unwrap()]).proxy_protocol);
}

/// The servers `cryptun http` takes from `argv` (a file among them).
fn http_servers(argv_: &[&str]) -> Result<Vec<String>, String> {
    match parse_from(&argv(argv_))
        .map_err(|e| format!("{e:#}"))?
        .0
        .command
    {
        Command::Http(args) => Ok(args.reach.servers),
        _ => panic!("not http"),
    }
}

#[test]
fn servers_come_from_a_list_or_the_one_server_of_older_files() {
    let (a, b) = ("http://127.0.0.1:4001", "http://127.0.0.1:4002");
    let (_dir, list) = temp_file(&format!("servers = [\"{a}\", \"{b}\"]\n"));
    let list = list.to_str().unwrap();
    assert_eq!(
        http_servers(&["http", "3000", "--config", list]).unwrap(),
        [a, b]
    );
    // `start` reads the same key.
    let (_dir, start) = temp_file(&format!(
        "servers = [\"{a}\", \"{b}\"]\n[tunnels.web]\ntarget = \"3000\"\n"
    ));
    let args = argv(&["start", "--all", "--config", start.to_str().unwrap()]);
    assert!(matches!(
        parse_from(&args).unwrap().0.command,
        Command::Start(_)
    ));
    // `server = "URL"`, as files said it before, is a list of one.
    let (_dir, one) = temp_file(&format!("server = \"{a}\"\n"));
    let one = one.to_str().unwrap();
    assert_eq!(
        http_servers(&["http", "3000", "--config", one]).unwrap(),
        [a]
    );
    // Flags, repeated, win over the file.
    let flags = [
        "http", "3000", "--config", list, "--server", b, "--server", a,
    ];
    assert_eq!(http_servers(&flags).unwrap(), [b, a]);
    // The default, without a file.
    assert_eq!(
        http_servers(&["http", "3000"]).unwrap(),
        ["http://127.0.0.1:4000"]
    );
    // Both keys: refused, at the second.
    let (_dir, both) = temp_file(&format!("servers = [\"{a}\"]\nserver = \"{b}\"\n"));
    let err = http_servers(&["http", "3000", "--config", both.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("config.toml:2") && err.contains("`server`") && err.contains("`servers`"),
        "{err}"
    );
    // Something else than addresses is refused with the line.
    for bad in [
        "servers = [{ url = \"x\" }]",
        "servers = [\"ftp://x\"]",
        "servers = [[\"a\"]]",
    ] {
        let (_dir, path) = temp_file(&format!("json = true\n{bad}\n"));
        let err = http_servers(&["http", "3000", "--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("config.toml:2"), "{err}");
    }
    let err = http_servers(&["http", "3000", "--server", "ftp://x"]).unwrap_err();
    assert!(err.contains("invalid server address"), "{err}");
}

/// A TCP tunnel in a file: `proto = "tcp"`, a port or host:port, and no
/// key only HTTP has; `remote_port` only with it. Each refusal at its line.
#[test]
fn tcp_tunnels_in_a_file_take_their_own_keys_only() {
    let read = |table: &str| {
        let (_dir, path) = temp_file(&format!("[tunnels.db]\n{table}"));
        let args = argv(&["start", "--all", "--config", path.to_str().unwrap()]);
        parse_from(&args).map(|_| ()).map_err(|e| format!("{e:#}"))
    };
    assert_eq!(
        read("proto = \"tcp\"\ntarget = 5432\nallow_ips = [\"10.0.0.0/8\"]\n"),
        Ok(())
    );
    let bad = read("proto = \"udp\"\ntarget = 53\n").unwrap_err();
    assert!(
        bad.contains(":2: bad value for key `proto`") && bad.contains("\"tcp\""),
        "{bad}"
    );
    let url = read("proto = \"tcp\"\ntarget = \"http://localhost:5432\"\n").unwrap_err();
    assert!(url.contains(":3") && url.contains("not a URL"), "{url}");
    let http_only = read("proto = \"tcp\"\ntarget = 5432\nbasic_auth = \"a:b\"\n").unwrap_err();
    assert!(
        http_only.contains(":4: key `basic_auth`: not for a TCP tunnel"),
        "{http_only}"
    );
    let port = read("target = 3000\nremote_port = 2000\n").unwrap_err();
    assert!(
        port.contains(":3: remote_port is for a TCP tunnel"),
        "{port}"
    );
    let header = read("target = 3000\nlocal_proxy_protocol = \"v1\"\n").unwrap_err();
    assert!(
        header.contains("local_proxy_protocol is for a TCP tunnel"),
        "{header}"
    );
    let v3 = read("proto = \"tcp\"\ntarget = 22\nlocal_proxy_protocol = \"v3\"\n").unwrap_err();
    assert!(v3.contains("expected \"v1\" or \"v2\""), "{v3}");
    let zero = read("proto = \"tcp\"\ntarget = 22\nremote_port = 0\n").unwrap_err();
    assert!(zero.contains("expected a port, 1 to 65535"), "{zero}");
}

/// `[tunnels.NAME]` tables that set TLS keys for a plain target, or both
/// of them, or a bad host header, are refused at their line.
#[test]
fn bad_local_service_settings_in_a_tunnel_are_refused_with_their_line() {
    let refused = |table: &str| {
        let (_dir, path) = temp_file(&format!("[tunnels.web]\n{table}"));
        let args = argv(&["start", "--all", "--config", path.to_str().unwrap()]);
        format!("{:#}", parse_from(&args).unwrap_err())
    };
    let plain = refused("target = \"3000\"\nlocal_insecure = true\n");
    assert!(plain.contains(":3: key `local_insecure`"), "{plain}");
    assert!(
        plain.contains("http://127.0.0.1:3000 is plain HTTP"),
        "{plain}"
    );
    let both = refused(
        "target = \"https://localhost:8443\"\nlocal_ca = \"ca.pem\"\nlocal_insecure = true\n",
    );
    assert!(
        both.contains("sets both local_ca and local_insecure"),
        "{both}"
    );
    let host = refused("target = \"3000\"\nhost_header = \"a b\"\n");
    assert!(host.contains("key `host_header`"), "{host}");
    assert!(host.contains("expected rewrite, preserve"), "{host}");
    // At the top level, for `cryptun http` as for `cryptun start`.
    let (_dir, path) = temp_file("host_header = \"rewrite\"\n");
    let args = argv(&["http", "3000", "--config", path.to_str().unwrap()]);
    let Command::Http(http) = parse_from(&args).unwrap().0.command else {
        panic!("not http");
    };
    assert_eq!(http.host_header, Some(cryptun_client::HostHeader::Rewrite));
}
