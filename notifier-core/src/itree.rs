//! The interval tree (C-23): an intrusive, allocation-free AVL tree of intervals
//! `[start, last]` (inclusive), keyed by `(start, node address)` and augmented with the
//! largest `last` of each subtree, so that the intervals meeting a range are found
//! without visiting the others.
//!
//! # Why a balanced tree, and why AVL
//!
//! The shape of a treap whose priorities come from node addresses is decided by whoever
//! chooses the addresses and the starts: safe code that pins its subscribers in an array
//! and gives them starts in the order of their priorities builds a list, n deep. An AVL
//! tree's height is bounded for every insertion and removal order:
//! `h < 1.4405 · log2(n + 2) − 0.3277` (a red-black tree only guarantees
//! `2 · log2(n + 1)`). The tree is walked on every invalidation and changed only at
//! insert and remove, so the shallower tree is the better trade for the extra rotations
//! AVL may do on removal. Insertion, removal and finding the first match are O(log n)
//! in the worst case.
//!
//! # Bounded stack
//!
//! Nothing here recurses. Each node keeps a `parent` link, so insertion and removal
//! rebalance by climbing, and [`Tree::walk`] goes from one match to the next the way an
//! in-order iterator does (Linux: `interval_tree_iter_next`), with a fixed ring of the
//! 8 nearest ancestors to come back to (64 bytes) and the parent links beyond it: a
//! fixed, small stack whatever the size or shape of the tree, so the callback gets all
//! the rest. (The ring is for speed: climbing parent links alone made a walk wait for
//! each node's cache miss before it could start the next one; a 64-match walk over
//! 100 000 scattered intervals took about 2 to 3 times as long. For the same reason
//! each step down asks for the right child's cache line while the left child's, whose
//! `max_last` decides the way, is on its way; and [`Tree::freeze_matches`] lets the
//! core find the first match once, under its lock, and walk on from it.)
//! A node costs one [`Links`]: five words (40 bytes on 64-bit targets).
//!
//! # Concurrency: the frozen-tree rule
//!
//! The tree changes only through `&mut Tree`, which its owner keeps under its lock.
//! Readers on other threads may walk it without the lock while it is *frozen*: no
//! insertion or removal happens, and every node in it stays valid, until they are done
//! (the core guarantees this with the odd `invalidate_seq` and the count of in-flight
//! invalidations, deferring changes to the last `end`, C-13). [`Tree::freeze`] is the
//! unsafe promise that this holds; the [`Frozen`] snapshot it returns can then be walked
//! safely without the lock. Every field of [`Links`] is an atomic accessed with relaxed
//! ordering, so that such a lock-free read is well defined; ordering between the writer
//! and the readers comes from the lock and from the sequence, not from these fields.
//!
//! # Example
//!
//! ```
//! use core::ops::ControlFlow;
//! use core::ptr::NonNull;
//! use notifier_core::itree::{Links, Node, Tree};
//!
//! struct Iv {
//!     links: Links<Iv>,
//!     start: usize,
//!     last: usize,
//! }
//!
//! // SAFETY: `links` is always the same embedded field; `start` and `last` never change.
//! unsafe impl Node for Iv {
//!     fn links(&self) -> &Links<Self> {
//!         &self.links
//!     }
//!     fn start(&self) -> usize {
//!         self.start
//!     }
//!     fn last(&self) -> usize {
//!         self.last
//!     }
//! }
//!
//! let nodes: Vec<Iv> = [(0, 9), (5, 5), (20, 29)]
//!     .into_iter()
//!     .map(|(start, last)| Iv { links: Links::new(), start, last })
//!     .collect();
//! let node = |i: usize| NonNull::from(&nodes[i]);
//! let starts = |n: NonNull<Iv>, met: &mut Vec<usize>| {
//!     // SAFETY: every node of the tree is an element of `nodes`, alive.
//!     met.push(unsafe { n.as_ref() }.start);
//!     ControlFlow::Continue(())
//! };
//!
//! let mut tree = Tree::new();
//! for i in 0..nodes.len() {
//!     // SAFETY: each node once; `nodes` neither moves nor is dropped before the
//!     // removals below; no snapshot of the tree exists yet.
//!     unsafe { tree.insert(node(i)) };
//! }
//!
//! // Every interval meeting [4, 6], in order of start.
//! let mut met = Vec::new();
//! let _ = tree.walk(4, 6, |n| starts(n, &mut met));
//! assert_eq!(met, [0, 5]);
//! assert!(!tree.overlaps(10, 19));
//!
//! // The same from a snapshot, as an invalidation walks it without the lock: the first
//! // match is found once, when the tree is frozen.
//! // SAFETY: nothing changes the tree while `matches` lives.
//! let matches = unsafe { tree.freeze_matches(6, 25) }.expect("two intervals meet [6, 25]");
//! let mut met = Vec::new();
//! let _ = matches.walk(|n| starts(n, &mut met));
//! assert_eq!(met, [0, 20]);
//! drop(matches);
//!
//! for i in 0..nodes.len() {
//!     // SAFETY: in the tree, and the snapshot is gone.
//!     unsafe { tree.remove(node(i)) };
//! }
//! assert!(tree.is_empty());
//! ```

