//! Loading documents: Markdown, HTML, PDF and plain text, from files or bytes, and folders.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KnowledgeError;

/// The default largest document, in bytes (20 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 20 * 1024 * 1024;

/// The types of document the knowledge base reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DocKind {
    /// Markdown (`.md`, `.markdown`): sections from its headings.
    Markdown,
    /// HTML (`.html`, `.htm`): the visible text, the title from `<title>` (else the first
    /// `<h1>`), sections from its headings.
    Html,
    /// PDF (`.pdf`, feature `pdf`): the text of each page, with its page number.
    Pdf,
    /// Plain UTF-8 text (`.txt`).
    Text,
}

impl DocKind {
    /// The kind's name: `markdown`, `html`, `pdf`, `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Markdown => "markdown",
            DocKind::Html => "html",
            DocKind::Pdf => "pdf",
            DocKind::Text => "text",
        }
    }

    /// The kind of a file extension (without the dot, any case); `None` for one it does not
    /// read.
    pub fn from_extension(ext: &str) -> Option<DocKind> {
        match ext.to_ascii_lowercase().as_str() {
            "md" | "markdown" => Some(DocKind::Markdown),
            "html" | "htm" => Some(DocKind::Html),
            "pdf" if cfg!(feature = "pdf") => Some(DocKind::Pdf),
            "txt" => Some(DocKind::Text),
            _ => None,
        }
    }

    /// A declared kind (an upload's): a kind's name, a file extension or a MIME type
    /// (`text/markdown`, `text/html`, `application/pdf`, `text/plain`).
    pub fn parse(s: &str) -> Option<DocKind> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.split(';').next().unwrap_or_default().trim();
        match s {
            "markdown" | "text/markdown" | "text/x-markdown" => Some(DocKind::Markdown),
            "text" | "text/plain" => Some(DocKind::Text),
            "html" | "text/html" | "application/xhtml+xml" => Some(DocKind::Html),
            "application/pdf" => DocKind::from_extension("pdf"),
            other => DocKind::from_extension(other.trim_start_matches('.')),
        }
    }

    /// The kind of a path, by its extension.
    pub fn of_path(path: &Path) -> Option<DocKind> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(DocKind::from_extension)
    }
}

/// How documents are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    /// The largest document, in bytes (default [`DEFAULT_MAX_BYTES`]).
    pub max_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A part of a document under one heading (or one page of a PDF).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// The heading it is under; `None` before the first heading.
    pub heading: Option<String>,
    /// Its page, for PDFs (from 1).
    pub page: Option<u32>,
    /// Its text (Markdown for Markdown documents).
    pub text: String,
}

/// A loaded document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Where it came from: a path or a URL, as given.
    pub source: String,
    /// Its type.
    pub kind: DocKind,
    /// Its title: the first heading (or the HTML `<title>`), else the file's name.
    pub title: String,
    /// Its sections, in order; none is empty.
    pub sections: Vec<Section>,
    /// The SHA-256 of its raw bytes, in lowercase hex.
    pub hash: String,
}

impl Document {
    /// Load the file at `path`, by its extension. Blocking: in async code, call it from
    /// `tokio::task::spawn_blocking`.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Document, KnowledgeError> {
        let source = path.display().to_string();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(kind) = DocKind::from_extension(&ext) else {
            return Err(KnowledgeError::Unsupported {
                source_name: source,
                kind: ext,
            });
        };
        let io = |error| KnowledgeError::Io {
            source_name: source.clone(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let too_large = |size| KnowledgeError::TooLarge {
            source_name: source.clone(),
            size,
            limit: options.max_bytes,
        };
        if size > options.max_bytes {
            return Err(too_large(size));
        }
        // The file may grow between the check and the read: read one byte past the limit.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(options.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > options.max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Document::from_bytes(&source, kind, &bytes, options)
    }

    /// A document from `bytes` of a declared `kind` (a download, an upload), named `source`
    /// (its URL or name). Blocking for large PDFs.
    pub fn from_bytes(
        source: &str,
        kind: DocKind,
        bytes: &[u8],
        options: &LoadOptions,
    ) -> Result<Document, KnowledgeError> {
        if bytes.len() as u64 > options.max_bytes {
            return Err(KnowledgeError::TooLarge {
                source_name: source.to_owned(),
                size: bytes.len() as u64,
                limit: options.max_bytes,
            });
        }
        let hash = sha256_hex(bytes);
        let (title, sections) = match kind {
            DocKind::Markdown => markdown(text_of(source, kind, bytes)?),
            DocKind::Html => html(text_of(source, kind, bytes)?),
            DocKind::Text => (None, plain(text_of(source, kind, bytes)?)),
            DocKind::Pdf => (None, pdf(source, bytes)?),
        };
        let sections: Vec<Section> = sections
            .into_iter()
            .filter(|s| !s.text.trim().is_empty())
            .collect();
        if sections.is_empty() {
            return Err(KnowledgeError::Empty {
                source_name: source.to_owned(),
                hint: if kind == DocKind::Pdf {
                    " (a scanned PDF needs OCR first)"
                } else {
                    ""
                },
            });
        }
        let title = title
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| name_of(source));
        Ok(Document {
            source: source.to_owned(),
            kind,
            title,
            sections,
            hash,
        })
    }

