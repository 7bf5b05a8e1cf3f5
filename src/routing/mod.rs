//! Skill-based routing for the 311 queues: the rules file (`rules`), the pure routing core
//! (`core`) and the reports computed from its event log (`metrics`).

pub mod core;
pub mod metrics;
pub mod rules;
pub mod simulate;
