//! `Session::search` over the protocol: snippets with highlights, newest
//! first with a total, bad queries as clear errors, and a restricted
//! session that finds only what it may see.

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_with_snippets_and_refuses_bad_queries() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server)
        .await
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("account");
    let gateway = support::gateway(&client, &server).await;
    let mails = [
        "From: Alice Example <alice@example.org>\r\nSubject: Invoice 2024-17\r\n\r\nPlease pay the invoice by Friday.\r\n",
        "From: Bob <bob@example.org>\r\nSubject: Lunch\r\n\r\nThe invoice for lunch is attached.\r\n",
        "From: Alice Example <alice@example.org>\r\nSubject: Holiday\r\n\r\nSee you in January.\r\n",
    ];
    let mut ids = Vec::new();
    for m in mails {
        let r = gateway.deliver(&support::to("alice@example.org"), m.as_bytes()).await.expect("deliver");
        ids.push(r[0].outcome.clone().expect("stored"));
    }
    let session = client.login("alice", "alice-password").await.expect("login");

    let page = session.search("invoice", 0, 0).await.expect("search");
    assert_eq!(page.total, 2);
    assert_eq!(page.hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ids[1], ids[0]], "newest first");
    let body = page.hits[1].snippets.iter().find(|s| s.field == "body").expect("a body snippet");
    let marked: Vec<&str> =
        body.highlights.iter().map(|(a, b)| &body.text[*a as usize..*b as usize]).collect();
    assert_eq!(marked, vec!["invoice"]);
    let subject = page.hits[1].snippets.iter().find(|s| s.field == "subject").expect("a subject snippet");
    assert_eq!(subject.text, "Invoice 2024-17");

    assert_eq!(session.search("from:alice invoice", 0, 0).await.expect("search").total, 1);
    assert_eq!(session.search("from:alice -invoice", 0, 0).await.expect("search").total, 1);
    assert_eq!(session.search("\"pay the invoice\"", 0, 0).await.expect("search").total, 1);
    assert_eq!(session.search("invoice is:unread in:inbox", 0, 1).await.expect("search").hits.len(), 1);

    for bad in ["\"unclosed", "colour:red", "(a"] {
        match session.search(bad, 0, 0).await {
            Err(quail::Error::InvalidInput(m)) => assert!(m.contains("at "), "{bad}: {m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let huge = "a ".repeat(10_000);
    assert!(session.search(&huge, 0, 0).await.is_err(), "over the announced maxSearchQueryBytes");

    // A session restricted to Archive sees nothing of the Inbox.
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let archive = boxes.iter().find(|m| m.role == quail::Role::Archive).expect("archive").id;
    let narrow = session.restrict(&[archive], true, None).await.expect("restrict");
    assert_eq!(narrow.search("invoice", 0, 0).await.expect("search").total, 0);
}
