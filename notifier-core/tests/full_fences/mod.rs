//! Running a test binary's tests again in a child process whose hosted platform keeps
//! full fences: the barrier pairing is chosen once per process, so a test of the other
//! pairing needs a process of its own.

/// The environment variable that keeps `StdPlatform`'s full fences when it is `0`.
pub const KNOB: &str = "NOTIFIER_MEMBARRIER";

/// Whether this process was told to keep full fences.
pub fn forced() -> bool {
    std::env::var_os(KNOB).is_some_and(|v| v == "0")
}

/// Run this test binary again with `args` and full fences, and check that it passed
/// and that its summary says `passed` (for example `"4 passed"`).
pub fn run_again(args: &[&str], passed: &str) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(args)
        .env(KNOB, "0")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(passed),
        "child with {KNOB}=0 failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
