//! [`TlsFiles`], the TLS material for `amqps://` connections, read and
//! checked before anything connects.

use std::fmt;
use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::read_file;
use crate::error::{Error, Result};

/// The TLS material for `amqps://` connections, read from the files named
/// by the `--tls-*` flags. `Debug` shows the paths, never the key.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The files it was read from, for `Debug`.
    paths: Vec<PathBuf>,
    /// What the client library takes: extra trusted roots and an identity.
    config: OwnedTLSConfig,
}

impl TlsFiles {
    /// Reads and checks the files: the CA file must hold at least one
    /// certificate, the client certificate file a certificate and the key
    /// file a private key.
    ///
    /// # Errors
    /// [`Error::ReadFile`] or [`Error::InvalidTls`] naming the file.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        let mut files = TlsFiles::default();
        if let Some(path) = ca {
            let pem = read_file("TLS CA file", path)?;
            check_certificates(path, &pem)?;
            files.config.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
            files.paths.push(path.to_owned());
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read_file("TLS client certificate file", cert)?;
                check_certificates(cert, &cert_pem)?;
                let key_pem = read_file("TLS client key file", key)?;
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(Error::InvalidTls {
                        reason: format!("{} holds no PEM private key", key.display()),
                    });
                }
                files.config.identity = Some(OwnedIdentity::PKCS8 {
                    pem: cert_pem,
                    key: key_pem,
                });
                files.paths.extend([cert.to_owned(), key.to_owned()]);
            }
            (None, None) => {}
            _ => {
                return Err(Error::InvalidTls {
                    reason: "a client certificate needs both --tls-cert-file and --tls-key-file"
                        .to_owned(),
                });
            }
        }
        Ok(files)
    }

    /// True when no TLS file was given.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The CA certificates of `--tls-ca-file`, PEM, if given (the
    /// management API over https trusts them too).
    pub fn ca_pem(&self) -> Option<&str> {
        self.config.cert_chain.as_deref()
    }

    /// The configuration handed to the client library.
    pub(crate) fn to_lapin(&self) -> OwnedTLSConfig {
        self.config.clone()
    }
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn check_certificates(path: &Path, pem: &[u8]) -> Result<()> {
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::InvalidTls {
            reason: format!("{} is not valid PEM: {e}", path.display()),
        })?;
    if certificates.is_empty() {
        return Err(Error::InvalidTls {
            reason: format!("{} holds no PEM certificate", path.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_checked_before_connecting() {
        let dir = std::env::temp_dir().join(format!("warren-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = TlsFiles::load(Some(&not_pem), None, None).unwrap_err();
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
        let error = TlsFiles::load(None, Some(&not_pem), None).unwrap_err();
        assert!(error.to_string().contains("--tls-key-file"), "{error}");
        let error = TlsFiles::load(Some(&dir.join("missing.pem")), None, None).unwrap_err();
        assert!(
            error.to_string().starts_with("cannot read the TLS CA file"),
            "{error}"
        );
        assert!(TlsFiles::load(None, None, None).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
