#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proptest::prelude::*;
use reqwest::Url;
use reqwest::dns::{Name, Resolve};

use super::*;

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn class_of(s: &str) -> Option<AddressClass> {
    classify(ip(s)).map(|v| v.class)
}

#[test]
fn every_refused_class_of_ipv4_and_ipv6() {
    use AddressClass::*;
    let cases = [
        ("0.0.0.0", Some(Unspecified)),
        ("0.1.2.3", Some(Unspecified)),
        ("127.0.0.1", Some(Loopback)),
        ("127.255.0.9", Some(Loopback)),
        ("10.0.0.5", Some(Private)),
        ("172.16.0.1", Some(Private)),
        ("172.31.255.255", Some(Private)),
        ("192.168.1.1", Some(Private)),
        ("100.64.0.1", Some(Shared)),
        ("100.127.255.254", Some(Shared)),
        ("169.254.1.1", Some(LinkLocal)),
        ("169.254.169.254", Some(Metadata)),
        ("169.254.170.2", Some(Metadata)),
        ("100.100.100.200", Some(Metadata)),
        ("168.63.129.16", Some(Metadata)),
        ("224.0.0.1", Some(Multicast)),
        ("239.255.255.250", Some(Multicast)),
        ("255.255.255.255", Some(Broadcast)),
        ("240.0.0.1", Some(Reserved)),
        ("192.0.2.10", Some(Reserved)),
        ("198.18.0.1", Some(Reserved)),
        ("::", Some(Unspecified)),
        ("::1", Some(Loopback)),
        ("fe80::1", Some(LinkLocal)),
        ("fc00::1", Some(UniqueLocal)),
        ("fd12:3456::1", Some(UniqueLocal)),
        ("fd00:ec2::254", Some(Metadata)),
        ("fec0::1", Some(Private)),
        ("ff02::1", Some(Multicast)),
        ("2001:db8::1", Some(Reserved)),
        ("100::1", Some(Reserved)),
        ("4000::1", Some(Reserved)),
        // Public.
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001::1", None),
    ];
    for (addr, want) in cases {
        assert_eq!(class_of(addr), want, "{addr}");
    }
}

#[test]
fn ipv6_forms_that_embed_ipv4_are_judged_by_the_embedded_address() {
    let cases = [
        (
            "::ffff:127.0.0.1",
            Embedding::Mapped,
            "127.0.0.1",
            AddressClass::Loopback,
        ),
        (
            "::ffff:10.0.0.5",
            Embedding::Mapped,
            "10.0.0.5",
            AddressClass::Private,
        ),
        (
            "::127.0.0.1",
            Embedding::Compatible,
            "127.0.0.1",
            AddressClass::Loopback,
        ),
        (
            "64:ff9b::10.0.0.5",
            Embedding::Nat64,
            "10.0.0.5",
            AddressClass::Private,
        ),
        (
            "64:ff9b::169.254.169.254",
            Embedding::Nat64,
            "169.254.169.254",
            AddressClass::Metadata,
        ),
        (
            "2002:7f00:1::1",
            Embedding::SixToFour,
            "127.0.0.1",
            AddressClass::Loopback,
        ),
        (
            "2002:c0a8:101::",
            Embedding::SixToFour,
            "192.168.1.1",
            AddressClass::Private,
        ),
    ];
    for (addr, how, v4, class) in cases {
        let v = classify(ip(addr)).unwrap_or_else(|| panic!("{addr} is refused"));
        assert_eq!(v.class, class, "{addr}");
        assert_eq!(v.embedded, Some((how, v4.parse().unwrap())), "{addr}");
    }
    // The same forms around public addresses are public.
    for addr in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1"] {
        assert_eq!(classify(ip(addr)), None, "{addr}");
    }
    let e = NetPolicy::default()
        .check_url(&url("http://[::ffff:127.0.0.1]:8080/"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "::ffff:127.0.0.1 is a loopback address (IPv4-mapped 127.0.0.1); allow it in [network] allow"
    );
}

