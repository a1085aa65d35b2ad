//! TLS for the public listener: loads a PEM certificate chain and private key into a rustls
//! server config (ring, TLS 1.2 and 1.3, ALPN `http/1.1` only) and keeps it in a cell that a
//! reload can swap while connections are being accepted.
//!
//! [`Tls`] is the handle: each accepted connection takes the current config through
//! [`Tls::acceptor`], so a successful [`Tls::reload`] applies to new handshakes at once and
//! leaves established connections alone; a failed one keeps the old certificate. This module
//! reads the two files and builds configs; it does not accept connections, time handshakes out
//! or log (that is `server`'s job), and it never prints key material: errors name the file
//! and say what is wrong, nothing else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The listener's certificate and key (`[server.tls]`). Both files were read and checked as a
/// pair when the config was validated; [`Tls`] reads them again at start and on
/// reload, so renewed files in place are picked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, server certificate first, `cert_file`. Required.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate, `key_file`. Required.
    pub key_file: PathBuf,
}

/// The only application protocol offered: kirimhook serves HTTP/1.1.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Which of the two configured files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// `server.tls.cert_file`.
    Cert,
    /// `server.tls.key_file`.
    Key,
}

impl TlsFile {
    /// The config key that names this file, for error messages.
    pub fn config_key(self) -> &'static str {
        match self {
            TlsFile::Cert => "server.tls.cert_file",
            TlsFile::Key => "server.tls.key_file",
        }
    }
}

/// Why a certificate and key could not be loaded. Every variant names the file; none carries
/// the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file has PEM sections, but one of them is broken.
    #[error("{} is not a valid PEM file: {problem}", path.display())]
    Pem {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What is broken, in words that never quote the file.
        problem: &'static str,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error(
        "no certificate in {}: expected PEM `-----BEGIN CERTIFICATE-----` sections, \
         the server's certificate first, then its intermediates",
        path.display()
    )]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private key section.
    #[error(
        "no private key in {}: expected one PEM `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` \
         or `EC PRIVATE KEY` section",
        path.display()
    )]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// rustls refused the pair: the key is of an unsupported kind or does not belong to the
    /// certificate.
    #[error(
        "the private key in {} cannot be used with the certificate in {}: {reason}",
        key.display(),
        cert.display()
    )]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason (it never includes key material).
        reason: rustls::Error,
    },
}

impl TlsError {
    /// The file the error is about: a key that does not fit the certificate counts as a
    /// problem of the key file.
    pub fn file(&self) -> TlsFile {
        match self {
            TlsError::Read { file, .. } | TlsError::Pem { file, .. } => *file,
            TlsError::NoCertificate { .. } => TlsFile::Cert,
            TlsError::NoKey { .. } | TlsError::Rejected { .. } => TlsFile::Key,
        }
    }
}

/// The listener's TLS state: the current server config, swappable by [`Tls::reload`].
pub struct Tls {
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the certificate chain and key named by `config`. Blocking file I/O:
    /// on the runtime, call it from `spawn_blocking`.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        Ok(Tls {
            current: RwLock::new(Arc::new(server_config(config)?)),
        })
    }

    /// Reads the files again (they may be renewed certificates, or other files) and, when
    /// they are good, uses them for every handshake from now on. On error the certificate in
    /// use stays. Connections already established are not affected either way. Blocking file
    /// I/O, like [`Tls::load`].
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(config)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// An acceptor for one new connection, with the config current at this moment.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(current)
    }
}

/// Builds a rustls server config from the files named by `config`: the ring provider, TLS
/// 1.2 and 1.3, no client certificates, ALPN `http/1.1`. `config` validation calls this too,
/// so that `check-config` finds a bad certificate or key.
pub fn server_config(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&config.cert_file)?;
    let key = read_key(&config.key_file)?;
    let rejected = |reason| TlsError::Rejected {
        cert: config.cert_file.clone(),
        key: config.key_file.clone(),
        reason,
    };
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(rejected)?;
    server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(server)
}

/// Every `CERTIFICATE` section of `path`, in file order; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(TlsFile::Cert, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(TlsFile::Cert, path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The bytes of a PEM file of CA certificates that a client trusts instead of the public
/// roots (a sink's `ca_file`), checked to hold at least one readable certificate.
pub(crate) fn read_ca_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_certs(path)?;
    read(TlsFile::Cert, path)
}

