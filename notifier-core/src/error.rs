//! Typed errors. The core never panics on input: every misuse named in the contract
//! (C-16) is answered with one of these, and the subscriber lists are left unchanged.

use core::fmt;

/// Why a call into the core was refused.
///
/// Every variant leaves the address space's subscriber list and interval tree exactly as
/// they were before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The address space has been torn down ([`AddressSpace::release`]); nothing can be
    /// registered on it any more (C-01).
    ///
    /// [`AddressSpace::release`]: crate::AddressSpace::release
    Dead,
    /// The subscriber is already registered (on this or another address space) (C-01).
    AlreadyRegistered,
    /// The subscriber or interval subscriber is not registered: an unknown handle (C-16).
    NotRegistered,
    /// The handle belongs to another address space (C-16).
    WrongAddressSpace,
    /// `unregister`, `remove`, `register`, `insert`, `get`, teardown, `synchronize` or an
    /// export barrier was called from inside a notifier callback (of any address space)
    /// on the same task, or `read_begin` from inside a callback while its interval is
    /// being invalidated. Those calls wait for callbacks or invalidations in flight, the
    /// caller's own included, so they would never return; the core refuses instead
    /// (C-16).
    InCallback,
    /// The calling task holds an [`Invalidation`](crate::Invalidation) it has not ended,
    /// and the call would wait for the invalidations in flight, its own included
    /// (`register`, the first `insert`, `get`, teardown, `read_begin` of an interval that
    /// invalidation is changing); the core refuses instead of hanging (C-16). A leaked
    /// invalidation (`mem::forget`) stays held by its task.
    InvalidationHeld,
    /// A non-blockable invalidation was refused by a subscriber (C-08). The core has
    /// already unwound it: the primary MMU must leave its page tables untouched and must
    /// not call `end`.
    WouldBlock,
    /// `start == end`: a range must cover at least one byte (C-16).
    EmptyRange,
    /// `start > end` (C-16).
    InvertedRange,
    /// The platform requires page-aligned ranges and this one is not (C-16).
    Unaligned,
    /// The range or interval reaches past the end of the address space, or
    /// `start + length` overflows (C-16).
    Overflow,
    /// An interval of length zero (C-16).
    ZeroLength,
    /// The platform could not allocate the per-address-space subscription object.
    NoMemory,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::Dead => "address space already torn down",
            Error::AlreadyRegistered => "subscriber already registered",
            Error::NotRegistered => "subscriber not registered",
            Error::WrongAddressSpace => "subscriber registered on another address space",
            Error::InCallback => "called from inside a notifier callback",
            Error::InvalidationHeld => "the calling task holds an invalidation it has not ended",
            Error::WouldBlock => "non-blockable invalidation refused by a subscriber",
            Error::EmptyRange => "empty range",
            Error::InvertedRange => "range start after its end",
            Error::Unaligned => "range not page aligned",
            Error::Overflow => "range overflows the address space",
            Error::ZeroLength => "interval of length zero",
            Error::NoMemory => "out of memory",
        };
        f.write_str(s)
    }
}

/// What a subscriber answers from a non-blockable callback it cannot complete without
/// sleeping (Linux: `-EAGAIN`) (C-08).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WouldBlock;

impl From<WouldBlock> for Error {
    fn from(_: WouldBlock) -> Self {
        Error::WouldBlock
    }
}

/// Contract violations by a *subscriber* that the core detects, reports through
/// [`Platform::report_bug`](crate::Platform::report_bug), and survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bug {
    /// A subscriber refused (`WouldBlock`) an invalidation whose `blockable` flag was
    /// true. The refusal is ignored: the subscriber is treated as having started and
    /// gets its `end` (C-08).
    RefusedWhileBlockable,
    /// A registered subscriber was dropped from inside one of its address space's
    /// callbacks: the implicit unregistration waits for that very callback. Unregister
    /// explicitly (and get [`Error::InCallback`]) instead.
    DropInCallback,
    /// An exporter returned from [`ExportOps::revoke`](crate::export::ExportOps::revoke)
    /// with remote mappings of the page still counted: the page is not freed.
    RemoteMapAfterRevoke,
    /// An [`ExportRegistry`](crate::export::ExportRegistry) was dropped with pages still
    /// exported; they were unlinked.
    RegistryDroppedWithPages,
}
