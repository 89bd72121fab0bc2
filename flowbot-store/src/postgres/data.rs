//! PostgresStore: conversations, messages, sessions and key-value data.

use super::*;
use crate::common::ttl_ms;
use flowbot_core::lease::{Lease, LeaseStore};

const TOUCH_CONVERSATION: &str = "INSERT INTO flowbot_conversations AS c (channel, conversation, started_at, last_message_at, message_count) \
     VALUES ($1, $2, $3, $3, 1) ON CONFLICT (channel, conversation) DO UPDATE SET \
     last_message_at = GREATEST(c.last_message_at, EXCLUDED.last_message_at), message_count = c.message_count + 1";

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn save_inbound(&self, m: &Message) -> Result<bool, StoreError> {
        let body =
            serde_json::to_string(m).map_err(|e| StoreError::Invalid(format!("message: {e}")))?;
        let at = ms(m.received_at);
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "INSERT INTO flowbot_messages (channel, conversation, direction, message_id, sender, text, body, at) \
             VALUES ($1, $2, 'inbound', $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(m.channel.as_str())
        .bind(m.conversation.as_str())
        .bind(m.id.as_str())
        .bind(m.sender.id.as_str())
        .bind(&m.text)
        .bind(body)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if n == 1 {
            sqlx::query(TOUCH_CONVERSATION)
                .bind(m.channel.as_str())
                .bind(m.conversation.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(n == 1)
    }

    async fn save_outbound(&self, o: &Outbound) -> Result<(), StoreError> {
        let target = o
            .target
            .as_ref()
            .ok_or_else(|| StoreError::Invalid("outbound message has no target".into()))?;
        let body =
            serde_json::to_string(o).map_err(|e| StoreError::Invalid(format!("message: {e}")))?;
        let at = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO flowbot_messages (channel, conversation, direction, message_id, sender, text, body, at) \
             VALUES ($1, $2, 'outbound', $3, NULL, $4, $5, $6)",
        )
        .bind(target.channel.as_str())
        .bind(target.conversation.as_str())
        .bind(crate::new_message_id())
        .bind(&o.text)
        .bind(body)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(TOUCH_CONVERSATION)
            .bind(target.channel.as_str())
            .bind(target.conversation.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
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
             WHERE channel = $1 AND conversation = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(channel.as_str())
        .bind(conversation.as_str())
        .bind(after)
        .bind(limit + 1)
        .fetch_all(self.p())
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
             WHERE ($1::bigint IS NULL OR (last_message_at, channel, conversation) < ($1, $2::text, $3::text)) \
             ORDER BY last_message_at DESC, channel DESC, conversation DESC LIMIT $4",
        )
        .bind(before_at)
        .bind(before_channel)
        .bind(before_conv)
        .bind(limit + 1)
        .fetch_all(self.p())
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
impl SessionStore for PostgresStore {
    async fn load_session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT data, version, updated_at FROM flowbot_sessions WHERE channel = $1 AND conversation = $2 AND user_id = $3",
        )
        .bind(key.channel.as_str())
        .bind(key.conversation.as_str())
        .bind(key.user.as_str())
        .fetch_optional(self.p())
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
                "INSERT INTO flowbot_sessions (channel, conversation, user_id, data, version, updated_at) VALUES ($1, $2, $3, $4, 1, $5) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(s.key.channel.as_str())
            .bind(s.key.conversation.as_str())
            .bind(s.key.user.as_str())
            .bind(data)
            .bind(now)
            .execute(self.p())
            .await
        } else {
            sqlx::query(
                "UPDATE flowbot_sessions SET data = $1, version = version + 1, updated_at = $2 \
                 WHERE channel = $3 AND conversation = $4 AND user_id = $5 AND version = $6",
            )
            .bind(data)
            .bind(now)
            .bind(s.key.channel.as_str())
            .bind(s.key.conversation.as_str())
            .bind(s.key.user.as_str())
            .bind(s.version)
            .execute(self.p())
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
        let n = sqlx::query("DELETE FROM flowbot_sessions WHERE channel = $1 AND conversation = $2 AND user_id = $3")
            .bind(key.channel.as_str())
            .bind(key.conversation.as_str())
            .bind(key.user.as_str())
            .execute(self.p())
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n == 1)
    }
}

#[async_trait]
impl KvStore for PostgresStore {
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM flowbot_kv WHERE namespace = $1 AND key = $2")
                .bind(namespace)
                .bind(key)
                .fetch_optional(self.p())
                .await
                .map_err(map_err)?;
        v.map(|v| common::parse_json(&v, "kv value")).transpose()
    }

    async fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO flowbot_kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        )
        .bind(namespace)
        .bind(key)
        .bind(value.to_string())
        .bind(now_ms())
        .execute(self.p())
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM flowbot_kv WHERE namespace = $1 ORDER BY key")
                .bind(namespace)
                .fetch_all(self.p())
                .await
                .map_err(map_err)?;
        rows.into_iter()
            .map(|(k, v)| Ok((k, common::parse_json(&v, "kv value")?)))
            .collect()
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM flowbot_kv WHERE namespace = $1 AND key = $2")
            .bind(namespace)
            .bind(key)
            .execute(self.p())
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n == 1)
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = now_ms();
        // A new holder (or the old one after expiry) gets the next fencing token.
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO flowbot_leases AS l (name, owner, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
             token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > $4 THEN l.token ELSE l.token + 1 END, \
             owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
             WHERE l.owner = EXCLUDED.owner OR l.expires_at <= $4 \
             RETURNING token",
        )
        .bind(name)
        .bind(owner)
        .bind(now.saturating_add(ttl_ms(ttl)))
        .bind(now)
        .fetch_optional(self.p())
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
            "UPDATE flowbot_leases SET expires_at = $1 \
             WHERE name = $2 AND owner = $3 AND token = $4 AND expires_at > $5",
        )
        .bind(now.saturating_add(ttl_ms(ttl)))
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.token)
        .bind(now)
        .execute(self.p())
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        // Expired rather than deleted, so the next holder's token is still larger.
        sqlx::query(
            "UPDATE flowbot_leases SET expires_at = 0 WHERE name = $1 AND owner = $2 AND token = $3",
        )
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.token)
        .execute(self.p())
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
