//! nginx as a one-hop reverse proxy in front of the origin
//! (`cryptun-bench run --nginx-proxy PATH`): the yardstick of issue 16 for
//! an HTTP-aware relay, and, terminating TLS, for Cryptun's HTTPS listener.
//!
//! What was chosen, and why:
//!
//! - **One worker** (`worker_processes 1`). The figure (0.73× direct)
//!   was measured so; on this 2-core machine wrk and the origin already take
//!   a core's worth, and a second worker would mostly contend with them. CPU
//!   per request, the steadier measure, does not depend on the count.
//! - **Keep-alive upstream connections** (`keepalive 64` in the upstream,
//!   HTTP/1.1 with the `Connection` header cleared, no request limit): as
//!   Cryptun's client keeps a pool to the local service. Without them
//!   nginx would open a connection to the origin per request.
//! - **Responses buffered in memory only** (`proxy_buffers 16 64k`,
//!   `proxy_max_temp_file_size 0`): nginx's usual mode, minus the spill to
//!   temporary files a 1 MiB body would otherwise cause: no disk on the
//!   path, as no relay here has one.
//! - **TLS** (with a certificate): a second listener on the same server,
//!   TLS 1.3 only and one cipher suite, the one Cryptun negotiates with
//!   wrk's OpenSSL (`TLS_AES_256_GCM_SHA384`; [`crate::https`] checks both
//!   listeners agree before measuring).
//!
//! The proxy has no client process: its server column is nginx's master
//! and worker together, its client column empty.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{http_common, main_context, spawn};
use crate::http::free_port;
use crate::procs::Proc;
use crate::scenarios::{Runner, TunnelLoad};

/// The one TLS 1.3 cipher suite both HTTPS listeners use.
pub const CIPHER: &str = "TLS_AES_256_GCM_SHA384";

/// A running proxy and where it listens.
pub struct Proxy {
    /// nginx's master (its worker is counted with it).
    pub proc: Proc,
    /// The plain HTTP listener.
    pub plain: SocketAddr,
    /// The TLS listener, with a certificate.
    pub tls: Option<SocketAddr>,
}

/// A certificate and its key, PEM files.
pub struct CertFiles<'a> {
    /// The certificate chain.
    pub cert: &'a Path,
    /// Its private key.
    pub key: &'a Path,
}

/// Starts nginx proxying to the origin at `origin_addr`, runs `runner`'s
/// scenarios through it, and stops it.
pub fn measure(
    program: &Path,
    runner: &Runner,
    logs: &Path,
    origin: &mut Proc,
    origin_addr: SocketAddr,
) -> Result<TunnelLoad> {
    let mut proxy = start(program, logs, origin_addr, None)?;
    eprintln!("nginx proxy {}", proxy.plain);
    runner.relay("nginx proxy", proxy.plain, &mut proxy.proc, None, origin)
}

/// Starts nginx proxying to `origin`, with a TLS listener too if `cert` is
/// given; its files under `logs/nginx-proxy` (`logs/nginx-proxy-tls` with
/// TLS, so that the HTTPS run keeps the plain run's log and config).
pub fn start(
    program: &Path,
    logs: &Path,
    origin: SocketAddr,
    cert: Option<CertFiles<'_>>,
) -> Result<Proxy> {
    let name = if cert.is_some() {
        "nginx-proxy-tls"
    } else {
        "nginx-proxy"
    };
    let dir = logs.join(name);
    let plain = free_port()?;
    let tls = match cert {
        Some(cert) => Some((free_port()?, cert)),
        None => None,
    };
    let config = config_text(&dir, origin, plain, tls.as_ref());
    let mut proc = spawn(program, &dir, &config, &format!("{name}.log"))?;
    proc.wait_listening(plain, Duration::from_secs(10))?;
    let tls = tls.map(|(addr, _)| addr);
    if let Some(addr) = tls {
        proc.wait_listening(addr, Duration::from_secs(10))?;
    }
    Ok(Proxy { proc, plain, tls })
}

fn config_text(
    dir: &Path,
    origin: SocketAddr,
    plain: SocketAddr,
    tls: Option<&(SocketAddr, CertFiles<'_>)>,
) -> String {
    let tls = tls
        .map(|(addr, files)| {
            format!(
                "        listen {addr} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {CIPHER};
",
                cert = files.cert.display(),
                key = files.key.display()
            )
        })
        .unwrap_or_default();
    format!(
        "{main}http {{
{common}    upstream origin {{
        server {origin};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {plain};
{tls}        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
",
        main = main_context(dir, "1"),
        common = http_common(dir),
    )
}
