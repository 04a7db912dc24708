//! DKIM signing of outgoing mail (RFC 6376; Ed25519 per RFC 8463) with
//! mail-auth: one key per sending domain, from PEM files named in the
//! config.

use std::path::Path;

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The header fields signed, when present.
const SIGNED: [&str; 12] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// A domain's signing key.
pub struct Key {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at
    /// `selector._domainkey.domain`.
    pub selector: String,
    signer: DkimSigner<DkimKey, Done>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from PEM text: PKCS#8 (Ed25519 or RSA) or PKCS#1 (RSA, 2048
    /// to 4096 bits).
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> anyhow::Result<Key> {
        let der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| anyhow::anyhow!("not a PEM private key: {e}"))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(p8) => {
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()) {
                    Ok(k) => DkimKey::Ed25519(k),
                    Err(_) => DkimKey::Rsa(
                        RsaKey::<Sha256>::from_key_der(der.clone_key())
                            .map_err(|e| anyhow::anyhow!("neither an Ed25519 nor a usable RSA key: {e}"))?,
                    ),
                }
            }
            PrivateKeyDer::Pkcs1(_) => DkimKey::Rsa(
                RsaKey::<Sha256>::from_key_der(der.clone_key())
                    .map_err(|e| anyhow::anyhow!("RSA key (2048 to 4096 bits): {e}"))?,
            ),
            _ => anyhow::bail!("DKIM keys are Ed25519 or RSA"),
        };
        anyhow::ensure!(
            !domain.is_empty() && !selector.is_empty(),
            "a DKIM key needs a domain and a selector"
        );
        let domain = domain.to_ascii_lowercase();
        let signer = DkimSigner::from_key(key).domain(domain.as_str()).selector(selector).headers(SIGNED);
        Ok(Key { domain, selector: selector.to_owned(), signer })
    }

    /// A key from a PEM file.
    pub fn load(domain: &str, selector: &str, path: &Path) -> anyhow::Result<Key> {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_pem(domain, selector, &pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The `DKIM-Signature` header field for `message` (CRLF-terminated,
    /// to put in front of it).
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<String> {
        let signature = self.signer.sign(message).map_err(|e| anyhow::anyhow!("DKIM signing: {e}"))?;
        Ok(signature.to_header())
    }
}

/// The key for mail from `mail_from`: its domain's, or a parent domain's.
pub fn key_for<'a>(keys: &'a [Key], mail_from: &str) -> Option<&'a Key> {
    let domain = mail_from.rsplit_once('@')?.1.to_ascii_lowercase();
    keys.iter().find(|k| domain == k.domain || domain.ends_with(&format!(".{}", k.domain)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519_pem() -> Vec<u8> {
        let pkcs8 = Ed25519Key::generate_pkcs8().expect("generate");
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pkcs8);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n").into_bytes()
    }

    #[test]
    fn an_ed25519_key_signs_and_the_header_names_domain_and_selector() {
        let key = Key::from_pem("Quail.test", "s1", &ed25519_pem()).expect("key");
        let header = key.sign(b"From: a@quail.test\r\nSubject: x\r\n\r\nbody\r\n").expect("sign");
        assert!(header.starts_with("DKIM-Signature: "), "{header}");
        assert!(
            header.contains("d=quail.test") && header.contains("s=s1") && header.contains("a=ed25519-sha256")
        );
        assert!(header.ends_with("\r\n"));
    }

    #[test]
    fn keys_are_chosen_by_the_sender_domain() {
        let keys = vec![Key::from_pem("quail.test", "s1", &ed25519_pem()).expect("key")];
        assert!(key_for(&keys, "a@quail.test").is_some());
        assert!(key_for(&keys, "a@eu.quail.test").is_some());
        assert!(key_for(&keys, "a@notquail.test").is_none());
        assert!(key_for(&keys, "").is_none());
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(Key::from_pem("d", "s", b"not pem").is_err());
        assert!(Key::from_pem("", "s", &ed25519_pem()).is_err());
    }
}
