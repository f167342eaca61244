//! Where a request runs, and why: the routing table (providers and thresholds, swapped
//! whole on reload), the risk of a request, the targets an escalation may try, and the
//! check that decides whether a local answer is good enough.

pub mod config;
pub mod plan;
mod reason;
mod risk;
mod table;
mod verdict;

pub use reason::{Reason, Route};
pub use risk::{assess_risk, Risk};
pub use table::{RoutingState, RoutingTable, TableSource, Target};
pub use verdict::{check_local_answer, SHORTFALLS};
