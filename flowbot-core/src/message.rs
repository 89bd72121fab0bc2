//! Platform-neutral identifiers, inbound events and outbound messages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// Name of a registered channel (e.g. `web`, `discord`, `local`). Messages carry it so
    /// replies go back through the same channel.
    ChannelName
);
string_id!(
    /// A conversation (room, DM, thread root) as the platform names it.
    ConversationId
);
string_id!(
    /// A user as the platform names it.
    UserId
);
string_id!(
    /// A message as the platform names it; used to deduplicate redelivered events.
    MessageId
);

/// What a sender may do; rules and middleware check roles, not platform-specific flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// An ordinary user.
    User,
    /// A moderator of the conversation or server.
    Moderator,
    /// An administrator of the bot.
    Admin,
    /// Another bot (its messages are usually ignored).
    Bot,
    /// A platform-specific role, by name.
    Custom(String),
}

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The platform's user id.
    pub id: UserId,
    /// Display name, when the platform gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Roles of the sender.
    #[serde(default)]
    pub roles: Vec<Role>,
}

impl Sender {
    /// A sender with the [`Role::User`] role only.
    pub fn user(id: impl Into<UserId>) -> Self {
        Sender {
            id: id.into(),
            name: None,
            roles: vec![Role::User],
        }
    }

    /// Whether the sender has `role`.
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}

/// A file or link attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the content can be fetched.
    pub url: String,
    /// File name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// MIME type, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// An inbound chat message, the same shape for every platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The platform's message id (used for deduplication).
    pub id: MessageId,
    /// The channel it came through.
    pub channel: ChannelName,
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Thread within the conversation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Who sent it.
    pub sender: Sender,
    /// Plain text content.
    pub text: String,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Users mentioned in the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// The platform's own JSON for the event, kept as an escape hatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
    /// When FlowBot received it.
    pub received_at: DateTime<Utc>,
}

impl Message {
    /// A plain text message with a fresh id, received now.
    pub fn text(
        channel: impl Into<ChannelName>,
        conversation: impl Into<ConversationId>,
        sender: Sender,
        text: impl Into<String>,
    ) -> Self {
        Message {
            id: MessageId(uuid::Uuid::now_v7().to_string()),
            channel: channel.into(),
            conversation: conversation.into(),
            thread: None,
            sender,
            text: text.into(),
            attachments: Vec::new(),
            mentions: Vec::new(),
            raw: None,
            received_at: crate::clock::now(),
        }
    }

