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
//! * [`Exporter::unexport`] is a barrier: when it returns, `revoke` of that page
//!   is neither running nor will run.
//!
//! Readers of the table (the free path) run under the platform's sleepable RCU and take
//! no lock but each page's own; nothing on the free path allocates.

use core::marker::PhantomPinned;
use core::pin::Pin;
use core::ptr;

use crate::primitive::{AtomicPtr, AtomicU64, Ordering};
use crate::srcu::SleepableRcu;
use crate::sync::SpinLock;
use crate::{Bug, Error, Platform};

/// Buckets of the export table.
const BUCKETS: usize = if cfg!(loom) { 4 } else { 256 };

/// What an exporter does when one of its pages is about to be freed.
pub trait ExportOps<P: Platform>: Sync {
    /// The page `pfn` is about to be freed by reclaim or a free path, mapped in a
    /// primary page table or not: revoke every remote mapping of it (each with
    /// [`ExportedPage::unmap_remote`]) and drop the exporter's own reference before
    /// returning. Called at most once per export, never after
    /// [`Exporter::unexport`] returned. Must not allocate.
    fn revoke(&self, page: &ExportedPage<P>, pfn: u64);
}

/// The state of one exported page, under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in the table.
    Idle,
    /// In the table; remote maps allowed.
    Exported,
    /// `before_free` has begun: remote maps are refused; `revoke` runs or ran.
    Dying,
}

/// One page an exporter exported: embedded by the exporter, pinned while exported.
///
/// # Invariants
///
/// - `next` links the page into one bucket of the registry `registry` points to; it is
///   written under the registry's lock and followed by readers under RCU.
/// - `exporter` is non-null while the page is in the table, and points to the record of
///   a live pinned [`Exporter`] (whose drop unexports every page that names it).
pub struct ExportedPage<P: Platform> {
    next: AtomicPtr<ExportedPage<P>>,
    pfn: AtomicU64,
    registry: AtomicPtr<ExportRegistry<P>>,
    exporter: AtomicPtr<ExporterRecord<P>>,
    st: SpinLock<P, (State, u32)>,
    _pin: PhantomPinned,
}

// SAFETY: every field is an atomic or under the page's lock.
unsafe impl<P: Platform> Send for ExportedPage<P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Sync for ExportedPage<P> {}

impl<P: Platform> ExportedPage<P> {
    /// A page not exported yet.
    pub fn new() -> Self {
        ExportedPage {
            next: AtomicPtr::new(ptr::null_mut()),
            pfn: AtomicU64::new(0),
            registry: AtomicPtr::new(ptr::null_mut()),
            exporter: AtomicPtr::new(ptr::null_mut()),
            st: SpinLock::new((State::Idle, 0)),
            _pin: PhantomPinned,
        }
    }

    /// The frame this page exports (meaningful while exported).
    pub fn pfn(&self) -> u64 {
        self.pfn.load(Ordering::Relaxed)
    }

    /// Whether the page is exported and not dying.
    pub fn is_exported(&self) -> bool {
        self.st.lock().0 == State::Exported
    }

    /// Remote mappings counted now.
    pub fn remote_maps(&self) -> u32 {
        self.st.lock().1
    }

    /// An importer maps the page: counted, unless the page is not exported or is
    /// already dying (then [`Error::Dead`]: the importer must not map it). Call it
    /// before the importer installs its mapping.
    pub fn map_remote(&self) -> Result<(), Error> {
        let mut st = self.st.lock();
        if st.0 != State::Exported {
            return Err(Error::Dead);
        }
        st.1 += 1;
        Ok(())
    }

    /// An importer's mapping of the page is gone (revoked or dropped).
    ///
    /// Errors: [`Error::NotRegistered`] if no remote mapping is counted.
    pub fn unmap_remote(&self) -> Result<(), Error> {
        let mut st = self.st.lock();
        if st.1 == 0 {
            return Err(Error::NotRegistered);
        }
        st.1 -= 1;
        Ok(())
    }
}

impl<P: Platform> Default for ExportedPage<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Platform> Drop for ExportedPage<P> {
    fn drop(&mut self) {
        let reg = self.registry.load(Ordering::Acquire);
        // SAFETY: `registry` is non-null only while the page is linked, and the
        // registry outlives its linked pages (type invariant of `ExportRegistry`).
        if let Some(reg) = unsafe { reg.as_ref() } {
            let _ = reg.unlink(self);
        }
    }
}

/// What a page points to: the exporter's callbacks, type-erased.
struct ExporterRecord<P: Platform> {
    ops: core::cell::Cell<*const ()>,
    revoke: unsafe fn(*const (), &ExportedPage<P>, u64),
}

/// An exporter: your [`ExportOps`] with the record the registry's pages point to.
/// Pinned while it has pages exported; dropping it unexports every one of them.
pub struct Exporter<T: ExportOps<P>, P: Platform> {
    rec: ExporterRecord<P>,
    registry: *const ExportRegistry<P>,
    ops: T,
    _pin: PhantomPinned,
}

