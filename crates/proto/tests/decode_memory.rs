//! What decoding a peer's message may cost in memory: little beside the
//! message, however it is written. serde's tagged-enum path buffered a
//! whole message into a generic tree first, several times the size of a
//! message of many small values, before any limit could look at it.
//!
//! A test binary of its own: it counts every allocation of the process
//! (dhat's heap statistics), and has one test so that nothing else runs
//! while it counts.

use cryptun_proto::{ClientMessage, ServerMessage};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// The bytes allocated while `f` ran (freed or not): at least the most it
/// held at once.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = dhat::HeapStats::get().total_bytes;
    let out = f();
    (out, dhat::HeapStats::get().total_bytes - before)
}

/// `n` tiny JSON values: `[1],[1],...`.
fn tiny_values(n: usize) -> String {
    vec!["[1]"; n].join(",")
}

#[test]
fn no_message_costs_much_beside_itself_to_decode() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = 200_000; // text of about a megabyte
    let headers = vec![r#"["a","b"]"#; n].join(",");
    let head = r#"{"status":200,"headers":[]}"#;
    // Each with whether it is a valid message.
    let client_texts = [
        // Many headers, type first and type last (refused at 1,024).
        (
            false,
            format!(
                r#"{{"type":"response","request_id":1,"response":{{"status":200,"headers":[{headers}]}}}}"#
            ),
        ),
        (
            false,
            format!(
                r#"{{"request_id":1,"response":{{"status":200,"headers":[{headers}]}},"type":"response"}}"#
            ),
        ),
        // A header value that is a large array (refused).
        (
            false,
            format!(
                r#"{{"request_id":1,"response":{{"status":200,"headers":{{"a":[{}]}}}},"type":"response"}}"#,
                tiny_values(n)
            ),
        ),
        // Junk in a field nobody reads, before and after the type.
        (
            true,
            format!(r#"{{"junk":[{}],"type":"ping"}}"#, tiny_values(n)),
        ),
        (
            true,
            format!(
                r#"{{"junk":[{}],"request_id":1,"response":{head},"type":"response"}}"#,
                tiny_values(n)
            ),
        ),
        (
            true,
            format!(r#"{{"type":"create_tunnel","junk":[{}]}}"#, tiny_values(n)),
        ),
        // Capability lists: too many names, type first and last (refused
        // past 64), and one name of a megabyte (refused, never copied).
        (
            false,
            format!(
                r#"{{"type":"create_tunnel","capabilities":[{}]}}"#,
                vec![r#""x""#; n].join(",")
            ),
        ),
        (
            false,
            format!(
                r#"{{"capabilities":[{}],"type":"create_tunnel"}}"#,
                vec![r#""x""#; n].join(",")
            ),
        ),
        (
            false,
            format!(
                r#"{{"type":"create_tunnel","capabilities":["{}"]}}"#,
                "a".repeat(4 * n)
            ),
        ),
    ];
    for (valid, text) in &client_texts {
        let (decoded, bytes) = allocated_by(|| ClientMessage::decode(text).map(|_| ()));
        assert_eq!(decoded.is_ok(), *valid, "{decoded:?}: {}...", &text[..60]);
        assert!(
            bytes < text.len() as u64 / 8,
            "{bytes} bytes allocated to decode {} bytes ({decoded:?}): {}...",
            text.len(),
            &text[..60]
        );
    }
    let server_text = format!(
        r#"{{"junk":[{}],"request_id":1,"tunnel_id":"t","request":{{"method":"GET","path":"/"}},"type":"request"}}"#,
        tiny_values(n)
    );
    let (decoded, bytes) = allocated_by(|| ServerMessage::decode(&server_text).map(|_| ()));
    assert!(decoded.is_ok(), "{decoded:?}");
    assert!(
        bytes < server_text.len() as u64 / 8,
        "{bytes} bytes allocated"
    );
}
