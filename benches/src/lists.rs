//! The subscriber lists of the dispatch benchmark, one per peer, each used the way its
//! own users use it:
//!
//! | list | read side | register / unregister |
//! |---|---|---|
//! | [`Direct`] (the limit) | `&dyn` calls over a slice, no synchronisation | — |
//! | [`Core`] | `invalidate_range_start` + `end` | `register` / `unregister` (pinned, intrusive) |
//! | `Core<Fenced>` (what-if) | the same on [`Fenced`]: full fences, no `membarrier` | the same |
//! | [`RwLockList`] | `read()` | `write()` + `push` / `retain` |
//! | [`ArcSwapList`] | `load()` | `rcu()` with a modified copy |
//! | [`EpochList`] | `epoch::pin()` + a linked list | mutex, link / unlink + `defer_destroy` |
//! | [`RcuCleanList`] | `Deref` of the thread's own `ArcRcu` clone, then `clean()` | `update()` + `clean()` |
//! | [`Urcu`] | `rcu_read_lock` + `cds_list_for_each_entry_rcu` (C) | mutex, `cds_list_add_rcu` / `del_rcu` + `synchronize_rcu` |
//! | [`LinuxSrcu`] | Linux 6.12's: `srcu_read_lock` (a per-CPU increment, a full fence) + `hlist_for_each_entry_rcu` (C) | mutex, `hlist_add_head_rcu` / `hlist_del_rcu` + `synchronize_srcu` |
//!
//! Every peer does what the core does: one read-side pass calling every start, then a
//! second calling every end. Unlike the core, none of the peers guarantees that a
//! subscriber registered between the two passes does not get an end without a start
//! (C-02); that guarantee is part of what the core's figures pay for.

use std::ffi::{c_int, c_void};
use std::hint::black_box;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use crossbeam_epoch::{self as epoch, Atomic, Owned};
use notifier_core::{AddressSpace, Platform, Range, Subscriber};
use rcu_clean::ArcRcu;

use crate::callbacks::{Callbacks, Counter};
use crate::fenced::Fenced;
use crate::urcu::{self, ReaderThread, ShimList, ShimNode};
use crate::P;

/// A subscriber list the dispatch benchmark can drive.
pub trait Dispatch: Sync + Sized {
    /// What one thread holds to use the list (its registration, its own clone…).
    type Handle<'a>
    where
        Self: 'a;

    /// The name in benchmark ids.
    const NAME: &'static str;

    /// A list with `n` subscribers registered.
    fn with_subscribers(n: usize) -> Self;

    /// The calling thread's handle.
    fn handle(&self) -> Self::Handle<'_>;

    /// One invalidation: every subscriber's start, then every subscriber's end. True if
    /// nobody refused.
    fn dispatch(h: &mut Self::Handle<'_>, range: &Range) -> bool;
}

/// A list subscribers can join and leave while it is read.
pub trait Churn: Dispatch {
    /// Register one more subscriber, then unregister it, including whatever wait the
    /// peer needs before that subscriber's memory could be freed.
    fn churn_once(h: &mut Self::Handle<'_>);
}

fn counters(n: usize) -> Vec<Arc<dyn Callbacks>> {
    (0..n)
        .map(|_| Arc::new(Counter::default()) as Arc<dyn Callbacks>)
        .collect()
}

/// Call every start, then every end, of an iterable of `Arc<dyn Callbacks>`.
#[inline]
fn start_all<'a>(subs: impl IntoIterator<Item = &'a Arc<dyn Callbacks>>, range: &Range) -> bool {
    let mut ok = true;
    for c in subs {
        ok &= c.start(range).is_ok();
    }
    ok
}

#[inline]
fn end_all<'a>(subs: impl IntoIterator<Item = &'a Arc<dyn Callbacks>>, range: &Range) {
    for c in subs {
        c.end(range);
    }
}

// ---------------------------------------------------------------------------------------

/// The limit: N `&dyn` calls for the starts and N for the ends, with nothing around.
pub struct Direct {
    subs: Vec<Box<dyn Callbacks>>,
}

impl Dispatch for Direct {
    type Handle<'a> = Vec<&'a dyn Callbacks>;
    const NAME: &'static str = "direct";

    fn with_subscribers(n: usize) -> Self {
        let subs = (0..n)
            .map(|_| Box::new(Counter::default()) as Box<dyn Callbacks>)
            .collect();
        Direct { subs }
    }

