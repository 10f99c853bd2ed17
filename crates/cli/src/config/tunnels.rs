//! The `[tunnels.NAME]` tables of `client.toml`: each key is a flag of
//! `cryptun http` (`target`, `subdomain`, `basic_auth`, `allow_ips`,
//! `host_header`, `local_ca`, ...),
//! checked by that flag's own parser, so a tunnel in a file means what the
//! same flags would on the command line; `proto = "tcp"` (with
//! `remote_port`) makes it what `cryptun tcp` opens, and keys only HTTP
//! has are then refused. Environment variables do not reach into tunnels:
//! each says all it wants.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{ArgMatches, Command, CommandFactory};
use cryptun_client::{
    BasicAuth, HostHeader, LocalProxyProtocol, LocalTls, Secret, Target, TunnelConfig,
    TunnelProtocol, Upstream,
};
use toml::de::{DeTable, DeValue};

use super::{ConfigFile, Entry, check, entries, file_arg};
use crate::Cli;

/// The flags of `cryptun http` a tunnel table may set, besides `target`.
pub const TUNNEL_KEYS: [&str; 12] = [
    "subdomain",
    "pool",
    "pool_secret",
    "request_timeout",
    "basic_auth",
    "allow_ips",
    "deny_ips",
    "max_body_size",
    "host_header",
    "local_ca",
    "local_insecure",
    "upstream",
];

/// Keys of a tunnel table besides the flags of [`TUNNEL_KEYS`].
const OWN_KEYS: &str = "target, proto, remote_port, local_proxy_protocol";

/// The keys of [`TUNNEL_KEYS`] that only an HTTP tunnel has.
const HTTP_ONLY: [&str; 7] = [
    "request_timeout",
    "basic_auth",
    "max_body_size",
    "host_header",
    "local_ca",
    "local_insecure",
    "upstream",
];

/// A tunnel declared in the file.
#[derive(Debug, Clone)]
pub struct Declared {
    /// Its name: the key after `tunnels.`.
    pub name: String,
    /// What to open.
    pub config: TunnelConfig,
    /// Whether its table says its `host_header` (else `start --host-header`
    /// or the file's top-level one applies).
    pub sets_host_header: bool,
}

/// Every tunnel of `file`, in file order.
pub fn declared(file: &ConfigFile) -> Result<Vec<Declared>> {
    let table = file.table()?;
    let Some(tunnels) = table.get("tunnels") else {
        return Ok(Vec::new());
    };
    let DeValue::Table(tunnels) = tunnels.get_ref() else {
        // `parse_from` has refused it already.
        bail!("{}: `tunnels` must be tables", file.path.display());
    };
    let http = Cli::command();
    let http = http
        .find_subcommand("http")
        .ok_or_else(|| anyhow!("no http subcommand"))?;
    entries(tunnels)
        .into_iter()
        .map(|entry| {
            let DeValue::Table(table) = entry.value.get_ref() else {
                return Err(file.value_error(&entry, "expected a table: [tunnels.NAME]"));
            };
            let name = entry.key.get_ref().to_string();
            let config = tunnel(file, &entry, table, http)?;
            let sets_host_header = entries(table)
                .iter()
                .any(|e| e.key.get_ref().replace('-', "_") == "host_header");
            Ok(Declared {
                name,
                config,
                sets_host_header,
            })
        })
        .collect()
}