#[test]
fn decimal_octal_and_hex_forms_are_the_address_they_stand_for() {
    let policy = NetPolicy::default();
    for (written, host) in [
        ("http://2130706433/", "127.0.0.1"),
        ("http://0177.0.0.1/", "127.0.0.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("http://0x7f000001/", "127.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("http://017700000001/", "127.0.0.1"),
        ("http://012.0.0.5/", "10.0.0.5"),
        ("http://167772165/", "10.0.0.5"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254"),
        ("http://[::ffff:127.0.0.1]/", "[::ffff:7f00:1]"),
        ("http://[::ffff:7f00:1]/", "[::ffff:7f00:1]"),
        ("http://[0:0:0:0:0:0:0:1]/", "[::1]"),
    ] {
        let u = url(written);
        assert_eq!(u.host_str(), Some(host), "{written}");
        let e = policy.check_url(&u).unwrap_err();
        assert!(
            matches!(e, NetError::Refused { .. }) && e.is_refusal(),
            "{written}: {e}"
        );
    }
}

#[test]
fn literal_urls_of_every_class_are_refused_and_public_ones_pass() {
    let policy = NetPolicy::default();
    for refused in [
        "http://127.0.0.1:8080/x",
        "http://0.0.0.0/",
        "http://10.0.0.5/",
        "http://172.16.0.1/",
        "http://192.168.0.10/",
        "http://100.64.0.1/",
        "http://169.254.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://240.0.0.1/",
        "http://[::]/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[fd00:ec2::254]/",
        "http://[ff02::1]/",
        "http://[64:ff9b::a00:5]/",
        "http://[2002:a00:5::]/",
        "http://[::a00:5]/",
    ] {
        let e = policy.check_url(&url(refused)).unwrap_err();
        assert!(matches!(e, NetError::Refused { .. }), "{refused}: {e}");
        assert!(
            e.to_string().ends_with("; allow it in [network] allow"),
            "{e}"
        );
    }
    assert_eq!(
        policy
            .check_url(&url("http://10.0.0.5/"))
            .unwrap_err()
            .to_string(),
        "10.0.0.5 is a private address; allow it in [network] allow"
    );
    assert_eq!(
        policy
            .check_url(&url("http://169.254.169.254/"))
            .unwrap_err()
            .to_string(),
        "169.254.169.254 is a cloud metadata address; allow it in [network] allow"
    );
    for public in [
        "http://8.8.8.8:53/",
        "https://93.184.215.14/",
        "https://[2606:4700:4700::1111]/dns-query",
        "https://example.com/",
        "http://localhost/",
    ] {
        // Names are the resolver's to check.
        policy.check_url(&url(public)).unwrap();
    }
}

#[test]
fn only_http_and_https_schemes_even_when_open() {
    for policy in [NetPolicy::default(), NetPolicy::open()] {
        for u in [
            "file:///etc/passwd",
            "ftp://example.com/pub",
            "gopher://127.0.0.1:70/_HELO",
            "data:text/plain,hi",
            "ws://example.com/",
        ] {
            let e = policy.check_url(&url(u)).unwrap_err();
            let scheme = u.split(':').next().unwrap();
            assert_eq!(
                e.to_string(),
                format!("the scheme '{scheme}' is not allowed (only http and https)")
            );
        }
    }
    NetPolicy::open()
        .check_url(&url("http://127.0.0.1/"))
        .unwrap();
}

#[test]
fn allow_entries_parse_and_print_in_every_form() {
    for (written, shown) in [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[::1]:8080", "[::1]:8080"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.0.0.0/8:443", "10.0.0.0/8:443"),
        ("fd00::/8", "fd00::/8"),
        ("[fd00::/8]:443", "[fd00::/8]:443"),
        ("Billing.Internal.", "billing.internal"),
        ("billing.internal:8443", "billing.internal:8443"),
        (" localhost ", "localhost"),
    ] {
        let entry: AllowEntry = written.parse().unwrap();
        assert_eq!(entry.to_string(), shown, "{written}");
        assert_eq!(shown.parse::<AllowEntry>().unwrap(), entry, "{shown}");
    }
    let e: AllowEntry = "billing.internal:8443".parse().unwrap();
    assert_eq!(e.target(), &AllowTarget::Host("billing.internal".into()));
    assert_eq!(e.port(), Some(8443));
}

#[test]
fn bad_allow_entries_name_the_entry_and_the_fault() {
    for (entry, fault) in [
        ("", "it is empty"),
        ("http://10.0.0.5/", "not a URL"),
        ("10.0.0.0/33", "is not a network"),
        ("10.0.0.5:0", "'0' is not a port"),
        ("10.0.0.5:99999", "'99999' is not a port"),
        ("host:", "'' is not a port"),
        ("[::1", "without a closing ']'"),
        ("[::1]x", "only :port may follow ']'"),
        ("[example.com]", "is not an IPv6 address or network"),
        ("0177.0.0.1", "reads as an IPv4 address"),
        ("0x7f.1", "reads as an IPv4 address"),
        ("foo bar", "is not an IP address, a network or a host name"),
        (
            "-bad.example",
            "is not an IP address, a network or a host name",
        ),
        ("a..b", "is not an IP address, a network or a host name"),
        ("bücher.example", "xn--"),
    ] {
        let e = entry.parse::<AllowEntry>().unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "'{entry}' is not a valid network allow-list entry: "
            )) && text.contains(fault),
            "{entry}: {text}"
        );
    }
    let e = NetPolicy::allowing(["127.0.0.1", "10.0.0.0/40"]).unwrap_err();
    assert!(e.to_string().starts_with("'10.0.0.0/40'"), "{e}");
}

