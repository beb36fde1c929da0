//! Synthetic shell tasks: files prepared in `/work`, a templated request, checked by output
//! (computed here) or, for tasks that create files, against the gold command.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{pick, split_of, Draft, WORDS};
use crate::episode::{Episode, Task};
use crate::prompt::{fenced, os_prompt};
use crate::skills::os::{OsCheck, OsFile, OsTask};

const FILE_EXTS: &[&str] = &["txt", "log", "dat"];
const DIRS: &[&str] = &[
    "docs", "src", "logs", "archive", "out", "music", "photos", "backup",
];
const EXTS: &[&str] = &["txt", "log", "csv", "py", "md", "json"];

fn word_lines(rng: &mut ChaCha8Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let k = rng.gen_range(1..4);
            (0..k)
                .map(|_| pick(rng, WORDS))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn file(path: String, lines: &[String]) -> OsFile {
    let mut contents = lines.join("\n");
    contents.push('\n');
    OsFile {
        path,
        contents,
        executable: false,
    }
}

/// The suite's families, numbered as [`draft`] takes them.
pub(crate) const FAMILIES: &[&str] = &[
    "lines",
    "count_ext",
    "grep",
    "sum",
    "head",
    "sort",
    "create",
    "words",
];

/// One shell task of family `family` (an index into [`FAMILIES`]).
pub(crate) fn draft(rng: &mut ChaCha8Rng, family: usize) -> Draft {
    let f_owned = format!("{}.{}", pick(rng, WORDS), pick(rng, FILE_EXTS));
    let f = f_owned.as_str();
    let mut files = Vec::new();
    let (key, request, gold, check) = match family {
        0 => {
            let n = rng.gen_range(1..25);
            let lines = word_lines(rng, n);
            files.push(file(format!("/work/{f}"), &lines));
            (
                format!("lines/{f}"),
                format!("Print the number of lines in the file {f}."),
                format!("wc -l < {f}"),
                OsCheck::ExactOutput {
                    expected: n.to_string(),
                },
            )
        }
        1 => {
            let d = pick(rng, DIRS);
            let ext = pick(rng, EXTS);
            let mut count = 0;
            for i in 0..rng.gen_range(2..10) {
                let e = if rng.gen_bool(0.5) {
                    ext
                } else {
                    pick(rng, EXTS)
                };
                if e == ext {
                    count += 1;
                }
                files.push(file(
                    format!("/work/{d}/{}{i}.{e}", pick(rng, WORDS)),
                    &[String::new()],
                ));
            }
            (
                format!("count_ext/{d}/{ext}"),
                format!("Print how many files in the directory {d} have the extension .{ext}."),
                format!("find {d} -type f -name '*.{ext}' | wc -l"),
                OsCheck::ExactOutput {
                    expected: count.to_string(),
                },
            )
        }
        2 => {
            let w = pick(rng, WORDS);
            let n = rng.gen_range(3..15);
            let lines = word_lines(rng, n);
            files.push(file(format!("/work/{f}"), &lines));
            let hits: Vec<String> = lines.iter().filter(|l| l.contains(w)).cloned().collect();
            (
                format!("grep/{w}/{f}"),
                format!("Print the lines of {f} that contain the word {w}."),
                format!("grep {w} {f}"),
                OsCheck::ExactOutput {
                    expected: hits.join("\n"),
                },
            )
        }
        3 => {
            let nums: Vec<i64> = (0..rng.gen_range(2..12))
                .map(|_| rng.gen_range(0..1000))
                .collect();
            let lines: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
            files.push(file(format!("/work/{f}"), &lines));
            (
                format!("sum/{f}"),
                format!("The file {f} has one number per line. Print their sum."),
                format!("awk '{{s += $1}} END {{print s}}' {f}"),
                OsCheck::ExactOutput {
                    expected: nums.iter().sum::<i64>().to_string(),
                },
            )
        }
        4 => {
            let n = rng.gen_range(1..6);
            let m = rng.gen_range(n..n + 10);
            let lines = word_lines(rng, m);
            files.push(file(format!("/work/{f}"), &lines));
            (
                format!("head/{n}/{f}"),
                format!("Print the first {n} lines of {f}."),
                format!("head -n {n} {f}"),
                OsCheck::ExactOutput {
                    expected: lines[..n].join("\n"),
                },
            )
        }
        5 => {
            let reverse = rng.gen_bool(0.5);
            let mut lines: Vec<String> = (0..rng.gen_range(3..12))
                .map(|_| pick(rng, WORDS).to_string())
                .collect();
            files.push(file(format!("/work/{f}"), &lines));
            lines.sort();
            if reverse {
                lines.reverse();
            }
            (
                format!("sort/{reverse}/{f}"),
                format!(
                    "Print the lines of {f} sorted in {} alphabetical order.",
                    if reverse { "reverse" } else { "" }
                )
                .replace("  ", " "),
                format!("sort {}{f}", if reverse { "-r " } else { "" }),
                OsCheck::ExactOutput {
                    expected: lines.join("\n"),
                },
            )
        }
        6 => {
            let d = pick(rng, DIRS);
            let w = pick(rng, WORDS);
            let gold = format!("mkdir -p {d} && echo {w} > {d}/{f}");
            (
                format!("create/{d}/{f}/{w}"),
                format!("Create a directory {d} containing a file {f} whose only line is {w}."),
                gold.clone(),
                OsCheck::GoldOutput { gold: vec![gold] },
            )
        }
        _ => {
            let n = rng.gen_range(1..10);
            let lines = word_lines(rng, n);
            let words: usize = lines.iter().map(|l| l.split_whitespace().count()).sum();
            files.push(file(format!("/work/{f}"), &lines));
            (
                format!("words/{f}"),
                format!("Print the number of words in the file {f}."),
                format!("wc -w < {f}"),
                OsCheck::ExactOutput {
                    expected: words.to_string(),
                },
            )
        }
    };
    let key = format!("os/{key}");
    Draft {
        split: split_of(&key),
        key,
        episode: Episode {
            id: String::new(),
            suite: String::new(),
            prompt: os_prompt("/work", &request),
            max_rounds: 1,
            task: Task::Os(OsTask {
                writable: vec!["/work".into()],
                workdir: "/work".into(),
                files,
                setup_script: None,
                check,
            }),
            gold: vec![fenced("bash", &gold)],
            family: None,
        },
    }
}
