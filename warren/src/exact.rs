//! Exact summation, split so that it can be distributed.
//!
//! A worker sums one chunk with [`sum_chunk`] and sends the result as a
//! [`PartialSum`]: the chunk's exact sum, not a rounded one. The producer
//! adds partials into a [`Total`] in any order and rounds once at the end,
//! so the answer is the exact sum of all inputs correctly rounded to the
//! nearest `f64` (ties to even): the same bits as Python's `math.fsum`,
//! whatever the chunk size, worker count or arrival order.
//!
//! Every finite double is an integer multiple of 2^-1074 (the smallest
//! subnormal), so an exact sum of doubles is an integer number of such
//! units. Workers accumulate that integer in [`FloatAccumulator`], a
//! fixed-point superaccumulator of 32-bit limbs (Radford Neal's "small
//! superaccumulator" layout, arXiv:1505.05571); the producer combines the
//! partials as big integers. Integers are summed in `i128` per chunk and as
//! big integers across chunks, so integer totals are exact at any size.
//!
//! Non-finite inputs follow IEEE 754: any NaN, or +inf together with -inf,
//! gives NaN; otherwise an infinity wins. A finite exact total whose rounded
//! magnitude exceeds `f64::MAX` is reported as overflow, never as a number.

use std::fmt;

use num_bigint::{BigInt, Sign};
use num_traits::{Signed, ToPrimitive, Zero};
use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Bits of significance each limb holds once carries are propagated.
const LIMB_BITS: u32 = 32;
const LIMB_MASK: u64 = (1 << LIMB_BITS) - 1;
/// Finite doubles span bit positions 0..2098 in units of 2^-1074 (exponent
/// field 2046 minus one, plus 53 mantissa bits): limbs 0..=65. Limb 66 takes
/// the carries out of the top.
const LIMBS: usize = 67;
/// A limb gains less than 2^52 per addition (a 53-bit mantissa shifted right
/// by at least one bit, or its low 32 bits). Propagating carries every 1024
/// additions keeps every limb below 2^62 in magnitude, well inside `i64`.
const CARRY_INTERVAL: usize = 1024;
const FRACTION_MASK: u64 = (1 << 52) - 1;
/// log2 of the unit in which exact float sums are counted: 2^-1074.
const UNIT_EXPONENT: i64 = -1074;
/// Bound on the binary exponent of any exact sum of at most 2^64 doubles.
const MAX_TOTAL_BITS: i64 = 1024 + 64;

/// The IEEE outcome of non-finite inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonFinite {
    /// Not a number: some input was NaN, or both infinities occurred.
    #[serde(rename = "nan")]
    Nan,
    /// Positive infinity.
    #[serde(rename = "inf")]
    PosInf,
    /// Negative infinity.
    #[serde(rename = "-inf")]
    NegInf,
}

impl NonFinite {
    fn of(x: f64) -> NonFinite {
        if x.is_nan() {
            NonFinite::Nan
        } else if x > 0.0 {
            NonFinite::PosInf
        } else {
            NonFinite::NegInf
        }
    }

    /// IEEE addition of two non-finite outcomes.
    fn combine(a: Option<NonFinite>, b: Option<NonFinite>) -> Option<NonFinite> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) if x == y => Some(x),
            _ => Some(NonFinite::Nan),
        }
    }

    /// The `f64` this outcome stands for.
    pub fn value(self) -> f64 {
        match self {
            NonFinite::Nan => f64::NAN,
            NonFinite::PosInf => f64::INFINITY,
            NonFinite::NegInf => f64::NEG_INFINITY,
        }
    }
}

/// The exact running sum of `f64` values: Neal's small superaccumulator.
///
/// Limb `i` has weight 2^(32 i) units of 2^-1074. After
/// [`propagate_carries`](Self::propagate_carries), limbs 0..66 lie in
/// [0, 2^32) and limb 66 carries the sign.
#[derive(Clone)]
pub struct FloatAccumulator {
    limbs: [i64; LIMBS],
    /// Additions since the last carry propagation; below [`CARRY_INTERVAL`].
    pending: usize,
    nonfinite: Option<NonFinite>,
    count: u64,
}

impl fmt::Debug for FloatAccumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FloatAccumulator")
            .field("count", &self.count)
            .field("nonfinite", &self.nonfinite)
            .finish_non_exhaustive()
    }
}

impl Default for FloatAccumulator {
    fn default() -> Self {
        FloatAccumulator {
            limbs: [0; LIMBS],
            pending: 0,
            nonfinite: None,
            count: 0,
        }
    }
}

