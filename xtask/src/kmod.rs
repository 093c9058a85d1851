//! `cargo xtask kmod` (issue #5): the core inside a real Linux 6.12 kernel.
//!
//! From nothing, in order, each step skipped when its result is already there:
//!
//! 1. Debian packages (kernel source, clang/lld/llvm 19, build tools, busybox, QEMU from
//!    bookworm-backports), `rust-src` for the stable toolchain, and `bindgen-cli` into
//!    the cache (`/var/cache/notifier-kmod` or `$NOTIFIER_KMOD_CACHE`).
//! 2. The kernel: `linux-source-6.12` extracted and built with `tinyconfig` plus
//!    `backend-linux-kmod/kernel.config` into `linux-<version>-<hash>` in the cache,
//!    where the hash covers the config fragment and the recipe below, so any change
//!    rebuilds and nothing else does.
//! 3. The module: `backend-linux-kmod/` built out of tree with that kernel's own Rust
//!    rule; `notifier-core` and its dependencies are compiled from their sources where
//!    cargo keeps them (workspace and registry), never copied into the repository.
//!    Then the same make again with `CLIPPY=1` (Kbuild runs `clippy-driver` instead of
//!    `rustc`, with the kernel's lint set) in a second scratch copy: any clippy warning
//!    or error located in one of the module's own `.rs` files fails the run. The
//!    core's and the suite's diagnostics there are not ours to apply (cargo clippy
//!    checks them with the workspace's settings) and are ignored.
//! 4. An initramfs (busybox-static, a RAM-disk swap, the module, and `nkhelper`, the
//!    user process the module watches, built static with clang) and a QEMU boot
//!    (software emulation only), with a timeout.
//!    While the module is loaded, real programs run shadowed (`nkshadow`, issue 14):
//!    Linux's own mm selftests, built static from the same kernel tree, each with a
//!    recorder on Linux's notifier and one on the core; `target/kmod/shadow.txt` has
//!    the table, and any mismatch fails the run.
//! 5. The serial log is checked: the module runs its smoke tests and then the
//!    conformance suite (`tests/`, on real address spaces); both sets of per-case
//!    lines and both closing lines are printed, and the suite's own lines are saved to
//!    `target/kmod/suite.txt`. The run fails on a failed case, a missing closing line,
//!    a panic, an oops, a WARN (the guest boots with `panic_on_warn=1`, and the log is
//!    searched for `WARNING:` too), a lockdep or KASAN report, or the timeout.

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::suite_table::{
    closing_line, known_ids, ktap, twin_catchers, twin_verdict, Ktap, Res, KNOWN_DIFFERENCES,
};
use crate::util::{finish, output, sh, workspace_root, Result};

/// The Debian package that carries the kernel source.
const SOURCE_PACKAGE: &str = "linux-source-6.12";
/// The tarball it installs.
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// Packages from bookworm itself (and its security archive).
const PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "clang-19",
    "lld-19",
    "llvm-19",
    "libclang1-19",
    "make",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "libc6-dev",
    "cpio",
    "busybox-static",
];
/// QEMU comes from bookworm-backports (the machine's qemu-utils is that version).
const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86"];
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const BINDGEN_VERSION: &str = "0.73.2";
const LLVM: &str = "LLVM=-19";
const LIBCLANG_PATH: &str = "/usr/lib/llvm-19/lib";
/// Everything about how the kernel is built that is not in the config fragment. It is
/// hashed with the fragment into the cache key: change it when the recipe changes.
///
/// The bindgen line works around a layout bug: with SCHEDSTATS off, the empty
/// cache-aligned `struct sched_statistics` gets alignment 1 in the generated Rust, so
/// every later `task_struct` field is off by 16 bytes. The module also checks the
/// layouts it uses at build time (`forwarder/layout.c`).
const RECIPE: &str = "notifier-kmod kernel recipe 1: tinyconfig + fragment, olddefconfig twice; \
bindgen --opaque-type sched_statistics --opaque-type slabobj_ext; ARCH=x86_64 LLVM=-19\n";
const BINDGEN_OPAQUE: &str = "--opaque-type sched_statistics\n--opaque-type slabobj_ext\n";
/// Written into the kernel tree once it is configured / fully built.
const CONFIGURED_STAMP: &str = ".notifier-kmod-configured";
const BUILT_STAMP: &str = ".notifier-kmod-built";
/// The module's name (its `.ko`) and the prefix of its log lines.
const MODULE: &str = "notifier_kmod";

/// Lines of the serial log that fail the run whatever the module said.
const FATAL: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "WARNING:",
    "Oops",
    "general protection fault",
    "UBSAN",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "INFO: lockdep is turned off",
    "DEBUG_LOCKS_WARN_ON",
    "INFO: task",
    "rcu_sched self-detected stall",
    "rcu: INFO",
    "Call Trace:",
    "layout mismatch",
];

/// `cargo xtask kmod`: builds (or reuses) a Linux 6.12 kernel with Rust, lockdep and
/// KASAN, builds backend-linux-kmod against it, boots it under QEMU and checks the
/// module's in-kernel tests and the conformance suite.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seconds QEMU may run before the boot counts as hung
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = crate::secs)]
    timeout: Duration,
    /// Install nothing (packages, rust-src, bindgen): fail if something is missing
    #[arg(long = "no-install", action = clap::ArgAction::SetFalse)]
    install: bool,
    /// Run the suite with this broken consumer (a twin, e.g. kvm-ignores-seq): the run
    /// then passes only if exactly the cases that must catch it fail
    #[arg(long, value_name = "TWIN", value_parser = twin_name)]
    broken: Option<String>,
    /// With --broken: boot this many times and report in how many runs the broken
    /// consumer was caught by exactly its cases (issue 14's catch rate); fails unless
    /// every run caught it
    #[arg(long, value_name = "N", default_value = "1", requires = "broken")]
    runs: u32,
    /// Skip the second boot, in which lockdep must report a subscriber lock held across
    /// a registration and taken in a callback (the invalidation map's teeth)
    #[arg(long)]
    no_lockdep_teeth: bool,
    /// Build the module and the examples against this configured and built Linux
    /// 6.12+ tree (CONFIG_RUST, CONFIG_MMU_NOTIFIER; built with LLVM=-19) instead of
    /// the cached one, clippy them, and stop: no boot (the harness's checks need this
    /// project's kernel configuration)
    #[arg(long, value_name = "DIR")]
    kdir: Option<PathBuf>,
    /// Boot a second kernel, built with KCSAN (the data-race detector) instead of KASAN
    /// (the two exclude each other): a one-off check, not part of the test command.
    /// Its tree is cached apart from the usual one
    #[arg(long)]
    kcsan: bool,
    /// Where the kernel tree, bindgen and the builds are kept
    #[arg(
        long,
        value_name = "DIR",
        env = "NOTIFIER_KMOD_CACHE",
        default_value = "/var/cache/notifier-kmod"
    )]
    cache: PathBuf,
}

/// A twin's name as the module's parameter takes it: lower-case words and dashes.
pub(crate) fn twin_name(n: &str) -> std::result::Result<String, String> {
    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        Ok(n.to_string())
    } else {
        Err("a twin's name is lower-case words joined by dashes, e.g. kvm-ignores-seq".into())
    }
}

/// Entry point, dispatched from `main.rs` with the parsed options.
pub fn main(opts: Options) -> ExitCode {
    finish("kmod", run(&opts))
}

