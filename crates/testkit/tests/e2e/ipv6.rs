//! Per-address limits count an IPv6 address by its /64 (the block one
//! subscriber is usually given), end to end over real IPv6 sockets. Only
//! `::1` exists on the host's loopback, so the test makes a network
//! namespace of its own, gives its loopback addresses in two /64s, and
//! runs itself again inside it (`ip netns exec`, as root; loopback only).

use std::net::{IpAddr, SocketAddr};

use crate::netns::{self, Namespace};
use cryptun_server::Config;
use cryptun_testkit::{TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Three addresses of one /64, one of another.
const SAME: [&str; 3] = ["2001:db8:0:1::a", "2001:db8:0:1::b", "2001:db8:0:1::c"];
const OTHER: &str = "2001:db8:0:2::a";

#[test]
fn ipv6_addresses_count_by_their_slash_64() {
    if netns::inside() {
        return inside();
    }
    let ns = Namespace::new("cryptun-test");
    for addr in SAME.iter().chain([&OTHER]) {
        let cidr = format!("{addr}/64");
        ns.run(&["ip", "-6", "addr", "add", &cidr, "dev", "lo", "nodad"]);
    }
    ns.rerun(module_path!(), "ipv6_addresses_count_by_their_slash_64");
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v6().unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    within("connect", socket.connect(to)).await.unwrap()
}

/// What the server answers to a `/healthz` on `stream`, until it closes.
async fn health(mut stream: TcpStream, port: u16) -> String {
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = within("an answer", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn inside() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = Config {
            max_connections_per_ip: 2,
            ..TestServer::test_config()
        };
        let server = TestServer::start_on("[::1]:0".parse().unwrap(), config).await;
        let (addr, port) = (server.addr, server.addr.port());
        // Two connections from two addresses of one /64: its share.
        let _a = connect_from(SAME[0], addr).await;
        let _b = connect_from(SAME[1], addr).await;
        // A third address of the same /64 is refused, told why.
        let refused = health(connect_from(SAME[2], addr).await, port).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("max_connections_per_ip"), "{refused}");
        // Another /64 is served.
        let served = health(connect_from(OTHER, addr).await, port).await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    });
}
