//! One collection's vectors in memory: an arena of vectors (normalised for cosine), their ids
//! and payloads, searched exactly below [`IndexOptions::exact_below`] live points and through
//! an HNSW graph above it ([`super::hnsw`]). The graph links the arena's slots and measures
//! with the arena's vectors, so its scores are exact.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use flowbot_core::VectorError;
use flowbot_core::vector::{CollectionSpec, Distance, Filter, Hit, Point, VectorQuery, dot};
use serde_json::{Map, Value};

use super::hnsw::{Graph, Metric, Params, Vectors};

/// How the embedded index searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexOptions {
    /// Below this many points a collection is searched exactly (every vector compared);
    /// from it on through the HNSW graph. Filtered searches whose filter keeps fewer points
    /// than this are exact too.
    pub exact_below: usize,
    /// Links per node of the graph's upper levels (HNSW's M); its base level keeps twice
    /// as many.
    pub connectivity: usize,
    /// Candidates kept while inserting (HNSW's efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (HNSW's ef, at least the hits asked for): more is
    /// slower and finds more of the true nearest neighbours.
    pub expansion_search: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            exact_below: 10_000,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
        }
    }
}

impl IndexOptions {
    /// Check the ranges; the error names the option.
    pub fn check(&self) -> Result<(), VectorError> {
        let checks = [
            ("connectivity", self.connectivity, 2, 256),
            ("expansion_add", self.expansion_add, 1, 10_000),
            ("expansion_search", self.expansion_search, 1, 10_000),
        ];
        for (name, value, low, high) in checks {
            if !(low..=high).contains(&value) {
                return Err(VectorError::Invalid(format!(
                    "{name} = {value}: must be from {low} to {high}"
                )));
            }
        }
        Ok(())
    }
}

struct Slot {
    id: String,
    payload: Map<String, Value>,
}

/// A collection's points in memory.
pub(crate) struct Index {
    pub(crate) spec: CollectionSpec,
    pub(crate) generation: String,
    /// The last write of the collection this index has applied.
    pub(crate) seq: i64,
    options: IndexOptions,
    slots: Vec<Option<Slot>>,
    vectors: Vec<f32>,
    by_id: HashMap<String, u32>,
    /// Empty slots to fill again (only while there is no graph).
    free: Vec<u32>,
    /// The slots the graph still links whose points were removed or moved
    /// (`tombstones[slot]`): routed through, never returned, gone when the graph is rebuilt.
    tombstones: Vec<bool>,
    /// How many tombstones there are.
    dead: usize,
    live: usize,
    graph: Option<Graph>,
}

/// The threads that add to the graph: the machine's cores.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A candidate in a top-k heap: ordered so the heap's top is the worst kept.
#[derive(PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher score is better; the max-heap's top must be the worst: reverse.
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

