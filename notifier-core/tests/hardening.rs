//! Tests for the bugs an independent review found (issue 13), named after the case each
//! breaks. Every one failed on the core before the fix: a stale translation (a
//! subscriber not told of a change it had to hear about), a half pair, undefined
//! behaviour under Miri, or a hang (caught here by a watchdog, so a regression fails
//! the test instead of stalling the run).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Error, Event, Interval, IntervalOps, IntervalSubscriber, Range, Shared,
    SharedOps, Subscriber, SubscriberOps, WouldBlock,
};

const PG: usize = 4096;

/// Run `f` on its own thread; fail if it has not returned after a while (a hang).
fn must_return<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    let secs = if cfg!(miri) { 600 } else { 20 };
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: did not return (a hang, C-16)"))
}

fn unmap(mm: &AddressSpace<P>, start: usize, end: usize) {
    mm.invalidate_range_start(Range::new(start, end, Event::Unmap))
        .unwrap()
        .end();
}

/// Records what it is told.
#[derive(Default)]
struct Rec {
    starts: AtomicUsize,
    ends: AtomicUsize,
    releases: AtomicUsize,
    tlbs: AtomicUsize,
    young: AtomicUsize,
}

impl SubscriberOps for Rec {
    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.ends.fetch_add(1, Ordering::SeqCst);
    }
    fn invalidate_secondary_tlbs(&self, _s: usize, _e: usize) {
        self.tlbs.fetch_add(1, Ordering::SeqCst);
    }
    fn clear_young(&self, _s: usize, _e: usize) -> bool {
        self.young.fetch_add(1, Ordering::SeqCst);
        false
    }
}

struct Mirror;
impl IntervalOps<Interval<P>> for Mirror {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, seq: u64) -> Result<(), WouldBlock> {
        iv.set_seq(seq);
        Ok(())
    }
}

// ------------------------------------------------------------------ C-09, bug 1

/// Two "first" interval insertions: the second one, which finds the tree already
/// switched on, must also wait for the invalidation that started before the tree
/// existed and skipped it; otherwise it returns while page tables are still changing
/// and its `read_retry` never turns true.
#[test]
fn c09_second_first_insertion_waits_for_invalidation_that_skipped_the_tree() {
    let mm = Arc::new(AddressSpace::<P>::new());
    // The subscriptions exist (a list subscriber), but no interval tree yet.
    let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    let inv = mm
        .invalidate_range_start(Range::new(0, 16 * PG, Event::Unmap))
        .unwrap();
    let returned = Arc::new(AtomicUsize::new(0));
    let mut hs = Vec::new();
    for i in 0..2 {
        let (mm, returned) = (mm.clone(), returned.clone());
        hs.push(thread::spawn(move || {
            let m = Box::pin(IntervalSubscriber::new(Mirror));
            m.as_ref().insert(&mm, i * PG, PG).unwrap();
            returned.fetch_add(1, Ordering::SeqCst);
            m.as_ref().remove().unwrap();
        }));
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(150));
    assert_eq!(
        returned.load(Ordering::SeqCst),
        0,
        "an insertion returned while an invalidation that skipped the tree was in flight"
    );
    inv.end();
    for h in hs {
        h.join().unwrap();
    }
    s.as_ref().unregister().unwrap();
}

// ------------------------------------------------------------------ C-03, bug 2

