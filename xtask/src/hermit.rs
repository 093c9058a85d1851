//! `cargo xtask hermit` (issue #6): the core inside a real Hermit unikernel.
//!
//! From nothing, in order, each step skipped when its result is already there:
//!
//! 1. Prerequisites: the nightly toolchain's `rust-src` and `llvm-tools`, the
//!    `x86_64-unknown-none` target, and QEMU (from bookworm-backports, as `kmod` does).
//! 2. The kernel source: `hermit-kernel` 0.11.0 from crates.io, fetched by cargo through
//!    a throwaway manifest (the `hermit` crate's own build script downloads from a site
//!    this machine cannot reach).
//! 3. A copy in the cache (`/var/cache/notifier-hermit` or `$NOTIFIER_HERMIT_CACHE`),
//!    keyed by the version and a hash of `backend-hermit/kernel/mmu-notifier.patch` and
//!    of [`RECIPE`], with the two build fixes and the project's notifier patch applied.
//! 4. The kernel built for `x86_64-unknown-none` with the features Hermit's `mmap`
//!    syscalls need.
//! 5. The post-processing the upstream build tool does: every global symbol but the
//!    kernel's interface (`sys_*`, `_start`, `__bss_start`, `mcount`, `runtime_entry`)
//!    is prefixed so that it cannot clash with the application's, and every archive
//!    member is marked with the Hermit ELF OS ABI (0xff). Result: `libhermit.a`.
//! 6. The multiboot loader (`backend-hermit/loader`, a flat binary) and the test image
//!    (`backend-hermit/image`, linked against that `libhermit.a`), built with nightly
//!    into target directories in the cache.
//! 7. QEMU (software emulation, 2 CPUs, `-kernel loader -initrd image`) with a
//!    timeout: a guest page fault hangs it. The image runs its smoke checks, then the
//!    conformance suite (`notifier-conformance` on `HermitHarness`; `--smoke-only`
//!    leaves it out). The run passes only if the smoke checks and the suite each
//!    printed their `N passed, N failed` line with no failure, no check said `FAILED`
//!    and the suite's KTAP reported every case it planned with no `not ok`,
//!    nothing fatal was logged, and QEMU exited with Hermit's success code (3).
//! 8. The suite's lines, from its header to its closing line exactly as the suite
//!    printed them, are saved to `target/hermit/suite.txt` (also when the run fails).

