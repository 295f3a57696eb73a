//! A bound on the memory that directory indexes take.
//!
//! An index lives in its directory's node, and the kernel may hold the nodes of every directory
//! of a huge tree long after anyone listed them. Indexes can always be built again from the
//! layers, so once their names add up to more than the budget, the least recently used ones
//! are dropped (the CLOCK algorithm: an index used since the last pass gets a second chance).
//! An index in use is never dropped: not one a lookup touched since the last pass, not one
//! whose directory is being listed (a rebuilt index gives every name the same position, but a
//! displaced name, one whose position was taken when it arrived, might land elsewhere).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::node::Node;

/// Indexes in build order, with what each was charged.
pub(crate) struct IndexCache {
    budget: usize,
    used: AtomicUsize,
    next_gen: AtomicU64,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Charged>,
    /// Queue length at which entries of forgotten nodes are swept out: a forgotten node's
    /// index is freed with it, but its entry here would stay until popped.
    sweep_at: usize,
}

struct Charged {
    node: Weak<Node>,
    generation: u64,
    names: usize,
}

/// What the cache asks of a directory when it considers dropping its index.
pub(crate) enum Verdict {
    /// The index is gone already (the node was forgotten, or the index rebuilt).
    Gone,
    /// Used since the last pass, or its directory is being listed: keep it for now.
    Keep,
    /// Dropped.
    Dropped,
}

impl IndexCache {
    /// A cache for indexes of `budget` names in total.
    pub fn new(budget: usize) -> IndexCache {
        IndexCache {
            budget,
            used: AtomicUsize::new(0),
            next_gen: AtomicU64::new(1),
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                sweep_at: 1024,
            }),
        }
    }

    /// Registers a new index of `names` names in `node`; returns its generation (which the
    /// index keeps, so a later rebuild is told apart).
    pub fn charge(&self, node: &Arc<Node>, names: usize) -> u64 {
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed);
        self.used.fetch_add(names, Ordering::Relaxed);
        let mut q = self.queue.lock();
        q.entries.push_back(Charged {
            node: Arc::downgrade(node),
            generation,
            names,
        });
        if q.entries.len() >= q.sweep_at {
            let mut freed = 0;
            q.entries.retain(|c| {
                let live = c.node.strong_count() > 0;
                if !live {
                    freed += c.names;
                }
                live
            });
            self.used.fetch_sub(freed, Ordering::Relaxed);
            q.sweep_at = (2 * q.entries.len()).max(1024);
        }
        generation
    }

    /// Names charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// While over budget, offers the oldest indexes to `consider` (called without any lock of
    /// the cache held) until enough are dropped or every one left was asked once.
    pub fn trim(&self, consider: impl Fn(&Arc<Node>, u64) -> Verdict) {
        let mut budget_of_pass = self.queue.lock().entries.len();
        while self.used() > self.budget && budget_of_pass > 0 {
            budget_of_pass -= 1;
            let Some(c) = self.queue.lock().entries.pop_front() else {
                return;
            };
            let verdict = match c.node.upgrade() {
                Some(n) => consider(&n, c.generation),
                None => Verdict::Gone,
            };
            match verdict {
                Verdict::Gone | Verdict::Dropped => {
                    self.used.fetch_sub(c.names, Ordering::Relaxed);
                }
                Verdict::Keep => self.queue.lock().entries.push_back(c),
            }
        }
    }
}