use core::marker::PhantomData;
use core::ops::ControlFlow;
use core::ptr::{self, NonNull};

use crate::primitive::{AtomicPtr, AtomicUsize, Ordering::Relaxed};

/// A type that can be a node of a [`Tree`]: it embeds a [`Links`] and says which
/// interval it covers.
///
/// # Safety
///
/// - [`links`](Self::links) returns the same [`Links`], embedded in `self`, every time
///   it is called on the same node.
/// - [`start`](Self::start) and [`last`](Self::last) do not change while the node is in
///   a tree (the tree's order and its `max_last` would become wrong: the walk would
///   miss intervals; memory safety does not depend on it, correctness does).
pub unsafe trait Node: Sized {
    /// The node's tree links.
    fn links(&self) -> &Links<Self>;
    /// First value covered.
    fn start(&self) -> usize;
    /// Last value covered (inclusive); not below `start`.
    fn last(&self) -> usize;
}

/// The tree's part of a node: embed one in the node type and return it from
/// [`Node::links`]. Only this module reads or writes it.
///
/// # Invariants
///
/// While the node is in a tree: `left`, `right` and `parent` are null or nodes of the
/// same tree (`parent` null only at the root), the in-order sequence of the tree is
/// sorted by `(start, address)`, `height` is the number of nodes on the longest path
/// down from this node, the heights of `left` and `right` differ by at most one, and
/// `max_last` is the largest `last` of the subtree.
pub struct Links<N> {
    left: AtomicPtr<N>,
    right: AtomicPtr<N>,
    parent: AtomicPtr<N>,
    max_last: AtomicUsize,
    height: AtomicUsize,
}

impl<N> Links<N> {
    /// Links of a node that is in no tree.
    pub fn new() -> Self {
        Links {
            left: AtomicPtr::new(ptr::null_mut()),
            right: AtomicPtr::new(ptr::null_mut()),
            parent: AtomicPtr::new(ptr::null_mut()),
            max_last: AtomicUsize::new(0),
            height: AtomicUsize::new(0),
        }
    }
}

impl<N> Default for Links<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A pointer to a node of a tree that is valid for `'a` and whose links change only
/// through this module.
///
/// # Invariants
///
/// `ptr` is a node of a tree that nobody mutates except this module's code holding the
/// tree's `&mut` (or nobody at all, when frozen), and it stays valid for `'a`.
struct Ref<'a, N: Node> {
    ptr: NonNull<N>,
    _life: PhantomData<&'a N>,
}

impl<N: Node> Clone for Ref<'_, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<N: Node> Copy for Ref<'_, N> {}
impl<N: Node> PartialEq for Ref<'_, N> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr
    }
}

