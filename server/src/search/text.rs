//! What is indexed and how text becomes terms: Unicode word segmentation
//! (UAX #29, `unicode-segmentation`; CJK ideographs come out one per
//! word), case folding, and diacritics folded away (NFD, combining marks
//! dropped, `unicode-normalization`), so `Ärger`, `ärger` and `arger` are
//! one term.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_segmentation::UnicodeSegmentation;

/// A searchable field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Field {
    /// Internal terms: every document, has-attachment.
    Meta = 0,
    /// Subject.
    Subject = 1,
    /// From: display names and addresses.
    From = 2,
    /// To.
    To = 3,
    /// Cc.
    Cc = 4,
    /// Decoded text parts (HTML as text).
    Body = 5,
    /// Attachment file names.
    Filename = 6,
}

/// The fields a bare term searches.
pub const TEXT_FIELDS: [Field; 6] =
    [Field::Subject, Field::From, Field::To, Field::Cc, Field::Body, Field::Filename];

impl Field {
    /// The name used in queries and snippets.
    pub fn name(self) -> &'static str {
        match self {
            Field::Meta => "meta",
            Field::Subject => "subject",
            Field::From => "from",
            Field::To => "to",
            Field::Cc => "cc",
            Field::Body => "body",
            Field::Filename => "filename",
        }
    }

    /// The field a query operator names.
    pub fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "subject" => Field::Subject,
            "from" => Field::From,
            "to" => Field::To,
            "cc" => Field::Cc,
            "body" => Field::Body,
            "filename" => Field::Filename,
            _ => return None,
        })
    }
}

/// Longest term kept, in bytes (longer words are cut).
pub const MAX_TERM_BYTES: usize = 64;
/// Most body text indexed per message.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// The meta term every document has.
pub const ALL: &str = "all";
/// The meta term of documents with an attachment.
pub const ATTACHMENT: &str = "attachment";

/// The text of one message, by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    /// Each field's texts.
    pub fields: Vec<(Field, String)>,
    /// Whether it has an attachment.
    pub has_attachment: bool,
}

/// Folds one word: diacritics dropped, lower case, at most
/// [`MAX_TERM_BYTES`].
pub fn fold(word: &str) -> String {
    if word.is_ascii() {
        // Nothing to decompose: the common case, without the tables.
        let mut out = String::new();
        fold_ascii_into(word, &mut out);
        return out;
    }
    let mut out: String =
        word.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect();
    if out.len() > MAX_TERM_BYTES {
        let mut cut = MAX_TERM_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// [`fold`] of an ASCII `word`, into `out` (replacing what it held).
fn fold_ascii_into(word: &str, out: &mut String) {
    out.clear();
    out.push_str(&word[..word.len().min(MAX_TERM_BYTES)]);
    out.make_ascii_lowercase();
}

/// The words of `text` with their byte ranges, folded.
pub fn words(text: &str) -> Box<dyn Iterator<Item = (usize, usize, String)> + '_> {
    let fold_at = |(i, w): (usize, &str)| {
        let f = fold(w);
        (!f.is_empty()).then(|| (i, i + w.len(), f))
    };
    if text.is_ascii() {
        return Box::new(ascii_words(text).map(move |(a, b)| (a, &text[a..b])).filter_map(fold_at));
    }
    Box::new(
        text.split_word_bound_indices()
            .filter(|(_, w)| w.chars().any(char::is_alphanumeric))
            .filter_map(fold_at),
    )
}

/// ASCII's word classes in UAX #29.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    /// `_` (ExtendNumLet).
    Joiner,
    /// `:` (MidLetter).
    MidLetter,
    /// `.` and `'` (MidNumLet, Single_Quote).
    MidBoth,
    /// `,` and `;` (MidNum).
    MidNum,
    Other,
}

const fn class_of(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Digit,
        b'_' => Class::Joiner,
        b':' => Class::MidLetter,
        b'.' | b'\'' => Class::MidBoth,
        b',' | b';' => Class::MidNum,
        _ => Class::Other,
    }
}

/// [`class_of`] of every byte, looked up rather than matched per byte.
static CLASSES: [Class; 256] = {
    let mut t = [Class::Other; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = class_of(b as u8);
        b += 1;
    }
    t
};

fn class(b: u8) -> Class {
    CLASSES[usize::from(b)]
}