fn run(opts: &Options) -> Result<()> {
    let t0 = Instant::now();
    let root = workspace_root();
    if opts.install {
        ensure_packages()?;
        ensure_rust_src()?;
    }
    fs::create_dir_all(&opts.cache).map_err(|e| format!("{}: {e}", opts.cache.display()))?;
    let bindgen_dir = ensure_bindgen(opts)?;
    let kdir = match &opts.kdir {
        Some(k) => user_kernel(k)?,
        None => ensure_kernel(opts, &root, &bindgen_dir)?,
    };
    step(&format!(
        "kernel ready: {} ({:.0?})",
        kdir.display(),
        t0.elapsed()
    ));
    let ko = build_module(&root, &kdir, &bindgen_dir)?;
    step(&format!(
        "module built: {} ({:.0?})",
        ko.display(),
        t0.elapsed()
    ));
    let examples = build_examples(&root, &kdir, &bindgen_dir)?;
    step(&format!(
        "examples built: {} ({:.0?})",
        examples
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed()
    ));
    // The Rust dmirror needs `hmm_range_fault` (HMM_MIRROR) and device-exclusive
    // entries (DEVICE_PRIVATE); a user's tree (`--kdir`) may have neither.
    let hmm = hmm_configured(&kdir)?;
    let dmirror = if hmm {
        let ko = build_dmirror(&root, &kdir, &bindgen_dir)?;
        step(&format!(
            "rust_dmirror built: {} ({:.0?})",
            ko.display(),
            t0.elapsed()
        ));
        Some(ko)
    } else {
        step("rust_dmirror not built: the tree lacks CONFIG_HMM_MIRROR or CONFIG_DEVICE_PRIVATE");
        None
    };
    let t_clippy = Instant::now();
    clippy_module(&root, &kdir, &bindgen_dir, &root.join("backend-linux-kmod"))?;
    if hmm {
        clippy_module(&root, &kdir, &bindgen_dir, &root.join(DMIRROR_DIR))?;
    }
    for (ko, _) in &examples {
        // The example's own directory, named like its scratch build directory.
        let name = ko.parent().and_then(|p| p.file_name()).unwrap_or_default();
        let src = root.join("backend-linux-kmod/examples").join(name);
        clippy_module(&root, &kdir, &bindgen_dir, &src)?;
    }
    step(&format!(
        "clippy clean on the module's own files ({:.0?}, {:.0?})",
        t_clippy.elapsed(),
        t0.elapsed()
    ));
    if opts.kdir.is_some() {
        step("built against the given tree; no boot with --kdir");
        return Ok(());
    }
    let out = root.join("target/kmod");
    let helper = out.join("nkhelper");
    build_helper(&root, &helper)?;
    // The real programs of the shadowing (issue 14), with a broken consumer left out:
    // that run is about the suite's verdicts.
    let (shadowed, hmm) = if opts.broken.is_none() {
        let t = Instant::now();
        let progs = build_shadowed(&root, &kdir, &out.join("mm-selftests"))?;
        step(&format!(
            "{} mm selftests and nkshadow built ({:.0?})",
            progs.len() - 1,
            t.elapsed()
        ));
        let dmirror = dmirror
            .as_deref()
            .ok_or("the project's kernel has no HMM_MIRROR")?;
        let hmm = hmm_files(&kdir, &out.join("mm-selftests"), dmirror)?;
        (progs, hmm)
    } else {
        (Vec::new(), Vec::new())
    };
    let initramfs = out.join("initramfs.cpio");
    let args = opts
        .broken
        .as_deref()
        .map_or(String::new(), |b| format!("suite_twin={b}"));
    build_initramfs(&ko, &examples, &helper, &shadowed, &hmm, &initramfs, &args)?;
    if opts.runs > 1 {
        return catch_rate(opts, &root, &kdir, &initramfs, &out);
    }
    let log = out.join("serial.log");
    let status = boot(&kdir, &initramfs, &log, opts.timeout)?;
    step(&format!("QEMU finished: {status} ({:.0?})", t0.elapsed()));
    let text = fs::read(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let text = String::from_utf8_lossy(&text);
    // Each mode's lines as the suite printed them (`cargo xtask suite-table` reads
    // them); a mode that did not run (reference mode with a broken consumer) leaves
    // no file behind.
    for (prefix, file) in [(SUITE, "suite.txt"), (SUITE_REF, "suite-reference.txt")] {
        let path = out.join(file);
        let lines = suite_lines(&text, prefix);
        if lines.is_empty() {
            let _ = fs::remove_file(&path);
            continue;
        }
        let mut lines = lines.join("\n");
        lines.push('\n');
        fs::write(&path, lines).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // The in-kernel measurement (issue 16): printed, not judged.
    let kbench = suite_lines(&text, "kbench: ");
    let kbench_path = out.join("kbench.txt");
    if kbench.is_empty() {
        let _ = fs::remove_file(&kbench_path);
    } else {
        let mut lines = kbench.join("\n");
        lines.push('\n');
        fs::write(&kbench_path, lines).map_err(|e| format!("{}: {e}", kbench_path.display()))?;
    }
    let known = fs::read_to_string(root.join(KNOWN_DIFFERENCES))
        .map_err(|e| format!("{KNOWN_DIFFERENCES}: {e}"))?;
    check_log(&text, &status, opts.broken.is_some(), &known_ids(&known))?;
    if opts.broken.is_none() {
        let table = check_shadow(&text)?;
        let path = out.join("shadow.txt");
        fs::write(&path, &table).map_err(|e| format!("{}: {e}", path.display()))?;
        step(&format!(
            "shadowing: {} programs, no mismatch; the teeth run mismatched ({})",
            SHADOWED.len(),
            path.display()
        ));
    }
    if opts.broken.is_none() {
        let table = check_hmm(&text)?;
        let path = out.join("hmm-tests.txt");
        fs::write(&path, &table).map_err(|e| format!("{}: {e}", path.display()))?;
        print!("{table}");
        step(&format!(
            "hmm-tests: the {} required tests pass on rust_dmirror ({})",
            HMM_REQUIRED.len(),
            path.display()
        ));
    }
    for (_, m) in &examples {
        if !text.contains(&format!("kmod-init: example {m} ok")) {
            return Err(format!(
                "example module {m} did not load and unload cleanly (serial log: {})",
                log.display()
            ));
        }
    }
    step(&format!(
        "{} example module(s) loaded and unloaded",
        examples.len()
    ));
    if opts.broken.is_none() && !opts.no_lockdep_teeth {
        // The lockdep annotations must bite: boots that only run a scenario lockdep must
        // report (one report per boot: lockdep turns itself off after it). 1: a
        // subscriber's mutex taken in its start callback and held across a
        // registration; 2: a mutex taken in a shared kind's `alloc` and held across
        // `get` (the core's sleeping lock).
        for (k, class, what) in [
            (1, "notifier_invalidation", "the invalidation map"),
            (2, "notifier_get", "get's sleeping mutex"),
        ] {
            let t = Instant::now();
            let args = format!("lockdep_teeth={k}");
            build_initramfs(&ko, &[], &helper, &[], &[], &initramfs, &args)?;
            let log = out.join(format!("serial-lockdep-teeth-{k}.log"));
            let status = boot(&kdir, &initramfs, &log, opts.timeout)?;
            let text = fs::read(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            check_teeth_log(&String::from_utf8_lossy(&text), &status, class)?;
            step(&format!(
                "lockdep reported the planted lock cycle through {what} ({:.0?})",
                t.elapsed()
            ));
        }
    }
    Ok(())
}

/// `--broken NAME --runs N`: N boots of the same image; in how many the broken consumer
/// was caught by exactly the cases that must catch it. Each run's log is kept
/// (`target/kmod/serial-run-K.log`).
fn catch_rate(
    opts: &Options,
    root: &Path,
    kdir: &Path,
    initramfs: &Path,
    out: &Path,
) -> Result<()> {
    let known = fs::read_to_string(root.join(KNOWN_DIFFERENCES))
        .map_err(|e| format!("{KNOWN_DIFFERENCES}: {e}"))?;
    let twin = opts.broken.as_deref().unwrap_or("?");
    let file = out.join(format!("catch-rate-{twin}.txt"));
    crate::util::catch_rate(twin, opts.runs, &file, step, |k| {
        let log = out.join(format!("serial-run-{k}.log"));
        let status = boot(kdir, initramfs, &log, opts.timeout)?;
        let text = fs::read(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let text = String::from_utf8_lossy(&text);
        Ok(check_log(&text, &status, true, &known_ids(&known)))
    })
}

/// A lockdep teeth boot: the scenario ran to its end, and lockdep reported a circular
/// dependency between the scenario's mutex and the core's lock class `class`.
fn check_teeth_log(text: &str, status: &str, class: &str) -> Result<()> {
    if status.starts_with("TIMEOUT") {
        return Err(format!("lockdep teeth boot: {status}"));
    }
    if !text.contains("lockdep-teeth: done") {
        return Err("lockdep teeth boot: the scenario did not run to its end".into());
    }
    let report = text.contains("possible circular locking dependency detected");
    let names = text.contains(class) && text.contains("nk_teeth_mutex");
    if !(report && names) {
        return Err(format!(
            "lockdep teeth boot: no circular-dependency report naming {class} and the \
             scenario's mutex: that class has no teeth"
        ));
    }
    Ok(())
}

fn step(msg: &str) {
    eprintln!("xtask kmod: {msg}");
}

/// Run `cmd` with its output in `log`; on failure print the log's tail.
fn sh_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    eprintln!("+ {cmd:?} > {}", log.display());
    let f = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    let st = cmd
        .stdout(f)
        .stderr(f2)
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{l}");
    }
    Err(format!("{cmd:?} exited with {st} (log: {})", log.display()))
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .output()
        .map(|o| o.status.success() && o.stdout.starts_with(b"ii"))
        .unwrap_or(false)
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let missing_bp: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() && missing_bp.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing {:?}",
        [&missing[..], &missing_bp[..]].concat()
    ));
    if !missing_bp.is_empty() && !Path::new(BACKPORTS_SOURCES).exists() {
        // Same archive as the machine's own sources, backports suite.
        fs::write(
            BACKPORTS_SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .map_err(|e| format!("{BACKPORTS_SOURCES}: {e}"))?;
    }
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    let apt = |extra: &[&str], pkgs: &[&str]| {
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            // With recommends, as measured: the kernel build relies on some of them.
            .args(["install", "-y", "-q"])
            .args(extra)
            .args(pkgs))
    };
    if !missing.is_empty() {
        apt(&[], &missing)?;
    }
    if !missing_bp.is_empty() {
        apt(&["-t", "bookworm-backports"], &missing_bp)?;
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let list = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if list.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn ensure_bindgen(opts: &Options) -> Result<PathBuf> {
    let dir = opts.cache.join(format!("bindgen-{BINDGEN_VERSION}"));
    if dir.join("bin/bindgen").exists() {
        return Ok(dir);
    }
    if !opts.install {
        return Err(format!(
            "{} missing (run without --no-install)",
            dir.display()
        ));
    }
    step("installing bindgen-cli (about 2 minutes)");
    sh(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bindgen-cli",
            "--version",
            BINDGEN_VERSION,
        ])
        .arg("--root")
        .arg(&dir)
        // Not the workspace's target directory: others build there.
        .env("CARGO_TARGET_DIR", opts.cache.join("bindgen-build")))?;
    Ok(dir)
}

/// FNV-1a, 64 bits: a stable hash for the cache key (no dependency needed).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The fragment's lines as (symbol, wanted value: `'y'`, `'m'` or `'n'`).
fn fragment(text: &str) -> Result<Vec<(String, char)>> {
    let mut v = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (s, val) = l
            .split_once('=')
            .ok_or_else(|| format!("kernel.config: bad line `{l}`"))?;
        let want = match val {
            "y" => 'y',
            "m" => 'm',
            "n" => 'n',
            _ => return Err(format!("kernel.config: only =y, =m and =n are used: `{l}`")),
        };
        v.push((s.to_string(), want));
    }
    Ok(v)
}