impl FloatAccumulator {
    /// An empty sum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value.
    pub fn add(&mut self, x: f64) {
        self.add_bits(x.to_bits());
        self.count += 1;
        self.pending += 1;
        if self.pending == CARRY_INTERVAL {
            self.propagate_carries();
        }
    }

    /// Adds every value of a slice.
    pub fn add_slice(&mut self, values: &[f64]) {
        self.add_bit_patterns(values.iter().map(|x| x.to_bits()), values.len());
    }

    /// Adds little-endian `f64` values given as raw bytes, the form in which
    /// chunks travel.
    pub fn add_f64_le(&mut self, values: &[[u8; 8]]) {
        self.add_bit_patterns(values.iter().map(|b| u64::from_le_bytes(*b)), values.len());
    }

    /// Adds little-endian `f32` values; widening to `f64` is exact.
    pub fn add_f32_le(&mut self, values: &[[u8; 4]]) {
        self.add_bit_patterns(
            values
                .iter()
                .map(|b| f64::from(f32::from_le_bytes(*b)).to_bits()),
            values.len(),
        );
    }

    fn add_bit_patterns(&mut self, bits: impl Iterator<Item = u64>, len: usize) {
        let mut bits = bits.peekable();
        // First fill up the current carry interval, then whole intervals.
        let mut room = CARRY_INTERVAL - self.pending;
        while bits.peek().is_some() {
            for x in bits.by_ref().take(room) {
                self.add_bits(x);
            }
            self.propagate_carries();
            room = CARRY_INTERVAL;
        }
        self.count += len as u64;
    }

    /// Adds one double given by its bit pattern, without touching the
    /// counters. The hot loop: two limb updates, no branch for finite values.
    #[inline(always)]
    fn add_bits(&mut self, bits: u64) {
        let biased = ((bits >> 52) & 0x7FF) as u32;
        if biased == 0x7FF {
            self.nonfinite =
                NonFinite::combine(self.nonfinite, Some(NonFinite::of(f64::from_bits(bits))));
            return;
        }
        // Subnormals (biased 0) have no implicit bit and the scale of biased 1.
        let is_normal = u64::from(biased != 0);
        let mantissa = (bits & FRACTION_MASK) | (is_normal << 52);
        let position = biased - is_normal as u32;
        // `& 63` is a no-op (position <= 2045) that lets the compiler drop
        // the bounds checks on both limbs.
        let index = (position >> 5) as usize & 63;
        let shift = position & 31;
        let low = ((mantissa << shift) & LIMB_MASK) as i64;
        let high = (mantissa >> (LIMB_BITS - shift)) as i64;
        let sign = (bits as i64) >> 63; // 0 or -1: conditional negation below
        self.limbs[index] += (low ^ sign) - sign;
        self.limbs[index + 1] += (high ^ sign) - sign;
    }

    /// Moves everything above bit 32 of each limb into the next limb.
    fn propagate_carries(&mut self) {
        for i in 0..LIMBS - 1 {
            let carry = self.limbs[i] >> LIMB_BITS;
            self.limbs[i] -= carry << LIMB_BITS;
            self.limbs[i + 1] += carry;
        }
        self.pending = 0;
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The exact sum as an integer number of 2^-1074 units.
    fn units(&self) -> BigInt {
        let mut normalized = self.clone();
        normalized.propagate_carries();
        let mut units = BigInt::from(normalized.limbs[LIMBS - 1]);
        for &limb in normalized.limbs[..LIMBS - 1].iter().rev() {
            units = (units << LIMB_BITS) + limb;
        }
        units
    }

    /// The partial sum to send to the producer.
    pub fn to_partial(&self) -> PartialSum {
        let (mantissa, exponent) = strip_trailing_zeros(self.units());
        PartialSum::Float {
            count: self.count,
            mantissa,
            exponent,
            nonfinite: self.nonfinite,
        }
    }

    /// The correctly rounded sum of what was added (for local use and tests).
    pub fn round(&self) -> RoundedFloat {
        round_units(&self.units(), self.nonfinite)
    }
}

/// Writes `units × 2^-1074` as `mantissa × 2^exponent` with an odd mantissa
/// (or zero), which keeps messages short.
fn strip_trailing_zeros(units: BigInt) -> (BigInt, i64) {
    match units.trailing_zeros() {
        None => (BigInt::zero(), 0),
        Some(zeros) => (units >> zeros, zeros as i64 + UNIT_EXPONENT),
    }
}

/// The result of rounding an exact float sum to `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundedFloat {
    /// The correctly rounded value; ±inf on overflow, NaN for NaN inputs.
    pub value: f64,
    /// The inputs were finite but their exact sum is beyond `f64`'s range.
    pub overflow: bool,
    /// Set when non-finite inputs decided the result.
    pub nonfinite: Option<NonFinite>,
}

