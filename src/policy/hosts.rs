//! Where a URL or an e-mail address points, for `host_in` conditions and
//! `allowed_hosts` constraints. Parsing follows the WHATWG URL standard (what
//! browsers and most HTTP clients do: IDNA, lower case, IPv4 forms such as `0x7f.1`),
//! and anything parsers are known to disagree on (credentials in the authority,
//! backslashes, percent-escapes in the host, whitespace, invisible characters,
//! schemes other than http and https) is refused: the answer is then "cannot tell",
//! which never satisfies an allow rule.

use std::fmt;

use url::{Host, Url};

use super::names::is_invisible;

/// A host and, when not the scheme's default, a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: Host<String>,
    port: Option<u16>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// The target of `text`, an http(s) URL or an e-mail address (`mailto:` or bare);
/// `None` when it is neither or is written in a form parsers disagree on.
pub fn target_of(text: &str) -> Option<Target> {
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c) || c == '\\')
    {
        return None;
    }
    if let Some((scheme, rest)) = text.split_once("://") {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains(['@', '%']) {
            return None;
        }
        let url = Url::parse(text).ok()?;
        let host = without_trailing_dot(url.host()?.to_owned())?;
        return Some(Target {
            host,
            port: url.port(),
        });
    }
    let address = match text.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("mailto:") => &text[7..],
        _ => text,
    };
    email_domain(address).map(|host| Target { host, port: None })
}

/// The domain of a single plain address `local@domain`: no display names, lists,
/// comments or quoted local parts, each of which lets one string name two mailboxes.
fn email_domain(address: &str) -> Option<Host<String>> {
    let (local, domain) = address.split_once('@')?;
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._%+-".contains(c));
    if !local_ok || domain.is_empty() || domain.contains(['@', ':', '/', '?', '#', '[', '%']) {
        return None;
    }
    match Host::parse(domain).ok()? {
        Host::Domain(name) => without_trailing_dot(Host::Domain(name)),
        Host::Ipv4(_) | Host::Ipv6(_) => None,
    }
}

/// `example.com.` is the same DNS name as `example.com`.
fn without_trailing_dot(host: Host<String>) -> Option<Host<String>> {
    match host {
        Host::Domain(name) => {
            let name = name.strip_suffix('.').unwrap_or(&name).to_string();
            (!name.is_empty() && !name.contains("..")).then_some(Host::Domain(name))
        }
        ip => Some(ip),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    /// No port written: only the scheme's default.
    Default,
    Exact(u16),
    Any,
}

/// An allowlist entry: `example.com`, `*.example.com` (subdomains, not the apex),
/// `10.0.0.7`, `[::1]`, each optionally with `:port` or `:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: Host<String>,
    subdomains: bool,
    port: PortRule,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (subdomains, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (host_text, port) = split_port(rest)?;
        let host = Host::parse(host_text)
            .ok()
            .and_then(without_trailing_dot)
            .ok_or_else(|| format!("`{text}` is not a host name or IP address"))?;
        if subdomains && !matches!(host, Host::Domain(_)) {
            return Err(format!("`{text}`: `*.` only goes before a domain name"));
        }
        Ok(Self {
            host,
            subdomains,
            port,
        })
    }

    pub fn matches(&self, target: &Target) -> bool {
        let port_ok = match self.port {
            PortRule::Default => target.port.is_none(),
            PortRule::Exact(port) => target.port == Some(port),
            PortRule::Any => true,
        };
        let host_ok = match (&self.host, &target.host) {
            (Host::Domain(base), Host::Domain(name)) if self.subdomains => name
                .strip_suffix(base.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            (mine, theirs) => mine == theirs,
        };
        port_ok && host_ok
    }
}

fn split_port(text: &str) -> Result<(&str, PortRule), String> {
    // An IPv6 literal carries its own colons inside brackets.
    let port_at = match text.rfind(']') {
        Some(close) => text[close..].find(':').map(|at| close + at),
        None => text.rfind(':'),
    };
    let Some(at) = port_at else {
        return Ok((text, PortRule::Default));
    };
    let port = match &text[at + 1..] {
        "*" => PortRule::Any,
        digits => PortRule::Exact(
            digits
                .parse()
                .map_err(|_| format!("`{text}`: `{digits}` is not a port"))?,
        ),
    };
    Ok((&text[..at], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str], text: &str) -> bool {
        let patterns: Vec<HostPattern> = patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect();
        target_of(text).is_some_and(|t| patterns.iter().any(|p| p.matches(&t)))
    }

    #[test]
    fn plain_urls_and_addresses() {
        let list = ["api.example.com", "*.docs.example.com"];
        assert!(allowed(&list, "https://api.example.com/v1?q=1"));
        assert!(allowed(&list, "HTTPS://API.Example.COM./v1"));
        assert!(allowed(&list, "https://a.docs.example.com/"));
        assert!(!allowed(&list, "https://docs.example.com/"));
        assert!(!allowed(&list, "https://evil-docs.example.com/"));
        assert!(allowed(&["example.com"], "bob@example.com"));
        assert!(allowed(&["example.com"], "mailto:bob@EXAMPLE.com"));
    }

    #[test]
    fn tricks_are_refused() {
        let list = ["api.example.com"];
        for trick in [
            "https://api.example.com@evil.com/",
            "https://evil.com@api.example.com/",
            "https://api.example.com:443@evil.com",
            "https://evil.com\\@api.example.com",
            "https://api.example.com.evil.com/",
            "https://api%2eexample.com/",
            "https://api.example.com:8443/",
            "ftp://api.example.com/",
            "file://api.example.com/etc/passwd",
            "api.example.com",
            "//api.example.com/x",
            "https://api.exаmple.com/",
            "https://api.example.com\u{200b}/",
            " https://api.example.com/",
            "https://api.example.com..",
        ] {
            assert!(!allowed(&list, trick), "{trick}");
        }
        for trick in [
            "bob@example.com@evil.com",
            "bob@evil.com,alice@example.com",
            "\"bob@example.com\"@evil.com",
            "Bob <bob@evil.com>",
            "bob@[127.0.0.1]",
        ] {
            assert!(!allowed(&["example.com"], trick), "{trick}");
        }
    }

    #[test]
    fn ip_literals_and_ports() {
        assert!(!allowed(&["localhost"], "http://127.0.0.1/"));
        assert!(allowed(&["127.0.0.1"], "http://0x7f.1/"));
        assert!(allowed(&["127.0.0.1"], "http://2130706433/"));
        assert!(allowed(&["[::1]:8080"], "http://[0:0::1]:8080/"));
        assert!(!allowed(&["[::1]"], "http://[::1]:8080/"));
        assert!(allowed(&["example.com:*"], "http://example.com:9000/"));
        assert!(allowed(&["example.com"], "https://example.com:443/"));
        assert!(allowed(
            &["bücher.example"],
            "https://xn--bcher-kva.example/"
        ));
        assert!(allowed(
            &["xn--bcher-kva.example"],
            "https://BÜCHER.example/"
        ));
        assert!(HostPattern::parse("*.127.0.0.1").is_err());
        assert!(HostPattern::parse("example.com:http").is_err());
    }
}
