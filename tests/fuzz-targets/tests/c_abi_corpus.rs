//! The C ABI target's corpus, replayed. Alone in its test binary: the target sets environment
//! variables, which no other test thread may read meanwhile.
#![allow(clippy::panic)]

mod replay;

#[test]
fn the_c_abi_corpus_replays() {
    replay::replay("c_abi", acb_fuzz_targets::c_abi);
}
