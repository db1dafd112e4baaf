//! Generates the gRPC code from `proto/` with the protoc shipped by
//! `protoc-bin-vendored`, so the build needs nothing outside crates.io.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script runs single-threaded; nothing else reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/ring.proto"], &["proto"])?;
    Ok(())
}
