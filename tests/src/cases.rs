//! The cases, one function each, in contract order. Each returns `Ok` only if what the
//! contract promises was observed; the checks are on what the consumers saw and on the
//! oracle, never on timing.

use core::fmt::Write;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use arrayvec::ArrayVec;
use notifier_core::sync::SpinLock;
use notifier_core::{
    AddressSpace, Error, Event, Platform, Range, Shared, SharedOps, Subscriber, SubscriberOps,
    WouldBlock,
};

use crate::consumers::{
    DeviceTlb, Exporter, FaultError, Kvm, Mirror, PageExporter, Recorder, RmapHook, Seen,
    StaleUses, TwoPass, EXPORT_SLOTS, IMPORTERS,
};
use crate::harness::{Cap, Harness, Mm};
use crate::subscribe::{
    CoreInterval, Feature, IntervalSubscription, IvOps, Notifiers, Seq, Subscription,
};
use crate::{fail, Config, Fail, Outcome};

macro_rules! ensure {
    ($c:expr, $($a:tt)*) => {
        if !$c {
            return Err(fail(format_args!($($a)*)));
        }
    };
}

type Case<H> = fn(&H, &Config) -> CaseResult;

/// What a case that passed may add to its `ok` (which parts of it ran).
pub(crate) type CaseResult = Result<Option<crate::Msg>, Fail>;

/// A case that passes with a plain `ok`, as a table entry.
macro_rules! plain {
    ($f:expr) => {
        |h, c| $f(h, c).map(|()| None)
    };
}

/// A pinned, registered recorder.
type RecRef<'a, H, S> = core::pin::Pin<&'a <S as Notifiers<H>>::Sub<Recorder<<H as Harness>::P>>>;

/// A list subscription of mode `S` around `ops`, not registered yet.
fn sub<H: Harness, S: Notifiers<H>, T: SubscriberOps>(ops: T) -> S::Sub<T> {
    <S::Sub<T> as Subscription<H, T>>::new(ops)
}

/// An interval subscription of mode `S` around `ops`, not inserted yet.
fn ivsub<H: Harness, S: Notifiers<H>, T: IvOps>(ops: T) -> S::Iv<T> {
    <S::Iv<T> as IntervalSubscription<H, T>>::new(ops)
}

/// Every case: id, name, function.
pub(crate) fn all<H: Harness, S: Notifiers<H>>() -> [(&'static str, &'static str, Case<H>); 21] {
    [
        ("C-01", "register", plain!(c01_register::<H, S>)),
        ("C-02", "no_half_pairs", plain!(c02_no_half_pairs::<H, S>)),
        (
            "C-03",
            "unregister_is_a_barrier",
            plain!(c03_unregister_barrier::<H, S>),
        ),
        (
            "C-04",
            "release_exactly_once",
            plain!(c04_release_once::<H, S>),
        ),
        ("C-05", "get_put_synchronize", plain!(c05_get_put::<H, S>)),
        ("C-06", "coverage", c06_coverage::<H, S>),
        ("C-07", "pairing", plain!(c07_pairing::<H, S>)),
        ("C-08", "non_blocking", plain!(c08_non_blocking::<H, S>)),
        ("C-09", "no_stale_translation", c09_no_stale::<H, S>),
        ("C-10", "page_lifetime", plain!(c10_page_lifetime::<H, S>)),
        ("C-11", "overlap_only", plain!(c11_overlap_only::<H, S>)),
        (
            "C-12",
            "read_begin_read_retry",
            plain!(c12_sequence::<H, S>),
        ),
        (
            "C-13",
            "deferred_insert_remove",
            plain!(c13_deferred::<H, S>),
        ),
        ("C-14", "two_pass", plain!(c14_two_pass::<H, S>)),
        ("C-15", "young", plain!(c15_young::<H, S>)),
        ("C-16", "errors", plain!(c16_errors::<H, S>)),
        ("C-17", "many", plain!(c17_many::<H, S>)),
        (
            "C-18",
            "export_page_not_freed_while_mapped",
            plain!(c18_export_not_freed::<H, S>),
        ),
        (
            "C-19",
            "export_remote_map_race",
            plain!(c19_export_race::<H, S>),
        ),
        (
            "C-20",
            "export_unmapped_pages_revoked",
            plain!(c20_export_unmapped_revoked::<H, S>),
        ),
        (
            "C-21",
            "unexport_is_a_barrier",
            plain!(c21_unexport_barrier::<H, S>),
        ),
    ]
}

pub(crate) fn need<H: Harness>(h: &H, cap: Cap) -> Outcome {
    match h.lacks(cap) {
        Some(r) => Err(Fail::NotApplicable(r)),
        None => Ok(()),
    }
}

/// Not applicable unless the mode has `f`.
fn need_mode<H: Harness, S: Notifiers<H>>(f: Feature) -> Outcome {
    match S::lacks(f) {
        Some(r) => Err(Fail::NotApplicable(r)),
        None => Ok(()),
    }
}

/// Whether the suite's own calls on the backend's `AddressSpace` reach the consumers:
/// the backend allows them and the consumers subscribe to the core.
pub(crate) fn direct<H: Harness, S: Notifiers<H>>(h: &H) -> bool {
    h.lacks(Cap::DirectCalls).is_none() && S::lacks(Feature::DirectCalls).is_none()
}

pub(crate) fn page<H: Harness>() -> usize {
    <H::P as Platform>::PAGE_SIZE
}

/// Where the cases map their memory.
pub(crate) const BASE: usize = 0x4000_0000;
/// Pages mapped by most cases.
pub(crate) const PAGES: usize = 8;
/// Forks in the second part of C-09 (each maps one more page first).
pub(crate) const FORKS: usize = 16;

/// An address space for one case: torn down and forgotten when dropped (declare it
/// first, so that consumers registered on it are dropped — unregistered — before).
pub(crate) struct Space<'h, H: Harness> {
    h: &'h H,
    pub(crate) mm: Mm,
    pub(crate) torn: bool,
}

impl<'h, H: Harness> Space<'h, H> {
    pub(crate) fn new(h: &'h H) -> Result<Self, Fail> {
        Ok(Space {
            h,
            mm: h.create_mm()?,
            torn: false,
        })
    }
    pub(crate) fn with_pages(h: &'h H, pages: usize) -> Result<Self, Fail> {
        let s = Self::new(h)?;
        h.map(s.mm, BASE, pages * page::<H>())?;
        for i in 0..pages {
            h.touch(s.mm, addr::<H>(i), true)?;
        }
        Ok(s)
    }
    pub(crate) fn asp(&self) -> &'h AddressSpace<H::P> {
        self.h.address_space(self.mm)
    }
    pub(crate) fn teardown(&mut self) {
        if !self.torn {
            self.torn = true;
            self.h.teardown(self.mm);
        }
    }
}

impl<H: Harness> Drop for Space<'_, H> {
    fn drop(&mut self) {
        self.teardown();
        self.h.destroy_mm(self.mm);
    }
}

pub(crate) fn addr<H: Harness>(i: usize) -> usize {
    BASE + i * page::<H>()
}

/// Both oracles of C-09 over one consumer's accesses: none reached a freed page
/// (`violations`), none used a translation that was not the primary entry at that
/// moment (`stale`, where the backend has that oracle).
pub(crate) fn oracles<P: Platform>(
    who: &str,
    violations: &AtomicU32,
    stale: &StaleUses<P>,
) -> Outcome {
    let v = violations.load(Ordering::Relaxed);
    ensure!(v == 0, "{who} reached {v} freed pages (stale translations)");
    if let Some((a, why)) = stale.first() {
        return Err(fail(format_args!(
            "{who} used {} stale translations of pages still allocated (the first at \
             {a:#x}: {why})",
            stale.count()
        )));
    }
    Ok(())
}

/// The first error a concurrent task hit (tasks cannot return one). A capability the
/// backend lacks stays "not applicable", as it would outside a task.
pub(crate) struct FirstError<P: Platform>(SpinLock<P, Option<Fail>>);

