//! Synthetic database tasks: a small generated table and a templated question.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{pick, split_of, Draft, WORDS};
use crate::episode::{Episode, Task};
use crate::prompt::{database_prompt, fenced};
use crate::skills::database::{DatabaseTask, DbSource, SqlCheck};

struct Schema {
    table: &'static str,
    entity: &'static str,
    cat: &'static str,
    cats: &'static [&'static str],
    nums: [(&'static str, i64, i64); 2],
}

const SCHEMAS: &[Schema] = &[
    Schema {
        table: "employees",
        entity: "employee",
        cat: "dept",
        cats: &["eng", "ops", "sales", "hr", "legal"],
        nums: [("salary", 30, 200), ("age", 20, 65)],
    },
    Schema {
        table: "products",
        entity: "product",
        cat: "category",
        cats: &["toys", "food", "tools", "books", "garden"],
        nums: [("price", 1, 500), ("stock", 0, 100)],
    },
    Schema {
        table: "students",
        entity: "student",
        cat: "city",
        cats: &["paris", "oslo", "lima", "cairo", "perth"],
        nums: [("score", 0, 100), ("grade", 1, 40)],
    },
];

struct Row {
    name: String,
    cat: &'static str,
    nums: [i64; 2],
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// The suite's families, numbered as [`draft`] takes them.
pub(crate) const FAMILIES: &[&str] = &["count", "gt", "agg", "group", "top", "update", "delete"];

/// One database task of family `family` (an index into [`FAMILIES`]).
pub(crate) fn draft(rng: &mut ChaCha8Rng, family: usize) -> Draft {
    let s = &SCHEMAS[rng.gen_range(0..SCHEMAS.len())];
    let n_rows = rng.gen_range(6..12usize);
    let mut names: Vec<&str> = WORDS.to_vec();
    names.shuffle(rng);
    let mut cols: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    for (i, (_, lo, hi)) in s.nums.iter().enumerate() {
        let mut pool: Vec<i64> = (*lo..=*hi).collect();
        pool.shuffle(rng);
        cols[i] = pool.into_iter().take(n_rows).collect();
    }
    let rows: Vec<Row> = (0..n_rows)
        .map(|i| Row {
            name: capitalize(names[i % names.len()]),
            cat: pick(rng, s.cats),
            nums: [cols[0][i], cols[1][i]],
        })
        .collect();
    let (n0, n1) = (s.nums[0].0, s.nums[1].0);
    let create = format!(
        "CREATE TABLE {} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, {} TEXT NOT NULL, {n0} INTEGER NOT NULL, {n1} INTEGER NOT NULL);",
        s.table, s.cat
    );
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "({}, '{}', '{}', {}, {})",
                i + 1,
                r.name,
                r.cat,
                r.nums[0],
                r.nums[1]
            )
        })
        .collect();
    let script = format!(
        "{create}\nINSERT INTO {} VALUES {};",
        s.table,
        values.join(", ")
    );
    let ni = rng.gen_range(0..2usize);
    let (num, lo, hi) = s.nums[ni];
    // Ask about a value that occurs, so that every question and change touches some rows.
    let x = rows[rng.gen_range(0..rows.len())].cat;
    let present: Vec<i64> = rows.iter().map(|r| r.nums[ni]).collect();
    let (pmin, pmax) = (
        present.iter().copied().min().unwrap_or(lo),
        present.iter().copied().max().unwrap_or(hi),
    );
    let (t, c, e) = (s.table, s.cat, s.entity);
    let (key, question, gold, mutation) = match family {
        0 => (
            format!("count/{t}/{x}"),
            format!("How many {e}s have {c} '{x}'?"),
            format!("SELECT COUNT(*) FROM {t} WHERE {c} = '{x}'"),
            false,
        ),
        1 => {
            let k = rng.gen_range(lo..=hi);
            (
                format!("gt/{t}/{num}/{k}"),
                format!("List the names of the {e}s whose {num} is greater than {k}."),
                format!("SELECT name FROM {t} WHERE {num} > {k}"),
                false,
            )
        }
        2 => {
            let (agg, word) = *[
                ("SUM", "total"),
                ("MAX", "largest"),
                ("MIN", "smallest"),
                ("AVG", "average"),
            ]
            .choose(rng)
            .unwrap_or(&("SUM", "total"));
            (
                format!("agg/{t}/{agg}/{num}/{x}"),
                format!("What is the {word} {num} of the {e}s with {c} '{x}'?"),
                format!("SELECT {agg}({num}) FROM {t} WHERE {c} = '{x}'"),
                false,
            )
        }
        3 => {
            let (agg, word) = *[
                ("SUM", "total"),
                ("MAX", "largest"),
                ("MIN", "smallest"),
                ("COUNT", "number of"),
            ]
            .choose(rng)
            .unwrap_or(&("SUM", "total"));
            let (what, expr) = if agg == "COUNT" {
                (format!("the {word} {e}s"), "COUNT(*)".to_string())
            } else {
                (format!("the {word} {num}"), format!("{agg}({num})"))
            };
            let param = if agg == "COUNT" { "*" } else { num };
            (
                format!("group/{t}/{agg}/{param}"),
                format!("For each {c}, give the {c} and {what}."),
                format!("SELECT {c}, {expr} FROM {t} GROUP BY {c}"),
                false,
            )
        }
        4 => {
            let k = rng.gen_range(1..5usize);
            let desc = rng.gen_bool(0.5);
            let (dir, word) = if desc {
                ("DESC", "highest")
            } else {
                ("ASC", "lowest")
            };
            (
                format!("top/{t}/{num}/{dir}/{k}"),
                format!(
                    "List the names of the {k} {e}s with the {word} {num}, from the {word} down."
                ),
                format!("SELECT name FROM {t} ORDER BY {num} {dir} LIMIT {k}"),
                false,
            )
        }
        5 => {
            let k = rng.gen_range(1..20i64);
            (
                format!("update/{t}/{num}/{x}/{k}"),
                format!("Increase the {num} of every {e} with {c} '{x}' by {k}."),
                format!("UPDATE {t} SET {num} = {num} + {k} WHERE {c} = '{x}'"),
                true,
            )
        }
        _ => {
            // Deletes at least one row and keeps at least one.
            let k = rng.gen_range(pmin + 1..=pmax);
            (
                format!("delete/{t}/{num}/{k}"),
                format!("Delete every {e} whose {num} is less than {k}."),
                format!("DELETE FROM {t} WHERE {num} < {k}"),
                true,
            )
        }
    };
    let check = if mutation {
        SqlCheck::Mutation {
            tables: vec![t.to_string()],
        }
    } else {
        SqlCheck::Query {
            ordered: crate::skills::database::is_ordered(&gold),
        }
    };
    let key = format!("database/{key}");
    Draft {
        split: split_of(&key),
        key,
        episode: Episode {
            id: String::new(),
            suite: String::new(),
            prompt: database_prompt(&create, &question),
            max_rounds: 1,
            task: Task::Database(DatabaseTask {
                db: DbSource::Script(script),
                gold_sql: gold.clone(),
                check,
            }),
            gold: vec![fenced("sql", &gold)],
            family: None,
        },
    }
}
