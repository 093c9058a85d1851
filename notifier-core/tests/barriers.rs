//! The hosted platform's barrier pair (`StdPlatform::reader_barrier` and
//! `writer_barrier`), tested as the promise `Platform` makes of them: together they order
//! memory at least as a full fence on each side would. The SRCU read side, the in-flight
//! count of every invalidation and the zombie sweep are store-then-load handshakes built
//! on that promise; when the read side is a compiler fence only (the `membarrier`
//! pairing), nothing but the writer's system call keeps the handshake.
//!
//! The litmus test is store buffering: the reader stores `x`, issues its barrier, loads
//! `y`; the writer stores `y`, issues its barrier, loads `x`. Both loads missing the
//! other side's store is forbidden. On x86-64 a compiler fence on both sides lets that
//! outcome through within a few thousand rounds (a store waits in the store buffer
//! while the later load runs), so this test fails when the writer's barrier does not
//! interrupt the reader (checked: with `writer_barrier` a full fence alone, the
//! forbidden outcome shows within the first rounds).
//!
//! Both pairings the platform may choose are tested: the one this host gets (on Linux,
//! `membarrier`) in the test process, full fences on both sides in a child process
//! started with `NOTIFIER_MEMBARRIER=0` (checked: a read side that took the light
//! barrier under full fences shows the forbidden outcome in 201 of 50 000 rounds).
//!
//! The read side of the core does not always call `reader_barrier`: a thread whose
//! reader slot is light (`OwnedSlot::light`, handed out once the process chose
//! `membarrier`) gets a compiler fence from the core itself. So the litmus runs twice in
//! each pairing: with `reader_barrier` between the reader's store and load, and with an
//! SRCU read-side section there (its barrier B, taken as a read section takes it). That
//! second run catches a light slot handed out under full fences only now and then (with
//! the claim marking every slot light: 1 to 85 forbidden outcomes in 50 000 rounds in a
//! release build, none in a debug build, where the section is long enough for the store
//! to drain), so each pairing also checks the slot itself: light exactly when the
//! process chose `membarrier` (`slot_is_light_exactly_under_membarrier`).
//!
//! Alone in its test binary: the barrier choice is process-wide.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use notifier_core::srcu::{ReaderSlot, SleepableRcu};
use notifier_core::std_platform::StdPlatform;
use notifier_core::Platform;

mod full_fences;

/// Rounds of the litmus test (each with one writer barrier, a system call).
const ROUNDS: usize = if cfg!(miri) { 200 } else { 50_000 };

/// A word on a cache line of its own.
#[repr(align(128))]
struct Line(AtomicUsize);

/// Where one thread has got to (its own cache line).
#[repr(align(128))]
struct Round(AtomicUsize);

#[test]
fn reader_and_writer_barriers_forbid_store_buffering() {
    // On a Linux host with `membarrier` the read side is the light barrier: the case
    // the test is for. Elsewhere (Miri) both are fences and it still must hold.
    if cfg!(all(target_os = "linux", not(miri))) {
        assert_eq!(
            StdPlatform::asymmetric_barriers(),
            !full_fences::forced(),
            "this Linux host has membarrier: the hosted platform uses it unless told not to"
        );
    }
    slot_is_light_exactly_under_membarrier();
    store_buffering_litmus(StdPlatform::reader_barrier);
    store_buffering_litmus(read_section);
}

/// The slot a thread's read-side sections count in, after its first section: owned
/// (the thread is alone, it got one), and light, which lets the core skip
/// `reader_barrier` for a compiler fence, only where the process pairs the light
/// barrier with `membarrier`. Under full fences no slot is owned: the thread counts in
/// its own slot with atomic increments.
fn slot_is_light_exactly_under_membarrier() {
    std::thread::spawn(|| {
        read_section();
        let slot = StdPlatform::reader_slot();
        if StdPlatform::asymmetric_barriers() {
            assert!(
                matches!(slot, ReaderSlot::Owned(o) if o.light()),
                "under membarrier a thread's slot is owned and light: {slot:?}"
            );
        } else {
            assert!(
                matches!(slot, ReaderSlot::Shared(_)),
                "under full fences no slot is owned (nor light): {slot:?}"
            );
        }
    })
    .join()
    .expect("the check passed");
}

/// An empty SRCU read-side section: its barrier B orders what the thread stored before
/// it against what it loads after.
fn read_section() {
    drop(StdPlatform::rcu().read_lock());
}

/// The other pairing, full fences on both sides, checked the same way: in a child
/// process of this test binary with `NOTIFIER_MEMBARRIER=0` (the choice is made once
/// per process).
#[test]
fn full_fences_forbid_store_buffering_when_membarrier_is_off() {
    if cfg!(miri) || full_fences::forced() {
        // Miri has no `membarrier` and cannot spawn: full fences here already.
        assert!(!StdPlatform::asymmetric_barriers());
        slot_is_light_exactly_under_membarrier();
        store_buffering_litmus(StdPlatform::reader_barrier);
        store_buffering_litmus(read_section);
        return;
    }
    full_fences::run_again(
        &[
            "--exact",
            "full_fences_forbid_store_buffering_when_membarrier_is_off",
            "--test-threads=1",
        ],
        "1 passed",
    );
}

/// Store buffering with `reader_barrier` as the reader's barrier.
fn store_buffering_litmus(reader_barrier: fn()) {
    let x = Line(AtomicUsize::new(0));
    let y = Line(AtomicUsize::new(0));
    // Round r: the reader writes r to x, the writer r to y. A two-thread spin barrier
    // starts each round on both sides at nearly the same moment.
    let arrived = [Round(AtomicUsize::new(0)), Round(AtomicUsize::new(0))];
    let seen_by_reader = Line(AtomicUsize::new(0));
    let done = AtomicBool::new(false);
    let meet = |me: usize, r: usize| {
        arrived[me].0.store(r, Ordering::Release);
        while arrived[1 - me].0.load(Ordering::Acquire) < r {
            std::hint::spin_loop();
        }
    };
    let mut violations = 0usize;
    thread::scope(|s| {
        s.spawn(|| {
            for r in 1..=ROUNDS {
                meet(0, 2 * r - 1);
                x.0.store(r, Ordering::Relaxed);
                reader_barrier();
                let v = y.0.load(Ordering::Relaxed);
                seen_by_reader.0.store(v, Ordering::Relaxed);
                // The result is read after the second meeting.
                meet(0, 2 * r);
            }
            done.store(true, Ordering::Release);
        });
        for r in 1..=ROUNDS {
            meet(1, 2 * r - 1);
            y.0.store(r, Ordering::Relaxed);
            StdPlatform::writer_barrier();
            let w = x.0.load(Ordering::Relaxed);
            meet(1, 2 * r);
            let v = seen_by_reader.0.load(Ordering::Relaxed);
            // Forbidden: the reader missed this round's y and the writer missed this
            // round's x.
            if v < r && w < r {
                violations += 1;
            }
        }
    });
    assert!(done.load(Ordering::Acquire));
    assert_eq!(
        violations, 0,
        "store buffering through the barrier pair in {violations} of {ROUNDS} rounds"
    );
}
