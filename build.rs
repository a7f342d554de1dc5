//! Compiles `proto/quorumkv.proto` into Rust with prost-build.
//!
//! `protoc` comes from `protoc-bin-vendored`, so a plain `cargo build` needs no
//! system protoc; a `PROTOC` set in the environment wins, for platforms the
//! vendored binaries do not cover.

fn main() {
    println!("cargo:rerun-if-changed=proto/quorumkv.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        match protoc_bin_vendored::protoc_bin_path() {
            // SAFETY: build scripts are single-threaded; nothing else reads the
            // environment concurrently.
            Ok(path) => unsafe { std::env::set_var("PROTOC", path) },
            Err(e) => panic!("no vendored protoc for this platform ({e}); set PROTOC to a protoc binary"),
        }
    }
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    // Rare and large: kept out of line so every other reply stays small.
    config.boxed(".quorumkv.Response.body.metadata");
    if let Err(e) = config.compile_protos(&["proto/quorumkv.proto"], &["proto"]) {
        panic!("compiling proto/quorumkv.proto failed: {e}");
    }
}
