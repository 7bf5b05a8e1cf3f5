//! Expected-wait-time estimation for the 311 queues: estimators, Erlang formulas, announcement
//! wording and the `bench ewt` simulator.

pub mod announce;
pub mod erlang;
pub mod estimators;
pub mod sim;
