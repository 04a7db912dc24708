//! The body of the `smtp_session` fuzz target (tests and `cfg(fuzzing)`
//! only): arbitrary bytes through a session with a scripted mail server.
//! Invariants: no panic; every reply line is a three-digit code and text;
//! nothing delivered through DATA holds a bare CR or LF; input held
//! unprocessed stays bounded.

use std::collections::VecDeque;
use std::time::Instant;

use crate::session::{Action, AuthVerdict, DeliverVerdict, Mode, RcptVerdict, Session, Settings};

/// Feeds `data` (the first byte chooses how it is split, and by its low
/// bit whether the session is an MX or a submission one) to one session.
pub fn smtp_session(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let settings = Settings {
        hostname: "mx.fuzz".into(),
        max_message_bytes: 64 * 1024,
        max_recipients: 8,
        tls_available: true,
        mode: if split & 1 == 0 { Mode::Mx } else { Mode::Submission },
        implicit_tls: false,
    };
    let (mut session, first) =
        Session::new(settings, "127.0.0.1".parse().expect("ip"), "f".into(), Instant::now());
    let mut queue: VecDeque<Action> = first.into();
    let mut pieces = input.chunks(usize::from(split).max(1));
    let mut closed = false;
    loop {
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Reply(r) => {
                    for line in r.split_terminator("\r\n") {
                        let b = line.as_bytes();
                        assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit), "reply {line:?}");
                        assert!(b[3] == b' ' || b[3] == b'-', "reply {line:?}");
                    }
                    assert!(r.ends_with("\r\n"));
                }
                Action::Close => closed = true,
                Action::StartTls => queue.extend(session.tls_started()),
                Action::CheckRecipient(addr) => {
                    let v = match addr.len() % 4 {
                        0 => RcptVerdict::Accept,
                        1 => RcptVerdict::Unknown,
                        2 => RcptVerdict::Full,
                        _ => RcptVerdict::Accept,
                    };
                    queue.extend(session.recipient_checked(v));
                }
                Action::Authenticate { user, secret } => {
                    let v = if secret == "right" { AuthVerdict::Ok } else { AuthVerdict::Bad };
                    queue.extend(session.authenticated(v, &user));
                }
                Action::Deliver(_, raw) | Action::Submit(_, raw) => {
                    assert!(raw.len() <= 64 * 1024 + 4096, "a message over the limit was delivered");
                    queue.extend(session.delivered(DeliverVerdict::Stored("q".into())));
                }
            }
        }
        if closed {
            return;
        }
        let Some(piece) = pieces.next() else {
            return;
        };
        queue.extend(session.receive(piece, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The fuzz target's body over its checked-in seeds, each split every
    /// way the first byte can choose, on stable.
    #[test]
    fn the_fuzz_body_holds_over_its_seeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/smtp_session");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("seeds").flatten() {
            let seed = std::fs::read(e.path()).expect("seed");
            for split in [1u8, 2, 3, 7, 64, 255] {
                let mut data = vec![split];
                data.extend_from_slice(seed.get(1..).unwrap_or_default());
                super::smtp_session(&data);
                n += 1;
            }
        }
        assert!(n >= 30, "{n} runs");
    }
}
