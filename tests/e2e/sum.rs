use crate::support::Scenario;
use crate::support::python::{expected_npy_sum, reference};

#[test]
fn ten_million_floats_match_fsum_for_any_chunk_size_and_worker_count() {
    let mut s = Scenario::new("ten_million");
    let data = s.path_str("readings.npy");
    reference(&["random-npy", &data, "10000000", "42"]);
    let expected = expected_npy_sum(s.path("readings.npy").as_path());

    let mut workers = s.workers(2);
    for chunk_size in ["131072", "1000003", "77777"] {
        let run = s
            .producer(&["sum", &data, "--chunk-size", chunk_size, "--json"])
            .run();
        run.expect_success();
        let json = run.json();
        assert_eq!(
            json["sum"],
            expected.as_str(),
            "chunk size {chunk_size}\n{run}"
        );
        assert_eq!(json["count"], 10_000_000);
        assert_eq!(json["dtype"], "float64");
    }

    // One worker, then three: the same bits.
    workers.truncate(1);
    s.broker.wait_for_consumers(1);
    let run = s.producer(&["sum", &data]).run();
    assert_eq!(run.expect_success().answer(), expected, "1 worker");
    workers.push(s.start_worker("w1", &[]));
    workers.push(s.start_worker("w2", &[]));
    s.broker.wait_for_consumers(3);
    let run = s.producer(&["sum", &data, "--chunk-size", "50000"]).run();
    assert_eq!(run.expect_success().answer(), expected, "3 workers");
    s.assert_clean();
}

#[test]
fn adversarial_floats_match_fsum_bit_for_bit() {
    let mut s = Scenario::new("adversarial");
    let _workers = s.workers(2);
    for kind in [
        "cancelling",
        "tiny-beside-huge",
        "wide",
        "subnormal",
        "near-overflow",
    ] {
        let data = s.path_str(&format!("{kind}.npy"));
        reference(&["adversarial-npy", &data, kind]);
        let expected = expected_npy_sum(s.path(&format!("{kind}.npy")).as_path());
        let run = s.producer(&["sum", &data, "--chunk-size", "997"]).run();
        assert_eq!(run.expect_success().answer(), expected, "{kind}\n{run}");
    }
    s.assert_clean();
}

#[test]
fn nan_infinities_and_overflow_follow_ieee_and_say_so() {
    let mut s = Scenario::new("nonfinite");
    let _workers = s.workers(1);
    for (kind, answer, note) in [
        ("nan", "nan", "the input holds NaN"),
        ("inf", "inf", "the input holds infinities"),
        ("both-inf", "nan", "both +inf and -inf"),
    ] {
        let data = s.path_str(&format!("{kind}.npy"));
        reference(&["adversarial-npy", &data, kind]);
        let run = s.producer(&["sum", &data, "--chunk-size", "1"]).run();
        assert_eq!(run.expect_success().answer(), answer, "{kind}");
        assert!(run.stderr.contains(note), "{kind}: {run}");
    }

    let data = s.path_str("overflow.npy");
    reference(&["adversarial-npy", &data, "overflow"]);
    assert_eq!(
        expected_npy_sum(s.path("overflow.npy").as_path()),
        "overflow:+"
    );
    let run = s
        .producer(&["sum", &data, "--chunk-size", "3", "--json"])
        .run();
    run.expect_code(1);
    let json = run.json();
    assert_eq!(json["overflow"], true);
    assert_eq!(json["sum"], "inf");
    assert!(run.stderr.contains("beyond float64's range"), "{run}");
    s.assert_clean();
}

#[test]
fn npy_in_both_byte_orders_and_float32_as_numpy_writes_them() {
    let mut s = Scenario::new("byte_orders");
    let _workers = s.workers(2);
    for (dtype, order) in [("float64", ">"), ("float32", "<"), ("float32", ">")] {
        let name = format!("{dtype}{}.npy", if order == ">" { "be" } else { "le" });
        let data = s.path_str(&name);
        reference(&["random-npy", &data, "300001", "9", dtype, order]);
        let expected = expected_npy_sum(s.path(&name).as_path());
        let run = s
            .producer(&["sum", &data, "--chunk-size", "65536", "--json"])
            .run();
        run.expect_success();
        assert_eq!(run.json()["sum"], expected.as_str(), "{name}");
        assert_eq!(run.json()["dtype"], dtype, "{name}");
    }
    s.assert_clean();
}

