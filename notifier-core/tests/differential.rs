//! Replays the differential fuzzer's committed corpus (`fuzz/corpus/differential`)
//! against the core and the reference model, on stable Rust, in the ordinary test
//! command; `cargo +nightly fuzz run differential` explores further (see the README).
#![cfg(not(loom))]

#[path = "../../fuzz/driver.rs"]
mod driver;

#[test]
fn c16_c17_differential_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/differential");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("the corpus directory")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    // Miri interprets every step: a few inputs there, all of them natively.
    entries.truncate(if cfg!(miri) { 4 } else { usize::MAX });
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| driver::run(&data));
        assert!(r.is_ok(), "corpus input {} diverged", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus");
}

#[test]
fn differential_random_inputs() {
    // A deterministic sweep of inputs beyond the corpus (xorshift), so the test command
    // explores a little on its own.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let runs = if cfg!(miri) { 4 } else { 3000 };
    for _ in 0..runs {
        let len = 8 + (x % 400) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        driver::run(&data);
    }
}
