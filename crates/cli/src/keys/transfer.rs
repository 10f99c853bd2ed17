//! `cryptun keys export` and `cryptun keys import`: a store's keys,
//! reservations and held names as one JSON document, written to a file or
//! standard output and read from one or standard input. The document, and
//! what an import does with each entry, are the server library's
//! (`cryptun_server::store::transfer`); this is files and printing.
//!
//! The file is written readable by its owner only (mode 0600, whatever the
//! umask): it holds no token, but its hashes are what a server checks
//! tokens against. It is written beside its final name and renamed over
//! it, so an interrupted export never leaves half a document there.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use cryptun_client::saved::write_private;
use cryptun_server::store::transfer::{Counts, Document, Summary};

use super::Backend;

/// `cryptun keys export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where to write the document: a file (mode 0600: it holds the keys' hashes), or `-` for
    /// standard output.
    #[arg(long, short, value_name = "FILE", default_value = "-")]
    output: PathBuf,
}

/// `cryptun keys import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The document to read (from `keys export`), or `-` for standard input.
    #[arg(long, short, value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Write the document's entries over the ones that differ here. A key revoked here stays
    /// revoked, and a name a live tunnel serves is not taken from it.
    #[arg(long)]
    replace: bool,
}

/// Whether `path` means standard input or output.
fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// `cryptun keys export`.
pub async fn export(store: &Backend, args: ExportArgs) -> Result<()> {
    let document = store.export().await?;
    let mut text = serde_json::to_string_pretty(&document)?;
    text.push('\n');
    let to = if is_std(&args.output) {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("could not write to standard output")?;
        String::new()
    } else {
        let path = args.output.clone();
        tokio::task::spawn_blocking(move || write_private(&path, text.as_bytes()))
            .await?
            .with_context(|| format!("could not write {}", args.output.display()))?;
        format!(" to {}", args.output.display())
    };
    crate::lines::eprint(&format!(
        "Exported {}, {}, {} and {} from {}{to}.",
        plural(document.keys.len(), "key"),
        plural(document.reservations.len(), "reservation"),
        plural(document.port_reservations.len(), "reserved port"),
        plural(document.holds.len(), "held name"),
        store.describe(),
    ));
    Ok(())
}

/// `cryptun keys import`.
pub async fn import(store: &Backend, args: ImportArgs) -> Result<()> {
    let input = args.input.clone();
    let text = tokio::task::spawn_blocking(move || read(&input)).await??;
    let document = Document::parse(&text)
        .with_context(|| format!("could not import {}", name_of(&args.input)))?;
    let summary = store
        .import(document, args.replace)
        .await
        .with_context(|| {
            format!(
                "could not import {} into {}",
                name_of(&args.input),
                store.describe()
            )
        })?;
    print!("{}", report(&summary, &store.describe()));
    if store.is_local() && summary.holds.added + summary.holds.updated > 0 {
        println!(
            "Held names are taken back when the server starts: a server running now writes its own over them when it stops."
        );
    }
    Ok(())
}

fn name_of(path: &Path) -> String {
    if is_std(path) {
        "standard input".into()
    } else {
        path.display().to_string()
    }
}

fn read(path: &Path) -> Result<String> {
    let mut text = String::new();
    if is_std(path) {
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .context("could not read standard input")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?;
    }
    Ok(text)
}

/// What an import did, a line per kind of entry.
fn report(summary: &Summary, target: &str) -> String {
    let head = if summary.changed() {
        format!("Imported into {target}:")
    } else {
        format!("Nothing changed in {target}: everything in the document is there already.")
    };
    let line = |kind: &str, counts: &Counts, updated: &str| {
        let mut line = format!(
            "  {kind:<13} {} added, {} {updated}, {} already there",
            counts.added, counts.updated, counts.unchanged
        );
        if counts.ended > 0 {
            line.push_str(&format!(", {} ended (not imported)", counts.ended));
        }
        line
    };
    [
        head,
        line("keys", &summary.keys, "revoked or replaced"),
        line("reservations", &summary.reservations, "replaced"),
        line("reserved ports", &summary.port_reservations, "replaced"),
        line("held names", &summary.holds, "replaced"),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect()
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_when_nothing_changed() {
        let mut summary = Summary::default();
        summary.keys.unchanged = 2;
        let text = report(&summary, "the cluster's store");
        assert!(
            text.starts_with("Nothing changed in the cluster's store"),
            "{text}"
        );
        assert!(text.contains("keys          0 added, 0 revoked or replaced, 2 already there"));
        summary.holds.added = 1;
        summary.holds.ended = 1;
        let text = report(&summary, "x");
        assert!(text.starts_with("Imported into x:"), "{text}");
        assert!(
            text.contains("1 added, 0 replaced, 0 already there, 1 ended"),
            "{text}"
        );
    }
}
