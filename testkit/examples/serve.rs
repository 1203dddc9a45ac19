//! Runs the fixture server until stdin closes, printing its address: for
//! profiling downloads by hand (`producer download` against it, under
//! `perf`), outside the benchmark.

fn main() {
    let fixture = warren_testkit::HttpFixture::start();
    println!("{}", fixture.url(""));
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        line.clear();
    }
}
