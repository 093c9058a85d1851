//! C-23 bounded cost: the interval tree ([`notifier_core::itree`]) keeps an O(log n)
//! depth for any insertion and removal order, walks and changes it with a bounded stack,
//! and finds exactly the intervals a brute-force model finds, in the same order.
//!
//! Sizes are smaller under Miri (`cfg(miri)`), which runs the same code.
#![cfg(not(loom))]

use core::ops::ControlFlow;
use core::ptr::NonNull;

use notifier_core::itree::{Links, Node, Tree};

/// A test node: an interval and an id.
struct T {
    links: Links<T>,
    start: usize,
    last: usize,
    id: usize,
}

// SAFETY: `links` is always the same embedded field, `start` and `last` never change.
unsafe impl Node for T {
    fn links(&self) -> &Links<T> {
        &self.links
    }
    fn start(&self) -> usize {
        self.start
    }
    fn last(&self) -> usize {
        self.last
    }
}

/// A pool of nodes that stay put (a boxed slice) while a tree points at them.
struct Pool {
    nodes: Box<[T]>,
}

impl Pool {
    fn new(intervals: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let nodes = intervals
            .into_iter()
            .enumerate()
            .map(|(id, (start, last))| {
                assert!(start <= last);
                T {
                    links: Links::new(),
                    start,
                    last,
                    id,
                }
            })
            .collect();
        Pool { nodes }
    }

    fn ptr(&self, i: usize) -> NonNull<T> {
        NonNull::from(&self.nodes[i])
    }

    fn key(&self, i: usize) -> (usize, usize) {
        (self.nodes[i].start, self.ptr(i).as_ptr().addr())
    }
}

/// The tree and the ids in it; removes everything on drop so that no node is freed while
/// in the tree, even when an assertion fails.
struct Checked<'p> {
    pool: &'p Pool,
    tree: Tree<T>,
    present: Vec<bool>,
    len: usize,
}

impl<'p> Checked<'p> {
    fn new(pool: &'p Pool) -> Self {
        Checked {
            pool,
            tree: Tree::new(),
            present: vec![false; pool.nodes.len()],
            len: 0,
        }
    }

    fn insert(&mut self, i: usize) {
        assert!(!self.present[i]);
        // SAFETY: the node is in no tree (`present`), and the pool outlives the tree,
        // from which `Drop` removes every node.
        unsafe { self.tree.insert(self.pool.ptr(i)) };
        self.present[i] = true;
        self.len += 1;
    }

    fn remove(&mut self, i: usize) {
        assert!(self.present[i]);
        // SAFETY: the node is in this tree (`present`).
        unsafe { self.tree.remove(self.pool.ptr(i)) };
        self.present[i] = false;
        self.len -= 1;
    }

    /// Ids the tree visits for `[first, last]`, stopping after `limit` of them.
    fn walk(&self, first: usize, last: usize, limit: usize) -> Vec<usize> {
        visit(limit, |f| self.tree.walk(first, last, f))
    }

    /// The same through [`Tree::freeze_matches`]: the first match found up front, the
    /// walk going on from it with no ring of ancestors (it climbs the parent links).
    fn walk_matches(&self, first: usize, last: usize, limit: usize) -> Vec<usize> {
        // SAFETY: nothing changes the tree while `matches` lives (it is dropped at the
        // end of this function, which holds `&self`); the nodes live in the pool.
        let Some(matches) = (unsafe { self.tree.freeze_matches(first, last) }) else {
            return Vec::new();
        };
        let seen = visit(limit, |f| matches.walk(f));
        assert!(
            !seen.is_empty(),
            "freeze_matches found a match the walk did not"
        );
        seen
    }

    /// Ids the model says meet `[first, last]`, in order of (start, address).
    fn model(&self, first: usize, last: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.present.len())
            .filter(|&i| self.present[i])
            .filter(|&i| self.pool.nodes[i].start <= last && self.pool.nodes[i].last >= first)
            .collect();
        v.sort_by_key(|&i| self.pool.key(i));
        v
    }

    fn check(&self) {
        assert_eq!(self.tree.validate(), Ok(self.len));
        assert_depth(&self.tree, self.len);
    }
}

