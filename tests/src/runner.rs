//! The suite against your own secondary MMU.
//!
//! A secondary-MMU author (a device TLB, a shadow page table, a GPU page table, an
//! importer of remote mappings) implements [`SecondaryMmu`] for their consumer and calls
//! [`run_consumer`]: the consumer-facing cases of the contract (`docs/CONTRACT.md`)
//! then drive a real primary MMU through a [`Harness`] — unmaps, protection changes,
//! migrations, reclaim, forks and their copy-on-write breaks, teardown — while the
//! consumer subscribes, faults translations in, uses them and unsubscribes, and every
//! use is checked by the two oracles of C-09 ([`Uses`]). The output is the suite's KTAP.
//!
//! The runner needs a harness; the simulator's (`backend_sim::SimHarness`) is the test
//! bed for consumers: `SimHarness::deterministic(seed)` interleaves the tasks with a
//! seeded scheduler at every `yield_now` and lock (replayable: a failing seed fails
//! again), and `SimHarness::threads()` runs them on real threads. Both have both oracles.
//!
//! The cases it runs, each as it applies to one consumer (a case that does not apply to
//! the consumer's [`Kind`] or to the backend is printed `# SKIP` with the reason, and
//! counted as skipped, never as passed):
//!
//! | case | what is checked on your consumer |
//! |------|----------------------------------|
//! | C-01 | once subscribed, it hears every invalidation: a page faulted in and then unmapped is never used afterwards; a fault installs a usable, current translation; subscribing on a torn-down space fails |
//! | C-02 | subscribed and unsubscribed over and over against a churning primary MMU: its own bookkeeping ([`SecondaryMmu::check_idle`]) is balanced after each unsubscribe (no half pair), and its uses stay clean |
//! | C-03 | no callback reaches it after `unsubscribe` returned ([`SecondaryMmu::callbacks`]; skipped if it does not count them) |
//! | C-04 | at teardown it drops everything it holds (`release`): it holds nothing, uses nothing freed, faults nothing in; `unsubscribe` after teardown, or racing it, succeeds |
//! | C-06 | after each primary operation the backend has (munmap, mprotect, migrate, reclaim, soft-dirty, copy-on-write break) its next read and write uses are current |
//! | C-07 | nested invalidations (direct calls, where the backend allows them) and overlapping ones from two tasks leave its bookkeeping balanced, and faults go on afterwards |
//! | C-09 | its fault and use paths on two tasks race unmaps, migrations, protection changes and forks: no use reaches a freed frame, none uses a translation that is not the primary entry at that moment (where the backend has that oracle) |
//! | C-10 | the pages it translated, unmapped or migrated: never reached after the primary freed them |
//! | C-12 | interval consumers: the sequence protocol under concurrent unmaps and migrations (list consumers: not applicable) |
//! | C-14 | two-pass interval consumers: every translation of a changed page is gone when the invalidation returns (others: not applicable) |
//!
//! Not run: the cases about the core's own machinery rather than a consumer (C-05
//! shared subscribers, C-08 non-blockable refusals, C-11 overlap routing, C-13 deferred
//! insertion, C-15 ageing, C-16 typed errors, C-17 scale, C-18 to C-23 the export
//! registry and the core's internals): the suite checks those with its own consumers.
//!
//! A broken consumer is caught through the oracles: see the repository's
//! `examples/consumer-check` crate, a toy device TLB and toy HMM-style mirrors (one- and
//! two-pass) that pass, and their broken variants with the cases that catch them (no
//! sequence check: C-09; zapping at `end`: C-09 through the translation oracle alone;
//! no `read_retry`: C-12; a lazy second pass: C-14).
//!
//! A consumer that livelocks (a fault that waits forever for an invalidation that never
//! ends in its own bookkeeping) is not reported as a KTAP line: on the deterministic
//! simulator the step budget turns it into a panic of the run, on real threads the run
//! does not end.

