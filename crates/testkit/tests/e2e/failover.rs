//! Several servers for one client (the nodes of a cluster): it connects to
//! one of them and, when that one goes, to another at once, keeping its
//! tunnel's name; the reconnect secret it presents to a server is the one
//! that server's domain issued; and one host name with several addresses
//! is a server per address, dialled at its address under its name (Host
//! header, TLS server name). That last test needs a name with two
//! addresses: it makes a network namespace whose hosts file (`ip netns
//! exec` mounts `/etc/netns/NAME/hosts` over `/etc/hosts`) gives
//! `cluster.test` two loopback addresses, and runs itself again inside it
//! (as root, with iproute2; loopback only).

use std::net::SocketAddr;
use std::time::Duration;

use crate::netns::{self, Namespace};
use cryptun_client::{ClientConfig, Event, Target};
use cryptun_server::{AuthMode, Certs, Config, Listeners, TlsListener};
use cryptun_testkit::{HttpsVisitor, Origin, TempDir, TestClient, TestServer, Visitor};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected { .. })
}

/// Waits for the client's reconnect to `addr`.
async fn connected_to(client: &TestClient, addr: SocketAddr) {
    client
        .wait_event(
            &format!("connected to {addr}"),
            |e| matches!(e, Event::Connected { server } if server.addr == Some(addr)),
        )
        .await;
}

