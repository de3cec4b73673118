//! Generates the gRPC code from `proto/acb/v1/assigner.proto`. protoc comes from the
//! protoc-bin-vendored crate (nothing is downloaded); `PROTOC` overrides it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("acb_v1_descriptor.bin"))
        .compile_protos(&["proto/acb/v1/assigner.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/acb/v1/assigner.proto");
    Ok(())
}
