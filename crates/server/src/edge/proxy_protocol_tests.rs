//! Tests of `proxy_protocol`, kept apart from the code they test.

use super::*;

fn v2(command: u8, family: u8, address: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x20 | command, family]);
    let len = u16::try_from(address.len() + tlvs.len()).unwrap();
    h.extend(len.to_be_bytes());
    h.extend(address);
    h.extend(tlvs);
    h
}

fn carried(bytes: &[u8]) -> (usize, Carried) {
    match parse(bytes) {
        Parsed::Header(len, carried) => (len, carried),
        other => panic!("{other:?}"),
    }
}

#[test]
fn first_bytes_tell_a_header_from_a_request_or_a_client_hello() {
    assert_eq!(sniff(b"PROXY TCP4"), Sniffed::V1);
    assert_eq!(sniff(V2_SIGNATURE), Sniffed::V2);
    for undecided in [&b""[..], b"P", b"PROX", b"\r\n", b"\r\n\r\n\0\r\nQUI"] {
        assert_eq!(sniff(undecided), Sniffed::Undecided, "{undecided:?}");
    }
    for other in [
        &b"POST / HTTP/1.1"[..],
        b"PROXYZ",
        b"\x16\x03\x01",
        b"\r\n\r\nG",
    ] {
        assert_eq!(sniff(other), Sniffed::Other, "{other:?}");
    }
}

#[test]
fn v1_headers_give_the_source_and_their_length() {
    let header = b"PROXY TCP4 203.0.113.9 192.0.2.1 41000 443\r\n";
    let mut bytes = header.to_vec();
    bytes.extend(b"GET / HTTP/1.1\r\n");
    let visitor: SocketAddr = "203.0.113.9:41000".parse().unwrap();
    assert_eq!(carried(&bytes), (header.len(), Carried::Visitor(visitor)));
    let six = b"PROXY TCP6 2001:db8::9 2001:db8::1 5 443\r\n";
    let visitor: SocketAddr = "[2001:db8::9]:5".parse().unwrap();
    assert_eq!(carried(six), (six.len(), Carried::Visitor(visitor)));
    assert_eq!(carried(b"PROXY UNKNOWN\r\n"), (15, Carried::Proxy));
    // Whatever follows UNKNOWN on its line is ignored, however many words
    // (`ppp` alone refused more than four; found by the property tests).
    let unknown = b"PROXY UNKNOWN ! ! ! a !\r\n";
    assert_eq!(carried(unknown), (unknown.len(), Carried::Proxy));
    let unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2 \xff\r\n";
    assert_eq!(carried(unknown), (unknown.len(), Carried::Proxy));
    assert!(matches!(parse(b"PROXY UNKNOWNX\r\n"), Parsed::Invalid(_)));
    // Every prefix of a header is incomplete, never wrong.
    for cut in 0..header.len() {
        assert!(matches!(parse(&header[..cut]), Parsed::Incomplete), "{cut}");
    }
}

#[test]
fn v2_headers_give_the_source_unless_local() {
    let addr = [203, 0, 113, 9, 192, 0, 2, 1, 0xa0, 0x28, 1, 0xbb];
    let tlv = [0x04, 0, 3, b'a', b'b', b'c'];
    let proxied = v2(1, 0x11, &addr, &tlv);
    let visitor: SocketAddr = "203.0.113.9:41000".parse().unwrap();
    let mut bytes = proxied.clone();
    bytes.extend(b"\x16\x03\x01");
    assert_eq!(carried(&bytes), (proxied.len(), Carried::Visitor(visitor)));
    // LOCAL: a health check of the proxy's own.
    let local = v2(0, 0x00, &[], &[]);
    assert_eq!(carried(&local), (16, Carried::Proxy));
    for cut in 0..proxied.len() {
        assert!(
            matches!(parse(&proxied[..cut]), Parsed::Incomplete),
            "{cut}"
        );
    }
}

#[tokio::test]
async fn a_header_in_pieces_is_taken_off_to_its_last_byte() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut sender = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    sender.set_nodelay(true).unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    let header = v2(1, 0x11, &[203, 0, 113, 9, 0, 0, 0, 0, 0, 7, 0, 0], &[]);
    let reading = tokio::spawn(async move {
        let carried = read_header(&mut stream).await.unwrap();
        let mut next = [0u8; 3];
        stream.read_exact(&mut next).await.unwrap();
        (carried, next)
    });
    for piece in header.chunks(5) {
        tokio::io::AsyncWriteExt::write_all(&mut sender, piece)
            .await
            .unwrap();
        // Each piece its own segment, most of the time.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::io::AsyncWriteExt::write_all(&mut sender, b"GET")
        .await
        .unwrap();
    let visitor: SocketAddr = "203.0.113.9:7".parse().unwrap();
    assert_eq!(reading.await.unwrap(), (Carried::Visitor(visitor), *b"GET"));
}

#[test]
fn anything_else_is_missing_or_malformed() {
    let missing = parse(b"GET / HTTP/1.1\r\n");
    assert!(matches!(missing, Parsed::Invalid(HeaderError::Missing)));
    let bad_v1 = parse(b"PROXY TCP4 not-an-address 192.0.2.1 1 2\r\n");
    assert!(matches!(
        bad_v1,
        Parsed::Invalid(HeaderError::MalformedV1(_))
    ));
    let too_long_v1 = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    assert!(matches!(parse(&too_long_v1), Parsed::Invalid(_)));
    // Version 3, and a command that does not exist.
    let mut bad_v2 = v2(1, 0x11, &[0; 12], &[]);
    bad_v2[12] = 0x31;
    assert!(matches!(
        parse(&bad_v2),
        Parsed::Invalid(HeaderError::MalformedV2(_))
    ));
    bad_v2[12] = 0x2f;
    assert!(matches!(
        parse(&bad_v2),
        Parsed::Invalid(HeaderError::MalformedV2(_))
    ));
    // A length too short for the addresses of its family.
    let short = v2(1, 0x11, &[0; 4], &[]);
    assert!(matches!(parse(&short), Parsed::Invalid(_)));
}
