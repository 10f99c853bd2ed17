//! `cryptun keys export` and `import`, with real processes and a real
//! `redis-server`: a single server's keys, revocation, reservations and
//! held names moved into a cluster's store, checked by a cluster node's
//! answers to real clients, then moved back into a fresh data directory
//! and checked by a single server's; conflicts and unknown documents
//! refused by name, with nothing written.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Output, Stdio};

use cryptun_testkit::{TempDir, TestRedis};
use serde_json::Value;

use super::{cryptun, listening_addr, run, stdout};
use crate::common::Proc;

const DOMAIN: &str = "tunnels.example.test";
const SECRET: &str = "keys-transfer-test-secret-0123456789";

/// `cryptun keys STORE ARGS`, STORE being `--data-dir DIR` or `--cluster URL`.
fn keys(store: &[&str], args: &[&str]) -> Output {
    let mut all = vec!["keys"];
    all.extend_from_slice(store);
    all.extend_from_slice(args);
    run(cryptun(&all, &[]), "")
}

fn in_dir(dir: &Path) -> [&str; 2] {
    ["--data-dir", dir.to_str().unwrap()]
}

/// Creates a key: its id and token.
fn create(store: &[&str], name: &str) -> (String, String) {
    let out = stdout(&keys(store, &["create", "--name", name, "--json"]));
    let key: Value = serde_json::from_str(out.trim()).unwrap();
    let field = |f: &str| key[f].as_str().unwrap().to_owned();
    (field("id"), field("token"))
}

/// What a command that had to fail said.
fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server requiring keys on a real domain (`extra`: its store); its
/// process and `--server` URL.
fn server(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--domain", DOMAIN];
    args.extend_from_slice(&["--auth", "required", "--reconnect-grace", "10m"]);
    args.extend_from_slice(extra);
    let proc = Proc::start(cryptun(&args, &[]));
    let addr = listening_addr(&proc.log_until("listening"));
    (proc, format!("http://{addr}"))
}

