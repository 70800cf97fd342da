//! `Rules::parse` on arbitrary text (the config file's and the command line's rules, now with
//! routes: `via socks4a://HOST:PORT,... as NAME isolate client,user`, and egress: `out ADDR,...`, `out dev IFACE`,
//! `out same`): no panic; a parsed rule prints as text that parses back to the same rule; a route
//! has 1..=MAX_PARENTS parents of one protocol, and only on an allow rule; an `out` list has
//! 1..=MAX_OUT_ADDRS unicast addresses (none IPv4-mapped), an interface name 1..=MAX_DEVICE_LEN
//! bytes, and only on an allow rule; `as NAME` is a user id (no NUL, at most 255 bytes, or
//! MAX_ISOLATED_PREFIX with `isolate`). Seeds for the `out` and `isolate` forms: regressions/rules_parser-*.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socks4_core::rules::{
    Action, Egress, MAX_DEVICE_LEN, MAX_ISOLATED_PREFIX, MAX_OUT_ADDRS, MAX_PARENTS, Rule, Rules,
};

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
            // `as NAME` is a SOCKS4 user id, and with `isolate` leaves room for `-` and the id.
            let limit = if route.isolate.is_some() { MAX_ISOLATED_PREFIX } else { 255 };
            assert!(route.user.as_ref().is_none_or(|u| u.len() <= limit && !u.contains('\0')));
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
