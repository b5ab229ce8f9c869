//! The request head: reading it (bounded in size and time) and parsing it strictly.
//!
//! Accepted: `CONNECT <target> HTTP/1.1\r\n`, then header lines `name: value\r\n` (a token
//! name, visible ASCII values, no line folding, no `Content-Length` other than 0, no
//! `Transfer-Encoding`: a `CONNECT` has no body), then an empty line, all within
//! [`MAX_HEAD_BYTES`]. Headers are otherwise ignored: the destination is the request-target
//! and nothing else. Bytes after the head (a client may send its TLS hello without waiting
//! for the answer) are returned so they can be forwarded once the tunnel is up.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted, in bytes (including the final empty line).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;

/// Why a head could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadHeadError {
    /// More than [`MAX_HEAD_BYTES`] without the end of the head.
    #[error("request head exceeds {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// The client was too slow.
    #[error("request head not complete within {0:?}")]
    TimedOut(Duration),
    /// The client closed the connection before the end of the head.
    #[error("connection closed after {0} bytes, before the end of the request head")]
    Closed(usize),
    /// The socket failed.
    #[error("reading the request head failed: {0}")]
    Io(String),
}

/// A head as read: the bytes up to and including the empty line, and what came after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead {
    /// The head.
    pub head: Vec<u8>,
    /// Bytes the client sent after the head.
    pub early_data: Vec<u8>,
}

/// The first line that was read, even when the head as a whole could not be (for logs and
/// audit events), plus the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialHead {
    /// Why reading stopped.
    pub error: ReadHeadError,
    /// The bytes read so far.
    pub bytes: Vec<u8>,
}

fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Reads a head of at most `limit` bytes within `timeout`. Never reads more than `limit` bytes
/// from the socket.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
    timeout: Duration,
) -> Result<RawHead, PartialHead> {
    let mut buf = vec![0u8; limit];
    let mut len = 0usize;
    let deadline = tokio::time::Instant::now() + timeout;
    while let Some(free) = buf.get_mut(len..).filter(|free| !free.is_empty()) {
        let n = match tokio::time::timeout_at(deadline, stream.read(free)).await {
            Err(_elapsed) => {
                buf.truncate(len);
                return Err(PartialHead {
                    error: ReadHeadError::TimedOut(timeout),
                    bytes: buf,
                });
            }
            Ok(Err(e)) => {
                buf.truncate(len);
                return Err(PartialHead {
                    error: ReadHeadError::Io(e.to_string()),
                    bytes: buf,
                });
            }
            Ok(Ok(0)) => {
                buf.truncate(len);
                return Err(PartialHead {
                    error: ReadHeadError::Closed(len),
                    bytes: buf,
                });
            }
            Ok(Ok(n)) => n,
        };
        let before = len;
        len += n;
        if let Some(end) = buf.get(..len).and_then(|b| find_end(b, before)) {
            let early_data = buf.get(end..len).unwrap_or_default().to_vec();
            buf.truncate(end);
            return Ok(RawHead {
                head: buf,
                early_data,
            });
        }
    }
    Err(PartialHead {
        error: ReadHeadError::TooLarge,
        bytes: buf,
    })
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// A method other than `CONNECT` (answered with 405).
    #[error("method {0:?} is not CONNECT")]
    MethodNotAllowed(String),
    /// The request line is not `METHOD target HTTP/1.1`.
    #[error("malformed request line")]
    BadRequestLine,
    /// Not HTTP/1.1.
    #[error("unsupported HTTP version")]
    BadVersion,
    /// A header line is malformed.
    #[error("malformed header line {0}")]
    BadHeader(usize),
    /// More than [`MAX_HEADERS`] header lines.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// The request announces a body.
    #[error("a CONNECT request has no body")]
    HasBody,
}

/// A parsed request: the request-target text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The request-target exactly as sent (printable ASCII).
    pub target: String,
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The request line's second word as sent, if the first line can be made out (for logs).
pub fn request_target_text(bytes: &[u8]) -> Option<String> {
    let line_end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(bytes.len());
    let line = bytes.get(..line_end)?;
    let mut words = line.split(|b| *b == b' ');
    let _method = words.next()?;
    let target = words.next()?;
    Some(String::from_utf8_lossy(target).into_owned())
}

/// Splits at every `\r\n`. A bare `\r` or `\n` stays inside its line, where the checks
/// below refuse it (it is not visible ASCII).
fn split_crlf(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        let (line, after) = rest.split_at(at);
        lines.push(line);
        rest = after.get(2..).unwrap_or_default();
    }
    lines.push(rest);
    lines
}

/// Parses a complete head (as returned by [`read_head`]).
pub fn parse_head(head: &[u8]) -> Result<ConnectRequest, HeadError> {
    let body = head
        .strip_suffix(b"\r\n\r\n")
        .ok_or(HeadError::BadRequestLine)?;
    let lines = split_crlf(body);
    let (request_line, headers) = lines.split_first().ok_or(HeadError::BadRequestLine)?;
    let mut words = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(HeadError::BadRequestLine);
    };
    if method.is_empty() || !method.iter().all(|b| is_token_byte(*b)) {
        return Err(HeadError::BadRequestLine);
    }
    if method != b"CONNECT" {
        return Err(HeadError::MethodNotAllowed(
            String::from_utf8_lossy(method).into_owned(),
        ));
    }
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::BadRequestLine);
    }
    if version != b"HTTP/1.1" {
        return Err(HeadError::BadVersion);
    }
    if headers.len() > MAX_HEADERS {
        return Err(HeadError::TooManyHeaders);
    }
    for (i, line) in headers.iter().enumerate() {
        let (name, value) = parse_header(line).ok_or(HeadError::BadHeader(i + 1))?;
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || (name.eq_ignore_ascii_case(b"content-length") && value != b"0")
        {
            return Err(HeadError::HasBody);
        }
    }
    Ok(ConnectRequest {
        target: String::from_utf8_lossy(target).into_owned(),
    })
}

