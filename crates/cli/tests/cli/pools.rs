//! `cryptun http --pool` as a person runs it: two clients with one pool
//! secret serve one name (both told so in their `tunnel_created` lines),
//! and a pool without a name is refused before anything is sent.

use crate::common::{cryptun, listening_addr};

#[test]
fn two_clients_with_one_pool_secret_serve_one_name() {
    let server = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let url = format!("http://{}", listening_addr(&server));
    let member = || {
        let args = ["http", "--hello", "--json", "--server", &url];
        let pool = [
            "--subdomain",
            "team",
            "--pool",
            "--pool-secret",
            "team-secret-0123456789",
        ];
        cryptun(&[&args[..], &pool[..]].concat())
    };
    let (first, second) = (member(), member());
    for client in [&first, &second] {
        let created: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
        assert_eq!(created["type"], "tunnel_created", "{created}");
        assert_eq!(created["pool"], true, "{created}");
        assert_eq!(created["subdomain"], "team");
    }
}

#[test]
fn a_pool_needs_a_name() {
    let mut client = cryptun(&["http", "--hello", "--pool"]);
    let status = client.wait_exit(std::time::Duration::from_secs(20));
    assert!(!status.success());
    let error = client.log_with("--subdomain");
    assert!(error.contains("--subdomain"), "{error}");
}
