//! Reading certificates and keys from PEM files and buffers.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in `pem`; at least one.
pub(crate) fn certificates(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| invalid(origin, "certificate", err))?;
    if certs.is_empty() {
        return Err(invalid(
            origin,
            "certificate",
            "no CERTIFICATE section found",
        ));
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| invalid(origin, "private key", err))
}

fn invalid(origin: &str, what: &'static str, detail: impl ToString) -> Error {
    Error::Pem {
        origin: origin.to_owned(),
        what,
        detail: detail.to_string(),
    }
}