use core::fmt::Write;
use core::pin::{pin, Pin};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use arrayvec::ArrayVec;
use notifier_core::sync::SpinLock;
use notifier_core::{Error, Event, Range};

use crate::cases::{
    addr, direct, need, oracles, page, unmap_and_migrate, CaseResult, FirstError, Space, BASE,
    FORKS, PAGES,
};
use crate::consumers::{FaultError, StaleUses};
use crate::harness::{Cap, Frame, Harness, Mm};
use crate::{fail, Config, Fail, Msg, Outcome, Summary};

macro_rules! ensure {
    ($c:expr, $($a:tt)*) => {
        if !$c {
            return Err(fail(format_args!($($a)*)));
        }
    };
}

/// How a consumer subscribes, which decides the cases that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A list subscriber ([`notifier_core::Subscriber`]): called for every invalidation
    /// of the address space, with its own sequence count (KVM's `mmu_invalidate_seq`).
    List,
    /// An interval subscriber ([`notifier_core::IntervalSubscriber`]) following
    /// `read_begin` / `read_retry` (C-12).
    Interval,
    /// A two-pass interval subscriber (C-12 and C-14).
    TwoPass,
}

/// The record of a consumer's uses of its translations: every use goes through
/// [`use_translation`](Self::use_translation), which asks both oracles of C-09.
///
/// The runner creates one per consumer instance and reads the counts after the case.
pub struct Uses<'h, H: Harness> {
    h: &'h H,
    mm: Mm,
    uses: AtomicU32,
    freed: AtomicU32,
    first_freed: AtomicUsize,
    stale: StaleUses<H::P>,
    unreported: AtomicU32,
}

impl<'h, H: Harness> Uses<'h, H> {
    fn new(h: &'h H, mm: Mm) -> Self {
        Uses {
            h,
            mm,
            uses: AtomicU32::new(0),
            freed: AtomicU32::new(0),
            first_freed: AtomicUsize::new(usize::MAX),
            stale: StaleUses::default(),
            unreported: AtomicU32::new(0),
        }
    }

    /// `c.access(self, …)`, checking that a hit was reported: a consumer that returns a
    /// frame without [`use_translation`](Self::use_translation) would hide its uses
    /// from the oracles.
    fn access<C: SecondaryMmu<'h, H>>(&self, c: &C, addr: usize, write: bool) -> Option<Frame> {
        let before = self.count();
        let f = c.access(self, addr, write);
        if f.is_some() && self.count() == before {
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
        f
    }

    /// The consumer is using its translation of `addr` to `frame`, for writing if
    /// `write`, right now. Call it **under the lock that your invalidation callbacks
    /// take** (so that the translation cannot be zapped meanwhile), every time a
    /// translation is used, and only with a translation you hold.
    ///
    /// Asks [`Harness::frame_live`] (was the frame freed?) and
    /// [`Harness::check_translation`] (is it the primary entry of `addr` at this
    /// moment, writable for a write?); a failure of either fails the case.
    pub fn use_translation(&self, addr: usize, frame: Frame, write: bool) {
        self.uses.fetch_add(1, Ordering::Relaxed);
        if !self.h.frame_live(frame) && self.freed.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first_freed.store(addr, Ordering::Relaxed);
        }
        self.stale.check(self.h, self.mm, addr, frame, write);
    }

    /// How many uses were recorded.
    pub fn count(&self) -> u32 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Both oracles over every recorded use.
    fn verdict(&self, who: &str) -> Outcome {
        let n = self.unreported.load(Ordering::Relaxed);
        ensure!(
            n == 0,
            "{who} returned a frame from `access` {n} times without reporting the use \
             (Uses::use_translation)"
        );
        let v = self.freed.load(Ordering::Relaxed);
        ensure!(
            v == 0,
            "{who} reached {v} freed frames (the first at {:#x}): stale translations",
            self.first_freed.load(Ordering::Relaxed)
        );
        oracles(who, &AtomicU32::new(0), &self.stale)
    }
}

