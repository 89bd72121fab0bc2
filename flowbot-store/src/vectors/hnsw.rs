//! A hierarchical navigable small world graph (Malkov & Yashunin, 2016) over the vectors of
//! one collection's arena, in safe Rust.
//!
//! The graph holds no vectors: nodes are the arena's slots, and every distance is computed
//! from the arena's full-precision vectors, so the scores it finds are exact. A node's
//! level-0 links live in one flat array (`[count, ids…]` per node, as hnswlib lays them out),
//! its upper levels beside it. Links are atomics written under the node's own lock, so
//! insertions run on every core at once (`&self`) while the arena is only read; searches
//! during an insertion see a list either before or after a change, never anything unsafe.
//!
//! Nodes are never re-linked: the index gives an updated point a new slot and leaves the old
//! one in the graph as a tombstone that searches route through but never return; the index
//! rebuilds the graph when tombstones outnumber the points.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{
    AtomicU32, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Mutex, MutexGuard, PoisonError};

use pulp::{Arch, Simd, WithSimd};

/// How two vectors are compared: smaller is closer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// `-a·b` (cosine on unit vectors, and dot product).
    InnerProduct,
    /// `|a - b|²`.
    SquaredEuclid,
}

impl Metric {
    #[inline(always)]
    fn distance<S: Simd>(self, simd: S, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::InnerProduct => -dot(simd, a, b),
            Metric::SquaredEuclid => squared_euclid(simd, a, b),
        }
    }
}

/// `a·b` in the widest vector registers the machine has (pulp picks them at run time), four
/// independent sums so the multiply-adds overlap.
#[inline(always)]
fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    sum_of_products::<S, false>(simd, a, b)
}

/// `|a - b|²`, as [`dot`].
#[inline(always)]
fn squared_euclid<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    sum_of_products::<S, true>(simd, a, b)
}

/// `Σ aᵢbᵢ`, or with `DIFFERENCES` `Σ (aᵢ - bᵢ)²`.
#[inline(always)]
fn sum_of_products<S: Simd, const DIFFERENCES: bool>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ah, at) = S::as_simd_f32s(&a[..n]);
    let (bh, bt) = S::as_simd_f32s(&b[..n]);
    let step = step::<S, DIFFERENCES>;
    let mut acc = [simd.splat_f32s(0.0); 4];
    let mut ac = ah.chunks_exact(4);
    let mut bc = bh.chunks_exact(4);
    for (x, y) in (&mut ac).zip(&mut bc) {
        acc[0] = step(simd, x[0], y[0], acc[0]);
        acc[1] = step(simd, x[1], y[1], acc[1]);
        acc[2] = step(simd, x[2], y[2], acc[2]);
        acc[3] = step(simd, x[3], y[3], acc[3]);
    }
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        acc[0] = step(simd, *x, *y, acc[0]);
    }
    let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    let mut total = simd.reduce_sum_f32s(sum);
    for (x, y) in at.iter().zip(bt) {
        total += if DIFFERENCES {
            (x - y) * (x - y)
        } else {
            x * y
        };
    }
    total
}

/// One lane group's step of [`sum_of_products`] (a function, not a closure: it must be
/// inlined into the caller compiled for `S`'s instructions).
#[inline(always)]
fn step<S: Simd, const DIFFERENCES: bool>(
    simd: S,
    x: S::f32s,
    y: S::f32s,
    acc: S::f32s,
) -> S::f32s {
    if DIFFERENCES {
        let d = simd.sub_f32s(x, y);
        simd.mul_add_e_f32s(d, d, acc)
    } else {
        simd.mul_add_e_f32s(x, y, acc)
    }
}

/// The vectors the graph links: the arena, `dim` floats a slot.
#[derive(Clone, Copy)]
pub(crate) struct Vectors<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) dim: usize,
}

impl Vectors<'_> {
    #[inline(always)]
    fn get(&self, node: u32) -> &[f32] {
        let start = node as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    /// Read the first float of each of a vector's first cache lines, so the memory system
    /// fetches them ahead of their use.
    #[inline(always)]
    fn touch(&self, node: u32) {
        let start = node as usize * self.dim;
        let end = (start + self.dim).min(self.data.len());
        for i in (start..end).step_by(16).take(4) {
            std::hint::black_box(self.data[i]);
        }
    }
}

/// A node at a distance, ordered by distance (then node, for a total order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Near(pub(crate) f32, pub(crate) u32);

impl Eq for Near {}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Marks of the nodes a search has seen: a generation number per node, so clearing is one
/// increment. One per thread, kept between searches.
struct Visited {
    marks: Vec<u32>,
    generation: u32,
}