/// A subscriber keeps hearing about every change until its `release` has run:
/// `unregister` must not hide it first.
#[test]
fn c03_subscriber_is_told_until_release_has_run() {
    struct Blocking {
        rec: Rec,
        in_release: AtomicBool,
        go: Mutex<bool>,
    }
    impl SubscriberOps for Blocking {
        fn release(&self) {
            self.in_release.store(true, Ordering::SeqCst);
            while !*self.go.lock().unwrap() {
                thread::sleep(Duration::from_millis(1));
            }
            self.rec.release();
        }
        fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
            self.rec.invalidate_range_start(r)
        }
        fn invalidate_range_end(&self, r: &Range) {
            self.rec.invalidate_range_end(r)
        }
        fn invalidate_secondary_tlbs(&self, s: usize, e: usize) {
            self.rec.invalidate_secondary_tlbs(s, e)
        }
        fn clear_young(&self, s: usize, e: usize) -> bool {
            self.rec.clear_young(s, e)
        }
    }
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Arc::new(Box::pin(Subscriber::<_, P>::new(Blocking {
        rec: Rec::default(),
        in_release: AtomicBool::new(false),
        go: Mutex::new(false),
    })));
    s.as_ref().as_ref().register(&mm).unwrap();
    let u = {
        let s = s.clone();
        thread::spawn(move || s.as_ref().as_ref().unregister().unwrap())
    };
    // Either release is running (new order) or unregister hid the subscriber and is
    // waiting for something before calling it (old order): give it time to get there.
    for _ in 0..200 {
        if s.in_release.load(Ordering::SeqCst) {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(s.rec.releases.load(Ordering::SeqCst), 0);
    unmap(&mm, 0, PG);
    mm.invalidate_secondary_tlbs(0, PG).unwrap();
    mm.clear_young(0, PG).unwrap();
    let (st, tl, yo) = (
        s.rec.starts.load(Ordering::SeqCst),
        s.rec.tlbs.load(Ordering::SeqCst),
        s.rec.young.load(Ordering::SeqCst),
    );
    *s.go.lock().unwrap() = true;
    u.join().unwrap();
    assert_eq!(
        (st, tl, yo),
        (1, 1, 1),
        "a change made before release had run did not reach the subscriber (starts, tlb flushes, ageing)"
    );
    assert_eq!(s.rec.ends.load(Ordering::SeqCst), 1);
}

// ------------------------------------------------------------------ C-16, bug 6

#[test]
fn c16_read_begin_inside_its_own_invalidate_is_refused() {
    struct SelfReader {
        got: Mutex<Option<Result<u64, Error>>>,
    }
    impl IntervalOps<Interval<P>> for SelfReader {
        fn invalidate(&self, iv: &Interval<P>, _r: &Range, seq: u64) -> Result<(), WouldBlock> {
            iv.set_seq(seq);
            *self.got.lock().unwrap() = Some(iv.read_begin());
            Ok(())
        }
    }
    let got = must_return("read_begin inside its own invalidate", || {
        let mm = AddressSpace::<P>::new();
        let m = Box::pin(IntervalSubscriber::new(SelfReader {
            got: Mutex::new(None),
        }));
        m.as_ref().insert(&mm, 0, PG).unwrap();
        unmap(&mm, 0, PG);
        let got = m.got.lock().unwrap().take();
        m.as_ref().remove().unwrap();
        got
    });
    assert_eq!(got, Some(Err(Error::InCallback)));
}

/// From inside a callback of one address space, calls on *another* address space that
/// wait for callbacks in flight must be refused too (the RCU domain is shared).
#[test]
fn c16_calls_on_another_space_from_inside_a_callback_are_refused() {
    struct Caller {
        other: Arc<AddressSpace<P>>,
        victim: Arc<Pin<Box<Subscriber<Rec, P>>>>,
        iv: Arc<Pin<Box<IntervalSubscriber<Mirror, P>>>>,
        got: Mutex<Vec<Result<(), Error>>>,
    }
    impl SubscriberOps for Caller {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            let mut g = self.got.lock().unwrap();
            g.push(self.victim.as_ref().as_ref().unregister());
            g.push(self.iv.as_ref().as_ref().remove());
            g.push(notifier_core::synchronize::<P>());
            g.push(self.other.release());
            let fresh = Box::pin(Subscriber::<_, P>::new(Rec::default()));
            g.push(fresh.as_ref().register(&self.other));
            Ok(())
        }
    }
    let got = must_return(
        "unregister/remove/synchronize/teardown/register from a callback",
        || {
            let other = Arc::new(AddressSpace::<P>::new());
            let victim = Arc::new(Box::pin(Subscriber::<_, P>::new(Rec::default())));
            victim.as_ref().as_ref().register(&other).unwrap();
            let iv = Arc::new(Box::pin(IntervalSubscriber::new(Mirror)));
            iv.as_ref().as_ref().insert(&other, 0, PG).unwrap();
            let mm = AddressSpace::<P>::new();
            let c = Box::pin(Subscriber::<_, P>::new(Caller {
                other: other.clone(),
                victim: victim.clone(),
                iv: iv.clone(),
                got: Mutex::new(Vec::new()),
            }));
            c.as_ref().register(&mm).unwrap();
            unmap(&mm, 0, PG);
            let got = std::mem::take(&mut *c.got.lock().unwrap());
            c.as_ref().unregister().unwrap();
            victim.as_ref().as_ref().unregister().unwrap();
            iv.as_ref().as_ref().remove().unwrap();
            got
        },
    );
    assert_eq!(got, vec![Err(Error::InCallback); 5]);
}

