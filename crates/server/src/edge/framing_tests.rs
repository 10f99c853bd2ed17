//! Tests of `framing`, kept apart from the code they test.

use super::*;
use std::sync::Arc;

/// Feeds `bytes` in pieces of `step` and returns the verdicts.
fn scan(bytes: &[u8], step: usize) -> Vec<Verdict> {
    let verdicts = Arc::new(Verdicts::default());
    let mut guarded = Guarded::new((), Arc::clone(&verdicts), 1024);
    for piece in bytes.chunks(step) {
        guarded.feed(piece);
    }
    let pending = verdicts.pending.lock().unwrap();
    pending.iter().copied().collect()
}

fn all_steps(bytes: &[u8]) -> Vec<Verdict> {
    let whole = scan(bytes, bytes.len().max(1));
    for step in [1, 2, 3, 7] {
        assert_eq!(scan(bytes, step), whole, "step {step}");
    }
    whole
}

#[test]
fn keep_alive_heads_are_found_across_bodies() {
    // The body looks like a refusable head; it must be skipped, not read.
    let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    let stream = format!(
        "\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
         GET /b HTTP/1.1\nHost: x\n\nGET /c HTTP/1.1\r\ncontent-length:0\r\n\r\n",
        body.len()
    );
    let stream = stream.as_bytes();
    assert_eq!(all_steps(stream), [Verdict::Ok; 3]);
}

#[test]
fn ambiguous_framings_are_refused() {
    for head in [
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
    ] {
        let verdicts = all_steps(head.as_bytes());
        assert!(
            matches!(verdicts[..], [Verdict::Refuse(_)]),
            "{head:?}: {verdicts:?}"
        );
    }
}

#[test]
fn chunked_and_connect_close_and_stop_the_scan() {
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(all_steps(chunked), [Verdict::OkThenClose]);
    let connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(all_steps(connect), [Verdict::OkThenClose]);
}

#[test]
fn oversized_heads_are_refused_and_deep_pipelines_stop_the_scan() {
    // The limit is 1024 here: a head of 1024 bytes passes, one byte
    // more is too large, and the scan stops there.
    let sized = |len: usize| {
        let empty = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(len - empty))
    };
    assert_eq!(sized(1024).len(), 1024);
    assert_eq!(all_steps(sized(1024).as_bytes()), [Verdict::Ok]);
    let big = sized(1025) + "GET / HTTP/1.1\r\n\r\n";
    assert_eq!(all_steps(big.as_bytes()), [Verdict::TooLarge(1024)]);
    let deep = "GET / HTTP/1.1\r\n\r\n".repeat(MAX_PENDING + 5);
    assert_eq!(scan(deep.as_bytes(), deep.len()).len(), MAX_PENDING);
}

#[test]
fn bare_crs_before_a_head_are_refused_as_httparse_refuses_them() {
    assert_eq!(all_steps(b"\r\n\nGET / HTTP/1.1\r\n\r\n"), [Verdict::Ok]);
    let verdicts = all_steps(b"\r\rGET / HTTP/1.1\r\n\r\n");
    assert!(matches!(verdicts[..], [Verdict::Refuse(_)]), "{verdicts:?}");
}

#[test]
fn transfer_encoding_on_http_10_is_refused() {
    let head = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let verdicts = all_steps(head);
    assert!(matches!(verdicts[..], [Verdict::Refuse(_)]), "{verdicts:?}");
}