impl Visited {
    fn start(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.generation = 1;
        }
    }

    /// Mark `node`; false when it was marked already.
    #[inline(always)]
    fn insert(&mut self, node: u32) -> bool {
        let mark = &mut self.marks[node as usize];
        if *mark == self.generation {
            false
        } else {
            *mark = self.generation;
            true
        }
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const {
        RefCell::new(Visited { marks: Vec::new(), generation: 0 })
    };
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    node: u32,
    level: usize,
}

/// The graph's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Links per node on the upper levels (M); level 0 keeps twice as many.
    pub(crate) m: usize,
    /// Candidates kept while inserting (efConstruction).
    pub(crate) ef_construction: usize,
    pub(crate) metric: Metric,
}

/// The highest level a node can get: far above what any collection reaches (a level holds
/// about 1/M of the one below).
const MAX_LEVEL: usize = 15;

pub(crate) struct Graph {
    params: Params,
    /// Level-0 links: node `i`'s list at `i * (2M + 1)`, its length first.
    links0: Vec<AtomicU32>,
    /// Levels 1 and up of each node: `level × (M + 1)` words, each list its length first.
    upper: Vec<Box<[AtomicU32]>>,
    levels: Vec<u8>,
    /// Whether a node has been linked (nodes are placed before they are linked).
    linked: Vec<bool>,
    locks: Vec<Mutex<()>>,
    entry: Mutex<Option<Entry>>,
    rng: fastrand::Rng,
    /// Nodes linked so far.
    count: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are link lists of atomics: a panic cannot leave them half-written
    // in a way later readers would trip on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Graph {
    pub(crate) fn new(params: Params) -> Self {
        Graph {
            params,
            links0: Vec::new(),
            upper: Vec::new(),
            levels: Vec::new(),
            linked: Vec::new(),
            locks: Vec::new(),
            entry: Mutex::new(None),
            rng: fastrand::Rng::with_seed(0x5eed_f10b),
            count: 0,
        }
    }

    fn m0(&self) -> usize {
        self.params.m * 2
    }

