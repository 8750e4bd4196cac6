//! Prepared statements between `CreatePreparedStatement` and `ClosePreparedStatement`: the SQL and the parameter
//! values a client bound (`DoPut`), behind an opaque random handle.
//!
//! A handle is state the server keeps for a client, so the table is bounded three ways: in number
//! ([`Limits::max_statements`]), in bytes (SQL and values, [`Limits::max_bytes`], held in the process memory
//! budget), and in time (a statement unused for [`Limits::idle`] expires). Past a bound the statement used least
//! recently is dropped to make room; a client that later uses its handle is told it is unknown and prepares again.
//! The handle is the same after `DoPut` (clients that take the updated handle Flight SQL allows and clients that
//! keep the first both work).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datafusion::common::ScalarValue;
use parking_lot::Mutex;
use tailscope_core::memory::{MemoryBudget, Reservation};
use tonic::Status;

/// Bytes counted for a statement beside its SQL and values: the map slot, the handle, the entry.
const ENTRY_OVERHEAD: usize = 256;

/// The bounds of the table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Statements held at once.
    pub max_statements: usize,
    /// Bytes of SQL and bound values held at once.
    pub max_bytes: usize,
    /// A statement not used for this long is dropped.
    pub idle: Duration,
}

impl Default for Limits {
    /// 1,024 statements, 64 MiB, an hour idle: far beyond a few DBeaver or Grafana sessions, which prepare a
    /// statement per query and close it.
    fn default() -> Limits {
        Limits { max_statements: 1024, max_bytes: 64 << 20, idle: Duration::from_secs(3600) }
    }
}

/// A prepared statement as held.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The SQL as the client wrote it.
    pub sql: String,
    /// The values last bound, one per parameter; empty until the client binds some.
    pub values: Vec<ScalarValue>,
}

struct Entry {
    statement: Statement,
    bytes: usize,
    last_used: Instant,
}

/// The prepared statements of one server.
pub struct PreparedStatements {
    limits: Limits,
    state: Mutex<State>,
}

struct State {
    entries: HashMap<Vec<u8>, Entry>,
    /// What the entries hold, in the process budget.
    reservation: Reservation,
}

fn size_of(statement: &Statement) -> usize {
    let values: usize = statement.values.iter().map(ScalarValue::size).sum();
    ENTRY_OVERHEAD + statement.sql.len() + values
}

/// The answer to a handle that is not (or no longer) in the table.
fn unknown() -> Status {
    Status::not_found(
        "unknown prepared statement handle: it was closed, expired after an hour unused or made room for newer \
         ones, or the server restarted; prepare the statement again",
    )
}

impl PreparedStatements {
    /// An empty table holding its bytes in `budget`.
    pub fn new(limits: Limits, budget: &MemoryBudget) -> PreparedStatements {
        PreparedStatements { limits, state: Mutex::new(State { entries: HashMap::new(), reservation: budget.empty() }) }
    }

    /// Holds `sql` under a new handle.
    pub fn create(&self, sql: String, now: Instant) -> Result<Vec<u8>, Status> {
        let statement = Statement { sql, values: Vec::new() };
        let handle = rand::random::<[u8; 16]>().to_vec();
        let mut state = self.state.lock();
        self.make_room(&mut state, None, size_of(&statement), now)?;
        let bytes = size_of(&statement);
        state.entries.insert(handle.clone(), Entry { statement, bytes, last_used: now });
        Ok(handle)
    }

    /// Binds `values` to the statement under `handle`, replacing what was bound before.
    pub fn bind(&self, handle: &[u8], values: Vec<ScalarValue>, now: Instant) -> Result<(), Status> {
        let mut state = self.state.lock();
        let Some(entry) = state.entries.get(handle) else {
            return Err(unknown());
        };
        let statement = Statement { sql: entry.statement.sql.clone(), values };
        let bytes = size_of(&statement);
        self.make_room(&mut state, Some(handle), bytes, now)?;
        let state = &mut *state;
        let entry = state.entries.get_mut(handle).ok_or_else(unknown)?;
        entry.statement = statement;
        entry.bytes = bytes;
        entry.last_used = now;
        Ok(())
    }

    /// The statement under `handle`, as last bound.
    pub fn get(&self, handle: &[u8], now: Instant) -> Result<Statement, Status> {
        let mut state = self.state.lock();
        self.expire(&mut state, now);
        let entry = state.entries.get_mut(handle).ok_or_else(unknown)?;
        entry.last_used = now;
        Ok(entry.statement.clone())
    }

    /// Drops the statement under `handle`; an unknown handle (closed twice, expired) is no error.
    pub fn close(&self, handle: &[u8]) {
        let mut state = self.state.lock();
        if let Some(entry) = state.entries.remove(handle) {
            state.reservation.shrink(entry.bytes);
        }
    }

