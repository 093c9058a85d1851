//! Differential driver: a byte string is decoded into calls on the core (register,
//! unregister, interval insert and remove, invalidations — blockable or not, nested,
//! overlapping, refused — young calls, teardown, and calls made from inside callbacks)
//! and on a plain reference model of the contract; any difference in which callbacks
//! were called, with what, or in what the calls returned, panics.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/differential.rs`) and by the
//! corpus replay test (`notifier-core/tests/differential.rs`), which runs every file of
//! `fuzz/corpus/differential` on stable Rust in the ordinary test command.
//!
//! Calls that would wait for an invalidation the same thread holds (register,
//! unregister, teardown, the first insert, the removal of an interval the open
//! invalidations walked) are decoded while invalidations are open too: the core must
//! refuse them with [`Error::InvalidationHeld`] and change nothing (C-16; in Linux they
//! would deadlock).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Error, Event, Interval, IntervalOps, IntervalSubscriber, Invalidation, Range,
    Subscriber, SubscriberOps, WouldBlock,
};

const PG: usize = 4096;
const SUBS: usize = 4;
const IVS: usize = 4;
/// The fuzzed address space: 64 pages.
const SPACE: usize = 64;

/// A callback as the subscriber saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Start(usize, usize, usize, bool),
    End(usize, usize, usize, bool),
    Release,
    Tlbs(usize, usize),
    Young,
}

fn ev_code(e: Event) -> usize {
    e as usize
}

struct Sub {
    calls: Mutex<Vec<Call>>,
    refuse_nb: AtomicBool,
    young: AtomicBool,
    /// If set: on start, try to unregister subscriber `evil_target` (must be refused).
    evil: AtomicBool,
    evil_result: Mutex<Option<Result<(), Error>>>,
    evil_target: std::sync::atomic::AtomicPtr<Subscriber<Sub, P>>,
}

impl Sub {
    fn new() -> Self {
        Sub {
            calls: Mutex::new(Vec::new()),
            refuse_nb: AtomicBool::new(false),
            young: AtomicBool::new(false),
            evil: AtomicBool::new(false),
            evil_result: Mutex::new(None),
            evil_target: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        }
    }
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
}

impl SubscriberOps for Sub {
    fn release(&self) {
        self.calls.lock().unwrap().push(Call::Release);
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if self.evil.load(Ordering::Relaxed) {
            let t = self.evil_target.load(Ordering::Relaxed);
            // SAFETY: the driver points `evil_target` at a pinned subscriber that lives
            // for the whole run.
            if let Some(t) = unsafe { t.as_ref() } {
                // SAFETY: as above: pinned.
                let r = unsafe { Pin::new_unchecked(t) }.unregister();
                *self.evil_result.lock().unwrap() = Some(r);
            }
        }
        if !r.blockable && self.refuse_nb.load(Ordering::Relaxed) {
            return Err(WouldBlock);
        }
        self.calls
            .lock()
            .unwrap()
            .push(Call::Start(r.start, r.end, ev_code(r.event), r.blockable));
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        self.calls
            .lock()
            .unwrap()
            .push(Call::End(r.start, r.end, ev_code(r.event), r.blockable));
    }
    fn invalidate_secondary_tlbs(&self, s: usize, e: usize) {
        self.calls.lock().unwrap().push(Call::Tlbs(s, e));
    }
    fn clear_flush_young(&self, _s: usize, _e: usize) -> bool {
        self.calls.lock().unwrap().push(Call::Young);
        self.young.load(Ordering::Relaxed)
    }
    fn clear_young(&self, _s: usize, _e: usize) -> bool {
        self.calls.lock().unwrap().push(Call::Young);
        self.young.load(Ordering::Relaxed)
    }
    fn test_young(&self, _a: usize) -> bool {
        self.calls.lock().unwrap().push(Call::Young);
        self.young.load(Ordering::Relaxed)
    }
}

struct Iv {
    calls: Mutex<Vec<(usize, usize, usize)>>,
    refuse_nb: AtomicBool,
    seq_seen: AtomicU32,
}

impl IntervalOps<Interval<P>> for Iv {
    fn invalidate(&self, iv: &Interval<P>, r: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        if !r.blockable && self.refuse_nb.load(Ordering::Relaxed) {
            return Err(WouldBlock);
        }
        let _g = self.calls.lock().unwrap();
        iv.set_seq(cur_seq);
        drop(_g);
        self.seq_seen.fetch_add(1, Ordering::Relaxed);
        self.calls
            .lock()
            .unwrap()
            .push((r.start, r.end, ev_code(r.event)));
        Ok(())
    }
}