/// A `cryptun http` client with a tunnel, killed when dropped.
struct Client {
    child: Child,
    /// Kept open: the client writes a line per request.
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cryptun http --hello --json` asking for `name` with `token`, its
/// stdin closed.
fn http(server: &str, token: &str, name: &str) -> std::process::Command {
    let args = ["http", "--hello", "--json", "--server", server];
    let mut cmd = cryptun(&args, &[]);
    cmd.args(["--subdomain", name])
        .env("CRYPTUN_TOKEN", token)
        .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests")
        .env("CRYPTUN_INSPECT", "off")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// `cryptun http` asking for `name` with `token`: the client once its
/// tunnel is created, or what it said when refused (a refusal is final:
/// the client exits).
fn open(server: &str, token: &str, name: &str) -> Result<Client, String> {
    let mut cmd = http(server, token, name);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    if first.contains("tunnel_created") {
        return Ok(Client {
            child,
            _stdout: out,
        });
    }
    let done = child.wait_with_output().unwrap();
    Err(String::from_utf8_lossy(&done.stderr).into_owned())
}

fn refused(server: &str, token: &str, name: &str, why: &str) {
    match open(server, token, name) {
        Ok(_) => panic!("{name} was given to a client that should be refused ({why})"),
        Err(said) => assert!(said.contains(why), "{name}: {said}"),
    }
}

/// `cryptun http` asking with `token` for `name`, held for another owner:
/// the client says so on one line and waits for the hold to end (it is
/// stopped here, the name still held).
fn held_for_another(server: &str, token: &str, name: &str) {
    let mut cmd = http(server, token, name);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut seen = Vec::new();
    let told = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match said.recv_timeout(left) {
            Ok(line) if line.contains("held for its previous client") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(told, "{name}: not told it is held: {seen:?}");
}

/// The keys a store lists, as `keys list` prints them.
fn listed(store: &[&str]) -> String {
    stdout(&keys(store, &["list"]))
}

/// Reads an exported file.
fn document(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn keys_move_from_a_server_into_a_cluster_and_back() {
    let (a, files) = (TempDir::new(), TempDir::new());
    std::fs::create_dir_all(&files.path).unwrap();
    let a_store = in_dir(&a.path);
    let (ci, ci_token) = create(&a_store, "ci");
    let (_, laptop_token) = create(&a_store, "laptop");
    let (leaked, leaked_token) = create(&a_store, "leaked");
    stdout(&keys(&a_store, &["reserve", &ci, "myapp"]));
    stdout(&keys(&a_store, &["reserve", &leaked, "oldname"]));
    stdout(&keys(&a_store, &["reserve", &ci, "--port", "20022"]));
    stdout(&keys(&a_store, &["revoke", &leaked]));

    // The single server holds "notes" for the laptop's key across its
    // stop: that is a held name to move.
    let a_dir = a.path.to_str().unwrap();
    let (mut single, url) = server(&["--data-dir", a_dir]);
    let notes = open(&url, &laptop_token, "notes").unwrap();
    single.signal("TERM");
    assert!(
        single
            .wait_exit(std::time::Duration::from_secs(20))
            .success()
    );
    drop(notes);

    // Export: one private file, hashes and no token.
    let exported = files.path.join("from-a.json");
    let said = keys(
        &a_store,
        &["export", "--output", exported.to_str().unwrap()],
    );
    let note = String::from_utf8_lossy(&said.stderr);
    assert!(
        said.status.success()
            && note.contains("3 keys, 2 reservations, 1 reserved port and 1 held name"),
        "{note}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&exported).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let text = std::fs::read_to_string(&exported).unwrap();
    for token in [&ci_token, &laptop_token, &leaked_token] {
        let secret = token.rsplit('_').next().unwrap();
        assert!(!text.contains(secret), "a token in the export");
    }
    let doc = document(&exported);
    assert_eq!(
        (doc["format"].as_str(), doc["version"].as_u64()),
        (Some("cryptun-keys"), Some(1))
    );
    assert_eq!(doc["holds"][0]["name"], "notes", "{doc:#}");
    assert_eq!(doc["port_reservations"][0]["port"], 20022, "{doc:#}");
    assert_eq!(
        doc["port_reservations"][0]["key_id"],
        ci.as_str(),
        "{doc:#}"
    );

    // Into the cluster's Redis; twice is once.
    let redis = TestRedis::start();
    let redis_url = redis.url();
    let cluster = ["--cluster", redis_url.as_str()];
    let input = ["import", "--input", exported.to_str().unwrap()];
    let first = stdout(&keys(&cluster, &input));
    assert!(
        first.starts_with("Imported into the cluster's store"),
        "{first}"
    );
    assert!(
        first.contains("3 added") && first.contains("2 added"),
        "{first}"
    );
    let again = stdout(&keys(&cluster, &input));
    assert!(again.starts_with("Nothing changed"), "{again}");
    assert!(again.contains("3 already there"), "{again}");
    assert_eq!(listed(&cluster), listed(&a_store));

    // A cluster node takes the keys as they were.
    let node_data = TempDir::new();
    let cluster_args = [
        "--data-dir",
        node_data.path.to_str().unwrap(),
        "--cluster",
        redis_url.as_str(),
        "--node-name",
        "a",
        "--cluster-listen",
        "127.0.0.1:0",
        "--cluster-secret",
        SECRET,
    ];
    let (node, url) = server(&cluster_args);
    let _myapp = open(&url, &ci_token, "myapp").expect("the key and its reserved name");
    refused(&url, &laptop_token, "myapp", "reserved for another API key");
    refused(&url, &leaked_token, "other", "unknown or revoked");
    held_for_another(&url, &ci_token, "notes");
    refused(&url, &ci_token, "oldname", "reserved for another API key");
    let _notes = open(&url, &laptop_token, "notes").expect("the held name, to its owner");

    // Back out of the cluster into a fresh data directory.
    let back = files.path.join("from-cluster.json");
    stdout(&keys(
        &cluster,
        &["export", "--output", back.to_str().unwrap()],
    ));
    let b = TempDir::new();
    let b_store = in_dir(&b.path);
    let imported = stdout(&keys(
        &b_store,
        &["import", "--input", back.to_str().unwrap()],
    ));
    assert!(
        imported.starts_with("Imported into the data directory"),
        "{imported}"
    );
    assert_eq!(listed(&b_store), listed(&a_store));
    drop(node);

    // A single server on it: the same answers, the held names held.
    let b_dir = b.path.to_str().unwrap();
    let (single, url) = server(&["--data-dir", b_dir]);
    single.log_with("held again");
    let _myapp = open(&url, &ci_token, "myapp").expect("the key and its reserved name");
    refused(&url, &laptop_token, "myapp", "reserved for another API key");
    refused(&url, &leaked_token, "other", "unknown or revoked");
    held_for_another(&url, &ci_token, "notes");
}

#[test]
fn import_refuses_conflicts_by_name_unless_replace() {
    let (a, files) = (TempDir::new(), TempDir::new());
    std::fs::create_dir_all(&files.path).unwrap();
    let a_store = in_dir(&a.path);
    let (first, _) = create(&a_store, "first");
    stdout(&keys(&a_store, &["reserve", &first, "app"]));
    let exported = files.path.join("a.json");
    stdout(&keys(
        &a_store,
        &["export", "-o", exported.to_str().unwrap()],
    ));

    let redis = TestRedis::start();
    let redis_url = redis.url();
    let cluster = ["--cluster", redis_url.as_str()];
    stdout(&keys(
        &cluster,
        &["import", "-i", exported.to_str().unwrap()],
    ));
    // Meanwhile in the cluster, "app" went to another key.
    let (second, _) = create(&cluster, "second");
    stdout(&keys(&cluster, &["unreserve", "app"]));
    stdout(&keys(&cluster, &["reserve", &second, "app"]));
    let before = listed(&cluster);

    let input = ["import", "-i", exported.to_str().unwrap()];
    let err = failure(&keys(&cluster, &input));
    let conflict =
        format!("app is reserved for key {second} here, for key {first} in the document");
    assert!(
        err.contains(&conflict) && err.contains("--replace"),
        "{err}"
    );
    // The same key id with another hash.
    let mut doc = document(&exported);
    doc["keys"][0]["token_sha256"] = Value::from("ab".repeat(32));
    doc["reservations"] = Value::Array(Vec::new());
    let tampered = files.path.join("tampered.json");
    std::fs::write(&tampered, doc.to_string()).unwrap();
    let err = failure(&keys(
        &cluster,
        &["import", "-i", tampered.to_str().unwrap()],
    ));
    assert!(
        err.contains(&format!("key {first} has another token hash")),
        "{err}"
    );
    assert_eq!(listed(&cluster), before, "nothing written");

    // Other documents, by what they are.
    for (field, value, said) in [
        ("version", Value::from(2), "version 2"),
        ("format", Value::from("other-tool"), "\"other-tool\""),
    ] {
        let mut doc = document(&exported);
        doc[field] = value;
        let path = files.path.join(format!("{field}.json"));
        std::fs::write(&path, doc.to_string()).unwrap();
        let err = failure(&keys(&cluster, &["import", "-i", path.to_str().unwrap()]));
        assert!(err.contains(said), "{err}");
    }

    // --replace takes the document's.
    let replaced = stdout(&keys(
        &cluster,
        &["import", "--replace", "-i", exported.to_str().unwrap()],
    ));
    assert!(replaced.contains("1 replaced"), "{replaced}");
    let list: Value =
        serde_json::from_str(stdout(&keys(&cluster, &["list", "--json"])).trim()).unwrap();
    let owner = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == first.as_str())
        .unwrap();
    assert_eq!(owner["reserved"][0], "app", "{list}");
}

#[test]
fn held_names_on_every_shard_of_a_redis_cluster_are_exported() {
    let files = TempDir::new();
    std::fs::create_dir_all(&files.path).unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 600_000;
    let holds: Vec<Value> = (0..12)
        .map(|i| {
            let owner = if i % 2 == 0 {
                ("key_id", "aaaaaaaa".to_owned())
            } else {
                ("secret_sha256", format!("{i:02x}").repeat(32))
            };
            serde_json::json!({"name": format!("name{i}"), owner.0: owner.1, "until_ms": until})
        })
        .collect();
    let written = serde_json::json!({
        "format": "cryptun-keys",
        "version": 1,
        "keys": [{"id": "aaaaaaaa", "name": "ci", "token_sha256": "ab".repeat(32),
                  "created_at": 1_700_000_000, "revoked_at": null}],
        "reservations": [{"name": "myapp", "key_id": "aaaaaaaa", "created_at": null}],
        "holds": holds,
    });
    let path = files.path.join("in.json");
    std::fs::write(&path, written.to_string()).unwrap();

    let redis = cryptun_testkit::redis::TestRedisCluster::start();
    let redis_url = redis.url();
    let cluster = ["--cluster", redis_url.as_str()];
    let input = ["import", "-i", path.to_str().unwrap()];
    let imported = stdout(&keys(&cluster, &input));
    assert!(imported.contains("12 added"), "{imported}");
    let out = files.path.join("out.json");
    stdout(&keys(&cluster, &["export", "-o", out.to_str().unwrap()]));
    let exported = document(&out);
    let names = |doc: &Value| -> Vec<String> {
        let mut names: Vec<String> = doc["holds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| format!("{} {} {}", h["name"], h["key_id"], h["secret_sha256"]))
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&exported), names(&written));
    assert_eq!(exported["keys"], written["keys"]);
    assert_eq!(exported["reservations"], written["reservations"]);
    let again = stdout(&keys(&cluster, &input));
    assert!(again.starts_with("Nothing changed"), "{again}");
}
