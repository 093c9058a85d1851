//! The Hermit test image: boots on the patched kernel, attaches the notifier core to
//! the kernel's page-table hook and checks, with real system calls, that a subscriber
//! sees every change of a page it could have cached:
//!
//! * `hook_munmap`: `sys_munmap` of a touched page is bracketed by start/end over a
//!   range covering it, event `Unmap`, and the page is still mapped (readable, same
//!   contents) during `start` (C-06, C-10);
//! * `hook_mprotect`: `sys_mprotect` of a mapped page is bracketed (event
//!   `ProtectionVma`);
//! * `hook_pairing`: every end matched a start with the same range (C-07), none is
//!   left open;
//! * `hook_other_core`: the same for a munmap done by a task on the other core;
//! * `release`: detaching releases the subscriber exactly once and stops the calls
//!   (C-04, C-03).
//!
//! Output: one line per check (`name ... ok` or `FAILED: why`), then
//! `N passed, N failed`; then the conformance suite (`notifier-conformance`) on
//! [`harness::HermitHarness`], with its own per-case lines and closing line. The exit
//! code is 0 only if everything passed.

#![no_std]
#![no_main]

use core::fmt::{self, Write};
use core::pin::pin;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use backend_hermit::{HermitPlatform as P, KernelMm};
use notifier_core::{Event, Range, Subscriber, SubscriberOps, WouldBlock};

#[cfg(feature = "suite")]
mod harness;

extern "C" {
    fn sys_write(fd: i32, buf: *const u8, len: usize) -> isize;
    fn sys_exit(status: i32) -> !;
    fn sys_mmap(size: usize, prot: u32, ret: &mut *mut u8) -> i32;
    fn sys_munmap(ptr: *mut u8, size: usize) -> i32;
    fn sys_mprotect(ptr: *mut u8, size: usize, prot: u32) -> i32;
    fn sys_spawn2(
        func: unsafe extern "C" fn(usize),
        arg: usize,
        prio: u8,
        stack_size: usize,
        selector: isize,
    ) -> i32;
    fn sys_join(id: i32) -> i32;
}

const PROT_READ: u32 = 1;
const PROT_WRITE: u32 = 2;
const PAGE: usize = 4096;

struct Console;
impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: `s` is a valid buffer of `s.len()` bytes; fd 1 is the console.
        unsafe { sys_write(1, s.as_ptr(), s.len()) };
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => { let _ = writeln!(Console, $($t)*); };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("PANIC: {info}");
    // SAFETY: ends the image; always valid.
    unsafe { sys_exit(101) }
}

/// What the probe subscriber saw about one watched page.
struct Probe {
    /// The watched page (0: none).
    watch: AtomicUsize,
    /// The byte the page held when it was watched.
    expect: AtomicUsize,
    starts: AtomicUsize,
    ends: AtomicUsize,
    /// Starts over the watched page whose event was not the expected one, or during
    /// which the page did not hold its contents.
    bad: AtomicUsize,
    /// The event expected for the watched page.
    want_unmap: AtomicBool,
    /// Starts covering the watched page minus ends covering it.
    open: AtomicUsize,
    covered: AtomicUsize,
    releases: AtomicUsize,
}

impl Probe {
    const fn new() -> Self {
        Probe {
            watch: AtomicUsize::new(0),
            expect: AtomicUsize::new(0),
            starts: AtomicUsize::new(0),
            ends: AtomicUsize::new(0),
            bad: AtomicUsize::new(0),
            want_unmap: AtomicBool::new(true),
            open: AtomicUsize::new(0),
            covered: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
        }
    }

    fn watch(&self, page: usize, unmap: bool) {
        self.covered.store(0, Ordering::SeqCst);
        self.want_unmap.store(unmap, Ordering::SeqCst);
        // SAFETY: `page` is mapped and was written by the caller.
        let b = unsafe { core::ptr::read_volatile(page as *const u8) };
        self.expect.store(usize::from(b), Ordering::SeqCst);
        self.watch.store(page, Ordering::SeqCst);
    }

    fn covers(&self, r: &Range) -> bool {
        let w = self.watch.load(Ordering::SeqCst);
        w != 0 && r.start <= w && w + PAGE <= r.end
    }
}

