//! What a guest's HTTP request may carry and where it may go.
//!
//! Owns the rules the host applies to every request a plugin sends: the
//! headers a guest may set (the host sets `Host` from the URL and owns the
//! framing; hop-by-hop and proxy headers are refused, naming the header; at
//! most `MAX_HEADERS` headers and `MAX_HEADER_BYTES` bytes), how a redirect
//! is followed (method, body, and the credentials a redirect to another
//! origin loses), and a resolver that refuses names resolving only to
//! link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services).
//! Also the TLS settings every entry's client shares (`tls`): the system's
//! CA roots are read and parsed once per agent, not once per entry.
//!
//! Must never let a guest choose a virtual host, a framing or a proxy, and
//! never decide the allow-list itself (`url_allowed` does).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

/// The TLS client settings of every plugin entry: the platform's CA roots
/// (verified as reqwest's own platform verifier does), HTTP/1.1 only. Built
/// on first use and shared: a system store is thousands of files, and
/// reading it per entry made start-up cost grow with the entries.
pub(super) fn tls() -> Result<rustls::ClientConfig, String> {
    static TLS: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
            .map_err(|e| format!("the system's CA certificates: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    })
    .clone()
}

/// Most headers a guest may set on one request.
pub const MAX_HEADERS: usize = 64;
/// Most bytes (names and values) of the headers a guest sets on one request.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Headers the host owns: the target (`Host`), the framing and the
/// connection, which a guest could use to reach another virtual host or
/// smuggle a second request.
const FORBIDDEN: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// Headers a redirect to another origin drops: credentials and where the
/// request came from.
const CREDENTIALS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "cookie2",
    "referer",
];

/// The guest's headers as a header map, or why they are refused.
pub fn guest_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    for (name, value) in headers {
        count += 1;
        bytes = bytes.saturating_add(name.len()).saturating_add(value.len());
        if count > MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} headers"));
        }
        if bytes > MAX_HEADER_BYTES {
            return Err(format!("headers larger than {MAX_HEADER_BYTES} bytes"));
        }
        let lower = name.to_ascii_lowercase();
        if FORBIDDEN.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            return Err(format!(
                "header `{name}` is set by the host; a plugin may not set it"
            ));
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name `{name}`"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("bad value for header `{name}`"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Whether `status` is a redirect the host follows.
pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The method of the request that follows a redirect, and whether it keeps
/// its body: 303 turns anything but `HEAD` into `GET`; 301 and 302 turn a
/// `POST` into a `GET` (as browsers do); 307 and 308 keep both.
pub fn method_after(status: StatusCode, method: &Method) -> (Method, bool) {
    match status.as_u16() {
        303 if *method != Method::HEAD => (Method::GET, false),
        301 | 302 if *method == Method::POST => (Method::GET, false),
        _ => (method.clone(), true),
    }
}

/// Drops what must not follow a redirect from `from` to `to`: the
/// credentials and `Referer` when the origin (scheme, host, port) changes,
/// the body's headers when the body is dropped.
pub fn headers_after(headers: &mut HeaderMap, from: &url::Url, to: &url::Url, keeps_body: bool) {
    if from.origin() != to.origin() {
        for name in CREDENTIALS {
            headers.remove(name);
        }
    }
    if !keeps_body {
        for name in ["content-type", "content-encoding", "content-language"] {
            headers.remove(name);
        }
    }
}

