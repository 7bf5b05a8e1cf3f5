//! civicline: a voice IVR and skill-based queue-routing engine for a city's 311 line.
//!
//! # Layout
//! - [`sip`]: message parsing and printing, typed headers, framing, transactions with timers
//!   A to M, response routing, SDP offer/answer. Pure.
//! - [`engine`]: the [`engine::Engine`] — calls (UAS dialogs), what to answer, what to record.
//!   Driven by `handle_input(now, Input)` / `handle_timeout(now)` / `poll_output()` /
//!   `poll_timeout()`. Pure.
//! - [`events`]: the call events every metric derives from.
//! - [`config`]: the TOML configuration, every key defaulted.
//! - [`runtime`]: tokio glue — UDP/TCP sockets, the RTP port pool, the event-log writer and
//!   its sqlx store (SQLite or PostgreSQL), the HTTP API (`runtime::api`: tokens, live state
//!   and SSE, cases, rules, exports, Prometheus, Open311), graceful shutdown.
//!
//! No I/O and no clock outside `runtime/`: time is an argument, so tests drive it.
//!
//! # One call
//! A datagram arrives on a UDP socket (`runtime::transport`) and becomes `Input::Sip`. The engine
//! parses it (`sip::message`), validates it, matches it to a server transaction
//! (`sip::transaction`), negotiates SDP (`sip::sdp`), takes an RTP port from the pool, answers
//! 100/180/200 and emits `Output::Record(Received)` and `Record(Answered)`. The runtime sends
//! the bytes and appends the events to the log, which commits them in batches. The 200 is
//! retransmitted on the transaction's timer until the ACK arrives; a BYE ends the call and
//! records `Ended` with the talk time.

pub mod config;
pub mod engine;
pub mod events;
pub mod ewt;
pub mod ivr;
pub mod media;
pub mod numbers;
pub mod routing;
pub mod runtime;
pub mod sip;
pub mod speech;