impl SubscriberOps for Probe {
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        if self.covers(r) {
            let w = self.watch.load(Ordering::SeqCst);
            let want = if self.want_unmap.load(Ordering::SeqCst) {
                Event::Unmap
            } else {
                Event::ProtectionVma
            };
            // C-10: during start the page is still mapped with its contents. A page
            // already gone would fault here (and the run would time out).
            // SAFETY: the page is mapped until the kernel changes the entries, which
            // it does only after this start returns.
            let b = unsafe { core::ptr::read_volatile(w as *const u8) };
            if r.event != want || usize::from(b) != self.expect.load(Ordering::SeqCst) {
                self.bad.fetch_add(1, Ordering::SeqCst);
            }
            self.open.fetch_add(1, Ordering::SeqCst);
            self.covered.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn invalidate_range_end(&self, r: &Range) {
        self.ends.fetch_add(1, Ordering::SeqCst);
        if self.covers(r) && self.open.fetch_sub(1, Ordering::SeqCst) == 0 {
            // An end without its start (C-02).
            self.bad.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}

static MM: spin::Once<KernelMm> = spin::Once::new();

/// The suite's configuration in the image. The concurrent cases run 50 times the
/// default rounds: under QEMU's software emulation the whole suite still takes seconds
/// (about 12 s on an idle machine, a few minutes under heavy load), and more rounds
/// find rarer interleavings (at 1 000 rounds a harness race showed up that 200 did
/// not). The scale case keeps the default sizes.
#[cfg(feature = "suite")]
const SUITE_CONFIG: notifier_conformance::Config = notifier_conformance::Config {
    twin: None,
    only: None,
    rounds: 10_000,
    many_list: 2_000,
    many_intervals: 20_000,
};

/// Words separated by spaces.
#[cfg(feature = "suite")]
struct Words(&'static [&'static str]);

#[cfg(feature = "suite")]
impl fmt::Display for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(w)?;
        }
        Ok(())
    }
}

static PROBE_OUT: AtomicUsize = AtomicUsize::new(0);

struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn check(&mut self, name: &str, r: Result<(), &'static str>) {
        match r {
            Ok(()) => {
                self.passed += 1;
                say!("{name} ... ok");
            }
            Err(why) => {
                self.failed += 1;
                say!("{name} ... FAILED: {why}");
            }
        }
    }
}

fn map_page(byte: u8) -> Result<*mut u8, &'static str> {
    let mut p = core::ptr::null_mut();
    // SAFETY: `p` is a valid out-pointer.
    if unsafe { sys_mmap(PAGE, PROT_READ | PROT_WRITE, &mut p) } != 0 || p.is_null() {
        return Err("sys_mmap failed");
    }
    // SAFETY: the page was just mapped read-write.
    unsafe { core::ptr::write_volatile(p, byte) };
    Ok(p)
}

fn unmap_checked(probe: &Probe, p: *mut u8) -> Result<(), &'static str> {
    probe.watch(p as usize, true);
    // SAFETY: `p` is a page this image mapped and no longer uses.
    if unsafe { sys_munmap(p, PAGE) } != 0 {
        return Err("sys_munmap failed");
    }
    probe.watch.store(0, Ordering::SeqCst);
    match probe.covered.load(Ordering::SeqCst) {
        0 => Err("no start covered the unmapped page"),
        _ if probe.bad.load(Ordering::SeqCst) != 0 => {
            Err("wrong event, or page not intact during start")
        }
        _ if probe.open.load(Ordering::SeqCst) != 0 => Err("a start without its end"),
        _ => Ok(()),
    }
}

unsafe extern "C" fn other_core(arg: usize) {
    // SAFETY: `arg` is the `&Probe` that `main` keeps alive until it joined this task.
    let probe = unsafe { &*(arg as *const Probe) };
    let r = map_page(0x5a).and_then(|p| unmap_checked(probe, p));
    PROBE_OUT.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
}

