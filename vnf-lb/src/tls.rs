//! Server certificates for TLS termination, and the rustls configurations the L7 proxy and the
//! health checker use.
//!
//! Design: a [`CertStore`] holds an immutable certificate set behind an `ArcSwap`. rustls asks
//! the store for a certificate once per handshake ([`ResolvesServerCert::resolve`]) and keeps
//! the `Arc<CertifiedKey>` it gets, so a [`CertStore::reload`] only affects handshakes that start
//! after it: connections in progress or established are never dropped. A reload that fails
//! leaves the old set in place, and its error names the file and the reason.
//!
//! Selection is by SNI (RFC 6066 §3): an exact DNS name from the certificate, then a wildcard
//! `*.example.com` covering exactly one more label (RFC 6125 §6.4.3), else the first
//! certificate, also for clients that send no SNI. The names come from the certificate's
//! subjectAltName dNSName entries, or its subject CN when it has none (RFC 6125 §6.4.4); they
//! are read by a small DER walker that never panics on malformed input.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, InconsistentKeys, ServerConfig, SignatureScheme,
};

/// TLS sessions the server remembers for resumption by session ID (TLS 1.2) or stateful
/// tickets; each entry is a few hundred bytes.
const SESSION_CACHE_SIZE: usize = 4096;

/// The ALPN protocol we speak (RFC 7301): the proxy is HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// One certificate to serve: PEM files holding the chain (end-entity certificate first) and its
/// private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key of the first certificate in the chain.
    pub key: PathBuf,
}

/// Why a certificate set could not be loaded. Every message starts with the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{}: invalid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The first certificate is not a valid X.509 certificate.
    #[error("{}: invalid certificate: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// The first certificate's DER could not be walked to find its names.
    #[error("{}: malformed certificate: cannot read its names", path.display())]
    CertificateNames {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key section.
    #[error("{}: no private key found", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a type or curve the ring provider cannot sign with.
    #[error("{}: unsupported private key: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// The private key is not the one the certificate certifies.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// An empty list of certificates: a TLS listener needs at least a default one.
    #[error("no certificate configured")]
    Empty,
}

/// An immutable set of certificates with its name index.
struct CertSet {
    keys: Vec<Arc<CertifiedKey>>,
    /// The names each certificate was indexed under, for `Debug` and logs.
    names: Vec<Vec<String>>,
    /// Lowercase DNS name -> index into `keys`.
    exact: HashMap<String, usize>,
    /// For `*.example.com`: `example.com` -> index into `keys`.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    fn load(specs: &[CertSpec]) -> Result<CertSet, TlsError> {
        if specs.is_empty() {
            return Err(TlsError::Empty);
        }
        let mut set = CertSet {
            keys: Vec::with_capacity(specs.len()),
            names: Vec::with_capacity(specs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (index, spec) in specs.iter().enumerate() {
            let (key, names) = load_one(spec)?;
            for name in &names {
                // The first certificate listing a name serves it, as the config orders them.
                match name.strip_prefix("*.") {
                    Some(parent) => set.wildcard.entry(parent.to_owned()).or_insert(index),
                    None => set.exact.entry(name.clone()).or_insert(index),
                };
            }
            set.keys.push(Arc::new(key));
            set.names.push(names);
        }
        Ok(set)
    }

    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = server_name
            .and_then(|name| {
                let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
                self.exact.get(&name).copied().or_else(|| {
                    // The wildcard stands for exactly one non-empty label (RFC 6125 §6.4.3).
                    let (label, parent) = name.split_once('.')?;
                    if label.is_empty() {
                        return None;
                    }
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        self.keys.get(index).cloned()
    }
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet")
            .field("names", &self.names)
            .finish()
    }
}

/// Read one spec: the certified key, checked for consistency, and its DNS names.
fn load_one(spec: &CertSpec) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let cert_pem = read(&spec.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: spec.cert.clone(),
            source,
        })?;
    let Some(end_entity) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: spec.cert.clone(),
        });
    };
    let names = dns_names(end_entity).ok_or_else(|| TlsError::CertificateNames {
        path: spec.cert.clone(),
    })?;

    let key_pem = read(&spec.key)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: spec.key.clone(),
            });
        }
        Err(source) => {
            return Err(TlsError::Pem {
                path: spec.key.clone(),
                source,
            });
        }
    };
    let signing_key = ring::sign::any_supported_type(&key).map_err(|source| TlsError::Key {
        path: spec.key.clone(),
        source,
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key type cannot report its public key; rustls' own `from_der` accepts
        // that too. The ring keys (RSA, ECDSA, Ed25519) all can.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                key: spec.key.clone(),
                cert: spec.cert.clone(),
            });
        }
        Err(source) => {
            return Err(TlsError::Certificate {
                path: spec.cert.clone(),
                source,
            });
        }
    }
    Ok((certified, names))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The server certificates of a TLS listener, reloadable while it runs.
