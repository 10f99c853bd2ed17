//! What the client keeps on disk between runs: the reconnect secret of each
//! tunnel it asked a name for, so that a client killed outright (SIGKILL, a
//! crash) takes its name back at once when it starts again within the
//! server's grace, where a stranger is refused.
//!
//! One file per server domain and name, `DIR/reconnect/DOMAIN/NAME.json`,
//! readable by the user only (0600, in 0700 folders), written whole to a
//! temporary file and renamed over the old one, so that two clients never
//! read half a file. It holds the secret and the servers (control URLs)
//! seen serving that domain: a secret is offered only to one of those, or
//! to a server whose host is the domain itself, never to another (as
//! `names` does in memory). A tunnel closed on purpose leaves no hold, and
//! its file goes.
//!
//! The files are small and touched only when a session is opened or
//! closed, so they are written in place, without a blocking task.

use std::path::{Path, PathBuf};

use cryptun_proto::Secret;
use cryptun_proto::name::GENERATED_PREFIX;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::TunnelCreated;
use crate::names::domain_of;
use crate::saved::write_private;

/// Servers remembered per name: a cluster's nodes, several addresses.
const MAX_SERVERS: usize = 16;

/// The folder of saved reconnect secrets under a state directory.
const FOLDER: &str = "reconnect";

/// Reconnect secrets saved under a state directory.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    dir: PathBuf,
}

/// One saved file.
#[derive(Serialize, Deserialize)]
struct Record {
    secret: Secret,
    /// Control URLs seen serving the domain, latest last.
    servers: Vec<String>,
}

impl Saved {
    /// The secrets under `state_dir` (the client's state directory).
    pub(crate) fn new(state_dir: &Path) -> Self {
        Saved {
            dir: state_dir.join(FOLDER),
        }
    }

    /// The saved secret for `subdomain` to offer `server` (a control URL),
    /// if one of its domain was saved after that server, or a server of
    /// that very host, served it; with the file it was read from, for
    /// [`forget_file`](Self::forget_file) should the server not take it.
    pub(crate) fn load(&self, server: &str, subdomain: &str) -> Option<(Secret, PathBuf)> {
        let host = host_of(server);
        let domains = std::fs::read_dir(&self.dir).ok()?;
        for domain in domains.flatten() {
            let path = domain.path().join(file_name(subdomain));
            let Some(record) = read(&path) else { continue };
            let ours = record.servers.iter().any(|s| s == server)
                || host.as_deref() == domain.file_name().to_str();
            if ours {
                return Some((record.secret, path));
            }
        }
        None
    }

    /// Saves the secret of `tunnel`, served by `server`, unless its name
    /// was generated (a new run asks for a new one) or it has none (a key
    /// takes a keyed tunnel's name back).
    pub(crate) fn save(&self, server: &str, tunnel: &TunnelCreated) {
        let Some(secret) = &tunnel.reconnect_secret else {
            return self.forget(tunnel);
        };
        if tunnel.subdomain.starts_with(GENERATED_PREFIX) {
            return;
        }
        let path = self.path(tunnel);
        let mut servers = read(&path).map(|r| r.servers).unwrap_or_default();
        servers.retain(|s| s != server);
        servers.push(server.to_owned());
        let drop = servers.len().saturating_sub(MAX_SERVERS);
        servers.drain(..drop);
        let record = Record {
            secret: secret.clone(),
            servers,
        };
        if let Err(err) = write(&path, &record) {
            warn!(path = %path.display(), %err, "could not save the reconnect secret; a restart will not take the name back");
        }
    }

    /// Removes what was saved for `tunnel`.
    pub(crate) fn forget(&self, tunnel: &TunnelCreated) {
        self.forget_file(&self.path(tunnel));
    }

    /// Removes one saved file, as [`load`](Self::load) named it.
    pub(crate) fn forget_file(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "reconnect secret removed"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(path = %path.display(), %err, "could not remove a saved reconnect secret")
            }
        }
    }

    fn path(&self, tunnel: &TunnelCreated) -> PathBuf {
        self.dir
            .join(component(&domain_of(tunnel)))
            .join(file_name(&tunnel.subdomain))
    }
}

/// The file of `subdomain` in its domain's folder.
fn file_name(subdomain: &str) -> String {
    format!("{}.json", component(&subdomain.to_ascii_lowercase()))
}

/// `name` as one path component: the characters of host names and IPv6
/// literals kept, anything else (a separator above all) replaced, and never
/// `.` or `..`.
fn component(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | ':' | '[' | ']' => c,
            _ => '_',
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    }
}

/// The host of a control URL (`ws://example.com:4000/ws` → `example.com`),
/// lowercase.
fn host_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(uri.host()?.to_ascii_lowercase())
}

