//! `cryptun keys` (the server's API keys and reserved names, straight in
//! its database, or in a cluster's Redis with `--cluster`) and `cryptun
//! login` (the client's saved key). Printing only: the store and the saved
//! config live in the library crates.
//!
//! [`transfer`]: `keys export` and `keys import`, moving a store's keys,
//! reservations and held names to the other kind of store.

mod transfer;

use std::io::BufRead as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cryptun_client::Secret;
use cryptun_client::saved::{self, SavedConfig};
use cryptun_client::whoami::{KeyCheck, WhoamiError, whoami};
use cryptun_server::Store;
use cryptun_server::cluster::keys::SharedKeys;
use cryptun_server::store::transfer::{Document, Summary, TransferError};
use cryptun_server::store::{KeyInfo, NewKey, PortReservation, Reservation, StoreError};

pub use transfer::{ExportArgs, ImportArgs};

use crate::{KeysArgs, KeysCommand, LoginArgs};

/// `cryptun keys ...`.
pub async fn keys(args: KeysArgs) -> Result<()> {
    // Either store, never a silent choice between the two: an import into
    // the wrong one is not undone.
    if args.cluster.is_some() && args.data_dir.is_some() {
        anyhow::bail!(
            "both a data directory (--data-dir or CRYPTUN_DATA_DIR) and a cluster (--cluster or \
             CRYPTUN_CLUSTER_URL) are given: name one store"
        );
    }
    let keys = match &args.cluster {
        Some(url) => Backend::Shared(
            SharedKeys::connect(url)
                .await
                .context("could not reach the cluster's store")?,
        ),
        None => {
            let dir = crate::paths::data_dir(args.data_dir)?;
            let store = tokio::task::spawn_blocking(move || {
                Store::open(&dir).with_context(|| {
                    format!("could not open the key database in {}", dir.display())
                })
            })
            .await??;
            Backend::Local(store)
        }
    };
    run(&keys, args.command).await
}

/// Where the keys are: a server's database, or a cluster's Redis.
enum Backend {
    Local(Store),
    Shared(SharedKeys),
}

impl Backend {
    async fn create_key(&self, name: String) -> Result<NewKey, StoreError> {
        match self {
            Backend::Local(store) => store.call(move |s| s.create_key(&name)).await,
            Backend::Shared(keys) => keys.create_key(&name).await,
        }
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        match self {
            Backend::Local(store) => store.call(Store::list_keys).await,
            Backend::Shared(keys) => keys.list_keys().await,
        }
    }

    async fn revoke_key(&self, id: String) -> Result<(), StoreError> {
        match self {
            Backend::Local(store) => store.call(move |s| s.revoke_key(&id)).await,
            Backend::Shared(keys) => keys.revoke_key(&id).await,
        }
    }

    async fn reserve(&self, key_id: String, name: String) -> Result<Reservation, StoreError> {
        match self {
            Backend::Local(store) => store.call(move |s| s.reserve(&key_id, &name)).await,
            Backend::Shared(keys) => keys.reserve(&key_id, &name).await,
        }
    }

    async fn reserve_port(&self, key_id: String, port: u16) -> Result<PortReservation, StoreError> {
        match self {
            Backend::Local(store) => store.call(move |s| s.reserve_port(&key_id, port)).await,
            Backend::Shared(keys) => keys.reserve_port(&key_id, port).await,
        }
    }

    async fn unreserve_port(&self, port: u16) -> Result<bool, StoreError> {
        match self {
            Backend::Local(store) => store.call(move |s| s.unreserve_port(port)).await,
            Backend::Shared(keys) => keys.unreserve_port(port).await,
        }
    }

    async fn unreserve(&self, name: String) -> Result<bool, StoreError> {
        match self {
            Backend::Local(store) => store.call(move |s| s.unreserve(&name)).await,
            Backend::Shared(keys) => keys.unreserve(&name).await,
        }
    }

    async fn export(&self) -> Result<Document, StoreError> {
        match self {
            Backend::Local(store) => store.call(Store::export).await,
            Backend::Shared(keys) => keys.export().await,
        }
    }

    async fn import(&self, document: Document, replace: bool) -> Result<Summary, TransferError> {
        match self {
            Backend::Local(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.import(&document, replace))
                    .await
                    .unwrap_or_else(|join| Err(StoreError::Task(join.to_string()).into()))
            }
            Backend::Shared(keys) => keys.import(&document, replace).await,
        }
    }

    fn is_local(&self) -> bool {
        matches!(self, Backend::Local(_))
    }

    /// The store, for messages (never the cluster's URL: it may hold a
    /// password).
    fn describe(&self) -> String {
        match self {
            Backend::Local(store) => match store.path().parent() {
                Some(dir) => format!("the data directory {}", dir.display()),
                None => "the key database".into(),
            },
            Backend::Shared(_) => "the cluster's store".into(),
        }
    }
}

