//! The host simulator backend: a simulated machine whose primary MMU drives
//! `notifier-core`, and [`SimHarness`], the conformance suite's
//! [`Harness`](harness::Harness) on it.
//!
//! # The machine
//!
//! Physical memory is a small pool of frames, each with a reference count and a
//! *generation* that changes every time the frame is allocated again, so the oracle
//! ([`SimHarness::frame_live`](harness::Harness::frame_live)) tells a stale translation
//! from a live one even when the frame number was reused; freed frames are reused
//! last-freed-first, so reuse really happens. The second oracle of C-09
//! ([`SimHarness::check_translation`](harness::Harness::check_translation)) compares a
//! translation a secondary MMU is using with the page table of that address space as
//! its TLBs know it at that moment (a view published in the page-table section that
//! changes an entry: at once for a fault, right after the TLB flush for an operation
//! inside an invalidation), so a stale translation to a live frame is caught too.
//! [`SimConfig::translation_oracle`] turns it off. Every address space has VMAs and a page
//! table (present, writable, accessed, dirty and copy-on-write bits, or a swap slot)
//! behind its own lock, and an [`AddressSpace`](notifier_core::AddressSpace) — the
//! notifier side that the suite's secondary MMUs subscribe to. A reverse map
//! (frame → every address that maps it) serves ageing, and a swap area takes reclaimed
//! pages.
//!
//! The primary MMU calls the core exactly where Linux does (see each operation in
//! `machine.rs`): munmap, mprotect, migration, fork with copy-on-write, the
//! copy-on-write break of a write fault, reclaim (ageing through the notifiers, then
//! eviction), the OOM reaper's non-blockable unmap, and exit (`release` first, then
//! everything unmapped without brackets). Pages removed by an invalidation are released
//! only after its `end` (C-10). The machine also owns the page-keyed
//! [`ExportRegistry`](notifier_core::export::ExportRegistry): reclaim calls its
//! `before_free` for every page it evicts, and the free path for every page whose last
//! reference goes (C-18..C-21).
//!
//! # Two ways to run
//!
//! [`SimHarness::deterministic`] runs tasks one at a time under a seeded scheduler: every
//! scheduling point (harness calls, the platform's `relax`, `wait`, lock spinning,
//! `yield_now`, `might_sleep`, and the places in the primary MMU where a real kernel
//! could be preempted while a range is in flight) lets the seeded RNG choose the next
//! task, so a failing interleaving is replayed from its seed. [`SimHarness::threads`]
//! runs them as plain OS threads in parallel. Exact replay assumes one deterministic
//! run at a time in the process: the RCU domain is global, as in Linux, so readers of a
//! parallel run can add scheduling points to a grace period.
//!
//! # Observing a run
//!
//! [`SimHarness::stats`] returns a snapshot of counters (invalidations by event, frames
//! allocated and freed, pages reclaimed, young hits, …) and
//! [`SimHarness::set_event_hook`] installs a callback that sees every [`SimEvent`] as
//! it happens.

mod machine;
mod platform;
mod rng;
mod sched;
mod sim_harness;

pub use notifier_conformance::harness;

pub use machine::{
    event_index, EventHook, SimEvent, SimStats, COW_BREAK_EVENT, PAGE_SIZE, RECLAIM_EVENT,
};
pub use platform::{SimPlatform, SimRawLock};
pub use sim_harness::{Mode, SimConfig, SimHarness};
