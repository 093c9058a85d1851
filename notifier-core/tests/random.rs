//! Randomized whole-core concurrency test with a reference oracle (issue 13).
//!
//! Several real threads share one address space per round. Each owns a few list
//! subscribers and interval subscribers and, in a seeded random order, registers,
//! unregisters, inserts, removes, faults (the sequence protocol), invalidates (blockable
//! and not; some subscribers refuse non-blockable starts), flushes secondary TLBs, ages
//! (`clear_young`, `clear_flush_young`, `test_young`); one thread tears the address
//! space down at a random moment. Every callback is recorded, and the oracle checks
//! what each subscriber must have seen:
//!
//! * `pairs`: no `end` without its `start`, no `start` without its `end` (unless that
//!   subscriber refused it), no `end` after a refusal (C-02, C-07, C-08);
//! * `told`: a call that began while a list subscriber was registered reached it,
//!   unless its `release` had already returned (C-01, C-03, C-15);
//! * `settled`: once `register` returned, no invalidation it was not told of is still
//!   between start and end; once `insert` and `read_begin` returned, every overlapping
//!   invalidation still between start and end makes `read_retry` true (C-02, C-09);
//! * `release`: `release` ran exactly once per registration when `unregister` returned
//!   (C-04);
//! * `after`: no callback after `unregister` / `remove` returned (C-03, C-13);
//! * `retry`: `read_retry` is true after any overlapping invalidation whose start returned
//!   after `read_begin` (C-12).
//!
//! The seed of every round is printed on failure; `NOTIFIER_RANDOM_SEED=<n>` runs that
//! round alone, `NOTIFIER_RANDOM_ROUNDS=<n>` changes the number of rounds,
//! `NOTIFIER_RANDOM_NO_TEARDOWN=1` leaves teardown to the end of each round (to tell its
//! violations from the others). Under Miri the test runs one small round.
//!
//! Even rounds exclude registration as Linux does: registrations and insertions hold
//! the round's `mmap` lock for writing, invalidations hold it for reading, and half of
//! them start through a [`RegistrationExcluded`] proof made from it (the other half take
//! the counted path on the same address space); the oracle is the same.
#![cfg(not(loom))]

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{
    AddressSpace, Error, Event, Interval, IntervalOps, IntervalSubscriber, Range,
    RegistrationExcluded, Subscriber, SubscriberOps, WouldBlock,
};

const PG: usize = 4096;
/// Pages of the address space the ranges are drawn from.
const SPACE: usize = 16;

struct Config {
    rounds: u64,
    threads: usize,
    ops: usize,
    lists: usize,
    intervals: usize,
}

const CONFIG: Config = if cfg!(miri) {
    Config {
        rounds: 1,
        threads: 2,
        ops: 12,
        lists: 1,
        intervals: 1,
    }
} else {
    Config {
        rounds: 400,
        threads: 3,
        ops: 400,
        lists: 2,
        intervals: 2,
    }
};

/// xorshift64*: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Whether subscriber `sub` refuses the non-blockable invalidation `inv`.
fn refuses(sub: usize, inv: u64) -> bool {
    (inv.wrapping_mul(31).wrapping_add(sub as u64 * 17)) % 4 == 0
}

thread_local! {
    /// The call the current thread is making (for callbacks that get no range).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Start,
    End,
    Refused,
    Other,
}

/// What the oracle found, by check.
#[derive(Default)]
struct Violations {
    by_check: Mutex<BTreeMap<&'static str, (usize, String)>>,
}

impl Violations {
    fn report(&self, check: &'static str, what: String) {
        let mut m = self.by_check.lock().unwrap();
        let e = m.entry(check).or_insert((0, what));
        e.0 += 1;
    }
}

/// Registration state of a subscriber, written by its owner thread only.
const IDLE: usize = 0;
const REGISTERING: usize = 1;
const REGISTERED: usize = 2;
const LEAVING: usize = 3;

