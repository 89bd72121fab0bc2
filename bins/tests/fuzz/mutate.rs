//! The fuzz harness's input side: the committed seed corpus (`fuzz/corpus/<target>/`), mutants
//! made from it with a fixed-seed PRNG, panic capture, and failure reports that save the input
//! under `fuzz/crashes/`.
//!
//! Each target gets its seeds, then `FLOWBOT_FUZZ_CASES` mutants (default [`DEFAULT_CASES`]).
//! A mutant is a seed with one to three changes: byte flips, interesting bytes and tokens,
//! deletions, duplications, truncation, splicing with another seed, deep nesting, huge
//! numbers, long strings, invalid UTF-8, or a structural change (a value of the parsed seed
//! replaced with one of another type or an extreme one, a key dropped or doubled). The PRNG
//! seed is `FLOWBOT_FUZZ_SEED` (default [`DEFAULT_SEED`]) mixed with the target's name, so a
//! run is reproducible and each target sees its own sequence.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)] // each test uses some; reports go to stderr

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use serde_json::{Map, Value};

/// Mutants per target when `FLOWBOT_FUZZ_CASES` is unset: a CI-sized run.
pub const DEFAULT_CASES: usize = 250;
/// The PRNG seed when `FLOWBOT_FUZZ_SEED` is unset.
pub const DEFAULT_SEED: u64 = 0x5EED_F10B_0710;

/// How a target's inputs are structured, for the mutations that know the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON text.
    Json,
    /// TOML text.
    Toml,
    /// YAML text.
    Yaml,
    /// `application/x-www-form-urlencoded` (a value may hold JSON, as Slack's `payload`).
    Form,
    /// `NAME=value` lines (environment variables).
    Env,
}

/// One input: where it came from and its bytes.
#[derive(Debug, Clone)]
pub struct Case {
    /// `seed <file>` or `mutant <n> of <file>`.
    pub label: String,
    /// The input.
    pub bytes: Vec<u8>,
}

impl Case {
    /// The input as text, lossily (invalid UTF-8 becomes U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Whether the input is a seed (kept as it is in the corpus).
    pub fn is_seed(&self) -> bool {
        self.label.starts_with("seed ")
    }

    /// Whether the input is a seed that must be accepted: every seed but the inputs that
    /// once failed, kept in the corpus as `crash-*` files.
    pub fn must_be_valid(&self) -> bool {
        self.is_seed() && !self.label.starts_with("seed crash-")
    }
}

/// The repository's `fuzz/` directory.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds bins/")
        .join("fuzz")
}

/// The seeds of `target`, by file name, in name order.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).expect("read seed");
            (name, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// The run's settings, from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The PRNG seed.
    pub seed: u64,
    /// Mutants per target.
    pub cases: usize,
}

/// `FLOWBOT_FUZZ_SEED` (decimal or `0x` hex) and `FLOWBOT_FUZZ_CASES`, or the defaults.
pub fn settings() -> Settings {
    let seed = match std::env::var("FLOWBOT_FUZZ_SEED") {
        Ok(s) => {
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("FLOWBOT_FUZZ_SEED '{s}': {e}"))
        }
        Err(_) => DEFAULT_SEED,
    };
    let cases = match std::env::var("FLOWBOT_FUZZ_CASES") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("FLOWBOT_FUZZ_CASES '{s}': {e}")),
        Err(_) => DEFAULT_CASES,
    };
    Settings { seed, cases }
}

/// FNV-1a: a stable hash for the per-target seed and crash file names.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A fuzz target: its name, format and seeds, the cases made from them, and the inputs it
/// ran most recently (reported with a panic seen later, such as one in a background task).
pub struct Target {
    /// The corpus directory's name.
    pub name: &'static str,
    format: Format,
    settings: Settings,
    recent: Mutex<VecDeque<Case>>,
    /// Inputs accepted and refused so far.
    outcomes: Mutex<(usize, usize)>,
}

/// How many recent inputs a failure report saves.
const RECENT: usize = 8;
/// How many characters of a failing input a report shows (the saved file has all of it).
const SHOWN: usize = 600;

