//! Page-keyed export notifiers: the seed thread's other design, made to work.
//!
//! An *exporter* (XPMEM, GRU) hands physical pages to remote importers. The first
//! proposal hooked its "this page is going" call into the reverse-map walk; the thread
//! showed why that is wrong: a page whose primary entry is already gone is never visited
//! by the reverse map again, so a remote node that maps it after the entry was cleared
//! keeps it past its freeing. Tracking the *address space* (the rest of this crate)
//! closes that window; so does the fix the thread gives for the page-based model: call
//! the exporter **where reclaim is about to free the page** (Linux's shrink-list step),
//! whether or not a primary entry still maps it, and let the exporter hold its own
//! reference, so that revoking remote mappings right before the free is always in time.
//!
//! # The model
//!
//! * An [`ExportRegistry`] belongs to the platform (one per machine or per memory node).
//!   Its state is kept here, not in a page flag: an exporter embeds one pinned
//!   [`ExportedPage`] per page it exports (intrusive, so exporting allocates nothing),
//!   and [`Exporter::export`] links it into a fixed hash table keyed by frame.
//! * Importers map a page through the exporter, which calls
//!   [`ExportedPage::map_remote`] (refused once the page is dying) and
//!   [`ExportedPage::unmap_remote`] when the mapping goes.
//! * The platform calls [`ExportRegistry::before_free`] from its reclaim and free paths
//!   right before a page is freed: every exporter of that page gets
//!   [`ExportOps::revoke`], must revoke every remote mapping and drop its reference
//!   before returning, and from then on map requests for that page are refused. If a
//!   remote mapping is still counted afterwards, `before_free` says so and the page must
//!   not be freed.
//! * [`Exporter::unexport`] is a barrier: when it returns, `revoke` of that page is
//!   neither running nor will run. Dropping an exporter or an exported page is the same
//!   barrier for every page it concerns.
//!
//! # Lifetimes: the registry outlives everything that points into it
//!
//! An [`Exporter<'r, T, P>`](Exporter) borrows its registry for `'r`, and an
//! [`ExportedPage<'r, P>`](ExportedPage) is tied to the same `'r` (invariantly) by the
//! first [`export`](Exporter::export) that links it. The borrow checker therefore
//! refuses to drop or move a registry while an exporter, or a page that was exported
//! into it, still exists: the table's raw links and the pages' pointer back to their
//! registry can never dangle (C-22). A registry a kernel keeps for the machine's life is
//! a `static`, and `'r` is `'static`. Leaking an exporter or a page (`mem::forget` of a
//! pinned box) ends the borrow but also keeps the memory forever, so the table's links
//! to it stay valid; dropping the registry then unlinks such pages and reports
//! [`Bug::RegistryDroppedWithPages`].
//!
//! Readers of the table (the free path) run under the platform's sleepable RCU and take
//! no lock but each page's own; nothing on the free path allocates.
//!
//! ```compile_fail,E0505
//! use core::pin::pin;
//! use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
//! use notifier_core::std_platform::StdPlatform as P;
//!
//! struct Nop;
//! impl ExportOps<P> for Nop {
//!     fn revoke(&self, _page: &ExportedPage<P>, _pfn: u64) {}
//! }
//! let registry = ExportRegistry::<P>::new();
//! let xp = pin!(Exporter::new(&registry, Nop));
//! drop(registry); // error[E0505]: the exporter still borrows the registry
//! xp.as_ref().ops();
//! ```

use core::marker::{PhantomData, PhantomPinned};
use core::pin::Pin;
use core::ptr;

use crate::primitive::{AtomicPtr, AtomicU64, Ordering};
use crate::srcu::SleepableRcu;
use crate::sync::{SpinGuard, SpinLock};
use crate::{Bug, Error, Platform};

/// Buckets of the export table.
const BUCKETS: usize = if cfg!(loom) { 4 } else { 256 };

