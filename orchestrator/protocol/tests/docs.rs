//! ARCHITECTURE.md's subjects and permissions tables are the code's tables, rendered.
//! If this fails, paste the "expected" text into ARCHITECTURE.md (or fix the code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use protocol::AgentName;
use protocol::acl::{permissions_markdown, subjects_table_markdown};

fn architecture_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ARCHITECTURE.md");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn architecture_md_has_the_subjects_table() {
    let expected = subjects_table_markdown();
    assert!(
        architecture_md().contains(&expected),
        "ARCHITECTURE.md must contain:\n{expected}"
    );
}

#[test]
fn architecture_md_has_the_permissions_table() {
    let expected = permissions_markdown(&AgentName::new("hue").unwrap());
    assert!(
        architecture_md().contains(&expected),
        "ARCHITECTURE.md must contain:\n{expected}"
    );
}
