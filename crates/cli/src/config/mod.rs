//! Configuration files: `server.toml` for `cryptun server`, `client.toml`
//! for `cryptun http` and `cryptun start` (and `cryptun login`, for the
//! server to check a key with).
//!
//! clap stays the one place where options, their defaults and their
//! parsing live. A file key is the name of a flag (`request_timeout` or
//! `request-timeout` for `--request-timeout`); its value is checked by that
//! flag's own parser, then becomes the flag's default, so clap's own order
//! gives the precedence: flags > environment (`CRYPTUN_...`) > file >
//! built-in defaults. Unknown keys, values of the wrong type or that the
//! flag's parser refuses, and keys that make no sense in a file
//! (`config`, positional arguments) stop the program with the file and
//! line.
//!
//! # Layout
//!
//! - this module: finding and reading the file, checking keys and values
//!   against a [`clap::Command`], and parsing the command line with the
//!   file's values as defaults ([`parse_from`]).
//! - `properties`: property tests of the loader (arbitrary text, settings
//!   read back, errors naming their key).
//! - `tests`: the example files of `examples/` load, every key of them.
//! - [`tunnels`]: the `[tunnels.NAME]` tables of `client.toml`, turned into
//!   the client library's tunnel settings for `cryptun start`.

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
pub mod tunnels;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::Cli;

/// The server's file name inside the config directory.
pub const SERVER_FILE: &str = "server.toml";

/// A configuration file, read.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    text: String,
}

/// A key of a file's table, with its value, located in the file.
pub struct Entry<'a, 'i> {
    /// The key as written.
    pub key: &'a Spanned<std::borrow::Cow<'i, str>>,
    /// Its value.
    pub value: &'a Spanned<DeValue<'i>>,
}

impl ConfigFile {
    /// Reads `path`. A missing file is `None` when `explicit` is false (a
    /// default path), an error otherwise (a `--config` the user gave).
    pub fn read(path: &Path, explicit: bool) -> Result<Option<ConfigFile>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let file = ConfigFile {
                    path: path.to_owned(),
                    text,
                };
                file.table()?;
                Ok(Some(file))
            }
            Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => {
                Err(err).with_context(|| format!("cannot read config file {}", path.display()))
            }
        }
    }

    /// The file's top-level table; a syntax error names its line.
    pub fn table(&self) -> Result<DeTable<'_>> {
        match DeTable::parse(&self.text) {
            Ok(table) => Ok(table.into_inner()),
            Err(err) => {
                let at = err.span().map_or(0, |span| span.start);
                Err(anyhow!(
                    "{}: {}",
                    self.at(at),
                    err.message().trim_end().replace('\n', "; ")
                ))
            }
        }
    }

    /// `FILE:LINE` of byte offset `offset`.
    pub fn at(&self, offset: usize) -> String {
        let before = self.text.get(..offset).unwrap_or(&self.text);
        let line = before.matches('\n').count() + 1;
        format!("{}:{line}", self.path.display())
    }

    /// An error about `key` at its line.
    pub fn key_error(&self, entry: &Entry<'_, '_>, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: key `{}`: {what}",
            self.at(entry.key.span().start),
            entry.key.get_ref()
        )
    }

    /// An error about the value of `key` at its line.
    pub fn value_error(
        &self,
        entry: &Entry<'_, '_>,
        what: impl std::fmt::Display,
    ) -> anyhow::Error {
        anyhow!(
            "{}: bad value for key `{}`: {what}",
            self.at(entry.value.span().start),
            entry.key.get_ref()
        )
    }
}

/// The entries of `table`, in file order.
pub fn entries<'a, 'i>(table: &'a DeTable<'i>) -> Vec<Entry<'a, 'i>> {
    let mut entries: Vec<Entry<'a, 'i>> = table
        .iter()
        .map(|(key, value)| Entry { key, value })
        .collect();
    entries.sort_by_key(|e| e.key.span().start);
    entries
}

/// File keys that are another name of a flag's key: `server = "URL"`,
/// the one server of files written before `servers = [...]`.
pub const KEY_ALIASES: [(&str, &str); 1] = [("server", "servers")];

