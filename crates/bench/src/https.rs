//! The HTTPS scenario (`cryptun-bench run --https`): visitors over TLS.
//!
//! Public traffic is HTTPS, so issue 16 measures it too: wrk to
//! `https://`, 100 B × `--connections` and 1 MiB × `--large-connections`,
//! through Cryptun's HTTPS listener (a fresh server with `--tls-listen`,
//! `--tls-cert`, `--tls-key`, and a fresh client) and, with
//! `--nginx-proxy`, through nginx terminating TLS and proxying to the same
//! origin ([`crate::nginx::proxy`]). Both ratios are to plain direct, the
//! direct runs paired with Cryptun's, scenario by scenario.
//!
//! Both present the same certificate, generated here with rcgen under the
//! run's log folder: ECDSA P-256, for `localhost` and `*.localhost`. Before
//! measuring, `openssl s_client` (the same library and defaults as wrk's)
//! reports what each listener negotiates; the run stops if the two differ
//! in protocol or cipher suite, so that neither is measured with a cheaper
//! cipher than the other.
//!
//! wrk sends the URL's host as the TLS server name, and Cryptun refuses a
//! request whose Host differs from it (421), so the URL names the tunnel
//! and wrk connects to 127.0.0.1 whatever the name resolves to
//! ([`crate::wrk`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::nginx::proxy::{self, CertFiles};
use crate::procs::Proc;
use crate::run::{Env, start_client, start_server};
use crate::sample::{Measured, NO_PROCESS, Roles};
use crate::scenarios::{Runner, Scenario, Target, TunnelLoad};

/// Everything the HTTPS phase measured.
#[derive(Debug, Clone, Default)]
pub struct HttpsReport {
    /// The scenarios, in the order they ran.
    pub scenarios: Vec<Scenario>,
    /// Plain HTTP straight at the origin, paired with Cryptun's runs.
    pub direct: Vec<Measured>,
    /// Cryptun's HTTPS listener, then nginx terminating TLS if asked for.
    pub paths: Vec<TunnelLoad>,
    /// What each listener negotiated with OpenSSL's defaults, by name.
    pub negotiated: Vec<(&'static str, String)>,
}

/// The certificate both listeners present.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

/// Runs the HTTPS scenarios against the origin at `origin_addr`.
pub fn phase(
    env: &Env,
    runner: &Runner,
    origin: &mut Proc,
    origin_addr: SocketAddr,
    nginx: Option<&Path>,
) -> Result<HttpsReport> {
    let runner = runner.concurrent_only();
    let cert = generate_cert(&env.logs.join("tls"))?;
    let mut report = HttpsReport {
        scenarios: runner.scenarios.clone(),
        ..HttpsReport::default()
    };

    let tls_listen = crate::http::free_port()?;
    let listen = tls_listen.to_string();
    let (cert_arg, key_arg) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let extra = [
        "--tls-listen",
        &listen,
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ];
    let (mut server, server_addr) = start_server(env, &extra, "server-https.log")?;
    let (mut client, host, _) = start_client(env, origin_addr, server_addr, "client-https.log")?;
    let name = host_name(&host);
    let cryptun = Target {
        name: "cryptun https",
        addr: tls_listen,
        host: Some(format!("{name}:{}", tls_listen.port())),
        tls: true,
    };
    let negotiated = handshake(tls_listen, name)?;
    eprintln!("cryptun https {tls_listen} ({name}): {negotiated}");
    report.negotiated.push((cryptun.name, negotiated));
    let direct = Target {
        name: "direct",
        addr: origin_addr,
        host: None,
        tls: false,
    };
    let pids = Roles {
        server: server.pid(),
        client: client.pid(),
        origin: origin.pid(),
    };
    let procs: &mut [&mut Proc] = &mut [&mut server, &mut client, origin];
    let (load, [direct_runs]) = runner.tunnel(&cryptun, [&direct], pids, procs)?;
    report.paths.push(load);
    report.direct = direct_runs;
    drop((server, client));

    if let Some(program) = nginx {
        let files = CertFiles {
            cert: &cert.cert,
            key: &cert.key,
        };
        let mut proxy = proxy::start(program, &env.logs, origin_addr, Some(files))?;
        let addr = proxy.tls.context("nginx has no TLS listener")?;
        let target = Target {
            name: "nginx tls",
            addr,
            host: Some(format!("{name}:{}", addr.port())),
            tls: true,
        };
        let negotiated = handshake(addr, name)?;
        eprintln!("nginx tls {addr}: {negotiated}");
        ensure!(
            negotiated == report.negotiated[0].1,
            "nginx negotiated {negotiated}, Cryptun {}: not comparable",
            report.negotiated[0].1
        );
        report.negotiated.push((target.name, negotiated));
        let pids = Roles {
            server: proxy.proc.pid(),
            client: NO_PROCESS,
            origin: origin.pid(),
        };
        let procs: &mut [&mut Proc] = &mut [&mut proxy.proc, origin];
        let (load, []) = runner.tunnel(&target, [], pids, procs)?;
        report.paths.push(load);
    }
    Ok(report)
}

/// The name part of a `name:port` Host.
fn host_name(host: &str) -> &str {
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// An ECDSA P-256 certificate for `localhost` and `*.localhost`, self
/// signed, written to `dir`.
fn generate_cert(dir: &Path) -> Result<Cert> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "*.localhost".into()])?;
    let certificate = params.self_signed(&key)?;
    let cert = Cert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&cert.cert, certificate.pem())?;
    std::fs::write(&cert.key, key.serialize_pem())?;
    Ok(cert)
}

/// What `openssl s_client` negotiates with the listener at `addr` for the
/// server name `sni`: "TLSv1.3 TLS_AES_256_GCM_SHA384, X25519", say.
fn handshake(addr: SocketAddr, sni: &str) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-brief", "-connect", &addr.to_string()])
        .args(["-servername", sni])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl s_client (is openssl installed?)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("openssl s_client to {addr} did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut text)?;
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([':', ' ']).trim().to_owned())
    };
    let (Some(version), Some(cipher)) = (field("Protocol version"), field("Ciphersuite")) else {
        bail!("openssl s_client to {addr} negotiated nothing:\n{text}");
    };
    let group = field("Negotiated TLS1.3 group")
        .or_else(|| field("Server Temp Key"))
        .unwrap_or_else(|| "?".into());
    Ok(format!("{version} {cipher}, {group}"))
}