    /// Nodes linked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Bytes held by the links, levels and locks.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.links0.capacity() * 4
            + self
                .upper
                .iter()
                .map(|u| u.len() * 4 + std::mem::size_of::<Box<[AtomicU32]>>())
                .sum::<usize>()
            + self.levels.capacity()
            + self.linked.capacity()
            + self.locks.capacity() * std::mem::size_of::<Mutex<()>>()
    }

    /// A random level: geometric, 1/M of the nodes a level up.
    fn random_level(&mut self) -> usize {
        let mult = 1.0 / (self.params.m as f64).ln();
        let u = 1.0 - self.rng.f64(); // (0, 1]
        ((-u.ln() * mult) as usize).min(MAX_LEVEL)
    }

    /// Link `nodes` (slots of `vectors` not linked yet), on `threads` threads.
    pub(crate) fn insert(&mut self, vectors: Vectors<'_>, nodes: &[u32], threads: usize) {
        let size = vectors.data.len() / vectors.dim.max(1);
        if self.levels.len() < size {
            let m0 = self.m0();
            self.links0
                .resize_with(size * (m0 + 1), || AtomicU32::new(0));
            self.upper.resize_with(size, || Box::new([]));
            self.levels.resize(size, 0);
            self.linked.resize(size, false);
            self.locks.resize_with(size, || Mutex::new(()));
        }
        let mut todo = Vec::with_capacity(nodes.len());
        for &node in nodes {
            let i = node as usize;
            if self.linked[i] {
                continue;
            }
            let level = self.random_level();
            self.levels[i] = level as u8;
            self.upper[i] = (0..level * (self.params.m + 1))
                .map(|_| AtomicU32::new(0))
                .collect();
            self.linked[i] = true;
            todo.push(node);
        }
        self.count += todo.len();
        let mut rest = &todo[..];
        // The first node of an empty graph is its entry: linked alone.
        if lock(&self.entry).is_none() {
            let Some((&first, tail)) = rest.split_first() else {
                return;
            };
            *lock(&self.entry) = Some(Entry {
                node: first,
                level: self.levels[first as usize] as usize,
            });
            rest = tail;
        }
        let next = AtomicUsize::new(0);
        let work = || {
            VISITED.with_borrow_mut(|visited| {
                Arch::new().dispatch(Linker {
                    graph: self,
                    vectors,
                    nodes: rest,
                    next: &next,
                    visited,
                })
            })
        };
        let threads = threads.clamp(1, rest.len().max(1));
        if threads == 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 1..threads {
                    scope.spawn(work);
                }
                work();
            });
        }
    }

    /// The neighbour list of `node` at `level`: its words in the flat arrays.
    #[inline(always)]
    fn list(&self, node: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let m0 = self.m0();
            let start = node as usize * (m0 + 1);
            &self.links0[start..start + m0 + 1]
        } else {
            let m = self.params.m;
            let start = (level - 1) * (m + 1);
            &self.upper[node as usize][start..start + m + 1]
        }
    }

    /// Copy out a neighbour list (its length is clamped, and read with acquire ordering, so a
    /// list read while it is being written holds valid nodes of the level, old or new).
    #[inline(always)]
    fn neighbours(&self, node: u32, level: usize, out: &mut Vec<u32>) {
        let list = self.list(node, level);
        let n = (list[0].load(Acquire) as usize).min(list.len() - 1);
        out.clear();
        out.extend(list[1..=n].iter().map(|a| a.load(Relaxed)));
    }

    fn set_neighbours(&self, node: u32, level: usize, ids: impl ExactSizeIterator<Item = u32>) {
        let list = self.list(node, level);
        let n = ids.len().min(list.len() - 1);
        for (slot, id) in list[1..].iter().zip(ids) {
            slot.store(id, Relaxed);
        }
        // Released after the ids: a reader that sees the new length sees them too.
        list[0].store(n as u32, Release);
    }

    /// Greedy descent at one level: the closest node to `q` reachable from `start`.
    #[inline(always)]
    fn closest<S: Simd>(
        &self,
        simd: S,
        vectors: Vectors<'_>,
        q: &[f32],
        start: Near,
        level: usize,
    ) -> Near {
        let metric = self.params.metric;
        let mut best = start;
        let mut buf = Vec::with_capacity(self.params.m + 1);
        loop {
            let mut moved = false;
            self.neighbours(best.1, level, &mut buf);
            for &n in &buf {
                let d = metric.distance(simd, q, vectors.get(n));
                if d < best.0 {
                    best = Near(d, n);
                    moved = true;
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// The `ef` nearest nodes to `q` found at `level` from `start`, nearest first; only nodes
    /// `accept` takes (every node without one) are returned, every node is routed through.
    #[inline(always)]
    fn search_level<S: Simd>(
        &self,
        simd: S,
        vectors: Vectors<'_>,
        q: &[f32],
        (start, ef, level): (Near, usize, usize),
        accept: Option<&dyn Fn(u32) -> bool>,
        visited: &mut Visited,
    ) -> Vec<Near> {
        let accept = |n: u32| accept.is_none_or(|f| f(n));
        visited.start(self.levels.len());
        let metric = self.params.metric;
        let mut candidates = BinaryHeap::with_capacity(ef * 2);
        let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
        visited.insert(start.1);
        candidates.push(Reverse(start));
        if accept(start.1) {
            found.push(start);
        }
        let mut bound = if found.len() >= ef {
            start.0
        } else {
            f32::INFINITY
        };
        let mut buf = Vec::with_capacity(self.m0() + 1);
        while let Some(Reverse(current)) = candidates.pop() {
            if current.0 > bound {
                break;
            }
            self.neighbours(current.1, level, &mut buf);
            buf.retain(|&n| visited.insert(n));
            for (j, &n) in buf.iter().enumerate() {
                // Start loading the next new neighbour's vector while this one is measured
                // (hnswlib prefetches it; a plain load does the same from safe code).
                if let Some(&next) = buf.get(j + 1) {
                    vectors.touch(next);
                }
                let d = metric.distance(simd, q, vectors.get(n));
                if found.len() < ef || d < bound {
                    candidates.push(Reverse(Near(d, n)));
                    if accept(n) {
                        found.push(Near(d, n));
                        if found.len() > ef {
                            found.pop();
                        }
                        if found.len() >= ef {
                            bound = found.peek().map_or(f32::INFINITY, |w| w.0);
                        }
                    }
                }
            }
        }
        found.into_sorted_vec()
    }

    /// Keep at most `m` of `candidates` (nearest first to the node they are chosen for): a
    /// candidate closer to one already kept than to the node is left out (the paper's
    /// heuristic), so the links spread in every direction.
    #[inline(always)]
    fn select<S: Simd>(
        &self,
        simd: S,
        vectors: Vectors<'_>,
        candidates: &[Near],
        m: usize,
    ) -> Vec<Near> {
        if candidates.len() <= m {
            return candidates.to_vec();
        }
        let metric = self.params.metric;
        let mut kept: Vec<Near> = Vec::with_capacity(m);
        for &c in candidates {
            if kept.len() >= m {
                break;
            }
            let v = vectors.get(c.1);
            if kept
                .iter()
                .all(|k| metric.distance(simd, v, vectors.get(k.1)) > c.0)
            {
                kept.push(c);
            }
        }
        kept
    }

    /// Link one node (placed by `insert`) into every level it has.
    #[inline(always)]
    fn link<S: Simd>(&self, simd: S, vectors: Vectors<'_>, node: u32, visited: &mut Visited) {
        let metric = self.params.metric;
        let level = self.levels[node as usize] as usize;
        let mut entry_guard = Some(lock(&self.entry));
        let Some(entry) = entry_guard.as_ref().and_then(|e| **e) else {
            return;
        };
        // A node above the entry's level becomes the entry: others wait until it is linked.
        if level <= entry.level {
            entry_guard = None;
        }
        let q = vectors.get(node);
        let mut ep = Near(
            metric.distance(simd, q, vectors.get(entry.node)),
            entry.node,
        );
        for l in (level + 1..=entry.level).rev() {
            ep = self.closest(simd, vectors, q, ep, l);
        }
        for l in (0..=level.min(entry.level)).rev() {
            let found = self.search_level(
                simd,
                vectors,
                q,
                (ep, self.params.ef_construction, l),
                Some(&|n| n != node),
                visited,
            );
            let max = if l == 0 { self.m0() } else { self.params.m };
            let chosen = self.select(simd, vectors, &found, self.params.m);
            {
                let _own = lock(&self.locks[node as usize]);
                self.set_neighbours(node, l, chosen.iter().map(|c| c.1));
            }
            for c in &chosen {
                self.add_link(simd, vectors, (c.1, node, c.0), l, max);
            }
            if let Some(&nearest) = found.first() {
                ep = nearest;
            }
        }
        if let Some(mut guard) = entry_guard {
            *guard = Some(Entry { node, level });
        }
    }

    /// Add `node` (at distance `d`) to `to`'s list at `level`, pruning it to `max`.
    #[inline(always)]
    fn add_link<S: Simd>(
        &self,
        simd: S,
        vectors: Vectors<'_>,
        (to, node, d): (u32, u32, f32),
        level: usize,
        max: usize,
    ) {
        let metric = self.params.metric;
        let _guard = lock(&self.locks[to as usize]);
        let mut ids = Vec::with_capacity(max + 1);
        self.neighbours(to, level, &mut ids);
        if ids.contains(&node) {
            return;
        }
        if ids.len() < max {
            ids.push(node);
            self.set_neighbours(to, level, ids.into_iter());
            return;
        }
        let base = vectors.get(to);
        let mut all: Vec<Near> = ids
            .iter()
            .map(|&n| Near(metric.distance(simd, base, vectors.get(n)), n))
            .collect();
        all.push(Near(d, node));
        all.sort_unstable();
        let kept = self.select(simd, vectors, &all, max);
        self.set_neighbours(to, level, kept.iter().map(|k| k.1));
    }

    /// The `k` nodes nearest to `q` that `accept` takes (every node without one), nearest
    /// first, keeping `ef` candidates (at least `k`).
    pub(crate) fn search(
        &self,
        vectors: Vectors<'_>,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Near> {
        let Some(entry) = *lock(&self.entry) else {
            return Vec::new();
        };
        VISITED.with_borrow_mut(|visited| {
            Arch::new().dispatch(Searcher {
                graph: self,
                vectors,
                q,
                entry,
                k,
                ef,
                accept,
                visited,
            })
        })
    }
}

/// One thread's share of an insertion, in the machine's vector instructions.
struct Linker<'a> {
    graph: &'a Graph,
    vectors: Vectors<'a>,
    nodes: &'a [u32],
    next: &'a AtomicUsize,
    visited: &'a mut Visited,
}

impl WithSimd for Linker<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // Everything called from here is inlined (`#[inline(always)]`), so it is compiled
        // for the instructions `simd` stands for; a closure in between would not be.
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            let Some(&node) = self.nodes.get(i) else {
                break;
            };
            self.graph.link(simd, self.vectors, node, self.visited);
        }
    }
}

