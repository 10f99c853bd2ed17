//! The subcommands: each turns its arguments into library configuration and
//! runs until Ctrl-C (or SIGTERM).

use anyhow::{Context, Result};
use cryptun_client::{ClientConfig, ClientError, Target, TunnelConfig, TunnelProtocol};
use cryptun_server::AuthMode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    DemoArgs, HttpArgs, Reach, ServerArgs, TcpArgs, guide, inspect, keys, local, output, paths,
};

/// `cryptun server`.
pub async fn server(args: ServerArgs) -> Result<()> {
    tls_rules(&args)?;
    let config = server_config(&args)?;
    if let Some(warning) = guide::public_localhost_warning(args.listen, &args.domain) {
        tracing::warn!("{warning}");
    }
    let shutdown = shutdown_on_signal();
    let https = match certs(&args, &config.domain)? {
        Some(certs) => {
            let listener = bind(args.tls_listen).await?;
            #[cfg(unix)]
            tokio::spawn(
                certs
                    .clone()
                    .reload_on_hangup(shutdown.clone())
                    .context("cannot catch SIGHUP to reload the certificate")?,
            );
            Some(cryptun_server::TlsListener { listener, certs })
        }
        None => None,
    };
    let listeners = cryptun_server::Listeners {
        http: Some(bind(args.listen).await?),
        https,
    };
    cryptun_server::serve(listeners, config, shutdown).await?;
    Ok(())
}

/// The server's configuration from the flags (and config file), validated.
/// The data directory is where the server keeps its database, auth or not.
fn server_config(args: &ServerArgs) -> Result<cryptun_server::Config> {
    let defaults = cryptun_server::Config::default();
    let auth = args
        .auth
        .unwrap_or_else(|| AuthMode::default_for(args.listen, &args.domain));
    // The server keeps its records there whatever the auth mode; without
    // keys it can also do without one (a machine with no home directory),
    // keeping them in memory.
    let data_dir = match auth {
        AuthMode::Off => paths::data_dir(args.data_dir.clone())
            .inspect_err(|err| tracing::warn!("{err:#}; the server's records are kept in memory"))
            .ok(),
        AuthMode::Optional | AuthMode::Required => Some(paths::data_dir(args.data_dir.clone())?),
    };
    let config = cryptun_server::Config {
        domain: args.domain.clone(),
        public_port: args.public_port,
        public_scheme: args
            .public_scheme
            .clone()
            .unwrap_or(defaults.public_scheme.clone()),
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
        max_connections_per_ip: args.max_connections_per_ip,
        max_requests_per_ip: args.max_requests_per_ip,
        max_sessions_per_ip: args.max_sessions_per_ip,
        max_tunnels_per_ip: args.max_tunnels_per_ip,
        shutdown_grace: args.shutdown_grace,
        tls_handshake_timeout: args.tls_handshake_timeout,
        redirect_http: args.redirect_http,
        auth,
        data_dir,
        reconnect_grace: args.reconnect_grace,
        max_holds_per_identity: args.max_holds_per_identity,
        revocation_poll: args.revocation_poll,
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
        min_body_rate: (args.min_body_rate > 0).then_some(cryptun_server::policy::MinRate {
            bytes_per_sec: args.min_body_rate,
            grace: args.min_body_grace,
        }),
        max_uri_length: args.max_uri_length,
        max_body_size: args.max_body_size,
        rate_limits: cryptun_server::RateLimits {
            per_ip: args.rate_limit_ip,
            per_tunnel: args.rate_limit_tunnel,
            max_tracked_ips: args.rate_limit_max_ips,
            ..defaults.rate_limits
        },
        trusted_proxies: args.trusted_proxies.clone(),
        proxy_protocol: args.proxy_protocol,
        admin_token: args.admin_token.clone(),
        shutdown_delay: args.shutdown_delay,
        cluster: cluster_config(args)?,
        access_sink: crate::logtext::access_sink(),
        tcp_ports: match args.tcp_ports.as_slice() {
            [] => cryptun_server::TcpPorts::default_for(args.listen, &args.domain),
            ranges => cryptun_server::TcpPorts::Ranges(ranges.to_vec()),
        },
        tcp_idle_timeout: args.tcp_idle_timeout,
        tcp_max_connections: args.tcp_max_connections,
        h2c: args.h2c,
        hsts: args.hsts,
        acme: acme_config(args)?,
        h2: cryptun_server::H2Limits {
            max_concurrent_streams: args.h2_max_streams,
            ..defaults.h2
        },
        ..defaults
    };
    Ok(config.validated()?)
}

