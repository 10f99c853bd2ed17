//! `cryptun start`: opens tunnels declared in the client config file over
//! one connection to the server, with one request inspector for all of
//! them (`--inspect`, as for `cryptun http`).

use anyhow::{Result, bail};
use clap::{ArgGroup, Args};
use cryptun_client::HostHeader;

use crate::config::{ConfigFile, tunnels};
use crate::inspect::{self, InspectArgs};
use crate::{Reach, commands, local, output};

/// The arguments of `cryptun start`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").args(["names", "all"]).required(true)))]
pub struct StartArgs {
    /// Tunnels to open, by their names in the config file (`[tunnels.NAME]`).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Open every tunnel the config file declares.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    #[command(flatten)]
    reach: Reach,
    /// Print one JSON object per line (a tunnel_created per tunnel, then one per request).
    #[arg(long)]
    json: bool,
    /// The Host requests carry to the local services, for tunnels that do not set their own
    /// host_header: `preserve` (the visitor's), `rewrite` (the target's host:port) or a value.
    #[arg(long, value_name = "rewrite|preserve|VALUE", value_parser = crate::parse::host_header)]
    host_header: Option<HostHeader>,
    /// The request inspector, one for every tunnel opened.
    #[command(flatten)]
    inspect: InspectArgs,
}

/// `cryptun start`.
pub async fn start(args: StartArgs, file: Option<ConfigFile>, json_logs: bool) -> Result<()> {
    let Some(file) = file else {
        let path = cryptun_client::saved::default_path()?;
        bail!(
            "no client config file at {} (write one, see examples/client.toml, or pass --config FILE)",
            path.display()
        );
    };
    let mut chosen = tunnels::select(&file, tunnels::declared(&file)?, &args.names, args.all)?;
    for tunnel in &mut chosen {
        if let Some(host_header) = &args.host_header
            && !tunnel.sets_host_header
        {
            tunnel.config.target.set_host_header(host_header.clone());
        }
        local::check(&tunnel.config.target)?;
    }
    let shown: Vec<(String, String)> = chosen
        .iter()
        .map(|d| (d.name.clone(), d.config.shown_target()))
        .collect();
    let specs = chosen.into_iter().map(|d| d.config).collect();
    let mut config = commands::client_config(args.reach, specs)?;
    let shutdown = commands::shutdown_on_signal();
    let inspector = inspect::start(&args.inspect, &shutdown).await;
    config.inspector = inspector.as_ref().map(|(inspector, _)| inspector.clone());
    let Some(session) = commands::connect(&config, &shutdown).await? else {
        return Ok(());
    };
    let tunnels: Vec<output::Shown<'_>> = session
        .tunnels()
        .iter()
        .zip(&shown)
        .map(|(tunnel, (name, target))| (Some(name.as_str()), tunnel, target.as_str()))
        .collect();
    let url = inspector.as_ref().map(|(_, url)| url.as_str());
    let server = session.server();
    let (view, events) = output::show(server, &tunnels, url, args.json, json_logs);
    let served = cryptun_client::serve(&config, session, shutdown, events).await;
    output::finish(view, served.as_ref().err());
    served?;
    Ok(())
}