/// The first private key section of `path` (other sections, such as a certificate, are
/// skipped).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(TlsFile::Key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => pem_error(TlsFile::Key, path, &other),
    })
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .and_then(|n| {
            if n as u64 > MAX_PEM_BYTES {
                Err(std::io::Error::other("larger than 1 MiB: not a PEM file"))
            } else {
                Ok(())
            }
        })
        .map_err(|source| TlsError::Read {
            file,
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// Largest certificate or key file read (a chain is a few KiB; `/dev/zero` must not hang).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A PEM error in words of our own: some of rustls's messages quote bytes of the file.
fn pem_error(file: TlsFile, path: &Path, error: &pem::Error) -> TlsError {
    let problem = match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no `-----END ...-----` line",
        pem::Error::IllegalSectionStart { .. } => "a `-----BEGIN ...-----` line is malformed",
        pem::Error::Base64Decode(_) => "a section's content is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        pem::Error::NoItemsFound => "no usable section",
        pem::Error::Io(_) => "it could not be read",
        _ => "it could not be parsed",
    };
    TlsError::Pem {
        file,
        path: path.to_owned(),
        problem,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    /// A fresh self-signed certificate for `localhost`, written to `dir` as `cert.pem` and
    /// `key.pem`; returns the config naming them and the certificate's DER bytes.
    fn write_cert(dir: &Path, prefix: &str) -> (TlsConfig, Vec<u8>) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let config = TlsConfig {
            cert_file: dir.join(format!("{prefix}cert.pem")),
            key_file: dir.join(format!("{prefix}key.pem")),
        };
        std::fs::write(&config.cert_file, generated.cert.pem()).unwrap();
        std::fs::write(&config.key_file, generated.signing_key.serialize_pem()).unwrap();
        (config, generated.cert.der().to_vec())
    }

    /// Runs one handshake against `tls` over an in-memory pipe, trusting any certificate,
    /// and returns the certificate the server presented and the negotiated ALPN protocol.
    async fn handshake(tls: &Tls, trusted: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(trusted.to_vec())).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(client));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tls.acceptor();
        let server = tokio::spawn(async move { acceptor.accept(server_io).await.map(drop) });
        let name = ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, client_io).await.unwrap();
        server.await.unwrap().unwrap();
        let (_, session) = stream.get_ref();
        let presented = session.peer_certificates().unwrap()[0].to_vec();
        (presented, session.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn load_serves_the_certificate_with_http11_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (config, der) = write_cert(dir.path(), "");
        let tls = Tls::load(&config).unwrap();
        let (presented, alpn) = handshake(&tls, &der).await;
        assert_eq!(presented, der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn reload_changes_what_new_handshakes_see() {
        let dir = tempfile::tempdir().unwrap();
        let (config, old) = write_cert(dir.path(), "");
        let tls = Tls::load(&config).unwrap();
        // An acceptor taken before the reload keeps the config it was made with.
        let before = tls.acceptor();
        // Renewal in place: same paths, new contents.
        let (renewed, new) = write_cert(dir.path(), "");
        assert_eq!(renewed, config);
        assert_ne!(old, new);
        tls.reload(&config).unwrap();
        assert_eq!(handshake(&tls, &new).await.0, new);
        assert!(!Arc::ptr_eq(before.config(), tls.acceptor().config()));
        // Other paths work too.
        let (elsewhere, third) = write_cert(dir.path(), "next-");
        tls.reload(&elsewhere).unwrap();
        assert_eq!(handshake(&tls, &third).await.0, third);
    }

    #[tokio::test]
    async fn failed_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (config, der) = write_cert(dir.path(), "");
        let tls = Tls::load(&config).unwrap();

        std::fs::write(&config.cert_file, "not a certificate\n").unwrap();
        let err = tls.reload(&config).unwrap_err();
        assert_eq!(err.file(), TlsFile::Cert);
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&config.cert_file.display().to_string()),
            "{err}"
        );
        assert_eq!(handshake(&tls, &der).await.0, der);

        let missing = TlsConfig {
            cert_file: config.cert_file.clone(),
            key_file: dir.path().join("missing-key.pem"),
        };
        let err = tls.reload(&missing).unwrap_err();
        assert_eq!(err.file(), TlsFile::Cert, "the cert is checked first");
        let (good, _) = write_cert(dir.path(), "good-");
        let missing = TlsConfig {
            key_file: dir.path().join("missing-key.pem"),
            ..good
        };
        let err = tls.reload(&missing).unwrap_err();
        assert_eq!(err.file(), TlsFile::Key);
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing-key.pem"), "{err}");
        assert_eq!(handshake(&tls, &der).await.0, der);
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (one, _) = write_cert(dir.path(), "one-");
        let (two, _) = write_cert(dir.path(), "two-");
        let mixed = TlsConfig {
            cert_file: one.cert_file,
            key_file: two.key_file,
        };
        let err = server_config(&mixed).unwrap_err();
        assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");
        assert_eq!(err.file(), TlsFile::Key);
    }

    #[test]
    fn errors_never_show_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = write_cert(dir.path(), "");
        let key = std::fs::read_to_string(&config.key_file).unwrap();
        // Break the base64 in the middle of the key.
        let body_line = key.lines().nth(1).unwrap();
        let broken = key.replacen(body_line, &format!("{}!!", &body_line[..20]), 1);
        std::fs::write(&config.key_file, &broken).unwrap();
        let err = server_config(&config).unwrap_err();
        assert_eq!(err.file(), TlsFile::Key);
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&body_line[..20]), "{shown}");

        // A key file holding only a certificate.
        std::fs::copy(&config.cert_file, &config.key_file).unwrap();
        let err = server_config(&config).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
    }
}
