//! Media: pure frame-in/frame-out audio and RTP code; the runtime paces and moves packets.
//!
//! Nothing here reads a clock, touches a socket or logs: time arrives as RTP timestamp units
//! and every parser takes untrusted bytes without panicking.

pub mod dtmf_inband;
pub mod g711;
pub mod rfc4733;
pub mod rtp;
