//! A real ACME server and a real DNS server for the certificate tests, on
//! loopback: Debian's `pebble` (Let's Encrypt's test server) and Knot DNS
//! (`knotd`) serving one zone that takes TSIG-signed RFC 2136 updates.
//! Each is started on free ports in its own temporary folder and killed
//! when dropped. `.ci/run` installs both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Proc;

/// The TSIG key the zone takes updates signed with.
const KEY_NAME: &str = "acme-key";
const KEY_SECRET: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";

/// Knot DNS, authoritative for one zone, taking updates signed with
/// [`TestDns::key`].
pub struct TestDns {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl TestDns {
    /// Serves `zone` (an SOA and an NS, nothing else) until dropped.
    pub fn start(zone: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::unused_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = dir.path().display();
        let zones = format!(
            "zone:\n  - domain: {zone}\n    storage: \"{d}\"\n    file: \"{zone}.zone\"\n    acl: acme-update\n\
             \x20   zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n"
        );
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{d}\"\n\
             key:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {KEY_SECRET}\n\
             acl:\n  - id: acme-update\n    key: {KEY_NAME}\n    action: update\n\
             {zones}\
             log:\n  - target: stderr\n    any: info\n"
        );
        let records = format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n\
             @ NS ns\nns A 127.0.0.1\n"
        );
        std::fs::write(dir.path().join(format!("{zone}.zone")), records).unwrap();
        std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
        let mut cmd = Command::new(knotd());
        cmd.arg("-c").arg(dir.path().join("knot.conf"));
        let proc = Proc::start(cmd);
        proc.log_with("server started");
        TestDns {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }

    /// The TSIG key, as `tsig-keygen` writes it.
    pub fn key(&self) -> String {
        format!(
            "key \"{KEY_NAME}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{KEY_SECRET}\";\n}};\n"
        )
    }
}

/// Where `knotd` is (Debian puts it in /usr/sbin, which a user's PATH may
/// lack).
fn knotd() -> &'static str {
    if Path::new("/usr/sbin/knotd").exists() {
        "/usr/sbin/knotd"
    } else {
        "knotd"
    }
}

/// Pebble, validating DNS-01 against a [`TestDns`].
pub struct TestPebble {
    /// The ACME directory URL (`https://localhost:PORT/dir`).
    pub directory: String,
    /// The root that signs Pebble's own HTTPS certificate (`--acme-ca`).
    pub api_ca: PathBuf,
    /// The root that signs the certificates it issues (fetched from its
    /// management interface): what visitors trust.
    pub issuing_root: PathBuf,
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

/// Pebble's own HTTPS certificate, signed by a CA of its own, made with
/// `openssl` (Pebble's Go TLS stack fails handshakes, "bad record MAC",
/// with rcgen's certificates).
struct ApiCert {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl ApiCert {
    fn make(dir: &Path) -> Self {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (.ci/run installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=pebble api ca"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        run(&ca);
        let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
        csr.extend(ec);
        csr.extend(["-keyout", "api.key", "-out", "api.csr"]);
        run(&csr);
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "api.pem",
        ]);
        ApiCert {
            ca: dir.join("ca.pem"),
            cert: dir.join("api.pem"),
            key: dir.join("api.key"),
        }
    }
}

impl TestPebble {
    /// Issues certificates valid for `validity`, validating DNS-01 against
    /// `dns` at once (no sleeps) and never rejecting a good nonce.
    pub fn start(dns: SocketAddr, validity: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiCert::make(dir.path());
        let (port, management) = (crate::unused_port(), crate::unused_port());
        let conf = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": api.cert,
            "privateKey": api.key,
            "httpPort": crate::unused_port(),
            "tlsPort": crate::unused_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        let path = dir.path().join("pebble.json");
        std::fs::write(&path, conf.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let proc = Proc::start(cmd);
        let issuing_root = dir.path().join("issuing-root.pem");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let fetched = Command::new("curl")
                .args(["-sf", "--cacert"])
                .arg(&api.ca)
                .arg(format!("https://localhost:{management}/roots/0"))
                .arg("-o")
                .arg(&issuing_root)
                .status()
                .expect("curl runs");
            if fetched.success() {
                break;
            }
            if Instant::now() > deadline {
                panic!("pebble did not start: {:#?}", proc.finish());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        TestPebble {
            directory: format!("https://localhost:{port}/dir"),
            api_ca: api.ca.clone(),
            issuing_root,
            proc: Some(proc),
            _dir: dir,
        }
    }

    /// Stops it (a renewal then fails).
    pub fn stop(&mut self) {
        self.proc = None;
    }
}
