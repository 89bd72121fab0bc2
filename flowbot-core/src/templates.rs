//! A limit on minijinja template source, checked before a template is compiled.
//!
//! minijinja parses a chain of operators (`a + b + c …`, `a.b.c …`, `a|f|g …`, `- - a`,
//! `a if b else c if …`) into a tree as deep as the chain is long, and compiles and drops that
//! tree recursively. A few thousand operators in one expression overflow a thread's stack,
//! which aborts the whole process: no error, no unwinding. Rules, workflows and prompts come
//! from files and the admin API, so every crate that compiles one checks its source here
//! first; real templates stay far below the limit.

/// The most operators one `{{ … }}` or `{% … %}` tag (or one bare expression) may hold:
/// arithmetic, comparison and logic operators, `.`, `[`, `(`, `|` and `~`, each counted once
/// per character outside string literals.
pub const MAX_OPERATORS: usize = 250;

/// A template tag (or expression) with more operators than [`MAX_OPERATORS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an expression with {operators} operators, more than the {MAX_OPERATORS} one expression may hold (at `{excerpt}…`)"
)]
pub struct TooComplex {
    /// How many operators the tag holds.
    pub operators: usize,
    /// The tag's first 40 characters.
    pub excerpt: String,
}

/// Check a template's source: every tag within [`MAX_OPERATORS`]. The error names the tag.
pub fn check(source: &str) -> Result<(), TooComplex> {
    let mut rest = source;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            Some('#') => {
                // A comment: nothing in it is parsed.
                rest = after.find("#}").map_or("", |end| &after[end + 2..]);
                continue;
            }
            _ => {
                rest = after;
                continue;
            }
        };
        let tag = &after[1..];
        let (count, len) = operators(tag, Some(close));
        if count > MAX_OPERATORS {
            return Err(too_many(count, &tag[..len]));
        }
        rest = tag.get(len + close.len()..).unwrap_or("");
    }
    Ok(())
}

/// Check a bare expression (the inside of `{{ … }}`).
pub fn check_expression(expr: &str) -> Result<(), TooComplex> {
    match operators(expr, None) {
        (count, _) if count > MAX_OPERATORS => Err(too_many(count, expr)),
        _ => Ok(()),
    }
}

fn too_many(count: usize, tag: &str) -> TooComplex {
    TooComplex {
        operators: count,
        excerpt: tag.trim().chars().take(40).collect(),
    }
}

/// The operators in `s` up to `close` outside string literals (or to the end), and the
/// byte length scanned.
fn operators(s: &str, close: Option<&str>) -> (usize, usize) {
    const WORDS: [&str; 7] = ["and", "or", "not", "in", "is", "if", "else"];
    let mut count = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(close) = close
            && s[i..].starts_with(close)
        {
            return (count, i);
        }
        match c {
            '"' | '\'' => {
                // A string literal, with backslash escapes.
                while let Some((_, d)) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '+' | '-' | '*' | '/' | '%' | '~' | '|' | '.' | '[' | '(' | '<' | '>' | '=' | '!' => {
                count += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                if WORDS.contains(&&s[i..end]) {
                    count += 1;
                }
            }
            _ => {}
        }
    }
    (count, s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_templates_pass() {
        for t in [
            "Hello {{ user.name | title }}, you have {{ n + 1 }} messages.",
            "{% if a and not b %}{{ x[0].y ~ '%}}' }}{% endif %}{# {{ ++++ }} #}",
            "{% for i in range(3) %}{{ loop.index }}{% endfor %}",
            "no tags at all { } {x}",
            "{{ unterminated",
        ] {
            assert_eq!(check(t), Ok(()), "{t}");
        }
        assert_eq!(check_expression("inputs.severity >= 3"), Ok(()));
    }

    #[test]
    fn long_chains_are_refused() {
        let chain = format!("{{{{ a{} }}}}", "%41".repeat(1000));
        let e = check(&format!("ok {{{{ x }}}} then {chain}")).expect_err("too long");
        assert_eq!(e.operators, 1000);
        let e = e.to_string();
        assert!(
            e.contains("1000 operators") && e.contains("at `a%41"),
            "{e}"
        );
        assert!(check(&format!("{{% if {} %}}{{% endif %}}", "-".repeat(300))).is_err());
        assert!(check_expression(&"a.".repeat(300)).is_err());
        // Operators inside strings and comments do not count.
        let quoted = format!(
            "{{{{ '{}' }}}}{{# {} #}}",
            "+".repeat(1000),
            "-".repeat(1000)
        );
        assert_eq!(check(&quoted), Ok(()));
        // Tags are counted one by one.
        let many = "{{ a + b }}".repeat(1000);
        assert_eq!(check(&many), Ok(()));
    }
}