/// Rounds `units × 2^-1074` to the nearest `f64`, ties to even.
fn round_units(units: &BigInt, nonfinite: Option<NonFinite>) -> RoundedFloat {
    if let Some(nonfinite) = nonfinite {
        return RoundedFloat {
            value: nonfinite.value(),
            overflow: false,
            nonfinite: Some(nonfinite),
        };
    }
    let negative = units.sign() == Sign::Minus;
    let magnitude = units.magnitude();
    let bits = magnitude.bits();
    // Keep 53 significant bits; `dropped` low bits decide the rounding.
    let dropped = bits.saturating_sub(53);
    let mut kept = (magnitude >> dropped).to_u64().expect("53 bits fit in u64"); // invariant: at most 53 bits remain
    if dropped > 0 {
        let half_bit = magnitude.bit(dropped - 1);
        let below_half = magnitude
            .trailing_zeros()
            .is_some_and(|zeros| zeros < dropped - 1);
        if half_bit && (below_half || kept & 1 == 1) {
            kept += 1;
        }
    }
    // With q = kept in [2^52, 2^53) the value is q × 2^(dropped - 1074), whose
    // IEEE bit pattern is (dropped << 52) + q: the implicit bit of q bumps the
    // exponent field to dropped + 1. Below 2^52 (subnormals, dropped = 0) the
    // same formula gives the subnormal pattern q. A rounding carry to 2^53
    // moves into the exponent field on its own.
    let pattern = (dropped << 52) + kept;
    let overflow = pattern >= 0x7FF << 52;
    let magnitude_value = if overflow {
        f64::INFINITY
    } else {
        f64::from_bits(pattern)
    };
    RoundedFloat {
        value: if negative {
            -magnitude_value
        } else {
            magnitude_value
        },
        overflow,
        nonfinite: None,
    }
}

/// One chunk's exact sum, as a worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PartialSum {
    /// A float chunk: the exact finite sum is `mantissa × 2^exponent`.
    Float {
        /// Elements in the chunk.
        count: u64,
        /// Signed, as a hex string: `"0x1f"`, `"-0x3"`, `"0x0"` (Python's
        /// `hex()` form; `int(s, 16)` reads it).
        #[serde(with = "hex_bigint")]
        mantissa: BigInt,
        /// Binary exponent, at least -1074.
        exponent: i64,
        /// Present when NaN or infinite inputs decide the chunk's sum; the
        /// finite part is then irrelevant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonfinite: Option<NonFinite>,
    },
    /// An integer chunk: the exact sum.
    Int {
        /// Elements in the chunk.
        count: u64,
        /// Signed decimal string.
        #[serde(with = "decimal_bigint")]
        sum: BigInt,
    },
}

impl PartialSum {
    /// Elements in the chunk.
    pub fn count(&self) -> u64 {
        match self {
            PartialSum::Float { count, .. } | PartialSum::Int { count, .. } => *count,
        }
    }
}

/// Sums one chunk of little-endian elements exactly.
///
/// # Errors
/// [`Error::Malformed`] when the byte length is not a multiple of the
/// element size.
pub fn sum_chunk(dtype: Dtype, bytes: &[u8]) -> Result<PartialSum> {
    let mut sum = BlockSum::new(dtype);
    sum.add_le_bytes(bytes)?;
    Ok(sum.to_partial())
}

/// The exact running sum of one chunk fed in blocks of little-endian
/// elements: what a worker keeps while it reads a range piece by piece.
#[derive(Debug, Clone)]
pub struct BlockSum {
    dtype: Dtype,
    state: BlockState,
}

#[derive(Debug, Clone)]
enum BlockState {
    Float(Box<FloatAccumulator>),
    /// Each element is below 2^64 in magnitude, so fewer than 2^63
    /// elements (any chunk: counts are u64 byte ranges) fit an i128.
    Int {
        sum: i128,
        count: u64,
    },
}

