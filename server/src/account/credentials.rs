//! The operator (`admin`) and SMTP gateway credentials: random secrets
//! generated into the data dir on first start, readable by the owner only.
//! Only their BLAKE3 hashes stay in memory; comparison is constant-time.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::{Error, Result};

/// Which credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Account administration.
    Admin,
    /// The SMTP gateway (deliver, outbound queue).
    Gateway,
}

impl Credential {
    /// File name in the data dir.
    pub const fn file_name(self) -> &'static str {
        match self {
            Credential::Admin => "admin.secret",
            Credential::Gateway => "gateway.secret",
        }
    }

    const fn prefix(self) -> &'static str {
        match self {
            Credential::Admin => "qadm_",
            Credential::Gateway => "qgw_",
        }
    }
}

/// A fresh random secret: `prefix` + 64 hex digits (256 bits).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The two service credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    admin: blake3::Hash,
    gateway: blake3::Hash,
}

impl Credentials {
    /// Loads the secrets from `dir`, creating any that are missing.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        Ok(Credentials {
            admin: blake3::hash(load_or_create(dir, Credential::Admin)?.as_bytes()),
            gateway: blake3::hash(load_or_create(dir, Credential::Gateway)?.as_bytes()),
        })
    }

    /// Checks a presented secret.
    pub fn check(&self, which: Credential, secret: &str) -> Result<()> {
        let want = match which {
            Credential::Admin => &self.admin,
            Credential::Gateway => &self.gateway,
        };
        // blake3::Hash compares in constant time.
        if blake3::hash(secret.trim().as_bytes()) == *want { Ok(()) } else { Err(Error::BadCredentials) }
    }

    /// Path of a credential's file in `dir`.
    pub fn path(dir: &Path, which: Credential) -> PathBuf {
        dir.join(which.file_name())
    }
}

fn load_or_create(dir: &Path, which: Credential) -> Result<String> {
    let path = Credentials::path(dir, which);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {
            return Err(Error::Internal(format!(
                "{} is empty; delete it to have a new secret generated",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Internal(format!("reading {}: {e}", path.display()))),
    }
    let secret = new_secret(which.prefix());
    write_private(&path, &format!("{secret}\n"))
        .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(secret)
}

/// Writes a file only its owner can read, durably, without replacing one
/// that already exists.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = tempfile::tempdir().expect("dir");
        let c = Credentials::load_or_create(dir.path()).expect("create");
        let admin = std::fs::read_to_string(dir.path().join("admin.secret")).expect("read");
        assert!(admin.starts_with("qadm_"));
        c.check(Credential::Admin, &admin).expect("admin ok");
        assert!(c.check(Credential::Gateway, &admin).is_err());
        assert!(c.check(Credential::Admin, "qadm_guess").is_err());
        let again = Credentials::load_or_create(dir.path()).expect("reload");
        again.check(Credential::Admin, &admin).expect("same secret after reload");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(dir.path().join("gateway.secret")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