impl Index {
    pub(crate) fn new(
        spec: CollectionSpec,
        generation: String,
        seq: i64,
        options: IndexOptions,
    ) -> Self {
        Index {
            spec,
            generation,
            seq,
            options,
            slots: Vec::new(),
            vectors: Vec::new(),
            by_id: HashMap::new(),
            free: Vec::new(),
            tombstones: Vec::new(),
            dead: 0,
            live: 0,
            graph: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    fn dim(&self) -> usize {
        self.spec.dimension
    }

    fn vector(&self, slot: u32) -> &[f32] {
        let d = self.dim();
        let start = slot as usize * d;
        &self.vectors[start..start + d]
    }

    /// The stored form of a vector: unit length for cosine.
    fn prepare(&self, vector: &[f32]) -> Vec<f32> {
        let mut v = vector.to_vec();
        if self.spec.distance == Distance::Cosine {
            let norm = dot(&v, &v).sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        v
    }

    fn score(&self, query: &[f32], slot: u32) -> f32 {
        match self.spec.distance {
            // Both are unit length (or zero) already.
            Distance::Cosine | Distance::Dot => dot(query, self.vector(slot)),
            Distance::Euclid => Distance::Euclid.score(query, self.vector(slot)),
        }
    }

    /// Insert or replace a point (checked by the caller).
    #[cfg(test)]
    pub(crate) fn upsert(&mut self, point: Point) -> Result<(), VectorError> {
        self.upsert_many(vec![point])
    }

    /// Insert or replace points (checked by the caller): into the arena one by one, then
    /// into the graph on every core (or the graph is built, once there are enough).
    pub(crate) fn upsert_many(&mut self, points: Vec<Point>) -> Result<(), VectorError> {
        let mut added = Vec::with_capacity(points.len());
        for point in points {
            added.push(self.place(point)?);
        }
        if self.crowded() {
            // Rebuilt over every live point, the new ones included.
            self.tidy();
            return Ok(());
        }
        let vectors = Vectors {
            data: &self.vectors,
            dim: self.spec.dimension,
        };
        match &mut self.graph {
            Some(graph) => graph.insert(vectors, &added, threads()),
            None if self.live >= self.options.exact_below.max(1) => self.build(),
            None => {}
        }
        Ok(())
    }

    /// Put a point in the arena; returns its slot. With a graph, a point that moves takes a
    /// new slot and leaves its old one to the graph as a tombstone.
    fn place(&mut self, point: Point) -> Result<u32, VectorError> {
        let v = self.prepare(&point.vector);
        let old = self.by_id.get(&point.id).copied();
        let slot = match old {
            Some(slot) if self.graph.is_none() => slot,
            _ => {
                if let Some(old) = old {
                    self.slots[old as usize] = None;
                    self.bury(old);
                    self.live -= 1;
                }
                let reuse = if self.graph.is_none() {
                    self.free.pop()
                } else {
                    None
                };
                let slot = match reuse {
                    Some(slot) => slot,
                    None => {
                        let slot = u32::try_from(self.slots.len()).map_err(|_| {
                            VectorError::Invalid(format!(
                                "collection {:?} is full ({} points)",
                                self.spec.name,
                                u32::MAX
                            ))
                        })?;
                        self.slots.push(None);
                        self.vectors.resize(self.vectors.len() + self.dim(), 0.0);
                        slot
                    }
                };
                self.live += 1;
                slot
            }
        };
        let d = self.dim();
        let start = slot as usize * d;
        self.vectors[start..start + d].copy_from_slice(&v);
        self.by_id.insert(point.id.clone(), slot);
        self.slots[slot as usize] = Some(Slot {
            id: point.id,
            payload: point.payload,
        });
        Ok(slot)
    }

    /// Remove a point; returns whether it was there.
    pub(crate) fn remove(&mut self, id: &str) -> Result<bool, VectorError> {
        let Some(slot) = self.by_id.remove(id) else {
            return Ok(false);
        };
        self.slots[slot as usize] = None;
        if self.graph.is_some() {
            self.bury(slot);
        } else {
            self.free.push(slot);
        }
        self.live -= 1;
        self.tidy();
        Ok(true)
    }

    /// Leave an emptied slot in the graph as a tombstone.
    fn bury(&mut self, slot: u32) {
        self.dead += 1;
        if self.tombstones.len() <= slot as usize {
            self.tombstones.resize(slot as usize + 1, false);
        }
        self.tombstones[slot as usize] = true;
    }

    /// Whether the graph's tombstones outnumber its points (and are many): time to rebuild.
    fn crowded(&self) -> bool {
        self.graph.is_some() && self.dead > self.live.max(1_000)
    }

    /// Keep the graph worth its memory: far below the threshold it goes (its tombstones'
    /// slots are free again); when tombstones outnumber the points, the arena is compacted
    /// and the graph built again.
    fn tidy(&mut self) {
        if self.graph.is_none() {
            return;
        }
        if self.live < self.options.exact_below / 2 {
            self.graph = None;
            let buried = std::mem::take(&mut self.tombstones);
            self.free
                .extend((0..buried.len() as u32).filter(|&s| buried[s as usize]));
            self.dead = 0;
        } else if self.crowded() {
            self.compact();
            self.build();
        }
    }

    /// Drop the empty slots: the live points move to the front, in order.
    fn compact(&mut self) {
        let d = self.dim();
        let mut vectors = Vec::with_capacity(self.live * d);
        let mut slots = Vec::with_capacity(self.live);
        self.by_id.clear();
        for (i, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if let Some(s) = slot {
                vectors.extend_from_slice(&self.vectors[i * d..(i + 1) * d]);
                self.by_id.insert(s.id.clone(), slots.len() as u32);
                slots.push(Some(s));
            }
        }
        self.vectors = vectors;
        self.slots = slots;
        self.free.clear();
        self.dead = 0;
        self.tombstones.clear();
        self.graph = None;
    }

    /// Build the graph over every live point, on as many threads as the machine has.
    fn build(&mut self) {
        let metric = match self.spec.distance {
            Distance::Cosine | Distance::Dot => Metric::InnerProduct,
            Distance::Euclid => Metric::SquaredEuclid,
        };
        let mut graph = Graph::new(Params {
            m: self.options.connectivity,
            ef_construction: self.options.expansion_add,
            metric,
        });
        let live: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| i as u32))
            .collect();
        let vectors = Vectors {
            data: &self.vectors,
            dim: self.spec.dimension,
        };
        graph.insert(vectors, &live, threads());
        self.free.clear();
        self.dead = 0;
        self.tombstones.clear();
        self.graph = Some(graph);
    }

    fn hit(&self, Scored(score, slot): Scored) -> Option<Hit> {
        let s = self.slots[slot as usize].as_ref()?;
        Some(Hit {
            id: s.id.clone(),
            score,
            payload: s.payload.clone(),
        })
    }

    fn passes(&self, filter: &Filter, slot: u32) -> bool {
        self.slots[slot as usize]
            .as_ref()
            .is_some_and(|s| filter.is_empty() || filter.test(&s.payload))
    }

    /// Keep the best `limit` of `candidates`, best first.
    fn top(
        &self,
        query: &[f32],
        limit: usize,
        candidates: impl Iterator<Item = u32>,
    ) -> Vec<Scored> {
        let mut heap = BinaryHeap::with_capacity(limit + 1);
        for slot in candidates {
            let score = self.score(query, slot);
            if heap.len() < limit {
                heap.push(Scored(score, slot));
            } else if heap.peek().is_some_and(|worst| score > worst.0) {
                heap.pop();
                heap.push(Scored(score, slot));
            }
        }
        let mut best = heap.into_vec();
        best.sort();
        best
    }

    /// The nearest points (the query is checked by the caller).
    pub(crate) fn search(&self, query: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        let q = self.prepare(&query.vector);
        let limit = query.limit;
        let exact_below = self.options.exact_below;
        let best = match &self.graph {
            None => self.top(
                &q,
                limit,
                (0..self.slots.len() as u32).filter(|&s| self.passes(&query.filter, s)),
            ),
            Some(_) if !query.filter.is_empty() => {
                let kept: Vec<u32> = (0..self.slots.len() as u32)
                    .filter(|&s| self.passes(&query.filter, s))
                    .collect();
                if kept.len() < exact_below {
                    self.top(&q, limit, kept.into_iter())
                } else {
                    self.graph_search(&q, limit, &query.filter)
                }
            }
            Some(_) => self.graph_search(&q, limit, &query.filter),
        };
        Ok(best
            .into_iter()
            .filter(|s| query.threshold.is_none_or(|t| s.0 >= t))
            .filter_map(|s| self.hit(s))
            .collect())
    }

    /// The graph's nearest live points passing `filter`, scored as exact search scores them.
    fn graph_search(&self, q: &[f32], limit: usize, filter: &Filter) -> Vec<Scored> {
        let Some(graph) = &self.graph else {
            return Vec::new();
        };
        let vectors = Vectors {
            data: &self.vectors,
            dim: self.spec.dimension,
        };
        // Without tombstones or a filter every node is a hit: no slot need be looked at
        // (a slot is a cache miss of its own).
        let live = |slot: u32| !self.tombstones.get(slot as usize).copied().unwrap_or(false);
        let passes = |slot: u32| self.passes(filter, slot);
        let accept: Option<&dyn Fn(u32) -> bool> = if !filter.is_empty() {
            Some(&passes)
        } else if self.dead > 0 {
            Some(&live)
        } else {
            None
        };
        let found = graph.search(vectors, q, limit, self.options.expansion_search, accept);
        found
            .into_iter()
            .map(|n| {
                let score = match self.spec.distance {
                    Distance::Cosine | Distance::Dot => -n.0,
                    Distance::Euclid => -n.0.max(0.0).sqrt(),
                };
                Scored(score, n.1)
            })
            .collect()
    }

    pub(crate) fn count(&self, filter: &Filter) -> u64 {
        if filter.is_empty() {
            return self.live as u64;
        }
        self.slots
            .iter()
            .flatten()
            .filter(|s| filter.test(&s.payload))
            .count() as u64
    }

    /// The ids of the points passing `filter`.
    pub(crate) fn matching(&self, filter: &Filter) -> Vec<String> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| filter.test(&s.payload))
            .map(|s| s.id.clone())
            .collect()
    }

    pub(crate) fn payload(&self, id: &str) -> Option<&Map<String, Value>> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_ref().map(|s| &s.payload)
    }

    /// A point as stored (a cosine collection's vectors come back at unit length).
    pub(crate) fn get(&self, id: &str) -> Option<Point> {
        let slot = *self.by_id.get(id)?;
        let s = self.slots[slot as usize].as_ref()?;
        Some(Point {
            id: s.id.clone(),
            vector: self.vector(slot).to_vec(),
            payload: s.payload.clone(),
        })
    }

    /// Bytes held: the arena, the ids and payloads (estimated from their JSON length), the
    /// map of ids and the graph.
    pub(crate) fn memory_bytes(&self) -> usize {
        let arena = self.vectors.capacity() * 4;
        let slots: usize = self
            .slots
            .iter()
            .flatten()
            .map(|s| std::mem::size_of::<Slot>() + s.id.len() * 2 + payload_bytes(&s.payload))
            .sum();
        let maps = self.by_id.capacity() * 32;
        let graph = self.graph.as_ref().map_or(0, Graph::memory_bytes);
        arena + slots + maps + graph
    }
}