/// What an exporter does when one of its pages is about to be freed.
///
/// A safe trait on purpose: the registry's memory safety does not depend on what
/// `revoke` does. An exporter that leaves remote mappings counted is reported
/// ([`Bug::RemoteMapAfterRevoke`]) and `before_free` tells the platform not to free
/// the page; nothing unsafe trusts the callback's word.
pub trait ExportOps<P: Platform>: Sync {
    /// The page `pfn` is about to be freed by reclaim or a free path, mapped in a
    /// primary page table or not: revoke every remote mapping of it (each with
    /// [`ExportedPage::unmap_remote`]) and drop the exporter's own reference before
    /// returning. Called at most once per export, never after
    /// [`Exporter::unexport`] returned. Must not allocate. `unexport` from inside it is
    /// refused with [`Error::InCallback`]; dropping a page or an exporter of this
    /// registry from inside it would wait for the callback itself (a drop cannot
    /// refuse): don't.
    fn revoke(&self, page: &ExportedPage<'_, P>, pfn: u64);
}

/// Where an exported page is in its life, under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Never exported, or its registry was dropped: no reader can reach it.
    Idle,
    /// In the table; remote maps allowed.
    Exported,
    /// In the table; `before_free` has begun: remote maps are refused, `revoke` runs or
    /// ran.
    Dying,
    /// Taken out of the table, but a free path that found it before may still be
    /// walking it: it may be linked again (or its memory reused) only once a grace
    /// period of its registry that began after it left has ended (`cookie`).
    Leaving,
}

/// What a page's lock protects.
struct PageState {
    state: State,
    /// Remote mappings counted now.
    maps: u32,
    /// In `State::Leaving`: the grace-period ticket of `registry` that must have
    /// completed before the page may be reused (see [`ExportRegistry::passed`]).
    cookie: u64,
}

/// A link of the table. The pages' lifetime is erased in it: every linked page outlives
/// its link (the page borrows its registry, and its drop takes it out).
type Link<P> = AtomicPtr<ExportedPage<'static, P>>;

/// One page an exporter exported: embedded by the exporter, pinned while exported.
///
/// `'r` is the borrow of the registry (or registries) the page is exported into; it is
/// invariant, so a page can neither outlive that registry nor be exported into a
/// registry that lives shorter than the page.
///
/// # Invariants
///
/// - In `State::Exported` or `State::Dying` the page is linked, in bucket
///   `bucket(pfn)` of the registry `registry` points to, and `exporter` points to the
///   record of a live exporter of that registry. `next` is written under that
///   registry's lock and followed by readers under its RCU.
/// - In `State::Leaving`, `registry` is the registry whose table the page left and
///   `cookie` the grace period that must pass before the page is linked again or freed.
/// - `registry`, `pfn`, `exporter` and `next` change only with both the registry's lock
///   and the page's lock held, and only while the page is not reachable by a reader.
/// - Non-null `registry` points to a live registry: the page borrows it for `'r`.
pub struct ExportedPage<'r, P: Platform> {
    next: Link<P>,
    pfn: AtomicU64,
    registry: AtomicPtr<ExportRegistry<P>>,
    exporter: AtomicPtr<ExporterRecord<P>>,
    st: SpinLock<P, PageState>,
    _registry: PhantomData<fn(&'r ()) -> &'r ()>,
    _pin: PhantomPinned,
}