/// More threads inside callbacks at once than any fixed table: each must still be
/// recognised as inside a callback.
#[test]
fn c16_many_threads_inside_callbacks_are_all_refused() {
    let threads = if cfg!(miri) { 3 } else { 24 };
    struct Gate {
        barrier: Barrier,
        victims: Vec<Pin<Box<Subscriber<Rec, P>>>>,
        next: AtomicUsize,
        refused: AtomicUsize,
    }
    impl SubscriberOps for Gate {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            // Everyone is inside a callback at the same time.
            self.barrier.wait();
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if self.victims[i].as_ref().unregister() == Err(Error::InCallback) {
                self.refused.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    }
    let refused = must_return(
        "unregister from the 17th thread inside callbacks",
        move || {
            let other = AddressSpace::<P>::new();
            let victims: Vec<_> = (0..threads)
                .map(|_| {
                    let v = Box::pin(Subscriber::<_, P>::new(Rec::default()));
                    v.as_ref().register(&other).unwrap();
                    v
                })
                .collect();
            let mm = Arc::new(AddressSpace::<P>::new());
            let g = Arc::new(Box::pin(Subscriber::<_, P>::new(Gate {
                barrier: Barrier::new(threads),
                victims,
                next: AtomicUsize::new(0),
                refused: AtomicUsize::new(0),
            })));
            g.as_ref().as_ref().register(&mm).unwrap();
            let hs: Vec<_> = (0..threads)
                .map(|i| {
                    let mm = mm.clone();
                    thread::spawn(move || unmap(&mm, i * PG, (i + 1) * PG))
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let n = g.refused.load(Ordering::SeqCst);
            g.as_ref().as_ref().unregister().unwrap();
            n
        },
    );
    assert_eq!(refused, threads);
}

#[test]
fn c16_register_and_unregister_while_holding_an_invalidation_are_refused() {
    let got = must_return("register/unregister while holding an invalidation", || {
        let mm = AddressSpace::<P>::new();
        let a = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        a.as_ref().register(&mm).unwrap();
        let inv = mm
            .invalidate_range_start(Range::new(0, PG, Event::Unmap))
            .unwrap();
        let b = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        let r1 = b.as_ref().register(&mm);
        let r2 = a.as_ref().unregister();
        let r3 = mm.release();
        inv.end();
        a.as_ref().unregister().unwrap();
        (r1, r2, r3)
    });
    assert_eq!(
        got,
        (
            Err(Error::InvalidationHeld),
            Err(Error::InvalidationHeld),
            Err(Error::InvalidationHeld)
        )
    );
}

/// The same refusal whatever path the held invalidation took: no subscriptions object
/// yet (counted in the platform's unsubscribed counters), the object with an empty list
/// (the inline bracketed path), and a subscriber to call (the out-of-line path). Each
/// must count itself as held, or the registration waits for it: a hang.
#[test]
fn c16_register_while_holding_an_invalidation_is_refused_on_every_path() {
    for state in ["no object", "object, no subscriber", "one subscriber"] {
        let got = must_return(state, move || {
            let mm = AddressSpace::<P>::new();
            let a = Box::pin(Subscriber::<_, P>::new(Rec::default()));
            match state {
                "no object" => {}
                "object, no subscriber" => mm.prepare().unwrap(),
                _ => a.as_ref().register(&mm).unwrap(),
            }
            let inv = mm
                .invalidate_range_start(Range::new(0, PG, Event::Unmap))
                .unwrap();
            let b = Box::pin(Subscriber::<_, P>::new(Rec::default()));
            let r = b.as_ref().register(&mm);
            inv.end();
            if a.is_registered() {
                a.as_ref().unregister().unwrap();
            }
            r
        });
        assert_eq!(got, Err(Error::InvalidationHeld), "{state}");
    }
}

/// A callback that panics leaves nothing in flight: later registrations return.
#[test]
fn c16_registration_after_a_callback_panicked_returns() {
    struct Panics;
    impl SubscriberOps for Panics {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            panic!("a subscriber's bug");
        }
    }
    must_return("register after a callback panicked", || {
        let mm = Arc::new(AddressSpace::<P>::new());
        let p = Box::pin(Subscriber::<_, P>::new(Panics));
        p.as_ref().register(&mm).unwrap();
        let mm2 = mm.clone();
        let r = thread::spawn(move || unmap(&mm2, 0, PG)).join();
        assert!(r.is_err(), "the callback panicked");
        let b = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        b.as_ref().register(&mm).unwrap();
        b.as_ref().unregister().unwrap();
        p.as_ref().unregister().unwrap();
    });
}

/// A leaked invalidation stays held by its task: that task gets an error instead of
/// waiting for itself.
#[test]
fn c16_registration_after_a_leaked_invalidation_returns() {
    let got = must_return("register after mem::forget(invalidation)", || {
        let mm: &'static AddressSpace<P> = Box::leak(Box::new(AddressSpace::new()));
        let a = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        a.as_ref().register(mm).unwrap();
        std::mem::forget(
            mm.invalidate_range_start(Range::new(0, PG, Event::Unmap))
                .unwrap(),
        );
        let b = Box::pin(Subscriber::<_, P>::new(Rec::default()));
        let r = b.as_ref().register(mm);
        // Both subscribers stay registered for ever with the leaked range in flight.
        std::mem::forget(a);
        std::mem::forget(b);
        r
    });
    assert_eq!(got, Err(Error::InvalidationHeld));
}

// ------------------------------------------------------------------ C-02, C-04, bug 7

static SHARED_LOG: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

struct Logged;
impl SubscriberOps for Logged {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        SHARED_LOG.lock().unwrap().push("start");
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        SHARED_LOG.lock().unwrap().push("end");
    }
}
// SAFETY: `alloc` returns a fresh leaked box; `free` takes back exactly those.
unsafe impl SharedOps<P> for Logged {
    fn alloc(_mm: &AddressSpace<P>) -> Option<std::ptr::NonNull<Shared<Self, P>>> {
        Some(std::ptr::NonNull::from(Box::leak(Box::new(Shared::new(
            Logged,
        )))))
    }
    unsafe fn free(this: std::ptr::NonNull<Shared<Self, P>>) {
        SHARED_LOG.lock().unwrap().push("free");
        // SAFETY: from `alloc`, unregistered, not used again (the trait's contract).
        drop(unsafe { Box::from_raw(this.as_ptr()) });
    }
}

/// The last `put` between a start and its end: the end still comes, before the free.
#[test]
fn c02_last_put_between_start_and_end_still_gets_the_end() {
    let mm = AddressSpace::<P>::new();
    let r = mm.get::<Logged>().unwrap();
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    r.put();
    inv.end();
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(*SHARED_LOG.lock().unwrap(), vec!["start", "end", "free"]);
}

/// Teardown while an invalidation is in flight: the subscriber still gets the end of
/// the start it got.
#[test]
fn c02_teardown_during_an_invalidation_still_delivers_its_end() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    let t = {
        let mm = mm.clone();
        thread::spawn(move || mm.release())
    };
    thread::sleep(Duration::from_millis(100));
    inv.end();
    t.join().unwrap().unwrap();
    assert_eq!(s.releases.load(Ordering::SeqCst), 1);
    assert_eq!(
        (
            s.starts.load(Ordering::SeqCst),
            s.ends.load(Ordering::SeqCst)
        ),
        (1, 1),
        "a start without its end across teardown"
    );
    // After teardown nothing reaches it.
    unmap(&mm, 0, PG);
    assert_eq!(s.starts.load(Ordering::SeqCst), 1);
    s.as_ref().unregister().unwrap();
}

