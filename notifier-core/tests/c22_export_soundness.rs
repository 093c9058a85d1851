//! C-22 for the page-keyed export registry: no sequence of safe calls is undefined
//! behaviour. Run under Miri (`cargo +nightly miri test -p notifier-core --test
//! c22_export_soundness`): each test here is a drop order or an interleaving that the
//! registry once got wrong, and Miri reports the use-after-free or the data race if it
//! comes back. Natively they check the same protocol without Miri's eyes.
//!
//! The misuses the types now forbid (dropping or moving the registry while an exporter
//! or an exported page borrows it) are compile-fail tests in `tests/ui/`.
#![cfg(not(loom))]

use std::mem;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::thread;

use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;
use notifier_core::Bug;

/// Memory leaked on purpose stays reachable from here, so that Miri's leak check (which
/// ignores what statics reach) does not fail the run; nothing ever reads it.
static LEAKED: [AtomicPtr<u8>; 4] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 4];

/// The platform counts bugs of these kinds in one counter: tests that read it take turns.
static BUG_COUNTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn keep_reachable<T>(slot: usize, x: &T) {
    LEAKED[slot].store(std::ptr::from_ref(x).cast_mut().cast(), Ordering::Relaxed);
}

#[derive(Default)]
struct Count(AtomicUsize);

impl ExportOps<P> for Count {
    fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
        while page.unmap_remote().is_ok() {}
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// An exporter exports a page on one thread while the free path revokes another of its
/// pages on a second thread: the record both reach must not be raced.
#[test]
fn c22_exporter_record_is_not_raced() {
    let reg = ExportRegistry::<P>::new();
    let ex = pin!(Exporter::new(&reg, Count::default()));
    let ex = ex.into_ref();
    let p0 = pin!(ExportedPage::<P>::new());
    let p0 = p0.into_ref();
    let p1 = pin!(ExportedPage::<P>::new());
    let p1 = p1.into_ref();
    ex.export(p0, 1).unwrap();
    // The free path reads the exporter's record, then the exporter writes into it for
    // its next page. The flag is relaxed on purpose: it orders the two in time without
    // making one happen before the other, which is what two CPUs do.
    let revoked = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(reg.before_free(1), Ok(1));
            revoked.store(true, Ordering::Relaxed);
        });
        while !revoked.load(Ordering::Relaxed) {
            thread::yield_now();
        }
        ex.export(p1, 2).unwrap();
    });
    assert_eq!(ex.0.load(Ordering::Relaxed), 1);
    assert_eq!(reg.before_free(2), Ok(1));
}

/// A page is dropped on one thread while its exporter is dropped on another and the
/// free path is inside that page's `revoke` on a third: the page's memory must outlive
/// the revocation (the page's drop is a barrier even when the exporter's drop took the
/// page out of the table first).
#[test]
fn c22_page_dropped_while_its_exporter_drops() {
    // Frames 5 and 3 hash to buckets 23 and 218: the exporter's drop takes page 5 out of
    // the table before page 3, so page 3 leaving says page 5 has left.
    struct Slow<'a> {
        entered: &'a AtomicBool,
        page_dropped: &'a AtomicBool,
    }
    impl ExportOps<P> for Slow<'_> {
        fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
            self.entered.store(true, Ordering::SeqCst);
            // Give the page's owner every chance to free it under us (a bounded wait:
            // with the barrier in place the drop waits for this revoke instead).
            for _ in 0..if cfg!(miri) { 200 } else { 20_000 } {
                if self.page_dropped.load(Ordering::SeqCst) {
                    break;
                }
                thread::yield_now();
            }
            while page.unmap_remote().is_ok() {}
        }
    }
    let entered = AtomicBool::new(false);
    let page_dropped = AtomicBool::new(false);
    let reg = ExportRegistry::<P>::new();
    let ex = Box::pin(Exporter::new(
        &reg,
        Slow {
            entered: &entered,
            page_dropped: &page_dropped,
        },
    ));
    let page = Box::pin(ExportedPage::<P>::new());
    let witness = Box::pin(ExportedPage::<P>::new());
    ex.as_ref().export(page.as_ref(), 5).unwrap();
    ex.as_ref().export(witness.as_ref(), 3).unwrap();
    page.map_remote().unwrap();
    thread::scope(|s| {
        s.spawn(|| reg.before_free(5));
        while !entered.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        s.spawn(move || drop(ex));
        while witness.is_exported() {
            thread::yield_now();
        }
        drop(page);
        page_dropped.store(true, Ordering::SeqCst);
    });
    drop(witness);
}