#[derive(Debug)]
pub struct CertStore {
    set: ArcSwap<CertSet>,
}

impl CertStore {
    /// Load and check every certificate and key; the first one is the default.
    pub fn load(specs: &[CertSpec]) -> Result<CertStore, TlsError> {
        Ok(CertStore {
            set: ArcSwap::from_pointee(CertSet::load(specs)?),
        })
    }

    /// Replace the whole set, atomically. On error the current set stays in use.
    /// Handshakes already past certificate selection keep the certificate they chose.
    pub fn reload(&self, specs: &[CertSpec]) -> Result<(), TlsError> {
        let set = CertSet::load(specs)?;
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// The certificate served for this SNI value (`None`: the client sent none).
    pub fn select(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.set.load().resolve(server_name)
    }

    /// The DNS names each certificate is served for, in configuration order.
    pub fn names(&self) -> Vec<Vec<String>> {
        self.set.load().names.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

/// The rustls configuration of an HTTPS listener serving `store`'s certificates.
///
/// TLS 1.2 and 1.3 only: rustls implements nothing older, so SSLv3, TLS 1.0 and TLS 1.1
/// ClientHellos fail with a `protocol_version` alert (RFC 8446 §D.2). ALPN offers `http/1.1`
/// only (RFC 7301 §3.2: a client offering just `h2` gets `no_application_protocol`). No client
/// authentication, no 0-RTT data (replayable, RFC 8446 §8). Resumption by a bounded session
/// cache and by stateless tickets under rotating keys.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider has cipher suites for TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    // Without randomness for ticket keys we still resume through the session cache.
    if let Ok(ticketer) = ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Arc::new(config)
}

/// The rustls configuration of HTTPS health checks: TLS 1.2 and 1.3, ALPN `http/1.1`, and a
/// verifier that accepts any server certificate.
///
/// A health check asks "does the backend complete a handshake and answer", not "is it
/// trusted": backends commonly serve self-signed or internal-CA certificates for names the
/// check does not know. The handshake signatures are still verified with the provider's
/// algorithms, so a backend must hold the private key of the certificate it presents.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider has cipher suites for TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(config)
}

/// Accepts every certificate chain; checks handshake signatures (see
/// [`insecure_client_config`]).
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// DER tags and object identifiers of the X.509 fields we read (RFC 5280 §4.1, ITU-T X.690).
mod field {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `version [0] EXPLICIT Version DEFAULT v1` in TBSCertificate.
    pub const VERSION: u8 = 0xa0;
    /// `extensions [3] EXPLICIT Extensions OPTIONAL` in TBSCertificate.
    pub const EXTENSIONS: u8 = 0xa3;
    /// `dNSName [2] IA5String` in GeneralName, implicitly tagged (RFC 5280 §4.2.1.6).
    pub const DNS_NAME: u8 = 0x82;
    /// id-ce-subjectAltName, 2.5.29.17.
    pub const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// id-at-commonName, 2.5.4.3.
    pub const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
}

/// A cursor over DER TLVs (X.690 §8.1). Definite lengths only, as DER requires.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next TLV: its tag and contents. `None` at the end or on malformed input.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        // High tag numbers (low five bits all set) never occur in the fields we walk.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // Long form: the low bits count the length bytes; 0 is BER's indefinite length.
            // Four bytes (4 GiB) is more than any certificate.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            bytes
                .iter()
                .fold(0u64, |len, &b| (len << 8) | u64::from(b))
                .try_into()
                .ok()?
        };
        let (contents, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some((tag, contents))
    }

    /// The next TLV's contents if it has this tag.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, contents) if t == tag => Some(contents),
            _ => None,
        }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }
}

