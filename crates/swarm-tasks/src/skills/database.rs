//! Database: SQL is executed on a real SQLite database (embedded, bundled).
//!
//! Queries are compared by result set: order-insensitively (as multisets of rows) unless the
//! gold query orders its result at the top level, numbers with a relative tolerance.
//! Data-changing tasks are checked by a hash of the affected tables after the gold statement
//! and the agent's statement each ran on a fresh copy of the database.
//!
//! The agent's SQL is untrusted, so each connection is locked down: `ATTACH` (and so
//! `VACUUM INTO`, which attaches its target) is impossible (attach limit 0, authorizer),
//! `PRAGMA` is denied, extension loading stays disabled, file databases are opened read-only
//! (mutations run on a private in-memory copy), statements are interrupted at a deadline,
//! and the number of rows and the size of values read are capped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::EpisodeEnv;
use crate::episode::{Outcome, Step};
use crate::error::TaskError;
use crate::prompt::extract_code;

/// Where a task's database comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbSource {
    /// An SQLite file (never modified).
    File(PathBuf),
    /// An SQL script that creates and fills the database (run on a fresh in-memory database).
    Script(String),
}

/// How the agent's SQL is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlCheck {
    /// Compare result sets; `ordered` when the gold query orders them.
    Query {
        /// Row order matters.
        ordered: bool,
    },
    /// Compare the contents of these tables after the statement ran.
    Mutation {
        /// The affected tables.
        tables: Vec<String>,
    },
}

/// An SQL task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseTask {
    /// The database.
    pub db: DbSource,
    /// The reference SQL.
    pub gold_sql: String,
    /// How answers are judged.
    pub check: SqlCheck,
}

/// Most rows a query may return before it is judged wrong.
pub const MAX_ROWS: usize = 10_000;
/// Longest string or blob SQLite will build.
const MAX_VALUE_BYTES: i32 = 1 << 20;
/// Time one statement may run.
const STATEMENT_TIME: Duration = Duration::from_secs(2);
/// Relative tolerance for comparing numbers.
const REL_TOL: f64 = 1e-6;

/// One value of a result set.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// NULL.
    Null,
    /// A number (integers are compared as numbers with reals).
    Num(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Cell {
    fn from_ref(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Num(i as f64),
            ValueRef::Real(r) => Cell::Num(r),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }

    fn approx_eq(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Num(a), Cell::Num(b)) => {
                a == b || (a - b).abs() <= REL_TOL * a.abs().max(b.abs()).max(1e-9)
            }
            _ => self == other,
        }
    }

    /// A key that sorts equal-within-tolerance numbers together (6 significant digits).
    fn sort_key(&self) -> String {
        match self {
            Cell::Null => "0".into(),
            Cell::Num(n) => format!("1{:.5e}", n),
            Cell::Text(s) => format!("2{s}"),
            Cell::Blob(b) => format!("3{}", hex::encode(b)),
        }
    }

    fn render(&self) -> String {
        match self {
            Cell::Null => "NULL".into(),
            Cell::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            Cell::Num(n) => format!("{n}"),
            Cell::Text(s) => s.clone(),
            Cell::Blob(b) => format!("x'{}'", hex::encode(b)),
        }
    }
}

/// A result set.
pub type Rows = Vec<Vec<Cell>>;

fn lock_down(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
    conn.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } | AuthAction::Pragma { .. } => {
            Authorization::Deny
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }));
    Ok(())
}

fn set_deadline(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let deadline = Instant::now() + STATEMENT_TIME;
    conn.progress_handler(1000, Some(move || Instant::now() > deadline));
    Ok(())
}