use crate::suite_table::{closing_line, ktap, twin_catchers, twin_verdict};
use crate::util::{finish, output, sh, workspace_root, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The kernel crate and version the patch is written against.
const KERNEL_CRATE: &str = "hermit-kernel";
const KERNEL_VERSION: &str = "0.11.0";
/// The features the backend needs (`mmap` provides `sys_mmap`/`sys_munmap`/`sys_mprotect`).
const KERNEL_FEATURES: &str = "acpi pci smp fsgsbase mmap";
/// How the kernel is built, hashed into the cache key with the patch: change it when the
/// recipe changes.
const RECIPE: &str = "notifier-hermit kernel recipe 2: fixes image-base + unsafe(naked); \
nightly --release x86_64-unknown-none -Zmutable-noalias=no -Ztls-model=initial-exec; prefix non-interface symbols; OSABI 0xff\n";
/// The project's kernel patch, relative to the workspace root.
const PATCH: &str = "backend-hermit/kernel/mmu-notifier.patch";
/// Files whose `#[naked]` attributes the current nightly wants written `#[unsafe(naked)]`.
const NAKED_FILES: &[&str] = &[
    "src/syscalls/table.rs",
    "src/arch/x86_64/kernel/switch.rs",
    "src/arch/x86_64/kernel/start.rs",
    "src/arch/x86_64/kernel/syscall.rs",
    "src/arch/x86_64/kernel/scheduler.rs",
];
/// Symbols the kernel exports to the application; every other one is prefixed.
const KEEP_PREFIXES: &[&str] = &["sys_"];
const KEEP_EXACT: &[&str] = &["_start", "__bss_start", "mcount", "runtime_entry"];
const SYMBOL_PREFIX: &str = "_hermit_kernel_";
/// The symbol the project's patch adds; the post-processed archive must export it.
const HOOK_SYMBOL: &str = "sys_mmu_notifier_register";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
/// Where the suite's lines are saved, relative to the workspace root.
const SUITE_OUT: &str = "target/hermit/suite.txt";
/// The environment variable that names the image's broken consumer at build time.
const TWIN_ENV: &str = "NOTIFIER_SUITE_TWIN";
/// What the image prints before the suite when it runs a broken consumer.
const TWIN_LINE: &str = "suite-twin: ";
/// The suite's first line (`notifier_conformance::run` prints KTAP).
const SUITE_HEADER: &str = "KTAP version 1";
/// QEMU's default timeout: the suite takes a few minutes under software emulation.
const DEFAULT_TIMEOUT: &str = "900";

/// `cargo xtask hermit`: fetches hermit-kernel, applies backend-hermit's notifier patch,
/// builds and post-processes it into libhermit.a, builds the multiboot loader and the
/// test image, boots it on 2 CPUs under QEMU and checks its output: the smoke checks,
/// then the conformance suite (its lines are saved to target/hermit/suite.txt).
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Install nothing (packages, toolchains): fail if something is missing
    #[arg(long = "no-install", action = clap::ArgAction::SetFalse)]
    install: bool,
    /// Stop after libhermit.a (and check the archive's exports)
    #[arg(long)]
    kernel_only: bool,
    /// Build the image without the suite (the smoke checks only)
    #[arg(long, overrides_with = "suite")]
    smoke_only: bool,
    /// Run the suite after the smoke checks (the default; still accepted)
    #[arg(long = "suite", id = "suite", overrides_with = "smoke_only")]
    _suite: bool,
    /// Run the suite with this broken consumer (a twin, e.g. kvm-ignores-seq): the run
    /// then passes only if exactly the cases that must catch it fail
    #[arg(long, value_name = "TWIN", value_parser = crate::kmod::twin_name, conflicts_with = "smoke_only")]
    broken: Option<String>,
    /// With --broken: boot this many times and report in how many runs the broken
    /// consumer was caught by exactly its cases; fails unless every run caught it
    #[arg(long, value_name = "N", default_value = "1", requires = "broken")]
    runs: u32,
    /// Seconds QEMU may run (the suite takes a few minutes under software emulation)
    #[arg(long, value_name = "SECS", default_value = DEFAULT_TIMEOUT, value_parser = crate::secs)]
    timeout: Duration,
    /// Where the kernel sources and builds are kept
    #[arg(
        long,
        value_name = "DIR",
        env = "NOTIFIER_HERMIT_CACHE",
        default_value = "/var/cache/notifier-hermit"
    )]
    cache: PathBuf,
}

/// Entry point, dispatched from `main.rs` with the parsed options.
pub fn main(opts: Options) -> ExitCode {
    finish("hermit", run(&opts))
}