/// The DNS names a certificate is valid for: its subjectAltName dNSName entries, or its
/// subject's common names if it has none (RFC 6125 §6.4.4). Lowercase, without a trailing dot.
/// `None` if the DER does not have the shape of a certificate.
///
/// ```text
/// Certificate  ::= SEQUENCE { tbsCertificate TBSCertificate, signatureAlgorithm, signature }
/// TBSCertificate ::= SEQUENCE { version [0] EXPLICIT DEFAULT v1, serialNumber INTEGER,
///     signature AlgorithmIdentifier, issuer Name, validity Validity, subject Name,
///     subjectPublicKeyInfo, issuerUniqueID [1] OPTIONAL, subjectUniqueID [2] OPTIONAL,
///     extensions [3] EXPLICIT Extensions OPTIONAL }
/// ```
pub(crate) fn dns_names(cert: &[u8]) -> Option<Vec<String>> {
    let certificate = Der(cert).expect(field::SEQUENCE)?;
    let mut tbs = Der(Der(certificate).expect(field::SEQUENCE)?);
    if tbs.peek_tag() == Some(field::VERSION) {
        tbs.next()?;
    }
    tbs.expect(field::INTEGER)?; // serialNumber
    tbs.expect(field::SEQUENCE)?; // signature
    tbs.expect(field::SEQUENCE)?; // issuer
    tbs.expect(field::SEQUENCE)?; // validity
    let subject = tbs.expect(field::SEQUENCE)?;
    tbs.expect(field::SEQUENCE)?; // subjectPublicKeyInfo

    let mut names = Vec::new();
    while let Some((tag, contents)) = tbs.next() {
        if tag == field::EXTENSIONS {
            san_dns_names(contents, &mut names)?;
        }
    }
    if names.is_empty() {
        common_names(subject, &mut names)?;
    }
    Some(names)
}

/// `Extensions ::= SEQUENCE OF Extension`,
/// `Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }`,
/// and in the subjectAltName's value `GeneralNames ::= SEQUENCE OF GeneralName`.
fn san_dns_names(extensions: &[u8], names: &mut Vec<String>) -> Option<()> {
    let mut extensions = Der(Der(extensions).expect(field::SEQUENCE)?);
    while let Some(extension) = extensions.next() {
        let (field::SEQUENCE, extension) = extension else {
            return None;
        };
        let mut extension = Der(extension);
        let oid = extension.expect(field::OID)?;
        if extension.peek_tag() == Some(field::BOOLEAN) {
            extension.next()?;
        }
        let value = extension.expect(field::OCTET_STRING)?;
        if oid != field::OID_SUBJECT_ALT_NAME {
            continue;
        }
        let mut general_names = Der(Der(value).expect(field::SEQUENCE)?);
        while let Some((tag, name)) = general_names.next() {
            if tag == field::DNS_NAME {
                push_name(name, names);
            }
        }
    }
    Some(())
}

/// `Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }` (RFC 5280 §4.1.2.4); the
/// value of a commonName is one of the DirectoryString types, all ASCII-compatible here.
fn common_names(subject: &[u8], names: &mut Vec<String>) -> Option<()> {
    let mut rdns = Der(subject);
    while let Some(rdn) = rdns.next() {
        let (field::SET, rdn) = rdn else {
            return None;
        };
        let mut attributes = Der(rdn);
        while let Some(attribute) = attributes.next() {
            let (field::SEQUENCE, attribute) = attribute else {
                return None;
            };
            let mut attribute = Der(attribute);
            let oid = attribute.expect(field::OID)?;
            let (_, value) = attribute.next()?;
            if oid == field::OID_COMMON_NAME {
                push_name(value, names);
            }
        }
    }
    Some(())
}

