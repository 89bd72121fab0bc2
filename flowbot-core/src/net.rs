//! The outbound network guard (feature `net`): what an HTTP call whose URL comes from a
//! runtime-editable source (a workflow node, a rule, a model's tool call) may reach.
//!
//! By default a [`NetPolicy`] refuses:
//!
//! - schemes other than `http` and `https`;
//! - loopback (`127.0.0.0/8`, `::1`), unspecified (`0.0.0.0/8`, `::`), private (`10.0.0.0/8`,
//!   `172.16.0.0/12`, `192.168.0.0/16`, IPv6 site-local `fec0::/10`), shared (carrier-grade
//!   NAT, `100.64.0.0/10`), link-local (`169.254.0.0/16`, `fe80::/10`), unique-local
//!   (`fc00::/7`), multicast, broadcast and reserved addresses (`240.0.0.0/4`, the
//!   documentation and benchmarking networks, and IPv6 outside the global unicast `2000::/3`);
//! - cloud metadata endpoints (`169.254.169.254`, `169.254.170.2`, `169.254.170.23`,
//!   `100.100.100.200`, `168.63.129.16`, `fd00:ec2::254`, `fd00:ec2::23`);
//! - IPv6 addresses that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//!   IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) whose embedded
//!   address is one of the above.
//!
//! Addresses written in other forms (`http://2130706433/`, `http://0177.0.0.1/`,
//! `http://0x7f.1/`) are the same address to the guard: URLs are parsed the way browsers
//! parse them (the WHATWG URL standard), which turns each of these into `127.0.0.1`.
//!
//! An allow-list opens what an operator needs: IP addresses (`10.0.0.5`, `::1`), CIDR
//! networks (`10.0.0.0/8`, `fd00::/8`) and host names (`billing.internal`), each optionally
//! with a port (`10.0.0.5:8080`, `[::1]:8080`, `[fd00::/8]:443`, `billing.internal:8443`).
//! See [`AllowEntry`] for how entries match.
//!
//! ## Where the check happens
//!
//! [`NetPolicy::apply`] sets up a reqwest client so that:
//!
//! - host names are resolved once by a [`GuardedResolver`], which hands reqwest only the
//!   addresses the policy allows, and reqwest connects to exactly those: a name cannot
//!   resolve to a public address when checked and to a private one when connected (DNS
//!   rebinding);
//! - every redirect is checked again ([`NetPolicy::redirect_policy`]), at most
//!   [`MAX_REDIRECTS`] of them;
//! - no proxy is used (a proxy would resolve the names itself).
//!
//! [`NetPolicy::check_url`] checks a URL before it is sent: its scheme, an address written
//! in it, and the port of a name that the allow-list names only with ports. Call it before
//! each request: a client alone checks addresses it resolves, but not IP literals or ports
//! of the first request. A resolution override ([`reqwest::ClientBuilder::resolve`]) or a
//! proxy added after [`NetPolicy::apply`] bypasses the guard.
//!
//! Errors ([`NetError`]) name the host, the address and why it was refused, never a URL's
//! user name, password or query ([`redacted_url`]).
//!
//! ```
//! use std::sync::Arc;
//! use flowbot_core::net::NetPolicy;
//!
//! let policy = Arc::new(NetPolicy::allowing(["10.0.0.5:8080", "billing.internal"])?);
//! let client = policy.apply(reqwest::Client::builder()).build()?;
//! let url = reqwest::Url::parse("http://10.0.0.5:8080/orders")?;
//! policy.check_url(&url)?;
//! let refused = policy.check_url(&reqwest::Url::parse("http://10.0.0.6/")?).unwrap_err();
//! assert_eq!(
//!     refused.to_string(),
//!     "10.0.0.6 is a private address; allow it in [network] allow"
//! );
//! # let _ = client;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The most redirects a guarded client follows.
pub const MAX_REDIRECTS: usize = 10;

/// Where the words of a refusal send the operator.
const HINT: &str = "allow it in [network] allow";

/// Cloud metadata endpoints: AWS, GCP, Azure, Oracle and others (`169.254.169.254`), AWS ECS
/// and EKS credentials, Alibaba Cloud, Azure's platform address.
const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// AWS's IPv6 metadata and EKS pod identity endpoints.
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x23),
];