fn run(opts: &Options) -> Result<()> {
    let root = workspace_root();
    let t0 = Instant::now();
    if opts.install {
        step("prerequisites");
        install()?;
    }
    fs::create_dir_all(&opts.cache).map_err(|e| format!("{}: {e}", opts.cache.display()))?;

    let patch = fs::read(root.join(PATCH)).map_err(|e| format!("{PATCH}: {e}"))?;
    let key = format!(
        "{KERNEL_CRATE}-{KERNEL_VERSION}-{:016x}",
        fnv1a(&[RECIPE.as_bytes(), &patch].concat())
    );
    let tree = opts.cache.join(&key);
    let lib = tree.join("libhermit.a");
    if lib.exists() {
        step(&format!("kernel: cached {}", lib.display()));
    } else {
        step(&format!("kernel source: {KERNEL_CRATE} {KERNEL_VERSION}"));
        let src = fetch_kernel(&opts.cache)?;
        step(&format!("patching into {}", tree.display()));
        prepare_tree(&src, &tree, &root.join(PATCH))?;
        step("building the kernel (about 70 s from clean)");
        let raw = build_kernel(&tree)?;
        step("post-processing into libhermit.a");
        postprocess(&raw, &lib)?;
    }
    check_exports(&lib)?;
    prune_stale(&opts.cache, &key);
    println!(
        "hermit: kernel ready: {} ({:.0} s)",
        lib.display(),
        t0.elapsed().as_secs_f64()
    );
    if opts.kernel_only {
        return Ok(());
    }
    step("building the loader and the test image");
    let loader = build_loader(&root, &opts.cache)?;
    let image = build_image(
        &root,
        &opts.cache,
        &tree,
        !opts.smoke_only,
        opts.broken.as_deref(),
    )?;
    step(&format!(
        "booting under QEMU (2 CPUs, software emulation, timeout {} s)",
        opts.timeout.as_secs()
    ));
    if opts.runs > 1 {
        let twin = opts.broken.as_deref().unwrap_or("?");
        let file = opts.cache.join(format!("catch-rate-{twin}.txt"));
        return crate::util::catch_rate(twin, opts.runs, &file, step, |k| {
            let log = opts.cache.join(format!("serial-run-{k}.log"));
            let status = run_qemu(&loader, &image, &log, opts.timeout, Some(root.as_path()))?;
            let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            Ok(check_log(&text, status, true, true))
        });
    }
    let log = opts.cache.join("serial.log");
    let status = run_qemu(
        &loader,
        &image,
        &log,
        opts.timeout,
        (!opts.smoke_only).then_some(root.as_path()),
    )?;
    let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    if !opts.smoke_only {
        save_suite(&root, &text)?;
    }
    check_log(&text, status, !opts.smoke_only, opts.broken.is_some())?;
    println!("hermit: done in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The nightly cargo, run in `backend-hermit/` with its own target directory in the
/// cache (outside the clone, so CI reuses it).
/// `twin` is the broken consumer the image's suite runs with (read by the image with
/// `option_env!`, so cargo rebuilds it when that changes).
fn nightly_build(
    root: &Path,
    target_dir: &Path,
    args: &[&str],
    rustflags: &str,
    twin: Option<&str>,
) -> Result<()> {
    let mut cmd = Command::new("cargo");
    match twin {
        Some(t) => cmd.env(TWIN_ENV, t),
        None => cmd.env_remove(TWIN_ENV),
    };
    sh(cmd
        .current_dir(root.join("backend-hermit"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", rustflags)
        .arg("+nightly")
        .arg("build")
        .args(["--release", "--locked"])
        .args(args))
}

fn build_loader(root: &Path, cache: &Path) -> Result<PathBuf> {
    let target = cache.join("target-loader");
    nightly_build(
        root,
        &target,
        &[
            "-p",
            "notifier-hermit-loader",
            "--target",
            "x86_64-unknown-none",
        ],
        "-C relocation-model=static",
        None,
    )?;
    let elf = target.join("x86_64-unknown-none/release/notifier-hermit-loader");
    let bin = cache.join("loader.bin");
    // QEMU's multiboot loads a flat binary through the header's address fields.
    sh(Command::new(llvm_tool("llvm-objcopy")?)
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin))?;
    Ok(bin)
}

fn build_image(
    root: &Path,
    cache: &Path,
    kernel: &Path,
    suite: bool,
    twin: Option<&str>,
) -> Result<PathBuf> {
    let target = cache.join("target-image");
    let mut args = vec![
        "-p",
        "notifier-hermit-image",
        "--target",
        "x86_64-unknown-hermit",
        "-Zbuild-std=core,compiler_builtins",
        "-Zbuild-std-features=compiler-builtins-mem",
    ];
    if suite {
        args.extend(["--features", "suite"]);
    }
    nightly_build(
        root,
        &target,
        &args,
        &format!("-C link-arg=-L{} -C link-arg=-lhermit", kernel.display()),
        twin,
    )?;
    Ok(target.join("x86_64-unknown-hermit/release/notifier-hermit-image"))
}

/// Boots `image` with `loader`; the serial console goes to `log`. Returns QEMU's exit
/// code (Hermit's exit port: 3 for success), or an error on timeout.
fn run_qemu(
    loader: &Path,
    image: &Path,
    log: &Path,
    timeout: Duration,
    save_on_timeout: Option<&Path>,
) -> Result<i32> {
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    // QEMU's own messages go elsewhere: the log holds only what the guest printed.
    let qemu_err = log.with_extension("qemu-stderr");
    let err = fs::File::create(&qemu_err).map_err(|e| format!("{}: {e}", qemu_err.display()))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-display",
            "none",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "Skylake-Client",
            "-smp",
            "2",
            "-m",
            "512M",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
        ])
        .arg(loader)
        .arg("-initrd")
        .arg(image)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(st.code().unwrap_or(-1));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let text = fs::read_to_string(log).unwrap_or_default();
            print_image_lines(&text);
            if let Some(root) = save_on_timeout {
                save_suite(root, &text)?;
            }
            return Err(format!(
                "QEMU timed out after {} s (a guest page fault hangs it; log: {})",
                timeout.as_secs(),
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The lines the image printed, from its first line on (the kernel's own log lines
/// start with `[core]`); without that line, the end of the log, to show what hung.
fn print_image_lines(text: &str) {
    const MARK: &str = "notifier-hermit image:";
    let lines: Vec<&str> = text.lines().collect();
    let from = match lines.iter().position(|l| l.starts_with(MARK)) {
        Some(i) => i,
        None => lines.len().saturating_sub(40),
    };
    for l in &lines[from..] {
        let kernel_info = l.starts_with('[') && l.contains("INFO");
        if !kernel_info && !l.contains("TCG doesn't support") {
            println!("  {l}");
        }
    }
}

/// Lines that fail the run whatever the image said.
const FATAL: &[&str] = &["Page fault", "PANIC", "panicked", "ERROR"];

/// Judge the image's log. With a broken consumer (`broken`), the smoke checks must
/// still pass and exactly the cases the image names as its catchers
/// (`suite-twin: NAME catches C-xx ...`) must fail.
fn check_log(text: &str, status: i32, suite: bool, broken: bool) -> Result<()> {
    print_image_lines(text);
    if let Some(l) = text.lines().find(|l| FATAL.iter().any(|f| l.contains(f))) {
        return Err(format!("the guest reported: {l}"));
    }
    if let Some(l) = text.lines().find(|l| l.contains("FAILED")) {
        return Err(format!("a check failed: {l}"));
    }
    // The smoke checks and the conformance suite each close with a line.
    let (mut passed, mut failed, mut closings) = (0, 0, 0);
    for (p, f) in text.lines().filter_map(parse_closing) {
        passed += p;
        // With a broken consumer the suite's (second) closing line counts failures.
        if !(broken && closings == 1) {
            failed += f;
        }
        closings += 1;
    }
    let want = if suite { 2 } else { 1 };
    if closings < want {
        return Err(format!(
            "{closings} of {want} `N passed, N failed` lines from the image{}",
            if suite && !text.contains(SUITE_HEADER) {
                " (the suite did not start)"
            } else if suite {
                " (the suite did not reach its closing line)"
            } else {
                ""
            }
        ));
    }
    if failed != 0 {
        return Err(format!("{failed} failed in the Hermit image"));
    }
    if suite {
        // The suite's KTAP, read by the one reader the suite table uses too.
        let k = ktap(suite_lines(text));
        if !k.complete() {
            return Err(format!(
                "the suite planned {:?} cases and reported {}",
                k.plan,
                k.cases.len()
            ));
        }
        if !k.problems.is_empty() {
            return Err(format!("the suite's output: {}", k.problems.join("; ")));
        }
        if broken {
            let want: Option<Vec<&str>> = text.lines().find_map(|l| {
                let rest = l.split_once(TWIN_LINE)?.1;
                twin_catchers(rest)
            });
            let got = k.failed();
            match want {
                None => return Err("the image did not name the broken consumer's catchers".into()),
                Some(w) if w != got => {
                    return Err(format!(
                        "the broken consumer must fail exactly {w:?}, failed: {got:?}"
                    ))
                }
                Some(w) => println!("hermit: {}", twin_verdict(&w)),
            }
            if passed == 0 {
                return Err("the image ran no check".into());
            }
            // The image exits with a failure then: no status to check.
            return Ok(());
        }
        if !k.failed().is_empty() {
            return Err(format!("suite cases failed: {:?}", k.failed()));
        }
    }
    if passed == 0 {
        return Err("the image ran no check".into());
    }
    // Hermit writes 1 to the exit port on success: QEMU exits (1 << 1) | 1.
    if status != 3 {
        return Err(format!(
            "QEMU exited with {status}, not Hermit's success (3)"
        ));
    }
    Ok(())
}

/// Where a kernel log record (`[core][ESC[..mLEVEL ESC[0m] …`) starts in `line`.
fn kernel_log_at(line: &str) -> Option<usize> {
    line.match_indices('[').map(|(i, _)| i).find(|&i| {
        let rest = &line[i + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with("][\u{1b}[")
    })
}

/// The suite's lines as it printed them: from its header to its closing line (or the
/// end of the log if it did not get there), leaving out the kernel's own log records,
/// which may come in between (or start inside a suite line: what precedes them is the
/// suite's).
fn suite_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut started = false;
    for l in text.lines() {
        let kernel = kernel_log_at(l);
        let own = &l[..kernel.unwrap_or(l.len())];
        if !started {
            if !own.starts_with(SUITE_HEADER) {
                continue;
            }
            started = true;
        }
        if kernel.is_some() && own.is_empty() {
            continue;
        }
        out.push(own);
        if kernel.is_none() && parse_closing(own).is_some() {
            break;
        }
    }
    out
}

fn save_suite(root: &Path, text: &str) -> Result<()> {
    let lines = suite_lines(text);
    let path = root.join(SUITE_OUT);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut body = lines.join("\n");
    if !lines.is_empty() {
        body.push('\n');
    }
    fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "hermit: {} suite lines saved to {}",
        lines.len(),
        path.display()
    );
    Ok(())
}

/// `N passed, N failed` (optionally `, N skipped`) → (passed, failed).
fn parse_closing(line: &str) -> Option<(usize, usize)> {
    closing_line(line).map(|(p, f, _)| (p, f))
}

/// Removes kernel trees built from an older patch or recipe (about 200 MB each).
fn prune_stale(cache: &Path, key: &str) {
    let prefix = format!("{KERNEL_CRATE}-{KERNEL_VERSION}-");
    let Ok(dir) = fs::read_dir(cache) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name != key {
            println!("hermit: removing stale {name}");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn step(what: &str) {
    println!("=== hermit: {what}");
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn install() -> Result<()> {
    sh(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "llvm-tools",
        "--toolchain",
        "nightly",
    ]))?;
    sh(Command::new("rustup").args([
        "target",
        "add",
        "x86_64-unknown-none",
        "--toolchain",
        "nightly",
    ]))?;
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    if !Path::new(BACKPORTS_SOURCES).exists() {
        // The same mirror as the machine's own sources, with the backports suite.
        let main = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
            .map_err(|e| format!("reading the Debian sources: {e}"))?;
        let uri = main
            .lines()
            .find_map(|l| l.strip_prefix("URIs:"))
            .map(str::trim)
            .ok_or("no URIs: line in debian.sources")?;
        fs::write(
            BACKPORTS_SOURCES,
            format!(
                "Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )
        .map_err(|e| format!("{BACKPORTS_SOURCES}: {e}"))?;
    }
    sh(Command::new("apt-get").arg("update"))?;
    sh(Command::new("apt-get").args([
        "install",
        "-y",
        "-t",
        "bookworm-backports",
        "qemu-system-x86",
    ]))
}

/// Fetches the kernel crate with cargo and returns where cargo unpacked it.
fn fetch_kernel(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("fetch");
    fs::create_dir_all(dir.join("src")).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch-hermit-kernel\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [dependencies]\n{KERNEL_CRATE} = {{ version = \"={KERNEL_VERSION}\", default-features = false }}\n\
             [workspace]\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::write(dir.join("src/lib.rs"), "").map_err(|e| e.to_string())?;
    sh(Command::new("cargo")
        .args(["+nightly", "fetch", "--manifest-path"])
        .arg(dir.join("Cargo.toml")))?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let registry = home.join("registry/src");
    let want = format!("{KERNEL_CRATE}-{KERNEL_VERSION}");
    for index in fs::read_dir(&registry).map_err(|e| format!("{}: {e}", registry.display()))? {
        let p = index.map_err(|e| e.to_string())?.path().join(&want);
        if p.join("Cargo.toml").exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "cargo fetched {want} but it is not under {}",
        registry.display()
    ))
}

/// Copies the pristine source to `tree` and applies the build fixes and the project's
/// patch. A half-prepared tree is removed first.
fn prepare_tree(src: &Path, tree: &Path, patch: &Path) -> Result<()> {
    let stamp = tree.join(".notifier-hermit-patched");
    if stamp.exists() {
        return Ok(());
    }
    if tree.exists() {
        fs::remove_dir_all(tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    }
    sh(Command::new("cp").arg("-r").arg(src).arg(tree))?;
    // The crate pins an older nightly; the installed one builds it with the fixes below.
    let _ = fs::remove_file(tree.join("rust-toolchain.toml"));
    // Fix 1: LLD 22 refuses the SMP boot code's old layout without an explicit image base.
    edit(&tree.join("build.rs"), |s| {
        s.replacen(
            ".arg(\"--section-start=.text=0x8000\")",
            ".arg(\"--section-start=.text=0x8000\")\n\t\t.arg(\"--image-base=0x8000\")",
            1,
        )
    })?;
    // Fix 2: naked functions are `#[unsafe(naked)]` on current nightlies.
    for f in NAKED_FILES {
        edit(&tree.join(f), |s| s.replace("#[naked]", "#[unsafe(naked)]"))?;
    }
    sh(Command::new("patch")
        .args(["-p1", "--forward", "--batch", "-d"])
        .arg(tree)
        .arg("-i")
        .arg(patch))?;
    fs::write(&stamp, RECIPE).map_err(|e| format!("{}: {e}", stamp.display()))
}

fn edit(path: &Path, f: impl Fn(&str) -> String) -> Result<()> {
    let s = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = f(&s);
    if t == s {
        return Err(format!("{}: build fix did not apply", path.display()));
    }
    fs::write(path, t).map_err(|e| format!("{}: {e}", path.display()))
}

fn build_kernel(tree: &Path) -> Result<PathBuf> {
    let target = tree.join("target");
    let log = tree.join("build.log");
    let logf = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let status = Command::new("cargo")
        .current_dir(tree)
        .env("CARGO_TARGET_DIR", &target)
        // The kernel's thread-locals (errno) are linked into a static executable:
        // without this, they go through `__tls_get_addr`, which nothing defines.
        .env("RUSTFLAGS", "-Zmutable-noalias=no -Ztls-model=initial-exec")
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "x86_64-unknown-none",
            "--no-default-features",
            "--features",
            KERNEL_FEATURES,
        ])
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        return Err(format!("kernel build failed (log: {})", log.display()));
    }
    Ok(target.join("x86_64-unknown-none/release/libhermit.a"))
}

fn llvm_tool(name: &str) -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let p = Path::new(sysroot.trim())
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin")
        .join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} missing (rustup component llvm-tools)",
            p.display()
        ))
    }
}

fn keep(sym: &str) -> bool {
    KEEP_EXACT.contains(&sym) || KEEP_PREFIXES.iter().any(|p| sym.starts_with(p))
}

/// Global symbols defined in `lib`.
fn defined_globals(lib: &Path) -> Result<Vec<String>> {
    let nm = llvm_tool("llvm-nm")?;
    let out = output(
        Command::new(nm)
            .args(["--defined-only", "--extern-only", "--format=just-symbols"])
            .arg(lib),
    )?;
    let mut syms: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.ends_with(':'))
        .map(String::from)
        .collect();
    syms.sort();
    syms.dedup();
    Ok(syms)
}