/// The cluster this server joins, if `--cluster` names one.
fn cluster_config(args: &ServerArgs) -> Result<Option<cryptun_server::cluster::ClusterConfig>> {
    let Some(url) = &args.cluster else {
        if args.cluster_listen.is_some() || args.cluster_secret.is_some() {
            anyhow::bail!("cluster_listen and cluster_secret need cluster (--cluster URL) too");
        }
        return Ok(None);
    };
    let listen = args.cluster_listen.context(
        "--cluster needs --cluster-listen: the address this node serves other nodes' requests on",
    )?;
    let secret = args.cluster_secret.as_deref().context(
        "--cluster needs --cluster-secret (or CRYPTUN_CLUSTER_SECRET), the same on every node",
    )?;
    let secret = cryptun_server::cluster::ClusterSecret::new(secret).map_err(anyhow::Error::msg)?;
    let node = match &args.node_name {
        Some(name) => name.clone(),
        None => host_name().context("no host name to name this node by: pass --node-name")?,
    };
    let mut cluster =
        cryptun_server::cluster::ClusterConfig::new(url.clone(), node, listen, secret);
    cluster.advertise = args.cluster_advertise;
    cluster.lease = args.cluster_lease;
    cluster.lookup_rate = args.cluster_lookup_rate;
    cluster.tls = match (
        &args.cluster_tls_cert,
        &args.cluster_tls_key,
        &args.cluster_tls_ca,
    ) {
        (Some(cert), Some(key), Some(ca)) => {
            Some(cryptun_server::cluster::peer_tls::PeerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                name: args.cluster_tls_name.clone(),
            })
        }
        (None, None, None) => None,
        _ => anyhow::bail!(
            "cluster_tls_cert, cluster_tls_key and cluster_tls_ca go together: give all three or none"
        ),
    };
    Ok(Some(cluster))
}

/// This machine's host name, as the kernel has it.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The rules between the TLS settings that clap checks for flags, checked
/// again for values from a config file (which clap sees as defaults).
fn tls_rules(args: &ServerArgs) -> Result<()> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(_), None) => anyhow::bail!("tls_cert needs tls_key (--tls-key) too"),
        (None, Some(_)) => anyhow::bail!("tls_key needs tls_cert (--tls-cert) too"),
        (Some(_), Some(_)) if args.tls_self_signed => {
            anyhow::bail!("tls_cert and tls_self_signed exclude each other; choose one")
        }
        _ => {}
    }
    let acme = args.acme_dns_server.is_some();
    if acme && (args.tls_cert.is_some() || args.tls_self_signed) {
        anyhow::bail!("acme_dns_server excludes tls_cert and tls_self_signed; choose one");
    }
    if args.redirect_http && args.tls_cert.is_none() && !args.tls_self_signed && !acme {
        anyhow::bail!(
            "redirect_http needs a certificate: tls_cert and tls_key, tls_self_signed, or ACME (acme_dns_server)"
        );
    }
    Ok(())
}

/// The ACME settings, if `--acme-dns-server` asks for ACME.
fn acme_config(args: &ServerArgs) -> Result<Option<cryptun_server::tls::acme::AcmeConfig>> {
    use cryptun_server::tls::acme::{self, AcmeConfig, dns};
    let Some(server) = args.acme_dns_server else {
        return Ok(None);
    };
    if !args.acme_agree_tos {
        anyhow::bail!(
            "ACME needs --acme-agree-tos: the ACME server's terms of service (Let's Encrypt's subscriber agreement) must be agreed to"
        );
    }
    let key = match (&args.acme_tsig_key, std::env::var("CRYPTUN_ACME_TSIG_KEY")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("could not read the TSIG key {}", path.display()))?,
        (None, Ok(text)) => text,
        (None, Err(_)) => anyhow::bail!(
            "ACME's DNS updates need a TSIG key: --acme-tsig-key FILE or CRYPTUN_ACME_TSIG_KEY"
        ),
    };
    let key = dns::TsigKey::parse(&key)?;
    let zone = args.acme_dns_zone.as_deref().unwrap_or(&args.domain);
    let directory = match (&args.acme_directory, args.acme_staging) {
        (Some(url), _) => url.clone(),
        (None, true) => acme::LETS_ENCRYPT_STAGING.into(),
        (None, false) => acme::LETS_ENCRYPT.into(),
    };
    Ok(Some(AcmeConfig {
        directory,
        ca: args.acme_ca.clone(),
        email: args.acme_email.clone(),
        dns: dns::DnsUpdater::new(server, zone, key)?,
        retry: std::time::Duration::from_secs(60),
    }))
}

