//! `pi::Pi`: a CPU-bound paglet that computes decimal digits of π exactly.
//!
//! State `{"computed": <u64>}`. `digits` (optional `args.n`, an integer in 1..=100000, default
//! 100) replies `{"n": n, "digits": "3.14…"}`, where `digits` is `"3."` followed by the first
//! `n` decimals of π, truncated rather than rounded: `n = 5` gives `"3.14159"`. Any other `n`
//! is `InvalidArgs`; any other kind is not handled. `n = 100000` keeps a core busy for seconds.

use std::fmt::Write as _;

use plugin_api::{Context, Message, Paglet, PagletError, Reply};
use serde::{Deserialize, Serialize};

/// The largest `n` that `digits` accepts.
pub const MAX_DIGITS: u64 = 100_000;

/// Decimal digits the spigot emits per step: it runs in base 10¹².
const STEP_DIGITS: usize = 12;
const BASE: u64 = 1_000_000_000_000;

/// Computes π to `n` decimals with the Rabinowitz–Wagon spigot, in integers only; `None`
/// unless `n` is in `1..=MAX_DIGITS`.
///
/// π = 2 + 1/3·(2 + 2/5·(2 + 3/7·(2 + …))): a mixed-radix number whose position `i` has
/// radix `i/(2i+1)` and digit 2. Each step multiplies the fraction by 10¹² and normalises it
/// right to left; the carry out of position 1 is the next 12 decimals, possibly ≥ 10¹², so
/// carries are pushed back once at the end. A step consumes 12·log₂10 ≈ 39.9 positions, so 40
/// per step plus 32 spare start the computation and 39 are dropped after each step. One extra
/// step of guard decimals is computed and cut off. Every intermediate stays below
/// 2·10¹²·(2·333 432 + 1) < 2⁶⁴ for `n` ≤ [`MAX_DIGITS`].
///
/// ```
/// assert_eq!(pi::pi_digits(5).as_deref(), Some("3.14159"));
/// assert_eq!(pi::pi_digits(0), None);
/// ```
pub fn pi_digits(n: u64) -> Option<String> {
    if !(1..=MAX_DIGITS).contains(&n) {
        return None;
    }
    let n = n as usize;
    let steps = n / STEP_DIGITS + 2;
    let terms = 40 * steps + 32;
    // remainders[k] is the digit at position k + 1; all start at 2.
    let mut remainders = vec![2u32; terms];
    let mut chunks = Vec::with_capacity(steps + 1);
    chunks.push(2u64);
    for step in 0..steps {
        let mut carry = 0u64;
        for (k, digit) in remainders[..terms - 39 * step].iter_mut().enumerate().rev() {
            let i = k as u64 + 1;
            let x = u64::from(*digit) * BASE + carry;
            *digit = (x % (2 * i + 1)) as u32;
            carry = x / (2 * i + 1) * i;
        }
        chunks.push(carry);
    }
    for k in (1..chunks.len()).rev() {
        chunks[k - 1] += chunks[k] / BASE;
        chunks[k] %= BASE;
    }
    let mut text = format!("{}.", chunks[0]);
    for chunk in &chunks[1..] {
        let _ = write!(text, "{chunk:012}");
    }
    text.truncate(2 + n);
    Some(text)
}

/// Computes digits of π on request. Its state is the struct itself.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Pi {
    /// How many `digits` requests were answered.
    pub computed: u64,
}

/// The arguments of `digits`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Digits {
    #[serde(default = "hundred")]
    n: u64,
}

fn hundred() -> u64 {
    100
}

/// The reply to `digits`.
#[derive(Serialize)]
struct DigitsReply {
    n: u64,
    digits: String,
}

impl Paglet for Pi {
    const DESCRIPTION: &'static str = "Computes π: digits {n?} (1..=100000, default 100).";

    fn handle_message(&mut self, _ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.kind.as_str() {
            "digits" => {
                let Digits { n } = msg.args()?;
                let digits = pi_digits(n).ok_or_else(|| {
                    PagletError::invalid_args(format!("n must be 1..={MAX_DIGITS}, not {n}"))
                })?;
                self.computed = self.computed.saturating_add(1);
                Reply::new(DigitsReply { n, digits })
            }
            _ => Err(msg.not_handled()),
        }
    }
}

plugin_api::export_paglets!(Pi);

#[cfg(test)]
mod tests {
    use super::{Pi, pi_digits};
    use plugin_api::{PagletError, testing::PagletTest};
    use serde_json::{Value, json};

    /// π to 50 decimals.
    const PI_50: &str = "3.14159265358979323846264338327950288419716939937510";

    #[test]
    fn computes_the_known_digits() {
        assert_eq!(pi_digits(1).as_deref(), Some("3.1"));
        assert_eq!(pi_digits(50).as_deref(), Some(PI_50));
        for n in 1..=50 {
            assert_eq!(
                pi_digits(n).as_deref(),
                PI_50.get(..2 + n as usize),
                "n={n}"
            );
        }
        // Decimals 991..=1000, checked against Machin's formula in Python integers.
        let thousand = pi_digits(1000).expect("1000 is in range");
        assert_eq!(thousand.len(), 1002);
        assert!(thousand.starts_with(PI_50));
        assert!(thousand.ends_with("2164201989"), "{}", &thousand[990..]);
        assert_eq!(pi_digits(0), None);
        assert_eq!(pi_digits(100_001), None);
    }

    #[test]
    fn answers_digits_and_counts() {
        let test = PagletTest::new::<Pi>();
        let id = test.create_class("pi::Pi", json!({})).expect("create");
        assert_eq!(
            test.send(&id, "digits", json!({"n": 50})),
            Ok(json!({"n": 50, "digits": PI_50}))
        );
        let reply = test.send(&id, "digits", Value::Null).expect("default n");
        assert_eq!(reply["n"], 100);
        assert_eq!(reply["digits"].as_str().map(str::len), Some(102));
        assert_eq!(test.state(&id), Ok(json!({"computed": 2})));
    }

    #[test]
    fn rejects_bad_n_and_unknown_kinds() {
        let test = PagletTest::new::<Pi>();
        let id = test.create_class("pi::Pi", json!({})).expect("create");
        for n in [
            json!(0),
            json!(100_001),
            json!(-1),
            json!(1.5),
            json!("ten"),
        ] {
            let err = test.send(&id, "digits", json!({ "n": n }));
            assert!(
                matches!(err, Err(PagletError::InvalidArgs(_))),
                "n={n}: {err:?}"
            );
        }
        let err = test.send(&id, "tau", Value::Null);
        assert_eq!(err, Err(PagletError::NotHandled { kind: "tau".into() }));
        assert_eq!(test.state(&id), Ok(json!({"computed": 0})));
    }
}
