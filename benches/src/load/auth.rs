//! The cost of credentials on the admin API (`--auth`): `GET /api/v1/rules` on a server
//! without authentication (loopback) next to the same read with an API key and with an HS256
//! JWT on a server that requires them, and, with `--baseline-bin` (a build from before the
//! admin API's security), the same read and durable webhook ingestion on that build. Each
//! variant runs `ROUNDS` times, interleaved, so slow drift on the machine touches them all;
//! the report gives each variant's median over the rounds.

use super::*;

/// Rounds of every variant.
const ROUNDS: usize = 3;
/// The shared secret of the JWTs (HS256).
const JWT_SECRET: &str = "flowbot-load-benchmark-shared-secret-0123456789";
/// Target: a credential check adds at most this fraction to the read's p50.
pub(crate) const TARGET_AUTH_OVERHEAD: f64 = 0.05;

/// One variant's runs.
pub(crate) struct Variant {
    /// How the report names it.
    pub(crate) label: String,
    /// Each round's run.
    pub(crate) runs: Vec<HttpRun>,
}

impl Variant {
    /// The median over the rounds of `f`.
    pub(crate) fn median(&self, f: impl Fn(&HttpRun) -> f64) -> f64 {
        let mut v: Vec<f64> = self.runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Median p50 latency, microseconds.
    pub(crate) fn p50_us(&self) -> f64 {
        self.median(|r| f64::from(percentile(&r.tally.latencies_us, 0.50)))
    }

    /// Median p99 latency, microseconds.
    pub(crate) fn p99_us(&self) -> f64 {
        self.median(|r| f64::from(percentile(&r.tally.latencies_us, 0.99)))
    }

    /// Median 2xx rate.
    pub(crate) fn rate(&self) -> f64 {
        self.median(HttpRun::rate)
    }

    /// Errors over every round.
    pub(crate) fn errors(&self) -> u64 {
        self.runs.iter().map(HttpRun::errors).sum()
    }
}

/// The phase's results: reads at each concurrency, and webhook ingestion.
pub(crate) struct AuthRun {
    /// (connections, variants: no credential, API key, JWT, then the baseline build's read).
    pub(crate) reads: Vec<(usize, Vec<Variant>)>,
    /// Webhook ingestion on this build and on the baseline build (empty without one).
    pub(crate) ingestion: Vec<Variant>,
    /// The baseline build, if any.
    pub(crate) baseline: Option<PathBuf>,
}

/// An HS256 JWT for subject `bench` with the `viewer` role, valid for a day.
fn jwt() -> Result<String, String> {
    let exp = chrono::Utc::now().timestamp() + 86_400;
    let claims = serde_json::json!({
        "sub": "bench", "role": "viewer", "exp": exp,
        "iss": "https://idp.bench.example", "aud": "flowbot",
    });
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes())
        .map_err(|e| format!("the benchmark's JWT key: {e}"))?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .map_err(|e| format!("signing the benchmark's JWT: {e}"))
}