// SAFETY: `T: Sync`; the record and the registry pointer are immutable after `new`.
unsafe impl<T: ExportOps<P> + Send, P: Platform> Send for Exporter<T, P> {}
// SAFETY: as above.
unsafe impl<T: ExportOps<P>, P: Platform> Sync for Exporter<T, P> {}

impl<T: ExportOps<P>, P: Platform> Exporter<T, P> {
    /// An exporter of pages in `registry`, with callbacks `ops`.
    pub fn new(registry: &ExportRegistry<P>, ops: T) -> Self {
        Exporter {
            rec: ExporterRecord {
                ops: core::cell::Cell::new(ptr::null()),
                revoke: Self::v_revoke,
            },
            registry,
            ops,
            _pin: PhantomPinned,
        }
    }

    unsafe fn v_revoke(ops: *const (), page: &ExportedPage<P>, pfn: u64) {
        // SAFETY: `ops` is the `ops` field of a live pinned `Exporter<T, P>` (set by
        // `export`, valid until the exporter's drop unexported its pages).
        unsafe { &*ops.cast::<T>() }.revoke(page, pfn)
    }

    /// The callbacks.
    pub fn ops(&self) -> &T {
        &self.ops
    }

    /// Export frame `pfn` through `page` (Linux's XPMEM would call this when a remote
    /// node asks for the page, with its own reference on it already taken).
    ///
    /// Errors: [`Error::AlreadyRegistered`] if `page` is exported already.
    pub fn export(self: Pin<&Self>, page: Pin<&ExportedPage<P>>, pfn: u64) -> Result<(), Error> {
        // SAFETY: the registry outlives its exporters (see `ExportRegistry`).
        let reg = unsafe { &*self.registry };
        reg.link(self.get_ref(), page.get_ref(), pfn)
    }

    /// Stop exporting `page`: a barrier, like `unregister` — when it returns, `revoke`
    /// of that page is neither running nor will run. May sleep.
    ///
    /// Errors: [`Error::NotRegistered`] if the page is not exported (or is being
    /// unexported by another thread).
    pub fn unexport(self: Pin<&Self>, page: Pin<&ExportedPage<P>>) -> Result<(), Error> {
        // SAFETY: as in `export`.
        let reg = unsafe { &*self.registry };
        reg.unlink(page.get_ref())
    }
}