    fn handle(&self) -> Vec<&dyn Callbacks> {
        self.subs.iter().map(|b| &**b).collect()
    }

    #[inline]
    fn dispatch(h: &mut Vec<&dyn Callbacks>, range: &Range) -> bool {
        // Opaque to the optimiser: the calls stay indirect.
        let subs: &[&dyn Callbacks] = black_box(h.as_slice());
        let mut ok = true;
        for c in subs {
            ok &= c.start(range).is_ok();
        }
        for c in subs {
            c.end(range);
        }
        ok
    }
}

// ---------------------------------------------------------------------------------------

/// A platform the core runs on in the benchmarks, and its name in benchmark ids.
pub trait BenchPlatform: Platform {
    /// The id of [`Core`] on this platform.
    const CORE_NAME: &'static str;
}

impl BenchPlatform for P {
    const CORE_NAME: &'static str = "core";
}

impl BenchPlatform for Fenced {
    const CORE_NAME: &'static str = "core_fenced";
}

/// `notifier-core`: pinned intrusive subscribers on one address space, on platform `Q`
/// (the shipped hosted one by default).
pub struct Core<Q: Platform = P> {
    // Declared before `mm`: unregistered before the address space goes.
    _subs: Vec<Pin<Box<Subscriber<Counter, Q>>>>,
    mm: AddressSpace<Q>,
}

/// A thread's handle on [`Core`]: the subscriber it churns.
pub struct CoreHandle<'a, Q: Platform> {
    core: &'a Core<Q>,
    extra: Pin<Box<Subscriber<Counter, Q>>>,
}

impl<Q: Platform> Core<Q> {
    /// The address space.
    pub fn mm(&self) -> &AddressSpace<Q> {
        &self.mm
    }
}

impl<Q: BenchPlatform> Dispatch for Core<Q> {
    type Handle<'a> = CoreHandle<'a, Q>;
    const NAME: &'static str = Q::CORE_NAME;

    fn with_subscribers(n: usize) -> Self {
        let mm = AddressSpace::new();
        let subs = (0..n)
            .map(|_| {
                let s = Box::pin(Subscriber::new(Counter::default()));
                s.as_ref().register(&mm).expect("register");
                s
            })
            .collect();
        Core { _subs: subs, mm }
    }

    fn handle(&self) -> CoreHandle<'_, Q> {
        CoreHandle {
            core: self,
            extra: Box::pin(Subscriber::new(Counter::default())),
        }
    }

    #[inline]
    fn dispatch(h: &mut CoreHandle<'_, Q>, range: &Range) -> bool {
        match h.core.mm.invalidate_range_start(*range) {
            Ok(inv) => {
                inv.end();
                true
            }
            Err(_) => false,
        }
    }
}

impl<Q: BenchPlatform> Churn for Core<Q> {
    fn churn_once(h: &mut CoreHandle<'_, Q>) {
        h.extra.as_ref().register(&h.core.mm).expect("register");
        h.extra.as_ref().unregister().expect("unregister");
    }
}

// ---------------------------------------------------------------------------------------

/// `RwLock<Vec<Arc<dyn Callbacks>>>`: the obvious safe Rust list.
pub struct RwLockList {
    subs: RwLock<Vec<Arc<dyn Callbacks>>>,
}

/// A thread's handle on a list of `Arc<dyn Callbacks>`: the list and the subscriber it
/// churns.
pub struct ArcHandle<'a, L> {
    list: &'a L,
    extra: Arc<dyn Callbacks>,
}

fn arc_handle<L>(list: &L) -> ArcHandle<'_, L> {
    ArcHandle {
        list,
        extra: Arc::new(Counter::default()),
    }
}

impl Dispatch for RwLockList {
    type Handle<'a> = ArcHandle<'a, Self>;
    const NAME: &'static str = "rwlock";

    fn with_subscribers(n: usize) -> Self {
        RwLockList {
            subs: RwLock::new(counters(n)),
        }
    }

    fn handle(&self) -> ArcHandle<'_, Self> {
        arc_handle(self)
    }

    #[inline]
    fn dispatch(h: &mut ArcHandle<'_, Self>, range: &Range) -> bool {
        let ok = start_all(h.list.subs.read().expect("poisoned").iter(), range);
        end_all(h.list.subs.read().expect("poisoned").iter(), range);
        ok
    }
}

