//! Build script: give the shared library its soname.

fn main() {
    // The ABI version is the soname's: libipchub.so.0. A program linked
    // with -lipchub records it and keeps loading a compatible library.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libipchub.so.0");
}