/// A secondary MMU under test: your consumer, as the runner drives it.
///
/// The consumer owns its subscription (a [`notifier_core::Subscriber`] for a
/// [`Kind::List`] consumer, an [`notifier_core::IntervalSubscriber`] for the interval
/// kinds) and registers it on `h.address_space(mm)` of the harness it was created
/// with. The runner pins each consumer (`core::pin::pin!`) for the length of one use,
/// then drops it; dropping must unsubscribe (the core's subscribers do).
///
/// Its fault path reads the primary MMU through the [`Harness`] ([`Harness::lookup`],
/// then [`Harness::touch`] to fault the page in, as `hmm_range_fault` or
/// `get_user_pages` would) and installs what it read only if no invalidation of that
/// address started or ended meanwhile: with its own counters (KVM's
/// `mmu_invalidate_seq` and `mmu_invalidate_in_progress`) for a list subscriber, with
/// `Interval::read_begin` / `read_retry` for an interval one.
///
/// For the runner to find races, everything that waits must go through the harness:
/// a fault that waits for an invalidation in flight calls [`Harness::yield_now`] in its
/// loop (the deterministic scheduler has no other way to run the primary MMU), locks
/// are the core's [`SpinLock`] (which yields through the platform), and the fault path
/// should call [`Harness::yield_now`] between reading the primary entry and taking its
/// lock to install it — the window of the race C-09 is about.
///
/// # Example
///
/// `examples/consumer-check` in the repository: a toy device TLB, written only against
/// the public API, with its runnable test on the simulator.
pub trait SecondaryMmu<'h, H: Harness>: Sync + Sized {
    /// The consumer's name, printed in the header.
    const NAME: &'static str;
    /// How it subscribes.
    const KIND: Kind;

    /// A consumer of address space `mm` of `h`, not subscribed yet.
    fn new(h: &'h H, mm: Mm) -> Self;

    /// Subscribe: register its subscriber on `h.address_space(mm)` (a list consumer),
    /// or insert its interval `[start, start + len)` (the interval kinds). The runner
    /// only asks for translations inside that range.
    fn subscribe(self: Pin<&Self>, start: usize, len: usize) -> Result<(), Error>;

    /// Unsubscribe: when it returns, no callback runs any more (C-03).
    fn unsubscribe(self: Pin<&Self>) -> Result<(), Error>;

    /// Fault a translation of `addr` in (for writing if `write`): read the primary
    /// entry and install it unless an invalidation intervened (then retry). An error
    /// from the primary MMU ([`FaultError::Primary`]: the page is not mapped now) is
    /// expected while the primary MMU changes the space, and after teardown
    /// ([`FaultError::Released`] too); [`FaultError::Livelock`] and
    /// [`FaultError::Full`] fail the case.
    fn fault(&self, addr: usize, write: bool) -> Result<(), FaultError>;

    /// Use the translation of `addr` the consumer holds (for writing if `write`; a
    /// read-only translation is then a miss): under its lock, report the use with
    /// [`Uses::use_translation`] and return the frame; `None` on a miss (no
    /// translation held), without reporting.
    fn access(&self, uses: &Uses<'h, H>, addr: usize, write: bool) -> Option<Frame>;

    /// How many translations it holds now.
    fn held(&self) -> usize;

    /// How many callbacks of the core it has received so far, counted on entry (C-03);
    /// `None` (the default): it does not count them, and C-03 is not applicable.
    fn callbacks(&self) -> Option<u64> {
        None
    }

    /// Called when no invalidation is in flight for it (after `unsubscribe`, or after
    /// every primary operation returned): an inconsistency in its own bookkeeping, such
    /// as a count of invalidations in flight that is not zero (C-02, C-07). The
    /// default: none.
    fn check_idle(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// The outcome of [`run_consumer`]: counts, the failed cases and the skipped ones with
/// their reasons.
pub type Report = Summary;

/// The cases the runner has, in contract order.
const CASES: [(&str, &str); 10] = [
    ("C-01", "register"),
    ("C-02", "no_half_pairs"),
    ("C-03", "unregister_is_a_barrier"),
    ("C-04", "release_exactly_once"),
    ("C-06", "coverage"),
    ("C-07", "pairing"),
    ("C-09", "no_stale_translation"),
    ("C-10", "page_lifetime"),
    ("C-12", "read_begin_read_retry"),
    ("C-14", "two_pass"),
];

/// Put the consumer `C` through the consumer-facing cases on `h` (see the
/// [module](self) documentation for what each checks), writing KTAP to `out` as the
/// suite does. `cfg.only` picks one case and `cfg.rounds` sets the length of the
/// concurrent ones; `cfg.twin` and the scale fields are not used.
///
/// Deterministic or threaded is the harness's choice: with the simulator, run it on
/// `SimHarness::deterministic(seed)` for several seeds and on `SimHarness::threads()`.
pub fn run_consumer<'h, H: Harness, C: SecondaryMmu<'h, H>>(
    h: &'h H,
    cfg: &Config,
    out: &mut dyn Write,
) -> Report {
    crate::ktap(
        out,
        format_args!(
            "notifier consumer check: {} ({:?} subscriber) on {}",
            crate::OneLine(C::NAME),
            C::KIND,
            crate::OneLine(h.name())
        ),
        CASES.iter().copied(),
        cfg.only,
        &mut |i| match CASES[i].0 {
            "C-01" => plain(c01::<H, C>(h)),
            "C-02" => plain(c02::<H, C>(h, cfg)),
            "C-03" => c03::<H, C>(h, cfg),
            "C-04" => plain(c04::<H, C>(h, cfg)),
            "C-06" => c06::<H, C>(h),
            "C-07" => plain(c07::<H, C>(h, cfg)),
            "C-09" => c09::<H, C>(h, cfg),
            "C-10" => plain(c10::<H, C>(h)),
            "C-12" => plain(c12::<H, C>(h, cfg)),
            _ => plain(c14::<H, C>(h)),
        },
    )
}

fn plain(o: Outcome) -> CaseResult {
    o.map(|()| None)
}

/// A fault error that fails a case (the primary MMU's refusals do not: the page may be
/// unmapped at that moment).
fn fatal(e: FaultError) -> Option<Fail> {
    match e {
        FaultError::Primary(_) | FaultError::Released | FaultError::Refused => None,
        other => Some(fail(format_args!("secondary fault: {other:?}"))),
    }
}

/// Use `a` (for writing if `write`), faulting it in on a miss.
fn run_once<'h, H: Harness, C: SecondaryMmu<'h, H>>(
    c: &C,
    u: &Uses<'h, H>,
    a: usize,
    write: bool,
) -> Result<(), FaultError> {
    if u.access(c, a, write).is_none() {
        c.fault(a, write)?;
    }
    Ok(())
}

fn idle<'h, H: Harness, C: SecondaryMmu<'h, H>>(c: &C, when: &str) -> Outcome {
    if let Err(why) = c.check_idle() {
        return Err(fail(format_args!(
            "{when}: the consumer's bookkeeping: {why}"
        )));
    }
    Ok(())
}

/// Subscribe `c` over the case's pages.
fn subscribe<'h, H: Harness, C: SecondaryMmu<'h, H>>(c: Pin<&C>) -> Outcome {
    c.subscribe(BASE, PAGES * page::<H>())?;
    Ok(())
}

fn c01<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H) -> Outcome {
    let pg = page::<H>();
    let mut sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    // A fault installs a translation that is used, and is current (without this, a
    // consumer that caches nothing would pass every case).
    for i in 0..PAGES {
        c.fault(addr::<H>(i), false)?;
        ensure!(
            u.access(&*c, addr::<H>(i), false).is_some(),
            "a fault of {:#x} returned Ok but the next access missed (nothing installed)",
            addr::<H>(i)
        );
    }
    ensure!(c.held() > 0, "holds no translation after {PAGES} faults");
    // Every later invalidation reaches it.
    h.unmap(sp.mm, addr::<H>(0), pg)?;
    u.access(&*c, addr::<H>(0), false);
    u.access(&*c, addr::<H>(0), true);
    u.verdict("the consumer")?;
    c.as_ref().unsubscribe()?;
    idle::<H, C>(&c, "after unsubscribe")?;
    sp.teardown();
    let late = pin!(C::new(h, sp.mm));
    let r = late.as_ref().subscribe(BASE, PAGES * pg);
    ensure!(
        r.is_err(),
        "subscribing on a torn-down address space succeeded"
    );
    Ok(())
}

/// The primary MMU of C-02/C-03: unmap, remap and refault the pages until `stop`.
fn churn_primary<H: Harness>(h: &H, mm: Mm, err: &FirstError<H::P>, stop: &AtomicBool) {
    let pg = page::<H>();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let a = addr::<H>(i % PAGES);
        if let Err(e) = h.unmap(mm, a, pg).and_then(|()| {
            h.map(mm, a, pg)?;
            h.touch(mm, a, true).map(|_| ())
        }) {
            err.set(e.into());
            return;
        }
        i += 1;
    }
}

/// One subscribe/use/unsubscribe cycle of a fresh consumer against the churn; returns
/// its callback count when unsubscribe returned.
fn cycle<'h, H: Harness, C: SecondaryMmu<'h, H>>(
    h: &'h H,
    mm: Mm,
    i: usize,
    barrier: bool,
) -> Result<(), Fail> {
    let u = Uses::new(h, mm);
    let c = pin!(C::new(h, mm));
    subscribe::<H, C>(c.as_ref())?;
    for k in 0..2 {
        let a = addr::<H>((i + k) % PAGES);
        if let Err(e) = run_once(&*c, &u, a, k == 0) {
            if let Some(f) = fatal(e) {
                return Err(f);
            }
        }
        h.yield_now();
    }
    c.as_ref().unsubscribe()?;
    idle::<H, C>(
        &c,
        "after unsubscribe (a start without its end, or the reverse)",
    )?;
    if barrier {
        if let Some(n) = c.callbacks() {
            for _ in 0..4 {
                h.yield_now();
            }
            let now = c.callbacks().unwrap_or(n);
            ensure!(now == n, "{} callbacks after unsubscribe returned", now - n);
        }
    }
    u.verdict("the consumer")
}

fn churn_case<'h, H: Harness, C: SecondaryMmu<'h, H>>(
    h: &'h H,
    cfg: &Config,
    barrier: bool,
) -> Outcome {
    need(h, Cap::Concurrency)?;
    let sp = Space::with_pages(h, PAGES)?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    let primary = || churn_primary(h, sp.mm, &err, &stop);
    let churn = || {
        for i in 0..cfg.rounds.max(8) as usize / 4 {
            if let Err(e) = cycle::<H, C>(h, sp.mm, i, barrier) {
                err.set(e);
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    };
    h.run_concurrently(&[&primary, &churn]);
    err.check()
}

fn c02<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H, cfg: &Config) -> Outcome {
    churn_case::<H, C>(h, cfg, false)
}

fn c03<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H, cfg: &Config) -> CaseResult {
    need(h, Cap::Concurrency)?;
    {
        // Whether the consumer counts its callbacks at all.
        let sp = Space::new(h)?;
        if C::new(h, sp.mm).callbacks().is_none() {
            return Err(Fail::NotApplicable(
                "the consumer does not count its callbacks (SecondaryMmu::callbacks)",
            ));
        }
    }
    churn_case::<H, C>(h, cfg, true).map(|()| None)
}

fn c04<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H, cfg: &Config) -> Outcome {
    {
        let mut sp = Space::with_pages(h, PAGES)?;
        let u = Uses::new(h, sp.mm);
        let c = pin!(C::new(h, sp.mm));
        subscribe::<H, C>(c.as_ref())?;
        for i in 0..PAGES {
            c.fault(addr::<H>(i), true)?;
        }
        sp.teardown();
        ensure!(
            c.held() == 0,
            "holds {} translations after teardown (release)",
            c.held()
        );
        for i in 0..PAGES {
            let _ = c.fault(addr::<H>(i), false);
            u.access(&*c, addr::<H>(i), false);
        }
        ensure!(
            c.held() == 0,
            "faulted {} translations in after teardown",
            c.held()
        );
        u.verdict("the consumer after teardown")?;
        c.as_ref().unsubscribe()?;
    }
    // Racing: teardown against unsubscribe, whoever wins.
    if h.lacks(Cap::Concurrency).is_none() {
        for _ in 0..cfg.rounds.max(4) / 4 {
            let mut sp = Space::with_pages(h, 2)?;
            let c = pin!(C::new(h, sp.mm));
            subscribe::<H, C>(c.as_ref())?;
            let _ = c.fault(addr::<H>(0), true);
            let err = FirstError::<H::P>::new();
            let mm = sp.mm;
            let a = || h.teardown(mm);
            let b = || {
                if let Err(e) = c.as_ref().unsubscribe() {
                    err.set(e.into());
                }
            };
            h.run_concurrently(&[&a, &b]);
            sp.torn = true;
            err.check()?;
            idle::<H, C>(&c, "after teardown racing unsubscribe")?;
        }
    }
    Ok(())
}

