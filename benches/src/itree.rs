//! The interval tree alone ([`notifier_core::itree`], C-23): its depth and the cost of
//! its operations for `n` intervals inserted in increasing order of start, the order
//! that makes an unbalanced search tree a list.
//!
//! Interval `i` covers `[2 i, 2 i]`, so a point query meets at most one of them.

use std::ops::ControlFlow;
use std::ptr::NonNull;

use notifier_core::itree::{Links, Node, Tree};

/// A bare tree node: links and an interval.
pub struct BenchNode {
    links: Links<BenchNode>,
    start: usize,
    last: usize,
}

// SAFETY: `links` is always the same embedded field; `start` and `last` never change.
unsafe impl Node for BenchNode {
    fn links(&self) -> &Links<Self> {
        &self.links
    }
    fn start(&self) -> usize {
        self.start
    }
    fn last(&self) -> usize {
        self.last
    }
}

/// `n` nodes in a tree, inserted in increasing order of start.
pub struct TreeOf {
    // Declared before `nodes`; `Drop` empties it first.
    tree: Tree<BenchNode>,
    nodes: Box<[BenchNode]>,
}

impl TreeOf {
    /// Build it.
    pub fn new(n: usize) -> Self {
        let nodes: Box<[BenchNode]> = (0..n)
            .map(|i| BenchNode {
                links: Links::new(),
                start: 2 * i,
                last: 2 * i,
            })
            .collect();
        let mut t = TreeOf {
            tree: Tree::new(),
            nodes,
        };
        for i in 0..n {
            // SAFETY: each node once; the boxed slice does not move and outlives the
            // tree's use of it (`Drop` removes every node first).
            unsafe { t.tree.insert(t.node(i)) };
        }
        t
    }

    fn node(&self, i: usize) -> NonNull<BenchNode> {
        NonNull::from(&self.nodes[i])
    }

    /// The tree's depth (nodes on its longest root-to-leaf path).
    pub fn depth(&self) -> usize {
        self.tree.depth()
    }

    /// Remove node `i` and insert it again.
    pub fn remove_insert(&mut self, i: usize) {
        // SAFETY: node `i` is in the tree (every node is, between calls), then not.
        unsafe {
            self.tree.remove(self.node(i));
            self.tree.insert(self.node(i));
        }
    }

    /// Walk the intervals meeting the point `2 i`; returns how many (one).
    pub fn walk_point(&self, i: usize) -> usize {
        let mut k = 0;
        let _ = self.tree.walk(2 * i, 2 * i, |_| {
            k += 1;
            ControlFlow::Continue(())
        });
        k
    }
}

impl Drop for TreeOf {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // SAFETY: every node is in the tree.
            unsafe { self.tree.remove(self.node(i)) };
        }
    }
}