fn read(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .inspect_err(|err| debug!(path = %path.display(), %err, "unreadable saved secret ignored"))
        .ok()
}

/// Writes `record` to `path`, owner-only ([`write_private`]).
fn write(path: &Path, record: &Record) -> std::io::Result<()> {
    let text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(subdomain: &str, url: &str, secret: Option<&str>) -> TunnelCreated {
        let json = serde_json::json!({
            "version": 1, "tunnel_id": "ab12", "subdomain": subdomain, "public_url": url,
            "binary_streams": true, "request_timeout_ms": 1,
            "limits": {
                "max_message_bytes": 1, "max_frame_payload": 1, "stream_window": 1,
                "max_inline_body": 1, "max_streams": 1, "heartbeat_interval_ms": 1,
            },
            "reconnect_secret": secret,
        });
        serde_json::from_value(json).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cryptun-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_secret_goes_back_only_to_servers_of_its_domain() {
        let dir = temp_dir("domains");
        let saved = Saved::new(&dir);
        let secret = |server: &str, name: &str| saved.load(server, name).map(|(s, _)| s);
        let local = "ws://127.0.0.1:4000/ws";
        saved.save(
            local,
            &created("myapp", "http://myapp.localhost:4000", Some("s1")),
        );
        assert_eq!(secret(local, "myapp"), Some(Secret::new("s1")));
        assert_eq!(secret(local, "MyApp"), Some(Secret::new("s1")));
        // Another server, of no known domain: nothing.
        assert_eq!(secret("ws://127.0.0.1:5000/ws", "myapp"), None);
        // A server named by the domain itself gets its domain's secret.
        let named = "wss://example.com/ws";
        saved.save(
            named,
            &created("web", "https://web.example.com", Some("s2")),
        );
        assert_eq!(
            secret("wss://EXAMPLE.com:443/ws", "web"),
            Some(Secret::new("s2"))
        );
        assert_eq!(secret(local, "web"), None);
        // Owner-only file.
        let file = dir.join(FOLDER).join("localhost").join("myapp.json");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Forgotten: gone.
        saved.forget(&created("myapp", "http://myapp.localhost:4000", Some("s1")));
        assert!(!file.exists());
        assert_eq!(secret(local, "myapp"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_name_remembers_its_latest_servers_only() {
        let dir = temp_dir("max-servers");
        let saved = Saved::new(&dir);
        let tunnel = created("myapp", "https://myapp.example.net", Some("s1"));
        let server = |i: usize| format!("ws://10.0.0.{i}:4000/ws");
        for i in 0..=MAX_SERVERS {
            saved.save(&server(i), &tunnel);
        }
        // One more than kept: the first server is dropped, the rest and the
        // latest still get the secret back.
        assert!(saved.load(&server(0), "myapp").is_none());
        for i in 1..=MAX_SERVERS {
            assert!(saved.load(&server(i), "myapp").is_some(), "server {i}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_forgotten_is_the_one_loaded_and_no_other() {
        let dir = temp_dir("forget-file");
        let saved = Saved::new(&dir);
        let local = "ws://127.0.0.1:4000/ws";
        let named = "wss://example.com/ws";
        saved.save(
            local,
            &created("app", "http://app.localhost:4000", Some("s1")),
        );
        saved.save(
            named,
            &created("app", "https://app.example.com", Some("s2")),
        );
        let (secret, path) = saved.load(local, "app").unwrap();
        assert_eq!(secret, Secret::new("s1"));
        assert_eq!(path, dir.join(FOLDER).join("localhost").join("app.json"));
        saved.forget_file(&path);
        assert!(saved.load(local, "app").is_none());
        // The same name under another domain is another server's: kept.
        let (other, _) = saved.load(named, "app").unwrap();
        assert_eq!(other, Secret::new("s2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generated_names_are_not_kept_and_hostile_names_stay_inside() {
        let dir = temp_dir("hostile");
        let saved = Saved::new(&dir);
        let secret = |server: &str, name: &str| saved.load(server, name).map(|(s, _)| s);
        let url = "ws://127.0.0.1:4000/ws";
        saved.save(
            url,
            &created("tunnel-ab12", "http://tunnel-ab12.localhost", Some("s")),
        );
        assert_eq!(secret(url, "tunnel-ab12"), None);
        // A server answering with a strange domain cannot move the file out.
        saved.save(url, &created("x", "http://x.../../etc", Some("s")));
        assert!(dir.join(FOLDER).read_dir().unwrap().flatten().all(|e| {
            let name = e.file_name();
            let name = name.to_str().unwrap();
            name != ".." && name != "." && !name.contains('/')
        }));
        assert_eq!(component(".."), "_..");
        assert_eq!(component("a/b"), "a_b");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
