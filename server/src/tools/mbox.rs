//! mbox: the `From ` separated file format.
//!
//! Writing is mboxrd: a body line that starts with `From ` after any number
//! of `>` gets one more `>`, so reading it back removes exactly one and
//! every message comes back byte for byte. Each message is followed by one
//! `\n`, which the reader removes again, so even a message that does not end
//! with a newline survives. mboxo files (which escape only `From `) are read
//! too, with the ambiguity that format has.

/// Escaping convention of an mbox file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `>*From ` gains or loses one `>`.
    Mboxrd,
    /// Only `From ` / `>From ` (lossy for bodies that had `>From `).
    Mboxo,
}

fn is_from_line(line: &[u8]) -> bool {
    line.starts_with(b"From ")
}

/// Splits an mbox into (separator line, message) pairs, unescaping bodies.
pub fn split(data: &[u8], flavor: Flavor) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut at = 0;
    while at < data.len() {
        let end = data[at..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| at + i + 1);
        let line = &data[at..end];
        if is_from_line(line) {
            if let Some(m) = current.take() {
                out.push(finish(m));
            }
            current = Some((line.to_vec(), Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.extend_from_slice(&unescape(line, flavor));
        }
        at = end;
    }
    if let Some(m) = current.take() {
        out.push(finish(m));
    }
    out
}

fn finish((from, mut body): (Vec<u8>, Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
    // The separator newline written after each message.
    if body.ends_with(b"\n") {
        body.pop();
    }
    (from, body)
}

fn unescape(line: &[u8], flavor: Flavor) -> std::borrow::Cow<'_, [u8]> {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    let escaped = quotes > 0 && line[quotes..].starts_with(b"From ");
    match flavor {
        Flavor::Mboxrd if escaped => line[1..].to_vec().into(),
        Flavor::Mboxo if escaped && quotes == 1 => line[1..].to_vec().into(),
        _ => line.into(),
    }
}

/// Appends one message to an mboxrd stream.
pub fn write_message(out: &mut Vec<u8>, sender: &str, received_ms: i64, raw: &[u8]) {
    let sender =
        if sender.is_empty() || sender.contains(char::is_whitespace) { "MAILER-DAEMON" } else { sender };
    out.extend_from_slice(format!("From {sender} {}\n", asctime(received_ms)).as_bytes());
    let mut at = 0;
    while at < raw.len() {
        let end = raw[at..].iter().position(|&b| b == b'\n').map_or(raw.len(), |i| at + i + 1);
        let line = &raw[at..end];
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if line[quotes..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        at = end;
    }
    out.push(b'\n');
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `Thu Jan  1 00:00:00 1970` (UTC) for a time in ms.
pub fn asctime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        y
    )
}

/// The time in a `From ` separator line (`From sender asctime`), if any.
pub fn from_line_time(line: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(line).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    // Find "Mon DD HH:MM:SS YYYY" anywhere after the sender.
    for w in words.windows(4) {
        let Some(m) = MONTHS.iter().position(|x| *x == w[0]) else { continue };
        let Ok(d) = w[1].parse::<i64>() else { continue };
        let hms: Vec<i64> = w[2].split(':').map(|p| p.parse().unwrap_or(-1)).collect();
        let Ok(y) = w[3].parse::<i64>() else { continue };
        let (h, min, sec) = (hms[0], hms.get(1).copied().unwrap_or(-1), hms.get(2).copied().unwrap_or(0));
        if !(1..=31).contains(&d)
            || !(1..=9999).contains(&y)
            || !(0..24).contains(&h)
            || !(0..60).contains(&min)
            || !(0..=60).contains(&sec)
        {
            continue;
        }
        let secs = days_from_civil(y, m as i64 + 1, d) * 86_400 + h * 3600 + min * 60 + sec;
        return Some(secs * 1000);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(1_741_768_200_000), "Wed Mar 12 08:30:00 2025");
        for ms in [0, 951_782_400_000, 1_741_768_200_000, 4_102_444_799_000] {
            assert_eq!(from_line_time(format!("From a@b {}\n", asctime(ms)).as_bytes()), Some(ms));
        }
        assert_eq!(from_line_time(b"From nobody\n"), None);
        // Out-of-range fields (found by fuzzing: they overflowed) are no date.
        assert_eq!(from_line_time(b"From a@u Jan  1 00:00:00 88888888888888888\n"), None);
        assert_eq!(from_line_time(b"From a@u Jan 99 00:00:00 2001\n"), None);
        assert_eq!(from_line_time(b"From a@u Jan  1 25:00:00 2001\n"), None);
    }

    #[test]
    fn mboxrd_round_trips_every_tricky_body() {
        let messages: Vec<&[u8]> = vec![
            b"Subject: a\n\nFrom the start\n>From quoted\n>>From deeper\n",
            b"Subject: b\r\n\r\nno final newline",
            b"Subject: c\n\nends with blank lines\n\n\n",
            b"From : not a separator when escaped\n\nbody\n",
            b"",
        ];
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            write_message(&mut out, "x@example.org", i as i64 * 1000, m);
        }
        let back = split(&out, Flavor::Mboxrd);
        assert_eq!(back.len(), messages.len());
        for ((from, body), want) in back.iter().zip(&messages) {
            assert!(from.starts_with(b"From x@example.org "));
            assert_eq!(body.as_slice(), *want);
        }
    }

    #[test]
    fn mboxo_unescapes_one_level_only() {
        let data = b"From a Thu Jan  1 00:00:00 1970\n>From x\n>>From y\n\n";
        let back = split(data, Flavor::Mboxo);
        assert_eq!(back[0].1, b"From x\n>>From y\n");
    }
}
