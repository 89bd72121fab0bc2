//! One collection's vectors in memory: an arena of vectors (normalised for cosine), their ids
//! and payloads, searched exactly below [`IndexOptions::exact_below`] live points and through
//! usearch's HNSW graph above it. The graph holds half-precision copies; its candidates are
//! scored again exactly from the arena, so scores are exact and recall improves.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use flowbot_core::VectorError;
use flowbot_core::vector::{CollectionSpec, Distance, Filter, Hit, Point, VectorQuery, dot};
use serde_json::{Map, Value};

/// How the embedded index searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexOptions {
    /// Below this many points a collection is searched exactly (every vector compared);
    /// from it on through the HNSW graph. Filtered searches whose filter keeps fewer points
    /// than this are exact too.
    pub exact_below: usize,
    /// Links per node of the graph (usearch's `connectivity`, HNSW's M).
    pub connectivity: usize,
    /// Candidates kept while inserting (HNSW's efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (HNSW's ef): more is slower and finds more of the true
    /// nearest neighbours.
    pub expansion_search: usize,
    /// Graph candidates per asked hit, scored again exactly.
    pub oversample: usize,
    /// Keep the graph's copies of the vectors in half precision (half the memory; the
    /// candidates are scored again exactly from the full-precision vectors).
    pub half: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            exact_below: 10_000,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            oversample: 2,
            half: true,
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
            ("oversample", self.oversample, 1, 100),
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
    key: u64,
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
    by_key: HashMap<u64, u32>,
    free: Vec<u32>,
    next_key: u64,
    live: usize,
    ann: Option<usearch::Index>,
}