/// A search, in the machine's vector instructions.
struct Searcher<'a> {
    graph: &'a Graph,
    vectors: Vectors<'a>,
    q: &'a [f32],
    entry: Entry,
    k: usize,
    ef: usize,
    accept: Option<&'a dyn Fn(u32) -> bool>,
    visited: &'a mut Visited,
}

impl WithSimd for Searcher<'_> {
    type Output = Vec<Near>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<Near> {
        let Searcher {
            graph,
            vectors,
            q,
            entry,
            k,
            ef,
            accept,
            visited,
        } = self;
        let metric = graph.params.metric;
        let mut ep = Near(
            metric.distance(simd, q, vectors.get(entry.node)),
            entry.node,
        );
        for l in (1..=entry.level).rev() {
            ep = graph.closest(simd, vectors, q, ep, l);
        }
        let mut found = graph.search_level(simd, vectors, q, (ep, ef.max(k), 0), accept, visited);
        found.truncate(k);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n * d).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    fn exact(v: Vectors<'_>, metric: Metric, q: &[f32], k: usize) -> Vec<u32> {
        let n = v.data.len() / v.dim;
        let mut all: Vec<Near> = (0..n as u32)
            .map(|i| Near(metric.distance(pulp::Scalar, q, v.get(i)), i))
            .collect();
        all.sort();
        all.into_iter().take(k).map(|n| n.1).collect()
    }

    /// The kernels in the widest registers the machine has.
    struct Kernels<'a>(&'a [f32], &'a [f32], f32, f32);

    impl WithSimd for Kernels<'_> {
        type Output = ();

        fn with_simd<S: Simd>(self, simd: S) {
            let Kernels(a, b, plain, squares) = self;
            assert!((dot(simd, a, b) - plain).abs() < 1e-4, "{}", a.len());
            assert!((squared_euclid(simd, a, b) - squares).abs() < 1e-4);
        }
    }

    #[test]
    fn the_kernels_equal_the_plain_sums() {
        for len in [0, 1, 15, 16, 17, 384, 390] {
            let a = random(1, len, 1);
            let b = random(1, len, 2);
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let squares: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            Kernels(&a, &b, plain, squares).with_simd(pulp::Scalar);
            Arch::new().dispatch(Kernels(&a, &b, plain, squares));
        }
    }

    #[test]
    fn a_graph_built_on_two_threads_finds_the_nearest() {
        for metric in [Metric::InnerProduct, Metric::SquaredEuclid] {
            let (n, d) = (3_000, 16);
            let data = random(n, d, 3);
            let v = Vectors {
                data: &data,
                dim: d,
            };
            let mut g = Graph::new(Params {
                m: 16,
                ef_construction: 100,
                metric,
            });
            let nodes: Vec<u32> = (0..n as u32).collect();
            // In two batches, the second into a graph that already has nodes.
            g.insert(v, &nodes[..1_000], 2);
            g.insert(v, &nodes[1_000..], 2);
            assert_eq!(g.len(), n);
            let (mut hit, mut total) = (0, 0);
            for q in random(50, d, 9).chunks(d) {
                let want = exact(v, metric, q, 10);
                let got = g.search(v, q, 10, 64, None);
                assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "nearest first");
                total += want.len();
                hit += got.iter().filter(|g| want.contains(&g.1)).count();
            }
            assert!(
                hit as f64 / total as f64 >= 0.95,
                "{metric:?}: recall {hit}/{total}"
            );
        }
    }

    #[test]
    fn searches_route_through_nodes_they_do_not_return() {
        let (n, d) = (2_000, 8);
        let data = random(n, d, 5);
        let v = Vectors {
            data: &data,
            dim: d,
        };
        let mut g = Graph::new(Params {
            m: 8,
            ef_construction: 64,
            metric: Metric::SquaredEuclid,
        });
        let nodes: Vec<u32> = (0..n as u32).collect();
        g.insert(v, &nodes, 1);
        let q = v.get(7).to_vec();
        let got = g.search(v, &q, 5, 32, Some(&|node| node % 2 == 1));
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|n| n.1 % 2 == 1));
        let want: Vec<u32> = exact(v, Metric::SquaredEuclid, &q, 40)
            .into_iter()
            .filter(|n| n % 2 == 1)
            .take(5)
            .collect();
        let found = got.iter().filter(|g| want.contains(&g.1)).count();
        assert!(found >= 4, "{found} of {want:?}");
        // Linking a node twice is a no-op; an empty graph finds nothing.
        g.insert(v, &nodes[..10], 2);
        assert_eq!(g.len(), n);
        let empty = Graph::new(Params {
            m: 8,
            ef_construction: 8,
            metric: Metric::InnerProduct,
        });
        assert!(empty.search(v, &q, 5, 32, None).is_empty());
    }
}
