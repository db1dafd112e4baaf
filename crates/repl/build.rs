//! Generates the replication protocol's gRPC code from `proto/replica.proto` with the
//! protoc shipped by `protoc-bin-vendored`, so the build needs nothing outside
//! crates.io. Message bodies are `bytes::Bytes`, so one body is shared (not copied)
//! between the requests to every replica.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script runs single-threaded; nothing else reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".chordmail.replica.v1.MessageRecord.body")
        .bytes(".chordmail.replica.v1.BodyReply.body")
        .bytes(".chordmail.replica.v1.OutboundRecord.body")
        .compile_protos(&["proto/replica.proto"], &["proto"])?;
    Ok(())
}
