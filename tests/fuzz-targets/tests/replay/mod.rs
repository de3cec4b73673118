//! Replays the committed corpus of one fuzz target: every file of `fuzz/corpus/TARGET/`
//! through the function the fuzz target calls.

use std::path::PathBuf;

/// Runs `target` on each corpus file of `name` (a panic fails the test) and checks that the
/// corpus is there and holds both inputs the target accepts and inputs it refuses.
pub(crate) fn replay(name: &str, target: fn(&[u8]) -> bool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(name);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    files.sort();
    assert!(files.len() >= 3, "{}: {} files; the corpus is missing", dir.display(), files.len());
    let (mut accepted, mut refused) = (0, 0);
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if target(&data) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    println!("{name}: {} inputs, {accepted} accepted, {refused} refused", files.len());
    assert!(accepted > 0, "{name}: no input of the corpus is accepted: it tests only the first refusal");
    assert!(refused > 0, "{name}: no input of the corpus is refused");
}
