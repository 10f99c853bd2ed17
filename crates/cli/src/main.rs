//! `cryptun`: the one binary. Parses the command line, sets up logging, and
//! hands off to the library crates; no tunnel logic lives here.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod config;
mod guide;
mod held;
mod inspect;
mod keys;
mod lines;
mod local;
mod logtext;
mod output;
mod parse;
mod paths;
mod start;
mod status;

use std::time::Duration;

use cryptun_client::TunnelProtocol;

pub(crate) use args::{
    Cli, Command, DemoArgs, HttpArgs, KeysArgs, KeysCommand, LogFormat, LoginArgs, Reach,
    ServerArgs, TcpArgs, secret,
};

/// See `Cargo.toml` for why jemalloc.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cli, file) = match config::parse_from(&argv) {
        Ok(parsed) => parsed,
        Err(err) => match err.downcast::<clap::Error>() {
            Ok(clap) => clap.exit(),
            Err(err) => {
                eprintln!("error: {}", report(&err));
                return std::process::ExitCode::from(2);
            }
        },
    };
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "cryptun", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(cli.log_format, default_level(&cli.command));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(&runtime, cli, file);
    // The error goes after the lines and log events still queued, through
    // the same queue, so that a stderr nobody reads cannot keep the process
    // from exiting (a stuck stream loses them, as it would anyway).
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            lines::eprint(&format!("error: {}", report(&err)));
            std::process::ExitCode::FAILURE
        }
    };
    lines::flush(Duration::from_secs(2));
    code
}

/// The least severe level logged unless `RUST_LOG` says otherwise: the
/// server tells what it does, a client only what goes wrong.
fn default_level(command: &Command) -> &'static str {
    match command {
        Command::Server(_) => "info",
        Command::Http(_)
        | Command::Start(_)
        | Command::Demo(_)
        | Command::Keys(_)
        | Command::Login(_)
        | Command::Tcp(_)
        | Command::Tls(_)
        | Command::Completions { .. } => "warn",
    }
}

/// Sends log events to stderr (through [`lines`]) in `format`, filtered by
/// `RUST_LOG`, else at `default_level`.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(lines::Logs);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    logtext::set_access_format(match format {
        LogFormat::Text if terminal => None,
        LogFormat::Text => Some(logtext::AccessFormat::Text),
        LogFormat::Json => Some(logtext::AccessFormat::Json),
    });
    match format {
        LogFormat::Text if terminal => logs.with_ansi(true).init(),
        LogFormat::Text => logs
            .with_ansi(false)
            .event_format(logtext::PlainText)
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Runs the subcommand on `runtime` to its end. A panic in it is raised
/// again here, after the log lines that led up to it.
fn run(
    runtime: &tokio::runtime::Runtime,
    cli: Cli,
    file: Option<config::ConfigFile>,
) -> anyhow::Result<()> {
    let json_logs = cli.log_format == LogFormat::Json;
    let command = async move {
        match cli.command {
            Command::Server(args) => commands::server(*args).await,
            Command::Http(args) => commands::http(args, json_logs).await,
            Command::Tcp(args) => commands::tcp(args, TunnelProtocol::Tcp, json_logs).await,
            Command::Tls(args) => commands::tcp(args, TunnelProtocol::Tls, json_logs).await,
            Command::Start(args) => start::start(args, file, json_logs).await,
            Command::Demo(args) => commands::demo(args, json_logs).await,
            Command::Keys(args) => keys::keys(args).await,
            Command::Login(args) => keys::login(args).await,
            // Answered before the runtime started.
            Command::Completions { .. } => Ok(()),
        }
    };
    // The command runs as a task on the worker threads, not on this one:
    // a future that `block_on` polls lives on the main thread, and every
    // wake-up of it (each message of a session loop) would cross threads.
    match runtime.block_on(runtime.spawn(command)) {
        Ok(result) => result,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => {
                // The log lines that led up to it go out first.
                lines::flush(Duration::from_secs(2));
                std::panic::resume_unwind(panic)
            }
            Err(err) => Err(anyhow::anyhow!("the command was cancelled: {err}")),
        },
    }
}

/// An error and its causes on one line, each cause once: many errors (the
/// WebSocket library's among them) already print their source in their own
/// message, and `{:#}` would repeat it.
fn report(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let inner = anyhow::Error::new(io).context("IO error: refused");
        let err = inner.context("could not connect");
        assert_eq!(report(&err), "could not connect: IO error: refused");
        let plain = anyhow::anyhow!("no tunnel").context("starting");
        assert_eq!(report(&plain), "starting: no tunnel");
    }
}
