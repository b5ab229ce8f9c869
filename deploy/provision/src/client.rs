//! Connecting to NATS as one provisioned identity.
//!
//! The options pin everything the server requires: TLS first (before any protocol byte), our CA
//! as the only trust root, the identity's client certificate, its nkey, and its own inbox prefix
//! (`_INBOX_<principal>`), so its request replies can never land in another identity's inbox.

use std::time::Duration;

use async_nats::ConnectOptions;
use protocol::{Principal, Subject};

use crate::error::ProvisionError;
use crate::files;
use crate::keys;
use crate::layout::Layout;

/// How long connecting (TCP, TLS and authentication) may take.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout of a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Client ping interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Installs ring as the process-wide rustls crypto provider, unless one is installed already.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is then in place.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Connect options for `principal` from the files in `layout`. Refuses a seed or key file that
/// group or others can read.
pub fn options(layout: &Layout, principal: &Principal) -> Result<ConnectOptions, ProvisionError> {
    install_crypto_provider();
    let seed = keys::load_nkey_seed(&layout.nkey_seed(principal))?;
    let (ca, cert, key) = (
        layout.ca_cert(),
        layout.client_cert(principal),
        layout.client_key(principal),
    );
    files::check_secret_mode(&key)?;
    for public in [&ca, &cert] {
        if !files::exists(public)? {
            return Err(ProvisionError::io(
                "open",
                public.as_path(),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
    }
    Ok(ConnectOptions::new()
        .name(principal.as_str())
        .require_tls(true)
        .tls_first()
        .add_root_certificates(ca)
        .add_client_certificate(cert, key)
        .nkey(seed.expose_seed().to_owned())
        .custom_inbox_prefix(Subject::inbox_prefix(principal))
        .connection_timeout(CONNECTION_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .ping_interval(PING_INTERVAL))
}

/// Connects to `url` as `principal`.
pub async fn connect(
    url: &str,
    layout: &Layout,
    principal: &Principal,
) -> Result<async_nats::Client, ProvisionError> {
    options(layout, principal)?
        .connect(url)
        .await
        .map_err(|e| ProvisionError::Connect {
            principal: principal.to_string(),
            source: e,
        })
}