fn raw<N: Node>(r: Option<Ref<'_, N>>) -> *mut N {
    r.map_or(ptr::null_mut(), |r| r.ptr.as_ptr())
}

impl<'a, N: Node> Ref<'a, N> {
    /// # Safety
    ///
    /// `p` is a node satisfying the type invariant for `'a`.
    unsafe fn new(ptr: NonNull<N>) -> Self {
        // INVARIANT: the caller's promise.
        Ref {
            ptr,
            _life: PhantomData,
        }
    }

    /// # Safety
    ///
    /// `p` is null or a node satisfying the type invariant for `'a`.
    unsafe fn from_raw(p: *mut N) -> Option<Self> {
        // INVARIANT: the caller's promise.
        NonNull::new(p).map(|ptr| Ref {
            ptr,
            _life: PhantomData,
        })
    }

    fn node(self) -> &'a N {
        // SAFETY: type invariant: the node is valid for `'a`, and it is only ever shared
        // (the tree writes its links through atomics).
        unsafe { self.ptr.as_ref() }
    }

    fn links(self) -> &'a Links<N> {
        self.node().links()
    }

    /// Follow a link of this node.
    fn follow(link: &AtomicPtr<N>) -> Option<Self> {
        // SAFETY: `Links` invariant: a link of a node in a tree is null or a node of
        // the same tree, which satisfies our type invariant as this node does.
        unsafe { Self::from_raw(link.load(Relaxed)) }
    }

    fn left(self) -> Option<Self> {
        Self::follow(&self.links().left)
    }

    fn right(self) -> Option<Self> {
        Self::follow(&self.links().right)
    }

    fn parent(self) -> Option<Self> {
        Self::follow(&self.links().parent)
    }

    fn set_left(self, c: Option<Self>) {
        self.links().left.store(raw(c), Relaxed);
    }

    fn set_right(self, c: Option<Self>) {
        self.links().right.store(raw(c), Relaxed);
    }

    fn set_parent(self, p: Option<Self>) {
        self.links().parent.store(raw(p), Relaxed);
    }

    fn start(self) -> usize {
        self.node().start()
    }

    fn last(self) -> usize {
        self.node().last()
    }

    fn key(self) -> (usize, usize) {
        (self.start(), self.ptr.as_ptr().addr())
    }

    fn max_last(self) -> usize {
        self.links().max_last.load(Relaxed)
    }

    fn height(r: Option<Self>) -> usize {
        r.map_or(0, |r| r.links().height.load(Relaxed))
    }

    /// Recompute `height` and `max_last` from the children's.
    fn update(self) {
        let (l, r) = (self.left(), self.right());
        let h = 1 + Self::height(l).max(Self::height(r));
        let mut m = self.last();
        for c in [l, r].into_iter().flatten() {
            m = m.max(c.max_last());
        }
        let links = self.links();
        links.height.store(h, Relaxed);
        links.max_last.store(m, Relaxed);
    }
}

/// An interval tree: the root of an AVL tree of intrusive nodes `N`.
///
/// Changed only through `&mut Tree` (keep it under the lock of its owner); walked
/// through `&Tree`, or without the lock through a [`Frozen`] snapshot.
///
/// # Invariants
///
/// `root` is null or a node whose parent is null; every node reachable from `root` is
/// valid, satisfies the invariants of [`Links`], and is changed only by this tree's
/// methods (the contract of [`insert`](Self::insert)).
pub struct Tree<N: Node> {
    root: *mut N,
}

// SAFETY: a `Tree` owns no node; through it a thread only reads nodes through `&N`
// (and writes their `Links`, atomics, through `&mut Tree`), which `N: Sync` allows from
// any thread.
unsafe impl<N: Node + Sync> Send for Tree<N> {}
// SAFETY: `&Tree` only reads: nodes through `&N` and their atomics.
unsafe impl<N: Node + Sync> Sync for Tree<N> {}

impl<N: Node> Default for Tree<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: Node> Tree<N> {
    /// An empty tree.
    pub const fn new() -> Self {
        Tree {
            root: ptr::null_mut(),
        }
    }