/// Counters of the [`Counted`] kinds, one slot per kind: the tests that use them run in
/// parallel.
static KIND_STARTS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
static KIND_ENDS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
static KIND_FREES: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
/// The kind of `c02_last_put_during_*`.
const LATE: usize = 0;
/// The kind of `c05_synchronize_*`.
const PARKED: usize = 1;
/// The kind of `c05_last_put_after_teardown_*`.
const AFTER_TEARDOWN: usize = 2;
/// The two kinds of `c05_two_zombies_*`.
const PAIR: [usize; 2] = [3, 4];

/// A shared kind that counts its starts, ends and frees in slot `K` (one test each).
struct Counted<const K: usize>;
impl<const K: usize> SubscriberOps for Counted<K> {
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        KIND_STARTS[K].fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        KIND_ENDS[K].fetch_add(1, Ordering::SeqCst);
    }
}
// SAFETY: `alloc` returns a fresh leaked box; `free` takes back exactly those.
unsafe impl<const K: usize> SharedOps<P> for Counted<K> {
    fn alloc(_mm: &AddressSpace<P>) -> Option<std::ptr::NonNull<Shared<Self, P>>> {
        Some(std::ptr::NonNull::from(Box::leak(Box::new(Shared::new(
            Counted::<K>,
        )))))
    }
    unsafe fn free(this: std::ptr::NonNull<Shared<Self, P>>) {
        KIND_FREES[K].fetch_add(1, Ordering::SeqCst);
        // SAFETY: from `alloc`, unregistered, not used again (the trait's contract).
        drop(unsafe { Box::from_raw(this.as_ptr()) });
    }
}

