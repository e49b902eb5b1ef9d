//! Compiles the CSI protobuf with a protoc shipped as a crate, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: this build script has no other threads, so nothing reads the environment
    // while it is changed; PROTOC is how prost-build is told which protoc to run.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let well_known = protoc_bin_vendored::include_path()?;
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(
        &[std::path::PathBuf::from("proto/csi.proto")],
        &[std::path::PathBuf::from("proto"), well_known],
    )?;
    Ok(())
}