/// The free path is inside an exporter's `revoke` for a page that another thread is
/// dropping (so no page of the exporter is left in the table); the exporter is dropped
/// meanwhile on a third thread. Its drop must still wait for that `revoke`: the free path
/// is running the exporter's code on the exporter's memory.
#[test]
fn c22_exporter_dropped_while_its_revoke_runs() {
    struct Slow<'a> {
        entered: &'a AtomicBool,
        exporter_dropped: &'a AtomicBool,
        calls: AtomicUsize,
    }
    impl ExportOps<P> for Slow<'_> {
        fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
            self.entered.store(true, Ordering::SeqCst);
            for _ in 0..if cfg!(miri) { 200 } else { 20_000 } {
                if self.exporter_dropped.load(Ordering::SeqCst) {
                    break;
                }
                thread::yield_now();
            }
            // The exporter's own memory, after its owner may have dropped it.
            self.calls.fetch_add(1, Ordering::SeqCst);
            while page.unmap_remote().is_ok() {}
        }
    }
    let entered = AtomicBool::new(false);
    let exporter_dropped = AtomicBool::new(false);
    let dropping_page = AtomicBool::new(false);
    let reg = ExportRegistry::<P>::new();
    let page = Box::pin(ExportedPage::<P>::new());
    let ex = Box::pin(Exporter::new(
        &reg,
        Slow {
            entered: &entered,
            exporter_dropped: &exporter_dropped,
            calls: AtomicUsize::new(0),
        },
    ));
    ex.as_ref().export(page.as_ref(), 5).unwrap();
    thread::scope(|s| {
        s.spawn(|| reg.before_free(5));
        while !entered.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        // The page's drop takes it out of the table, then waits for the free path.
        let dropping_page = &dropping_page;
        s.spawn(move || {
            dropping_page.store(true, Ordering::SeqCst);
            drop(page);
        });
        while !dropping_page.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        for _ in 0..50 {
            thread::yield_now();
        }
        drop(ex);
        exporter_dropped.store(true, Ordering::SeqCst);
    });
}

/// Leaking an exporter (`mem::forget` of its pinned box) is safe code: it ends the
/// exporter's borrow of the registry, but its memory stays, so a free path may still
/// revoke through it; a page it exported is dropped and taken out of the table; the
/// registry is then dropped with nothing linked.
#[test]
fn c22_leaked_exporter_then_page_then_registry() {
    let _turn = BUG_COUNTER.lock().unwrap_or_else(|e| e.into_inner());
    let reg = ExportRegistry::<P>::new();
    let page = Box::pin(ExportedPage::<P>::new());
    let ex = Box::pin(Exporter::new(&reg, Count::default()));
    ex.as_ref().export(page.as_ref(), 1).unwrap();
    keep_reachable(0, &*ex);
    mem::forget(ex);
    page.map_remote().unwrap();
    assert_eq!(reg.before_free(1), Ok(1));
    assert_eq!(page.remote_maps(), 0);
    drop(page);
    let bugs = P::bugs(Bug::RegistryDroppedWithPages);
    drop(reg);
    assert_eq!(P::bugs(Bug::RegistryDroppedWithPages), bugs);
}

/// An exporter and its page both leaked, then the registry dropped: the registry's drop
/// unlinks the leaked page (its memory is never freed) and reports the bug.
#[test]
fn c22_registry_dropped_with_leaked_pages() {
    let _turn = BUG_COUNTER.lock().unwrap_or_else(|e| e.into_inner());
    let reg = ExportRegistry::<P>::new();
    let page = Box::pin(ExportedPage::<P>::new());
    let ex = Box::pin(Exporter::new(&reg, Count::default()));
    ex.as_ref().export(page.as_ref(), 2).unwrap();
    keep_reachable(1, &*ex);
    keep_reachable(2, &*page);
    mem::forget(ex);
    mem::forget(page);
    let bugs = P::bugs(Bug::RegistryDroppedWithPages);
    drop(reg);
    assert!(P::bugs(Bug::RegistryDroppedWithPages) > bugs);
}