impl<P: Platform> FirstError<P> {
    pub(crate) fn new() -> Self {
        FirstError(SpinLock::new(None))
    }
    pub(crate) fn set(&self, e: Fail) {
        let mut g = self.0.lock();
        if g.is_none() {
            *g = Some(e);
        }
    }
    pub(crate) fn check(&self) -> Outcome {
        match self.0.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Registration and lifetime
// ---------------------------------------------------------------------------------

fn c01_register<H: Harness, S: Notifiers<H>>(h: &H, _cfg: &Config) -> Outcome {
    let mut sp = Space::with_pages(h, PAGES)?;
    let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    rec.as_ref().register(h, sp.mm)?;
    // Every later invalidation reaches it.
    h.unmap(sp.mm, addr::<H>(0), page::<H>())?;
    let (s, e, _) = rec.counts();
    ensure!(
        s >= 1 && e >= 1,
        "munmap after register: {s} starts, {e} ends"
    );
    // Twice: refused, and the registration still works (misuse has a typed error only
    // in the core; Linux's C would corrupt its list).
    let misuse = S::lacks(Feature::MisuseErrors).is_none();
    if misuse {
        ensure!(
            rec.as_ref().register(h, sp.mm) == Err(Error::AlreadyRegistered),
            "second register not refused with AlreadyRegistered"
        );
    }
    h.unmap(sp.mm, addr::<H>(1), page::<H>())?;
    ensure!(
        rec.counts().0 >= 2,
        "invalidation lost after a refused second register"
    );
    rec.as_ref().unregister()?;
    // After teardown: Dead.
    sp.teardown();
    if misuse {
        let late = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
        let r = late.as_ref().register(h, sp.mm);
        ensure!(
            r == Err(Error::Dead),
            "register on a torn-down space: {r:?}, not Dead"
        );
    }
    ensure!(
        rec.breaches() == 0,
        "recorder saw {} pairing breaches",
        rec.breaches()
    );
    Ok(())
}

fn c02_no_half_pairs<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::Concurrency)?;
    let sp = Space::with_pages(h, PAGES)?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    let primary = || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let a = addr::<H>(i % PAGES);
            if let Err(e) = h.unmap(sp.mm, a, page::<H>()).and_then(|()| {
                h.map(sp.mm, a, page::<H>())?;
                h.touch(sp.mm, a, true).map(|_| ())
            }) {
                err.set(e.into());
                return;
            }
            i += 1;
        }
    };
    let churn = || {
        for _ in 0..cfg.rounds.max(8) / 4 {
            let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
            if let Err(e) = rec.as_ref().register(h, sp.mm) {
                err.set(e.into());
                break;
            }
            h.yield_now();
            if let Err(e) = rec.as_ref().unregister() {
                err.set(e.into());
                break;
            }
            // No end without its start (the recorder counts those as breaches), and no
            // start left without its end once unregister returned. (The log's lock is
            // let go before `err`'s is taken: one lock at a time.)
            let (breaches, open) = {
                let l = rec.log.lock();
                (l.breaches, l.open.len())
            };
            if breaches != 0 || open != 0 {
                err.set(fail(format_args!(
                    "{breaches} unmatched ends, {open} starts without end after unregister"
                )));
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    };
    h.run_concurrently(&[&primary, &churn]);
    err.check()
}

fn c03_unregister_barrier<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::Concurrency)?;
    let sp = Space::with_pages(h, PAGES)?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    let primary = || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let a = addr::<H>(i % PAGES);
            // Protection changes where the backend has them; unmaps everywhere.
            let protect = match h.lacks(Cap::Protect) {
                None => h.protect(sp.mm, a, page::<H>(), i % 2 == 0),
                Some(_) => Ok(()),
            };
            let r = protect.and_then(|()| {
                h.unmap(sp.mm, a, page::<H>())?;
                h.map(sp.mm, a, page::<H>())?;
                h.touch(sp.mm, a, true).map(|_| ())
            });
            if let Err(e) = r {
                err.set(e.into());
                return;
            }
            i += 1;
        }
    };
    let churn = || {
        for _ in 0..cfg.rounds.max(8) / 4 {
            let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
            if let Err(e) = rec.as_ref().register(h, sp.mm) {
                err.set(e.into());
                break;
            }
            h.yield_now();
            if let Err(e) = rec.as_ref().unregister() {
                err.set(e.into());
                break;
            }
            // Its memory may be freed now: any callback from here on is a breach.
            rec.gone.store(true, Ordering::Relaxed);
            let total = rec.log.lock().total;
            for _ in 0..4 {
                h.yield_now();
            }
            let (breaches, now) = {
                let l = rec.log.lock();
                (l.breaches, l.total)
            };
            if breaches != 0 || now != total {
                err.set(fail(format_args!(
                    "{} callbacks after unregister returned",
                    now - total
                )));
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    };
    h.run_concurrently(&[&primary, &churn]);
    err.check()
}

fn c04_release_once<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    // Teardown releases every subscriber once; a later unregister does not again; the
    // shadow MMU drops everything, so nothing reaches the freed pages.
    {
        let mut sp = Space::with_pages(h, PAGES)?;
        let kvm = pin!(sub::<H, S, _>(Kvm::new(h, sp.mm, cfg.twin)));
        kvm.as_ref().register(h, sp.mm)?;
        let ivs = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, cfg.twin)));
        ivs.as_ref().insert(h, sp.mm, BASE, PAGES * page::<H>())?;
        for i in 0..PAGES {
            kvm.run(addr::<H>(i), false)?;
            ivs.run(ivs.interval(), addr::<H>(i))?;
        }
        sp.teardown();
        ensure!(
            kvm.releases.load(Ordering::Relaxed) == 1,
            "release not called once at teardown"
        );
        // A Release invalidation over the whole space (Linux then also unmaps the
        // vmas, which reaches intervals still in its tree: later events are allowed).
        let rel = *ivs.release_seen.lock();
        ensure!(
            rel.is_some_and(|r| r.start == 0 && r.end >= <H::P as Platform>::ADDRESS_LIMIT),
            "interval subscriber got no Release invalidation over the whole space at \
             teardown (Release seen: {rel:?}; last event {:?})",
            *ivs.last_event.lock()
        );
        for i in 0..PAGES {
            kvm.access(addr::<H>(i));
            ivs.access(addr::<H>(i));
        }
        ensure!(
            kvm.violations.load(Ordering::Relaxed) == 0,
            "the shadow MMU reached freed pages after release"
        );
        ensure!(
            ivs.violations.load(Ordering::Relaxed) == 0,
            "mirror reached freed pages after release"
        );
        kvm.as_ref().unregister()?;
        ensure!(
            kvm.releases.load(Ordering::Relaxed) == 1,
            "unregister after teardown released again"
        );
        ivs.as_ref().remove()?;
    }
    // From unregister first: once, and not again at teardown.
    {
        let mut sp = Space::with_pages(h, 2)?;
        let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
        rec.as_ref().register(h, sp.mm)?;
        rec.as_ref().unregister()?;
        sp.teardown();
        ensure!(
            rec.counts().2 == 1,
            "release from unregister: {} calls",
            rec.counts().2
        );
    }
    // Racing: exactly once, whoever wins.
    if h.lacks(Cap::Concurrency).is_none() {
        for _ in 0..cfg.rounds.max(4) / 4 {
            let mut sp = Space::with_pages(h, 2)?;
            let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
            rec.as_ref().register(h, sp.mm)?;
            let err = FirstError::<H::P>::new();
            let mm = sp.mm;
            let a = || h.teardown(mm);
            let b = || {
                if let Err(e) = rec.as_ref().unregister() {
                    err.set(e.into());
                }
            };
            h.run_concurrently(&[&a, &b]);
            sp.torn = true;
            err.check()?;
            ensure!(
                rec.counts().2 == 1,
                "release racing unregister: {} calls",
                rec.counts().2
            );
        }
    }
    Ok(())
}

// C-05: shared subscribers. `SharedOps::alloc` has no context, so its storage is a
// small static pool of raw slots (the suite allocates nothing).

const SHARED_SLOTS: usize = 4;
const SHARED_BYTES: usize = 256;

#[repr(align(64))]
struct SlotMem(core::cell::UnsafeCell<[u8; SHARED_BYTES]>);
// SAFETY: a slot's bytes are reached only by the one user that claimed it in
// `SHARED_USED` (a compare-exchange), until it gives it back.
unsafe impl Sync for SlotMem {}

static SHARED_MEM: [SlotMem; SHARED_SLOTS] =
    [const { SlotMem(core::cell::UnsafeCell::new([0; SHARED_BYTES])) }; SHARED_SLOTS];
static SHARED_USED: [AtomicBool; SHARED_SLOTS] = [const { AtomicBool::new(false) }; SHARED_SLOTS];
static SHARED_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static SHARED_FREES: AtomicUsize = AtomicUsize::new(0);

/// A shared subscriber kind (Linux: a driver's `alloc_notifier`/`free_notifier`).
struct SharedKind<P: Platform>(core::marker::PhantomData<P>);

impl<P: Platform> SubscriberOps for SharedKind<P> {}

