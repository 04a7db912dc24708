//! The search query language, Gmail-like, parsed into an AST.
//!
//! ```text
//! invoice alice               both words, anywhere
//! "quarterly report"          the words in this order, in one field
//! subject:invoice from:alice  scoped: subject from to cc body filename
//! from:(alice OR bob)         a scope over a group of words and phrases
//! invo*                       a prefix (search as you type)
//! a OR b    -spam    (a OR b) c
//! is:unread is:read is:flagged in:inbox has:attachment
//! before:2024-01-31 after:2023-12-01 larger:1M smaller:20k
//! ```
//!
//! Juxtaposition is AND; `OR` (upper case) binds tighter than it, as in
//! Gmail; `-` negates what follows. Errors name the byte position and what
//! was expected there.

use super::text::{self, Field};

/// Most terms (words, phrases, operators) in one query.
pub const MAX_TERMS: usize = 64;
/// Deepest parenthesis nesting.
pub const MAX_DEPTH: usize = 16;

/// A keyword state `is:` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// No `$seen`.
    Unread,
    /// `$seen`.
    Read,
    /// `$flagged`.
    Flagged,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A folded word in a field (`None`: any text field); `prefix` for `word*`.
    Term { field: Option<Field>, word: String, prefix: bool },
    /// Folded words in this order in one field (`None`: any).
    Phrase { field: Option<Field>, words: Vec<String> },
    /// All of them.
    And(Vec<Node>),
    /// Any of them.
    Or(Vec<Node>),
    /// Not this.
    Not(Box<Node>),
    /// `is:`.
    Is(Flag),
    /// `in:MAILBOX` (a name or a role).
    In(String),
    /// In the mailbox with this id (structured filters only).
    InId(u64),
    /// `has:attachment`.
    HasAttachment,
    /// Received before this day (ms, midnight UTC).
    Before(i64),
    /// Received on or after this day (ms, midnight UTC).
    After(i64),
    /// Larger than this many bytes.
    Larger(u64),
    /// Smaller than this many bytes.
    Smaller(u64),
}

/// Why a query does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the query.
    pub position: usize,
    /// What was expected or wrong there.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.position, self.message)
    }
}

/// The operators, for error messages.
const OPERATORS: &str = "subject: from: to: cc: body: filename: is: in: has: before: after: larger: smaller:";