/// The certificates the server presents, if it serves HTTPS: the
/// operator's files, or a development authority (announced on stdout).
fn certs(args: &ServerArgs, domain: &str) -> Result<Option<cryptun_server::Certs>> {
    use cryptun_server::Certs;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let certs = Certs::load(cert, key).context("could not load the TLS certificate")?;
        return Ok(Some(certs));
    }
    if args.acme_dns_server.is_some() {
        return Ok(Some(Certs::managed()));
    }
    if !args.tls_self_signed {
        return Ok(None);
    }
    let data_dir = paths::data_dir(args.data_dir.clone())?;
    let (certs, dev) = Certs::dev(domain, &data_dir)
        .context("could not set up the development certificate authority")?;
    let port = match args.tls_listen.port() {
        443 => String::new(),
        port => format!(":{port}"),
    };
    println!(
        "Development certificate authority for {domain} and *.{domain} ({}):",
        if dev.created { "created" } else { "reused" }
    );
    let ca = dev.ca.display();
    println!("  {ca}");
    println!("Trust it:  cryptun http 3000 --server https://{domain}{port} --ca {ca}");
    println!("           curl --cacert {ca} https://tunnel-ID.{domain}{port}/");
    Ok(Some(certs))
}

/// `cryptun http`.
pub async fn http(args: HttpArgs, json_logs: bool) -> Result<()> {
    let shutdown = shutdown_on_signal();
    let target = match &args.target {
        Some(target) => {
            let tls = cryptun_client::LocalTls {
                ca: args.local_ca.clone(),
                insecure: args.local_insecure,
                h2: false,
            };
            let mut target = local::target(target, args.host_header.clone(), tls)?;
            if let Some(upstream) = args.upstream {
                target.set_upstream(upstream)?;
                local::check(&target)?;
            }
            target
        }
        None => start_hello(&shutdown).await?,
    };
    let mut config = client_config(args.reach, vec![TunnelConfig::new(target.clone())])?;
    config.tunnel.subdomain = args.subdomain;
    config.tunnel.request_timeout = args.request_timeout;
    config.tunnel.basic_auth = args.basic_auth;
    config.tunnel.allow_ips = args.allow_ips;
    config.tunnel.deny_ips = args.deny_ips;
    config.tunnel.max_body_size = args.max_body_size;
    config.tunnel.pool = args.pool.pool;
    config.tunnel.pool_secret = args.pool.pool_secret;
    let inspector = inspect::start(&args.inspect, &shutdown).await;
    config.inspector = inspector.as_ref().map(|(inspector, _)| inspector.clone());
    let shown = if args.hello {
        "built-in hello page".to_owned()
    } else {
        target.to_string()
    };
    let url = inspector.as_ref().map(|(_, url)| url.as_str());
    serve_one(&config, shutdown, (&shown, url), (args.json, json_logs)).await
}

/// Connects the one tunnel of `config` and serves it until `shutdown`,
/// showing it as `shown` (with the inspector's `url`, if any) in the
/// terminal view or as JSON lines.
async fn serve_one(
    config: &ClientConfig,
    shutdown: CancellationToken,
    (shown, url): (&str, Option<&str>),
    (json, json_logs): (bool, bool),
) -> Result<()> {
    let Some(session) = connect(config, &shutdown).await? else {
        return Ok(());
    };
    let tunnels = [(None, session.tunnel(), shown)];
    let server = session.server();
    let (view, events) = output::show(server, &tunnels, url, json, json_logs);
    let served = cryptun_client::serve(config, session, shutdown, events).await;
    output::finish(view, served.as_ref().err());
    served?;
    Ok(())
}

