//! SIP, layered as pjsip layers it: message syntax and typed headers, transport addressing and
//! stream framing, transactions (RFC 3261 section 17), responses and routing (18.2.2), and SDP
//! offer/answer, digest authentication and the registrar (not wired to REGISTER yet). All pure; the UAS dialog and call logic that uses them lives in `engine`.

pub mod digest;
pub mod framing;
pub mod headers;
pub mod message;
pub mod registrar;
pub mod response;
pub mod sdp;
pub mod transaction;
pub mod transport;
