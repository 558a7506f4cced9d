//! docs/PROTOCOL.md is checked by a client written from it alone (Python).

mod common;

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
        .output()
        .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "delivered=1\ndata=docs/check:{\"temp\": 72}\n");
}
