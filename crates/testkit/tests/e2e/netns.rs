//! A network namespace of a test's own, for what loopback on the host
//! cannot show (IPv6 addresses of several /64s, one name resolving to two
//! addresses): the test makes it, then runs itself again, alone, inside it
//! (`ip netns exec`, as root; iproute2), and the namespace is deleted when
//! dropped.

use std::path::PathBuf;
use std::process::Command;

/// Set in the copy of a test that runs inside the namespace.
const INSIDE: &str = "CRYPTUN_TEST_INSIDE_NETNS";

/// Whether this process is the copy of a test running inside its
/// namespace.
pub(crate) fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// A network namespace, deleted (with its `/etc/netns` folder) when
/// dropped.
pub(crate) struct Namespace(String);

impl Namespace {
    /// A new namespace named `name` and this process's id, loopback up.
    pub(crate) fn new(name: &str) -> Self {
        let name = format!("{name}-{}", std::process::id());
        let made = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "`ip netns add` failed: this test needs root and iproute2"
        );
        let ns = Namespace(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `command` inside; it must succeed.
    pub(crate) fn run(&self, command: &[&str]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(command)
            .status()
            .unwrap();
        assert!(status.success(), "{command:?}");
    }

    /// Gives the namespace its own hosts file: `localhost` and `lines`.
    pub(crate) fn hosts(&self, lines: &str) {
        let dir = self.etc();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).unwrap();
    }

    /// Runs the test `test` of the module whose `module_path!()` is
    /// `module` again, alone, inside; it must pass.
    pub(crate) fn rerun(&self, module: &str, test: &str) {
        let module = module.split_once("::").map_or(module, |(_, m)| m);
        let status = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::{test}"), "--nocapture"])
            .env(INSIDE, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the test inside the namespace failed");
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.0)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}
