//! The built-in virus scanner on inbound delivery and on `submit`: EICAR in
//! every encoding and wrapping, the corpora's test files, dangerous names
//! behind RFC 2047/2231 encodings, the block list, and hostile structure
//! (a zip bomb, 100-deep nesting, 10,000 parts) judged in bounded memory.
//! Nothing refused is ever stored.

mod support;

use support::eicar::{attachment, b64, eicar_forms, with_part, zip_of};

use quail_server::error::Error;
use quail_server::filter::virus::EICAR;
use quail_server::filter::{Direction, FilterSettings, Pipeline, Verdict};
use quail_server::mail::outbox::NewSubmission;

async fn refused_everywhere(
    s: &support::TestStore,
    account: quail_server::account::AccountId,
    label: &str,
    raw: Vec<u8>,
) {
    match s.mail.deliver(&[account], &raw, support::now()).await {
        Err(Error::Rejected(why)) => assert!(!why.is_empty(), "{label}"),
        other => panic!("{label}: delivered or failed otherwise: {other:?}"),
    }
    let sub = NewSubmission {
        raw: raw.clone(),
        mail_from: "alice@example.org".into(),
        recipients: vec![("bob@example.net".into(), false)],
        send_at_ms: 0,
    };
    match s.mail.submit(account, sub, support::now()).await {
        Err(Error::Rejected(why)) => assert!(!why.is_empty(), "{label}"),
        other => panic!("{label}: submitted or failed otherwise: {:?}", other.map(|s| s.id)),
    }
}

#[tokio::test]
async fn eicar_in_every_form_is_refused_on_delivery_and_submit_and_never_stored() {
    let s = support::store();
    let a = s.account("alice").await;
    for (label, raw) in eicar_forms() {
        refused_everywhere(&s, a, label, raw).await;
    }
    assert!(s.mail.email_ids(a).expect("ids").is_empty());
    // The same messages without the virus go through.
    let clean = attachment("report.bin", b"quarterly numbers");
    s.mail.deliver(&[a], &clean, support::now()).await.expect("deliver")[0].as_ref().expect("stored");
    assert_eq!(s.mail.email_ids(a).expect("ids").len(), 1);
}

/// A zip whose entries are all stored or deflated (the methods the
/// built-in scanner reads).
fn readable_zip(data: &[u8]) -> bool {
    let Ok(mut z) = zip::ZipArchive::new(std::io::Cursor::new(data)) else { return false };
    (0..z.len()).all(|i| {
        z.by_index_raw(i).is_ok_and(|e| {
            matches!(e.compression(), zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated)
        })
    })
}

#[tokio::test]
async fn the_corpora_test_files_with_a_payload_are_refused() {
    let Some(corpora) = support::corpora_or_skip("the_corpora_test_files_with_a_payload_are_refused") else {
        return;
    };
    let s = support::store();
    let a = s.account("alice").await;
    let mut refused = 0;
    for folder in ["eicar-test-files", "clamav-testfiles"] {
        let dir = corpora.join(folder);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).expect("read");
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.starts_with("SOURCE") {
                continue;
            }
            // What the built-in scanner can see: the payload as it stands,
            // or inside a zip. (Macros that only print the string, PE
            // packers, 7z, rar and the like are clamd's.)
            let visible = memchr::memmem::find(&data, EICAR).is_some()
                || data.starts_with(b"PK\x03\x04") && name.contains("eicar-zip")
                || folder == "clamav-testfiles" && (name == "clam.exe" || readable_zip(&data));
            // Named .txt so that only the content decides.
            let raw = attachment("sample.txt", &data);
            let verdict = s.mail.filter().check(&raw, Direction::Inbound);
            if visible {
                assert!(matches!(verdict, Verdict::Reject(_)), "{folder}/{name}: {verdict:?}");
                refused_everywhere(&s, a, &name, raw).await;
                refused += 1;
            }
        }
    }
    assert!(refused >= 6, "only {refused} files refused");
    assert!(s.mail.email_ids(a).expect("ids").is_empty());
}

#[tokio::test]
async fn dangerous_names_are_judged_after_decoding() {
    let s = support::store();
    let a = s.account("alice").await;
    let part = |disposition: &str| {
        with_part(
            "\"b\"",
            "b",
            &format!(
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n{disposition}"
            ),
            &b64(b"MZ harmless bytes"),
        )
    };
    for (label, raw) in [
        ("plain", part("Content-Disposition: attachment; filename=\"invoice.pdf.exe\"")),
        ("RFC 2047", part("Content-Disposition: attachment; filename=\"=?utf-8?B?aW52b2ljZS5wZGYuZXhl?=\"")),
        ("RFC 2231", part("Content-Disposition: attachment; filename*=utf-8''invoice%2Epdf%2Escr")),
        (
            "RFC 2231 continuations",
            part(
                "Content-Disposition: attachment;\r\n filename*0*=utf-8''invoice.p;\r\n filename*1*=df.%6As",
            ),
        ),
        ("in a zip", attachment("docs.zip", &zip_of("setup.bat", b"echo", zip::CompressionMethod::Deflated))),
    ] {
        refused_everywhere(&s, a, label, raw).await;
    }
    assert!(s.mail.email_ids(a).expect("ids").is_empty());
    // An ordinary name passes.
    let ok = part("Content-Disposition: attachment; filename=\"=?utf-8?Q?r=C3=A9sum=C3=A9.pdf?=\"");
    s.mail.deliver(&[a], &ok, support::now()).await.expect("deliver")[0].as_ref().expect("stored");
}

