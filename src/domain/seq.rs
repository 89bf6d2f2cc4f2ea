//! Kinesis sequence numbers: decimal strings of up to ~56 digits, compared numerically.
//!
//! Kinesis documents them as strings; emulators use "1", "2", …; real streams use 56-digit
//! numbers that overflow every integer type (and DynamoDB's 38-digit `N`). So they are kept
//! as normalised digit strings, ordered by length then text, and stored in DynamoDB as
//! fixed-width zero-padded strings that sort the same way as the numbers they hold.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Width of the zero-padded form stored in DynamoDB. Real sequence numbers have 56 digits;
/// 64 leaves room without ever truncating anything Kinesis could produce.
pub const PADDED_WIDTH: usize = 64;

/// A Kinesis sequence number, normalised (no leading zeros, "0" for zero).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(String);

/// Why a string is not a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceNumberError {
    #[error("sequence number is empty")]
    Empty,
    #[error("sequence number {0:?} contains a character that is not a decimal digit")]
    NotDecimal(String),
    #[error("sequence number {0:?} has more than {PADDED_WIDTH} digits")]
    TooLong(String),
}

impl SequenceNumber {
    /// Parses a decimal sequence number, accepting leading zeros (as in the padded form).
    pub fn parse(text: &str) -> Result<Self, SequenceNumberError> {
        if text.is_empty() {
            return Err(SequenceNumberError::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SequenceNumberError::NotDecimal(text.to_owned()));
        }
        let trimmed = text.trim_start_matches('0');
        if trimmed.len() > PADDED_WIDTH {
            return Err(SequenceNumberError::TooLong(text.to_owned()));
        }
        Ok(if trimmed.is_empty() {
            SequenceNumber("0".to_owned())
        } else {
            SequenceNumber(trimmed.to_owned())
        })
    }

    /// The number as Kinesis writes it (no leading zeros).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number one below (zero stays zero): "every record before this one".
    pub fn predecessor(&self) -> Self {
        let mut digits = self.0.clone().into_bytes();
        for d in digits.iter_mut().rev() {
            if *d == b'0' {
                *d = b'9';
            } else {
                *d -= 1;
                break;
            }
        }
        if self.0 == "0" {
            return self.clone();
        }
        SequenceNumber::parse(std::str::from_utf8(&digits).expect("digits"))
            .expect("still a sequence number")
    }

    /// Fixed-width, zero-padded form whose string order equals numeric order.
    pub fn to_padded(&self) -> String {
        format!("{:0>width$}", self.0, width = PADDED_WIDTH)
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for SequenceNumber {
    type Err = SequenceNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_A: &str = "49546986683135544286507457936321625675700192471156785154";
    const REAL_B: &str = "49546986683135544286507457936321625675700192471156785155";

    #[test]
    fn orders_numerically_not_textually() {
        let cases = [
            ("1", "2", Ordering::Less),
            ("9", "10", Ordering::Less),
            ("10", "9", Ordering::Greater),
            ("007", "7", Ordering::Equal),
            ("0", "000", Ordering::Equal),
            (REAL_A, REAL_B, Ordering::Less),
            (
                "99999999999999999999999999999999999999",
                REAL_A,
                Ordering::Less,
            ),
        ];
        for (a, b, want) in cases {
            let (a, b) = (
                SequenceNumber::parse(a).unwrap(),
                SequenceNumber::parse(b).unwrap(),
            );
            assert_eq!(a.cmp(&b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn padded_form_sorts_like_the_numbers_and_round_trips() {
        let mut values: Vec<SequenceNumber> = ["10", "9", REAL_B, "1", REAL_A, "0"]
            .iter()
            .map(|s| SequenceNumber::parse(s).unwrap())
            .collect();
        let mut padded: Vec<String> = values.iter().map(SequenceNumber::to_padded).collect();
        values.sort();
        padded.sort();
        let back: Vec<SequenceNumber> = padded
            .iter()
            .map(|p| SequenceNumber::parse(p).unwrap())
            .collect();
        assert_eq!(back, values);
        assert!(padded.iter().all(|p| p.len() == PADDED_WIDTH));
    }

    #[test]
    fn the_predecessor_is_one_below() {
        let p = |t: &str| SequenceNumber::parse(t).unwrap().predecessor().to_string();
        assert_eq!(p("1000"), "999");
        assert_eq!(
            p("49590338271490256608559692538361571095921575989136588898"),
            "49590338271490256608559692538361571095921575989136588897"
        );
        assert_eq!(p("1"), "0");
        assert_eq!(p("0"), "0");
    }

    #[test]
    fn rejects_what_is_not_a_sequence_number() {
        assert_eq!(SequenceNumber::parse(""), Err(SequenceNumberError::Empty));
        assert!(matches!(
            SequenceNumber::parse("12a"),
            Err(SequenceNumberError::NotDecimal(_))
        ));
        assert!(matches!(
            SequenceNumber::parse("-1"),
            Err(SequenceNumberError::NotDecimal(_))
        ));
        assert!(matches!(
            SequenceNumber::parse(&"1".repeat(65)),
            Err(SequenceNumberError::TooLong(_))
        ));
        assert!(SequenceNumber::parse(&format!("{}1", "0".repeat(70))).is_ok());
    }
}
