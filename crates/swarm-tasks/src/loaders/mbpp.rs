//! MBPP (`mbpp/mbpp.jsonl` in the shared data folder): 974 Python tasks with three asserts.
//! Splits as in the MBPP README: test 11-510, validation 511-600, train 601-974 and the
//! few-shot tasks 1-10.

use std::path::Path;

use serde::Deserialize;

use super::{DataDirs, LoadedSuite};
use crate::episode::{Episode, Task};
use crate::error::TaskError;
use crate::prompt::{coding_prompt, fenced};
use crate::skills::coding::CodingTask;
use crate::synthetic::Split;

#[derive(Deserialize)]
struct Raw {
    task_id: u32,
    text: String,
    code: String,
    test_list: Vec<String>,
    #[serde(default)]
    test_setup_code: String,
}

/// The split of an MBPP task id.
pub fn split_of(task_id: u32) -> Split {
    match task_id {
        11..=510 => Split::Test,
        511..=600 => Split::Validation,
        _ => Split::Train,
    }
}

/// Loads one split of MBPP from the shared data folder.
pub fn load(dirs: &DataDirs, split: Split) -> Result<LoadedSuite, TaskError> {
    load_file(&dirs.shared_file("mbpp/mbpp.jsonl")?, split)
}

/// Loads one split of an MBPP JSONL file.
pub fn load_file(path: &Path, split: Split) -> Result<LoadedSuite, TaskError> {
    let text = super::read_to_string(path)?;
    let mut out = LoadedSuite::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let raw: Raw = serde_json::from_str(line)
            .map_err(|e| TaskError::data(path, format!("line {}: {e}", i + 1)))?;
        if split_of(raw.task_id) != split {
            continue;
        }
        let entry_point = raw.test_list.first().and_then(|t| {
            let rest = t.trim().strip_prefix("assert")?.trim_start();
            let rest = rest.trim_start_matches(['(', ' ']);
            let rest = rest.strip_prefix("not ").unwrap_or(rest).trim_start();
            let rest = rest.strip_prefix("set(").unwrap_or(rest);
            let rest = rest.strip_prefix("math.isclose(").unwrap_or(rest);
            let end = rest.find('(')?;
            let name = &rest[..end];
            name.chars()
                .all(|c| c.is_alphanumeric() || c == '_')
                .then(|| name.to_string())
        });
        if raw.test_list.is_empty() {
            out.skipped
                .push((format!("mbpp/{}", raw.task_id), "no tests".into()));
            continue;
        }
        out.episodes.push(Episode {
            id: format!("mbpp/{}", raw.task_id),
            suite: "mbpp".into(),
            prompt: coding_prompt(&raw.text, &raw.test_list),
            max_rounds: 1,
            gold: vec![fenced("python", &raw.code.replace("\r\n", "\n"))],
            task: Task::Coding(CodingTask {
                entry_point,
                stub: None,
                setup: raw.test_setup_code,
                tests: raw.test_list,
            }),
            family: None,
        });
    }
    Ok(out)
}