/// Keep a name that can be a DNS name: printable ASCII without spaces, lowercased.
fn push_name(name: &[u8], names: &mut Vec<String>) {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
        return;
    }
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    if !names.contains(&name) {
        names.push(name);
    }
}

/// Certificates made by the `openssl` CLI for tests.
#[cfg(test)]
pub(crate) mod testcert {
    use std::path::Path;
    use std::process::Command;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::CertSpec;

    /// A self-signed P-256 certificate `<name>.pem` with key `<name>.key` in `dir`, with this
    /// subject CN and subjectAltName DNS entries (none: no subjectAltName extension).
    pub(crate) fn generate(dir: &Path, name: &str, cn: &str, dns: &[&str]) -> CertSpec {
        let spec = CertSpec {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&spec.key)
            .arg("-out")
            .arg(&spec.cert);
        if !dns.is_empty() {
            let sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
            cmd.arg("-addext")
                .arg(format!("subjectAltName={}", sans.join(",")));
        }
        run(&mut cmd);
        spec
    }

    /// Run a command, panicking with its stderr if it fails.
    pub(crate) fn run(cmd: &mut Command) {
        let out = cmd.output().expect("the openssl CLI is installed");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The DER of the first certificate in a PEM file.
    pub(crate) fn cert_der(spec: &CertSpec) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&spec.cert).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::process::Command;

    use proptest::prelude::*;
    use rustls::{ClientConnection, HandshakeKind, ServerConnection};
    use tempfile::TempDir;

    use super::testcert::{cert_der, generate, run};
    use super::*;

