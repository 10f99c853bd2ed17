//! Where the server's files live when no `--data-dir` is given: one rule
//! for the key database (`cryptun server`, `cryptun keys`) and the
//! development certificate authority (`--tls-self-signed`), so that the
//! two always land in the same folder. And where the client keeps what
//! outlives a run (reconnect secrets): its state directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cryptun_client::saved::xdg_dir;

/// The data directory: `given` (`--data-dir` or `CRYPTUN_DATA_DIR`), else
/// `$XDG_DATA_HOME/cryptun`, else `$HOME/.local/share/cryptun`.
///
/// Without an absolute path in either, there is no default, rather than a
/// folder under the working directory: `cryptun keys` run from another
/// folder would then open another database than the server's, and a
/// service started in `/` would write there. The caller asks for
/// `--data-dir` instead.
pub fn data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    xdg_dir(DATA.0, DATA.1).context(
        "no data directory: pass --data-dir or set CRYPTUN_DATA_DIR \
         (neither XDG_DATA_HOME nor HOME is set to an absolute path)",
    )
}

/// The client's state directory: `$XDG_STATE_HOME/cryptun`, else
/// `$HOME/.local/state/cryptun` (absolute paths only, as for
/// [`data_dir`]); `None` without either, and the client then keeps its
/// reconnect secrets in memory only.
pub fn state_dir() -> Option<PathBuf> {
    xdg_dir(STATE.0, STATE.1)
}

/// The data directory's variable and fallback under `HOME`.
const DATA: (&str, &str) = ("XDG_DATA_HOME", ".local/share");

/// The state directory's variable and fallback under `HOME`.
const STATE: (&str, &str) = ("XDG_STATE_HOME", ".local/state");

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::{Path, PathBuf};

    use cryptun_client::saved::xdg_dir_of;

    use super::{DATA, STATE};

    fn default_state_dir(xdg: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
        assert_eq!(STATE.0, "XDG_STATE_HOME");
        xdg_dir_of(xdg, home, STATE.1)
    }

    fn default_data_dir(xdg: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
        assert_eq!(DATA.0, "XDG_DATA_HOME");
        xdg_dir_of(xdg, home, DATA.1)
    }

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