fn payload_bytes(payload: &Map<String, Value>) -> usize {
    payload
        .iter()
        .map(|(k, v)| {
            k.len()
                + 32
                + match v {
                    Value::String(s) => s.len(),
                    other => other.to_string().len(),
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(distance: Distance) -> CollectionSpec {
        CollectionSpec::new("t", 8, distance)
    }

    fn point(id: usize, v: Vec<f32>) -> Point {
        let mut payload = Map::new();
        payload.insert("parity".into(), Value::from((id % 2) as i64));
        Point {
            id: format!("p{id}"),
            vector: v,
            payload,
        }
    }

    fn random(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| (0..d).map(|_| rng.f32() * 2.0 - 1.0).collect())
            .collect()
    }

    /// The share of exact search's 10 nearest that `index` finds for `queries`.
    fn recall(exact: &Index, index: &Index, queries: Vec<Vec<f32>>) -> f64 {
        let (mut found, mut total) = (0, 0);
        for q in queries {
            let query = VectorQuery::new(q, 10);
            let want: Vec<String> = exact
                .search(&query)
                .expect("exact")
                .into_iter()
                .map(|h| h.id)
                .collect();
            let got = index.search(&query).expect("graph");
            assert_eq!(got.len(), want.len());
            total += want.len();
            found += got.iter().filter(|h| want.contains(&h.id)).count();
        }
        found as f64 / total as f64
    }

    #[test]
    fn the_graph_finds_what_exact_search_finds() {
        for distance in [Distance::Cosine, Distance::Dot, Distance::Euclid] {
            let options = IndexOptions {
                exact_below: 500,
                ..IndexOptions::default()
            };
            let mut exact = Index::new(
                spec(distance),
                "g".into(),
                0,
                IndexOptions {
                    exact_below: usize::MAX,
                    ..options
                },
            );
            let mut graph = Index::new(spec(distance), "g".into(), 0, options);
            for (i, v) in random(2_000, 8, 7).into_iter().enumerate() {
                exact.upsert(point(i, v.clone())).expect("upsert");
                graph.upsert(point(i, v)).expect("upsert");
            }
            assert!(graph.graph.is_some() && exact.graph.is_none());
            let recall = recall(&exact, &graph, random(50, 8, 11));
            assert!(recall >= 0.95, "{distance:?}: recall {recall}");
        }
    }

    #[test]
    fn updates_and_removals_reach_the_graph() {
        let options = IndexOptions {
            exact_below: 100,
            ..IndexOptions::default()
        };
        let mut index = Index::new(spec(Distance::Cosine), "g".into(), 0, options);
        for (i, v) in random(300, 8, 3).into_iter().enumerate() {
            index.upsert(point(i, v)).expect("upsert");
        }
        let target = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        index.upsert(point(5, target.clone())).expect("move p5");
        let hits = index
            .search(&VectorQuery::new(target.clone(), 1))
            .expect("search");
        assert_eq!(hits[0].id, "p5");
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert!(index.remove("p5").expect("remove"));
        assert!(!index.remove("p5").expect("again"));
        let hits = index.search(&VectorQuery::new(target, 3)).expect("search");
        assert!(hits.iter().all(|h| h.id != "p5"));
        assert_eq!(index.len(), 299);
        let mut odd = VectorQuery::new(vec![0.5; 8], 5);
        odd.filter = Filter::must(flowbot_core::vector::Condition::eq("parity", 1));
        let hits = index.search(&odd).expect("filtered");
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.payload["parity"] == 1));
        for i in 0..260 {
            index.remove(&format!("p{i}")).expect("remove");
        }
        assert!(
            index.graph.is_none(),
            "the graph goes when few points are left"
        );
        assert_eq!(index.count(&Filter::all()), 40);
    }

    #[test]
    fn moved_points_leave_tombstones_until_the_graph_is_rebuilt() {
        let options = IndexOptions {
            exact_below: 100,
            ..IndexOptions::default()
        };
        let mut index = Index::new(spec(Distance::Euclid), "g".into(), 0, options);
        let mut exact = Index::new(
            spec(Distance::Euclid),
            "g".into(),
            0,
            IndexOptions {
                exact_below: usize::MAX,
                ..options
            },
        );
        for round in 0..3u64 {
            let points: Vec<Point> = random(1_200, 8, 20 + round)
                .into_iter()
                .enumerate()
                .map(|(i, v)| point(i, v))
                .collect();
            index.upsert_many(points.clone()).expect("upsert");
            exact.upsert_many(points).expect("upsert");
            assert_eq!(index.len(), 1_200);
            // Each round moves every point: the old slots stay behind as tombstones until
            // they outnumber the points, then the arena is compacted and the graph rebuilt.
            assert!(index.dead <= 1_200, "round {round}: {}", index.dead);
            assert!(index.slots.len() <= 2 * 1_200 + 1_200);
        }
        assert!(index.graph.is_some());
        assert!(
            index.dead == 0 && index.slots.len() == 1_200,
            "the third round's tombstones outnumbered the points: compacted and rebuilt"
        );
        let recall = recall(&exact, &index, random(30, 8, 99));
        assert!(recall >= 0.95, "recall {recall}");
        // Every id is found once, with its latest vector.
        for i in [0, 599, 1_199] {
            let id = format!("p{i}");
            assert_eq!(index.get(&id), exact.get(&id));
        }
    }
}
