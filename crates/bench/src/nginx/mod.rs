//! nginx as the origin (`cryptun-bench run --nginx PATH`), the origin issue 3
//! measured its yardstick with.
//!
//! Our own origin ([`crate::origin`]) costs about 10 µs of CPU per request;
//! the cheaper the origin, the larger the share of each request the tunnel's
//! own work takes, so ratios to direct measured with it read lower than the
//! issue's figures for bore and rathole, which were taken with nginx. With
//! `--nginx` the same scenarios run against nginx serving the same two
//! bodies as static files, and every ratio compares with the issue's.
//!
//! nginx runs in the foreground (`daemon off`) with its default worker count
//! (`worker_processes auto`: one per CPU), every path it writes (pid file,
//! error log, temporary folders) under the run's log folder, no access log,
//! and keep-alive connections that never hit a request limit. Its workers
//! are children of the master we start; [`crate::procs`] counts a process's
//! children with it, so the origin's CPU and RSS columns are nginx's whole.
//!
//! [`proxy`] runs nginx the other way round: as a one-hop reverse proxy in
//! front of the origin, a yardstick for what an HTTP-aware relay costs.

pub mod proxy;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::free_port;
use crate::origin::{SMALL_BODY, large_body};
use crate::procs::Proc;

/// Starts nginx on a free loopback port serving `/small` and `/1m` from
/// files under `logs/nginx`; returns it and its address.
pub fn start(program: &Path, logs: &Path) -> Result<(Proc, SocketAddr)> {
    let dir = logs.join("nginx");
    let root = dir.join("www");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(root.join("small"), SMALL_BODY)?;
    std::fs::write(root.join("1m"), large_body())?;
    let addr = free_port()?;
    let mut nginx = spawn(program, &dir, &config_text(&dir, &root, addr), "nginx.log")?;
    nginx.wait_listening(addr, Duration::from_secs(10))?;
    Ok((nginx, addr))
}

/// Starts nginx with `config` (written to `dir/nginx.conf`), every path it
/// writes under `dir`, its stderr in `log` beside `dir`; stopped with SIGTERM
/// when dropped, so that its workers go with it.
fn spawn(program: &Path, dir: &Path, config: &str, log: &str) -> Result<Proc> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let logs = dir.parent().context("nginx's folder has no parent")?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let args = [
        "-c".to_owned(),
        path.display().to_string(),
        "-p".to_owned(),
        dir.display().to_string(),
        // Before it reads its config nginx logs to its built-in path, which
        // may not be writable; this one is.
        "-e".to_owned(),
        dir.join("error.log").display().to_string(),
    ];
    let mut nginx = Proc::spawn("nginx", program, &args, &logs.join(log))?;
    nginx.release_stdout();
    nginx.terminate_on_drop();
    Ok(nginx)
}

/// The lines every config of ours starts with: foreground, `workers`
/// worker processes, pid file and error log under `dir`.
fn main_context(dir: &Path, workers: &str) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
"
    )
}

/// The `http` block's settings every config of ours shares: no access log,
/// `TCP_NODELAY`, keep-alive without a request limit, temporary folders
/// under `dir`.
fn http_common(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "    access_log off;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"
    )
}

fn config_text(dir: &Path, root: &Path, addr: SocketAddr) -> String {
    format!(
        "{main}http {{
{common}    sendfile on;
    tcp_nopush on;
    default_type text/plain;
    server {{
        listen {addr};
        root {root};
    }}
}}
",
        main = main_context(dir, "auto"),
        common = http_common(dir),
        root = root.display()
    )
}
