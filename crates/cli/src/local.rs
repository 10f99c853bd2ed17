//! The local target as the flags shape it: the `Host` it is sent
//! (`--host-header`), how an `https://` target's certificate is trusted
//! (`--local-ca`, `--local-insecure`), checked before anything connects,
//! and the warning that `--local-insecure` deserves.

use anyhow::{Context, Result};
use cryptun_client::{HostHeader, LocalTls, Target};

use crate::lines;

/// `cryptun http`'s target: `input` with `host_header` (if given) and
/// `tls` (for an `https://` target only), checked.
pub fn target(input: &str, host_header: Option<HostHeader>, tls: LocalTls) -> Result<Target> {
    let mut target = Target::parse(input)?;
    if let Some(host_header) = host_header {
        target.set_host_header(host_header);
    }
    target.set_local_tls(tls)?;
    check(&target)?;
    Ok(target)
}

/// Checks the TLS settings of `target` (a `--local-ca` file that cannot be
/// read is an error now, not at the first request) and warns on stderr
/// when its certificate goes unchecked.
pub fn check(target: &Target) -> Result<()> {
    let Some(tls) = target.local_tls() else {
        return Ok(());
    };
    // Built now and kept: every connection to the target uses it.
    target
        .check_tls()
        .with_context(|| format!("cannot connect to {target} over TLS"))?;
    if tls.insecure {
        lines::eprint(&format!(
            "warning: --local-insecure: the certificate of {target} is not checked; \
             whoever sits between this client and it can read and change the tunnel's requests"
        ));
    }
    Ok(())
}
