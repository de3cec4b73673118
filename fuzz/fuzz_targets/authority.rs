#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = acb_fuzz_targets::authority(data);
});