/// Start an invalidation of the first page of `mm` on another thread and return once it
/// is in flight: it ends when the returned sender sends (or is dropped).
fn hold_invalidation(mm: &Arc<AddressSpace<P>>) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (held_tx, held) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let mm = mm.clone();
    let holder = thread::spawn(move || {
        let inv = mm
            .invalidate_range_start(Range::new(0, PG, Event::Unmap))
            .unwrap();
        held_tx.send(()).unwrap();
        let _ = go.recv();
        inv.end();
    });
    held.recv().unwrap();
    (go_tx, holder)
}

/// The last `put` of a shared subscriber while another thread's registration waits for
/// its grace period, between the start and the end of an invalidation that began after
/// that grace period did (so the registration does not wait for it). When the grace
/// period ends, the registration unlinks the zombies it covers: only those hidden before
/// it began. This one was hidden later, and the invalidation still in flight must reach
/// it for its end (C-02). The mutant `hidden_at -> Some(0)` unlinked it there.
///
/// Choreography (no assertion depends on timing; the sleeps only make the window
/// likely): thread R holds an invalidation, so the registration on thread A flips the
/// grace period and then waits for R; only then does this thread start its own
/// invalidation (on the new index, not waited for), and give back the last reference.
/// R ends, A's grace period ends and A sweeps; then this thread ends its invalidation.
#[test]
fn c02_last_put_during_a_registration_grace_period_still_gets_the_end() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let r = mm.get::<Counted<LATE>>().unwrap();
    let (r_go_tx, holder) = hold_invalidation(&mm);
    let registered = Arc::new(AtomicBool::new(false));
    let registrar = {
        let (mm, registered) = (mm.clone(), registered.clone());
        thread::spawn(move || {
            let x = Box::pin(Subscriber::<_, P>::new(Rec::default()));
            x.as_ref().register(&mm).unwrap();
            registered.store(true, Ordering::SeqCst);
            x.as_ref().unregister().unwrap();
        })
    };
    // Let A read its generation, flip, and block on R.
    thread::sleep(Duration::from_millis(200));
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    assert_eq!(KIND_STARTS[LATE].load(Ordering::SeqCst), 2);
    r.put();
    r_go_tx.send(()).unwrap();
    holder.join().unwrap();
    // Let A finish its grace period and its sweep. In a schedule where A had not
    // flipped before our start, A waits for our end instead: give up waiting then.
    for _ in 0..200 {
        if registered.load(Ordering::SeqCst) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    inv.end();
    registrar.join().unwrap();
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(
        (
            KIND_STARTS[LATE].load(Ordering::SeqCst),
            KIND_ENDS[LATE].load(Ordering::SeqCst)
        ),
        (2, 2),
        "C-02: a start without its end (the zombie was unlinked too early)"
    );
}