// SAFETY: `alloc` hands out an unused slot of the static pool as a fresh
// `Shared<..>`, or `None`; `free` gives back exactly such slots.
unsafe impl<P: Platform> SharedOps<P> for SharedKind<P> {
    fn alloc(_mm: &AddressSpace<P>) -> Option<core::ptr::NonNull<Shared<Self, P>>> {
        if core::mem::size_of::<Shared<Self, P>>() > SHARED_BYTES
            || core::mem::align_of::<Shared<Self, P>>() > 64
        {
            return None;
        }
        let i = SHARED_USED.iter().position(|u| {
            u.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        let p = SHARED_MEM[i].0.get().cast::<Shared<Self, P>>();
        // SAFETY: slot `i` is ours (claimed above), large and aligned enough (checked).
        unsafe { p.write(Shared::new(SharedKind(core::marker::PhantomData))) };
        SHARED_ALLOCS.fetch_add(1, Ordering::Relaxed);
        core::ptr::NonNull::new(p)
    }

    unsafe fn free(this: core::ptr::NonNull<Shared<Self, P>>) {
        // SAFETY: `this` came from `alloc` and is unregistered (caller's contract).
        unsafe { core::ptr::drop_in_place(this.as_ptr()) };
        let i = SHARED_MEM
            .iter()
            .position(|m| m.0.get().cast::<Shared<Self, P>>() == this.as_ptr());
        if let Some(i) = i {
            SHARED_USED[i].store(false, Ordering::Release);
        }
        SHARED_FREES.fetch_add(1, Ordering::Relaxed);
    }
}

fn c05_get_put<H: Harness, S: Notifiers<H>>(h: &H, _cfg: &Config) -> Outcome {
    need_mode::<H, S>(Feature::SharedGetPut)?;
    let sp = Space::with_pages(h, 2)?;
    let allocs = SHARED_ALLOCS.load(Ordering::Relaxed);
    let frees = SHARED_FREES.load(Ordering::Relaxed);
    let a = sp.asp().get::<SharedKind<H::P>>()?;
    let b = sp.asp().get::<SharedKind<H::P>>()?;
    ensure!(a.as_ptr() == b.as_ptr(), "two gets gave two subscribers");
    ensure!(a.users() == 2, "{} users after two gets", a.users());
    ensure!(
        SHARED_ALLOCS.load(Ordering::Relaxed) == allocs + 1,
        "alloc not called once"
    );
    h.unmap(sp.mm, addr::<H>(0), page::<H>())?;
    a.put();
    ensure!(
        SHARED_FREES.load(Ordering::Relaxed) == frees,
        "freed while a user remains"
    );
    b.put();
    notifier_core::synchronize::<H::P>()?;
    ensure!(
        SHARED_FREES.load(Ordering::Relaxed) == frees + 1,
        "synchronize returned before the deferred free ran"
    );
    // A new get after the last put makes a new one.
    let c = sp.asp().get::<SharedKind<H::P>>()?;
    ensure!(c.users() == 1, "fresh get has {} users", c.users());
    c.put();
    notifier_core::synchronize::<H::P>()?;
    ensure!(
        SHARED_FREES.load(Ordering::Relaxed) == frees + 2,
        "second free missing"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Invalidation
// ---------------------------------------------------------------------------------

/// Whether the recorder saw a start with one of `events` covering `[a, a + len)`.
fn saw<P: Platform>(rec: &Recorder<P>, a: usize, len: usize, events: &[Event]) -> bool {
    rec.log.lock().seen.iter().any(|s| {
        matches!(s, Seen::Start(r) if r.start <= a && r.end >= a + len && events.contains(&r.event))
    })
}

fn c06_coverage<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> CaseResult {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    rec.as_ref().register(h, sp.mm)?;
    let kvm = pin!(sub::<H, S, _>(Kvm::new(h, sp.mm, cfg.twin)));
    kvm.as_ref().register(h, sp.mm)?;
    let warm = |i: usize| -> Outcome {
        kvm.run(addr::<H>(i), false)?;
        Ok(())
    };
    // Each primary change of a mapped page: bracketed, with the right event, and the
    // shadow MMU never reaches a freed page afterwards.
    let mut checked = 0;
    // The steps the backend cannot make, named in the case's line.
    let mut skipped: ArrayVec<&'static str, 6> = ArrayVec::new();
    let mut step =
        |what: &'static str, i: usize, ev: &[Event], f: &dyn Fn() -> Outcome| -> Outcome {
            rec.clear();
            warm(i)?;
            match f() {
                Err(Fail::NotApplicable(_)) => {
                    skipped.push(what);
                    return Ok(());
                }
                r => r?,
            }
            ensure!(
                saw(&rec, addr::<H>(i), pg, ev),
                "{what}: no start with {ev:?} covering the page"
            );
            kvm.access(addr::<H>(i));
            ensure!(
                kvm.violations.load(Ordering::Relaxed) == 0,
                "{what}: the shadow MMU reached a freed page"
            );
            ensure!(
                kvm.stale.count() == 0,
                "{what}: the shadow MMU used a stale translation ({:?})",
                kvm.stale.first()
            );
            checked += 1;
            Ok(())
        };
    step("munmap", 0, &[Event::Unmap], &|| {
        Ok(h.unmap(sp.mm, addr::<H>(0), pg)?)
    })?;
    step("mprotect", 1, &[Event::ProtectionVma], &|| {
        need(h, Cap::Protect)?;
        Ok(h.protect(sp.mm, addr::<H>(1), pg, false)?)
    })?;
    step("migrate", 2, &[Event::Migrate], &|| {
        need(h, Cap::Migrate)?;
        h.migrate(sp.mm, addr::<H>(2))?;
        Ok(())
    })?;
    step("reclaim", 3, &[Event::Clear, Event::Unmap], &|| {
        need(h, Cap::Reclaim)?;
        // Two passes: the first clears the accessed bits, the second evicts.
        let mut n = 0;
        for _ in 0..3 {
            n += h.reclaim(sp.mm, addr::<H>(3), pg)?;
        }
        ensure!(n >= 1, "reclaim evicted nothing in three passes");
        Ok(())
    })?;
    step("soft-dirty", 5, &[Event::SoftDirty], &|| {
        Ok(h.clear_soft_dirty(sp.mm)?)
    })?;
    let child_rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    step("cow break", 4, &[Event::Clear, Event::Unmap], &|| {
        need(h, Cap::Cow)?;
        let child = h.fork(sp.mm)?;
        child_rec.as_ref().register(h, child)?;
        // The parent writes: its copy-on-write is broken.
        let r = h.touch(sp.mm, addr::<H>(4), true);
        h.teardown(child);
        let _ = child_rec.as_ref().unregister();
        h.destroy_mm(child);
        r?;
        ensure!(
            child_rec.counts().2 == 1,
            "exit of the child: {} releases",
            child_rec.counts().2
        );
        Ok(())
    })?;
    ensure!(checked >= 1, "no primary operation could be checked");
    ensure!(rec.breaches() == 0, "{} pairing breaches", rec.breaches());
    if skipped.is_empty() {
        return Ok(None);
    }
    let mut note = crate::Msg::new();
    let _ = write!(note, "{checked} of 6 operations; not on this backend:");
    for (k, w) in skipped.iter().enumerate() {
        let _ = write!(note, "{} {w}", if k == 0 { "" } else { "," });
    }
    Ok(Some(note))
}

fn c07_pairing<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let rec = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    rec.as_ref().register(h, sp.mm)?;
    if direct::<H, S>(h) {
        // Nested on one thread.
        let outer = Range::new(BASE, BASE + 4 * pg, Event::Unmap);
        let inner = Range::new(BASE + pg, BASE + 2 * pg, Event::ProtectionPage);
        let a = sp.asp().invalidate_range_start(outer)?;
        let b = sp.asp().invalidate_range_start(inner)?;
        ensure!(
            b.range() == &inner,
            "inner invalidation carries another range"
        );
        b.end();
        a.end();
        let l = rec.log.lock();
        let want = [
            Seen::Start(outer),
            Seen::Start(inner),
            Seen::End(inner),
            Seen::End(outer),
        ];
        ensure!(
            l.seen.as_slice() == &want[..],
            "nested: saw {:?}",
            &l.seen[..l.seen.len().min(4)]
        );
    }
    if h.lacks(Cap::Concurrency).is_none() {
        // Overlapping across tasks.
        let err = FirstError::<H::P>::new();
        let (err_r, sp_r) = (&err, &sp);
        let t = move |off: usize| {
            let (err, sp) = (err_r, sp_r);
            move || {
                for i in 0..cfg.rounds.max(8) as usize / 8 {
                    let a = addr::<H>((i + off) % (PAGES - 1));
                    // The other task's ranges overlap ours: it may unmap what we just
                    // mapped before we touch it, so a failed touch is no error.
                    let r = h
                        .unmap(sp.mm, a, 2 * pg)
                        .and_then(|()| h.map(sp.mm, a, 2 * pg));
                    if let Err(e) = r {
                        err.set(e.into());
                        return;
                    }
                    let _ = h.touch(sp.mm, a, true);
                }
            }
        };
        let (t1, t2) = (t(0), t(1));
        h.run_concurrently(&[&t1, &t2]);
        err.check()?;
    }
    let l = rec.log.lock();
    ensure!(
        l.breaches == 0,
        "{} ends without a matching start (range or event differ)",
        l.breaches
    );
    ensure!(
        l.open.is_empty(),
        "{} starts without their end",
        l.open.len()
    );
    Ok(())
}

fn c08_non_blocking<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::NonBlockingUnmap)?;
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let bugs = h.bugs_reported();
    let sleeps = h.sleep_violations();
    // Where the mode's list subscribers cannot refuse (Linux WARNs when a notifier with
    // an end fails its start), an interval subscriber refuses instead.
    let list_refuses = S::lacks(Feature::ListRefusal).is_none();
    // Registered first, so called after the refuser (the list is newest first) in a
    // core; whatever the order, the rule is the same.
    let before = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    before.as_ref().register(h, sp.mm)?;
    let refuser = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    refuser.as_ref().register(h, sp.mm)?;
    let after = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
    after.as_ref().register(h, sp.mm)?;
    let kvm = pin!(sub::<H, S, _>(Kvm::new(h, sp.mm, cfg.twin)));
    kvm.as_ref().register(h, sp.mm)?;
    let ivs = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    ivs.as_ref().insert(h, sp.mm, BASE, PAGES * pg)?;
    let ivref = pin!(ivsub::<H, S, _>(IvRefuser::default()));
    ivref.as_ref().insert(h, sp.mm, BASE, PAGES * pg)?;

    // Blockable invalidations first: the real OOM reaper (below) ends the process.
    // The shadow MMU's ordinary use reports no bug.
    for i in 1..PAGES {
        kvm.run(addr::<H>(i), true)?;
    }
    h.unmap(sp.mm, addr::<H>(1), pg)?;
    ensure!(
        h.bugs_reported() == bugs,
        "the core reported {} subscriber bugs (refusal while blockable)",
        h.bugs_reported() - bugs
    );
    // A refusal while blockable is reported by the core, and the subscriber still gets
    // its end (a core's own check: Linux WARNs instead).
    if list_refuses {
        refuser.refuse_always.store(true, Ordering::Relaxed);
        h.unmap(sp.mm, addr::<H>(2), pg)?;
        refuser.refuse_always.store(false, Ordering::Relaxed);
        ensure!(
            h.bugs_reported() > bugs,
            "a refusal while blockable was not reported"
        );
    }