async fn run(store: &Backend, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create { name, json } => {
            let key = store.create_key(name).await?;
            if json {
                let line = serde_json::json!({
                    "id": key.info.id,
                    "name": key.info.name,
                    "token": key.token.expose(),
                });
                println!("{line}");
            } else {
                println!("Created key {} ({}).", key.info.id, key.info.name);
                println!("Its token is shown only this once:");
                println!();
                println!("  {}", key.token.expose());
                println!();
                println!("On the client: cryptun login <token>  (or CRYPTUN_TOKEN=<token>)");
            }
        }
        KeysCommand::List { json } => list(&store.list_keys().await?, json),
        KeysCommand::Revoke { id } => {
            store.revoke_key(id.clone()).await?;
            println!(
                "Revoked key {id}: it opens no new tunnel, and a running server closes its live ones within seconds."
            );
        }
        KeysCommand::Reserve {
            key_id,
            name: Some(name),
            ..
        } => {
            let reserved = store.reserve(key_id, name).await?;
            println!("Reserved {} for key {}.", reserved.name, reserved.key_id);
        }
        KeysCommand::Reserve {
            key_id,
            port: Some(port),
            ..
        } => {
            let reserved = store.reserve_port(key_id, port).await?;
            println!(
                "Reserved TCP port {} for key {}.",
                reserved.port, reserved.key_id
            );
        }
        KeysCommand::Reserve { .. } => bail!("name a subdomain, or a TCP port with --port"),
        KeysCommand::Unreserve {
            name: Some(name), ..
        } => {
            if !store.unreserve(name.clone()).await? {
                bail!("{name:?} is not reserved");
            }
            println!("Released {name}.");
        }
        KeysCommand::Unreserve {
            port: Some(port), ..
        } => {
            if !store.unreserve_port(port).await? {
                bail!("TCP port {port} is not reserved");
            }
            println!("Released TCP port {port}.");
        }
        KeysCommand::Unreserve { .. } => bail!("name a subdomain, or a TCP port with --port"),
        KeysCommand::Export(args) => transfer::export(store, args).await?,
        KeysCommand::Import(args) => transfer::import(store, args).await?,
    }
    Ok(())
}

fn date(secs: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(secs.try_into().unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn list(keys: &[KeyInfo], json: bool) {
    if json {
        let all: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id,
                    "name": k.name,
                    "created_at": date(k.created_at),
                    "revoked_at": k.revoked_at.map(date),
                    "reserved": k.reserved,
                    "reserved_ports": k.reserved_ports,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(all));
        return;
    }
    if keys.is_empty() {
        println!("No keys yet: cryptun keys create --name NAME");
        return;
    }
    println!(
        "{:<10} {:<20} {:<22} {:<8} RESERVED",
        "ID", "NAME", "CREATED", "STATUS"
    );
    for k in keys {
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else {
            "active"
        };
        println!(
            "{:<10} {:<20} {:<22} {:<8} {}",
            k.id,
            k.name,
            date(k.created_at),
            status,
            reserved(k)
        );
    }
}

/// A key's reserved names and TCP ports, for the table.
fn reserved(key: &KeyInfo) -> String {
    let ports = key.reserved_ports.iter().map(|port| format!("port {port}"));
    let all: Vec<String> = key.reserved.iter().cloned().chain(ports).collect();
    all.join(", ")
}

/// `cryptun login [TOKEN]`.
pub async fn login(args: LoginArgs) -> Result<()> {
    let token = match args.token {
        Some(token) => token,
        None => read_token()?,
    };
    // Flag, else CRYPTUN_SERVER, else client.toml's (clap's defaults, set
    // from the file by `config::parse_from`).
    let server = args
        .servers
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let checked = whoami(&server, args.ca.as_deref(), &token)
        .await
        .map_err(|err| match err {
            WhoamiError::Refused { .. } => {
                anyhow::anyhow!("{err}; nothing was saved, the key saved before (if any) is kept")
            }
            err => anyhow::anyhow!(
                "could not check the key with {server}: {err}; nothing was saved (name the server with --server URL)"
            ),
        })?;
    let path = saved::default_path()?;
    let mut config = SavedConfig::load(&path)?;
    config.token = Some(token);
    if args.servers_given {
        config.servers = args.servers.clone();
    }
    config.save(&path)?;
    match checked {
        KeyCheck::Known { id, name } => println!(
            "The key {id} ({name}) works with {server}; saved it to {}.",
            path.display()
        ),
        KeyCheck::NotChecked => println!(
            "{server} checks no keys (its auth is off); saved the key to {} for servers that do.",
            path.display()
        ),
    }
    if args.servers_given {
        let servers = args.servers.join(", ");
        println!("Saved {servers} as the server for `cryptun http` and `cryptun start`.");
    }
    Ok(())
}

/// The server `cryptun http` connects to when none is named.
const DEFAULT_SERVER: &str = "http://127.0.0.1:4000";

fn read_token() -> Result<Secret> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("could not read the key from standard input")?;
    crate::secret(&line).map_err(anyhow::Error::msg)
}

/// The key `cryptun http` presents: `--token` or `CRYPTUN_TOKEN`, else the
/// saved one, else none.
pub fn client_token(given: Option<Secret>) -> Result<Option<Secret>> {
    if given.is_some() {
        return Ok(given);
    }
    let Ok(path) = saved::default_path() else {
        return Ok(None);
    };
    Ok(SavedConfig::load(&path)?.token)
}