/// A second teardown returns only after the first one's callbacks have finished.
#[test]
fn c04_second_teardown_waits_for_the_first() {
    struct SlowRelease {
        entered: AtomicBool,
        done: AtomicBool,
    }
    impl SubscriberOps for SlowRelease {
        fn release(&self) {
            self.entered.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(200));
            self.done.store(true, Ordering::SeqCst);
        }
    }
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Arc::new(Box::pin(Subscriber::<_, P>::new(SlowRelease {
        entered: AtomicBool::new(false),
        done: AtomicBool::new(false),
    })));
    s.as_ref().as_ref().register(&mm).unwrap();
    let t = {
        let mm = mm.clone();
        thread::spawn(move || mm.release())
    };
    while !s.entered.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    let _ = mm.release();
    assert!(
        s.done.load(Ordering::SeqCst),
        "the second teardown returned while the first one's release was running"
    );
    let _ = t.join().unwrap();
    s.as_ref().as_ref().unregister().unwrap();
}

// ------------------------------------------------------------------ C-22, bug 5

/// The address space goes before its subscribers; they unregister afterwards. Under
/// Miri this checks the last reference is freed through a pointer that may free it.
#[test]
fn c22_address_space_dropped_before_its_subscribers() {
    let mm = Box::new(AddressSpace::<P>::new());
    let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    s.as_ref().register(&mm).unwrap();
    let m = Box::pin(IntervalSubscriber::new(Mirror));
    m.as_ref().insert(&mm, 0, PG).unwrap();
    unmap(&mm, 0, PG);
    drop(mm);
    assert_eq!(s.releases.load(Ordering::SeqCst), 1);
    m.as_ref().remove().unwrap();
    s.as_ref().unregister().unwrap();
    notifier_core::synchronize::<P>().unwrap();
}

/// `read_begin` racing `remove` on another thread after the address space is gone.
#[test]
fn c22_read_begin_racing_remove_after_the_space_is_gone() {
    let rounds = if cfg!(miri) { 3 } else { 200 };
    for _ in 0..rounds {
        let mm = Box::new(AddressSpace::<P>::new());
        let m = Arc::new(Box::pin(IntervalSubscriber::new(Mirror)));
        m.as_ref().as_ref().insert(&mm, 0, PG).unwrap();
        drop(mm);
        let r = {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..8 {
                    let _ = m.interval().read_begin();
                }
            })
        };
        m.as_ref().as_ref().remove().unwrap();
        r.join().unwrap();
    }
    notifier_core::synchronize::<P>().unwrap();
}

