//! The answers every operation shares, written into the OpenAPI document once rather than
//! on each handler: what the admin API's layer ([`super::auth::guard`]) answers before a
//! handler runs, the address limits of the public endpoints, the rejections of malformed
//! parameters and bodies, and the `application/problem+json` type of every error.
//! `bins/tests/schemathesis.rs` holds the server to the result.

use std::collections::BTreeMap;

use axum::http::Method;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{PathItem, Ref, RefOr};

use super::auth::{Policy, policy};

const PROBLEM: &str = "application/problem+json";

/// Whether `template` (a path of the document) is behind [`super::auth::guard`].
fn guarded(method: &Method, template: &str) -> bool {
    (template.starts_with("/api/v1/") || template == "/metrics")
        && policy(method, template) != Policy::Public
}

/// A problem answer (RFC 9457) described by `why`.
fn problem(why: &str) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ProblemDoc")))
        .build();
    RefOr::T(
        ResponseBuilder::new()
            .description(why)
            .content(PROBLEM, content)
            .build(),
    )
}

/// Complete the operations of `paths` (a document's paths): the answers they share are
/// added where missing, and problem bodies get their media type.
pub(super) fn complete(paths: &mut BTreeMap<String, PathItem>) {
    for (template, item) in paths.iter_mut() {
        for (method, op) in [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
            (Method::HEAD, &mut item.head),
            (Method::OPTIONS, &mut item.options),
            (Method::TRACE, &mut item.trace),
        ] {
            if let Some(op) = op {
                complete_operation(&method, template, op);
            }
        }
    }
}

fn complete_operation(method: &Method, template: &str, op: &mut Operation) {
    let guarded = guarded(method, template);
    if !guarded {
        // The public endpoints check their own secrets, if any, never the API's credential.
        op.security = Some(Vec::new());
    }
    let responses = &mut op.responses.responses;
    // Problem bodies are `application/problem+json`, whatever utoipa wrote.
    for answer in responses.values_mut() {
        let RefOr::T(answer) = answer else {
            continue;
        };
        let is_problem = matches!(
            answer.content.get("application/json"),
            Some(RefOr::T(c)) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/ProblemDoc"))
        );
        if is_problem && let Some(c) = answer.content.shift_remove("application/json") {
            answer.content.insert(PROBLEM.into(), c);
        }
    }
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
        shared.push(("400", "A parameter is malformed or out of range"));
    }
    if op.request_body.is_some() {
        shared.push(("400", "The body is malformed"));
        shared.push(("413", "The body is larger than [server] body_limit_bytes"));
    }
    if guarded {
        shared.extend([
            (
                "401",
                "No credential, or one that is unknown, revoked, expired or invalid",
            ),
            (
                "403",
                "The caller's role lacks the permission, the address may not use the admin API, or a cross-site change without a credential",
            ),
            (
                "421",
                "The Host header names a host this server does not answer to",
            ),
            ("429", "Too many requests from this address or credential"),
            (
                "503",
                "The database is unavailable (or the identity provider's keys, for a token)",
            ),
        ]);
    } else if template != "/api/v1/openapi.json" {
        shared.push(("429", "Too many requests from this address"));
    }
    for (status, why) in shared {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(why));
    }
}
