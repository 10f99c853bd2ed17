//! The request inspector's flags, shared by `cryptun http`, `start` and
//! `demo` (flattened into each), and starting it.
//!
//! `--inspect` alone is the default address and `--inspect=ADDR` another:
//! the value must follow an `=`, so `cryptun http --inspect 3000` keeps
//! `3000` as the target instead of taking it for the inspector's address.
//! `--inspect=off` (or `CRYPTUN_INSPECT=off`, or `inspect = "off"` in
//! client.toml) disables it.

use std::net::SocketAddr;

use clap::Args;
use cryptun_client::{Inspector, InspectorLimits, inspector};
use tokio_util::sync::CancellationToken;

use crate::{lines, parse};

/// Where the inspector listens unless told otherwise, as ngrok's does.
const DEFAULT_ADDR: &str = "127.0.0.1:4040";

/// The inspector's flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct InspectArgs {
    /// Serve the request inspector (recent requests, replay, HAR): `--inspect` alone on
    /// 127.0.0.1:4040, `--inspect=ADDR` elsewhere, `--inspect=off` not at all. If the port is
    /// taken the next nine are tried.
    #[arg(
        long,
        env = "CRYPTUN_INSPECT",
        value_name = "ADDR",
        default_value = DEFAULT_ADDR,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = DEFAULT_ADDR,
        value_parser = parse_inspect
    )]
    pub(crate) inspect: Inspect,
    /// Exchanges the inspector keeps; the oldest go first.
    #[arg(long, env = "CRYPTUN_INSPECT_KEEP", value_name = "N",
          default_value_t = InspectorLimits::default().capacity)]
    pub(crate) inspect_keep: usize,
    /// Memory the inspector may hold for the exchanges it keeps (their heads and the first
    /// 64 KiB of each body), e.g. 32M; the oldest go first.
    #[arg(long, env = "CRYPTUN_INSPECT_MEMORY", value_name = "SIZE", default_value = "32M",
          value_parser = parse::size)]
    pub(crate) inspect_memory: u64,
}

/// `--inspect`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inspect(pub(crate) Option<SocketAddr>);

/// Parses `--inspect`'s value.
pub(crate) fn parse_inspect(value: &str) -> Result<Inspect, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" | "false" | "no" | "none" => Ok(Inspect(None)),
        _ => value.parse().map(|addr| Inspect(Some(addr))).map_err(|_| {
            format!("expected an address such as 127.0.0.1:4040, or off; got {value:?}")
        }),
    }
}

impl InspectArgs {
    /// What the inspector keeps.
    fn limits(&self) -> InspectorLimits {
        InspectorLimits {
            capacity: self.inspect_keep,
            max_bytes: usize::try_from(self.inspect_memory).unwrap_or(usize::MAX),
            ..InspectorLimits::default()
        }
    }
}

/// Starts the request inspector if asked, returning it and its URL. A
/// taken address is not fatal: the tunnel matters more, so it runs
/// without one and says so on stderr.
pub(crate) async fn start(
    args: &InspectArgs,
    shutdown: &CancellationToken,
) -> Option<(Inspector, String)> {
    let addr = args.inspect.0?;
    let bound = inspector::bind(addr)
        .await
        .map_err(anyhow::Error::from)
        .and_then(|listener| Ok((listener.local_addr()?, listener)));
    let (local, listener) = match bound {
        Ok(bound) => bound,
        Err(err) => {
            lines::eprint(&format!(
                "warning: running without the request inspector: {err:#} (choose another address with --inspect=ADDR, or --inspect=off)"
            ));
            return None;
        }
    };
    if !local.ip().is_loopback() {
        lines::eprint(&format!(
            "warning: the request inspector on {local} shows the tunnels' traffic, and replays it, for anyone who can reach it"
        ));
    }
    let inspector = Inspector::new(args.limits());
    tokio::spawn(inspector::serve(
        listener,
        inspector.clone(),
        shutdown.clone(),
    ));
    Some((inspector, format!("http://{local}")))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn http(args: &[&str]) -> Result<(String, InspectArgs), clap::Error> {
        let argv = ["cryptun", "http"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Http(http) => Ok((http.target.unwrap_or_default(), http.inspect)),
            other => panic!("not http: {other:?}"),
        }
    }

    fn addr(text: &str) -> Inspect {
        Inspect(Some(text.parse().unwrap()))
    }

    #[test]
    fn inspect_alone_is_the_default_address_and_leaves_the_target() {
        let (target, inspect) = http(&["--inspect", "3000"]).unwrap();
        assert_eq!(target, "3000");
        assert_eq!(inspect.inspect, addr(DEFAULT_ADDR));
        let (target, inspect) = http(&["3000", "--inspect"]).unwrap();
        assert_eq!(target, "3000");
        assert_eq!(inspect.inspect, addr(DEFAULT_ADDR));
    }

    #[test]
    fn inspect_equals_takes_an_address_or_off() {
        let (_, inspect) = http(&["--inspect=127.0.0.1:5050", "3000"]).unwrap();
        assert_eq!(inspect.inspect, addr("127.0.0.1:5050"));
        let (_, inspect) = http(&["3000", "--inspect=off"]).unwrap();
        assert_eq!(inspect.inspect, Inspect(None));
        assert!(http(&["3000", "--inspect=nowhere"]).is_err());
    }

    #[test]
    fn the_inspector_keeps_what_its_flags_say() {
        let (_, inspect) = http(&["3000"]).unwrap();
        assert_eq!(inspect.limits(), InspectorLimits::default());
        let (_, inspect) =
            http(&["3000", "--inspect-keep", "5000", "--inspect-memory", "128M"]).unwrap();
        let limits = inspect.limits();
        assert_eq!((limits.capacity, limits.max_bytes), (5000, 128 << 20));
        assert!(http(&["3000", "--inspect-memory", "lots"]).is_err());
    }
}