/// The kind of address a default policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, IPv6 site-local `fec0::/10`.
    Private,
    /// Shared address space of carrier-grade NAT, `100.64.0.0/10`.
    Shared,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Reserved, documentation and benchmarking networks, and IPv6 outside `2000::/3`.
    Reserved,
    /// A cloud provider's metadata endpoint.
    Metadata,
}

impl AddressClass {
    /// The class in words, with its article: "a loopback address".
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::Shared => "a shared (carrier-grade NAT) address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::UniqueLocal => "a unique-local address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "a broadcast address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::Metadata => "a cloud metadata address",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the IPv4 address itself, on a dual-stack socket.
    Mapped,
    /// `::a.b.c.d` (deprecated).
    Compatible,
    /// `64:ff9b::a.b.c.d`, translated by a NAT64 gateway.
    Nat64,
    /// `2002:aabb:ccdd::/48`, tunnelled to `a.b.c.d`.
    SixToFour,
}

impl fmt::Display for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Embedding::Mapped => "IPv4-mapped",
            Embedding::Compatible => "IPv4-compatible",
            Embedding::Nat64 => "NAT64",
            Embedding::SixToFour => "6to4",
        })
    }
}

/// Why [`classify`] puts an address outside the public internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// The class of the address, or of the IPv4 address it embeds.
    pub class: AddressClass,
    /// The IPv4 address an IPv6 address embeds, and how, when that decided the class.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class.describe())?;
        if let Some((how, v4)) = self.embedded {
            write!(f, " ({how} {v4})")?;
        }
        Ok(())
    }
}

/// The class of an address outside the public internet, `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<Verdict> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|class| Verdict {
            class,
            embedded: None,
        }),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    if METADATA_V4.contains(&ip) {
        return Some(AddressClass::Metadata);
    }
    let class = match ip.octets() {
        [0, ..] => AddressClass::Unspecified,
        [127, ..] => AddressClass::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => AddressClass::Private,
        [100, 64..=127, ..] => AddressClass::Shared,
        [169, 254, ..] => AddressClass::LinkLocal,
        // IETF protocol assignments, documentation (TEST-NET-1, 2 and 3), benchmarking.
        [192, 0, 0 | 2, _] | [198, 51, 100, _] | [203, 0, 113, _] | [198, 18..=19, ..] => {
            AddressClass::Reserved
        }
        [224..=239, ..] => AddressClass::Multicast,
        [255, 255, 255, 255] => AddressClass::Broadcast,
        [240..=255, ..] => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

/// The IPv4 address an IPv6 address embeds, if it has one of the embedding forms.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some((Embedding::Mapped, low)),
        [0, 0, 0, 0, 0, 0, ..] => Some((Embedding::Compatible, low)),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some((Embedding::Nat64, low)),
        [0x2002, a, b, ..] => Some((
            Embedding::SixToFour,
            Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8),
        )),
        _ => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Verdict> {
    let plain = |class| {
        Some(Verdict {
            class,
            embedded: None,
        })
    };
    if ip == Ipv6Addr::UNSPECIFIED {
        return plain(AddressClass::Unspecified);
    }
    if ip == Ipv6Addr::LOCALHOST {
        return plain(AddressClass::Loopback);
    }
    if METADATA_V6.contains(&ip) {
        return plain(AddressClass::Metadata);
    }
    if let Some((how, v4)) = embedded_v4(ip) {
        return classify_v4(v4).map(|class| Verdict {
            class,
            embedded: Some((how, v4)),
        });
    }
    let first = ip.segments()[0];
    let class = match first {
        0xfc00..=0xfdff => AddressClass::UniqueLocal,
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfec0..=0xfeff => AddressClass::Private,
        0xff00..=0xffff => AddressClass::Multicast,
        // IETF protocol assignments (Teredo among them) and documentation.
        0x2001 if ip.segments()[1] < 0x0200 || ip.segments()[1] == 0x0db8 => AddressClass::Reserved,
        // Outside global unicast: unassigned, discard-only, local-use NAT64 and the rest.
        _ if first & 0xe000 != 0x2000 => AddressClass::Reserved,
        _ => return None,
    };
    plain(class)
}

