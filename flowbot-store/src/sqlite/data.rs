//! SqliteStore: conversations, messages, sessions and key-value data.

use super::*;
use crate::common::ttl_ms;
use flowbot_core::lease::{Lease, LeaseStore};

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn save_inbound(&self, m: &Message) -> Result<bool, StoreError> {
        let row = Box::new(MessageRow::inbound(m)?);
        self.write(|done| Write::Message(row, done)).await
    }

    async fn save_outbound(&self, o: &Outbound) -> Result<(), StoreError> {
        let row = Box::new(MessageRow::outbound(o)?);
        self.write(|done| Write::Message(row, done)).await?;
        Ok(())
    }

    async fn list_messages(
        &self,
        channel: &ChannelName,
        conversation: &ConversationId,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<StoredMessage>, StoreError> {
        let limit = page_limit(limit);
        let after = common::int_cursor(cursor)?.unwrap_or(0);
        let rows: Vec<(i64, String, Option<String>, String, String, String, i64)> = sqlx::query_as(
            "SELECT seq, direction, sender, message_id, text, body, at FROM flowbot_messages \
             WHERE channel = ? AND conversation = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(channel.as_str())
        .bind(conversation.as_str())
        .bind(after)
        .bind(limit + 1)
        .fetch_all(self.r())
        .await
        .map_err(map_err)?;
        let items = rows
            .into_iter()
            .map(|(seq, direction, sender, message_id, text, body, at)| {
                crate::stored_message(
                    channel,
                    conversation,
                    seq,
                    &direction,
                    sender,
                    message_id,
                    text,
                    &body,
                    at,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |m| Value::from(m.seq)))
    }

    async fn list_conversations(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Conversation>, StoreError> {
        let limit = page_limit(limit);
        let (before_at, before_channel, before_conv) = crate::conversation_cursor(cursor)?;
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT channel, conversation, started_at, last_message_at, message_count FROM flowbot_conversations \
             WHERE (?1 IS NULL OR (last_message_at, channel, conversation) < (?1, ?2, ?3)) \
             ORDER BY last_message_at DESC, channel DESC, conversation DESC LIMIT ?4",
        )
        .bind(before_at)
        .bind(before_channel)
        .bind(before_conv)
        .bind(limit + 1)
        .fetch_all(self.r())
        .await
        .map_err(map_err)?;
        Ok(paginate(
            rows.into_iter().map(crate::conversation_of).collect(),
            limit,
            crate::conversation_cursor_of,
        ))
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn load_session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT data, version, updated_at FROM flowbot_sessions WHERE channel = ? AND conversation = ? AND user_id = ?",
        )
        .bind(key.channel.as_str())
        .bind(key.conversation.as_str())
        .bind(key.user.as_str())
        .fetch_optional(self.r())
        .await
        .map_err(map_err)?;
        row.map(|(data, version, at)| common::session_from(key, &data, version, at))
            .transpose()
    }

    async fn save_session(&self, s: &Session) -> Result<i64, StoreError> {
        let data = common::session_data(s)?;
        let now = now_ms();
        let n = if s.version == 0 {
            sqlx::query(
                "INSERT INTO flowbot_sessions (channel, conversation, user_id, data, version, updated_at) VALUES (?, ?, ?, ?, 1, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(s.key.channel.as_str())
            .bind(s.key.conversation.as_str())
            .bind(s.key.user.as_str())
            .bind(data)
            .bind(now)
            .execute(&mut *self.w().await?)
            .await
        } else {
            sqlx::query(
                "UPDATE flowbot_sessions SET data = ?, version = version + 1, updated_at = ? \
                 WHERE channel = ? AND conversation = ? AND user_id = ? AND version = ?",
            )
            .bind(data)
            .bind(now)
            .bind(s.key.channel.as_str())
            .bind(s.key.conversation.as_str())
            .bind(s.key.user.as_str())
            .bind(s.version)
            .execute(&mut *self.w().await?)
            .await
        }
        .map_err(map_err)?
        .rows_affected();
        if n == 0 {
            return Err(crate::session_conflict(s));
        }
        Ok(s.version + 1)
    }

    async fn delete_session(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "DELETE FROM flowbot_sessions WHERE channel = ? AND conversation = ? AND user_id = ?",
        )
        .bind(key.channel.as_str())
        .bind(key.conversation.as_str())
        .bind(key.user.as_str())
        .execute(&mut *self.w().await?)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n == 1)
    }
}

#[async_trait]
impl KvStore for SqliteStore {
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM flowbot_kv WHERE namespace = ? AND key = ?")
                .bind(namespace)
                .bind(key)
                .fetch_optional(self.r())
                .await
                .map_err(map_err)?;
        v.map(|v| common::parse_json(&v, "kv value")).transpose()
    }

    async fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO flowbot_kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(namespace)
        .bind(key)
        .bind(value.to_string())
        .bind(now_ms())
        .execute(&mut *self.w().await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM flowbot_kv WHERE namespace = ? ORDER BY key")
                .bind(namespace)
                .fetch_all(self.r())
                .await
                .map_err(map_err)?;
        rows.into_iter()
            .map(|(k, v)| Ok((k, common::parse_json(&v, "kv value")?)))
            .collect()
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM flowbot_kv WHERE namespace = ? AND key = ?")
            .bind(namespace)
            .bind(key)
            .execute(&mut *self.w().await?)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n == 1)
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = now_ms();
        // A new holder (or the old one after expiry) gets the next fencing token.
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO flowbot_leases (name, owner, token, expires_at) VALUES (?, ?, 1, ?) \
             ON CONFLICT (name) DO UPDATE SET \
             token = CASE WHEN flowbot_leases.owner = excluded.owner AND flowbot_leases.expires_at > ? \
             THEN flowbot_leases.token ELSE flowbot_leases.token + 1 END, \
             owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE flowbot_leases.owner = excluded.owner OR flowbot_leases.expires_at <= ? \
             RETURNING token",
        )
        .bind(name)
        .bind(owner)
        .bind(now.saturating_add(ttl_ms(ttl)))
        .bind(now)
        .bind(now)
        .fetch_optional(&mut *self.w().await?)
        .await
        .map_err(map_err)?;
        Ok(token.map(|token| Lease {
            name: name.to_owned(),
            owner: owner.to_owned(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE flowbot_leases SET expires_at = ? \
             WHERE name = ? AND owner = ? AND token = ? AND expires_at > ?",
        )
        .bind(now.saturating_add(ttl_ms(ttl)))
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.token)
        .bind(now)
        .execute(&mut *self.w().await?)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        // Expired rather than deleted, so the next holder's token is still larger.
        sqlx::query(
            "UPDATE flowbot_leases SET expires_at = 0 WHERE name = ? AND owner = ? AND token = ?",
        )
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.token)
        .execute(&mut *self.w().await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
