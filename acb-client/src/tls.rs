//! TLS to an assigner's TCP listener, from the environment: a `tcp:` address is reached over TLS
//! when `ACB_TLS_CA` names the CA (PEM) that signed the assigner's certificate; `ACB_TLS_CERT`
//! and `ACB_TLS_KEY` name this client's certificate and key for an assigner that asks for one
//! (mutual TLS). The assigner's certificate must name the address's IP, or the name in
//! `ACB_TLS_SERVER_NAME`. Unix sockets never use TLS.
//!
//! TLS is the crate feature `tls` (the assigner's CLI has it; libacb, which talks to a local
//! socket, is built without it): without it a set `ACB_TLS_CA` is an error, never plaintext.

use std::path::PathBuf;

use crate::error::Error;

/// The CA that signed the assigner's certificate (PEM); TLS is on when it is set.
pub const CA_VAR: &str = "ACB_TLS_CA";
/// This client's certificate (PEM), for mutual TLS.
pub const CERT_VAR: &str = "ACB_TLS_CERT";
/// This client's private key (PEM), for mutual TLS.
pub const KEY_VAR: &str = "ACB_TLS_KEY";
/// The name the assigner's certificate must carry (default: the address's IP).
pub const SERVER_NAME_VAR: &str = "ACB_TLS_SERVER_NAME";

/// TLS settings read from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsEnv {
    /// `ACB_TLS_CA`.
    pub ca: PathBuf,
    /// `ACB_TLS_CERT` and `ACB_TLS_KEY`.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `ACB_TLS_SERVER_NAME`.
    pub server_name: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

impl TlsEnv {
    /// The settings, `None` when `ACB_TLS_CA` is unset; a certificate without its key (or the
    /// other way round) is an error.
    pub fn from_env() -> Result<Option<TlsEnv>, Error> {
        let identity = match (var(CERT_VAR), var(KEY_VAR)) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => return Err(Error::InvalidArgument(format!("{CERT_VAR} and {KEY_VAR} go together"))),
        };
        let Some(ca) = var(CA_VAR) else {
            if identity.is_some() {
                return Err(Error::InvalidArgument(format!("{CERT_VAR} needs {CA_VAR} (TLS is on when it is set)")));
            }
            return Ok(None);
        };
        Ok(Some(TlsEnv { ca: PathBuf::from(ca), identity, server_name: var(SERVER_NAME_VAR) }))
    }

    /// tonic's client configuration for an assigner at `ip`.
    #[cfg(feature = "tls")]
    pub(crate) fn client_config(&self, ip: std::net::IpAddr) -> Result<tonic::transport::ClientTlsConfig, Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &PathBuf, var: &str| {
            std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("{var} {}: {e}", p.display())))
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca, CA_VAR)?))
            .domain_name(self.server_name.clone().unwrap_or_else(|| ip.to_string()));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert, CERT_VAR)?, read(key, KEY_VAR)?));
        }
        Ok(config)
    }
}