    /// The document's text, its sections joined by blank lines.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self.sections.iter().map(|s| s.text.as_str()).collect();
        parts.join("\n\n")
    }
}

/// The SHA-256 of `bytes` in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The last part of a path or URL, without its extension: a title of last resort.
fn name_of(source: &str) -> String {
    let trimmed = source
        .split(['?', '#'])
        .next()
        .unwrap_or(source)
        .trim_end_matches(['/', '\\']);
    let last = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    let stem = match last.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => last,
    };
    if stem.is_empty() {
        source.to_owned()
    } else {
        stem.to_owned()
    }
}

/// The UTF-8 text of a text document, refusing binary content.
fn text_of<'a>(source: &str, kind: DocKind, bytes: &'a [u8]) -> Result<&'a str, KnowledgeError> {
    let binary = |detail: String| KnowledgeError::Binary {
        source_name: source.to_owned(),
        kind: kind.as_str(),
        detail,
    };
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(binary(format!("a NUL byte at offset {at}")));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| binary(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn plain(text: &str) -> Vec<Section> {
    vec![Section {
        heading: None,
        page: None,
        text: text.trim().to_owned(),
    }]
}

/// Sections of a Markdown text at its headings; the title is the first level-1 heading
/// (else the first heading).
fn markdown(text: &str) -> (Option<String>, Vec<Section>) {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let mut sections = Vec::new();
    let mut title: Option<(HeadingLevel, String)> = None;
    let mut heading: Option<String> = None;
    let mut body_from = 0usize;
    let mut in_heading: Option<(HeadingLevel, usize, String)> = None;
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH);
    for (event, range) in parser.into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                in_heading = Some((level, range.start, String::new()));
            }
            Event::Text(t) | Event::Code(t) if in_heading.is_some() => {
                if let Some((_, _, words)) = &mut in_heading {
                    words.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, start, words)) = in_heading.take() {
                    sections.push(Section {
                        heading: heading.take(),
                        page: None,
                        text: text[body_from..start].trim().to_owned(),
                    });
                    let words = words.trim().to_owned();
                    let better = match &title {
                        None => true,
                        Some((l, _)) => *l != HeadingLevel::H1 && level == HeadingLevel::H1,
                    };
                    if better && !words.is_empty() {
                        title = Some((level, words.clone()));
                    }
                    heading = (!words.is_empty()).then_some(words);
                    body_from = range.end;
                }
            }
            _ => {}
        }
    }
    sections.push(Section {
        heading,
        page: None,
        text: text[body_from.min(text.len())..].trim().to_owned(),
    });
    (title.map(|(_, t)| t), sections)
}