/// Strips spaces and tabs (HTTP's optional whitespace) from both ends.
fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// `name: value` with a token name and a value of visible ASCII, spaces and tabs (trimmed).
fn parse_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|b| *b == b':')?;
    let (name, value) = line.split_at(colon);
    let value = trim_ows(value.get(1..)?);
    let name_ok = !name.is_empty() && name.iter().all(|b| is_token_byte(*b));
    let value_ok = value
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\t');
    (name_ok && value_ok).then_some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str) -> String {
        match parse_head(head.as_bytes()) {
            Ok(r) => format!("ok {}", r.target),
            Err(e) => format!("refused: {e}"),
        }
    }

    #[test]
    fn heads_are_parsed_strictly() {
        let cases = [
            "CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Connection: Keep-Alive\r\nUser-Agent: x/1\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "connect example.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.0\r\n\r\n",
            "CONNECT example.com:443 HTTP/2\r\n\r\n",
            "CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1 extra\r\n\r\n",
            "CONNECT example.com:443\r\n\r\n",
            "CONNECT exa\u{1}mple.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\nHost: x\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost x\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\n: x\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nX: \u{7f}\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "\r\n\r\n",
            "\u{16}\u{3}\u{1}\u{2}\u{0}\r\n\r\n",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c:?} -> {}", check(c)))
            .collect();
        expect_test::expect![[r#"
            "CONNECT example.com:443 HTTP/1.1\r\n\r\n" -> ok example.com:443
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" -> ok example.com:443
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Connection: Keep-Alive\r\nUser-Agent: x/1\r\n\r\n" -> ok example.com:443
            "CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n" -> ok example.com:443
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n" -> refused: method "GET" is not CONNECT
            "connect example.com:443 HTTP/1.1\r\n\r\n" -> refused: method "connect" is not CONNECT
            "CONNECT example.com:443 HTTP/1.0\r\n\r\n" -> refused: unsupported HTTP version
            "CONNECT example.com:443 HTTP/2\r\n\r\n" -> refused: unsupported HTTP version
            "CONNECT  example.com:443 HTTP/1.1\r\n\r\n" -> refused: malformed request line
            "CONNECT example.com:443 HTTP/1.1 extra\r\n\r\n" -> refused: malformed request line
            "CONNECT example.com:443\r\n\r\n" -> refused: malformed request line
            "CONNECT exa\u{1}mple.com:443 HTTP/1.1\r\n\r\n" -> refused: malformed request line
            "CONNECT example.com:443 HTTP/1.1\nHost: x\r\n\r\n" -> refused: malformed request line
            "CONNECT example.com:443 HTTP/1.1\r\nHost: x\nX: y\r\n\r\n" -> refused: malformed header line 1
            "CONNECT example.com:443 HTTP/1.1\r\nHost x\r\n\r\n" -> refused: malformed header line 1
            "CONNECT example.com:443 HTTP/1.1\r\n: x\r\n\r\n" -> refused: malformed header line 1
            "CONNECT example.com:443 HTTP/1.1\r\nBad Name: x\r\n\r\n" -> refused: malformed header line 1
            "CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n" -> refused: malformed header line 2
            "CONNECT example.com:443 HTTP/1.1\r\nX: \u{7f}\r\n\r\n" -> refused: malformed header line 1
            "CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n" -> refused: a CONNECT request has no body
            "CONNECT example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" -> refused: a CONNECT request has no body
            "\r\n\r\n" -> refused: malformed request line
            "\u{16}\u{3}\u{1}\u{2}\0\r\n\r\n" -> refused: malformed request line"#]].assert_eq(&out.join("\n"));
        let many = format!(
            "CONNECT a.io:1 HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooManyHeaders));
    }

    #[tokio::test]
    async fn heads_are_read_within_bounds() {
        // A whole head plus early data in one write.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(
            &mut client,
            b"CONNECT a.io:1 HTTP/1.1\r\n\r\n\x16\x03\x01hello",
        )
        .await
        .unwrap();
        let head = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(head.head, b"CONNECT a.io:1 HTTP/1.1\r\n\r\n");
        assert_eq!(head.early_data, b"\x16\x03\x01hello");

        // A head split across writes, the terminator split too.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let reader =
            tokio::spawn(async move { read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT).await });
        for part in [&b"CONNECT a.io:1 HT"[..], b"TP/1.1\r\n\r", b"\n"] {
            tokio::io::AsyncWriteExt::write_all(&mut client, part)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let head = reader.await.unwrap().unwrap();
        assert_eq!(head.head, b"CONNECT a.io:1 HTTP/1.1\r\n\r\n");
        assert!(head.early_data.is_empty());

        // Oversized: exactly the limit is read, never more.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[b'A'; 20_000])
            .await
            .unwrap();
        let err = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.error, ReadHeadError::TooLarge);
        assert_eq!(err.bytes.len(), MAX_HEAD_BYTES);

        // Closed early.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"CONNECT a.io:1")
            .await
            .unwrap();
        drop(client);
        let err = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.error, ReadHeadError::Closed(14));
        assert_eq!(request_target_text(&err.bytes).as_deref(), Some("a.io:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"CONNECT a.io:1 HTTP/1.1\r\n")
            .await
            .unwrap();
        let err = read_head(&mut server, MAX_HEAD_BYTES, HEAD_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.error, ReadHeadError::TimedOut(HEAD_TIMEOUT));
        drop(client);
    }
}
