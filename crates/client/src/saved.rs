//! The client's saved settings: `client.toml`, written by `cryptun login`
//! (its `token` key) and read by `cryptun http` for the API key it presents
//! when neither `--token` nor `CRYPTUN_TOKEN` gives one. The same file
//! holds the user's other client settings and tunnels (`cryptun start`);
//! the CLI checks those keys, this module looks at `token` only.
//!
//! The file lives at `$XDG_CONFIG_HOME/cryptun/client.toml`, else
//! `~/.config/cryptun/client.toml`. It holds a secret, so it is written
//! readable by its owner only (mode 0600, in a 0700 directory), through a
//! temporary file renamed into place so a crash never leaves half a key.
//! Saving changes the `token` key (and, when `cryptun login --server` gives
//! any, `servers`) only: the rest of the file, comments and layout
//! included, stays as the user wrote it (`toml_edit`).

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use cryptun_proto::Secret;

/// The file's name inside the config directory.
pub const FILE_NAME: &str = "client.toml";

/// What `client.toml` holds that this module deals with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedConfig {
    /// The API key to present to the server.
    pub token: Option<Secret>,
    /// Servers to save with the key, as `servers = [...]` (replacing any
    /// `server` or `servers`); none leaves them as they are. Written only:
    /// [`load`](Self::load) leaves it empty, the CLI's config loader reads
    /// the servers.
    pub servers: Vec<String>,
}

/// Why the saved config could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or its `token` is not a string.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No config directory: neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("no config directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
}

/// `$XDG_CONFIG_HOME/cryptun`, else `$HOME/.config/cryptun` (also where
/// the server's `server.toml` is looked for).
pub fn config_dir() -> Result<PathBuf, SavedError> {
    xdg_dir("XDG_CONFIG_HOME", ".config").ok_or(SavedError::NoConfigDir)
}

/// Cryptun's folder of one XDG base directory, from this process's
/// environment: `$VAR/cryptun`, else `$HOME/FALLBACK/cryptun` (the client's
/// config: `XDG_CONFIG_HOME`, `.config`; its state: `XDG_STATE_HOME`,
/// `.local/state`; the server's data: `XDG_DATA_HOME`, `.local/share`).
/// See [`xdg_dir_of`].
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var);
    let home = std::env::var_os("HOME");
    xdg_dir_of(value.as_deref(), home.as_deref(), fallback)
}

/// [`xdg_dir`] for these values of the variable and of `HOME`.
///
/// A variable that is unset, empty or relative counts as absent (the spec
/// says a relative path there is invalid and must be ignored; a relative
/// `HOME` would put the files wherever the command happens to run). With
/// neither, there is no folder (`None`), rather than one under the working
/// directory: the caller asks for one, or does without.
pub fn xdg_dir_of(value: Option<&OsStr>, home: Option<&OsStr>, fallback: &str) -> Option<PathBuf> {
    let absolute = |var: Option<&OsStr>| var.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute(value).or_else(|| absolute(home).map(|home| home.join(fallback)))?;
    Some(base.join("cryptun"))
}

/// `$XDG_CONFIG_HOME/cryptun/client.toml`, else
/// `$HOME/.config/cryptun/client.toml`.
pub fn default_path() -> Result<PathBuf, SavedError> {
    Ok(config_dir()?.join(FILE_NAME))
}

/// The file's text, or `None` if there is no file.
fn read(path: &Path) -> Result<Option<String>, SavedError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SavedError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

impl SavedConfig {
    /// Reads `path`; a missing file is an empty config. Keys other than
    /// `token` are left to the CLI's config loader.
    pub fn load(path: &Path) -> Result<SavedConfig, SavedError> {
        let Some(text) = read(path)? else {
            return Ok(SavedConfig::default());
        };
        if readable_by_others(path) {
            tracing::warn!(path = %path.display(), "the saved API key is readable by other users; chmod 600 it");
        }
        let parse = |message: String| SavedError::Parse {
            path: path.to_owned(),
            message,
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| parse(e.message().into()))?;
        let token = match table.get("token") {
            None => None,
            Some(toml::Value::String(token)) => Some(Secret::new(token)),
            Some(other) => {
                let kind = other.type_str();
                return Err(parse(format!("token must be a string, not a {kind}")));
            }
        };
        Ok(SavedConfig {
            token,
            servers: Vec::new(),
        })
    }