    /// Statements held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Drops statements idle past the limit.
    fn expire(&self, state: &mut State, now: Instant) {
        let idle = self.limits.idle;
        let mut freed = 0;
        state.entries.retain(|_, e| {
            let keep = now.saturating_duration_since(e.last_used) < idle;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        state.reservation.shrink(freed);
    }

    /// Makes room for an entry of `bytes` (replacing `replacing`'s, if given): expired statements go first, then
    /// the least recently used others, until the count and the bytes fit; the bytes are then reserved in the
    /// budget. Refused when the entry alone is past the bytes bound, or the budget has no room.
    fn make_room(&self, state: &mut State, replacing: Option<&[u8]>, bytes: usize, now: Instant) -> Result<(), Status> {
        if bytes > self.limits.max_bytes {
            return Err(Status::resource_exhausted(format!(
                "the prepared statement and its parameters take {bytes} bytes, more than the {} the server holds \
                 for all prepared statements",
                self.limits.max_bytes
            )));
        }
        self.expire(state, now);
        let old = replacing.and_then(|h| state.entries.get(h)).map_or(0, |e| e.bytes);
        let new_entries = usize::from(replacing.is_none());
        loop {
            let count = state.entries.len() + new_entries;
            let held = state.reservation.size() - old + bytes;
            if count <= self.limits.max_statements && held <= self.limits.max_bytes {
                break;
            }
            let oldest = state
                .entries
                .iter()
                .filter(|(h, _)| replacing != Some(h.as_slice()))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| h.clone());
            let Some(oldest) = oldest else { break };
            if let Some(e) = state.entries.remove(&oldest) {
                state.reservation.shrink(e.bytes);
            }
        }
        let target = state.reservation.size() - old + bytes;
        state
            .reservation
            .try_resize(target, &"prepared statements (Flight SQL)")
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_statements: usize, max_bytes: usize) -> (MemoryBudget, PreparedStatements) {
        let budget = MemoryBudget::new(1 << 30);
        let limits = Limits { max_statements, max_bytes, idle: Duration::from_secs(60) };
        let table = PreparedStatements::new(limits, &budget);
        (budget, table)
    }

    #[test]
    fn statements_are_held_bound_and_closed_with_their_bytes_in_the_budget() {
        let (budget, table) = table(8, 1 << 20);
        let t0 = Instant::now();
        let h = table.create("SELECT $1".into(), t0).unwrap();
        assert_eq!(h.len(), 16);
        assert_eq!(budget.used(), ENTRY_OVERHEAD + 9);
        table.bind(&h, vec![ScalarValue::Utf8(Some("x".repeat(1000)))], t0).unwrap();
        assert!(budget.used() > 1000, "the values are held in the budget: {}", budget.used());
        let s = table.get(&h, t0).unwrap();
        assert_eq!((s.sql.as_str(), s.values.len()), ("SELECT $1", 1));
        table.close(&h);
        table.close(&h);
        assert_eq!(budget.used(), 0);
        assert_eq!(table.get(&h, t0).unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(table.bind(b"nope", Vec::new(), t0).unwrap_err().code(), tonic::Code::NotFound);
    }

    #[test]
    fn the_table_is_bounded_in_number_bytes_and_time() {
        let (budget, table) = table(3, 4096);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let handles: Vec<_> = (0..3).map(|i| table.create(format!("SELECT {i}"), at(i)).unwrap()).collect();
        // Using the first makes the second the least recently used: a fourth statement replaces it.
        table.get(&handles[0], at(10)).unwrap();
        let fourth = table.create("SELECT 3".into(), at(11)).unwrap();
        assert_eq!(table.held(), 3);
        assert_eq!(table.get(&handles[1], at(12)).unwrap_err().code(), tonic::Code::NotFound);
        table.get(&handles[0], at(12)).unwrap();

        // Bytes: a bound value that needs most of the bound pushes the others out, never the one it is bound to.
        let big = vec![ScalarValue::Binary(Some(vec![0; 3700]))];
        table.bind(&fourth, big, at(13)).unwrap();
        assert_eq!(table.held(), 1);
        assert!(budget.used() <= 4096, "{}", budget.used());
        let too_big = vec![ScalarValue::Binary(Some(vec![0; 5000]))];
        assert_eq!(table.bind(&fourth, too_big, at(14)).unwrap_err().code(), tonic::Code::ResourceExhausted);
        table.get(&fourth, at(14)).unwrap();

        // Time: unused for the idle limit, a statement is gone, and its bytes with it.
        assert_eq!(table.get(&fourth, at(14 + 61)).unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!((table.held(), budget.used()), (0, 0));
    }

    #[test]
    fn a_full_budget_refuses_a_statement_instead_of_growing_past_it() {
        let budget = MemoryBudget::new(1 << 20);
        let table = PreparedStatements::new(Limits::default(), &budget);
        let _held = budget.try_reserve(budget.room(), &"everything else").unwrap();
        let err = table.create("SELECT 1".into(), Instant::now()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    }
}
