//! argon2id password hashing (the `argon2` crate's defaults: 19 MiB, two
//! passes, one lane — OWASP's recommended minimum).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::{Error, Result};

/// Hashes a password into PHC string form.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing password: {e}")))
}

thread_local! {
    /// The argon2 working memory of this thread, kept between checks: a
    /// fresh 19 MiB allocation per check leaves freed buffers in every
    /// allocator arena; one buffer per hashing thread bounds it exactly.
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` matches the PHC `hash`. A malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        // Not ours: let the crate judge it, with its own memory.
        return Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
    }
    let (Ok(params), Some(salt), Some(expected)) = (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(Algorithm::Argon2id, version, params.clone());
    let ok = MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        m.resize(params.block_count(), Block::default());
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut m[..]).is_ok()
    });
    // `Output` compares in constant time.
    ok && Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
        assert!(!verify_password("not a hash", "correct horse"));
        // The same verdicts as the crate's own verifier, on its own hashes.
        let parsed = PasswordHash::new(&h).expect("parse");
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        let tampered = h.replace("$argon2id$", "$argon2i$");
        assert!(!verify_password(&tampered, "correct horse"));
    }
}