fn kernel_make(kdir: &Path, bindgen_dir: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(kdir)
        .arg("ARCH=x86_64")
        .arg(LLVM)
        .env("LIBCLANG_PATH", LIBCLANG_PATH)
        .env("PATH", path_with(&bindgen_dir.join("bin")));
    c
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut p = dir.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("PATH") {
        p.push(":");
        p.push(old);
    }
    p
}

/// A user's kernel tree for `--kdir`: configured with Rust and MMU notifiers, and
/// built (modules are linked against its `Module.symvers`).
fn user_kernel(kdir: &Path) -> Result<PathBuf> {
    let kdir = fs::canonicalize(kdir).map_err(|e| format!("{}: {e}", kdir.display()))?;
    let config = fs::read_to_string(kdir.join(".config"))
        .map_err(|e| format!("{}/.config: {e} (configure the tree first)", kdir.display()))?;
    for opt in ["CONFIG_RUST=y", "CONFIG_MMU_NOTIFIER=y"] {
        if !config.lines().any(|l| l == opt) {
            return Err(format!("{}/.config lacks {opt}", kdir.display()));
        }
    }
    if !kdir.join("Module.symvers").exists() {
        return Err(format!(
            "{}: no Module.symvers: build the tree first (make LLVM=-19)",
            kdir.display()
        ));
    }
    Ok(kdir)
}

/// The `--kcsan` variant of the fragment: every KASAN line dropped, KASAN off, KCSAN
/// on (its defaults: value-change-only reports, plain aligned writes up to a word
/// assumed atomic).
fn kcsan_fragment(text: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("KASAN"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str("# --kcsan: the data-race detector instead of KASAN.\nKASAN=n\nKCSAN=y\n");
    out
}

fn ensure_kernel(opts: &Options, root: &Path, bindgen_dir: &Path) -> Result<PathBuf> {
    let mut frag_text = fs::read_to_string(root.join("backend-linux-kmod/kernel.config"))
        .map_err(|e| format!("backend-linux-kmod/kernel.config: {e}"))?;
    if opts.kcsan {
        frag_text = kcsan_fragment(&frag_text);
    }
    let frag = fragment(&frag_text)?;
    let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]))?;
    let version = version.split('-').next().unwrap_or("").trim().to_string();
    if version.is_empty() {
        return Err(format!("{SOURCE_PACKAGE} is not installed"));
    }
    let key = fnv1a(&[RECIPE.as_bytes(), frag_text.as_bytes()].concat());
    let kdir = opts.cache.join(format!("linux-{version}-{key:016x}"));
    if kdir.join(BUILT_STAMP).exists() {
        return Ok(kdir);
    }
    let t0 = Instant::now();
    if !kdir.join("Makefile").exists() {
        step(&format!("extracting {SOURCE_TARBALL}"));
        let tmp = kdir.with_extension("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        sh(Command::new("tar")
            .arg("xf")
            .arg(SOURCE_TARBALL)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&tmp))?;
        let params = tmp.join("rust/bindgen_parameters");
        let mut p =
            fs::read_to_string(&params).map_err(|e| format!("{}: {e}", params.display()))?;
        p.push_str(BINDGEN_OPAQUE);
        fs::write(&params, p).map_err(|e| format!("{}: {e}", params.display()))?;
        fs::rename(&tmp, &kdir).map_err(|e| format!("{}: {e}", kdir.display()))?;
    }
    if !kdir.join(CONFIGURED_STAMP).exists() {
        step("configuring the kernel");
        sh(kernel_make(&kdir, bindgen_dir).arg("tinyconfig"))?;
        // Twice: some symbols (SGX's dependencies) appear only after the first pass.
        for _ in 0..2 {
            let mut c = Command::new("scripts/config");
            c.current_dir(&kdir).args(["--file", ".config"]);
            for (s, want) in &frag {
                c.arg(match want {
                    'y' => "-e",
                    'm' => "-m",
                    _ => "-d",
                })
                .arg(s);
            }
            sh(&mut c)?;
            sh(kernel_make(&kdir, bindgen_dir).arg("olddefconfig"))?;
        }
        check_config(&kdir, &frag)?;
        sh(kernel_make(&kdir, bindgen_dir).arg("rustavailable"))?;
        touch(&kdir.join(CONFIGURED_STAMP))?;
    }
    let log = kdir.join("build.log");
    step(&format!(
        "building the kernel (10 to 20 minutes on 2 cores; log: {})",
        log.display()
    ));
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    sh_logged(
        kernel_make(&kdir, bindgen_dir).arg(format!("-j{jobs}")),
        &log,
    )?;
    touch(&kdir.join(BUILT_STAMP))?;
    step(&format!("kernel built in {:.0?}", t0.elapsed()));
    Ok(kdir)
}

/// Fail loudly if `olddefconfig` dropped a symbol the fragment asks for.
fn check_config(kdir: &Path, frag: &[(String, char)]) -> Result<()> {
    let cfg = fs::read_to_string(kdir.join(".config")).map_err(|e| format!(".config: {e}"))?;
    let value = |s: &str| {
        let key = format!("CONFIG_{s}=");
        cfg.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.chars().next())
            .unwrap_or('n')
    };
    let mut bad = Vec::new();
    for (s, want) in frag {
        if value(s) != *want {
            bad.push(format!("{s}={want}"));
        }
    }
    // Selected, not set: SGX selects it.
    if value("MMU_NOTIFIER") != 'y' {
        bad.push("MMU_NOTIFIER=y".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("kernel config lost {bad:?} after olddefconfig"))
    }
}

fn touch(p: &Path) -> Result<()> {
    fs::write(p, b"").map_err(|e| format!("{}: {e}", p.display()))
}

/// Where cargo keeps the source of `name` (the version the workspace locks).
fn crate_source(meta: &serde_json::Value, name: &str) -> Result<(PathBuf, String)> {
    let pkgs = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    for p in pkgs {
        if p["name"] != name {
            continue;
        }
        let edition = p["edition"].as_str().unwrap_or("2021").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            let kinds = t["kind"].as_array().into_iter().flatten();
            if kinds.clone().any(|k| k == "lib") {
                let src = t["src_path"]
                    .as_str()
                    .ok_or("cargo metadata: no src_path")?;
                return Ok((PathBuf::from(src), edition));
            }
        }
    }
    Err(format!("cargo metadata: no library `{name}`"))
}

/// The Kbuild `make` of the module in `src` (`backend-linux-kmod` or one of its
/// examples), its files and the binding's copied into `build` (a fresh scratch
/// directory, so the clone stays clean and nothing is taken as up to date).
fn module_make(
    root: &Path,
    kdir: &Path,
    bindgen_dir: &Path,
    src: &Path,
    build: &Path,
) -> Result<Command> {
    // The dependencies are compiled from where cargo keeps them; `cargo metadata`
    // downloads them if this machine has not yet.
    let meta = output(Command::new("cargo").current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        // Only what builds here: no other platform's crates are fetched.
        "--filter-platform",
        "x86_64-unknown-linux-gnu",
    ]))?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| format!("cargo metadata: {e}"))?;
    let (core_src, core_ed) = crate_source(&meta, "notifier-core")?;
    let (cfg_if_src, cfg_if_ed) = crate_source(&meta, "cfg-if")?;
    let (ic_src, ic_ed) = crate_source(&meta, "intrusive-collections")?;
    let (av_src, av_ed) = crate_source(&meta, "arrayvec")?;
    let (suite_src, suite_ed) = crate_source(&meta, "notifier-conformance")?;

    let _ = fs::remove_dir_all(build);
    copy_sources(src, build)?;
    // The binding and the core on Linux (their own directories, what a driver copies)
    // next to the module's files.
    for dir in ["binding", "forwarder"] {
        copy_sources(&root.join("backend-linux-kmod").join(dir), &build.join(dir))?;
    }
    let mut c = kernel_make(kdir, bindgen_dir);
    c.arg(format!("M={}", build.display()))
        .arg(format!("NOTIFIER_CORE_SRC={}", core_src.display()))
        .arg(format!("NOTIFIER_CORE_EDITION={core_ed}"))
        .arg(format!("CFG_IF_SRC={}", cfg_if_src.display()))
        .arg(format!("CFG_IF_EDITION={cfg_if_ed}"))
        .arg(format!("INTRUSIVE_SRC={}", ic_src.display()))
        .arg(format!("INTRUSIVE_EDITION={ic_ed}"))
        .arg(format!("ARRAYVEC_SRC={}", av_src.display()))
        .arg(format!("ARRAYVEC_EDITION={av_ed}"))
        .arg(format!("CONFORMANCE_SRC={}", suite_src.display()))
        .arg(format!("CONFORMANCE_EDITION={suite_ed}"))
        .arg("modules");
    Ok(c)
}

/// Copy a module directory's Kbuild and sources (not its subdirectories) to `to`.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for e in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        let source = [".rs", ".c", ".h", ".S", ".kbuild"]
            .iter()
            .any(|x| n.ends_with(x));
        if e.path().is_file() && (n == "Kbuild" || source) {
            fs::copy(e.path(), to.join(&name)).map_err(|e| format!("{n}: {e}"))?;
        }
    }
    Ok(())
}

fn build_module(root: &Path, kdir: &Path, bindgen_dir: &Path) -> Result<PathBuf> {
    build_ko(
        root,
        kdir,
        bindgen_dir,
        "backend-linux-kmod",
        "module",
        MODULE,
    )
}