    /// Move TLS records both ways until neither side has anything to send.
    fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
        for _ in 0..16 {
            let mut progress = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progress = true;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd).unwrap();
                    server.process_new_packets().unwrap();
                }
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progress = true;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                    client.process_new_packets().unwrap();
                }
            }
            if !progress {
                return;
            }
        }
        panic!("handshake did not settle");
    }

    /// A completed handshake for this SNI (`None`: none sent).
    fn connect(
        config: &Arc<ServerConfig>,
        sni: Option<&str>,
    ) -> (ClientConnection, ServerConnection) {
        let mut client_config = (*insecure_client_config()).clone();
        client_config.enable_sni = sni.is_some();
        let name = ServerName::try_from(sni.unwrap_or("unused.example").to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(config.clone()).unwrap();
        exchange(&mut client, &mut server);
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(client.alpn_protocol(), Some(ALPN_HTTP11));
        (client, server)
    }

    fn served(client: &ClientConnection) -> CertificateDer<'static> {
        client.peer_certificates().unwrap()[0].clone().into_owned()
    }

    /// Application data flows both ways.
    fn ping(client: &mut ClientConnection, server: &mut ServerConnection) {
        client.writer().write_all(b"ping").unwrap();
        exchange(client, server);
        let mut buf = [0; 4];
        server.reader().read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        server.writer().write_all(b"pong").unwrap();
        exchange(client, server);
        client.reader().read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[test]
    fn names_from_san_and_cn() {
        let dir = TempDir::new().unwrap();
        let san = generate(
            dir.path(),
            "san",
            "ignored.example",
            &["A.example", "*.w.example"],
        );
        assert_eq!(
            dns_names(&cert_der(&san)),
            Some(vec!["a.example".to_owned(), "*.w.example".to_owned()])
        );
        let cn = generate(dir.path(), "cn", "Cn.Example", &[]);
        assert_eq!(
            dns_names(&cert_der(&cn)),
            Some(vec!["cn.example".to_owned()])
        );
    }

    #[test]
    fn selects_by_sni() {
        let dir = TempDir::new().unwrap();
        let a = generate(dir.path(), "a", "a.example", &["a.example", "*.w.example"]);
        let b = generate(dir.path(), "b", "b.example", &["b.example", "x.w.example"]);
        let store = CertStore::load(&[a.clone(), b.clone()]).unwrap();
        let (a_der, b_der) = (cert_der(&a), cert_der(&b));
        let pick = |sni| store.select(sni).unwrap().cert[0].clone();
        assert_eq!(pick(Some("a.example")), a_der);
        assert_eq!(pick(Some("B.EXAMPLE.")), b_der, "case and trailing dot");
        assert_eq!(pick(Some("y.w.example")), a_der, "wildcard");
        assert_eq!(pick(Some("x.w.example")), b_der, "exact beats wildcard");
        assert_eq!(
            pick(Some("z.y.w.example")),
            a_der,
            "one label only: default"
        );
        assert_eq!(
            pick(Some("w.example")),
            a_der,
            "the wildcard's parent: default"
        );
        assert_eq!(pick(Some("other.example")), a_der, "default");
        assert_eq!(pick(None), a_der, "no SNI: default");
        // b first: b is the default, and still not the wildcard's.
        let store = CertStore::load(&[b, a]).unwrap();
        assert_eq!(store.select(None).unwrap().cert[0], b_der);
        assert_eq!(store.select(Some("q.w.example")).unwrap().cert[0], a_der);
        assert_eq!(
            store.names(),
            vec![
                vec!["b.example".to_owned(), "x.w.example".to_owned()],
                vec!["a.example".to_owned(), "*.w.example".to_owned()],
            ]
        );
    }

    #[test]
    fn key_formats() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        // SEC1 EC key ("EC PRIVATE KEY") and PKCS#1 RSA key ("RSA PRIVATE KEY").
        run(Command::new("openssl")
            .args([
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
            ])
            .arg(d.join("sec1.key")));
        run(Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(d.join("rsa.key"))
            .arg("2048"));
        for name in ["sec1", "rsa"] {
            let spec = CertSpec {
                cert: d.join(format!("{name}.pem")),
                key: d.join(format!("{name}.key")),
            };
            let header = std::fs::read_to_string(&spec.key).unwrap();
            assert!(header.contains("EC PRIVATE KEY") || header.contains("RSA PRIVATE KEY"));
            run(Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=k.example",
                ])
                .arg("-key")
                .arg(&spec.key)
                .arg("-out")
                .arg(&spec.cert));
            let store = CertStore::load(std::slice::from_ref(&spec)).unwrap();
            let config = server_config(Arc::new(store));
            let (client, _server) = connect(&config, Some("k.example"));
            assert_eq!(served(&client), cert_der(&spec), "{name}");
        }
    }

    #[test]
    fn bad_files_are_refused_and_the_old_set_stays() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let a = generate(d, "a", "a.example", &["a.example"]);
        let b = generate(d, "b", "b.example", &["b.example"]);
        let store = CertStore::load(std::slice::from_ref(&a)).unwrap();

        let mismatched = CertSpec {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let err = store.reload(&[b.clone(), mismatched]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: private key does not match the certificate in {}",
                b.key.display(),
                a.cert.display()
            )
        );

        let garbage = d.join("garbage.pem");
        std::fs::write(&garbage, b"this is not PEM\n").unwrap();
        let err = CertSet::load(&[CertSpec {
            cert: garbage.clone(),
            key: a.key.clone(),
        }])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate found", garbage.display())
        );

        let broken = d.join("broken.pem");
        std::fs::write(
            &broken,
            b"-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = store
            .reload(&[CertSpec {
                cert: broken.clone(),
                key: a.key.clone(),
            }])
            .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");

        // A CERTIFICATE section whose DER is not a certificate.
        let not_der = d.join("not-der.pem");
        std::fs::write(
            &not_der,
            b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = store
            .reload(&[CertSpec {
                cert: not_der.clone(),
                key: a.key.clone(),
            }])
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", not_der.display())),
            "{err}"
        );

        let err = store
            .reload(&[CertSpec {
                cert: a.cert.clone(),
                key: a.cert.clone(),
            }])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no private key found", a.cert.display())
        );

        let missing = d.join("missing.pem");
        let err = store
            .reload(&[CertSpec {
                cert: missing.clone(),
                key: a.key.clone(),
            }])
            .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", missing.display()))
        );

        assert!(matches!(store.reload(&[]), Err(TlsError::Empty)));

        // After all those failures the store still serves a.
        assert_eq!(
            store.select(Some("b.example")).unwrap().cert[0],
            cert_der(&a)
        );
        assert_eq!(store.names(), vec![vec!["a.example".to_owned()]]);
    }

    #[test]
    fn handshakes_serve_by_sni_and_survive_reload() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let a = generate(d, "a", "a.example", &["a.example", "*.w.example"]);
        let b = generate(d, "b", "b.example", &["b.example"]);
        let a2 = generate(d, "a2", "a.example", &["a.example"]);
        let store = Arc::new(CertStore::load(&[a.clone(), b.clone()]).unwrap());
        let config = server_config(store.clone());

        let (client, _) = connect(&config, Some("b.example"));
        assert_eq!(served(&client), cert_der(&b));
        let (client, _) = connect(&config, Some("v.w.example"));
        assert_eq!(served(&client), cert_der(&a));
        let (client, _) = connect(&config, None);
        assert_eq!(served(&client), cert_der(&a));

        let (mut before, mut before_server) = connect(&config, Some("a.example"));
        assert_eq!(served(&before), cert_der(&a));
        ping(&mut before, &mut before_server);

        store.reload(&[a2.clone(), b]).unwrap();
        let (mut after, mut after_server) = connect(&config, Some("a.example"));
        assert_eq!(served(&after), cert_der(&a2));
        ping(&mut after, &mut after_server);
        // The connection established before the reload carries on.
        ping(&mut before, &mut before_server);
        assert_eq!(served(&before), cert_der(&a));
    }

    #[test]
    fn sessions_resume() {
        let dir = TempDir::new().unwrap();
        let a = generate(dir.path(), "a", "a.example", &["a.example"]);
        let config = server_config(Arc::new(CertStore::load(&[a]).unwrap()));
        let client_config = insecure_client_config();
        for kind in [HandshakeKind::Full, HandshakeKind::Resumed] {
            let mut client =
                ClientConnection::new(client_config.clone(), "a.example".try_into().unwrap())
                    .unwrap();
            let mut server = ServerConnection::new(config.clone()).unwrap();
            exchange(&mut client, &mut server);
            assert_eq!(client.handshake_kind(), Some(kind));
        }
    }

    #[test]
    fn tls12_works_too() {
        let dir = TempDir::new().unwrap();
        let a = generate(dir.path(), "a", "a.example", &["a.example"]);
        let config = server_config(Arc::new(CertStore::load(&[a]).unwrap()));
        let client_config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                provider: Arc::new(ring::default_provider()),
            }))
            .with_no_client_auth();
        let mut client =
            ClientConnection::new(Arc::new(client_config), "a.example".try_into().unwrap())
                .unwrap();
        let mut server = ServerConnection::new(config).unwrap();
        exchange(&mut client, &mut server);
        assert_eq!(
            server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        ping(&mut client, &mut server);
    }

    #[test]
    fn der_walker_survives_truncation_and_mutation() {
        let dir = TempDir::new().unwrap();
        let a = generate(dir.path(), "a", "a.example", &["a.example", "*.w.example"]);
        let der = cert_der(&a).to_vec();
        for cut in 0..der.len() {
            // A prefix is never a certificate: the outer SEQUENCE's length overruns it.
            assert_eq!(dns_names(&der[..cut]), None, "cut at {cut}");
        }
        for at in 0..der.len() {
            for byte in [0x00, 0x30, 0x7f, 0x80, 0x84, 0x85, 0xff] {
                let mut mutated = der.clone();
                mutated[at] = byte;
                let _ = dns_names(&mutated);
            }
        }
    }

    proptest! {
        #[test]
        fn der_walker_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = dns_names(&data);
        }

        #[test]
        fn der_walker_never_panics_on_nested_shapes(
            parts in prop::collection::vec(
                (prop::sample::select(vec![0x30u8, 0x31, 0xa0, 0xa3, 0x04, 0x06, 0x82, 0x02]),
                 0u8..=0x86),
                0..40,
            ),
        ) {
            // Tag-length pairs with plausible tags and lengths, some long-form.
            let mut data = Vec::new();
            for (tag, len) in parts {
                data.extend_from_slice(&[tag, len]);
            }
            let _ = dns_names(&data);
        }
    }
}
