//! RFC 5321 paths: `<local@domain>` in `MAIL FROM` and `RCPT TO`.

/// Longest path (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;

/// A mailbox of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Local part, as written (case preserved: it may be significant).
    pub local: String,
    /// Domain, lower-cased.
    pub domain: String,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not `<...>`.
    #[error("a path is enclosed in angle brackets")]
    Brackets,
    /// Over a length limit.
    #[error("path too long")]
    TooLong,
    /// No `@` or an empty part.
    #[error("a mailbox is local-part@domain")]
    Shape,
    /// A character not allowed where it is.
    #[error("invalid character in path")]
    Character,
}

/// Parses a path. `Ok(None)` is the null reverse path `<>`.
pub fn parse(path: &str) -> Result<Option<Mailbox>, PathError> {
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let inner = path.strip_prefix('<').and_then(|p| p.strip_suffix('>')).ok_or(PathError::Brackets)?;
    if inner.is_empty() {
        return Ok(None);
    }
    // A source route (`@a,@b:user@c`) is accepted and ignored (§4.1.2).
    let inner = match inner.strip_prefix('@') {
        Some(route) => route.split_once(':').map(|(_, m)| m).ok_or(PathError::Shape)?,
        None => inner,
    };
    let (local, domain) = inner.rsplit_once('@').ok_or(PathError::Shape)?;
    if local.is_empty() || domain.is_empty() {
        return Err(PathError::Shape);
    }
    if local.len() > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(PathError::TooLong);
    }
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    let local_ok = if quoted {
        local[1..local.len() - 1].bytes().all(|b| (32..127).contains(&b))
    } else {
        local.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
    };
    let domain_ok = if let Some(lit) = domain.strip_prefix('[') {
        lit.strip_suffix(']').is_some_and(|l| {
            !l.is_empty() && l.bytes().all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        })
    } else {
        domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    };
    if !local_ok || !domain_ok {
        return Err(PathError::Character);
    }
    Ok(Some(Mailbox { local: local.to_owned(), domain: domain.to_ascii_lowercase() }))
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths() {
        assert_eq!(parse("<>"), Ok(None));
        let m = parse("<Alice.Smith+tag@Example.ORG>").expect("ok").expect("some");
        assert_eq!((m.local.as_str(), m.domain.as_str()), ("Alice.Smith+tag", "example.org"));
        assert!(parse("<\"odd local\"@example.org>").expect("quoted").is_some());
        assert!(parse("<postmaster@[192.0.2.1]>").expect("literal").is_some());
        assert_eq!(parse("<@relay.example:bob@example.org>").expect("route").expect("some").local, "bob");
    }

    #[test]
    fn bad_paths() {
        assert_eq!(parse("alice@example.org"), Err(PathError::Brackets));
        assert_eq!(parse("<alice>"), Err(PathError::Shape));
        assert_eq!(parse("<@example.org>"), Err(PathError::Shape));
        assert_eq!(parse("<a..b@example.org>"), Err(PathError::Character));
        assert_eq!(parse("<a b@example.org>"), Err(PathError::Character));
        assert_eq!(parse("<a@-bad.example>"), Err(PathError::Character));
        assert_eq!(parse(&format!("<{}@example.org>", "x".repeat(65))), Err(PathError::TooLong));
        assert_eq!(parse(&format!("<a@{}>", "x".repeat(300))), Err(PathError::TooLong));
    }
}