/// Errors of the network guard. Messages name hosts and addresses, never a URL's user name,
/// password or query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// An allow-list entry could not be read.
    #[error("'{entry}' is not a valid network allow-list entry: {reason}")]
    Entry {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is not `http` or `https`.
    #[error("the scheme '{scheme}' is not allowed (only http and https)")]
    Scheme {
        /// The scheme.
        scheme: String,
    },
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The host is, or resolves to, an address the policy refuses.
    #[error("{}", refused(.host, .addr, .verdict))]
    Refused {
        /// The host as the URL names it (a name, or the address itself).
        host: String,
        /// The address refused.
        addr: IpAddr,
        /// Why.
        verdict: Verdict,
    },
    /// The allow-list names the host only with other ports.
    #[error("{host} is allowed on port {} only, not on port {port}; {hint}", ports(.allowed), hint = HINT)]
    Port {
        /// The host name.
        host: String,
        /// The port asked for.
        port: u16,
        /// The ports the allow-list names for this host.
        allowed: Vec<u16>,
    },
    /// The host name could not be resolved.
    #[error("{host}: the name could not be resolved: {reason}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The host name resolves to no address at all.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// A redirect led somewhere the policy refuses.
    #[error("redirect to {to} refused: {source}")]
    Redirect {
        /// The redirect's target, without user name, password or query.
        to: String,
        /// Why it was refused.
        #[source]
        source: Box<NetError>,
    },
    /// A chain of redirects was too long.
    #[error("more than {max} redirects")]
    TooManyRedirects {
        /// The most redirects followed.
        max: usize,
    },
}

fn refused(host: &str, addr: &IpAddr, verdict: &Verdict) -> String {
    if literal(host) == Some(*addr) {
        format!("{addr} is {verdict}; {HINT}")
    } else {
        format!("{host} resolves to {addr}, {verdict}; {HINT}")
    }
}

fn ports(allowed: &[u16]) -> String {
    let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
    list.join(", ")
}

impl NetError {
    /// True when the policy refused the URL (a scheme, an address, a port, a redirect), false
    /// for a name that could not be resolved.
    pub fn is_refusal(&self) -> bool {
        match self {
            NetError::Resolve { .. } | NetError::NoAddress { .. } | NetError::Entry { .. } => false,
            NetError::Redirect { source, .. } => source.is_refusal(),
            _ => true,
        }
    }

    /// The guard's error in an error's chain (a reqwest error whose resolver or redirect
    /// policy refused), if there is one.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a NetError> {
        std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref())
    }
}

/// A URL as errors may show it: scheme, host, port and path, without user name, password,
/// query or fragment.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Neither fails on a URL with a host; a URL without one has no user name to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The address a URL's host names, for an IP literal (`127.0.0.1`, `[::1]`).
fn literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// A host name as the allow-list compares it: lower case, without a trailing dot.
fn normal_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// What an [`AllowEntry`] opens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllowTarget {
    /// An address (a network of one) or a network.
    Net(IpNet),
    /// A host name, lower case, without a trailing dot.
    Host(String),
}

/// One allow-list entry: an address, a network or a host name, optionally with a port.
///
/// - An address or network opens the addresses in it: in a URL (`http://10.0.0.5:8080/`) at
///   the entry's port, if it has one; as what a host name resolves to only when the entry has
///   no port (the resolver does not see the port).
/// - A host name opens that name whatever it resolves to, at the entry's port if it has one
///   (at other ports [`NetPolicy::check_url`] refuses the name).
/// - A cloud metadata address is opened only by an entry for exactly that address (or a host
///   name), never by a wider network.
/// - An entry for an IPv4 address also opens its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`).
///
/// Written `10.0.0.5`, `10.0.0.5:8080`, `::1`, `[::1]:8080`, `10.0.0.0/8`, `10.0.0.0/8:443`,
/// `fd00::/8`, `[fd00::/8]:443`, `billing.internal` or `billing.internal:8443`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowEntry {
    target: AllowTarget,
    port: Option<u16>,
}

impl AllowEntry {
    /// What the entry opens.
    pub fn target(&self) -> &AllowTarget {
        &self.target
    }

