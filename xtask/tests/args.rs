//! `cargo xtask`'s options: bad input is one line on stderr and exit status 2, before
//! any command starts; `--help` lists each command's options with their defaults.

use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["hermti"],
        &["kmod", "--timout", "5"],
        &["kmod", "--timeout", "x"],
        &["kmod", "--broken", "Not_A_Twin"],
        &["hermit", "--timeout=-1"],
        &["suite-table", "--require", "host,nope"],
        &["bench-report", "--skip"],
    ];
    for args in cases {
        let o = Command::new(XTASK)
            .args(*args)
            .output()
            .expect("xtask runs");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        // No command at all prints the list of commands (with exit 2); the rest is one line.
        if !args.is_empty() {
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(err.starts_with("xtask: "), "{args:?}: {err}");
        }
    }
    let o = Command::new(XTASK)
        .args(["kmod", "--timout", "5"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("'--timeout'"));
}

#[test]
fn help_shows_options_and_defaults() {
    for (cmd, want) in [
        ("kmod", "[default: 600]"),
        ("hermit", "[default: 900]"),
        ("suite-table", "--require"),
        ("bench-report", "--skip-run"),
    ] {
        let o = Command::new(XTASK).args([cmd, "--help"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{cmd}");
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(h.contains(want), "{cmd} --help lacks {want}:\n{h}");
    }
}