    // Non-blockable: refused, nothing changes.
    if list_refuses {
        refuser.refuse_non_blocking.store(true, Ordering::Relaxed);
    } else {
        ivref.refuse.store(true, Ordering::Relaxed);
    }
    // Non-blockable starts the list refuser accepted, from its (bounded) log: the
    // blockable ones the reap's preparation may make (the real reaper's kills the
    // process) do not count.
    let nb_starts = |r: &Recorder<H::P>| {
        let l = r.log.lock();
        let n = l
            .seen
            .iter()
            .filter(|s| matches!(s, Seen::Start(r) if !r.blockable))
            .count();
        (n, l.seen.is_full())
    };
    let ivref_seen = ivref.accepted.load(Ordering::Relaxed);
    let seq = ivs.interval().read_begin()?;
    let r = h.reap(sp.mm, addr::<H>(0), pg);
    ensure!(
        r == Err(crate::harness::HarnessError::Refused),
        "a refused non-blockable unmap returned {r:?}"
    );
    ensure!(
        h.lookup(sp.mm, addr::<H>(0)).is_some(),
        "page tables changed after a refusal"
    );
    for (name, s) in [("before", &before), ("after", &after)] {
        let l = s.log.lock();
        ensure!(
            l.open.is_empty(),
            "{name}: a start without its end after the unwind"
        );
        ensure!(l.breaches == 0, "{name}: end without start");
    }
    if list_refuses {
        let (n, full) = nb_starts(&refuser);
        ensure!(!full, "the refusing subscriber's log is full: cannot tell");
        ensure!(
            n == 0,
            "the refusing subscriber accepted {n} non-blockable start(s)"
        );
        ensure!(
            refuser.log.lock().open.is_empty(),
            "the refusing subscriber has a start without its end"
        );
    } else {
        ensure!(
            ivref.accepted.load(Ordering::Relaxed) == ivref_seen,
            "the refusing interval subscriber accepted a refused range"
        );
    }
    // The core rolls every interval's sequence forward when it unwinds. (Where an
    // interval refuses, whether the mirror was called before it depends on the order
    // of the platform's interval tree: not checked.)
    if list_refuses {
        let _g = ivs.pt.lock();
        ensure!(
            ivs.interval().read_retry(seq),
            "interval sequence not rolled forward by the unwind"
        );
    }
    // Not refused: goes through.
    refuser.refuse_non_blocking.store(false, Ordering::Relaxed);
    ivref.refuse.store(false, Ordering::Relaxed);
    let n = h.reap(sp.mm, addr::<H>(0), pg)?;
    ensure!(
        n == 1 && h.lookup(sp.mm, addr::<H>(0)).is_none(),
        "unrefused reap did not unmap"
    );
    ensure!(
        h.sleep_violations() == sleeps,
        "a callback slept in a non-blockable region"
    );
    Ok(())
}

/// An interval subscriber that refuses non-blockable ranges while `refuse` is set (the
/// refuser of C-08 in a mode whose list subscribers cannot refuse), counting the
/// invalidations it accepted.
#[derive(Default)]
struct IvRefuser {
    refuse: AtomicBool,
    accepted: AtomicUsize,
}

impl IvOps for IvRefuser {
    fn invalidate(&self, iv: &dyn Seq, range: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        if !range.blockable && self.refuse.load(Ordering::Relaxed) {
            return Err(WouldBlock);
        }
        iv.set_seq(cur_seq);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The primary MMU of the race cases: `cfg.rounds` operations over the pages, one in
/// `every` a migration (where the backend has it), the others an unmap and a remap;
/// then `stop`.
pub(crate) fn unmap_and_migrate<H: Harness>(
    h: &H,
    sp: &Space<'_, H>,
    cfg: &Config,
    every: usize,
    err: &FirstError<H::P>,
    stop: &AtomicBool,
) {
    let pg = page::<H>();
    for i in 0..cfg.rounds as usize {
        let a = addr::<H>(i % PAGES);
        let r = match i % every {
            0 if h.lacks(Cap::Migrate).is_none() => h.migrate(sp.mm, a).map(|_| ()),
            _ => h.unmap(sp.mm, a, pg).and_then(|()| h.map(sp.mm, a, pg)),
        };
        if let Err(e) = r {
            err.set(e.into());
            break;
        }
        h.yield_now();
    }
    stop.store(true, Ordering::Relaxed);
}

fn c09_no_stale<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> CaseResult {
    need(h, Cap::Concurrency)?;
    let sp = Space::with_pages(h, PAGES)?;
    let kvm = pin!(sub::<H, S, _>(Kvm::new(h, sp.mm, cfg.twin)));
    kvm.as_ref().register(h, sp.mm)?;
    let exp = pin!(sub::<H, S, _>(Exporter::new(h, sp.mm, false, cfg.twin)));
    exp.as_ref().register(h, sp.mm)?;
    let dev = pin!(sub::<H, S, _>(DeviceTlb::new(h, sp.mm, cfg.twin)));
    dev.as_ref().register(h, sp.mm)?;
    let mir = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, cfg.twin)));
    mir.as_ref().insert(h, sp.mm, BASE, PAGES * page::<H>())?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    // The secondary MMUs' loops yield once a round: a kernel that does not preempt
    // (Hermit) would otherwise starve a task sharing their CPU once every translation
    // is cached. `pages` is how many of the first pages they use.
    let vcpu = |pages: usize, writes: usize| {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            match kvm.run(addr::<H>(i % pages), i % writes == 0) {
                Ok(_) | Err(FaultError::Primary(_)) => {}
                Err(e) => {
                    err.set(e.into());
                    return;
                }
            }
            i += 1;
            if i % pages == 0 {
                h.yield_now();
            }
        }
    };
    let device = |pages: usize| {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            dev.run(addr::<H>((3 * i) % pages), i % 2 == 0);
            i += 1;
            if i % pages == 0 {
                h.yield_now();
            }
        }
    };
    // Part 1: pages unmapped, remapped and migrated (frames freed).
    let primary = || unmap_and_migrate(h, &sp, cfg, 3, &err, &stop);
    let remote = || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let imp = i % IMPORTERS;
            let a = addr::<H>((i / 2) % PAGES);
            if exp.remote_access(imp, a).is_none() {
                let _ = exp.request_map(imp, a);
            }
            i += 1;
            if i % (2 * PAGES) == 0 {
                h.yield_now();
            }
        }
    };
    // A second vCPU touches only pages whose invalidation is in flight (their primary
    // entries may be changing right now) and never faults: a shadow MMU that still maps
    // them there (one that zaps only at `end`) is caught in nearly every run rather than
    // when the first vCPU, mostly waiting in its faults' windows, happens to use that
    // page at that moment. A correct shadow MMU zapped them at `start` and misses.
    let in_flight_vcpu = || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(a) = (0..PAGES)
                .map(addr::<H>)
                .find(|&a| kvm.window.in_flight::<H>(a))
            {
                let _ = kvm.access_for(a, false);
            }
            h.yield_now();
        }
    };
    let (vcpu1, device1) = (|| vcpu(PAGES, 3), || device(PAGES));
    // Faults wait in their race windows for an invalidation of their page (issue 14):
    // a consumer that ignores one installs a stale translation in every run.
    let windows = [&kvm.window, &exp.window, &mir.window];
    windows.iter().for_each(|w| w.open(true));
    h.run_concurrently(&[&primary, &vcpu1, &in_flight_vcpu, &remote, &device1]);
    err.check()?;
    // Part 2: protection changes that keep the frames (mprotect, fork's copy-on-write
    // and the breaks of two vCPUs' writes), where only the second oracle sees a stale
    // use; and, where the backend has it, a non-blockable unmap of the last page (which
    // the secondary MMUs do not use) that subscribers may refuse (C-08) while a
    // copy-on-write break is in flight.
    let protect = h.lacks(Cap::Protect).is_none();
    let cow = h.lacks(Cap::Cow).is_none();
    // The real OOM reaper would end the address space's process: not here.
    let reap = h.lacks(Cap::NonBlockingUnmap).is_none() && !h.reap_kills();
    let children: SpinLock<H::P, ArrayVec<Mm, FORKS>> = SpinLock::new(ArrayVec::new());
    // Each fork first maps a fresh page below the others (so that the fork copies it
    // first), which a vCPU and the device fault in for writing while the fork runs: the
    // fork must write-protect a page faulted in during it inside its invalidation
    // (issue 13, item 9).
    let fresh = AtomicUsize::new(0);
    let fresh_addr = |k: usize| BASE - (k + 1) * page::<H>();
    if protect || cow {
        stop.store(false, Ordering::Relaxed);
        let pg = page::<H>();
        let used = PAGES - 1;
        let primary = || {
            for i in 0..cfg.rounds as usize {
                let a = addr::<H>(i % used);
                let r = if protect && (!cow || i % 4 != 0) {
                    h.protect(sp.mm, a, pg, false).and_then(|()| {
                        h.yield_now();
                        h.protect(sp.mm, a, pg, true)
                    })
                } else if children.lock().is_full() {
                    Ok(())
                } else {
                    let f = fresh_addr(children.lock().len());
                    h.map(sp.mm, f, pg).and_then(|()| {
                        fresh.store(f, Ordering::Relaxed);
                        h.fork(sp.mm).map(|c| children.lock().push(c))
                    })
                };
                if let Err(e) = r {
                    err.set(e.into());
                    break;
                }
                h.yield_now();
            }
            stop.store(true, Ordering::Relaxed);
        };
        let reaper = || {
            while reap && !stop.load(Ordering::Relaxed) {
                match h.reap(sp.mm, addr::<H>(used), pg) {
                    Ok(_) | Err(crate::harness::HarnessError::Refused) => {}
                    Err(e) => {
                        err.set(e.into());
                        return;
                    }
                }
                h.yield_now();
            }
        };
        // Two device threads share the mirror's page table.
        let mirror = |stride: usize| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = addr::<H>((stride * i) % used);
                match mir.run_for(mir.interval(), a, i % 2 == 0) {
                    Ok(_) | Err(FaultError::Primary(_)) => {}
                    Err(e) => {
                        err.set(e.into());
                        return;
                    }
                }
                i += 1;
                if i % used == 0 {
                    h.yield_now();
                }
            }
        };
        let newcomer = || {
            while !stop.load(Ordering::Relaxed) {
                let f = fresh.load(Ordering::Relaxed);
                if f != 0 {
                    match kvm.run(f, true) {
                        Ok(_) | Err(FaultError::Primary(_)) => {}
                        Err(e) => {
                            err.set(e.into());
                            return;
                        }
                    }
                    dev.run(f, true);
                }
                h.yield_now();
            }
        };
        let (vcpu2, vcpu3, device2) = (|| vcpu(used, 2), || vcpu(used, 7), || device(used));
        let (mirror1, mirror2) = (|| mirror(5), || mirror(3));
        // Eight tasks: as many as the Linux module runs at once (more would run in
        // groups, and a group without the primary would never see `stop`).
        h.run_concurrently(&[
            &primary, &vcpu2, &vcpu3, &device2, &mirror1, &mirror2, &reaper, &newcomer,
        ]);
    }
    // Part 3 (issue 14): the exporter alone with the primary, each map request held in
    // its window until an invalidation of its page has ended, and each grant used at
    // once: an exporter that grants while an invalidation is in flight and revokes only
    // at `end` (its twin) then hands out a stale grant in every run, not only in the
    // runs where a single yield happened to straddle an `end`. Last, so that the
    // phases above keep the schedules they had.
    exp.widen.store(true, Ordering::Relaxed);
    stop.store(false, Ordering::Relaxed);
    let primary = || unmap_and_migrate(h, &sp, cfg, 3, &err, &stop);
    let remote = || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let imp = i % IMPORTERS;
            let a = addr::<H>(i % PAGES);
            if exp.remote_access(imp, a).is_none() && exp.request_map(imp, a).is_ok() {
                // A node imports a page to use it.
                exp.remote_access(imp, a);
            }
            i += 1;
            if i % PAGES == 0 {
                h.yield_now();
            }
        }
    };
    h.run_concurrently(&[&primary, &remote]);
    exp.widen.store(false, Ordering::Relaxed);
    windows.iter().for_each(|w| w.open(false));
    // Afterwards, every cached translation is still checked once more.
    let pages = (0..PAGES).map(addr::<H>).chain((0..FORKS).map(fresh_addr));
    for a in pages {
        kvm.access_for(a, true);
        kvm.access(a);
        dev.access_for(a, true);
        dev.access(a);
        mir.access(a);
        for imp in 0..IMPORTERS {
            exp.remote_access(imp, a);
        }
    }
    // Out of the lock first: teardown may sleep.
    let kids = core::mem::take(&mut *children.lock());
    for c in kids {
        h.teardown(c);
        h.destroy_mm(c);
    }
    err.check()?;
    oracles("the shadow MMU", &kvm.violations, &kvm.stale)?;
    oracles("remote importers", &exp.violations, &exp.stale)?;
    oracles("the device TLB", &dev.violations, &dev.stale)?;
    oracles("the interval mirror", &mir.violations, &mir.stale)?;
    mir.as_ref().remove()?;
    let mut note = crate::Msg::new();
    if let Some(r) = h.translation_oracle() {
        let _ = write!(note, "translation oracle not applicable: {r}");
    }
    if !(protect || cow) {
        let _ = write!(
            note,
            "{}protection changes not on this backend",
            if note.is_empty() { "" } else { "; " }
        );
    }
    Ok((!note.is_empty()).then_some(note))
}

