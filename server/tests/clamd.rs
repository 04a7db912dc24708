//! The filter with a real clamd (and the built-in scanner off, so clamd
//! alone decides): EICAR in every form and the corpora's test files are
//! refused on delivery and on `submit`, nothing stored; clamd stopped is a
//! temporary failure with nothing stored, and once clamd is back the
//! sender's retry is delivered. Skips outside CI where clamd is missing.

#![cfg(target_os = "linux")]

mod support;

use quail_server::error::Error;
use quail_server::filter::{Direction, FilterSettings, Pipeline, Verdict};
use quail_server::mail::outbox::NewSubmission;
use support::clamd::{self, Clamd};
use support::eicar::{attachment, eicar_forms};

fn clamd_only(c: &Clamd) -> Pipeline {
    Pipeline::from_settings(&FilterSettings {
        builtin_scanner: false,
        clamd: Some(c.address()),
        clamd_timeout_ms: 10_000,
        ..FilterSettings::default()
    })
    .expect("pipeline")
}

fn store(p: Pipeline) -> support::TestStore {
    let mut s = support::store();
    s.mail = s.mail.with_filter(p);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_refuses_every_eicar_form_and_the_corpora_test_files() {
    if !clamd::available("clamd_refuses_every_eicar_form_and_the_corpora_test_files") {
        return;
    }
    let c = Clamd::start();
    let s = store(clamd_only(&c));
    let a = s.account("alice").await;
    let mut cases = eicar_forms();
    if let Some(corpora) = support::corpora_or_skip("clamd corpora") {
        // Every file with a payload clamd's signatures match: the EICAR
        // files (the Office ones only echo the string from macros) and all
        // of ClamAV's test files, whatever their packing.
        for (folder, keep) in [
            (
                "eicar-test-files",
                &(|n: &str| {
                    n.starts_with("eicar-com")
                        || n.starts_with("eicar-test")
                        || n.starts_with("eicar-zip")
                        || n.contains("attachment.pdf")
                }) as &dyn Fn(&str) -> bool,
            ),
            ("clamav-testfiles", &(|_: &str| true) as &dyn Fn(&str) -> bool),
        ] {
            let mut files: Vec<_> = std::fs::read_dir(corpora.join(folder))
                .expect("corpus")
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                if name.starts_with("SOURCE") || !keep(&name) {
                    continue;
                }
                let data = std::fs::read(&f).expect("read");
                cases.push((
                    Box::leak(format!("{folder}/{name}").into_boxed_str()),
                    attachment("sample.dat", &data),
                ));
            }
        }
    }
    for (label, raw) in cases {
        match s.mail.deliver(&[a], &raw, support::now()).await {
            Err(Error::Rejected(why)) => assert!(why.contains("virus found"), "{label}: {why}"),
            other => panic!("{label}: {other:?}"),
        }
        let sub = NewSubmission {
            raw: raw.clone(),
            mail_from: "alice@example.org".into(),
            recipients: vec![("bob@example.net".into(), false)],
            send_at_ms: 0,
        };
        assert!(matches!(s.mail.submit(a, sub, support::now()).await, Err(Error::Rejected(_))), "{label}");
    }
    assert!(s.mail.email_ids(a).expect("ids").is_empty());
    // Clean mail passes clamd.
    let clean = attachment("notes.txt", b"nothing to see");
    assert_eq!(s.mail.filter().check(&clean, Direction::Inbound), Verdict::Accept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_down_is_a_temporary_failure_and_the_retry_is_delivered() {
    if !clamd::available("clamd_down_is_a_temporary_failure_and_the_retry_is_delivered") {
        return;
    }
    let mut c = Clamd::start();
    let s = store(clamd_only(&c));
    let a = s.account("alice").await;
    let raw = attachment("notes.txt", b"the minutes of the meeting");
    c.stop();
    match s.mail.deliver(&[a], &raw, support::now()).await {
        Err(Error::Unavailable(why)) => assert!(why.contains("virus scanner"), "{why}"),
        other => panic!("clamd down: {other:?}"),
    }
    assert!(s.mail.email_ids(a).expect("ids").is_empty());
    // With fail_open the operator chose delivery without clamd.
    let open = Pipeline::from_settings(&FilterSettings {
        builtin_scanner: false,
        clamd: Some(c.address()),
        fail_open: true,
        ..FilterSettings::default()
    })
    .expect("pipeline");
    assert_eq!(open.check(&raw, Direction::Inbound), Verdict::Accept);
    c.restart();
    s.mail.deliver(&[a], &raw, support::now()).await.expect("retry")[0].as_ref().expect("stored");
    assert_eq!(s.mail.email_ids(a).expect("ids").len(), 1);
}