#[tokio::test]
async fn a_client_moves_to_the_other_server_at_once_when_its_server_stops() {
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let origin = Origin::start().await;
    let servers = [a.url(), b.url()];
    let client = TestClient::start_reconnecting(&a, &origin.target(), |c| {
        c.set_servers(&servers).unwrap();
    })
    .await
    .unwrap();
    let name = client.tunnel.subdomain.clone();
    let (on, other) = if client.server.addr == Some(a.addr) {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(client.server.addr, Some(on.addr), "{}", client.server);
    let reply = Visitor::new(on.addr).get(&on.host_of(&name), "/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let elsewhere = Visitor::new(other.addr)
        .get(&other.host_of(&name), "/echo")
        .await;
    assert_eq!(elsewhere.status, 404, "served on one server only");

    on.stop().await;
    connected_to(&client, other.addr).await;
    let Event::Reconnected { tunnel } = client
        .wait_event("reconnected", |e| matches!(e, Event::Reconnected { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(tunnel.subdomain, name, "the same name on the other server");
    let host = other.host_of(&name);
    let reply = Visitor::new(other.addr).get(&host, "/echo?moved=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo?moved=1");

    // The other server was tried first, without the backoff's wait (the
    // quick policy's first step is 100 ms; the server going away asked for
    // a second).
    let events = client.events.lock().unwrap().clone();
    let first = events.iter().find_map(|e| match e {
        Event::Disconnected {
            retry_in,
            attempt: 1,
            ..
        } => Some(*retry_in),
        _ => None,
    });
    let first = first.unwrap();
    assert!(first < Duration::from_millis(50), "{first:?}");
    assert_eq!(events.iter().filter(|e| is_connected(e)).count(), 1);
}

/// Test settings for a server of `domain`.
fn of_domain(domain: &str, config: Config) -> Config {
    Config {
        domain: domain.into(),
        ..config
    }
}

#[tokio::test]
async fn each_server_is_given_the_secret_its_own_domain_issued() {
    // B's address, free until B starts.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b_addr = spare.local_addr().unwrap();
    drop(spare);
    // A keeps the names it holds for reconnecting clients across a restart.
    let dir = TempDir::new();
    let one = || {
        of_domain(
            "one.test",
            TestServer::auth_config(&dir.path, AuthMode::Off),
        )
    };
    let a = TestServer::start_with(one()).await;
    let a_addr = a.addr;
    let origin = Origin::start().await;
    let servers = [a.url(), format!("http://{b_addr}")];
    let client = TestClient::start_reconnecting(&a, &origin.target(), |c| {
        c.set_servers(&servers).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(client.server.addr, Some(a_addr), "B is not up yet");
    let name = client.tunnel.subdomain.clone();

    // A stops, holding the name for the secret it issued; the client moves
    // to B, of another domain, which issues a secret of its own.
    let b = TestServer::start_on(b_addr, of_domain("two.test", TestServer::test_config())).await;
    a.stop().await;
    connected_to(&client, b_addr).await;
    let on_b = Visitor::new(b_addr).get(&b.host_of(&name), "/echo").await;
    assert_eq!(on_b.status, 200, "{}", on_b.text());

    // A comes back holding the name; B stops. A takes only its own
    // domain's secret: B's would be refused as `unauthorized`, for good.
    let a = TestServer::start_on(a_addr, one()).await;
    let held = Visitor::new(a_addr).get(&a.host_of(&name), "/echo").await;
    assert_eq!(held.status, 503, "A holds the name: {}", held.text());
    b.stop().await;
    connected_to(&client, a_addr).await;
    let Event::Reconnected { tunnel } = client
        .wait_event("reconnected to one.test", |e| {
            matches!(e, Event::Reconnected { tunnel } if tunnel.public_url.contains(".one.test:"))
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(tunnel.subdomain, name);
    let back = Visitor::new(a_addr).get(&a.host_of(&name), "/echo").await;
    assert_eq!(back.status, 200, "{}", back.text());
}

/// The name, and its two addresses in the namespace's hosts file.
const NAME: &str = "cluster.test";
const NODES: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
/// Clients started: all on one node by chance once in 2^19 runs.
const CLIENTS: usize = 20;

#[test]
fn one_name_with_two_addresses_is_two_servers() {
    const TEST: &str = "one_name_with_two_addresses_is_two_servers";
    if netns::inside() {
        return inside();
    }
    let ns = Namespace::new("cryptun-failover");
    let hosts: String = NODES.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    ns.hosts(&hosts);
    ns.rerun(module_path!(), TEST);
}

/// A server node serving HTTPS only, on `listener`.
struct Node {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    fn start(listener: TcpListener, certs: &Certs) -> Node {
        let addr = listener.local_addr().unwrap();
        let config = of_domain(NAME, TestServer::test_config())
            .validated()
            .unwrap();
        let listeners = Listeners {
            http: None,
            https: Some(TlsListener {
                listener,
                certs: certs.clone(),
            }),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(cryptun_server::serve(listeners, config, stop.clone()));
        Node { addr, stop, task }
    }
}

/// The TLS server name of `client`'s tunnel: its host, without the port.
fn sni(client: &TestClient) -> &str {
    client.host.split(':').next().unwrap()
}

fn inside() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (certs, dev) = Certs::dev(NAME, dir.path()).unwrap();
        // The addresses of one name share its port.
        let first = TcpListener::bind((NODES[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let second = TcpListener::bind((NODES[1], port)).await.unwrap();
        let nodes = [Node::start(first, &certs), Node::start(second, &certs)];
        let origin = Origin::start().await;

        let mut config = ClientConfig::new(
            &format!("https://{NAME}:{port}"),
            Target::parse(&origin.target()).unwrap(),
        )
        .unwrap();
        config.ca = Some(dev.ca.clone());
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(TestClient::start_config(config.clone()).await.unwrap());
        }
        // Each dialled an address of the name, under the name: the TLS
        // handshake checked the certificate for `cluster.test`.
        let on = |node: &Node| {
            let on: Vec<&TestClient> = clients
                .iter()
                .filter(|c| c.server.addr == Some(node.addr))
                .collect();
            on
        };
        let (on_first, on_second) = (on(&nodes[0]), on(&nodes[1]));
        assert_eq!(on_first.len() + on_second.len(), CLIENTS);
        assert!(
            !on_first.is_empty() && !on_second.is_empty(),
            "{} clients on {}, {} on {}: not spread",
            on_first.len(),
            nodes[0].addr,
            on_second.len(),
            nodes[1].addr
        );
        for client in &clients {
            let node = client.server.addr.unwrap();
            let reply = HttpsVisitor::new(node, &dev.ca)
                .get(Some(sni(client)), &client.host, "/echo")
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }

        // The first node goes: its clients move to the second address.
        let [first, second] = nodes;
        first.stop.cancel();
        cryptun_testkit::within("the first node stops", first.task)
            .await
            .unwrap()
            .unwrap();
        for client in &on_first {
            connected_to(client, second.addr).await;
        }
        let visitor = HttpsVisitor::new(second.addr, &dev.ca);
        for client in &clients {
            let reply = visitor.get(Some(sni(client)), &client.host, "/echo").await;
            assert_eq!(reply.status, 200, "{}: {}", client.host, reply.text());
        }
        second.stop.cancel();
    });
}
