//! Many at once and big: a thousand visitors over a hundred tunnels, each
//! getting its own answer; and (opt-in) a gibibyte each way with resident
//! memory measured.
//!
//! The gibibyte test is ignored by default (it moves 2 GiB); run it with
//! `cargo test --release -p cryptun-testkit --test e2e load:: -- --ignored`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use cryptun_server::Config;
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_visitors_over_a_hundred_tunnels_each_get_their_answer() {
    // A thousand visitors and a hundred clients, all from 127.0.0.1 here:
    // the per-address limits are raised so that the address stands for
    // all of them.
    let server = TestServer::start_with(Config {
        max_connections_per_ip: 2_000,
        max_requests_per_ip: 2_000,
        max_sessions_per_ip: 200,
        ..TestServer::test_config()
    })
    .await;
    let origin = Origin::start().await;
    let target = origin.target();
    let clients = join_all((0..100).map(|_| TestClient::start(&server, &target))).await;
    assert_eq!(Visitor::new(server.addr).tunnels().await.len(), 100);
    let requests = (0..1000).map(|i| {
        let host = clients[i % 100].host.clone();
        let addr = server.addr;
        async move {
            // A visitor of its own per request: a thousand connections.
            let token = format!("visitor-{i}-via-{host}");
            let reply = Visitor::new(addr)
                .get(&host, &format!("/token?t={token}"))
                .await;
            (token, reply)
        }
    });
    let replies = tokio::time::timeout(Duration::from_secs(60), join_all(requests))
        .await
        .expect("all answered in time");
    for (token, reply) in replies {
        assert_eq!(reply.status, 200, "{token}: {}", reply.text());
        assert_eq!(reply.text(), token);
    }
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 << 10;

/// A body of `n` zero bytes produced chunk by chunk, never held whole.
fn zeros(n: u64) -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    let chunk = Bytes::from(vec![0u8; CHUNK]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < n).then(|| {
                let len = (n - sent).min(CHUNK as u64) as usize;
                (Ok(Frame::data(chunk.slice(..len))), sent + len as u64)
            })
        }
    });
    StreamBody::new(stream).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves 2 GiB; run with --release -- --ignored"]
async fn a_gibibyte_each_way_in_a_few_mebibytes() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let http = Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, Infallible>>();
    let uri = format!("http://{}/sha256", server.addr);

    // Warm up the paths once, then measure.
    let warm = http::Request::post(&uri)
        .header("host", &client.host)
        .body(zeros(8 << 20))
        .unwrap();
    http.request(warm)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let before = rss_bytes();

    let upload = http::Request::post(&uri)
        .header("host", &client.host)
        .body(zeros(GIB))
        .unwrap();
    let reply = http
        .request(upload)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["len"], GIB);
    let after_upload = rss_bytes();

    let download = http::Request::get(format!("http://{}/zeros?n={GIB}", server.addr))
        .header("host", &client.host)
        .body(Empty::new().boxed())
        .unwrap();
    let mut body = http.request(download).await.unwrap().into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame
            .unwrap()
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or(0);
    }
    assert_eq!(received, GIB);
    let after_download = rss_bytes();

    let grew = after_upload.max(after_download).saturating_sub(before);
    println!(
        "rss before {} MiB, after upload {} MiB, after download {} MiB",
        before >> 20,
        after_upload >> 20,
        after_download >> 20
    );
    assert!(
        grew < 32 << 20,
        "resident memory grew by {} MiB",
        grew >> 20
    );
}