/// Parses `input` (at most `max_bytes`).
pub fn parse(input: &str, max_bytes: usize) -> Result<Node, ParseError> {
    if input.len() > max_bytes {
        return Err(ParseError {
            position: max_bytes,
            message: format!("the query is {} bytes; at most {max_bytes}", input.len()),
        });
    }
    let mut p = Parser { s: input, at: 0, terms: 0, depth: 0, scope: None };
    let node = p.or()?;
    p.space();
    if p.at < p.s.len() {
        let c = p.peek().unwrap_or(' ');
        return Err(p.err(if c == ')' { "an unmatched ')'".into() } else { format!("unexpected {c:?}") }));
    }
    match node {
        Some(n) => Ok(n),
        None => {
            Err(ParseError { position: 0, message: "an empty query; expected a word or an operator".into() })
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
    terms: usize,
    depth: usize,
    /// The field of the scoped group being read (`from:( ... )`): its
    /// words and phrases are in it.
    scope: Option<Field>,
}

impl Parser<'_> {
    fn err(&self, message: String) -> ParseError {
        ParseError { position: self.at, message }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.at..].chars().next()
    }

    fn space(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.at += c.len_utf8();
        }
    }

    fn count(&mut self) -> Result<(), ParseError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(self.err(format!("more than {MAX_TERMS} terms; narrow the query")));
        }
        Ok(())
    }

    /// Whether the input continues with the keyword `OR` as a word.
    fn at_or(&self) -> bool {
        let rest = &self.s[self.at..];
        rest.starts_with("OR") && rest[2..].chars().next().is_none_or(|c| c.is_whitespace() || c == '(')
    }

    /// and ('OR' and)* — but OR binds tighter: `a b OR c` is `a (b OR c)`.
    fn or(&mut self) -> Result<Option<Node>, ParseError> {
        let mut items: Vec<Node> = Vec::new();
        loop {
            self.space();
            match self.peek() {
                None | Some(')') => break,
                _ => {}
            }
            if self.at_or() {
                return Err(self.err("a term before OR".into()));
            }
            let mut alt = vec![self.unary()?];
            loop {
                let save = self.at;
                self.space();
                if self.at_or() {
                    self.at += 2;
                    self.space();
                    if matches!(self.peek(), None | Some(')')) || self.at_or() {
                        return Err(self.err("a term after OR".into()));
                    }
                    alt.push(self.unary()?);
                } else {
                    self.at = save;
                    break;
                }
            }
            items.push(if alt.len() == 1 { alt.remove(0) } else { Node::Or(alt) });
        }
        Ok(match items.len() {
            0 => None,
            1 => items.pop(),
            _ => Some(Node::And(items)),
        })
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.peek() == Some('-') {
            self.at += 1;
            if matches!(self.peek(), None | Some(' ') | Some(')')) {
                return Err(self.err("a term after '-'".into()));
            }
            return Ok(Node::Not(Box::new(self.primary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        match self.peek() {
            Some('(') => {
                let open = self.at;
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.err(format!("parentheses nest deeper than {MAX_DEPTH}")));
                }
                let inner = self.or()?;
                self.space();
                if self.peek() != Some(')') {
                    return Err(ParseError {
                        position: open,
                        message: "an unclosed '('; expected ')'".into(),
                    });
                }
                self.at += 1;
                self.depth -= 1;
                inner.ok_or_else(|| ParseError { position: open, message: "empty parentheses".into() })
            }
            Some('"') => {
                self.count()?;
                let words = self.quoted()?;
                Ok(phrase(self.scope, words))
            }
            _ => self.word_or_operator(),
        }
    }

    /// A quoted phrase's folded words (the opening quote is next).
    fn quoted(&mut self) -> Result<Vec<String>, ParseError> {
        let open = self.at;
        self.at += 1;
        let Some(len) = self.s[self.at..].find('"') else {
            return Err(ParseError {
                position: open,
                message: "an unclosed '\"'; expected a closing quote".into(),
            });
        };
        let words = text::tokens(&self.s[self.at..self.at + len]);
        self.at += len + 1;
        if words.is_empty() {
            return Err(ParseError { position: open, message: "an empty phrase".into() });
        }
        Ok(words)
    }

    /// A bare run up to whitespace or a parenthesis.
    fn bare(&mut self) -> &str {
        let start = self.at;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == '(' || c == ')' || c == '"' {
                break;
            }
            self.at += c.len_utf8();
        }
        &self.s[start..self.at]
    }

    fn word_or_operator(&mut self) -> Result<Node, ParseError> {
        let start = self.at;
        self.count()?;
        // An operator is letters then ':'.
        let rest = &self.s[self.at..];
        let name_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        if name_len > 0 && rest[name_len..].starts_with(':') {
            let name = rest[..name_len].to_ascii_lowercase();
            self.at += name_len + 1;
            let value_at = self.at;
            if let Some(outer) = self.scope {
                return Err(ParseError {
                    position: start,
                    message: format!(
                        "{name}: inside {}:( ); a scoped group holds words, phrases, OR and -",
                        outer.name()
                    ),
                });
            }
            if let Some(field) = Field::from_name(&name) {
                if self.peek() == Some('(') {
                    // `from:(alice OR bob)`: the group's words and phrases
                    // are in the field.
                    self.scope = Some(field);
                    let group = self.primary();
                    self.scope = None;
                    return group;
                }
                if self.peek() == Some('"') {
                    let words = self.quoted()?;
                    return Ok(phrase(Some(field), words));
                }
                let value = self.bare().to_owned();
                if value.is_empty() {
                    return Err(ParseError { position: value_at, message: format!("a value after {name}:") });
                }
                return word_node(Some(field), &value, value_at);
            }
            let value = if self.peek() == Some('"') {
                // A quoted value, as written (a mailbox name with spaces).
                let Some(len) = self.s[self.at + 1..].find('"') else {
                    return Err(ParseError {
                        position: value_at,
                        message: "an unclosed '\"'; expected a closing quote".into(),
                    });
                };
                let v = self.s[self.at + 1..self.at + 1 + len].to_owned();
                self.at += len + 2;
                v
            } else {
                self.bare().to_owned()
            };
            let bad = |message: String| ParseError { position: value_at, message };
            return match name.as_str() {
                "is" => match value.to_ascii_lowercase().as_str() {
                    "unread" => Ok(Node::Is(Flag::Unread)),
                    "read" => Ok(Node::Is(Flag::Read)),
                    "flagged" | "starred" => Ok(Node::Is(Flag::Flagged)),
                    _ => Err(bad(format!("is:{value}: expected unread, read or flagged"))),
                },
                "in" if !value.is_empty() => Ok(Node::In(value)),
                "in" => Err(bad("in: needs a mailbox name".into())),
                "has" if value.eq_ignore_ascii_case("attachment") => Ok(Node::HasAttachment),
                "has" => Err(bad(format!("has:{value}: expected has:attachment"))),
                "before" | "after" => {
                    let day = parse_day(&value)
                        .ok_or_else(|| bad(format!("{name}:{value}: expected a date YYYY-MM-DD")))?;
                    Ok(if name == "before" { Node::Before(day) } else { Node::After(day) })
                }
                "larger" | "smaller" => {
                    let n = parse_size(&value)
                        .ok_or_else(|| bad(format!("{name}:{value}: expected a size such as 20k or 5M")))?;
                    Ok(if name == "larger" { Node::Larger(n) } else { Node::Smaller(n) })
                }
                _ => Err(ParseError {
                    position: start,
                    message: format!("unknown operator {name}:; expected one of {OPERATORS}"),
                }),
            };
        }
        let value = self.bare().to_owned();
        if value.is_empty() {
            return Err(self.err(format!("unexpected {:?}", self.peek().unwrap_or(' '))));
        }
        word_node(self.scope, &value, start)
    }
}

