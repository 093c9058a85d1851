//! What a backend provides so that the suite can drive a real primary MMU.
//!
//! A backend (the simulator, the Linux module, the Hermit image) implements [`Harness`]
//! over its own page tables and its own [`Platform`]. The suite never touches page
//! tables itself: it asks the harness to map, fault in, unmap, protect, migrate, fork
//! (copy-on-write), reclaim and tear down, and the backend's primary MMU calls the
//! core's invalidation hooks on its [`AddressSpace`] exactly where its page tables
//! change. The suite's consumers (secondary MMUs) register on that `AddressSpace` and
//! check every access they make through a translation with the two oracles of C-09:
//! [`Harness::frame_live`] (the frame was not freed) and, where the backend has it,
//! [`Harness::check_translation`] (the translation is the primary entry of that
//! address at that moment).
//!
//! A capability the backend truly lacks is answered with [`HarnessError::Unsupported`]
//! and a reason; the case that needs it is then reported as not applicable, by name,
//! never as passed.

use notifier_core::{AddressSpace, Platform};

/// An address space of the backend (an index or handle the backend chooses).
pub type Mm = usize;

/// One use of a physical frame: its number and the generation of the allocation. A
/// frame that is freed and allocated again gets a new generation, so a translation
/// that outlived the page is caught even when the frame number is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Physical frame number.
    pub pfn: u64,
    /// Allocation generation (backends that cannot tell reuse apart use 0 and report
    /// only frees).
    pub gen: u64,
}

/// A primary page-table entry as a secondary MMU's fault path reads it (Linux:
/// what `hmm_range_fault` / `get_user_pages` return).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pte {
    /// The frame mapped.
    pub frame: Frame,
    /// Whether the entry allows writes.
    pub writable: bool,
}

/// What the second oracle of C-09 ([`Harness::check_translation`]) says about one use
/// of a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslationCheck {
    /// The translation is the primary entry of that address at that moment.
    Current,
    /// Stale: the text says how (no entry, another frame, a write through a read-only
    /// or copy-on-write entry).
    Stale(&'static str),
    /// The backend has no such oracle ([`Harness::translation_oracle`] says why).
    NotChecked,
}

/// Why a backend has no second oracle, unless it says otherwise.
pub const NO_TRANSLATION_ORACLE: &str =
    "the backend cannot compare a secondary MMU's translation with its primary entry at \
     the moment of use";

/// A primary-MMU capability a case may need; backends that lack one say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cap {
    /// Changing protection of a mapped range (mprotect).
    Protect,
    /// Migrating a page to another frame.
    Migrate,
    /// Fork with copy-on-write sharing, and breaking it by a write fault.
    Cow,
    /// Reclaim: ageing through the notifiers, then unmapping old pages.
    Reclaim,
    /// A non-blockable unmap (Linux: the OOM reaper), which subscribers may refuse.
    NonBlockingUnmap,
    /// Running several tasks at once ([`Harness::run_concurrently`]).
    Concurrency,
    /// Pinning a frame with the secondary MMU's own reference.
    FrameRefs,
    /// Direct calls into the core's `AddressSpace` with ranges of the suite's choosing
    /// (bad input, nesting), as opposed to the ones the primary MMU makes.
    DirectCalls,
}

