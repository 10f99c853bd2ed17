//! The subcommands: each turns its arguments into library configuration and
//! runs until Ctrl-C (or SIGTERM).

use anyhow::{Context, Result};
use cryptun_client::{ClientConfig, Target};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{DemoArgs, HttpArgs, ServerArgs, output};

/// `cryptun server`.
pub async fn server(args: ServerArgs) -> Result<()> {
    let defaults = cryptun_server::Config::default();
    let config = cryptun_server::Config {
        domain: args.domain,
        public_port: args.public_port,
        request_timeout: args.request_timeout,
        max_request_timeout: args.max_request_timeout,
        handshake_timeout: args.handshake_timeout,
        heartbeat: cryptun_proto::mux::Heartbeat {
            interval: args.heartbeat_interval,
            timeout: args.heartbeat_timeout,
        },
        limits: cryptun_proto::Limits {
            max_streams: args.max_streams,
            ..defaults.limits
        },
        max_connections: args.max_connections,
        shutdown_grace: args.shutdown_grace,
        shutdown_delay: args.shutdown_delay,
        ..defaults
    }
    .validated()?;
    let listener = bind(args.listen).await?;
    let shutdown = shutdown_on_signal();
    cryptun_server::run(listener, config, shutdown).await?;
    Ok(())
}

/// `cryptun http`.
pub async fn http(args: HttpArgs, json_logs: bool) -> Result<()> {
    let shutdown = shutdown_on_signal();
    let target = match &args.target {
        Some(target) => Target::parse(target)?,
        None => start_hello(&shutdown).await?,
    };
    let mut config = ClientConfig::new(&args.server, target.clone())?;
    config.subdomain = args.subdomain;
    config.request_timeout = args.request_timeout;
    let session = cryptun_client::connect(&config).await?;
    let shown = if args.hello {
        "built-in hello page".to_owned()
    } else {
        target.to_string()
    };
    output::tunnel_created(session.tunnel(), &shown, args.json);
    let events = output::events(args.json, json_logs);
    cryptun_client::serve(&config, session, shutdown, events).await?;
    Ok(())
}

/// `cryptun demo`.
pub async fn demo(args: DemoArgs, json_logs: bool) -> Result<()> {
    let shutdown = shutdown_on_signal();
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(cryptun_server::run(
        listener,
        cryptun_server::Config::default(),
        shutdown.clone(),
    ));
    let target = start_hello(&shutdown).await?;
    let config = ClientConfig::new(&format!("http://{addr}"), target)?;
    let session = cryptun_client::connect(&config).await?;
    let tunnel = session.tunnel();
    let url = &tunnel.public_url;
    println!("Cryptun demo: server, hello service and client are running.");
    println!();
    println!("  Public URL  {url}");
    println!("  Try         curl {url}/hello");
    println!(
        "  or          curl -H 'Host: {}.localhost:{}' http://{addr}/hello",
        tunnel.subdomain,
        addr.port()
    );
    println!("  Tunnels     curl http://{addr}/api/tunnels");
    println!();
    println!("Requests appear below. Press Ctrl-C to stop.");
    session
        .run(shutdown.clone(), output::events(false, json_logs))
        .await?;
    shutdown.cancel();
    server.await.context("server task failed")??;
    Ok(())
}

/// Pending connections the kernel queues for accept: room for a burst of
/// reconnecting clients after a restart (the usual default of 128 drops
/// connections and makes them retry a second later).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| {
        format!(
            "could not listen on {addr} (is another server running? choose another with --listen)"
        )
    })
}

/// Starts the hello service on an ephemeral loopback port.
async fn start_hello(shutdown: &CancellationToken) -> Result<Target> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("could not start the hello service")?;
    let target = Target::parse(&listener.local_addr()?.to_string())?;
    tokio::spawn(cryptun_client::hello::serve(listener, shutdown.clone()));
    Ok(target)
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        fire.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