#[test]
fn integer_sums_are_exact_past_the_int64_range() {
    let mut s = Scenario::new("integers");
    let _workers = s.workers(2);
    for (kind, dtype, order) in [
        ("past-range", "int64", "<"),
        ("past-range", "uint64", ">"),
        ("past-range", "int32", ">"),
        ("random", "int16", "<"),
        ("random", "uint8", "|"),
    ] {
        let name = format!("{kind}-{dtype}.npy");
        let data = s.path_str(&name);
        reference(&["int-npy", &data, kind, dtype, order]);
        let expected = expected_npy_sum(s.path(&name).as_path());
        let run = s
            .producer(&["sum", &data, "--chunk-size", "1000", "--json"])
            .run();
        run.expect_success();
        assert_eq!(run.json()["sum"], expected.as_str(), "{name}");
        assert_eq!(run.json()["dtype"], dtype);
        if kind == "past-range" && dtype != "int32" {
            let total: f64 = expected.parse().unwrap();
            assert!(
                total.abs() > i64::MAX as f64,
                "{name}: {expected} should pass the int64 range"
            );
        }
    }
    s.assert_clean();
}

#[test]
fn text_input_with_every_separator_and_from_stdin() {
    let mut s = Scenario::new("text");
    let _workers = s.workers(2);
    for separator in ["newline", "space", "comma", "mixed"] {
        let name = format!("{separator}.txt");
        let data = s.path_str(&name);
        let expected = reference(&["text-file", &data, "20000", "3", separator]);
        let run = s.producer(&["sum", &data, "--chunk-size", "3000"]).run();
        assert_eq!(run.expect_success().answer(), expected, "{separator}");
    }
    let expected = reference(&["text-file", &s.path_str("stdin.txt"), "5000", "4", "mixed"]);
    let run = s
        .producer(&["sum", "-", "--chunk-size", "1000", "--json"])
        .stdin_from(&s.path("stdin.txt"))
        .run();
    run.expect_success();
    assert_eq!(run.json()["sum"], expected.as_str());
    assert_eq!(run.json()["count"], 5000);

    std::fs::write(
        s.path("ints.txt"),
        "9223372036854775807\n9223372036854775807, 2\n",
    )
    .unwrap();
    let run = s
        .producer(&["sum", &s.path_str("ints.txt"), "--dtype", "int64"])
        .run();
    assert_eq!(run.expect_success().answer(), "18446744073709551616");
    s.assert_clean();
}

#[test]
fn raw_binary_with_a_dtype() {
    let mut s = Scenario::new("raw");
    let _workers = s.workers(1);
    let values: Vec<f32> = (0..100_000)
        .map(|i| (i as f32 * 0.37).sin() * 1e6)
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(s.path("data.f32"), &bytes).unwrap();
    // The same values as a .npy for the reference.
    let expected: String = {
        let script = format!(
            "import numpy as np; np.save('{}', np.fromfile('{}', dtype='<f4'))",
            s.path_str("data.npy"),
            s.path_str("data.f32")
        );
        let ok = std::process::Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(ok.success());
        expected_npy_sum(s.path("data.npy").as_path())
    };
    let run = s
        .producer(&[
            "sum",
            &s.path_str("data.f32"),
            "--format",
            "raw",
            "--dtype",
            "float32",
        ])
        .run();
    assert_eq!(run.expect_success().answer(), expected);
    let run = s
        .producer(&[
            "sum",
            "-",
            "--format",
            "raw",
            "--dtype",
            "float32",
            "--chunk-size",
            "777",
        ])
        .stdin_from(&s.path("data.f32"))
        .run();
    assert_eq!(run.expect_success().answer(), expected, "from stdin");
    s.assert_clean();
}

#[test]
fn raw_big_endian_input_through_the_broker_matches_python() {
    let mut s = Scenario::new("raw_big");
    let _workers = s.workers(1);
    for (name, dtype, order) in [
        ("f8-big.raw", "float64", "big"),
        ("i4-big.raw", "int32", "big"),
        ("u2-big.raw", "uint16", "big"),
        ("f4-little.raw", "float32", "little"),
    ] {
        let path = s.path_str(name);
        let numpy_order = if order == "big" { ">" } else { "<" };
        let expected = reference(&["random-raw", &path, "200003", "7", dtype, numpy_order]);
        let run = s
            .producer(&[
                "sum",
                &path,
                "--format",
                "raw",
                "--dtype",
                dtype,
                "--byte-order",
                order,
                "--chunk-size",
                "30001",
                "--json",
            ])
            .run();
        run.expect_success();
        assert_eq!(run.json()["sum"], expected.as_str(), "{name}\n{run}");
        assert_eq!(run.json()["count"], 200_003, "{name}");
    }
    let run = s
        .producer(&[
            "sum",
            &s.path_str("f8-big.raw"),
            "--format",
            "text",
            "--byte-order",
            "big",
        ])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("--byte-order applies to raw input only"),
        "{run}"
    );
    s.assert_clean();
}

