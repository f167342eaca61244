//! Spend caps: what an agent or a tenant has spent today and this month (UTC), against
//! the caps it may not pass.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// Daily and monthly ceilings in US dollars; `None` is no ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendCaps {
    pub daily: Option<Decimal>,
    pub monthly: Option<Decimal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Daily,
    Monthly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
        }
    }
}

/// A cap that has been reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapReached {
    pub period: Period,
    pub cap: Decimal,
    pub spent: Decimal,
    /// Until the period ends and spending starts again from zero.
    pub resets_in: Duration,
}

/// Spend in the current UTC day and month. Periods roll over on first use after they
/// end, so an idle agent costs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    day: NaiveDate,
    today: Decimal,
    this_month: Decimal,
}

impl Spend {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            day: now.date_naive(),
            today: Decimal::ZERO,
            this_month: Decimal::ZERO,
        }
    }

    fn roll(&mut self, now: DateTime<Utc>) {
        let day = now.date_naive();
        if day == self.day {
            return;
        }
        if (day.year(), day.month()) != (self.day.year(), self.day.month()) {
            self.this_month = Decimal::ZERO;
        }
        self.today = Decimal::ZERO;
        self.day = day;
    }

    pub fn add(&mut self, amount: Decimal, now: DateTime<Utc>) {
        self.roll(now);
        self.today += amount;
        self.this_month += amount;
    }

    /// `(today, this month)` at `now`.
    pub fn totals(&mut self, now: DateTime<Utc>) -> (Decimal, Decimal) {
        self.roll(now);
        (self.today, self.this_month)
    }

    /// The first cap already reached (spent at or above it), if any. A request admitted
    /// under a cap may finish above it: its cost is only known at its end.
    pub fn reached(&mut self, caps: SpendCaps, now: DateTime<Utc>) -> Option<CapReached> {
        self.roll(now);
        let check = |period, cap: Option<Decimal>, spent: Decimal, resets: NaiveDate| {
            cap.filter(|cap| spent >= *cap).map(|cap| CapReached {
                period,
                cap,
                spent,
                resets_in: until(resets, now),
            })
        };
        check(Period::Daily, caps.daily, self.today, next_day(self.day)).or_else(|| {
            check(
                Period::Monthly,
                caps.monthly,
                self.this_month,
                next_month(self.day),
            )
        })
    }
}

fn next_day(day: NaiveDate) -> NaiveDate {
    day.succ_opt().unwrap_or(NaiveDate::MAX)
}

fn next_month(day: NaiveDate) -> NaiveDate {
    let (year, month) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MAX)
}

/// From `now` to the start (UTC midnight) of `day`.
fn until(day: NaiveDate, now: DateTime<Utc>) -> Duration {
    let start = day.and_time(chrono::NaiveTime::MIN).and_utc();
    (start - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn usd(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn daily_cap_is_reached_at_the_cap_and_resets_at_utc_midnight() {
        let caps = SpendCaps {
            daily: Some(usd("1.00")),
            monthly: None,
        };
        let mut spend = Spend::new(at(2025, 3, 10, 9));
        spend.add(usd("0.60"), at(2025, 3, 10, 9));
        assert_eq!(spend.reached(caps, at(2025, 3, 10, 10)), None);
        spend.add(usd("0.40"), at(2025, 3, 10, 10));
        let reached = spend.reached(caps, at(2025, 3, 10, 22)).unwrap();
        assert_eq!(reached.period, Period::Daily);
        assert_eq!(reached.spent, usd("1.00"));
        assert_eq!(reached.resets_in, Duration::from_secs(2 * 3600));
        assert_eq!(spend.reached(caps, at(2025, 3, 11, 0)), None);
    }

    #[test]
    fn monthly_spend_survives_days_and_resets_with_the_month() {
        let caps = SpendCaps {
            daily: Some(usd("5")),
            monthly: Some(usd("8")),
        };
        let mut spend = Spend::new(at(2025, 12, 30, 12));
        spend.add(usd("4.5"), at(2025, 12, 30, 12));
        spend.add(usd("4.5"), at(2025, 12, 31, 12));
        let reached = spend.reached(caps, at(2025, 12, 31, 12)).unwrap();
        assert_eq!(reached.period, Period::Monthly);
        assert_eq!(reached.resets_in, Duration::from_secs(12 * 3600));
        assert_eq!(
            spend.totals(at(2026, 1, 1, 0)),
            (Decimal::ZERO, Decimal::ZERO)
        );
        assert_eq!(spend.reached(caps, at(2026, 1, 1, 0)), None);
    }
}