impl BlockSum {
    /// An empty sum of `dtype` elements.
    pub fn new(dtype: Dtype) -> Self {
        let state = if dtype.is_float() {
            BlockState::Float(Box::default())
        } else {
            BlockState::Int { sum: 0, count: 0 }
        };
        BlockSum { dtype, state }
    }

    /// Adds a block of little-endian elements.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the block's length is not a multiple of
    /// the element size.
    pub fn add_le_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let dtype = self.dtype;
        if !bytes.len().is_multiple_of(dtype.itemsize()) {
            return Err(Error::malformed(
                "task",
                format!(
                    "the body has {} bytes, not a multiple of the {}-byte {dtype}",
                    bytes.len(),
                    dtype.itemsize()
                ),
            ));
        }
        fn add_ints<const N: usize>(
            sum: &mut i128,
            count: &mut u64,
            bytes: &[u8],
            decode: impl Fn([u8; N]) -> i128,
        ) {
            let (items, _) = bytes.as_chunks::<N>();
            *sum += items.iter().map(|b| decode(*b)).sum::<i128>();
            *count += items.len() as u64;
        }
        match &mut self.state {
            BlockState::Float(acc) => match dtype {
                Dtype::Float32 => acc.add_f32_le(bytes.as_chunks::<4>().0),
                // Float64: the integer dtypes have the integer state.
                _ => acc.add_f64_le(bytes.as_chunks::<8>().0),
            },
            BlockState::Int { sum, count } => match dtype {
                Dtype::Int64 => {
                    add_ints(sum, count, bytes, |b: [u8; 8]| i64::from_le_bytes(b).into())
                }
                Dtype::Int32 => {
                    add_ints(sum, count, bytes, |b: [u8; 4]| i32::from_le_bytes(b).into())
                }
                Dtype::Int16 => {
                    add_ints(sum, count, bytes, |b: [u8; 2]| i16::from_le_bytes(b).into())
                }
                Dtype::Int8 => {
                    add_ints(sum, count, bytes, |b: [u8; 1]| i8::from_le_bytes(b).into())
                }
                Dtype::Uint64 => {
                    add_ints(sum, count, bytes, |b: [u8; 8]| u64::from_le_bytes(b).into())
                }
                Dtype::Uint32 => {
                    add_ints(sum, count, bytes, |b: [u8; 4]| u32::from_le_bytes(b).into())
                }
                Dtype::Uint16 => {
                    add_ints(sum, count, bytes, |b: [u8; 2]| u16::from_le_bytes(b).into())
                }
                // Uint8: the float dtypes have the float state.
                _ => add_ints(sum, count, bytes, |b: [u8; 1]| u8::from_le_bytes(b).into()),
            },
        }
        Ok(())
    }

    /// Adds a block of big-endian elements, turning them around in place
    /// first.
    ///
    /// # Errors
    /// As [`BlockSum::add_le_bytes`].
    pub fn add_be_bytes(&mut self, bytes: &mut [u8]) -> Result<()> {
        fn swap<const N: usize>(bytes: &mut [u8]) {
            for element in bytes.as_chunks_mut::<N>().0 {
                element.reverse();
            }
        }
        match self.dtype.itemsize() {
            8 => swap::<8>(bytes),
            4 => swap::<4>(bytes),
            2 => swap::<2>(bytes),
            _ => {}
        }
        self.add_le_bytes(bytes)
    }

    /// Elements added so far.
    pub fn count(&self) -> u64 {
        match &self.state {
            BlockState::Float(acc) => acc.count(),
            BlockState::Int { count, .. } => *count,
        }
    }

    /// The partial sum to send to the producer.
    pub fn to_partial(&self) -> PartialSum {
        match &self.state {
            BlockState::Float(acc) => acc.to_partial(),
            BlockState::Int { sum, count } => PartialSum::Int {
                count: *count,
                sum: BigInt::from(*sum),
            },
        }
    }
}

/// The producer's running total over all chunks of one job.
#[derive(Debug, Clone)]
pub struct Total {
    dtype: Dtype,
    /// Floats: units of 2^-1074. Integers: the sum itself.
    exact: BigInt,
    nonfinite: Option<NonFinite>,
    count: u64,
}

/// A job's final answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The element type summed.
    pub dtype: Dtype,
    /// Elements summed.
    pub count: u64,
    /// The answer as text: for floats Python's `repr` of the correctly
    /// rounded sum (`float()` reads it back to the same bits; `nan`, `inf`,
    /// `-inf` for non-finite results); for integers the exact decimal.
    pub text: String,
    /// Floats only: the inputs were finite but the exact sum is beyond
    /// `f64`'s range; `text` is then `inf` or `-inf`.
    pub overflow: bool,
    /// Floats only: non-finite inputs decided the result.
    pub nonfinite: Option<NonFinite>,
}