/// The module in `src` (relative to the workspace) built in `target/kmod/<build>`:
/// the path of its `name.ko`.
fn build_ko(
    root: &Path,
    kdir: &Path,
    bindgen_dir: &Path,
    src: &str,
    build: &str,
    name: &str,
) -> Result<PathBuf> {
    let build = root.join("target/kmod").join(build);
    sh(&mut module_make(
        root,
        kdir,
        bindgen_dir,
        &root.join(src),
        &build,
    )?)?;
    let ko = build.join(format!("{name}.ko"));
    if ko.exists() {
        Ok(ko)
    } else {
        Err(format!("{} was not built", ko.display()))
    }
}

/// The template modules of `backend-linux-kmod/examples/` (each a directory with a
/// Kbuild, built as a driver author would, with the binding copied next to it): the
/// path of each `.ko` and the module's name.
fn build_examples(root: &Path, kdir: &Path, bindgen_dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let dir = root.join("backend-linux-kmod/examples");
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Kbuild").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut kos = Vec::new();
    for name in names {
        let build = root.join("target/kmod/examples").join(&name);
        sh(&mut module_make(
            root,
            kdir,
            bindgen_dir,
            &dir.join(&name),
            &build,
        )?)?;
        let ko = fs::read_dir(&build)
            .map_err(|e| format!("{}: {e}", build.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "ko"))
            .ok_or_else(|| format!("example {name}: no .ko was built"))?;
        let module = ko
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        kos.push((ko, module));
    }
    Ok(kos)
}

/// The module's own files under the kernel's clippy (`make CLIPPY=1`), in a scratch
/// copy of their own: fails on any diagnostic located in one of them (printed), or if
/// the make fails.
fn clippy_module(root: &Path, kdir: &Path, bindgen_dir: &Path, src: &Path) -> Result<()> {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let build = root.join("target/kmod/clippy").join(&name);
    let mut c = module_make(root, kdir, bindgen_dir, src, &build)?;
    c.arg("CLIPPY=1");
    let log = root.join(format!("target/kmod/clippy-{name}.log"));
    let made = sh_logged(&mut c, &log);
    let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let ours = own_diagnostics(&text, &build);
    // Printed with the module's own paths, not the scratch copy's.
    let scratch = format!("{}/", build.display());
    let shown = format!("{}/", src.strip_prefix(root).unwrap_or(src).display());
    for d in &ours {
        eprintln!("{}", d.replace(&scratch, &shown));
    }
    made?;
    if ours.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "clippy: {} diagnostic(s) in the module's own files (log: {})",
            ours.len(),
            log.display()
        ))
    }
}