fn c06<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H) -> CaseResult {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    let mut checked = 0;
    let mut skipped: ArrayVec<&'static str, 6> = ArrayVec::new();
    let mut step = |what: &'static str, i: usize, f: &dyn Fn() -> Outcome| -> Outcome {
        let a = addr::<H>(i);
        run_once(&*c, &u, a, true)?;
        ensure!(
            u.access(&*c, a, false).is_some(),
            "{what}: nothing installed for {a:#x} before the operation"
        );
        match f() {
            Err(Fail::NotApplicable(_)) => {
                let _ = skipped.try_push(what);
                return Ok(());
            }
            r => r?,
        }
        u.access(&*c, a, true);
        u.access(&*c, a, false);
        if let Err(Fail::Failed(m)) = u.verdict("the consumer") {
            return Err(fail(format_args!("after {what}: {m}")));
        }
        checked += 1;
        Ok(())
    };
    step("munmap", 0, &|| Ok(h.unmap(sp.mm, addr::<H>(0), pg)?))?;
    step("mprotect", 1, &|| {
        need(h, Cap::Protect)?;
        Ok(h.protect(sp.mm, addr::<H>(1), pg, false)?)
    })?;
    step("migrate", 2, &|| {
        need(h, Cap::Migrate)?;
        h.migrate(sp.mm, addr::<H>(2))?;
        Ok(())
    })?;
    step("reclaim", 3, &|| {
        need(h, Cap::Reclaim)?;
        let mut n = 0;
        for _ in 0..3 {
            n += h.reclaim(sp.mm, addr::<H>(3), pg)?;
        }
        ensure!(n >= 1, "reclaim evicted nothing in three passes");
        Ok(())
    })?;
    step("soft-dirty", 5, &|| Ok(h.clear_soft_dirty(sp.mm)?))?;
    step("cow break", 4, &|| {
        need(h, Cap::Cow)?;
        let child = h.fork(sp.mm)?;
        // Written after the fork: the consumer's writable translation must be gone.
        let r = h.touch(sp.mm, addr::<H>(4), true);
        h.teardown(child);
        h.destroy_mm(child);
        r?;
        Ok(())
    })?;
    ensure!(checked >= 1, "no primary operation could be checked");
    idle::<H, C>(&c, "after the operations")?;
    if skipped.is_empty() {
        return Ok(None);
    }
    let mut note = Msg::new();
    let _ = write!(note, "{checked} of 6 operations; not on this backend:");
    for (k, w) in skipped.iter().enumerate() {
        let _ = write!(note, "{} {w}", if k == 0 { "" } else { "," });
    }
    Ok(Some(note))
}

