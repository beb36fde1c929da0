//! Converts a mysqldump file holding several databases (InterCode's `spider_dev.sql`) into
//! one SQLite file per database.
//!
//! Only what such dumps contain is handled: `USE`, `CREATE TABLE` (MySQL-only clauses such as
//! `ENGINE`, `COLLATE`, `AUTO_INCREMENT` and secondary `KEY`s are dropped) and
//! `INSERT ... VALUES` (MySQL string escapes rewritten for SQLite). Everything else (`SET`,
//! `LOCK TABLES`, comments, users and grants) is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::TaskError;

/// Splits SQL text into statements at `;` outside quotes and comments; comments are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            cur.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                quote = Some(c);
                cur.push(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                cur.push('\n');
            }
            '#' if cur.trim().is_empty() => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            ';' => {
                let s = cur.trim().to_string();
                if !s.is_empty() {
                    out.push(s);
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    let s = cur.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Rewrites MySQL quoting for SQLite: backquoted identifiers become double-quoted, and
/// backslash escapes inside string literals become plain characters (`'` doubled).
pub fn rewrite_literals(stmt: &str) -> String {
    let mut out = String::with_capacity(stmt.len());
    let mut chars = stmt.chars();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                out.push('"');
                for n in chars.by_ref() {
                    if n == '`' {
                        break;
                    }
                    if n == '"' {
                        out.push('"');
                    }
                    out.push(n);
                }
                out.push('"');
            }
            '\'' | '"' => {
                let q = c;
                out.push('\'');
                loop {
                    match chars.next() {
                        None => break,
                        Some('\\') => match chars.next() {
                            Some('n') => out.push('\n'),
                            Some('r') => out.push('\r'),
                            Some('t') => out.push('\t'),
                            Some('0') => out.push('\0'),
                            Some('Z') => out.push('\u{1a}'),
                            Some('\'') => out.push_str("''"),
                            Some(other) => out.push(other),
                            None => break,
                        },
                        Some(n) if n == q => {
                            // A doubled quote is the quote itself.
                            if chars.clone().next() == Some(q) {
                                chars.next();
                                if q == '\'' {
                                    out.push_str("''");
                                } else {
                                    out.push('"');
                                }
                                continue;
                            }
                            out.push('\'');
                            break;
                        }
                        Some('\'') => out.push_str("''"),
                        Some(n) => out.push(n),
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Translates a MySQL `CREATE TABLE` into SQLite.
pub fn translate_create(stmt: &str) -> String {
    let stmt = rewrite_literals(stmt);
    let (Some(open), Some(close)) = (stmt.find('('), stmt.rfind(')')) else {
        return stmt;
    };
    let head = &stmt[..open];
    let body = &stmt[open + 1..close];
    let mut items: Vec<String> = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in body.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    let kept: Vec<String> = items
        .into_iter()
        .map(|i| i.trim().to_string())
        .filter(|i| {
            let u = i.to_ascii_uppercase();
            !(u.starts_with("KEY ")
                || u.starts_with("INDEX ")
                || u.starts_with("UNIQUE KEY")
                || u.starts_with("FULLTEXT")
                || u.is_empty())
        })
        .map(|i| clean_column(&i))
        .collect();
    format!(
        "{}(\n  {}\n)",
        head.trim_end().to_string() + " ",
        kept.join(",\n  ")
    )
}

/// Drops MySQL index prefix lengths: `"name"(255)` -> `"name"`.
fn drop_prefix_lengths(item: &str) -> String {
    let mut out = String::with_capacity(item.len());
    let mut rest = item;
    while let Some(pos) = rest.find("\"(") {
        let after = &rest[pos + 2..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..pos + 1]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..pos + 2]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn clean_column(item: &str) -> String {
    let item = &drop_prefix_lengths(item);
    let mut words: Vec<&str> = Vec::new();
    let toks: Vec<&str> = item.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        let u = toks[i].to_ascii_uppercase();
        match u.as_str() {
            "COLLATE" | "CHARACTER" | "COMMENT" => {
                // skip the keyword and its argument ("CHARACTER SET x" has two)
                i += if u == "CHARACTER" { 3 } else { 2 };
                continue;
            }
            "AUTO_INCREMENT" | "UNSIGNED" | "ZEROFILL" => {
                i += 1;
                continue;
            }
            _ => words.push(toks[i]),
        }
        i += 1;
    }
    words.join(" ")
}

/// Converts a dump into `<out_dir>/<db>.sqlite`, one file per `USE`d database. Existing
/// files are replaced atomically. Returns the database names and their files.
pub fn convert(dump: &Path, out_dir: &Path) -> Result<BTreeMap<String, PathBuf>, TaskError> {
    let text = std::fs::read_to_string(dump).map_err(TaskError::io(dump))?;
    std::fs::create_dir_all(out_dir).map_err(TaskError::io(out_dir))?;
    let mut done = BTreeMap::new();
    let mut current: Option<(String, PathBuf, Connection)> = None;
    let finish = |cur: Option<(String, PathBuf, Connection)>,
                  done: &mut BTreeMap<String, PathBuf>|
     -> Result<(), TaskError> {
        if let Some((name, tmp, conn)) = cur {
            conn.execute_batch("COMMIT")?;
            drop(conn);
            let dest = out_dir.join(format!("{name}.sqlite"));
            std::fs::rename(&tmp, &dest).map_err(TaskError::io(&dest))?;
            done.insert(name, dest);
        }
        Ok(())
    };
    for stmt in split_statements(&text) {
        let upper = stmt.to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix("USE ") {
            let _ = rest;
            let name: String = stmt[4..]
                .trim()
                .trim_matches('`')
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            finish(current.take(), &mut done)?;
            let tmp = out_dir.join(format!(".{name}.{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let conn = Connection::open(&tmp)?;
            // Tables reference tables created later in the dump.
            conn.execute_batch(
                "PRAGMA foreign_keys=OFF; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN",
            )?;
            current = Some((name, tmp, conn));
        } else if upper.starts_with("CREATE TABLE") {
            let Some((name, _, conn)) = &current else {
                continue;
            };
            let sql = translate_create(&stmt);
            conn.execute_batch(&sql).map_err(|e| {
                TaskError::data(
                    dump,
                    format!("database {name}: cannot create table: {e}\n{sql}"),
                )
            })?;
        } else if upper.starts_with("INSERT INTO") {
            let Some((name, _, conn)) = &current else {
                continue;
            };
            let sql = rewrite_literals(&stmt);
            conn.execute_batch(&sql).map_err(|e| {
                TaskError::data(dump, format!("database {name}: cannot insert: {e}"))
            })?;
        }
    }
    finish(current.take(), &mut done)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_small_dump() -> Result<(), TaskError> {
        let dir = tempfile::tempdir().map_err(TaskError::io("tempdir"))?;
        let dump = dir.path().join("d.sql");
        std::fs::write(
            &dump,
            "-- comment; with semicolon\nCREATE DATABASE IF NOT EXISTS `shop` /*!40100 x */;\nUSE `shop`;\n\
             /*!40101 SET NAMES utf8 */;\nDROP TABLE IF EXISTS `item`;\n\
             CREATE TABLE `item` (\n  `id` int NOT NULL AUTO_INCREMENT,\n  `name` text COLLATE utf8mb4_general_ci,\n  \
             `price` double DEFAULT NULL,\n  PRIMARY KEY (`id`,`name`(20)),\n  KEY `k1` (`name`(10))\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n\
             LOCK TABLES `item` WRITE;\nINSERT INTO `item` VALUES (1,'it\\'s; fine',2.5),(2,'back\\\\slash',NULL),(3,\"dq\",1e3);\nUNLOCK TABLES;\n",
        )
        .map_err(TaskError::io(&dump))?;
        let out = convert(&dump, &dir.path().join("out"))?;
        let path = out
            .get("shop")
            .ok_or_else(|| TaskError::Output("no shop".into()))?;
        let conn = Connection::open(path)?;
        let names: Vec<String> = conn
            .prepare("SELECT name FROM item ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec!["it's; fine", "back\\slash", "dq"]);
        let total: f64 = conn.query_row("SELECT sum(price) FROM item", [], |r| r.get(0))?;
        assert_eq!(total, 1002.5);
        Ok(())
    }
}