/// The diagnostics in a clippy log whose primary location (the first `-->` line)
/// is a `.rs` file in `dir`, each as printed.
fn own_diagnostics(text: &str, dir: &Path) -> Vec<String> {
    let dir = format!("{}/", dir.display());
    let mut out = Vec::new();
    let mut cur: Option<(Vec<&str>, Option<bool>)> = None;
    let flush = |cur: &mut Option<(Vec<&str>, Option<bool>)>, out: &mut Vec<String>| {
        if let Some((lines, Some(true))) = cur.take() {
            out.push(lines.join("\n"));
        }
    };
    for l in text.lines() {
        let head = ["warning:", "warning[", "error:", "error["]
            .iter()
            .any(|h| l.starts_with(h));
        if head {
            flush(&mut cur, &mut out);
            cur = Some((vec![l], None));
        } else if l.trim().is_empty() {
            // A diagnostic ends at the blank line rustc prints after it.
            flush(&mut cur, &mut out);
        } else if let Some((lines, ours)) = cur.as_mut() {
            lines.push(l);
            if ours.is_none() {
                if let Some(loc) = l.trim_start().strip_prefix("--> ") {
                    let file = loc.split(':').next().unwrap_or("");
                    *ours = Some(file.starts_with(&dir) && file.ends_with(".rs"));
                }
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// One `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let namesize = name.len() + 1;
    let mut hdr = String::new();
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        namesize as u32,
        0,
    ];
    hdr.push_str("070701");
    for f in fields {
        let _ = write!(hdr, "{f:08x}");
    }
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The init script: mount, swap on a RAM disk (so reclaim can swap), start nkhelper
/// (the user process the module watches) and wait until its pages are in, load the
/// module (its tests run in `init`), count the lockdep classes of the core's locks it
/// registered (`/proc/lockdep`), unload it (its exit path runs), power off.
const INIT: &str = "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkswap /dev/ram0 >/dev/null && swapon /dev/ram0 && echo 'kmod-init: swap on /dev/ram0'
/bin/nkhelper &
pid=$!
n=0
while [ ! -e /tmp/nkhelper.ready ] && [ $n -lt 30 ]; do sleep 1; n=$((n + 1)); done
echo 'kmod-init: insmod'
insmod /notifier_kmod.ko helper_pid=$pid SUITE_ARGS || echo 'kmod-init: insmod failed'
for c in LOCK_CLASSES; do
  echo \"kmod-init: lockdep class $c: $(grep -c \": $c\" /proc/lockdep)\"
done
echo \"kmod-init: lockdep $(grep debug_locks /proc/lockdep_stats)\"
SHADOW_RUNS
echo 'kmod-init: rmmod'
rmmod notifier_kmod || echo 'kmod-init: rmmod failed'
for m in EXAMPLES; do
  insmod /$m.ko && rmmod $m && echo \"kmod-init: example $m ok\"
done
HMM_RUNS
echo 'kmod-init: done'
reboot -f
";

/// The lockdep classes of the core's spin locks (`notifier_core::LockClass::name`,
/// given by `forwarder/forwarder.c`), of its invalidation map and of its sleeping locks
/// (`notifier_core::SleepClass::name`), and whether a run must have registered each:
/// the suite always takes an address space's lock and a subscriber's own, waits for
/// grace periods and gets shared subscribers; the export registry's are taken only
/// where the page-keyed export runs (not in Linux).
const LOCK_CLASSES: [&str; 7] = [
    "notifier_subscriptions",
    "notifier_secondary",
    "notifier_invalidation",
    "notifier_grace_period",
    "notifier_get",
    "notifier_export_page",
    "notifier_export_registry",
];
const LOCK_CLASSES_REQUIRED: usize = 5;

/// Each lock class the init script counted in `/proc/lockdep`, and how many entries.
fn lock_classes(text: &str) -> Vec<(&str, usize)> {
    text.lines()
        .filter_map(|l| {
            let rest = l
                .trim_end_matches('\r')
                .strip_prefix("kmod-init: lockdep class ")?;
            let (name, n) = rest.split_once(": ")?;
            Some((name, n.trim().parse().ok()?))
        })
        .collect()
}

/// nkhelper, static: the user process of the module's process cases.
fn build_helper(root: &Path, out: &Path) -> Result<()> {
    sh(Command::new("clang-19")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(root.join("backend-linux-kmod/nkhelper.c")))
}

/// Linux's own mm selftests the shadowing runs (issue 14), as built from the kernel
/// tree's `tools/testing/selftests/mm`: name (its `.c`), whether it links `vm_util.c`
/// and `thp_settings.c`, its arguments. These build and run in the test kernel's
/// configuration (no THP, hugetlb, KSM or userfaultfd: the tests that need them skip
/// those parts, or are not listed).
const SHADOWED: &[(&str, bool, &[&str])] = &[
    ("madv_populate", true, &[]),
    ("mlock2-tests", false, &[]),
    ("mremap_test", true, &[]),
    ("mremap_dontunmap", false, &[]),
    ("map_populate", false, &[]),
    ("map_fixed_noreplace", false, &[]),
    ("soft-dirty", true, &[]),
    ("cow", true, &[]),
    ("mkdirty", true, &[]),
    ("mseal_test", true, &[]),
    ("droppable", false, &[]),
    ("mdwe_test", false, &[]),
    ("gup_longterm", true, &[]),
    ("on-fault-limit", false, &[]),
];
/// The workload run a second time with the core recorder ignoring soft-dirty and
/// protection changes (`nkshadow -T`): the comparison must find mismatches there.
const SHADOW_TEETH: &str = "soft-dirty";
/// Seconds one shadowed program may run before `nkshadow` kills it.
const SHADOW_TIMEOUT: u32 = 240;

/// The init script's lines that run every shadowed program, then the teeth run.
fn shadow_runs(on: bool) -> String {
    if !on {
        return String::new();
    }
    let mut s = String::new();
    for (name, _, args) in SHADOWED {
        let _ = writeln!(
            s,
            "/bin/nkshadow -t {SHADOW_TIMEOUT} {name} /bin/mm/{name} {}",
            args.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "/bin/nkshadow -T -t {SHADOW_TIMEOUT} {SHADOW_TEETH}-teeth /bin/mm/{SHADOW_TEETH}"
    );
    s
}

/// `nkshadow` and the [`SHADOWED`] selftests, static, from the kernel tree's sources
/// (its UAPI headers installed into `out` first). Returns (name, binary) pairs.
fn build_shadowed(root: &Path, kdir: &Path, out: &Path) -> Result<Vec<(String, PathBuf)>> {
    fs::create_dir_all(out.join("inc")).map_err(|e| format!("{}: {e}", out.display()))?;
    let hdr = out.join("hdr");
    let stamp = out.join("hdr.stamp");
    let want = kdir.display().to_string();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        sh(Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(kdir)
            .args(["ARCH=x86_64", LLVM, "headers_install"])
            .arg(format!("INSTALL_HDR_PATH={}", hdr.display())))?;
        fs::write(&stamp, &want).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    // What the selftests' Makefile generates: no liburing here.
    fs::write(out.join("inc/local_config.h"), "").map_err(|e| format!("{}: {e}", out.display()))?;
    let mm = kdir.join("tools/testing/selftests/mm");
    let mut built = vec![("nkshadow".to_string(), out.join("nkshadow"))];
    let mut jobs = vec![Command::new("clang-19")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out.join("nkshadow"))
        .arg(root.join("backend-linux-kmod/nkshadow.c"))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("clang-19: {e}"))?];
    for (name, util, _) in SHADOWED {
        let mut cmd = Command::new("clang-19");
        // Not our code: its warnings are not ours to fix.
        cmd.args(["-static", "-O2", "-w", "-D_GNU_SOURCE", "-I"])
            .arg(out.join("inc"))
            .arg("-isystem")
            .arg(hdr.join("include"))
            .arg("-I")
            .arg(kdir.join("tools/testing/selftests"))
            .arg("-I")
            .arg(kdir.join("tools/include"))
            .arg("-o")
            .arg(out.join(name))
            .arg(mm.join(format!("{name}.c")));
        if *util {
            cmd.arg(mm.join("vm_util.c")).arg(mm.join("thp_settings.c"));
        }
        cmd.args(["-lpthread", "-lrt", "-lm"])
            .stderr(Stdio::piped());
        jobs.push(cmd.spawn().map_err(|e| format!("clang-19: {e}"))?);
        built.push((name.to_string(), out.join(name)));
    }
    let mut errs = Vec::new();
    for (job, (name, _)) in jobs.into_iter().zip(&built) {
        let o = job.wait_with_output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            errs.push(format!("{name}: {}", String::from_utf8_lossy(&o.stderr)));
        }
    }
    if errs.is_empty() {
        Ok(built)
    } else {
        Err(format!(
            "building the shadowed programs failed:\n{}",
            errs.join("\n")
        ))
    }
}

/// The Rust port of `lib/test_hmm.c`'s dmirror device (issue 15), on the binding.
const DMIRROR_DIR: &str = "backend-linux-kmod/dmirror";

/// Whether the tree in `kdir` is configured with what `rust_dmirror` links against.
fn hmm_configured(kdir: &Path) -> Result<bool> {
    let config = fs::read_to_string(kdir.join(".config"))
        .map_err(|e| format!("{}: {e}", kdir.join(".config").display()))?;
    Ok(["CONFIG_HMM_MIRROR=y", "CONFIG_DEVICE_PRIVATE=y"]
        .iter()
        .all(|want| config.lines().any(|l| l == *want)))
}

/// `rust_dmirror.ko`, built as the templates are (the binding copied next to it).
fn build_dmirror(root: &Path, kdir: &Path, bindgen_dir: &Path) -> Result<PathBuf> {
    build_ko(
        root,
        kdir,
        bindgen_dir,
        DMIRROR_DIR,
        "dmirror",
        "rust_dmirror",
    )
}

/// Linux's `hmm-tests`, static, from the kernel tree (in `out`, next to the shadowed
/// programs, whose installed headers it uses), and the files the hmm stage puts in the
/// initramfs: the test program, Linux's `test_hmm.ko` (built with the kernel,
/// `TEST_HMM=m`) and `rust_dmirror.ko`.
fn hmm_files(kdir: &Path, out: &Path, dmirror: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mm = kdir.join("tools/testing/selftests/mm");
    let bin = out.join("hmm-tests");
    let o = Command::new("clang-19")
        // Not our code: its warnings are not ours to fix.
        .args(["-static", "-O2", "-w", "-D_GNU_SOURCE", "-I"])
        .arg(out.join("inc"))
        .arg("-isystem")
        .arg(out.join("hdr/include"))
        // <lib/test_hmm_uapi.h> and <mm/gup_test.h> come from the tree's root.
        .arg("-I")
        .arg(kdir)
        .arg("-I")
        .arg(kdir.join("tools/testing/selftests"))
        .arg("-I")
        .arg(kdir.join("tools/include"))
        .arg("-o")
        .arg(&bin)
        .arg(mm.join("hmm-tests.c"))
        .arg(mm.join("vm_util.c"))
        .args(["-lpthread", "-lrt", "-lm"])
        .output()
        .map_err(|e| format!("clang-19: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "building hmm-tests failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let test_hmm = kdir.join("lib/test_hmm.ko");
    if !test_hmm.exists() {
        return Err(format!(
            "{} is missing (the kernel is built with TEST_HMM=m)",
            test_hmm.display()
        ));
    }
    Ok(vec![
        ("bin/mm/hmm-tests".into(), bin),
        ("test_hmm.ko".into(), test_hmm),
        ("rust_dmirror.ko".into(), dmirror.to_path_buf()),
    ])
}

/// The modules hmm-tests runs against, in order, each alone (they name their devices
/// alike).
const HMM_MODULES: [&str; 2] = ["test_hmm", "rust_dmirror"];
/// The init script's hmm stage: each module loaded, hmm-tests run against it (its
/// output kept in a file, then printed with the module's name before each line, so the
/// kernel's messages cannot split a verdict), the module removed; then the teeth run.
const HMM_RUNS: &str = r#"for m in test_hmm rust_dmirror; do
  if insmod /$m.ko; then
    timeout 1200 /bin/mm/hmm-tests > /tmp/hmm-$m.txt 2>&1
    echo "kmod-init: hmm-tests on $m exited $?"
    while read -r l; do echo "hmm[$m]: $l"; done < /tmp/hmm-$m.txt
    rmmod $m || echo "kmod-init: rmmod $m failed"
  else
    echo "kmod-init: insmod $m failed"
  fi
done
if insmod /rust_dmirror.ko teeth=1; then
  /bin/mm/hmm-tests -r HMM_TEETH_TEST > /tmp/hmm-teeth.txt 2>&1
  echo "kmod-init: hmm-tests teeth exited $?"
  while read -r l; do echo "hmm[rust_dmirror-teeth]: $l"; done < /tmp/hmm-teeth.txt
  rmmod rust_dmirror || echo "kmod-init: rmmod rust_dmirror failed"
fi"#;
/// The teeth of the hmm stage: `rust_dmirror teeth=1` records the sequence in
/// `invalidate` but keeps the device's entries (stale translations); this test, which
/// counts the device's faults after an `mprotect`, must then fail. (A run of every
/// test against that broken driver failed exactly this one and no other.)
const HMM_TEETH_TEST: &str = "hmm.hmm_device_private.anon_read_multiple";
/// The hmm-tests that must pass against `rust_dmirror` (device-private variant): the 13
/// issue 15 names, and the three of exclusive access, which the port has too.
const HMM_REQUIRED: [&str; 16] = [
    "open_close",
    "anon_read",
    "anon_read_prot",
    "anon_write",
    "anon_write_prot",
    "anon_write_child",
    "anon_write_child_shared",
    "anon_write_huge",
    "file_read",
    "file_write",
    "anon_read_multiple",
    "anon_teardown",
    "mixedmap",
    "exclusive",
    "exclusive_mprotect",
    "exclusive_cow",
];
/// The hmm-tests that need device memory, which `rust_dmirror` does not have: each
/// migrates to the device first (`HMM_DMIRROR_MIGRATE_TO_DEV`, `EINVAL` there).
const HMM_NOT_PORTED: [&str; 10] = [
    "migrate",
    "migrate_file_private",
    "migrate_fault",
    "migrate_release",
    "migrate_shared",
    "migrate_multiple",
    "hmm_cow_in_device",
    "migrate_mixed",
    "snapshot",
    "double_map",
];

/// One hmm-tests verdict: "pass", "fail" or "skip", and the reason printed with it (the
/// last assertion message before a failure, the skip's directive).
#[derive(Clone, Debug, PartialEq)]
struct HmmVerdict {
    verdict: &'static str,
    reason: String,
}

/// Each module's hmm-tests verdicts by test name (`hmm.hmm_device_private.anon_read`).
fn hmm_verdicts(text: &str, module: &str) -> Vec<(String, HmmVerdict)> {
    let prefix = format!("hmm[{module}]: ");
    let mut out = Vec::new();
    let mut last_msg = String::new();
    for l in text.lines() {
        let Some(at) = l.find(&prefix) else { continue };
        let l = l[at + prefix.len()..].trim_end_matches('\r');
        // An assertion's message: `# <path>/hmm-tests.c:LINE:test:Expected ...`.
        if let Some((_, msg)) = l
            .strip_prefix("# ")
            .and_then(|m| m.split_once("hmm-tests.c:"))
        {
            last_msg = msg.to_string();
            continue;
        }
        let (verdict, rest) = if let Some(r) = l.strip_prefix("not ok ") {
            ("fail", r)
        } else if let Some(r) = l.strip_prefix("ok ") {
            ("pass", r)
        } else {
            continue;
        };
        let Some((_num, rest)) = rest.split_once(' ') else {
            continue;
        };
        let (name, directive) = match rest.split_once(" #") {
            Some((n, d)) => (n.trim(), d.trim()),
            None => (rest.trim(), ""),
        };
        let (verdict, reason) = if let Some(r) = directive.strip_prefix("SKIP") {
            ("skip", r.trim().to_string())
        } else if verdict == "fail" {
            (verdict, std::mem::take(&mut last_msg))
        } else {
            (verdict, String::new())
        };
        last_msg.clear();
        out.push((name.to_string(), HmmVerdict { verdict, reason }));
    }
    out
}

/// The hmm stage's verdict: both modules ran hmm-tests, and every [`HMM_REQUIRED`]
/// test of the device-private variant passed against `rust_dmirror`. Returns the
/// side-by-side table (every test either module reported).
fn check_hmm(text: &str) -> Result<String> {
    for m in HMM_MODULES {
        if !text.contains(&format!("kmod-init: hmm-tests on {m} exited")) {
            return Err(format!("hmm-tests did not run against {m}"));
        }
    }
    let c = hmm_verdicts(text, HMM_MODULES[0]);
    let rust = hmm_verdicts(text, HMM_MODULES[1]);
    let mut names: Vec<&str> = c.iter().chain(&rust).map(|(n, _)| n.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(*n));
    let find = |v: &[(String, HmmVerdict)], n: &str| {
        v.iter().find(|(m, _)| m == n).map(|(_, v)| v.clone())
    };
    let mut table = format!(
        "{:<48} {:<9} {:<13} {}\n",
        "hmm-tests (Linux 6.12)",
        "test_hmm",
        "rust_dmirror",
        "why (rust_dmirror, when not passing)"
    );
    let mut bad = Vec::new();
    for n in &names {
        let (cv, rv) = (find(&c, n), find(&rust, n));
        let short = |v: &Option<HmmVerdict>| v.as_ref().map_or("-", |v| v.verdict);
        let not_ported = HMM_NOT_PORTED
            .iter()
            .any(|t| n.rsplit('.').next() == Some(*t));
        let why = rv
            .as_ref()
            .filter(|v| v.verdict != "pass")
            .map_or(String::new(), |v| {
                if not_ported && v.verdict == "fail" {
                    format!("needs device memory (not ported): {}", v.reason)
                } else {
                    v.reason.clone()
                }
            });
        let _ = writeln!(table, "{n:<48} {:<9} {:<13} {why}", short(&cv), short(&rv));
    }
    for t in HMM_REQUIRED {
        let name = format!("hmm.hmm_device_private.{t}");
        match find(&rust, &name) {
            Some(v) if v.verdict == "pass" => {}
            Some(v) => bad.push(format!("{t}: {} {}", v.verdict, v.reason)),
            None => bad.push(format!("{t}: not reported")),
        }
    }
    let teeth = hmm_verdicts(text, "rust_dmirror-teeth");
    let teeth = find(&teeth, HMM_TEETH_TEST).map_or("not reported", |v| v.verdict);
    let _ = writeln!(
        table,
        "teeth: {HMM_TEETH_TEST} against rust_dmirror teeth=1 (invalidate keeps stale entries): {teeth} (must fail)"
    );
    if teeth != "fail" {
        bad.push(format!(
            "teeth: {HMM_TEETH_TEST} {teeth} against the broken driver"
        ));
    }
    let count = |v: &[(String, HmmVerdict)], what: &str| {
        v.iter().filter(|(_, x)| x.verdict == what).count()
    };
    for (m, v) in [(HMM_MODULES[0], &c), (HMM_MODULES[1], &rust)] {
        let _ = writeln!(
            table,
            "{m}: {} passed, {} failed, {} skipped",
            count(v, "pass"),
            count(v, "fail"),
            count(v, "skip")
        );
    }
    if bad.is_empty() {
        Ok(table)
    } else {
        print!("{table}");
        Err(format!(
            "hmm-tests against rust_dmirror: required tests not passing: {}",
            bad.join("; ")
        ))
    }
}

/// The shadowing's verdict from the serial log: every [`SHADOWED`] program reported,
/// each with no mismatch, and the teeth run with some. Returns the table saved to
/// `target/kmod/shadow.txt`.
fn check_shadow(text: &str) -> Result<String> {
    // Found anywhere in a line: user output on the console (a program's, the init
    // script's) is flushed apart from the kernel's and may share its line.
    let prefix = format!("{MODULE}: shadow: ");
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let at = l.find(prefix.as_str())?;
            Some(l[at + prefix.len()..].trim_end_matches('\r'))
        })
        .collect();
    let field = |line: &str, key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let mut table = String::from(
        "| workload | exit | invalidations seen by Linux's notifier | by the core | mismatches |\n|---|---|---|---|---|\n",
    );
    let mut errs = Vec::new();
    for l in text.lines() {
        let l = l.trim_end_matches('\r');
        if l.contains("shadow-error:") || l.contains("nkshadow: ") {
            errs.push(l.to_string());
        }
    }
    let names = SHADOWED
        .iter()
        .map(|(n, _, _)| n.to_string())
        .chain([format!("{SHADOW_TEETH}-teeth")]);
    for name in names {
        let teeth = name.ends_with("-teeth");
        let Some(line) = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        else {
            errs.push(format!("no shadow line for {name}"));
            continue;
        };
        let mism = field(line, "mismatches");
        let seen = field(line, "linux-starts");
        let core = field(line, "core-starts");
        let exit = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("exit="))
            .unwrap_or("?");
        let _ = writeln!(
            table,
            "| {name} | {exit} | {} | {} | {} |",
            seen.map_or("?".into(), |v| v.to_string()),
            core.map_or("?".into(), |v| v.to_string()),
            mism.map_or("?".into(), |v| v.to_string()),
        );
        match (teeth, mism, seen) {
            (_, None, _) | (_, _, None) => errs.push(format!("unreadable shadow line: {line}")),
            (false, Some(0), Some(0)) => {
                errs.push(format!("{name}: Linux's notifier saw no invalidation"))
            }
            (false, Some(0), _) => {}
            (false, Some(m), _) => errs.push(format!("{name}: {m} mismatch(es): {line}")),
            (true, Some(0), _) => errs.push(format!(
                "{name}: the core recorder ignored protection changes and no mismatch was \
                 found: the comparison has no teeth"
            )),
            (true, Some(_), _) => {}
        }
    }
    print!("--- shadowing (Linux's notifier vs the core)\n{table}");
    if errs.is_empty() {
        Ok(table)
    } else {
        Err(errs.join("; "))
    }
}

