//! Independent reference answers and test data from Python 3, through
//! `e2e/reference.py`: `math.fsum` and exact `Fraction` arithmetic for the
//! expected sums, and numpy itself for writing `.npy` files.

use std::path::Path;
use std::process::Command;

/// Runs `reference.py COMMAND ARGS...` and returns its stdout, trimmed.
pub fn reference(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/reference.py");
    let output = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (it is required by the tests)");
    assert!(
        output.status.success(),
        "python3 reference.py {} failed:\n{}\n(the tests need numpy: `pip install numpy`)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("reference.py prints UTF-8")
        .trim()
        .to_owned()
}

/// The expected answer for the elements of a `.npy` file: Python's repr of
/// `math.fsum` for floats (exact `Fraction` arithmetic when fsum overflows
/// in between), the exact integer for integers.
pub fn expected_npy_sum(path: &Path) -> String {
    reference(&["sum-npy", path.to_str().expect("temp paths are UTF-8")])
}
