//! [`Dtype`]: the element types a sum job can carry, named as numpy names
//! them. On the wire every element is little-endian.

use std::fmt;

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

impl Dtype {
    /// The dtype of a wire name, exactly as docs/PROTOCOL.md lists them
    /// (`float64`, ..., `uint8`): no other spelling, case or padding.
    ///
    /// # Errors
    /// A message naming the value and the accepted names.
    pub fn from_wire(name: &str) -> Result<Self, String> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
                format!(
                    "unsupported dtype {name:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

// The command line's parser, separate from the wire's so that it could
// grow aliases without loosening the protocol. Today both accept exactly
// the ten numpy names; clap lists them in `--help` and suggests the nearest
// one for a typo.
impl clap::ValueEnum for Dtype {
    fn value_variants<'a>() -> &'a [Self] {
        &Dtype::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for dtype in Dtype::ALL {
            assert_eq!(Dtype::from_wire(dtype.name()), Ok(dtype));
            let json = serde_json::to_string(&dtype).unwrap();
            assert_eq!(json, format!("\"{}\"", dtype.name()));
        }
    }

    #[test]
    fn the_wire_takes_exactly_the_documented_names() {
        for other in [
            "<f8", "f8", "f4", "float", "double", "int", "Float64", "float64 ", "",
        ] {
            let err = Dtype::from_wire(other).unwrap_err();
            assert!(err.contains("float64, float32"), "{other:?}: {err}");
        }
    }

    #[test]
    fn the_command_line_takes_exactly_the_documented_names() {
        use clap::ValueEnum;
        for dtype in Dtype::ALL {
            assert_eq!(Dtype::from_str(dtype.name(), false), Ok(dtype));
        }
        for other in ["f4", "float", "int", "double", "Float64"] {
            assert!(Dtype::from_str(other, false).is_err(), "{other}");
        }
    }
}
