//! Money as integers: [`Usd`], a count of nano-dollars (10⁻⁹ US dollars).
//!
//! Costs used to travel as `f64` dollars and were rounded to micro-dollars only when the ledger
//! booked them, so a day's ledger differed from the sum of the tasks' costs by the accumulated
//! roundings (ten settlements by up to 5 µ$). Now an amount becomes an integer once, where it
//! enters the system — the cost of an attempt (tokens × catalog price, or the cost in aider's
//! analytics log) and the configuration's dollar limits — and every sum, comparison and ledger
//! entry after that is integer arithmetic, so "the ledger equals the sum of the results" holds
//! exactly.
//!
//! Why nano-dollars: one token of the cheapest catalog model costs 150 n$ (`gpt-4o-mini`,
//! $0.15 per million), so a micro-dollar cannot price a single token but a nano-dollar can, and an
//! `i64` of nano-dollars still holds $9.2 billion.
//!
//! [`Usd::from_usd`] is the only conversion from a float; [`Usd::as_usd_f64`] the only one back,
//! for the contract's `double …_usd` display fields, metrics and human output.

use std::fmt;

/// Nano-dollars in one US dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// An amount of US dollars, held as whole nano-dollars (10⁻⁹ USD). Never built from a negative,
/// NaN or infinite float; arithmetic saturates (or is checked) instead of wrapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Usd(i64);

/// A float that cannot be money.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum MoneyError {
    /// Negative, NaN or infinite.
    #[error("invalid amount {0} USD: must be a finite number >= 0")]
    Invalid(f64),
}

impl Usd {
    /// No money.
    pub const ZERO: Usd = Usd(0);
    /// The largest amount (about $9.2 billion); sums saturate here.
    pub const MAX: Usd = Usd(i64::MAX);

    /// `nanos` nano-dollars (as stored in the ledger).
    pub const fn from_nanos(nanos: i64) -> Self {
        Usd(nanos)
    }

    /// Whole nano-dollars.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Converts a dollar amount from outside (a price-times-tokens product, aider's reported cost,
    /// a configured limit), rounding to the nearest nano-dollar once. Amounts beyond [`Usd::MAX`]
    /// saturate, which is what a limit wants; negative, NaN and infinite amounts are refused.
    pub fn from_usd(usd: f64) -> Result<Self, MoneyError> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(MoneyError::Invalid(usd));
        }
        // `as` saturates at i64::MAX.
        Ok(Usd((usd * NANOS_PER_USD as f64).round() as i64))
    }

    /// The amount from an unsigned contract field (`uint64 …_nanousd`), saturating at
    /// [`Usd::MAX`].
    pub fn from_contract(nanos: u64) -> Self {
        Usd(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// The amount for an unsigned contract field (`uint64 …_nanousd`); a negative amount (only
    /// reachable through [`Usd::saturating_sub`] of a larger amount) is sent as 0.
    pub fn to_contract(self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }

    /// US dollars as a float, for the contract's derived `double …_usd` fields, metrics and
    /// human output only: never sum or compare these.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    /// `self + other`, stopping at the bounds instead of wrapping.
    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    /// `self - other`, stopping at the bounds instead of wrapping (may go below zero).
    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }
}

impl std::iter::Sum for Usd {
    /// Saturating sum: a total never wraps around to a small or negative amount.
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Usd::saturating_add)
    }
}

impl fmt::Display for Usd {
    /// Exact dollars: `$1.50`, `$0.0001`, `$0.012345678`, `-$2.00` — at least two decimals, and
    /// as many more as the amount has, so a small amount never prints as `$0.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = NANOS_PER_USD as u64;
        let (dollars, frac) = (abs / per, abs % per);
        let digits = format!("{frac:09}");
        let trimmed = digits.trim_end_matches('0');
        let frac = if trimmed.len() < 2 {
            &digits[..2]
        } else {
            trimmed
        };
        write!(f, "{sign}${dollars}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_from_floats_rounding_to_the_nearest_nano_dollar() {
        assert_eq!(Usd::from_usd(0.0), Ok(Usd::ZERO));
        assert_eq!(Usd::from_usd(1.0).map(Usd::nanos), Ok(1_000_000_000));
        assert_eq!(Usd::from_usd(0.1).map(Usd::nanos), Ok(100_000_000));
        assert_eq!(Usd::from_usd(2.5e-6).map(Usd::nanos), Ok(2_500));
        assert_eq!(Usd::from_usd(1.4e-9).map(Usd::nanos), Ok(1));
        assert_eq!(Usd::from_usd(1.6e-9).map(Usd::nanos), Ok(2));
        assert_eq!(Usd::from_usd(0.4e-9), Ok(Usd::ZERO));
        // Finer than a micro-dollar survives: one gpt-4o-mini prompt token.
        assert_eq!(Usd::from_usd(0.15e-6).map(Usd::nanos), Ok(150));
        assert_eq!(Usd::from_usd(1e30), Ok(Usd::MAX), "saturates");
    }

    #[test]
    fn refuses_negative_nan_and_infinite_amounts() {
        for bad in [-1.0, -1e-12, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                matches!(Usd::from_usd(bad), Err(MoneyError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(
            Usd::from_usd(-0.5)
                .unwrap_err()
                .to_string()
                .contains("finite number >= 0")
        );
    }

    #[test]
    fn integer_sums_do_not_drift() {
        let dime = Usd::from_usd(0.1).unwrap();
        let total: Usd = std::iter::repeat_n(dime, 1000).sum();
        assert_eq!(total, Usd::from_nanos(100 * NANOS_PER_USD));
        assert_eq!(total.as_usd_f64(), 100.0);
        // The same sum in floats drifts.
        let float: f64 = std::iter::repeat_n(0.1f64, 1000).sum();
        assert_ne!(float, 100.0);
    }

    #[test]
    fn arithmetic_saturates_or_is_checked() {
        let one = Usd::from_nanos(1);
        assert_eq!(Usd::MAX.checked_add(one), None);
        assert_eq!(one.checked_add(one), Some(Usd::from_nanos(2)));
        assert_eq!(Usd::MAX.saturating_add(one), Usd::MAX);
        assert_eq!([Usd::MAX, one].into_iter().sum::<Usd>(), Usd::MAX);
        assert_eq!(Usd::ZERO.saturating_sub(one), Usd::from_nanos(-1));
    }

    #[test]
    fn contract_fields_are_unsigned() {
        assert_eq!(Usd::from_contract(u64::MAX), Usd::MAX);
        assert_eq!(Usd::from_contract(42).nanos(), 42);
        assert_eq!(Usd::from_nanos(42).to_contract(), 42);
        assert_eq!(Usd::from_nanos(-42).to_contract(), 0);
    }

    #[test]
    fn displays_exact_dollars() {
        let s = |n: i64| Usd::from_nanos(n).to_string();
        assert_eq!(s(0), "$0.00");
        assert_eq!(s(1_500_000_000), "$1.50");
        assert_eq!(s(10 * NANOS_PER_USD), "$10.00");
        assert_eq!(s(100_000), "$0.0001");
        assert_eq!(s(12_345_678), "$0.012345678");
        assert_eq!(s(1), "$0.000000001");
        assert_eq!(s(-2 * NANOS_PER_USD), "-$2.00");
    }
}