/// The reference model's view of one open invalidation.
struct Open<'a> {
    inv: Invalidation<'a, P>,
    range: Range,
    /// List subscribers that got its start (the model's prediction).
    subs: Vec<usize>,
}

/// Decoder over the fuzz input.
struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

fn events(b: u8) -> Event {
    [
        Event::Unmap,
        Event::Clear,
        Event::ProtectionVma,
        Event::ProtectionPage,
        Event::SoftDirty,
        Event::Migrate,
        Event::Exclusive,
    ][b as usize % 7]
}

/// Run one input. Panics on any difference between the core and the model.
pub fn run(data: &[u8]) {
    let mut input = Bytes(data);
    let mm = AddressSpace::<P>::new();
    let subs: Vec<Pin<Box<Subscriber<Sub, P>>>> = (0..SUBS)
        .map(|_| Box::pin(Subscriber::new(Sub::new())))
        .collect();
    let ivs: Vec<Pin<Box<IntervalSubscriber<Iv, P>>>> = (0..IVS)
        .map(|_| {
            Box::pin(IntervalSubscriber::new(Iv {
                calls: Mutex::new(Vec::new()),
                refuse_nb: AtomicBool::new(false),
                seq_seen: AtomicU32::new(0),
            }))
        })
        .collect();
    // The model.
    let mut registered = [false; SUBS];
    let mut released = [false; SUBS];
    let mut reg_order: Vec<usize> = Vec::new();
    // Interval: Some((first, last)) when inserted; `intree` once the insertion is
    // applied (it is deferred while the tree is busy, C-13).
    let mut inserted: [Option<(usize, usize)>; IVS] = [None; IVS];
    let mut intree = [false; IVS];
    // The core's `invalidate_seq` is odd: an open invalidation walked the tree, or an
    // interval was inserted while invalidations were open.
    let mut busy = false;
    let mut ever_inserted = false;
    let mut dead = false;
    let mut open: Vec<Open<'_>> = Vec::new();

    let check_subs = |want: &[Vec<Call>], what: &str| {
        for (i, s) in subs.iter().enumerate() {
            let mut got = s.take();
            let mut w = want[i].clone();
            got.sort();
            w.sort();
            assert_eq!(got, w, "{what}: subscriber {i}");
        }
    };

    while let Some(op) = input.next() {
        let arg = input.next().unwrap_or(0);
        let arg2 = input.next().unwrap_or(0);
        let i = arg as usize % SUBS;
        let j = arg as usize % IVS;
        let mut want: Vec<Vec<Call>> = vec![Vec::new(); SUBS];
        match op % 12 {
            0 => {
                let r = subs[i].as_ref().register(&mm);
                let expect = if registered[i] {
                    Err(Error::AlreadyRegistered)
                } else if !open.is_empty() {
                    Err(Error::InvalidationHeld)
                } else if dead {
                    Err(Error::Dead)
                } else {
                    Ok(())
                };
                assert_eq!(r, expect, "register {i}");
                if r.is_ok() {
                    registered[i] = true;
                    released[i] = false;
                    reg_order.push(i);
                }
            }
            1 => {
                let r = subs[i].as_ref().unregister();
                if registered[i] && !open.is_empty() {
                    assert_eq!(r, Err(Error::InvalidationHeld), "unregister {i}, held");
                } else if registered[i] {
                    assert_eq!(r, Ok(()), "unregister {i}");
                    if !released[i] {
                        want[i].push(Call::Release);
                    }
                    registered[i] = false;
                    reg_order.retain(|&k| k != i);
                } else {
                    assert_eq!(r, Err(Error::NotRegistered), "unregister unknown {i}");
                }
            }
            2 => {
                let start = (arg2 as usize % SPACE) * PG;
                let len = (1 + input.next().unwrap_or(0) as usize % 8) * PG;
                let r = ivs[j].as_ref().insert(&mm, start, len);
                let expect = if inserted[j].is_some() {
                    Err(Error::AlreadyRegistered)
                } else if dead {
                    Err(Error::Dead)
                } else if !ever_inserted && !open.is_empty() {
                    // The first insertion waits for the invalidations in flight.
                    Err(Error::InvalidationHeld)
                } else {
                    Ok(())
                };
                assert_eq!(r, expect, "insert {j}");
                if r.is_ok() {
                    inserted[j] = Some((start, start + len - 1));
                    ever_inserted = true;
                    // Not called by the invalidations already open; while the tree is
                    // busy the insertion waits for the last of them to end.
                    if open.is_empty() {
                        intree[j] = true;
                    } else if !busy {
                        intree[j] = true;
                        busy = true;
                    }
                }
            }
            3 => {
                let r = ivs[j].as_ref().remove();
                if inserted[j].is_some() && intree[j] && busy {
                    // It would wait for the open invalidations that walked the tree.
                    assert_eq!(r, Err(Error::InvalidationHeld), "remove {j}, held");
                } else if inserted[j].is_some() {
                    assert_eq!(r, Ok(()), "remove {j}");
                    inserted[j] = None;
                    intree[j] = false;
                } else {
                    assert_eq!(r, Err(Error::NotRegistered), "remove unknown {j}");
                }
            }
            4 | 5 => {
                // Start: blockable unless the op says otherwise; refusal configured.
                let a = arg as usize % SPACE;
                let b = a + 1 + arg2 as usize % 8;
                let blockable = op % 12 == 4;
                let mut range = Range::new(a * PG, b * PG, events(arg2));
                if !blockable {
                    range = range.non_blocking();
                }
                // The model: intervals first (in order of start), then the list newest
                // first; a refusal stops the walk and unwinds.
                let mut itv: Vec<usize> = (0..IVS)
                    .filter(|&k| {
                        intree[k]
                            && inserted[k].is_some_and(|(f, l)| f < range.end && l >= range.start)
                    })
                    .collect();
                itv.sort_by_key(|&k| {
                    let (f, _) = inserted[k].unwrap();
                    (f, &*ivs[k] as *const _ as usize)
                });
                let iv_refuses = itv
                    .iter()
                    .any(|&k| !blockable && ivs[k].refuse_nb.load(Ordering::Relaxed));
                let mut list_called = Vec::new();
                let mut refused = iv_refuses;
                if !iv_refuses {
                    for &k in reg_order.iter().rev() {
                        if released[k] {
                            continue;
                        }
                        if !blockable && subs[k].refuse_nb.load(Ordering::Relaxed) {
                            refused = true;
                            break;
                        }
                        list_called.push(k);
                    }
                }
                let before: Vec<u32> = ivs
                    .iter()
                    .map(|v| v.seq_seen.load(Ordering::Relaxed))
                    .collect();
                let r = mm.invalidate_range_start(range);
                let c = |_k: usize| {
                    (
                        range.start,
                        range.end,
                        ev_code(range.event),
                        range.blockable,
                    )
                };
                for &k in &list_called {
                    let (s, e, ev, bl) = c(k);
                    want[k].push(Call::Start(s, e, ev, bl));
                    if refused {
                        want[k].push(Call::End(s, e, ev, bl));
                    }
                }
                // Intervals: every overlapping one up to the refuser was called.
                let after: Vec<u32> = ivs
                    .iter()
                    .map(|v| v.seq_seen.load(Ordering::Relaxed))
                    .collect();
                for k in 0..IVS {
                    let called = after[k] - before[k];
                    let overlaps = itv.contains(&k);
                    assert!(
                        called <= 1,
                        "interval {k} called {called} times by one start"
                    );
                    if !overlaps {
                        assert_eq!(called, 0, "interval {k} called without overlap");
                    } else if !iv_refuses {
                        assert_eq!(called, 1, "overlapping interval {k} not called");
                    }
                    ivs[k].calls.lock().unwrap().clear();
                }
                if !itv.is_empty() {
                    busy = true;
                }
                match r {
                    Ok(inv) => {
                        assert!(!refused, "a refusal was not reported");
                        open.push(Open {
                            inv,
                            range,
                            subs: list_called,
                        });
                    }
                    Err(e) => {
                        assert!(refused, "start failed without a refusal: {e:?}");
                        assert_eq!(e, Error::WouldBlock);
                        if open.is_empty() && busy {
                            busy = false;
                            for k in 0..IVS {
                                intree[k] = inserted[k].is_some();
                            }
                        }
                    }
                }
            }
            // End the newest or the oldest open invalidation (nesting and overlap).
            6 if !open.is_empty() => {
                {
                    let o = if arg % 2 == 0 {
                        open.pop().unwrap()
                    } else {
                        open.remove(0)
                    };
                    let r = o.range;
                    for &k in &o.subs {
                        if !released[k] {
                            want[k].push(Call::End(r.start, r.end, ev_code(r.event), r.blockable));
                        }
                    }
                    o.inv.end();
                    if open.is_empty() && busy {
                        // The last one: deferred insertions are applied.
                        busy = false;
                        for k in 0..IVS {
                            intree[k] = inserted[k].is_some();
                        }
                    }
                }
            }
            7 => {
                subs[i].refuse_nb.store(arg2 % 2 == 1, Ordering::Relaxed);
                ivs[j].refuse_nb.store(arg2 % 4 == 3, Ordering::Relaxed);
                subs[i].young.store(arg2 % 3 == 0, Ordering::Relaxed);
            }
            8 => {
                let a = (arg as usize % SPACE) * PG;
                let b = a + (1 + arg2 as usize % 4) * PG;
                let live: Vec<usize> = reg_order
                    .iter()
                    .copied()
                    .filter(|&k| !released[k])
                    .collect();
                let young_any = live.iter().any(|&k| subs[k].young.load(Ordering::Relaxed));
                match arg2 % 3 {
                    0 => {
                        assert_eq!(mm.clear_flush_young(a, b), Ok(young_any));
                        for &k in &live {
                            want[k].push(Call::Young);
                        }
                    }
                    1 => {
                        assert_eq!(mm.clear_young(a, b), Ok(young_any));
                        for &k in &live {
                            want[k].push(Call::Young);
                        }
                    }
                    _ => {
                        assert_eq!(mm.test_young(a), Ok(young_any));
                        // Newest first, stopping at the first young one.
                        for &k in live.iter().rev() {
                            want[k].push(Call::Young);
                            if subs[k].young.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                }
            }
            9 => {
                let a = (arg as usize % SPACE) * PG;
                let b = a + (1 + arg2 as usize % 4) * PG;
                assert_eq!(mm.invalidate_secondary_tlbs(a, b), Ok(()));
                for &k in &reg_order {
                    if !released[k] {
                        want[k].push(Call::Tlbs(a, b));
                    }
                }
            }
            10 if !open.is_empty() => {
                // Teardown would wait for the invalidations this thread holds.
                assert_eq!(mm.release(), Err(Error::InvalidationHeld), "teardown, held");
            }
            10 => {
                // Teardown: release exactly once for everyone registered.
                mm.release()
                    .expect("teardown outside callbacks is never refused");
                if !dead {
                    for &k in &reg_order {
                        if !released[k] {
                            want[k].push(Call::Release);
                            released[k] = true;
                        }
                    }
                    for k in 0..IVS {
                        if intree[k] {
                            let c = std::mem::take(&mut *ivs[k].calls.lock().unwrap());
                            assert!(
                                c.iter().any(|x| x.2 == ev_code(Event::Release)),
                                "interval {k} got no Release invalidation at teardown"
                            );
                        }
                    }
                }
                dead = true;
            }
            11 if open.is_empty() => {
                // From inside a callback: an unregister is refused, the list unchanged.
                let t = arg2 as usize % SUBS;
                subs[i].evil_target.store(
                    &*subs[t] as *const Subscriber<Sub, P> as *mut _,
                    Ordering::Relaxed,
                );
                subs[i].evil.store(true, Ordering::Relaxed);
                *subs[i].evil_result.lock().unwrap() = None;
                let range = Range::new(0, PG, Event::Clear);
                let called = registered[i] && !released[i];
                let live: Vec<usize> = reg_order
                    .iter()
                    .copied()
                    .filter(|&k| !released[k])
                    .collect();
                let inv = mm.invalidate_range_start(range).expect("blockable start");
                inv.end();
                subs[i].evil.store(false, Ordering::Relaxed);
                for &k in &live {
                    want[k].push(Call::Start(0, PG, ev_code(Event::Clear), true));
                    want[k].push(Call::End(0, PG, ev_code(Event::Clear), true));
                }
                for v in &ivs {
                    v.calls.lock().unwrap().clear();
                }
                let got = *subs[i].evil_result.lock().unwrap();
                if called {
                    let expect = if registered[t] {
                        Err(Error::InCallback)
                    } else {
                        Err(Error::NotRegistered)
                    };
                    assert_eq!(got, Some(expect), "unregister from inside a callback");
                }
            }
            _ => {}
        }
        check_subs(&want, "after op");
    }
    // Close what is open, then everything must be torn down cleanly.
    while let Some(o) = open.pop() {
        o.inv.end();
    }
    for s in &subs {
        let _ = s.as_ref().unregister();
    }
    for v in &ivs {
        let _ = v.as_ref().remove();
    }
}
