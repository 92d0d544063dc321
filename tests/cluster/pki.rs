//! The certificates and keys a local control plane needs: one CA that signs the API server's serving
//! certificate and every client certificate, plus the service-account token signing key.
//!
//! Client identities follow Kubernetes' x509 authenticator: the certificate's CN is the user name
//! and its O is the group.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::ClusterError;

/// A PEM certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The cluster CA. Kept in memory so client certificates can be issued at any time.
pub struct Pki {
    dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_cert: PathBuf,
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Pki(format!("{what}: {e}"))
}

fn write(path: &Path, contents: &str) -> Result<(), ClusterError> {
    std::fs::write(path, contents).map_err(|e| ClusterError::io(path, e))
}

impl Pki {
    /// Creates a new CA and writes `ca.crt` into `dir`.
    pub fn create(dir: &Path) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(dir, e))?;
        let ca_key = KeyPair::generate().map_err(|e| pki_err("CA key", e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err("CA", e))?;
        ca_params.distinguished_name = name("kruise-rs local CA", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).map_err(|e| pki_err("CA", e))?;
        let ca_cert = dir.join("ca.crt");
        write(&ca_cert, &ca.pem())?;
        Ok(Self { dir: dir.to_path_buf(), ca_params, ca_key, ca_cert })
    }

    /// A serving certificate for the given DNS names and IP addresses.
    pub fn serving_cert(&self, file_stem: &str, sans: &[&str]) -> Result<CertFiles, ClusterError> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(|e| pki_err(file_stem, e))?;
        params.distinguished_name = name(file_stem, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file_stem, params)
    }

    /// A client certificate for `user`, optionally in `group` (e.g. `system:masters` for an admin).
    pub fn client_cert(&self, file_stem: &str, user: &str, group: Option<&str>) -> Result<CertFiles, ClusterError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err(file_stem, e))?;
        params.distinguished_name = name(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params)
    }

    /// A key pair for signing service-account tokens: `<stem>.key` (private) and `<stem>.pub`.
    pub fn signing_key(&self, file_stem: &str) -> Result<CertFiles, ClusterError> {
        let key = KeyPair::generate().map_err(|e| pki_err(file_stem, e))?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.pub")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        write(&files.cert, &key.public_key_pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    fn issue(&self, file_stem: &str, params: CertificateParams) -> Result<CertFiles, ClusterError> {
        let key = KeyPair::generate().map_err(|e| pki_err(file_stem, e))?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| pki_err(file_stem, e))?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