#[tokio::test]
async fn the_block_list_refuses_an_attachment_by_its_hash() {
    let payload = b"a known bad attachment";
    let settings = FilterSettings {
        blocklist: vec![blake3::hash(payload).to_hex().to_string()],
        ..FilterSettings::default()
    };
    let p = Pipeline::from_settings(&settings).expect("pipeline");
    assert!(matches!(p.check(&attachment("x.bin", payload), Direction::Inbound), Verdict::Reject(_)));
    assert_eq!(p.check(&attachment("x.bin", b"something else"), Direction::Inbound), Verdict::Accept);
    let bad = FilterSettings { blocklist: vec!["zz".into()], ..FilterSettings::default() };
    assert!(Pipeline::from_settings(&bad).expect_err("bad hash").to_string().contains("BLAKE3"));
}

/// A store whose filters let each account send to `per_hour` recipients.
fn sending_limited(per_hour: u32) -> support::TestStore {
    let s = support::store();
    let settings = FilterSettings { max_recipients_per_hour: per_hour, ..FilterSettings::default() };
    support::TestStore { mail: s.mail.with_filter(Pipeline::from_settings(&settings).expect("p")), ..s }
}

/// A submission of `raw` from `from` to one recipient, now.
fn to_one(from: &str, to: &str, raw: String) -> NewSubmission {
    NewSubmission {
        raw: raw.into_bytes(),
        mail_from: from.into(),
        recipients: vec![(to.into(), false)],
        send_at_ms: 0,
    }
}

#[tokio::test]
async fn an_account_sending_in_bulk_is_throttled_and_its_neighbour_is_not() {
    let s = sending_limited(3);
    let (a, b) = (s.account("alice").await, s.account("bob").await);
    let sub = |to: &str| {
        to_one(
            "x@example.org",
            to,
            format!("From: x@example.org\r\nTo: {to}\r\nSubject: hi\r\n\r\nhello\r\n"),
        )
    };
    let t0 = 1_700_000_000_000;
    for i in 0..3 {
        s.mail.submit(a, sub(&format!("r{i}@example.net")), t0).await.expect("within the limit");
    }
    match s.mail.submit(a, sub("r4@example.net"), t0).await {
        Err(Error::Unavailable(why)) => assert!(why.contains("sending limit"), "{why}"),
        other => panic!("not throttled: {:?}", other.map(|s| s.id)),
    }
    s.mail.submit(b, sub("r@example.net"), t0).await.expect("bob is not throttled");
    // Twenty minutes later one recipient's worth has come back.
    s.mail.submit(a, sub("r5@example.net"), t0 + 20 * 60_000).await.expect("refilled");
}

#[tokio::test]
async fn an_account_sending_spam_is_throttled_soon_and_its_neighbour_is_not() {
    let s = sending_limited(30);
    let (a, b) = (s.account("alice").await, s.account("bob").await);
    // Junk by its rules (a display name showing another address, a link
    // to a bare IP address), not enough to be refused outright.
    let phish = |to: &str| {
        to_one(
            "x@example.org",
            to,
            format!(
                "From: \"security@bank.example\" <x@example.org>\r\nTo: {to}\r\nSubject: verify\r\n\r\n\
                 verify your account at http://192.0.2.7/login today\r\n"
            ),
        )
    };
    let clean = |to: &str| {
        to_one(
            "y@example.org",
            to,
            format!("From: y@example.org\r\nTo: {to}\r\nSubject: lunch\r\n\r\nat noon?\r\n"),
        )
    };
    let t0 = 1_700_000_000_000;
    // Each junk recipient counts ten times: three use up thirty.
    for i in 0..3 {
        s.mail.submit(a, phish(&format!("r{i}@example.net")), t0).await.expect("within the limit");
    }
    match s.mail.submit(a, phish("r3@example.net"), t0).await {
        Err(Error::Unavailable(why)) => assert!(why.contains("sending limit"), "{why}"),
        other => panic!("a spammer is not throttled: {:?}", other.map(|s| s.id)),
    }
    // Bob, sending clean mail, has his whole allowance.
    for i in 0..30 {
        s.mail.submit(b, clean(&format!("f{i}@example.net")), t0).await.expect("bob is not throttled");
    }
}