fn phrase(field: Option<Field>, mut words: Vec<String>) -> Node {
    if words.len() == 1 {
        return Node::Term { field, word: words.remove(0), prefix: false };
    }
    Node::Phrase { field, words }
}

/// A bare word: `word*` is a prefix; a run that folds into several words
/// (`alice@example.org`, `e-mail`) is a phrase of them.
fn word_node(field: Option<Field>, value: &str, at: usize) -> Result<Node, ParseError> {
    let (value, prefix) = match value.strip_suffix('*') {
        Some(v) => (v, true),
        None => (value, false),
    };
    let mut words = text::tokens(value);
    match words.len() {
        0 => Err(ParseError {
            position: at,
            message: format!("{value:?} has no letters or digits to search for"),
        }),
        1 => Ok(Node::Term { field, word: words.remove(0), prefix }),
        _ if prefix => Err(ParseError { position: at, message: "a prefix (word*) must be one word".into() }),
        _ => Ok(Node::Phrase { field, words }),
    }
}

/// `YYYY-MM-DD` (or with `/`) as ms at midnight UTC.
pub fn parse_day(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split(['-', '/']).collect();
    let [y, m, d] = parts.as_slice() else { return None };
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// `123`, `20k`, `5M`, `1G` (binary multiples) as bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()?.to_ascii_lowercase() {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(w: &str) -> Node {
        Node::Term { field: None, word: w.into(), prefix: false }
    }

    fn p(s: &str) -> Node {
        parse(s, 10_000).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn e(s: &str) -> ParseError {
        parse(s, 10_000).expect_err(s)
    }

    #[test]
    fn words_scopes_phrases_and_operators() {
        assert_eq!(p("Invoice"), t("invoice"));
        assert_eq!(p("a b"), Node::And(vec![t("a"), t("b")]));
        assert_eq!(
            p("from:Alice"),
            Node::Term { field: Some(Field::From), word: "alice".into(), prefix: false }
        );
        assert_eq!(
            p("subject:\"Quarterly Report\""),
            Node::Phrase { field: Some(Field::Subject), words: vec!["quarterly".into(), "report".into()] }
        );
        assert_eq!(p("invo*"), Node::Term { field: None, word: "invo".into(), prefix: true });
        assert_eq!(p("-spam"), Node::Not(Box::new(t("spam"))));
        assert_eq!(
            p("is:unread in:Inbox"),
            Node::And(vec![Node::Is(Flag::Unread), Node::In("Inbox".into())])
        );
        assert_eq!(
            p("has:attachment larger:1M smaller:20k"),
            Node::And(vec![Node::HasAttachment, Node::Larger(1 << 20), Node::Smaller(20 << 10)])
        );
        assert_eq!(p("after:2024-01-01"), Node::After(1_704_067_200_000));
        assert_eq!(p("before:1970/01/02"), Node::Before(86_400_000));
        assert_eq!(p("in:\"Project X\""), Node::In("Project X".into()));
    }

    #[test]
    fn or_binds_tighter_than_and_and_parentheses_group() {
        assert_eq!(p("a b OR c"), Node::And(vec![t("a"), Node::Or(vec![t("b"), t("c")])]));
        assert_eq!(p("(a b) OR c"), Node::Or(vec![Node::And(vec![t("a"), t("b")]), t("c")]));
        assert_eq!(p("a or b"), Node::And(vec![t("a"), t("or"), t("b")]), "lower-case or is a word");
        assert_eq!(
            p("alice@example.org"),
            Node::Phrase { field: None, words: vec!["alice".into(), "example.org".into()] }
        );
    }

    #[test]
    fn errors_name_the_position_and_what_was_expected() {
        let x = e("a \"unclosed");
        assert_eq!(x.position, 2);
        assert!(x.message.contains("closing quote"), "{x}");
        let x = e("(a b");
        assert_eq!(x.position, 0);
        assert!(x.message.contains("')'"), "{x}");
        let x = e("a b)");
        assert_eq!(x.position, 3);
        assert!(x.message.contains("unmatched"), "{x}");
        let x = e("color:red");
        assert!(x.message.contains("unknown operator color:") && x.message.contains("subject:"), "{x}");
        assert!(e("a OR").message.contains("after OR"));
        assert!(e("OR a").message.contains("before OR"));
        assert!(e("is:shiny").message.contains("unread"));
        assert!(e("before:yesterday").message.contains("YYYY-MM-DD"));
        assert!(e("larger:lots").message.contains("size"));
        assert!(e("").message.contains("empty"));
        assert!(e("()").message.contains("empty"));
        assert!(e("!!!").message.contains("no letters"));
        assert!(e("- a").message.contains("after '-'"));
    }

    /// `from:(alice OR bob)` is `from:alice OR from:bob`: a scope over a
    /// group puts its words and phrases in the field, however nested.
    #[test]
    fn a_scope_over_a_group_scopes_its_words_and_phrases() {
        assert_eq!(p("from:(alice OR bob) x"), p("(from:alice OR from:bob) x"));
        assert_eq!(p("subject:(dinner -movie)"), p("subject:dinner -subject:movie"));
        assert_eq!(
            p("body:(\"quarterly report\" (draft OR final*))"),
            p("body:\"quarterly report\" (body:draft OR body:final*)")
        );
        assert_eq!(p("to:(alice@example.org)"), p("to:alice@example.org"));
        // The scope ends with its group.
        assert_eq!(p("cc:(a) b"), Node::And(vec![p("cc:a"), t("b")]));
        // Other operators inside are an error, named where they stand.
        let x = e("from:(alice subject:x)");
        assert_eq!(x.position, 12);
        assert!(x.message.contains("subject: inside from:( )"), "{x}");
        assert!(e("from:(is:unread)").message.contains("is: inside from:"));
        assert!(e("from:(a").message.contains("unclosed '('"));
        assert!(e("from:()").message.contains("empty"));
        let deep = format!("from:{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(e(&deep).message.contains("nest"));
    }

    #[test]
    fn limits_hold() {
        let many = vec!["w"; 10_000].join(" ");
        assert!(parse(&many, 1 << 20).expect_err("terms").message.contains("terms"));
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(e(&deep).message.contains("nest"));
        let big = "a".repeat(1 << 20);
        let x = parse(&big, 4096).expect_err("too long");
        assert!(x.message.contains("at most 4096"), "{x}");
    }
}