    /// Whether the tree has no node.
    pub fn is_empty(&self) -> bool {
        self.root.is_null()
    }

    fn root<'a>(&self) -> Option<Ref<'a, N>> {
        // SAFETY: type invariant: the root is a valid node of this tree, changed only by
        // its `&mut` methods. The lifetime is not tied to `&self` so that the mutating
        // methods can keep `Ref`s while they set `self.root`; no `Ref` outlives the
        // method that made it.
        unsafe { Ref::from_raw(self.root) }
    }

    /// Make `new` the child of `parent` that `old` was (or the root).
    fn replace_child<'a>(
        &mut self,
        parent: Option<Ref<'a, N>>,
        old: Ref<'a, N>,
        new: Option<Ref<'a, N>>,
    ) {
        match parent {
            None => self.root = raw(new),
            Some(p) if p.left() == Some(old) => p.set_left(new),
            Some(p) => p.set_right(new),
        }
    }

    /// Rotate `x` down to the left; returns its right child, the subtree's new root.
    fn rotate_left<'a>(&mut self, x: Ref<'a, N>) -> Ref<'a, N> {
        let Some(y) = x.right() else {
            unreachable!("rotate_left without a right child");
        };
        let p = x.parent();
        let b = y.left();
        x.set_right(b);
        if let Some(b) = b {
            b.set_parent(Some(x));
        }
        self.replace_child(p, x, Some(y));
        y.set_parent(p);
        y.set_left(Some(x));
        x.set_parent(Some(y));
        x.update();
        y.update();
        y
    }

    /// Rotate `x` down to the right; returns its left child, the subtree's new root.
    fn rotate_right<'a>(&mut self, x: Ref<'a, N>) -> Ref<'a, N> {
        let Some(y) = x.left() else {
            unreachable!("rotate_right without a left child");
        };
        let p = x.parent();
        let b = y.right();
        x.set_left(b);
        if let Some(b) = b {
            b.set_parent(Some(x));
        }
        self.replace_child(p, x, Some(y));
        y.set_parent(p);
        y.set_right(Some(x));
        x.set_parent(Some(y));
        x.update();
        y.update();
        y
    }

    /// Restore the AVL balance at `x`, whose children are balanced and differ in height
    /// by at most two; returns the subtree's root.
    fn rebalance<'a>(&mut self, x: Ref<'a, N>) -> Ref<'a, N> {
        let h = Ref::height;
        let (l, r) = (x.left(), x.right());
        if h(l) > h(r) + 1 {
            let Some(l) = l else { unreachable!() };
            if h(l.left()) < h(l.right()) {
                self.rotate_left(l);
            }
            self.rotate_right(x)
        } else if h(r) > h(l) + 1 {
            let Some(r) = r else { unreachable!() };
            if h(r.right()) < h(r.left()) {
                self.rotate_right(r);
            }
            self.rotate_left(x)
        } else {
            x
        }
    }

    /// Update and rebalance every node from `x` up to the root: O(log n).
    ///
    /// With `early`, stop at the first subtree whose height and `max_last` come out as
    /// they were before: the nodes above depend only on those two values, so they are
    /// still right. This needs every node above `x` to have been right before the
    /// change (true for an insertion, or a removal that only replaced a node by its
    /// child; not when a successor moved up into the removed node's place).
    fn fix_up(&mut self, mut x: Option<Ref<'_, N>>, early: bool) {
        while let Some(n) = x {
            let before = (Ref::height(Some(n)), n.max_last());
            n.update();
            let top = self.rebalance(n);
            if early && (Ref::height(Some(top)), top.max_last()) == before {
                return;
            }
            x = top.parent();
        }
    }

    /// Insert `n`: O(log n), no allocation, a few words of stack.
    ///
    /// # Safety
    ///
    /// - `n` is valid and in no tree, and stays valid, pinned and not accessed through
    ///   `&mut` until it has been [removed](Self::remove) from this tree.
    /// - No [`Frozen`] snapshot of this tree is in use (the frozen-tree rule).
    pub unsafe fn insert(&mut self, n: NonNull<N>) {
        // SAFETY: the caller's first promise; from here on `n` is a node of this tree,
        // changed only by its methods.
        let n = unsafe { Ref::new(n) };
        let key = n.key();
        let mut parent = None;
        let mut go_left = false;
        let mut cur = self.root();
        while let Some(c) = cur {
            parent = Some(c);
            go_left = key < c.key();
            cur = if go_left { c.left() } else { c.right() };
        }
        // INVARIANT: `n` becomes a leaf at the place its key sorts to.
        n.set_left(None);
        n.set_right(None);
        n.set_parent(parent);
        n.update();
        match parent {
            None => self.root = n.ptr.as_ptr(),
            Some(p) if go_left => p.set_left(Some(n)),
            Some(p) => p.set_right(Some(n)),
        }
        self.fix_up(parent, true);
    }

    /// Remove `n`: O(log n), no allocation, a few words of stack. Its links are cleared.
    ///
    /// # Safety
    ///
    /// - `n` is in this tree.
    /// - No [`Frozen`] snapshot of this tree is in use (the frozen-tree rule).
    pub unsafe fn remove(&mut self, n: NonNull<N>) {
        // SAFETY: the caller's promise: `n` is a node of this tree.
        let z = unsafe { Ref::new(n) };
        debug_assert!(self.contains(z), "removing a node that is not in this tree");
        let p = z.parent();
        let (fix_from, early) = match (z.left(), z.right()) {
            (None, c) | (c, None) => {
                self.replace_child(p, z, c);
                if let Some(c) = c {
                    c.set_parent(p);
                }
                (p, true)
            }
            (Some(l), Some(r)) => {
                // Put the in-order successor `s` (the leftmost node on the right) in
                // `z`'s place.
                let mut s = r;
                while let Some(sl) = s.left() {
                    s = sl;
                }
                let fix_from = if s == r {
                    s
                } else {
                    let Some(sp) = s.parent() else { unreachable!() };
                    let sr = s.right();
                    sp.set_left(sr);
                    if let Some(sr) = sr {
                        sr.set_parent(Some(sp));
                    }
                    s.set_right(Some(r));
                    r.set_parent(Some(s));
                    sp
                };
                s.set_left(Some(l));
                l.set_parent(Some(s));
                self.replace_child(p, z, Some(s));
                s.set_parent(p);
                // `s` sits where `z` was with its own old height and `max_last`: climb
                // all the way up.
                (Some(fix_from), false)
            }
        };
        z.set_left(None);
        z.set_right(None);
        z.set_parent(None);
        z.links().height.store(0, Relaxed);
        self.fix_up(fix_from, early);
    }

    /// Whether `n` hangs below this tree's root (O(log n); for debug assertions).
    fn contains(&self, n: Ref<'_, N>) -> bool {
        let mut top = n;
        while let Some(p) = top.parent() {
            top = p;
        }
        top.ptr.as_ptr() == self.root
    }

    /// Visit, in order of `(start, address)`, every node whose `[start, last]` meets
    /// `[first, last]`, until `f` breaks. `first <= last`.
    ///
    /// Cost: O(log n) to find the first match, then at most one climb and one descent
    /// per match: O(log n) when nothing matches, O(log n + k) when the k matches are
    /// consecutive in start order, O(min(n, (k + 1) · log n)) in general (as for
    /// Linux's `interval_tree`). Stack: a few words and a ring of 8 pointers.
    pub fn walk(
        &self,
        first: usize,
        last: usize,
        f: impl FnMut(NonNull<N>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        walk(self.root(), first, last, f)
    }

    /// Whether some node meets `[first, last]`: O(log n).
    pub fn overlaps(&self, first: usize, last: usize) -> bool {
        first_match(self.root(), first, last).is_some()
    }

    /// A snapshot of the nodes meeting `[first, last]` (`first <= last`), to walk without
    /// the lock; `None` if there is none. The first of them is found now, under the
    /// lock, and the walk goes on from it ([`FrozenMatches::walk`]), so that the caller
    /// that needs to know whether any node matches (and then freezes the tree) descends
    /// the tree once, not twice (Linux: `mn_itree_inv_start_range` returns the first
    /// node it found under its lock).
    ///
    /// # Safety
    ///
    /// As for [`freeze`](Self::freeze): until the returned snapshot is dropped the tree
    /// is frozen. (When `None` is returned nothing needs to stay frozen.)
    pub unsafe fn freeze_matches(&self, first: usize, last: usize) -> Option<FrozenMatches<N>> {
        debug_assert!(first <= last);
        first_match(self.root(), first, last).map(|m| FrozenMatches {
            first_match: m.ptr,
            first,
            last,
            _not_send: PhantomData,
        })
    }

    /// A snapshot of the tree to walk without the lock.
    ///
    /// # Safety
    ///
    /// Until the returned [`Frozen`] is dropped (on whatever thread it is used), the
    /// tree is frozen: no node is inserted or removed, and every node in it stays valid.
    pub unsafe fn freeze(&self) -> Frozen<N> {
        Frozen {
            root: self.root,
            _not_send: PhantomData,
        }
    }

    /// The number of nodes on the longest path from the root down (0 when empty),
    /// counted by following the links, not read from the nodes' heights. O(n), a few
    /// words of stack; for tests and benchmarks.
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let _ = traverse(self.root(), |_, d| {
            max = max.max(d);
            Ok(())
        });
        max
    }

    /// Check every invariant of [`Links`] over the whole tree (parent links, order by
    /// `(start, address)`, heights, AVL balance, `max_last`) and return the number of
    /// nodes, or which invariant is broken. O(n), a few words of stack; for tests.
    pub fn validate(&self) -> Result<usize, &'static str> {
        if let Some(r) = self.root() {
            if r.parent().is_some() {
                return Err("the root has a parent");
            }
        }
        let mut prev: Option<(usize, usize)> = None;
        traverse(self.root(), |n, _| {
            for c in [n.left(), n.right()].into_iter().flatten() {
                if c.parent() != Some(n) {
                    return Err("a child's parent link is wrong");
                }
            }
            if prev.is_some_and(|p| p >= n.key()) {
                return Err("in-order keys are not increasing");
            }
            prev = Some(n.key());
            let (hl, hr) = (Ref::height(n.left()), Ref::height(n.right()));
            if Ref::height(Some(n)) != 1 + hl.max(hr) {
                return Err("a height is wrong");
            }
            if hl.abs_diff(hr) > 1 {
                return Err("a node is out of balance");
            }
            let mut m = n.last();
            for c in [n.left(), n.right()].into_iter().flatten() {
                m = m.max(c.max_last());
            }
            if n.max_last() != m {
                return Err("a max_last is wrong");
            }
            Ok(())
        })
    }
}