/// Ids of the nodes `walk` hands to its callback, which stops after `limit` of them;
/// checks that the walk reports a break exactly when the callback made one.
fn visit(
    limit: usize,
    walk: impl FnOnce(&mut dyn FnMut(NonNull<T>) -> ControlFlow<()>) -> ControlFlow<()>,
) -> Vec<usize> {
    let mut seen = Vec::new();
    let flow = walk(&mut |n| {
        // SAFETY: nodes of the tree are nodes of the pool, alive.
        seen.push(unsafe { n.as_ref() }.id);
        if seen.len() == limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(flow.is_break(), seen.len() == limit && limit > 0);
    seen
}

impl Drop for Checked<'_> {
    fn drop(&mut self) {
        for i in 0..self.present.len() {
            if self.present[i] {
                self.remove(i);
            }
        }
    }
}

/// The depth bound C-23 asks for, and the tighter one AVL trees keep.
fn assert_depth(tree: &Tree<T>, n: usize) {
    let d = tree.depth();
    let log = ((n + 2) as f64).log2();
    assert!(
        d as f64 <= 2.0 * (n.max(1) as f64).log2() + 2.0,
        "depth {d} for {n} nodes"
    );
    assert!(
        d as f64 <= 1.4405 * log - 0.3277 + 1e-9,
        "depth {d} for {n} nodes is above the AVL bound"
    );
}

/// splitmix64: a small deterministic generator, so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn c23_random_inserts_removes_and_walks_match_the_model() {
    let (seeds, ops) = if cfg!(miri) { (2, 80) } else { (150, 1500) };
    for seed in 0..seeds {
        let mut rng = Rng(seed);
        // Few distinct starts so that equal starts are common; the span of values
        // varies with the seed so that some seeds have mostly disjoint intervals and
        // others mostly nested ones.
        let span = 4 + rng.below(200);
        let max_len = 1 + rng.below(span);
        let size = if cfg!(miri) { 12 } else { 8 + rng.below(120) };
        let pool = Pool::new((0..size).map(|_| {
            let s = rng.below(span);
            (s, s + rng.below(max_len))
        }));
        let mut t = Checked::new(&pool);
        for op in 0..ops {
            let i = rng.below(size);
            match rng.below(10) {
                0..=3 if !t.present[i] => t.insert(i),
                4..=6 if t.present[i] => t.remove(i),
                _ => {
                    let a = rng.below(span + max_len);
                    let b = a + rng.below(span / 2 + 1);
                    let all = t.model(a, b);
                    assert_eq!(t.walk(a, b, usize::MAX), all, "seed {seed} op {op}");
                    assert_eq!(t.walk_matches(a, b, usize::MAX), all, "seed {seed} op {op}");
                    assert_eq!(t.tree.overlaps(a, b), !all.is_empty());
                    // Stopping early stops at the same place.
                    let limit = 1 + rng.below(all.len() + 1);
                    let want = &all[..limit.min(all.len())];
                    assert_eq!(t.walk(a, b, limit), want, "seed {seed} op {op}");
                    assert_eq!(t.walk_matches(a, b, limit), want, "seed {seed} op {op}");
                }
            }
            t.check();
        }
        // The whole tree in order.
        assert_eq!(t.walk(0, usize::MAX, usize::MAX), t.model(0, usize::MAX));
        assert_eq!(
            t.walk_matches(0, usize::MAX, usize::MAX),
            t.model(0, usize::MAX)
        );
    }
}

/// A tree deep enough that walks go left more often than the ring of ancestors holds (8),
/// way back up through the parent links, against the model.
#[test]
fn c23_walks_of_a_deep_tree_match_the_model() {
    let (n, queries) = if cfg!(miri) {
        (300, 20)
    } else {
        (100_000, 300)
    };
    let mut rng = Rng(42);
    let pool = Pool::new((0..n).map(|_| {
        let s = rng.below(4 * n);
        let long = rng.below(8) == 0;
        (s, s + rng.below(if long { 64 } else { 4 }))
    }));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut t = Checked::new(&pool);
    for &i in &order {
        t.insert(i);
    }
    t.check();
    if !cfg!(miri) {
        assert!(t.tree.depth() > 16, "not deep enough");
    }
    let mut by_key: Vec<usize> = (0..n).collect();
    by_key.sort_by_key(|&i| pool.key(i));
    for q in 0..queries {
        let a = rng.below(4 * n);
        let b = a + [0, 1, 7, 100, 3000][q % 5];
        let want: Vec<usize> = by_key
            .iter()
            .copied()
            .filter(|&i| pool.nodes[i].start <= b && pool.nodes[i].last >= a)
            .collect();
        assert_eq!(t.walk(a, b, usize::MAX), want, "query {q}");
        assert_eq!(t.walk_matches(a, b, usize::MAX), want, "query {q}");
    }
}