/// The byte ranges of the word segments of ASCII `text` that hold a
/// letter or digit: exactly those of UAX #29 (rules WB5 to WB13b, the only
/// ones ASCII reaches), without its tables. `unicode-segmentation` is
/// checked against this in the tests.
fn ascii_words(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            while i < b.len() && !matches!(class(b[i]), Class::Letter | Class::Digit | Class::Joiner) {
                i += 1;
            }
            if i >= b.len() {
                return None;
            }
            let start = i;
            let mut alnum = false;
            loop {
                let c = class(b[i]);
                alnum |= c != Class::Joiner;
                let next = b.get(i + 1).map(|&x| class(x));
                match next {
                    Some(Class::Letter | Class::Digit | Class::Joiner) => i += 1,
                    Some(m @ (Class::MidLetter | Class::MidBoth | Class::MidNum)) => {
                        let after = b.get(i + 2).map(|&x| class(x));
                        let joins = match (c, after) {
                            (Class::Letter, Some(Class::Letter)) => m != Class::MidNum,
                            (Class::Digit, Some(Class::Digit)) => m != Class::MidLetter,
                            _ => false,
                        };
                        if joins {
                            i += 2;
                        } else {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            i += 1;
            if alnum {
                return Some((start, i));
            }
        }
    })
}

/// Calls `f` with each folded word of `text`, in order: the words of
/// [`words`], without an allocation per word where a line is ASCII (UAX #29
/// always breaks at a line feed, so each line is segmented on its own).
pub fn each_word(text: &str, mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    for line in text.split('\n') {
        if !line.is_ascii() {
            for (_, _, w) in words(line) {
                f(&w);
            }
            continue;
        }
        for (a, b) in ascii_words(line) {
            fold_ascii_into(&line[a..b], &mut buf);
            f(&buf);
        }
    }
}

/// The folded words of `text`.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_word(text, |w| out.push(w.to_owned()));
    out
}

impl Document {
    /// The folded words of one field, in order, all its texts joined.
    pub fn field_tokens(&self, field: Field) -> Vec<Vec<String>> {
        self.fields.iter().filter(|(f, _)| *f == field).map(|(_, t)| tokens(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_diacritics_fold() {
        assert_eq!(tokens("Ärger über Café, NAÏVE"), vec!["arger", "uber", "cafe", "naive"]);
    }

    #[test]
    fn cjk_splits_into_ideographs_and_latin_words_stay_whole() {
        let t = tokens("会議の資料 invoice-2024 alice@example.org");
        assert!(t.contains(&"会".to_owned()) && t.contains(&"議".to_owned()), "{t:?}");
        assert!(t.contains(&"invoice".to_owned()) && t.contains(&"2024".to_owned()), "{t:?}");
        assert!(t.contains(&"alice".to_owned()) && t.contains(&"example.org".to_owned()), "{t:?}");
    }

    #[test]
    fn punctuation_is_not_a_term_and_long_words_are_cut() {
        assert!(tokens("-- !! ...").is_empty());
        let long = "x".repeat(500);
        assert_eq!(tokens(&long)[0].len(), MAX_TERM_BYTES);
    }

    #[test]
    fn the_ascii_fast_path_segments_exactly_as_uax29() {
        let alphabet = b"aZq09_:.',; -\n!\"@/";
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let text: String = (0..len)
                .map(|k| alphabet[((seed >> (k % 8 * 8)) as usize + k * 7) % alphabet.len()] as char)
                .collect();
            let fast: Vec<&str> = ascii_words(&text).map(|(a, b)| &text[a..b]).collect();
            let uax: Vec<&str> =
                text.split_word_bounds().filter(|w| w.chars().any(char::is_alphanumeric)).collect();
            assert_eq!(fast, uax, "{text:?}");
        }
        for text in ["e.g. don't 3.14 1,000 a:b a_b _x x_ a.1 1.a it's.", "foo__bar ..x.. 'quoted' 1;2 a;b"] {
            let fast: Vec<&str> = ascii_words(text).map(|(a, b)| &text[a..b]).collect();
            let uax: Vec<&str> =
                text.split_word_bounds().filter(|w| w.chars().any(char::is_alphanumeric)).collect();
            assert_eq!(fast, uax, "{text:?}");
        }
    }

    #[test]
    fn each_word_gives_the_words_of_uax29_segmentation() {
        for text in [
            "Hello, Wörld\nplain ascii line\r\nüber\n\nit's 3.14 e-mail\n会議の資料 x",
            "no newline at all",
            "",
            "\n\n",
            &"y".repeat(200),
            "lone\rreturn and\x0bvertical\x0ctab\u{85}nel\u{2028}ls\u{2029}ps",
            "\u{301}mark at a line start\n\u{301}again",
            &format!("über {} ünd", "z".repeat(200)),
        ] {
            let mut got = Vec::new();
            each_word(text, |w| got.push(w.to_owned()));
            let segmented: Vec<String> = words(text).map(|(_, _, w)| w).collect();
            assert_eq!(got, segmented, "{text:?}");
        }
    }

    #[test]
    fn word_ranges_point_into_the_text() {
        let text = "Hello, Wörld";
        let w: Vec<_> = words(text).collect();
        assert_eq!(&text[w[1].0..w[1].1], "Wörld");
        assert_eq!(w[1].2, "world");
    }
}
