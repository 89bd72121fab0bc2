//! One conformance suite for every store backend (`flowbot_store::conformance`, published
//! behind the `test-util` feature): each behaviour runs against SQLite, against PostgreSQL
//! (when `FLOWBOT_TEST_POSTGRES_URL` is set; required in CI) and against the in-memory store.

mod support;

mod sqlite {
    flowbot_store::conformance_tests!(crate::support::Sqlite);
}

mod postgres {
    flowbot_store::conformance_tests!(crate::support::Postgres);
}

mod memory {
    flowbot_store::conformance_tests!(crate::support::Memory);
}

/// TLS to PostgreSQL, set in the URL as with libpq (`sslmode`, `sslrootcert`): the store
/// connects over TLS when asked to, and refuses a server whose certificate it cannot verify
/// under `verify-full`. A server without TLS makes `sslmode=require` fail instead.
mod postgres_tls {
    use flowbot_store::{PostgresOptions, PostgresStore};

    /// `url` with `param` added to its query.
    fn with_param(url: &str, param: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{param}")
    }

    /// Whether the test server offers TLS (`SHOW ssl`), asked over a plain connection.
    async fn server_has_tls(url: &str) -> bool {
        let mut plain =
            <sqlx::PgConnection as sqlx::Connection>::connect(&with_param(url, "sslmode=disable"))
                .await
                .expect("a plain connection");
        let on: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(&mut plain)
            .await
            .expect("SHOW ssl");
        on == "on"
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sslmode_require_connects_over_tls() {
        let Some(url) = crate::support::postgres_url() else {
            return;
        };
        let tls = server_has_tls(&url).await;
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let connected = PostgresStore::connect_with(
            PostgresOptions::new(with_param(&url, "sslmode=require"))
                .schema(schema.clone())
                .application_name(schema.clone()),
        )
        .await;
        if !tls {
            let e = connected.expect_err("sslmode=require against a server without TLS");
            assert!(e.to_string().to_lowercase().contains("tls"), "{e}");
            return;
        }
        let store = connected.expect("sslmode=require against a server with TLS");
        let over_tls: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(store.pool())
                .await
                .expect("pg_stat_ssl");
        assert!(over_tls, "the store's connection does not use TLS");
        crate::support::Harness::Postgres { store, url, schema }
            .cleanup()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_full_refuses_a_certificate_it_cannot_trust() {
        let Some(url) = crate::support::postgres_url() else {
            return;
        };
        if !server_has_tls(&url).await {
            return; // sslmode_require_connects_over_tls checks the refusal then
        }
        // The test server's certificate is self-signed (or from a private CA): not among the
        // public roots the store trusts by default.
        let e = PostgresStore::connect(&with_param(&url, "sslmode=verify-full"))
            .await
            .expect_err("an untrusted certificate under verify-full");
        let text = e.to_string().to_lowercase();
        assert!(
            text.contains("certificate") || text.contains("tls"),
            "{text}"
        );
    }
}