/// Why a harness operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HarnessError {
    /// The backend cannot do this at all; the reason is printed with the case.
    Unsupported(&'static str),
    /// A non-blockable operation was refused by a subscriber; nothing was changed.
    Refused,
    /// The operation failed (bad address, out of memory, …); the text says which.
    Failed(&'static str),
}

/// What a backend provides to the suite.
///
/// Every method may be called from any task the suite runs with
/// [`run_concurrently`](Self::run_concurrently). Addresses and lengths are multiples of
/// [`Platform::PAGE_SIZE`] unless a method says otherwise.
pub trait Harness: Sync {
    /// The platform the core runs on in this backend.
    type P: Platform;

    /// The backend's name, printed in the header.
    fn name(&self) -> &'static str;

    /// `None` if the backend has `cap`, else why not.
    fn lacks(&self, cap: Cap) -> Option<&'static str>;

    /// A new, empty address space.
    fn create_mm(&self) -> Result<Mm, HarnessError>;

    /// The notifier side of `mm`: what the suite's consumers register on.
    fn address_space(&self, mm: Mm) -> &AddressSpace<Self::P>;

    /// Exit: tear the address space down (the core's `release`), then unmap everything
    /// and free its pages. The handle stays valid for [`address_space`](Self::address_space)
    /// until [`destroy_mm`](Self::destroy_mm).
    fn teardown(&self, mm: Mm);

    /// Forget `mm` (after `teardown`, and after every consumer unregistered from it).
    fn destroy_mm(&self, mm: Mm);

    /// Map `[addr, addr + len)` anonymous, readable and writable, not yet populated.
    fn map(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError>;

    /// A primary-MMU fault: populate the page at `addr` (for writing if `write`,
    /// breaking copy-on-write then) and return its entry.
    fn touch(&self, mm: Mm, addr: usize, write: bool) -> Result<Pte, HarnessError>;

    /// Read the primary entry of `addr` without faulting: `None` if not present.
    fn lookup(&self, mm: Mm, addr: usize) -> Option<Pte>;

    /// munmap `[addr, addr + len)`; its pages are freed once no one else holds them.
    fn unmap(&self, mm: Mm, addr: usize, len: usize) -> Result<(), HarnessError>;

    /// mprotect `[addr, addr + len)` to read-only (`writable == false`) or read-write.
    fn protect(&self, mm: Mm, addr: usize, len: usize, writable: bool) -> Result<(), HarnessError>;

    /// Move the page at `addr` to a new frame; the old one is freed.
    fn migrate(&self, mm: Mm, addr: usize) -> Result<Pte, HarnessError>;

    /// Fork: a new address space sharing every present page of `mm` copy-on-write
    /// (both sides write-protected).
    fn fork(&self, mm: Mm) -> Result<Mm, HarnessError>;

    /// Reclaim `[addr, addr + len)`: ask the notifiers whether each present page is
    /// young (`clear_flush_young`), and evict (unmap and free, or swap out) those that
    /// neither the primary nor a secondary MMU used since the last pass. Returns the
    /// number of pages evicted.
    fn reclaim(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError>;

    /// Clear the soft-dirty bits of the whole address space (Linux: `echo 4 >
    /// /proc/PID/clear_refs`): one invalidation with event
    /// [`SoftDirty`](notifier_core::Event::SoftDirty) over everything the primary MMU
    /// has (Linux asks for `[0, ULONG_MAX)`; the backend hands the core its address
    /// limit), and every present page write-protected where the platform tracks
    /// soft-dirty. The default: not applicable.
    fn clear_soft_dirty(&self, mm: Mm) -> Result<(), HarnessError> {
        let _ = mm;
        Err(HarnessError::Unsupported(
            "no soft-dirty tracking on this backend",
        ))
    }

    /// Unmap `[addr, addr + len)` from a context that cannot sleep (Linux: the OOM
    /// reaper): the invalidation is non-blockable; if a subscriber refuses,
    /// [`HarnessError::Refused`] and the page tables are untouched. Returns the pages
    /// of the range that were unmapped.
    ///
    /// Where [`reap_kills`](Self::reap_kills) is true, this is the real OOM reaper: the
    /// first call kills the address space's process (keeping the address space
    /// attached, as a victim's is), and a reap that is not refused unmaps every private
    /// mapping, not only the range.
    fn reap(&self, mm: Mm, addr: usize, len: usize) -> Result<usize, HarnessError>;

    /// Whether [`reap`](Self::reap) is the real OOM reaper: after the first call the
    /// address space's process is gone, and only lookups and reaps may follow (cases
    /// reap last). The default: false, a reap unmaps the range alone and the address
    /// space goes on.
    fn reap_kills(&self) -> bool {
        false
    }

    /// Take a reference on a frame for a secondary MMU (Linux: `get_page`): it is not
    /// freed before the matching [`put_frame`](Self::put_frame). False if the frame is
    /// already gone.
    fn get_frame(&self, frame: Frame) -> bool;

    /// Drop a reference taken with [`get_frame`](Self::get_frame).
    fn put_frame(&self, frame: Frame);

    /// The oracle: whether `frame` is still allocated in the same generation. A
    /// secondary MMU that reaches a frame for which this is false used a stale
    /// translation (C-09, C-10).
    fn frame_live(&self, frame: Frame) -> bool;

    /// Whether the backend has the second oracle of C-09
    /// ([`check_translation`](Self::check_translation)): `None` if it has, else why
    /// not. The default: not, with [`NO_TRANSLATION_ORACLE`]; C-09 then reports that
    /// part as not applicable.
    fn translation_oracle(&self) -> Option<&'static str> {
        Some(NO_TRANSLATION_ORACLE)
    }

    /// The second oracle of C-09, which sees what [`frame_live`](Self::frame_live)
    /// cannot (a stale translation to a frame that is still allocated: a write lost
    /// after a migration or a copy-on-write break, a write through a read-only or
    /// copy-on-write entry). A secondary MMU is using its translation of `addr` in
    /// `mm` to `frame`, for writing if `write`, right now (under its own lock, so the
    /// translation cannot be zapped meanwhile): is it the primary entry of `addr` at
    /// this moment — same frame, and writable for a write — as the primary MMU's TLBs
    /// know it? The one allowed difference is the instant between the primary MMU
    /// changing an entry inside an invalidation and its TLB flush
    /// (`invalidate_secondary_tlbs`), which is all a device TLB flushed with the CPU
    /// TLB may lag; a secondary MMU that keeps a translation past that point (zapping
    /// only at `end`, say) uses a stale one.
    ///
    /// Must not take a lock that the backend holds while it calls
    /// `invalidate_secondary_tlbs` (the caller holds its own lock, which that callback
    /// takes). The default: [`TranslationCheck::NotChecked`].
    fn check_translation(
        &self,
        _mm: Mm,
        _addr: usize,
        _frame: Frame,
        _write: bool,
    ) -> TranslationCheck {
        TranslationCheck::NotChecked
    }

    /// Run every task at once (each on its own thread, kthread or Hermit task, or
    /// interleaved by a deterministic scheduler) and return when all have returned.
    fn run_concurrently(&self, tasks: &[&(dyn Fn() + Sync)]);

    /// Let other tasks run (a scheduling point).
    fn yield_now(&self);

    /// Memory the backend lends to the suite for the scale case (C-17): thousands of
    /// pinned subscribers need more than a kernel stack. The suite uses it in one case
    /// at a time and leaves nothing in it afterwards; `None` makes that case not
    /// applicable. A few megabytes suit the default scale.
    fn arena(&self) -> Option<(core::ptr::NonNull<u8>, usize)>;

    /// The platform's page-keyed export registry, which its reclaim and free paths call
    /// right before a frame is freed, whether a primary entry maps it or not (C-18 to
    /// C-21). `None` (the default): the platform has no such hook, and those cases are
    /// not applicable.
    fn export_registry(&self) -> Option<&notifier_core::export::ExportRegistry<Self::P>> {
        None
    }

    /// How many subscriber bugs the platform reported through
    /// [`Platform::report_bug`] so far (C-08: a refusal while blockable).
    fn bugs_reported(&self) -> usize;

    /// How many times something that may sleep ran in a non-blockable region so far
    /// (`might_sleep` inside `non_block_start`/`end`) (C-08).
    fn sleep_violations(&self) -> usize;
}