fn c07<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H, cfg: &Config) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    if direct::<H, crate::Core>(h) {
        for i in 0..4 {
            c.fault(addr::<H>(i), false)?;
        }
        // Nested on one thread, over pages it holds.
        let outer =
            sp.asp()
                .invalidate_range_start(Range::new(BASE, BASE + 4 * pg, Event::Unmap))?;
        let inner = sp.asp().invalidate_range_start(Range::new(
            BASE + pg,
            BASE + 2 * pg,
            Event::ProtectionPage,
        ))?;
        inner.end();
        outer.end();
        idle::<H, C>(&c, "after nested invalidations")?;
        for i in 0..4 {
            c.fault(addr::<H>(i), false)?;
            ensure!(
                u.access(&*c, addr::<H>(i), false).is_some(),
                "nothing installed after nested invalidations ended"
            );
        }
    }
    if h.lacks(Cap::Concurrency).is_none() {
        let err = FirstError::<H::P>::new();
        let stop = AtomicU32::new(0);
        let t = |off: usize| {
            let (err, sp, stop) = (&err, &sp, &stop);
            move || {
                for i in 0..cfg.rounds.max(8) as usize / 8 {
                    let a = addr::<H>((i + off) % (PAGES - 1));
                    let r = h
                        .unmap(sp.mm, a, 2 * pg)
                        .and_then(|()| h.map(sp.mm, a, 2 * pg));
                    if let Err(e) = r {
                        err.set(e.into());
                        break;
                    }
                    let _ = h.touch(sp.mm, a, true);
                }
                stop.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (t1, t2) = (t(0), t(1));
        let user = || {
            let mut i = 0;
            while stop.load(Ordering::Relaxed) < 2 {
                if let Err(e) = run_once(&*c, &u, addr::<H>(i % PAGES), i % 2 == 0) {
                    if let Some(f) = fatal(e) {
                        err.set(f);
                        return;
                    }
                }
                i += 1;
                if i % PAGES == 0 {
                    h.yield_now();
                }
            }
        };
        h.run_concurrently(&[&t1, &t2, &user]);
        err.check()?;
        idle::<H, C>(&c, "after overlapping invalidations")?;
    }
    u.verdict("the consumer")
}

fn c09<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H, cfg: &Config) -> CaseResult {
    need(h, Cap::Concurrency)?;
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    // Two tasks use the consumer (two vCPUs, two device queues). Once the primary has
    // stopped they go on, for a bounded number of rounds, until some translation was
    // used: on a loaded machine the users may not have run while the primary did, and a
    // race with no use checks nothing.
    let user = |pages: usize, writes: usize, stride: usize| {
        let mut i = 0;
        let mut after = 0;
        loop {
            if stop.load(Ordering::Relaxed) {
                if u.count() > 0 || after >= 4 * pages {
                    break;
                }
                after += 1;
            }
            let a = addr::<H>((stride * i) % pages);
            if let Err(e) = run_once(&*c, &u, a, i % writes == 0) {
                if let Some(f) = fatal(e) {
                    err.set(f);
                    return;
                }
            }
            i += 1;
            if i % pages == 0 {
                h.yield_now();
            }
        }
    };
    // Part 1: unmaps, remaps and migrations (frames freed).
    let primary = || unmap_and_migrate(h, &sp, cfg, 3, &err, &stop);
    let (u1, u2) = (|| user(PAGES, 3, 1), || user(PAGES, 2, 3));
    h.run_concurrently(&[&primary, &u1, &u2]);
    err.check()?;
    // Part 2: protection changes and forks, which keep the frames: only the second
    // oracle sees a stale use there.
    let protect = h.lacks(Cap::Protect).is_none();
    let cow = h.lacks(Cap::Cow).is_none();
    let children: SpinLock<H::P, ArrayVec<Mm, FORKS>> = SpinLock::new(ArrayVec::new());
    if protect || cow {
        stop.store(false, Ordering::Relaxed);
        let primary = || {
            for i in 0..cfg.rounds as usize {
                let a = addr::<H>(i % PAGES);
                let r = if protect && (!cow || i % 4 != 0) {
                    h.protect(sp.mm, a, pg, false).and_then(|()| {
                        h.yield_now();
                        h.protect(sp.mm, a, pg, true)
                    })
                } else if children.lock().is_full() {
                    Ok(())
                } else {
                    h.fork(sp.mm).map(|k| children.lock().push(k))
                };
                if let Err(e) = r {
                    err.set(e.into());
                    break;
                }
                h.yield_now();
            }
            stop.store(true, Ordering::Relaxed);
        };
        let (u3, u4) = (|| user(PAGES, 2, 1), || user(PAGES, 3, 5));
        h.run_concurrently(&[&primary, &u3, &u4]);
    }
    for i in 0..PAGES {
        u.access(&*c, addr::<H>(i), true);
        u.access(&*c, addr::<H>(i), false);
    }
    let kids = core::mem::take(&mut *children.lock());
    for k in kids {
        h.teardown(k);
        h.destroy_mm(k);
    }
    err.check()?;
    u.verdict("the consumer")?;
    ensure!(u.count() > 0, "the consumer used no translation");
    idle::<H, C>(&c, "after the race")?;
    let mut note = Msg::new();
    let _ = write!(note, "{} uses checked", u.count());
    if let Some(r) = h.translation_oracle() {
        let _ = write!(note, "; translation oracle not applicable: {r}");
    }
    if !(protect || cow) {
        let _ = write!(note, "; protection changes not on this backend");
    }
    Ok(Some(note))
}

