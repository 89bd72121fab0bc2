//! The embedded vector store's tables in SQLite (migration 0005): collections, points with
//! tombstones, and the FTS5 index of their text.

use async_trait::async_trait;
use flowbot_core::VectorError;
use flowbot_core::vector::{CollectionSpec, Distance, Point};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::common::{map_err, now_ms, parse_json};
use crate::vectors::{Change, Head, Table, body, decode, encode};

/// Collections of this many points or more search keywords as common-terms queries.
const COMMON_FROM: usize = 10_000;
/// A word in more than 1/COMMON_SHARE of the rows is common.
const COMMON_SHARE: usize = 20;

fn head(row: &SqliteRow) -> Result<Head, VectorError> {
    let name: String = row.try_get("name").map_err(map_err)?;
    let distance: String = row.try_get("distance").map_err(map_err)?;
    let dimension: i64 = row.try_get("dimension").map_err(map_err)?;
    Ok(Head {
        spec: CollectionSpec {
            distance: Distance::parse(&distance).ok_or_else(|| {
                flowbot_core::StoreError::Corrupt(format!(
                    "collection {name:?}: unknown distance {distance:?}"
                ))
            })?,
            dimension: usize::try_from(dimension).map_err(|_| {
                flowbot_core::StoreError::Corrupt(format!(
                    "collection {name:?}: dimension {dimension}"
                ))
            })?,
            name,
        },
        generation: row.try_get("generation").map_err(map_err)?,
        seq: row.try_get("seq").map_err(map_err)?,
    })
}

/// The collection columns [`head`] reads, then `$tail`.
macro_rules! heads {
    ($tail:literal) => {
        concat!(
            "SELECT name, dimension, distance, generation, seq FROM flowbot_vector_collections ",
            $tail
        )
    };
}

#[async_trait]
impl Table for SqliteStore {
    async fn create(&self, spec: &CollectionSpec, generation: &str) -> Result<Head, VectorError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO flowbot_vector_collections (name, dimension, distance, generation, seq, created_at) \
             VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&spec.name)
        .bind(spec.dimension as i64)
        .bind(spec.distance.as_str())
        .bind(generation)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        let row = sqlx::query(heads!("WHERE name = ?"))
            .bind(&spec.name)
            .fetch_one(&mut **tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        head(&row)
    }

    async fn head(&self, name: &str) -> Result<Option<Head>, VectorError> {
        let row = sqlx::query(heads!("WHERE name = ?"))
            .bind(name)
            .fetch_optional(self.r())
            .await
            .map_err(map_err)?;
        row.as_ref().map(head).transpose()
    }

    async fn heads(&self) -> Result<Vec<Head>, VectorError> {
        let rows = sqlx::query(heads!("ORDER BY name"))
            .fetch_all(self.r())
            .await
            .map_err(map_err)?;
        rows.iter().map(head).collect()
    }

    async fn drop_collection(&self, name: &str) -> Result<bool, VectorError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM flowbot_vector_points WHERE collection = ?")
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        let n = sqlx::query("DELETE FROM flowbot_vector_collections WHERE name = ?")
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        tx.commit().await.map_err(map_err)?;
        Ok(n > 0)
    }

    async fn write(
        &self,
        name: &str,
        upserts: &[Point],
        deletes: &[String],
    ) -> Result<Option<(i64, u64)>, VectorError> {
        let mut tx = self.begin().await?;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE flowbot_vector_collections SET seq = seq + 1 WHERE name = ? RETURNING seq",
        )
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        let mut removed = 0;
        for id in deletes {
            removed += sqlx::query(
                "UPDATE flowbot_vector_points SET seq = ?, vector = NULL, payload = '{}', body = '' \
                 WHERE collection = ? AND id = ? AND vector IS NOT NULL",
            )
            .bind(seq)
            .bind(name)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        }
        for p in upserts {
            sqlx::query(
                "INSERT INTO flowbot_vector_points (collection, id, seq, vector, payload, body) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (collection, id) DO UPDATE SET \
                 seq = excluded.seq, vector = excluded.vector, payload = excluded.payload, body = excluded.body",
            )
            .bind(name)
            .bind(&p.id)
            .bind(seq)
            .bind(encode(&p.vector))
            .bind(serde_json::Value::Object(p.payload.clone()).to_string())
            .bind(body(&p.payload))
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Some((seq, removed)))
    }

    async fn changes(&self, name: &str, after: i64) -> Result<Vec<Change>, VectorError> {
        let rows = sqlx::query(
            "SELECT id, seq, vector, payload FROM flowbot_vector_points \
             WHERE collection = ? AND seq > ? ORDER BY seq",
        )
        .bind(name)
        .bind(after)
        .fetch_all(self.r())
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id").map_err(map_err)?;
                let vector: Option<Vec<u8>> = row.try_get("vector").map_err(map_err)?;
                let point = match vector {
                    Some(bytes) => {
                        let payload: String = row.try_get("payload").map_err(map_err)?;
                        let payload = match parse_json(&payload, "vector payload")? {
                            serde_json::Value::Object(map) => map,
                            _ => serde_json::Map::new(),
                        };
                        Some((decode(&bytes, &id)?, payload))
                    }
                    None => None,
                };
                Ok(Change {
                    seq: row.try_get("seq").map_err(map_err)?,
                    id,
                    point,
                })
            })
            .collect()
    }

    async fn text(
        &self,
        name: &str,
        terms: &[String],
        limit: usize,
        points: usize,
    ) -> Result<Vec<(String, f32)>, VectorError> {
        // Each term quoted (FTS5's string syntax; terms hold letters and digits only), any
        // of them matching; FTS5's `rank` is bm25, lower for better matches.
        let quoted: Vec<String> = terms.iter().map(|t| format!("\"{t}\"")).collect();
        let any = quoted.join(" OR ");
        // In a large collection, BM25 over every chunk holding a frequent word is most of a
        // search's time. As Lucene's common-terms query does, the words in more than
        // 1/COMMON_SHARE of the rows then only add to the score of the chunks that hold one of
        // the query's rarer words: those are the matches, ranked by all the words.
        let mut query = any.clone();
        if points >= COMMON_FROM && terms.len() > 1 {
            let common = (points / COMMON_SHARE).max(1);
            let mut rare = Vec::new();
            for q in &quoted {
                let rows: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT rowid FROM flowbot_vector_fts \
                     WHERE flowbot_vector_fts MATCH ? LIMIT ?)",
                )
                .bind(q)
                .bind(common as i64)
                .fetch_one(self.r())
                .await
                .map_err(map_err)?;
                if (rows as usize) < common {
                    rare.push(q.as_str());
                }
            }
            if !rare.is_empty() && rare.len() < terms.len() {
                query = format!("({}) AND ({any})", rare.join(" OR "));
            }
        }
        let mut rows = ranked(self, &query, name, limit).await?;
        if rows.len() < limit && query != any {
            // Fewer chunks hold a rare word than were asked for: every word matches then.
            rows = ranked(self, &any, name, limit).await?;
        }
        Ok(rows
            .into_iter()
            .map(|(id, rank)| (id, -rank as f32))
            .collect())
    }
}