fn c10_page_lifetime<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    // A device TLB flushed only through invalidate_secondary_tlbs.
    let dev = pin!(sub::<H, S, _>(DeviceTlb::new(h, sp.mm, cfg.twin)));
    dev.as_ref().register(h, sp.mm)?;
    for i in 0..PAGES {
        ensure!(
            dev.fill(addr::<H>(i)).is_some(),
            "device walk found no entry"
        );
    }
    h.unmap(sp.mm, addr::<H>(0), 2 * pg)?;
    if h.lacks(Cap::Migrate).is_none() {
        h.migrate(sp.mm, addr::<H>(2))?;
    }
    ensure!(
        dev.flushes.load(Ordering::Relaxed) > 0,
        "invalidate_secondary_tlbs never called"
    );
    for i in 0..PAGES {
        dev.access(addr::<H>(i));
    }
    let v = dev.violations.load(Ordering::Relaxed);
    ensure!(v == 0, "the device TLB reached {v} freed pages");
    oracles("the device TLB", &dev.violations, &dev.stale)?;
    // An exporter that pins the pages it exports may revoke after `end`.
    if h.lacks(Cap::FrameRefs).is_none() {
        let exp = pin!(sub::<H, S, _>(Exporter::new(h, sp.mm, true, None)));
        exp.as_ref().register(h, sp.mm)?;
        for i in 3..PAGES {
            exp.request_map(0, addr::<H>(i))?;
        }
        for i in 3..PAGES {
            h.unmap(sp.mm, addr::<H>(i), pg)?;
            exp.remote_access(0, addr::<H>(i));
        }
        let v = exp.violations.load(Ordering::Relaxed);
        ensure!(
            v == 0,
            "a pinning exporter that flushes after end reached {v} freed pages"
        );
        oracles("a pinning exporter", &exp.violations, &exp.stale)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Interval subscribers
// ---------------------------------------------------------------------------------

fn c11_overlap_only<H: Harness, S: Notifiers<H>>(h: &H, _cfg: &Config) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    // Intervals of two pages at 0, 2, 4, 6, and one over everything.
    let m0 = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    let m1 = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    let m2 = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    let m3 = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    let all = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    let ms = [m0.as_ref(), m1.as_ref(), m2.as_ref(), m3.as_ref()];
    for (i, m) in ms.iter().enumerate() {
        m.insert(h, sp.mm, addr::<H>(2 * i), 2 * pg)?;
    }
    all.as_ref().insert(h, sp.mm, BASE, PAGES * pg)?;
    // Unmap pages 3 and 4: overlaps intervals 1 and 2 only.
    h.unmap(sp.mm, addr::<H>(3), 2 * pg)?;
    let got: [u32; 4] = core::array::from_fn(|i| ms[i].invalidations.load(Ordering::Relaxed));
    ensure!(
        got == [0, 1, 1, 0],
        "calls per interval {got:?}, expected [0, 1, 1, 0]"
    );
    ensure!(
        all.invalidations.load(Ordering::Relaxed) == 1,
        "covering interval not called once"
    );
    for m in ms {
        m.remove()?;
    }
    all.as_ref().remove()?;
    Ok(())
}

fn c12_sequence<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let m = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, cfg.twin)));
    m.as_ref().insert(h, sp.mm, BASE, PAGES * pg)?;
    // Sequential: an invalidation between read_begin and read_retry is seen; one
    // outside the interval is not.
    let seq = m.interval().read_begin()?;
    {
        let _g = m.pt.lock();
        ensure!(
            !m.interval().read_retry(seq),
            "read_retry true with no invalidation"
        );
    }
    let other = Space::with_pages(h, 1)?;
    h.unmap(other.mm, addr::<H>(0), pg)?;
    h.unmap(sp.mm, addr::<H>(0), pg)?;
    {
        let _g = m.pt.lock();
        ensure!(
            m.interval().read_retry(seq),
            "read_retry false after an invalidation"
        );
    }
    h.map(sp.mm, addr::<H>(0), pg)?;
    // Concurrent: faults through the sequence protocol against unmaps and migrations,
    // each fault's first attempt waiting in its race window (issue 14).
    if h.lacks(Cap::Concurrency).is_none() {
        m.window.open(true);
        let err = FirstError::<H::P>::new();
        let stop = AtomicBool::new(false);
        let primary = || unmap_and_migrate(h, &sp, cfg, 2, &err, &stop);
        let device = || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match m.run(m.interval(), addr::<H>(i % PAGES)) {
                    Ok(_) | Err(FaultError::Primary(_)) => {}
                    Err(e) => {
                        err.set(e.into());
                        return;
                    }
                }
                i += 1;
                // Once a round (see C-09).
                if i % PAGES == 0 {
                    h.yield_now();
                }
            }
        };
        h.run_concurrently(&[&primary, &device]);
        m.window.open(false);
        err.check()?;
    }
    for i in 0..PAGES {
        m.access(addr::<H>(i));
    }
    let v = m.violations.load(Ordering::Relaxed);
    ensure!(v == 0, "the mirror reached {v} freed pages");
    oracles("the mirror", &m.violations, &m.stale)?;
    m.as_ref().remove()?;
    Ok(())
}