/// `unexport` from inside `revoke` waits for that very `revoke`: it must be refused.
#[test]
fn c16_unexport_from_inside_revoke_is_refused() {
    use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
    struct SelfUnexport {
        me: Mutex<Option<usize>>,
        got: Mutex<Option<Result<(), Error>>>,
    }
    impl ExportOps<P> for SelfUnexport {
        fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
            let me = self.me.lock().unwrap().unwrap();
            // SAFETY: the exporter below is pinned on the heap and outlives this call.
            let ex =
                unsafe { Pin::new_unchecked(&*(me as *const Exporter<'static, SelfUnexport, P>)) };
            // SAFETY: the page is pinned by its owner for as long as it is exported.
            let page = unsafe {
                Pin::new_unchecked(
                    &*(page as *const ExportedPage<P>).cast::<ExportedPage<'static, P>>(),
                )
            };
            *self.got.lock().unwrap() = Some(ex.unexport(page));
        }
    }
    let got = must_return("unexport from inside revoke", || {
        let registry: &'static ExportRegistry<P> = Box::leak(Box::new(ExportRegistry::new()));
        let ex = Box::pin(Exporter::new(
            registry,
            SelfUnexport {
                me: Mutex::new(None),
                got: Mutex::new(None),
            },
        ));
        *ex.me.lock().unwrap() = Some(&*ex as *const _ as usize);
        let page = Box::pin(ExportedPage::new());
        ex.as_ref().export(page.as_ref(), 7).unwrap();
        let _ = registry.before_free(7);
        let got = ex.got.lock().unwrap().take();
        let _ = ex.as_ref().unexport(page.as_ref());
        got
    });
    assert_eq!(got, Some(Err(Error::InCallback)));
}

/// An address space nobody ever subscribed to, torn down: later invalidations (the
/// exit path's unmaps) still start and end without error, and registration is refused.
#[test]
fn c01_invalidations_after_teardown_of_an_unused_space() {
    let mm = AddressSpace::<P>::new();
    mm.release().unwrap();
    unmap(&mm, 0, PG);
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap).non_blocking())
        .unwrap()
        .end();
    let s = Box::pin(Subscriber::<_, P>::new(Rec::default()));
    assert_eq!(s.as_ref().register(&mm), Err(Error::Dead));
}

// ------------------------------------------------------------------ mutants (issue 13)

/// An insertion of an interval that another thread is removing is refused: `remove`
/// keeps the interval claimed (`BUSY`) while it waits for the invalidation in flight,
/// so the insertion cannot link it a second time (C-13, C-16). Written for the mutant
/// that cleared the claim instead of tagging it.
#[test]
fn c16_insert_while_the_same_interval_is_being_removed_is_refused() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let m = Arc::pin(IntervalSubscriber::<_, P>::new(Mirror));
    m.as_ref().insert(&mm, 0, PG).unwrap();
    // The tree is walked: a removal must wait for this invalidation's end.
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    let remover = {
        let m = m.clone();
        thread::spawn(move || m.as_ref().remove())
    };
    // Let the removal claim the interval and wait.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        m.as_ref().insert(&mm, 0, PG),
        Err(Error::AlreadyRegistered),
        "an interval being removed was inserted again"
    );
    inv.end();
    assert_eq!(remover.join().unwrap(), Ok(()));
    assert!(!m.interval().is_inserted());
}

/// A subscriber that leaves the ageing callbacks to their defaults answers "not young"
/// (C-15): the defaults must not make every page look recently used. Written for the
/// mutants that made the defaults answer true.
#[test]
fn c15_default_ageing_callbacks_answer_not_young() {
    struct StartOnly;
    impl SubscriberOps for StartOnly {
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            Ok(())
        }
    }
    let mm = AddressSpace::<P>::new();
    let s = Box::pin(Subscriber::<_, P>::new(StartOnly));
    s.as_ref().register(&mm).unwrap();
    assert_eq!(mm.clear_flush_young(0, PG), Ok(false));
    assert_eq!(mm.clear_young(0, PG), Ok(false));
    assert_eq!(mm.test_young(0), Ok(false));
    s.as_ref().unregister().unwrap();
}