    /// The one port it opens, or `None` for every port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    fn port_matches(&self, port: Option<u16>) -> bool {
        self.port.is_none() || (port.is_some() && self.port == port)
    }

    /// Whether the entry opens `ip` (classified `verdict`) at `port` (`None`: unknown).
    fn opens(&self, ip: IpAddr, port: Option<u16>, verdict: &Verdict) -> bool {
        let AllowTarget::Net(net) = &self.target else {
            return false;
        };
        if !self.port_matches(port) {
            return false;
        }
        if verdict.class == AddressClass::Metadata && net.prefix_len() != net.max_prefix_len() {
            return false;
        }
        net.contains(&ip)
            || matches!(verdict.embedded, Some((Embedding::Mapped, v4)) if net.contains(&IpAddr::V4(v4)))
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            AllowTarget::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
            AllowTarget::Net(n) => n.to_string(),
            AllowTarget::Host(h) => h.clone(),
        };
        match self.port {
            None => f.write_str(&target),
            Some(p) if target.contains(':') => write!(f, "[{target}]:{p}"),
            Some(p) => write!(f, "{target}:{p}"),
        }
    }
}

impl FromStr for AllowEntry {
    type Err = NetError;

    fn from_str(entry: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::Entry {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        };
        let s = entry.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.contains("://") {
            return Err(bad(
                "give an address, a network or a host name, optionally with :port, not a URL",
            ));
        }
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad(&format!("'{p}' is not a port (1 to 65535)"))),
            Ok(p) => Ok(Some(p)),
        };
        // [v6] or [v6/len], with an optional :port.
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("'[' without a closing ']'"))?;
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(p) => port(p)?,
                    None => return Err(bad("only :port may follow ']'")),
                },
            };
            let net = net(inner)
                .ok_or_else(|| bad(&format!("'{inner}' is not an IPv6 address or network")))?;
            return Ok(AllowEntry {
                target: AllowTarget::Net(net),
                port,
            });
        }
        if let Some(n) = net(s) {
            return Ok(AllowEntry {
                target: AllowTarget::Net(n),
                port: None,
            });
        }
        let (host, port) = match s.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(bad(
                    "an IPv6 address or network with a port is written in brackets: [::1]:8080",
                ));
            }
            Some((h, p)) => (h, port(p)?),
            None => (s, None),
        };
        if let Some(n) = net(host) {
            return Ok(AllowEntry {
                target: AllowTarget::Net(n),
                port,
            });
        }
        if host.contains('/') {
            return Err(bad(&format!(
                "'{host}' is not a network (an address, '/' and a prefix length: 10.0.0.0/8)"
            )));
        }
        let name = host_name(host).map_err(|r| bad(&r))?;
        Ok(AllowEntry {
            target: AllowTarget::Host(name),
            port,
        })
    }
}

/// An address (as a network of one) or a CIDR network.
fn net(s: &str) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

/// A host name checked and normalized, or why it is not one.
fn host_name(host: &str) -> Result<String, String> {
    let name = normal_name(host);
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "'{host}' is not an IP address, a network or a host name (labels of letters, digits and '-'; international names in their xn-- form)"
            ));
        }
    }
    // A URL whose host ends in a number is an IPv4 address in some form (`0177.0.0.1`,
    // `0x7f.1`): as a name it would never match.
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!(
            "'{host}' reads as an IPv4 address: write it in dotted decimal (127.0.0.1)"
        ));
    }
    Ok(name)
}

/// What an outbound call from a runtime-editable source may reach (see the [module
/// docs](self)).
///
/// The default refuses every address outside the public internet and every scheme but
/// `http` and `https`; [`NetPolicy::allowing`] adds an allow-list; [`NetPolicy::open`]
/// checks nothing but the scheme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    open: bool,
    allow: Vec<AllowEntry>,
}

impl NetPolicy {
    /// The default policy: public addresses over http and https only.
    pub fn guarded() -> Self {
        NetPolicy::default()
    }

    /// No address checks at all (the scheme must still be http or https): for URLs an
    /// operator wrote, and for tests.
    pub fn open() -> Self {
        NetPolicy {
            open: true,
            allow: Vec::new(),
        }
    }

