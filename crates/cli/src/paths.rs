//! Where the server's files live when no `--data-dir` is given: one rule
//! for the key database (`cryptun server`, `cryptun keys`) and the
//! development certificate authority (`--tls-self-signed`), so that the
//! two always land in the same folder. And where the client keeps what
//! outlives a run (reconnect secrets): its state directory.

use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// The data directory: `given` (`--data-dir` or `CRYPTUN_DATA_DIR`), else
/// [`default_data_dir`] of this process's environment.
pub fn data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let xdg_data_home = std::env::var_os("XDG_DATA_HOME");
    let home = std::env::var_os("HOME");
    default_data_dir(xdg_data_home.as_deref(), home.as_deref()).context(
        "no data directory: pass --data-dir or set CRYPTUN_DATA_DIR \
         (neither XDG_DATA_HOME nor HOME is set to an absolute path)",
    )
}

/// The client's state directory: `$XDG_STATE_HOME/cryptun`, else
/// `$HOME/.local/state/cryptun` (absolute paths only, as for
/// [`default_data_dir`]); `None` without either, and the client then keeps
/// its reconnect secrets in memory only.
pub fn state_dir() -> Option<PathBuf> {
    let xdg_state_home = std::env::var_os("XDG_STATE_HOME");
    let home = std::env::var_os("HOME");
    default_state_dir(xdg_state_home.as_deref(), home.as_deref())
}

/// [`state_dir`] for these variables.
pub fn default_state_dir(xdg_state_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let absolute = |var: Option<&OsStr>| var.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute(xdg_state_home)
        .or_else(|| absolute(home).map(|home| home.join(".local").join("state")))?;
    Some(base.join("cryptun"))
}

/// The default data directory, following the XDG base-directory spec:
/// `$XDG_DATA_HOME/cryptun`, else `$HOME/.local/share/cryptun`.
///
/// A variable that is unset, empty or relative counts as absent (the spec
/// says a relative path there is invalid and must be ignored; a relative
/// `HOME` would put the data wherever the command happens to run). With
/// neither, there is no default (`None`), rather than a folder under the
/// working directory: `cryptun keys` run from another folder would then
/// open another database than the server's, and a service started in `/`
/// would write there. The caller asks for `--data-dir` instead.
pub fn default_data_dir(xdg_data_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let absolute = |var: Option<&OsStr>| var.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute(xdg_data_home)
        .or_else(|| absolute(home).map(|home| home.join(".local").join("share")))?;
    Some(base.join("cryptun"))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::{Path, PathBuf};

    use super::{default_data_dir, default_state_dir};

    #[test]
    fn the_state_directory_follows_xdg_state_home_then_home() {
        let (state, home) = (abs("srv/state"), abs("home/ann"));
        assert_eq!(
            default_state_dir(Some(OsStr::new(&state)), Some(OsStr::new(&home))),
            Some(Path::new(&state).join("cryptun"))
        );
        assert_eq!(
            default_state_dir(Some(OsStr::new("rel")), Some(OsStr::new(&home))),
            Some(
                Path::new(&home)
                    .join(".local")
                    .join("state")
                    .join("cryptun")
            )
        );
        assert_eq!(default_state_dir(None, Some(OsStr::new("rel"))), None);
    }

    /// An absolute path on this system (`/...`, or `C:\...` on Windows).
    fn abs(path: &str) -> String {
        let root = if cfg!(windows) { r"C:\" } else { "/" };
        format!("{root}{path}")
    }

    fn dir(xdg: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
        default_data_dir(xdg.map(OsStr::new), home.map(OsStr::new))
    }

    #[test]
    fn an_absolute_xdg_data_home_wins() {
        let expected = Some(Path::new(&abs("srv/data")).join("cryptun"));
        assert_eq!(
            dir(Some(&abs("srv/data")), Some(&abs("home/ann"))),
            expected
        );
        assert_eq!(dir(Some(&abs("srv/data")), None), expected);
    }

    #[test]
    fn without_a_usable_xdg_data_home_home_decides() {
        let home = abs("home/ann");
        let expected = Some(
            Path::new(&home)
                .join(".local")
                .join("share")
                .join("cryptun"),
        );
        for xdg in [None, Some(""), Some("data"), Some("./data"), Some("~/data")] {
            assert_eq!(dir(xdg, Some(&home)), expected, "XDG_DATA_HOME={xdg:?}");
        }
    }

    #[test]
    fn without_an_absolute_path_there_is_no_default() {
        assert_eq!(dir(None, None), None);
        assert_eq!(dir(Some(""), Some("")), None);
        assert_eq!(dir(Some("data"), Some("home/ann")), None);
    }
}