/// The differential cases: a head and the body sent after it.
const CASES: &[(&[u8], &[u8])] = &[
    // Obsolete line folding, of an ordinary header and of framing ones.
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", b""),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX: y\r\n\tContent-Length: 3\r\n\r\n", b"abc"),
    // Bare CR: in a value, as a line's end, before the request line,
    // in the empty line.
    (b"POST / HTTP/1.1\r\nHost: x\r\nX: a\rContent-Length: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\r\n\r\n", b"abc"),
    (b"GET / HTTP/1.1\rHost: x\r\n\r\n", b""),
    (b"\r\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    (b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n", b""),
    // Bare LF line ends, alone and mixed.
    (b"POST / HTTP/1.1\nHost: x\nContent-Length: 3\n\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\nContent-Length: 3\r\n\n", b"abc"),
    // Tabs and spaces around the value, and before the colon.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\t3\t\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:   3   \r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\n", b"abc"),
    (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", b""),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    // Content-Length repeated, comma-joined, odd numbers.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 003\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b""),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", b""),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", b""),
    (b"POST / HTTP/1.1\r\nHost: x\r\ncOnTeNt-LeNgTh: 3\r\n\r\n", b"abc"),
    // Content-Length with Transfer-Encoding.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", b"0\r\n\r\n"),
    // Transfer-Encoding in odd case, lists, trailing commas, HTTP/1.0.
    (b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-ENCODING: ChUnKeD\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\t\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked ,\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunk\xc3\xa9d\r\n\r\n", b"0\r\n\r\n"),
    (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n"),
    // Chunk extensions and odd chunk lines (hyper alone parses them).
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3;ext=1\r\nabc\r\n0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3;a=\"q;r\"\r\nabc\r\n0;z\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3;a\nabc\r\n0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3 \r\nabc\r\n0\r\n\r\n"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\nabc\n0\n\n"),
    // Header names with odd bytes.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length\x00: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent\x7fLength: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length\xff: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent_Length: 3\r\n\r\n", b""),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX@Y: 1\r\nContent-Length: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\n: 1\r\nContent-Length: 3\r\n\r\n", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: x\r\n\xc3\xa9: 1\r\nContent-Length: 3\r\n\r\n", b"abc"),
    // Odd bytes in values.
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n", b""),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", b""),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x0cb\r\n\r\n", b""),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n", b""),
    // CONNECT.
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", b""),
];

/// A request pipelined after each case, to see where each parser
/// finds the next head.
const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";

/// What hyper, configured as the edge configures it, does with `bytes`:
/// each request it dispatched, as its path and its body's length (None
/// if reading the body failed).
async fn hyper_reads(bytes: &[u8]) -> Vec<(String, Option<usize>)> {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut visitor, server) = tokio::io::duplex(1 << 20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await;
            let len = body.ok().map(|body| body.to_bytes().len());
            record.lock().unwrap().push((path, len));
            let empty = http_body_util::Empty::<bytes::Bytes>::new();
            Ok::<_, std::convert::Infallible>(hyper::Response::new(empty))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(super::super::MAX_HEAD_BYTES)
        .max_headers(super::super::MAX_REQUEST_HEADERS)
        .half_close(true);
    let io = hyper_util::rt::TokioIo::new(server);
    let serving = tokio::spawn(http.serve_connection(io, service).with_upgrades());
    let limit = std::time::Duration::from_secs(10);
    visitor.write_all(bytes).await.unwrap();
    visitor.shutdown().await.unwrap();
    let mut answers = Vec::new();
    let read = tokio::time::timeout(limit, visitor.read_to_end(&mut answers)).await;
    assert!(
        read.is_ok(),
        "hyper hung on {:?}",
        bytes.escape_ascii().to_string()
    );
    drop(visitor);
    let _ = tokio::time::timeout(limit, serving).await;
    seen.lock().unwrap().clone()
}

/// Our verdicts on `bytes`, at the edge's head limit, and the length of
/// the body skipped after the first head.
fn ours(head: &[u8], body: &[u8]) -> (Vec<Verdict>, u64) {
    let verdicts = Arc::new(Verdicts::default());
    let mut guarded = Guarded::new((), Arc::clone(&verdicts), super::super::MAX_HEAD_BYTES);
    guarded.feed(head);
    let skipped = match guarded.scan {
        Scan::Body(n) => n,
        _ => 0,
    };
    guarded.feed(body);
    guarded.feed(NEXT);
    let pending = verdicts.pending.lock().unwrap();
    (pending.iter().copied().collect(), skipped)
}

#[tokio::test]
async fn every_head_we_accept_hyper_reads_the_same_way() {
    let mut stricter = Vec::new();
    for (head, body) in CASES {
        let case = head.escape_ascii().to_string();
        let (verdicts, skipped) = ours(head, body);
        let stream = [head, body, NEXT].concat();
        let read = hyper_reads(&stream).await;
        let first = read.first().filter(|(path, _)| path != "/next");
        match (verdicts.first(), first) {
            (Some(Verdict::Ok), Some((_, len))) => {
                // The same body, and the same next head.
                assert_eq!(*len, usize::try_from(skipped).ok(), "{case}");
                assert_eq!(verdicts.get(1), Some(&Verdict::Ok), "{case}");
                assert_eq!(read.get(1).map(|r| r.0.as_str()), Some("/next"), "{case}");
            }
            (Some(Verdict::OkThenClose), Some(_)) => {}
            (Some(Verdict::Ok | Verdict::OkThenClose), None) => {
                panic!("{case}: we accept, hyper refuses");
            }
            (_, Some(_)) => stricter.push(case),
            (_, None) => {}
        }
    }
    // Where we refuse what hyper would take (the ambiguities this
    // module exists for): listed when the test is run with
    // `--nocapture`.
    for case in stricter {
        println!("refused by us, accepted by hyper: {case}");
    }
}