/// Once `unregister` has hidden the subscriber (after its `release`), no TLB flush or
/// ageing call begins on it, though it stays linked while unregister waits for the
/// invalidations in flight (issue 13 item 7; the docs of `SubscriberOps::release`).
/// The hiding is observed, not timed: probe invalidations stop reaching the subscriber.
#[test]
fn c04_no_tlb_flush_or_ageing_call_begins_once_unregister_has_hidden_it() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let s = Arc::new(Box::pin(Subscriber::<_, P>::new(Rec::default())));
    s.as_ref().as_ref().register(&mm).unwrap();
    // An invalidation held in flight keeps unregister in its grace period, with the
    // subscriber hidden but still linked.
    let (go_tx, holder) = hold_invalidation(&mm);
    let unregistering = {
        let s = s.clone();
        thread::spawn(move || s.as_ref().as_ref().unregister())
    };
    // Hidden once a fresh invalidation no longer reaches it.
    let mut hidden = false;
    for _ in 0..2_000 {
        let before = s.starts.load(Ordering::SeqCst);
        unmap(&mm, 2 * PG, 3 * PG);
        if s.releases.load(Ordering::SeqCst) == 1 && s.starts.load(Ordering::SeqCst) == before {
            hidden = true;
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert!(hidden, "unregister never hid the subscriber");
    let (tlbs, young) = (
        s.tlbs.load(Ordering::SeqCst),
        s.young.load(Ordering::SeqCst),
    );
    mm.invalidate_secondary_tlbs(0, 4 * PG).unwrap();
    let _ = mm.clear_young(0, 4 * PG);
    let _ = mm.clear_flush_young(0, 4 * PG);
    assert_eq!(
        (
            s.tlbs.load(Ordering::SeqCst),
            s.young.load(Ordering::SeqCst)
        ),
        (tlbs, young),
        "a TLB flush or an ageing call reached a hidden subscriber"
    );
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(unregistering.join().unwrap(), Ok(()));
    assert_eq!(s.releases.load(Ordering::SeqCst), 1);
}

/// C-05: `synchronize` returns only once every shared subscriber put so far is freed,
/// also one whose last `put` came while an invalidation that saw it was still in
/// flight (it waits, as a zombie, for that invalidation's end).
#[test]
fn c05_synchronize_waits_for_a_put_subscriber_parked_behind_an_invalidation() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let r = mm.get::<Counted<PARKED>>().unwrap();
    let (go_tx, holder) = hold_invalidation(&mm);
    r.put();
    let syncing = thread::spawn(|| {
        notifier_core::synchronize::<P>().unwrap();
        KIND_FREES[PARKED].load(Ordering::SeqCst)
    });
    thread::sleep(Duration::from_millis(50));
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(
        syncing.join().unwrap(),
        1,
        "synchronize returned before the put subscriber was freed"
    );
}

/// C-05: the last `put` of a shared subscriber that teardown has already unlinked (the
/// address space was torn down while a user still held it). Invalidations that began
/// before that unlink may still be walking over it, so its free waits on the pending
/// list for them; with none in flight the put's own sweep queues it, and `synchronize`
/// returns once it has run, exactly once.
#[test]
fn c05_last_put_after_teardown_frees_once() {
    let mm = AddressSpace::<P>::new();
    let r = mm.get::<Counted<AFTER_TEARDOWN>>().unwrap();
    mm.release().unwrap();
    r.put();
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(KIND_FREES[AFTER_TEARDOWN].load(Ordering::SeqCst), 1);
    drop(mm);
    notifier_core::synchronize::<P>().unwrap();
    assert_eq!(KIND_FREES[AFTER_TEARDOWN].load(Ordering::SeqCst), 1);
}

/// C-05: two shared subscribers put while an invalidation is in flight both become
/// zombies; its end unlinks both onto the pending list, and both are freed.
#[test]
fn c05_two_zombies_both_freed() {
    let mm = Arc::new(AddressSpace::<P>::new());
    let a = mm.get::<Counted<{ PAIR[0] }>>().unwrap();
    let b = mm.get::<Counted<{ PAIR[1] }>>().unwrap();
    let (go_tx, holder) = hold_invalidation(&mm);
    a.put();
    b.put();
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    notifier_core::synchronize::<P>().unwrap();
    for k in PAIR {
        assert_eq!(KIND_FREES[k].load(Ordering::SeqCst), 1, "kind {k}");
    }
}
