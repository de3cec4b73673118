//! libacb: the stable C ABI of the acb client.
//!
//! Not built yet beyond its version: the client handle, `acb_on_device_begin` /
//! `acb_on_device_end`, the status codes and the CUDA memory layer come with the libacb issue.
//! The library already builds as `libacb.so` and `libacb.a` so that packaging can be set up.

/// The ABI version: bumped on any incompatible change of the C interface.
pub const ACB_ABI_VERSION: u32 = 0;

/// The ABI version this library implements (so a program can check the one it loaded).
#[unsafe(no_mangle)]
pub extern "C" fn acb_abi_version() -> u32 {
    ACB_ABI_VERSION
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exported_version_is_the_constant() {
        assert_eq!(super::acb_abi_version(), super::ACB_ABI_VERSION);
    }
}
