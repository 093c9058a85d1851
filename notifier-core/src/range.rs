//! The invalidation range: `{ start, end (exclusive), event, blockable, owner }`.

use crate::{Error, Platform};

/// Why the primary MMU changes the page tables of a range (Linux: `enum mmu_notifier_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Event {
    /// Entries are removed: munmap, truncation, COW break, reclaim/swap-out.
    Unmap,
    /// Entries are cleared but the range stays mapped (madvise, soft reclaim).
    Clear,
    /// Protection of a whole mapping changes (mprotect).
    ProtectionVma,
    /// Protection of one page changes (write-protect for COW, dirty tracking).
    ProtectionPage,
    /// Soft-dirty tracking write-protects the range.
    SoftDirty,
    /// The address space is torn down (what interval subscribers get at release).
    Release,
    /// Pages are migrated to other frames.
    Migrate,
    /// A device takes exclusive access to the pages.
    Exclusive,
}

impl Event {
    /// The event whose `as u8` is `b & 7` (every value below 8 is one). The inverse of
    /// `as u8` for every event: the match below lists them all, so a ninth variant
    /// fails to compile here until this function is widened.
    #[inline(always)]
    pub(crate) const fn from_low_bits(b: usize) -> Event {
        const _: () = {
            match Event::Unmap {
                Event::Unmap
                | Event::Clear
                | Event::ProtectionVma
                | Event::ProtectionPage
                | Event::SoftDirty
                | Event::Release
                | Event::Migrate
                | Event::Exclusive => {}
            }
            assert!(Event::Exclusive as u8 == 7);
        };
        match b & 7 {
            0 => Event::Unmap,
            1 => Event::Clear,
            2 => Event::ProtectionVma,
            3 => Event::ProtectionPage,
            4 => Event::SoftDirty,
            5 => Event::Release,
            6 => Event::Migrate,
            _ => Event::Exclusive,
        }
    }
}

/// A range of the address space about to change.
///
/// `start` is inclusive, `end` exclusive. `blockable == false` means the primary MMU
/// cannot sleep here (it holds a spinning lock or runs from reclaim in atomic context):
/// subscribers must not sleep and may refuse with [`WouldBlock`](crate::WouldBlock)
/// (C-08). `owner` identifies the party that triggered the change (Linux: `owner` for
/// `MMU_NOTIFY_MIGRATE`/`EXCLUSIVE`), so a device can skip invalidations it caused
/// itself; `0` means none.
///
/// ```
/// use notifier_core::{Event, Range};
/// let r = Range::new(0x1000, 0x3000, Event::Unmap).non_blocking().with_owner(7);
/// assert_eq!(r.len(), 0x2000);
/// assert!(!r.blockable);
/// assert!(r.overlaps(0x2fff, 0x2fff));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Range {
    /// First byte of the range.
    pub start: usize,
    /// One past the last byte of the range.
    pub end: usize,
    /// Why the range changes.
    pub event: Event,
    /// Whether subscribers may sleep.
    pub blockable: bool,
    /// Who caused the change (`0`: nobody in particular).
    pub owner: usize,
}

impl Range {
    /// A blockable range `[start, end)` with no owner.
    pub const fn new(start: usize, end: usize, event: Event) -> Self {
        Range {
            start,
            end,
            event,
            blockable: true,
            owner: 0,
        }
    }

    /// The same range, marked non-blockable.
    #[must_use]
    pub const fn non_blocking(mut self) -> Self {
        self.blockable = false;
        self
    }

    /// The same range with `owner` set.
    #[must_use]
    pub const fn with_owner(mut self, owner: usize) -> Self {
        self.owner = owner;
        self
    }

    /// Length in bytes (0 for an empty or inverted range).
    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range covers no byte.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `[first, last]` (both inclusive) meets the range.
    pub const fn overlaps(&self, first: usize, last: usize) -> bool {
        !self.is_empty() && first < self.end && last >= self.start
    }

    /// Checks the range against the platform's rules (C-16).
    pub fn validate<P: Platform>(&self) -> Result<(), Error> {
        validate_bounds::<P>(self.start, self.end)
    }
}

/// `[start, end)` must be non-empty, ordered, inside the address space and, where the
/// platform asks for it, page aligned.
#[inline(always)]
pub(crate) fn validate_bounds<P: Platform>(start: usize, end: usize) -> Result<(), Error> {
    if start == end {
        return Err(Error::EmptyRange);
    }
    if start > end {
        return Err(Error::InvertedRange);
    }
    if end > P::ADDRESS_LIMIT {
        return Err(Error::Overflow);
    }
    if P::REQUIRE_ALIGNMENT && (start % P::PAGE_SIZE != 0 || end % P::PAGE_SIZE != 0) {
        return Err(Error::Unaligned);
    }
    Ok(())
}