impl<P: Platform> ExportedPage<'_, P> {
    /// A page not exported yet.
    pub fn new() -> Self {
        ExportedPage {
            next: AtomicPtr::new(ptr::null_mut()),
            pfn: AtomicU64::new(0),
            registry: AtomicPtr::new(ptr::null_mut()),
            exporter: AtomicPtr::new(ptr::null_mut()),
            st: SpinLock::new_class(
                crate::LockClass::ExportPage,
                PageState {
                    state: State::Idle,
                    maps: 0,
                    cookie: 0,
                },
            ),
            _registry: PhantomData,
            _pin: PhantomPinned,
        }
    }

    /// The frame this page exports (meaningful while exported).
    pub fn pfn(&self) -> u64 {
        self.pfn.load(Ordering::Relaxed)
    }

    /// Whether the page is exported and not dying.
    pub fn is_exported(&self) -> bool {
        self.st.lock().state == State::Exported
    }

    /// Remote mappings counted now.
    pub fn remote_maps(&self) -> u32 {
        self.st.lock().maps
    }

    /// An importer maps the page: counted, unless the page is not exported or is
    /// already dying (then [`Error::Dead`]: the importer must not map it). Call it
    /// before the importer installs its mapping.
    ///
    /// Errors: [`Error::Dead`] as above; [`Error::Overflow`] if `u32::MAX` mappings are
    /// counted already (the count never wraps to a wrong answer).
    pub fn map_remote(&self) -> Result<(), Error> {
        let mut st = self.st.lock();
        if st.state != State::Exported {
            return Err(Error::Dead);
        }
        st.maps = st.maps.checked_add(1).ok_or(Error::Overflow)?;
        Ok(())
    }

    /// An importer's mapping of the page is gone (revoked or dropped).
    ///
    /// Errors: [`Error::NotRegistered`] if no remote mapping is counted.
    pub fn unmap_remote(&self) -> Result<(), Error> {
        let mut st = self.st.lock();
        st.maps = st.maps.checked_sub(1).ok_or(Error::NotRegistered)?;
        Ok(())
    }
}

impl<P: Platform> Default for ExportedPage<'_, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Platform> Drop for ExportedPage<'_, P> {
    fn drop(&mut self) {
        let reg = self.registry.load(Ordering::Relaxed);
        // SAFETY: non-null `registry` points to a registry the page borrows for `'r`
        // (type invariant), and `'r` outlives this drop.
        if let Some(reg) = unsafe { reg.as_ref() } {
            reg.forget_page(self);
        }
    }
}

/// What a page points to: the exporter's callback, type-erased. Immutable but for
/// `unlinked`, which is written and read only under the registry's lock.
///
/// It is the first field of a `#[repr(C)]` [`Exporter`], so a pointer to the record
/// taken from a reference to the whole exporter (as `export` does) is a pointer to the
/// exporter, with the right to read all of it: that is how `revoke` finds the ops with
/// no field written after construction. (The record once held a `Cell` with the ops'
/// address, set by every `export` under the lock and read by `before_free` without it:
/// a data race.)
struct ExporterRecord<P: Platform> {
    revoke: for<'a, 'b> unsafe fn(*const ExporterRecord<P>, &'a ExportedPage<'b, P>, u64),
    /// The latest grace-period ticket after which no free path can still be inside a
    /// `revoke` of this exporter for a page taken out of the table so far. Under the
    /// registry's lock.
    unlinked: AtomicU64,
}

/// An exporter: your [`ExportOps`] with the record the registry's pages point to.
/// Borrows its registry for `'r`; pinned while it has pages exported; dropping it
/// unexports every one of them and waits for `revoke` calls in flight.
///
/// # Invariants
///
/// `rec` is the first field (`repr(C)`). Pages whose `exporter` points here are linked
/// only in `registry`'s table, and the exporter's drop takes them all out and waits for
/// the grace period of `rec.unlinked` before the memory goes.
#[repr(C)]
pub struct Exporter<'r, T: ExportOps<P>, P: Platform> {
    rec: ExporterRecord<P>,
    registry: &'r ExportRegistry<P>,
    ops: T,
    _pin: PhantomPinned,
}

impl<'r, T: ExportOps<P>, P: Platform> Exporter<'r, T, P> {
    /// An exporter of pages in `registry`, with callbacks `ops`. The registry stays
    /// borrowed while the exporter exists.
    pub fn new(registry: &'r ExportRegistry<P>, ops: T) -> Self {
        Exporter {
            rec: ExporterRecord {
                revoke: Self::v_revoke,
                unlinked: AtomicU64::new(0),
            },
            registry,
            ops,
            _pin: PhantomPinned,
        }
    }

