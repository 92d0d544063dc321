//! The webhook's certificates: a self-managed CA and a serving certificate, kept in one Secret
//! shared by every replica, in upstream's layout so either implementation can take over the
//! other's Secret.
//!
//! Upstream generates RSA 2048 keys; `ring` cannot generate RSA keys, so kruise-rs generates ECDSA
//! P-256 ones. It loads either kind: an upstream Secret keeps serving until it needs renewal.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Secret keys, as upstream writes them (`tls.*` are copies of the serving pair).
pub const CA_KEY: &str = "ca-key.pem";
pub const CA_CERT: &str = "ca-cert.pem";
pub const KEY: &str = "key.pem";
pub const CERT: &str = "cert.pem";
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CERT: &str = "tls.crt";

/// The CA's common name, as upstream's.
const CA_COMMON_NAME: &str = "webhook-cert-ca";
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// A serving certificate must stay valid this much longer, or it is renewed now.
pub const RENEW_BEFORE: Duration = Duration::from_secs(182 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("loading {what}: {message}")]
    Load { what: &'static str, message: String },
}

/// The four PEM documents of the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_key: String,
    pub ca_cert: String,
    pub key: String,
    pub cert: String,
}

impl CertBundle {
    /// From a Secret's data; `None` unless all four documents are there (Helm creates the Secret
    /// empty).
    pub fn from_secret_data(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        Some(Self { ca_key: get(CA_KEY)?, ca_cert: get(CA_CERT)?, key: get(KEY)?, cert: get(CERT)? })
    }

    /// The Secret's data: the four documents plus the `tls.*` copies.
    pub fn secret_data(&self) -> Vec<(&'static str, &str)> {
        vec![
            (CA_KEY, self.ca_key.as_str()),
            (CA_CERT, self.ca_cert.as_str()),
            (KEY, self.key.as_str()),
            (CERT, self.cert.as_str()),
            (TLS_KEY, self.key.as_str()),
            (TLS_CERT, self.cert.as_str()),
        ]
    }

    /// The serving key pair for rustls; fails when the key does not match the certificate.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let load =
            |what: &'static str| move |e: &dyn std::fmt::Display| CertError::Load { what, message: e.to_string() };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| load("the serving certificate")(&e))?;
        if certs.is_empty() {
            return Err(load("the serving certificate")(&"no certificate in the PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| load("the serving key")(&e))?;
        let signer = any_supported_type(&key).map_err(|e| load("the serving key")(&e))?;
        let ck = CertifiedKey::new(certs, signer);
        ck.keys_match().map_err(|e| load("the serving key pair")(&e))?;
        Ok(Arc::new(ck))
    }

    /// Whether the bundle can serve `host` from now until `until`: the key matches the certificate
    /// and the certificate chains to the bundle's CA for `host` at that time.
    pub fn serves(&self, host: &str, until: SystemTime) -> bool {
        let Ok(ck) = self.certified_key() else { return false };
        let Some(leaf) = ck.cert.first() else { return false };
        chains_to(&self.ca_cert, leaf, &ck.cert[1..], host, until)
    }
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Whether `leaf` verifies against `ca_pem` as a server certificate for `host` at time `at`.
fn chains_to(
    ca_pem: &str,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &str,
    at: SystemTime,
) -> bool {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        if roots.add(ca).is_err() {
            return false;
        }
    }
    if roots.is_empty() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host.to_string()) else { return false };
    verifier.verify_server_cert(leaf, intermediates, &name, &[], unix(at)).is_ok()
}

fn ca_params(now: SystemTime) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + 10 * YEAR).into();
    Ok(params)
}

/// A serving certificate for `host` (a DNS name or an IPv4 address) signed by `issuer`.
fn issue_leaf(host: &str, issuer: &Issuer<'_, &KeyPair>, now: SystemTime) -> Result<(KeyPair, String), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    params.distinguished_name = dn;
    params.subject_alt_names = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SanType::IpAddress(ip)],
        Err(_) => vec![SanType::DnsName("localhost".try_into()?), SanType::DnsName(host.try_into()?)],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + 10 * YEAR).into();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((key, cert.pem()))
}

/// The stored CA, if its key can sign here, it matches the certificate and it stays valid until
/// `until`: checked by issuing a throw-away certificate and verifying it at that time.
fn reusable_ca(previous: &CertBundle, now: SystemTime, until: SystemTime) -> Option<KeyPair> {
    const PROBE: &str = "ca-probe.invalid";
    let key = KeyPair::from_pem(&previous.ca_key).ok()?;
    let (_, probe_pem) = issue_leaf(PROBE, &Issuer::new(ca_params(now).ok()?, &key), now).ok()?;
    let probe = CertificateDer::from_pem_slice(probe_pem.as_bytes()).ok()?;
    (ca_valid(&previous.ca_cert, until) && chains_to(&previous.ca_cert, &probe, &[], PROBE, until)).then_some(key)
}