/// The collection's best `limit` rows for the FTS5 `query`, best first, with their bm25.
async fn ranked(
    store: &SqliteStore,
    query: &str,
    name: &str,
    limit: usize,
) -> Result<Vec<(String, f64)>, VectorError> {
    // First the full-text index alone ranks its best rows (`ORDER BY rank` with a limit is
    // FTS5's own sorted scan, much faster than sorting bm25() of every match after a join);
    // the index is shared by all collections, so some room is left for rows of other
    // collections and for deleted points.
    let candidates = limit.saturating_mul(4).max(limit.saturating_add(16));
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT p.id, f.rank FROM (SELECT rowid, rank FROM flowbot_vector_fts \
         WHERE flowbot_vector_fts MATCH ? ORDER BY rank LIMIT ?) f \
         CROSS JOIN flowbot_vector_points p ON p.pk = f.rowid \
         WHERE p.collection = ? AND p.vector IS NOT NULL ORDER BY f.rank",
    )
    .bind(query)
    .bind(candidates as i64)
    .bind(name)
    .fetch_all(store.r())
    .await
    .map_err(map_err)?;
    if rows.len() >= limit {
        return Ok(rows.into_iter().take(limit).collect());
    }
    // Too few of them were this collection's live points (or too few rows match at all):
    // rank every match of the collection. CROSS JOIN keeps the full-text index the outer
    // loop: the other order runs the full-text query once per point.
    Ok(sqlx::query_as(
        "SELECT p.id, bm25(flowbot_vector_fts) AS rank FROM flowbot_vector_fts \
         CROSS JOIN flowbot_vector_points p ON p.pk = flowbot_vector_fts.rowid \
         WHERE flowbot_vector_fts MATCH ? AND p.collection = ? AND p.vector IS NOT NULL \
         ORDER BY rank LIMIT ?",
    )
    .bind(query)
    .bind(name)
    .bind(limit as i64)
    .fetch_all(store.r())
    .await
    .map_err(map_err)?)
}