    /// If the text is a slash command (`/name args…`), its name and the rest of the text.
    pub fn command(&self) -> Option<(&str, &str)> {
        let rest = self.text.trim_start().strip_prefix('/')?;
        let (name, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        (!name.is_empty()).then_some((name, args.trim()))
    }
}

/// A button click or other interaction on a message the bot sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Channel it came through.
    pub channel: ChannelName,
    /// Conversation of the message that was clicked.
    pub conversation: ConversationId,
    /// Who clicked.
    pub sender: Sender,
    /// The value of the button (see [`Button::value`]).
    pub value: String,
    /// Platform event id (deduplication).
    pub id: MessageId,
    /// The platform's own JSON for the event, kept as an escape hatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// An inbound event. New kinds may be added, so match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A chat message (slash commands included: see [`Message::command`]).
    Message(Message),
    /// A message its author edited: the message as it now reads, with the id of the one
    /// edited. Edits reach only what asks for them (a handler's `on_edit`, rules naming
    /// `event = "message_edited"`), so correcting a typo does not run a command twice.
    MessageEdited(Message),
    /// A button click or interaction.
    Interaction(Interaction),
    /// Someone joined a conversation.
    MemberJoined {
        /// Channel.
        channel: ChannelName,
        /// Conversation joined.
        conversation: ConversationId,
        /// Who joined.
        user: Sender,
        /// The platform's own JSON for the event, kept as an escape hatch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    /// Someone reacted to a message.
    Reaction {
        /// Channel.
        channel: ChannelName,
        /// Conversation.
        conversation: ConversationId,
        /// The message reacted to.
        message: MessageId,
        /// Who reacted.
        user: Sender,
        /// The emoji or reaction name.
        emoji: String,
        /// The platform's own JSON for the event, kept as an escape hatch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    /// An application-defined event.
    Custom {
        /// Channel it came from.
        channel: ChannelName,
        /// Event name.
        name: String,
        /// Event data.
        payload: Value,
    },
}

impl Event {
    /// The channel the event came through.
    pub fn channel(&self) -> &ChannelName {
        match self {
            Event::Message(m) | Event::MessageEdited(m) => &m.channel,
            Event::Interaction(i) => &i.channel,
            Event::MemberJoined { channel, .. }
            | Event::Reaction { channel, .. }
            | Event::Custom { channel, .. } => channel,
        }
    }

    /// The conversation, for events that belong to one.
    pub fn conversation(&self) -> Option<&ConversationId> {
        match self {
            Event::Message(m) | Event::MessageEdited(m) => Some(&m.conversation),
            Event::Interaction(i) => Some(&i.conversation),
            Event::MemberJoined { conversation, .. } | Event::Reaction { conversation, .. } => {
                Some(conversation)
            }
            Event::Custom { .. } => None,
        }
    }

    /// The user who caused the event, if any.
    pub fn sender(&self) -> Option<&Sender> {
        match self {
            Event::Message(m) | Event::MessageEdited(m) => Some(&m.sender),
            Event::Interaction(i) => Some(&i.sender),
            Event::MemberJoined { user, .. } | Event::Reaction { user, .. } => Some(user),
            Event::Custom { .. } => None,
        }
    }

    /// The platform event id used for deduplication, if the event has one.
    pub fn dedupe_id(&self) -> Option<&MessageId> {
        match self {
            Event::Message(m) => Some(&m.id),
            Event::Interaction(i) => Some(&i.id),
            _ => None,
        }
    }

    /// Where a reply to this event goes: its channel, conversation and thread.
    pub fn reply_target(&self) -> Option<Target> {
        let conversation = self.conversation()?.clone();
        let thread = self
            .as_message()
            .or(self.as_edit())
            .and_then(|m| m.thread.clone());
        Some(Target {
            channel: self.channel().clone(),
            conversation,
            thread,
        })
    }

    /// The message, if this is a message event.
    pub fn as_message(&self) -> Option<&Message> {
        match self {
            Event::Message(m) => Some(m),
            _ => None,
        }
    }

    /// The edited message as it now reads, if this is an edit.
    pub fn as_edit(&self) -> Option<&Message> {
        match self {
            Event::MessageEdited(m) => Some(m),
            _ => None,
        }
    }
}

/// How outbound text is formatted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Plain text.
    #[default]
    Plain,
    /// CommonMark; channels that cannot render it send the text as is.
    Markdown,
}

/// A button attached to an outbound message; clicking it produces an [`Event::Interaction`]
/// carrying `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    /// Visible label.
    pub label: String,
    /// Value sent back when clicked.
    pub value: String,
}

/// Where an outbound message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The channel to send through.
    pub channel: ChannelName,
    /// The conversation to send to.
    pub conversation: ConversationId,
    /// Thread, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

/// An outbound message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Outbound {
    /// Destination; `None` in a handler's reply means "the conversation the event came from".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Text content.
    pub text: String,
    /// How `text` is formatted.
    #[serde(default)]
    pub format: Format,
    /// Buttons to show under the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Visible only to the user the bot is answering, where the platform supports it.
    #[serde(default)]
    pub ephemeral: bool,
    /// The inbound message this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// The user this answers (the pipeline sets it on replies): who sees an ephemeral message,
    /// on platforms that address those to one user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<UserId>,
    /// The [`Draft`](crate::Draft) this message completes: where the channel showed the
    /// answer while it was written, delivery replaces the draft with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<crate::draft::DraftRef>,
}

impl Outbound {
    /// A plain text message to the source conversation.
    pub fn text(text: impl Into<String>) -> Self {
        Outbound {
            text: text.into(),
            ..Outbound::default()
        }
    }

    /// A Markdown message to the source conversation.
    pub fn markdown(text: impl Into<String>) -> Self {
        Outbound {
            text: text.into(),
            format: Format::Markdown,
            ..Outbound::default()
        }
    }