#[no_mangle]
extern "C" fn runtime_entry(_argc: i32, _argv: *const *const u8, _env: *const *const u8) -> ! {
    let cpus = P::processors();
    say!("notifier-hermit image: {cpus} processors");
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    let mm = MM.call_once(KernelMm::new);
    if let Err(e) = mm.attach() {
        say!("attach ... FAILED: {e:?} (kernel without the notifier patch?)");
        say!("0 passed, 1 failed");
        // SAFETY: ends the image.
        unsafe { sys_exit(1) }
    }
    let probe = pin!(Subscriber::<Probe, P>::new(Probe::new()));
    t.check(
        "register",
        probe
            .as_ref()
            .register(mm.address_space())
            .map_err(|_| "register refused"),
    );

    t.check(
        "hook_munmap",
        map_page(0xa5).and_then(|p| unmap_checked(&probe, p)),
    );

    t.check(
        "hook_mprotect",
        map_page(0x3c).and_then(|p| {
            probe.watch(p as usize, false);
            // SAFETY: `p` is a page this image mapped.
            let r = unsafe { sys_mprotect(p, PAGE, PROT_READ) };
            probe.watch.store(0, Ordering::SeqCst);
            let out = if r != 0 {
                Err("sys_mprotect failed")
            } else if probe.covered.load(Ordering::SeqCst) == 0 {
                Err("no start covered the protected page")
            } else if probe.bad.load(Ordering::SeqCst) != 0 {
                Err("wrong event, or page not intact during start")
            } else {
                Ok(())
            };
            // SAFETY: as above; the page is not used afterwards.
            unsafe { sys_munmap(p, PAGE) };
            out
        }),
    );

    t.check(
        "hook_pairing",
        if probe.starts.load(Ordering::SeqCst) == probe.ends.load(Ordering::SeqCst)
            && probe.starts.load(Ordering::SeqCst) > 0
        {
            Ok(())
        } else {
            Err("no start seen, or starts and ends differ")
        },
    );

    t.check("hook_other_core", {
        if cpus < 2 {
            Err("only one processor started")
        } else {
            let probe_ref: &Probe = &probe;
            // SAFETY: `other_core` only reads the probe, which outlives the join below.
            let id =
                unsafe { sys_spawn2(other_core, probe_ref as *const Probe as usize, 8, 0x8000, 1) };
            // SAFETY: `id` is the task just spawned.
            if id < 0 || unsafe { sys_join(id) } != 0 {
                Err("spawning or joining the task failed")
            } else if PROBE_OUT.load(Ordering::SeqCst) != 1 {
                Err("the other core's munmap was not bracketed")
            } else {
                Ok(())
            }
        }
    });

    let before = probe.starts.load(Ordering::SeqCst);
    mm.detach();
    let after_release = map_page(0x11).map(|p| {
        // SAFETY: a page this image mapped.
        unsafe { sys_munmap(p, PAGE) };
    });
    t.check(
        "release",
        if after_release.is_err() {
            Err("sys_mmap failed")
        } else if probe.releases.load(Ordering::SeqCst) != 1 {
            Err("release not called exactly once")
        } else if probe.starts.load(Ordering::SeqCst) != before {
            Err("a start after release")
        } else {
            Ok(())
        },
    );
    let _ = probe.as_ref().unregister();

    say!("{} passed, {} failed", t.passed, t.failed);

    // The conformance suite, on the same kernel hook.
    #[cfg_attr(not(feature = "suite"), allow(unused_mut))]
    let mut failed = t.failed;
    #[cfg(feature = "suite")]
    match harness::HermitHarness::new() {
        Some(h) => {
            let mut cfg = SUITE_CONFIG;
            // `cargo xtask hermit --broken NAME` builds the image with a broken consumer.
            if let Some(name) = option_env!("NOTIFIER_SUITE_TWIN") {
                match notifier_conformance::Twin::from_name(name) {
                    Some(t) => {
                        cfg.twin = Some(t);
                        say!("suite-twin: {} catches {}", name, Words(t.catches_on(&h)));
                    }
                    None => {
                        say!("suite-twin: FAILED: no broken consumer named {}", name);
                    }
                }
            }
            say!(
                "suite config: rounds {}, many_list {}, many_intervals {}",
                cfg.rounds,
                cfg.many_list,
                cfg.many_intervals
            );
            let sum = notifier_conformance::run(&h, &cfg, &mut Console);
            failed += sum.failed;
        }
        None => {
            say!("conformance suite: FAILED: could not reserve the harness window");
            say!("0 passed, 1 failed");
            failed += 1;
        }
    }
    say!(
        "hook starts with interrupts off: {}",
        backend_hermit::non_blockable_starts()
    );
    // SAFETY: ends the image.
    unsafe { sys_exit(if failed == 0 { 0 } else { 1 }) }
}