/// A snapshot of a frozen [`Tree`], to walk without its lock (see [`Tree::freeze`]).
/// Not `Send`: it is walked by the thread that froze the tree.
pub struct Frozen<N: Node> {
    root: *mut N,
    _not_send: PhantomData<*mut ()>,
}

impl<N: Node> Frozen<N> {
    fn root<'a>(&'a self) -> Option<Ref<'a, N>> {
        // SAFETY: the contract of `Tree::freeze`: the tree does not change and its nodes
        // stay valid while `self` lives.
        unsafe { Ref::from_raw(self.root) }
    }

    /// As [`Tree::walk`].
    pub fn walk(
        &self,
        first: usize,
        last: usize,
        f: impl FnMut(NonNull<N>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        walk(self.root(), first, last, f)
    }

    /// As [`Tree::overlaps`].
    pub fn overlaps(&self, first: usize, last: usize) -> bool {
        walk(self.root(), first, last, |_| ControlFlow::Break(())).is_break()
    }
}

/// The nodes of a frozen [`Tree`] meeting a range, from the first of them (see
/// [`Tree::freeze_matches`]). Not `Send`: it is walked by the thread that froze the tree.
///
/// # Invariants
///
/// The tree is frozen while this lives (the contract of [`Tree::freeze_matches`]), and
/// `first_match` is its first node in order meeting `[first, last]`, `first <= last`.
pub struct FrozenMatches<N: Node> {
    first_match: NonNull<N>,
    first: usize,
    last: usize,
    _not_send: PhantomData<*mut ()>,
}