/// `args` are the module's parameters beyond `helper_pid`; the `examples` are loaded
/// and unloaded after it, each checking itself in its `init`; the `shadowed` programs
/// (from [`build_shadowed`]: `nkshadow` and the selftests) run while it is loaded.
fn build_initramfs(
    ko: &Path,
    examples: &[(PathBuf, String)],
    helper: &Path,
    shadowed: &[(String, PathBuf)],
    hmm: &[(String, PathBuf)],
    out: &Path,
    args: &str,
) -> Result<()> {
    let busybox = fs::read("/bin/busybox").map_err(|e| format!("/bin/busybox: {e}"))?;
    let module = fs::read(ko).map_err(|e| format!("{}: {e}", ko.display()))?;
    let helper = fs::read(helper).map_err(|e| format!("{}: {e}", helper.display()))?;
    let mut c = Vec::new();
    let mut ino = 1;
    let mut add = |c: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        cpio_entry(c, ino, name, mode, data);
        ino += 1;
    };
    for d in ["bin", "bin/mm", "sbin", "proc", "sys", "dev", "tmp"] {
        add(&mut c, d, 0o040755, b"");
    }
    for (name, path) in shadowed {
        let data = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let at = if name == "nkshadow" {
            format!("bin/{name}")
        } else {
            format!("bin/mm/{name}")
        };
        add(&mut c, &at, 0o100755, &data);
    }
    for (at, path) in hmm {
        let data = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = if at.ends_with(".ko") {
            0o100644
        } else {
            0o100755
        };
        add(&mut c, at, mode, &data);
    }
    add(&mut c, "bin/busybox", 0o100755, &busybox);
    add(&mut c, "bin/nkhelper", 0o100755, &helper);
    for applet in [
        "sh", "mount", "mkswap", "swapon", "insmod", "rmmod", "reboot", "echo", "cat", "sleep",
        "grep", "timeout",
    ] {
        add(&mut c, &format!("bin/{applet}"), 0o120777, b"busybox");
    }
    add(
        &mut c,
        "init",
        0o100755,
        INIT.replace("SUITE_ARGS", args)
            .replace("LOCK_CLASSES", &LOCK_CLASSES.join(" "))
            .replace("SHADOW_RUNS", &shadow_runs(!shadowed.is_empty()))
            .replace(
                "HMM_RUNS",
                &if hmm.is_empty() {
                    String::new()
                } else {
                    HMM_RUNS.replace("HMM_TEETH_TEST", HMM_TEETH_TEST)
                },
            )
            .replace(
                "EXAMPLES",
                &examples
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .as_bytes(),
    );
    add(&mut c, &format!("{MODULE}.ko"), 0o100644, &module);
    for (path, m) in examples {
        let data = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        add(&mut c, &format!("{m}.ko"), 0o100644, &data);
    }
    cpio_entry(&mut c, 0, "TRAILER!!!", 0, b"");
    fs::write(out, c).map_err(|e| format!("{}: {e}", out.display()))
}

