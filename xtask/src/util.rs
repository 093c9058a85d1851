//! What every xtask command uses: the workspace root and running commands.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// An xtask error: a message for the user.
pub type Result<T> = std::result::Result<T, String>;

/// The workspace root (`xtask/` is one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Run `cmd`, echoing it; fail with its name on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} exited with {st}"))
    }
}

/// Run `cmd` and return its standard output (its standard error goes to ours).
pub fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{cmd:?} exited with {}", o.status));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The exit status of command `name` (`kmod`, `hermit`) that ended with `r`: success,
/// or the error printed as `xtask NAME: FAILED: …` and failure.
pub fn finish(name: &str, r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {name}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A broken consumer's catch rate (`--broken NAME --runs N`): `run(k)` boots run `k`
/// and judges it (`Ok(Err(why))`: not caught); `say` reports progress. Writes
/// `NAME: caught in K of N runs` and the misses to `file`, and fails unless every run
/// caught it.
pub fn catch_rate(
    twin: &str,
    runs: u32,
    file: &Path,
    say: impl Fn(&str),
    mut run: impl FnMut(u32) -> Result<Result<()>>,
) -> Result<()> {
    let mut caught = 0;
    let mut missed = Vec::new();
    for k in 1..=runs {
        match run(k)? {
            Ok(()) => caught += 1,
            Err(e) => missed.push(format!("run {k}: {e}")),
        }
        say(&format!("{twin}: run {k} of {runs}: caught in {caught}"));
    }
    let line = format!("{twin}: caught in {caught} of {runs} runs");
    std::fs::write(file, format!("{line}\n{}\n", missed.join("\n")))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    say(&line);
    if missed.is_empty() {
        Ok(())
    } else {
        Err(format!("{line}:\n  {}", missed.join("\n  ")))
    }
}