/// The argument of `cmd` a file key names: its id, with `-` or `_` (or an
/// alias of it, [`KEY_ALIASES`]). Positional arguments, `--config`,
/// `--help`, `--version` and `start --all` are no keys.
pub fn file_arg<'c>(cmd: &'c Command, key: &str) -> Option<&'c Arg> {
    let mut id = key.replace('-', "_");
    if let Some((_, to)) = KEY_ALIASES.iter().find(|(alias, _)| *alias == id) {
        id = (*to).to_owned();
    }
    cmd.get_arguments().find(|arg| {
        arg.get_id() == id.as_str()
            && !arg.is_positional()
            && !matches!(arg.get_id().as_str(), "config" | "help" | "version" | "all")
            && !arg.is_global_set()
    })
}

/// The keys `cmd` accepts in a file, for error messages.
pub fn known_keys(cmd: &Command) -> String {
    let mut keys: Vec<&str> = cmd
        .get_arguments()
        .filter(|arg| file_arg(cmd, arg.get_id().as_str()).is_some())
        .map(|arg| arg.get_id().as_str())
        .collect();
    keys.sort_unstable();
    keys.join(", ")
}

/// Checks `entry` against `arg`, returning the words the command line would
/// have for it (`["3000"]`, `["a", "b"]` for a repeatable flag, `["true"]`
/// for a switch) and the value as that flag's own parser reads it.
pub fn check(file: &ConfigFile, entry: &Entry<'_, '_>, arg: &Arg) -> Result<ArgMatches> {
    let words = words(file, entry, arg)?;
    // A lone copy of the flag, so that only its parser runs (no
    // `requires`, no conflicts, no environment).
    let long = arg.get_long().unwrap_or("value").to_owned();
    let mut lone = Arg::new(arg.get_id().clone())
        .long(long.clone())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone());
    if let Some(names) = arg.get_value_names() {
        lone = lone.value_names(names.iter().cloned());
    }
    let flag = format!("--{long}");
    let mut argv: Vec<OsString> = Vec::new();
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            if words.first().is_some_and(|w| w == "true") {
                argv.push(flag.into());
            }
        }
        _ => {
            for word in &words {
                argv.push(flag.clone().into());
                argv.push(word.into());
            }
        }
    }
    // A secret's value is not repeated in the message.
    let secret = arg.is_hide_env_values_set();
    Command::new("file")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(lone)
        .try_get_matches_from(argv)
        .map_err(|err| {
            let why = match std::error::Error::source(&err) {
                Some(source) if secret => source.to_string(),
                Some(source) => format!("{:?}: {source}", words.join(" ")),
                None if secret => "not a valid value".to_owned(),
                None => first_line(&err.render().to_string()),
            };
            file.value_error(entry, why)
        })
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_owned()
}

/// The value of `entry` as command-line words for `arg`.
fn words(file: &ConfigFile, entry: &Entry<'_, '_>, arg: &Arg) -> Result<Vec<String>> {
    let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let repeats = matches!(arg.get_action(), ArgAction::Append);
    match entry.value.get_ref() {
        DeValue::Boolean(b) => Ok(vec![b.to_string()]),
        _ if switch => Err(file.value_error(entry, "expected true or false")),
        DeValue::Array(items) if repeats => items
            .iter()
            .map(|item| {
                scalar(item.get_ref()).ok_or_else(|| {
                    file.value_error(entry, "expected an array of strings or numbers")
                })
            })
            .collect(),
        DeValue::Array(_) => Err(file.value_error(entry, "expected one value, not an array")),
        value => match scalar(value) {
            Some(word) => Ok(vec![word]),
            None => Err(file.value_error(
                entry,
                format!("expected a string or number, not a {}", value.type_str()),
            )),
        },
    }
}

/// A string, number or boolean as the word a flag would take.
fn scalar(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            i128::from_str_radix(&digits, i.radix())
                .ok()
                .map(|n| n.to_string())
        }
        DeValue::Float(f) => Some(f.as_str().replace('_', "")),
        DeValue::Boolean(b) => Some(b.to_string()),
        DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => None,
    }
}

