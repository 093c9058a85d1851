//! Lock-validator annotations (issue 14): callbacks of an invalidation run under the
//! platform's invalidation map, and every core call that may wait for invalidations in
//! flight announces the wait first, never from inside a callback. On Linux the module
//! maps both to a lockdep map, so that a subscriber lock held across `read_begin` (or
//! `register`, `remove`, `unregister`, teardown) and also taken in a callback is
//! reported as the deadlock it is; the hosted platform counts them, per thread, which
//! is what these tests read.
//! The hosted platform tracks the map in debug builds only.
#![cfg(all(not(loom), debug_assertions))]

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::Duration;

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Error, Event, Interval, IntervalOps, IntervalSubscriber, Range, Subscriber,
    SubscriberOps, WouldBlock,
};

const PG: usize = 4096;

/// What the callbacks saw of the invalidation map: (callback, held).
#[derive(Default)]
struct Seen(Mutex<Vec<(&'static str, bool)>>);

impl Seen {
    fn note(&self, what: &'static str) {
        self.0
            .lock()
            .unwrap()
            .push((what, P::in_invalidation_map()));
    }
    fn take(&self) -> Vec<(&'static str, bool)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl SubscriberOps for Seen {
    fn release(&self) {
        self.note("release");
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.note("start");
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.note("end");
    }
}

struct Mirror {
    seen: Seen,
    /// If set, the callback tries calls that would wait (all refused).
    misuse: AtomicBool,
    refused: Mutex<Vec<Error>>,
}

impl IntervalOps<Interval<P>> for Mirror {
    fn invalidate(&self, iv: &Interval<P>, _r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        self.seen.note("invalidate");
        iv.set_seq(cur_seq);
        if self.misuse.load(Ordering::Relaxed) {
            // Its own interval is being invalidated: `read_begin` would wait for it.
            if let Err(e) = iv.read_begin() {
                self.refused.lock().unwrap().push(e);
            }
        }
        Ok(())
    }
}

fn mirror() -> Mirror {
    Mirror {
        seen: Seen::default(),
        misuse: AtomicBool::new(false),
        refused: Mutex::new(Vec::new()),
    }
}

/// Waits announced on this thread since `before`, and the bad ones.
fn since(before: (usize, usize)) -> (usize, usize) {
    let now = P::wait_annotations();
    (now.0 - before.0, now.1 - before.1)
}

#[test]
fn callbacks_run_under_the_invalidation_map() {
    let mm = AddressSpace::<P>::new();
    let sub = pin!(Subscriber::<Seen, P>::new(Seen::default()));
    sub.as_ref().register(&mm).unwrap();
    let iv = pin!(IntervalSubscriber::<Mirror, P>::new(mirror()));
    iv.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    assert!(!P::in_invalidation_map());
    let inv = mm
        .invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap();
    // Between start and end the primary MMU changes page tables: no callback runs.
    assert!(
        !P::in_invalidation_map(),
        "the map is held between start and end"
    );
    inv.end();
    assert!(!P::in_invalidation_map());
    assert_eq!(sub.seen_take(), [("start", true), ("end", true)]);
    assert_eq!(iv.ops().seen.take(), [("invalidate", true)]);
    // A refused non-blockable start releases the map on its way out too.
    let r = mm.invalidate_range_start(Range::new(0, PG, Event::Unmap).non_blocking());
    drop(r);
    assert!(!P::in_invalidation_map());
    sub.seen_take();
    // `release` is not an invalidation callback.
    sub.as_ref().unregister().unwrap();
    assert_eq!(sub.seen_take(), [("release", false)]);
    iv.as_ref().remove().unwrap();
}

trait SeenTake {
    fn seen_take(&self) -> Vec<(&'static str, bool)>;
}

impl SeenTake for std::pin::Pin<&mut Subscriber<Seen, P>> {
    fn seen_take(&self) -> Vec<(&'static str, bool)> {
        self.ops().take()
    }
}

#[test]
fn registration_unregistration_and_teardown_announce_their_waits() {
    let mm = AddressSpace::<P>::new();
    let sub = pin!(Subscriber::<Seen, P>::new(Seen::default()));
    let before = P::wait_annotations();
    sub.as_ref().register(&mm).unwrap();
    assert_eq!(since(before), (1, 0), "register");
    let before = P::wait_annotations();
    let iv = pin!(IntervalSubscriber::<Mirror, P>::new(mirror()));
    iv.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    assert_eq!(since(before), (1, 0), "the first insertion");
    let before = P::wait_annotations();
    let iv2 = pin!(IntervalSubscriber::<Mirror, P>::new(mirror()));
    iv2.as_ref().insert(&mm, 8 * PG, PG).unwrap();
    assert_eq!(since(before), (0, 0), "a later insertion never waits");
    let before = P::wait_annotations();
    sub.as_ref().unregister().unwrap();
    assert_eq!(since(before), (1, 0), "unregister");
    sub.as_ref().register(&mm).unwrap();
    let before = P::wait_annotations();
    mm.release().unwrap();
    assert_eq!(since(before), (1, 0), "teardown");
    iv.as_ref().remove().unwrap();
    iv2.as_ref().remove().unwrap();
    sub.as_ref().unregister().unwrap();
}

/// `read_begin` and `remove` announce a wait only when they do wait: while another
/// thread's invalidation of their interval is between start and end.
#[test]
fn read_begin_and_remove_announce_the_waits_they_make() {
    let mm = AddressSpace::<P>::new();
    let iv = pin!(IntervalSubscriber::<Mirror, P>::new(mirror()));
    iv.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    let before = P::wait_annotations();
    let seq = iv.interval().read_begin().unwrap();
    assert!(!iv.interval().read_retry(seq));
    assert_eq!(since(before), (0, 0), "read_begin with nothing in flight");
    for remove in [false, true] {
        let started = Barrier::new(2);
        let before = P::wait_annotations();
        let mine = P::wait_annotations_of_this_thread();
        thread::scope(|s| {
            s.spawn(|| {
                let inv = mm
                    .invalidate_range_start(Range::new(0, PG, Event::Unmap))
                    .unwrap();
                started.wait();
                // In flight until the main thread has announced its wait (it then
                // waits, or is about to): the test does not depend on timing. Bounded,
                // so that a missing announcement fails the assertion below instead of
                // hanging.
                for _ in 0..5000 {
                    if mine.get().0 != before.0 {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                inv.end();
            });
            started.wait();
            if remove {
                iv.as_ref().remove().unwrap();
            } else {
                iv.interval().read_begin().unwrap();
            }
        });
        let what = if remove { "remove" } else { "read_begin" };
        assert_eq!(since(before), (1, 0), "{what} waiting for an invalidation");
    }
}

/// From inside a callback the calls that would wait are refused before they announce
/// anything: a validator sees no wait under the map.
#[test]
fn no_wait_is_announced_inside_a_callback() {
    let mm = AddressSpace::<P>::new();
    let iv = pin!(IntervalSubscriber::<Mirror, P>::new(mirror()));
    iv.as_ref().insert(&mm, 0, 4 * PG).unwrap();
    iv.ops().misuse.store(true, Ordering::Relaxed);
    let before = P::wait_annotations();
    mm.invalidate_range_start(Range::new(0, PG, Event::Unmap))
        .unwrap()
        .end();
    assert_eq!(*iv.ops().refused.lock().unwrap(), [Error::InCallback]);
    assert_eq!(since(before), (0, 0));
    iv.ops().misuse.store(false, Ordering::Relaxed);
    iv.as_ref().remove().unwrap();
}