impl Target {
    /// The target `name` (its corpus is `fuzz/corpus/<name>/`).
    pub fn new(name: &'static str, format: Format) -> Target {
        capture_panics();
        let settings = settings();
        eprintln!(
            "fuzz target {name}: seed {:#x}, {} mutants (FLOWBOT_FUZZ_SEED, FLOWBOT_FUZZ_CASES)",
            settings.seed, settings.cases
        );
        Target {
            name,
            format,
            settings,
            recent: Mutex::new(VecDeque::new()),
            outcomes: Mutex::new((0, 0)),
        }
    }

    /// Count an input as accepted or refused (with a typed error).
    pub fn outcome(&self, accepted: bool) {
        if let Ok(mut o) = self.outcomes.lock() {
            if accepted {
                o.0 += 1;
            } else {
                o.1 += 1;
            }
        }
    }

    /// Print how many inputs were accepted and refused: a target whose mutants are all
    /// refused only tests the first steps of its parser.
    pub fn summary(&self) {
        let _ = std::fs::remove_file(self.in_flight());
        let (accepted, refused) = self.outcomes.lock().map(|o| *o).unwrap_or_default();
        eprintln!(
            "fuzz target {}: {} inputs, {accepted} accepted, {refused} refused, no panic",
            self.name,
            accepted + refused
        );
    }

    /// The seeds, then the mutants, each at most `max_len` bytes.
    pub fn cases(&self, max_len: usize) -> Vec<Case> {
        let seeds = corpus(self.name);
        let mut m = Mutator {
            rng: fastrand::Rng::with_seed(self.settings.seed ^ fnv(self.name.as_bytes())),
            format: self.format,
            seeds: seeds.iter().map(|(_, b)| b.clone()).collect(),
            max_len,
        };
        let mut cases: Vec<Case> = seeds
            .iter()
            .map(|(name, bytes)| Case {
                label: format!("seed {name}"),
                bytes: bytes.clone(),
            })
            .collect();
        for n in 0..self.settings.cases {
            let from = m.rng.usize(..seeds.len());
            let bytes = m.mutant(from);
            cases.push(Case {
                label: format!("mutant {n} of {}", seeds[from].0),
                bytes,
            });
        }
        cases
    }

    /// The file extension of the target's inputs.
    fn ext(&self) -> &'static str {
        match self.format {
            Format::Json => "json",
            Format::Toml => "toml",
            Format::Yaml => "yaml",
            Format::Form => "form",
            Format::Env => "env",
        }
    }

    /// Where the input being run is kept until the target ends: what a crash that ends
    /// the process at once (a stack overflow aborts) leaves behind.
    fn in_flight(&self) -> PathBuf {
        fuzz_dir()
            .join("crashes")
            .join(format!("{}-in-flight.{}", self.name, self.ext()))
    }

    /// Note that `case` is about to run.
    pub fn running(&self, case: &Case) {
        let path = self.in_flight();
        if std::fs::write(&path, &case.bytes).is_err() {
            let _ = std::fs::create_dir_all(path.parent().expect("in crashes/"));
            let _ = std::fs::write(&path, &case.bytes);
        }
        let mut recent = self.recent.lock().expect("recent inputs");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(case.clone());
    }

    /// Fail unless no panic happened since the last check.
    pub fn check_panics(&self, case: &Case) {
        let panics = take_panics();
        if !panics.is_empty() {
            self.report(
                case,
                &format!(
                    "panicked (in this input or, for work done in the background, one of the {RECENT} before it, saved too):\n{}",
                    panics.join("\n")
                ),
                true,
            );
        }
    }

    /// Save `case` under `fuzz/crashes/` and fail, printing the seed and the input, escaped.
    pub fn fail(&self, case: &Case, why: &str) -> ! {
        self.report(case, why, false)
    }

    /// [`fail`](Self::fail), saving the inputs run just before `case` too when `earlier`.
    fn report(&self, case: &Case, why: &str, with_earlier: bool) -> ! {
        let dir = fuzz_dir().join("crashes");
        let _ = std::fs::create_dir_all(&dir);
        let ext = self.ext();
        let save = |c: &Case| {
            let path = dir.join(format!("{}-{:016x}.{ext}", self.name, fnv(&c.bytes)));
            match std::fs::write(&path, &c.bytes) {
                Ok(()) => path.display().to_string(),
                Err(e) => format!("(not saved: {e})"),
            }
        };
        let saved = save(case);
        let mut earlier: Vec<String> = match self.recent.lock() {
            Ok(r) if with_earlier => r
                .iter()
                .filter(|c| c.bytes != case.bytes)
                .map(save)
                .collect(),
            _ => Vec::new(),
        };
        earlier.dedup();
        let shown: String = case.text().chars().take(SHOWN).collect();
        panic!(
            "fuzz target {} failed on {} (FLOWBOT_FUZZ_SEED={:#x}): {why}\ninput ({} bytes, saved as {saved}; once fixed, add it to fuzz/corpus/{}/ as crash-<what>.{ext}): {:?}{}{}",
            self.name,
            case.label,
            self.settings.seed,
            case.bytes.len(),
            self.name,
            shown,
            if shown.len() < case.bytes.len() {
                " …"
            } else {
                ""
            },
            if earlier.is_empty() {
                String::new()
            } else {
                format!(
                    "\nthe inputs run before it, saved as: {}",
                    earlier.join(", ")
                )
            }
        );
    }
}

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Record every panic in this process (a test's own thread, a server task, a blocking pool
/// thread) besides printing it as usual.
fn capture_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if let Ok(mut p) = PANICS.lock() {
                p.push(format!(
                    "panic in thread '{}' at {at}: {message}",
                    thread.name().unwrap_or("?")
                ));
            }
            previous(info);
        }));
    });
}