fn c13_deferred<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    // The first insertion (outside any invalidation): later ones never wait.
    let anchor = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
    anchor.as_ref().insert(h, sp.mm, BASE, pg)?;
    if direct::<H, S>(h) {
        let a = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
        a.as_ref().insert(h, sp.mm, BASE, PAGES * pg)?;
        let inv = sp
            .asp()
            .invalidate_range_start(Range::new(BASE, BASE + pg, Event::Unmap))?;
        // Inserted while in flight: deferred; its reads must wait or retry.
        let b = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
        b.as_ref().insert(h, sp.mm, BASE, PAGES * pg)?;
        // Inserted and removed while in flight: never called.
        let c = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
        c.as_ref().insert(h, sp.mm, BASE, pg)?;
        c.as_ref().remove()?;
        inv.end();
        h.unmap(sp.mm, addr::<H>(1), pg)?;
        ensure!(
            b.invalidations.load(Ordering::Relaxed) == 1,
            "deferred insert not applied at the end"
        );
        ensure!(
            c.invalidations.load(Ordering::Relaxed) == 0,
            "removed-while-deferred interval called"
        );
        a.as_ref().remove()?;
        b.as_ref().remove()?;
    }
    if h.lacks(Cap::Concurrency).is_none() {
        // Insert/remove churn against invalidations: never livelocks, and after remove
        // returns the interval is never called again.
        let err = FirstError::<H::P>::new();
        let stop = AtomicBool::new(false);
        let primary = || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = addr::<H>(i % PAGES);
                if let Err(e) = h.unmap(sp.mm, a, pg).and_then(|()| h.map(sp.mm, a, pg)) {
                    err.set(e.into());
                    return;
                }
                i += 1;
            }
        };
        let churn = || {
            for i in 0..cfg.rounds.max(8) as usize / 4 {
                let m = pin!(ivsub::<H, S, _>(Mirror::new(h, sp.mm, None)));
                let a = addr::<H>(i % PAGES);
                if let Err(e) = m.as_ref().insert(h, sp.mm, a, 2 * pg) {
                    err.set(e.into());
                    break;
                }
                h.yield_now();
                if let Err(e) = m.as_ref().remove() {
                    err.set(e.into());
                    break;
                }
                m.gone.store(true, Ordering::Relaxed);
                for _ in 0..3 {
                    h.yield_now();
                }
                if m.violations.load(Ordering::Relaxed) != 0 {
                    err.set(fail(format_args!("interval called after remove returned")));
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
        };
        h.run_concurrently(&[&primary, &churn]);
        err.check()?;
    }
    anchor.as_ref().remove()?;
    Ok(())
}

