//! Where a message goes, with no I/O: recipients grouped by domain, the
//! hosts of a domain in the order RFC 5321 §5.1 gives (MX by preference,
//! equal ones shuffled; no MX: the domain's own address; a null MX, RFC
//! 7505: no mail at all), and what a reply code means for a recipient.

use std::collections::BTreeMap;

/// What a reply means for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: taken.
    Delivered,
    /// 4xx (or no usable answer): try again later.
    TempFail,
    /// 5xx: give up and bounce.
    PermFail,
}

/// The verdict of a reply code.
pub fn verdict_of(code: u16) -> Verdict {
    match code {
        200..=299 => Verdict::Delivered,
        500..=599 => Verdict::PermFail,
        _ => Verdict::TempFail,
    }
}

/// The recipients grouped by their domain (lower-cased), in a stable order.
pub fn by_domain(recipients: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recipients {
        let domain = r.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
        out.entry(domain).or_default().push(r.clone());
    }
    out
}

/// What DNS said about a domain's mail exchangers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records: (preference, exchange).
    Records(Vec<(u16, String)>),
    /// The name exists but has no MX: deliver to its own address.
    NoRecords,
    /// The name does not exist.
    NoDomain,
}

/// Where to deliver for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// These hosts, in this order.
    Hosts(Vec<String>),
    /// Nowhere, for good: the reply to record.
    Refused(String),
}

/// The hosts to try for `domain`, given DNS's answer; `shuffle` orders
/// hosts of equal preference (random in the worker, fixed in tests).
pub fn route(domain: &str, answer: MxAnswer, shuffle: &mut dyn FnMut(&mut [String])) -> Route {
    match answer {
        MxAnswer::NoDomain => Route::Refused(format!("550 5.1.2 the domain {domain} does not exist")),
        MxAnswer::NoRecords => Route::Hosts(vec![domain.to_owned()]),
        MxAnswer::Records(mut records) => {
            let null = |h: &str| h.is_empty() || h == ".";
            if records.iter().any(|(_, h)| null(h)) {
                return Route::Refused(format!("556 5.1.10 the domain {domain} accepts no mail (null MX)"));
            }
            records.sort_by_key(|(p, _)| *p);
            let mut hosts = Vec::with_capacity(records.len());
            let mut i = 0;
            while i < records.len() {
                let pref = records[i].0;
                let mut same: Vec<String> = records[i..]
                    .iter()
                    .take_while(|(p, _)| *p == pref)
                    .map(|(_, h)| h.trim_end_matches('.').to_ascii_lowercase())
                    .collect();
                i += same.len();
                shuffle(&mut same);
                for h in same {
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                }
            }
            Route::Hosts(hosts)
        }
    }
}

/// A domain literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) as an address.
pub fn domain_literal(domain: &str) -> Option<std::net::IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner.strip_prefix("IPv6:").or_else(|| inner.strip_prefix("ipv6:")).unwrap_or(inner);
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(_: &mut [String]) {}

    #[test]
    fn mx_hosts_go_by_preference() {
        let answer = MxAnswer::Records(vec![
            (20, "b.example.".into()),
            (10, "A.example.".into()),
            (30, "c.example".into()),
            (20, "b.example".into()),
        ]);
        assert_eq!(
            route("example", answer, &mut fixed),
            Route::Hosts(vec!["a.example".into(), "b.example".into(), "c.example".into()])
        );
    }

    #[test]
    fn equal_preferences_are_shuffled_and_only_among_themselves() {
        let answer = MxAnswer::Records(vec![(10, "x".into()), (10, "y".into()), (5, "first".into())]);
        let mut reverse = |s: &mut [String]| s.reverse();
        assert_eq!(
            route("d", answer, &mut reverse),
            Route::Hosts(vec!["first".into(), "y".into(), "x".into()])
        );
    }

    #[test]
    fn no_mx_means_the_domain_itself_and_null_mx_means_nothing() {
        assert_eq!(route("d.test", MxAnswer::NoRecords, &mut fixed), Route::Hosts(vec!["d.test".into()]));
        assert!(matches!(
            route("d.test", MxAnswer::Records(vec![(0, ".".into())]), &mut fixed),
            Route::Refused(r) if r.starts_with("556 5.1.10")
        ));
        assert!(
            matches!(route("d.test", MxAnswer::NoDomain, &mut fixed), Route::Refused(r) if r.starts_with("550"))
        );
    }

    #[test]
    fn reply_codes_map_to_verdicts() {
        assert_eq!(verdict_of(250), Verdict::Delivered);
        assert_eq!(verdict_of(451), Verdict::TempFail);
        assert_eq!(verdict_of(550), Verdict::PermFail);
        assert_eq!(verdict_of(999), Verdict::TempFail);
    }

    #[test]
    fn recipients_group_by_domain_case_insensitively() {
        let g = by_domain(&["a@X.test".into(), "b@x.test".into(), "c@y.test".into()]);
        assert_eq!(g.len(), 2);
        assert_eq!(g["x.test"], vec!["a@X.test".to_string(), "b@x.test".to_string()]);
    }

    #[test]
    fn domain_literals_parse() {
        assert_eq!(domain_literal("[127.0.0.1]"), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(domain_literal("[IPv6:::1]"), Some("::1".parse().expect("ip")));
        assert_eq!(domain_literal("example.org"), None);
    }
}