/// Checks every key of `table` (but those in `skip`) against `schema`,
/// and returns `target` with the values of the keys it has as defaults.
/// Keys `schema` has but `target` lacks are checked and left out (the
/// client file serves both `start` and `http`).
pub fn with_defaults(
    file: &ConfigFile,
    table: &DeTable<'_>,
    schema: &Command,
    skip: &[&str],
    mut target: Command,
) -> Result<Command> {
    // Flags already set, by the key that set them: an alias and its key
    // (`server`, `servers`) may not both be given.
    let mut set: Vec<(clap::Id, String)> = Vec::new();
    for entry in entries(table) {
        let key = entry.key.get_ref();
        if skip.contains(&key.as_ref()) {
            continue;
        }
        if key.replace('-', "_") == "config" {
            return Err(file.key_error(&entry, "cannot be set in a config file"));
        }
        let Some(arg) = file_arg(schema, key) else {
            let known = known_keys(schema);
            return Err(file.key_error(&entry, format!("unknown key (known: {known})")));
        };
        check(file, &entry, arg)?;
        let words = words(file, &entry, arg)?;
        let id = arg.get_id().clone();
        if let Some((_, first)) = set.iter().find(|(set, _)| set == &id) {
            return Err(file.key_error(&entry, format!("says again what `{first}` said; keep one")));
        }
        set.push((id.clone(), key.to_string()));
        if target.get_arguments().any(|a| a.get_id() == &id) {
            target = target.mut_arg(id, |arg| arg.default_values(words));
        }
    }
    Ok(target)
}

/// Which file a subcommand reads, and against which subcommand's flags its
/// keys are checked. `login` reads the client's file for its servers and
/// `ca` (it has no `--config`).
fn file_for(name: &str, matches: &ArgMatches) -> Result<Option<(ConfigFile, &'static str)>> {
    let schema = match name {
        "server" => "server",
        "http" | "start" | "login" => "start",
        _ => return Ok(None),
    };
    let explicit = matches
        .try_get_one::<PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let path = match (&explicit, schema) {
        (Some(path), _) => path.clone(),
        (None, "server") => match cryptun_client::saved::config_dir() {
            Ok(dir) => dir.join(SERVER_FILE),
            Err(_) => return Ok(None),
        },
        (None, _) => match cryptun_client::saved::default_path() {
            Ok(path) => path,
            Err(_) => return Ok(None),
        },
    };
    Ok(ConfigFile::read(&path, explicit.is_some())?.map(|file| (file, schema)))
}

/// Parses the command line, with the subcommand's config file (if any) as
/// defaults. A bad file is an error naming its line; help, version and flag
/// errors are a [`clap::Error`] inside the error, for the caller to
/// [`exit`](clap::Error::exit) with as clap does. Returns the file too
/// (`start` reads its tunnels).
pub fn parse_from(argv: &[OsString]) -> Result<(Cli, Option<ConfigFile>)> {
    let plain = Cli::command();
    let matches = plain.clone().try_get_matches_from(argv)?;
    let Some((name, sub)) = matches.subcommand() else {
        return Ok((cli(&matches)?, None));
    };
    let Some((file, schema)) = file_for(name, sub)? else {
        return Ok((cli(&matches)?, None));
    };
    let schema_cmd = subcommand(&plain, schema)?;
    let target = subcommand(&plain, name)?.clone();
    let table = file.table()?;
    // `tunnels` is a key of the client's file only; its `token` is what
    // `login` replaces, never the default of the key it reads.
    let skip: &[&str] = match (schema, name) {
        ("start", "login") => &["tunnels", "token"],
        ("start", _) => &["tunnels"],
        _ => &[],
    };
    let target = with_defaults(&file, &table, schema_cmd, skip, target)?;
    if let Some(entry) = entries(&table)
        .into_iter()
        .find(|e| e.key.get_ref() == "tunnels")
        && !entry.value.get_ref().is_table()
    {
        bail!(file.value_error(&entry, "expected tables: [tunnels.NAME]"));
    }
    if schema == "start" {
        // The tunnels are checked now too, whichever command reads the
        // file: a bad file is refused the same way everywhere.
        tunnels::declared(&file)?;
    }
    let with_file = plain.mut_subcommand(name, |_| target);
    let matches = with_file.try_get_matches_from(argv)?;
    Ok((cli(&matches)?, Some(file)))
}

/// The command line parsed, with what only the matches tell: whether
/// `login`'s servers were given on the command line (they are saved) or
/// came from the environment or the file (they are not).
fn cli(matches: &ArgMatches) -> Result<Cli> {
    let mut cli = Cli::from_arg_matches(matches)?;
    if let (crate::Command::Login(args), Some(("login", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        args.servers_given =
            sub.value_source("servers") == Some(clap::parser::ValueSource::CommandLine);
    }
    Ok(cli)
}

fn subcommand<'c>(cmd: &'c Command, name: &str) -> Result<&'c Command> {
    cmd.find_subcommand(name)
        .with_context(|| format!("no subcommand {name}"))
}
