//! The daemon's settings file: TOML into `FileConfig`, then its values resolved as `serve`
//! resolves them (addresses, GPU specs, the scheduler, durations, the metrics address).

use acb_assigner::cli::resolve_settings;
use acb_assigner::config::{Address, FileConfig};

/// Parses `data` as a settings file and resolves it. Accepted: it resolved; then every listen
/// address prints back as itself. The token file is not read (it names a path).
pub fn settings(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let Ok(mut file) = toml::from_str::<FileConfig>(text) else { return false };
    file.auth_token_file = None;
    match resolve_settings(file) {
        Ok(cfg) => {
            for a in &cfg.listen {
                let printed = a.to_string();
                assert_eq!(printed.parse::<Address>().ok().as_ref(), Some(a), "{printed} does not parse back");
            }
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal with no reason");
            false
        }
    }
}
