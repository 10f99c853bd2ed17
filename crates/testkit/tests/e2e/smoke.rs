//! The shortest proof that a tunnel works end to end.

use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};

#[tokio::test]
async fn get_through_a_tunnel() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let reply = visitor.get(&client.host, "/echo?a=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo?a=1");
    let big = visitor.get(&client.host, "/bytes?n=3000000").await;
    assert_eq!(big.body.len(), 3_000_000);
    assert_eq!(&big.body[..], &cryptun_testkit::pattern(3_000_000)[..]);
}
