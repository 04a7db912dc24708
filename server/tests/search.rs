//! Search against a brute-force oracle over the decoded texts, on real
//! mail (the notmuch, python-email, enmime and mail-parser corpora) and a
//! generated mailbox; account isolation; results that follow deletes,
//! moves and keyword changes from the same commit; bad queries.

mod support;

use quail_server::mail::find::{self, Found};
use quail_server::mail::parse;
use quail_server::mail::{EmailId, EmailRecord, MailboxId, Role};
use quail_server::search::query::{self, Flag, Node};
use quail_server::search::text::{self, Document, Field, TEXT_FIELDS};
use quail_server::tools::{import, mbox};

/// What the oracle knows of one email.
struct Doc {
    id: EmailId,
    record: EmailRecord,
    fields: Vec<(Field, Vec<String>)>,
    has_attachment: bool,
}

fn doc_of(id: EmailId, record: EmailRecord, raw: &[u8]) -> Doc {
    let d: Document = find::document(&parse::parse(raw));
    let fields = d.fields.iter().map(|(f, t)| (*f, text::tokens(t))).collect();
    Doc { id, record, fields, has_attachment: d.has_attachment }
}

/// The brute-force matcher: the query's meaning, read straight off the
/// tokens and the record.
fn matches(d: &Doc, node: &Node, boxes: &[(String, MailboxId)]) -> bool {
    let in_fields = |field: &Option<Field>, f: &dyn Fn(&[String]) -> bool| {
        let wanted: Vec<Field> = field.map_or_else(|| TEXT_FIELDS.to_vec(), |x| vec![x]);
        d.fields.iter().any(|(fl, toks)| wanted.contains(fl) && f(toks))
    };
    match node {
        Node::Term { field, word, prefix } => in_fields(field, &|t: &[String]| {
            t.iter().any(|x| if *prefix { x.starts_with(word.as_str()) } else { x == word })
        }),
        Node::Phrase { field, words } => {
            in_fields(field, &|t: &[String]| t.windows(words.len()).any(|w| w == words.as_slice()))
        }
        Node::And(items) => items.iter().all(|n| matches(d, n, boxes)),
        Node::Or(items) => items.iter().any(|n| matches(d, n, boxes)),
        Node::Not(inner) => !matches(d, inner, boxes),
        Node::Is(Flag::Unread) => !d.record.has_keyword("$seen"),
        Node::Is(Flag::Read) => d.record.has_keyword("$seen"),
        Node::Is(Flag::Flagged) => d.record.has_keyword("$flagged"),
        Node::In(name) => boxes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .is_some_and(|(_, m)| d.record.mailboxes.contains(m)),
        Node::InId(m) => d.record.mailboxes.contains(&MailboxId(*m)),
        Node::HasAttachment => d.has_attachment,
        Node::Before(t) => d.record.received_ms < *t,
        Node::After(t) => d.record.received_ms >= *t,
        Node::Larger(n) => d.record.size > *n,
        Node::Smaller(n) => d.record.size < *n,
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A query built from the documents' own words.
fn random_query(rng: &mut Rng, docs: &[Doc]) -> String {
    let word = |rng: &mut Rng| -> Option<(Field, Vec<String>)> {
        let d = &docs[rng.below(docs.len())];
        let (f, toks) = &d.fields[rng.below(d.fields.len())];
        if toks.is_empty() {
            return None;
        }
        let i = rng.below(toks.len());
        let n = 1 + rng.below(3).min(toks.len() - i - 1);
        Some((*f, toks[i..i + n].to_vec()))
    };
    let mut parts = Vec::new();
    let n = 1 + rng.below(3);
    while parts.len() < n {
        let Some((field, words)) = word(rng) else { continue };
        // Skip words the query language reads as operators or keywords.
        if words.iter().any(|w| w == "or" || w.contains(':') || w.starts_with('-')) {
            continue;
        }
        let scoped = rng.below(3) == 0;
        let prefix = if scoped { format!("{}:", field.name()) } else { String::new() };
        let core = if words.len() > 1 {
            format!("{prefix}\"{}\"", words.join(" "))
        } else if rng.below(6) == 0 && words[0].chars().count() > 3 {
            let cut: String = words[0].chars().take(3).collect();
            format!("{prefix}{cut}*")
        } else {
            format!("{prefix}{}", words[0])
        };
        let neg = !parts.is_empty() && rng.below(5) == 0;
        parts.push(if neg { format!("-{core}") } else { core });
    }
    let mut q = if parts.len() >= 2 && rng.below(4) == 0 {
        let b = parts.pop().unwrap_or_default();
        let a = parts.pop().unwrap_or_default();
        let mut rest = parts.join(" ");
        if !rest.is_empty() {
            rest.push(' ');
        }
        let (a, b) = (a.trim_start_matches('-'), b.trim_start_matches('-'));
        if !a.contains(':') && !b.contains(':') && rng.below(2) == 0 {
            // One field over the group: `from:(a OR b)`.
            format!("{rest}{}:({a} OR {b})", TEXT_FIELDS[rng.below(TEXT_FIELDS.len())].name())
        } else {
            format!("{rest}({a} OR {b})")
        }
    } else {
        parts.join(" ")
    };
    match rng.below(8) {
        0 => q.push_str(" is:unread"),
        1 => q.push_str(" in:inbox"),
        2 => q.push_str(" has:attachment"),
        3 => q.push_str(" -is:flagged"),
        _ => {}
    }
    q
}

fn all(found: Found) -> Vec<u64> {
    found.hits.iter().map(|h| h.id.0).collect()
}

async fn oracle_over(
    s: &support::TestStore,
    account: quail_server::account::AccountId,
    queries: usize,
    seed: u64,
) {
    let ids = s.mail.email_ids(account).expect("ids");
    let mut docs = Vec::new();
    for id in &ids {
        let record = s.mail.email(account, *id).expect("get").expect("email");
        let raw = s.mail.raw(account, *id).expect("raw");
        docs.push(doc_of(*id, record, &raw));
    }
    let boxes: Vec<(String, MailboxId)> =
        s.mail.mailbox_records(account).expect("boxes").into_iter().map(|m| (m.name, m.id)).collect();
    let mut rng = Rng(seed);
    let mut nonempty = 0;
    for _ in 0..queries {
        let q = random_query(&mut rng, &docs);
        let node = query::parse(&q, 4096).unwrap_or_else(|e| panic!("{q:?}: {e}"));
        let want: Vec<u64> = {
            let mut v: Vec<u64> = docs.iter().filter(|d| matches(d, &node, &boxes)).map(|d| d.id.0).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v
        };
        let got = match s.mail.search(account, &node, None, 0, usize::MAX, false) {
            Ok(f) => f,
            // A prefix too broad is refused, never answered partly.
            Err(quail_server::error::Error::LimitExceeded(_)) => continue,
            Err(e) => panic!("{q:?}: {e}"),
        };
        assert_eq!(got.total, want.len() as u64, "{q:?}");
        assert_eq!(all(got), want, "{q:?}");
        if !want.is_empty() {
            nonempty += 1;
        }
    }
    assert!(
        nonempty * 3 >= queries,
        "a good share of queries should find something ({nonempty} of {queries})"
    );
}

async fn flag_some(s: &support::TestStore, account: quail_server::account::AccountId) {
    {
        let ids = s.mail.email_ids(account).expect("ids");
        let seen: Vec<EmailId> = ids.iter().copied().filter(|i| i.0 % 3 == 0).collect();
        let flagged: Vec<EmailId> = ids.iter().copied().filter(|i| i.0 % 5 == 0).collect();
        for chunk in seen.chunks(500) {
            s.mail.set_keywords(account, chunk, &["$seen".into()], &[], None).await.expect("seen");
        }
        for chunk in flagged.chunks(500) {
            s.mail.set_keywords(account, chunk, &["$flagged".into()], &[], None).await.expect("flag");
        }
    }
}

#[tokio::test]
async fn three_hundred_random_queries_agree_with_the_oracle_on_real_mail() {
    let Some(corpora) = support::corpora_or_skip("search oracle") else { return };
    let s = support::store();
    let account = s.account("alice").await;
    for folder in
        ["notmuch-test-corpora", "python-email-testdata", "enmime-testdata", "mail-parser-crate-resources"]
    {
        let path = corpora.join(folder);
        import::import(
            &s.mail,
            &s.accounts,
            &import::ImportOptions {
                account: "alice",
                path: &path,
                mailbox: None,
                flavor: mbox::Flavor::Mboxrd,
                now_ms: support::now(),
            },
            |_, _| {},
        )
        .await
        .expect("import");
        // Merged after each folder but the last, whose emails stay one
        // segment each: both read paths are exercised.
        if folder != "mail-parser-crate-resources" {
            quail_server::search::index::merge(&s.db).expect("merge");
        }
    }
    flag_some(&s, account).await;
    oracle_over(&s, account, 300, 0x9E37_79B9_7F4A_7C15).await;
}

#[tokio::test]
async fn random_queries_agree_with_the_oracle_on_a_generated_mailbox() {
    let s = support::store();
    let account = s.account("gen").await;
    let n = 10_000;
    let vocab = [
        "invoice",
        "meeting",
        "report",
        "quarterly",
        "budget",
        "kernel",
        "patch",
        "review",
        "lunch",
        "travel",
        "café",
        "Über",
        "résumé",
        "日本",
        "会議",
        "deadline",
        "draft",
        "contract",
        "server",
        "backup",
    ];
    let mut rng = Rng(7);
    let mut items = Vec::new();
    for i in 0..n {
        let w = |rng: &mut Rng| vocab[rng.below(vocab.len())];
        let subject = format!("{} {} {}", w(&mut rng), w(&mut rng), i % 97);
        let body: Vec<&str> = (0..20).map(|_| w(&mut rng)).collect();
        let from = format!("user{}@example{}.org", rng.below(50), rng.below(5));
        let attach = if i % 7 == 0 {
            format!(
                "--b\r\nContent-Type: application/pdf; name=\"{}-{i}.pdf\"\r\nContent-Disposition: attachment\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n",
                w(&mut rng)
            )
        } else {
            String::new()
        };
        let raw = if attach.is_empty() {
            format!(
                "From: {from}\r\nTo: team@example.org\r\nSubject: {subject}\r\n\r\n{}\r\n",
                body.join(" ")
            )
        } else {
            format!(
                "From: {from}\r\nTo: team@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
                 Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{}\r\n{attach}",
                body.join(" ")
            )
        };
        items.push(raw.into_bytes());
    }
    let inbox = s.mail.mailbox_by_role(account, Role::Inbox).expect("inbox");
    for (k, chunk) in items.chunks(990).enumerate() {
        let batch: Vec<quail_server::mail::ingest::ImportItem> = chunk
            .iter()
            .enumerate()
            .map(|(j, raw)| quail_server::mail::ingest::ImportItem {
                prepared: quail_server::mail::ingest::prepare(raw).expect("prepare"),
                placement: quail_server::mail::ingest::Placement {
                    mailboxes: vec![inbox],
                    keywords: Vec::new(),
                    received_ms: 1_700_000_000_000 + ((k * 990 + j) as i64) * 60_000,
                },
            })
            .collect();
        s.mail.import(account, &batch).await.expect("import");
        // Merged as the background merger would, but the last hundred
        // stay one segment each: both read paths are exercised.
        if k < 10 {
            quail_server::search::index::merge(&s.db).expect("merge");
        }
    }
    flag_some(&s, account).await;
    oracle_over(&s, account, 300, 42).await;
    // Dates and sizes too.
    for q in ["after:2023-11-20 invoice", "before:2023-11-16", "larger:600 kernel", "smaller:400"] {
        let node = query::parse(q, 4096).expect("parse");
        let got = s.mail.search(account, &node, None, 0, usize::MAX, false).expect("search");
        let ids = s.mail.email_ids(account).expect("ids");
        let mut want = Vec::new();
        for id in ids {
            let record = s.mail.email(account, id).expect("get").expect("email");
            let raw = s.mail.raw(account, id).expect("raw");
            if matches(&doc_of(id, record, &raw), &node, &[]) {
                want.push(id.0);
            }
        }
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(all(got), want, "{q}");
    }
}

async fn one(s: &support::TestStore, account: quail_server::account::AccountId, raw: &str) -> EmailId {
    s.mail
        .deliver(&[account], raw.as_bytes(), support::now())
        .await
        .expect("deliver")
        .remove(0)
        .expect("stored")
}

fn ids(s: &support::TestStore, account: quail_server::account::AccountId, q: &str) -> Vec<u64> {
    let node = query::parse(q, 4096).expect("parse");
    all(s.mail.search(account, &node, None, 0, 100, false).expect("search"))
}

#[tokio::test]
async fn one_account_never_sees_another_ones_mail() {
    let s = support::store();
    let a = s.account("a").await;
    let b = s.account("b").await;
    let raw = "From: x@y.org\r\nSubject: secret plans\r\n\r\nthe treasure is buried here\r\n";
    let ia = one(&s, a, raw).await;
    let ib = one(&s, b, raw).await;
    assert_eq!(ids(&s, a, "treasure"), vec![ia.0]);
    assert_eq!(ids(&s, b, "treasure"), vec![ib.0]);
    assert_eq!(ids(&s, a, "subject:secret -nothing"), vec![ia.0]);
    assert_eq!(ids(&s, b, "-treasure"), Vec::<u64>::new());
    assert_eq!(ids(&s, a, "trea*"), vec![ia.0]);
}

#[tokio::test]
async fn deletes_moves_and_keywords_show_from_the_same_commit() {
    let s = support::store();
    let a = s.account("a").await;
    let id = one(&s, a, "From: x@y.org\r\nSubject: quarterly numbers\r\n\r\nrevenue grew\r\n").await;
    let other = one(&s, a, "From: z@y.org\r\nSubject: lunch\r\n\r\nrevenue of the canteen\r\n").await;
    assert_eq!(ids(&s, a, "revenue is:unread"), vec![other.0, id.0]);
    s.mail.set_keywords(a, &[id], &["$seen".into()], &[], None).await.expect("seen");
    assert_eq!(ids(&s, a, "revenue is:unread"), vec![other.0]);
    assert_eq!(ids(&s, a, "revenue is:read"), vec![id.0]);
    let archive = s.mail.mailbox_by_role(a, Role::Archive).expect("archive");
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    s.mail.move_emails(a, &[id], &[archive], &[inbox], None).await.expect("move");
    assert_eq!(ids(&s, a, "revenue in:inbox"), vec![other.0]);
    assert_eq!(ids(&s, a, "revenue in:archive"), vec![id.0]);
    // Trash, then gone for good: the index forgets it in that commit.
    s.mail.destroy(a, &[id], None).await.expect("trash");
    assert_eq!(ids(&s, a, "quarterly in:trash"), vec![id.0]);
    quail_server::search::index::merge(&s.db).expect("merge");
    s.mail.destroy(a, &[id], None).await.expect("expunge");
    assert_eq!(ids(&s, a, "quarterly"), Vec::<u64>::new());
    assert_eq!(ids(&s, a, "revenue"), vec![other.0]);
    assert!(!quail_server::search::index::has(s.db.store(), a.0, id.0).expect("has"));
}

#[tokio::test]
async fn bad_queries_get_clear_errors() {
    for (q, what) in [
        ("\"unbalanced", "closing quote"),
        ("(a b", "')'"),
        ("a)", "unmatched"),
        ("colour:red", "unknown operator"),
        ("is:maybe", "unread"),
    ] {
        let e = query::parse(q, 4096).expect_err(q);
        assert!(e.to_string().contains(what), "{q}: {e}");
        assert!(e.to_string().starts_with("at "), "{q}: {e}");
    }
    let many = vec!["w"; 10_000].join(" ");
    assert!(query::parse(&many, 1 << 20).expect_err("terms").to_string().contains("terms"));
    let huge = "a".repeat(1 << 20);
    assert!(query::parse(&huge, 4096).expect_err("bytes").to_string().contains("at most 4096"));
    // An unknown mailbox is a clear not-found at search time.
    let s = support::store();
    let a = s.account("a").await;
    let node = query::parse("in:nowhere", 4096).expect("parse");
    let e = s.mail.search(a, &node, None, 0, 10, false).expect_err("no mailbox");
    assert!(e.to_string().contains("no such mailbox"), "{e}");
}

#[tokio::test]
async fn check_finds_a_missing_index_and_reindex_rebuilds_it() {
    let s = support::store();
    let a = s.account("a").await;
    let id = one(&s, a, "From: x@y.org\r\nSubject: rebuild me\r\n\r\nphoenix\r\n").await;
    assert!(quail_server::tools::check::check(&s.db, false).expect("check").clean());
    quail_server::search::index::clear(&s.db, a.0).expect("clear");
    assert_eq!(ids(&s, a, "phoenix"), Vec::<u64>::new());
    let report = quail_server::tools::check::check(&s.db, false).expect("check");
    assert!(report.problems.iter().any(|p| p.contains("reindex")), "{:?}", report.problems);
    let mut lines = Vec::new();
    assert_eq!(find::reindex(&s.db, a, &mut |l| lines.push(l.to_owned())).expect("reindex"), 1);
    assert_eq!(ids(&s, a, "phoenix"), vec![id.0]);
    assert!(quail_server::tools::check::check(&s.db, false).expect("check").clean());
}

/// The structured `Filter` of a query takes its sets from the indexes: a
/// has-attachment, read-or-not or From filter over 300 emails decodes only
/// the emails its From words admit, and none for the rest; results equal a
/// brute-force walk of the records.
#[tokio::test]
async fn structured_filters_are_served_from_the_indexes() {
    use quail_server::mail::{Filter, Query, Tri};
    let s = support::store();
    let a = s.account("a").await;
    let mut made = Vec::new();
    for i in 0..300 {
        let from = if i % 100 == 7 { "Alice <alice@example.org>" } else { "Bob <bob.alice@example.net>" };
        let raw = if i % 10 == 3 {
            format!(
                "From: {from}\r\nSubject: n{i}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=r{i}.pdf\r\n\r\n%PDF\r\n--b--\r\n"
            )
        } else {
            format!("From: {from}\r\nSubject: n{i}\r\n\r\nbody {i}\r\n")
        };
        made.push(one(&s, a, &raw).await);
    }
    s.mail.set_keywords(a, &made[..40], &["$seen".into()], &[], None).await.expect("seen");
    let all_ids = s.mail.email_ids(a).expect("ids");
    let records: Vec<EmailRecord> =
        all_ids.iter().map(|id| s.mail.email(a, *id).expect("get").expect("email")).collect();
    let cases: Vec<(Filter, u64)> = vec![
        (Filter { has_attachment: Tri::Yes, ..Filter::default() }, 0),
        (Filter { has_attachment: Tri::No, unread: Tri::No, ..Filter::default() }, 0),
        (Filter { flagged: Tri::No, unread: Tri::No, ..Filter::default() }, 0),
        (Filter { from: Some("ALICE@example.org".into()), ..Filter::default() }, 3),
        (Filter { from: Some("alice@example.org".into()), has_attachment: Tri::Yes, ..Filter::default() }, 0),
    ];
    for (filter, most) in cases {
        let before = s.mail.emails_examined();
        let got = s
            .mail
            .query(a, &Query { filter: filter.clone(), limit: 1000, ..Query::default() })
            .expect("query");
        let examined = s.mail.emails_examined() - before;
        let mut want: Vec<EmailId> = records
            .iter()
            .filter(|e| {
                (filter.has_attachment == Tri::Any || (filter.has_attachment == Tri::Yes) == e.has_attachment)
                    && (filter.unread == Tri::Any || (filter.unread == Tri::Yes) == e.is_unread())
                    && (filter.flagged == Tri::Any || (filter.flagged == Tri::Yes) == e.is_flagged())
                    && filter
                        .from
                        .as_deref()
                        .is_none_or(|f| e.envelope.from.iter().any(|x| x.email.eq_ignore_ascii_case(f)))
            })
            .map(|e| e.id)
            .collect();
        want.sort_unstable_by(|x, y| y.cmp(x));
        assert_eq!(got.ids, want, "{filter:?}");
        assert_eq!(got.total, want.len() as u64, "{filter:?}");
        assert!(!want.is_empty() || filter.from.is_some(), "{filter:?} selects something");
        assert!(examined <= most, "{filter:?} decoded {examined} emails (at most {most})");
    }
    // A small folder of the big account is walked record by record (the
    // account-wide sets would cost more keys than its records), with the
    // same results.
    let archive = s.mail.mailbox_by_role(a, Role::Archive).expect("archive");
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let few: Vec<EmailId> = made[..10].to_vec();
    s.mail.move_emails(a, &few, &[archive], &[inbox], None).await.expect("move");
    let filter = Filter { mailbox: Some(archive), has_attachment: Tri::No, ..Filter::default() };
    let before = s.mail.emails_examined();
    let got = s.mail.query(a, &Query { filter, limit: 1000, ..Query::default() }).expect("query");
    assert_eq!(s.mail.emails_examined() - before, 10);
    let mut want: Vec<EmailId> =
        few.iter().copied().filter(|id| !records.iter().any(|e| e.id == *id && e.has_attachment)).collect();
    want.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(got.ids, want);
}

#[tokio::test]
async fn merges_keep_every_posting_and_drop_deleted_mail() {
    use quail_server::search::index;
    let s = support::store();
    let a = s.account("m").await;
    let vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"];
    let mut rng = Rng(11);
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let mut ids = Vec::new();
    for k in 0..6 {
        let batch: Vec<quail_server::mail::ingest::ImportItem> = (0..100)
            .map(|j| {
                let words: Vec<String> =
                    (0..12).map(|_| format!("{}{}", vocab[rng.below(10)], rng.below(40))).collect();
                let raw = format!(
                    "From: u{j}@example.org\r\nSubject: s{k} {}\r\n\r\n{}\r\n",
                    words[0],
                    words.join(" ")
                );
                quail_server::mail::ingest::ImportItem {
                    prepared: quail_server::mail::ingest::prepare(raw.as_bytes()).expect("prepare"),
                    placement: quail_server::mail::ingest::Placement {
                        mailboxes: vec![inbox],
                        keywords: Vec::new(),
                        received_ms: 1_700_000_000_000 + (k * 100 + j) as i64,
                    },
                }
            })
            .collect();
        ids.extend(
            s.mail.import(a, &batch).await.expect("import").into_iter().map(|o| o.expect("delivered")),
        );
        let before = index::dump(&s.db, a.0).expect("dump");
        assert!(index::merge(&s.db).expect("merge") > 0);
        let after = index::dump(&s.db, a.0).expect("dump");
        assert!(after == before, "after batch {k}");
    }
    let view = index::view(&s.db.snapshot(), a.0).expect("view");
    assert_eq!(view.documents().len(), 600);
    // Tiered: fewer than MERGE_FANIN segments per size class remain.
    assert!(view.segments() < index::MERGE_FANIN * 5, "{} segments", view.segments());
    // Deleted mail leaves the results at once and the segments at the
    // next merge, which drops its tombstones too.
    let gone: Vec<EmailId> = ids.iter().step_by(3).copied().collect();
    let trash = s.mail.mailbox_by_role(a, Role::Trash).expect("trash");
    s.mail.move_emails(a, &gone, &[trash], &[inbox], None).await.expect("trash");
    s.mail.destroy(a, &gone, None).await.expect("expunge");
    let left = index::dump(&s.db, a.0).expect("dump");
    assert!(left.iter().all(|(_, d)| !gone.iter().any(|g| g.0 == *d)));
    assert_eq!(index::documents(&s.db, a.0).expect("docs").len(), 400);
    assert!(index::tombstones(&s.db, a.0).expect("tombstones") == 200);
    index::compact(&s.db, a.0).expect("compact");
    assert_eq!(index::dump(&s.db, a.0).expect("dump"), left);
    assert_eq!(index::tombstones(&s.db, a.0).expect("tombstones"), 0);
    assert_eq!(index::view(&s.db.snapshot(), a.0).expect("view").segments(), 1);
}

#[tokio::test]
async fn by_relevance_the_weightier_field_and_the_rarer_word_come_first() {
    let s = support::store();
    let a = s.account("a").await;
    let mail = |subject: &str, body: &str| {
        format!("From: b@example.org\r\nTo: a@example.org\r\nSubject: {subject}\r\n\r\n{body}\r\n")
    };
    // Oldest to newest.
    let in_subject = one(&s, a, &mail("the invoice for march", "numbers attached")).await;
    let in_body = one(&s, a, &mail("march", "here is the invoice")).await;
    let rare = one(&s, a, &mail("zeppelin", "the invoice, and a zeppelin")).await;
    let newest = one(&s, a, &mail("hello", "another invoice")).await;
    for i in 0..6 {
        one(&s, a, &mail(&format!("note {i}"), "nothing to see")).await;
    }
    let ordered = |q: &str, order: find::SearchOrder| {
        let node = query::parse(q, 4096).expect("parse");
        let found = s.mail.search_ordered(a, &node, None, 0, 100, false, order).expect("search");
        found.hits.iter().map(|h| h.id).collect::<Vec<_>>()
    };
    use find::SearchOrder::{Newest, Relevance};
    assert_eq!(ordered("invoice", Newest), [newest, rare, in_body, in_subject]);
    // The subject outweighs the body; equal matches stay newest first.
    assert_eq!(ordered("invoice", Relevance), [in_subject, newest, rare, in_body]);
    // A rare word matched counts for more than a common one.
    assert_eq!(ordered("invoice OR zeppelin", Relevance), [rare, in_subject, newest, in_body]);
    // Paging walks the same order.
    let node = query::parse("invoice", 4096).expect("parse");
    let page = s.mail.search_ordered(a, &node, None, 1, 2, false, Relevance).expect("search");
    assert_eq!(page.hits.iter().map(|h| h.id).collect::<Vec<_>>(), [newest, rare]);
    assert_eq!(page.total, 4);
    // Filters alone have no words to weigh: newest first.
    assert_eq!(ordered("is:unread", Relevance), ordered("is:unread", Newest));
}

#[tokio::test]
async fn a_mailbox_with_a_flag_is_read_as_one_index_and_agrees_with_each_alone() {
    let s = support::store();
    let a = s.account("a").await;
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let archive = s.mail.mailbox_by_role(a, Role::Archive).expect("archive");
    let mut made = Vec::new();
    for i in 0..40 {
        let word = if i % 2 == 0 { "kernel" } else { "driver" };
        made.push(
            one(&s, a, &format!("From: b@example.org\r\nSubject: {word} {i}\r\n\r\nbody {i}\r\n")).await,
        );
    }
    let pick =
        |k: usize| made.iter().enumerate().filter(|(i, _)| i % k == 0).map(|(_, id)| *id).collect::<Vec<_>>();
    s.mail.set_keywords(a, &pick(3), &["$seen".into()], &[], None).await.expect("seen");
    s.mail.set_keywords(a, &pick(5), &["$flagged".into()], &[], None).await.expect("flag");
    s.mail.move_emails(a, &pick(4), &[archive], &[inbox], None).await.expect("move");
    let both = |x: &str, y: &str| {
        let (x, y) = (ids(&s, a, x), ids(&s, a, y));
        x.into_iter().filter(|i| y.contains(i)).collect::<Vec<_>>()
    };
    for (mailbox, flag) in
        [("in:inbox", "is:unread"), ("in:archive", "is:unread"), ("in:archive", "is:flagged")]
    {
        let together = ids(&s, a, &format!("{mailbox} {flag}"));
        assert!(!together.is_empty(), "{mailbox} {flag}");
        assert_eq!(together, both(mailbox, flag), "{mailbox} {flag}");
        assert_eq!(
            ids(&s, a, &format!("{flag} kernel {mailbox}")),
            both(&format!("{mailbox} {flag}"), "kernel")
        );
        assert_eq!(
            ids(&s, a, &format!("{mailbox} {flag} -kernel")),
            both(&format!("{mailbox} {flag}"), "-kernel")
        );
    }
    // A mailbox that does not exist is still an error, not an empty set.
    let node = query::parse("in:nowhere is:unread", 4096).expect("parse");
    assert!(s.mail.search(a, &node, None, 0, 10, false).is_err());
}