/// Make an API key on `database_url` with `flowbot-server keys create`; the key.
fn api_key(s: &Settings, database_url: &str, workdir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(workdir).map_err(|e| format!("creating {}: {e}", workdir.display()))?;
    let out = Command::new(&s.server_bin)
        .current_dir(workdir)
        .args(["keys", "create", "--name", "bench", "--role", "viewer"])
        .env("FLOWBOT_DATABASE__URL", database_url)
        .env("FLOWBOT_LOG__LEVEL", "warn")
        .output()
        .map_err(|e| format!("running keys create: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("fbk_"))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "keys create printed no key ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A header value kept for the whole run (routes are `Copy`).
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// Run the phase; `servers` receives every server started.
pub(crate) async fn auth_phase(
    s: &Settings,
    http: &reqwest::Client,
    servers: &mut Vec<ServerSummary>,
) -> Result<AuthRun, String> {
    let no_workers = ("FLOWBOT_SERVER__AGENT", "false");
    let open_url = sqlite_url(s, "api-open");
    let auth_url = sqlite_url(s, "api-auth");
    let key = api_key(s, &auth_url, &s.dir.join("api-auth"))?;
    let key = leak(format!("Bearer {key}"));
    let token = leak(format!("Bearer {}", jwt()?));
    let secrets = format!("[\"{JWT_SECRET}\"]");
    let auth_env: Vec<(&str, &str)> = vec![
        no_workers,
        ("FLOWBOT_AUTH__API_KEYS", "true"),
        ("FLOWBOT_AUTH__JWT__SECRETS", &secrets),
        ("FLOWBOT_AUTH__JWT__ISSUER", "https://idp.bench.example"),
        ("FLOWBOT_AUTH__JWT__AUDIENCE", "flowbot"),
        // The per-credential limit is checked on every request but never reached.
        (
            "FLOWBOT_LIMITS__API_PER_CREDENTIAL_PER_MINUTE",
            "4000000000",
        ),
    ];
    let mut started = Vec::new();
    let mut spawn = |settings: &Settings, label: &str, url: &str, env: &[(&str, &str)]| {
        Server::spawn(settings, label, url, env).map(|srv| started.push((srv, url.to_owned())))
    };
    spawn(s, "api-open", &open_url, &[no_workers])?;
    spawn(s, "api-auth", &auth_url, &auth_env)?;
    let baseline_settings = s.baseline_bin.as_ref().map(|bin| Settings {
        server_bin: bin.clone(),
        ..s.clone()
    });
    if let Some(b) = &baseline_settings {
        spawn(
            b,
            "api-baseline",
            &sqlite_url(s, "api-baseline"),
            &[no_workers],
        )?;
    }
    let mut ready = Ok(());
    for (srv, _) in &mut started {
        if let Err(e) = srv.wait_ready(http).await {
            ready = Err(e);
            break;
        }
    }
    let result = match ready {
        Ok(()) => Ok(measure(s, &started, key, token).await),
        Err(e) => Err(e),
    };
    for (srv, url) in started {
        servers.push(srv.stop(http, &url).await);
    }
    result.map(|(reads, ingestion)| AuthRun {
        reads,
        ingestion,
        baseline: s.baseline_bin.clone(),
    })
}

/// The runs, on started servers: `started[0]` open, `[1]` requiring credentials, `[2]` the
/// baseline build if any.
async fn measure(
    s: &Settings,
    started: &[(Server, String)],
    key: &'static str,
    token: &'static str,
) -> (Vec<(usize, Vec<Variant>)>, Vec<Variant>) {
    let baseline = started.get(2).map(|(srv, _)| srv);
    let mut plan: Vec<(String, &Server, Route)> = vec![
        (
            "no credential (open loopback server)".into(),
            &started[0].0,
            Route::ApiRead(None),
        ),
        ("API key".into(), &started[1].0, Route::ApiRead(Some(key))),
        (
            "JWT (HS256)".into(),
            &started[1].0,
            Route::ApiRead(Some(token)),
        ),
    ];
    if let Some(b) = baseline {
        plan.push((
            "no credential, build before the security work".into(),
            b,
            Route::ApiRead(None),
        ));
    }
    let mut reads = Vec::new();
    for connections in [1, s.connections] {
        let settings = Settings {
            connections,
            ..s.clone()
        };
        let mut variants: Vec<Variant> = plan
            .iter()
            .map(|(label, _, _)| Variant {
                label: label.clone(),
                runs: Vec::new(),
            })
            .collect();
        for _ in 0..ROUNDS {
            for (v, (_, srv, route)) in variants.iter_mut().zip(&plan) {
                v.runs.push(http_load(&settings, srv, *route).await);
            }
        }
        reads.push((connections, variants));
    }
    let mut ingestion = Vec::new();
    if let Some(b) = baseline {
        let mut now = Variant {
            label: "this build".into(),
            runs: Vec::new(),
        };
        let mut before = Variant {
            label: "build before the security work".into(),
            runs: Vec::new(),
        };
        for _ in 0..ROUNDS {
            now.runs
                .push(http_load(s, &started[0].0, Route::Webhook).await);
            before.runs.push(http_load(s, b, Route::Webhook).await);
        }
        ingestion = vec![now, before];
    }
    (reads, ingestion)
}

/// The phase's Markdown section.
pub(crate) fn auth_report(out: &mut String, r: &Result<AuthRun, String>) {
    let _ = writeln!(out, "## Admin API credentials\n");
    let run = match r {
        Ok(run) => run,
        Err(e) => {
            let _ = writeln!(out, "Could not run: {e}\n");
            return;
        }
    };
    let _ = writeln!(
        out,
        "`GET /api/v1/rules` (SQLite, no embedded workers), {ROUNDS} interleaved rounds per \
         variant, medians over the rounds.{}\n",
        run.baseline
            .as_ref()
            .map(|b| format!(" Baseline build: `{}`.", b.display()))
            .unwrap_or_default()
    );
    for (connections, variants) in &run.reads {
        let _ = writeln!(out, "### {connections} connection(s)\n");
        let _ = writeln!(
            out,
            "| variant | p50 µs | p99 µs | req/s | errors | p50 vs no credential | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        let base = variants.first().map_or(0.0, Variant::p50_us);
        for (i, v) in variants.iter().enumerate() {
            let ratio = v.p50_us() / base.max(f64::MIN_POSITIVE);
            let target = if i == 1 || i == 2 {
                format!(
                    "≤ {:.2} ({})",
                    1.0 + TARGET_AUTH_OVERHEAD,
                    verdict(ratio <= 1.0 + TARGET_AUTH_OVERHEAD && v.errors() == 0)
                )
            } else {
                "—".into()
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {} | {ratio:.3} | {target} |",
                v.label,
                v.p50_us(),
                v.p99_us(),
                v.rate(),
                v.errors()
            );
        }
        let _ = writeln!(out);
    }
    if let [now, before] = run.ingestion.as_slice() {
        let _ = writeln!(
            out,
            "### Durable webhook ingestion (`POST /hooks/webhook/bench`, no workers)\n"
        );
        let _ = writeln!(out, "| build | req/s (median) | each round | errors |");
        let _ = writeln!(out, "|---|---|---|---|");
        for v in [now, before] {
            let rounds: Vec<String> = v.runs.iter().map(|r| format!("{:.0}", r.rate())).collect();
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} |",
                v.label,
                v.rate(),
                rounds.join(", "),
                v.errors()
            );
        }
        let _ = writeln!(
            out,
            "\nRatio this build / before: {:.3}.\n",
            now.rate() / before.rate().max(f64::MIN_POSITIVE)
        );
    }
}
