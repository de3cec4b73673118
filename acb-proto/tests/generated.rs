//! The committed generated code (`src/gen/`) is what the .proto gives today. After a change of
//! the .proto: `ACB_REGENERATE=1 cargo test -p acb-proto --test generated`, then commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

#[test]
fn generated_code_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("acb-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
    // SAFETY: this test binary has one test, so no other thread reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .out_dir(&out)
        .file_descriptor_set_path(out.join("acb_v1_descriptor.bin"))
        .compile_protos(&[root.join("proto/acb/v1/assigner.proto")], &[root.join("proto")])
        .unwrap();
    // The kubelet's device-plugin API, on its own: its own module, and no part of acb.v1's
    // descriptor (reflection serves acb.v1 only). Committed as k8s.deviceplugin.v1beta1.rs.
    let k8s_out = out.join("k8s");
    std::fs::create_dir_all(&k8s_out).unwrap();
    tonic_prost_build::configure()
        .out_dir(&k8s_out)
        .compile_protos(&[root.join("proto/k8s/deviceplugin/v1beta1/api.proto")], &[root.join("proto")])
        .unwrap();
    std::fs::rename(k8s_out.join("v1beta1.rs"), out.join("k8s.deviceplugin.v1beta1.rs")).unwrap();
    let regenerate = std::env::var_os("ACB_REGENERATE").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for name in ["acb.v1.rs", "acb_v1_descriptor.bin", "k8s.deviceplugin.v1beta1.rs"] {
        let fresh = std::fs::read(out.join(name)).unwrap();
        let committed_path = root.join("src/gen").join(name);
        if regenerate {
            std::fs::write(&committed_path, &fresh).unwrap();
        } else if std::fs::read(&committed_path).ok().as_deref() != Some(fresh.as_slice()) {
            stale.push(name);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        stale.is_empty(),
        "src/gen/{stale:?} differ from what the .proto files under proto/ give: run \
         `ACB_REGENERATE=1 cargo test -p acb-proto --test generated` and commit the result"
    );
}