/// The visible text of an HTML page in sections at its headings, and its title.
fn html(text: &str) -> (Option<String>, Vec<Section>) {
    use scraper::{ElementRef, Html, Node};
    let page = Html::parse_document(text);
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut title = None;
    let mut first_h1 = None;
    let mut sections = Vec::new();
    let mut heading: Option<String> = None;
    let mut buf = String::new();
    // An explicit stack, so deeply nested markup cannot overflow the thread's stack.
    enum Step<N> {
        Enter(N),
        Leave(&'static str),
    }
    let mut stack = vec![Step::Enter(page.tree.root())];
    while let Some(step) = stack.pop() {
        let node = match step {
            Step::Leave(brk) => {
                buf.push_str(brk);
                continue;
            }
            Step::Enter(node) => node,
        };
        match node.value() {
            Node::Text(t) => {
                let t: &str = t;
                if t.starts_with(char::is_whitespace) && !buf.ends_with([' ', '\n']) {
                    buf.push(' ');
                }
                buf.push_str(&squash(t));
                if t.ends_with(char::is_whitespace) && !t.trim().is_empty() {
                    buf.push(' ');
                }
                continue;
            }
            Node::Element(e) => {
                let name = e.name();
                if name == "title" {
                    if title.is_none()
                        && let Some(el) = ElementRef::wrap(node)
                    {
                        title = Some(squash(&el.text().collect::<String>()));
                    }
                    continue;
                }
                if matches!(
                    name,
                    "script"
                        | "style"
                        | "noscript"
                        | "template"
                        | "svg"
                        | "iframe"
                        | "object"
                        | "canvas"
                ) || e.attr("hidden").is_some()
                {
                    continue;
                }
                if matches!(name, "h1" | "h2" | "h3" | "h4" | "h5" | "h6") {
                    let words = ElementRef::wrap(node)
                        .map(|el| squash(&el.text().collect::<String>()))
                        .unwrap_or_default();
                    sections.push(Section {
                        heading: heading.take(),
                        page: None,
                        text: tidy(&buf),
                    });
                    buf.clear();
                    if name == "h1" && first_h1.is_none() && !words.is_empty() {
                        first_h1 = Some(words.clone());
                    }
                    heading = (!words.is_empty()).then_some(words);
                    continue;
                }
                if name == "br" {
                    buf.push('\n');
                    continue;
                }
                match block_break(name) {
                    Some("\n\n") => {
                        buf.push_str("\n\n");
                        stack.push(Step::Leave("\n\n"));
                    }
                    Some(brk) => stack.push(Step::Leave(brk)),
                    None => {}
                }
            }
            _ => {}
        }
        let children: Vec<_> = node.children().collect();
        for child in children.into_iter().rev() {
            stack.push(Step::Enter(child));
        }
    }
    sections.push(Section {
        heading,
        page: None,
        text: tidy(&buf),
    });
    (title.filter(|t| !t.is_empty()).or(first_h1), sections)
}

/// The break a block element makes: a paragraph's (`"\n\n"`, before and after it) or a
/// line's (`"\n"`, after it: list items, table rows).
fn block_break(name: &str) -> Option<&'static str> {
    match name {
        "li" | "tr" | "dt" | "dd" | "figcaption" | "caption" => Some("\n"),
        "td" | "th" => Some(" "),
        "p" | "div" | "ul" | "ol" | "table" | "section" | "article" | "main" | "header"
        | "footer" | "nav" | "aside" | "blockquote" | "pre" | "dl" | "figure" | "form" | "hr"
        | "body" | "details" | "summary" | "address" => Some("\n\n"),
        _ => None,
    }
}

/// Lines trimmed, runs of blank lines cut to one.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push_str("\n\n");
        } else if !out.is_empty() {
            out.push('\n');
        }
        blank = false;
        out.push_str(line);
    }
    out
}

/// The text of each page of a PDF. pdf-extract may panic on malformed files: the panic is
/// caught and reported as a damaged PDF.
#[cfg(feature = "pdf")]
fn pdf(source: &str, bytes: &[u8]) -> Result<Vec<Section>, KnowledgeError> {
    let corrupt = |detail: String| KnowledgeError::CorruptPdf {
        source_name: source.to_owned(),
        detail,
    };
    let head = &bytes[..bytes.len().min(1024)];
    if !head.windows(5).any(|w| w == b"%PDF-") {
        return Err(corrupt("no %PDF- header".into()));
    }
    let encrypted = bytes.windows(8).any(|w| w == b"/Encrypt");
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes));
    let pages = match pages {
        Ok(Ok(pages)) => pages,
        _ if encrypted => {
            return Err(KnowledgeError::EncryptedPdf {
                source_name: source.to_owned(),
            });
        }
        Ok(Err(e)) => return Err(corrupt(e.to_string())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the parser gave up".into());
            return Err(corrupt(why));
        }
    };
    Ok(pages
        .into_iter()
        .enumerate()
        .map(|(i, text)| Section {
            heading: None,
            page: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            text: tidy(&text),
        })
        .collect())
}

#[cfg(not(feature = "pdf"))]
fn pdf(source: &str, _bytes: &[u8]) -> Result<Vec<Section>, KnowledgeError> {
    Err(KnowledgeError::Unsupported {
        source_name: source.to_owned(),
        kind: "pdf (flowbot-llm was built without its 'pdf' feature)".into(),
    })
}

/// The files under a folder: those the knowledge base reads and the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Folder {
    /// Supported files, sorted.
    pub files: Vec<PathBuf>,
    /// Files of other types, sorted, for the caller to report by name.
    pub unsupported: Vec<PathBuf>,
}

/// List the files under `dir`, recursively, skipping hidden files and folders (names
/// starting with `.`) and not following links to folders.
pub fn walk(dir: &Path) -> Result<Folder, KnowledgeError> {
    let mut folder = Folder::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let io = |error| KnowledgeError::Io {
            source_name: current.display().to_string(),
            error,
        };
        for entry in std::fs::read_dir(&current).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(io)?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
                if DocKind::of_path(&path).is_some() {
                    folder.files.push(path);
                } else {
                    folder.unsupported.push(path);
                }
            }
        }
    }
    folder.files.sort();
    folder.unsupported.sort();
    Ok(folder)
}