impl Churn for RwLockList {
    fn churn_once(h: &mut ArcHandle<'_, Self>) {
        h.list.subs.write().expect("poisoned").push(h.extra.clone());
        h.list
            .subs
            .write()
            .expect("poisoned")
            .retain(|c| !Arc::ptr_eq(c, &h.extra));
    }
}

// ---------------------------------------------------------------------------------------

/// `ArcSwap<Vec<Arc<dyn Callbacks>>>`: readers take a snapshot, writers replace it.
pub struct ArcSwapList {
    subs: ArcSwap<Vec<Arc<dyn Callbacks>>>,
}

impl Dispatch for ArcSwapList {
    type Handle<'a> = ArcHandle<'a, Self>;
    const NAME: &'static str = "arc_swap";

    fn with_subscribers(n: usize) -> Self {
        ArcSwapList {
            subs: ArcSwap::from_pointee(counters(n)),
        }
    }

    fn handle(&self) -> ArcHandle<'_, Self> {
        arc_handle(self)
    }

    #[inline]
    fn dispatch(h: &mut ArcHandle<'_, Self>, range: &Range) -> bool {
        let ok = start_all(h.list.subs.load().iter(), range);
        end_all(h.list.subs.load().iter(), range);
        ok
    }
}

impl Churn for ArcSwapList {
    fn churn_once(h: &mut ArcHandle<'_, Self>) {
        let extra = &h.extra;
        h.list.subs.rcu(|old| {
            let mut v = Vec::clone(old);
            v.push(extra.clone());
            v
        });
        h.list.subs.rcu(|old| {
            old.iter()
                .filter(|c| !Arc::ptr_eq(c, extra))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

// ---------------------------------------------------------------------------------------

struct EpochNode {
    cb: Arc<dyn Callbacks>,
    next: Atomic<EpochNode>,
}

/// A linked list under `crossbeam-epoch`: readers pin the epoch, writers link and
/// unlink under a mutex and hand unlinked nodes to `defer_destroy`.
pub struct EpochList {
    head: Atomic<EpochNode>,
    writer: Mutex<()>,
}

impl EpochList {
    fn push(&self, cb: Arc<dyn Callbacks>) {
        let _w = self.writer.lock().expect("poisoned");
        let guard = epoch::pin();
        let node = Owned::new(EpochNode {
            cb,
            next: Atomic::null(),
        });
        node.next
            .store(self.head.load(Ordering::Relaxed, &guard), Ordering::Relaxed);
        self.head.store(node, Ordering::Release);
    }

    fn remove(&self, cb: &Arc<dyn Callbacks>) {
        let _w = self.writer.lock().expect("poisoned");
        let guard = epoch::pin();
        let mut link = &self.head;
        loop {
            let cur = link.load(Ordering::Relaxed, &guard);
            // SAFETY: nodes are destroyed only through `defer_destroy` after being
            // unlinked, and we are pinned.
            let Some(node) = (unsafe { cur.as_ref() }) else {
                return;
            };
            if Arc::ptr_eq(&node.cb, cb) {
                link.store(node.next.load(Ordering::Relaxed, &guard), Ordering::Release);
                // SAFETY: unlinked under the writer mutex: no new reader can reach it,
                // and readers already pinned keep it alive until they unpin.
                unsafe { guard.defer_destroy(cur) };
                return;
            }
            link = &node.next;
        }
    }
}

impl Drop for EpochList {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer is left.
        let guard = unsafe { epoch::unprotected() };
        let mut cur = self.head.load(Ordering::Relaxed, guard);
        while !cur.is_null() {
            // SAFETY: nobody else reaches the list; each node is owned once.
            let owned = unsafe { cur.into_owned() };
            cur = owned.next.load(Ordering::Relaxed, guard);
        }
    }
}

impl Dispatch for EpochList {
    type Handle<'a> = ArcHandle<'a, Self>;
    const NAME: &'static str = "crossbeam_epoch";

    fn with_subscribers(n: usize) -> Self {
        let l = EpochList {
            head: Atomic::null(),
            writer: Mutex::new(()),
        };
        for c in counters(n) {
            l.push(c);
        }
        l
    }

    fn handle(&self) -> ArcHandle<'_, Self> {
        arc_handle(self)
    }

    #[inline]
    fn dispatch(h: &mut ArcHandle<'_, Self>, range: &Range) -> bool {
        fn walk(list: &EpochList, mut f: impl FnMut(&Arc<dyn Callbacks>)) {
            let guard = epoch::pin();
            let mut cur = list.head.load(Ordering::Acquire, &guard);
            // SAFETY: pinned: unlinked nodes are destroyed only after we unpin.
            while let Some(node) = unsafe { cur.as_ref() } {
                f(&node.cb);
                cur = node.next.load(Ordering::Acquire, &guard);
            }
        }
        let mut ok = true;
        walk(h.list, |c| ok &= c.start(range).is_ok());
        walk(h.list, |c| c.end(range));
        ok
    }
}

impl Churn for EpochList {
    fn churn_once(h: &mut ArcHandle<'_, Self>) {
        h.list.push(h.extra.clone());
        h.list.remove(&h.extra);
    }
}

// ---------------------------------------------------------------------------------------

/// `rcu_clean::ArcRcu<Vec<Arc<dyn Callbacks>>>`: each thread reads through its own
/// clone and calls `clean()` when it holds no reference any more.
pub struct RcuCleanList {
    subs: ArcRcu<Vec<Arc<dyn Callbacks>>>,
}

/// A thread's handle on [`RcuCleanList`]: its own clone of the pointer.
pub struct RcuCleanHandle<'a> {
    subs: ArcRcu<Vec<Arc<dyn Callbacks>>>,
    extra: Arc<dyn Callbacks>,
    _list: PhantomData<&'a RcuCleanList>,
}

impl Dispatch for RcuCleanList {
    type Handle<'a> = RcuCleanHandle<'a>;
    const NAME: &'static str = "rcu_clean";