    /// The default policy with these allow-list entries (see [`AllowEntry`] for their
    /// forms); an entry that does not parse is an error naming it.
    pub fn allowing<I, S>(entries: I) -> Result<Self, NetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let allow = entries
            .into_iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(NetPolicy { open: false, allow })
    }

    /// The policy with one more allow-list entry.
    pub fn allow(mut self, entry: AllowEntry) -> Self {
        self.allow.push(entry);
        self
    }

    /// Whether this is [`NetPolicy::open`].
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The allow-list.
    pub fn allowed(&self) -> &[AllowEntry] {
        &self.allow
    }

    /// Check a URL before it is sent: the scheme, an IP address written as its host, and the
    /// port of a host name the allow-list names only with ports. Other host names are
    /// checked by the [`GuardedResolver`] when the client connects.
    pub fn check_url(&self, url: &Url) -> Result<(), NetError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NetError::Scheme {
                scheme: url.scheme().to_owned(),
            });
        }
        if self.open {
            return Ok(());
        }
        let host = url.host_str().ok_or(NetError::NoHost)?;
        let port = url.port_or_known_default();
        if let Some(ip) = literal(host) {
            return self.check_ip(host, ip, port);
        }
        let name = normal_name(host);
        let mut listed = self
            .allow
            .iter()
            .filter(|e| matches!(&e.target, AllowTarget::Host(h) if *h == name))
            .peekable();
        if listed.peek().is_none() {
            return Ok(());
        }
        let mut allowed = Vec::new();
        for e in listed {
            match e.port {
                None => return Ok(()),
                Some(p) if Some(p) == port => return Ok(()),
                Some(p) => allowed.push(p),
            }
        }
        allowed.sort_unstable();
        allowed.dedup();
        Err(NetError::Port {
            host: name,
            port: port.unwrap_or_default(),
            allowed,
        })
    }

    /// Check an address a host names or resolves to, at `port` when known.
    pub fn check_ip(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), NetError> {
        if self.open {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(v) if self.allow.iter().any(|e| e.opens(ip, port, &v)) => Ok(()),
            Some(verdict) => Err(NetError::Refused {
                host: host.to_owned(),
                addr: ip,
                verdict,
            }),
        }
    }

    /// The addresses a host name resolved to that the policy allows, in their order; an
    /// error naming the first refused one when none is allowed.
    pub fn filter_resolved(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, NetError> {
        let name = normal_name(host);
        let trusted = self.open
            || self
                .allow
                .iter()
                .any(|e| matches!(&e.target, AllowTarget::Host(h) if *h == name));
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            if allowed.contains(&addr) {
                continue;
            }
            match self.check_ip(host, addr.ip(), None) {
                Ok(()) => allowed.push(addr),
                Err(_) if trusted => allowed.push(addr),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(e)) => Err(e),
            (true, None) => Err(NetError::NoAddress {
                host: host.to_owned(),
            }),
        }
    }

    /// The resolver of a guarded client.
    pub fn resolver(self: &Arc<Self>) -> GuardedResolver {
        GuardedResolver {
            policy: self.clone(),
        }
    }

    /// A redirect policy that checks each redirect's URL with [`NetPolicy::check_url`] and
    /// follows at most [`MAX_REDIRECTS`].
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            // The first URL in `previous` is the request's own.
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(NetError::TooManyRedirects { max: MAX_REDIRECTS });
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => {
                    let to = redacted_url(attempt.url());
                    attempt.error(NetError::Redirect {
                        to,
                        source: Box::new(e),
                    })
                }
            }
        })
    }

    /// Guard a client: resolve names with [`NetPolicy::resolver`], check redirects with
    /// [`NetPolicy::redirect_policy`], use no proxy. An open policy leaves the builder as it
    /// is. Check each URL with [`NetPolicy::check_url`] before sending it.
    pub fn apply(self: &Arc<Self>, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.open {
            return builder;
        }
        builder
            .no_proxy()
            .dns_resolver(self.resolver())
            .redirect(self.redirect_policy())
    }
}

/// A reqwest resolver that resolves a name once and hands reqwest only the addresses its
/// [`NetPolicy`] allows, so the client connects to a checked address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<NetPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| NetError::Resolve {
                    host: host.clone(),
                    reason: e.to_string(),
                })?;
            let allowed = policy.filter_resolved(&host, found)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests;