/// The panics recorded since the last call.
pub fn take_panics() -> Vec<String> {
    PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default()
}

/// Run `f`, catching a panic: `Err` with its message.
pub fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Bytes that often matter to parsers.
const BYTES: &[u8] = &[
    0x00, 0x01, 0x07, 0x08, b'\t', b'\n', b'\r', 0x1b, b' ', b'"', b'\'', b'\\', b'/', b'{', b'}',
    b'[', b']', b',', b':', b'=', b'#', b'-', b'.', b'0', b'9', b'e', b'%', b'&', b'+', b'<', b'>',
    b'@', b'|', b'*', b'!', 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xf0, 0xf4, 0xfe, 0xff,
];

/// Tokens every format gets.
const TOKENS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1e309",
    "-1e309",
    "1e-400",
    "0.1e2",
    "NaN",
    "Infinity",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "\"\"",
    "\" \"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udfff\\ud800\"",
    "\\",
    "\\u",
    "\\x41",
    "{}",
    "[]",
    "{{",
    "}}",
    "{%",
    "%}",
    "{{ 1/0 }}",
    "{{ range(999999999) }}",
    "{% for x in range(99999999) %}x{% endfor %}",
    "\u{202e}",
    "\u{feff}",
    "\u{10ffff}",
    "é",
    "😀",
    "ᾯ",
    "İ",
    "\u{0301}",
    "\r\n",
    "/",
    "/echo",
    "/remind",
    "/remind 0s",
    "/remind 99999999999999999999h",
    "/remind -1s x",
    "/feedback",
    "/help",
    "@",
    "<@U0BOT>",
    "[at=bot-user-1]",
    "[/at]",
    "%",
    "%zz",
    "%ff",
    "%00",
    "+",
    "&",
    "=",
    "2026-11-22T10:00:00Z",
    "1979-05-27T07:32:00.999999999-07:00",
    "9999-12-31T23:59:59Z",
    "0000-00-00",
    "25:61",
    "1h 30m",
    "0s",
    "9999999999999999999s",
    "(?P<n>",
    "(a+)+$",
    "\\p{",
    "*/5 * * * *",
    "61 25 * * *",
];

const JSON_TOKENS: &[&str] = &[
    "{\"a\":",
    "[[[[[[[[",
    "]]]]]]]]",
    "\"type\":",
    "\"text\":",
    ",\"x\":1",
    ",,",
    ":{",
    "\"\\",
];

