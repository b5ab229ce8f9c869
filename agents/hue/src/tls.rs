//! TLS to the bridge: the end-entity certificate is pinned.
//!
//! A real bridge presents a certificate signed by the Signify private root, with the bridge id
//! as its common name and usually no subject alternative name, and it is reached by IP address,
//! so neither public roots nor host names can authenticate it. [`PinnedCert`] accepts exactly
//! one certificate: the one whose DER encoding has the configured SHA-256 (compared in
//! constant time). The handshake signature is still verified with that certificate's key (ring's
//! algorithms), so only the holder of the bridge's private key passes.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// The SHA-256 of a certificate's DER encoding.
pub type Pin = [u8; 32];

/// Accepts exactly the pinned end-entity certificate.
#[derive(Debug)]
pub struct PinnedCert {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The error a pin mismatch surfaces as. Nothing else in this agent's TLS stack produces it, so
/// it identifies a mismatch in the error chain ([`is_pin_mismatch`]).
const MISMATCH: CertificateError = CertificateError::ApplicationVerificationFailure;

fn constant_time_eq(a: &Pin, b: &[u8]) -> bool {
    if b.len() != a.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        if constant_time_eq(&self.pin, digest.as_slice()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(MISMATCH))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3, HTTP/1.1) that trusts only the
/// certificate pinned by `pin`.
pub fn client_config(pin: Pin) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCert {
        pin,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Parses a pin: 64 hex digits (either case).
pub fn parse_pin(text: &str) -> Option<Pin> {
    let mut pin = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    hex::decode_to_slice(text, &mut pin).ok()?;
    Some(pin)
}

/// Whether an error (or anything in its chain, including errors wrapped in `io::Error`, however
/// deeply) is a pin mismatch.
pub fn is_pin_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    walk(error, 0)
}

fn walk(e: &(dyn std::error::Error + 'static), depth: usize) -> bool {
    if depth > 32 {
        return false;
    }
    if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>()
        && *c == MISMATCH
    {
        return true;
    }
    // `io::Error::source` skips the error it wraps; look at that error directly.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        && walk(inner, depth + 1)
    {
        return true;
    }
    e.source().is_some_and(|s| walk(s, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64), Some([0xab; 32]));
        assert_eq!(parse_pin(&hex64.to_uppercase()), Some([0xab; 32]));
        assert_eq!(parse_pin(&"ab".repeat(31)), None);
        assert_eq!(parse_pin(&format!("{}zz", "ab".repeat(31))), None);
        assert_eq!(parse_pin(""), None);
    }

    #[test]
    fn the_comparison_needs_every_byte() {
        let pin = [7u8; 32];
        assert!(constant_time_eq(&pin, &[7u8; 32]));
        let mut other = [7u8; 32];
        other[31] = 8;
        assert!(!constant_time_eq(&pin, &other));
        assert!(!constant_time_eq(&pin, &[7u8; 31]));
    }

    #[test]
    fn a_mismatch_is_found_through_io_errors() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(MISMATCH),
        );
        assert!(is_pin_mismatch(&wrapped));
        // As hyper-util hands it over: an io::Error wrapping an io::Error wrapping the TLS error.
        let twice = std::io::Error::other(wrapped);
        assert!(is_pin_mismatch(&twice));
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert!(!is_pin_mismatch(&other));
        assert!(!is_pin_mismatch(&std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )));
    }
}
