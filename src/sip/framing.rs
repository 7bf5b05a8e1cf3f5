//! Stream framing for SIP over TCP (RFC 3261 section 18.3): a message ends where its
//! Content-Length says. Also recognises RFC 5626 CRLF keep-alives. Pure: bytes in, a verdict out.

use super::message::{canonical_header_name, find_header_end, MAX_MESSAGE_BYTES};

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// A keep-alive: `len` bytes of CRLF to discard; a double CRLF ("ping") wants a CRLF "pong".
    KeepAlive { len: usize, pong: bool },
    /// One whole message of `len` bytes is at the front of the buffer.
    Message { len: usize },
    /// The stream cannot be framed any more; close the connection.
    Invalid(&'static str),
}

/// Looks at the front of a stream buffer.
pub fn next_frame(buffer: &[u8]) -> Frame {
    let crlfs = buffer
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if crlfs > 0 {
        return Frame::KeepAlive {
            len: crlfs,
            pong: buffer.starts_with(b"\r\n\r\n"),
        };
    }
    let Some((head_end, body_start)) = find_header_end(buffer) else {
        return if buffer.len() > MAX_MESSAGE_BYTES {
            Frame::Invalid("header section without an end")
        } else {
            Frame::Incomplete
        };
    };
    if head_end > MAX_MESSAGE_BYTES {
        return Frame::Invalid("header section too large");
    }
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let mut length = None;
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if canonical_header_name(name.trim()) == "Content-Length" {
                match value.trim().parse::<usize>() {
                    Ok(n) => length = Some(n),
                    Err(_) => return Frame::Invalid("unusable Content-Length on a stream"),
                }
            }
        }
    }
    // RFC 3261 18.3 makes Content-Length mandatory on streams; without it the body is empty.
    let body = length.unwrap_or(0);
    if body > MAX_MESSAGE_BYTES {
        return Frame::Invalid("body too large");
    }
    let total = body_start + body;
    if buffer.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message { len: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_by_content_length() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcOPTIONS";
        assert_eq!(next_frame(msg), Frame::Message { len: msg.len() - 7 });
        assert_eq!(next_frame(&msg[..20]), Frame::Incomplete);
        assert_eq!(
            next_frame(b"\r\n\r\nINV"),
            Frame::KeepAlive { len: 4, pong: true }
        );
        assert!(matches!(next_frame(&vec![b'a'; 70_000]), Frame::Invalid(_)));
        assert!(matches!(
            next_frame(b"INVITE x SIP/2.0\r\nContent-Length: -5\r\n\r\n"),
            Frame::Invalid(_)
        ));
    }
}
