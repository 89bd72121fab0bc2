//! What can go wrong loading or running a model.

use std::path::PathBuf;

use flowbot_core::llm::{ModelError, ModelErrorKind};

/// An error of flowbot-gpu. Each names what was wrong: the file, the setting, the queue.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model file is missing, unreadable or not what it should be.
    #[error("{path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A setting is out of range or names something this crate does not know.
    #[error("{setting}: {reason}")]
    Settings {
        /// The setting, e.g. `max_batch`.
        setting: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The tokenizer refused a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// libtorch failed while running the model.
    #[error("libtorch: {0}")]
    Torch(String),
    /// The device ran out of memory even for a batch of one text.
    #[error("out of memory on {device} with a batch of one text of {tokens} tokens")]
    OutOfMemory {
        /// The device, e.g. `cuda:0`.
        device: String,
        /// The text's length in tokens.
        tokens: usize,
    },
    /// The batcher's queue holds `capacity` texts already: try again later.
    #[error("the inference queue is full ({capacity} texts waiting)")]
    QueueFull {
        /// How many texts the queue holds.
        capacity: usize,
    },
    /// The batcher's worker has stopped (the model failed to run or the process is ending).
    #[error("the inference worker has stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn load(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Error {
        Error::Load {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn settings(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::Settings {
            setting,
            reason: reason.into(),
        }
    }

    /// True when the same call may succeed later: the queue was full.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::QueueFull { .. })
    }

    /// As a model error for [`Embedder`](flowbot_core::llm::Embedder) callers, under the
    /// model's `name`.
    pub fn into_model_error(self, name: &str) -> ModelError {
        let kind = match &self {
            Error::QueueFull { .. } => ModelErrorKind::Overloaded,
            Error::OutOfMemory { .. } => ModelErrorKind::TooLarge,
            Error::Load { .. } | Error::Settings { .. } => ModelErrorKind::Config,
            Error::Tokenizer(_) => ModelErrorKind::BadRequest,
            Error::Torch(_) | Error::Stopped => ModelErrorKind::Server,
        };
        ModelError::new(kind, name, self.to_string())
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(torch_message(&e))
    }
}

/// libtorch's message without the C++ stack it appends ("Exception raised from …").
pub(crate) fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let cut = text
        .find("\nException raised from")
        .or_else(|| text.find("Exception raised from"));
    let head = match cut {
        Some(i) => &text[..i],
        None => text.as_str(),
    };
    head.trim().to_owned()
}

/// A result of flowbot-gpu.
pub type Result<T, E = Error> = std::result::Result<T, E>;
