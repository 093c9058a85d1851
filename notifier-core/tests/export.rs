//! Unit tests of the page-keyed export registry (the seed's other design), on the
//! hosted platform. The conformance suite checks the same cases (C-18 onwards) end to
//! end against the simulator's reclaim path.
#![cfg(not(loom))]

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;
use notifier_core::{Bug, Error};

/// Revokes by dropping every remote mapping it knows of (one per page here), unless
/// told to forget; records what it saw.
#[derive(Default)]
struct Xp {
    revoked: AtomicUsize,
    forget: AtomicBool,
    map_during_revoke: std::sync::Mutex<Option<Result<(), Error>>>,
    slow: AtomicBool,
    gone: AtomicBool,
    after_gone: AtomicUsize,
}

impl ExportOps<P> for Xp {
    fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
        if self.gone.load(Ordering::SeqCst) {
            self.after_gone.fetch_add(1, Ordering::SeqCst);
        }
        // A remote map request arriving now (the entry may already be gone) is refused.
        *self.map_during_revoke.lock().unwrap() = Some(page.map_remote());
        if self.slow.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
        if !self.forget.load(Ordering::SeqCst) {
            while page.unmap_remote().is_ok() {}
        }
        self.revoked.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn c18_page_not_freed_while_remote_mapping() {
    let reg = ExportRegistry::<P>::new();
    let ex = pin!(Exporter::new(&reg, Xp::default()));
    let page = pin!(ExportedPage::<P>::new());
    ex.as_ref().export(page.as_ref(), 7).unwrap();
    page.map_remote().unwrap();
    page.map_remote().unwrap();
    // A correct exporter revokes both mappings: the page may go.
    assert_eq!(reg.before_free(7), Ok(1));
    assert_eq!(page.remote_maps(), 0);
    assert_eq!(ex.revoked.load(Ordering::SeqCst), 1);
    // An exporter that forgets: the page must not be freed, and the bug is reported.
    let p2 = pin!(ExportedPage::<P>::new());
    ex.as_ref().export(p2.as_ref(), 8).unwrap();
    p2.map_remote().unwrap();
    ex.forget.store(true, Ordering::SeqCst);
    let bugs = P::bugs(Bug::RemoteMapAfterRevoke);
    assert_eq!(reg.before_free(8), Err(Error::WouldBlock));
    assert!(P::bugs(Bug::RemoteMapAfterRevoke) > bugs);
}

#[test]
fn c19_map_request_after_revoke_began_is_refused() {
    let reg = ExportRegistry::<P>::new();
    let ex = pin!(Exporter::new(&reg, Xp::default()));
    let page = pin!(ExportedPage::<P>::new());
    ex.as_ref().export(page.as_ref(), 3).unwrap();
    // No primary entry maps the page any more (the case the reverse-map hook misses);
    // the free path still calls the registry, and a map racing it is refused.
    assert_eq!(reg.before_free(3), Ok(1));
    assert_eq!(
        *ex.map_during_revoke.lock().unwrap(),
        Some(Err(Error::Dead))
    );
    assert_eq!(page.map_remote(), Err(Error::Dead));
    // Other frames are not touched.
    assert_eq!(reg.before_free(4), Ok(0));
}

#[test]
fn c20_exported_never_mapped_still_revoked() {
    let reg = ExportRegistry::<P>::new();
    let ex = pin!(Exporter::new(&reg, Xp::default()));
    let pages: Vec<_> = (0..16)
        .map(|_| Box::pin(ExportedPage::<P>::new()))
        .collect();
    for (i, p) in pages.iter().enumerate() {
        ex.as_ref().export(p.as_ref(), 100 + i as u64).unwrap();
    }
    for i in 0..16 {
        assert_eq!(reg.before_free(100 + i), Ok(1));
    }
    assert_eq!(ex.revoked.load(Ordering::SeqCst), 16);
    // Revoked once: a second free of the same frame finds nothing exported.
    assert_eq!(reg.before_free(100), Ok(0));
}

#[test]
fn c21_unexport_is_a_barrier() {
    let reg = Arc::new(ExportRegistry::<P>::new());
    let ex = Arc::new(Box::pin(Exporter::new(&reg, Xp::default())));
    let page = Arc::new(Box::pin(ExportedPage::<P>::new()));
    ex.as_ref()
        .as_ref()
        .export(page.as_ref().as_ref(), 9)
        .unwrap();
    ex.slow.store(true, Ordering::SeqCst);
    let t = {
        let reg = reg.clone();
        thread::spawn(move || reg.before_free(9))
    };
    while ex.map_during_revoke.lock().unwrap().is_none() {
        thread::yield_now();
    }
    // `revoke` is running: unexport must wait for it.
    ex.as_ref()
        .as_ref()
        .unexport(page.as_ref().as_ref())
        .unwrap();
    assert_eq!(
        ex.revoked.load(Ordering::SeqCst),
        1,
        "unexport returned before revoke did"
    );
    ex.gone.store(true, Ordering::SeqCst);
    assert_eq!(t.join().unwrap(), Ok(1));
    assert_eq!(reg.before_free(9), Ok(0));
    assert_eq!(ex.after_gone.load(Ordering::SeqCst), 0);
    // Errors: unexport twice, export twice.
    assert_eq!(
        ex.as_ref().as_ref().unexport(page.as_ref().as_ref()),
        Err(Error::NotRegistered)
    );
    let p2 = pin!(ExportedPage::<P>::new());
    ex.as_ref().as_ref().export(p2.as_ref(), 10).unwrap();
    assert_eq!(
        ex.as_ref().as_ref().export(p2.as_ref(), 11),
        Err(Error::AlreadyRegistered)
    );
    assert_eq!(p2.unmap_remote(), Err(Error::NotRegistered));
}

#[test]
fn dropping_an_exporter_or_a_page_unexports() {
    let reg = ExportRegistry::<P>::new();
    let page = pin!(ExportedPage::<P>::new());
    {
        let ex = pin!(Exporter::new(&reg, Xp::default()));
        ex.as_ref().export(page.as_ref(), 5).unwrap();
    }
    assert!(!page.is_exported());
    assert_eq!(reg.before_free(5), Ok(0));
    let ex = pin!(Exporter::new(&reg, Xp::default()));
    {
        let p = pin!(ExportedPage::<P>::new());
        ex.as_ref().export(p.as_ref(), 6).unwrap();
    }
    assert_eq!(reg.before_free(6), Ok(0));
    assert_eq!(ex.revoked.load(Ordering::SeqCst), 0);
}

/// A page taken out of the table by its exporter's drop, while the free path is still
/// inside that page's `revoke`, is exported again (by another exporter, at another
/// frame) only once the free path has left: relinking it earlier would send a free path
/// walking its old bucket into the new one, past pages it must revoke.
#[test]
fn c21_reexport_waits_for_the_free_path() {
    struct Slow<'a> {
        entered: &'a AtomicBool,
        reexported: &'a AtomicBool,
        exported_under_us: AtomicBool,
    }
    impl ExportOps<P> for Slow<'_> {
        fn revoke(&self, page: &ExportedPage<P>, _pfn: u64) {
            self.entered.store(true, Ordering::SeqCst);
            for _ in 0..if cfg!(miri) { 200 } else { 20_000 } {
                if self.reexported.load(Ordering::SeqCst) {
                    break;
                }
                thread::yield_now();
            }
            if page.is_exported() {
                self.exported_under_us.store(true, Ordering::SeqCst);
            }
        }
    }
    // The test reads the record after the exporter is gone: export through a borrow.
    impl ExportOps<P> for &Slow<'_> {
        fn revoke(&self, page: &ExportedPage<P>, pfn: u64) {
            (**self).revoke(page, pfn)
        }
    }
    let entered = AtomicBool::new(false);
    let reexported = AtomicBool::new(false);
    let reg = ExportRegistry::<P>::new();
    let page = pin!(ExportedPage::<P>::new());
    let page = page.into_ref();
    // Frames 5 and 3 hash to buckets 23 and 218: the exporter's drop takes frame 5's
    // page out before frame 3's, so the witness leaving says the page has left.
    let witness = pin!(ExportedPage::<P>::new());
    let witness = witness.into_ref();
    let other = pin!(Exporter::new(&reg, Xp::default()));
    let other = other.into_ref();
    let slow = Slow {
        entered: &entered,
        reexported: &reexported,
        exported_under_us: AtomicBool::new(false),
    };
    thread::scope(|s| {
        let ex = Box::pin(Exporter::new(&reg, &slow));
        ex.as_ref().export(page, 5).unwrap();
        ex.as_ref().export(witness, 3).unwrap();
        s.spawn(|| reg.before_free(5));
        while !entered.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        s.spawn(move || drop(ex));
        while witness.is_exported() {
            thread::yield_now();
        }
        other.export(page, 1).unwrap();
        reexported.store(true, Ordering::SeqCst);
    });
    assert!(
        !slow.exported_under_us.load(Ordering::SeqCst),
        "the page was linked again while the free path was inside its revoke"
    );
    assert!(page.is_exported());
}
