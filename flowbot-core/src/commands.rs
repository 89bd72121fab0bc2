//! Commands a bot answers, described for platforms that declare them (Telegram's command
//! menu, Discord's slash commands). `flowbot-rules` lists its rules' commands this way.

/// One argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandParam {
    /// Its name.
    pub name: String,
    /// `word`, `int`, `float`, `bool` or `duration`.
    pub kind: &'static str,
    /// Whether it may be left out.
    pub optional: bool,
    /// Whether it takes the rest of the text.
    pub rest: bool,
}

/// A command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// The name, without the slash.
    pub name: String,
    /// What it does, if described.
    pub description: Option<String>,
    /// `/name <arg> …`.
    pub usage: String,
    /// Its arguments, in order.
    pub params: Vec<CommandParam>,
}
