//! What decoding costs in memory, as a property: for arbitrary JSON shaped
//! like control messages (and those messages repeated into larger ones),
//! the bytes the decoders allocate stay within a small multiple of the
//! input plus a constant. `decode_memory.rs` checks the worst shapes we
//! know of at a megabyte; this looks for shapes we did not think of.
//!
//! A test binary of its own with one test, as allocations are counted for
//! the whole process (dhat's heap statistics).

use cryptun_proto::{ClientMessage, ServerMessage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

mod json;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Bytes allocated per byte of input, at most. A header costs a
/// `(String, String)` (48 bytes) for as little as 6 bytes of text
/// (`"a":1,`), and the list doubles as it grows, its old buffers counted
/// too: about 16 bytes per byte.
const PER_BYTE: u64 = 24;

/// Bytes allocated whatever the input (an error's message, the first
/// growth steps of a list).
const CONSTANT: u64 = 4096;

/// The bytes allocated while `f` ran (freed or not).
fn allocated_by<T>(f: impl FnOnce() -> T) -> u64 {
    let before = dhat::HeapStats::get().total_bytes;
    drop(f());
    dhat::HeapStats::get().total_bytes - before
}

/// `text`, or for `repeat > 1` larger inputs of the same material: its
/// fields' object repeated as the value of a field nobody reads (odd
/// `repeat`), or as the values of a response's headers, small ones
/// between them (even).
fn grown(text: &str, repeat: usize) -> String {
    if repeat <= 1 {
        return text.to_owned();
    }
    let inner = text.trim_start_matches('{').trim_end_matches('}');
    if repeat % 2 == 1 {
        let many = vec![format!("{{{inner}}}"); repeat].join(",");
        return format!(r#"{{"junk":[{many}],{inner}}}"#);
    }
    let value = serde_json::Value::from(text).to_string();
    let headers = (0..repeat)
        .map(|i| format!(r#""h{i}":{value},"a":1"#))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"{{"type":"response","request_id":1,"response":{{"status":200,"headers":{{{headers}}}}}}}"#
    )
}

#[test]
fn decoding_allocates_a_small_multiple_of_the_input() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut runner = TestRunner::new(Config::default());
    let strategy = (
        prop_oneof![
            json::json_message(),
            json::json_value().prop_map(|v| v.to_string())
        ],
        1usize..64,
    );
    let result = runner.run(&strategy, |(text, repeat)| {
        let text = grown(&text, repeat);
        let bound = PER_BYTE * text.len() as u64 + CONSTANT;
        let client = allocated_by(|| ClientMessage::decode(&text));
        prop_assert!(
            client <= bound,
            "client: {} bytes for {}: {}",
            client,
            text.len(),
            text
        );
        let server = allocated_by(|| ServerMessage::decode(&text));
        prop_assert!(
            server <= bound,
            "server: {} bytes for {}: {}",
            server,
            text.len(),
            text
        );
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