/// Link-local addresses: cloud metadata services live there.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves names with the system resolver, dropping link-local addresses;
/// a name that resolves only to such addresses is an error. (IP literals
/// are never resolved: a rule must name such an address itself.)
pub struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_link_local(a.ip()))
                .collect();
            if usable.is_empty() && !all.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to link-local addresses, which are refused \
                     (allow the address itself to reach it)"
                )
                .into());
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_host_owns_the_target_and_the_framing() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "TE",
            "Upgrade",
            "Proxy-Authorization",
            "proxy-connection",
        ] {
            let err = guest_headers([(name, "x")]).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
        let ok = guest_headers([("authorization", "Bearer t"), ("x-amz-access-token", "a")]);
        assert_eq!(ok.map(|m| m.len()).ok(), Some(2));
        assert!(guest_headers([("bad name", "x")]).is_err());
        assert!(guest_headers([("x-a", "line\nbreak")]).is_err());
    }

    #[test]
    fn header_count_and_size_are_capped() {
        let names: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("x-h{i}")).collect();
        let many = names.iter().map(|n| (n.as_str(), "v"));
        assert!(guest_headers(many).unwrap_err().contains("64 headers"));
        let big = "v".repeat(MAX_HEADER_BYTES);
        assert!(guest_headers([("x-big", big.as_str())])
            .unwrap_err()
            .contains("bytes"));
        let fits = names.iter().take(MAX_HEADERS).map(|n| (n.as_str(), "v"));
        assert_eq!(guest_headers(fits).map(|m| m.len()).ok(), Some(MAX_HEADERS));
    }

    #[test]
    fn redirects_change_the_method_as_browsers_do() {
        let s = |n| StatusCode::from_u16(n).unwrap_or(StatusCode::OK);
        assert_eq!(method_after(s(303), &Method::POST), (Method::GET, false));
        assert_eq!(method_after(s(303), &Method::HEAD), (Method::HEAD, true));
        assert_eq!(method_after(s(302), &Method::POST), (Method::GET, false));
        assert_eq!(method_after(s(302), &Method::PUT), (Method::PUT, true));
        assert_eq!(method_after(s(307), &Method::POST), (Method::POST, true));
        assert!(is_redirect(s(308)) && !is_redirect(s(304)) && !is_redirect(s(300)));
    }

    #[test]
    fn credentials_stay_with_their_origin() {
        let mut h = guest_headers([
            ("authorization", "Bearer t"),
            ("referer", "https://a.example/x"),
            ("cookie", "c=1"),
            ("x-keep", "1"),
            ("content-type", "application/json"),
        ])
        .unwrap_or_default();
        let mut same = h.clone();
        headers_after(
            &mut same,
            &url("https://a.example/1"),
            &url("https://a.example/2"),
            true,
        );
        assert_eq!(same.len(), 5);
        for other in [
            "https://b.example/",
            "http://a.example/",
            "https://a.example:8443/",
        ] {
            let mut moved = h.clone();
            headers_after(&mut moved, &url("https://a.example/1"), &url(other), true);
            let mut left: Vec<&str> = moved.keys().map(|k| k.as_str()).collect();
            left.sort();
            assert_eq!(left, ["content-type", "x-keep"], "{other}");
        }
        headers_after(
            &mut h,
            &url("https://a.example/1"),
            &url("https://a.example/2"),
            false,
        );
        assert!(!h.contains_key("content-type"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_link_local_addresses_is_refused() {
        use reqwest::dns::Resolve;
        let resolve = |name: &str| {
            let name: reqwest::dns::Name = name.parse().unwrap_or_else(|_| panic!("{name}"));
            Resolver.resolve(name)
        };
        let err = resolve("169.254.169.254")
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("link-local")));
        let ok = resolve("127.0.0.1").await.ok().map(|a| a.count());
        assert_eq!(ok, Some(1));
    }

    #[test]
    fn link_local_addresses_are_recognised() {
        for ip in ["169.254.169.254", "fe80::1", "::ffff:169.254.1.1"] {
            assert!(
                is_link_local(ip.parse().unwrap_or(IpAddr::from([0u8; 4]))),
                "{ip}"
            );
        }
        for ip in ["127.0.0.1", "10.0.0.1", "::1", "fd00::1"] {
            assert!(
                !is_link_local(ip.parse().unwrap_or(IpAddr::from([169, 254, 0, 1]))),
                "{ip}"
            );
        }
    }
}
