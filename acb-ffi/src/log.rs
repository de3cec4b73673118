//! libacb is silent: it logs through `tracing`, and shows nothing unless the host program
//! installs a subscriber of its own or `ACB_LOG` asks for lines on stderr (`error`, `warn`,
//! `info`, `debug` or `trace`: that level and the ones above it).

use std::sync::Once;

/// Installs a stderr subscriber when `ACB_LOG` names a level and the host has none (once per
/// process; a bad value is said once on stderr and ignored).
pub(crate) fn init_from_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(value) = std::env::var("ACB_LOG") else { return };
        if value.is_empty() {
            return;
        }
        let level = match value.to_ascii_lowercase().as_str() {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            _ => {
                eprintln!("libacb: ACB_LOG={value:?}: expected error, warn, info, debug or trace; not logging");
                return;
            }
        };
        let subscriber =
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false).finish();
        // A host's own subscriber wins: then this does nothing.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}
