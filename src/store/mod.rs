//! The store: SQLite (embedded, the default) or PostgreSQL (a cluster's shared store), through
//! sqlx's `Any` driver with one set of queries (`$N` placeholders, portable SQL) and one
//! migration directory per dialect (`migrations/sqlite`, `migrations/postgres`).
//!
//! SQLite: WAL journal with `synchronous = FULL`: a write that returned is on disk and survives a
//! `kill -9` (and a power cut). Writes that belong together run in one transaction on both.

mod chat;
mod models;
mod moderation;
mod users;

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use chat::{exceeded, AttachmentUsage, ATTACHMENT_GRACE_SECS};
pub use models::*;
pub use users::{Account, Deleted, Deletion};

use crate::auth::token::now_secs;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a request waits for a database connection before it is refused as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists (e.g. a username).
    #[error("already exists")]
    Conflict,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the database could not be reached (as opposed to refusing a query).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Db(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
            )
        )
    }
}

fn conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Db(e),
    }
}

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Opens (creating if needed) `data_dir/roomcast.db` and applies migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let io = |e| StoreError::Db(sqlx::Error::Io(e));
        crate::transport::tls::private_dir(data_dir).map_err(io)?;
        // Created owner-only before SQLite opens it; its WAL and shared-memory files take the
        // database's mode.
        let db = data_dir.join("roomcast.db");
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            create.mode(0o600);
            create.open(&db).map_err(io)?;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        #[cfg(not(unix))]
        create.open(&db).map_err(io)?;
        // Absolute: a relative path would be read from the root of a `sqlite://` URL.
        let db = std::path::absolute(&db).map_err(io)?;
        let mut url = url::Url::parse("sqlite://").expect("static URL");
        url.set_path(&db.to_string_lossy());
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // sqlx's own defaults already give foreign keys and a 5 s busy timeout.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url.as_str())
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Connects to PostgreSQL at `url` (`postgres://user:password@host/db`) and applies
    /// migrations. Several relays may share the database; migrations take an advisory lock.
    pub async fn connect_postgres(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ----- users -----

    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User, StoreError> {
        let username = crate::auth::token::canonical_identity(username);
        let username = username.as_str();
        let id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO users (username, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(i64::from(is_admin))
        .bind(now_secs() as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(conflict)?;
        Ok(User {
            id,
            username: username.to_owned(),
            is_admin,
        })
    }

    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The user and their password hash. Names are compared in their canonical form (SQLite's
    /// column collation would forgive the letter case; PostgreSQL's does not).
    pub async fn user_by_name(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        let username = crate::auth::token::canonical_identity(username);
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, is_admin, password_hash FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(UserRow::split))
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<(User, String)>, StoreError> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, is_admin, password_hash FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(UserRow::split))
    }

    // ----- login sessions -----

    pub async fn add_login(
        &self,
        jti: &str,
        user_id: i64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO login_sessions (jti, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(jti)
            .bind(user_id)
            .bind(expires_at as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn login_active(&self, jti: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM login_sessions WHERE jti = $1 AND expires_at > $2",
        )
        .bind(jti)
        .bind(now_secs() as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    // ----- rooms -----

    /// Creates a room and makes its owner the host, in one transaction.
    pub async fn create_room(&self, room: &Room) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rooms (id, name, password_hash, max_participants, empty_timeout_secs, metadata, mode, locked, owner_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&room.id)
        .bind(&room.name)
        .bind(&room.password_hash)
        .bind(room.max_participants)
        .bind(room.empty_timeout_secs)
        .bind(room.metadata.to_string())
        .bind(room.mode.as_str())
        .bind(i64::from(room.locked))
        .bind(room.owner_id)
        .bind(room.created_at)
        .execute(&mut *tx)
        .await
        .map_err(conflict)?;
        sqlx::query("INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, 'host')")
            .bind(&room.id)
            .bind(room.owner_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn room(&self, id: &str) -> Result<Option<Room>, StoreError> {
        let row = sqlx::query_as::<_, RoomRow>("SELECT * FROM rooms WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Room::from))
    }

    /// How many rooms `user_id` owns.
    pub async fn rooms_owned(&self, user_id: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rooms WHERE owner_id = $1")
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Up to `limit` rooms, newest first, strictly older than `before` (created_at, id).
    pub async fn rooms(
        &self,
        before: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<Room>, StoreError> {
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let rows = sqlx::query_as::<_, RoomRow>(
            "SELECT * FROM rooms WHERE created_at < $1 OR (created_at = $2 AND id < $3) \
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Room::from).collect())
    }

    /// Changes the given settings of room `id` and nothing else, in one statement, so two
    /// concurrent changes (a PATCH that is still hashing a password, a lock) never overwrite
    /// each other's columns with stale values. Returns the room as stored after the change.
    pub async fn update_room(
        &self,
        id: &str,
        changes: &RoomChanges,
    ) -> Result<Option<Room>, StoreError> {
        let row = sqlx::query_as::<_, RoomRow>(
            "UPDATE rooms SET name = COALESCE($1, name), password_hash = COALESCE($2, password_hash), \
             max_participants = COALESCE($3, max_participants), \
             empty_timeout_secs = COALESCE($4, empty_timeout_secs), metadata = COALESCE($5, metadata), \
             mode = COALESCE($6, mode), locked = COALESCE($7, locked) WHERE id = $8 RETURNING *",
        )
        .bind(&changes.name)
        .bind(&changes.password_hash)
        .bind(changes.max_participants)
        .bind(changes.empty_timeout_secs)
        .bind(changes.metadata.as_ref().map(|m| m.to_string()))
        .bind(changes.mode.map(|m| m.as_str()))
        .bind(changes.locked.map(i64::from))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Room::from))
    }

    pub async fn delete_room(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM rooms WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ----- members and roles -----

    pub async fn role(&self, room: &str, user_id: i64) -> Result<Option<Role>, StoreError> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM members WHERE room_id = $1 AND user_id = $2")
                .bind(room)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(role.and_then(|r| r.parse().ok()))
    }

    pub async fn set_role(&self, room: &str, user_id: i64, role: Role) -> Result<(), StoreError> {
        upsert_member(&self.pool, room, user_id, role).await
    }

    // ----- invites -----

    pub async fn create_invite(
        &self,
        jti: &str,
        room: &str,
        role: Role,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO invites (jti, room_id, role, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(jti)
            .bind(room)
            .bind(role.as_str())
            .bind(expires_at as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks an unexpired, unused invite used by `user_id` and gives them its role (replacing
    /// a moderator's override of their grants), in one transaction. False (and nothing
    /// written) if it was used or expired, or if the user is banned from the room.
    pub async fn redeem_invite(
        &self,
        jti: &str,
        room: &str,
        user_id: i64,
        role: Role,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE invites SET used_by = $1 WHERE jti = $2 AND room_id = $3 AND used_by IS NULL AND expires_at > $4",
        )
        .bind(user_id)
        .bind(jti)
        .bind(room)
        .bind(now_secs() as i64)
        .execute(&mut *tx)
        .await?;
        // The ban check runs inside the transaction, so a ban landing meanwhile wins.
        let banned: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM bans b JOIN users u ON u.username = b.username \
             WHERE b.room_id = $1 AND u.id = $2",
        )
        .bind(room)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if r.rows_affected() != 1 || banned > 0 {
            return Ok(false);
        }
        upsert_member(&mut *tx, room, user_id, role).await?;
        sqlx::query(
            "DELETE FROM grant_overrides WHERE room_id = $1 AND identity IN \
             (SELECT username FROM users WHERE id = $2)",
        )
        .bind(room)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Makes `user_id` a member of `room` with `role` (or changes their role).
async fn upsert_member<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    room: &str,
    user_id: i64,
    role: Role,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id, user_id) DO UPDATE SET role = excluded.role",
    )
    .bind(room)
    .bind(user_id)
    .bind(role.as_str())
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relative_data_dir_is_relative_to_the_working_directory() {
        // `data_dir` defaults to the relative `data`.
        let dir = std::path::PathBuf::from(format!("target/store-test-{}", uuid::Uuid::new_v4()));
        let store = Store::open(&dir).await.expect("opened");
        store.create_user("someone", "hash", false).await.unwrap();
        assert!(dir.join("roomcast.db").exists());
        assert!(store.user_by_name("SOMEONE").await.unwrap().is_some());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