    fn with_subscribers(n: usize) -> Self {
        RcuCleanList {
            subs: ArcRcu::new(counters(n)),
        }
    }

    fn handle(&self) -> RcuCleanHandle<'_> {
        RcuCleanHandle {
            subs: self.subs.clone(),
            extra: Arc::new(Counter::default()),
            _list: PhantomData,
        }
    }

    #[inline]
    fn dispatch(h: &mut RcuCleanHandle<'_>, range: &Range) -> bool {
        let ok = start_all(h.subs.iter(), range);
        end_all(h.subs.iter(), range);
        // No reference into the list is held any more: let old versions go.
        h.subs.clean();
        ok
    }
}

impl Churn for RcuCleanList {
    fn churn_once(h: &mut RcuCleanHandle<'_>) {
        h.subs.update().push(h.extra.clone());
        h.subs.clean();
        let extra = h.extra.clone();
        h.subs.update().retain(|c| !Arc::ptr_eq(c, &extra));
        h.subs.clean();
    }
}

// ---------------------------------------------------------------------------------------

/// The C side of one list flavour: functions of the same shape in both C files.
pub struct CApi {
    /// A new empty list, or null.
    pub list_new: unsafe extern "C" fn() -> *mut ShimList,
    /// Free a list and its nodes after a grace period.
    pub list_free: unsafe extern "C" fn(*mut ShimList),
    /// Allocate and publish a node; null when out of memory.
    pub add: unsafe extern "C" fn(
        *mut ShimList,
        *const c_void,
        urcu::StartFn,
        urcu::EndFn,
    ) -> *mut ShimNode,
    /// Unlink a node, wait for a grace period, free it.
    pub del: unsafe extern "C" fn(*mut ShimList, *mut ShimNode),
    /// One invalidation: every start in one read-side section, every end in another.
    pub dispatch: unsafe extern "C" fn(*mut ShimList, *const c_void) -> c_int,
}

/// A subscriber list written in C.
pub trait CFlavour: 'static {
    /// The name in benchmark ids.
    const NAME: &'static str;
    /// Its C functions.
    const API: CApi;
    /// What a reader thread holds while it uses the list.
    type Reader;
    /// Register the calling thread as a reader.
    fn reader() -> Self::Reader;
}

/// liburcu (urcu-memb), `csrc/urcu_shim.c`.
pub struct LibUrcu;

impl CFlavour for LibUrcu {
    const NAME: &'static str = "liburcu";
    const API: CApi = CApi {
        list_new: urcu::shim_list_new,
        list_free: urcu::shim_list_free,
        add: urcu::shim_add,
        del: urcu::shim_del,
        dispatch: urcu::shim_dispatch,
    };
    type Reader = ReaderThread;
    fn reader() -> ReaderThread {
        ReaderThread::register()
    }
}

/// Linux's algorithm (an hlist under 6.12's SRCU read side), `csrc/linux_hlist.c`.
pub struct LinuxHlist;