/// The reference record of one subscriber (list or interval).
struct Record {
    id: usize,
    refusing: bool,
    /// Calls that reached it: call id -> kinds.
    calls: Mutex<HashMap<u64, Vec<Kind>>>,
    /// The registration state (low two bits) and the number of its changes (the rest),
    /// in one word: a snapshot must read both at once. (Read apart, a snapshot that was
    /// preempted between the two loads paired `REGISTERED` with a count taken after a
    /// whole unregister; the next register's reset of `released` then looked like one
    /// change, and `told` reported a skip that `release` had made legitimate. Seen in
    /// CI, seed 318, and reproduced with a counter of registrations: 1 run in 60.)
    state: AtomicUsize,
    /// `release` calls of the current registration.
    releases: AtomicUsize,
    /// `release` of the current registration has returned.
    released: AtomicBool,
    /// `unregister` / `remove` has returned (cleared by the next registration).
    gone: AtomicBool,
    /// First byte and last byte covered (intervals).
    first: usize,
    last: usize,
    /// Invalidations overlapping the interval whose start returned (C-12 oracle).
    started: AtomicU64,
    v: Arc<Violations>,
}

impl Record {
    fn new(id: usize, refusing: bool, first: usize, last: usize, v: Arc<Violations>) -> Self {
        Record {
            id,
            refusing,
            calls: Mutex::new(HashMap::new()),
            state: AtomicUsize::new(IDLE),
            releases: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            first,
            last,
            started: AtomicU64::new(0),
            v,
        }
    }

    /// Only the owner thread changes the state.
    fn set_state(&self, s: usize) {
        let w = self.state.load(Ordering::SeqCst);
        self.state
            .store((((w >> 2) + 1) << 2) | s, Ordering::SeqCst);
    }

    fn state(&self) -> usize {
        self.state.load(Ordering::SeqCst) & 3
    }

    fn changes(&self) -> usize {
        self.state.load(Ordering::SeqCst) >> 2
    }

    fn record(&self, call: u64, k: Kind) {
        if self.gone.load(Ordering::SeqCst) {
            self.v.report(
                "after",
                format!(
                    "subscriber {} called ({k:?}, call {call}) after unregister/remove returned",
                    self.id
                ),
            );
        }
        self.calls.lock().unwrap().entry(call).or_default().push(k);
    }

    fn told(&self, call: u64) -> bool {
        self.calls.lock().unwrap().contains_key(&call)
    }

    fn overlaps(&self, r: &Range) -> bool {
        r.start <= self.last && self.first < r.end
    }
}

struct ListOps(Arc<Record>);

impl SubscriberOps for ListOps {
    fn release(&self) {
        let r = &self.0;
        r.record(u64::MAX, Kind::Other);
        r.releases.fetch_add(1, Ordering::SeqCst);
        r.released.store(true, Ordering::SeqCst);
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        let id = range.owner as u64;
        if !range.blockable && self.0.refusing && refuses(self.0.id, id) {
            self.0.record(id, Kind::Refused);
            return Err(WouldBlock);
        }
        self.0.record(id, Kind::Start);
        Ok(())
    }
    fn invalidate_range_end(&self, range: &Range) {
        self.0.record(range.owner as u64, Kind::End);
    }
    fn invalidate_secondary_tlbs(&self, _s: usize, _e: usize) {
        self.0.record(CURRENT.get(), Kind::Other);
    }
    fn clear_flush_young(&self, _s: usize, _e: usize) -> bool {
        self.0.record(CURRENT.get(), Kind::Other);
        false
    }
    fn clear_young(&self, _s: usize, _e: usize) -> bool {
        self.0.record(CURRENT.get(), Kind::Other);
        false
    }
    fn test_young(&self, _a: usize) -> bool {
        self.0.record(CURRENT.get(), Kind::Other);
        false
    }
}

struct IvOps {
    rec: Arc<Record>,
    /// The subscriber's own lock (around `set_seq` and `read_retry`).
    lock: Mutex<()>,
}