/// The threads that add to the graph: the machine's cores.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ann_error(e: impl std::fmt::Display) -> VectorError {
    VectorError::Unavailable(format!("vector index: {e}").into())
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
            by_key: HashMap::new(),
            free: Vec::new(),
            next_key: 0,
            live: 0,
            ann: None,
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
        match &self.ann {
            Some(ann) => {
                let need = ann.size() + added.len();
                if need > ann.capacity() {
                    ann.reserve_capacity_and_threads(need.max(ann.capacity() * 2), threads())
                        .map_err(ann_error)?;
                }
                self.add_to_graph(&added)
            }
            None if self.live >= self.options.exact_below.max(1) => self.build(),
            None => Ok(()),
        }
    }

    /// Put a point in the arena (its old key leaves the graph); returns its new key and slot.
    fn place(&mut self, point: Point) -> Result<(u64, u32), VectorError> {
        let v = self.prepare(&point.vector);
        let key = self.next_key;
        self.next_key += 1;
        let slot = match self.by_id.get(&point.id) {
            Some(&slot) => {
                if let Some(old) = self.slots[slot as usize].take() {
                    self.by_key.remove(&old.key);
                    if let Some(ann) = &self.ann {
                        ann.remove(old.key).map_err(ann_error)?;
                    }
                }
                slot
            }
            None => {
                let slot = match self.free.pop() {
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
        self.by_key.insert(key, slot);
        self.slots[slot as usize] = Some(Slot {
            id: point.id,
            key,
            payload: point.payload,
        });
        Ok((key, slot))
    }

    /// Add `(key, slot)`s to the graph, split over the machine's cores.
    fn add_to_graph(&self, entries: &[(u64, u32)]) -> Result<(), VectorError> {
        let Some(ann) = &self.ann else {
            return Ok(());
        };
        let per = entries.len().div_ceil(threads()).max(1);
        let failed = std::thread::scope(|scope| {
            let workers: Vec<_> = entries
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .find_map(|&(key, slot)| ann.add(key, self.vector(slot)).err())
                            .map(|e| e.to_string())
                    })
                })
                .collect();
            workers.into_iter().find_map(|w| {
                w.join()
                    .unwrap_or_else(|_| Some("a thread panicked".into()))
            })
        });
        match failed {
            Some(e) => Err(ann_error(e)),
            None => Ok(()),
        }
    }

    /// Remove a point; returns whether it was there.
    pub(crate) fn remove(&mut self, id: &str) -> Result<bool, VectorError> {
        let Some(slot) = self.by_id.remove(id) else {
            return Ok(false);
        };
        if let Some(old) = self.slots[slot as usize].take() {
            self.by_key.remove(&old.key);
            if let Some(ann) = &self.ann {
                ann.remove(old.key).map_err(ann_error)?;
            }
        }
        self.free.push(slot);
        self.live -= 1;
        // Far below the threshold the graph is dead weight.
        if self.ann.is_some() && self.live < self.options.exact_below / 2 {
            self.ann = None;
        }
        Ok(true)
    }

    /// Build the graph over every live point, on as many threads as the machine has.
    fn build(&mut self) -> Result<(), VectorError> {
        let metric = match self.spec.distance {
            Distance::Cosine | Distance::Dot => usearch::MetricKind::IP,
            Distance::Euclid => usearch::MetricKind::L2sq,
        };
        let options = usearch::IndexOptions {
            dimensions: self.dim(),
            metric,
            quantization: if self.options.half {
                usearch::ScalarKind::F16
            } else {
                usearch::ScalarKind::F32
            },
            connectivity: self.options.connectivity,
            expansion_add: self.options.expansion_add,
            expansion_search: self.options.expansion_search,
            multi: false,
        };
        let ann = usearch::Index::new(&options).map_err(ann_error)?;
        ann.reserve_capacity_and_threads((self.live * 2).max(1024), threads())
            .map_err(ann_error)?;
        let live: Vec<(u64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s.key, i as u32)))
            .collect();
        self.ann = Some(ann);
        if let Err(e) = self.add_to_graph(&live) {
            self.ann = None;
            return Err(e);
        }
        Ok(())
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
        let best = match &self.ann {
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
                    self.graph(&q, limit, Some(&query.filter))?
                }
            }
            Some(_) => self.graph(&q, limit, None)?,
        };
        Ok(best
            .into_iter()
            .filter(|s| query.threshold.is_none_or(|t| s.0 >= t))
            .filter_map(|s| self.hit(s))
            .collect())
    }

    fn graph(
        &self,
        q: &[f32],
        limit: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>, VectorError> {
        let Some(ann) = &self.ann else {
            return Ok(Vec::new());
        };
        let want = limit.saturating_mul(self.options.oversample).max(limit);
        let found = match filter {
            None => ann.search(q, want),
            Some(filter) => ann.filtered_search(q, want, |key| {
                self.by_key
                    .get(&key)
                    .is_some_and(|&slot| self.passes(filter, slot))
            }),
        }
        .map_err(ann_error)?;
        let slots = found
            .keys
            .iter()
            .filter_map(|key| self.by_key.get(key).copied());
        Ok(self.top(q, limit, slots))
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
    /// maps and the graph.
    pub(crate) fn memory_bytes(&self) -> usize {
        let arena = self.vectors.capacity() * 4;
        let slots: usize = self
            .slots
            .iter()
            .flatten()
            .map(|s| std::mem::size_of::<Slot>() + s.id.len() * 2 + payload_bytes(&s.payload))
            .sum();
        let maps = (self.by_id.capacity() + self.by_key.capacity()) * 32;
        let graph = self.ann.as_ref().map_or(0, |a| a.memory_usage());
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
            assert!(graph.ann.is_some() && exact.ann.is_none());
            let (mut found, mut total) = (0, 0);
            for q in random(50, 8, 11) {
                let query = VectorQuery::new(q, 10);
                let want: Vec<String> = exact
                    .search(&query)
                    .expect("exact")
                    .into_iter()
                    .map(|h| h.id)
                    .collect();
                let got = graph.search(&query).expect("graph");
                total += want.len();
                found += got.iter().filter(|h| want.contains(&h.id)).count();
            }
            assert!(
                found as f64 / total as f64 >= 0.95,
                "{distance:?}: recall {found}/{total}"
            );
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
            index.ann.is_none(),
            "the graph goes when few points are left"
        );
        assert_eq!(index.count(&Filter::all()), 40);
    }
}
