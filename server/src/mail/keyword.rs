//! Keywords (IMAP flags): the system ones and validated custom ones.
//! Keywords are case-insensitive and stored lower case.

use crate::error::{Error, Result};

/// Read.
pub const SEEN: &str = "$seen";
/// Flagged.
pub const FLAGGED: &str = "$flagged";
/// Replied to.
pub const ANSWERED: &str = "$answered";
/// A draft.
pub const DRAFT: &str = "$draft";
/// Forwarded.
pub const FORWARDED: &str = "$forwarded";

/// The system keywords.
pub const SYSTEM: [&str; 5] = [SEEN, FLAGGED, ANSWERED, DRAFT, FORWARDED];

/// Longest keyword, in bytes.
pub const MAX_KEYWORD_BYTES: usize = 128;
/// Most keywords on one email.
pub const MAX_KEYWORDS_PER_EMAIL: usize = 64;

/// Normalises a keyword (lower case) and checks it: 1 to 128 bytes of
/// printable ASCII without IMAP's atom-specials (`( ) { ] % * " \` and
/// space), so every keyword is also a valid IMAP flag.
pub fn normalize(keyword: &str) -> Result<String> {
    let k = keyword.to_ascii_lowercase();
    if k.is_empty() || k.len() > MAX_KEYWORD_BYTES {
        return Err(Error::invalid(format!("keyword {keyword:?}: 1 to {MAX_KEYWORD_BYTES} bytes")));
    }
    if let Some(bad) = k.chars().find(|c| !c.is_ascii_graphic() || "(){]%*\"\\".contains(*c)) {
        return Err(Error::invalid(format!("keyword {keyword:?}: {bad:?} is not allowed")));
    }
    Ok(k)
}

/// Normalises a list of keywords; the first bad one fails the whole list.
pub fn normalize_all<S: AsRef<str>>(keywords: &[S]) -> Result<Vec<String>> {
    let mut out: Vec<String> = keywords.iter().map(|k| normalize(k.as_ref())).collect::<Result<_>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_checked_and_normalised() {
        assert_eq!(normalize("$Seen").expect("ok"), "$seen");
        assert_eq!(normalize("Work-Project_7").expect("ok"), "work-project_7");
        for bad in ["", "two words", "paren(", "star*", "quote\"", "back\\slash", "brace]", "é", "tab\t"] {
            assert!(matches!(normalize(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
        assert!(normalize(&"k".repeat(MAX_KEYWORD_BYTES + 1)).is_err());
        assert_eq!(normalize_all(&["b", "A", "a"]).expect("ok"), vec!["a", "b"]);
    }
}
