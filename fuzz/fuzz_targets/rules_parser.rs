//! `Rules::parse` on arbitrary text (the config file's and the command line's rules, now with
//! routes: `via socks4a://HOST:PORT,... as NAME`, and egress: `out ADDR,...`, `out dev IFACE`,
//! `out same`): no panic; a parsed rule prints as text that parses back to the same rule; a route
//! has 1..=MAX_PARENTS parents of one protocol, and only on an allow rule; an `out` list has
//! 1..=MAX_OUT_ADDRS unicast addresses (none IPv4-mapped), an interface name 1..=MAX_DEVICE_LEN
//! bytes, and only on an allow rule. Seeds for the `out` forms: regressions/rules_parser-*.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socks4_core::rules::{Action, Egress, MAX_DEVICE_LEN, MAX_OUT_ADDRS, MAX_PARENTS, Rule, Rules};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(rules) = Rules::parse(text) else { return };
    for rule in &rules.0 {
        let printed = rule.to_string();
        let again: Rule = printed.parse().unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"));
        assert_eq!(&again, rule, "{printed:?}");
        if let Some(route) = &rule.route {
            assert_eq!(rule.action, Action::Allow);
            assert!((1..=MAX_PARENTS).contains(&route.parents.len()));
            assert!(route.parents.iter().all(|p| p.scheme == route.parents[0].scheme && p.port != 0));
        }
        match &rule.egress {
            Some(Egress::Addrs(addrs)) => {
                assert!((1..=MAX_OUT_ADDRS).contains(&addrs.len()));
                assert!(addrs.iter().all(|ip| ip.to_canonical() == *ip && !ip.is_unspecified() && !ip.is_multicast()));
            }
            Some(Egress::Device(name)) => assert!((1..=MAX_DEVICE_LEN).contains(&name.len()) && !name.contains('/')),
            Some(_) | None => {}
        }
        if rule.egress.is_some() {
            assert_eq!(rule.action, Action::Allow);
        }
    }
});