impl CFlavour for LinuxHlist {
    const NAME: &'static str = "linux_srcu";
    const API: CApi = CApi {
        list_new: urcu::lx_list_new,
        list_free: urcu::lx_list_free,
        add: urcu::lx_add,
        del: urcu::lx_del,
        dispatch: urcu::lx_dispatch,
    };
    /// Linux's SRCU needs no registration of its readers.
    type Reader = ();
    fn reader() {}
}

/// liburcu's RCU list in C, calling the same callbacks.
pub type Urcu = CList<LibUrcu>;
/// Linux's hlist under SRCU in C, calling the same callbacks.
pub type LinuxSrcu = CList<LinuxHlist>;

/// A list of one [`CFlavour`].
pub struct CList<F: CFlavour> {
    list: *mut ShimList,
    // Referenced by the nodes (never moved: a boxed slice); freed after the list
    // (fields drop after `Drop::drop`).
    _subs: Box<[Counter]>,
    _f: PhantomData<F>,
}

// SAFETY: both C lists are built for concurrent readers and mutex-serialised writers;
// the counters they point to are `Sync`.
unsafe impl<F: CFlavour> Sync for CList<F> {}
// SAFETY: as above; a list is not tied to the thread that made it.
unsafe impl<F: CFlavour> Send for CList<F> {}

/// A thread's handle on a [`CList`]: its reader registration and the subscriber it
/// churns.
pub struct CHandle<'a, F: CFlavour> {
    list: &'a CList<F>,
    extra: Box<Counter>,
    _reader: F::Reader,
}

fn c_add<F: CFlavour>(list: *mut ShimList, c: &Counter) -> *mut ShimNode {
    // SAFETY: `list` is live; `c` outlives its node (callers free the node first), and
    // the trampolines are built for `Counter`.
    let n = unsafe {
        (F::API.add)(
            list,
            (c as *const Counter).cast(),
            urcu::start_tramp::<Counter>,
            urcu::end_tramp::<Counter>,
        )
    };
    assert!(!n.is_null(), "{}: out of memory", F::NAME);
    n
}

impl<F: CFlavour> CList<F> {
    /// Callbacks its subscribers got (the churning handles' own excluded).
    pub fn calls(&self) -> u64 {
        self._subs.iter().map(Counter::calls).sum()
    }
}

impl CList<LinuxHlist> {
    /// `iters` empty read-side sections of this list's SRCU, looped in C.
    pub fn read_lock_loop(&self, iters: u64) {
        // SAFETY: the list is live; Linux's SRCU needs no reader registration.
        unsafe { urcu::lx_read_lock_loop(self.list, iters) }
    }
}

impl<F: CFlavour> Drop for CList<F> {
    fn drop(&mut self) {
        // SAFETY: made by `list_new`, freed once; it waits for a grace period before
        // freeing the nodes, so no reader is left when the counters go.
        unsafe { (F::API.list_free)(self.list) };
    }
}

impl<F: CFlavour> Dispatch for CList<F> {
    type Handle<'a> = CHandle<'a, F>;
    const NAME: &'static str = F::NAME;

    fn with_subscribers(n: usize) -> Self {
        // SAFETY: plain allocation in C.
        let list = unsafe { (F::API.list_new)() };
        assert!(!list.is_null(), "{}: out of memory", F::NAME);
        let subs: Box<[Counter]> = (0..n).map(|_| Counter::default()).collect();
        for c in subs.iter() {
            c_add::<F>(list, c);
        }
        CList {
            list,
            _subs: subs,
            _f: PhantomData,
        }
    }

    fn handle(&self) -> CHandle<'_, F> {
        CHandle {
            list: self,
            extra: Box::default(),
            _reader: F::reader(),
        }
    }

    #[inline]
    fn dispatch(h: &mut CHandle<'_, F>, range: &Range) -> bool {
        // SAFETY: the list is live and the thread registered (the handle proves both);
        // the range outlives the call.
        unsafe { (F::API.dispatch)(h.list.list, (range as *const Range).cast::<c_void>()) == 0 }
    }
}

impl<F: CFlavour> Churn for CList<F> {
    fn churn_once(h: &mut CHandle<'_, F>) {
        let n = c_add::<F>(h.list.list, &h.extra);
        // SAFETY: `n` was just added to this list and is deleted once; `del` waits for
        // a grace period before freeing it.
        unsafe { (F::API.del)(h.list.list, n) };
    }
}