impl<N: Node> FrozenMatches<N> {
    /// Visit every node meeting the range, in order of `(start, address)`, until `f`
    /// breaks (as [`Tree::walk`], without descending again to the first match: from it,
    /// the walk climbs the parent links where [`Tree::walk`] would pop its ring).
    pub fn walk(&self, f: impl FnMut(NonNull<N>) -> ControlFlow<()>) -> ControlFlow<()> {
        // SAFETY: type invariant: a node of the frozen tree, which stays valid and
        // unchanged while `self` lives.
        let x = unsafe { Ref::new(self.first_match) };
        walk_from(x, Ancestors::new(), false, self.first, self.last, f)
    }
}

/// How many of the nodes the walk will come back to it keeps on its stack.
const RING: usize = 8;

/// The nearest ancestors whose left subtree the walk is in, nearest last: a ring of
/// [`RING`] entries (64 bytes on 64-bit targets) that forgets the farthest one when
/// full. With it the next node's address is known before the current node's cache line
/// arrives (reading the parent link would wait for it), so the misses of a walk
/// overlap; when it is empty the walk climbs the parent links instead, which finds the
/// same node (and the forgotten ones).
struct Ancestors<'a, N: Node> {
    ring: [Option<Ref<'a, N>>; RING],
    /// Where the next push goes.
    head: usize,
    len: usize,
}