    /// # Safety
    ///
    /// `rec` was taken from a reference to a whole live `Exporter<'r, T, P>` (see
    /// `export`), which stays alive for the call.
    unsafe fn v_revoke(rec: *const ExporterRecord<P>, page: &ExportedPage<'_, P>, pfn: u64) {
        // SAFETY: the record is the exporter's first field (`repr(C)`), and `rec` carries
        // the provenance of a reference to the whole exporter (caller's contract); the
        // exporter is alive and only ever shared once pinned.
        let ex = unsafe { &*rec.cast::<Self>() };
        // Counted as a callback of the running task: a barrier called from inside it
        // (`unexport`, `synchronize`, registration) is refused instead of waiting for
        // this very call (C-16).
        let _mark = crate::task::CallbackMark::<P>::new();
        ex.ops.revoke(page, pfn)
    }

    /// The registry this exporter exports into.
    pub fn registry(&self) -> &'r ExportRegistry<P> {
        self.registry
    }

    /// The callbacks.
    pub fn ops(&self) -> &T {
        &self.ops
    }

    /// Export frame `pfn` through `page` (Linux's XPMEM would call this when a remote
    /// node asks for the page, with its own reference on it already taken). The page is
    /// tied to this exporter's registry for `'r`.
    ///
    /// Sleeps only if `page` was taken out of a table by a drop or an unexport that is
    /// still waiting for its grace period: it waits for that grace period too.
    ///
    /// Errors: [`Error::AlreadyRegistered`] if `page` is exported already (also after
    /// `before_free` revoked it: unexport it first).
    pub fn export(
        self: Pin<&Self>,
        page: Pin<&ExportedPage<'r, P>>,
        pfn: u64,
    ) -> Result<(), Error> {
        // The record pointer is taken from the whole pinned exporter (see
        // `ExporterRecord`): it stays valid until the exporter's drop took every page
        // naming it out of the table and waited for the readers.
        let rec = ptr::from_ref(self.get_ref()).cast::<ExporterRecord<P>>();
        self.registry.link(rec, page.get_ref(), pfn)
    }

    /// Stop exporting `page`: a barrier, like `unregister` — when it returns, `revoke`
    /// of that page is neither running nor will run. May sleep.
    ///
    /// Errors: [`Error::NotRegistered`] if the page is not in this exporter's registry
    /// (or is being unexported by another thread); [`Error::InCallback`] from inside a
    /// notifier or `revoke` callback and [`Error::InvalidationHeld`] while the task
    /// holds an invalidation: the barrier could wait for the caller itself (C-16).
    pub fn unexport(self: Pin<&Self>, page: Pin<&ExportedPage<'r, P>>) -> Result<(), Error> {
        crate::task::may_wait::<P>()?;
        self.registry.unlink(page.get_ref())
    }
}

impl<T: ExportOps<P>, P: Platform> core::ops::Deref for Exporter<'_, T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<T: ExportOps<P>, P: Platform> Drop for Exporter<'_, T, P> {
    fn drop(&mut self) {
        let me = ptr::from_ref(&*self).cast::<ExporterRecord<P>>();
        self.registry.unlink_exporter(me, &self.rec);
    }
}

/// The table of exported pages of one platform (one machine, one memory node).
///
/// ```
/// use core::pin::pin;
/// use core::sync::atomic::{AtomicUsize, Ordering};
/// use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
/// use notifier_core::std_platform::StdPlatform as P;
///
/// #[derive(Default)]
/// struct Xpmem { revoked: AtomicUsize }
/// impl ExportOps<P> for Xpmem {
///     fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
///         // Tell every importer to drop the page, then give back our reference.
///         while page.unmap_remote().is_ok() {}
///         self.revoked.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// // The registry first: the exporter and its pages borrow it, so they are declared
/// // after it and dropped before it (the compiler refuses the other order).
/// let registry = ExportRegistry::<P>::new();
/// let xp = pin!(Exporter::new(&registry, Xpmem::default()));
/// let page = pin!(ExportedPage::new());
/// xp.as_ref().export(page.as_ref(), 42).unwrap();
/// page.map_remote().unwrap(); // a remote node maps frame 42
/// // Reclaim is about to free frame 42 (mapped in a primary page table or not):
/// assert_eq!(registry.before_free(42), Ok(1));
/// assert_eq!(xp.revoked.load(Ordering::Relaxed), 1);
/// assert!(page.map_remote().is_err()); // too late to map it now
/// ```
///
/// # Invariants
///
/// - Pages are linked at the head of their bucket and unlinked under `lock`; a page
///   taken out is linked again or freed only after a grace period of `rcu` that began
///   after it left (the unexport barrier; `State::Leaving`).
/// - `rcu` is the platform's domain, read once at construction, so readers and writers
///   of this table always use the same one whatever [`Platform::rcu`] returns later.
/// - `lock` holds the number of grace periods begun (`synchronize` tickets);
///   `completed` is the highest ticket whose grace period has ended.
/// - The registry outlives every exporter and page that uses it (they borrow it). Only
///   leaked ones can still be linked when it drops; their memory is never freed.
pub struct ExportRegistry<P: Platform> {
    buckets: [Link<P>; BUCKETS],
    lock: SpinLock<P, u64>,
    completed: AtomicU64,
    rcu: &'static P::Rcu,
}