/// Heads built from hostile pieces at random (a fixed seed, so a
/// failure repeats; `FRAMING_CASES` sets how many): whenever we accept
/// one, hyper reads it with the same body and next head, and whenever
/// hyper refuses one, we do not accept it.
#[tokio::test]
async fn generated_heads_we_accept_hyper_reads_the_same_way() {
    const LINES: &[&str] = &[
        "POST / HTTP/1.1",
        "POST / HTTP/1.0",
        "GET / HTTP/1.1",
        "PUT /x?y HTTP/1.1",
    ];
    const FIELDS: &[&str] = &[
        "Host: x",
        "Content-Length: 3",
        "Content-Length: 4",
        "Content-Length: 0",
        "Content-Length: 3, 3",
        "Content-Length: 03",
        "Content-Length: +3",
        "content-LENGTH: 3",
        "Content-Length : 3",
        "Content-Length\t: 3",
        " Content-Length: 3",
        "\tTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked",
        "transfer-encoding: CHUNKED",
        "Transfer-Encoding: chunked,",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: identity",
        "X: a\rb",
        "X: \"q\"",
        "X:",
        "Expect: 100-continue",
    ];
    const ENDS: &[&str] = &["\r\n", "\r\n", "\r\n", "\n"];
    const BODIES: &[&[u8]] = &[b"", b"abc", b"abcd", b"0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"];
    let cases: usize = std::env::var("FRAMING_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    // xorshift64: no dependency, and the same cases every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n as u64).unwrap_or(0)
    };
    for _ in 0..cases {
        let mut head = String::from(LINES[next(LINES.len())]);
        let end = ENDS[next(ENDS.len())];
        head.push_str(end);
        for _ in 0..1 + next(4) {
            head.push_str(FIELDS[next(FIELDS.len())]);
            head.push_str(ENDS[next(ENDS.len())]);
        }
        head.push_str(end);
        let body = BODIES[next(BODIES.len())];
        let case = format!("{:?} + {:?}", head, body.escape_ascii().to_string());
        let (verdicts, skipped) = ours(head.as_bytes(), body);
        let read = hyper_reads(&[head.as_bytes(), body, NEXT].concat()).await;
        let first = read.first().filter(|(path, _)| path != "/next");
        match (verdicts.first(), first) {
            (Some(Verdict::Ok), Some((_, len))) => {
                // The same body, and the same view of what follows it:
                // the next head is a request for both or for neither
                // (HTTP/1.0 ends its connection after one request).
                assert_eq!(*len, usize::try_from(skipped).ok(), "{case}");
                let hyper_next = read.get(1).map(|r| r.0.as_str()) == Some("/next");
                let our_next = verdicts.get(1) == Some(&Verdict::Ok);
                if head.contains("HTTP/1.1") {
                    assert_eq!(our_next, hyper_next, "{case}");
                }
            }
            (Some(Verdict::Ok | Verdict::OkThenClose), None) => {
                panic!("{case}: we accept, hyper refuses");
            }
            _ => {}
        }
    }
}

/// More header lines than hyper takes: refused by both.
#[tokio::test]
async fn too_many_header_lines_are_refused_by_both() {
    let lines = "A: 1\r\n".repeat(super::super::MAX_REQUEST_HEADERS);
    let head = format!("GET / HTTP/1.1\r\n{lines}\r\n");
    let (verdicts, _) = ours(head.as_bytes(), b"");
    assert_eq!(verdicts.first(), Some(&Verdict::Ok));
    let read = hyper_reads(&[head.as_bytes(), NEXT].concat()).await;
    assert_eq!(read.len(), 2);
    let head = format!("GET / HTTP/1.1\r\nB: 2\r\n{lines}\r\n");
    let (verdicts, _) = ours(head.as_bytes(), b"");
    assert!(
        matches!(verdicts.first(), Some(Verdict::Refuse(_))),
        "{verdicts:?}"
    );
    let read = hyper_reads(&[head.as_bytes(), NEXT].concat()).await;
    assert!(read.is_empty(), "{read:?}");
}