    /// Writes the token into the file at `path` (created if missing),
    /// readable by its owner only; every other line stays as it was.
    pub fn save(&self, path: &Path) -> Result<(), SavedError> {
        let io = |source| SavedError::Io {
            path: path.to_owned(),
            source,
        };
        let existing = read(path)?.unwrap_or_default();
        let mut doc: toml_edit::DocumentMut =
            existing
                .parse()
                .map_err(|e: toml_edit::TomlError| SavedError::Parse {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?;
        match &self.token {
            Some(token) => doc["token"] = toml_edit::value(token.expose()),
            None => {
                doc.remove("token");
            }
        }
        if !self.servers.is_empty() {
            doc.remove("server");
            let servers: toml_edit::Array = self.servers.iter().map(String::as_str).collect();
            doc["servers"] = toml_edit::value(servers);
        }
        let text = doc.to_string();
        write_private(path, text.as_bytes()).map_err(io)
    }
}

/// Writes `bytes` to `path`, readable by its owner only: through a new
/// file of mode 0600 beside it (a random name, created only if it does
/// not exist, so two writers never share one), renamed over `path` once
/// complete, so that a reader never sees half a file and a crash never
/// leaves one. The temporary file goes on any failure. Missing folders
/// are created 0700.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", cryptun_proto::random_id(8)));
    let temp = dir.map_or_else(|| PathBuf::from(&temp_name), |d| d.join(&temp_name));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path() -> PathBuf {
        std::env::temp_dir()
            .join(format!("cryptun-saved-{}", cryptun_proto::random_id(12)))
            .join("cryptun")
            .join(FILE_NAME)
    }

    #[test]
    fn saves_privately_and_loads_back() {
        let path = temp_path();
        assert_eq!(SavedConfig::load(&path).unwrap(), SavedConfig::default());
        let saved = SavedConfig {
            token: Some(Secret::new("ck_abcdefgh_xyz")),
            servers: Vec::new(),
        };
        saved.save(&path).unwrap();
        assert_eq!(SavedConfig::load(&path).unwrap(), saved);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), r#"token = "ck_abcdefgh_xyz""#);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
            assert!(!readable_by_others(&path));
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn saving_keeps_the_rest_of_the_file() {
        let path = temp_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let before = "# my tunnels\nserver = \"https://t.example.com\" # the server\ntoken = \"old\"\n\n[tunnels.web]\ntarget = \"3000\" # dev server\n";
        std::fs::write(&path, before).unwrap();
        let saved = SavedConfig {
            token: Some(Secret::new("ck_new")),
            servers: Vec::new(),
        };
        saved.save(&path).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(after, before.replace("\"old\"", "\"ck_new\""));
        assert_eq!(SavedConfig::load(&path).unwrap(), saved);
        let with_server = SavedConfig {
            servers: vec!["https://u.example.com".into()],
            ..saved.clone()
        };
        with_server.save(&path).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(!after.contains("t.example.com"), "{after}");
        assert!(
            after.contains(r#"servers = ["https://u.example.com"]"#),
            "{after}"
        );
        assert!(after.contains("[tunnels.web]"), "{after}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn bad_toml_and_a_token_not_a_string_are_refused() {
        let path = temp_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for bad in ["token = ", "token = 3", "[token"] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(SavedConfig::load(&path), Err(SavedError::Parse { .. })),
                "{bad:?}"
            );
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_replaced_whole_and_a_failure_leaves_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_path().parent().unwrap().parent().unwrap().to_owned();
        let path = dir.join("new").join("keys.json");
        write_private(&path, b"first").unwrap();
        let folder = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // A rename that fails (over a folder) leaves no temporary file.
        let taken = dir.join("new").join("taken");
        std::fs::create_dir_all(taken.join("inside")).unwrap();
        assert!(write_private(&taken, b"x").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.join("new"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