impl<'a, N: Node> Ancestors<'a, N> {
    fn new() -> Self {
        Ancestors {
            ring: [None; RING],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, a: Ref<'a, N>) {
        self.ring[self.head] = Some(a);
        self.head = (self.head + 1) % RING;
        self.len = (self.len + 1).min(RING);
    }

    /// The nearest ancestor whose left subtree holds `x` (the node the walk is done
    /// with, and its subtree): from the ring, else by climbing the parent links.
    fn next(&mut self, mut x: Ref<'a, N>) -> Option<Ref<'a, N>> {
        if self.len > 0 {
            self.len -= 1;
            self.head = (self.head + RING - 1) % RING;
            return self.ring[self.head];
        }
        loop {
            let p = x.parent()?;
            if p.left() == Some(x) {
                return Some(p);
            }
            x = p;
        }
    }
}

fn walk<'a, N: Node>(
    root: Option<Ref<'a, N>>,
    first: usize,
    last: usize,
    f: impl FnMut(NonNull<N>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    debug_assert!(first <= last);
    match root.filter(|r| r.max_last() >= first) {
        Some(x) => walk_from(x, Ancestors::new(), true, first, last, f),
        None => ControlFlow::Continue(()),
    }
}

/// The first node in order that meets `[first, last]`: the descent of [`walk`] alone.
fn first_match<'a, N: Node>(
    root: Option<Ref<'a, N>>,
    first: usize,
    last: usize,
) -> Option<Ref<'a, N>> {
    let mut x = root.filter(|r| r.max_last() >= first)?;
    let mut ancestors = Ancestors::new();
    descend(&mut x, &mut ancestors, first)?;
    // `descend` stops at a match or at the first node starting after `last`.
    (x.start() <= last).then_some(x)
}