/// Boot the kernel under QEMU (software emulation: KVM cannot run a guest here) with
/// the serial console going to `log`. Returns how QEMU ended. Any WARN panics the
/// guest (`panic_on_warn=1`): Linux's notifier chain WARNs on a refusal it does not
/// allow, and the run must not go on past one.
fn boot(kdir: &Path, initramfs: &Path, log: &Path, timeout: Duration) -> Result<String> {
    let _ = fs::remove_file(log);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "512", "-smp", "2", "-nodefaults"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kdir.join("arch/x86/boot/bzImage"))
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(
            "console=ttyS0 printk.time=0 panic=-1 oops=panic panic_on_warn=1 rdinit=/init \
             brd.rd_nr=1 brd.rd_size=65536 loglevel=7",
        )
        .stdin(Stdio::null());
    eprintln!("+ {cmd:?}");
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(format!("exited with {st} after {:.1?}", t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(format!("TIMEOUT after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The prefix of the conformance suite's lines in the module's output.
const SUITE: &str = "suite: ";
/// The same for the suite in reference mode (consumers on Linux's own notifier).
const SUITE_REF: &str = "suite-ref: ";

/// The lines the conformance suite printed after `which` (`SUITE` or `SUITE_REF`),
/// without the printk prefixes.
fn suite_lines<'a>(text: &'a str, which: &str) -> Vec<&'a str> {
    let prefix = format!("{MODULE}: {which}");
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .collect()
}

/// Echo the module's lines, then judge the whole log: the smoke tests' closing line
/// and the conformance suite's must both be there, with no failure (reference mode may
/// fail the cases `known` lists: Linux's known differences); with a broken consumer
/// (`broken`), exactly the cases the module names as its catchers
/// (`suite-twin: NAME catches C-xx ...`) must fail, and reference mode does not run.
fn check_log(text: &str, status: &str, broken: bool, known: &[&str]) -> Result<()> {
    let prefix = format!("{MODULE}: ");
    let mut smoke = None;
    println!("--- {MODULE} (serial log: target/kmod/serial.log)");
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(&prefix) {
            println!("{rest}");
            if !rest.starts_with(SUITE) && !rest.starts_with(SUITE_REF) {
                smoke = parse_closing(rest).or(smoke);
            }
        } else if line.starts_with("kmod-init:")
            || line.starts_with("nkhelper:")
            || line.starts_with("nkshadow:")
        {
            println!("{line}");
        }
    }
    // The suite's KTAP in each mode, read by the one reader the suite table uses too.
    let suite = ktap(suite_lines(text, SUITE));
    let reference = ktap(suite_lines(text, SUITE_REF));
    let fatal: Vec<&str> = text
        .lines()
        .filter(|l| FATAL.iter().any(|f| l.contains(f)))
        .take(20)
        .collect();
    let mut errs = Vec::new();
    if status.starts_with("TIMEOUT") {
        errs.push(status.to_string());
    }
    if !fatal.is_empty() {
        errs.push(format!(
            "kernel reports in the serial log:\n  {}",
            fatal.join("\n  ")
        ));
    }
    if !text.contains("kmod-init: done") {
        errs.push("the init script did not finish".into());
    }
    // Each kind of core lock under its own lockdep class (issue 14): the classes the
    // run must have used are registered under their names.
    let classes = lock_classes(text);
    for name in &LOCK_CLASSES[..LOCK_CLASSES_REQUIRED] {
        if !classes.iter().any(|(c, n)| c == name && *n > 0) {
            errs.push(format!(
                "lockdep has no class `{name}`: the core's locks did not get their own classes"
            ));
        }
    }
    // Reference mode may fail the cases where Linux is known to differ from the
    // contract (listed with the reason in KNOWN_DIFFERENCES); nothing else.
    let known_failed = reference
        .failed()
        .into_iter()
        .filter(|id| known.contains(id))
        .count();
    let closing = |k: &Ktap| k.closing.and_then(parse_closing);
    let mut runs = vec![("smoke tests", smoke, 0, None)];
    runs.push(("conformance suite", closing(&suite), 0, Some(&suite)));
    if !broken {
        runs.push((
            "conformance suite in reference mode",
            closing(&reference),
            known_failed,
            Some(&reference),
        ));
    }
    for (what, closing, allowed, k) in runs {
        if let Some(k) = k {
            if !k.version {
                errs.push(format!("the {what} printed no `KTAP version 1` line"));
            }
            if k.closing.is_some() && !k.complete() {
                errs.push(format!(
                    "the {what} planned {:?} cases and reported {}",
                    k.plan,
                    k.cases.len()
                ));
            }
            if !k.problems.is_empty() {
                errs.push(format!("the {what}: {}", k.problems.join("; ")));
            }
        }
        match closing {
            None => errs.push(format!(
                "no `N passed, N failed` closing line from the {what}"
            )),
            Some((_, failed)) if failed > allowed && !(broken && what == "conformance suite") => {
                errs.push(format!("{failed} case(s) of the {what} failed"))
            }
            Some((0, _)) => errs.push(format!("the {what} passed no case")),
            Some(_) => {}
        }
    }
    let failed_lines = |k: &Ktap, skip_known: bool| -> Vec<String> {
        k.cases
            .iter()
            .filter(|(id, _, _)| !(skip_known && known.contains(id)))
            .filter_map(|(id, name, res)| match res {
                Res::Failed(why) => Some(format!("{id} {name}: {why}")),
                _ => None,
            })
            .collect()
    };
    let mut failed = failed_lines(&suite, false);
    if broken {
        let prefix = format!("{MODULE}: suite-twin: ");
        let want: Option<Vec<&str>> = text.lines().find_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix(prefix.as_str())?;
            twin_catchers(rest)
        });
        let got = suite.failed();
        match want {
            None => {
                errs.push("the module did not name the cases the broken consumer must fail".into())
            }
            Some(w) if w != got => errs.push(format!(
                "the broken consumer must fail exactly {w:?}, failed: {got:?}"
            )),
            Some(w) => println!("--- {}", twin_verdict(&w)),
        }
    } else {
        failed.extend(
            failed_lines(&reference, true)
                .into_iter()
                .map(|l| format!("reference: {l}")),
        );
        if !failed.is_empty() {
            errs.push(format!("suite cases failed:\n  {}", failed.join("\n  ")));
        }
    }
    // The two modes side by side: every case whose result differs, by name.
    for (id, name, res) in &reference.cases {
        let Some((_, _, core_res)) = suite.cases.iter().find(|(c, _, _)| c == id) else {
            continue;
        };
        if core_res.short() != res.short() {
            let note = if matches!(res, Res::Failed(_)) && known.contains(id) {
                format!(" (a known difference of Linux: {KNOWN_DIFFERENCES})")
            } else {
                String::new()
            };
            println!(
                "modes differ: {id} {name}: core {}, reference {}{note}",
                core_res.short(),
                res.short()
            );
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        let _ = std::io::stdout().flush();
        Err(errs.join("; "))
    }
}

