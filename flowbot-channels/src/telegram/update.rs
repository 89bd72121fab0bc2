//! Bot API updates turned into FlowBot events.

use flowbot_core::{
    Attachment, ChannelName, Event, Interaction, Message, MessageId, Role, Sender, UserId,
};
use serde::Deserialize;
use serde_json::Value;

/// The update kinds the adapter asks Telegram for (`allowed_updates`): reactions and member
/// changes are only sent to bots that ask.
pub(crate) const ALLOWED_UPDATES: [&str; 5] = [
    "message",
    "edited_message",
    "callback_query",
    "message_reaction",
    "chat_member",
];

/// An update, with only the parts the adapter reads (Telegram adds fields over time; they
/// are accepted and ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct Update {
    pub(crate) update_id: i64,
    #[serde(default)]
    message: Option<TgMessage>,
    #[serde(default)]
    edited_message: Option<TgMessage>,
    #[serde(default)]
    callback_query: Option<CallbackQuery>,
    #[serde(default)]
    message_reaction: Option<ReactionUpdate>,
    #[serde(default)]
    chat_member: Option<MemberUpdate>,
    /// Every other kind of update, by its field name.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    first_name: String,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Debug, Deserialize)]
struct TgMessage {
    message_id: i64,
    #[serde(default)]
    message_thread_id: Option<i64>,
    #[serde(default)]
    is_topic_message: bool,
    #[serde(default)]
    from: Option<User>,
    chat: Chat,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    entities: Vec<Entity>,
    #[serde(default)]
    new_chat_members: Vec<User>,
    #[serde(default)]
    photo: Vec<Photo>,
    #[serde(default)]
    document: Option<Document>,
}

#[derive(Debug, Deserialize)]
struct Entity {
    #[serde(rename = "type")]
    kind: String,
    offset: usize,
    length: usize,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Debug, Deserialize)]
