//! Page ageing for reclaim (C-15): the primary MMU asks the secondary MMUs whether they
//! accessed a range, since their accesses do not set the CPU page tables' accessed bits.

use crate::range::validate_bounds;
use crate::{AddressSpace, Error, Platform};

impl<P: Platform> AddressSpace<P> {
    /// Clear and flush the secondary accessed bits of `[start, end)` (Linux:
    /// `mmu_notifier_clear_flush_young`). Every subscriber is called; the answer is the
    /// OR of theirs. Never sleeps.
    pub fn clear_flush_young(&self, start: usize, end: usize) -> Result<bool, Error> {
        self.young_all(start, end, |n, s, e| n.call_clear_flush_young(s, e))
    }

    /// Clear the secondary accessed bits of `[start, end)` without flushing (Linux:
    /// `mmu_notifier_clear_young`). Every subscriber is called; OR of the answers.
    pub fn clear_young(&self, start: usize, end: usize) -> Result<bool, Error> {
        self.young_all(start, end, |n, s, e| n.call_clear_young(s, e))
    }

    /// Whether a secondary MMU accessed the page at `addr` (Linux:
    /// `mmu_notifier_test_young`): stops at the first subscriber that says yes.
    pub fn test_young(&self, addr: usize) -> Result<bool, Error> {
        let end = addr.checked_add(1).ok_or(Error::Overflow)?;
        if end > P::ADDRESS_LIMIT {
            return Err(Error::Overflow);
        }
        let Some(s) = self.subscriptions() else {
            return Ok(false);
        };
        let _rcu = crate::srcu::SleepableRcu::read_lock(P::rcu());
        let _mark = crate::task::CallbackMark::<P>::new();
        P::non_block_start();
        let mut young = false;
        s.for_each_node(|n| {
            if n.live() && n.call_test_young(addr) {
                young = true;
                return false;
            }
            true
        });
        P::non_block_end();
        Ok(young)
    }

    fn young_all(
        &self,
        start: usize,
        end: usize,
        f: impl Fn(&crate::subscriber::NodeRef<'_, P>, usize, usize) -> bool,
    ) -> Result<bool, Error> {
        validate_bounds::<P>(start, end)?;
        let Some(s) = self.subscriptions() else {
            return Ok(false);
        };
        let _rcu = crate::srcu::SleepableRcu::read_lock(P::rcu());
        let _mark = crate::task::CallbackMark::<P>::new();
        P::non_block_start();
        let mut young = false;
        s.for_each_node(|n| {
            if n.live() {
                young |= f(&n, start, end);
            }
            true
        });
        P::non_block_end();
        Ok(young)
    }
}
