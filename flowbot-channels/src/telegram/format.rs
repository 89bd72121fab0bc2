//! Outbound text in Telegram's form: Markdown (CommonMark) rendered to the HTML subset the
//! Bot API accepts with `parse_mode: "HTML"`, and long texts cut into messages under its
//! length limit.

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

/// Telegram's limit on a message's text, in UTF-16 code units.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// Escape text for Telegram HTML (`&`, `<`, `>`, and `"` for attributes).
pub(crate) fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Render CommonMark as Telegram HTML: bold, italic, strikethrough, inline code, code blocks
/// (with their language), links, block quotes; headings become bold lines, list items
/// bullets or numbers, images links. Raw HTML in the source is shown as text.
pub(crate) fn markdown_to_html(md: &str) -> String {
    let mut out = String::with_capacity(md.len() + 16);
    // For each open list: the next item's number (None: bullets).
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut in_code_block = false;
    for event in Parser::new_ext(md, Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Strong => out.push_str("<b>"),
                Tag::Emphasis => out.push_str("<i>"),
                Tag::Strikethrough => out.push_str("<s>"),
                Tag::Heading { .. } => out.push_str("<b>"),
                Tag::BlockQuote(_) => out.push_str("<blockquote>"),
                Tag::CodeBlock(kind) => {
                    in_code_block = true;
                    match kind {
                        CodeBlockKind::Fenced(lang) if !lang.trim().is_empty() => {
                            out.push_str("<pre><code class=\"language-");
                            escape(lang.split_whitespace().next().unwrap_or(""), &mut out);
                            out.push_str("\">");
                        }
                        _ => out.push_str("<pre><code>"),
                    }
                }
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    out.push_str("<a href=\"");
                    escape(&dest_url, &mut out);
                    out.push_str("\">");
                }
                Tag::List(start) => {
                    if !lists.is_empty() && !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    lists.push(start);
                }
                Tag::Item => {
                    let depth = lists.len().saturating_sub(1);
                    out.push_str(&"  ".repeat(depth));
                    match lists.last_mut() {
                        Some(Some(n)) => {
                            out.push_str(&format!("{n}. "));
                            *n += 1;
                        }
                        _ => out.push_str("• "),
                    }
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Strong => out.push_str("</b>"),
                TagEnd::Emphasis => out.push_str("</i>"),
                TagEnd::Strikethrough => out.push_str("</s>"),
                TagEnd::Heading(_) => out.push_str("</b>\n\n"),
                TagEnd::BlockQuote(_) => {
                    trim_end_newlines(&mut out);
                    out.push_str("</blockquote>\n\n");
                }
                TagEnd::CodeBlock => {
                    in_code_block = false;
                    trim_end_newlines(&mut out);
                    out.push_str("</code></pre>\n\n");
                }
                TagEnd::Link | TagEnd::Image => out.push_str("</a>"),
                TagEnd::Paragraph => out.push_str(if lists.is_empty() { "\n\n" } else { "\n" }),
                TagEnd::Item if !out.ends_with('\n') => out.push('\n'),
                TagEnd::List(_) => {
                    lists.pop();
                    if lists.is_empty() {
                        out.push('\n');
                    }
                }
                _ => {}
            },
            Event::Text(t) => escape(&t, &mut out),
            Event::Code(t) => {
                out.push_str("<code>");
                escape(&t, &mut out);
                out.push_str("</code>");
            }
            Event::Html(t) | Event::InlineHtml(t) => escape(&t, &mut out),
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::Rule => out.push_str("——————\n\n"),
            Event::TaskListMarker(done) => out.push_str(if done { "☑ " } else { "☐ " }),
            Event::FootnoteReference(t) | Event::InlineMath(t) | Event::DisplayMath(t) => {
                escape(&t, &mut out)
            }
        }
    }
    debug_assert!(!in_code_block);
    trim_end_newlines(&mut out);
    out
}

fn trim_end_newlines(s: &mut String) {
    while s.ends_with('\n') {
        s.pop();
    }
}

/// Cut `text` into pieces of at most `max` UTF-16 code units, at paragraph breaks, else
/// line breaks, else spaces, else anywhere (never inside a character).
pub(crate) fn split(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > max {
        // The longest prefix within the limit.
        let mut units = 0;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > max {
                break;
            }
            units += c.len_utf16();
            end = i + c.len_utf8();
        }
        let head = &rest[..end];
        let cut = head
            .rfind("\n\n")
            .or_else(|| head.rfind('\n'))
            .or_else(|| head.rfind(' '))
            .filter(|&i| i > 0)
            .unwrap_or(end);
        out.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_telegram_html() {
        assert_eq!(
            markdown_to_html("**Order** _shipped_ ~~late~~ `#42` & <b>raw</b>"),
            "<b>Order</b> <i>shipped</i> <s>late</s> <code>#42</code> &amp; &lt;b&gt;raw&lt;/b&gt;"
        );
        assert_eq!(
            markdown_to_html("# Title\n\nSee [the docs](https://x.test/?a=1&b=\"2\")."),
            "<b>Title</b>\n\nSee <a href=\"https://x.test/?a=1&amp;b=&quot;2&quot;\">the docs</a>."
        );
        assert_eq!(
            markdown_to_html("- one\n- two\n  1. a\n  2. b\n\nafter"),
            "• one\n• two\n  1. a\n  2. b\n\nafter"
        );
        assert_eq!(
            markdown_to_html("```rust\nfn main() {}\n```\n> quoted"),
            "<pre><code class=\"language-rust\">fn main() {}</code></pre>\n\n<blockquote>quoted</blockquote>"
        );
    }

    #[test]
    fn long_texts_split_at_breaks_within_the_limit() {
        let para = "word ".repeat(300); // 1,500 units
        let text = format!("{para}\n\n{para}\n\n{para}");
        let parts = split(&text, 4096);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| utf16_len(p) <= 4096));
        let squeeze = |s: &str| s.replace([' ', '\n'], "");
        assert_eq!(squeeze(&parts.concat()), squeeze(&text));
        // No break at all: cut between characters, counting UTF-16 units (emoji are two).
        let emoji = "😀".repeat(3000);
        let parts = split(&emoji, 4096);
        assert_eq!(parts.len(), 2);
        assert_eq!(utf16_len(parts[0]), 4096);
        assert_eq!(parts[0].chars().count() + parts[1].chars().count(), 3000);
        assert_eq!(split("", 10), [""]);
    }
}