struct Photo {
    file_id: String,
    #[serde(default)]
    file_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Document {
    file_id: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    file_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    id: String,
    from: User,
    #[serde(default)]
    message: Option<CallbackMessage>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CallbackMessage {
    chat: Chat,
}

#[derive(Debug, Deserialize)]
struct ReactionUpdate {
    chat: Chat,
    message_id: i64,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    new_reaction: Vec<ReactionType>,
}

#[derive(Debug, Deserialize)]
struct ReactionType {
    #[serde(default)]
    emoji: Option<String>,
    #[serde(default)]
    custom_emoji_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MemberUpdate {
    chat: Chat,
    old_chat_member: ChatMember,
    new_chat_member: ChatMember,
}

#[derive(Debug, Deserialize)]
struct ChatMember {
    status: String,
    user: User,
}

/// What an update became.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The events, in order (a message that adds several members gives one each).
    pub(crate) events: Vec<Event>,
    /// A callback query to answer, so the user's button stops spinning.
    pub(crate) callback_query: Option<String>,
    /// Why nothing came of it, for the log and the `ignored` counter.
    pub(crate) ignored: Option<String>,
}

impl Converted {
    fn ignored(why: impl Into<String>) -> Converted {
        Converted {
            events: Vec::new(),
            callback_query: None,
            ignored: Some(why.into()),
        }
    }

    fn events(events: Vec<Event>) -> Converted {
        Converted {
            events,
            callback_query: None,
            ignored: None,
        }
    }
}

fn sender(u: &User) -> Sender {
    let name = match (&u.last_name, &u.username) {
        (Some(last), _) => format!("{} {last}", u.first_name),
        (None, _) => u.first_name.clone(),
    };
    Sender {
        id: UserId(u.id.to_string()),
        name: Some(name),
        roles: vec![if u.is_bot { Role::Bot } else { Role::User }],
    }
}

/// The message id FlowBot uses for a Telegram message: `<chat id>:<message id>` (Telegram's
/// message ids are per chat).
pub(crate) fn message_id(chat: i64, message: i64) -> MessageId {
    MessageId(format!("{chat}:{message}"))
}

/// Turn `update` (whose JSON is `raw`) into events for channel `channel`. `bot_username` is
/// the bot's own username: `/command@<it>` is the bot's command, `/command@other_bot` is not.
pub(crate) fn convert(
    channel: &ChannelName,
    bot_username: &str,
    update: Update,
    raw: &Value,
) -> Converted {
    if let Some(m) = update.message {
        return from_message(channel, bot_username, &m, raw);
    }
    if let Some(m) = update.edited_message {
        let mut c = from_message(channel, bot_username, &m, raw);
        // An edit is of a text or a caption (members joining are never edited).
        c.events = c
            .events
            .into_iter()
            .map(|e| match e {
                Event::Message(m) => Event::MessageEdited(m),
                other => other,
            })
            .collect();
        return c;
    }
    if let Some(q) = update.callback_query {
        let Some(message) = q.message else {
            let mut c = Converted::ignored("callback_query from an inline message");
            c.callback_query = Some(q.id);
            return c;
        };
        let Some(data) = q.data else {
            let mut c = Converted::ignored("callback_query without data (a game)");
            c.callback_query = Some(q.id);
            return c;
        };
        let mut c = Converted::events(vec![Event::Interaction(Interaction {
            channel: channel.clone(),
            conversation: message.chat.id.to_string().into(),
            sender: sender(&q.from),
            value: data,
            id: MessageId(format!("callback:{}", q.id)),
            raw: Some(raw.clone()),
        })]);
        c.callback_query = Some(q.id);
        return c;
    }
    if let Some(r) = update.message_reaction {
        let Some(user) = r.user else {
            return Converted::ignored("anonymous reaction");
        };
        let Some(emoji) = r
            .new_reaction
            .iter()
            .find_map(|t| t.emoji.clone().or_else(|| t.custom_emoji_id.clone()))
        else {
            return Converted::ignored("reaction removed");
        };
        return Converted::events(vec![Event::Reaction {
            channel: channel.clone(),
            conversation: r.chat.id.to_string().into(),
            message: message_id(r.chat.id, r.message_id),
            user: sender(&user),
            emoji,
            raw: Some(raw.clone()),
        }]);
    }
    if let Some(m) = update.chat_member {
        let was_in = matches!(
            m.old_chat_member.status.as_str(),
            "member" | "administrator" | "creator" | "restricted"
        );
        let is_in = matches!(
            m.new_chat_member.status.as_str(),
            "member" | "administrator" | "creator" | "restricted"
        );
        if was_in || !is_in {
            return Converted::ignored(format!(
                "chat_member change {} -> {}",
                m.old_chat_member.status, m.new_chat_member.status
            ));
        }
        return Converted::events(vec![Event::MemberJoined {
            channel: channel.clone(),
            conversation: m.chat.id.to_string().into(),
            user: sender(&m.new_chat_member.user),
            raw: Some(raw.clone()),
        }]);
    }
    let kind = update
        .other
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| "empty update".into());
    Converted::ignored(kind)
}

fn from_message(
    channel: &ChannelName,
    bot_username: &str,
    m: &TgMessage,
    raw: &Value,
) -> Converted {
    let conversation = m.chat.id.to_string();
    if !m.new_chat_members.is_empty() {
        return Converted::events(
            m.new_chat_members
                .iter()
                .map(|u| Event::MemberJoined {
                    channel: channel.clone(),
                    conversation: conversation.as_str().into(),
                    user: sender(u),
                    raw: Some(raw.clone()),
                })
                .collect(),
        );
    }
    let Some(from) = &m.from else {
        return Converted::ignored("message without a sender (channel post)");
    };
    let mut text = m
        .text
        .clone()
        .or_else(|| m.caption.clone())
        .unwrap_or_default();
    // `/cmd@this_bot args` is `/cmd args`; `/cmd@other_bot` is for another bot.
    if let Some(rest) = text.strip_prefix('/') {
        let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Some((cmd, to)) = first.split_once('@') {
            if !to.eq_ignore_ascii_case(bot_username) {
                return Converted::ignored(format!("command for @{to}"));
            }
            text = if tail.is_empty() {
                format!("/{cmd}")
            } else {
                format!("/{cmd} {tail}")
            };
        }
    }
    let mut attachments = Vec::new();
    if let Some(p) = m.photo.iter().max_by_key(|p| p.file_size.unwrap_or(0)) {
        attachments.push(Attachment {
            url: format!("telegram-file:{}", p.file_id),
            name: None,
            mime: Some("image/jpeg".into()),
            size: p.file_size,
        });
    }
    if let Some(d) = &m.document {
        attachments.push(Attachment {
            url: format!("telegram-file:{}", d.file_id),
            name: d.file_name.clone(),
            mime: d.mime_type.clone(),
            size: d.file_size,
        });
    }
    if text.is_empty() && attachments.is_empty() {
        return Converted::ignored("message without text or file (sticker, location, …)");
    }
    let source = m.text.as_deref().or(m.caption.as_deref()).unwrap_or("");
    let mentions = m
        .entities
        .iter()
        .filter_map(|e| match (e.kind.as_str(), &e.user) {
            ("text_mention", Some(u)) => Some(UserId(u.id.to_string())),
            // Offsets count UTF-16 code units.
            ("mention", _) => utf16_slice(source, e.offset, e.length)
                .map(|s| UserId(s.trim_start_matches('@').to_owned())),
            _ => None,
        })
        .collect();
    let mut message = Message::text(channel.clone(), conversation, sender(from), text);
    message.id = message_id(m.chat.id, m.message_id);
    message.thread = m
        .is_topic_message
        .then_some(m.message_thread_id)
        .flatten()
        .map(|t| t.to_string());
    message.attachments = attachments;
    message.mentions = mentions;
    message.raw = Some(raw.clone());
    Converted::events(vec![Event::Message(message)])
}

fn utf16_slice(s: &str, offset: usize, length: usize) -> Option<String> {
    let units: Vec<u16> = s.encode_utf16().collect();
    let part = units.get(offset..offset.checked_add(length)?)?;
    String::from_utf16(part).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn conv(v: &Value) -> Converted {
        let update: Update = serde_json::from_value(v.clone()).unwrap();
        convert(&ChannelName::from("tg"), "flowbot_bot", update, v)
    }

    fn user(id: i64) -> Value {
        json!({"id": id, "is_bot": false, "first_name": "Ada", "last_name": "Lovelace", "username": "ada"})
    }

    #[test]
    fn messages_commands_and_mentions() {
        let c = conv(&json!({"update_id": 1, "message": {
            "message_id": 7, "date": 0, "chat": {"id": -100, "type": "supergroup"},
            "from": user(42), "text": "/remind@FlowBot_bot 5m tea 😀 @grace",
            "entities": [{"type": "bot_command", "offset": 0, "length": 19},
                         {"type": "mention", "offset": 30, "length": 6}]}}));
        let [Event::Message(m)] = c.events.as_slice() else {
            panic!("{c:?}")
        };
        assert_eq!(m.text, "/remind 5m tea 😀 @grace");
        assert_eq!(m.id.to_string(), "-100:7");
        assert_eq!(m.conversation.to_string(), "-100");
        assert_eq!(m.sender.id.to_string(), "42");
        assert_eq!(m.sender.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(m.mentions, [UserId("grace".into())]);
        let c = conv(&json!({"update_id": 2, "message": {
            "message_id": 8, "date": 0, "chat": {"id": 5, "type": "private"},
            "from": user(42), "text": "/start@other_bot"}}));
        assert_eq!(c.ignored.as_deref(), Some("command for @other_bot"));
    }

    #[test]
    fn an_edit_is_the_message_as_it_now_reads() {
        let c = conv(&json!({"update_id": 9, "edited_message": {
            "message_id": 7, "date": 0, "edit_date": 5, "chat": {"id": 5, "type": "private"},
            "from": user(42), "text": "/remind 10m tea"}}));
        let [Event::MessageEdited(m)] = c.events.as_slice() else {
            panic!("{c:?}")
        };
        assert_eq!(
            (m.text.as_str(), m.id.to_string()),
            ("/remind 10m tea", "5:7".into())
        );
    }

    #[test]
    fn clicks_reactions_members_and_the_rest() {
        let c = conv(&json!({"update_id": 3, "callback_query": {
            "id": "q1", "from": user(42), "chat_instance": "x", "data": "approve",
            "message": {"message_id": 9, "date": 0, "chat": {"id": 5, "type": "private"}}}}));
        let [Event::Interaction(i)] = c.events.as_slice() else {
            panic!("{c:?}")
        };
        assert_eq!(
            (i.value.as_str(), i.conversation.to_string()),
            ("approve", "5".into())
        );
        assert_eq!(c.callback_query.as_deref(), Some("q1"));
        // Each event keeps the update it came in, as a message does.
        assert_eq!(
            i.raw.as_ref().map(|r| &r["callback_query"]["data"]),
            Some(&json!("approve"))
        );

        let c = conv(&json!({"update_id": 4, "message_reaction": {
            "chat": {"id": 5, "type": "private"}, "message_id": 9, "user": user(42), "date": 0,
            "old_reaction": [], "new_reaction": [{"type": "emoji", "emoji": "👍"}]}}));
        let [
            Event::Reaction {
                emoji,
                message,
                raw,
                ..
            },
        ] = c.events.as_slice()
        else {
            panic!()
        };
        assert_eq!((emoji.as_str(), message.to_string()), ("👍", "5:9".into()));
        assert_eq!(
            raw.as_ref()
                .map(|r| &r["message_reaction"]["new_reaction"][0]["emoji"]),
            Some(&json!("👍"))
        );

        let c = conv(&json!({"update_id": 5, "chat_member": {
            "chat": {"id": -100, "type": "group"}, "from": user(1), "date": 0,
            "old_chat_member": {"status": "left", "user": user(43)},
            "new_chat_member": {"status": "member", "user": user(43)}}}));
        let [Event::MemberJoined { user: who, raw, .. }] = c.events.as_slice() else {
            panic!("{c:?}")
        };
        assert_eq!(who.id.to_string(), "43");
        assert_eq!(raw.as_ref().map(|r| &r["update_id"]), Some(&json!(5)));

        // Members added to a group: a join each, each with the update.
        let c = conv(&json!({"update_id": 7, "message": {
            "message_id": 10, "date": 0, "chat": {"id": -100, "type": "group"},
            "from": user(1), "new_chat_members": [user(43), user(44)]}}));
        let [
            Event::MemberJoined { raw: first, .. },
            Event::MemberJoined { raw: second, .. },
        ] = c.events.as_slice()
        else {
            panic!("{c:?}")
        };
        assert_eq!(first.as_ref().map(|r| &r["update_id"]), Some(&json!(7)));
        assert_eq!(first, second);

        let c = conv(&json!({"update_id": 6, "edited_channel_post": {"message_id": 1}}));
        assert_eq!(c.ignored.as_deref(), Some("edited_channel_post"));
        assert!(serde_json::from_value::<Update>(json!({"message": {}})).is_err());
    }
}
