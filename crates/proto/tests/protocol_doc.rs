//! `docs/PROTOCOL.md` and the code list the same registry: every capability,
//! error code, frame kind and head flag, current or reserved, with what the
//! code says of each. A row added on one side only fails here.

use cryptun_proto::capability::{Capability, Status};
use cryptun_proto::error_code::{ErrorCode, RESERVED_ERROR_CODES};
use cryptun_proto::frame::{FrameKind, RESERVED_HEAD_FLAGS, RESERVED_KINDS};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// The body rows of the table whose header row starts with `header`, each
/// as its cells, trimmed, backticks kept.
fn table(header: &str) -> Vec<Vec<&'static str>> {
    let mut lines = DOC.lines().skip_while(|l| !l.starts_with(header));
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1) // the |---| row
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let row = row.trim().trim_start_matches('|').trim_end_matches('|');
            row.split('|').map(str::trim).collect()
        })
        .collect()
}

fn quoted(name: &str) -> String {
    format!("`{name}`")
}

#[test]
fn the_capability_table_lists_every_capability_the_code_knows() {
    let rows = table("| capability |");
    let want: Vec<[String; 3]> = Capability::ALL
        .iter()
        .map(|c| match c.status() {
            Status::Current { since } => {
                [quoted(c.wire_name()), since.to_string(), "current".into()]
            }
            Status::Reserved => [quoted(c.wire_name()), "—".into(), "reserved".into()],
        })
        .collect();
    let got: Vec<[String; 3]> = rows
        .iter()
        .map(|r| {
            // "reserved: what for" is read as "reserved".
            let status = r[3].split(':').next().unwrap_or_default();
            [r[0].into(), r[2].into(), status.into()]
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_error_table_lists_every_code_the_code_knows() {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut want: Vec<[String; 4]> = ErrorCode::ALL
        .iter()
        .map(|c| {
            [
                quoted(c.wire_name()),
                c.closes().to_string(),
                yes_no(c.carries_retry_after()).into(),
                "current".into(),
            ]
        })
        .collect();
    want.extend(RESERVED_ERROR_CODES.iter().map(|r| {
        [
            quoted(r.name),
            r.closes.to_string(),
            yes_no(r.retry_after).into(),
            "reserved".into(),
        ]
    }));
    let got: Vec<[String; 4]> = table("| code | when |")
        .iter()
        .map(|r| {
            let status = r[4].split(':').next().unwrap_or_default();
            [r[0].into(), r[2].into(), r[3].into(), status.into()]
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_frame_tables_list_every_kind_and_flag_the_code_knows() {
    let mut want: Vec<[String; 3]> = FrameKind::ALL
        .iter()
        .map(|k| [(*k as u8).to_string(), k.name().into(), "current".into()])
        .collect();
    want.extend(RESERVED_KINDS.iter().map(|r| {
        [
            r.value.to_string(),
            r.name.into(),
            format!("reserved: {}", quoted(r.capability.wire_name())),
        ]
    }));
    // The table is in the order of the kinds' values.
    want.sort_by_key(|row| row[0].parse::<u8>().unwrap_or(u8::MAX));
    let got: Vec<[String; 3]> = table("| kind | name |")
        .iter()
        .map(|r| [r[0].into(), r[1].into(), r[4].into()])
        .collect();
    assert_eq!(got, want);

    let mut want: Vec<[String; 3]> = vec![[
        format!("{:#04x}", cryptun_proto::binary_head::END_STREAM),
        "END_STREAM".into(),
        "current".into(),
    ]];
    want.extend(RESERVED_HEAD_FLAGS.iter().map(|r| {
        [
            format!("{:#04x}", r.value),
            r.name.into(),
            format!("reserved: {}", quoted(r.capability.wire_name())),
        ]
    }));
    let got: Vec<[String; 3]> = table("| flag | name |")
        .iter()
        .map(|r| [r[0].into(), r[1].into(), r[3].into()])
        .collect();
    assert_eq!(got, want);
}
