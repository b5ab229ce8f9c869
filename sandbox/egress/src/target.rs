//! The destination a client asks for: strict parsing of the `CONNECT` request-target.
//!
//! The target goes through [`protocol::manifest::HostPort::parse`], which gives every
//! destination exactly one spelling: lowercase names, no trailing dot, no userinfo, brackets
//! only around IPv6 literals, IP literals in canonical form, a decimal port without leading
//! zeros, and no name whose last label starts with a digit (some resolvers read `0x7f.1` or
//! `127.1` as an IPv4 address). So `:0443`, `[2001:DB8::1]` or `0x7f.1` are refused rather
//! than taken for another spelling of an allowed entry.

use protocol::manifest::HostPort;

/// Longest host text kept for logs and audit events, in bytes.
pub const MAX_ASKED_HOST: usize = 255;

/// Parses a request-target.
pub fn parse_target(text: &str) -> Result<HostPort, String> {
    HostPort::parse(text)
}

/// The host and port as a client wrote them, for logs and audit events: printable ASCII
/// only (anything else becomes `?`), at most [`MAX_ASKED_HOST`] bytes; the port is 0 when
/// there is none to read.
pub fn asked(text: &str) -> (String, u16) {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port.parse::<u16>().unwrap_or(0))
        }
        _ => (text, 0),
    };
    let host: String = host
        .chars()
        .take(MAX_ASKED_HOST)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    (host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_text_is_sanitised() {
        assert_eq!(asked("example.com:443"), ("example.com".to_owned(), 443));
        assert_eq!(
            asked("[example.com]:443"),
            ("[example.com]".to_owned(), 443)
        );
        assert_eq!(asked("example.com"), ("example.com".to_owned(), 0));
        assert_eq!(asked("example.com:99999"), ("example.com".to_owned(), 0));
        assert_eq!(asked("exa\u{7}mple\u{e9}:1"), ("exa?mple?".to_owned(), 1));
        assert_eq!(asked(&"a".repeat(1000)).0.len(), MAX_ASKED_HOST);
    }
}
