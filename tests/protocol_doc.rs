//! docs/PROTOCOL.md is checked by a client written from it alone (Python).

mod common;

#[allow(unused_imports)]
use common::deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use common::Hub;

#[test]
fn a_python_client_written_from_the_protocol_document_works() {
    let hub = Hub::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/minimal_client.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&hub.socket)
        .arg("docs/check")
        .arg("{\"temp\": 72}")
        .output_within(LIMIT)
        .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "delivered=1\ndata=docs/check:{\"temp\": 72}\n");
}

/// What PROTOCOL.md says beyond the basic session, checked by the same
/// client: §7 byte for byte as printed, HELLO defaults, fatal errors and the
/// close after them, requests on a pipe client's control socket answered on
/// its data path, and a channel ring's layout (slot, `start_seq`, slot 0's
/// cursor, one eventfd per ring, BPAD at the wrap, leaving) and an shm
/// client's own ring read across its wrap (PADD).
#[test]
fn the_python_client_checks_the_documents_corrected_parts_against_the_hub() {
    let hub = Hub::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/minimal_client.py"
    );
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&hub.socket)
        .arg("--checks")
        .arg(doc)
        .output_within(LIMIT)
        .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\nhub log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        hub.log()
    );
    assert_eq!(
        stdout,
        "ok session_bytes\nok hello_defaults\nok fatal_errors\nok control_socket_requests\nok channel_ring\nok client_ring_wrap\n"
    );
}
