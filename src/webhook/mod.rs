//! Admission webhooks served by every kruise-manager replica: self-managed certificates shared
//! through a Secret, the caBundle of the webhook configurations kept current, and the handlers.

pub mod admission;
pub mod cert_sync;
pub mod certs;
pub mod configuration;
pub mod server;
pub mod tls;