impl<T: ExportOps<P>, P: Platform> core::ops::Deref for Exporter<T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<T: ExportOps<P>, P: Platform> Drop for Exporter<T, P> {
    fn drop(&mut self) {
        // SAFETY: as in `export`.
        let reg = unsafe { &*self.registry };
        reg.unlink_exporter(&self.rec);
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
/// Pages are linked at the head of their bucket and unlinked under `lock`; a page's
/// memory is reused only after a grace period of `P::rcu()` since it was unlinked (the
/// unexport barrier). The registry must outlive every exporter and page that uses it
/// (a static, or the machine's own lifetime): dropping it with pages linked is a bug
/// that is reported, and the pages are unlinked.
pub struct ExportRegistry<P: Platform> {
    buckets: [AtomicPtr<ExportedPage<P>>; BUCKETS],
    lock: SpinLock<P, ()>,
}

impl<P: Platform> Default for ExportRegistry<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Platform> ExportRegistry<P> {
    /// An empty registry.
    pub fn new() -> Self {
        ExportRegistry {
            buckets: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            lock: SpinLock::new(()),
        }
    }

    fn bucket(&self, pfn: u64) -> &AtomicPtr<ExportedPage<P>> {
        &self.buckets[(pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % BUCKETS]
    }

    fn link<T: ExportOps<P>>(
        &self,
        ex: &Exporter<T, P>,
        page: &ExportedPage<P>,
        pfn: u64,
    ) -> Result<(), Error> {
        let _g = self.lock.lock();
        {
            let mut st = page.st.lock();
            if st.0 != State::Idle || !page.registry.load(Ordering::Relaxed).is_null() {
                return Err(Error::AlreadyRegistered);
            }
            st.0 = State::Exported;
            st.1 = 0;
        }
        // The record's `ops` points into the pinned exporter (`export` takes
        // `Pin<&Self>`); written under the registry lock, before the page that names
        // the record is published below with release ordering.
        ex.rec.ops.set((&ex.ops as *const T).cast());
        page.pfn.store(pfn, Ordering::Relaxed);
        page.exporter.store(
            &ex.rec as *const ExporterRecord<P> as *mut ExporterRecord<P>,
            Ordering::Relaxed,
        );
        page.registry
            .store(self as *const Self as *mut Self, Ordering::Relaxed);
        let b = self.bucket(pfn);
        page.next
            .store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        // INVARIANT: published with release ordering after every field is written.
        b.store(
            page as *const ExportedPage<P> as *mut ExportedPage<P>,
            Ordering::Release,
        );
        Ok(())
    }

    /// Unlink `page` (lock held); true if it was linked.
    fn unlink_locked(&self, page: &ExportedPage<P>) -> bool {
        let me = page as *const ExportedPage<P> as *mut ExportedPage<P>;
        let mut link = self.bucket(page.pfn());
        loop {
            let cur = link.load(Ordering::Relaxed);
            if cur.is_null() {
                return false;
            }
            if cur == me {
                // Readers already past `link` keep following `page.next`, intact until
                // the grace period the caller waits for.
                link.store(page.next.load(Ordering::Relaxed), Ordering::Release);
                return true;
            }
            // SAFETY: linked pages are valid while linked; we hold the lock.
            link = unsafe { &(*cur).next };
        }
    }

    fn unlink(&self, page: &ExportedPage<P>) -> Result<(), Error> {
        P::might_sleep();
        {
            let _g = self.lock.lock();
            if !ptr::eq(page.registry.load(Ordering::Relaxed), self) {
                return Err(Error::NotRegistered);
            }
            // Refuse remote maps before the page leaves the table: a free path that no
            // longer finds it must not find it mappable either.
            page.st.lock().0 = State::Idle;
            self.unlink_locked(page);
            page.registry.store(ptr::null_mut(), Ordering::Relaxed);
        }
        // The barrier: a `before_free` that found the page finishes its `revoke`.
        P::rcu().synchronize();
        Ok(())
    }

    fn unlink_exporter(&self, rec: &ExporterRecord<P>) {
        let me = rec as *const ExporterRecord<P> as *mut ExporterRecord<P>;
        let mut any = false;
        {
            let _g = self.lock.lock();
            for b in &self.buckets {
                let mut cur = b.load(Ordering::Relaxed);
                while !cur.is_null() {
                    // SAFETY: linked pages are valid while linked; we hold the lock.
                    let p = unsafe { &*cur };
                    let next = p.next.load(Ordering::Relaxed);
                    if p.exporter.load(Ordering::Relaxed) == me {
                        p.st.lock().0 = State::Idle;
                        self.unlink_locked(p);
                        p.registry.store(ptr::null_mut(), Ordering::Relaxed);
                        any = true;
                    }
                    cur = next;
                }
            }
        }
        if any {
            P::rcu().synchronize();
        }
    }

    /// The platform's reclaim or free path is about to free frame `pfn` (Linux: the
    /// shrink-list step, before the reference count is frozen), whether a primary entry
    /// maps it or not. Every exporter of the page revokes its remote mappings and drops
    /// its reference; remote map requests for it are refused from now on.
    ///
    /// Returns how many exports were revoked; [`Error::WouldBlock`] if a remote mapping
    /// is still counted afterwards (an exporter's bug, also reported): the page must not
    /// be freed then. Allocates nothing.
    pub fn before_free(&self, pfn: u64) -> Result<usize, Error> {
        let _rcu = P::rcu().read_lock();
        let mut revoked = 0;
        let mut busy = false;
        let mut cur = self.bucket(pfn).load(Ordering::Acquire);
        while let Some(p) = unsafe_ref(cur) {
            cur = p.next.load(Ordering::Acquire);
            if p.pfn() != pfn {
                continue;
            }
            {
                let mut st = p.st.lock();
                if st.0 != State::Exported {
                    continue;
                }
                // From here on `map_remote` refuses: no importer can map the page
                // between the revocation and the free (the race of the 2008 thread).
                st.0 = State::Dying;
            }
            let rec = p.exporter.load(Ordering::Acquire);
            // SAFETY: a linked page's record belongs to a live pinned exporter (type
            // invariant), and we are in a read-side section: an unexport or an
            // exporter's drop waits for us before either goes.
            let (ops, f) = unsafe { ((*rec).ops.get(), (*rec).revoke) };
            // SAFETY: `f` was built for the exporter's `T` and `ops` points to its `T`.
            unsafe { f(ops, p, pfn) };
            revoked += 1;
            if p.st.lock().1 != 0 {
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

/// A linked page from a bucket pointer, or `None`.
fn unsafe_ref<'a, P: Platform>(p: *mut ExportedPage<P>) -> Option<&'a ExportedPage<P>> {
    // SAFETY: pointers in the table are null or linked pages, valid until a grace
    // period after they are unlinked; callers are inside a read-side section.
    unsafe { p.as_ref() }
}

impl<P: Platform> Drop for ExportRegistry<P> {
    fn drop(&mut self) {
        let mut leaked = false;
        for b in &self.buckets {
            let mut cur = b.load(Ordering::Relaxed);
            while let Some(p) = unsafe_ref(cur) {
                cur = p.next.load(Ordering::Relaxed);
                p.registry.store(ptr::null_mut(), Ordering::Relaxed);
                p.st.lock().0 = State::Idle;
                leaked = true;
            }
            b.store(ptr::null_mut(), Ordering::Relaxed);
        }
        if leaked {
            P::report_bug(Bug::RegistryDroppedWithPages);
        }
    }
}