/// Go down from `x`, whose subtree holds an interval ending at or after `first`, to the
/// leftmost node of that subtree ending at or after `first`: the first candidate, as
/// the ones after it in order start no earlier (whether it starts after the range's
/// `last` is the caller's question). `None` only if the invariant did not hold
/// (unreachable; the walk then ends, the safe answer).
#[inline(always)]
fn descend<'a, N: Node>(
    x: &mut Ref<'a, N>,
    ancestors: &mut Ancestors<'a, N>,
    first: usize,
) -> Option<()> {
    loop {
        let (l, r) = (x.left(), x.right());
        // The right child's line is wanted if the walk turns right: fetch it while the
        // left child's arrives (its `max_last` decides), so that a step to the right
        // waits for one miss, not two in a row.
        if let Some(r) = r {
            prefetch(r.ptr);
        }
        match l {
            Some(l) if l.max_last() >= first => {
                ancestors.push(*x);
                *x = l;
            }
            // A match, or too late to be one (it starts after `last`): the caller deals
            // with both. (A node starting after `last` ends after `first` too.)
            _ if x.last() >= first => return Some(()),
            _ => match r {
                Some(r) if r.max_last() >= first => *x = r,
                _ => return None,
            },
        }
    }
}

/// Ask for the cache line of `n` ahead of its use. Only a hint: it reads nothing
/// (a prefetch never faults, and the node is valid anyway) and changes nothing.
/// `prefetcht0` is in every x86-64 CPU, with or without the SSE registers (kernels
/// build without them).
#[inline(always)]
fn prefetch<N>(n: NonNull<N>) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    // SAFETY: `prefetcht0` reads no memory architecturally, cannot fault, and writes no
    // register, flag or memory; the operand is a plain address.
    unsafe {
        core::arch::asm!(
            "prefetcht0 [{0}]",
            in(reg) n.as_ptr(),
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    let _ = n;
}

/// The in-order walk of [`walk`] from node `x`. With `down`, `x` is a subtree holding an
/// interval ending at or after `first` (the walk first descends into it); without, `x`
/// is the first match in order and `ancestors` may be empty (the walk climbs the parent
/// links when it is).
fn walk_from<'a, N: Node>(
    mut x: Ref<'a, N>,
    mut ancestors: Ancestors<'a, N>,
    mut down: bool,
    first: usize,
    last: usize,
    mut f: impl FnMut(NonNull<N>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    use ControlFlow::Continue;
    // Invariant at the top of this loop: with `down`, the subtree of `x` holds an
    // interval ending at or after `first`, and every node before that subtree in order
    // has been dealt with; without, every node before `x` in order has been.
    loop {
        if down && descend(&mut x, &mut ancestors, first).is_none() {
            return Continue(());
        }
        down = true;
        // `x` and the nodes before it are done with, its left subtree too; go on in
        // order: its right subtree if it may hold a match, else the next ancestor.
        loop {
            if x.start() > last {
                // It and every node after it start too late.
                return Continue(());
            }
            if x.last() >= first {
                f(x.ptr)?;
            }
            if let Some(r) = x.right() {
                if r.max_last() >= first {
                    x = r;
                    break;
                }
            }
            match ancestors.next(x) {
                Some(a) => x = a,
                None => return Continue(()),
            }
        }
    }
}

/// Visit every node in order with its depth (the root is at 1), following the parent
/// links back up: no recursion, no stack of nodes. Stops at the first error.
fn traverse<'a, N: Node>(
    root: Option<Ref<'a, N>>,
    mut f: impl FnMut(Ref<'a, N>, usize) -> Result<(), &'static str>,
) -> Result<usize, &'static str> {
    let mut count = 0;
    let mut depth = 0;
    let mut prev: Option<Ref<'a, N>> = None;
    let mut cur = root;
    while let Some(x) = cur {
        let (l, r, p) = (x.left(), x.right(), x.parent());
        let next = if prev == p {
            // Arrived from above.
            depth += 1;
            if l.is_some() {
                l
            } else {
                f(x, depth)?;
                count += 1;
                r.or(p)
            }
        } else if l.is_some() && prev == l {
            // Back from the left subtree.
            f(x, depth)?;
            count += 1;
            r.or(p)
        } else {
            // Back from the right subtree.
            p
        };
        if next == p {
            depth -= 1;
        }
        prev = Some(x);
        cur = next;
    }
    Ok(count)
}
