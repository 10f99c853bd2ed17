//! Tests of [`super`]: the pool against real local services on loopback.

use super::*;
use http::HeaderValue;
use http_body_util::{BodyExt, Either, Empty, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// A local service that answers `hello` and counts its connections.
async fn service() -> (Target, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(tcp),
                hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let close = req.uri().path() == "/close";
                    let body = if req.uri().path() == "/chunked" {
                        Either::Left(Chunks(vec![
                            Bytes::from_static(b"lo"),
                            Bytes::from_static(b"hel"),
                        ]))
                    } else {
                        Either::Right(Full::new(Bytes::from_static(b"hello")))
                    };
                    let mut resp = Response::new(body);
                    if close {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }),
            ));
        }
    });
    (Target::parse(&addr.to_string()).unwrap(), accepted)
}

/// A body of unknown length (sent chunked), its pieces in reverse.
struct Chunks(Vec<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop().map(|piece| Ok(Frame::data(piece))))
    }
}

fn get(path: &str, target: &Target) -> Request<LocalBody> {
    let mut request = Request::get(path)
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap();
    address(&mut request, target);
    request
}

async fn fetch(pool: &LocalPool, target: &Target, path: &str) -> Bytes {
    let response = pool.send(target, get(path, target)).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// A local service on a raw socket: the test accepts and answers each
/// connection itself, so it decides when one closes and sees its EOF.
async fn raw_service() -> (Target, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = Target::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    (target, listener)
}

/// Reads one request head (the requests here have no body) and answers
/// `hello`, keeping the connection open.
async fn answer(tcp: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "EOF in a request head"
        );
        head.push(byte[0]);
    }
    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
}

/// Accepts one connection and answers one request on it.
async fn accept_and_answer(listener: &TcpListener) -> TcpStream {
    let (mut tcp, _) = listener.accept().await.unwrap();
    answer(&mut tcp).await;
    tcp
}

/// Pools a connection, takes it out past the check before use, has
/// the service `close` it, and sends a request on it: the request must
/// come back unsent and go out on a new connection. In the client this
/// happens when another worker's reactor registers the close between
/// the check and the write; here a yield lets the reactor register it.
async fn retried_after(close: impl FnOnce(TcpStream)) {
    let (target, listener) = raw_service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    let (body, first) = tokio::join!(fetch(&pool, &target, "/"), accept_and_answer(&listener));
    assert_eq!(body, "hello");
    let stale = pool
        .checkout(&PoolKey::of(&target))
        .expect("a pooled connection");
    close(first);
    tokio::task::yield_now().await;
    let sent = async {
        let response = pool.send_on(Some(stale), &target, get("/", &target)).await;
        response
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
    };
    let retried = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(sent, accept_and_answer(&listener))
    })
    .await;
    let (body, _second) = retried.expect("the request was neither retried nor failed");
    assert_eq!(body, "hello");
}

#[tokio::test]
async fn a_request_a_closed_pooled_connection_never_sent_goes_out_on_a_new_one() {
    retried_after(drop).await;
}

#[tokio::test]
async fn a_request_a_reset_pooled_connection_never_sent_goes_out_on_a_new_one() {
    retried_after(|tcp| {
        // No lingering: the close sends a RST instead of a FIN.
        tcp.set_zero_linger().unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_connection_idle_for_pool_idle_is_closed_by_the_sweeper() {
    use tokio::io::AsyncReadExt;
    let (target, listener) = raw_service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    let (body, mut origin) = tokio::join!(fetch(&pool, &target, "/"), accept_and_answer(&listener));
    assert_eq!(body, "hello");
    let since = lock(&pool.idle)[&PoolKey::of(&target)][0].1;
    // From here on the clock moves only while every task waits, and
    // then straight to the next timer: the sweeps, 15 s apart.
    tokio::time::pause();
    let mut byte = [0; 1];
    let read = origin.read(&mut byte);
    let eof = tokio::time::timeout(POOL_IDLE + 2 * SWEEP_EVERY, read).await;
    assert_eq!(eof.expect("the idle connection stayed open").unwrap(), 0);
    let idled = since.elapsed();
    assert!(idled >= POOL_IDLE, "closed after {idled:?} idle");
    assert!(
        idled <= POOL_IDLE + SWEEP_EVERY,
        "closed after {idled:?} idle"
    );
    assert!(lock(&pool.idle).is_empty());
}

#[tokio::test]
async fn a_connection_read_to_the_end_serves_the_next_request() {
    let (target, accepted) = service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    for _ in 0..10 {
        assert_eq!(fetch(&pool, &target, "/").await, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_chunked_response_read_to_its_end_returns_its_connection() {
    let (target, accepted) = service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    for _ in 0..5 {
        assert_eq!(fetch(&pool, &target, "/chunked").await, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_service_closed_is_not_used_again() {
    let (target, accepted) = service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    assert_eq!(fetch(&pool, &target, "/close").await, "hello");
    // Give the close time to arrive: the pool must notice it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fetch(&pool, &target, "/").await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_midway_closes_its_connection() {
    let (target, accepted) = service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    let response = pool.send(&target, get("/", &target)).await.unwrap();
    drop(response);
    assert_eq!(fetch(&pool, &target, "/").await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = Target::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    drop(listener);
    let pool = LocalPool::new(Duration::from_secs(5));
    let Err(err) = pool.send(&target, get("/", &target)).await else {
        panic!("a response from a closed port");
    };
    assert!(matches!(err, LocalError::Connect(_)), "{err}");
}

#[tokio::test]
async fn a_service_that_never_accepts_times_out() {
    // A listener with a backlog of one that never accepts: once its
    // queue is full, the kernel drops further connection attempts.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(TcpStream::connect(addr).await.unwrap());
    }
    let target = Target::parse(&addr.to_string()).unwrap();
    let limit = Duration::from_millis(300);
    let pool = LocalPool::new(limit);
    let Err(err) = pool.send(&target, get("/", &target)).await else {
        panic!("a response from a service that never accepts");
    };
    assert!(
        matches!(err, LocalError::ConnectTimeout(d) if d == limit),
        "{err}"
    );
}

#[tokio::test]
async fn at_most_max_idle_connections_are_kept() {
    let (target, accepted) = service().await;
    let pool = LocalPool::new(Duration::from_secs(5));
    // More responses held at once than the pool keeps: each took a
    // connection of its own.
    let mut held = Vec::new();
    for _ in 0..MAX_IDLE + 2 {
        held.push(pool.send(&target, get("/", &target)).await.unwrap());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), MAX_IDLE + 2);
    for response in held {
        response.into_body().collect().await.unwrap();
    }
    let idle = lock(&pool.idle).values().map(Vec::len).sum::<usize>();
    assert_eq!(idle, MAX_IDLE);
}

#[test]
fn only_origin_form_paths_reach_the_local_service() {
    for good in ["/", "/a?b=c", "*"] {
        assert_eq!(origin_form(good).unwrap().to_string(), good);
    }
    for bad in ["http://other:22/", "host:80", "", "a/b"] {
        assert_eq!(
            origin_form(bad),
            Err(HeadError::Path(bad.to_owned())),
            "{bad}"
        );
    }
}