/// Insertion orders an adversary would choose, each as starts (and a length).
fn adversarial(n: usize) -> Vec<(&'static str, Vec<(usize, usize)>)> {
    let zigzag = (0..n).map(|i| if i % 2 == 0 { i / 2 } else { n - 1 - i / 2 });
    vec![
        ("increasing", (0..n).map(|i| (i, i)).collect()),
        ("decreasing", (0..n).rev().map(|i| (i, i)).collect()),
        ("all equal", (0..n).map(|_| (7, 7)).collect()),
        ("zig-zag", zigzag.map(|s| (s, s + 3)).collect()),
        (
            "nested, outermost first",
            (0..n).map(|i| (i, 2 * n - i)).collect(),
        ),
        (
            "nested, innermost first",
            (0..n).rev().map(|i| (i, 2 * n - i)).collect(),
        ),
    ]
}

#[test]
fn c23_depth_is_logarithmic_for_adversarial_orders() {
    let sizes: &[usize] = if cfg!(miri) {
        &[1, 2, 3, 5, 17, 33]
    } else {
        &[1, 2, 3, 5, 17, 100, 1000, 4096, 100_000]
    };
    for &n in sizes {
        for (name, order) in adversarial(n) {
            let pool = Pool::new(order);
            let mut t = Checked::new(&pool);
            for i in 0..n {
                t.insert(i);
                if (n <= 100 && !cfg!(miri)) || (n <= 4096 && i % 37 == 0) {
                    t.check();
                }
            }
            t.check();
            let full = t.tree.depth();
            // Remove in the order of insertion, every other one first: removals
            // rebalance too.
            for i in (0..n).step_by(2) {
                t.remove(i);
                if (n <= 100 && !cfg!(miri)) || (n <= 4096 && i % 37 == 0) {
                    t.check();
                }
            }
            t.check();
            for i in (1..n).step_by(2) {
                t.remove(i);
            }
            t.check();
            assert!(t.tree.is_empty());
            eprintln!("{name:>24}: n = {n:>6}, depth {full}");
        }
    }
}

/// 100 000 nested intervals all meeting one point: the tree is built, walked (every node
/// is a match) and emptied on a thread with a 16 KiB stack, like a kernel stack. Under
/// the recursive treap a chain of ~500 nodes overflowed it.
#[test]
fn c23_walk_of_100000_nested_intervals_fits_a_16k_stack() {
    let n = if cfg!(miri) { 32 } else { 100_000 };
    let pool = Pool::new((0..n).map(|i| (i, 2 * n - i)));
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(16 * 1024)
            .spawn_scoped(s, || {
                let mut t = Checked::new(&pool);
                for i in 0..n {
                    t.insert(i);
                }
                let mut count = 0;
                let mut prev = None;
                let flow = t.tree.walk(n, n, |p| {
                    // SAFETY: a node of the pool, alive.
                    let id = unsafe { p.as_ref() }.id;
                    assert!(prev.is_none_or(|q| q + 1 == id), "out of order");
                    prev = Some(id);
                    count += 1;
                    ControlFlow::Continue(())
                });
                assert!(flow.is_continue());
                assert_eq!(count, n);
                assert!(t.tree.overlaps(0, 0));
                assert!(!t.tree.overlaps(2 * n + 1, usize::MAX));
                // Emptied by `Checked`'s drop, on this thread too.
            })
            .unwrap()
            .join()
            .unwrap();
    });
}

/// A frozen snapshot walks the same nodes as another thread walking the tree at the same
/// time.
#[test]
fn c23_frozen_walk_from_another_thread() {
    let n = if cfg!(miri) { 24 } else { 5000 };
    let pool = Pool::new((0..n).map(|i| (3 * i, 3 * i + 5)));
    let mut t = Checked::new(&pool);
    for i in (0..n).rev() {
        t.insert(i);
    }
    let want = t.model(30, 60);
    // SAFETY: nothing changes the tree while `frozen` lives: it is declared after `t`,
    // so it goes before `t`'s drop removes the nodes; the nodes live in `pool`.
    let frozen = unsafe { t.tree.freeze() };
    let got = std::thread::scope(|s| {
        let tree = &t.tree;
        let h = s.spawn(move || {
            let mut got = Vec::new();
            let _ = tree.walk(30, 60, |p| {
                // SAFETY: a node of the pool, alive.
                got.push(unsafe { p.as_ref() }.id);
                ControlFlow::Continue(())
            });
            got
        });
        let mut mine = Vec::new();
        let _ = frozen.walk(30, 60, |p| {
            // SAFETY: a node of the pool, alive.
            mine.push(unsafe { p.as_ref() }.id);
            ControlFlow::Continue(())
        });
        assert!(frozen.overlaps(0, 0));
        assert!(!frozen.overlaps(3 * n + 6, usize::MAX));
        assert_eq!(mine, h.join().unwrap());
        mine
    });
    assert_eq!(got, want);
}
