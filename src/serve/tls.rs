//! TLS on the listeners (gRPC and metrics) with rustls, served through a tokio-rustls acceptor
//! built per connection from a server configuration that is swapped on reload:
//!
//! - `tls_cert` / `tls_key` (PEM) are the server's chain and key; `tls_client_ca` (PEM) turns on
//!   mutual TLS: every client must present a certificate issued by that CA and valid now (an
//!   expired certificate, or one from another CA, fails the handshake).
//! - The files are reloaded when they change (their modification times are polled every
//!   `tls_reload_secs`) or on SIGHUP. New connections get the new configuration; open ones keep
//!   theirs. A bad new file set (unreadable, not PEM, key not matching the certificate) is
//!   refused, logged and counted in `tiering_refused_total{reason="tls_reload"}`, and the old
//!   configuration keeps serving.
//! - Handshakes run in each connection's own task under `tls_handshake_timeout_ms`, never in the
//!   accept loop (see [`super::connections`]); failures are counted as
//!   `reason="tls_handshake"`.
//!
//! A verified client certificate's DNS SANs and subject CN become the connection's identity
//! names ([`cert_names`]), which the keys file's `[[identity]]` entries map to roles.

use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls_client_ca: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The TLS files.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate from this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file, for the change watcher.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

/// The live server configurations (gRPC: ALPN h2; metrics: http/1.1).
pub struct Tls {
    files: TlsFiles,
    grpc: ArcSwap<rustls::ServerConfig>,
    http: ArcSwap<rustls::ServerConfig>,
    /// Counts a refusal by reason (`tls_reload`, `tls_handshake`).
    refused: Refused,
}

/// The refusal counter (the metrics registry's, given by the caller).
pub type Refused = Arc<dyn Fn(&'static str) + Send + Sync>;

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Builds the server configuration from the files, with `alpn`.
fn server_config(files: &TlsFiles, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        path: files.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|source| TlsError::Certificate {
                    path: ca.clone(),
                    source,
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

impl Tls {
    /// Reads the files (a failure here stops the start).
    pub fn load(files: TlsFiles, refused: Refused) -> Result<Tls, TlsError> {
        let grpc = server_config(&files, b"h2")?;
        let http = server_config(&files, b"http/1.1")?;
        Ok(Tls {
            files,
            grpc: ArcSwap::from_pointee(grpc),
            http: ArcSwap::from_pointee(http),
            refused,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; a bad set is refused (logged, counted) and the old one keeps serving.
    pub fn reload(&self) {
        let both = server_config(&self.files, b"h2")
            .and_then(|g| Ok((g, server_config(&self.files, b"http/1.1")?)));
        match both {
            Ok((grpc, http)) => {
                self.grpc.store(Arc::new(grpc));
                self.http.store(Arc::new(http));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                (self.refused)("tls_reload");
                tracing::error!(error = %e, "new TLS files refused; the previous certificate keeps serving");
            }
        }
    }

    /// The acceptor for one new gRPC connection.
    pub fn grpc_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.grpc.load_full())
    }

    /// The acceptor for one new metrics (HTTP/1.1) connection.
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.http.load_full())
    }

    pub(crate) fn handshake_failed(&self, error: &dyn std::fmt::Display) {
        (self.refused)("tls_handshake");
        tracing::debug!(error = %error, "TLS handshake failed");
    }
}

/// One DER element: (tag, contents, the rest after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a DER sequence's contents.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, body, rest) = tlv(input)?;
        input = rest;
        Some((tag, body))
    })
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// A certificate's DNS subject alternative names, then its subject common name.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let Some((_, cert, _)) = tlv(der) else {
        return names;
    };
    let Some((_, tbs, _)) = tlv(cert) else {
        return names;
    };
    let mut fields = elements(tbs).peekable();
    if fields.peek().is_some_and(|(t, _)| *t == 0xa0) {
        fields.next(); // version
    }
    // serial, signature algorithm, issuer, validity, subject, key, then optional fields.
    let subject = fields.nth(4).map(|(_, s)| s);
    for (tag, body) in fields {
        if tag != 0xa3 {
            continue;
        }
        let Some((_, exts, _)) = tlv(body) else {
            continue;
        };
        for (_, ext) in elements(exts) {
            let mut parts = elements(ext);
            if parts.next().map(|(_, oid)| oid) != Some(OID_SAN) {
                continue;
            }
            let Some((_, value)) = parts.find(|(t, _)| *t == 0x04) else {
                continue;
            };
            let Some((_, general, _)) = tlv(value) else {
                continue;
            };
            for (t, name) in elements(general) {
                if t == 0x82 {
                    names.extend(std::str::from_utf8(name).ok().map(str::to_string));
                }
            }
        }
    }
    for (_, rdn) in subject.into_iter().flat_map(elements) {
        for (_, attr) in elements(rdn) {
            let mut parts = elements(attr);
            if parts.next().map(|(_, oid)| oid) == Some(OID_CN) {
                if let Some((_, v)) = parts.next() {
                    names.extend(std::str::from_utf8(v).ok().map(str::to_string));
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_names() {
        assert!(cert_names(&[]).is_empty());
        assert!(cert_names(&[0x30, 0x82, 0xff]).is_empty());
        assert!(cert_names(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_empty());
    }
}