/// Opens a task's database. `writable` gives a private in-memory copy.
pub fn open_db(db: &DbSource, writable: bool) -> Result<Connection, TaskError> {
    let mut conn = match db {
        DbSource::File(path) => {
            if !path.is_file() {
                return Err(TaskError::MissingData {
                    what: "SQLite database".into(),
                    path: path.clone(),
                    hint: "run scripts/fetch-data.sh".into(),
                });
            }
            let file = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            if writable {
                let mut mem = Connection::open_in_memory()?;
                copy_db(&file, &mut mem)?;
                mem
            } else {
                file
            }
        }
        DbSource::Script(sql) => {
            let mem = Connection::open_in_memory()?;
            mem.execute_batch(sql)?;
            mem
        }
    };
    lock_down(&mut conn)?;
    Ok(conn)
}

fn copy_db(src: &Connection, dst: &mut Connection) -> Result<(), rusqlite::Error> {
    let schema: Vec<String> = {
        let mut stmt = src.prepare(
            "SELECT sql FROM sqlite_master WHERE type='table' AND sql IS NOT NULL \
             AND name NOT LIKE 'sqlite_%'",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let names: Vec<String> = {
        let mut stmt = src.prepare(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let tx = dst.transaction()?;
    for s in &schema {
        tx.execute_batch(s)?;
    }
    for name in &names {
        let q = format!("SELECT * FROM \"{}\"", name.replace('"', "\"\""));
        let mut stmt = src.prepare(&q)?;
        let ncol = stmt.column_count();
        let placeholders = vec!["?"; ncol].join(",");
        let ins = format!(
            "INSERT INTO \"{}\" VALUES ({placeholders})",
            name.replace('"', "\"\"")
        );
        let mut ins = tx.prepare(&ins)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let vals: Vec<rusqlite::types::Value> = (0..ncol)
                .map(|i| row.get::<_, rusqlite::types::Value>(i))
                .collect::<Result<_, _>>()?;
            ins.execute(rusqlite::params_from_iter(vals))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Runs one query, returning its rows (capped) or SQLite's error message.
pub fn run_query(conn: &mut Connection, sql: &str) -> Result<Rows, String> {
    set_deadline(conn).map_err(|e| e.to_string())?;
    let sql = sql.trim().trim_end_matches(';').trim();
    if sql.is_empty() {
        return Err("empty SQL".into());
    }
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let ncol = stmt.column_count();
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        if out.len() >= MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} rows"));
        }
        let mut r = Vec::with_capacity(ncol);
        for i in 0..ncol {
            r.push(Cell::from_ref(row.get_ref(i).map_err(|e| e.to_string())?));
        }
        out.push(r);
    }
    Ok(out)
}

/// Runs statements that change data.
pub fn run_statements(conn: &mut Connection, sql: &str) -> Result<(), String> {
    set_deadline(conn).map_err(|e| e.to_string())?;
    conn.execute_batch(sql).map_err(|e| e.to_string())
}

/// A hash of the sorted contents of these tables (all tables when empty).
pub fn tables_hash(conn: &mut Connection, tables: &[String]) -> Result<String, String> {
    let names: Vec<String> = if tables.is_empty() {
        let rows = run_query(
            conn,
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        rows.into_iter()
            .map(|r| r.iter().map(Cell::render).collect())
            .collect()
    } else {
        tables.to_vec()
    };
    let mut h = Sha256::new();
    for t in &names {
        let rows = run_query(
            conn,
            &format!("SELECT * FROM \"{}\"", t.replace('"', "\"\"")),
        )?;
        let mut keys: Vec<String> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(Cell::sort_key)
                    .collect::<Vec<_>>()
                    .join("\u{1f}")
            })
            .collect();
        keys.sort();
        h.update(t.as_bytes());
        h.update([0]);
        for k in keys {
            h.update(k.as_bytes());
            h.update([0x1e]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether a query orders its result at the top level (an `ORDER BY` outside parentheses).
pub fn is_ordered(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut depth = 0i32;
    let mut in_str: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match in_str {
            Some(q) if c == q => in_str = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' | b'`' => in_str = Some(c),
                b'(' => depth += 1,
                b')' => depth -= 1,
                b'o' if depth == 0 && lower[i..].starts_with("order") => {
                    let before_ok = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
                    let rest = lower[i + 5..].trim_start();
                    if before_ok && rest.starts_with("by") {
                        return true;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    false
}

fn compare(gold: &Rows, got: &Rows, ordered: bool) -> Result<(), String> {
    if gold.len() != got.len() {
        return Err(format!("expected {} rows, got {}", gold.len(), got.len()));
    }
    let gold_cols = gold.first().map_or(0, Vec::len);
    let got_cols = got.first().map_or(0, Vec::len);
    if !gold.is_empty() && gold_cols != got_cols {
        return Err(format!("expected {gold_cols} columns, got {got_cols}"));
    }
    let sorted = |rows: &Rows| -> Vec<Vec<Cell>> {
        let mut v = rows.clone();
        v.sort_by_cached_key(|r| r.iter().map(Cell::sort_key).collect::<Vec<_>>());
        v
    };
    let (a, b) = if ordered {
        (gold.clone(), got.clone())
    } else {
        (sorted(gold), sorted(got))
    };
    for (i, (ra, rb)) in a.iter().zip(b.iter()).enumerate() {
        if !ra.iter().zip(rb.iter()).all(|(x, y)| x.approx_eq(y)) {
            let show = |r: &Vec<Cell>| r.iter().map(Cell::render).collect::<Vec<_>>().join(" | ");
            return Err(format!(
                "row {} differs{}: expected [{}], got [{}]",
                i + 1,
                if ordered { "" } else { " (after sorting)" },
                show(ra),
                show(rb)
            ));
        }
    }
    Ok(())
}

impl DatabaseTask {
    /// A query task whose ordering is read off the gold SQL.
    pub fn query(db: DbSource, gold_sql: impl Into<String>) -> Self {
        let gold_sql = gold_sql.into();
        let ordered = is_ordered(&gold_sql);
        Self {
            db,
            gold_sql,
            check: SqlCheck::Query { ordered },
        }
    }

    /// Judges the SQL in an agent's answer.
    pub fn check(&self, id: &str, answer: &str) -> Result<Outcome, TaskError> {
        let sql = extract_code(answer, &["sql", "sqlite"]);
        if sql.trim().is_empty() {
            return Ok(Outcome::fail("empty answer"));
        }
        let broken = |message: String| TaskError::BrokenTask {
            task: id.to_string(),
            message,
        };
        match &self.check {
            SqlCheck::Query { ordered } => {
                let mut conn = open_db(&self.db, false)?;
                let gold = run_query(&mut conn, &self.gold_sql)
                    .map_err(|e| broken(format!("gold SQL failed: {e}")))?;
                let got = match run_query(&mut conn, &sql) {
                    Ok(rows) => rows,
                    Err(e) => return Ok(Outcome::fail(format!("SQL error: {e}"))),
                };
                Ok(match compare(&gold, &got, *ordered) {
                    Ok(()) => Outcome::pass(format!("result matches ({} rows)", gold.len())),
                    Err(why) => Outcome::fail(why),
                })
            }
            SqlCheck::Mutation { tables } => {
                let mut gold_db = open_db(&self.db, true)?;
                run_statements(&mut gold_db, &self.gold_sql)
                    .map_err(|e| broken(format!("gold SQL failed: {e}")))?;
                let want = tables_hash(&mut gold_db, tables).map_err(broken)?;
                let mut db = open_db(&self.db, true)?;
                if let Err(e) = run_statements(&mut db, &sql) {
                    return Ok(Outcome::fail(format!("SQL error: {e}")));
                }
                Ok(match tables_hash(&mut db, tables) {
                    Ok(got) if got == want => Outcome::pass("affected tables match"),
                    Ok(_) => Outcome::fail(format!(
                        "contents of {} differ from the expected state",
                        if tables.is_empty() {
                            "the database".to_string()
                        } else {
                            tables.join(", ")
                        }
                    )),
                    Err(e) => Outcome::fail(format!("cannot read the tables afterwards: {e}")),
                })
            }
        }
    }
}

/// The `CREATE TABLE` statements of a database, for prompts.
pub fn schema_sql(db: &DbSource) -> Result<String, TaskError> {
    let conn = open_db(db, false)?;
    let mut stmt = conn.prepare(
        "SELECT sql FROM sqlite_master WHERE type='table' AND sql IS NOT NULL \
         AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let v: Vec<String> = rows.collect::<Result<_, _>>()?;
    Ok(v.iter()
        .map(|s| format!("{s};"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A database episode. Single-turn: the answer is the SQL. Multi-turn (InterCode-style):
/// `Act: sql` + a ```sql block runs a query on the database and shows the rows; `Act: submit`
/// + a ```sql block is the answer.
pub(crate) struct DatabaseEnv<'a> {
    id: String,
    task: &'a DatabaseTask,
    multi_turn: bool,
}

impl<'a> DatabaseEnv<'a> {
    pub(crate) fn new(id: &str, task: &'a DatabaseTask, max_rounds: u32) -> Self {
        Self {
            id: id.to_string(),
            task,
            multi_turn: max_rounds > 1,
        }
    }

    fn explore(&self, sql: &str) -> Result<String, TaskError> {
        // Exploration never changes anything: a private copy for data-changing tasks.
        let writable = matches!(self.task.check, SqlCheck::Mutation { .. });
        let mut conn = open_db(&self.task.db, writable)?;
        Ok(match run_query(&mut conn, sql) {
            Ok(rows) if rows.is_empty() => "[no rows]".to_string(),
            Ok(rows) => render_rows(&rows, OBSERVATION_ROWS),
            Err(e) => format!("Error: {e}"),
        })
    }
}

/// Rows of a query result shown to the agent.
const OBSERVATION_ROWS: usize = 20;

/// Renders rows as text, one per line, `|` between values.
fn render_rows(rows: &Rows, max_rows: usize) -> String {
    let mut s = String::new();
    for r in rows.iter().take(max_rows) {
        let line: Vec<String> = r.iter().map(Cell::render).collect();
        s.push_str(&line.join(" | "));
        s.push('\n');
    }
    if rows.len() > max_rows {
        s.push_str(&format!("... ({} rows in all)\n", rows.len()));
    }
    s
}

impl EpisodeEnv for DatabaseEnv<'_> {
    fn step(&mut self, action: &str, last_round: bool) -> Result<Step, TaskError> {
        if !self.multi_turn {
            return Ok(Step::Done(self.task.check(&self.id, action)?));
        }
        let Some(pos) = action.rfind("Act:") else {
            return Ok(if last_round {
                Step::Done(Outcome::fail("no \"Act:\" line"))
            } else {
                Step::Observe(
                    "Invalid action: use \"Act: sql\" or \"Act: submit\" with a ```sql block."
                        .into(),
                )
            });
        };
        let act = action[pos + 4..].trim_start();
        let lower = act.to_ascii_lowercase();
        if lower.starts_with("submit") {
            return Ok(Step::Done(
                self.task.check(&self.id, &act["submit".len()..])?,
            ));
        }
        if lower.starts_with("sql") {
            if last_round {
                return Ok(Step::Done(Outcome::fail(
                    "round limit reached without a submission",
                )));
            }
            let sql = extract_code(&act[3..], &["sql", "sqlite"]);
            return Ok(Step::Observe(self.explore(&sql)?));
        }
        Ok(if last_round {
            Step::Done(Outcome::fail("invalid action"))
        } else {
            Step::Observe(
                "Invalid action: use \"Act: sql\" or \"Act: submit\" with a ```sql block.".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "CREATE TABLE emp(id INTEGER PRIMARY KEY, name TEXT, dept TEXT, salary REAL);
        INSERT INTO emp VALUES (1,'ann','eng',100.0),(2,'bob','eng',80.5),(3,'cy','ops',70.0);";

    fn task(gold: &str) -> DatabaseTask {
        DatabaseTask::query(DbSource::Script(DB.into()), gold)
    }

    #[test]
    fn query_results_compare_as_multisets_unless_ordered() -> Result<(), TaskError> {
        let t = task("SELECT name FROM emp WHERE dept='eng'");
        assert!(
            t.check(
                "t",
                "```sql\nSELECT name FROM emp WHERE salary > 75 ORDER BY name DESC\n```"
            )?
            .passed
        );
        assert!(!t.check("t", "SELECT name FROM emp")?.passed);
        let t = task("SELECT name FROM emp ORDER BY salary");
        assert!(
            !t.check("t", "SELECT name FROM emp ORDER BY salary DESC")?
                .passed
        );
        assert!(
            t.check("t", "select name from emp order by salary asc;")?
                .passed
        );
        Ok(())
    }

    #[test]
    fn numbers_compare_with_tolerance() -> Result<(), TaskError> {
        let t = task("SELECT avg(salary) FROM emp");
        assert!(t.check("t", "SELECT sum(salary)/3.0 FROM emp")?.passed);
        assert!(t.check("t", "SELECT 250.5/3 FROM emp LIMIT 1")?.passed);
        assert!(!t.check("t", "SELECT 83.6 FROM emp LIMIT 1")?.passed);
        Ok(())
    }

    #[test]
    fn mutations_are_checked_by_table_hash() -> Result<(), TaskError> {
        let t = DatabaseTask {
            db: DbSource::Script(DB.into()),
            gold_sql: "UPDATE emp SET salary = salary + 10 WHERE dept = 'eng'".into(),
            check: SqlCheck::Mutation {
                tables: vec!["emp".into()],
            },
        };
        assert!(
            t.check(
                "t",
                "UPDATE emp SET salary = salary + 10 WHERE id IN (1, 2)"
            )?
            .passed
        );
        assert!(!t.check("t", "UPDATE emp SET salary = salary + 10")?.passed);
        Ok(())
    }

    #[test]
    fn hostile_sql_is_contained() -> Result<(), TaskError> {
        let dir = tempfile::tempdir().map_err(TaskError::io("tempdir"))?;
        let target = dir.path().join("stolen.db");
        let t = task("SELECT count(*) FROM emp");
        for evil in [
            format!("ATTACH DATABASE '{}' AS x", target.display()),
            format!("VACUUM INTO '{}'", target.display()),
            "PRAGMA writable_schema = 1".to_string(),
            "SELECT load_extension('/tmp/x.so')".to_string(),
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c".to_string(),
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 100000) SELECT x FROM c".to_string(),
            "SELECT zeroblob(2000000000)".to_string(),
            "DROP TABLE emp".to_string(),
        ] {
            let start = Instant::now();
            let o = t.check("t", &evil)?;
            assert!(!o.passed, "{evil}: {o:?}");
            assert!(start.elapsed() < Duration::from_secs(5), "{evil} took too long");
        }
        assert!(!target.exists(), "hostile SQL wrote a file");
        Ok(())
    }

    #[test]
    fn multi_turn_explores_then_submits() -> Result<(), TaskError> {
        let t = task("SELECT count(*) FROM emp WHERE dept = 'eng'");
        let mut env = DatabaseEnv::new("t", &t, 3);
        match env.step("Act: sql\n```sql\nSELECT dept FROM emp\n```", false)? {
            Step::Observe(o) => assert_eq!(o, "eng\neng\nops\n"),
            other => panic!("{other:?}"),
        }
        match env.step("Act: sql\n```sql\nSELECT nope FROM emp\n```", false)? {
            Step::Observe(o) => assert!(o.starts_with("Error:"), "{o}"),
            other => panic!("{other:?}"),
        }
        match env.step("Act: submit\n```sql\nSELECT 2\n```", true)? {
            Step::Done(o) => assert!(o.passed, "{o:?}"),
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn order_detection_ignores_subqueries_and_strings() {
        assert!(is_ordered("SELECT a FROM t ORDER BY a"));
        assert!(!is_ordered(
            "SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)"
        ));
        assert!(!is_ordered("SELECT 'order by' FROM t"));
        assert!(is_ordered("select a from t order\n by a desc limit 1"));
    }
}
