//! [`Dtype`]: the element types a sum job can carry, named as numpy names
//! them. On the wire every element is little-endian.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The element type of a sum job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE 754 binary64 (`np.float64`, `<f8`).
    Float64,
    /// IEEE 754 binary32 (`np.float32`, `<f4`).
    Float32,
    /// Signed 64-bit integer (`<i8`).
    Int64,
    /// Signed 32-bit integer (`<i4`).
    Int32,
    /// Signed 16-bit integer (`<i2`).
    Int16,
    /// Signed 8-bit integer (`|i1`).
    Int8,
    /// Unsigned 64-bit integer (`<u8`).
    Uint64,
    /// Unsigned 32-bit integer (`<u4`).
    Uint32,
    /// Unsigned 16-bit integer (`<u2`).
    Uint16,
    /// Unsigned 8-bit integer (`|u1`).
    Uint8,
}

impl Dtype {
    /// Every supported dtype, for help texts and tests.
    pub const ALL: [Dtype; 10] = [
        Dtype::Float64,
        Dtype::Float32,
        Dtype::Int64,
        Dtype::Int32,
        Dtype::Int16,
        Dtype::Int8,
        Dtype::Uint64,
        Dtype::Uint32,
        Dtype::Uint16,
        Dtype::Uint8,
    ];

    /// The numpy name, which is also the wire name: `float64`, `int32`, ...
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float64 => "float64",
            Dtype::Float32 => "float32",
            Dtype::Int64 => "int64",
            Dtype::Int32 => "int32",
            Dtype::Int16 => "int16",
            Dtype::Int8 => "int8",
            Dtype::Uint64 => "uint64",
            Dtype::Uint32 => "uint32",
            Dtype::Uint16 => "uint16",
            Dtype::Uint8 => "uint8",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            Dtype::Float64 | Dtype::Int64 | Dtype::Uint64 => 8,
            Dtype::Float32 | Dtype::Int32 | Dtype::Uint32 => 4,
            Dtype::Int16 | Dtype::Uint16 => 2,
            Dtype::Int8 | Dtype::Uint8 => 1,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::Float64 | Dtype::Float32)
    }

    /// The dtype of a numpy type string's kind character (`f`, `i`, `u`) and
    /// size in bytes, if supported.
    pub fn from_numpy_kind(kind: char, size: u64) -> Option<Dtype> {
        Some(match (kind, size) {
            ('f', 8) => Dtype::Float64,
            ('f', 4) => Dtype::Float32,
            ('i', 8) => Dtype::Int64,
            ('i', 4) => Dtype::Int32,
            ('i', 2) => Dtype::Int16,
            ('i', 1) => Dtype::Int8,
            ('u', 8) => Dtype::Uint64,
            ('u', 4) => Dtype::Uint32,
            ('u', 2) => Dtype::Uint16,
            ('u', 1) => Dtype::Uint8,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;

    /// Accepts the numpy names (`float64`), the short numpy codes (`f8`,
    /// `<f8`), and the Rust names (`f64`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.trim().to_ascii_lowercase();
        let code = lower.trim_start_matches(['<', '|', '=']);
        let found = Dtype::ALL
            .into_iter()
            .find(|d| d.name() == code)
            .or(match code {
                "f8" | "f64" | "double" | "float" => Some(Dtype::Float64),
                "f4" | "f32" | "single" => Some(Dtype::Float32),
                "i8" | "i64" => Some(Dtype::Int64),
                "i4" | "i32" => Some(Dtype::Int32),
                "i2" | "i16" => Some(Dtype::Int16),
                "i1" => Some(Dtype::Int8),
                "u8" | "u64" => Some(Dtype::Uint64),
                "u4" | "u32" => Some(Dtype::Uint32),
                "u2" | "u16" => Some(Dtype::Uint16),
                "u1" => Some(Dtype::Uint8),
                _ => None,
            });
        found.ok_or_else(|| {
            let names: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
            format!(
                "unsupported dtype {text:?} (expected one of {})",
                names.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for dtype in Dtype::ALL {
            assert_eq!(dtype.name().parse::<Dtype>(), Ok(dtype));
            let json = serde_json::to_string(&dtype).unwrap();
            assert_eq!(json, format!("\"{}\"", dtype.name()));
        }
    }

    #[test]
    fn numpy_codes_and_aliases_parse() {
        assert_eq!("<f8".parse::<Dtype>(), Ok(Dtype::Float64));
        assert_eq!("f4".parse::<Dtype>(), Ok(Dtype::Float32));
        assert_eq!("I64".parse::<Dtype>(), Ok(Dtype::Int64));
        assert_eq!("|u1".parse::<Dtype>(), Ok(Dtype::Uint8));
        let err = "complex128".parse::<Dtype>().unwrap_err();
        assert!(err.contains("float64, float32"), "{err}");
    }
}