    /// Send to an explicit target instead of the source conversation.
    pub fn to(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// Add a button.
    pub fn button(mut self, label: impl Into<String>, value: impl Into<String>) -> Self {
        self.buttons.push(Button {
            label: label.into(),
            value: value.into(),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_parsing() {
        let m = Message::text("c", "conv", Sender::user("u"), "  /remind 2s  hello there ");
        assert_eq!(m.command(), Some(("remind", "2s  hello there")));
        let m = Message::text("c", "conv", Sender::user("u"), "/help");
        assert_eq!(m.command(), Some(("help", "")));
        let m = Message::text("c", "conv", Sender::user("u"), "/ nope");
        assert_eq!(m.command(), None);
        let m = Message::text("c", "conv", Sender::user("u"), "hello /x");
        assert_eq!(m.command(), None);
    }

    #[test]
    fn event_json_round_trip() {
        let e = Event::Message(Message::text("web", "c1", Sender::user("u1"), "hi"));
        let json = serde_json::to_string(&e).expect("serialise event");
        assert!(json.contains("\"type\":\"message\""));
        let back: Event = serde_json::from_str(&json).expect("deserialise event");
        assert_eq!(back, e);
    }

    /// Events stored before interactions, joins and reactions kept `raw` (queued
    /// tasks hold events as JSON) still decode, with `raw: None`.
    #[test]
    fn events_without_raw_still_decode() {
        let sender = r#"{"id":"u1","roles":[]}"#;
        let interaction = format!(
            r#"{{"type":"interaction","channel":"web","conversation":"c1","sender":{sender},"value":"yes","id":"i1"}}"#
        );
        let e: Event = serde_json::from_str(&interaction).expect("interaction without raw");
        let Event::Interaction(i) = &e else {
            panic!("not an interaction: {e:?}")
        };
        assert_eq!(i.value, "yes");
        assert_eq!(i.raw, None);
        assert!(
            !serde_json::to_string(&e)
                .expect("serialise")
                .contains("raw")
        );

        let joined = format!(
            r#"{{"type":"member_joined","channel":"web","conversation":"c1","user":{sender}}}"#
        );
        let e: Event = serde_json::from_str(&joined).expect("member_joined without raw");
        let Event::MemberJoined { user, raw, .. } = &e else {
            panic!("not a join: {e:?}")
        };
        assert_eq!(user.id, UserId::from("u1"));
        assert_eq!(raw, &None);
        assert!(
            !serde_json::to_string(&e)
                .expect("serialise")
                .contains("raw")
        );

        let reaction = format!(
            r#"{{"type":"reaction","channel":"web","conversation":"c1","message":"m1","user":{sender},"emoji":"👍"}}"#
        );
        let e: Event = serde_json::from_str(&reaction).expect("reaction without raw");
        let Event::Reaction { emoji, raw, .. } = &e else {
            panic!("not a reaction: {e:?}")
        };
        assert_eq!(emoji, "👍");
        assert_eq!(raw, &None);
        assert!(
            !serde_json::to_string(&e)
                .expect("serialise")
                .contains("raw")
        );
    }

    #[test]
    fn raw_round_trips_on_interactions_joins_and_reactions() {
        let raw = Some(serde_json::json!({"platform": "payload"}));
        let events = [
            Event::Interaction(Interaction {
                channel: "web".into(),
                conversation: "c1".into(),
                sender: Sender::user("u1"),
                value: "yes".into(),
                id: MessageId("i1".into()),
                raw: raw.clone(),
            }),
            Event::MemberJoined {
                channel: "web".into(),
                conversation: "c1".into(),
                user: Sender::user("u1"),
                raw: raw.clone(),
            },
            Event::Reaction {
                channel: "web".into(),
                conversation: "c1".into(),
                message: MessageId("m1".into()),
                user: Sender::user("u1"),
                emoji: "👍".into(),
                raw,
            },
        ];
        for e in events {
            let json = serde_json::to_string(&e).expect("serialise event");
            let back: Event = serde_json::from_str(&json).expect("deserialise event");
            assert_eq!(back, e);
        }
    }
}