const TOML_TOKENS: &[&str] = &[
    "[[rule]]",
    "[[dialog]]",
    "[[dialog.step]]",
    "[a.b.c]",
    "[]",
    "[[",
    "]]",
    "a = ",
    "a.b.c = 1",
    "= ",
    "\"\"\"",
    "'''",
    "inf",
    "-inf",
    "nan",
    "+nan",
    "0x7fffffffffffffff",
    "0o777",
    "0b11",
    "1_000",
    "1__0",
    "07:32:00",
    "{ a = { b = { c = 1 } } }",
    "\n[x]\n",
];

const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "!!str ",
    "!!int ",
    "!!float ",
    "!!map ",
    "!!python/object ",
    "!custom ",
    "- ",
    ": ",
    "? ",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "%TAG ! tag:x,2026:\n",
    "~",
    ".nan",
    ".inf",
    "0x",
    "0o",
    "\t",
    "  ",
    "\n  - ",
    "{ a: [",
    "'",
];

const FORM_TOKENS: &[&str] = &[
    "&payload=",
    "&command=%2Fecho",
    "&text=",
    "&channel_id=",
    "&user_id=",
    "payload=%7B",
    "%7B%22type%22%3A",
    "%",
    "%2",
    "%C3%28",
    "%FF%FE",
    "==",
    "&&",
];

const ENV_TOKENS: &[&str] = &[
    "FLOWBOT_",
    "FLOWBOT__",
    "FLOWBOT_X__",
    "FLOWBOT____X=1",
    "FLOWBOT_SERVER__LISTEN=",
    "FLOWBOT_SERVER__LISTEN__PORT=1",
    "FLOWBOT_SERVER=1",
    "FLOWBOT_SERVER__BODY_LIMIT_BYTES=",
    "FLOWBOT_SERVER__REQUEST_TIMEOUT_SECS=",
    "FLOWBOT_SERVER__SHUTDOWN_TIMEOUT_SECS=",
    "FLOWBOT_SERVER__CORS_ORIGINS=",
    "FLOWBOT_DATABASE__URL=",
    "FLOWBOT_DATABASE__MAX_CONNECTIONS=",
    "FLOWBOT_DATABASE__SQLITE_WORK_SHARE=",
    "FLOWBOT_WORKERS__CONCURRENCY=",
    "FLOWBOT_WORKERS__POLL_INTERVAL_MS=",
    "FLOWBOT_WORKERS__LEASE_SECS=",
    "FLOWBOT_WORKERS__RECOVER_INTERVAL_MS=",
    "FLOWBOT_WEBHOOKS__CRM__REPLAY_WINDOW_SECS=",
    "FLOWBOT_WEBHOOKS__CRM__SECRET=",
    "FLOWBOT_WEBHOOKS=",
    "FLOWBOT_LOG__LEVEL=",
    "FLOWBOT_RULES__POLL_INTERVAL_MS=",
    "FLOWBOT_AUTH__API_KEYS=",
    "FLOWBOT_AUTH__JWT__SECRETS=",
    "FLOWBOT_AUTH__JWT__LEEWAY_SECS=",
    "FLOWBOT_AUTH__ROLES__OPS=",
    "FLOWBOT_LIMITS__ADMIN_ALLOW=",
    "FLOWBOT_LIMITS__TRUSTED_PROXIES=",
    "FLOWBOT_NETWORK__ALLOW=",
    "FLOWBOT_TELEGRAM__T__TOKEN=",
    "FLOWBOT_TELEGRAM__T__LEASE_TTL_SECS=",
    "FLOWBOT_TELEGRAM__T__POLL_TIMEOUT_SECS=",
    "FLOWBOT_DISCORD__D__PUBLIC_KEY=",
    "FLOWBOT_DISCORD__D__GATEWAY_SHARDS=",
    "FLOWBOT_DISCORD__D__GATEWAY_INTENTS=",
    "FLOWBOT_SLACK__S__SIGNING_SECRET=",
    "FLOWBOT_TAILCHAT__T__SENDS_PER_SECOND=",
    "FLOWBOT_NOTIFIERS__N__KIND=",
    "FLOWBOT_NOTIFIERS__N__PORT=",
    "FLOWBOT_LLM__PROVIDERS=",
    "OPENAI_BASE_URL=",
    "OPENAI_API_KEY=",
    "OPENAI_MODEL=",
    "[1, \"a\", {x = 1}]",
    "{a = 1}",
    "\"quoted\"",
];