#[test]
fn an_entry_opens_its_address_at_its_port_or_at_every_port() {
    let by_port = NetPolicy::allowing(["127.0.0.1:8080", "[::1]:8080"]).unwrap();
    by_port.check_url(&url("http://127.0.0.1:8080/")).unwrap();
    by_port.check_url(&url("http://[::1]:8080/")).unwrap();
    for refused in [
        "http://127.0.0.1:8081/",
        "http://127.0.0.1/",
        "https://127.0.0.1/",
        "http://[::1]/",
        "http://127.0.0.2:8080/",
    ] {
        by_port.check_url(&url(refused)).unwrap_err();
    }
    let any_port = NetPolicy::allowing(["127.0.0.1", "10.0.0.0/8"]).unwrap();
    for allowed in [
        "http://127.0.0.1/",
        "https://127.0.0.1:9443/",
        "http://10.200.0.1:8080/",
        // The IPv4-mapped form of an allowed address.
        "http://[::ffff:127.0.0.1]:5/",
    ] {
        any_port.check_url(&url(allowed)).unwrap();
    }
    any_port.check_url(&url("http://192.168.0.1/")).unwrap_err();
    any_port.check_url(&url("http://[::1]/")).unwrap_err();
}

#[test]
fn metadata_is_opened_by_its_own_address_only() {
    let wide = NetPolicy::allowing(["169.254.0.0/16", "fd00::/8"]).unwrap();
    wide.check_url(&url("http://169.254.1.1/")).unwrap();
    wide.check_url(&url("http://[fd00::1]/")).unwrap();
    for u in ["http://169.254.169.254/", "http://[fd00:ec2::254]/"] {
        let e = wide.check_url(&url(u)).unwrap_err();
        assert!(e.to_string().contains("cloud metadata"), "{e}");
    }
    let exact = NetPolicy::allowing(["169.254.169.254:80"]).unwrap();
    exact.check_url(&url("http://169.254.169.254/")).unwrap();
}

#[test]
fn a_name_listed_with_ports_is_refused_on_other_ports() {
    let policy = NetPolicy::allowing(["billing.internal:8443", "billing.internal:9000"]).unwrap();
    policy
        .check_url(&url("https://billing.internal:8443/"))
        .unwrap();
    policy
        .check_url(&url("http://BILLING.internal.:9000/"))
        .unwrap();
    let e = policy
        .check_url(&url("https://user:pw@billing.internal/?token=t"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "billing.internal is allowed on port 8443, 9000 only, not on port 443; allow it in [network] allow"
    );
    assert!(e.is_refusal());
    // A name the allow-list does not mention is the resolver's to check.
    policy.check_url(&url("https://other.internal/")).unwrap();
}

fn sock(s: &str) -> SocketAddr {
    SocketAddr::new(ip(s), 0)
}

#[test]
fn resolved_addresses_are_filtered_and_the_refusal_names_host_and_address() {
    let policy = NetPolicy::default();
    let kept = policy
        .filter_resolved(
            "mixed.example",
            [
                sock("10.0.0.5"),
                sock("93.184.215.14"),
                sock("93.184.215.14"),
            ],
        )
        .unwrap();
    assert_eq!(kept, [sock("93.184.215.14")]);
    let e = policy
        .filter_resolved("evil.example", [sock("10.0.0.5"), sock("::1")])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "evil.example resolves to 10.0.0.5, a private address; allow it in [network] allow"
    );
    let e = policy.filter_resolved("void.example", []).unwrap_err();
    assert_eq!(
        e,
        NetError::NoAddress {
            host: "void.example".into()
        }
    );
    assert!(!e.is_refusal());

    // An address entry without a port opens the address behind any name; with a port it
    // does not (the resolver does not know the port); a name entry opens the name.
    let by_addr = NetPolicy::allowing(["10.0.0.5"]).unwrap();
    assert_eq!(
        by_addr
            .filter_resolved("a.example", [sock("10.0.0.5")])
            .unwrap(),
        [sock("10.0.0.5")]
    );
    let by_port = NetPolicy::allowing(["10.0.0.5:8080"]).unwrap();
    by_port
        .filter_resolved("a.example", [sock("10.0.0.5")])
        .unwrap_err();
    let by_name = NetPolicy::allowing(["a.example:8080"]).unwrap();
    assert_eq!(
        by_name
            .filter_resolved("A.Example.", [sock("10.0.0.5"), sock("169.254.169.254")])
            .unwrap(),
        [sock("10.0.0.5"), sock("169.254.169.254")]
    );
    by_name
        .filter_resolved("b.example", [sock("10.0.0.5")])
        .unwrap_err();
}

