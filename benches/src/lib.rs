//! Benchmarks of `notifier-core` against the limit and against the alternatives a
//! secondary-MMU author could pick instead (issue #7).
//!
//! The question every benchmark answers is "what does the primary MMU pay to tell the
//! secondary MMUs?", measured against two kinds of reference:
//!
//! * **the limit**: what the same work costs with no synchronisation at all (an empty
//!   call for the no-subscriber fast path, N plain `&dyn` calls for the dispatch, a
//!   linear scan for the interval lookup);
//! * **the peers**: the same subscriber list built with `RwLock<Vec<Arc<dyn _>>>`,
//!   `arc-swap`, a `crossbeam-epoch` list, an `rcu-clean` `ArcRcu`, and liburcu (the C
//!   userspace RCU, through `csrc/urcu_shim.c`), each used the way its own users use it.
//!
//! Every list calls the very same callbacks ([`Counter`]) through one indirect call, so
//! the differences are what each list does around the calls. The modules:
//!
//! * [`callbacks`]: the callbacks and the interval callbacks;
//! * [`lists`]: one [`lists::Dispatch`] implementation per peer;
//! * [`intervals`]: interval subscribers in the core against a linear scan;
//! * [`itree`]: the interval tree alone: depth, insert + remove, walk;
//! * [`urcu`]: the bindings of the liburcu shim;
//! * [`fenced`]: a what-if platform with full fences on both sides (no `membarrier`), for the analysis;
//! * [`alloc_count`]: the counting global allocator of the zero-allocation test and the
//!   `footprint` binary.

#![warn(missing_docs)]

pub mod alloc_count;
pub mod callbacks;
pub mod fenced;
pub mod intervals;
pub mod itree;
pub mod lists;
pub mod urcu;

pub use callbacks::{Callbacks, Counter, IvCounter};

/// The platform every benchmark runs the core on: the hosted one it ships with.
pub type P = notifier_core::std_platform::StdPlatform;

/// The page size of [`P`]; benchmark ranges are multiples of it.
pub const PAGE: usize = 4096;