#[test]
fn random_input_is_numpys_seeded_stream() {
    let mut s = Scenario::new("random");
    let _workers = s.workers(2);
    let expected = reference(&["numpy-random-sum", "1000000", "7"]);
    let run = s
        .producer(&["sum", "--random", "1e6", "--seed", "7", "--json"])
        .run();
    run.expect_success();
    let json = run.json();
    assert_eq!(json["sum"], expected.as_str());
    assert_eq!(json["seed"], 7);
    // Same bits every time, whatever the chunking.
    let again = s
        .producer(&[
            "sum",
            "--random",
            "1000000",
            "--seed",
            "7",
            "--chunk-size",
            "9999",
        ])
        .run();
    assert_eq!(again.expect_success().answer(), expected);
    s.assert_clean();
}

#[test]
fn json_output_has_the_documented_keys() {
    let mut s = Scenario::new("json_keys");
    let _workers = s.workers(2);
    let run = s
        .producer(&[
            "sum",
            "--random",
            "300000",
            "--seed",
            "1",
            "--chunk-size",
            "100000",
            "--json",
        ])
        .run();
    run.expect_success();
    let json = run.json();
    for key in [
        "job_id",
        "sum",
        "count",
        "dtype",
        "chunks",
        "workers_seen",
        "elapsed_s",
        "duplicates",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["chunks"], 3);
    assert_eq!(json["count"], 300_000);
    assert!(json["sum"].is_string());
    assert!(json["elapsed_s"].as_f64().unwrap() > 0.0);
    let seen = json["workers_seen"].as_u64().unwrap();
    assert!((1..=2).contains(&seen), "{json}");
    // Plain output is the same string alone.
    let plain = s
        .producer(&["sum", "--random", "300000", "--seed", "1"])
        .run();
    assert_eq!(
        plain.expect_success().stdout,
        format!("{}\n", json["sum"].as_str().unwrap())
    );
    s.assert_clean();
}

#[test]
fn empty_input_sums_to_zero_without_any_worker() {
    let mut s = Scenario::new("empty");
    let data = s.path_str("empty.npy");
    reference(&["random-npy", &data, "0", "1"]);
    let run = s
        .producer(&["sum", &data, "--json", "--timeout", "20s"])
        .run();
    run.expect_success();
    assert_eq!(run.json()["sum"], "0.0");
    assert_eq!(run.json()["count"], 0);
    assert_eq!(run.json()["chunks"], 0);
    s.assert_clean();
}

#[test]
fn answers_print_exactly_as_python_repr_does() {
    // Random bit patterns, values with a tie in their shortest digits
    // (quarter steps near 2^49), and every power of two.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = Vec::new();
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = f64::from_bits(state);
        if x.is_finite() {
            values.push(x);
        }
    }
    values.extend((0..2000).map(|k| 562_949_953_421_312.0 + k as f64 * 0.25));
    values.extend((-1074..1024).map(|e| 2f64.powi(e)));
    let s = Scenario::new("repr");
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(s.path("values.f64"), bytes).unwrap();
    let script = format!(
        "import struct\ndata = open('{}', 'rb').read()\nfor (x,) in struct.iter_unpack('<d', data):\n    print(repr(x))\n",
        s.path_str("values.f64")
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(output.status.success());
    let expected = String::from_utf8(output.stdout).unwrap();
    let mut mismatches = Vec::new();
    for (x, line) in values.iter().zip(expected.lines()) {
        let ours = warren::exact::python_repr(*x);
        if ours != line {
            mismatches.push(format!("{:#x}: warren {ours}, python {line}", x.to_bits()));
        }
    }
    assert_eq!(expected.lines().count(), values.len());
    assert!(
        mismatches.is_empty(),
        "{} mismatches: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}