impl IntervalOps<Interval<P>> for IvOps {
    fn invalidate(&self, iv: &Interval<P>, range: &Range, cur_seq: u64) -> Result<(), WouldBlock> {
        let id = range.owner as u64;
        if !range.blockable && self.rec.refusing && refuses(self.rec.id, id) {
            self.rec.record(id, Kind::Refused);
            return Err(WouldBlock);
        }
        let _g = self.lock.lock().unwrap();
        iv.set_seq(cur_seq);
        self.rec.record(id, Kind::Start);
        Ok(())
    }
}

type ListSub = Pin<Box<Subscriber<ListOps, P>>>;
type IvSub = Pin<Box<IntervalSubscriber<IvOps, P>>>;

/// What all threads of a round share.
struct Round {
    mm: AddressSpace<P>,
    /// Call ids (0 and `u64::MAX` are reserved).
    next_call: AtomicU64,
    /// Invalidations between the return of their start and their end: id -> (range,
    /// whether it started before anybody subscribed to the address space).
    open: Mutex<HashMap<u64, (Range, bool)>>,
    /// Teardown has begun.
    tearing: AtomicBool,
    /// Whether registration is excluded by `mmap` (even rounds).
    excluded: bool,
    /// The broken twin: registrations and insertions skip `mmap`, so the proofs the
    /// invalidations start through are false.
    false_proof: bool,
    /// Held for writing by registrations and insertions, for reading by invalidations,
    /// in rounds that exclude registration.
    mmap: RwLock<()>,
    lists: Vec<Arc<Record>>,
    intervals: Vec<Arc<Record>>,
    v: Arc<Violations>,
}

impl Round {
    fn call_id(&self) -> u64 {
        self.next_call.fetch_add(1, Ordering::SeqCst)
    }

    /// Snapshot of the list subscribers a call that begins now must reach. (Interval
    /// subscribers are checked by `settled` and `retry` instead: one inserted while the
    /// tree is busy is legitimately skipped, and protected by its odd sequence.)
    fn snapshot(&self) -> Vec<(Arc<Record>, usize)> {
        let mut out = Vec::new();
        for rec in &self.lists {
            let w = rec.state.load(Ordering::SeqCst);
            if w & 3 == REGISTERED {
                out.push((rec.clone(), w >> 2));
            }
        }
        out
    }

    /// The `told` check after the call `id` returned.
    fn check_told(&self, what: &str, id: u64, snap: &[(Arc<Record>, usize)]) {
        if self.tearing.load(Ordering::SeqCst) {
            return;
        }
        for (rec, changes) in snap {
            if rec.told(id) || rec.released.load(Ordering::SeqCst) {
                continue;
            }
            let moved = rec.changes() - changes;
            // Skipped legitimately only once its release returned (C-03), or after a
            // whole unregister.
            if moved >= 2 {
                continue;
            }
            self.v.report(
                "told",
                format!(
                    "{what} {id} did not reach subscriber {} registered before it began \
                     (release not run; state changes since: {moved})",
                    rec.id
                ),
            );
        }
    }

