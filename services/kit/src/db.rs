//! SQL pools and per-service migrations.
//!
//! The SQL is kept portable (standard types, `$n` placeholders) so PostgreSQL can be added
//! behind the same queries; the embedded default is one SQLite file per service.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub type Pool = SqlitePool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("migrating the {service} database: {source}")]
    Migrate {
        service: &'static str,
        source: MigrateError,
    },
}

/// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite::memory:`).
/// A commit survives the process crashing; [`connect_durable`] also survives power loss.
pub async fn connect(url: &str) -> Result<Pool, DbError> {
    open(url, SqliteSynchronous::Normal).await
}

/// [`connect`], with every commit synced to disk before it returns (the ledger's journal: an
/// entry the ledger signed and served must never be lost and rewritten after a power loss).
pub async fn connect_durable(url: &str) -> Result<Pool, DbError> {
    open(url, SqliteSynchronous::Full).await
}

async fn open(url: &str, synchronous: SqliteSynchronous) -> Result<Pool, DbError> {
    let err = |source| DbError::Open {
        url: url.to_string(),
        source,
    };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL with NORMAL is durable across process crashes; only power loss can drop the tail.
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    // One connection: SQLite has a single writer anyway, and a second connection turns every
    // read-then-write transaction into a race that fails with SQLITE_BUSY_SNAPSHOT (the busy
    // timeout does not apply to it). Serialising here is both correct and, for the short
    // transactions the services run, the fastest setup.
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(err)
}

/// The table where zkmesh, before it used sqlx's migrator, recorded the versions it applied.
const LEGACY_TABLE: &str = "zkmesh_migrations";

/// Applies the migrations of `migrator` not applied yet, each in its own transaction.
///
/// A database from before the move to sqlx's migrator records its versions in
/// `zkmesh_migrations`; those versions (the same numbers, the same SQL) are marked applied
/// without running them again, then the old table is dropped.
pub async fn migrate(
    pool: &Pool,
    service: &'static str,
    migrator: &Migrator,
) -> Result<(), DbError> {
    let err = |source: MigrateError| DbError::Migrate { service, source };
    let legacy = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
        .bind(LEGACY_TABLE)
        .fetch_optional(pool)
        .await
        .map_err(|e| err(e.into()))?;
    if legacy.is_some() {
        let applied: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(version) FROM {LEGACY_TABLE}"
        )))
        .fetch_one(pool)
        .await
        .map_err(|e| err(e.into()))?;
        if let Some(version) = applied {
            migrator.skip(pool, Some(version)).await.map_err(err)?;
            tracing::info!(
                service,
                version,
                "adopted the migrations applied before sqlx's migrator"
            );
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {LEGACY_TABLE}")))
            .execute(pool)
            .await
            .map_err(|e| err(e.into()))?;
    }
    migrator.run(pool).await.map_err(err)
}

/// Every row of every table, rendered as text: lets tests show that a refused call changed
/// nothing. Columns named in `volatile` (heartbeat times and the like) are left out.
pub async fn snapshot(pool: &Pool, volatile: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    use sqlx::{Column, ValueRef};
    let tables: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut out = Vec::new();
    for table in tables {
        // Table names come from sqlite_master, not from a caller.
        for row in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {table} ORDER BY 1"
        )))
        .fetch_all(pool)
        .await?
        {
            let mut line = format!("{table}:");
            for (i, col) in row.columns().iter().enumerate() {
                if volatile.contains(&col.name()) {
                    continue;
                }
                let raw = row.try_get_raw(i)?;
                let text = if raw.is_null() {
                    "NULL".to_string()
                } else if let Ok(v) = row.try_get::<i64, _>(i) {
                    v.to_string()
                } else if let Ok(v) = row.try_get::<String, _>(i) {
                    v
                } else if let Ok(v) = row.try_get::<Vec<u8>, _>(i) {
                    hex::encode(v)
                } else {
                    "?".to_string()
                };
                line.push_str(&format!(" {}={text}", col.name()));
            }
            out.push(line);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database migrated by zkmesh's own runner before sqlx's: its versions are adopted, not
    /// run again (version 1 would fail, its table exists), and the newer ones are applied.
    #[tokio::test]
    async fn a_database_from_the_old_runner_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let migrator = migrations(
            dir.path(),
            &[
                ("0001_initial.sql", "CREATE TABLE t (x BIGINT);"),
                ("0002_more.sql", "ALTER TABLE t ADD COLUMN y BIGINT;"),
            ],
        )
        .await;
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let pool = connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE t (x BIGINT);
             CREATE TABLE zkmesh_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL);
             INSERT INTO zkmesh_migrations VALUES (1, 0);
             INSERT INTO t (x) VALUES (7);",
        )
        .execute(&pool)
        .await
        .unwrap();
        migrate(&pool, "test", &migrator).await.unwrap();
        let (x, y): (i64, Option<i64>) = sqlx::query_as("SELECT x, y FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!((x, y), (7, None));
        let legacy: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'zkmesh_migrations'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        assert_eq!(legacy, None);
        // Again: nothing left to do. A fresh database gets both versions.
        migrate(&pool, "test", &migrator).await.unwrap();
        let fresh = connect("sqlite::memory:").await.unwrap();
        migrate(&fresh, "test", &migrator).await.unwrap();
        sqlx::query("INSERT INTO t (x, y) VALUES (1, 2)")
            .execute(&fresh)
            .await
            .unwrap();
    }

    /// A migration whose SQL changed after it was applied is refused, not silently skipped.
    #[tokio::test]
    async fn a_changed_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = connect("sqlite::memory:").await.unwrap();
        let first = [("0001_initial.sql", "CREATE TABLE t (x BIGINT);")];
        migrate(&pool, "test", &migrations(dir.path(), &first).await)
            .await
            .unwrap();
        let changed = [("0001_initial.sql", "CREATE TABLE t (z BIGINT);")];
        let e = migrate(&pool, "test", &migrations(dir.path(), &changed).await)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("migrating the test database"), "{e}");
    }

    /// A migrator over `files` (name, SQL), written into `dir/migrations`.
    async fn migrations(dir: &std::path::Path, files: &[(&str, &str)]) -> Migrator {
        let at = dir.join("migrations");
        std::fs::create_dir_all(&at).unwrap();
        for (name, sql) in files {
            std::fs::write(at.join(name), format!("{sql}\n")).unwrap();
        }
        Migrator::new(at.as_path()).await.unwrap()
    }
}
