//! Transaction control on a [`Conn`]: the transactions and savepoints the engine opens through
//! diesel's transaction manager, the per-message savepoint of a transactional batch, and
//! closing what a handler left open.

use std::num::NonZeroU32;

use diesel_async::{AsyncConnection, SimpleAsyncConnection, TransactionManager};

use super::{Conn, StoreResult, dispatch};

/// The savepoint around the message in hand in a transactional batch, set, released and
/// rolled back to by name. It is not one of diesel's (diesel names its own by depth), so a
/// handler's own `transaction` nests inside it as usual.
const SET: &str = "SAVEPOINT checkpoint_message";
/// The previous message's savepoint released and the next one set, in one round trip (MySQL
/// would replace a savepoint of the same name by itself; the release is harmless there).
const RELEASE_AND_SET: &str = "RELEASE SAVEPOINT checkpoint_message; SAVEPOINT checkpoint_message";
/// Back to the message's savepoint, which stays set.
const UNDO: &str = "ROLLBACK TO SAVEPOINT checkpoint_message";

impl Conn<'_> {
    /// Opens a transaction (a savepoint when one is already open).
    pub(crate) async fn begin(&mut self) -> StoreResult<()> {
        let result = dispatch!(self, c => begin_on(&mut **c).await);
        result.map_err(|e| self.query_error(e))
    }

    /// Commits the innermost open transaction.
    pub(crate) async fn commit(&mut self) -> StoreResult<()> {
        let result = dispatch!(self, c => commit_on(&mut **c).await);
        result.map_err(|e| self.query_error(e))
    }

    /// Rolls back the innermost open transaction.
    pub(crate) async fn rollback(&mut self) -> StoreResult<()> {
        let result = dispatch!(self, c => rollback_on(&mut **c).await);
        result.map_err(|e| self.query_error(e))
    }

    /// How many transactions and savepoints diesel's transaction manager has open on this
    /// connection.
    pub(crate) async fn transaction_depth(&mut self) -> StoreResult<u32> {
        let depth = match self {
            // The SQLite wrapper hands out its transaction state only while no query of its own
            // is in flight, and panics otherwise (a handler may have dropped a query midway);
            // on the wrapper's blocking thread the read waits for such a query to finish.
            Conn::Sqlite(c) => c.spawn_blocking(sqlite_depth).await,
            Conn::Postgres(c) => depth_of(&mut **c),
            Conn::Mysql(c) => depth_of(&mut **c),
        };
        depth.map_err(|e| self.query_error(e))
    }

    /// Rolls back the transactions a handler opened on this connection and left open (it
    /// panicked inside its own `transaction`), down to `depth`, the depth the engine handed the
    /// connection over at. Without this, the engine's next commit would only release the
    /// handler's savepoint, and the checkpoint transaction would never be committed. Returns
    /// how many it rolled back. Fewer than `depth` open means the handler ended the engine's
    /// own transaction: an error, as for a broken transaction manager, since nothing the
    /// engine does next on this connection could be trusted.
    pub(crate) async fn close_transactions_above(&mut self, depth: u32) -> StoreResult<u32> {
        let mut closed = 0;
        loop {
            let open = self.transaction_depth().await?;
            if open == depth {
                return Ok(closed);
            }
            if open < depth {
                return Err(self.query_error(diesel::result::Error::BrokenTransactionManager));
            }
            self.rollback().await?;
            closed += 1;
        }
    }

    /// Sets the savepoint of the next message of a transactional batch. Unless it is the batch's
    /// first, the previous message's savepoint is released in the same round trip, keeping what
    /// that message wrote.
    pub(crate) async fn mark_message(&mut self, first: bool) -> StoreResult<()> {
        let sql = if first { SET } else { RELEASE_AND_SET };
        let result = dispatch!(self, c => c.batch_execute(sql).await);
        result.map_err(|e| self.query_error(e))
    }

    /// Undoes everything since [`Conn::mark_message`]: the handler's writes of the message in
    /// hand. The savepoint stays set; what is written next (a failure row, the claim's
    /// deletion) is kept.
    pub(crate) async fn undo_message(&mut self) -> StoreResult<()> {
        let result = dispatch!(self, c => c.batch_execute(UNDO).await);
        result.map_err(|e| self.query_error(e))
    }
}

fn depth_of<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<u32> {
    let status = C::TransactionManager::transaction_manager_status_mut(c);
    Ok(status.transaction_depth()?.map_or(0, NonZeroU32::get))
}

fn sqlite_depth(c: &mut diesel::SqliteConnection) -> diesel::QueryResult<u32> {
    use diesel::connection::{Connection, TransactionManager as _};
    let status =
        <diesel::SqliteConnection as Connection>::TransactionManager::transaction_manager_status_mut(
            c,
        );
    Ok(status.transaction_depth()?.map_or(0, NonZeroU32::get))
}

async fn begin_on<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
    C::TransactionManager::begin_transaction(c).await
}

async fn commit_on<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
    C::TransactionManager::commit_transaction(c).await
}

async fn rollback_on<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
    C::TransactionManager::rollback_transaction(c).await
}