impl Total {
    /// An empty total for one dtype.
    pub fn new(dtype: Dtype) -> Self {
        Total {
            dtype,
            exact: BigInt::zero(),
            nonfinite: None,
            count: 0,
        }
    }

    /// Adds one chunk's partial sum. Order does not matter.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the partial does not fit the dtype or could
    /// not come from summing doubles.
    pub fn add(&mut self, partial: &PartialSum) -> Result<()> {
        match (partial, self.dtype.is_float()) {
            (
                PartialSum::Float {
                    count,
                    mantissa,
                    exponent,
                    nonfinite,
                },
                true,
            ) => {
                let exponent = *exponent;
                if !(UNIT_EXPONENT..=MAX_TOTAL_BITS).contains(&exponent) {
                    return Err(Error::malformed(
                        "result",
                        format!("exponent {exponent} is outside [-1074, {MAX_TOTAL_BITS}]"),
                    ));
                }
                // Both terms are bounded now (bits by the text length limit).
                if !mantissa.is_zero() && mantissa.bits() as i64 + exponent > MAX_TOTAL_BITS {
                    return Err(Error::malformed(
                        "result",
                        "the partial sum is larger than any sum of doubles",
                    ));
                }
                self.exact += mantissa << (exponent - UNIT_EXPONENT) as u64;
                self.nonfinite = NonFinite::combine(self.nonfinite, *nonfinite);
                self.count += count;
            }
            (PartialSum::Int { count, sum }, false) => {
                self.exact += sum;
                self.count += count;
            }
            (_, is_float) => {
                return Err(Error::malformed(
                    "result",
                    format!(
                        "a {} partial sum for a {} job",
                        if is_float { "integer" } else { "float" },
                        self.dtype
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Elements summed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The total so far as one exact partial sum, for a checkpoint:
    /// `Total::new(dtype)` plus this partial is this total again.
    pub fn to_partial(&self) -> PartialSum {
        if self.dtype.is_float() {
            PartialSum::Float {
                count: self.count,
                mantissa: self.exact.clone(),
                exponent: UNIT_EXPONENT,
                nonfinite: self.nonfinite,
            }
        } else {
            PartialSum::Int {
                count: self.count,
                sum: self.exact.clone(),
            }
        }
    }

    /// Rounds (floats) or formats (integers) the total.
    pub fn answer(&self) -> Answer {
        if self.dtype.is_float() {
            let rounded = round_units(&self.exact, self.nonfinite);
            Answer {
                dtype: self.dtype,
                count: self.count,
                text: python_repr(rounded.value),
                overflow: rounded.overflow,
                nonfinite: rounded.nonfinite,
            }
        } else {
            Answer {
                dtype: self.dtype,
                count: self.count,
                text: self.exact.to_string(),
                overflow: false,
                nonfinite: None,
            }
        }
    }
}

/// Formats a double as Python's `repr` does: the shortest digits that read
/// back to the same bits, positional for decimal exponents in [-4, 16),
/// scientific with a signed two-digit exponent otherwise.
pub fn python_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest digits that round-trip ("1.2345e-7"),
    // but when two such digit strings are equally close it may pick the
    // upper one where Python picks the even one (562949953421312.25 must
    // print as ...312.2). `{:.N e}` rounds the exact value half-to-even, so
    // with the same number of digits it gives Python's choice, provided it
    // still round-trips (near powers of two it may not; then the shortest
    // form is the only candidate).
    let shortest = format!("{:e}", x.abs());
    let significant = shortest
        .split_once('e')
        .map_or(1, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let even = format!("{:.*e}", significant - 1, x.abs());
    let scientific = if even.parse::<f64>() == Ok(x.abs()) {
        even
    } else {
        shortest
    };
    let (digits_part, exponent_part) = scientific
        .split_once('e')
        .expect("LowerExp output always has an exponent"); // invariant of `{:e}`
    let exponent: i32 = exponent_part
        .parse()
        .expect("LowerExp exponent is an integer"); // invariant of `{:e}`
    let digits: String = digits_part.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let body = if !(-5 < exponent && exponent < 16) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exp_sign}{:02}", exponent.unsigned_abs())
    } else if exponent >= 0 {
        let point = exponent as usize + 1;
        if digits.len() <= point {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    } else {
        format!(
            "0.{}{digits}",
            "0".repeat(exponent.unsigned_abs() as usize - 1)
        )
    };
    format!("{sign}{body}")
}

/// Longest mantissa text accepted: 2^(1088+1074) needs 541 hex digits.
const MAX_BIGINT_TEXT: usize = 1024;

mod hex_bigint {
    use super::*;
    use num_traits::Num;
    use serde::de::Error as _;

    pub(super) fn serialize<S: serde::Serializer>(value: &BigInt, s: S) -> Result<S::Ok, S::Error> {
        let sign = if value.is_negative() { "-" } else { "" };
        s.serialize_str(&format!("{sign}0x{:x}", value.magnitude()))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BigInt, D::Error> {
        let text = String::deserialize(d)?;
        let invalid = || D::Error::custom(format!("invalid hex integer {text:?}"));
        if text.len() > MAX_BIGINT_TEXT {
            return Err(D::Error::custom("hex integer too long"));
        }
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let digits = rest
            .strip_prefix("0x")
            .or_else(|| rest.strip_prefix("0X"))
            .ok_or_else(invalid)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let magnitude = BigInt::from_str_radix(digits, 16).map_err(|_| invalid())?;
        Ok(if negative { -magnitude } else { magnitude })
    }
}

mod decimal_bigint {
    use super::*;
    use serde::de::Error as _;

    pub(super) fn serialize<S: serde::Serializer>(value: &BigInt, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BigInt, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.strip_prefix('-').unwrap_or(&text);
        if text.len() > MAX_BIGINT_TEXT
            || digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(D::Error::custom(format!(
                "invalid decimal integer {text:?}"
            )));
        }
        text.parse()
            .map_err(|_| D::Error::custom(format!("invalid decimal integer {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_mt::Mt64;

    fn exact_sum(values: &[f64]) -> RoundedFloat {
        let mut acc = FloatAccumulator::new();
        acc.add_slice(values);
        acc.round()
    }

    fn chunked_total(values: &[f64], chunk: usize) -> Answer {
        let mut total = Total::new(Dtype::Float64);
        // Combine in reverse order to show order does not matter.
        for part in values.chunks(chunk).rev() {
            let bytes: Vec<u8> = part.iter().flat_map(|x| x.to_le_bytes()).collect();
            let partial = sum_chunk(Dtype::Float64, &bytes).unwrap();
            let json = serde_json::to_string(&partial).unwrap();
            total.add(&serde_json::from_str(&json).unwrap()).unwrap();
        }
        total.answer()
    }

    #[test]
    fn simple_sums_are_exact() {
        assert_eq!(exact_sum(&[0.1, 0.2, 0.3]).value, 0.6);
        assert_eq!(exact_sum(&[1e100, 1.0, -1e100]).value, 1.0);
        assert_eq!(exact_sum(&[]).value.to_bits(), 0.0f64.to_bits());
        assert_eq!(exact_sum(&[-0.0, -0.0]).value.to_bits(), 0.0f64.to_bits());
        assert_eq!(exact_sum(&[f64::MAX, -f64::MAX, 3.5]).value, 3.5);
    }

    #[test]
    fn subnormals_and_extremes() {
        let tiny = f64::from_bits(1);
        assert_eq!(exact_sum(&[tiny, tiny, tiny]).value, f64::from_bits(3));
        assert_eq!(exact_sum(&[tiny, -tiny]).value, 0.0);
        assert_eq!(
            exact_sum(&[f64::MIN_POSITIVE, -tiny]).value,
            f64::from_bits(f64::MIN_POSITIVE.to_bits() - 1)
        );
        let max = exact_sum(&[f64::MAX, f64::MAX]);
        assert!(max.overflow && max.value == f64::INFINITY);
        let back = exact_sum(&[f64::MAX, f64::MAX, -f64::MAX]);
        assert!(!back.overflow);
        assert_eq!(back.value, f64::MAX);
        let negative = exact_sum(&[-f64::MAX, -f64::MAX]);
        assert!(negative.overflow && negative.value == f64::NEG_INFINITY);
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        let one = 1.0f64;
        let half_ulp = f64::EPSILON / 2.0;
        // exactly halfway between 1 and 1+eps: ties to even (1.0)
        assert_eq!(exact_sum(&[one, half_ulp]).value, 1.0);
        // halfway between 1+eps and 1+2eps: ties to even (1+2eps)
        assert_eq!(
            exact_sum(&[one + f64::EPSILON, half_ulp]).value,
            one + 2.0 * f64::EPSILON
        );
        // just above halfway rounds up
        assert_eq!(
            exact_sum(&[one, half_ulp, f64::from_bits(1)]).value,
            one + f64::EPSILON
        );
        // largest finite plus half an ulp overflows, minus a hair does not
        let half_ulp_max = 2f64.powi(970);
        assert!(exact_sum(&[f64::MAX, half_ulp_max]).overflow);
        assert_eq!(
            exact_sum(&[f64::MAX, half_ulp_max, -f64::from_bits(1)]).value,
            f64::MAX
        );
    }

    #[test]
    fn nonfinite_follow_ieee() {
        let inf = f64::INFINITY;
        assert_eq!(exact_sum(&[1.0, inf]).value, inf);
        assert_eq!(exact_sum(&[1.0, -inf, -inf]).value, -inf);
        assert!(exact_sum(&[inf, -inf]).value.is_nan());
        assert!(exact_sum(&[f64::NAN, 1.0]).value.is_nan());
        assert_eq!(exact_sum(&[inf]).nonfinite, Some(NonFinite::PosInf));
    }

    #[test]
    fn chunking_and_order_do_not_change_the_bits() {
        let mut rng = Mt64::new(7);
        // Wide exponents and cancellation: naive summation gets these wrong.
        let values: Vec<f64> = (0..50_000)
            .map(|i| {
                let mantissa = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let exponent = (rng.next_u64() % 200) as i32 - 100;
                let x = mantissa * 2f64.powi(exponent);
                if i % 2 == 0 { x } else { -x * 0.999 }
            })
            .collect();
        let whole = chunked_total(&values, values.len());
        for chunk in [1, 7, 1000, 4096, 33_333] {
            assert_eq!(chunked_total(&values, chunk), whole, "chunk {chunk}");
        }
        let mut reversed = values.clone();
        reversed.reverse();
        assert_eq!(
            exact_sum(&reversed).value.to_bits(),
            exact_sum(&values).value.to_bits()
        );
    }

    #[test]
    fn accumulator_matches_bigint_reference_past_many_carry_intervals() {
        let mut rng = Mt64::new(11);
        let values: Vec<f64> = (0..20_000)
            .map(|_| {
                f64::from_bits(rng.next_u64() & !(0x7FF << 52) | ((rng.next_u64() % 0x7FF) << 52))
            })
            .collect();
        let mut reference = BigInt::zero();
        for x in &values {
            let bits = x.to_bits();
            let biased = (bits >> 52) & 0x7FF;
            let frac = bits & FRACTION_MASK;
            let (m, shift) = if biased == 0 {
                (frac, 0)
            } else {
                (frac | 1 << 52, biased - 1)
            };
            let v = BigInt::from(m) << shift;
            reference += if x.is_sign_negative() { -v } else { v };
        }
        let mut acc = FloatAccumulator::new();
        for x in &values {
            acc.add(*x);
        }
        assert_eq!(acc.units(), reference);
        let mut sliced = FloatAccumulator::new();
        sliced.add_slice(&values[..5]);
        sliced.add_slice(&values[5..]);
        assert_eq!(sliced.units(), reference);
        assert_eq!(sliced.count(), values.len() as u64);
    }

    #[test]
    fn integer_sums_pass_the_i64_range() {
        let values = [i64::MAX, i64::MAX, i64::MAX, -5];
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut total = Total::new(Dtype::Int64);
        for part in bytes.chunks(16) {
            total.add(&sum_chunk(Dtype::Int64, part).unwrap()).unwrap();
        }
        let expected: BigInt = BigInt::from(i64::MAX) * 3 - 5;
        assert_eq!(total.answer().text, expected.to_string());
        assert_eq!(total.count(), 4);
        let unsigned: Vec<u8> = [u64::MAX, u64::MAX]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let partial = sum_chunk(Dtype::Uint64, &unsigned).unwrap();
        assert_eq!(
            partial,
            PartialSum::Int {
                count: 2,
                sum: BigInt::from(u64::MAX) * 2
            }
        );
    }

    #[test]
    fn float32_widens_exactly() {
        let values = [0.1f32, 0.2f32, 1e30f32, -1e30f32];
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut total = Total::new(Dtype::Float32);
        total
            .add(&sum_chunk(Dtype::Float32, &bytes).unwrap())
            .unwrap();
        let expected = f64::from(0.1f32) + f64::from(0.2f32);
        assert_eq!(total.answer().text, python_repr(expected));
    }

    #[test]
    fn bad_lengths_and_mismatched_partials_are_rejected() {
        assert!(
            sum_chunk(Dtype::Float64, &[0u8; 12])
                .unwrap_err()
                .is_poison()
        );
        let mut total = Total::new(Dtype::Float64);
        let int = sum_chunk(Dtype::Int32, &[1, 0, 0, 0]).unwrap();
        assert!(total.add(&int).is_err());
        let too_small = PartialSum::Float {
            count: 1,
            mantissa: BigInt::from(1),
            exponent: -1075,
            nonfinite: None,
        };
        assert!(total.add(&too_small).is_err());
        let too_big = PartialSum::Float {
            count: 1,
            mantissa: BigInt::from(1) << 2000,
            exponent: 0,
            nonfinite: None,
        };
        assert!(total.add(&too_big).is_err());
        for exponent in [i64::MAX, i64::MIN, MAX_TOTAL_BITS + 1] {
            let hostile = PartialSum::Float {
                count: 1,
                mantissa: BigInt::from(1),
                exponent,
                nonfinite: None,
            };
            assert!(total.add(&hostile).is_err(), "{exponent}");
        }
    }

    #[test]
    fn partial_sum_json_is_pinned() {
        let mut acc = FloatAccumulator::new();
        acc.add_slice(&[0.5, 0.25, -2.0]);
        assert_eq!(
            serde_json::to_string(&acc.to_partial()).unwrap(),
            r#"{"type":"float","count":3,"mantissa":"-0x5","exponent":-2}"#
        );
        let mut acc = FloatAccumulator::new();
        acc.add_slice(&[f64::INFINITY, 1.0]);
        assert_eq!(
            serde_json::to_string(&acc.to_partial()).unwrap(),
            r#"{"type":"float","count":2,"mantissa":"0x1","exponent":0,"nonfinite":"inf"}"#
        );
        let int = sum_chunk(Dtype::Int8, &[0xFF, 0xFE]).unwrap();
        assert_eq!(
            serde_json::to_string(&int).unwrap(),
            r#"{"type":"int","count":2,"sum":"-3"}"#
        );
        let empty = FloatAccumulator::new().to_partial();
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"type":"float","count":0,"mantissa":"0x0","exponent":0}"#
        );
    }

    #[test]
    fn malformed_partial_json_is_rejected() {
        for bad in [
            r#"{"type":"float","count":1,"mantissa":"12","exponent":0}"#,
            r#"{"type":"float","count":1,"mantissa":"0xzz","exponent":0}"#,
            r#"{"type":"int","count":1,"sum":"1e5"}"#,
            r#"{"type":"complex","count":1}"#,
        ] {
            assert!(serde_json::from_str::<PartialSum>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn python_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.0, "123.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-1.5e-7, "-1.5e-07"),
            (1.5e300, "1.5e+300"),
            (2.5e-310, "2.5e-310"),
            (123456789.125, "123456789.125"),
            (f64::MAX, "1.7976931348623157e+308"),
            (562_949_953_421_312.0 + 0.25, "562949953421312.2"),
            (2f64.powi(-25), "2.9802322387695312e-08"),
            (2f64.powi(-1017), "7.120236347223045e-307"),
            (5e-324, "5e-324"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (x, expected) in cases {
            assert_eq!(python_repr(x), expected, "{x:e}");
        }
    }

    #[test]
    fn a_total_restored_from_its_partial_is_the_same_total() {
        let mut total = Total::new(Dtype::Float64);
        for chunk in [[0.1f64, 1e300, -1e300], [1e-310, 3.0, -0.25]] {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            total
                .add(&sum_chunk(Dtype::Float64, &bytes).unwrap())
                .unwrap();
        }
        let mut restored = Total::new(Dtype::Float64);
        restored.add(&total.to_partial()).unwrap();
        assert_eq!(restored.answer(), total.answer());
        assert_eq!(restored.count(), 6);

        let mut ints = Total::new(Dtype::Int64);
        let bytes: Vec<u8> = [i64::MAX, i64::MAX, -5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        ints.add(&sum_chunk(Dtype::Int64, &bytes).unwrap()).unwrap();
        let mut restored = Total::new(Dtype::Int64);
        restored.add(&ints.to_partial()).unwrap();
        assert_eq!(restored.answer(), ints.answer());
    }
}