fn postprocess(raw: &Path, lib: &Path) -> Result<()> {
    let renames: String = defined_globals(raw)?
        .into_iter()
        .filter(|s| !keep(s))
        .map(|s| format!("{s} {SYMBOL_PREFIX}{s}\n"))
        .collect();
    let map = lib.with_extension("redefine");
    fs::write(&map, renames).map_err(|e| format!("{}: {e}", map.display()))?;
    let tmp = lib.with_extension("tmp.a");
    sh(Command::new(llvm_tool("llvm-objcopy")?)
        .arg(format!("--redefine-syms={}", map.display()))
        .arg(raw)
        .arg(&tmp))?;
    let mut bytes = fs::read(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let marked = set_osabi(&mut bytes)?;
    if marked == 0 {
        return Err("no ELF member in the kernel archive".into());
    }
    fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    println!("hermit: {marked} archive members marked with OS ABI 0xff");
    Ok(())
}

/// Sets `EI_OSABI` of every ELF member of a `!<arch>` archive to 0xff (standalone, as
/// Hermit's linker expects) in place; returns how many members it marked.
fn set_osabi(ar: &mut [u8]) -> Result<usize> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !ar.starts_with(MAGIC) {
        return Err("not an ar archive".into());
    }
    let mut at = MAGIC.len();
    let mut marked = 0;
    while at + 60 <= ar.len() {
        let size: usize = std::str::from_utf8(&ar[at + 48..at + 58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("bad archive member header at {at}"))?;
        let data = at + 60;
        if data + size > ar.len() {
            return Err(format!("truncated archive member at {at}"));
        }
        if size > 7 && ar[data..data + 4] == *b"\x7fELF" {
            ar[data + 7] = 0xff;
            marked += 1;
        }
        at = data + size + (size & 1);
    }
    Ok(marked)
}

/// The archive exports the patch's hook and nothing outside the kernel's interface.
fn check_exports(lib: &Path) -> Result<()> {
    let syms = defined_globals(lib)?;
    if !syms.iter().any(|s| s == HOOK_SYMBOL) {
        return Err(format!("{} does not export {HOOK_SYMBOL}", lib.display()));
    }
    let stray: Vec<&String> = syms
        .iter()
        .filter(|s| !keep(s) && !s.starts_with(SYMBOL_PREFIX))
        .take(5)
        .collect();
    if !stray.is_empty() {
        return Err(format!("{} exports {stray:?}", lib.display()));
    }
    println!(
        "hermit: libhermit.a exports {} interface symbols, {HOOK_SYMBOL} among them",
        syms.iter().filter(|s| keep(s)).count()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A serial log as the image prints it: smoke checks, then the suite's KTAP with a
    /// kernel log record in between.
    const LOG: &str = "notifier-hermit image: start\n\
                       attach ... ok\n\
                       1 passed, 0 failed\n\
                       suite config: rounds 1, many_list 1, many_intervals 1\n\
                       KTAP version 1\n\
                       # notifier conformance suite on hermit\n\
                       1..2\n\
                       ok 1 C-01 register\n\
                       [1][\u{1b}[32mINFO \u{1b}[0m] a kernel record\n\
                       ok 2 C-08 non_blocking # SKIP no unmap that cannot sleep\n\
                       1 passed, 0 failed, 1 skipped\n\
                       hook starts with interrupts off: 0\n";

    #[test]
    fn log_verdicts() {
        assert_eq!(check_log(LOG, 3, true, false), Ok(()));
        assert!(check_log(LOG, 1, true, false).is_err());
        assert_eq!(
            suite_lines(LOG),
            [
                "KTAP version 1",
                "# notifier conformance suite on hermit",
                "1..2",
                "ok 1 C-01 register",
                "ok 2 C-08 non_blocking # SKIP no unmap that cannot sleep",
                "1 passed, 0 failed, 1 skipped",
            ]
        );
        // A failed case, even if the closing line were to say otherwise.
        let failed = LOG.replace("ok 1 C-01 register", "not ok 1 C-01 register # x");
        assert!(check_log(&failed, 3, true, false).is_err());
        // A case missing from the plan: the run did not finish.
        let short = LOG.replace("ok 1 C-01 register\n", "");
        assert!(check_log(&short, 3, true, false).is_err());
        // The smoke checks alone pass only with `--smoke-only`.
        let smoke = &LOG[..LOG.find("suite config").unwrap()];
        assert_eq!(check_log(smoke, 3, false, false), Ok(()));
        assert!(check_log(smoke, 3, true, false).is_err());
    }

    #[test]
    fn broken_consumer_verdicts() {
        // Caught by exactly its catchers: passes, whatever the exit status.
        let caught = LOG
            .replace(
                "suite config",
                "suite-twin: kvm-ignores-seq catches C-01\nsuite config",
            )
            .replace("ok 1 C-01 register", "not ok 1 C-01 register # stale")
            .replace(
                "1 passed, 0 failed, 1 skipped",
                "0 passed, 1 failed, 1 skipped",
            );
        assert_eq!(check_log(&caught, 1, true, true), Ok(()));
        // Without a broken consumer the same log fails.
        assert!(check_log(&caught, 1, true, false).is_err());
        // Not caught, or caught by another case, or not named: fails.
        let missed = caught.replace("not ok 1 C-01 register # stale", "ok 1 C-01 register");
        assert!(check_log(&missed, 1, true, true).is_err());
        let other = caught.replace("catches C-01", "catches C-09");
        assert!(check_log(&other, 1, true, true).is_err());
        let unnamed = caught.replace("suite-twin: kvm-ignores-seq catches C-01\n", "");
        assert!(check_log(&unnamed, 1, true, true).is_err());
        // The smoke checks must still pass.
        let smoke_failed = caught.replacen("1 passed, 0 failed", "0 passed, 1 failed", 1);
        assert!(check_log(&smoke_failed, 1, true, true).is_err());
    }
}
