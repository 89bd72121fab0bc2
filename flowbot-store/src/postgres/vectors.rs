//! The embedded vector store's tables in PostgreSQL (migration 0005): collections, points with
//! tombstones, and the full-text index of their text.

use async_trait::async_trait;
use flowbot_core::VectorError;
use flowbot_core::vector::{CollectionSpec, Distance, Point};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use crate::common::{map_err, now_ms, parse_json};
use crate::vectors::{Change, Head, Table, body, decode, encode};

fn head(row: &PgRow) -> Result<Head, VectorError> {
    let name: String = row.try_get("name").map_err(map_err)?;
    let distance: String = row.try_get("distance").map_err(map_err)?;
    let dimension: i32 = row.try_get("dimension").map_err(map_err)?;
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
impl Table for PostgresStore {
    async fn create(&self, spec: &CollectionSpec, generation: &str) -> Result<Head, VectorError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO flowbot_vector_collections (name, dimension, distance, generation, seq, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&spec.name)
        .bind(i32::try_from(spec.dimension).map_err(|_| VectorError::Invalid(format!("dimension {} is too large", spec.dimension)))?)
        .bind(spec.distance.as_str())
        .bind(generation)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let row = sqlx::query(heads!("WHERE name = $1"))
            .bind(&spec.name)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        head(&row)
    }

    async fn head(&self, name: &str) -> Result<Option<Head>, VectorError> {
        let row = sqlx::query(heads!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.p())
            .await
            .map_err(map_err)?;
        row.as_ref().map(head).transpose()
    }

    async fn heads(&self) -> Result<Vec<Head>, VectorError> {
        let rows = sqlx::query(heads!("ORDER BY name"))
            .fetch_all(self.p())
            .await
            .map_err(map_err)?;
        rows.iter().map(head).collect()
    }

    async fn drop_collection(&self, name: &str) -> Result<bool, VectorError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM flowbot_vector_points WHERE collection = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let n = sqlx::query("DELETE FROM flowbot_vector_collections WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
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
            "UPDATE flowbot_vector_collections SET seq = seq + 1 WHERE name = $1 RETURNING seq",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        let removed = if deletes.is_empty() {
            0
        } else {
            sqlx::query(
                "UPDATE flowbot_vector_points SET seq = $1, vector = NULL, payload = '{}', body = '' \
                 WHERE collection = $2 AND id = ANY($3) AND vector IS NOT NULL",
            )
            .bind(seq)
            .bind(name)
            .bind(deletes)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
        };
        for p in upserts {
            sqlx::query(
                "INSERT INTO flowbot_vector_points (collection, id, seq, vector, payload, body) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (collection, id) DO UPDATE SET \
                 seq = EXCLUDED.seq, vector = EXCLUDED.vector, payload = EXCLUDED.payload, body = EXCLUDED.body",
            )
            .bind(name)
            .bind(&p.id)
            .bind(seq)
            .bind(encode(&p.vector))
            .bind(serde_json::Value::Object(p.payload.clone()).to_string())
            .bind(body(&p.payload))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Some((seq, removed)))
    }

    async fn changes(&self, name: &str, after: i64) -> Result<Vec<Change>, VectorError> {
        let rows = sqlx::query(
            "SELECT id, seq, vector, payload FROM flowbot_vector_points \
             WHERE collection = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(name)
        .bind(after)
        .fetch_all(self.p())
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
        _points: usize,
    ) -> Result<Vec<(String, f32)>, VectorError> {
        // Any of the terms (letters and digits only), stemmed as English; ts_rank_cd is
        // higher for better matches.
        let query = terms.join(" | ");
        let rows: Vec<(String, f32)> = sqlx::query_as(
            "SELECT id, ts_rank_cd(tsv, q)::real AS rank FROM flowbot_vector_points, \
             to_tsquery('english', $1) q \
             WHERE collection = $2 AND vector IS NOT NULL AND tsv @@ q \
             ORDER BY rank DESC, id LIMIT $3",
        )
        .bind(query)
        .bind(name)
        .bind(limit as i64)
        .fetch_all(self.p())
        .await
        .map_err(map_err)?;
        Ok(rows)
    }
}