fn c14_two_pass<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need_mode::<H, S>(Feature::TwoPass)?;
    let pg = page::<H>();
    let sp = Space::with_pages(h, PAGES)?;
    let clock = AtomicU32::new(0);
    let d0 = pin!(ivsub::<H, S, _>(TwoPass::new(h, sp.mm, &clock, cfg.twin)));
    let d1 = pin!(ivsub::<H, S, _>(TwoPass::new(h, sp.mm, &clock, cfg.twin)));
    let d2 = pin!(ivsub::<H, S, _>(TwoPass::new(h, sp.mm, &clock, cfg.twin)));
    let ds = [d0.as_ref(), d1.as_ref(), d2.as_ref()];
    for d in ds {
        d.insert(h, sp.mm, BASE, PAGES * pg)?;
    }
    for d in ds {
        for i in 0..PAGES {
            d.fault(d.interval(), addr::<H>(i))?;
        }
    }
    h.unmap(sp.mm, addr::<H>(0), pg)?;
    let last_start = ds
        .iter()
        .map(|d| d.started_at.load(Ordering::Relaxed))
        .max();
    let first_finish = ds
        .iter()
        .map(|d| d.finished_at.load(Ordering::Relaxed))
        .min();
    ensure!(
        last_start < first_finish,
        "a finish ran before every start: starts end at {last_start:?}, finishes begin at {first_finish:?}"
    );
    // After `end` returns every device has completed its invalidation: the freed page
    // is out of every device page table.
    for d in ds {
        for i in 0..PAGES {
            d.access(addr::<H>(i));
        }
        ensure!(
            d.violations.load(Ordering::Relaxed) == 0,
            "a two-pass device reached a freed page after end"
        );
        oracles("a two-pass device", &d.violations, &d.stale)?;
    }
    for d in ds {
        d.remove()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Ageing
// ---------------------------------------------------------------------------------

fn c15_young<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    let pg = page::<H>();
    if direct::<H, S>(h) {
        let sp = Space::with_pages(h, 2)?;
        let r0 = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
        let r1 = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
        let r2 = pin!(sub::<H, S, _>(Recorder::<H::P>::default()));
        let r = [r0.into_ref(), r1.into_ref(), r2.into_ref()];
        for s in &r {
            s.register(h, sp.mm)?;
        }
        r[1].young.store(true, Ordering::Relaxed);
        let calls = |r: &[RecRef<'_, H, S>; 3]| -> u32 {
            r.iter()
                .map(|s| s.young_calls.load(Ordering::Relaxed))
                .sum()
        };
        let c0 = calls(&r);
        ensure!(
            sp.asp().clear_flush_young(BASE, BASE + pg)?,
            "clear_flush_young: OR lost a true"
        );
        ensure!(
            calls(&r) - c0 == 3,
            "clear_flush_young did not call every subscriber"
        );
        let c1 = calls(&r);
        ensure!(
            sp.asp().clear_young(BASE, BASE + pg)?,
            "clear_young: OR lost a true"
        );
        ensure!(
            calls(&r) - c1 == 3,
            "clear_young did not call every subscriber"
        );
        // test_young stops at the first true: with every one young, one call.
        for s in &r {
            s.young.store(true, Ordering::Relaxed);
        }
        let c2 = calls(&r);
        ensure!(
            sp.asp().test_young(BASE)?,
            "test_young false with young subscribers"
        );
        ensure!(
            calls(&r) - c2 == 1,
            "test_young went on after the first true"
        );
        for s in &r {
            s.young.store(false, Ordering::Relaxed);
        }
        ensure!(
            !sp.asp().clear_young(BASE, BASE + pg)?,
            "clear_young true with no young one"
        );
    }
    if h.lacks(Cap::Reclaim).is_none() {
        // Through reclaim: the page the shadow MMU keeps using survives, the idle one
        // goes.
        let sp = Space::with_pages(h, 2)?;
        let kvm = pin!(sub::<H, S, _>(Kvm::new(h, sp.mm, cfg.twin)));
        kvm.as_ref().register(h, sp.mm)?;
        kvm.run(addr::<H>(0), false)?;
        for _ in 0..4 {
            kvm.run(addr::<H>(0), false)?;
            h.reclaim(sp.mm, BASE, 2 * pg)?;
        }
        ensure!(
            h.lookup(sp.mm, addr::<H>(0)).is_some(),
            "the page a secondary MMU uses was reclaimed"
        );
        ensure!(
            h.lookup(sp.mm, addr::<H>(1)).is_none(),
            "the idle page was never reclaimed"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------

/// A subscriber that tries to unregister itself, and to remove an interval
/// subscriber, from inside its own callback.
///
/// # Invariants
///
/// `me` and `iv` are null, or point to pinned subscribers that outlive every
/// invalidation during which they are set (the case clears them before either goes).
struct Reentrant<P: Platform> {
    me: SpinLock<P, *const Subscriber<Reentrant<P>, P>>,
    iv: SpinLock<P, *const CoreInterval<IvCounter, P>>,
    got: SpinLock<P, [Option<Result<(), Error>>; 2]>,
}

// SAFETY: the raw pointers are only dereferenced under the invariant above; the
// subscribers they point to are `Sync`.
unsafe impl<P: Platform> Sync for Reentrant<P> {}

impl<P: Platform> SubscriberOps for Reentrant<P> {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), notifier_core::WouldBlock> {
        let me = *self.me.lock();
        // SAFETY: null or pinned and alive (type invariant).
        if let Some(me) = unsafe { me.as_ref() } {
            // SAFETY: the subscriber is pinned (type invariant).
            let r = unsafe { core::pin::Pin::new_unchecked(me) }.unregister();
            self.got.lock()[0] = Some(r);
        }
        let iv = *self.iv.lock();
        // SAFETY: as above.
        if let Some(iv) = unsafe { iv.as_ref() } {
            // SAFETY: as above.
            let r = unsafe { core::pin::Pin::new_unchecked(iv) }.remove();
            self.got.lock()[1] = Some(r);
        }
        Ok(())
    }
}

fn c16_errors<H: Harness, S: Notifiers<H>>(h: &H, _cfg: &Config) -> Outcome {
    need_mode::<H, S>(Feature::MisuseErrors)?;
    let pg = page::<H>();
    let sp = Space::with_pages(h, 2)?;
    let rec = pin!(Subscriber::<_, H::P>::new(Recorder::<H::P>::default()));
    rec.as_ref().register(sp.asp())?;
    let m = pin!(CoreInterval::new(Mirror::new(h, sp.mm, None)));
    m.as_ref().insert(sp.asp(), BASE, 2 * pg)?;
    let before = (
        rec.log.lock().total,
        m.invalidations.load(Ordering::Relaxed),
    );
    if h.lacks(Cap::DirectCalls).is_none() {
        let asp = sp.asp();
        let bad: [(Range, Error); 4] = [
            (Range::new(BASE, BASE, Event::Unmap), Error::EmptyRange),
            (
                Range::new(BASE + pg, BASE, Event::Unmap),
                Error::InvertedRange,
            ),
            (Range::new(BASE, usize::MAX, Event::Unmap), Error::Overflow),
            (
                Range::new(BASE + 1, BASE + pg, Event::Unmap),
                Error::Unaligned,
            ),
        ];
        for (r, want) in bad {
            if want == Error::Unaligned && !<H::P as Platform>::REQUIRE_ALIGNMENT {
                continue;
            }
            if want == Error::Overflow && <H::P as Platform>::ADDRESS_LIMIT == usize::MAX {
                // usize::MAX itself is in range there: use an unaligned end instead.
                continue;
            }
            let got = asp.invalidate_range_start(r).map(|i| i.end());
            ensure!(got == Err(want), "{r:?}: {got:?}, expected {want:?}");
        }
        let got = asp.invalidate_secondary_tlbs(BASE + pg, BASE);
        ensure!(
            got == Err(Error::InvertedRange),
            "secondary_tlbs inverted: {got:?}"
        );
        let got = asp.clear_young(BASE, BASE);
        ensure!(got == Err(Error::EmptyRange), "clear_young empty: {got:?}");
        let got = asp.invalidate_page(BASE + 1);
        ensure!(
            got == Err(Error::Unaligned) || !<H::P as Platform>::REQUIRE_ALIGNMENT,
            "invalidate_page unaligned: {got:?}"
        );
    }
    // Interval of length zero, overflowing interval, unknown handles.
    let z = pin!(CoreInterval::new(Mirror::new(h, sp.mm, None)));
    let got = z.as_ref().insert(sp.asp(), BASE, 0);
    ensure!(
        got == Err(Error::ZeroLength),
        "zero-length interval: {got:?}"
    );
    let got = z.as_ref().insert(sp.asp(), usize::MAX - pg + 1, 2 * pg);
    ensure!(got == Err(Error::Overflow), "overflowing interval: {got:?}");
    let got = z.as_ref().remove();
    ensure!(
        got == Err(Error::NotRegistered),
        "remove of an unknown interval: {got:?}"
    );
    let got = z.interval().read_begin();
    ensure!(
        got == Err(Error::NotRegistered),
        "read_begin of an unknown interval: {got:?}"
    );
    let u = pin!(Subscriber::<_, H::P>::new(Recorder::<H::P>::default()));
    let got = u.as_ref().unregister();
    ensure!(
        got == Err(Error::NotRegistered),
        "unregister of an unknown subscriber: {got:?}"
    );
    let got = m.as_ref().insert(sp.asp(), BASE, pg);
    ensure!(
        got == Err(Error::AlreadyRegistered),
        "double insert: {got:?}"
    );
    // Unregister from inside its own callback: refused, and it stays registered.
    let other = pin!(CoreInterval::new(IvCounter(
        AtomicU32::new(0),
        AtomicU32::new(0)
    )));
    other.as_ref().insert(sp.asp(), BASE + 64 * pg, pg)?;
    let re = pin!(Subscriber::<_, H::P>::new(Reentrant::<H::P> {
        me: SpinLock::new(core::ptr::null()),
        iv: SpinLock::new(core::ptr::null()),
        got: SpinLock::new([None, None]),
    }));
    let re = re.into_ref();
    let other = other.into_ref();
    re.register(sp.asp())?;
    // INVARIANT: both are pinned here and outlive the unmap; cleared right after.
    *re.me.lock() = &*re;
    *re.iv.lock() = &*other;
    h.unmap(sp.mm, addr::<H>(0), pg)?;
    *re.me.lock() = core::ptr::null();
    *re.iv.lock() = core::ptr::null();
    let got = *re.got.lock();
    ensure!(
        got[0] == Some(Err(Error::InCallback)),
        "unregister from inside a callback: {:?}",
        got[0]
    );
    ensure!(
        got[1] == Some(Err(Error::InCallback)),
        "remove from inside a callback: {:?}",
        got[1]
    );
    ensure!(
        re.is_registered(),
        "refused unregister dropped the subscriber"
    );
    ensure!(
        other.interval().is_inserted(),
        "refused remove dropped the interval"
    );
    // The lists are unchanged: the next invalidation reaches both, once each.
    h.map(sp.mm, addr::<H>(0), pg)?;
    h.touch(sp.mm, addr::<H>(0), true)?;
    let mid = (
        rec.log.lock().total,
        m.invalidations.load(Ordering::Relaxed),
    );
    h.unmap(sp.mm, addr::<H>(1), pg)?;
    let after = (
        rec.log.lock().total,
        m.invalidations.load(Ordering::Relaxed),
    );
    ensure!(
        after.0 >= mid.0 + 2 && after.1 == mid.1 + 1 && mid.0 >= before.0,
        "after the refusals the lists changed: recorder {before:?} -> {mid:?} -> {after:?}"
    );
    re.unregister()?;
    other.remove()?;
    m.as_ref().remove()?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Scale
// ---------------------------------------------------------------------------------

/// Counts invalidations; used by the thousands.
struct Counter(AtomicU32);

impl SubscriberOps for Counter {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), notifier_core::WouldBlock> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Counts invalidations (`.0`); `.1` is what the reference model expects.
struct IvCounter(AtomicU32, AtomicU32);

impl IvOps for IvCounter {
    fn invalidate(
        &self,
        iv: &dyn Seq,
        _r: &Range,
        cur_seq: u64,
    ) -> Result<(), notifier_core::WouldBlock> {
        iv.set_seq(cur_seq);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A small deterministic generator (xorshift) for the random ranges.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn c17_many<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::DirectCalls)?;
    need_mode::<H, S>(Feature::DirectCalls)?;
    let Some((base, arena_len)) = h.arena() else {
        return Err(Fail::NotApplicable("no arena for thousands of subscribers"));
    };
    let base = base.as_ptr();
    let pg = page::<H>();
    let nl = cfg.many_list;
    let ni = cfg.many_intervals;
    let ls = core::mem::size_of::<Subscriber<Counter, H::P>>();
    let is = core::mem::size_of::<CoreInterval<IvCounter, H::P>>();
    let la = core::mem::align_of::<Subscriber<Counter, H::P>>();
    let ia = core::mem::align_of::<CoreInterval<IvCounter, H::P>>();
    let start_l = base.align_offset(la);
    let lists_end = start_l + nl * ls;
    let start_i = lists_end + base.wrapping_add(lists_end).align_offset(ia);
    if start_i + ni * is > arena_len {
        return Err(Fail::NotApplicable(
            "arena too small for the configured scale",
        ));
    }
    let sp = Space::new(h)?;
    // SAFETY: both arrays lie inside the arena (checked above), suitably aligned, and
    // do not overlap; the arena is ours for the duration of the case. Every element is
    // written before use, pinned (never moved) and dropped in place before returning.
    let (lists, ivs) = unsafe {
        let l = base.add(start_l).cast::<Subscriber<Counter, H::P>>();
        let i = base.add(start_i).cast::<CoreInterval<IvCounter, H::P>>();
        for k in 0..nl {
            l.add(k).write(Subscriber::new(Counter(AtomicU32::new(0))));
        }
        for k in 0..ni {
            i.add(k).write(CoreInterval::new(IvCounter(
                AtomicU32::new(0),
                AtomicU32::new(0),
            )));
        }
        (
            core::slice::from_raw_parts(l, nl),
            core::slice::from_raw_parts(i, ni),
        )
    };
    let space_pages = 1usize << 16;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let run = || -> Outcome {
        for s in lists {
            // SAFETY: in the arena, never moved (see above).
            unsafe { core::pin::Pin::new_unchecked(s) }.register(sp.asp())?;
        }
        let mut r2 = Rng(0x1234_5678_9ABC_DEF1);
        for s in ivs {
            let st = (r2.next() as usize % space_pages) * pg;
            let len = (1 + r2.next() as usize % 64) * pg;
            // SAFETY: as above.
            unsafe { core::pin::Pin::new_unchecked(s) }.insert(sp.asp(), BASE + st, len)?;
        }
        Ok(())
    };
    let mut result = run();
    let rounds = cfg.rounds.max(16) as usize;
    let mut invalidations = 0u32;
    if result.is_ok() {
        for _ in 0..rounds {
            let st = (rng.next() as usize % space_pages) * pg;
            let len = (1 + rng.next() as usize % 256) * pg;
            match sp.asp().invalidate_range_start(Range::new(
                BASE + st,
                BASE + st + len,
                Event::Unmap,
            )) {
                Ok(inv) => inv.end(),
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
            invalidations += 1;
            // The reference model, per interval: calls so far = overlapping ranges.
            for s in ivs {
                let (a, b) = (s.interval().start(), s.interval().last());
                if a < BASE + st + len && b >= BASE + st {
                    s.1.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if result.is_ok() {
        for (k, s) in lists.iter().enumerate() {
            let got = s.0.load(Ordering::Relaxed);
            if got != invalidations {
                result = Err(fail(format_args!(
                    "list subscriber {k}: {got} calls, the model says {invalidations}"
                )));
                break;
            }
        }
    }
    if result.is_ok() {
        for (k, s) in ivs.iter().enumerate() {
            let (got, want) = (s.0.load(Ordering::Relaxed), s.1.load(Ordering::Relaxed));
            if got != want {
                result = Err(fail(format_args!(
                    "interval {k}: {got} calls, the model says {want}"
                )));
                break;
            }
        }
    }
    // SAFETY: every element was written above and is dropped once here (dropping
    // unregisters or removes it); nothing uses them afterwards.
    unsafe {
        for s in lists {
            core::ptr::drop_in_place(s as *const _ as *mut Subscriber<Counter, H::P>);
        }
        for s in ivs {
            core::ptr::drop_in_place(s as *const _ as *mut CoreInterval<IvCounter, H::P>);
        }
    }
    result
}

// ---------------------------------------------------------------------------------
// Page-keyed export (the seed's other design)
// ---------------------------------------------------------------------------------

type PxRef<'a, 'h, H> =
    core::pin::Pin<&'a notifier_core::export::Exporter<'h, PageExporter<'h, H>, <H as Harness>::P>>;

/// The platform's export registry, or why the export cases do not apply.
fn registry<H: Harness>(h: &H) -> Result<&notifier_core::export::ExportRegistry<H::P>, Fail> {
    h.export_registry().ok_or(Fail::NotApplicable(
        "no page-free hook for exporters on this platform",
    ))
}

/// The rmap-hooked twin hears about pages through address-space invalidations: register
/// its hook when that twin runs (the correct design needs no subscription).
fn rmap_hook_if_twin<H: Harness>(
    cfg: &Config,
    hook: core::pin::Pin<&Subscriber<RmapHook<'_, '_, H>, H::P>>,
    sp: &Space<'_, H>,
) -> Outcome {
    if cfg.twin == Some(crate::Twin::ExportHookedInRmap) {
        hook.register(sp.asp())?;
    }
    Ok(())
}

/// Reclaim `[BASE, BASE + pages)` until something was evicted (at most `passes`).
fn reclaim_some<H: Harness>(h: &H, mm: Mm, pages: usize, passes: usize) -> Result<usize, Fail> {
    let mut n = 0;
    for _ in 0..passes {
        n += h.reclaim(mm, BASE, pages * page::<H>())?;
        if n > 0 {
            break;
        }
    }
    Ok(n)
}

fn c18_export_not_freed<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::Reclaim)?;
    let reg = registry(h)?;
    need_mode::<H, S>(Feature::Export)?;
    let sp = Space::with_pages(h, PAGES)?;
    let ex = pin!(notifier_core::export::Exporter::new(
        reg,
        PageExporter::new(h, sp.mm, cfg.twin)
    ));
    let ex: PxRef<'_, '_, H> = ex.into_ref();
    let hook = pin!(Subscriber::<_, H::P>::new(RmapHook(ex.ops())));
    rmap_hook_if_twin(cfg, hook.as_ref(), &sp)?;
    for slot in 0..EXPORT_SLOTS.min(PAGES) {
        PageExporter::export(ex, slot, addr::<H>(slot))?;
        for imp in 0..IMPORTERS {
            ex.request_map(imp, slot)?;
        }
    }
    // While remote mappings exist, every frame they name is allocated; reclaim may
    // take the pages only through the exporter's revocation.
    let mut evicted = 0;
    for _ in 0..4 {
        evicted += h.reclaim(sp.mm, BASE, PAGES * page::<H>())?;
        for slot in 0..EXPORT_SLOTS {
            for imp in 0..IMPORTERS {
                ex.remote_access(imp, slot);
            }
        }
    }
    ensure!(
        evicted > 0,
        "reclaim evicted nothing: the case checked nothing"
    );
    ensure!(
        ex.revoked.load(Ordering::Relaxed) > 0,
        "pages were evicted without a revocation"
    );
    let v = ex.violations.load(Ordering::Relaxed);
    ensure!(v == 0, "importers reached {v} freed pages");
    Ok(())
}

fn c19_export_race<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::Reclaim)?;
    let reg = registry(h)?;
    need_mode::<H, S>(Feature::Export)?;
    let sp = Space::with_pages(h, PAGES)?;
    let ex = pin!(notifier_core::export::Exporter::new(
        reg,
        PageExporter::new(h, sp.mm, cfg.twin)
    ));
    let ex: PxRef<'_, '_, H> = ex.into_ref();
    let hook = pin!(Subscriber::<_, H::P>::new(RmapHook(ex.ops())));
    rmap_hook_if_twin(cfg, hook.as_ref(), &sp)?;
    // The thread's window, step by step: reclaim clears the primary entry and frees the
    // page; a map request arriving after the entry was cleared must be refused (or the
    // mapping revoked before the free).
    PageExporter::export(ex, 0, addr::<H>(0))?;
    ex.request_map(0, 0)?;
    reclaim_some(h, sp.mm, 1, 4)?;
    let _ = ex.request_map(1, 0);
    for imp in 0..IMPORTERS {
        ex.remote_access(imp, 0);
    }
    // And concurrently, if the backend can.
    if h.lacks(Cap::Concurrency).is_none() {
        let err = FirstError::<H::P>::new();
        let stop = AtomicBool::new(false);
        let primary = || {
            for i in 0..cfg.rounds as usize / 4 {
                let slot = i % 4;
                let a = addr::<H>(slot);
                if h.lookup(sp.mm, a).is_none() {
                    let _ = PageExporter::export(ex, slot, a);
                }
                if let Err(e) = h.reclaim(sp.mm, BASE, 4 * page::<H>()) {
                    err.set(e.into());
                    break;
                }
                h.yield_now();
            }
            stop.store(true, Ordering::Relaxed);
        };
        let remote = || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (imp, slot) = (i % IMPORTERS, (i / IMPORTERS) % 4);
                if ex.remote_access(imp, slot).is_none() {
                    let _ = ex.request_map(imp, slot);
                }
                i += 1;
            }
        };
        h.run_concurrently(&[&primary, &remote]);
        err.check()?;
    }
    for slot in 0..EXPORT_SLOTS {
        for imp in 0..IMPORTERS {
            ex.remote_access(imp, slot);
        }
    }
    let v = ex.violations.load(Ordering::Relaxed);
    ensure!(
        v == 0,
        "a remote node reached {v} freed pages (mapped after the entry was cleared)"
    );
    Ok(())
}

fn c20_export_unmapped_revoked<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::Reclaim)?;
    let reg = registry(h)?;
    need_mode::<H, S>(Feature::Export)?;
    let sp = Space::with_pages(h, PAGES)?;
    let ex = pin!(notifier_core::export::Exporter::new(
        reg,
        PageExporter::new(h, sp.mm, cfg.twin)
    ));
    let ex: PxRef<'_, '_, H> = ex.into_ref();
    let hook = pin!(Subscriber::<_, H::P>::new(RmapHook(ex.ops())));
    rmap_hook_if_twin(cfg, hook.as_ref(), &sp)?;
    // Exported, never mapped by any importer: still revoked when freed.
    for slot in 0..4 {
        PageExporter::export(ex, slot, addr::<H>(slot))?;
    }
    let evicted = reclaim_some(h, sp.mm, 4, 4)?;
    ensure!(evicted > 0, "reclaim evicted nothing");
    let gone = (0..4)
        .filter(|&i| h.lookup(sp.mm, addr::<H>(i)).is_none())
        .count();
    let revoked = ex.revoked.load(Ordering::Relaxed) as usize;
    ensure!(
        revoked >= gone,
        "{gone} exported pages evicted, only {revoked} revocations"
    );
    // A page no primary entry maps any more (munmapped; the exporter's reference
    // keeps it): the free path still revokes it.
    if cfg.twin.is_none() {
        let a = addr::<H>(5);
        let f = PageExporter::export(ex, 5, a)?;
        h.unmap(sp.mm, a, page::<H>())?;
        ensure!(
            h.frame_live(f),
            "an exported page was freed under its exporter"
        );
        let before = ex.revoked.load(Ordering::Relaxed);
        h.reclaim(sp.mm, BASE, PAGES * page::<H>())?;
        ensure!(
            ex.revoked.load(Ordering::Relaxed) > before,
            "an exported page that no primary entry maps was not revoked by reclaim"
        );
        ensure!(!h.frame_live(f), "the revoked, unmapped page was not freed");
    }
    Ok(())
}

