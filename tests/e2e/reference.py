"""Reference answers and test data for warren's end-to-end tests.

Everything here is independent of the code under test: sums come from
Python's math.fsum (or exact Fraction arithmetic where fsum raises on
intermediate overflow), and .npy files are written by numpy itself.

Usage: python3 reference.py COMMAND ARGS...
"""

import math
import random
import sys
from fractions import Fraction

import numpy as np


def exact_float_sum(values):
    """repr of the correctly rounded exact sum, like math.fsum, but also
    when fsum would overflow in between; 'overflow:+' / 'overflow:-' when
    the exact sum itself is out of range."""
    try:
        return repr(math.fsum(values))
    except ValueError:  # +inf and -inf
        return "nan"
    except OverflowError:
        total = sum(Fraction(v) for v in values)
        try:
            return repr(float(total))
        except OverflowError:
            return "overflow:+" if total > 0 else "overflow:-"


def sum_npy(path):
    array = np.load(path, mmap_mode="r").ravel(order="K")
    if array.dtype.kind == "f":
        return exact_float_sum(array.astype(np.float64))
    return str(sum(array.tolist()))


def sum_raw(path, dtype):
    """The sum of a raw little-endian file of DTYPE values."""
    array = np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.dtype.kind == "f":
        return exact_float_sum(array.astype(np.float64))
    return str(sum(array.tolist()))


def write(path, values, dtype, byteorder):
    array = np.asarray(values, dtype=np.dtype(dtype).newbyteorder(byteorder))
    np.save(path, array)


def random_npy(path, n, seed, dtype="float64", byteorder="<"):
    values = np.random.RandomState(int(seed)).random_sample(int(n))
    write(path, values, dtype, byteorder)


def random_raw(path, n, seed, dtype, byteorder):
    """Writes N random values of DTYPE as raw binary in BYTEORDER (< or >),
    floats in [-1, 1) so that they cancel, integers over the whole range,
    and prints their exact sum."""
    rs = np.random.RandomState(int(seed))
    dt = np.dtype(dtype)
    if dt.kind == "f":
        values = (rs.random_sample(int(n)) * 2 - 1).astype(dt)
    else:
        info = np.iinfo(dt)
        values = rs.randint(info.min, info.max, size=int(n), dtype=dt)
    values.astype(dt.newbyteorder(byteorder)).tofile(path)
    if dt.kind == "f":
        return exact_float_sum(values.astype(np.float64))
    return str(sum(values.tolist()))


def s3_put(endpoint, bucket, key, path):
    """Creates BUCKET (if missing) on the S3-compatible server at ENDPOINT
    and uploads the file at PATH as KEY."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(path, bucket, key)


def adversarial_npy(path, kind, seed="1"):
    """Inputs on which naive summation is wrong."""
    rng = random.Random(int(seed))
    if kind == "cancelling":
        # Huge values cancelling around small ones, shuffled.
        values = []
        for _ in range(20000):
            big = rng.uniform(1, 10) * 10.0 ** rng.randint(100, 300)
            values += [big, rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 0), -big]
        rng.shuffle(values)
    elif kind == "tiny-beside-huge":
        values = [2.0**80] + [rng.uniform(0, 1e-3) for _ in range(200000)] + [-(2.0**80)]
        rng.shuffle(values)
    elif kind == "wide":
        values = [
            rng.choice([-1, 1]) * rng.random() * 2.0 ** rng.randint(-1074, 1000)
            for _ in range(100000)
        ]
    elif kind == "subnormal":
        values = [rng.randint(-(2**52), 2**52) * 2.0**-1074 for _ in range(50000)]
    elif kind == "near-overflow":
        # fsum raises on these; the exact sum is small.
        values = [1.7e308, 1.7e308, -1.7e308, -1.7e308, 1.5, 2.0**-1074] * 1000
    elif kind == "overflow":
        values = [1.7e308] * 10 + [-1.0]
    elif kind == "nan":
        values = [1.0, float("nan"), 2.0]
    elif kind == "inf":
        values = [1.0, float("inf"), 1e308, 1e308]
    elif kind == "both-inf":
        values = [float("inf"), 1.0, float("-inf")]
    else:
        raise SystemExit(f"unknown kind {kind}")
    write(path, values, "float64", "<")


def int_npy(path, kind, dtype, byteorder="<"):
    info = np.iinfo(dtype)
    if kind == "past-range":
        # The exact total is far beyond the dtype's (and int64's) range.
        values = [int(info.max)] * 5000 + [int(info.min) + 1] * 10 + [7]
    elif kind == "random":
        rng = np.random.RandomState(5)
        values = rng.randint(int(info.min), int(info.max), size=100000, dtype=np.int64 if dtype != "uint64" else np.uint64)
    else:
        raise SystemExit(f"unknown kind {kind}")
    write(path, values, dtype, byteorder)


def bad_npy(path, kind):
    """Files warren must refuse, written by numpy where numpy can."""
    if kind == "complex":
        np.save(path, np.arange(10, dtype=np.complex128))
    elif kind == "fortran":
        np.save(path, np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    elif kind == "object":
        np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    elif kind == "structured":
        np.save(path, np.zeros(4, dtype=[("a", "<f8"), ("b", "<i4")]))
    elif kind == "float16":
        np.save(path, np.arange(10, dtype=np.float16))
    elif kind == "truncated":
        np.save(path, np.arange(1000, dtype=np.float64))
        with open(path, "r+b") as f:
            f.truncate(128 + 8 * 500)
    elif kind == "corrupt-header":
        np.save(path, np.arange(10, dtype=np.float64))
        with open(path, "r+b") as f:
            f.seek(10)
            f.write(b"{'descr': <<garbage")
    else:
        raise SystemExit(f"unknown kind {kind}")


def text_file(path, n, seed, separator):
    """Random numbers as text, shortest repr; prints the expected sum."""
    rng = random.Random(int(seed))
    values = [rng.uniform(-1e6, 1e6) * 10.0 ** rng.randint(-20, 20) for _ in range(int(n))]
    sep = {"newline": "\n", "space": " ", "comma": ",", "mixed": None}[separator]
    with open(path, "w") as f:
        f.write("# values for warren\n")
        for i, v in enumerate(values):
            if sep is None:
                f.write(repr(v) + [" ", ",", "\n", " , ", "\t"][i % 5])
            else:
                f.write(repr(v) + sep)
    print(exact_float_sum(values))


def numpy_random_sum(n, seed):
    """The sum of np.random.seed(seed); np.random.rand(n)."""
    np.random.seed(int(seed))
    return exact_float_sum(np.random.rand(int(n)))


def main():
    command, *args = sys.argv[1:]
    if command == "sum-npy":
        print(sum_npy(*args))
    elif command == "sum-raw":
        print(sum_raw(*args))
    elif command == "random-npy":
        random_npy(*args)
    elif command == "s3-put":
        s3_put(*args)
    elif command == "random-raw":
        print(random_raw(*args))
    elif command == "adversarial-npy":
        adversarial_npy(*args)
    elif command == "int-npy":
        int_npy(*args)
    elif command == "bad-npy":
        bad_npy(*args)
    elif command == "text-file":
        text_file(*args)
    elif command == "numpy-random-sum":
        print(numpy_random_sum(*args))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
