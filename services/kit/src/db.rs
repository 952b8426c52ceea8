//! SQL pools and per-service migrations.
//!
//! The SQL is kept portable (standard types, `$n` placeholders) so PostgreSQL can be added
//! behind the same queries; the embedded default is one SQLite file per service.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub type Pool = SqlitePool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("migration {version} of {service}: {source}")]
    Migrate {
        service: &'static str,
        version: i64,
        source: sqlx::Error,
    },
}

/// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite::memory:`).
pub async fn connect(url: &str) -> Result<Pool, DbError> {
    let err = |source| DbError::Open {
        url: url.to_string(),
        source,
    };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL with NORMAL is durable across process crashes; only power loss can drop the tail.
        .synchronous(SqliteSynchronous::Normal)
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

/// A numbered migration.
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

/// Applies, in order and each in its own transaction, the migrations not applied yet.
pub async fn migrate(
    pool: &Pool,
    service: &'static str,
    migrations: &[Migration],
) -> Result<(), DbError> {
    let err = |version| {
        move |source| DbError::Migrate {
            service,
            version,
            source,
        }
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS zkmesh_migrations (
            version BIGINT PRIMARY KEY,
            applied_at_ms BIGINT NOT NULL
        )",
    )
    .execute(pool)
    .await
    .map_err(err(0))?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM zkmesh_migrations")
        .fetch_all(pool)
        .await
        .map_err(err(0))?
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    for m in migrations {
        if applied.contains(&m.version) {
            continue;
        }
        let mut tx = pool.begin().await.map_err(err(m.version))?;
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(err(m.version))?;
        sqlx::query("INSERT INTO zkmesh_migrations (version, applied_at_ms) VALUES ($1, $2)")
            .bind(m.version)
            .bind(crate::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(err(m.version))?;
        tx.commit().await.map_err(err(m.version))?;
        tracing::info!(service, version = m.version, "migration applied");
    }
    Ok(())
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
