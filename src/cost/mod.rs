//! Money: prices, what each attempt at a request cost, business outcomes, and the
//! reports finance reads. Money is `Decimal` US dollars, never a float: costs are summed
//! over millions of requests and must reconcile to the cent.

pub mod outcome;
mod prices;
pub mod report;

pub use prices::{money, optional_money, Metered, ModelPrice, PriceTable};