impl<P: Platform> Default for ExportRegistry<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// A linked page from a link of the table, or `None`.
///
/// # Safety
///
/// `p` is null or a page read from the table while the caller held, and still holds,
/// either the registry's lock (`proof` is its guard) or a read-side section of its RCU
/// begun before the page could have been taken out (`proof` is the read guard): the
/// page stays valid for `'g`.
unsafe fn linked<'g, P: Platform, G>(
    p: *mut ExportedPage<'static, P>,
    _proof: &'g G,
) -> Option<&'g ExportedPage<'static, P>> {
    // SAFETY: caller's contract.
    unsafe { p.as_ref() }
}

impl<P: Platform> ExportRegistry<P> {
    /// An empty registry.
    pub fn new() -> Self {
        ExportRegistry {
            buckets: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            lock: SpinLock::new_class(crate::LockClass::ExportRegistry, 0),
            completed: AtomicU64::new(0),
            rcu: P::rcu(),
        }
    }

    fn bucket(&self, pfn: u64) -> &Link<P> {
        &self.buckets[(pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % BUCKETS]
    }

    /// A grace period of this table's RCU, numbered. Every page taken out of the table
    /// under the lock before this call took its ticket may be reused when it returns.
    fn synchronize(&self) {
        P::might_sleep();
        let ticket = {
            let mut begun = self.lock.lock();
            // 2^64 grace periods do not happen: the count never wraps.
            *begun += 1;
            *begun
        };
        self.rcu.synchronize();
        // Release: whoever reads `completed >= ticket` (acquire) sees every reader
        // section that could still reach a page taken out before the ticket as ended.
        self.completed.fetch_max(ticket, Ordering::Release);
    }

    /// Whether the grace period `cookie` (a ticket) has ended.
    fn passed(&self, cookie: u64) -> bool {
        self.completed.load(Ordering::Acquire) >= cookie
    }

    /// Take the linked `page` out of the table; `begun` is the registry's lock, `st`
    /// the page's. Returns the grace period to wait for before the page may be reused.
    fn take_out(
        &self,
        page: &ExportedPage<'_, P>,
        st: &mut PageState,
        begun: &SpinGuard<'_, P, u64>,
    ) -> u64 {
        // Any ticket taken after this critical section begins after the page left: a
        // grace period with it waits for every reader that may have found the page.
        let cookie = **begun + 1;
        st.state = State::Leaving;
        st.cookie = cookie;
        let me = ptr::from_ref(page)
            .cast::<ExportedPage<'static, P>>()
            .cast_mut();
        let mut link = self.bucket(page.pfn());
        loop {
            let cur = link.load(Ordering::Relaxed);
            // SAFETY: we hold the registry's lock, under which links change.
            let Some(p) = (unsafe { linked(cur, begun) }) else {
                break;
            };
            if cur == me {
                // Readers already past `link` keep following `page.next`, intact until
                // the grace period: the page is `Leaving`, so nobody relinks it before.
                link.store(page.next.load(Ordering::Relaxed), Ordering::Release);
                break;
            }
            link = &p.next;
        }
        // SAFETY: a linked page's record belongs to a live exporter, which takes its
        // pages out under this lock before it goes (type invariant of `Exporter`).
        let rec = unsafe { &*page.exporter.load(Ordering::Relaxed) };
        // Written and read under the registry lock only; tickets grow under it.
        rec.unlinked.fetch_max(cookie, Ordering::Relaxed);
        cookie
    }

    fn link(
        &self,
        rec: *const ExporterRecord<P>,
        page: &ExportedPage<'_, P>,
        pfn: u64,
    ) -> Result<(), Error> {
        loop {
            let wait_for = {
                let begun = self.lock.lock();
                let mut st = page.st.lock();
                let left = match st.state {
                    State::Exported | State::Dying => return Err(Error::AlreadyRegistered),
                    State::Idle => None,
                    State::Leaving => {
                        // SAFETY: a leaving page's registry is live (type invariant of
                        // `ExportedPage`: the page borrows it).
                        let old = unsafe { &*page.registry.load(Ordering::Relaxed) };
                        (!old.passed(st.cookie)).then_some(old)
                    }
                };
                if left.is_none() {
                    // The page is reachable by no reader: its fields are ours to write.
                    st.state = State::Exported;
                    st.maps = 0;
                    page.pfn.store(pfn, Ordering::Relaxed);
                    // The record this names is immutable (its `revoke` was set by
                    // `Exporter::new`, before the exporter was pinned and shared), so
                    // the only ordering a free path needs is the page's publication
                    // below (release) against its walk (acquire); it reads this field
                    // under the page's lock as well.
                    page.exporter.store(rec.cast_mut(), Ordering::Relaxed);
                    page.registry
                        .store(ptr::from_ref(self).cast_mut(), Ordering::Relaxed);
                    let b = self.bucket(pfn);
                    page.next
                        .store(b.load(Ordering::Relaxed), Ordering::Relaxed);
                    // INVARIANT: published with release ordering after every field is
                    // written: a free path that finds the page (acquire) sees them.
                    b.store(
                        ptr::from_ref(page)
                            .cast::<ExportedPage<'static, P>>()
                            .cast_mut(),
                        Ordering::Release,
                    );
                    drop(begun);
                    return Ok(());
                }
                left
            };
            // A free path may still walk the page from the table it left (a drop or an
            // unexport on another thread is waiting for it): linking it now would
            // send that walk into another bucket. Wait for the same grace period.
            if let Some(old) = wait_for {
                old.synchronize();
            }
        }
    }

    fn unlink(&self, page: &ExportedPage<'_, P>) -> Result<(), Error> {
        P::might_sleep();
        let cookie = {
            let begun = self.lock.lock();
            let mut st = page.st.lock();
            let linked_here = matches!(st.state, State::Exported | State::Dying)
                && ptr::eq(page.registry.load(Ordering::Relaxed), self);
            if !linked_here {
                return Err(Error::NotRegistered);
            }
            // Remote maps are refused from here on (state `Leaving`): a free path that
            // no longer finds the page must not find it mappable either.
            self.take_out(page, &mut st, &begun)
        };
        // The barrier: a `before_free` that found the page finishes its `revoke`.
        if !self.passed(cookie) {
            self.synchronize();
        }
        Ok(())
    }

    /// A page this registry may know is dropped: take it out if it is linked, and wait
    /// until no free path can still reach it.
    fn forget_page(&self, page: &ExportedPage<'_, P>) {
        let cookie = {
            let begun = self.lock.lock();
            let mut st = page.st.lock();
            match st.state {
                State::Idle => return,
                State::Exported | State::Dying => self.take_out(page, &mut st, &begun),
                // Taken out by another thread (an exporter's drop) that may still be
                // waiting: the memory must not go before the readers have left.
                State::Leaving => st.cookie,
            }
        };
        if !self.passed(cookie) {
            self.synchronize();
        }
    }

    fn unlink_exporter(&self, me: *const ExporterRecord<P>, rec: &ExporterRecord<P>) {
        let need = {
            let begun = self.lock.lock();
            for b in &self.buckets {
                let mut cur = b.load(Ordering::Relaxed);
                // SAFETY: we hold the registry's lock, under which links change.
                while let Some(p) = unsafe { linked(cur, &begun) } {
                    cur = p.next.load(Ordering::Relaxed);
                    if ptr::eq(p.exporter.load(Ordering::Relaxed), me) {
                        let mut st = p.st.lock();
                        self.take_out(p, &mut st, &begun);
                    }
                }
            }
            // Covers the pages taken out just now and those an unexport or a page's
            // drop took out earlier, whose free paths may still be in our `revoke`.
            rec.unlinked.load(Ordering::Relaxed)
        };
        if !self.passed(need) {
            self.synchronize();
        }
    }

    /// The platform's reclaim or free path is about to free frame `pfn` (Linux: the
    /// shrink-list step, before the reference count is frozen), whether a primary entry
    /// maps it or not. Every exporter of the page revokes its remote mappings and drops
    /// its reference; remote map requests for it are refused from now on.
    ///
    /// Returns how many exports were revoked; [`Error::WouldBlock`] if a remote mapping
    /// is still counted afterwards (an exporter's bug, also reported): the page must not
    /// be freed then. Takes no lock but each page's own, allocates nothing.
    pub fn before_free(&self, pfn: u64) -> Result<usize, Error> {
        let rcu = self.rcu.read_lock();
        let mut revoked = 0;
        let mut busy = false;
        let mut cur = self.bucket(pfn).load(Ordering::Acquire);
        // SAFETY: links read under `rcu`, which began before any page we reach could
        // have been taken out; pages are reused only after a grace period.
        while let Some(p) = unsafe { linked(cur, &rcu) } {
            cur = p.next.load(Ordering::Acquire);
            if p.pfn() != pfn {
                continue;
            }
            let rec = {
                let mut st = p.st.lock();
                // `Leaving`: an unexport won; it waits for us, and we owe nothing.
                if st.state != State::Exported {
                    continue;
                }
                // From here on `map_remote` refuses: no importer can map the page
                // between the revocation and the free (the race of the 2008 thread).
                st.state = State::Dying;
                // Stable while the page is linked; it cannot be linked again while we
                // are inside `rcu` (a `Leaving` page waits for a grace period).
                p.exporter.load(Ordering::Relaxed)
            };
            // SAFETY: the page was linked when we found it in our read-side section, so
            // its exporter waits for us before its memory goes (its drop waits for the
            // grace period of every page of it taken out; type invariant of
            // `Exporter`); the record is immutable but for an atomic.
            let f = unsafe { (*rec).revoke };
            // SAFETY: `f` is the `v_revoke` of the exporter `rec` was taken from, with
            // that exporter's provenance (`export`), alive as above.
            unsafe { f(rec, p, pfn) };
            revoked += 1;
            if p.st.lock().maps != 0 {
                P::report_bug(Bug::RemoteMapAfterRevoke);
                busy = true;
            }
        }
        if busy {
            Err(Error::WouldBlock)
        } else {
            Ok(revoked)
        }
    }
}

impl<P: Platform> Drop for ExportRegistry<P> {
    fn drop(&mut self) {
        // Only leaked exporters' pages can still be here (anything alive borrows us);
        // their memory is never freed, and no reader or writer is left (`&mut self`).
        let mut leaked = false;
        let begun = self.lock.lock();
        for b in &self.buckets {
            let mut cur = b.load(Ordering::Relaxed);
            // SAFETY: we hold the lock; linked pages are leaked, so valid forever.
            while let Some(p) = unsafe { linked(cur, &begun) } {
                cur = p.next.load(Ordering::Relaxed);
                let mut st = p.st.lock();
                st.state = State::Idle;
                p.registry.store(ptr::null_mut(), Ordering::Relaxed);
                leaked = true;
            }
            b.store(ptr::null_mut(), Ordering::Relaxed);
        }
        drop(begun);
        if leaked {
            P::report_bug(Bug::RegistryDroppedWithPages);
        }
    }
}