    fn invalidate(&self, rng: &mut Rng) {
        let a = rng.below(SPACE);
        let b = a + 1 + rng.below(SPACE - a);
        let id = self.call_id();
        let mut range = Range::new(a * PG, b * PG, Event::Unmap).with_owner(id as usize);
        if rng.below(3) == 0 {
            range = range.non_blocking();
        }
        let _read = self.excluded.then(|| self.mmap.read().unwrap());
        // SAFETY: in rounds that exclude registration every registration and insertion
        // holds `mmap` for writing (`register`, `insert`), and `_read` holds it for
        // reading until after the proof is dropped; except in the broken twin
        // (`false_proof`), whose point is that the proof is false (the core's memory
        // safety does not rest on it: what breaks is C-02, which the oracle checks).
        let proof = (self.excluded && rng.below(2) == 0)
            .then(|| unsafe { RegistrationExcluded::new(&self.mm) });
        let snap = self.snapshot();
        let fresh = !self.mm.has_subscriptions();
        let started = match &proof {
            Some(ex) => ex.invalidate_range_start(range),
            None => self.mm.invalidate_range_start(range),
        };
        let Ok(inv) = started else {
            return;
        };
        self.check_told("invalidation", id, &snap);
        for rec in &self.intervals {
            if rec.overlaps(&range) {
                rec.started.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.open.lock().unwrap().insert(id, (range, fresh));
        // ... the primary MMU changes the page tables here ...
        if rng.below(2) == 0 {
            thread::yield_now();
        }
        self.open.lock().unwrap().remove(&id);
        inv.end();
    }

    fn flush_or_age(&self, rng: &mut Rng) {
        let a = rng.below(SPACE);
        let id = self.call_id();
        CURRENT.set(id);
        let snap = self.snapshot();
        let (s, e) = (a * PG, (a + 1) * PG);
        let what = match rng.below(4) {
            0 => {
                self.mm.invalidate_secondary_tlbs(s, e).unwrap();
                "invalidate_secondary_tlbs"
            }
            1 => {
                self.mm.clear_young(s, e).unwrap();
                "clear_young"
            }
            2 => {
                self.mm.clear_flush_young(s, e).unwrap();
                "clear_flush_young"
            }
            _ => {
                self.mm.test_young(s).unwrap();
                "test_young"
            }
        };
        self.check_told(what, id, &snap);
        CURRENT.set(0);
    }
}

/// One thread's subscribers.
struct Owned {
    lists: Vec<(ListSub, Arc<Record>)>,
    intervals: Vec<(IvSub, Arc<Record>)>,
}

/// The name of the `settled` check: split by whether the invalidation started before
/// anybody subscribed (it then took the fast path that counts it nowhere).
fn settled(fresh: bool) -> &'static str {
    if fresh {
        "settled (invalidation began on an address space with no subscriptions yet)"
    } else {
        "settled"
    }
}

fn register(round: &Round, sub: &ListSub, rec: &Record) {
    if rec.state() != IDLE {
        return;
    }
    rec.releases.store(0, Ordering::SeqCst);
    rec.released.store(false, Ordering::SeqCst);
    rec.gone.store(false, Ordering::SeqCst);
    rec.set_state(REGISTERING);
    let r = {
        let _write = (round.excluded && !round.false_proof).then(|| round.mmap.write().unwrap());
        sub.as_ref().register(&round.mm)
    };
    match r {
        Ok(()) => {
            rec.set_state(REGISTERED);
            if round.tearing.load(Ordering::SeqCst) {
                return;
            }
            // C-02: no invalidation this registration missed is still in flight.
            let open = round.open.lock().unwrap();
            for (id, (_, fresh)) in open.iter() {
                if !rec.told(*id) && !rec.released.load(Ordering::SeqCst) {
                    round.v.report(
                        settled(*fresh),
                        format!(
                            "register of subscriber {} returned while invalidation {id}, \
                             which skipped it, was still between start and end",
                            rec.id
                        ),
                    );
                }
            }
        }
        Err(Error::Dead) => rec.set_state(IDLE),
        Err(e) => panic!("register: {e:?}"),
    }
}

fn unregister(round: &Round, sub: &ListSub, rec: &Record) {
    if rec.state() != REGISTERED {
        return;
    }
    rec.set_state(LEAVING);
    sub.as_ref().unregister().unwrap();
    rec.gone.store(true, Ordering::SeqCst);
    let n = rec.releases.load(Ordering::SeqCst);
    if n != 1 {
        round.v.report(
            "release",
            format!(
                "subscriber {}: release ran {n} times when unregister returned",
                rec.id
            ),
        );
    }
    rec.set_state(IDLE);
}

fn insert(round: &Round, sub: &IvSub, rec: &Record) {
    if rec.state() != IDLE {
        return;
    }
    rec.gone.store(false, Ordering::SeqCst);
    rec.set_state(REGISTERING);
    let r = {
        let _write = (round.excluded && !round.false_proof).then(|| round.mmap.write().unwrap());
        sub.as_ref()
            .insert(&round.mm, rec.first, rec.last + 1 - rec.first)
    };
    match r {
        Ok(()) => {
            rec.set_state(REGISTERED);
            if round.tearing.load(Ordering::SeqCst) {
                return;
            }
            // C-09: every overlapping invalidation still in flight is one a fault must
            // retry after.
            let seq = sub.interval().read_begin().unwrap();
            let _g = sub.lock.lock().unwrap();
            let open = round.open.lock().unwrap();
            for (id, (r, fresh)) in open.iter() {
                if rec.overlaps(r) && !sub.interval().read_retry(seq) {
                    round.v.report(
                        settled(*fresh),
                        format!(
                            "insert of interval {} returned while invalidation {id}, which \
                             skipped it, was still between start and end (read_retry false)",
                            rec.id
                        ),
                    );
                }
            }
        }
        Err(Error::Dead) => rec.set_state(IDLE),
        Err(e) => panic!("insert: {e:?}"),
    }
}

fn remove(sub: &IvSub, rec: &Record) {
    if rec.state() != REGISTERED {
        return;
    }
    rec.set_state(LEAVING);
    sub.as_ref().remove().unwrap();
    rec.gone.store(true, Ordering::SeqCst);
    rec.set_state(IDLE);
}

/// The fault path of an interval subscriber, checking C-12.
fn fault(round: &Round, sub: &IvSub, rec: &Record, rng: &mut Rng) {
    if rec.state() != REGISTERED {
        return;
    }
    let seq = sub.interval().read_begin().unwrap();
    let before = rec.started.load(Ordering::SeqCst);
    // ... read the primary entries here ...
    if rng.below(2) == 0 {
        thread::yield_now();
    }
    let _g = sub.lock.lock().unwrap();
    let after = rec.started.load(Ordering::SeqCst);
    if after != before && !sub.interval().read_retry(seq) && !round.tearing.load(Ordering::SeqCst) {
        round.v.report(
            "retry",
            format!(
                "interval {}: read_retry false after {} overlapping invalidation(s) started \
                 after read_begin",
                rec.id,
                after - before
            ),
        );
    }
}

fn worker(
    round: &Round,
    mine: &Owned,
    seed: u64,
    teardown_at: Option<usize>,
    go: &std::sync::Barrier,
) {
    let mut rng = Rng::new(seed);
    go.wait();
    // Rounds begin on a fresh address space: race the first insertions and
    // registrations against invalidations there (C-02, C-09, issue 13 item 1).
    match rng.below(3) {
        0 => round.invalidate(&mut rng),
        1 => {
            let (s, r) = &mine.intervals[rng.below(mine.intervals.len())];
            insert(round, s, r);
        }
        _ => {
            let (s, r) = &mine.lists[rng.below(mine.lists.len())];
            register(round, s, r);
        }
    }
    for op in 0..CONFIG.ops {
        if teardown_at == Some(op) {
            round.tearing.store(true, Ordering::SeqCst);
            round
                .mm
                .release()
                .expect("teardown from the test thread is never refused");
        }
        let tearing = round.tearing.load(Ordering::SeqCst);
        match rng.below(10) {
            0 | 1 => {
                let (s, r) = &mine.lists[rng.below(mine.lists.len())];
                register(round, s, r);
            }
            2 => {
                let (s, r) = &mine.lists[rng.below(mine.lists.len())];
                unregister(round, s, r);
            }
            3 => {
                let (s, r) = &mine.intervals[rng.below(mine.intervals.len())];
                insert(round, s, r);
            }
            4 => {
                let (s, r) = &mine.intervals[rng.below(mine.intervals.len())];
                remove(s, r);
            }
            5 | 6 => {
                let (s, r) = &mine.intervals[rng.below(mine.intervals.len())];
                fault(round, s, r, &mut rng);
            }
            7 | 8 if !tearing => round.invalidate(&mut rng),
            9 if !tearing => round.flush_or_age(&mut rng),
            _ => {}
        }
    }
    for (s, r) in &mine.lists {
        unregister(round, s, r);
    }
    for (s, r) in &mine.intervals {
        remove(s, r);
    }
}

fn run_round(seed: u64, false_proof: bool) -> Arc<Violations> {
    let v = Arc::new(Violations::default());
    let mut rng = Rng::new(seed);
    let mut owned = Vec::new();
    let (mut lists, mut intervals) = (Vec::new(), Vec::new());
    let mut id = 0;
    for _ in 0..CONFIG.threads {
        let mut o = Owned {
            lists: Vec::new(),
            intervals: Vec::new(),
        };
        for _ in 0..CONFIG.lists {
            id += 1;
            let rec = Arc::new(Record::new(id, rng.below(2) == 0, 0, usize::MAX, v.clone()));
            lists.push(rec.clone());
            o.lists
                .push((Box::pin(Subscriber::new(ListOps(rec.clone()))), rec));
        }
        for _ in 0..CONFIG.intervals {
            id += 1;
            let a = rng.below(SPACE);
            let b = a + 1 + rng.below(SPACE - a);
            let rec = Arc::new(Record::new(
                id,
                rng.below(2) == 0,
                a * PG,
                b * PG - 1,
                v.clone(),
            ));
            intervals.push(rec.clone());
            let sub = Box::pin(IntervalSubscriber::new(IvOps {
                rec: rec.clone(),
                lock: Mutex::new(()),
            }));
            o.intervals.push((sub, rec));
        }
        owned.push(o);
    }
    let round = Round {
        mm: AddressSpace::new(),
        next_call: AtomicU64::new(1),
        open: Mutex::new(HashMap::new()),
        tearing: AtomicBool::new(false),
        excluded: seed % 2 == 0,
        false_proof,
        mmap: RwLock::new(()),
        lists,
        intervals,
        v: v.clone(),
    };
    let teardown_thread = if std::env::var_os("NOTIFIER_RANDOM_NO_TEARDOWN").is_some() {
        usize::MAX
    } else {
        rng.below(CONFIG.threads)
    };
    let teardown_at = CONFIG.ops / 2 + rng.below(CONFIG.ops / 2);
    let seeds: Vec<u64> = (0..CONFIG.threads).map(|_| rng.next()).collect();
    let go = std::sync::Barrier::new(CONFIG.threads);
    thread::scope(|s| {
        for (i, mine) in owned.iter().enumerate() {
            let (round, go) = (&round, &go);
            let seed = seeds[i];
            let at = (i == teardown_thread).then_some(teardown_at);
            s.spawn(move || worker(round, mine, seed, at, go));
        }
    });
    // Pairs, per subscriber and call.
    for rec in round.lists.iter().chain(&round.intervals) {
        let is_list = round.lists.iter().any(|l| Arc::ptr_eq(l, rec));
        for (call, kinds) in rec.calls.lock().unwrap().iter() {
            if *call == u64::MAX || !is_list {
                continue;
            }
            let count = |k| kinds.iter().filter(|&&x| x == k).count();
            let (st, en, rf) = (count(Kind::Start), count(Kind::End), count(Kind::Refused));
            if st + rf == 0 && en == 0 {
                continue;
            }
            let bad = if en > st {
                Some("end without its start")
            } else if st > en {
                Some("start without its end")
            } else if rf > 0 && en > 0 {
                Some("end after a refused start")
            } else {
                None
            };
            if let Some(b) = bad {
                v.report(
                    "pairs",
                    format!(
                        "subscriber {}, invalidation {call}: {b} ({kinds:?})",
                        rec.id
                    ),
                );
            }
        }
    }
    drop(owned);
    drop(round);
    v
}

#[test]
fn random_whole_core() {
    let rounds = std::env::var("NOTIFIER_RANDOM_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CONFIG.rounds);
    let seeds: Vec<u64> = match std::env::var("NOTIFIER_RANDOM_SEED") {
        Ok(s) => vec![s.parse().expect("NOTIFIER_RANDOM_SEED: a number")],
        Err(_) => (1..=rounds).collect(),
    };
    let mut failed: BTreeMap<&'static str, (usize, Vec<u64>, String)> = BTreeMap::new();
    for seed in seeds {
        let v = run_round(seed, false);
        for (check, (n, first)) in v.by_check.lock().unwrap().iter() {
            let e = failed
                .entry(check)
                .or_insert((0, Vec::new(), first.clone()));
            e.0 += n;
            e.1.push(seed);
        }
    }
    let mut msg = String::new();
    for (check, (n, seeds, first)) in &failed {
        let _ = writeln!(
            msg,
            "{check}: {n} violation(s), seeds {seeds:?}; first: {first}"
        );
    }
    assert!(failed.is_empty(), "the oracle found violations:\n{msg}");
}

/// The portable SRCU's grace periods end although readers never stop: two threads
/// keep at least one read-side section open at every moment, each re-entering while
/// the other is inside, so the *active* index is never idle. `synchronize` must wait
/// only for the readers that were already inside (it waits for the inactive index,
/// flips, and waits for the formerly active one, which new readers no longer enter).
/// A grace period that waited for the active index would never end: this test then
/// hangs (cargo-mutants reports it as a timeout).
#[test]
fn srcu_grace_periods_end_under_continuous_readers() {
    use notifier_core::srcu::{SleepableRcu, Srcu};

    let rcu = Srcu::<P>::new();
    let inside = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let g = rcu.read_lock();
                    inside.fetch_add(1, Ordering::SeqCst);
                    // Leave only once the other reader is inside too.
                    while inside.load(Ordering::SeqCst) < 2 && !stop.load(Ordering::SeqCst) {
                        thread::yield_now();
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                }
            });
        }
        while inside.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        for _ in 0..if cfg!(miri) { 2 } else { 20 } {
            rcu.synchronize();
        }
        stop.store(true, Ordering::SeqCst);
    });
}