/// A new bundle for `host` (a DNS name or an IPv4 address). The CA of `previous` is kept when it
/// is still good for a year and its key can sign here (so caBundles stay valid); otherwise a new
/// CA is made too.
pub fn generate(host: &str, previous: Option<&CertBundle>, now: SystemTime) -> Result<CertBundle, CertError> {
    let kept = previous.and_then(|p| reusable_ca(p, now, now + YEAR).map(|key| (key, p.ca_cert.clone())));
    let (ca_key, ca_cert) = match kept {
        Some(kept) => kept,
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params(now)?.self_signed(&key)?;
            (key, cert.pem())
        }
    };
    // The leaf names its issuer by the CA's distinguished name and key: the same name and key as
    // the stored CA certificate, so it chains to it.
    let (key, cert) = issue_leaf(host, &Issuer::new(ca_params(now)?, &ca_key), now)?;
    Ok(CertBundle { ca_key: ca_key.serialize_pem(), ca_cert, key: key.serialize_pem(), cert })
}

/// A DER tag-length-value: its tag, its content and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (tag 0x17) or GeneralizedTime (0x18) in seconds since the epoch.
fn der_time(tag: u8, content: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(content).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i16 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2).and_then(|v| v.parse::<i8>().ok());
    let dt = jiff::civil::date(year, n(0)?, n(2)?).at(n(4)?, n(6)?, n(8)?, 0);
    Some(dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second())
}

/// notAfter of a DER certificate, in seconds since the epoch. (webpki does not check the
/// validity of trust anchors, so the CA's own expiry is read here.)
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xA0 {
        rest = tlv(rest)?.2; // the version came first: skip the serial number too
    }
    let rest = tlv(rest)?.2; // signature algorithm
    let rest = tlv(rest)?.2; // issuer
    let (_, validity, _) = tlv(rest)?;
    let (_, _, after) = tlv(validity)?; // skip notBefore
    let (tag, time, _) = tlv(after)?;
    der_time(tag, time)
}

/// Whether the first certificate of `ca_pem` is still valid at `at`.
fn ca_valid(ca_pem: &str, at: SystemTime) -> bool {
    let Some(Ok(ca)) = CertificateDer::pem_slice_iter(ca_pem.as_bytes()).next() else { return false };
    let at = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    not_after(ca.as_ref()).is_some_and(|t| at <= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn a_new_bundle_serves_its_host_for_years_and_nothing_else() {
        let b = generate("kruise-webhook-service.kruise-system.svc", None, now()).unwrap();
        assert!(b.serves("kruise-webhook-service.kruise-system.svc", now() + RENEW_BEFORE));
        assert!(b.serves("localhost", now()));
        assert!(!b.serves("other.kruise-system.svc", now()), "only its own names");
        assert!(!b.serves("kruise-webhook-service.kruise-system.svc", now() + 11 * YEAR), "expired by then");
        let ip = generate("127.0.0.1", None, now()).unwrap();
        assert!(ip.serves("127.0.0.1", now() + RENEW_BEFORE), "an IP host gets an IP SAN");
    }

    #[test]
    fn renewal_keeps_a_ca_that_is_still_good() {
        let host = "svc.ns.svc";
        let first = generate(host, None, now()).unwrap();
        let second = generate(host, Some(&first), now()).unwrap();
        assert_eq!(second.ca_cert, first.ca_cert, "the CA is kept, so caBundles stay valid");
        assert_ne!(second.key, first.key, "a new serving key");
        assert!(second.serves(host, now() + RENEW_BEFORE));
        // A CA that would expire within the year is replaced.
        let later = now() + 10 * YEAR - Duration::from_secs(24 * 3600);
        let third = generate(host, Some(&first), later).unwrap();
        assert_ne!(third.ca_cert, first.ca_cert);
    }

    #[test]
    fn certificate_dates_are_read_from_der() {
        let b = generate("svc.ns.svc", None, now()).unwrap();
        let ca = CertificateDer::from_pem_slice(b.ca_cert.as_bytes()).unwrap();
        let expected = (now() + 10 * YEAR).duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let got = not_after(ca.as_ref()).expect("notAfter");
        assert!((got - expected).abs() < 5, "{got} vs {expected}");
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2524607999), "UTCTime years below 50 are 20xx");
        assert_eq!(der_time(0x17, b"500101000000Z"), Some(-631152000), "and from 50 on 19xx");
        assert_eq!(der_time(0x18, b"20260101000000Z"), Some(1767225600));
        assert_eq!(not_after(&[0x30, 0x05, 0x01]), None, "truncated DER is refused, not read past");
    }

    #[test]
    fn mismatched_or_foreign_pieces_do_not_serve() {
        let host = "svc.ns.svc";
        let a = generate(host, None, now()).unwrap();
        let b = generate(host, None, now()).unwrap();
        let wrong_key = CertBundle { key: b.key.clone(), ..a.clone() };
        assert!(wrong_key.certified_key().is_err(), "a key that is not the certificate's");
        assert!(!wrong_key.serves(host, now()));
        let foreign_ca = CertBundle { ca_cert: b.ca_cert.clone(), ..a.clone() };
        assert!(!foreign_ca.serves(host, now()), "a certificate another CA signed");
        assert!(CertBundle::from_secret_data(|_| None).is_none(), "an empty Secret has no bundle");
        let data: std::collections::BTreeMap<&str, &str> = a.secret_data().into_iter().collect();
        assert_eq!(data.len(), 6);
        assert_eq!(CertBundle::from_secret_data(|k| data.get(k).map(|v| v.to_string())), Some(a.clone()));
    }
}