/// `N passed, N failed` (optionally `, N skipped`) alone on a line, as (passed, failed).
fn parse_closing(line: &str) -> Option<(usize, usize)> {
    closing_line(line).map(|(p, f, _)| (p, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_line() {
        assert_eq!(parse_closing("7 passed, 0 failed"), Some((7, 0)));
        assert_eq!(parse_closing("7 passed, 2 failed, 1 skipped"), Some((7, 2)));
        assert_eq!(parse_closing("ok 7 passed"), None);
    }

    /// A log as the module prints it: smoke lines, then the suite's KTAP in each mode.
    fn log(core: &[&str], reference: &[&str]) -> String {
        let mut s = String::from("notifier_kmod: ok a\n");
        for l in core {
            s += &format!("notifier_kmod: suite: {l}\n");
        }
        for l in reference {
            s += &format!("notifier_kmod: suite-ref: {l}\n");
        }
        s + "notifier_kmod: 1 passed, 0 failed\n\
               kmod-init: lockdep class notifier_subscriptions: 1\n\
               kmod-init: lockdep class notifier_secondary: 1\n\
               kmod-init: lockdep class notifier_invalidation: 1\n\
               kmod-init: lockdep class notifier_grace_period: 1\n\
               kmod-init: lockdep class notifier_get: 1\n\
               kmod-init: lockdep class notifier_export_page: 0\n\
               kmod-init: done\n"
    }

    const GOOD: [&str; 6] = [
        "KTAP version 1",
        "# notifier conformance suite on linux",
        "1..2",
        "ok 1 C-01 register",
        "ok 2 C-08 non_blocking # SKIP no OOM reaper",
        "1 passed, 0 failed, 1 skipped",
    ];
    const GOOD_REF: [&str; 4] = [
        "KTAP version 1",
        "1..1",
        "ok 1 C-01 register",
        "1 passed, 0 failed",
    ];

    #[test]
    fn lockdep_teeth_verdicts() {
        let caught = "lockdep-teeth: a subscriber lock held\n\
                      WARNING: possible circular locking dependency detected\n\
                      (nk_teeth_mutex){+.+.}-{4:4}\n(notifier_invalidation){+.+.}-{0:0}\n\
                      lockdep-teeth: done\n";
        let map = "notifier_invalidation";
        assert_eq!(check_teeth_log(caught, "exited", map), Ok(()));
        assert!(check_teeth_log(caught, "TIMEOUT after 1s", map).is_err());
        assert!(check_teeth_log(caught, "exited", "notifier_get").is_err());
        let silent = "lockdep-teeth: a subscriber lock held\nlockdep-teeth: done\n";
        assert!(check_teeth_log(silent, "exited", map).is_err());
        let other = caught.replace("notifier_invalidation", "some_other_map");
        assert!(check_teeth_log(&other, "exited", map).is_err());
        let unfinished = caught.replace("lockdep-teeth: done\n", "");
        assert!(check_teeth_log(&unfinished, "exited", map).is_err());
    }

    #[test]
    fn log_verdicts() {
        let good = log(&GOOD, &GOOD_REF);
        assert_eq!(check_log(&good, "exited", false, &[]), Ok(()));
        let lockdep = format!("WARNING: possible circular locking dependency detected\n{good}");
        assert!(check_log(&lockdep, "exited", false, &[]).is_err());
        // One lockdep class for every lock (or none at all) fails the run.
        let one_class = good.replace(
            "kmod-init: lockdep class notifier_secondary: 1",
            "kmod-init: lockdep class notifier_secondary: 0",
        );
        assert_ne!(one_class, good);
        assert!(check_log(&one_class, "exited", false, &[]).is_err());
        assert!(check_log(&good, "TIMEOUT after 1s", false, &[]).is_err());
        let failed = "notifier_kmod: 1 passed, 1 failed\nkmod-init: done\n";
        assert!(check_log(failed, "exited", false, &[]).is_err());
        assert!(check_log("kmod-init: done\n", "exited", false, &[]).is_err());
        // The smoke tests alone are not enough; a failed suite case fails the run.
        let no_suite = "notifier_kmod: 1 passed, 0 failed\nkmod-init: done\n";
        assert!(check_log(no_suite, "exited", false, &[]).is_err());
        let suite_failed = good.replace(
            "ok 1 C-01 register\nnotifier_kmod: suite: ok 2",
            "not ok 1 C-01 register # x\nnotifier_kmod: suite: ok 2",
        );
        assert_ne!(suite_failed, good);
        assert!(check_log(&suite_failed, "exited", false, &[]).is_err());
        // A case line missing (the plan says 2), or a line without the KTAP header.
        let short = good.replace(
            "notifier_kmod: suite: ok 2 C-08 non_blocking # SKIP no OOM reaper\n",
            "",
        );
        assert_ne!(short, good);
        assert!(check_log(&short, "exited", false, &[]).is_err());
        let no_header = good.replacen("notifier_kmod: suite: KTAP version 1\n", "", 1);
        assert!(check_log(&no_header, "exited", false, &[]).is_err());
        // With a broken consumer: exactly its catchers fail, no more, no fewer.
        let caught = "notifier_kmod: suite-twin: kvm-ignores-seq catches C-09\n\
                      notifier_kmod: suite: KTAP version 1\n\
                      notifier_kmod: suite: 1..2\n\
                      notifier_kmod: suite: ok 1 C-01 register\n\
                      notifier_kmod: suite: not ok 2 C-09 no_stale_translation # stale\n\
                      notifier_kmod: suite: 1 passed, 1 failed\n\
                      notifier_kmod: 1 passed, 0 failed\n\
                      kmod-init: lockdep class notifier_subscriptions: 2\n\
                      kmod-init: lockdep class notifier_secondary: 1\n\
                      kmod-init: lockdep class notifier_invalidation: 1\n\
               kmod-init: lockdep class notifier_grace_period: 1\n\
               kmod-init: lockdep class notifier_get: 1\n\
                      kmod-init: done\n";
        assert_eq!(check_log(caught, "exited", true, &[]), Ok(()));
        assert!(check_log(caught, "exited", false, &[]).is_err());
        let missed = caught.replace("not ok 2 C-09 no_stale_translation # stale", "ok 2 C-09 x");
        assert!(check_log(&missed, "exited", true, &[]).is_err());
        let ref_failed = log(
            &GOOD,
            &[
                "KTAP version 1",
                "1..1",
                "not ok 1 C-01 register # x",
                "0 passed, 1 failed",
            ],
        );
        assert!(check_log(&ref_failed, "exited", false, &[]).is_err());
        // A failure listed as a known difference of Linux is reported, not fatal; an
        // unlisted one still is.
        let ref_c01 = log(
            &GOOD,
            &[
                "KTAP version 1",
                "1..1",
                "not ok 1 C-01 register # x",
                "1 passed, 1 failed",
            ],
        );
        assert_eq!(check_log(&ref_c01, "exited", false, &["C-01"]), Ok(()));
        assert!(check_log(&ref_c01, "exited", false, &["C-02"]).is_err());
        assert_eq!(known_ids("# c\nC-02 why\n\nC-04 x\n"), ["C-02", "C-04"]);
        let no_ref = log(&GOOD, &[]);
        assert!(check_log(&no_ref, "exited", false, &[]).is_err());
        assert_eq!(suite_lines(&good, SUITE), GOOD);
        assert_eq!(suite_lines(&good, SUITE_REF), GOOD_REF);
    }

    #[test]
    fn own_diagnostics_keeps_only_the_module_files() {
        let log = "  CLIPPY [M] /m/notifier_core.o
warning: casting to the same type is unnecessary (`usize` -> `usize`)
   --> /src/notifier-core/src/lib.rs:3:4
    |
  3 |     x as usize
    |

warning: duplicated attribute
   --> <crate attribute>:1:1
    |
note: first defined here
   --> /m/lib.rs:1:1

warning: 2 warnings emitted

  CLIPPY [M] /m/kmod_main.o
warning: unsafe function's docs are missing a `# Safety` section
   --> /m/harness.rs:223:1
    |
223 | unsafe extern \"C\" fn run_task(arg: *mut c_void) {
    | ^^^
    = help: for further information visit https://example

error[E0308]: mismatched types
  --> /m/smoke.rs:9:9
   |
";
        let d = own_diagnostics(log, Path::new("/m"));
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(d[0].starts_with("warning: unsafe function's docs"));
        assert!(d[0].contains("= help: for further"));
        assert!(d[1].starts_with("error[E0308]"));
        assert!(own_diagnostics(log, Path::new("/n")).is_empty());
    }

    fn shadow_log(mismatches: u64, teeth_mismatches: u64) -> String {
        let mut t = String::new();
        for (name, _, _) in SHADOWED {
            let _ = writeln!(
                t,
                "{MODULE}: shadow: {name} teeth=0 exit=0 invalidations=9 linux-starts=9 \
                 core-starts=9 ends=9/9 releases=1/1 unforwardable=0 mismatches={mismatches} pid=1"
            );
        }
        let _ = writeln!(
            t,
            "{MODULE}: shadow: {SHADOW_TEETH}-teeth teeth=1 exit=0 invalidations=9 \
             linux-starts=9 core-starts=7 mismatches={teeth_mismatches} pid=2"
        );
        t
    }

    #[test]
    fn shadow_verdicts() {
        let table = check_shadow(&shadow_log(0, 2)).expect("all agree, teeth bite");
        assert!(table.contains("| cow | 0 | 9 | 9 | 0 |"), "{table}");
        assert!(
            check_shadow(&shadow_log(1, 2)).is_err(),
            "a mismatch passed"
        );
        // User output sharing the kernel's line (seen in a run).
        let glued = shadow_log(0, 2).replace(
            &format!("{MODULE}: shadow: cow"),
            &format!("# Totals: pass:86 fail:0{MODULE}: shadow: cow"),
        );
        check_shadow(&glued).expect("a line glued to user output");
        assert!(
            check_shadow(&shadow_log(0, 0)).is_err(),
            "toothless teeth passed"
        );
        let missing = shadow_log(0, 2).replace("shadow: cow ", "shadow: other ");
        assert!(check_shadow(&missing).is_err(), "a missing program passed");
        let err = format!("{}shadow-error: attach to pid 3: ESRCH\n", shadow_log(0, 2));
        assert!(check_shadow(&err).is_err(), "an attach error passed");
        let killed = format!(
            "{}nkshadow: cow: still running after 240 s: killed\n",
            shadow_log(0, 2)
        );
        assert!(check_shadow(&killed).is_err(), "a hung program passed");
    }

    #[test]
    fn cpio_is_aligned() {
        let mut v = Vec::new();
        cpio_entry(&mut v, 1, "init", 0o100755, b"abc");
        assert_eq!(v.len() % 4, 0);
        assert!(v.starts_with(b"070701"));
    }

    #[test]
    fn hmm_verdicts_parse() {
        let log = "hmm[rust_dmirror]: #  RUN           hmm.hmm_device_private.open_close ...\n\
            hmm[rust_dmirror]: ok 1 hmm.hmm_device_private.open_close\n\
            hmm[rust_dmirror]: # /k/tools/testing/selftests/mm/hmm-tests.c:1001:migrate:Expected ret (-22) == 0 (0)\n\
            [   5.0] kernel says hmm[rust_dmirror]: not ok 2 hmm.hmm_device_private.migrate\n\
            hmm[test_hmm]: ok 2 hmm.hmm_device_private.migrate\n\
            hmm[rust_dmirror]: ok 3 hmm.hmm_device_coherent.open_close # SKIP DEVICE_COHERENT not available\n";
        let v = hmm_verdicts(log, "rust_dmirror");
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].0, "hmm.hmm_device_private.open_close");
        assert_eq!(v[0].1.verdict, "pass");
        assert_eq!(v[1].1.verdict, "fail");
        assert_eq!(v[1].1.reason, "1001:migrate:Expected ret (-22) == 0 (0)");
        assert_eq!(v[2].1.verdict, "skip");
        assert_eq!(v[2].1.reason, "DEVICE_COHERENT not available");
        assert_eq!(hmm_verdicts(log, "test_hmm").len(), 1);
        // Both ran, but the required tests are missing from rust_dmirror's run.
        let ran = format!(
            "{log}kmod-init: hmm-tests on test_hmm exited 0\nkmod-init: hmm-tests on rust_dmirror exited 1\n"
        );
        let e = check_hmm(&ran).unwrap_err();
        assert!(e.contains("anon_read: not reported"), "{e}");
        assert!(!e.contains("open_close"), "{e}");
        let mut all = ran.clone();
        for (i, t) in HMM_REQUIRED.iter().enumerate() {
            all.push_str(&format!(
                "hmm[rust_dmirror]: ok {} hmm.hmm_device_private.{t}\n",
                10 + i
            ));
        }
        // The teeth run must fail its test.
        let e = check_hmm(&all).unwrap_err();
        assert!(e.contains("teeth"), "{e}");
        let passed = format!("{all}hmm[rust_dmirror-teeth]: ok 1 {HMM_TEETH_TEST}\n");
        assert!(check_hmm(&passed).unwrap_err().contains("teeth"));
        all.push_str(&format!(
            "hmm[rust_dmirror-teeth]: not ok 1 {HMM_TEETH_TEST}\n"
        ));
        let table = check_hmm(&all).unwrap();
        assert!(
            table.contains("teeth=1 (invalidate keeps stale entries): fail"),
            "{table}"
        );
        assert!(
            table.contains("rust_dmirror: 17 passed, 1 failed, 1 skipped"),
            "{table}"
        );
        assert!(check_hmm(log).is_err());
    }

    #[test]
    fn fragment_parses() {
        let f = fragment("# c\nRUST=y\nMODVERSIONS=n\nTEST_HMM=m\n").unwrap();
        assert_eq!(
            f,
            vec![
                ("RUST".into(), 'y'),
                ("MODVERSIONS".into(), 'n'),
                ("TEST_HMM".into(), 'm')
            ]
        );
        assert!(fragment("X=2\n").is_err());
    }
}
