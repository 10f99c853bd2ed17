//! Property tests of the configuration files, through the real loader
//! (`parse_from` with `--config`, and `tunnels::declared`): arbitrary
//! TOML-ish text never panics; settings generated at random and written
//! out as TOML read back as the same settings (top-level keys of
//! `server.toml`, `[tunnels.NAME]` tables of `client.toml`); a bad value or
//! an unknown key is refused with an error that names the key and its line
//! (and never repeats a secret).
//!
//! `cargo test` runs proptest's default number of cases; a long run sets
//! `PROPTEST_CASES` (docs/SECURITY.md, "Property tests and fuzzing").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptun_proto::net::Cidr;
use cryptun_server::AuthMode;
use cryptun_server::policy::Rate;
use proptest::prelude::*;
use toml::{Table, Value};

use super::{ConfigFile, parse_from, tunnels};
use crate::{Command, ServerArgs};

/// A file rewritten for each case, in a folder removed at the end.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Scratch(tempfile::tempdir().unwrap())
    }

    fn write(&self, text: &str) -> PathBuf {
        let path = self.0.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn load(args: &[&str], path: &Path) -> anyhow::Result<(crate::Cli, Option<ConfigFile>)> {
    let mut argv: Vec<OsString> = ["cryptun"].iter().chain(args).map(OsString::from).collect();
    argv.extend(["--config".into(), path.as_os_str().to_owned()]);
    parse_from(&argv)
}

fn server_args(path: &Path) -> anyhow::Result<ServerArgs> {
    match load(&["server"], path)?.0.command {
        Command::Server(args) => Ok(*args),
        _ => panic!("not server"),
    }
}

/// A key as a file may spell it: `a_b` or `a-b`.
fn spelled(key: &str, dashes: bool) -> String {
    if dashes {
        key.replace('_', "-")
    } else {
        key.to_owned()
    }
}

// ---- arbitrary text -----------------------------------------------------------

/// Lines near a config file's: known and unknown keys, values of every
/// TOML type, tables, tunnels, and noise.
fn toml_ish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "listen",
            "domain",
            "public_port",
            "request-timeout",
            "max_streams",
            "auth",
            "trusted_proxies",
            "proxy_protocol",
            "admin_token",
            "max_body_size",
            "config",
            "server",
            "servers",
            "target",
            "subdomain",
            "tunnels",
            "allow_ips",
            "host_header",
            "rate_limit_ip",
            "tls_cert",
            "redirect_http",
            "cluster",
            "json",
        ])
        .prop_map(str::to_owned),
        "[a-z_-]{1,10}",
        "\"[ -~]{0,8}\"",
    ];
    let value = prop_oneof![
        "-?[0-9_]{1,22}",
        "0x[0-9a-fA-F_]{1,18}",
        "-?[0-9]{1,4}\\.[0-9]{0,3}(e[0-9]{1,3})?",
        "(true|false|inf|nan|-inf)",
        "\"[ -~]{0,16}\"",
        "'[ -~]{0,16}'",
        "\\[([0-9]{1,3}|\"[ -~]{0,8}\"|\\[\\]|\\{\\})?(, ?[0-9a-z\"{}]{1,6}){0,3}\\]",
        "\\{ ?([a-z]{1,4} = [0-9\"a-z]{1,4})? ?\\}",
        "19[0-9]{2}-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z?)?",
    ];
    let line = prop_oneof![
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\[(tunnels(\\.[a-z\"]{1,6}){0,2}|[a-z.]{1,10})\\]",
        1 => "\\[\\[[a-z.]{1,8}\\]\\]",
        1 => "#[ -~]{0,20}",
        1 => "[ -~]{0,24}",
        1 => ".{0,12}",
    ];
    prop::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
}

proptest! {
    /// Any text as `server.toml` and as `client.toml` (`start`, `http`):
    /// never a panic; an error about the file names it.
    #[test]
    fn arbitrary_text_never_panics(text in toml_ish()) {
        let scratch = Scratch::new();
        let path = scratch.write(&text);
        for args in [&["server"][..], &["start", "--all"], &["http", "3000"]] {
            if let Ok((_, Some(file))) = load(args, &path) {
                let _ = tunnels::declared(&file);
            }
        }
    }
}

// ---- valid settings read back -----------------------------------------------------

/// Settings of `server.toml`, generated; `None` leaves the key out.
#[derive(Debug, Clone)]
struct Server {
    listen: Option<SocketAddr>,
    domain: Option<String>,
    public_port: Option<u16>,
    request_timeout: Option<(u64, &'static str)>,
    max_streams: Option<usize>,
    max_body_size: Option<(u64, &'static str)>,
    auth: Option<AuthMode>,
    trusted_proxies: Vec<(IpAddr, u8)>,
    rate_limit_ip: Option<(u32, &'static str, u32)>,
    public_scheme: Option<&'static str>,
}

fn server() -> impl Strategy<Value = Server> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ];
    let proxy = ip.clone().prop_flat_map(|ip| {
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        (Just(ip), 1..=max)
    });
    let units = |u: Vec<&'static str>| prop::sample::select(u);
    (
        (
            prop::option::of((ip, any::<u16>()).prop_map(SocketAddr::from)),
            prop::option::of("[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}"),
            prop::option::of(any::<u16>()),
            prop::option::of((1u64..100_000, units(vec!["s", "ms", "m", "h"]))),
            prop::option::of(1usize..1_000_000),
        ),
        (
            prop::option::of((1u64..100_000, units(vec!["", "K", "M", "k", "g"]))),
            prop::option::of(prop::sample::select(vec![
                AuthMode::Off,
                AuthMode::Optional,
                AuthMode::Required,
            ])),
            prop::collection::vec(proxy, 0..3),
            prop::option::of((1u32..10_000, units(vec!["s", "m", "h"]), 1u32..10_000)),
            prop::option::of(prop::sample::select(vec!["http", "https"])),
        ),
    )
        .prop_map(
            |(
                (listen, domain, public_port, request_timeout, max_streams),
                (max_body_size, auth, trusted_proxies, rate_limit_ip, public_scheme),
            )| Server {
                listen,
                domain,
                public_port,
                request_timeout,
                max_streams,
                max_body_size,
                auth,
                trusted_proxies,
                rate_limit_ip,
                public_scheme,
            },
        )
}

impl Server {
    /// The settings as a TOML table, keys spelled with dashes where `dashes`
    /// says, numbers as integers or strings where `strings` says.
    fn to_toml(&self, dashes: bool, strings: bool) -> String {
        let mut t = Table::new();
        let mut put = |key: &str, value: Value| {
            t.insert(spelled(key, dashes), value);
        };
        let number = |n: u64| {
            if strings {
                Value::String(n.to_string())
            } else {
                Value::Integer(i64::try_from(n).unwrap())
            }
        };
        if let Some(listen) = self.listen {
            put("listen", Value::String(listen.to_string()));
        }
        if let Some(domain) = &self.domain {
            put("domain", Value::String(domain.clone()));
        }
        if let Some(port) = self.public_port {
            put("public_port", number(port.into()));
        }
        if let Some((n, unit)) = self.request_timeout {
            put("request_timeout", Value::String(format!("{n}{unit}")));
        }
        if let Some(n) = self.max_streams {
            put("max_streams", number(n as u64));
        }
        if let Some((n, unit)) = self.max_body_size {
            put("max_body_size", Value::String(format!("{n}{unit}")));
        }
        if let Some(auth) = self.auth {
            put("auth", Value::String(auth.to_string()));
        }
        if !self.trusted_proxies.is_empty() {
            let cidrs = self.trusted_proxies.iter();
            let cidrs = cidrs.map(|(ip, len)| Value::String(format!("{ip}/{len}")));
            put("trusted_proxies", Value::Array(cidrs.collect()));
            put("proxy_protocol", Value::Boolean(true));
        }
        if let Some((n, unit, burst)) = self.rate_limit_ip {
            put(
                "rate_limit_ip",
                Value::String(format!("{n}/{unit}:{burst}")),
            );
        }
        if let Some(scheme) = self.public_scheme {
            put("public_scheme", Value::String(scheme.to_owned()));
        }
        toml::to_string(&t).unwrap()
    }
}

fn duration(n: u64, unit: &str) -> Duration {
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => Duration::from_secs(n * 3600),
    }
}

fn size(n: u64, unit: &str) -> u64 {
    match unit {
        "K" | "k" => n << 10,
        "M" => n << 20,
        "g" => n << 30,
        _ => n,
    }
}

/// A tunnel table of `client.toml`, generated.
#[derive(Debug, Clone)]
struct Tunnel {
    port: u16,
    port_as_string: bool,
    subdomain: Option<String>,
    max_body_size: Option<u64>,
    allow_ips: Vec<String>,
    request_timeout: Option<u64>,
}

fn tunnel() -> impl Strategy<Value = Tunnel> {
    (
        1u16..,
        any::<bool>(),
        prop::option::of("[a-z][a-z0-9]{0,10}"),
        prop::option::of(1u64..1_000_000_000),
        prop::collection::vec(
            (any::<[u8; 4]>(), 8u8..=32)
                .prop_map(|(ip, len)| format!("{}/{len}", IpAddr::from(ip))),
            0..3,
        ),
        prop::option::of(1u64..10_000),
    )
        .prop_map(
            |(port, port_as_string, subdomain, max_body_size, allow_ips, request_timeout)| Tunnel {
                port,
                port_as_string,
                subdomain,
                max_body_size,
                allow_ips,
                request_timeout,
            },
        )
}

impl Tunnel {
    fn to_table(&self, dashes: bool) -> Table {
        let mut t = Table::new();
        let target = if self.port_as_string {
            Value::String(self.port.to_string())
        } else {
            Value::Integer(self.port.into())
        };
        t.insert("target".into(), target);
        if let Some(s) = &self.subdomain {
            t.insert("subdomain".into(), Value::String(s.clone()));
        }
        if let Some(n) = self.max_body_size {
            t.insert(spelled("max_body_size", dashes), Value::Integer(n as i64));
        }
        if !self.allow_ips.is_empty() {
            let ips = self.allow_ips.iter().cloned().map(Value::String).collect();
            t.insert(spelled("allow_ips", dashes), Value::Array(ips));
        }
        if let Some(n) = self.request_timeout {
            let text = Value::String(format!("{n}s"));
            t.insert(spelled("request_timeout", dashes), text);
        }
        t
    }
}

proptest! {
    /// Any valid server settings, written as TOML (keys with `_` or `-`,
    /// numbers as integers or strings), read back as the same settings,
    /// and the keys left out keep their defaults.
    #[test]
    fn server_settings_read_back(s in server(), dashes in any::<bool>(), strings in any::<bool>()) {
        let scratch = Scratch::new();
        let text = s.to_toml(dashes, strings);
        let args = server_args(&scratch.write(&text))
            .map_err(|e| TestCaseError::fail(format!("{e:#}\n{text}")))?;
        prop_assert_eq!(args.listen, s.listen.unwrap_or(([127, 0, 0, 1], 4000).into()));
        prop_assert_eq!(args.domain, s.domain.clone().unwrap_or_else(|| "localhost".into()));
        prop_assert_eq!(args.public_port, s.public_port);
        let timeout = s.request_timeout.map_or(Duration::from_secs(60), |(n, u)| duration(n, u));
        prop_assert_eq!(args.request_timeout, timeout);
        prop_assert_eq!(args.max_streams, s.max_streams.unwrap_or(1024));
        prop_assert_eq!(args.max_body_size, s.max_body_size.map(|(n, u)| size(n, u)));
        prop_assert_eq!(args.auth, s.auth);
        let proxies: Vec<Cidr> = s.trusted_proxies.iter()
            .map(|(ip, len)| format!("{ip}/{len}").parse().unwrap())
            .collect();
        prop_assert_eq!(args.trusted_proxies, proxies);
        prop_assert_eq!(args.proxy_protocol, !s.trusted_proxies.is_empty());
        let rate = s.rate_limit_ip.map(|(n, u, b)| format!("{n}/{u}:{b}").parse::<Rate>().unwrap());
        prop_assert_eq!(args.rate_limit_ip, rate);
        prop_assert_eq!(args.public_scheme.as_deref(), s.public_scheme);
        prop_assert_eq!(args.max_connections, 10_000);
    }

    /// Any tunnels, written as `[tunnels.NAME]` tables, are declared with
    /// the same settings, one per name.
    #[test]
    fn tunnels_read_back(
        tunnels in prop::collection::btree_map("[a-z][a-z0-9_-]{0,8}", tunnel(), 1..4),
        dashes in any::<bool>(),
    ) {
        let scratch = Scratch::new();
        let mut file = Table::new();
        let tables = tunnels.iter().map(|(name, t)| (name.clone(), Value::Table(t.to_table(dashes))));
        file.insert("tunnels".into(), Value::Table(tables.collect()));
        let text = toml::to_string(&file).unwrap();
        let path = scratch.write(&text);
        let (_, file) = load(&["start", "--all"], &path)
            .map_err(|e| TestCaseError::fail(format!("{e:#}\n{text}")))?;
        let declared = tunnels::declared(&file.unwrap()).unwrap();
        let mut names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        prop_assert_eq!(names, tunnels.keys().map(String::as_str).collect::<Vec<_>>());
        for d in &declared {
            let t = &tunnels[&d.name];
            let c = &d.config;
            prop_assert_eq!(c.target.to_string(), format!("http://127.0.0.1:{}", t.port));
            prop_assert_eq!(&c.subdomain, &t.subdomain);
            prop_assert_eq!(c.max_body_size, t.max_body_size);
            prop_assert_eq!(&c.allow_ips, &t.allow_ips);
            prop_assert_eq!(c.request_timeout, t.request_timeout.map(Duration::from_secs));
            prop_assert_eq!(c.name.as_deref(), Some(d.name.as_str()));
        }
    }
}

// ---- bad values name their key ------------------------------------------------------

/// A key of `server.toml` and a value its flag refuses (as TOML).
fn bad_server_entry() -> impl Strategy<Value = (&'static str, String)> {
    let words = "\"[a-z ]{1,10}\"";
    prop_oneof![
        prop_oneof![
            Just("\"\"".to_owned()),
            words.prop_map(|s| s),
            "[1-9][0-9]{0,3}".prop_map(|s| s)
        ]
        .prop_map(|v| ("listen", v)),
        prop_oneof![
            "\"[0-9]{1,3} ?(parsec|q|furlong)\"",
            "\"-[0-9]{1,3}s\"",
            "[1-9][0-9]{0,2}\\.5"
        ]
        .prop_map(|v| ("request_timeout", v)),
        prop_oneof!["-[1-9][0-9]{0,3}", words, "[0-9]\\.[1-9]", "\\[[0-9]\\]"]
            .prop_map(|v| ("max_streams", v)),
        prop_oneof!["[7-9][0-9]{4}", "-[1-9]", words].prop_map(|v| ("public_port", v)),
        prop_oneof!["\"(yes|no|true)\"", "[0-9]", "\\[true\\]"].prop_map(|v| ("proxy_protocol", v)),
        prop_oneof![
            "\\[\"10\\.0\\.0\\.0/(3[3-9]|[4-9][0-9])\"\\]",
            "\\[\"0\\.0\\.0\\.0/0\"\\]",
            "\\[\"[a-z]{1,8}\"\\]",
            "\\[\\[\"10\\.0\\.0\\.1\"\\]\\]",
        ]
        .prop_map(|v| ("trusted_proxies", v)),
        prop_oneof!["\"(ftp|HTTP|ws|)\"", "true"].prop_map(|v| ("public_scheme", v)),
        prop_oneof!["\"(maybe|on|yes|)\"", "[0-9]"].prop_map(|v| ("auth", v)),
        prop_oneof!["\"[0-9]{1,3}(MB|T|kb|\\.5M)\"", "-[1-9][0-9]{0,2}"]
            .prop_map(|v| ("max_body_size", v)),
        prop_oneof!["\"[0-9]{1,3}/(y|x|)\"", "\"/s\"", "\"0/s\""]
            .prop_map(|v| ("rate_limit_ip", v)),
        prop_oneof!["\\{ a = 1 \\}", "1979-05-27"].prop_map(|v| ("domain", v)),
    ]
}

/// Lines of valid settings that share no key with the bad one.
const VALID_LINES: [(&str, &str); 5] = [
    ("max_connections", "max_connections = 7"),
    ("domain", "domain = \"file.test\""),
    ("shutdown_grace", "shutdown_grace = \"3s\""),
    ("min_body_rate", "min_body_rate = 100"),
    ("redirect_http", "# redirect_http = true"),
];

proptest! {
    /// A bad value among valid settings is refused with the file, the line
    /// and the key as spelled; an admin token that is refused is not
    /// repeated in the message.
    #[test]
    fn bad_values_name_their_key_and_line(
        (key, value) in bad_server_entry(),
        before in 0..VALID_LINES.len(),
        dashes in any::<bool>(),
    ) {
        let scratch = Scratch::new();
        let key = spelled(key, dashes);
        let mut lines: Vec<String> = VALID_LINES[..before].iter()
            .filter(|(k, _)| spelled(k, dashes) != key)
            .map(|(_, line)| (*line).to_owned())
            .collect();
        let line = lines.len() + 1;
        lines.push(format!("{key} = {value}"));
        lines.extend(VALID_LINES[before..].iter()
            .filter(|(k, _)| spelled(k, dashes) != key)
            .map(|(_, l)| (*l).to_owned()));
        let text = lines.join("\n");
        let err = match server_args(&scratch.write(&text)) {
            Ok(args) => return Err(TestCaseError::fail(format!("accepted:\n{text}\n{args:?}"))),
            Err(err) => format!("{err:#}"),
        };
        prop_assert!(err.contains(&format!("config.toml:{line}")), "{}\n{}", err, text);
        prop_assert!(err.contains(&format!("`{key}`")), "{}\n{}", err, text);
    }

    /// Unknown keys, at the top level and in a tunnel, are refused naming
    /// the key and its line; a refused admin token is never repeated.
    #[test]
    fn unknown_keys_and_secrets(
        key in "[a-z][a-z0-9_]{0,12}",
        token in "[!-~]{8,15}",
    ) {
        let scratch = Scratch::new();
        let cli = <crate::Cli as clap::CommandFactory>::command();
        let known = super::known_keys(cli.find_subcommand("server").unwrap());
        if !known.split(", ").any(|k| k == key || k == key.replace('-', "_")) && key != "server" {
            let text = format!("domain = \"a.test\"\n{key} = 1\n");
            let err = format!("{:#}", server_args(&scratch.write(&text)).unwrap_err());
            prop_assert!(err.contains("config.toml:2") && err.contains(&format!("`{key}`")), "{}", err);
        }
        if !tunnels::TUNNEL_KEYS.contains(&key.as_str()) && key != "target" {
            let text = format!("[tunnels.web]\ntarget = 3000\n{key} = 1\n");
            let err = format!("{:#}", load(&["start", "--all"], &scratch.write(&text)).unwrap_err());
            prop_assert!(err.contains("config.toml:3") && err.contains(&format!("`{key}`")), "{}", err);
        }
        let text = format!("admin_token = {}\n", Value::String(token.clone()));
        let err = format!("{:#}", server_args(&scratch.write(&text)).unwrap_err());
        prop_assert!(err.contains("config.toml:1") && err.contains("`admin_token`"), "{}", err);
        prop_assert!(!err.contains(&token), "the token is repeated: {}", err);
    }
}