/// Makes mutants of a target's seeds.
struct Mutator {
    rng: fastrand::Rng,
    format: Format,
    seeds: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    /// A mutant of seed `from`.
    fn mutant(&mut self, from: usize) -> Vec<u8> {
        let mut b = self.seeds[from].clone();
        if self.rng.u8(..3) == 0
            && let Some(s) = self.structural(&b)
        {
            b = s;
        }
        for _ in 0..self.rng.usize(1..=3) {
            if self.rng.u8(..3) == 0 {
                break;
            }
            self.bytes(&mut b);
        }
        b.truncate(self.max_len);
        b
    }

    fn pos(&mut self, b: &[u8]) -> usize {
        self.rng.usize(..=b.len())
    }

    fn token(&mut self) -> &'static str {
        let own: &[&str] = match self.format {
            Format::Json => JSON_TOKENS,
            Format::Toml => TOML_TOKENS,
            Format::Yaml => YAML_TOKENS,
            Format::Form => FORM_TOKENS,
            Format::Env => ENV_TOKENS,
        };
        if self.rng.bool() {
            own[self.rng.usize(..own.len())]
        } else {
            TOKENS[self.rng.usize(..TOKENS.len())]
        }
    }

    /// One byte-level change.
    fn bytes(&mut self, b: &mut Vec<u8>) {
        match self.rng.u8(..13) {
            0 if !b.is_empty() => {
                let i = self.rng.usize(..b.len());
                b[i] ^= 1 << self.rng.u8(..8);
            }
            1 if !b.is_empty() => {
                let i = self.rng.usize(..b.len());
                b[i] = BYTES[self.rng.usize(..BYTES.len())];
            }
            2 if !b.is_empty() => {
                let at = self.rng.usize(..b.len());
                let len = self.rng.usize(1..=(b.len() - at).min(64));
                b.drain(at..at + len);
            }
            3 if !b.is_empty() => {
                let at = self.rng.usize(..b.len());
                let len = self.rng.usize(1..=(b.len() - at).min(256));
                let chunk = b[at..at + len].to_vec();
                let to = self.pos(b);
                b.splice(to..to, chunk);
            }
            4 => {
                let t = self.token().as_bytes();
                let at = self.pos(b);
                b.splice(at..at, t.iter().copied());
            }
            5 => {
                let at = self.pos(b);
                b.truncate(at);
            }
            6 => {
                // Splice: the head of this input and the tail of another seed.
                let other = self.seeds[self.rng.usize(..self.seeds.len())].clone();
                let at = self.pos(b);
                let from = self.rng.usize(..=other.len());
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
            7 => {
                // Deep nesting.
                let (open, close): (&[u8], &[u8]) = match (self.format, self.rng.u8(..3)) {
                    (Format::Json, 0) => (b"{\"a\":", b"}"),
                    (Format::Toml, 0) => (b"a = { b = ", b"}"),
                    (Format::Yaml, 0) => (b"- ", b""),
                    (_, 1) => (b"{", b"}"),
                    _ => (b"[", b"]"),
                };
                let depth = [64, 200, 1_000, 10_000][self.rng.usize(..4)];
                let at = self.pos(b);
                let mut nest = open.repeat(depth);
                if self.rng.bool() {
                    nest.extend(close.repeat(depth));
                }
                b.splice(at..at, nest);
            }
            8 => {
                // A huge number, in place of a digit run or inserted.
                let huge: &[u8] = [
                    b"99999999999999999999999999999999999999".as_slice(),
                    b"-99999999999999999999999999999999999999",
                    b"1e999999",
                    b"0.00000000000000000000000000000000000000000000001",
                    b"18446744073709551616",
                    b"-9223372036854775809",
                ][self.rng.usize(..6)];
                match b.iter().position(u8::is_ascii_digit) {
                    Some(first) if self.rng.bool() => {
                        let start = (first..b.len())
                            .find(|&i| {
                                b[i].is_ascii_digit() && self.rng.u8(..4) == 0 || i + 1 == b.len()
                            })
                            .unwrap_or(first);
                        let end = (start..b.len())
                            .find(|&i| !b[i].is_ascii_digit())
                            .unwrap_or(b.len());
                        b.splice(start..end, huge.iter().copied());
                    }
                    _ => {
                        let at = self.pos(b);
                        b.splice(at..at, huge.iter().copied());
                    }
                }
            }
            9 => {
                // A long string.
                let unit = ["A", "é", "😀", "\u{202e}", "\\n", "%41", " "][self.rng.usize(..7)];
                let n = [100, 1_000, 10_000, 40_000][self.rng.usize(..4)];
                let at = self.pos(b);
                b.splice(at..at, unit.repeat(n).into_bytes());
            }
            10 => {
                // Invalid UTF-8.
                let bad: &[u8] = [
                    [0xff].as_slice(),
                    &[0xc3],
                    &[0xed, 0xa0, 0x80],
                    &[0xf4, 0x90, 0x80, 0x80],
                    &[0xc0, 0xaf],
                    &[0x80, 0x80],
                ][self.rng.usize(..6)];
                let at = self.pos(b);
                b.splice(at..at, bad.iter().copied());
            }
            11 => {
                // Swap two lines (or list items).
                let mut lines: Vec<Vec<u8>> =
                    b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                if lines.len() > 1 {
                    let (i, j) = (self.rng.usize(..lines.len()), self.rng.usize(..lines.len()));
                    lines.swap(i, j);
                    *b = lines.join(&b'\n');
                }
            }
            _ => {
                // A line repeated.
                let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
                let i = self.rng.usize(..lines.len());
                let mut out = Vec::with_capacity(b.len() * 2);
                for (n, l) in lines.iter().enumerate() {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                    if n == i {
                        for _ in 0..self.rng.usize(1..=3) {
                            out.extend_from_slice(l);
                            out.push(b'\n');
                        }
                    }
                }
                *b = out;
            }
        }
    }

    /// A change to the parsed input, written back in its format; `None` when the input does
    /// not parse.
    fn structural(&mut self, b: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(b).ok()?;
        match self.format {
            Format::Json => {
                let mut v: Value = serde_json::from_str(text).ok()?;
                self.value(&mut v);
                Some(v.to_string().into_bytes())
            }
            Format::Yaml => {
                let mut v: Value = serde_norway::from_str(text).ok()?;
                self.value(&mut v);
                serde_norway::to_string(&v).ok().map(String::into_bytes)
            }
            Format::Toml => {
                let t: toml::Table = text.parse().ok()?;
                let mut v = serde_json::to_value(&t).ok()?;
                self.value(&mut v);
                // TOML has no null; a mutant that holds one goes out as JSON-ish TOML failing
                // to serialise, so try again without nulls.
                strip_nulls(&mut v);
                let t: toml::Table = serde_json::from_value(v).ok()?;
                toml::to_string(&t).ok().map(String::into_bytes)
            }
            Format::Form => {
                let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(b)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                if pairs.is_empty() {
                    return None;
                }
                let i = self.rng.usize(..pairs.len());
                match self.rng.u8(..5) {
                    0 => {
                        pairs.remove(i);
                    }
                    1 => {
                        let p = pairs[i].clone();
                        pairs.push(p);
                    }
                    2 => pairs[i].1 = self.string(),
                    _ => match serde_json::from_str::<Value>(&pairs[i].1) {
                        Ok(mut v) if v.is_object() || v.is_array() => {
                            self.value(&mut v);
                            pairs[i].1 = v.to_string();
                        }
                        _ => pairs[i].1 = self.string(),
                    },
                }
                Some(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs)
                        .finish()
                        .into_bytes(),
                )
            }
            Format::Env => {
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                if lines.is_empty() {
                    return None;
                }
                let i = self.rng.usize(..lines.len());
                let name = lines[i].split_once('=').map_or("", |(n, _)| n).to_owned();
                match self.rng.u8(..4) {
                    0 => lines[i] = format!("{name}={}", self.token()),
                    1 => lines[i] = format!("{name}={}", self.string()),
                    2 => lines.push(format!(
                        "{}{}",
                        ENV_TOKENS[self.rng.usize(..ENV_TOKENS.len())],
                        self.token()
                    )),
                    _ => lines[i] = format!("{name}__X={}", self.token()),
                }
                Some(lines.join("\n").into_bytes())
            }
        }
    }

    /// An interesting string.
    fn string(&mut self) -> String {
        match self.rng.u8(..6) {
            0 => String::new(),
            1 => "x".repeat([1_000, 20_000][self.rng.usize(..2)]),
            2 => "\u{0}\u{1}\u{7f}\u{202e}\u{feff}😀é".into(),
            3 => "{{ x }}{% if %}".into(),
            4 => self.token().to_owned(),
            _ => format!("/echo {}", self.token()),
        }
    }

    /// An interesting value of any type.
    fn any_value(&mut self) -> Value {
        match self.rng.u8(..16) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.bool()),
            2 => Value::from(i64::MIN),
            3 => Value::from(i64::MAX),
            4 => Value::from(u64::MAX),
            5 => Value::from(-1),
            6 => Value::from(0),
            7 => Value::from(f64::MAX),
            8 => Value::from(-0.5),
            9 => Value::from(1e-300),
            10 => Value::String(self.string()),
            11 => Value::Array(Vec::new()),
            12 => Value::Object(Map::new()),
            13 => (0..self.rng.usize(1..=2_000)).map(Value::from).collect(),
            14 => {
                let mut v = Value::from(1);
                for _ in 0..self.rng.usize(1..=120) {
                    v = Value::Array(vec![v]);
                }
                v
            }
            _ => {
                let mut m = Map::new();
                for i in 0..self.rng.usize(1..=50) {
                    m.insert(format!("k{i}"), Value::from(i));
                }
                Value::Object(m)
            }
        }
    }

    /// Change one node of `v`: replace it, drop or double an entry, or turn it into a string.
    fn value(&mut self, v: &mut Value) {
        let count = nodes(v);
        let pick = self.rng.usize(..count);
        let node = nth(v, pick).expect("a node within the count");
        match (self.rng.u8(..6), &mut *node) {
            (0, Value::Object(m)) if !m.is_empty() => {
                let k = m.keys().nth(self.rng.usize(..m.len())).cloned();
                if let Some(k) = k {
                    m.remove(&k);
                }
            }
            (1, Value::Object(m)) => {
                let k = ["type", "text", "id", "name", "x", ""][self.rng.usize(..6)];
                let v = self.any_value();
                m.insert(k.into(), v);
            }
            (0 | 1, Value::Array(a)) if !a.is_empty() => {
                let i = self.rng.usize(..a.len());
                if self.rng.bool() {
                    a.remove(i);
                } else {
                    let e = a[i].clone();
                    a.push(e);
                }
            }
            (2, other) => *other = Value::String(other.to_string()),
            (3, Value::String(s)) => {
                if let Ok(n) = s.parse::<f64>() {
                    *node = Value::from(n);
                } else {
                    let extra = self.string();
                    s.push_str(&extra);
                }
            }
            _ => *node = self.any_value(),
        }
    }
}

/// The number of nodes in `v`.
fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(m) => m.values().map(nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node of `v` in pre-order.
fn nth(v: &mut Value, n: usize) -> Option<&mut Value> {
    if n == 0 {
        return Some(v);
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match v {
        Value::Array(a) => a.iter_mut().collect(),
        Value::Object(m) => m.values_mut().collect(),
        _ => return None,
    };
    for c in children {
        let size = nodes(c);
        if n < size {
            return nth(c, n);
        }
        n -= size;
    }
    None
}

/// Drop nulls (TOML has none).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Array(a) => {
            a.retain(|e| !e.is_null());
            a.iter_mut().for_each(strip_nulls);
        }
        Value::Object(m) => {
            m.retain(|_, e| !e.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        _ => {}
    }
}