#[tokio::test]
async fn localhost_resolves_to_loopback_and_is_refused() {
    let policy = Arc::new(NetPolicy::default());
    let e = match policy
        .resolver()
        .resolve("localhost".parse::<Name>().unwrap())
        .await
    {
        Ok(addrs) => panic!("localhost passed: {:?}", addrs.collect::<Vec<_>>()),
        Err(e) => e,
    };
    let net = NetError::find(&*e).unwrap();
    let NetError::Refused {
        host,
        addr,
        verdict,
    } = net
    else {
        panic!("{net}");
    };
    assert_eq!(host, "localhost");
    assert!(addr.is_loopback(), "{addr}");
    assert_eq!(verdict.class, AddressClass::Loopback);
    assert!(
        e.to_string()
            .starts_with(&format!("localhost resolves to {addr}, a loopback address")),
        "{e}"
    );

    let allowed = Arc::new(NetPolicy::allowing(["127.0.0.1", "::1"]).unwrap());
    let addrs: Vec<SocketAddr> = match allowed
        .resolver()
        .resolve("localhost".parse::<Name>().unwrap())
        .await
    {
        Ok(a) => a.collect(),
        Err(e) => panic!("{e}"),
    };
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
        "{addrs:?}"
    );

    let e = match policy
        .resolver()
        .resolve("no-such-host.invalid".parse::<Name>().unwrap())
        .await
    {
        Ok(_) => panic!("a name under .invalid resolved"),
        Err(e) => e,
    };
    let net = NetError::find(&*e).unwrap();
    assert!(
        matches!(net, NetError::Resolve { .. }) && !net.is_refusal(),
        "{net}"
    );
}

#[test]
fn urls_in_errors_lose_user_password_query_and_fragment() {
    assert_eq!(
        redacted_url(&url(
            "https://user:secret@example.com:8443/p/a?token=t#frag"
        )),
        "https://example.com:8443/p/a"
    );
    assert_eq!(redacted_url(&url("http://[::1]/")), "http://[::1]/");
}

#[test]
fn the_redirect_error_wraps_the_reason_and_is_found_in_a_chain() {
    let inner = NetPolicy::default()
        .check_url(&url("http://[::1]/"))
        .unwrap_err();
    let e = NetError::Redirect {
        to: "http://[::1]/".into(),
        source: Box::new(inner),
    };
    assert_eq!(
        e.to_string(),
        "redirect to http://[::1]/ refused: ::1 is a loopback address; allow it in [network] allow"
    );
    assert!(e.is_refusal());
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e.clone());
    assert_eq!(NetError::find(&*boxed), Some(&e));
}

proptest! {
    #[test]
    fn allow_entries_never_panic_and_round_trip(s in "\\PC{0,40}") {
        if let Ok(entry) = s.parse::<AllowEntry>() {
            prop_assert_eq!(entry.to_string().parse::<AllowEntry>().ok(), Some(entry));
        }
    }

    #[test]
    fn classify_never_panics(bits in any::<u128>(), v4 in any::<u32>()) {
        let _ = classify(IpAddr::V6(bits.into()));
        let _ = classify(IpAddr::V4(v4.into()));
    }
}
