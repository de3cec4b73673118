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

impl TlsEnv {
    /// The settings, `None` when `ACB_TLS_CA` is unset; a certificate without its key (or the
    /// other way round) is an error.
    pub fn from_env() -> Result<Option<TlsEnv>, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`TlsEnv::from_env`] over any source of variables (empty values count as unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<TlsEnv>, Error> {
        let var = |name: &str| get(name).filter(|s| !s.trim().is_empty());
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
    pub(crate) fn client_config(&self, host: &str) -> Result<tonic::transport::ClientTlsConfig, Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &PathBuf, var: &str| {
            std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("{var} {}: {e}", p.display())))
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca, CA_VAR)?))
            .domain_name(self.server_name.clone().unwrap_or_else(|| host.to_owned()));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert, CERT_VAR)?, read(key, KEY_VAR)?));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(set: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let set: Vec<(String, String)> = set.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |name| set.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn tls_is_on_with_a_ca_and_a_half_identity_is_an_error() {
        assert_eq!(TlsEnv::from_vars(vars(&[])), Ok(None));
        assert_eq!(TlsEnv::from_vars(vars(&[(CA_VAR, " ")])), Ok(None));
        let on = TlsEnv::from_vars(vars(&[(CA_VAR, "/ca.pem"), (CERT_VAR, "/c.pem"), (KEY_VAR, "/c.key")]));
        assert_eq!(
            on,
            Ok(Some(TlsEnv {
                ca: "/ca.pem".into(),
                identity: Some(("/c.pem".into(), "/c.key".into())),
                server_name: None
            }))
        );
        let half = TlsEnv::from_vars(vars(&[(CA_VAR, "/ca.pem"), (CERT_VAR, "/c.pem")])).unwrap_err().to_string();
        assert!(half.contains("ACB_TLS_CERT and ACB_TLS_KEY go together"), "{half}");
        let no_ca = TlsEnv::from_vars(vars(&[(CERT_VAR, "/c.pem"), (KEY_VAR, "/c.key")])).unwrap_err().to_string();
        assert!(no_ca.contains("needs ACB_TLS_CA"), "{no_ca}");
    }
}
