//! The local certificate authority and the certificates it issues (ECDSA P-256, via rcgen).
//!
//! The CA signs one server certificate (for nats-server) and one client certificate per identity
//! (CN = principal, clientAuth only). Nothing here touches the disk; `generate` decides what to
//! create and writes the PEM text this module returns.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::error::ProvisionError;

/// Common name of the local CA.
pub(crate) const CA_COMMON_NAME: &str = "assistant local CA";
/// Common name of the server certificate.
pub(crate) const SERVER_COMMON_NAME: &str = "nats";
/// CA validity.
const CA_DAYS: i64 = 3650;
/// Leaf certificate validity. Renewal: delete the `.pem` (keep the `.key`) and run again.
const LEAF_DAYS: i64 = 825;
/// Back-dating of `not_before`, for clocks that disagree slightly.
const BACKDATE_HOURS: i64 = 1;

/// A freshly generated certificate and private key, both PEM.
pub(crate) struct Issued {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: Zeroizing<String>,
}

/// A CA able to issue certificates.
pub(crate) struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Certificate {
        what: what.to_owned(),
        source,
    }
}

fn random_serial() -> Result<SerialNumber, ProvisionError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(ProvisionError::Random)?;
    // Positive and never zero-length when DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(BACKDATE_HOURS);
    params.not_after = now + Duration::days(days);
}

fn ca_params() -> Result<CertificateParams, ProvisionError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // The CA signs leaf certificates only: no intermediate CAs below it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    validity(&mut params, CA_DAYS);
    Ok(params)
}

impl Authority {
    /// A new CA with a fresh key. Returns it with its certificate and key as PEM.
    pub(crate) fn generate() -> Result<(Authority, Issued), ProvisionError> {
        let key = KeyPair::generate().map_err(cert_error("CA key"))?;
        let params = ca_params()?;
        let cert = params.self_signed(&key).map_err(cert_error("CA"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        };
        Ok((
            Authority {
                issuer: Issuer::new(params, key),
            },
            issued,
        ))
    }

    /// The CA from its stored certificate and key.
    pub(crate) fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, ProvisionError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_error("CA"))?;
        Ok(Authority { issuer })
    }

    /// A certificate for the nats-server, valid for `hosts` (DNS names or IP addresses).
    pub(crate) fn issue_server(
        &self,
        hosts: &[String],
        key: Option<KeyPair>,
    ) -> Result<Issued, ProvisionError> {
        let mut params =
            CertificateParams::new(hosts.to_vec()).map_err(cert_error("server host name"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, SERVER_COMMON_NAME);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_leaf(params, key, "server")
    }

    /// A client certificate for one principal (CN = principal, clientAuth only).
    pub(crate) fn issue_client(
        &self,
        principal: &str,
        key: Option<KeyPair>,
    ) -> Result<Issued, ProvisionError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, principal);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_leaf(params, key, principal)
    }

    fn issue_leaf(
        &self,
        mut params: CertificateParams,
        key: Option<KeyPair>,
        what: &str,
    ) -> Result<Issued, ProvisionError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        validity(&mut params, LEAF_DAYS);
        let key = match key {
            Some(k) => k,
            None => KeyPair::generate().map_err(cert_error(what))?,
        };
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error(what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// Parses a stored private key (to re-issue a certificate for it).
pub(crate) fn load_key(key_pem: &str, what: &str) -> Result<KeyPair, ProvisionError> {
    KeyPair::from_pem(key_pem).map_err(cert_error(what))
}
