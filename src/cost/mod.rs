//! Money: prices, what each request cost over all its attempts, business outcomes, and
//! the reports finance reads. Money is `Decimal` US dollars, never a float: costs are
//! summed over millions of requests and must reconcile to the cent.

pub mod ledger;
pub mod outcome;
mod prices;
pub mod report;

pub use ledger::{AttemptCost, Bill, Metered};
pub(crate) use prices::optional_money;
pub use prices::{ModelPrice, PriceTable};