fn c21_unexport_barrier<H: Harness, S: Notifiers<H>>(h: &H, cfg: &Config) -> Outcome {
    need(h, Cap::Reclaim)?;
    need(h, Cap::Concurrency)?;
    let reg = registry(h)?;
    need_mode::<H, S>(Feature::Export)?;
    let sp = Space::with_pages(h, PAGES)?;
    let err = FirstError::<H::P>::new();
    let stop = AtomicBool::new(false);
    let primary = || {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = h.reclaim(sp.mm, BASE, PAGES * page::<H>()) {
                err.set(e.into());
                return;
            }
            for i in 0..PAGES {
                let _ = h.touch(sp.mm, addr::<H>(i), false);
            }
        }
    };
    let exporter = || {
        for i in 0..cfg.rounds.max(8) as usize / 8 {
            let ex = pin!(notifier_core::export::Exporter::new(
                reg,
                PageExporter::new(h, sp.mm, None)
            ));
            let ex: PxRef<'_, '_, H> = ex.into_ref();
            let a = addr::<H>(i % PAGES);
            if PageExporter::export(ex, 0, a).is_err() {
                continue;
            }
            h.yield_now();
            PageExporter::unexport(ex, 0);
            ex.gone.store(true, Ordering::Relaxed);
            for _ in 0..3 {
                h.yield_now();
            }
            if ex.violations.load(Ordering::Relaxed) != 0 {
                err.set(fail(format_args!("revoke ran after unexport returned")));
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    };
    h.run_concurrently(&[&primary, &exporter]);
    err.check()
}