/// Picks the tunnels to open: every one (`all`), or those `names` in the
/// order given. An unknown name is an error listing the names declared.
pub fn select(
    file: &ConfigFile,
    declared: Vec<Declared>,
    names: &[String],
    all: bool,
) -> Result<Vec<Declared>> {
    let known = || {
        declared
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if declared.is_empty() {
        bail!(
            "{} declares no tunnels; add one:\n\n  [tunnels.web]\n  target = \"3000\"",
            file.path.display()
        );
    }
    if all {
        return Ok(declared);
    }
    let mut chosen: Vec<Declared> = Vec::with_capacity(names.len());
    for name in names {
        if chosen.iter().any(|d| &d.name == name) {
            bail!("tunnel {name} is named twice");
        }
        match declared.iter().find(|d| &d.name == name) {
            Some(d) => chosen.push(d.clone()),
            None => bail!(
                "no tunnel {name} in {} (it declares: {})",
                file.path.display(),
                known()
            ),
        }
    }
    Ok(chosen)
}

/// One `[tunnels.NAME]` table.
fn tunnel(
    file: &ConfigFile,
    at: &Entry<'_, '_>,
    table: &DeTable<'_>,
    http: &Command,
) -> Result<TunnelConfig> {
    let name = at.key.get_ref();
    let mut target = None;
    let mut protocol = (TunnelProtocol::Http, None);
    let mut remote_port = None;
    let mut proxy_header = None;
    let mut tls_at = None;
    let mut http_only = None;
    let mut matches: Vec<(String, ArgMatches)> = Vec::new();
    for entry in entries(table) {
        let key = entry.key.get_ref();
        if key == "target" {
            let word = match entry.value.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i.as_str().to_owned(),
                _ => return Err(file.value_error(&entry, "expected a port, host:port or URL")),
            };
            let parsed = Target::parse(&word).map_err(|e| file.value_error(&entry, e))?;
            target = Some((
                parsed,
                word.contains("://"),
                file.at(entry.key.span().start),
            ));
            continue;
        }
        if key == "proto" {
            let proto = match entry.value.get_ref() {
                DeValue::String(s) if s.as_ref() == "http" => TunnelProtocol::Http,
                DeValue::String(s) if s.as_ref() == "tcp" => TunnelProtocol::Tcp,
                DeValue::String(s) if s.as_ref() == "tls" => TunnelProtocol::Tls,
                _ => return Err(file.value_error(&entry, r#"expected "http", "tcp" or "tls""#)),
            };
            protocol = (proto, Some(file.at(entry.key.span().start)));
            continue;
        }
        if key == "local_proxy_protocol" {
            let version = match entry.value.get_ref() {
                DeValue::String(s) => s.parse::<LocalProxyProtocol>().ok(),
                _ => None,
            };
            let version =
                version.ok_or_else(|| file.value_error(&entry, r#"expected "v1" or "v2""#))?;
            proxy_header = Some((version, file.at(entry.key.span().start)));
            continue;
        }
        if key == "remote_port" {
            let port = match entry.value.get_ref() {
                DeValue::Integer(i) => i.as_str().parse::<u16>().ok().filter(|&p| p != 0),
                _ => None,
            };
            let port =
                port.ok_or_else(|| file.value_error(&entry, "expected a port, 1 to 65535"))?;
            remote_port = Some((port, file.at(entry.key.span().start)));
            continue;
        }
        let arg = file_arg(http, key).filter(|arg| TUNNEL_KEYS.contains(&arg.get_id().as_str()));
        let Some(arg) = arg else {
            let known = TUNNEL_KEYS.join(", ");
            let what = format!("unknown key in [tunnels.{name}] (known: {OWN_KEYS}, {known})");
            return Err(file.key_error(&entry, what));
        };
        let checked = check(file, &entry, arg)?;
        let id = arg.get_id().to_string();
        if id == "local_ca" || id == "local_insecure" {
            let at = file.at(entry.key.span().start);
            tls_at = Some(format!("{at}: key `{}`", entry.key.get_ref()));
        }
        if HTTP_ONLY.contains(&id.as_str()) {
            http_only = Some(format!("{}: key `{key}`", file.at(entry.key.span().start)));
        }
        matches.push((id, checked));
    }
    let (target, url, target_at) = target.ok_or_else(|| {
        anyhow!(
            "{}: [tunnels.{name}] needs a target (a port, host:port or URL)",
            file.at(at.key.span().start)
        )
    })?;
    let (protocol, proto_at) = protocol;
    let kind = protocol.wire_name().to_ascii_uppercase();
    let proto = protocol.wire_name();
    match protocol {
        TunnelProtocol::Tcp | TunnelProtocol::Tls if url => {
            bail!("{target_at}: a {kind} tunnel's target is a port or host:port, not a URL")
        }
        TunnelProtocol::Tls if remote_port.is_some() => {
            let port_at = remote_port.map(|(_, at)| at).unwrap_or_default();
            bail!("{port_at}: remote_port is for a TCP tunnel, not a TLS one");
        }
        TunnelProtocol::Tcp | TunnelProtocol::Tls => {
            if let Some(key_at) = http_only {
                let proto_at = proto_at.unwrap_or_default();
                bail!("{key_at}: not for a {kind} tunnel (proto = \"{proto}\" at {proto_at})");
            }
        }
        TunnelProtocol::Http => {
            if let Some((_, port_at)) = &remote_port {
                bail!("{port_at}: remote_port is for a TCP tunnel: add proto = \"tcp\"");
            }
            if let Some((_, header_at)) = &proxy_header {
                bail!("{header_at}: local_proxy_protocol is for a TCP tunnel: add proto = \"tcp\"");
            }
        }
    }
    let mut config = TunnelConfig::new(target);
    config.name = Some(name.to_string());
    config.protocol = protocol;
    config.remote_port = remote_port.map(|(port, _)| port);
    config.local_proxy_protocol = proxy_header.map(|(version, _)| version);
    let mut tls = LocalTls::default();
    let mut upstream = None;
    for (id, m) in matches {
        match id.as_str() {
            "subdomain" => config.subdomain = m.get_one::<String>(&id).cloned(),
            "pool" => config.pool = m.get_flag(&id),
            "pool_secret" => config.pool_secret = m.get_one::<Secret>(&id).cloned(),
            "request_timeout" => config.request_timeout = m.get_one::<Duration>(&id).copied(),
            "basic_auth" => config.basic_auth = m.get_one::<BasicAuth>(&id).cloned(),
            "max_body_size" => config.max_body_size = m.get_one::<u64>(&id).copied(),
            "allow_ips" => config.allow_ips = strings(&m, &id),
            "deny_ips" => config.deny_ips = strings(&m, &id),
            "host_header" => {
                if let Some(host_header) = m.get_one::<HostHeader>(&id) {
                    config.target.set_host_header(host_header.clone());
                }
            }
            "local_ca" => tls.ca = m.get_one::<PathBuf>(&id).cloned(),
            "local_insecure" => tls.insecure = m.get_flag(&id),
            "upstream" => upstream = m.get_one::<Upstream>(&id).copied(),
            _ => {}
        }
    }
    if tls.ca.is_some() && tls.insecure {
        bail!(
            "{}: [tunnels.{name}] sets both local_ca and local_insecure; choose one",
            file.at(at.key.span().start)
        );
    }
    if let Err(err) = config.target.set_local_tls(tls) {
        return Err(tls_at.map_or_else(|| anyhow!("{err}"), |at| anyhow!("{at}: {err}")));
    }
    if let Some(upstream) = upstream {
        config
            .target
            .set_upstream(upstream)
            .map_err(|err| anyhow!("{}: [tunnels.{name}]: {err}", file.at(at.key.span().start)))?;
    }
    Ok(config)
}

fn strings(m: &ArgMatches, id: &str) -> Vec<String> {
    m.get_many::<String>(id)
        .map(|values| values.cloned().collect())
        .unwrap_or_default()
}
