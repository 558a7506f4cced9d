//! include/ipchub.h equals a fresh cbindgen rendering of src/lib.rs.
//!
//! The header is committed (packagers and readers need no Rust tools); this
//! test keeps it from drifting from the code. Refresh it with
//! `IPCHUB_UPDATE_HEADER=1 cargo test -p ipchub-c --test header`.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen renders src/lib.rs")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).unwrap();
    let path = dir.join("include/ipchub.h");
    if std::env::var_os("IPCHUB_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/ipchub.h differs from the code; refresh it with \
         IPCHUB_UPDATE_HEADER=1 cargo test -p ipchub-c --test header"
    );
}
