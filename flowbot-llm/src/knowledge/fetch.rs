//! Documents at URLs, fetched through the outbound network guard (feature `urls`).

#[cfg(feature = "urls")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "urls")]
use flowbot_core::net::{NetError, NetPolicy};

use super::load::Document;
#[cfg(feature = "urls")]
use super::load::{DocKind, LoadOptions};
use super::{Knowledge, KnowledgeError};

/// How long fetching one URL may take, body included, unless
/// [`Knowledge::with_fetch_timeout`] says otherwise.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The network policy of a knowledge base and the client it guards.
#[cfg(feature = "urls")]
#[derive(Debug, Clone)]
pub(crate) struct Net {
    policy: Arc<NetPolicy>,
    client: Result<reqwest::Client, String>,
}

#[cfg(feature = "urls")]
impl Net {
    pub(crate) fn new(policy: Arc<NetPolicy>) -> Self {
        let builder =
            reqwest::Client::builder().user_agent(concat!("flowbot/", env!("CARGO_PKG_VERSION")));
        let client = policy
            .apply(builder)
            .build()
            .map_err(|e| format!("the HTTP client could not be built: {e}"));
        Net { policy, client }
    }
}

impl Knowledge {
    /// Fetch URL sources through `policy` (an allow-list, or [`NetPolicy::open`] for URLs
    /// only operators write): each URL is checked before it is sent, host names are
    /// resolved to addresses the policy allows, and redirects are checked too. Without a
    /// policy, URL sources are refused.
    #[cfg(feature = "urls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "urls")))]
    pub fn with_net_policy(mut self, policy: Arc<NetPolicy>) -> Self {
        self.net = Some(Net::new(policy));
        self
    }

    /// How long fetching one URL may take, body included (default
    /// [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The document at `url` (`http` or `https`), its type from the response's
    /// `Content-Type` (HTML, Markdown, plain text, PDF), else from the URL path's
    /// extension. Its body may not exceed [`LoadOptions::max_bytes`](super::LoadOptions):
    /// a larger `Content-Length` is refused before reading, and reading stops past the
    /// limit. A status other than 2xx is [`KnowledgeError::Fetch`] naming the URL and
    /// status; a URL the network policy refuses, [`KnowledgeError::Refused`]; no policy
    /// set, [`KnowledgeError::NoNetPolicy`].
    pub async fn fetch(&self, url: &str) -> Result<Document, KnowledgeError> {
        #[cfg(feature = "urls")]
        {
            fetch(self, url).await
        }
        #[cfg(not(feature = "urls"))]
        {
            Err(KnowledgeError::Unsupported {
                source_name: url.to_owned(),
                kind: "url (flowbot-llm was built without its 'urls' feature)".into(),
            })
        }
    }
}

#[cfg(feature = "urls")]
fn fetch_error(url: &str, detail: impl Into<String>, transient: bool) -> KnowledgeError {
    KnowledgeError::Fetch {
        source_name: url.to_owned(),
        status: None,
        detail: detail.into(),
        transient,
    }
}

/// A reqwest error in words (without its URL), or the guard's refusal inside it.
#[cfg(feature = "urls")]
fn request_error(url: &str, e: reqwest::Error) -> KnowledgeError {
    if let Some(net) = NetError::find(&e)
        && net.is_refusal()
    {
        return KnowledgeError::Refused {
            source_name: url.to_owned(),
            detail: net.to_string(),
        };
    }
    let transient = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body();
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut detail = format!("{what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    fetch_error(url, detail, transient)
}

/// The kind of a fetched document: its `Content-Type` when it names one the knowledge base
/// reads (plain text served for a `.md` path is Markdown), else the path's extension.
#[cfg(feature = "urls")]
fn kind_of(url: &reqwest::Url, content_type: Option<&str>) -> Result<DocKind, KnowledgeError> {
    let by_path = std::path::Path::new(url.path());
    let from_path = DocKind::of_path(by_path);
    let mime = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty());
    let from_type = mime.as_deref().and_then(|m| match m {
        "text/html"
        | "application/xhtml+xml"
        | "text/markdown"
        | "text/x-markdown"
        | "text/plain"
        | "application/pdf" => DocKind::parse(m),
        _ => None,
    });
    match (from_type, from_path) {
        (Some(DocKind::Text), Some(DocKind::Markdown)) => Ok(DocKind::Markdown),
        (Some(kind), _) | (None, Some(kind)) => Ok(kind),
        (None, None) => Err(KnowledgeError::Unsupported {
            source_name: url.to_string(),
            kind: mime.unwrap_or_else(|| {
                by_path
                    .extension()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
        }),
    }
}

#[cfg(feature = "urls")]
async fn fetch(kb: &Knowledge, url: &str) -> Result<Document, KnowledgeError> {
    use futures_util::StreamExt;

    let Some(net) = &kb.net else {
        return Err(KnowledgeError::NoNetPolicy {
            source_name: url.to_owned(),
        });
    };
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| fetch_error(url, format!("not a valid URL: {e}"), false))?;
    net.policy
        .check_url(&parsed)
        .map_err(|e| KnowledgeError::Refused {
            source_name: url.to_owned(),
            detail: e.to_string(),
        })?;
    let client = net
        .client
        .as_ref()
        .map_err(|e| fetch_error(url, e.clone(), false))?;
    let options: &LoadOptions = &kb.options.load;
    let response = client
        .get(parsed.clone())
        .timeout(kb.fetch_timeout)
        .send()
        .await
        .map_err(|e| request_error(url, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(KnowledgeError::Fetch {
            source_name: url.to_owned(),
            status: Some(status.as_u16()),
            detail: format!("HTTP status {status}"),
            transient: status.is_server_error() || status.as_u16() == 429,
        });
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let kind = kind_of(response.url(), content_type.as_deref())?;
    let too_large = |size| KnowledgeError::TooLarge {
        source_name: url.to_owned(),
        size,
        limit: options.max_bytes,
    };
    if let Some(size) = response.content_length()
        && size > options.max_bytes
    {
        return Err(too_large(size));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| request_error(url, e))?;
        body.extend_from_slice(&piece);
        if body.len() as u64 > options.max_bytes {
            return Err(too_large(body.len() as u64));
        }
    }
    let source = url.to_owned();
    let options = options.clone();
    tokio::task::spawn_blocking(move || Document::from_bytes(&source, kind, &body, &options))
        .await
        .map_err(|e| KnowledgeError::CorruptPdf {
            source_name: url.to_owned(),
            detail: format!("the reader stopped: {e}"),
        })?
}