fn c10<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    for i in 0..PAGES {
        c.fault(addr::<H>(i), true)?;
    }
    h.unmap(sp.mm, addr::<H>(0), 2 * pg)?;
    if h.lacks(Cap::Migrate).is_none() {
        h.migrate(sp.mm, addr::<H>(2))?;
    }
    for i in 0..PAGES {
        u.access(&*c, addr::<H>(i), false);
        u.access(&*c, addr::<H>(i), true);
    }
    u.verdict("the consumer")
}

fn c12<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H, cfg: &Config) -> Outcome {
    if C::KIND == Kind::List {
        return Err(Fail::NotApplicable(
            "a list subscriber: the interval sequence protocol is not its (C-09 checks its own counters)",
        ));
    }
    need(h, Cap::Concurrency)?;
    let sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    let primary = || unmap_and_migrate(h, &sp, cfg, 2, &err, &stop);
    let device = || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = run_once(&*c, &u, addr::<H>(i % PAGES), false) {
                if let Some(f) = fatal(e) {
                    err.set(f);
                    return;
                }
            }
            i += 1;
            if i % PAGES == 0 {
                h.yield_now();
            }
        }
    };
    h.run_concurrently(&[&primary, &device]);
    err.check()?;
    for i in 0..PAGES {
        u.access(&*c, addr::<H>(i), false);
    }
    u.verdict("the consumer")
}

fn c14<'h, H: Harness, C: SecondaryMmu<'h, H>>(h: &'h H) -> Outcome {
    if C::KIND != Kind::TwoPass {
        return Err(Fail::NotApplicable("not a two-pass interval subscriber"));
    }
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let u = Uses::new(h, sp.mm);
    let c = pin!(C::new(h, sp.mm));
    subscribe::<H, C>(c.as_ref())?;
    for i in 0..PAGES {
        c.fault(addr::<H>(i), true)?;
    }
    for i in 0..PAGES / 2 {
        h.unmap(sp.mm, addr::<H>(i), pg)?;
        // When the unmap returned, the second pass finished: nothing of the page left.
        for k in 0..PAGES {
            u.access(&*c, addr::<H>(k), false);
        }
    }
    u.verdict("the consumer")
}
