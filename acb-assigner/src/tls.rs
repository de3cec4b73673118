//! TLS for the daemon's TCP listeners (rustls, through tonic): a server certificate and key, and
//! optionally a client CA that every client must present a certificate from (mutual TLS).
//! Unix sockets never use TLS: the kernel already says who the peer is.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::Error;

/// The PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into tonic's configuration; a handshake must finish within `timeout`.
    pub fn server_config(&self, timeout: Duration) -> Result<ServerTlsConfig, Error> {
        let cert = read(&self.cert, "--tls-cert")?;
        let key = read(&self.key, "--tls-key")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(timeout);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
        }
        Ok(config)
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Tls(format!("{flag} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Tls(format!("{flag} {}: not a PEM file (no -----BEGIN line)", path.display())));
    }
    Ok(bytes)
}

/// Warns when a secret file (the auth token, the TLS key) can be read by group or others.
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.mode() & 0o777;
        if mode & 0o044 != 0 {
            tracing::warn!(
                "{what} {} can be read by group or others (mode {mode:04o}); make it 0600 (chmod 600)",
                path.display()
            );
        }
    }
}