/// Readers on more threads than the portable SRCU has slots share slots: every thread's
/// read-side section lands on a valid slot, whatever its task number (here beyond
/// `SLOTS * SLOTS`), and a grace period still waits for one that is open.
#[test]
#[cfg_attr(miri, ignore = "spawns over a thousand threads")]
fn srcu_readers_beyond_slots() {
    use notifier_core::srcu::{SleepableRcu, Srcu, SLOTS};

    let rcu = Srcu::<P>::new();
    for _ in 0..SLOTS * SLOTS + 8 {
        thread::scope(|s| {
            s.spawn(|| drop(rcu.read_lock()));
        });
    }
    // One more reader, holding its section while a grace period runs.
    let entered = AtomicBool::new(false);
    let left = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            let g = rcu.read_lock();
            entered.store(true, Ordering::SeqCst);
            for _ in 0..100 {
                thread::yield_now();
            }
            left.store(true, Ordering::SeqCst);
            drop(g);
        });
        while !entered.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        rcu.synchronize();
        assert!(
            left.load(Ordering::SeqCst),
            "a grace period ended while a reader that began before it was inside"
        );
    });
}

/// The oracle has teeth for the excluded start: when registrations and insertions skip
/// the lock the invalidations' proofs stand for (a false proof), `settled` finds a
/// registration that returned while an invalidation that skipped it, begun on a fresh
/// address space, was still in flight. (About one excluded round in twelve shows it
/// on this machine; the test stops at the first.)
#[test]
#[cfg_attr(miri, ignore = "a race that takes many real-thread rounds to show")]
fn random_detects_a_false_registration_proof() {
    let rounds = 2 * CONFIG.rounds;
    let found = (1..=rounds).filter(|seed| seed % 2 == 0).any(|seed| {
        let v = run_round(seed, true);
        let by_check = v.by_check.lock().unwrap();
        by_check.contains_key(settled(true)) || by_check.contains_key(settled(false))
    });
    assert!(
        found,
        "{rounds} rounds with a false registration proof and no `settled` violation: \
         the oracle has no teeth for the excluded start"
    );
}