/// `cryptun tcp` (or `cryptun tls`, with `protocol`): a TCP (or TLS
/// passthrough) tunnel to `args.target`, one line per connection.
pub async fn tcp(args: TcpArgs, protocol: TunnelProtocol, json_logs: bool) -> Result<()> {
    let shutdown = shutdown_on_signal();
    if args.target.contains("://") {
        anyhow::bail!(
            "invalid target {:?}: a {} tunnel's target is a port (22) or host:port",
            args.target,
            protocol.wire_name().to_ascii_uppercase()
        );
    }
    if protocol == TunnelProtocol::Tls && args.remote_port.is_some() {
        anyhow::bail!(
            "--remote-port is for TCP tunnels: a TLS tunnel is reached on the server's HTTPS port, by its name"
        );
    }
    let target = cryptun_client::Target::parse(&args.target)?;
    let mut config = client_config(args.reach, vec![TunnelConfig::new(target)])?;
    config.tunnel.protocol = protocol;
    config.tunnel.remote_port = args.remote_port;
    config.tunnel.local_proxy_protocol = args.local_proxy_protocol;
    config.tunnel.subdomain = args.subdomain;
    config.tunnel.allow_ips = args.allow_ips;
    config.tunnel.deny_ips = args.deny_ips;
    config.tunnel.pool = args.pool.pool;
    config.tunnel.pool_secret = args.pool.pool_secret;
    let shown = config.tunnel.shown_target();
    serve_one(&config, shutdown, (&shown, None), (args.json, json_logs)).await
}

/// Settings for `tunnels` (at least one) on the servers `reach` names,
/// with its CA and token (or the saved one), and the client's state
/// directory for reconnect secrets.
pub fn client_config(reach: Reach, tunnels: Vec<TunnelConfig>) -> Result<ClientConfig> {
    let first = reach.servers.first().context("no server given")?;
    let mut config = ClientConfig::with_tunnels(first, tunnels)?.context("no tunnels to open")?;
    config.set_servers(&reach.servers)?;
    config.ca = reach.ca;
    config.token = keys::client_token(reach.token)?;
    config.state_dir = paths::state_dir();
    Ok(config)
}

/// Connects and creates the tunnels, waiting out names held for another
/// client (`None` if `shutdown` fired meanwhile); an error that calls for
/// something to be done (a refused key, no server there) says what. Then
/// warns about each local service that nothing listens on yet.
pub async fn connect(
    config: &ClientConfig,
    shutdown: &CancellationToken,
) -> Result<Option<cryptun_client::Session>> {
    let session = match crate::held::connect(config, shutdown).await {
        Ok(session) => session,
        Err(err) => match guide::connect_hint(&err, config.token.is_some()) {
            Some(hint) => return Err(anyhow::anyhow!("{err} ({hint})")),
            None => return Err(err.into()),
        },
    };
    if session.is_some() {
        for tunnel in config.tunnels() {
            if let Some(warning) = guide::local_service_warning(&tunnel.target).await {
                crate::lines::eprint(&warning);
            }
        }
    }
    Ok(session)
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
    let mut config = ClientConfig::new(&format!("http://{addr}"), target)?;
    let inspector = inspect::start(&args.inspect, &shutdown).await;
    config.inspector = inspector.as_ref().map(|(inspector, _)| inspector.clone());
    let session = cryptun_client::connect(&config).await?;
    let inspector = inspector.as_ref().map(|(_, url)| url.as_str());
    let (view, events) = output::demo(addr, session.tunnel(), inspector, json_logs);
    let served = match session.run(shutdown.clone(), events).await {
        // Ctrl-C stops the demo's own server too, which may tell the
        // client it is going away before the client notices the signal.
        Err(ClientError::GoingAway { .. }) if shutdown.is_cancelled() => Ok(()),
        served => served,
    };
    output::finish(view, served.as_ref().err());
    served?;
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
pub fn shutdown_on_signal() -> CancellationToken {
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
